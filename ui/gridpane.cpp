#include "gridpane.h"

#include <QAbstractTableModel>
#include <QComboBox>
#include <QFormLayout>
#include <QGroupBox>
#include <QHBoxLayout>
#include <QHeaderView>
#include <QLabel>
#include <QSignalBlocker>
#include <QSortFilterProxyModel>
#include <QSpinBox>
#include <QSplitter>
#include <QStackedWidget>
#include <QTableView>
#include <QVBoxLayout>

#include <qcustomplot.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "appsession.h"
#include "format.h"
#include "jobrunner.h"
#include "quant/ggml_dequant.h"
#include "quant/rtn.h"
#include "stats/tensor_stats.h"

namespace {

const QString kWeightsTag = QStringLiteral("gridWeights");
const QString kGridTag = QStringLiteral("grid");
const QString kFormatTag = QStringLiteral("formatTable");
const QColor kWeightColor(0x33, 0x33, 0x33);
const QColor kFollowColor(0xff, 0xb3, 0x00);
constexpr int kHistBins = 24;
constexpr int kMovedShown = 3;

// Grid colours, in gridFormats() order (Tableau 10: distinct, also for most colour-blind eyes).
QColor gridColor(int index)
{
    static const QColor colors[] = {QColor(0x1f, 0x77, 0xb4), QColor(0xff, 0x7f, 0x0e),
                                    QColor(0x2c, 0xa0, 0x2c), QColor(0x94, 0x67, 0xbd),
                                    QColor(0xd6, 0x27, 0x28)};
    return colors[std::clamp(index, 0, 4)];
}

const ql::TensorType kGgmlChoices[] = {
    ql::TensorType::Q4_0, ql::TensorType::Q4_1, ql::TensorType::Q5_0, ql::TensorType::Q5_1,
    ql::TensorType::Q8_0, ql::TensorType::Q2_K, ql::TensorType::Q3_K, ql::TensorType::Q4_K,
    ql::TensorType::Q5_K, ql::TensorType::Q6_K};

QCustomPlot* makePlot(QWidget* parent, const QString& objectName)
{
    auto* plot = new QCustomPlot(parent);
    plot->setObjectName(objectName);
    plot->setInteractions(QCP::iRangeDrag | QCP::iRangeZoom);
    plot->axisRect()->setRangeDrag(Qt::Horizontal);
    plot->axisRect()->setRangeZoom(Qt::Horizontal);
    plot->setNoAntialiasingOnDrag(true);
    plot->setMinimumSize(220, 110);
    QFont tickFont = plot->font();
    tickFont.setPointSizeF(tickFont.pointSizeF() * 0.85);
    for (QCPAxis* axis : {plot->xAxis, plot->yAxis}) {
        axis->setTickLabelFont(tickFont);
        axis->setLabelFont(tickFont);
        axis->setLabelPadding(2);
        axis->setTickLabelPadding(3);
    }
    return plot;
}

QTableView* makeTable(QWidget* parent, const QString& objectName)
{
    auto* view = new QTableView(parent);
    view->setObjectName(objectName);
    view->setSelectionBehavior(QAbstractItemView::SelectRows);
    view->setSelectionMode(QAbstractItemView::SingleSelection);
    view->setAlternatingRowColors(true);
    view->verticalHeader()->hide();
    view->verticalHeader()->setDefaultSectionSize(view->fontMetrics().height() + 6);
    view->horizontalHeader()->setSectionResizeMode(QHeaderView::ResizeToContents);
    view->horizontalHeader()->setStretchLastSection(true);
    view->setWordWrap(false);
    return view;
}

QVariant right()
{
    return int(Qt::AlignRight | Qt::AlignVCenter);
}

// Deterministic jitter in [-0.3, 0.3] so the strip plot looks the same on every run.
double jitter(int i)
{
    std::uint32_t x = std::uint32_t(i) * 2654435761u + 12345u;
    x ^= x >> 15;
    x *= 2246822519u;
    x ^= x >> 13;
    return (double(x % 10007) / 10006.0 - 0.5) * 0.6;
}

QString typeName(ql::TensorType type)
{
    const std::string_view name = ql::tensorTypeName(type);
    return QString::fromLatin1(name.data(), qsizetype(name.size())).toLower();
}

QString formatLabel(const ql::QuantFormat& f)
{
    return QString::fromStdString(ql::formatToString(f));
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Table models

class GridTableModel : public QAbstractTableModel {
public:
    using QAbstractTableModel::QAbstractTableModel;
    enum Column { Grid, Scale, Zero, Levels, Mse, Moved, ColumnCount };
    void setGrid(std::shared_ptr<const GridData> data)
    {
        beginResetModel();
        m_data = std::move(data);
        endResetModel();
    }
    int rowCount(const QModelIndex& parent = {}) const override
    {
        return parent.isValid() || !m_data ? 0 : int(m_data->grids.size());
    }
    int columnCount(const QModelIndex& parent = {}) const override
    {
        return parent.isValid() ? 0 : ColumnCount;
    }
    QVariant headerData(int section, Qt::Orientation o, int role) const override
    {
        if (o != Qt::Horizontal) return {};
        static const char* names[] = {"Grid",   "Scale",     "Zero / min",
                                      "Levels", "Group MSE", "Moved most (col: q − w)"};
        if (role == Qt::DisplayRole && section < ColumnCount) return QObject::tr(names[section]);
        return {};
    }
    QVariant data(const QModelIndex& index, int role) const override
    {
        if (!index.isValid() || !m_data) return {};
        const GridRow& g = m_data->grids[std::size_t(index.row())];
        if (role == Qt::DecorationRole && index.column() == Grid) return gridColor(index.row());
        if (role == Qt::ToolTipRole) return g.note.isEmpty() ? formatLabel(g.format) : g.note;
        if (role == Qt::TextAlignmentRole && index.column() != Grid && index.column() != Moved)
            return right();
        if (role == Qt::UserRole) {
            switch (index.column()) {
                case Scale: return g.scale;
                case Zero: return g.hasZeroPoint ? g.zeroPoint : g.step.offset;
                case Levels: return int(g.levels.size());
                case Mse: return g.groupMse;
            }
            return {};
        }
        if (role != Qt::DisplayRole) return {};
        if (!g.ok && index.column() != Grid) return index.column() == Scale ? g.note : QVariant();
        switch (index.column()) {
            case Grid: return g.note.isEmpty() ? g.label : g.label + QStringLiteral(" *");
            case Scale: return human::number(g.scale, 4);
            case Zero:
                if (g.hasZeroPoint) return QString::number(g.zeroPoint);
                return g.step.offset != 0 ? human::number(g.step.offset, 4) : QStringLiteral("—");
            case Levels: return int(g.levels.size());
            case Mse: return human::number(g.groupMse, 3);
            case Moved: {
                QStringList parts;
                for (const auto& [col, delta] : g.moved)
                    parts << QStringLiteral("%1: %2").arg(col).arg(human::number(delta, 3));
                return parts.join(QStringLiteral(", "));
            }
        }
        return {};
    }

private:
    std::shared_ptr<const GridData> m_data;
};

class StepTableModel : public QAbstractTableModel {
public:
    using QAbstractTableModel::QAbstractTableModel;
    enum Column {
        Grid,
        Scale,
        Offset,
        Scaled,
        Rounded,
        Clamped,
        Code,
        Dequant,
        Error,
        Note,
        Count
    };
    void setGrid(std::shared_ptr<const GridData> data)
    {
        beginResetModel();
        m_data = std::move(data);
        endResetModel();
    }
    int rowCount(const QModelIndex& parent = {}) const override
    {
        return parent.isValid() || !m_data ? 0 : int(m_data->grids.size());
    }
    int columnCount(const QModelIndex& parent = {}) const override
    {
        return parent.isValid() ? 0 : Count;
    }
    QVariant headerData(int section, Qt::Orientation o, int role) const override
    {
        if (o != Qt::Horizontal) return {};
        static const char* names[] = {"Grid",    "Scale", "Offset",      "On code axis", "Rounded",
                                      "Clamped", "Code",  "Dequantized", "Error",        "Note"};
        if (role == Qt::DisplayRole && section < Count) return QObject::tr(names[section]);
        if (role == Qt::ToolTipRole && section == Scaled)
            return QObject::tr(
                "(w − offset) / scale: the weight on the code axis, where rounding "
                "happens");
        return {};
    }
    QVariant data(const QModelIndex& index, int role) const override
    {
        if (!index.isValid() || !m_data) return {};
        const GridRow& g = m_data->grids[std::size_t(index.row())];
        const ql::QuantStep& s = g.step;
        if (role == Qt::DecorationRole && index.column() == Grid) return gridColor(index.row());
        if (role == Qt::TextAlignmentRole && index.column() != Grid && index.column() != Note)
            return right();
        if (role == Qt::UserRole) {
            switch (index.column()) {
                case Scale: return s.scale;
                case Offset: return s.offset;
                case Scaled: return s.scaled;
                case Rounded: return s.rounded;
                case Clamped: return s.clamped;
                case Code: return s.code;
                case Dequant: return s.dequantized;
                case Error: return double(s.dequantized) - double(s.weight);
            }
            return {};
        }
        if (role != Qt::DisplayRole && role != Qt::ToolTipRole) return {};
        if (!g.ok) return index.column() == Grid ? QVariant(g.label) : QVariant();
        switch (index.column()) {
            case Grid: return g.label;
            case Scale: return human::number(s.scale, 4);
            case Offset: return human::number(s.offset, 4);
            case Scaled: return human::number(s.scaled, 4);
            case Rounded: return human::number(s.rounded, 4);
            case Clamped:
                return s.clamped != s.rounded
                           ? QStringLiteral("%1 (clamped to [%2, %3])")
                                 .arg(human::number(s.clamped, 4), human::number(s.codeMin, 4),
                                      human::number(s.codeMax, 4))
                           : human::number(s.clamped, 4);
            case Code: return s.code;
            case Dequant: return human::number(s.dequantized, 5);
            case Error: return human::number(double(s.dequantized) - double(s.weight), 3);
            case Note: return QString::fromStdString(s.note);
        }
        return {};
    }

private:
    std::shared_ptr<const GridData> m_data;
};

class FormatTableModel : public QAbstractTableModel {
public:
    using QAbstractTableModel::QAbstractTableModel;
    enum Column { Format, Family, Bpw, Bytes, Mse, Sqnr, MaxError, Note, ColumnCount };
    void setRows(std::vector<FormatRow> rows)
    {
        beginResetModel();
        m_rows = std::move(rows);
        endResetModel();
    }
    const std::vector<FormatRow>& rows() const { return m_rows; }
    int rowCount(const QModelIndex& parent = {}) const override
    {
        return parent.isValid() ? 0 : int(m_rows.size());
    }
    int columnCount(const QModelIndex& parent = {}) const override
    {
        return parent.isValid() ? 0 : ColumnCount;
    }
    QVariant headerData(int section, Qt::Orientation o, int role) const override
    {
        if (o != Qt::Horizontal) return {};
        static const char* names[] = {"Format", "Family",    "Bits/weight", "Size",
                                      "MSE",    "SQNR (dB)", "Max |error|", "Note"};
        if (role == Qt::DisplayRole && section < ColumnCount) return QObject::tr(names[section]);
        return {};
    }
    QVariant data(const QModelIndex& index, int role) const override
    {
        if (!index.isValid() || index.row() >= int(m_rows.size())) return {};
        const FormatRow& r = m_rows[std::size_t(index.row())];
        if (role == Qt::TextAlignmentRole && index.column() >= Bpw && index.column() < Note)
            return right();
        if (role == Qt::UserRole) {  // sort keys and raw numbers
            const double nan = std::numeric_limits<double>::quiet_NaN();
            switch (index.column()) {
                case Format: return r.rule;
                case Family: return r.family;
                case Bpw: return r.ok ? r.bitsPerWeight : nan;
                case Bytes: return r.ok ? double(r.bytes) : nan;
                case Mse: return r.ok ? r.metrics.mse : nan;
                case Sqnr: return r.ok ? r.metrics.sqnrDb : nan;
                case MaxError: return r.ok ? r.metrics.maxAbsError : nan;
                case Note: return r.note;
            }
            return {};
        }
        if (role == Qt::ToolTipRole && index.column() == Note) return r.note;
        if (role != Qt::DisplayRole) return {};
        switch (index.column()) {
            case Format: return r.rule;
            case Family: return r.family;
            case Note: return r.note;
        }
        if (!r.ok) return index.column() == Bpw ? QStringLiteral("n/a") : QString();
        switch (index.column()) {
            case Bpw: return QString::number(r.bitsPerWeight, 'f', 3);
            case Bytes: return human::bytes(r.bytes);
            case Mse: return human::number(r.metrics.mse, 3);
            case Sqnr:
                return std::isfinite(r.metrics.sqnrDb) ? QString::number(r.metrics.sqnrDb, 'f', 2)
                                                       : QStringLiteral("∞ (exact)");
            case MaxError: return human::number(r.metrics.maxAbsError, 3);
        }
        return {};
    }

private:
    std::vector<FormatRow> m_rows;
};

// ---------------------------------------------------------------------------------------------
// Core computations (run on the worker)

std::vector<std::pair<QString, ql::QuantFormat>> GridPane::gridFormats(int groupSize,
                                                                       ql::TensorType ggml)
{
    const auto g = std::int64_t(groupSize);
    return {
        {QObject::tr("INT4 sym g%1").arg(groupSize),
         ql::uniformFormat(4, true, ql::Granularity::PerGroup, g)},
        {QObject::tr("INT4 asym g%1").arg(groupSize),
         ql::uniformFormat(4, false, ql::Granularity::PerGroup, g)},
        {QObject::tr("NF4 g%1").arg(groupSize), ql::nf4Format(false, g)},
        {QObject::tr("MXFP4 (E2M1, 32)"), ql::fp4Format(ql::Fp4Variant::MXFP4)},
        {typeName(ggml), ql::ggmlFormat(ggml)},
    };
}

ql::Result<GridData> GridPane::computeGrid(const std::vector<float>& rowValues, int row, int group,
                                           int groupSize, int column, ql::TensorType ggml)
{
    const auto cols = std::int64_t(rowValues.size());
    GridData out;
    out.row = row;
    out.group = group;
    out.groupSize = groupSize;
    out.firstCol = group * groupSize;
    if (cols <= 0 || groupSize <= 0 || out.firstCol >= cols)
        return ql::makeError(ql::ErrorCode::InvalidArgument, "group outside the row");
    const auto last = std::min<std::int64_t>(cols, out.firstCol + std::int64_t(groupSize));
    out.column = std::clamp<int>(column, out.firstCol, int(last) - 1);
    out.weights.assign(rowValues.begin() + out.firstCol, rowValues.begin() + last);

    const auto [lo, hi] = std::minmax_element(out.weights.begin(), out.weights.end());
    const double pad = std::max(1e-12, double(*hi - *lo) * 1e-6);
    const ql::Histogram hist = ql::computeHistogram(out.weights, kHistBins, *lo - pad, *hi + pad);
    out.histBinWidth = hist.binWidth();
    for (std::size_t i = 0; i < hist.counts.size(); ++i) {
        out.histKeys.push_back(hist.lo + (double(i) + 0.5) * hist.binWidth());
        out.histCounts.push_back(double(hist.counts[i]));
    }

    for (const auto& [label, wanted] : gridFormats(groupSize, ggml)) {
        GridRow g;
        g.label = label;
        g.format = wanted;
        if (ql::Status fits = ql::checkFormatFits(wanted, 1, cols); !fits) {
            g.format = ql::fallbackFormat(wanted, 1, cols);
            g.note = QString::fromStdString(fits.error().message);
        }
        if (g.format.kind == ql::QuantKind::Float) {
            out.grids.push_back(std::move(g));  // no grid to draw: the fallback is a float
            continue;
        }
        auto q = ql::quantizeRtn(rowValues.data(), 1, cols, g.format, nullptr, {}, 1);
        if (!q) {
            g.note = QString::fromStdString(q.error().message);
            out.grids.push_back(std::move(g));
            continue;
        }
        auto levels = ql::gridLevels(*q, 0, out.firstCol);
        auto decoded = q->dequantize();
        auto first = ql::explainWeight(*q, rowValues[std::size_t(out.firstCol)], 0, out.firstCol);
        auto step = ql::explainWeight(*q, rowValues[std::size_t(out.column)], 0, out.column);
        if (!levels || !decoded || !first || !step) {
            g.note = QObject::tr("could not explain this grid");
            out.grids.push_back(std::move(g));
            continue;
        }
        g.ok = true;
        g.levels = std::move(levels).value();
        g.scale = first->scale;
        g.hasZeroPoint = g.format.kind == ql::QuantKind::Uniform && !g.format.symmetric;
        g.zeroPoint = first->zeroPoint;
        g.step = std::move(step).value();
        g.step.row = row;
        g.dequantized.assign(decoded->begin() + out.firstCol, decoded->begin() + last);
        double sum = 0;
        std::vector<std::pair<int, float>> moved;
        for (std::size_t i = 0; i < out.weights.size(); ++i) {
            const double d = double(g.dequantized[i]) - double(out.weights[i]);
            sum += d * d;
            moved.emplace_back(out.firstCol + int(i), float(d));
        }
        g.groupMse = sum / double(out.weights.size());
        const std::size_t shown = std::min<std::size_t>(kMovedShown, moved.size());
        std::partial_sort(moved.begin(), moved.begin() + shown, moved.end(),
                          [](auto& a, auto& b) { return std::abs(a.second) > std::abs(b.second); });
        moved.resize(shown);
        g.moved = std::move(moved);
        out.grids.push_back(std::move(g));
    }
    return out;
}

ql::Result<std::vector<FormatRow>> GridPane::computeFormatTable(const std::vector<float>& w,
                                                                std::int64_t rows,
                                                                std::int64_t cols,
                                                                const ql::ProgressFn& progress)
{
    const auto presets = ql::formatPresets();
    std::vector<FormatRow> out;
    for (std::size_t i = 0; i < presets.size(); ++i) {
        const ql::FormatPreset& preset = presets[i];
        FormatRow r;
        r.rule = QString::fromLatin1(preset.rule.data(), qsizetype(preset.rule.size()));
        r.family = QString::fromLatin1(preset.family.data(), qsizetype(preset.family.size()));
        auto parsed = ql::parseQuantFormat(preset.rule);
        if (!parsed) {
            r.note = QString::fromStdString(parsed.error().message);
            out.push_back(std::move(r));
            continue;
        }
        ql::QuantFormat format = *parsed;
        if (ql::Status fits = ql::checkFormatFits(format, rows, cols); !fits) {
            format = ql::fallbackFormat(format, rows, cols);
            r.note = QObject::tr("n/a: %1; showing %2")
                         .arg(QString::fromStdString(fits.error().message), formatLabel(format));
        }
        r.used = formatLabel(format);
        const double base = double(i) / double(presets.size());
        const double span = 1.0 / double(presets.size());
        const std::string what = "quantizing to " + std::string(preset.rule);
        const ql::ProgressFn sub = [&](double f, std::string_view) {
            return ql::reportProgress(progress, base + span * f, what);
        };
        auto q = ql::quantizeRtn(w.data(), rows, cols, format, nullptr, sub);
        if (!q) {
            if (q.error().code == ql::ErrorCode::Cancelled) return q.error();
            r.note = QString::fromStdString(q.error().message);
            out.push_back(std::move(r));
            continue;
        }
        auto decoded = q->dequantize();
        if (!decoded) return decoded.error();
        auto metrics = ql::computeErrorMetrics(w, *decoded);
        if (!metrics) return metrics.error();
        r.ok = true;
        r.metrics = *metrics;
        r.bitsPerWeight = q->bitsPerWeight();
        r.bytes = (q->storedBits() + 7) / 8;
        out.push_back(std::move(r));
        if (!ql::reportProgress(progress, base + span, what))
            return ql::makeError(ql::ErrorCode::Cancelled, "cancelled");
    }
    return out;
}

// ---------------------------------------------------------------------------------------------
// The pane

GridPane::GridPane(AppSession* session, JobRunner* jobs, CalibrationState* state, QWidget* parent)
    : QWidget(parent), m_session(session), m_jobs(jobs), m_state(state)
{
    m_title = new QLabel(this);
    m_title->setTextFormat(Qt::RichText);
    m_title->setSizePolicy(QSizePolicy::Ignored, QSizePolicy::Preferred);
    m_status = new QLabel(this);
    m_status->setObjectName(QStringLiteral("gridStatus"));
    auto* header = new QHBoxLayout;
    header->setContentsMargins(6, 2, 6, 2);
    header->addWidget(m_title, 1);
    header->addWidget(m_status);

    auto* upper = new QSplitter(Qt::Horizontal, this);
    upper->addWidget(buildPlots());
    upper->addWidget(buildTables());
    upper->setStretchFactor(0, 1);
    upper->setStretchFactor(1, 1);
    upper->setSizes({700, 700});
    auto* main = new QSplitter(Qt::Vertical, this);
    main->setObjectName(QStringLiteral("gridSplitter"));
    main->addWidget(upper);
    main->addWidget(buildFormatTable());
    main->setStretchFactor(0, 3);
    main->setStretchFactor(1, 2);

    auto* content = new QWidget(this);
    auto* contentLayout = new QVBoxLayout(content);
    contentLayout->setContentsMargins(0, 0, 0, 0);
    contentLayout->addLayout(header);
    contentLayout->addWidget(buildControls());
    contentLayout->addWidget(main, 1);

    m_placeholder = new QLabel(tr("Select a weight matrix in the model tree to see how its "
                                  "weights land on the quantization grids."),
                               this);
    m_placeholder->setAlignment(Qt::AlignCenter);
    m_placeholder->setWordWrap(true);
    m_stack = new QStackedWidget(this);
    m_stack->addWidget(m_placeholder);
    m_stack->addWidget(content);
    auto* layout = new QVBoxLayout(this);
    layout->setContentsMargins(0, 0, 0, 0);
    layout->addWidget(m_stack);

    connect(m_session, &AppSession::modelLoaded, this, &GridPane::onModelLoaded);
    connect(m_session, &AppSession::modelClosed, this, &GridPane::onModelClosed);
    connect(m_session, &AppSession::tensorSelected, this, &GridPane::onTensorSelected);
    if (m_session->hasModel() && !m_session->selectedTensor().isEmpty())
        onTensorSelected(m_session->selectedTensor());
}

GridPane::~GridPane() = default;

QWidget* GridPane::buildControls()
{
    auto* bar = new QWidget(this);
    m_rowSpin = new QSpinBox(bar);
    m_rowSpin->setObjectName(QStringLiteral("gridRow"));
    m_rowSpin->setToolTip(tr("Output channel (row) of the weight matrix"));
    m_groupSize = new QComboBox(bar);
    m_groupSize->setObjectName(QStringLiteral("gridGroupSize"));
    for (int size : {32, 64, 128}) m_groupSize->addItem(QString::number(size), size);
    m_groupSize->setToolTip(
        tr("Weights sharing one scale in the INT4 and NF4 grids (MXFP4 and "
           "the llama.cpp formats have fixed blocks)"));
    m_groupSpin = new QSpinBox(bar);
    m_groupSpin->setObjectName(QStringLiteral("gridGroup"));
    m_groupSpin->setToolTip(tr("Which group of the row"));
    m_ggmlCombo = new QComboBox(bar);
    m_ggmlCombo->setObjectName(QStringLiteral("gridGgml"));
    for (ql::TensorType t : kGgmlChoices) m_ggmlCombo->addItem(typeName(t), int(t));
    m_ggmlCombo->setToolTip(tr("The llama.cpp format drawn beside the others"));
    m_colSpin = new QSpinBox(bar);
    m_colSpin->setObjectName(QStringLiteral("gridColumn"));
    m_colSpin->setToolTip(tr("The weight followed through every grid (or click a point)"));

    auto* layout = new QHBoxLayout(bar);
    layout->setContentsMargins(6, 0, 6, 0);
    const auto add = [&](const QString& label, QWidget* w) {
        layout->addWidget(new QLabel(label, bar));
        layout->addWidget(w);
        layout->addSpacing(8);
    };
    add(tr("Row:"), m_rowSpin);
    add(tr("Group size:"), m_groupSize);
    add(tr("Group:"), m_groupSpin);
    add(tr("llama.cpp format:"), m_ggmlCombo);
    add(tr("Follow column:"), m_colSpin);
    layout->addStretch(1);

    connect(m_rowSpin, &QSpinBox::valueChanged, this, &GridPane::requestGrid);
    connect(m_groupSpin, &QSpinBox::valueChanged, this, [this](int group) {
        const QSignalBlocker block(m_colSpin);
        m_colSpin->setValue(group * m_groupSize->currentData().toInt());
        requestGrid();
    });
    connect(m_groupSize, &QComboBox::currentIndexChanged, this, [this] {
        updateSpinRanges();
        requestGrid();
    });
    connect(m_ggmlCombo, &QComboBox::currentIndexChanged, this, &GridPane::requestGrid);
    connect(m_colSpin, &QSpinBox::valueChanged, this, [this](int col) {
        const int size = m_groupSize->currentData().toInt();
        if (col / size != m_groupSpin->value()) {
            const QSignalBlocker block(m_groupSpin);
            m_groupSpin->setValue(col / size);
        }
        requestGrid();
    });
    return bar;
}

QWidget* GridPane::buildPlots()
{
    m_plotBox = new QGroupBox(tr("Weights of the group on each grid"), this);
    m_stripPlot = makePlot(m_plotBox, QStringLiteral("gridStrip"));
    m_strip = m_stripPlot->addGraph();
    m_strip->setLineStyle(QCPGraph::lsNone);
    m_strip->setScatterStyle(
        QCPScatterStyle(QCPScatterStyle::ssCircle, QColor(kWeightColor), QColor(0, 0, 0, 60), 6));
    m_followed = m_stripPlot->addGraph();
    m_followed->setLineStyle(QCPGraph::lsNone);
    m_followed->setScatterStyle(
        QCPScatterStyle(QCPScatterStyle::ssCircle, QPen(Qt::black, 1.5), kFollowColor, 11));
    m_stripPlot->xAxis->setLabel(tr("weight value"));
    m_histPlot = makePlot(m_plotBox, QStringLiteral("gridHistogram"));
    m_histBars = new QCPBars(m_histPlot->xAxis, m_histPlot->yAxis);
    m_histBars->setPen(Qt::NoPen);
    m_histBars->setBrush(QColor(0x3d, 0x6f, 0xb0));
    m_histPlot->yAxis->setLabel(tr("count"));
    m_histPlot->setMaximumHeight(170);
    // The two plots share the x axis: equal fixed left margins keep their axes aligned.
    for (QCustomPlot* plot : {m_stripPlot, m_histPlot}) {
        plot->axisRect()->setAutoMargins(QCP::msRight | QCP::msTop | QCP::msBottom);
        plot->axisRect()->setMargins(QMargins(118, 0, 0, 0));
    }
    connect(m_stripPlot->xAxis, qOverload<const QCPRange&>(&QCPAxis::rangeChanged), this,
            [this](const QCPRange& range) {
                m_histPlot->xAxis->setRange(range);
                m_histPlot->replot(QCustomPlot::rpQueuedReplot);
            });
    connect(m_stripPlot, &QCustomPlot::plottableClick, this, &GridPane::onPlottableClick);

    auto* layout = new QVBoxLayout(m_plotBox);
    layout->setContentsMargins(4, 4, 4, 4);
    layout->setSpacing(2);
    layout->addWidget(m_stripPlot, 3);
    layout->addWidget(m_histPlot, 1);
    return m_plotBox;
}

QWidget* GridPane::buildTables()
{
    auto* box = new QWidget(this);
    auto* gridBox = new QGroupBox(tr("Grids on this group"), box);
    m_gridModel = new GridTableModel(this);
    auto* gridView = makeTable(gridBox, QStringLiteral("gridTable"));
    gridView->setModel(m_gridModel);
    auto* gridLayout = new QVBoxLayout(gridBox);
    gridLayout->setContentsMargins(4, 4, 4, 4);
    gridLayout->addWidget(gridView);

    m_stepBox = new QGroupBox(tr("Step through one weight"), box);
    m_stepModel = new StepTableModel(this);
    auto* stepView = makeTable(m_stepBox, QStringLiteral("gridSteps"));
    stepView->setModel(m_stepModel);
    auto* stepLayout = new QVBoxLayout(m_stepBox);
    stepLayout->setContentsMargins(4, 4, 4, 4);
    stepLayout->addWidget(stepView);
    auto* how = new QLabel(tr("Each grid divides the weight by its scale (after removing the "
                              "offset), rounds to the nearest code, clamps it to the code range "
                              "and decodes it back; the error is dequantized − w."),
                           m_stepBox);
    how->setWordWrap(true);
    stepLayout->addWidget(how);

    // Five grids: the tables need no more height than their rows.
    for (QTableView* view : {gridView, stepView})
        view->setMaximumHeight(view->verticalHeader()->defaultSectionSize() * 7 +
                               view->horizontalHeader()->sizeHint().height());
    auto* layout = new QVBoxLayout(box);
    layout->setContentsMargins(0, 0, 0, 0);
    layout->addWidget(gridBox);
    layout->addWidget(m_stepBox);
    layout->addStretch(1);
    return box;
}

QWidget* GridPane::buildFormatTable()
{
    m_formatBox = new QGroupBox(tr("Every format on the whole tensor"), this);
    m_formatModel = new FormatTableModel(this);
    m_formatProxy = new QSortFilterProxyModel(this);
    m_formatProxy->setSourceModel(m_formatModel);
    m_formatProxy->setSortRole(Qt::UserRole);
    m_formatView = makeTable(m_formatBox, QStringLiteral("formatTable"));
    m_formatView->setModel(m_formatProxy);
    m_formatView->setSortingEnabled(true);
    m_formatView->sortByColumn(FormatTableModel::Bpw, Qt::DescendingOrder);
    auto* layout = new QVBoxLayout(m_formatBox);
    layout->setContentsMargins(4, 4, 4, 4);
    layout->addWidget(m_formatView);
    return m_formatBox;
}

QAbstractItemModel* GridPane::formatModel() const
{
    return m_formatProxy;
}

QAbstractItemModel* GridPane::formatSourceModel() const
{
    return m_formatModel;
}

const std::vector<FormatRow>& GridPane::formatRows() const
{
    return m_formatModel->rows();
}

QAbstractItemModel* GridPane::gridModel() const
{
    return m_gridModel;
}

QAbstractItemModel* GridPane::stepModel() const
{
    return m_stepModel;
}

std::vector<double> GridPane::drawnLevels(int index) const
{
    std::vector<double> out;
    if (index < 0 || index >= int(m_levelLines.size())) return out;
    for (QCPItemLine* line : m_levelLines[std::size_t(index)])
        out.push_back(line->start->coords().x());
    return out;
}

void GridPane::setRow(int row)
{
    m_rowSpin->setValue(row);
}

void GridPane::setGroup(int group)
{
    m_groupSpin->setValue(group);
}

void GridPane::setGroupSize(int size)
{
    m_groupSize->setCurrentIndex(m_groupSize->findData(size));
}

void GridPane::setColumn(int column)
{
    m_colSpin->setValue(column);
}

void GridPane::setGgmlType(ql::TensorType type)
{
    m_ggmlCombo->setCurrentIndex(m_ggmlCombo->findData(int(type)));
}

void GridPane::setStatus(const QString& text)
{
    m_status->setText(text);
}

void GridPane::onModelLoaded()
{
    onModelClosed();
}

void GridPane::onModelClosed()
{
    m_jobs->cancel(kWeightsTag);
    m_jobs->cancel(kGridTag);
    m_jobs->cancel(kFormatTag);
    m_tensor.clear();
    m_weights.reset();
    m_grid.reset();
    m_gridModel->setGrid(nullptr);
    m_stepModel->setGrid(nullptr);
    m_formatModel->setRows({});
    m_stack->setCurrentIndex(0);
}

void GridPane::onTensorSelected(const QString& name)
{
    const ql::TensorInfo* info = m_session->selectedTensorInfo();
    m_weights.reset();
    m_grid.reset();
    m_tensor = name;
    if (!info || info->elementCount() <= 0 || info->shape.size() > 2) {
        m_stack->setCurrentIndex(0);
        return;
    }
    m_rows = info->rows();
    m_cols = info->cols();
    m_title->setText(tr("<b>%1</b> &nbsp; %2 × %3 · %4")
                         .arg(name.toHtmlEscaped())
                         .arg(m_rows)
                         .arg(m_cols)
                         .arg(typeName(info->type).toUpper()));
    updateSpinRanges();
    m_stack->setCurrentIndex(1);
    requestWeights();
}

void GridPane::updateSpinRanges()
{
    const int size = m_groupSize->currentData().toInt();
    const QSignalBlocker b1(m_rowSpin), b2(m_groupSpin), b3(m_colSpin);
    m_rowSpin->setRange(0, int(std::max<std::int64_t>(0, m_rows - 1)));
    m_groupSpin->setRange(0, int(std::max<std::int64_t>(0, (m_cols + size - 1) / size - 1)));
    m_colSpin->setRange(0, int(std::max<std::int64_t>(0, m_cols - 1)));
    m_colSpin->setValue(std::clamp(
        m_colSpin->value(), m_groupSpin->value() * size,
        int(std::min<std::int64_t>(m_cols, (m_groupSpin->value() + 1) * std::int64_t(size)) - 1)));
}

void GridPane::requestWeights()
{
    const auto model = m_session->model();
    const ql::TensorInfo* info = m_session->selectedTensorInfo();
    if (!model || !info) return;
    m_gridPending = m_formatPending = true;
    setStatus(tr("decoding…"));
    const ql::TensorInfo tensor = *info;
    const QString name = m_tensor;
    JobRunner::Work<std::shared_ptr<const std::vector<float>>> work =
        [model, tensor](const ql::ProgressFn& progress)
        -> ql::Result<std::shared_ptr<const std::vector<float>>> {
        auto values = ql::dequantizeTensor(*model, tensor, progress);
        if (!values) return values.error();
        return std::make_shared<const std::vector<float>>(std::move(values).value());
    };
    m_jobs->run(
        kWeightsTag, this, std::move(work),
        [this, name](ql::Result<std::shared_ptr<const std::vector<float>>> values) {
            if (name != m_tensor) return;
            if (!values) {
                m_gridPending = m_formatPending = false;
                setStatus(
                    values.error().code == ql::ErrorCode::Cancelled
                        ? QString()
                        : tr("failed: %1").arg(QString::fromStdString(values.error().message)));
                return;
            }
            m_weights = *values;
            requestGrid();
            requestFormatTable();
        });
}

void GridPane::requestGrid()
{
    if (!m_weights || m_cols <= 0) return;
    const int row = std::clamp(m_rowSpin->value(), 0, int(m_rows - 1));
    std::vector<float> rowValues(m_weights->begin() + std::ptrdiff_t(row * m_cols),
                                 m_weights->begin() + std::ptrdiff_t((row + 1) * m_cols));
    const int group = m_groupSpin->value();
    const int size = m_groupSize->currentData().toInt();
    const int column = m_colSpin->value();
    const auto ggml = ql::TensorType(m_ggmlCombo->currentData().toInt());
    m_gridPending = true;
    JobRunner::Work<std::shared_ptr<const GridData>> work =
        [rowValues = std::move(rowValues), row, group, size, column,
         ggml](const ql::ProgressFn&) -> ql::Result<std::shared_ptr<const GridData>> {
        auto grid = computeGrid(rowValues, row, group, size, column, ggml);
        if (!grid) return grid.error();
        return std::make_shared<const GridData>(std::move(grid).value());
    };
    const QString name = m_tensor;
    m_jobs->run(kGridTag, this, std::move(work),
                [this, name](ql::Result<std::shared_ptr<const GridData>> grid) {
                    if (name != m_tensor) return;
                    m_gridPending = false;
                    if (!grid) {
                        if (grid.error().code != ql::ErrorCode::Cancelled)
                            setStatus(QString::fromStdString(grid.error().message));
                        return;
                    }
                    m_grid = *grid;
                    drawGrid();
                });
}

void GridPane::requestFormatTable()
{
    if (!m_weights) return;
    m_formatPending = true;
    m_formatBox->setTitle(tr("Every format on the whole tensor — computing…"));
    const auto weights = m_weights;
    const std::int64_t rows = m_rows, cols = m_cols;
    JobRunner::Work<std::vector<FormatRow>> work = [weights, rows,
                                                    cols](const ql::ProgressFn& progress) {
        return computeFormatTable(*weights, rows, cols, progress);
    };
    const QString name = m_tensor;
    m_jobs->run(
        kFormatTag, this, std::move(work), [this, name](ql::Result<std::vector<FormatRow>> rows) {
            if (name != m_tensor) return;
            m_formatPending = false;
            setStatus(QString());
            if (!rows) {
                m_formatBox->setTitle(tr("Every format on the whole tensor — %1")
                                          .arg(QString::fromStdString(rows.error().message)));
                return;
            }
            m_formatModel->setRows(std::move(rows).value());
            m_formatBox->setTitle(tr("Every format on %1 (%2 weights) — click a header "
                                     "to sort")
                                      .arg(m_tensor)
                                      .arg(human::count(m_rows * m_cols)));
            emit formatTableReady();
        });
}

void GridPane::drawGrid()
{
    const GridData& d = *m_grid;
    m_gridModel->setGrid(m_grid);
    m_stepModel->setGrid(m_grid);

    for (auto& lines : m_levelLines)
        for (QCPItemLine* line : lines) m_stripPlot->removeItem(line);
    m_levelLines.clear();
    for (QCPItemLine* mark : m_followMarks) m_stripPlot->removeItem(mark);
    m_followMarks.clear();

    // Lanes from the top: the weights, then one per grid.
    const int n = int(d.grids.size());
    const double weightsLane = n;
    std::vector<std::pair<double, int>> points;
    for (std::size_t i = 0; i < d.weights.size(); ++i)
        points.emplace_back(double(d.weights[i]), d.firstCol + int(i));
    std::sort(points.begin(), points.end());
    QVector<double> xs, ys;
    m_stripCols.clear();
    for (const auto& [x, col] : points) {
        xs << x;
        ys << weightsLane + jitter(col);
        m_stripCols.push_back(col);
    }
    m_strip->setData(xs, ys, true);
    const double followed = d.weights[std::size_t(d.column - d.firstCol)];
    m_followed->setData({followed}, {weightsLane + jitter(d.column)}, true);

    double lo = *std::min_element(d.weights.begin(), d.weights.end());
    double hi = *std::max_element(d.weights.begin(), d.weights.end());
    auto ticker = QSharedPointer<QCPAxisTickerText>::create();
    ticker->addTick(weightsLane, tr("weights"));
    for (int i = 0; i < n; ++i) {
        const GridRow& g = d.grids[std::size_t(i)];
        const double lane = n - 1 - i;
        ticker->addTick(lane, g.label);
        std::vector<QCPItemLine*> lines;
        for (float level : g.levels) {
            auto* line = new QCPItemLine(m_stripPlot);
            line->setPen(QPen(gridColor(i), 1.6));
            line->start->setCoords(level, lane - 0.38);
            line->end->setCoords(level, lane + 0.38);
            line->setSelectable(false);
            lines.push_back(line);
        }
        m_levelLines.push_back(std::move(lines));
        // Where the followed weight lands on this grid.
        if (g.ok) {
            auto* mark = new QCPItemLine(m_stripPlot);
            mark->setPen(QPen(kFollowColor, 3));
            mark->start->setCoords(g.step.dequantized, lane - 0.45);
            mark->end->setCoords(g.step.dequantized, lane + 0.45);
            mark->setSelectable(false);
            m_followMarks.push_back(mark);
        }
    }
    m_stripPlot->yAxis->setTicker(ticker);
    m_stripPlot->yAxis->setRange(-0.7, weightsLane + 0.7);
    m_stripPlot->yAxis->grid()->setVisible(false);
    const double pad = std::max(1e-9, (hi - lo) * 0.08);
    m_stripPlot->xAxis->setRange(lo - pad, hi + pad);
    m_stripPlot->replot();

    m_histBars->setWidth(d.histBinWidth > 0 ? d.histBinWidth : 1.0);
    m_histBars->setData(QVector<double>(d.histKeys.begin(), d.histKeys.end()),
                        QVector<double>(d.histCounts.begin(), d.histCounts.end()), true);
    double maxCount = 1;
    for (double c : d.histCounts) maxCount = std::max(maxCount, c);
    m_histPlot->yAxis->setRange(0, maxCount * 1.1);
    m_histPlot->xAxis->setRange(m_stripPlot->xAxis->range());
    m_histPlot->replot();

    m_plotBox->setTitle(tr("Row %1, columns %2–%3: %4 weights on each grid (ticks: levels; "
                           "orange: column %5)")
                            .arg(d.row)
                            .arg(d.firstCol)
                            .arg(d.firstCol + int(d.weights.size()) - 1)
                            .arg(d.weights.size())
                            .arg(d.column));
    m_stepBox->setTitle(
        tr("Step through w[%1, %2] = %3").arg(d.row).arg(d.column).arg(human::number(followed, 5)));
    emit gridDrawn();
}

void GridPane::onPlottableClick(QCPAbstractPlottable* plottable, int dataIndex, QMouseEvent*)
{
    if (plottable != m_strip || dataIndex < 0 || dataIndex >= int(m_stripCols.size())) return;
    m_colSpin->setValue(m_stripCols[std::size_t(dataIndex)]);
}
