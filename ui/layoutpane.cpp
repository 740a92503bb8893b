#include "layoutpane.h"

#include <QAction>
#include <QComboBox>
#include <QDoubleSpinBox>
#include <QFileDialog>
#include <QGridLayout>
#include <QHBoxLayout>
#include <QHeaderView>
#include <QItemSelectionModel>
#include <QLabel>
#include <QLocale>
#include <QPainter>
#include <QPlainTextEdit>
#include <QPushButton>
#include <QSplitter>
#include <QTableView>
#include <QToolButton>
#include <QVBoxLayout>

#include <qcustomplot.h>

#include <algorithm>
#include <cmath>

#include "appsession.h"
#include "calib/dataset.h"
#include "format.h"
#include "jobrunner.h"
#include "layout/allocate.h"
#include "eval/evaluator.h"
#include "model/llama_runner.h"
#include "model/tokenizer.h"
#include "quant/quantize_model.h"
#include "session/session.h"

namespace {

const QString kSensitivityTag = QStringLiteral("layout-sensitivity");
const QString kFrontTag = QStringLiteral("layout-front");
const QString kMeasureTag = QStringLiteral("layout-measure");
const QString kEvaluateTag = QStringLiteral("layout-evaluate");

const char* const kRoles[] = {"attn_q",   "attn_k", "attn_v",  "attn_output",
                              "ffn_gate", "ffn_up", "ffn_down"};

QCPColorGradient heatGradient()
{
    QCPColorGradient g;
    g.clearColorStops();
    g.setColorStopAt(0.00, QColor(68, 1, 84));
    g.setColorStopAt(0.25, QColor(59, 82, 139));
    g.setColorStopAt(0.50, QColor(33, 145, 140));
    g.setColorStopAt(0.75, QColor(94, 201, 98));
    g.setColorStopAt(1.00, QColor(253, 231, 37));
    g.setNanHandling(QCPColorGradient::nhTransparent);  // not measured / stored exactly (f32)
    return g;
}

QCustomPlot* plotWidget(QWidget* parent, const QString& name)
{
    auto* plot = new QCustomPlot(parent);
    plot->setObjectName(name);
    plot->setMinimumSize(260, 200);
    QFont f = plot->font();
    f.setPointSizeF(f.pointSizeF() * 0.85);
    for (QCPAxis* a : {plot->xAxis, plot->yAxis}) {
        a->setTickLabelFont(f);
        a->setLabelFont(f);
    }
    return plot;
}

}  // namespace

SizeBar::SizeBar(QWidget* parent) : QWidget(parent)
{
    setMinimumHeight(20);
    setSizePolicy(QSizePolicy::Expanding, QSizePolicy::Fixed);
}

void SizeBar::setValues(std::uint64_t bytes, std::uint64_t target)
{
    m_bytes = bytes;
    m_target = target;
    update();
}

void SizeBar::paintEvent(QPaintEvent*)
{
    QPainter p(this);
    const QRect r = rect().adjusted(0, 0, -1, -1);
    p.fillRect(r, palette().base());
    const double scale = double(std::max<std::uint64_t>({m_bytes, m_target, 1})) * 1.05;
    const int w = int(r.width() * double(m_bytes) / scale);
    const bool over = m_target > 0 && m_bytes > m_target;
    p.fillRect(QRect(r.left(), r.top(), w, r.height()),
               over ? QColor(0xd6, 0x27, 0x28) : QColor(0x2c, 0xa0, 0x2c));
    if (m_target > 0) {
        const int x = r.left() + int(r.width() * double(m_target) / scale);
        p.setPen(QPen(Qt::black, 2));
        p.drawLine(x, r.top(), x, r.bottom());
    }
    p.setPen(palette().text().color());
    p.drawRect(r);
    const QString text = m_target > 0
                             ? tr("%1 kB of %2 kB target (%3%)")
                                   .arg(double(m_bytes) / 1000.0, 0, 'f', 1)
                                   .arg(double(m_target) / 1000.0, 0, 'f', 1)
                                   .arg(100.0 * double(m_bytes) / double(m_target), 0, 'f', 1)
                             : tr("%1 kB").arg(double(m_bytes) / 1000.0, 0, 'f', 1);
    p.drawText(r, Qt::AlignCenter, text);
}

LayoutPane::LayoutPane(AppSession* session, JobRunner* jobs, QWidget* parent)
    : QWidget(parent), m_session(session), m_jobs(jobs), m_model(new LayoutTableModel(this))
{
    auto* root = new QVBoxLayout(this);
    root->setContentsMargins(4, 4, 4, 4);

    // Presets, target, allocation, sensitivity.
    auto* top = new QHBoxLayout;
    top->addWidget(new QLabel(tr("Preset:"), this));
    m_preset = new QComboBox(this);
    for (const auto& p : ql::presetNames()) m_preset->addItem(QString::fromStdString(p));
    top->addWidget(m_preset);
    auto* applyPresetButton = new QPushButton(tr("Apply"), this);
    top->addWidget(applyPresetButton);
    top->addSpacing(12);
    top->addWidget(new QLabel(tr("Target:"), this));
    m_target = new QDoubleSpinBox(this);
    m_target->setRange(1, 1e9);
    m_target->setDecimals(1);
    m_target->setSuffix(tr(" kB"));
    m_target->setToolTip(tr("The whole exported GGUF file, header included (1 kB = 1000 bytes)"));
    top->addWidget(m_target);
    auto* allocateButton = new QPushButton(tr("Allocate"), this);
    allocateButton->setToolTip(
        tr("Per-tensor formats for the target minimizing the predicted ΔKL (needs sensitivity)"));
    top->addWidget(allocateButton);
    top->addSpacing(12);
    auto* loadButton = new QPushButton(tr("Load Session…"), this);
    auto* sweepButton = new QPushButton(tr("Measure Sensitivity…"), this);
    auto* measureButton = new QPushButton(tr("Measure Error"), this);
    measureButton->setToolTip(
        tr("Quantize the current layout and show each tensor's relative "
           "RMSE"));
    top->addWidget(loadButton);
    top->addWidget(sweepButton);
    top->addWidget(measureButton);
    auto* evaluateButton = new QPushButton(tr("Evaluate…"), this);
    evaluateButton->setToolTip(
        tr("Measure KL, perplexity and same-top of the current layout on a "
           "text file, beside the predicted KL"));
    top->addWidget(evaluateButton);
    top->addStretch(1);
    auto* undo = new QToolButton(this);
    undo->setDefaultAction(m_model->undoStack()->createUndoAction(this, tr("Undo")));
    undo->defaultAction()->setShortcut(QKeySequence::Undo);
    auto* redo = new QToolButton(this);
    redo->setDefaultAction(m_model->undoStack()->createRedoAction(this, tr("Redo")));
    redo->defaultAction()->setShortcut(QKeySequence::Redo);
    top->addWidget(undo);
    top->addWidget(redo);
    root->addLayout(top);

    auto* sizeRow = new QHBoxLayout;
    m_sizeBar = new SizeBar(this);
    sizeRow->addWidget(m_sizeBar, 2);
    m_summary = new QLabel(this);
    sizeRow->addWidget(m_summary, 3);
    root->addLayout(sizeRow);

    auto* split = new QSplitter(Qt::Horizontal, this);
    // Left: the table with bulk edit, and the rules editor.
    auto* left = new QWidget(split);
    auto* leftLayout = new QVBoxLayout(left);
    leftLayout->setContentsMargins(0, 0, 0, 0);
    m_table = new QTableView(left);
    m_table->setObjectName(QStringLiteral("layoutTable"));
    m_table->setModel(m_model);
    m_table->setSelectionBehavior(QAbstractItemView::SelectRows);
    m_table->setSelectionMode(QAbstractItemView::ExtendedSelection);
    m_table->verticalHeader()->setDefaultSectionSize(m_table->fontMetrics().height() + 4);
    m_table->verticalHeader()->hide();
    m_table->horizontalHeader()->setStretchLastSection(true);
    leftLayout->addWidget(m_table, 3);
    auto* bulk = new QHBoxLayout;
    bulk->addWidget(new QLabel(tr("Selected rows:"), left));
    m_bulkFormat = new QComboBox(left);
    m_bulkFormat->setEditable(true);
    for (const char* f : {"q8_0", "q6_k", "q5_k", "q5_1", "q5_0", "q4_k", "q4_1", "q4_0", "q3_k",
                          "q2_k", "f16", "f32", "int4:g32", "int8"})
        m_bulkFormat->addItem(QString::fromLatin1(f));
    bulk->addWidget(m_bulkFormat);
    auto* setButton = new QPushButton(tr("Set Format"), left);
    bulk->addWidget(setButton);
    bulk->addStretch(1);
    leftLayout->addLayout(bulk);
    leftLayout->addWidget(
        new QLabel(tr("Rules (PATTERN=FORMAT[:method], later rules win):"), left));
    m_rules = new QPlainTextEdit(left);
    m_rules->setObjectName(QStringLiteral("layoutRules"));
    m_rules->setMaximumHeight(90);
    QFont mono(QStringLiteral("monospace"));
    mono.setStyleHint(QFont::TypeWriter);
    m_rules->setFont(mono);
    leftLayout->addWidget(m_rules, 1);
    auto* rulesRow = new QHBoxLayout;
    auto* applyRules = new QPushButton(tr("Apply Rules"), left);
    rulesRow->addWidget(applyRules);
    m_rulesError = new QLabel(left);
    m_rulesError->setStyleSheet(QStringLiteral("color: #b00020"));
    m_rulesError->setWordWrap(true);
    rulesRow->addWidget(m_rulesError, 1);
    leftLayout->addLayout(rulesRow);

    // Right: Pareto plot over the heatmap.
    auto* right = new QSplitter(Qt::Vertical, split);
    m_pareto = plotWidget(right, QStringLiteral("layoutPareto"));
    m_pareto->xAxis->setLabel(tr("file size (kB)"));
    m_pareto->yAxis->setLabel(tr("predicted KL (nats/token)"));
    m_pareto->yAxis->setScaleType(QCPAxis::stLogarithmic);
    m_pareto->yAxis->setTicker(QSharedPointer<QCPAxisTickerLog>(new QCPAxisTickerLog));
    m_pareto->legend->setVisible(true);
    m_pareto->legend->setFont(m_pareto->xAxis->tickLabelFont());
    auto* heatBox = new QWidget(right);
    auto* heatLayout = new QVBoxLayout(heatBox);
    heatLayout->setContentsMargins(0, 0, 0, 0);
    auto* heatTop = new QHBoxLayout;
    heatTop->addWidget(
        new QLabel(tr("Sensitivity (log10 ΔKL; blank: stored exactly) at format:"), heatBox));
    m_heatFormat = new QComboBox(heatBox);
    heatTop->addWidget(m_heatFormat);
    heatTop->addStretch(1);
    heatLayout->addLayout(heatTop);
    m_heat = plotWidget(heatBox, QStringLiteral("layoutHeatmap"));
    m_heat->xAxis->setLabel(tr("block"));
    m_heatMap = new QCPColorMap(m_heat->xAxis, m_heat->yAxis);
    m_heatMap->setGradient(heatGradient());
    m_heatMap->setInterpolate(false);
    auto* scale = new QCPColorScale(m_heat);
    m_heat->plotLayout()->addElement(0, 1, scale);
    m_heatMap->setColorScale(scale);
    scale->setGradient(heatGradient());
    scale->axis()->setLabel(tr("log10 ΔKL"));
    QSharedPointer<QCPAxisTickerText> roles(new QCPAxisTickerText);
    for (int i = 0; i < 7; ++i) roles->addTick(i, QString::fromLatin1(kRoles[i]));
    m_heat->yAxis->setTicker(roles);
    heatLayout->addWidget(m_heat, 1);
    split->addWidget(left);
    split->addWidget(right);
    split->setStretchFactor(0, 3);
    split->setStretchFactor(1, 2);
    root->addWidget(split, 1);
    m_status = new QLabel(this);
    root->addWidget(m_status);

    connect(applyPresetButton, &QPushButton::clicked, this,
            [this] { applyPreset(m_preset->currentText()); });
    connect(allocateButton, &QPushButton::clicked, this, [this] {
        QString error;
        if (!allocate(&error)) m_status->setText(error);
    });
    connect(setButton, &QPushButton::clicked, this,
            [this] { setSelectedFormat(m_bulkFormat->currentText()); });
    connect(applyRules, &QPushButton::clicked, this, [this] { applyRulesText(); });
    connect(loadButton, &QPushButton::clicked, this, [this] {
        const QString path = QFileDialog::getOpenFileName(this, tr("Session with Sensitivity"), {},
                                                          tr("Sessions (*.h5)"));
        if (!path.isEmpty()) loadSession(path);
    });
    connect(sweepButton, &QPushButton::clicked, this, [this] {
        const QString path = QFileDialog::getOpenFileName(this, tr("Evaluation Text"));
        if (!path.isEmpty()) measureSensitivity(path);
    });
    connect(measureButton, &QPushButton::clicked, this, &LayoutPane::measureErrors);
    connect(evaluateButton, &QPushButton::clicked, this, [this] {
        const QString path = QFileDialog::getOpenFileName(this, tr("Evaluation Text"));
        if (!path.isEmpty()) evaluate(path);
    });
    connect(m_target, &QDoubleSpinBox::valueChanged, this, [this] { onLayoutEdited(); });
    connect(m_heatFormat, &QComboBox::currentIndexChanged, this, [this] { updateHeatmap(); });
    connect(m_model, &LayoutTableModel::layoutEdited, this, &LayoutPane::onLayoutEdited);
    connect(m_session, &AppSession::modelLoaded, this, &LayoutPane::onModelLoaded);
    connect(m_session, &AppSession::modelClosed, this, [this] { m_model->setModel(nullptr); });
    if (m_session->hasModel()) onModelLoaded();
}

void LayoutPane::onModelLoaded()
{
    m_auto.reset();
    m_front.clear();
    m_model->setModel(m_session->model());
    m_model->setSensitivity(nullptr);
    // Default target: the Q4_K_M preset's size.
    if (auto m = m_session->model()) {
        if (auto text = ql::presetText(*m, "q4_k_m"))
            if (auto layout = ql::Layout::parse(*text))
                if (auto size = ql::estimateSize(*m, *layout)) setTargetBytes(size->fileBytes);
    }
    updateHeatmap();
}

void LayoutPane::setTargetBytes(std::uint64_t bytes)
{
    m_target->setValue(double(bytes) / 1000.0);
}

std::uint64_t LayoutPane::targetBytes() const
{
    return std::uint64_t(std::llround(m_target->value() * 1000.0));
}

void LayoutPane::onLayoutEdited()
{
    const ql::SizeReport& s = m_model->size();
    m_sizeBar->setValues(s.fileBytes, targetBytes());
    QString text = tr("GGUF %1 bytes, %2 bpw")
                       .arg(QLocale().toString(qulonglong(s.fileBytes)))
                       .arg(s.bpw, 0, 'f', 3);
    if (m_model->sensitivity())
        text += tr(", predicted KL %1").arg(human::number(m_model->predictedKl()));
    m_summary->setText(text);
    m_rulesError->clear();
    const QString rules = m_model->layoutText();
    if (m_rules->toPlainText() != rules) m_rules->setPlainText(QString(rules).replace("; ", "\n"));
    updatePareto();
}

void LayoutPane::applyPreset(const QString& preset)
{
    auto m = m_session->model();
    if (!m) return;
    auto layout = ql::presetLayout(*m, preset.toStdString());
    if (!layout) {
        m_status->setText(QString::fromStdString(layout.error().message));
        return;
    }
    m_model->applyLayout(*layout, tr("Preset %1").arg(preset));
}

bool LayoutPane::applyRulesText(QString* error)
{
    QString message;
    const bool ok = m_model->applyRules(m_rules->toPlainText(), &message);
    m_rulesError->setText(message);
    if (error) *error = message;
    return ok || message.isEmpty();
}

bool LayoutPane::setSelectedFormat(const QString& format)
{
    QList<int> rows;
    for (const QModelIndex& i : m_table->selectionModel()->selectedRows()) rows << i.row();
    if (rows.isEmpty()) return false;
    QString error;
    const bool ok = m_model->setFormat(rows, format, &error);
    m_status->setText(error);
    return ok;
}

bool LayoutPane::allocate(QString* error)
{
    auto m = m_session->model();
    auto table = m_model->sensitivity();
    if (!m || !table) {
        if (error) *error = tr("Allocation needs a sensitivity table: load a session or measure");
        return false;
    }
    ql::AllocationOptions o;
    o.targetBytes = targetBytes();
    auto a = ql::allocateLayout(*m, *table, o);
    if (!a) {
        if (error) *error = QString::fromStdString(a.error().message);
        return false;
    }
    m_auto = Point{a->size.fileBytes, a->predictedKl, tr("automatic")};
    m_model->applyLayout(a->layout,
                         tr("Allocate for %1 kB").arg(double(targetBytes()) / 1000.0, 0, 'f', 1));
    updatePareto();
    return true;
}

void LayoutPane::setSensitivity(std::shared_ptr<const ql::SensitivityTable> table)
{
    m_model->setSensitivity(table);
    m_heatFormat->blockSignals(true);
    m_heatFormat->clear();
    if (table) {
        for (const auto& f : table->formats) m_heatFormat->addItem(QString::fromStdString(f));
        const int q4 = m_heatFormat->findText(QStringLiteral("q4_0"));
        m_heatFormat->setCurrentIndex(q4 >= 0 ? q4 : 0);
    }
    m_heatFormat->blockSignals(false);
    // Preset points.
    m_presetPoints.clear();
    m_auto.reset();
    if (auto m = m_session->model(); m && table) {
        for (const auto& p : ql::presetNames()) {
            auto text = ql::presetText(*m, p);
            if (!text) continue;
            auto layout = ql::Layout::parse(*text);
            if (!layout) continue;
            auto plan = layout->resolve(*m);
            if (!plan) continue;
            auto size = ql::estimateSize(*m, *plan, layout->toString());
            if (!size) continue;
            int missing = 0;
            const double kl = ql::predictedKl(*table, *plan, &missing);
            if (missing != 0 || kl <= 0) continue;
            // Uniform presets that store the same formats (q2_k and q3_k fall back to q4_0 on
            // 64-column rows) are one point.
            bool same = false;
            for (const auto& q : m_presetPoints)
                if (q.bytes == size->fileBytes && std::fabs(q.kl - kl) <= 1e-12 * kl) same = true;
            if (!same) m_presetPoints.push_back({size->fileBytes, kl, QString::fromStdString(p)});
        }
    }
    updateHeatmap();
    computeFront();
    onLayoutEdited();
    emit sensitivityChanged();
}

void LayoutPane::computeFront()
{
    auto m = m_session->model();
    auto table = m_model->sensitivity();
    m_front.clear();
    if (!m || !table) return;
    m_frontPending = true;
    JobRunner::Work<std::vector<Point>> work =
        [m, table](const ql::ProgressFn& progress) -> ql::Result<std::vector<Point>> {
        // From the smallest to the largest measured layout, 24 targets.
        ql::AllocationOptions o;
        std::uint64_t lo = 0, hi = 0;
        {
            o.targetBytes = std::uint64_t(1) << 50;
            auto big = ql::allocateLayout(*m, *table, o);
            if (!big) return big.error();
            hi = big->size.fileBytes;
            lo = hi / 8;
        }
        std::vector<Point> out;
        for (int i = 0; i <= 24; ++i) {
            if (!ql::reportProgress(progress, i / 24.0, "allocation front"))
                return ql::makeError(ql::ErrorCode::Cancelled, "cancelled");
            o.targetBytes = lo + (hi - lo) * std::uint64_t(i) / 24;
            auto a = ql::allocateLayout(*m, *table, o);
            if (a && a->predictedKl > 0) out.push_back({a->size.fileBytes, a->predictedKl, {}});
        }
        return out;
    };
    m_jobs->run(kFrontTag, this, std::move(work), [this](ql::Result<std::vector<Point>> r) {
        m_frontPending = false;
        if (r) m_front = std::move(r).value();
        updatePareto();
        emit frontReady();
    });
}

void LayoutPane::updatePareto()
{
    m_pareto->clearGraphs();
    m_pareto->clearItems();
    auto addGraph = [&](const QString& name, const QColor& color, QCPScatterStyle::ScatterShape s,
                        double size, bool line) {
        QCPGraph* g = m_pareto->addGraph();
        g->setName(name);
        g->setPen(line ? QPen(color, 1.5) : QPen(color));
        g->setLineStyle(line ? QCPGraph::lsLine : QCPGraph::lsNone);
        g->setScatterStyle(QCPScatterStyle(s, color, line ? color : color, size));
        return g;
    };
    double xmin = 1e300, xmax = 0, ymin = 1e300, ymax = 0;
    auto extend = [&](double x, double y) {
        xmin = std::min(xmin, x);
        xmax = std::max(xmax, x);
        ymin = std::min(ymin, y);
        ymax = std::max(ymax, y);
    };
    if (!m_front.empty()) {
        QCPGraph* g = addGraph(tr("allocation front"), QColor(0x1f, 0x77, 0xb4),
                               QCPScatterStyle::ssDisc, 4, true);
        for (const auto& p : m_front) {
            g->addData(p.bytes / 1000.0, p.kl);
            extend(p.bytes / 1000.0, p.kl);
        }
    }
    if (!m_presetPoints.empty()) {
        QCPGraph* g =
            addGraph(tr("presets"), QColor(0x7f, 0x7f, 0x7f), QCPScatterStyle::ssSquare, 7, false);
        std::vector<const Point*> labelled;
        for (const auto& p : m_presetPoints) {
            g->addData(p.bytes / 1000.0, p.kl);
            extend(p.bytes / 1000.0, p.kl);
        }
        for (const auto& p : m_presetPoints) {
            // Labels that would overlap an earlier one are left out (the point stays).
            bool crowded = false;
            for (const Point* q : labelled)
                if (std::fabs(double(q->bytes) - double(p.bytes)) < 0.06 * double(p.bytes) &&
                    std::fabs(std::log10(q->kl / p.kl)) < 0.35)
                    crowded = true;
            if (crowded) continue;
            labelled.push_back(&p);
            auto* label = new QCPItemText(m_pareto);
            label->position->setCoords(p.bytes / 1000.0, p.kl);
            label->setPositionAlignment(Qt::AlignLeft | Qt::AlignBottom);
            label->setText(QStringLiteral(" ") + p.label);
            QFont f = m_pareto->xAxis->tickLabelFont();
            f.setPointSizeF(f.pointSizeF() * 0.9);
            label->setFont(f);
            label->setColor(QColor(0x55, 0x55, 0x55));
        }
    }
    if (m_auto) {
        QCPGraph* g = addGraph(tr("automatic"), QColor(0x2c, 0xa0, 0x2c),
                               QCPScatterStyle::ssDiamond, 11, false);
        g->addData(m_auto->bytes / 1000.0, m_auto->kl);
        extend(m_auto->bytes / 1000.0, m_auto->kl);
    }
    if (m_model->sensitivity() && m_model->predictedKl() > 0) {
        QCPGraph* g =
            addGraph(tr("current"), QColor(0xd6, 0x27, 0x28), QCPScatterStyle::ssStar, 13, false);
        g->addData(m_model->size().fileBytes / 1000.0, m_model->predictedKl());
        extend(m_model->size().fileBytes / 1000.0, m_model->predictedKl());
    }
    if (targetBytes() > 0) {
        auto* line = new QCPItemStraightLine(m_pareto);
        line->point1->setCoords(targetBytes() / 1000.0, 1e-12);
        line->point2->setCoords(targetBytes() / 1000.0, 1e3);
        line->setPen(QPen(Qt::black, 1, Qt::DashLine));
        extend(targetBytes() / 1000.0, ymin < 1e300 ? ymin : 1e-3);
    }
    if (xmax > 0) {
        const double pad = (xmax - xmin) * 0.08 + 1;
        m_pareto->xAxis->setRange(xmin - pad, xmax + pad * 2.5);
        m_pareto->yAxis->setRange(ymin / 3, ymax * 8);
    }
    m_pareto->replot();
}

void LayoutPane::updateHeatmap()
{
    auto table = m_model->sensitivity();
    const int f = table ? table->formatIndex(m_heatFormat->currentText().toStdString()) : -1;
    int blocks = 0;
    if (table)
        for (const auto& t : table->tensors) blocks = std::max(blocks, t.block + 1);
    if (f < 0 || blocks == 0) {
        m_heatMap->data()->clear();
        m_heat->replot();
        return;
    }
    // A single block would give the map no extent: draw at least two columns.
    const int nx = std::max(blocks, 2);
    m_heatMap->data()->setSize(nx, 7);
    m_heatMap->data()->setRange(QCPRange(0, nx - 1), QCPRange(0, 6));
    for (int x = 0; x < nx; ++x)
        for (int y = 0; y < 7; ++y) m_heatMap->data()->setCell(x, y, std::nan(""));
    double lo = 1e300, hi = -1e300;
    for (const auto& t : table->tensors) {
        if (t.block < 0) continue;
        for (int y = 0; y < 7; ++y)
            if (t.role == kRoles[y]) {
                const double v = t.cells[std::size_t(f)].deltaKl;
                const double l = v > 0 ? std::log10(v) : std::nan("");
                m_heatMap->data()->setCell(t.block, y, l);
                if (std::isfinite(l)) {
                    lo = std::min(lo, l);
                    hi = std::max(hi, l);
                }
            }
    }
    if (lo <= hi) m_heatMap->setDataRange(QCPRange(lo, hi > lo ? hi : lo + 1));
    m_heat->xAxis->setRange(-0.5, nx - 0.5);
    m_heat->yAxis->setRange(-0.5, 6.5);
    m_heat->replot();
}

void LayoutPane::loadSession(const QString& path)
{
    m_status->setText(tr("Reading %1…").arg(path));
    JobRunner::Work<std::shared_ptr<const ql::SensitivityTable>> work =
        [p = path.toStdString()](const ql::ProgressFn& progress)
        -> ql::Result<std::shared_ptr<const ql::SensitivityTable>> {
        auto s = ql::readSession(p, progress);
        if (!s) return s.error();
        if (!s->sensitivity)
            return ql::makeError(ql::ErrorCode::InvalidArgument,
                                 p + " has no sensitivity table (quantlens-cli sensitivity)");
        return std::make_shared<const ql::SensitivityTable>(std::move(*s->sensitivity));
    };
    m_jobs->run(kSensitivityTag, this, std::move(work),
                [this](ql::Result<std::shared_ptr<const ql::SensitivityTable>> r) {
                    if (!r) {
                        m_status->setText(QString::fromStdString(r.error().message));
                        return;
                    }
                    m_status->setText(tr("Sensitivity of %1 tensors x %2 formats")
                                          .arg((*r)->tensors.size())
                                          .arg((*r)->formats.size()));
                    setSensitivity(*r);
                });
}

void LayoutPane::measureSensitivity(const QString& textPath)
{
    auto m = m_session->model();
    if (!m) return;
    m_status->setText(tr("Measuring sensitivity on %1…").arg(textPath));
    JobRunner::Work<std::shared_ptr<const ql::SensitivityTable>> work =
        [m, p = textPath.toStdString()](const ql::ProgressFn& progress)
        -> ql::Result<std::shared_ptr<const ql::SensitivityTable>> {
        auto tok = ql::Tokenizer::create(*m);
        if (!tok) return tok.error();
        auto text = ql::readTextFile(p);
        if (!text) return text.error();
        auto windows = ql::makeLlamaCppChunks(**tok, *text, 128, 8);
        auto backend = ql::createBackend(ql::BackendKind::Auto);  // the GPU when present
        if (!backend) return backend.error();
        auto t = ql::measureSensitivity(*m, **backend, windows, nullptr, {}, progress);
        if (!t) return t.error();
        t->text = p;
        return std::make_shared<const ql::SensitivityTable>(std::move(t).value());
    };
    m_jobs->run(kSensitivityTag, this, std::move(work),
                [this](ql::Result<std::shared_ptr<const ql::SensitivityTable>> r) {
                    if (!r) {
                        m_status->setText(QString::fromStdString(r.error().message));
                        return;
                    }
                    m_status->setText(tr("Measured on %1 in %2 s")
                                          .arg(QString::fromStdString((*r)->device))
                                          .arg((*r)->seconds, 0, 'f', 1));
                    setSensitivity(*r);
                });
}

void LayoutPane::measureErrors()
{
    auto m = m_session->model();
    if (!m) return;
    auto layout = m_model->layout().toLayout();
    if (!layout) return;
    using Errors = std::vector<std::pair<std::string, double>>;
    JobRunner::Work<Errors> work =
        [m, l = *layout](const ql::ProgressFn& progress) -> ql::Result<Errors> {
        auto plan = l.resolve(*m);
        if (!plan) return plan.error();
        Errors out;
        for (std::size_t i = 0; i < plan->tensors.size(); ++i) {
            const ql::TensorPlan& p = plan->tensors[i];
            if (!ql::reportProgress(progress, double(i) / plan->tensors.size(), p.name))
                return ql::makeError(ql::ErrorCode::Cancelled, "cancelled");
            if (p.shape.size() < 2) continue;
            ql::TensorPlan rtn = p;
            rtn.method = ql::QuantMethod::Rtn;
            auto q = ql::quantizeTensor(*m, rtn, nullptr);
            if (!q) return q.error();
            out.emplace_back(p.name, q->report.metrics.relativeRmse);
        }
        return out;
    };
    m_jobs->run(kMeasureTag, this, std::move(work), [this](ql::Result<Errors> r) {
        if (r)
            m_model->setMeasuredErrors(*r);
        else
            m_status->setText(QString::fromStdString(r.error().message));
    });
}

void LayoutPane::evaluate(const QString& textPath)
{
    auto m = m_session->model();
    if (!m) return;
    auto layout = m_model->layout().toLayout();
    if (!layout) return;
    m_status->setText(tr("Evaluating the layout on %1…").arg(textPath));
    JobRunner::Work<ql::EvalResult> work =
        [m, l = *layout,
         p = textPath.toStdString()](const ql::ProgressFn& progress) -> ql::Result<ql::EvalResult> {
        auto tok = ql::Tokenizer::create(*m);
        if (!tok) return tok.error();
        auto text = ql::readTextFile(p);
        if (!text) return text.error();
        const auto windows = ql::makeLlamaCppChunks(**tok, *text, 128, 8);
        if (windows.empty())
            return ql::makeError(ql::ErrorCode::InvalidArgument, p + ": too short");
        auto q = ql::quantizeModel(*m, l, nullptr, progress);
        if (!q) return q.error();
        ql::LlamaLoadOptions options;
        const ql::QuantizedModel& qm = *q;
        options.override =
            [&qm](const ql::TensorInfo& t) -> ql::Result<std::optional<std::vector<float>>> {
            if (!qm.find(t.name)) return std::optional<std::vector<float>>();
            auto w = ql::dequantizedWeights(qm, t.name);
            if (!w) return w.error();
            return std::optional<std::vector<float>>(std::move(w).value());
        };
        auto reference = ql::LlamaModel::create(*m);
        if (!reference) return reference.error();
        auto quantized = ql::LlamaModel::create(*m, options);
        if (!quantized) return quantized.error();
        auto backend = ql::createBackend(ql::BackendKind::Auto);
        if (!backend) return backend.error();
        auto r1 = ql::createLlamaRunner(**backend, *reference, ql::Precision::Float32);
        if (!r1) return r1.error();
        auto r2 = ql::createLlamaRunner(**backend, *quantized, ql::Precision::Float32);
        if (!r2) return r2.error();
        ql::RunnerLogitsSource ref(**r1), quant(**r2);
        return ql::evaluate(quant, windows, &ref, progress);
    };
    m_jobs->run(kEvaluateTag, this, std::move(work), [this](ql::Result<ql::EvalResult> r) {
        if (!r || !r->kl) {
            m_status->setText(r ? tr("no KL") : QString::fromStdString(r.error().message));
            return;
        }
        QString text = tr("Measured: KL %1, PPL %2 (unquantized %3), same top %4")
                           .arg(human::number(r->kl->mean))
                           .arg(r->ppl, 0, 'f', 4)
                           .arg(*r->referencePpl, 0, 'f', 4)
                           .arg(human::percent(r->kl->sameTop));
        if (m_model->sensitivity())
            text += tr("; predicted KL %1").arg(human::number(m_model->predictedKl()));
        m_status->setText(text);
        emit evaluated(r->kl->mean, r->ppl, r->kl->sameTop);
    });
}
