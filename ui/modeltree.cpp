#include "modeltree.h"

#include <QHeaderView>
#include <QItemSelectionModel>
#include <QLineEdit>
#include <QSortFilterProxyModel>
#include <QTreeView>
#include <QVBoxLayout>

#include <algorithm>
#include <map>

#include "appsession.h"
#include "format.h"

// ---------------------------------------------------------------------------------------------
// ModelTreeModel

ModelTreeModel::ModelTreeModel(QObject* parent) : QAbstractItemModel(parent) {}

int ModelTreeModel::addNode(int parent, Node node)
{
    node.parent = parent;
    const int id = int(m_nodes.size());
    if (parent >= 0) {
        node.row = int(m_nodes[parent].children.size());
        m_nodes[parent].children.push_back(id);
    }
    m_nodes.push_back(std::move(node));
    return id;
}

void ModelTreeModel::setModel(std::shared_ptr<const ql::Model> model, const QString& displayName)
{
    beginResetModel();
    m_model = std::move(model);
    m_nodes.clear();
    if (m_model) {
        const ql::Model& m = *m_model;
        Node root;
        root.kind = NodeKind::Model;
        root.label = displayName;
        root.shape = tr("%1 params").arg(human::count(m.totalParameters()));
        root.type = QString::fromUtf8(ql::modelFormatName(m.format));
        root.bytes = m.totalBytes();
        root.tooltip =
            tr("<b>%1</b><br>%2<br>architecture: %3, %4 blocks, %5 tensors")
                .arg(displayName.toHtmlEscaped(), QString::fromStdString(m.path).toHtmlEscaped(),
                     QString::fromStdString(m.hparams.architecture))
                .arg(m.hparams.blockCount)
                .arg(m.tensors.size());
        addNode(-1, root);

        Node global;
        global.kind = NodeKind::Group;
        global.label = tr("Global");
        global.tooltip =
            tr("Tensors outside the transformer blocks: embeddings, final norm, "
               "output head");
        const int globalId = addNode(0, global);

        std::map<int, int> blockNodes;  // block index -> node id, in block order
        int maxBlock = int(m.hparams.blockCount) - 1;
        for (const auto& t : m.tensors) maxBlock = std::max(maxBlock, t.block);
        for (int b = 0; b <= maxBlock; ++b) {
            Node block;
            block.kind = NodeKind::Group;
            block.label = tr("Block %1").arg(b);
            blockNodes[b] = addNode(0, block);
        }

        // Forward-pass order inside each group (the TensorRole order), file order among equals.
        std::vector<const ql::TensorInfo*> ordered;
        for (const auto& t : m.tensors) ordered.push_back(&t);
        std::stable_sort(ordered.begin(), ordered.end(),
                         [](const ql::TensorInfo* a, const ql::TensorInfo* b) {
                             return int(a->role) < int(b->role);
                         });
        for (const ql::TensorInfo* tp : ordered) {
            const ql::TensorInfo& t = *tp;
            Node leaf;
            leaf.kind = NodeKind::Tensor;
            leaf.tensor = &t;
            QString name = QString::fromStdString(t.name);
            const QString prefix = QStringLiteral("blk.%1.").arg(t.block);
            if (t.block >= 0 && name.startsWith(prefix)) name = name.mid(prefix.size());
            leaf.label = name;
            leaf.shape = human::shape(t.shape);
            leaf.type = QString::fromUtf8(ql::tensorTypeName(t.type).data(),
                                          qsizetype(ql::tensorTypeName(t.type).size()));
            leaf.bytes = t.bytes;
            leaf.tooltip =
                tr("<b>%1</b><br>role: %2<br>shape: %3 (%4 elements)<br>type: %5, %6 bits/weight"
                   "<br>stored: %7")
                    .arg(QString::fromStdString(t.name),
                         QString::fromUtf8(ql::tensorRoleName(t.role)), leaf.shape,
                         human::count(t.elementCount()), leaf.type)
                    .arg(ql::bitsPerWeight(t.type), 0, 'g', 4)
                    .arg(human::bytes(t.bytes));
            if (t.sourceName != t.name && !t.sourceName.empty())
                leaf.tooltip += tr("<br>in file: %1").arg(QString::fromStdString(t.sourceName));
            const int parent = t.block >= 0 ? blockNodes[t.block] : globalId;
            addNode(parent, leaf);
            for (int p = parent; p > 0; p = m_nodes[p].parent) m_nodes[p].bytes += t.bytes;
        }
        for (auto& node : m_nodes) {
            if (node.kind != NodeKind::Group) continue;
            node.shape = tr("%n tensor(s)", nullptr, int(node.children.size()));
        }
    }
    endResetModel();
}

int ModelTreeModel::blockCount() const
{
    if (m_nodes.empty()) return 0;
    return int(m_nodes[0].children.size()) - 1;  // all but "Global"
}

int ModelTreeModel::tensorCount() const
{
    int n = 0;
    for (const auto& node : m_nodes) n += node.kind == NodeKind::Tensor;
    return n;
}

QModelIndex ModelTreeModel::indexOfTensor(const QString& name) const
{
    const std::string wanted = name.toStdString();
    for (std::size_t i = 0; i < m_nodes.size(); ++i)
        if (m_nodes[i].tensor && m_nodes[i].tensor->name == wanted)
            return createIndex(m_nodes[i].row, 0, quintptr(i));
    return {};
}

int ModelTreeModel::nodeOf(const QModelIndex& index) const
{
    return index.isValid() ? int(index.internalId()) : -1;
}

QModelIndex ModelTreeModel::index(int row, int column, const QModelIndex& parent) const
{
    if (column < 0 || column >= ColumnCount || row < 0) return {};
    if (!parent.isValid()) {
        if (m_nodes.empty() || row != 0) return {};
        return createIndex(0, column, quintptr(0));
    }
    const Node& p = m_nodes[nodeOf(parent)];
    if (row >= int(p.children.size())) return {};
    return createIndex(row, column, quintptr(p.children[row]));
}

QModelIndex ModelTreeModel::parent(const QModelIndex& child) const
{
    const int id = nodeOf(child);
    if (id <= 0) return {};
    const int p = m_nodes[id].parent;
    return createIndex(m_nodes[p].row, 0, quintptr(p));
}

int ModelTreeModel::rowCount(const QModelIndex& parent) const
{
    if (!parent.isValid()) return m_nodes.empty() ? 0 : 1;
    if (parent.column() != 0) return 0;
    return int(m_nodes[nodeOf(parent)].children.size());
}

int ModelTreeModel::columnCount(const QModelIndex&) const
{
    return ColumnCount;
}

QVariant ModelTreeModel::data(const QModelIndex& index, int role) const
{
    if (!index.isValid()) return {};
    const Node& node = m_nodes[nodeOf(index)];
    switch (role) {
        case Qt::DisplayRole:
            switch (index.column()) {
                case NameColumn: return node.label;
                case ShapeColumn: return node.shape;
                case TypeColumn: return node.type;
                case SizeColumn: return human::bytes(node.bytes);
            }
            break;
        case Qt::ToolTipRole: return node.tooltip.isEmpty() ? QVariant() : node.tooltip;
        case Qt::TextAlignmentRole:
            if (index.column() == SizeColumn) return int(Qt::AlignRight | Qt::AlignVCenter);
            break;
        case Qt::FontRole:
            if (node.kind != NodeKind::Tensor && index.column() == NameColumn) {
                QFont font;
                font.setBold(node.kind == NodeKind::Model);
                return font;
            }
            break;
        case TensorNameRole:
            return node.tensor ? QString::fromStdString(node.tensor->name) : QString();
        case NodeKindRole: return int(node.kind);
    }
    return {};
}

QVariant ModelTreeModel::headerData(int section, Qt::Orientation orientation, int role) const
{
    if (orientation != Qt::Horizontal) return {};
    if (role == Qt::DisplayRole) {
        switch (section) {
            case NameColumn: return tr("Tensor");
            case ShapeColumn: return tr("Shape");
            case TypeColumn: return tr("Type");
            case SizeColumn: return tr("Size");
        }
    }
    if (role == Qt::ToolTipRole) {
        switch (section) {
            case NameColumn: return tr("Tensor name (role) inside its block");
            case ShapeColumn: return tr("Shape, outermost first: output rows × input columns");
            case TypeColumn: return tr("Storage type in the file (F32, F16, Q4_K, ...)");
            case SizeColumn: return tr("Bytes stored in the file");
        }
    }
    return {};
}

// ---------------------------------------------------------------------------------------------
// ModelTree

namespace {

// Matches tensors on their full name; groups stay visible through recursive filtering.
class TensorFilterProxy : public QSortFilterProxyModel {
public:
    using QSortFilterProxyModel::QSortFilterProxyModel;

protected:
    bool filterAcceptsRow(int row, const QModelIndex& parent) const override
    {
        const QModelIndex index = sourceModel()->index(row, 0, parent);
        const QString name = index.data(ModelTreeModel::TensorNameRole).toString();
        if (name.isEmpty()) return filterRegularExpression().pattern().isEmpty();
        return name.contains(filterRegularExpression());
    }
};

}  // namespace

ModelTree::ModelTree(AppSession* session, QWidget* parent)
    : QWidget(parent),
      m_session(session),
      m_model(new ModelTreeModel(this)),
      m_proxy(new TensorFilterProxy(this)),
      m_filter(new QLineEdit(this)),
      m_view(new QTreeView(this))
{
    m_proxy->setSourceModel(m_model);
    m_proxy->setRecursiveFilteringEnabled(true);
    m_proxy->setFilterCaseSensitivity(Qt::CaseInsensitive);

    m_filter->setObjectName(QStringLiteral("tensorFilter"));
    m_filter->setPlaceholderText(tr("Filter tensors (e.g. attn_q, blk.3, ffn_down)"));
    m_filter->setClearButtonEnabled(true);

    m_view->setObjectName(QStringLiteral("modelTreeView"));
    m_view->setModel(m_proxy);
    m_view->setUniformRowHeights(true);
    m_view->setAlternatingRowColors(true);
    m_view->setSelectionMode(QAbstractItemView::SingleSelection);
    m_view->setSelectionBehavior(QAbstractItemView::SelectRows);
    m_view->setAllColumnsShowFocus(true);
    QHeaderView* header = m_view->header();
    // Shape, type and size fit their contents; the name takes the rest (a long model name is
    // elided, its tooltip has it whole).
    header->setStretchLastSection(false);
    header->setSectionResizeMode(ModelTreeModel::NameColumn, QHeaderView::Stretch);
    for (int c = ModelTreeModel::ShapeColumn; c < ModelTreeModel::ColumnCount; ++c)
        header->setSectionResizeMode(c, QHeaderView::ResizeToContents);
    header->setMinimumSectionSize(40);

    auto* layout = new QVBoxLayout(this);
    layout->setContentsMargins(4, 4, 4, 4);
    layout->setSpacing(4);
    layout->addWidget(m_filter);
    layout->addWidget(m_view);

    connect(m_filter, &QLineEdit::textChanged, this, &ModelTree::onFilterChanged);
    connect(m_view->selectionModel(), &QItemSelectionModel::currentRowChanged, this,
            &ModelTree::onCurrentChanged);
    connect(m_view->selectionModel(), &QItemSelectionModel::selectionChanged, this,
            [this](const QItemSelection& selected) {
                if (!selected.indexes().isEmpty()) onCurrentChanged(selected.indexes().first());
            });
    connect(m_session, &AppSession::modelLoaded, this, &ModelTree::onModelLoaded);
    connect(m_session, &AppSession::modelClosed, this, &ModelTree::onModelClosed);
    connect(m_session, &AppSession::tensorSelected, this, &ModelTree::onTensorSelected);
}

void ModelTree::onModelLoaded()
{
    m_model->setModel(m_session->model(), m_session->modelDisplayName());
    const QModelIndex root = m_proxy->index(0, 0);
    m_view->expand(root);
    m_view->expand(m_proxy->index(0, 0, root));  // Global
    m_view->expand(m_proxy->index(1, 0, root));  // Block 0
    if (!m_filter->text().isEmpty()) m_view->expandAll();
}

void ModelTree::onModelClosed()
{
    m_model->setModel(nullptr, {});
}

void ModelTree::onTensorSelected(const QString& name)
{
    const QModelIndex current = m_view->currentIndex();
    if (current.data(ModelTreeModel::TensorNameRole).toString() == name) return;
    const QModelIndex index = m_proxy->mapFromSource(m_model->indexOfTensor(name));
    if (!index.isValid()) {
        m_view->clearSelection();
        return;
    }
    m_view->selectionModel()->setCurrentIndex(
        index, QItemSelectionModel::ClearAndSelect | QItemSelectionModel::Rows);
    m_view->scrollTo(index);
}

void ModelTree::onCurrentChanged(const QModelIndex& current)
{
    const QString name = current.data(ModelTreeModel::TensorNameRole).toString();
    if (!name.isEmpty()) m_session->selectTensor(name);
}

void ModelTree::onFilterChanged(const QString& text)
{
    m_proxy->setFilterFixedString(text.trimmed());
    if (!text.trimmed().isEmpty()) m_view->expandAll();
}
