#include "activationspane.h"

#include <QAbstractTableModel>
#include <QCheckBox>
#include <QComboBox>
#include <QDoubleSpinBox>
#include <QGroupBox>
#include <QHBoxLayout>
#include <QHeaderView>
#include <QLabel>
#include <QRegularExpression>
#include <QSignalBlocker>
#include <QSpinBox>
#include <QSplitter>
#include <QStackedWidget>
#include <QTableView>
#include <QVBoxLayout>

#include <qcustomplot.h>

#include <algorithm>
#include <cmath>

#include "appsession.h"
#include "calibrationstate.h"
#include "format.h"

namespace {

const QColor kValueColor(0x3d, 0x6f, 0xb0);
const QColor kOutlierColor(0xd6, 0x3b, 0x3b);
const QColor kThresholdColor(0xe0, 0x8a, 0x1e);
constexpr int kTopChannelsShown = 8;

// One colour per range method, in RangeMethod order.
QColor rangeColor(ql::RangeMethod method)
{
    switch (method) {
        case ql::RangeMethod::MinMax: return QColor(0x55, 0x55, 0x55);
        case ql::RangeMethod::Percentile999: return QColor(0x2c, 0xa0, 0x2c);
        case ql::RangeMethod::Percentile9999: return QColor(0x17, 0xbe, 0xcf);
        case ql::RangeMethod::Mse: return QColor(0xd6, 0x27, 0x28);
        case ql::RangeMethod::Entropy: return QColor(0x94, 0x67, 0xbd);
    }
    return Qt::black;
}

QCPColorGradient viridis()
{
    QCPColorGradient g;
    g.clearColorStops();
    g.setColorStopAt(0.00, QColor(68, 1, 84));
    g.setColorStopAt(0.25, QColor(59, 82, 139));
    g.setColorStopAt(0.50, QColor(33, 145, 140));
    g.setColorStopAt(0.75, QColor(94, 201, 98));
    g.setColorStopAt(1.00, QColor(253, 231, 37));
    g.setColorInterpolation(QCPColorGradient::ciRGB);
    return g;
}

QCustomPlot* makePlot(QWidget* parent, const QString& objectName)
{
    auto* plot = new QCustomPlot(parent);
    plot->setObjectName(objectName);
    plot->setInteractions(QCP::iRangeDrag | QCP::iRangeZoom);
    plot->setNoAntialiasingOnDrag(true);
    plot->setMinimumSize(220, 140);
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
    view->horizontalHeader()->setStretchLastSection(true);
    view->setWordWrap(false);
    return view;
}

// Visible text of a token: control characters escaped so the table stays one line.
QString printable(const std::string& text)
{
    QString s = QString::fromStdString(text);
    s.replace(QLatin1Char('\n'), QStringLiteral("⏎"));
    s.replace(QLatin1Char('\t'), QStringLiteral("⇥"));
    return s;
}

}  // namespace

// The range methods at the chosen bit width: colour, clip, expected MSE, clipped share.
class RangeTableModel : public QAbstractTableModel {
public:
    using QAbstractTableModel::QAbstractTableModel;
    enum Column { Method, Clip, Mse, Clipped, ColumnCount };

    void setRanges(std::vector<ql::ActivationRange> ranges)
    {
        beginResetModel();
        m_ranges = std::move(ranges);
        endResetModel();
    }
    int rowCount(const QModelIndex& parent = {}) const override
    {
        return parent.isValid() ? 0 : int(m_ranges.size());
    }
    int columnCount(const QModelIndex& parent = {}) const override
    {
        return parent.isValid() ? 0 : ColumnCount;
    }
    QVariant headerData(int section, Qt::Orientation o, int role) const override
    {
        if (o != Qt::Horizontal || role != Qt::DisplayRole) return {};
        switch (section) {
            case Method: return QObject::tr("Method");
            case Clip: return QObject::tr("Clip ±");
            case Mse: return QObject::tr("MSE");
            case Clipped: return QObject::tr("Clipped");
        }
        return {};
    }
    QVariant data(const QModelIndex& index, int role) const override
    {
        if (!index.isValid() || index.row() >= int(m_ranges.size())) return {};
        const ql::ActivationRange& r = m_ranges[index.row()];
        if (role == Qt::DecorationRole && index.column() == Method) return rangeColor(r.method);
        if (role == Qt::UserRole) {  // raw numbers, for tests and sorting
            switch (index.column()) {
                case Clip: return r.clip;
                case Mse: return r.mse;
                case Clipped: return r.clippedShare;
            }
            return int(r.method);
        }
        if (role == Qt::TextAlignmentRole && index.column() != Method)
            return int(Qt::AlignRight | Qt::AlignVCenter);
        if (role != Qt::DisplayRole) return {};
        switch (index.column()) {
            case Method: return QString::fromLatin1(ql::rangeMethodName(r.method));
            case Clip: return human::number(r.clip, 4);
            case Mse: return human::number(r.mse, 3);
            case Clipped: return human::percent(r.clippedShare, 3);
        }
        return {};
    }

private:
    std::vector<ql::ActivationRange> m_ranges;
};

// The largest activations of a probe with the tokens around them.
class TopActivationModel : public QAbstractTableModel {
public:
    using QAbstractTableModel::QAbstractTableModel;
    enum Column { Value, Channel, Sample, Position, Before, Token, After, ColumnCount };

    void setProbe(const ql::ProbeStats* probe)
    {
        beginResetModel();
        m_probe = probe;
        endResetModel();
    }
    int rowCount(const QModelIndex& parent = {}) const override
    {
        return parent.isValid() || !m_probe ? 0 : int(m_probe->stats.top().size());
    }
    int columnCount(const QModelIndex& parent = {}) const override
    {
        return parent.isValid() ? 0 : ColumnCount;
    }
    QVariant headerData(int section, Qt::Orientation o, int role) const override
    {
        if (o != Qt::Horizontal || role != Qt::DisplayRole) return {};
        static const char* names[] = {"Value",  "Channel", "Sample", "Pos",
                                      "Before", "Token",   "After"};
        return section >= 0 && section < ColumnCount ? QObject::tr(names[section]) : QVariant();
    }
    QVariant data(const QModelIndex& index, int role) const override
    {
        if (!index.isValid() || !m_probe) return {};
        const auto& top = m_probe->stats.top();
        if (index.row() >= int(top.size())) return {};
        const ql::TopActivation& a = top[index.row()];
        const ql::TopActivationContext* ctx = index.row() < int(m_probe->topContext.size())
                                                  ? &m_probe->topContext[index.row()]
                                                  : nullptr;
        if (role == Qt::TextAlignmentRole) {
            if (index.column() == Before) return int(Qt::AlignRight | Qt::AlignVCenter);
            if (index.column() <= Position) return int(Qt::AlignRight | Qt::AlignVCenter);
            return {};
        }
        if (role == Qt::FontRole && index.column() == Token) {
            QFont f;
            f.setBold(true);
            return f;
        }
        if (role != Qt::DisplayRole && role != Qt::ToolTipRole) return {};
        switch (index.column()) {
            case Value: return human::number(a.value, 4);
            case Channel: return a.channel;
            case Sample: return a.sample;
            case Position: return a.position;
            case Before: return ctx ? printable(ctx->before) : QString();
            case Token: return ctx ? printable(ctx->token) : QString();
            case After: return ctx ? printable(ctx->after) : QString();
        }
        return {};
    }

private:
    const ql::ProbeStats* m_probe = nullptr;
};

ActivationsPane::ActivationsPane(AppSession* session, JobRunner* jobs, CalibrationState* state,
                                 QWidget* parent)
    : QWidget(parent), m_session(session), m_jobs(jobs), m_state(state)
{
    m_probeCombo = new QComboBox(this);
    m_probeCombo->setObjectName(QStringLiteral("activationProbe"));
    m_probeCombo->setMinimumContentsLength(18);
    m_probeCombo->setToolTip(
        tr("Probe point: the input of a linear layer. q/k/v share one input "
           "(attn_qkv), gate/up share one (ffn_gate_up). Selecting a tensor "
           "in the model tree picks its probe."));
    m_probeInfo = new QLabel(this);
    m_probeInfo->setTextFormat(Qt::RichText);
    m_probeInfo->setSizePolicy(QSizePolicy::Ignored, QSizePolicy::Preferred);
    auto* header = new QHBoxLayout;
    header->setContentsMargins(6, 2, 6, 2);
    header->addWidget(new QLabel(tr("Probe:"), this));
    header->addWidget(m_probeCombo);
    header->addWidget(m_probeInfo, 1);

    auto* top = new QSplitter(Qt::Horizontal, this);
    top->addWidget(buildHistogramBox());
    top->addWidget(buildTopBox());
    top->setStretchFactor(0, 3);
    top->setStretchFactor(1, 2);
    auto* bottom = new QSplitter(Qt::Horizontal, this);
    bottom->addWidget(buildChannelsBox());
    bottom->addWidget(buildHeatmapBox());
    bottom->setStretchFactor(0, 1);
    bottom->setStretchFactor(1, 1);
    auto* plots = new QSplitter(Qt::Vertical, this);
    plots->setObjectName(QStringLiteral("activationsSplitter"));
    plots->addWidget(top);
    plots->addWidget(bottom);

    auto* content = new QWidget(this);
    auto* contentLayout = new QVBoxLayout(content);
    contentLayout->setContentsMargins(0, 0, 0, 0);
    contentLayout->addLayout(header);
    contentLayout->addWidget(plots, 1);

    m_placeholder = new QLabel(tr("Run a calibration or open a session to see the activations "
                                  "at the input of every linear layer."),
                               this);
    m_placeholder->setAlignment(Qt::AlignCenter);
    m_placeholder->setWordWrap(true);
    m_stack = new QStackedWidget(this);
    m_stack->addWidget(m_placeholder);
    m_stack->addWidget(content);
    auto* layout = new QVBoxLayout(this);
    layout->setContentsMargins(0, 0, 0, 0);
    layout->addWidget(m_stack);

    connect(m_state, &CalibrationState::calibrationChanged, this,
            &ActivationsPane::onCalibrationChanged);
    connect(m_session, &AppSession::tensorSelected, this, &ActivationsPane::onTensorSelected);
    connect(m_probeCombo, &QComboBox::currentIndexChanged, this, &ActivationsPane::onProbeChosen);
    onCalibrationChanged();
}

ActivationsPane::~ActivationsPane() = default;

QWidget* ActivationsPane::buildHistogramBox()
{
    m_histBox = new QGroupBox(tr("Activation histogram and clipping ranges"), this);
    m_histPlot = makePlot(m_histBox, QStringLiteral("activationHistogram"));
    m_histBars = new QCPBars(m_histPlot->xAxis, m_histPlot->yAxis);
    m_histBars->setPen(Qt::NoPen);
    m_histBars->setBrush(kValueColor);
    m_histPlot->xAxis->setLabel(tr("activation"));
    m_histPlot->yAxis->setLabel(tr("count"));

    m_bitsSpin = new QSpinBox(m_histBox);
    m_bitsSpin->setObjectName(QStringLiteral("activationBits"));
    m_bitsSpin->setRange(4, 8);
    m_bitsSpin->setValue(8);
    m_bitsSpin->setSuffix(tr(" bits"));
    m_bitsSpin->setToolTip(
        tr("Bit width of the symmetric activation grid: the MSE- and "
           "entropy-optimal clips depend on it"));
    m_histLog = new QCheckBox(tr("Log counts"), m_histBox);
    m_histLog->setChecked(true);
    auto* controls = new QHBoxLayout;
    controls->addWidget(new QLabel(tr("Grid:"), m_histBox));
    controls->addWidget(m_bitsSpin);
    controls->addWidget(m_histLog);
    controls->addStretch(1);

    m_rangeModel = new RangeTableModel(this);
    m_rangeView = makeTable(m_histBox, QStringLiteral("activationRanges"));
    m_rangeView->setModel(m_rangeModel);
    m_rangeView->setSelectionMode(QAbstractItemView::NoSelection);
    m_rangeView->horizontalHeader()->setSectionResizeMode(QHeaderView::ResizeToContents);
    m_rangeView->setMaximumHeight(m_rangeView->verticalHeader()->defaultSectionSize() * 6 +
                                  m_rangeView->horizontalHeader()->sizeHint().height() + 4);
    m_rangeView->setToolTip(
        tr("<p>Clipping ranges for quantizing this input symmetrically to the chosen bits: "
           "min-max keeps every value, percentiles drop the rarest ones, MSE picks the clip "
           "with the least expected squared error, entropy the one that keeps the histogram's "
           "information (KL). Each is drawn as a pair of vertical lines in its colour.</p>"));

    auto* layout = new QVBoxLayout(m_histBox);
    layout->setContentsMargins(4, 4, 4, 4);
    layout->addLayout(controls);
    layout->addWidget(m_histPlot, 1);
    layout->addWidget(m_rangeView);

    connect(m_bitsSpin, &QSpinBox::valueChanged, this, &ActivationsPane::drawRanges);
    connect(m_histLog, &QCheckBox::toggled, this, &ActivationsPane::applyHistogramScale);
    return m_histBox;
}

QWidget* ActivationsPane::buildChannelsBox()
{
    m_channelBox = new QGroupBox(tr("Per-channel abs-max"), this);
    m_channelPlot = makePlot(m_channelBox, QStringLiteral("activationChannels"));
    m_channelBars = new QCPBars(m_channelPlot->xAxis, m_channelPlot->yAxis);
    m_channelBars->setPen(Qt::NoPen);
    m_channelBars->setBrush(kValueColor);
    m_outlierBars = new QCPBars(m_channelPlot->xAxis, m_channelPlot->yAxis);
    m_outlierBars->setPen(Qt::NoPen);
    m_outlierBars->setBrush(kOutlierColor);
    m_threshold = new QCPItemStraightLine(m_channelPlot);
    m_threshold->setPen(QPen(kThresholdColor, 1.5, Qt::DashLine));
    m_channelPlot->xAxis->setLabel(tr("input channel"));
    m_channelPlot->yAxis->setLabel(tr("max |x|"));

    m_kSpin = new QDoubleSpinBox(m_channelBox);
    m_kSpin->setObjectName(QStringLiteral("activationOutlierK"));
    m_kSpin->setRange(1.0, 1000.0);
    m_kSpin->setDecimals(1);
    m_kSpin->setValue(6.0);
    m_kSpin->setPrefix(tr("k = "));
    m_kSpin->setToolTip(
        tr("A channel is an outlier when its max |x| exceeds k × the median of "
           "all channels' max |x|"));
    m_topChannels = new QLabel(m_channelBox);
    m_topChannels->setWordWrap(true);
    m_topChannels->setTextInteractionFlags(Qt::TextSelectableByMouse);
    auto* controls = new QHBoxLayout;
    controls->addWidget(new QLabel(tr("Outliers above"), m_channelBox));
    controls->addWidget(m_kSpin);
    controls->addWidget(new QLabel(tr("× median"), m_channelBox));
    controls->addStretch(1);

    auto* layout = new QVBoxLayout(m_channelBox);
    layout->setContentsMargins(4, 4, 4, 4);
    layout->addLayout(controls);
    layout->addWidget(m_channelPlot, 1);
    layout->addWidget(m_topChannels);
    connect(m_kSpin, &QDoubleSpinBox::valueChanged, this, &ActivationsPane::drawChannels);
    return m_channelBox;
}

QWidget* ActivationsPane::buildTopBox()
{
    auto* box = new QGroupBox(tr("Largest activations"), this);
    m_topModel = new TopActivationModel(this);
    m_topView = makeTable(box, QStringLiteral("activationTop"));
    m_topView->setModel(m_topModel);
    m_topView->horizontalHeader()->setSectionResizeMode(QHeaderView::ResizeToContents);
    m_topView->horizontalHeader()->setStretchLastSection(true);
    m_context = new QLabel(box);
    m_context->setObjectName(QStringLiteral("activationContext"));
    m_context->setTextFormat(Qt::RichText);
    m_context->setWordWrap(true);
    m_context->setTextInteractionFlags(Qt::TextSelectableByMouse);
    m_context->setMinimumHeight(m_context->fontMetrics().height() * 3);
    m_context->setAlignment(Qt::AlignTop | Qt::AlignLeft);
    auto* layout = new QVBoxLayout(box);
    layout->setContentsMargins(4, 4, 4, 4);
    layout->addWidget(m_topView, 1);
    layout->addWidget(m_context);
    connect(m_topView->selectionModel(), &QItemSelectionModel::currentRowChanged, this,
            &ActivationsPane::showTopContext);
    return box;
}

QWidget* ActivationsPane::buildHeatmapBox()
{
    m_heatBox = new QGroupBox(tr("Channel abs-max across blocks (log10)"), this);
    m_siteCombo = new QComboBox(m_heatBox);
    m_siteCombo->setObjectName(QStringLiteral("activationSite"));
    for (ql::ProbeSite site : {ql::ProbeSite::AttnQkv, ql::ProbeSite::AttnOutput,
                               ql::ProbeSite::FfnGateUp, ql::ProbeSite::FfnDown})
        m_siteCombo->addItem(QString::fromLatin1(ql::probeSiteName(site)), int(site));
    m_heatPlot = makePlot(m_heatBox, QStringLiteral("activationHeatmap"));
    m_heatPlot->axisRect()->setupFullAxesBox(true);
    m_heatMap = new QCPColorMap(m_heatPlot->xAxis, m_heatPlot->yAxis);
    m_heatMap->setInterpolate(false);
    m_heatScale = new QCPColorScale(m_heatPlot);
    m_heatScale->setType(QCPAxis::atRight);
    m_heatScale->setBarWidth(10);
    m_heatScale->axis()->setLabel(tr("log10 max |x|"));
    m_heatPlot->plotLayout()->addElement(0, 1, m_heatScale);
    m_heatMap->setColorScale(m_heatScale);
    m_heatMap->setGradient(viridis());
    auto* margins = new QCPMarginGroup(m_heatPlot);
    m_heatPlot->axisRect()->setMarginGroup(QCP::msBottom | QCP::msTop, margins);
    m_heatScale->setMarginGroup(QCP::msBottom | QCP::msTop, margins);
    m_heatPlot->xAxis->setLabel(tr("input channel"));
    m_heatPlot->yAxis->setLabel(tr("block"));
    m_heatMark = new QCPItemRect(m_heatPlot);
    m_heatMark->setPen(QPen(Qt::white, 2));
    m_heatMark->setBrush(Qt::NoBrush);
    m_heatMark->setVisible(false);
    auto* controls = new QHBoxLayout;
    controls->addWidget(new QLabel(tr("Site:"), m_heatBox));
    controls->addWidget(m_siteCombo);
    controls->addStretch(1);
    auto* layout = new QVBoxLayout(m_heatBox);
    layout->setContentsMargins(4, 4, 4, 4);
    layout->addLayout(controls);
    layout->addWidget(m_heatPlot, 1);
    connect(m_siteCombo, &QComboBox::currentIndexChanged, this, &ActivationsPane::drawHeatmap);
    return m_heatBox;
}

QString ActivationsPane::probeForTensor(const QString& tensorName)
{
    static const QRegularExpression re(QStringLiteral(
        R"(^blk\.(\d+)\.(attn_q|attn_k|attn_v|attn_qkv|attn_output|ffn_gate|ffn_up|ffn_down)\b)"));
    const QRegularExpressionMatch m = re.match(tensorName);
    if (!m.hasMatch()) return {};
    const QString layer = m.captured(2);
    ql::ProbeSite site = ql::ProbeSite::AttnQkv;
    if (layer == QLatin1String("attn_output"))
        site = ql::ProbeSite::AttnOutput;
    else if (layer == QLatin1String("ffn_gate") || layer == QLatin1String("ffn_up"))
        site = ql::ProbeSite::FfnGateUp;
    else if (layer == QLatin1String("ffn_down"))
        site = ql::ProbeSite::FfnDown;
    return QString::fromStdString(ql::probeName(m.captured(1).toInt(), site));
}

QString ActivationsPane::currentProbe() const
{
    return m_probeCombo->currentText();
}

void ActivationsPane::setProbe(const QString& name)
{
    const int index = m_probeCombo->findText(name);
    if (index >= 0) m_probeCombo->setCurrentIndex(index);
}

void ActivationsPane::setBits(int bits)
{
    m_bitsSpin->setValue(bits);
}

int ActivationsPane::bits() const
{
    return m_bitsSpin->value();
}

QAbstractItemModel* ActivationsPane::rangeModel() const
{
    return m_rangeModel;
}

QAbstractItemModel* ActivationsPane::topModel() const
{
    return m_topModel;
}

const ql::ProbeStats* ActivationsPane::probe() const
{
    if (!m_result) return nullptr;
    return m_result->find(m_probeCombo->currentText().toStdString());
}

void ActivationsPane::onCalibrationChanged()
{
    const QString previous = m_probeCombo->currentText();
    m_result = m_state->result();
    {
        const QSignalBlocker block(m_probeCombo);
        m_probeCombo->clear();
        if (m_result)
            for (const ql::ProbeStats& p : m_result->probes)
                m_probeCombo->addItem(QString::fromStdString(p.name));
        QString want = probeForTensor(m_session->selectedTensor());
        if (m_probeCombo->findText(want) < 0) want = previous;
        m_probeCombo->setCurrentIndex(std::max(0, m_probeCombo->findText(want)));
    }
    m_stack->setCurrentIndex(m_result && !m_result->probes.empty() ? 1 : 0);
    drawProbe();
    drawHeatmap();
}

void ActivationsPane::onTensorSelected(const QString& name)
{
    const QString wanted = probeForTensor(name);
    if (!wanted.isEmpty()) setProbe(wanted);
}

void ActivationsPane::onProbeChosen()
{
    drawProbe();
    // Follow the chosen probe's site in the heatmap, so its block row is in view.
    if (const ql::ProbeStats* p = probe()) {
        const int index = m_siteCombo->findData(int(p->site));
        if (index >= 0 && index != m_siteCombo->currentIndex()) {
            m_siteCombo->setCurrentIndex(index);  // redraws the heatmap
            return;
        }
    }
    drawHeatmap();
}

void ActivationsPane::drawProbe()
{
    const ql::ProbeStats* p = probe();
    m_topModel->setProbe(p);
    m_context->setText(p ? tr("<i>Select a row to see the tokens that produced it.</i>")
                         : QString());
    if (!p) {
        m_probeInfo->clear();
        m_histBars->data()->clear();
        m_ranges.clear();
        m_rangeModel->setRanges({});
        drawRanges();
        drawChannels();
        return;
    }
    m_probeInfo->setText(tr("  block %1 · %2 · %3 channels · %4 tokens")
                             .arg(p->block)
                             .arg(QString::fromLatin1(ql::probeSiteName(p->site)))
                             .arg(p->stats.channels())
                             .arg(human::count(p->stats.tokenCount())));
    drawHistogram();
    drawRanges();
    drawChannels();
}

void ActivationsPane::drawHistogram()
{
    const ql::ProbeStats* p = probe();
    if (!p) return;
    const ql::SymmetricHistogram& h = p->stats.histogram();
    const int n = int(h.counts.size());
    QVector<double> keys(n), values(n);
    for (int i = 0; i < n; ++i) {
        keys[i] = h.binCenter(std::size_t(i));
        values[i] = double(h.counts[std::size_t(i)]);
    }
    m_histBars->setWidth(h.binWidth() > 0 ? h.binWidth() : 1.0);
    m_histBars->setData(keys, values, true);
    m_histBox->setTitle(tr("%1 — histogram of %2 values, %3 bins over ±%4")
                            .arg(QString::fromStdString(p->name))
                            .arg(human::count(std::int64_t(h.total())))
                            .arg(n)
                            .arg(human::number(h.range, 3)));
}

void ActivationsPane::drawRanges()
{
    for (QCPItemStraightLine* line : m_clipLines) m_histPlot->removeItem(line);
    m_clipLines.clear();
    const ql::ProbeStats* p = probe();
    m_ranges = p ? ql::computeActivationRanges(p->stats.histogram(), m_bitsSpin->value())
                 : std::vector<ql::ActivationRange>{};
    m_rangeModel->setRanges(m_ranges);
    for (const ql::ActivationRange& r : m_ranges) {
        for (double sign : {1.0, -1.0}) {
            auto* line = new QCPItemStraightLine(m_histPlot);
            line->setPen(QPen(rangeColor(r.method), 1.4,
                              r.method == ql::RangeMethod::MinMax ? Qt::DotLine : Qt::DashLine));
            line->point1->setCoords(sign * r.clip, 0);
            line->point2->setCoords(sign * r.clip, 1);
            m_clipLines.push_back(line);
        }
    }
    applyHistogramScale();
}

void ActivationsPane::applyHistogramScale()
{
    QCPAxis* y = m_histPlot->yAxis;
    double maxCount = 1;
    for (auto it = m_histBars->data()->constBegin(); it != m_histBars->data()->constEnd(); ++it)
        maxCount = std::max(maxCount, it->value);
    if (m_histLog->isChecked()) {
        y->setScaleType(QCPAxis::stLogarithmic);
        y->setTicker(QSharedPointer<QCPAxisTickerLog>::create());
        y->setNumberFormat(maxCount >= 1000 ? QStringLiteral("eb") : QStringLiteral("g"));
        y->setNumberPrecision(maxCount >= 1000 ? 0 : 3);
        y->setRange(0.7, maxCount * 2.0);
    } else {
        y->setScaleType(QCPAxis::stLinear);
        y->setTicker(QSharedPointer<QCPAxisTicker>::create());
        y->setNumberFormat(QStringLiteral("g"));
        y->setNumberPrecision(6);
        y->setRange(0, maxCount * 1.05);
    }
    // The histogram's range doubles past the largest value: show up to the min-max clip.
    double extent = 0;
    for (const ql::ActivationRange& r : m_ranges) extent = std::max(extent, r.clip);
    if (extent <= 0) extent = 1;
    m_histPlot->xAxis->setRange(-extent * 1.08, extent * 1.08);
    m_histPlot->replot();
}

void ActivationsPane::drawChannels()
{
    const ql::ProbeStats* p = probe();
    if (!p) {
        m_channelBars->data()->clear();
        m_outlierBars->data()->clear();
        m_topChannels->clear();
        m_channelPlot->replot();
        return;
    }
    const std::vector<float>& absMax = p->stats.channelAbsMax();
    const int n = int(absMax.size());
    std::vector<float> sorted(absMax);
    std::nth_element(sorted.begin(), sorted.begin() + n / 2, sorted.end());
    const double median = n ? sorted[std::size_t(n / 2)] : 0.0;
    const double threshold = m_kSpin->value() * median;
    QVector<double> keys, values, outKeys, outValues;
    std::vector<int> outliers;
    double maxValue = 0;
    for (int c = 0; c < n; ++c) {
        const double v = absMax[std::size_t(c)];
        maxValue = std::max(maxValue, v);
        if (v > threshold) {
            outKeys << c;
            outValues << v;
            outliers.push_back(c);
        } else {
            keys << c;
            values << v;
        }
    }
    m_channelBars->setWidth(1.0);
    m_outlierBars->setWidth(1.0);
    m_channelBars->setData(keys, values, true);
    m_outlierBars->setData(outKeys, outValues, true);
    m_threshold->point1->setCoords(0, threshold);
    m_threshold->point2->setCoords(1, threshold);
    m_channelPlot->xAxis->setRange(-1, n);
    m_channelPlot->yAxis->setRange(0, std::max(maxValue, threshold) * 1.08 + 1e-12);
    m_channelPlot->replot();

    std::sort(outliers.begin(), outliers.end(),
              [&](int a, int b) { return absMax[std::size_t(a)] > absMax[std::size_t(b)]; });
    std::vector<int> order(static_cast<std::size_t>(n));
    for (int c = 0; c < n; ++c) order[std::size_t(c)] = c;
    const int shown = std::min(kTopChannelsShown, n);
    std::partial_sort(order.begin(), order.begin() + shown, order.end(), [&](int a, int b) {
        return absMax[std::size_t(a)] > absMax[std::size_t(b)];
    });
    QStringList top;
    for (int i = 0; i < shown; ++i)
        top << QStringLiteral("%1 (%2)")
                   .arg(order[std::size_t(i)])
                   .arg(human::number(absMax[std::size_t(order[std::size_t(i)])], 3));
    m_channelBox->setTitle(tr("Per-channel abs-max — %1 of %2 channels above %3 × median = %4")
                               .arg(outliers.size())
                               .arg(n)
                               .arg(m_kSpin->value())
                               .arg(human::number(threshold, 3)));
    m_topChannels->setText(tr("Top channels: %1").arg(top.join(QStringLiteral(", "))));
}

void ActivationsPane::drawHeatmap()
{
    QCPColorMapData* data = m_heatMap->data();
    std::vector<const ql::ProbeStats*> rows;
    const auto site = ql::ProbeSite(m_siteCombo->currentData().toInt());
    if (m_result)
        for (const ql::ProbeStats& p : m_result->probes)
            if (p.site == site) rows.push_back(&p);
    std::sort(rows.begin(), rows.end(), [](auto* a, auto* b) { return a->block < b->block; });
    const int channels = rows.empty() ? 0 : rows.front()->stats.channels();
    if (rows.empty() || channels <= 0) {
        data->setSize(0, 0);
        m_heatPlot->replot();
        return;
    }
    // QCPColorMap gives a dimension of one cell no extent: draw such a dimension as two cells.
    const int nx = std::max(channels, 2), ny = std::max(int(rows.size()), 2);
    data->setSize(nx, ny);
    data->setRange(QCPRange(0, channels - 1 + (channels == 1)),
                   QCPRange(rows.front()->block, rows.back()->block + (rows.size() == 1)));
    double lo = std::numeric_limits<double>::infinity(), hi = -lo;
    for (int y = 0; y < ny; ++y) {
        const auto& absMax = rows[std::size_t(y * int(rows.size()) / ny)]->stats.channelAbsMax();
        for (int x = 0; x < nx; ++x) {
            const int c = x * channels / nx;
            const double v =
                c < int(absMax.size()) ? std::log10(std::max(double(absMax[c]), 1e-8)) : -8;
            data->setCell(x, y, v);
            lo = std::min(lo, v);
            hi = std::max(hi, v);
        }
    }
    m_heatMap->setDataRange(QCPRange(lo, hi > lo ? hi : lo + 1));
    m_heatPlot->xAxis->setRange(-0.5, channels - 0.5);
    m_heatPlot->yAxis->setRange(rows.front()->block - 0.5, rows.back()->block + 0.5);
    const ql::ProbeStats* chosen = probe();
    m_heatMark->setVisible(chosen && chosen->site == site);
    if (chosen) {
        m_heatMark->topLeft->setCoords(-0.5, chosen->block + 0.5);
        m_heatMark->bottomRight->setCoords(channels - 0.5, chosen->block - 0.5);
    }
    m_heatBox->setTitle(tr("%1 channel abs-max across %2 blocks (log10; white: this probe)")
                            .arg(m_siteCombo->currentText())
                            .arg(rows.size()));
    m_heatPlot->replot();
}

void ActivationsPane::showTopContext()
{
    const ql::ProbeStats* p = probe();
    const QModelIndex current = m_topView->currentIndex();
    if (!p || !current.isValid() || current.row() >= int(p->stats.top().size())) return;
    const ql::TopActivation& a = p->stats.top()[std::size_t(current.row())];
    QString tokens = tr("<i>no token text recorded</i>");
    if (current.row() < int(p->topContext.size())) {
        const ql::TopActivationContext& ctx = p->topContext[std::size_t(current.row())];
        tokens =
            QStringLiteral("%1<span style=\"background:#ffd54f; color:#000\"><b>%2</b></span>%3")
                .arg(printable(ctx.before).toHtmlEscaped(), printable(ctx.token).toHtmlEscaped(),
                     printable(ctx.after).toHtmlEscaped());
    }
    m_context->setText(tr("<b>%1</b> in channel %2 at sample %3, position %4:<br>…%5…")
                           .arg(human::number(a.value, 4))
                           .arg(a.channel)
                           .arg(a.sample)
                           .arg(a.position)
                           .arg(tokens));
}
