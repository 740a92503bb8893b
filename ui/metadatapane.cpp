#include "metadatapane.h"

#include <QHeaderView>
#include <QLabel>
#include <QLineEdit>
#include <QSettings>
#include <QSortFilterProxyModel>
#include <QSplitter>
#include <QTableView>
#include <QVBoxLayout>

#include "appsession.h"
#include "format.h"
#include "model/model.h"

namespace {

constexpr int kMaxValueChars = 160;
constexpr int kMaxTooltipChars = 3000;
constexpr std::size_t kTableArrayItems = 8;
constexpr std::size_t kTooltipArrayItems = 64;

QString abbreviate(QString text, int maxChars)
{
    text.replace(QLatin1Char('\n'), QStringLiteral(" ⏎ "));
    if (text.size() <= maxChars) return text;
    return QStringLiteral("%1 … (%2 characters)").arg(text.left(maxChars)).arg(text.size());
}

QString typeName(const ql::MetaValue& value)
{
    if (const ql::MetaArray* array = value.asArray())
        return QStringLiteral("%1[%2]")
            .arg(QString::fromUtf8(ql::metaTypeName(array->elementType)))
            .arg(array->values.size());
    return QString::fromUtf8(ql::metaTypeName(value.type));
}

std::vector<MetadataTableModel::Row> hyperParamRows(const ql::Model& m, const QString& name)
{
    const ql::HyperParams& h = m.hparams;
    auto num = [](auto v) { return QString::number(v); };
    std::vector<MetadataTableModel::Row> rows = {
        {QObject::tr("name"), {}, name, {}},
        {QObject::tr("format"), {}, QString::fromUtf8(ql::modelFormatName(m.format)), {}},
        {QObject::tr("path"), {}, QString::fromStdString(m.path), QString::fromStdString(m.path)},
        {QObject::tr("architecture"), {}, QString::fromStdString(h.architecture), {}},
        {QObject::tr("parameters"),
         {},
         QStringLiteral("%1 (%2)").arg(human::count(m.totalParameters())).arg(m.totalParameters()),
         {}},
        {QObject::tr("stored size"), {}, human::bytes(m.totalBytes()), {}},
        {QObject::tr("tensors"), {}, num(m.tensors.size()), {}},
        {QObject::tr("blocks"), {}, num(h.blockCount), {}},
        {QObject::tr("embedding dim"), {}, num(h.embeddingDim), {}},
        {QObject::tr("FFN dim"), {}, num(h.ffnDim), {}},
        {QObject::tr("attention heads"), {}, num(h.headCount), {}},
        {QObject::tr("KV heads"),
         {},
         num(h.headCountKv),
         QObject::tr("Fewer KV heads than query heads means grouped-query attention")},
        {QObject::tr("head dim"), {}, num(h.headDim), {}},
        {QObject::tr("vocabulary"), {}, num(h.vocabSize), {}},
        {QObject::tr("context length"), {}, num(h.contextLength), {}},
        {QObject::tr("RMS norm ε"), {}, human::number(h.rmsNormEps), {}},
        {QObject::tr("RoPE θ"), {}, human::number(h.ropeTheta, 8), {}},
    };
    if (!h.ropeScaling.type.empty())
        rows.push_back({QObject::tr("RoPE scaling"),
                        {},
                        QStringLiteral("%1 × %2")
                            .arg(QString::fromStdString(h.ropeScaling.type))
                            .arg(h.ropeScaling.factor),
                        {}});
    rows.push_back({QObject::tr("tied embeddings"),
                    {},
                    h.tiedEmbeddings ? QObject::tr("yes") : QObject::tr("no"),
                    QObject::tr("The output head reuses token_embd (no separate output.weight)")});
    rows.push_back({QObject::tr("attention bias"),
                    {},
                    h.attentionBias ? QObject::tr("yes") : QObject::tr("no"),
                    {}});
    for (const auto& w : m.warnings)
        rows.push_back(
            {QObject::tr("warning"), {}, QString::fromStdString(w), QString::fromStdString(w)});
    for (auto& row : rows)
        if (row.type.isEmpty()) row.type = QStringLiteral("—");
    return rows;
}

void setUpTable(QTableView* view, int keyWidth)
{
    view->setSelectionBehavior(QAbstractItemView::SelectRows);
    view->setAlternatingRowColors(true);
    view->setWordWrap(false);
    view->setTextElideMode(Qt::ElideRight);
    view->verticalHeader()->hide();
    view->verticalHeader()->setDefaultSectionSize(view->fontMetrics().height() + 6);
    QHeaderView* header = view->horizontalHeader();
    header->setSectionResizeMode(MetadataTableModel::KeyColumn, QHeaderView::Interactive);
    header->setSectionResizeMode(MetadataTableModel::TypeColumn, QHeaderView::ResizeToContents);
    header->setStretchLastSection(true);
    header->resizeSection(MetadataTableModel::KeyColumn, keyWidth);
}

}  // namespace

// ---------------------------------------------------------------------------------------------

MetadataTableModel::MetadataTableModel(QObject* parent) : QAbstractTableModel(parent) {}

void MetadataTableModel::setRows(std::vector<Row> rows)
{
    beginResetModel();
    m_rows = std::move(rows);
    endResetModel();
}

int MetadataTableModel::rowCount(const QModelIndex& parent) const
{
    return parent.isValid() ? 0 : int(m_rows.size());
}

int MetadataTableModel::columnCount(const QModelIndex& parent) const
{
    return parent.isValid() ? 0 : ColumnCount;
}

QVariant MetadataTableModel::data(const QModelIndex& index, int role) const
{
    if (!index.isValid() || index.row() >= int(m_rows.size())) return {};
    const Row& row = m_rows[index.row()];
    if (role == Qt::DisplayRole) {
        switch (index.column()) {
            case KeyColumn: return row.key;
            case TypeColumn: return row.type;
            case ValueColumn: return row.value;
        }
    }
    if (role == Qt::ToolTipRole) {
        if (index.column() == ValueColumn && !row.tooltip.isEmpty()) return row.tooltip;
        if (index.column() == KeyColumn) return row.key;
    }
    return {};
}

QVariant MetadataTableModel::headerData(int section, Qt::Orientation orientation, int role) const
{
    if (orientation != Qt::Horizontal || role != Qt::DisplayRole) return {};
    switch (section) {
        case KeyColumn: return tr("Key");
        case TypeColumn: return tr("Type");
        case ValueColumn: return tr("Value");
    }
    return {};
}

// ---------------------------------------------------------------------------------------------

MetadataPane::MetadataPane(AppSession* session, QWidget* parent)
    : QWidget(parent),
      m_session(session),
      m_hparams(new MetadataTableModel(this)),
      m_metadata(new MetadataTableModel(this)),
      m_proxy(new QSortFilterProxyModel(this)),
      m_filter(new QLineEdit(this)),
      m_metadataTitle(new QLabel(tr("Metadata"), this)),
      m_hparamsView(new QTableView(this)),
      m_metadataView(new QTableView(this))
{
    m_proxy->setSourceModel(m_metadata);
    m_proxy->setFilterKeyColumn(-1);
    m_proxy->setFilterCaseSensitivity(Qt::CaseInsensitive);

    m_hparamsView->setObjectName(QStringLiteral("hyperParamsView"));
    m_hparamsView->setModel(m_hparams);
    setUpTable(m_hparamsView, 130);
    m_hparamsView->hideColumn(MetadataTableModel::TypeColumn);
    m_hparamsView->setTextElideMode(Qt::ElideMiddle);  // paths keep their file name

    m_metadataView->setObjectName(QStringLiteral("metadataView"));
    m_metadataView->setModel(m_proxy);
    setUpTable(m_metadataView, 230);

    m_filter->setPlaceholderText(tr("Filter keys and values"));
    m_filter->setClearButtonEnabled(true);
    connect(m_filter, &QLineEdit::textChanged, m_proxy,
            &QSortFilterProxyModel::setFilterFixedString);

    auto* hparamsBox = new QWidget(this);
    auto* hl = new QVBoxLayout(hparamsBox);
    hl->setContentsMargins(0, 0, 0, 0);
    hl->setSpacing(2);
    auto* hparamsTitle = new QLabel(tr("<b>Hyper-parameters</b>"), hparamsBox);
    hl->addWidget(hparamsTitle);
    hl->addWidget(m_hparamsView);

    auto* metadataBox = new QWidget(this);
    auto* ml = new QVBoxLayout(metadataBox);
    ml->setContentsMargins(0, 0, 0, 0);
    ml->setSpacing(2);
    ml->addWidget(m_metadataTitle);
    ml->addWidget(m_filter);
    ml->addWidget(m_metadataView);

    m_splitter = new QSplitter(Qt::Vertical, this);
    m_splitter->setObjectName(QStringLiteral("metadataSplitter"));
    m_splitter->addWidget(hparamsBox);
    m_splitter->addWidget(metadataBox);
    m_splitter->setStretchFactor(0, 1);
    m_splitter->setStretchFactor(1, 2);

    auto* layout = new QVBoxLayout(this);
    layout->setContentsMargins(4, 4, 4, 4);
    layout->addWidget(m_splitter);

    connect(m_session, &AppSession::modelLoaded, this, &MetadataPane::onModelLoaded);
    connect(m_session, &AppSession::modelClosed, this, &MetadataPane::onModelClosed);
    onModelClosed();
}

void MetadataPane::saveSettings(QSettings& settings) const
{
    settings.setValue(QStringLiteral("metadataPane/splitter"), m_splitter->saveState());
}

void MetadataPane::restoreSettings(QSettings& settings)
{
    m_splitter->restoreState(settings.value(QStringLiteral("metadataPane/splitter")).toByteArray());
}

void MetadataPane::onModelLoaded()
{
    const auto model = m_session->model();
    if (!model) return onModelClosed();
    m_hparams->setRows(hyperParamRows(*model, m_session->modelDisplayName()));

    std::vector<MetadataTableModel::Row> rows;
    rows.reserve(model->metadata.size());
    for (const std::string& key : model->metadata.keys()) {
        const ql::MetaValue* value = model->metadata.find(key);
        if (!value) continue;
        MetadataTableModel::Row row;
        row.key = QString::fromStdString(key);
        row.type = typeName(*value);
        const QString full = QString::fromStdString(value->toDisplayString(kTableArrayItems));
        row.value = abbreviate(full, kMaxValueChars);
        const QString longer =
            value->asArray() ? QString::fromStdString(value->toDisplayString(kTooltipArrayItems))
                             : full;
        row.tooltip = abbreviate(longer, kMaxTooltipChars);
        // Wrap long tooltips: plain-text tooltips do not wrap on their own.
        if (row.tooltip.size() > 100)
            row.tooltip = QStringLiteral("<p style='white-space:pre-wrap'>%1</p>")
                              .arg(row.tooltip.toHtmlEscaped());
        rows.push_back(std::move(row));
    }
    m_metadataTitle->setText(tr("<b>Metadata</b> (%n key(s))", nullptr, int(rows.size())));
    m_metadata->setRows(std::move(rows));
}

void MetadataPane::onModelClosed()
{
    m_hparams->setRows({});
    m_metadata->setRows({});
    m_metadataTitle->setText(tr("<b>Metadata</b>"));
}
