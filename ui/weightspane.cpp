#include "weightspane.h"

#include <QCheckBox>
#include <QComboBox>
#include <QDoubleSpinBox>
#include <QFormLayout>
#include <QGroupBox>
#include <QHBoxLayout>
#include <QLabel>
#include <QProgressBar>
#include <QScrollArea>
#include <QSettings>
#include <QSignalBlocker>
#include <QSpinBox>
#include <QSplitter>
#include <QStackedWidget>
#include <QToolButton>
#include <QVBoxLayout>

#include <qcustomplot.h>

#include <algorithm>
#include <cmath>

#include "appsession.h"
#include "format.h"
#include "icons.h"

namespace {

const QColor kValueColor(0x3d, 0x6f, 0xb0);      // bars and abs-max curves
const QColor kOutlierColor(0xd6, 0x3b, 0x3b);    // outlier channels
const QColor kThresholdColor(0xe0, 0x8a, 0x1e);  // threshold line
constexpr int kTopOutliersShown = 8;

QString kurtosisTip()
{
    return QObject::tr(
        "<p><b>Excess kurtosis</b>: the fourth standardised moment minus 3. It is 0 for a "
        "Gaussian, negative for flat distributions and large for heavy tails: a few weights far "
        "from the rest. Heavy tails stretch a min/max quantization grid, so most weights fall "
        "into a few levels.</p>");
}

QString outlierRuleTip()
{
    return QObject::tr(
        "<p>A channel (an output row or an input column) is an <b>outlier channel</b> when its "
        "largest |w| is above the threshold:</p><ul>"
        "<li><b>k × median</b>: threshold = k · median of all channels' abs-max</li>"
        "<li><b>mean + k × std</b>: threshold = mean + k · std of all channels' abs-max</li></ul>"
        "<p>Outlier channels are what per-channel scales, AWQ and SmoothQuant try to tame.</p>");
}

// Viridis: perceptually uniform, readable in grey, and no false edges.
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
    plot->setMinimumSize(220, 150);
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

QToolButton* makeResetButton(QWidget* parent, const QString& what)
{
    auto* button = new QToolButton(parent);
    button->setIcon(icons::resetView());
    button->setText(QObject::tr("Reset view"));
    button->setToolButtonStyle(Qt::ToolButtonTextBesideIcon);
    button->setAutoRaise(true);
    button->setToolTip(QObject::tr("Show the whole %1 again (or double-click the plot). Drag to "
                                   "pan, wheel to zoom.")
                           .arg(what));
    return button;
}

QGroupBox* makeGroup(const QString& title, QWidget* parent)
{
    auto* box = new QGroupBox(title, parent);
    box->setFlat(false);
    return box;
}

QString indexList(const ql::OutlierChannels& outliers, const std::vector<float>& absMax)
{
    if (outliers.indices.empty()) return QObject::tr("none");
    QStringList parts;
    const int n = std::min<int>(kTopOutliersShown, int(outliers.indices.size()));
    for (int i = 0; i < n; ++i) {
        const int index = outliers.indices[i];
        const double value = index >= 0 && index < int(absMax.size()) ? absMax[index] : 0.0;
        parts << QStringLiteral("%1 (%2)").arg(index).arg(human::number(value, 3));
    }
    QString text = parts.join(QStringLiteral(", "));
    if (int(outliers.indices.size()) > n)
        text += QObject::tr(", … %1 more").arg(int(outliers.indices.size()) - n);
    return text;
}

}  // namespace

struct WeightsPane::StatLabels {
    QLabel* elements = nullptr;
    QLabel* nonFinite = nullptr;
    QLabel* min = nullptr;
    QLabel* max = nullptr;
    QLabel* mean = nullptr;
    QLabel* std = nullptr;
    QLabel* absMax = nullptr;
    QLabel* kurtosis = nullptr;
    QLabel* outlierShare = nullptr;
    QLabel* rowOutliers = nullptr;
    QLabel* colOutliers = nullptr;
    QLabel* topRows = nullptr;
    QLabel* topCols = nullptr;
    QLabel* histogram = nullptr;
    QLabel* heatmap = nullptr;
    std::vector<QLabel*> all() const
    {
        return {elements,    nonFinite, min,      max,          mean,
                std,         absMax,    kurtosis, outlierShare, rowOutliers,
                colOutliers, topRows,   topCols,  histogram,    heatmap};
    }
};

WeightsPane::WeightsPane(AppSession* session, QWidget* parent)
    : QWidget(parent), m_session(session), m_labels(std::make_unique<StatLabels>())
{
    // Header: which tensor, and whether its statistics are being computed.
    m_title = new QLabel(this);
    m_title->setObjectName(QStringLiteral("weightsTitle"));
    m_title->setTextFormat(Qt::RichText);
    m_title->setTextInteractionFlags(Qt::TextSelectableByMouse);
    // Long names must not widen the pane (and squeeze the docks): the label may clip instead.
    m_title->setSizePolicy(QSizePolicy::Ignored, QSizePolicy::Preferred);
    m_title->setMinimumWidth(100);
    m_status = new QLabel(this);
    m_status->setObjectName(QStringLiteral("weightsStatus"));
    m_status->setTextFormat(Qt::RichText);
    connect(m_status, &QLabel::linkActivated, m_session, &AppSession::recomputeStats);
    m_busy = new QProgressBar(this);
    m_busy->setObjectName(QStringLiteral("weightsBusy"));
    m_busy->setRange(0, 0);
    m_busy->setTextVisible(false);
    m_busy->setFixedSize(110, 14);
    m_busy->setToolTip(tr("Computing statistics on the job worker; the window stays usable"));
    auto* header = new QHBoxLayout;
    header->setContentsMargins(6, 2, 6, 2);
    header->addWidget(m_title, 1);
    header->addWidget(m_status);
    header->addWidget(m_busy);

    m_placeholder = new QLabel(this);
    m_placeholder->setAlignment(Qt::AlignCenter);
    m_placeholder->setWordWrap(true);
    m_placeholder->setTextFormat(Qt::RichText);

    m_topSplitter = new QSplitter(Qt::Horizontal, this);
    m_topSplitter->setObjectName(QStringLiteral("weightsTopSplitter"));
    m_topSplitter->addWidget(buildHistogramBox());
    m_topSplitter->addWidget(buildHeatmapBox());
    m_topSplitter->setStretchFactor(0, 3);
    m_topSplitter->setStretchFactor(1, 2);

    m_plotSplitter = new QSplitter(Qt::Vertical, this);
    m_plotSplitter->setObjectName(QStringLiteral("weightsPlotSplitter"));
    m_plotSplitter->addWidget(m_topSplitter);
    m_plotSplitter->addWidget(buildChannelsBox());
    m_plotSplitter->setStretchFactor(0, 1);
    m_plotSplitter->setStretchFactor(1, 1);

    m_mainSplitter = new QSplitter(Qt::Horizontal, this);
    m_mainSplitter->setObjectName(QStringLiteral("weightsMainSplitter"));
    m_mainSplitter->addWidget(m_plotSplitter);
    m_mainSplitter->addWidget(buildStatsPanel());
    m_mainSplitter->setStretchFactor(0, 1);
    m_mainSplitter->setStretchFactor(1, 0);
    m_mainSplitter->setCollapsible(0, false);
    // Initial proportions (restoreSettings replaces them with the user's).
    m_topSplitter->setSizes({560, 440});
    m_plotSplitter->setSizes({500, 500});
    m_mainSplitter->setSizes({1000, 280});

    m_stack = new QStackedWidget(this);
    m_stack->addWidget(m_placeholder);
    m_stack->addWidget(m_mainSplitter);

    auto* layout = new QVBoxLayout(this);
    layout->setContentsMargins(2, 2, 2, 2);
    layout->setSpacing(2);
    layout->addLayout(header);
    layout->addWidget(m_stack, 1);

    connect(m_session, &AppSession::modelLoaded, this, &WeightsPane::onModelLoaded);
    connect(m_session, &AppSession::modelClosed, this, &WeightsPane::onModelClosed);
    connect(m_session, &AppSession::tensorSelected, this, &WeightsPane::onTensorSelected);
    connect(m_session, &AppSession::statsRequested, this, &WeightsPane::onStatsRequested);
    connect(m_session, &AppSession::statsReady, this, &WeightsPane::onStatsReady);
    connect(m_session, &AppSession::statsFailed, this, &WeightsPane::onStatsFailed);
    connect(m_session, &AppSession::statsOptionsChanged, this, &WeightsPane::onOptionsChanged);
    connect(m_session, &AppSession::quantizedModelChanged, this, &WeightsPane::updateHeader);

    onOptionsChanged();
    onModelClosed();
}

WeightsPane::~WeightsPane() = default;

// ---------------------------------------------------------------------------------------------
// Construction

QWidget* WeightsPane::buildHistogramBox()
{
    QGroupBox* box = makeGroup(tr("Value histogram"), this);
    m_histBox = box;
    box->setObjectName(QStringLiteral("histogramBox"));
    box->setToolTip(
        tr("How many weights fall into each value bin, between the tensor's min and "
           "max. Bins are computed in core."));

    m_binsSpin = new QSpinBox(box);
    m_binsSpin->setObjectName(QStringLiteral("histogramBinsSpin"));
    m_binsSpin->setRange(8, 4096);
    m_binsSpin->setSingleStep(32);
    m_binsSpin->setKeyboardTracking(false);
    m_binsSpin->setToolTip(
        tr("Number of equal-width bins between min and max (recomputed in core)"));
    m_histLog = new QCheckBox(tr("Log counts"), box);
    m_histLog->setObjectName(QStringLiteral("histogramLogCheck"));
    m_histLog->setToolTip(tr("Logarithmic count axis: shows the sparse tails next to the bulk"));
    QToolButton* reset = makeResetButton(box, tr("histogram"));
    reset->setObjectName(QStringLiteral("histogramResetButton"));

    auto* controls = new QHBoxLayout;
    controls->addWidget(new QLabel(tr("Bins:"), box));
    controls->addWidget(m_binsSpin);
    controls->addSpacing(8);
    controls->addWidget(m_histLog);
    controls->addStretch(1);
    controls->addWidget(reset);

    m_histPlot = makePlot(box, QStringLiteral("histogramPlot"));
    m_histBars = new QCPBars(m_histPlot->xAxis, m_histPlot->yAxis);
    m_histBars->setName(tr("weights per bin"));
    m_histBars->setWidthType(QCPBars::wtPlotCoords);
    m_histBars->setPen(Qt::NoPen);
    m_histBars->setBrush(kValueColor);
    m_histPlot->xAxis->setLabel(tr("weight value"));
    m_histPlot->yAxis->setLabel(tr("count (weights per bin)"));

    auto* layout = new QVBoxLayout(box);
    layout->setContentsMargins(4, 4, 4, 4);
    layout->setSpacing(2);
    layout->addLayout(controls);
    layout->addWidget(m_histPlot, 1);

    connect(m_binsSpin, &QSpinBox::valueChanged, m_session, &AppSession::setHistogramBins);
    connect(m_histLog, &QCheckBox::toggled, this, &WeightsPane::applyHistogramScale);
    connect(reset, &QToolButton::clicked, this, &WeightsPane::resetHistogramView);
    connect(m_histPlot, &QCustomPlot::mouseDoubleClick, this, &WeightsPane::resetHistogramView);
    return box;
}

QWidget* WeightsPane::buildHeatmapBox()
{
    QGroupBox* box = makeGroup(tr("|W| heatmap"), this);
    m_heatBox = box;
    box->setObjectName(QStringLiteral("heatmapBox"));
    box->setToolTip(
        tr("The weight matrix, downsampled in core: each cell shows the largest |w| "
           "of the block of weights it covers. Rows are outputs, columns are inputs."));

    m_heatLog = new QCheckBox(tr("Log colour scale"), box);
    m_heatLog->setObjectName(QStringLiteral("heatmapLogCheck"));
    m_heatLog->setChecked(true);
    m_heatLog->setToolTip(
        tr("Logarithmic colours: small and large magnitudes stay distinguishable"));
    QToolButton* reset = makeResetButton(box, tr("matrix"));
    reset->setObjectName(QStringLiteral("heatmapResetButton"));

    auto* controls = new QHBoxLayout;
    controls->addWidget(m_heatLog);
    controls->addStretch(1);
    controls->addWidget(reset);

    m_heatPlot = makePlot(box, QStringLiteral("heatmapPlot"));
    m_heatPlot->axisRect()->setupFullAxesBox(true);
    m_heatPlot->xAxis->setLabel(tr("input column"));
    m_heatPlot->yAxis->setLabel(tr("output row"));
    m_heatPlot->yAxis->setRangeReversed(true);  // row 0 on top, like the matrix
    m_heatMap = new QCPColorMap(m_heatPlot->xAxis, m_heatPlot->yAxis);
    m_heatMap->setInterpolate(false);
    m_heatScale = new QCPColorScale(m_heatPlot);
    m_heatScale->setType(QCPAxis::atRight);
    m_heatScale->setBarWidth(10);
    m_heatScale->axis()->setLabel(tr("max |w| in cell"));
    m_heatScale->axis()->setTickLabelFont(m_heatPlot->xAxis->tickLabelFont());
    m_heatScale->axis()->setLabelFont(m_heatPlot->xAxis->labelFont());
    m_heatPlot->plotLayout()->addElement(0, 1, m_heatScale);
    m_heatMap->setColorScale(m_heatScale);
    m_heatMap->setGradient(viridis());
    auto* margins = new QCPMarginGroup(m_heatPlot);
    m_heatPlot->axisRect()->setMarginGroup(QCP::msBottom | QCP::msTop, margins);
    m_heatScale->setMarginGroup(QCP::msBottom | QCP::msTop, margins);

    auto* layout = new QVBoxLayout(box);
    layout->setContentsMargins(4, 4, 4, 4);
    layout->setSpacing(2);
    layout->addLayout(controls);
    layout->addWidget(m_heatPlot, 1);

    connect(m_heatLog, &QCheckBox::toggled, this, &WeightsPane::applyHeatmapScale);
    connect(reset, &QToolButton::clicked, this, &WeightsPane::resetHeatmapView);
    connect(m_heatPlot, &QCustomPlot::mouseDoubleClick, this, &WeightsPane::resetHeatmapView);
    return box;
}

WeightsPane::ChannelPlot WeightsPane::makeChannelPlot(const QString& objectName,
                                                      const QString& xLabel, const QString& yLabel)
{
    ChannelPlot p;
    p.plot = makePlot(this, objectName);
    p.plot->xAxis->setLabel(xLabel);
    p.plot->yAxis->setLabel(yLabel);
    p.title = new QCPTextElement(p.plot, QString(), p.plot->xAxis->labelFont());
    p.plot->plotLayout()->insertRow(0);
    p.plot->plotLayout()->addElement(0, 0, p.title);

    p.values = p.plot->addGraph();
    p.values->setName(tr("abs-max"));
    p.values->setLineStyle(QCPGraph::lsImpulse);
    p.values->setPen(QPen(kValueColor, 1));

    p.outliers = p.plot->addGraph();
    p.outliers->setName(tr("outlier channels"));
    p.outliers->setLineStyle(QCPGraph::lsImpulse);
    p.outliers->setPen(QPen(kOutlierColor, 1.5));
    p.outliers->setScatterStyle(
        QCPScatterStyle(QCPScatterStyle::ssDisc, kOutlierColor, kOutlierColor, 5));

    p.threshold = new QCPItemStraightLine(p.plot);
    p.threshold->setPen(QPen(kThresholdColor, 1.5, Qt::DashLine));
    p.threshold->point1->setCoords(0, 0);
    p.threshold->point2->setCoords(1, 0);
    return p;
}

QWidget* WeightsPane::buildChannelsBox()
{
    QGroupBox* box = makeGroup(tr("Channel abs-max and outlier channels"), this);
    box->setObjectName(QStringLiteral("channelsBox"));
    box->setToolTip(outlierRuleTip());

    m_ruleCombo = new QComboBox(box);
    m_ruleCombo->setObjectName(QStringLiteral("outlierRuleCombo"));
    m_ruleCombo->addItem(tr("k × median"), int(ql::OutlierMode::MedianMultiple));
    m_ruleCombo->addItem(tr("mean + k × std"), int(ql::OutlierMode::StdMultiple));
    m_ruleCombo->setToolTip(outlierRuleTip());
    m_kSpin = new QDoubleSpinBox(box);
    m_kSpin->setObjectName(QStringLiteral("outlierKSpin"));
    m_kSpin->setRange(0.5, 100.0);
    m_kSpin->setDecimals(1);
    m_kSpin->setSingleStep(0.5);
    m_kSpin->setKeyboardTracking(false);
    m_kSpin->setToolTip(
        tr("The multiple k in the outlier rule (recomputed in core). It also sets "
           "the weight-outlier share: |w − mean| > k · std."));
    auto* legend = new QLabel(
        tr("<span style='color:%1'>▮</span> abs-max &nbsp; <span style='color:%2'>●</span> "
           "outlier channel &nbsp; <span style='color:%3'>- - -</span> threshold")
            .arg(kValueColor.name(), kOutlierColor.name(), kThresholdColor.name()),
        box);
    QToolButton* reset = makeResetButton(box, tr("channel plots"));
    reset->setObjectName(QStringLiteral("channelsResetButton"));

    auto* controls = new QHBoxLayout;
    controls->addWidget(new QLabel(tr("Outlier rule:"), box));
    controls->addWidget(m_ruleCombo);
    controls->addWidget(new QLabel(tr("k ="), box));
    controls->addWidget(m_kSpin);
    controls->addSpacing(12);
    controls->addWidget(legend);
    controls->addStretch(1);
    controls->addWidget(reset);

    m_rowPlot =
        makeChannelPlot(QStringLiteral("rowAbsMaxPlot"), tr("output row"), tr("max |w| in row"));
    m_colPlot = makeChannelPlot(QStringLiteral("colAbsMaxPlot"), tr("input column"),
                                tr("max |w| in column"));
    m_rowOutliers = m_rowPlot.outliers;
    m_colOutliers = m_colPlot.outliers;

    m_channelSplitter = new QSplitter(Qt::Horizontal, box);
    m_channelSplitter->setObjectName(QStringLiteral("weightsChannelSplitter"));
    m_channelSplitter->addWidget(m_rowPlot.plot);
    m_channelSplitter->addWidget(m_colPlot.plot);

    auto* layout = new QVBoxLayout(box);
    layout->setContentsMargins(4, 4, 4, 4);
    layout->setSpacing(2);
    layout->addLayout(controls);
    layout->addWidget(m_channelSplitter, 1);

    connect(m_ruleCombo, &QComboBox::currentIndexChanged, this,
            &WeightsPane::onOutlierControlsChanged);
    connect(m_kSpin, &QDoubleSpinBox::valueChanged, this, &WeightsPane::onOutlierControlsChanged);
    connect(reset, &QToolButton::clicked, this, &WeightsPane::resetChannelViews);
    connect(m_rowPlot.plot, &QCustomPlot::mouseDoubleClick, this, &WeightsPane::resetChannelViews);
    connect(m_colPlot.plot, &QCustomPlot::mouseDoubleClick, this, &WeightsPane::resetChannelViews);
    return box;
}

QWidget* WeightsPane::buildStatsPanel()
{
    QGroupBox* box = makeGroup(tr("Statistics"), this);
    box->setObjectName(QStringLiteral("statsBox"));
    auto* form = new QFormLayout;
    form->setLabelAlignment(Qt::AlignLeft);
    form->setRowWrapPolicy(QFormLayout::DontWrapRows);
    form->setFieldGrowthPolicy(QFormLayout::AllNonFixedFieldsGrow);
    form->setVerticalSpacing(5);

    auto add = [&](QLabel*& field, const QString& name, const QString& tip, bool wrap = false) {
        field = new QLabel(QStringLiteral("–"), box);
        field->setTextInteractionFlags(Qt::TextSelectableByMouse);
        field->setWordWrap(true);
        field->setToolTip(tip);
        auto* label = new QLabel(name, box);
        label->setToolTip(tip);
        if (wrap) {
            // Long lists get a row of their own under the name.
            form->addRow(label);
            form->addRow(field);
        } else {
            form->addRow(label, field);
        }
    };
    StatLabels& l = *m_labels;
    add(l.elements, tr("Elements"), tr("Number of weights (output rows × input columns)"));
    add(l.nonFinite, tr("NaN / Inf"),
        tr("Non-finite values; every other statistic leaves them out"));
    add(l.min, tr("Min"), tr("Smallest weight"));
    add(l.max, tr("Max"), tr("Largest weight"));
    add(l.mean, tr("Mean"), tr("Average weight"));
    add(l.std, tr("Std"), tr("Standard deviation σ of the weights"));
    add(l.absMax, tr("Abs-max"), tr("Largest |w|: what a min/max range has to cover"));
    add(l.kurtosis, tr("Excess kurtosis"), kurtosisTip());
    add(l.outlierShare, tr("Outlier weights"),
        tr("Share of weights with |w − mean| > k · σ, with k from the outlier rule"));
    add(l.rowOutliers, tr("Outlier rows"),
        tr("Output rows whose abs-max is above the channel threshold") + outlierRuleTip());
    add(l.colOutliers, tr("Outlier columns"),
        tr("Input columns whose abs-max is above the channel threshold") + outlierRuleTip());
    add(l.topRows, tr("Top outlier rows (abs-max)"),
        tr("Row indices of the largest outlier rows, with their abs-max"), true);
    add(l.topCols, tr("Top outlier columns (abs-max)"),
        tr("Column indices of the largest outlier columns, with their abs-max"), true);
    add(l.histogram, tr("Histogram"), tr("Bin count and bin width of the value histogram"));
    add(l.heatmap, tr("Heatmap"), tr("Size of the downsampled |W| heatmap"));

    auto* inner = new QWidget;
    auto* innerLayout = new QVBoxLayout(inner);
    innerLayout->setContentsMargins(2, 2, 2, 2);
    innerLayout->addLayout(form);
    innerLayout->addStretch(1);

    auto* scroll = new QScrollArea(box);
    scroll->setWidget(inner);
    scroll->setWidgetResizable(true);
    scroll->setFrameShape(QFrame::NoFrame);
    scroll->setHorizontalScrollBarPolicy(Qt::ScrollBarAlwaysOff);

    auto* layout = new QVBoxLayout(box);
    layout->setContentsMargins(4, 4, 4, 4);
    layout->addWidget(scroll);
    box->setMinimumWidth(270);
    box->setMaximumWidth(420);
    return box;
}

// ---------------------------------------------------------------------------------------------
// Settings

void WeightsPane::saveSettings(QSettings& settings) const
{
    settings.beginGroup(QStringLiteral("weightsPane"));
    settings.setValue(QStringLiteral("mainSplitter"), m_mainSplitter->saveState());
    settings.setValue(QStringLiteral("plotSplitter"), m_plotSplitter->saveState());
    settings.setValue(QStringLiteral("topSplitter"), m_topSplitter->saveState());
    settings.setValue(QStringLiteral("channelSplitter"), m_channelSplitter->saveState());
    settings.setValue(QStringLiteral("histogramLog"), m_histLog->isChecked());
    settings.setValue(QStringLiteral("heatmapLog"), m_heatLog->isChecked());
    settings.endGroup();
}

void WeightsPane::restoreSettings(QSettings& settings)
{
    settings.beginGroup(QStringLiteral("weightsPane"));
    m_mainSplitter->restoreState(settings.value(QStringLiteral("mainSplitter")).toByteArray());
    m_plotSplitter->restoreState(settings.value(QStringLiteral("plotSplitter")).toByteArray());
    m_topSplitter->restoreState(settings.value(QStringLiteral("topSplitter")).toByteArray());
    m_channelSplitter->restoreState(
        settings.value(QStringLiteral("channelSplitter")).toByteArray());
    m_histLog->setChecked(settings.value(QStringLiteral("histogramLog"), false).toBool());
    m_heatLog->setChecked(settings.value(QStringLiteral("heatmapLog"), true).toBool());
    settings.endGroup();
}

// ---------------------------------------------------------------------------------------------
// Session events

void WeightsPane::onModelLoaded()
{
    m_stats.reset();
    clearPlots();
    setBusy(false);
    m_placeholder->setText(
        tr("<p style='font-size:14pt'>Select a tensor in the <b>Model</b> "
           "tree</p><p>Its value histogram, channel outliers, statistics and "
           "|W| heatmap appear here.</p>"));
    m_stack->setCurrentWidget(m_placeholder);
    updateHeader();
}

void WeightsPane::onModelClosed()
{
    m_stats.reset();
    clearPlots();
    setBusy(false);
    m_placeholder->setText(
        tr("<p style='font-size:14pt'>No model open</p><p>Open a GGUF file, a safetensors "
           "model or a llama2.c checkpoint with <b>File ▸ Open…</b> (Ctrl+O),<br>a Hugging Face "
           "folder with <b>File ▸ Open Folder…</b>, or drop a file or folder on this window.</p>"));
    m_stack->setCurrentWidget(m_placeholder);
    updateHeader();
}

void WeightsPane::onTensorSelected(const QString& name)
{
    m_stats.reset();
    clearPlots();
    m_stack->setCurrentWidget(name.isEmpty() ? static_cast<QWidget*>(m_placeholder)
                                             : m_mainSplitter);
    updateHeader();
    if (auto stats = m_session->stats()) onStatsReady(stats);
}

void WeightsPane::onStatsRequested(const QString&)
{
    setBusy(true, tr("Computing statistics…"));
}

void WeightsPane::onStatsReady(std::shared_ptr<const ql::TensorStats> stats)
{
    if (!stats || QString::fromStdString(stats->tensorName) != m_session->selectedTensor()) return;
    const bool sameTensor = m_stats && m_stats->tensorName == stats->tensorName;
    const bool sameHistogramRange = sameTensor && m_stats->histogram.lo == stats->histogram.lo &&
                                    m_stats->histogram.hi == stats->histogram.hi;
    m_stats = std::move(stats);
    setBusy(false);
    m_stack->setCurrentWidget(m_mainSplitter);
    updateHeader();
    // A new bin count or outlier rule keeps the user's zoom; a new tensor shows everything.
    const QCPRange histX = m_histPlot->xAxis->range();
    drawHistogram();
    if (sameHistogramRange) m_histPlot->xAxis->setRange(histX);
    m_histPlot->replot();
    drawChannels();
    if (!sameTensor) drawHeatmap();
    drawStatsPanel();
}

void WeightsPane::onStatsFailed(const QString& name, const QString& message)
{
    if (name != m_session->selectedTensor()) return;
    setBusy(false);
    m_status->setText(QStringLiteral("<span style='color:%1'>%2</span> &nbsp;<a href='#'>%3</a>")
                          .arg(kOutlierColor.name(),
                               tr("Statistics not available: %1").arg(message.toHtmlEscaped()),
                               tr("Compute again")));
    m_status->setToolTip(message);
}

void WeightsPane::onOptionsChanged()
{
    const ql::TensorStatsOptions& options = m_session->statsOptions();
    const QSignalBlocker b1(m_binsSpin), b2(m_ruleCombo), b3(m_kSpin);
    m_binsSpin->setValue(options.histogramBins);
    m_ruleCombo->setCurrentIndex(m_ruleCombo->findData(int(options.outliers.mode)));
    m_kSpin->setValue(options.outliers.k);
}

void WeightsPane::onOutlierControlsChanged()
{
    ql::OutlierRule rule;
    rule.mode = ql::OutlierMode(m_ruleCombo->currentData().toInt());
    rule.k = m_kSpin->value();
    m_session->setOutlierRule(rule);
}

// ---------------------------------------------------------------------------------------------
// Drawing

void WeightsPane::setBusy(bool busy, const QString& text)
{
    m_busy->setVisible(busy);
    m_status->setText(text);
    m_status->setToolTip({});
}

void WeightsPane::updateHeader()
{
    const ql::TensorInfo* info = m_session->selectedTensorInfo();
    if (!info) {
        m_title->setText(m_session->hasModel()
                             ? tr("<b>%1</b>").arg(m_session->modelDisplayName().toHtmlEscaped())
                             : QString());
        return;
    }
    const QString type = QString::fromUtf8(ql::tensorTypeName(info->type).data(),
                                           qsizetype(ql::tensorTypeName(info->type).size()));
    QString shape = human::shape(info->shape);
    if (info->shape.size() == 2) shape = tr("%1 (out × in)").arg(shape);
    m_title->setText(tr("<b>%1</b> &nbsp;·&nbsp; %2 &nbsp;·&nbsp; %3 &nbsp;·&nbsp; %4 "
                        "&nbsp;·&nbsp; %5 &nbsp;·&nbsp; %6 weights")
                         .arg(QString::fromStdString(info->name).toHtmlEscaped(),
                              QString::fromUtf8(ql::tensorRoleName(info->role)), shape, type,
                              human::bytes(info->bytes))
                         .arg(human::count(info->elementCount())));
    if (m_session->selectedIsQuantized()) {
        const ql::TensorQuantization* q =
            m_session->quantizedModel()->find(m_session->selectedTensor().toStdString());
        QString how = QString::fromStdString(ql::formatToString(q->report.plan.format));
        if (q->report.gptq) how += QStringLiteral(" GPTQ");
        m_title->setText(m_title->text() +
                         tr(" &nbsp;·&nbsp; <span style='color:#b35900'><b>quantized values</b> "
                            "(%1)</span>")
                             .arg(how.toHtmlEscaped()));
    }
}

void WeightsPane::clearPlots()
{
    m_histBars->data()->clear();
    m_histPlot->replot();
    for (ChannelPlot* p : {&m_rowPlot, &m_colPlot}) {
        p->values->data()->clear();
        p->outliers->data()->clear();
        p->threshold->setVisible(false);
        p->title->setText({});
        p->plot->replot();
    }
    m_heatMap->data()->clear();
    m_heatMap->data()->setSize(0, 0);
    m_heatBox->setTitle(tr("|W| heatmap"));
    m_heatPlot->replot();
    for (QLabel* label : m_labels->all()) label->setText(QStringLiteral("–"));
    m_histBox->setTitle(tr("Value histogram"));
}

void WeightsPane::drawHistogram()
{
    const ql::Histogram& h = m_stats->histogram;
    const int n = int(h.counts.size());
    const double width = h.binWidth() > 0 ? h.binWidth() : 1.0;
    QVector<double> keys(n), values(n);
    for (int i = 0; i < n; ++i) {
        keys[i] = h.lo + (i + 0.5) * width;
        values[i] = double(h.counts[i]);
    }
    m_histBars->setWidth(width);
    m_histBars->setData(keys, values, true);
    m_histBox->setTitle(
        tr("Value histogram — %1 bins of width %2").arg(n).arg(human::number(h.binWidth(), 3)));
    applyHistogramScale();
}

void WeightsPane::applyHistogramScale()
{
    QCPAxis* y = m_histPlot->yAxis;
    if (m_histLog->isChecked()) {
        y->setScaleType(QCPAxis::stLogarithmic);
        y->setTicker(QSharedPointer<QCPAxisTickerLog>::create());
        // Powers of ten read well over several decades; over fewer, plain numbers avoid
        // repeated rounded labels.
        double maxCount = 1;
        for (auto it = m_histBars->data()->constBegin(); it != m_histBars->data()->constEnd(); ++it)
            maxCount = std::max(maxCount, it->value);
        y->setNumberFormat(maxCount >= 1000 ? QStringLiteral("eb") : QStringLiteral("g"));
        y->setNumberPrecision(maxCount >= 1000 ? 0 : 3);
    } else {
        y->setScaleType(QCPAxis::stLinear);
        y->setTicker(QSharedPointer<QCPAxisTicker>::create());
        y->setNumberFormat(QStringLiteral("g"));
        y->setNumberPrecision(6);
    }
    resetHistogramView();
}

void WeightsPane::resetHistogramView()
{
    double maxCount = 1;
    for (auto it = m_histBars->data()->constBegin(); it != m_histBars->data()->constEnd(); ++it)
        maxCount = std::max(maxCount, it->value);
    if (m_stats && !m_stats->histogram.counts.empty()) {
        const ql::Histogram& h = m_stats->histogram;
        const double pad = std::max(h.hi - h.lo, 1e-12) * 0.02;
        m_histPlot->xAxis->setRange(h.lo - pad, h.hi + pad);
    } else {
        m_histPlot->xAxis->setRange(-1, 1);
    }
    if (m_histLog->isChecked())
        m_histPlot->yAxis->setRange(0.7, maxCount * 2.0);
    else
        m_histPlot->yAxis->setRange(0, maxCount * 1.05);
    m_histPlot->replot();
}

void WeightsPane::drawChannel(ChannelPlot& p, const std::vector<float>& absMax,
                              const ql::OutlierChannels& outliers, const QString& what)
{
    const int n = int(absMax.size());
    QVector<double> keys(n), values(n);
    for (int i = 0; i < n; ++i) {
        keys[i] = i;
        values[i] = absMax[i];
    }
    p.values->setData(keys, values, true);
    // Impulses of thousands of channels blur into an area; a line keeps them readable.
    p.values->setLineStyle(n > 2000 ? QCPGraph::lsLine : QCPGraph::lsImpulse);

    std::vector<std::int32_t> sorted = outliers.indices;
    std::sort(sorted.begin(), sorted.end());
    QVector<double> ok, ov;
    ok.reserve(int(sorted.size()));
    ov.reserve(int(sorted.size()));
    for (std::int32_t i : sorted) {
        if (i < 0 || i >= n) continue;
        ok << i;
        ov << absMax[i];
    }
    p.outliers->setData(ok, ov, true);

    p.threshold->point1->setCoords(0, outliers.threshold);
    p.threshold->point2->setCoords(1, outliers.threshold);
    p.threshold->setVisible(n > 0);
    // The threshold is named in the title: a label on the line would hide outlier stems.
    p.title->setText(tr("%1: %2 of %3 above the threshold %4")
                         .arg(what)
                         .arg(ok.size())
                         .arg(n)
                         .arg(human::number(outliers.threshold, 3)));
    p.title->setTextColor(ok.isEmpty() ? palette().color(QPalette::WindowText)
                                       : kOutlierColor.darker(120));
}

void WeightsPane::drawChannels()
{
    // A vector (a norm's weights) has one row: only its columns say anything.
    m_rowPlot.plot->setVisible(m_stats->rowAbsMax.size() > 1);
    drawChannel(m_rowPlot, m_stats->rowAbsMax, m_stats->rowOutliers, tr("Output rows"));
    drawChannel(m_colPlot, m_stats->colAbsMax, m_stats->colOutliers, tr("Input columns"));
    resetChannelViews();
}

void WeightsPane::resetChannelViews()
{
    for (ChannelPlot* p : {&m_rowPlot, &m_colPlot}) {
        const int n = int(p->values->dataCount());
        double top = 0;
        for (auto it = p->values->data()->constBegin(); it != p->values->data()->constEnd(); ++it)
            top = std::max(top, it->value);
        if (m_stats) {
            const double t =
                (p == &m_rowPlot ? m_stats->rowOutliers : m_stats->colOutliers).threshold;
            if (std::isfinite(t)) top = std::max(top, t);
        }
        p->plot->xAxis->setRange(-0.5, std::max(n, 1) - 0.5);
        p->plot->yAxis->setRange(0, top > 0 ? top * 1.08 : 1.0);
        p->plot->replot();
    }
}

void WeightsPane::drawHeatmap()
{
    const ql::Heatmap& hm = m_stats->heatmap;
    QCPColorMapData* data = m_heatMap->data();
    const int fullRows = std::max<int>(1, int(m_stats->rowAbsMax.size()));
    const int fullCols = std::max<int>(1, int(m_stats->colAbsMax.size()));
    if (hm.rows <= 0 || hm.cols <= 0 || int(hm.values.size()) != hm.rows * hm.cols) {
        data->setSize(0, 0);
        m_heatBox->setTitle(tr("|W| heatmap (none)"));
        m_heatPlot->replot();
        return;
    }
    // Cell centres in matrix coordinates, so the axes show real row and column indices.
    // QCPColorMap gives a dimension of one cell no extent, so such a dimension is drawn as two
    // half cells with the same values.
    const int nx = std::max(hm.cols, 2), ny = std::max(hm.rows, 2);
    const double cellW = double(fullCols) / nx;
    const double cellH = double(fullRows) / ny;
    data->setSize(nx, ny);
    data->setRange(QCPRange(cellW / 2 - 0.5, fullCols - cellW / 2 - 0.5),
                   QCPRange(cellH / 2 - 0.5, fullRows - cellH / 2 - 0.5));
    for (int y = 0; y < ny; ++y) {
        const int r = y * hm.rows / ny;
        for (int x = 0; x < nx; ++x)
            data->setCell(x, y,
                          hm.values[std::size_t(r) * hm.cols + std::size_t(x * hm.cols / nx)]);
    }
    const bool downsampled = hm.rows != fullRows || hm.cols != fullCols;
    m_heatBox->setTitle(downsampled ? tr("|W| heatmap — max of %1 × %2 weights per cell")
                                          .arg(human::number(double(fullRows) / hm.rows, 3))
                                          .arg(human::number(double(fullCols) / hm.cols, 3))
                                    : tr("|W| heatmap — one cell per weight"));
    applyHeatmapScale();
}

void WeightsPane::applyHeatmapScale()
{
    double lo = std::numeric_limits<double>::infinity(), hi = 0, minPositive = lo;
    if (m_stats) {
        for (float v : m_stats->heatmap.values) {
            lo = std::min(lo, double(v));
            hi = std::max(hi, double(v));
            if (v > 0) minPositive = std::min(minPositive, double(v));
        }
    }
    if (!std::isfinite(lo)) lo = 0;
    if (hi <= lo) hi = lo + 1;
    if (m_heatLog->isChecked()) {
        m_heatScale->setDataScaleType(QCPAxis::stLogarithmic);
        const double lower =
            std::isfinite(minPositive) ? std::max(minPositive, hi * 1e-4) : hi * 1e-4;
        m_heatScale->axis()->setTicker(QSharedPointer<QCPAxisTickerLog>::create());
        const bool decades = hi / lower >= 100;
        m_heatScale->axis()->setNumberFormat(decades ? QStringLiteral("eb") : QStringLiteral("g"));
        m_heatScale->axis()->setNumberPrecision(decades ? 0 : 2);
        m_heatScale->setDataRange(QCPRange(lower, hi));
    } else {
        m_heatScale->setDataScaleType(QCPAxis::stLinear);
        m_heatScale->axis()->setTicker(QSharedPointer<QCPAxisTicker>::create());
        m_heatScale->axis()->setNumberFormat(QStringLiteral("g"));
        m_heatScale->axis()->setNumberPrecision(3);
        m_heatScale->setDataRange(QCPRange(lo, hi));
    }
    resetHeatmapView();
}

void WeightsPane::resetHeatmapView()
{
    const int rows = m_stats ? std::max<int>(1, int(m_stats->rowAbsMax.size())) : 1;
    const int cols = m_stats ? std::max<int>(1, int(m_stats->colAbsMax.size())) : 1;
    m_heatPlot->xAxis->setRange(-0.5, cols - 0.5);
    m_heatPlot->yAxis->setRange(-0.5, rows - 0.5);
    m_heatPlot->replot();
}

void WeightsPane::drawStatsPanel()
{
    const ql::TensorStats& s = *m_stats;
    StatLabels& l = *m_labels;
    const ql::OutlierRule& rule = m_session->statsOptions().outliers;
    l.elements->setText(QStringLiteral("%1 (%2 × %3)")
                            .arg(QLocale().toString(qlonglong(s.count + s.nonFinite)))
                            .arg(s.rowAbsMax.size())
                            .arg(s.colAbsMax.size()));
    l.nonFinite->setText(s.nonFinite == 0 ? QStringLiteral("0")
                                          : QStringLiteral("<span style='color:%1'>%2</span>")
                                                .arg(kOutlierColor.name(),
                                                     QLocale().toString(qlonglong(s.nonFinite))));
    l.min->setText(human::number(s.min));
    l.max->setText(human::number(s.max));
    l.mean->setText(human::number(s.mean));
    l.std->setText(human::number(s.std));
    l.absMax->setText(
        s.std > 0
            ? tr("%1 (%2 σ)").arg(human::number(s.absMax)).arg(human::number(s.absMax / s.std, 3))
            : human::number(s.absMax));
    QString kurt = human::number(s.kurtosis, 3);
    if (s.kurtosis > 3)
        kurt += tr(" — heavy tails");
    else if (s.kurtosis < -0.5)
        kurt += tr(" — light tails");
    else
        kurt += tr(" — near Gaussian");
    l.kurtosis->setText(kurt);
    l.outlierShare->setText(tr("%1 beyond %2 σ").arg(human::percent(s.outlierShare)).arg(rule.k));
    auto channelText = [](const ql::OutlierChannels& o, std::size_t total) {
        return tr("%1 of %2 (> %3)")
            .arg(o.indices.size())
            .arg(total)
            .arg(human::number(o.threshold, 3));
    };
    l.rowOutliers->setText(channelText(s.rowOutliers, s.rowAbsMax.size()));
    l.colOutliers->setText(channelText(s.colOutliers, s.colAbsMax.size()));
    l.topRows->setText(indexList(s.rowOutliers, s.rowAbsMax));
    l.topCols->setText(indexList(s.colOutliers, s.colAbsMax));
    l.histogram->setText(tr("%1 bins × %2")
                             .arg(s.histogram.counts.size())
                             .arg(human::number(s.histogram.binWidth(), 3)));
    l.heatmap->setText(tr("%1 × %2 cells").arg(s.heatmap.rows).arg(s.heatmap.cols));
}
