// The metadata pane: the model's hyper-parameters and every metadata key with its GGUF type and
// value, in two QAbstractTableModel-backed tables. Long arrays and strings are abbreviated in the
// table and shown at greater length in the tooltip.
#pragma once

#include <QAbstractTableModel>
#include <QWidget>

#include <vector>

class AppSession;
class QLabel;
class QLineEdit;
class QSettings;
class QSplitter;
class QSortFilterProxyModel;
class QTableView;

class MetadataTableModel : public QAbstractTableModel {
    Q_OBJECT
public:
    enum Column { KeyColumn, TypeColumn, ValueColumn, ColumnCount };
    struct Row {
        QString key;
        QString type;
        QString value;
        QString tooltip;
    };

    explicit MetadataTableModel(QObject* parent = nullptr);
    void setRows(std::vector<Row> rows);
    const std::vector<Row>& rows() const { return m_rows; }

    int rowCount(const QModelIndex& parent = {}) const override;
    int columnCount(const QModelIndex& parent = {}) const override;
    QVariant data(const QModelIndex& index, int role = Qt::DisplayRole) const override;
    QVariant headerData(int section, Qt::Orientation orientation,
                        int role = Qt::DisplayRole) const override;

private:
    std::vector<Row> m_rows;
};

class MetadataPane : public QWidget {
    Q_OBJECT
public:
    explicit MetadataPane(AppSession* session, QWidget* parent = nullptr);

    void saveSettings(QSettings& settings) const;
    void restoreSettings(QSettings& settings);

    MetadataTableModel* metadataModel() const { return m_metadata; }
    MetadataTableModel* hyperParamsModel() const { return m_hparams; }

private:
    void onModelLoaded();
    void onModelClosed();

    AppSession* m_session;
    MetadataTableModel* m_hparams;
    MetadataTableModel* m_metadata;
    QSortFilterProxyModel* m_proxy;
    QLineEdit* m_filter;
    QLabel* m_metadataTitle;
    QTableView* m_hparamsView;
    QTableView* m_metadataView;
    QSplitter* m_splitter = nullptr;
};
