// Calibration, activations and grid panes (issues 3 and 4) on stories260K: every number the panes
// draw is checked against core computing the same thing directly (the histogram bars against
// ActivationStats::histogram, the clip lines against computeActivationRanges, the INT4 levels
// against the quantized scale, the format table against quantizeRtn + computeErrorMetrics).
// With QL_PANE_SCREENSHOTS=<dir> the panes are also saved as PNG for the README.
#include <QDockWidget>
#include <QLabel>
#include <QSignalSpy>
#include <QStandardPaths>
#include <QTableView>
#include <QtTest>

#include <qcustomplot.h>

#include <cmath>

#include "activationspane.h"
#include "appsession.h"
#include "calib/activation_stats.h"
#include "calibrationpane.h"
#include "calibrationstate.h"
#include "gridpane.h"
#include "jobrunner.h"
#include "mainwindow.h"
#include "quant/error_metrics.h"
#include "quant/ggml_dequant.h"
#include "quant/rtn.h"
#include "test_data.h"

namespace {

const std::string kModel = "models/stories260K/stories260K.gguf";
const std::string kText = "text/calibration/tiny.txt";
constexpr int kSlow = 120000;

}  // namespace

class TestPanes : public QObject {
    Q_OBJECT
private slots:
    void initTestCase();
    void probeForTensor_data();
    void probeForTensor();
    void calibrationFeedsActivations();
    void clipLinesFollowBits_data();
    void clipLinesFollowBits();
    void topActivationShowsTokens();
    void heatmapIsLog10AbsMax();
    void cancelLeavesCalibration();
    void sessionRoundTrip();
    void gridLevelsMatchCore();
    void formatTableMatchesCore();
    void screenshots();
    void dockedInMainWindow();
    void cleanupTestCase();

private:
    std::unique_ptr<AppSession> m_session;
    std::unique_ptr<CalibrationState> m_state;
    std::unique_ptr<CalibrationPane> m_calibration;
    std::unique_ptr<ActivationsPane> m_activations;
    std::unique_ptr<GridPane> m_grid;
};

void TestPanes::initTestCase()
{
    QStandardPaths::setTestModeEnabled(true);  // MainWindow's settings stay out of the user's
    QL_REQUIRE_DATA(kModel);
    QL_REQUIRE_DATA(kText);
    m_session = std::make_unique<AppSession>();
    m_state = std::make_unique<CalibrationState>();
    m_calibration =
        std::make_unique<CalibrationPane>(m_session.get(), m_session->jobs(), m_state.get());
    m_activations =
        std::make_unique<ActivationsPane>(m_session.get(), m_session->jobs(), m_state.get());
    m_grid = std::make_unique<GridPane>(m_session.get(), m_session->jobs(), m_state.get());
    QSignalSpy loaded(m_session.get(), &AppSession::modelLoaded);
    m_session->openModel(QString::fromStdString(ql::test::dataPath(kModel)));
    QTRY_COMPARE_WITH_TIMEOUT(loaded.count(), 1, kSlow);
    QVERIFY(m_session->hasModel());
}

void TestPanes::probeForTensor_data()
{
    QTest::addColumn<QString>("tensor");
    QTest::addColumn<QString>("probe");
    QTest::newRow("q") << "blk.0.attn_q.weight"
                       << "blk.0.attn_qkv";
    QTest::newRow("k") << "blk.3.attn_k.weight"
                       << "blk.3.attn_qkv";
    QTest::newRow("v") << "blk.12.attn_v.weight"
                       << "blk.12.attn_qkv";
    QTest::newRow("o") << "blk.1.attn_output.weight"
                       << "blk.1.attn_output";
    QTest::newRow("gate") << "blk.2.ffn_gate.weight"
                          << "blk.2.ffn_gate_up";
    QTest::newRow("up") << "blk.2.ffn_up.weight"
                        << "blk.2.ffn_gate_up";
    QTest::newRow("down") << "blk.4.ffn_down.weight"
                          << "blk.4.ffn_down";
    QTest::newRow("norm") << "blk.4.ffn_norm.weight"
                          << "";
    QTest::newRow("embd") << "token_embd.weight"
                          << "";
}

void TestPanes::probeForTensor()
{
    QFETCH(QString, tensor);
    QFETCH(QString, probe);
    QCOMPARE(ActivationsPane::probeForTensor(tensor), probe);
}

// Issue 3: calibrate through the pane, then the activation histogram is core's.
void TestPanes::calibrationFeedsActivations()
{
    ql::CalibrationConfig config;
    config.textFiles = {ql::test::dataPath(kText)};
    config.samples = 2;
    config.seqLen = 64;
    config.seed = 7;
    config.hessian = ql::HessianPrecision::Float32;
    QSignalSpy finished(m_calibration.get(), &CalibrationPane::calibrationFinished);
    QSignalSpy changed(m_state.get(), &CalibrationState::calibrationChanged);
    m_calibration->startCalibration(config);
    QVERIFY(m_calibration->isRunning());
    QTRY_COMPARE_WITH_TIMEOUT(finished.count(), 1, kSlow);
    QVERIFY2(finished.at(0).at(0).toBool(), qPrintable(finished.at(0).at(1).toString()));
    QCOMPARE(changed.count(), 1);
    const auto result = m_state->result();
    QVERIFY(result);
    QCOMPARE(result->config.samples, 2);
    QCOMPARE(result->config.seqLen, 64);
    QCOMPARE(result->tokens, 2 * 64);
    QVERIFY(!result->probes.empty());

    // Selecting a tensor picks its probe.
    m_session->selectTensor(QStringLiteral("blk.0.attn_k.weight"));
    QCOMPARE(m_activations->currentProbe(), QStringLiteral("blk.0.attn_qkv"));
    const ql::ProbeStats* probe = result->find("blk.0.attn_qkv");
    QVERIFY(probe);
    const ql::SymmetricHistogram& hist = probe->stats.histogram();
    QCPBars* bars = m_activations->histogramBars();
    QCOMPARE(bars->data()->size(), int(hist.counts.size()));
    int i = 0;
    for (auto it = bars->data()->constBegin(); it != bars->data()->constEnd(); ++it, ++i) {
        QCOMPARE(it->key, hist.binCenter(std::size_t(i)));
        QCOMPARE(it->value, double(hist.counts[std::size_t(i)]));
    }
    QCOMPARE(bars->width(), hist.binWidth());
}

void TestPanes::clipLinesFollowBits_data()
{
    QTest::addColumn<int>("bits");
    QTest::newRow("int4") << 4;
    QTest::newRow("int6") << 6;
    QTest::newRow("int8") << 8;
}

void TestPanes::clipLinesFollowBits()
{
    QFETCH(int, bits);
    const auto result = m_state->result();
    if (!result) QSKIP("no calibration");
    m_activations->setProbe(QStringLiteral("blk.1.ffn_down"));
    m_activations->setBits(bits);
    const ql::ProbeStats* probe = result->find("blk.1.ffn_down");
    QVERIFY(probe);
    const auto ranges = ql::computeActivationRanges(probe->stats.histogram(), bits);
    QCOMPARE(m_activations->drawnRanges().size(), ranges.size());
    QCOMPARE(m_activations->clipLines().size(), 2 * ranges.size());
    QCOMPARE(m_activations->rangeModel()->rowCount(), int(ranges.size()));
    for (std::size_t r = 0; r < ranges.size(); ++r) {
        const auto* plus = m_activations->clipLines()[2 * r];
        const auto* minus = m_activations->clipLines()[2 * r + 1];
        QCOMPARE(plus->point1->coords().x(), ranges[r].clip);
        QCOMPARE(plus->point2->coords().x(), ranges[r].clip);
        QCOMPARE(minus->point1->coords().x(), -ranges[r].clip);
        QAbstractItemModel* model = m_activations->rangeModel();
        QCOMPARE(model->data(model->index(int(r), 1), Qt::UserRole).toDouble(), ranges[r].clip);
        QCOMPARE(model->data(model->index(int(r), 2), Qt::UserRole).toDouble(), ranges[r].mse);
        QCOMPARE(model->data(model->index(int(r), 3), Qt::UserRole).toDouble(),
                 ranges[r].clippedShare);
    }
}

void TestPanes::topActivationShowsTokens()
{
    const auto result = m_state->result();
    if (!result) QSKIP("no calibration");
    m_activations->setProbe(QStringLiteral("blk.0.attn_output"));
    const ql::ProbeStats* probe = result->find("blk.0.attn_output");
    QVERIFY(probe);
    QAbstractItemModel* top = m_activations->topModel();
    QCOMPARE(top->rowCount(), int(probe->stats.top().size()));
    QVERIFY(top->rowCount() > 1);
    QCOMPARE(probe->topContext.size(), probe->stats.top().size());
    const int row = 1;
    const ql::TopActivation& a = probe->stats.top()[row];
    QCOMPARE(top->data(top->index(row, 1)).toInt(), a.channel);
    QCOMPARE(top->data(top->index(row, 2)).toInt(), a.sample);
    QCOMPARE(top->data(top->index(row, 3)).toInt(), a.position);
    m_activations->topView()->setCurrentIndex(top->index(row, 0));
    const QString text = m_activations->contextLabel()->text();
    QVERIFY2(text.contains(QStringLiteral("channel %1").arg(a.channel)), qPrintable(text));
    const QString token = QString::fromStdString(probe->topContext[row].token)
                              .replace(QLatin1Char('\n'), QStringLiteral("⏎"))
                              .toHtmlEscaped();
    QVERIFY2(text.contains(QStringLiteral("<b>%1</b>").arg(token)), qPrintable(text));
}

void TestPanes::heatmapIsLog10AbsMax()
{
    const auto result = m_state->result();
    if (!result) QSKIP("no calibration");
    m_activations->setProbe(QStringLiteral("blk.0.ffn_down"));  // the heatmap follows the site
    QCPColorMapData* data = m_activations->heatmap()->data();
    const ql::ProbeStats* first = result->find("blk.0.ffn_down");
    QVERIFY(first);
    const int channels = first->stats.channels();
    QCOMPARE(data->keySize(), std::max(channels, 2));
    for (int c : {0, channels / 2, channels - 1})
        QCOMPARE(data->cell(c, 0), std::log10(double(first->stats.channelAbsMax()[c])));
}

// A cancelled run changes nothing: the previous calibration stays.
void TestPanes::cancelLeavesCalibration()
{
    const auto before = m_state->result();
    if (!before) QSKIP("no calibration");
    ql::CalibrationConfig config;
    config.textFiles = {ql::test::dataPath(kText)};
    config.samples = 64;
    config.seqLen = 256;
    QSignalSpy finished(m_calibration.get(), &CalibrationPane::calibrationFinished);
    m_calibration->startCalibration(config);
    m_calibration->cancel();
    QTRY_COMPARE_WITH_TIMEOUT(finished.count(), 1, kSlow);
    QCOMPARE(finished.at(0).at(0).toBool(), false);
    QCOMPARE(m_state->result(), before);
    QVERIFY(!m_calibration->isRunning());
}

// Issue 3: Save Session writes the calibration; Open Session on the same model restores it.
void TestPanes::sessionRoundTrip()
{
    const auto saved = m_state->result();
    if (!saved) QSKIP("no calibration");
    QTemporaryDir dir;
    QVERIFY(dir.isValid());
    const QString path = dir.filePath(QStringLiteral("panes.qlsession"));
    QSignalSpy written(m_calibration.get(), &CalibrationPane::sessionSaved);
    m_calibration->saveSession(path);
    QTRY_COMPARE_WITH_TIMEOUT(written.count(), 1, kSlow);
    QVERIFY2(written.at(0).at(0).toBool(), qPrintable(written.at(0).at(1).toString()));
    QVERIFY(QFileInfo::exists(path));
    QCOMPARE(QDir(dir.path()).entryList(QDir::Files).size(), 1);  // no temporary left behind

    QSignalSpy changed(m_state.get(), &CalibrationState::calibrationChanged);
    m_calibration->openSession(path);
    QTRY_COMPARE_WITH_TIMEOUT(changed.count(), 1, kSlow);
    const auto opened = m_state->result();
    QVERIFY(opened && opened != saved);
    QCOMPARE(opened->probes.size(), saved->probes.size());
    QCOMPARE(opened->tokens, saved->tokens);
    const ql::ProbeStats* a = saved->find("blk.0.attn_qkv");
    const ql::ProbeStats* b = opened->find("blk.0.attn_qkv");
    QVERIFY(a && b);
    QVERIFY(a->stats.histogram().counts == b->stats.histogram().counts);
    QCOMPARE(m_calibration->configFromControls().samples, saved->config.samples);
}

// Issue 4: the INT4-symmetric levels drawn are the group's fp16 scale times -8..7.
void TestPanes::gridLevelsMatchCore()
{
    const QString name = QStringLiteral("blk.0.attn_q.weight");
    m_session->selectTensor(name);
    m_grid->setGroupSize(32);
    m_grid->setRow(0);
    m_grid->setGroup(0);
    m_grid->setColumn(5);
    QTRY_VERIFY_WITH_TIMEOUT(
        m_grid->drawnGrid() && !m_grid->gridPending() && m_grid->drawnGrid()->column == 5, kSlow);
    const auto grid = m_grid->drawnGrid();
    QCOMPARE(grid->row, 0);
    QCOMPARE(grid->group, 0);
    QCOMPARE(grid->groupSize, 32);

    const ql::Model& model = *m_session->model();
    const ql::TensorInfo* info = model.find(name.toStdString());
    QVERIFY(info);
    auto w = ql::dequantizeTensor(model, *info);
    QVERIFY(w.ok());
    const std::int64_t cols = info->cols();
    const auto format = ql::uniformFormat(4, true, ql::Granularity::PerGroup, 32);
    auto q = ql::quantizeRtn(w->data(), 1, cols, format);
    QVERIFY(q.ok());
    const float scale = q->scales[0];
    const std::vector<double> drawn = m_grid->drawnLevels(0);
    QCOMPARE(int(drawn.size()), 16);
    for (int k = -8; k <= 7; ++k) QCOMPARE(float(drawn[std::size_t(k + 8)]), scale * float(k));
    QCOMPARE(grid->grids[0].scale, scale);

    // The other grids draw core's gridLevels too, and the step-through is explainWeight's.
    const auto formats = GridPane::gridFormats(32, ql::TensorType::Q4_0);
    for (std::size_t g = 0; g < formats.size(); ++g) {
        const auto qg = ql::quantizeRtn(w->data(), 1, cols, formats[g].second);
        QVERIFY(qg.ok());
        const auto levels = ql::gridLevels(*qg, 0, 0);
        QVERIFY(levels.ok());
        const std::vector<double> lines = m_grid->drawnLevels(int(g));
        QCOMPARE(lines.size(), levels->size());
        for (std::size_t i = 0; i < lines.size(); ++i) QCOMPARE(lines[i], double((*levels)[i]));
        const auto step = ql::explainWeight(*qg, (*w)[5], 0, 5);
        QVERIFY(step.ok());
        QCOMPARE(grid->grids[g].step.dequantized, step->dequantized);
        QCOMPARE(grid->grids[g].step.code, step->code);
        QAbstractItemModel* steps = m_grid->stepModel();
        QCOMPARE(steps->data(steps->index(int(g), 3), Qt::UserRole).toDouble(), step->scaled);
    }
}

// Issue 4: one row per preset format, with core's error metrics on the whole tensor.
void TestPanes::formatTableMatchesCore()
{
    const QString name = QStringLiteral("blk.0.attn_q.weight");
    if (m_session->selectedTensor() != name) m_session->selectTensor(name);
    QTRY_VERIFY_WITH_TIMEOUT(!m_grid->formatTablePending() && !m_grid->formatRows().empty(), kSlow);
    const auto presets = ql::formatPresets();
    QCOMPARE(m_grid->formatRows().size(), presets.size());
    QCOMPARE(m_grid->formatModel()->rowCount(), int(presets.size()));

    const ql::Model& model = *m_session->model();
    const ql::TensorInfo* info = model.find(name.toStdString());
    auto w = ql::dequantizeTensor(model, *info);
    QVERIFY(w.ok());
    int fallbacks = 0;
    for (std::size_t i = 0; i < presets.size(); ++i) {
        const FormatRow& row = m_grid->formatRows()[i];
        QCOMPARE(row.rule, QString::fromLatin1(presets[i].rule.data(), presets[i].rule.size()));
        auto format = ql::parseQuantFormat(presets[i].rule);
        QVERIFY(format.ok());
        ql::QuantFormat used = *format;
        if (!ql::checkFormatFits(used, info->rows(), info->cols())) {
            used = ql::fallbackFormat(used, info->rows(), info->cols());
            QVERIFY2(row.note.startsWith(QStringLiteral("n/a")), qPrintable(row.note));
            ++fallbacks;
        }
        QCOMPARE(row.used, QString::fromStdString(ql::formatToString(used)));
        auto q = ql::quantizeRtn(w->data(), info->rows(), info->cols(), used);
        QVERIFY(q.ok());
        auto decoded = q->dequantize();
        QVERIFY(decoded.ok());
        auto metrics = ql::computeErrorMetrics(*w, *decoded);
        QVERIFY(metrics.ok());
        QVERIFY(row.ok);
        QCOMPARE(row.metrics.mse, metrics->mse);
        QCOMPARE(row.metrics.sqnrDb, metrics->sqnrDb);
        QCOMPARE(row.metrics.maxAbsError, metrics->maxAbsError);
        QCOMPARE(row.bitsPerWeight, ql::bitsPerWeight(used, info->rows(), info->cols()));
    }
    QVERIFY(fallbacks > 0);  // cols = 64: the k-quants need 256

    // Sorting by MSE (column 4) orders the rows by core's values.
    QAbstractItemModel* sorted = m_grid->formatModel();
    sorted->sort(4, Qt::AscendingOrder);
    double previous = -1;
    for (int r = 0; r < sorted->rowCount(); ++r) {
        const double mse = sorted->data(sorted->index(r, 4), Qt::UserRole).toDouble();
        QVERIFY(mse >= previous);
        previous = mse;
    }
}

void TestPanes::screenshots()
{
    const QString dir = qEnvironmentVariable("QL_PANE_SCREENSHOTS");
    if (dir.isEmpty()) QSKIP("set QL_PANE_SCREENSHOTS to a folder to save the panes as PNG");
    QVERIFY(m_state->result());
    m_session->selectTensor(QStringLiteral("blk.2.attn_q.weight"));
    m_activations->setBits(4);
    m_activations->resize(1400, 860);
    m_activations->show();
    QTRY_VERIFY_WITH_TIMEOUT(!m_grid->gridPending() && !m_grid->formatTablePending(), kSlow);
    m_activations->topView()->setCurrentIndex(m_activations->topModel()->index(0, 0));
    QTest::qWait(300);
    QVERIFY(m_activations->grab().save(dir + QStringLiteral("/activations.png")));
    m_grid->setColumn(3);
    m_grid->resize(1400, 860);
    m_grid->show();
    QTRY_VERIFY_WITH_TIMEOUT(!m_grid->gridPending() && m_grid->drawnGrid()->column == 3, kSlow);
    QTest::qWait(300);
    QVERIFY(m_grid->grab().save(dir + QStringLiteral("/grids.png")));
    m_calibration->resize(380, 640);
    m_calibration->show();
    QTest::qWait(200);
    QVERIFY(m_calibration->grab().save(dir + QStringLiteral("/calibration.png")));
}

// The panes docked in the main window the way MainWindow::createDocks() is to do it: they follow
// the window's session (tree selection -> probe and grid tensor).
void TestPanes::dockedInMainWindow()
{
    MainWindow window;
    window.setAutoSelectTensor(false);
    AppSession* session = window.session();
    auto* state = new CalibrationState(&window);
    auto* calibration = new CalibrationPane(session, session->jobs(), state, &window);
    auto* activations = new ActivationsPane(session, session->jobs(), state, &window);
    auto* grids = new GridPane(session, session->jobs(), state, &window);
    const auto dock = [&](QWidget* pane, const QString& title, Qt::DockWidgetArea area) {
        auto* d = new QDockWidget(title, &window);
        d->setObjectName(title);
        d->setWidget(pane);
        window.addDockWidget(area, d);
        return d;
    };
    dock(calibration, QStringLiteral("Calibration"), Qt::RightDockWidgetArea);
    QDockWidget* a = dock(activations, QStringLiteral("Activations"), Qt::BottomDockWidgetArea);
    QDockWidget* g = dock(grids, QStringLiteral("Quantization Grids"), Qt::BottomDockWidgetArea);
    window.tabifyDockWidget(a, g);
    window.resize(1600, 1200);
    window.resizeDocks({a}, {620}, Qt::Vertical);

    QSignalSpy loaded(session, &AppSession::modelLoaded);
    window.openPath(QString::fromStdString(ql::test::dataPath(kModel)));
    QTRY_COMPARE_WITH_TIMEOUT(loaded.count(), 1, kSlow);
    ql::CalibrationConfig config;
    config.textFiles = {ql::test::dataPath(kText)};
    config.samples = 2;
    config.seqLen = 64;
    QSignalSpy finished(calibration, &CalibrationPane::calibrationFinished);
    calibration->startCalibration(config);
    // Issue 5: the status bar names the device of the running job, then where it ran.
    auto* deviceLabel = window.findChild<QLabel*>(QStringLiteral("deviceLabel"));
    QVERIFY(deviceLabel);
    QVERIFY2(deviceLabel->text().contains(QStringLiteral("calibrating")),
             qPrintable(deviceLabel->text()));
    QTRY_COMPARE_WITH_TIMEOUT(finished.count(), 1, kSlow);
    QVERIFY(finished.at(0).at(0).toBool());
    const std::string ranOn = session->deviceActivity().device.name;
    QVERIFY(!ranOn.empty());
    QVERIFY(session->deviceActivity().job.isEmpty());
    QVERIFY2(!deviceLabel->text().contains(QStringLiteral("calibrating")) &&
                 deviceLabel->text().contains(QString::fromStdString(ranOn)),
             qPrintable(deviceLabel->text()));
    QVERIFY(state->result() && state->result()->device.rfind(ranOn, 0) == 0);
    auto* progressText = calibration->findChild<QLabel*>(QStringLiteral("calibrationProgressText"));
    QVERIFY(progressText);
    QVERIFY2(progressText->text().startsWith(
                 QStringLiteral("Done on %1").arg(QString::fromStdString(state->result()->device))),
             qPrintable(progressText->text()));
    session->selectTensor(QStringLiteral("blk.3.ffn_up.weight"));
    QCOMPARE(activations->currentProbe(), QStringLiteral("blk.3.ffn_gate_up"));
    QTRY_VERIFY_WITH_TIMEOUT(grids->drawnGrid() && !grids->gridPending(), kSlow);
    QCOMPARE(grids->drawnGrid()->weights.size(), std::size_t(32));

    const QString dir = qEnvironmentVariable("QL_PANE_SCREENSHOTS");
    if (!dir.isEmpty()) {
        window.show();
        QTRY_VERIFY_WITH_TIMEOUT(session->stats() != nullptr, kSlow);
        QTest::qWait(300);
        QVERIFY(window.grab().save(dir + QStringLiteral("/mainwindow-docked.png")));
    }
}

void TestPanes::cleanupTestCase()
{
    m_grid.reset();
    m_activations.reset();
    m_calibration.reset();
    m_state.reset();
    m_session.reset();
}

QTEST_MAIN(TestPanes)
#include "test_panes.moc"
