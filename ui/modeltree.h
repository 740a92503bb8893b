// The model tree pane: the open model as root, then "Global" (embeddings, output, final norm) and
// one node per transformer block, each listing its tensors with shape, storage type and size.
// ModelTreeModel is a read-only QAbstractItemModel over a shared ql::Model (rebuilt when the
// session loads a model); ModelTree shows it through a recursive filter and turns the current
// row into AppSession::selectTensor, and follows the session's selection in turn.
#pragma once

#include <QAbstractItemModel>
#include <QWidget>

#include <memory>
#include <vector>

#include "model/model.h"

class AppSession;
class QLineEdit;
class QSortFilterProxyModel;
class QTreeView;

class ModelTreeModel : public QAbstractItemModel {
    Q_OBJECT
public:
    enum Column { NameColumn, ShapeColumn, TypeColumn, SizeColumn, ColumnCount };
    enum Role {
        TensorNameRole = Qt::UserRole + 1,  // canonical tensor name; empty for group nodes
        NodeKindRole,                       // NodeKind as int
    };
    enum class NodeKind { Model, Group, Tensor };

    explicit ModelTreeModel(QObject* parent = nullptr);

    void setModel(std::shared_ptr<const ql::Model> model, const QString& displayName);
    QModelIndex indexOfTensor(const QString& name) const;
    int blockCount() const;   // block nodes under the root
    int tensorCount() const;  // tensor leaves in the whole tree

    QModelIndex index(int row, int column, const QModelIndex& parent = {}) const override;
    QModelIndex parent(const QModelIndex& child) const override;
    int rowCount(const QModelIndex& parent = {}) const override;
    int columnCount(const QModelIndex& parent = {}) const override;
    QVariant data(const QModelIndex& index, int role = Qt::DisplayRole) const override;
    QVariant headerData(int section, Qt::Orientation orientation,
                        int role = Qt::DisplayRole) const override;

private:
    struct Node {
        NodeKind kind = NodeKind::Tensor;
        int parent = -1;  // index into m_nodes
        int row = 0;      // row within the parent
        std::vector<int> children;
        QString label;
        QString shape;
        QString type;
        std::uint64_t bytes = 0;
        QString tooltip;
        const ql::TensorInfo* tensor = nullptr;
    };
    int nodeOf(const QModelIndex& index) const;
    int addNode(int parent, Node node);

    std::shared_ptr<const ql::Model> m_model;
    std::vector<Node> m_nodes;  // m_nodes[0] is the model root when a model is set
};

class ModelTree : public QWidget {
    Q_OBJECT
public:
    explicit ModelTree(AppSession* session, QWidget* parent = nullptr);

    QTreeView* view() const { return m_view; }
    ModelTreeModel* treeModel() const { return m_model; }
    QSortFilterProxyModel* proxyModel() const { return m_proxy; }

private:
    void onModelLoaded();
    void onModelClosed();
    void onTensorSelected(const QString& name);
    void onCurrentChanged(const QModelIndex& current);
    void onFilterChanged(const QString& text);

    AppSession* m_session;
    ModelTreeModel* m_model;
    QSortFilterProxyModel* m_proxy;
    QLineEdit* m_filter;
    QTreeView* m_view;
};
