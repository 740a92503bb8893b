#include "smoothquantpane.h"

#include <QComboBox>
#include <QDir>
#include <QFileDialog>
#include <QFileInfo>
#include <QFormLayout>
#include <QGroupBox>
#include <QHBoxLayout>
#include <QLabel>
#include <QLineEdit>
#include <QProgressBar>
#include <QPushButton>
#include <QSignalBlocker>
#include <QSlider>
#include <QSpinBox>
#include <QStackedWidget>
#include <QToolButton>
#include <QVBoxLayout>

#include <qcustomplot.h>

#include <algorithm>
#include <cmath>

#include "activationspane.h"
#include "appsession.h"
#include "calib/calibrate.h"
#include "calibrationstate.h"
#include "format.h"
#include "jobrunner.h"
#include "quant/w8a8.h"

namespace {

const QString kSiteTag = QStringLiteral("smoothquant-site");
const QString kEvalTag = QStringLiteral("smoothquant-eval");
const QColor kBeforeColor(0x3d, 0x6f, 0xb0);
const QColor kAfterColor(0xe0, 0x6a, 0x1e);

QString dataDir()
{
    const QString fromEnv = qEnvironmentVariable("QUANTLENS_DATA");
    if (!fromEnv.isEmpty()) return fromEnv;
    return QStringLiteral(QL_DEFAULT_DATA_DIR);
}

QCustomPlot* makeLogPlot(QWidget* parent, const QString& objectName, const QString& yLabel)
{
    auto* plot = new QCustomPlot(parent);
    plot->setObjectName(objectName);
    plot->setInteractions(QCP::iRangeDrag | QCP::iRangeZoom);
    plot->setMinimumSize(260, 200);
    QFont small = plot->font();
    small.setPointSizeF(small.pointSizeF() * 0.85);
    for (QCPAxis* axis : {plot->xAxis, plot->yAxis}) {
        axis->setTickLabelFont(small);
        axis->setLabelFont(small);
        axis->setLabelPadding(2);
    }
    plot->xAxis->setLabel(QObject::tr("input channel"));
    plot->yAxis->setLabel(yLabel);
    plot->yAxis->setScaleType(QCPAxis::stLogarithmic);
    plot->yAxis->setTicker(QSharedPointer<QCPAxisTickerLog>::create());
    plot->yAxis->setNumberFormat(QStringLiteral("g"));
    plot->yAxis->setNumberPrecision(3);
    plot->legend->setVisible(true);
    plot->legend->setFont(small);
    plot->legend->setRowSpacing(0);
    plot->axisRect()->insetLayout()->setInsetAlignment(0, Qt::AlignTop | Qt::AlignRight);
    return plot;
}

QCPGraph* addGraph(QCustomPlot* plot, const QColor& color, const QString& name)
{
    QCPGraph* g = plot->addGraph();
    g->setName(name);
    g->setPen(QPen(color, 1.3));
    g->setLineStyle(QCPGraph::lsLine);
    g->setScatterStyle(QCPScatterStyle(QCPScatterStyle::ssDisc, color, color, 3.5));
    return g;
}

void setGraph(QCPGraph* g, const std::vector<float>& values)
{
    QVector<double> x(int(values.size())), y(int(values.size()));
    for (int i = 0; i < int(values.size()); ++i) {
        x[i] = i;
        y[i] = std::max(double(values[std::size_t(i)]), 1e-12);
    }
    g->setData(x, y, true);
}

void fitLog(QCustomPlot* plot, std::size_t channels)
{
    double lo = INFINITY, hi = 0;
    for (int i = 0; i < plot->graphCount(); ++i)
        for (auto it = plot->graph(i)->data()->constBegin();
             it != plot->graph(i)->data()->constEnd(); ++it) {
            lo = std::min(lo, it->value);
            hi = std::max(hi, it->value);
        }
    if (!(hi > 0)) {
        lo = 0.1;
        hi = 1;
    }
    // Ticks at powers of 2 over a narrow range (a factor of 10 would leave one labelled tick),
    // powers of 10 over a wide one.
    auto ticker = plot->yAxis->ticker().dynamicCast<QCPAxisTickerLog>();
    if (ticker) {
        const bool narrow = hi / lo < 200;
        ticker->setLogBase(narrow ? 2.0 : 10.0);
        ticker->setSubTickCount(narrow ? 1 : 8);
        plot->yAxis->setNumberFormat(narrow ? QStringLiteral("g") : QStringLiteral("eb"));
        plot->yAxis->setNumberPrecision(narrow ? 3 : 0);
    }
    plot->yAxis->setRange(lo / 1.6, hi * 2.2);
    plot->xAxis->setRange(-0.5, double(channels) - 0.5);
    plot->replot();
}

QString ratioText(double before, double after)
{
    return QStringLiteral("%1 → %2").arg(human::number(before, 3), human::number(after, 3));
}

}  // namespace

SmoothQuantPane::SmoothQuantPane(AppSession* session, JobRunner* jobs, CalibrationState* state,
                                 QWidget* parent)
    : QWidget(parent), m_session(session), m_jobs(jobs), m_state(state)
{
    setObjectName(QStringLiteral("smoothQuantPane"));
    auto* outer = new QVBoxLayout(this);
    outer->setContentsMargins(4, 4, 4, 4);
    m_stack = new QStackedWidget(this);
    outer->addWidget(m_stack);
    m_placeholder = new QLabel(
        tr("Calibrate the model (Calibration) or open a session to see SmoothQuant's scales."),
        this);
    m_placeholder->setAlignment(Qt::AlignCenter);
    m_placeholder->setWordWrap(true);
    m_stack->addWidget(m_placeholder);

    auto* content = new QWidget(this);
    auto* layout = new QVBoxLayout(content);
    layout->setContentsMargins(0, 0, 0, 0);
    auto* controls = new QHBoxLayout;
    controls->addWidget(new QLabel(tr("Site:"), content));
    m_siteCombo = new QComboBox(content);
    m_siteCombo->setObjectName(QStringLiteral("smoothSiteCombo"));
    m_siteCombo->setMinimumContentsLength(18);
    m_siteCombo->setToolTip(tr("The input of a group of linear layers (a calibration probe)"));
    controls->addWidget(m_siteCombo);
    controls->addSpacing(12);
    controls->addWidget(new QLabel(tr("α:"), content));
    m_alphaSlider = new QSlider(Qt::Horizontal, content);
    m_alphaSlider->setObjectName(QStringLiteral("alphaSlider"));
    m_alphaSlider->setRange(0, 100);
    m_alphaSlider->setValue(50);
    m_alphaSlider->setMinimumWidth(180);
    m_alphaSlider->setToolTip(
        tr("Migration strength: s = max|X|^α / max|W|^(1-α); 0 leaves the activations, 1 moves "
           "all of their range into the weights"));
    controls->addWidget(m_alphaSlider, 1);
    m_alphaLabel = new QLabel(QStringLiteral("0.50"), content);
    m_alphaLabel->setMinimumWidth(
        m_alphaLabel->fontMetrics().horizontalAdvance(QStringLiteral("0.000")));
    controls->addWidget(m_alphaLabel);
    layout->addLayout(controls);

    m_ratios = new QLabel(content);
    m_ratios->setObjectName(QStringLiteral("smoothRatios"));
    m_ratios->setTextFormat(Qt::RichText);
    m_ratios->setWordWrap(true);
    layout->addWidget(m_ratios);
    layout->addWidget(buildPlots(), 1);
    layout->addWidget(buildEvaluation());
    m_stack->addWidget(content);

    connect(m_siteCombo, &QComboBox::currentIndexChanged, this, &SmoothQuantPane::onSiteChosen);
    connect(m_alphaSlider, &QSlider::valueChanged, this, &SmoothQuantPane::onAlphaChanged);
    connect(m_state, &CalibrationState::calibrationChanged, this,
            &SmoothQuantPane::onCalibrationChanged);
    connect(m_session, &AppSession::modelLoaded, this, &SmoothQuantPane::onModelChanged);
    connect(m_session, &AppSession::modelClosed, this, &SmoothQuantPane::onModelChanged);
    connect(m_session, &AppSession::tensorSelected, this, &SmoothQuantPane::onTensorSelected);
    onCalibrationChanged();
}

SmoothQuantPane::~SmoothQuantPane() = default;

QWidget* SmoothQuantPane::buildPlots()
{
    auto* box = new QWidget(this);
    auto* row = new QHBoxLayout(box);
    row->setContentsMargins(0, 0, 0, 0);
    m_actPlot = makeLogPlot(box, QStringLiteral("smoothActivationPlot"), tr("activation abs-max"));
    m_actBefore = addGraph(m_actPlot, kBeforeColor, tr("before"));
    m_actAfter = addGraph(m_actPlot, kAfterColor, tr("after (X / s)"));
    m_wPlot = makeLogPlot(box, QStringLiteral("smoothWeightPlot"), tr("weight column abs-max"));
    m_wBefore = addGraph(m_wPlot, kBeforeColor, tr("before"));
    m_wAfter = addGraph(m_wPlot, kAfterColor, tr("after (W · s)"));
    auto* left = new QGroupBox(tr("Activation abs-max per channel"), box);
    (new QVBoxLayout(left))->addWidget(m_actPlot);
    auto* right = new QGroupBox(tr("Weight abs-max per input channel"), box);
    (new QVBoxLayout(right))->addWidget(m_wPlot);
    row->addWidget(left, 1);
    row->addWidget(right, 1);
    return box;
}

QWidget* SmoothQuantPane::buildEvaluation()
{
    auto* box = new QGroupBox(tr("W8A8 evaluation of the whole model (int8 weights per output "
                                 "channel, int8 activations at every linear input)"),
                              this);
    auto* layout = new QVBoxLayout(box);
    auto* row = new QHBoxLayout;
    row->addWidget(new QLabel(tr("Text:"), box));
    m_textEdit = new QLineEdit(box);
    m_textEdit->setObjectName(QStringLiteral("smoothEvalText"));
    const QString tiny =
        QDir::cleanPath(dataDir() + QStringLiteral("/text/eval/tinystories-valid-1000.txt"));
    if (QFileInfo::exists(tiny)) m_textEdit->setText(tiny);
    row->addWidget(m_textEdit, 1);
    auto* browse = new QToolButton(box);
    browse->setText(QStringLiteral("…"));
    connect(browse, &QToolButton::clicked, this, [this] {
        const QString f = QFileDialog::getOpenFileName(this, tr("Evaluation Text"),
                                                       QFileInfo(m_textEdit->text()).path(),
                                                       tr("Text (*.txt);;All files (*)"));
        if (!f.isEmpty()) m_textEdit->setText(f);
    });
    row->addWidget(browse);
    row->addWidget(new QLabel(tr("Windows:"), box));
    m_windowsSpin = new QSpinBox(box);
    m_windowsSpin->setRange(1, 100000);
    m_windowsSpin->setValue(32);
    row->addWidget(m_windowsSpin);
    row->addWidget(new QLabel(tr("Context:"), box));
    m_ctxSpin = new QSpinBox(box);
    m_ctxSpin->setRange(16, 1 << 16);
    m_ctxSpin->setValue(512);
    row->addWidget(m_ctxSpin);
    row->addWidget(new QLabel(tr("Activations:"), box));
    m_actMode = new QComboBox(box);
    m_actMode->addItem(tr("per token (dynamic)"), int(ql::ActivationQuant::PerToken));
    m_actMode->addItem(tr("per tensor (static)"), int(ql::ActivationQuant::PerTensorStatic));
    row->addWidget(m_actMode);
    m_evalButton = new QPushButton(tr("Evaluate W8A8 before / after"), box);
    m_evalButton->setObjectName(QStringLiteral("smoothEvalButton"));
    connect(m_evalButton, &QPushButton::clicked, this, &SmoothQuantPane::evaluate);
    row->addWidget(m_evalButton);
    layout->addLayout(row);
    m_progress = new QProgressBar(box);
    m_progress->setRange(0, 1000);
    m_progress->setValue(0);
    m_progress->setTextVisible(false);
    m_progress->setMaximumHeight(6);
    layout->addWidget(m_progress);
    m_result = new QLabel(tr("Not evaluated yet."), box);
    m_result->setObjectName(QStringLiteral("smoothEvalResult"));
    m_result->setTextFormat(Qt::RichText);
    m_result->setTextInteractionFlags(Qt::TextSelectableByMouse);
    layout->addWidget(m_result);
    connect(m_jobs, &JobRunner::progress, this,
            [this](const QString& tag, double fraction, const QString&) {
                if (tag == kEvalTag) m_progress->setValue(int(fraction * 1000));
            });
    return box;
}

QString SmoothQuantPane::currentSite() const
{
    return m_siteCombo->currentData().toString();
}

void SmoothQuantPane::setSite(const QString& probe)
{
    const int i = m_siteCombo->findData(probe);
    if (i >= 0) m_siteCombo->setCurrentIndex(i);
}

double SmoothQuantPane::alpha() const
{
    return m_alphaSlider->value() / 100.0;
}

void SmoothQuantPane::setAlpha(double alpha)
{
    m_alphaSlider->setValue(int(std::lround(std::clamp(alpha, 0.0, 1.0) * 100)));
}

void SmoothQuantPane::setEvaluationText(const QString& path, int windows, int ctx)
{
    m_textEdit->setText(path);
    m_windowsSpin->setValue(windows);
    m_ctxSpin->setValue(ctx);
}

void SmoothQuantPane::setActivationQuant(ql::ActivationQuant mode)
{
    const int i = m_actMode->findData(int(mode));
    if (i >= 0) m_actMode->setCurrentIndex(i);
}

void SmoothQuantPane::onModelChanged()
{
    m_sites.clear();
    m_current.reset();
    m_evaluation.reset();
    m_result->setText(tr("Not evaluated yet."));
    onCalibrationChanged();
}

void SmoothQuantPane::onCalibrationChanged()
{
    m_sites.clear();
    m_current.reset();
    auto calibration = m_state->result();
    const bool usable = calibration && m_session->hasModel();
    m_stack->setCurrentIndex(usable ? 1 : 0);
    const QString previous = currentSite();
    {
        const QSignalBlocker block(m_siteCombo);
        m_siteCombo->clear();
        if (usable)
            for (const ql::ProbeStats& p : calibration->probes)
                m_siteCombo->addItem(QString::fromStdString(p.name),
                                     QString::fromStdString(p.name));
    }
    m_calibration = calibration;
    updateEnabled();
    if (!usable) return;
    QString want = ActivationsPane::probeForTensor(m_session->selectedTensor());
    if (want.isEmpty()) want = previous;
    const int i = m_siteCombo->findData(want);
    {
        const QSignalBlocker block(m_siteCombo);
        m_siteCombo->setCurrentIndex(i >= 0 ? i : 0);
    }
    onSiteChosen();
}

void SmoothQuantPane::onTensorSelected(const QString& name)
{
    const QString probe = ActivationsPane::probeForTensor(name);
    if (!probe.isEmpty()) setSite(probe);
}

void SmoothQuantPane::onSiteChosen()
{
    const QString probe = currentSite();
    if (probe.isEmpty()) return;
    if (auto it = m_sites.find(probe); it != m_sites.end()) {
        m_current = *it;
        drawSite();
        return;
    }
    m_current.reset();  // not ready until its weights are read
    loadSite(probe);
}

void SmoothQuantPane::loadSite(const QString& probe)
{
    auto model = m_session->model();
    auto calibration = m_calibration;
    if (!model || !calibration) return;
    m_ratios->setText(tr("Reading the weights of %1…").arg(probe));
    JobRunner::Work<std::shared_ptr<const SiteData>> work =
        [model, calibration, name = probe.toStdString()](
            const ql::ProgressFn&) -> ql::Result<std::shared_ptr<const SiteData>> {
        const ql::ProbeStats* p = calibration->find(name);
        if (!p) return ql::makeError(ql::ErrorCode::InvalidArgument, "no probe " + name);
        for (const ql::FoldSite& site : ql::foldSites(*model, p->block)) {
            if (site.site != p->site) continue;
            if (site.channels != p->stats.channels())
                return ql::makeError(ql::ErrorCode::InvalidArgument,
                                     name + ": the calibration does not match the model");
            auto w = ql::weightColumnAbsMax(*model, site);
            if (!w) return w.error();
            auto data = std::make_shared<SiteData>();
            data->model = model;
            data->site = site;
            data->actAbsMax = p->stats.channelAbsMax();
            data->weightAbsMax = std::move(w).value();
            return std::shared_ptr<const SiteData>(std::move(data));
        }
        return ql::makeError(ql::ErrorCode::InvalidArgument, "the model has no layers at " + name);
    };
    m_jobs->run(kSiteTag, this, std::move(work),
                [this, probe](ql::Result<std::shared_ptr<const SiteData>> r) {
                    if (!r) {
                        if (r.error().code != ql::ErrorCode::Cancelled)
                            m_ratios->setText(QString::fromStdString(r.error().message));
                        return;
                    }
                    m_sites.insert(probe, *r);
                    if (currentSite() == probe) {
                        m_current = *r;
                        drawSite();
                    }
                });
}

void SmoothQuantPane::onAlphaChanged()
{
    m_alphaLabel->setText(QString::number(alpha(), 'f', 2));
    drawSite();
}

void SmoothQuantPane::drawSite()
{
    if (!m_current) return;
    const SiteData& d = *m_current;
    m_preview = ql::previewSmoothing(d.actAbsMax, d.weightAbsMax,
                                     ql::siteScales(d.site, d.actAbsMax, d.weightAbsMax, alpha()));
    setGraph(m_actBefore, d.actAbsMax);
    setGraph(m_actAfter, m_preview.actAfter);
    setGraph(m_wBefore, d.weightAbsMax);
    setGraph(m_wAfter, m_preview.weightAfter);
    fitLog(m_actPlot, d.actAbsMax.size());
    fitLog(m_wPlot, d.weightAbsMax.size());
    const auto [smin, smax] = std::minmax_element(m_preview.scales.begin(), m_preview.scales.end());
    QStringList members;
    for (const ql::TensorInfo* m : d.site.members) members << QString::fromStdString(m->name);
    QString text = tr("<b>%1</b> (%2 channels; read by %3)<br>"
                      "activation max/median <b>%4</b> &nbsp;·&nbsp; weight max/median <b>%5</b> "
                      "&nbsp;·&nbsp; scales s in [%6, %7]")
                       .arg(currentSite())
                       .arg(d.actAbsMax.size())
                       .arg(members.join(QStringLiteral(", ")))
                       .arg(ratioText(m_preview.actRatioBefore, m_preview.actRatioAfter))
                       .arg(ratioText(m_preview.weightRatioBefore, m_preview.weightRatioAfter))
                       .arg(human::number(smin == m_preview.scales.end() ? 1.0 : *smin, 3))
                       .arg(human::number(smax == m_preview.scales.end() ? 1.0 : *smax, 3));
    if (!d.site.foldable())
        text += tr("<br><i>Not foldable here (%1): the evaluation leaves this site unsmoothed.</i>")
                    .arg(QString::fromStdString(d.site.why));
    else if (d.site.needsTiedHeads())
        text += tr("<br><i>Scales tied per KV head (%1 query heads share each of %2), so they fold "
                   "exactly into attn_v.</i>")
                    .arg(d.site.heads / std::max<std::int64_t>(1, d.site.kvHeads))
                    .arg(d.site.kvHeads);
    m_ratios->setText(text);
    emit siteShown(currentSite());
}

void SmoothQuantPane::evaluate()
{
    auto model = m_session->model();
    auto calibration = m_calibration;
    if (!model || !calibration || m_evaluating) return;
    const double a = alpha();
    const auto mode = ql::ActivationQuant(m_actMode->currentData().toInt());
    const std::string text = m_textEdit->text().toStdString();
    const int windows = m_windowsSpin->value(), ctx = m_ctxSpin->value();
    m_evaluating = true;
    updateEnabled();
    m_progress->setValue(0);
    m_result->setText(tr("Evaluating W8A8 at α = %1…").arg(a, 0, 'f', 2));
    JobRunner::Work<SmoothQuantEvaluation> work =
        [model, calibration, a, mode, text, windows,
         ctx](const ql::ProgressFn& progress) -> ql::Result<SmoothQuantEvaluation> {
        auto content = ql::readTextFile(text);
        if (!content) return content.error();
        auto tokenizer = ql::Tokenizer::create(*model);
        if (!tokenizer) return tokenizer.error();
        const auto chunks = ql::makeLlamaCppChunks(**tokenizer, *content, ctx, windows);
        if (chunks.empty())
            return ql::makeError(
                ql::ErrorCode::InvalidArgument,
                text + ": too short for one window of " + std::to_string(ctx) + " tokens");
        auto part = [&](double p0, double p1) -> ql::ProgressFn {
            return [&progress, p0, p1](double f, std::string_view what) {
                return ql::reportProgress(progress, p0 + (p1 - p0) * f, what);
            };
        };
        auto reference = ql::LlamaModel::create(*model, {}, part(0.0, 0.05));
        if (!reference) return reference.error();
        ql::SmoothQuantOptions options;
        options.alpha = a;
        options.w8a8.activations = mode;
        auto transform = ql::computeSmoothQuant(*model, *calibration, options);
        if (!transform) return transform.error();
        SmoothQuantEvaluation out;
        out.alpha = a;
        out.activations = mode;
        for (int i = 0; i < 2; ++i) {
            auto w8 =
                ql::createW8A8Model(*model, i ? &transform->folds : nullptr, options.w8a8,
                                    calibration.get(), part(0.05 + 0.475 * i, 0.1 + 0.475 * i));
            if (!w8) return w8.error();
            ql::LlamaLogitsSource source(*w8), ref(*reference);
            auto r = ql::evaluate(source, chunks, &ref, part(0.1 + 0.45 * i, 0.55 + 0.45 * i));
            if (!r) return r.error();
            (i ? out.smoothed : out.plain) = std::move(r).value();
        }
        return out;
    };
    m_jobs->run(kEvalTag, this, std::move(work), [this](ql::Result<SmoothQuantEvaluation> r) {
        m_evaluating = false;
        updateEnabled();
        if (!r) {
            const QString message = QString::fromStdString(r.error().message);
            m_result->setText(r.error().code == ql::ErrorCode::Cancelled
                                  ? tr("Cancelled.")
                                  : tr("Failed: %1").arg(message.toHtmlEscaped()));
            emit evaluationFinished(false, message);
            return;
        }
        m_progress->setValue(m_progress->maximum());
        m_evaluation = std::move(r).value();
        showEvaluation();
        emit evaluationFinished(true, {});
    });
}

void SmoothQuantPane::showEvaluation()
{
    if (!m_evaluation) return;
    const SmoothQuantEvaluation& e = *m_evaluation;
    auto row = [](const QString& name, const ql::EvalResult& r) {
        return QStringLiteral(
                   "<tr><td>%1</td><td align=right>%2</td><td align=right>%3</td>"
                   "<td align=right>%4</td></tr>")
            .arg(name, QString::number(r.ppl, 'f', 4), QString::number(r.kl->mean, 'f', 5),
                 human::percent(r.kl->sameTop, 4));
    };
    const QString html =
        tr("<table cellspacing=0 cellpadding=4><tr><th align=left>model</th><th>PPL</th>"
           "<th>KL mean</th><th>same top</th></tr>"
           "<tr><td>float32</td><td align=right>%1</td><td align=right>–</td>"
           "<td align=right>–</td></tr>%2%3</table>"
           "<small>%4 windows, %5 scored tokens; activations %6</small>")
            .arg(QString::number(*e.plain.referencePpl, 'f', 4))
            .arg(row(tr("W8A8, no smoothing"), e.plain))
            .arg(row(tr("W8A8, SmoothQuant α = %1").arg(e.alpha, 0, 'f', 2), e.smoothed))
            .arg(e.plain.windows)
            .arg(human::count(e.plain.tokens))
            .arg(QString::fromLatin1(ql::activationQuantName(e.activations)));
    m_result->setText(html);
}

void SmoothQuantPane::updateEnabled()
{
    m_evalButton->setEnabled(!m_evaluating && m_calibration && m_session->hasModel());
}
