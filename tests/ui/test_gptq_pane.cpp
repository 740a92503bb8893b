// The live GPTQ pane (issue #6, "Live GPTQ view") on stories260K, driven as a user would: start a
// true-sequential run in step mode, watch it hold after each layer (nothing advances while
// paused), resume, cancel; the finished layers are listed with the losses core computed, the
// partial model is handed to the session (a clicked layer shows its quantized values), evaluates
// to the PPL and KL core computes for the same model, and exports to a GGUF that opens with the
// finished layers quantized. A full run fills every row, and the relay delivers at most ~30
// batches a second. With QL_PANE_SCREENSHOTS=<dir> the pane is saved as gptq-live.png.
#include <QDockWidget>
#include <QLabel>
#include <QMenuBar>
#include <QSignalSpy>
#include <QStandardPaths>
#include <QTableView>
#include <QTemporaryDir>
#include <QtTest>

#include <qcustomplot.h>

#include <cmath>
#include <filesystem>

#include "appsession.h"
#include "calib/calibrate.h"
#include "calibrationstate.h"
#include "eval/evaluator.h"
#include "gptqpane.h"
#include "io/model_loader.h"
#include "jobrunner.h"
#include "mainwindow.h"
#include "model/llama.h"
#include "model/tokenizer.h"
#include "test_data.h"

namespace {

const std::string kModel = "models/stories260K/stories260K.gguf";
const std::string kText = "text/calibration/tiny.txt";
const std::string kEvalText = "text/eval/tinystories-valid-1000.txt";
constexpr int kSlow = 120000;

GptqRunRequest stories260KRequest(const char* layout)
{
    GptqRunRequest r;
    r.layout = layout;
    r.useCalibration = false;
    r.textFiles = {std::filesystem::canonical(ql::test::dataPath(kText)).string()};
    r.samples = 8;
    r.seqLen = 128;
    r.sequential = true;
    return r;
}

QString cell(QAbstractItemModel* m, int row, int col, int role = Qt::DisplayRole)
{
    return m->data(m->index(row, col), role).toString();
}

}  // namespace

class TestGptqPane : public QObject {
    Q_OBJECT
private slots:
    void initTestCase();
    void stepPauseResumeCancel();
    void partialModelEvaluatesAndExports();
    void fullRunIsThrottled();
    void paneClosedMidRun();
    void screenshot();
    void dockedInMainWindow();
    void cleanupTestCase();

private:
    std::unique_ptr<AppSession> m_session;
    std::unique_ptr<CalibrationState> m_state;
    std::unique_ptr<GptqPane> m_pane;
};

void TestGptqPane::initTestCase()
{
    QStandardPaths::setTestModeEnabled(true);
    QL_REQUIRE_DATA(kModel);
    QL_REQUIRE_DATA(kText);
    QL_REQUIRE_DATA(kEvalText);
    m_session = std::make_unique<AppSession>();
    m_state = std::make_unique<CalibrationState>();
    m_pane = std::make_unique<GptqPane>(m_session.get(), m_session->jobs(), m_state.get());
    QSignalSpy loaded(m_session.get(), &AppSession::modelLoaded);
    m_session->openModel(QString::fromStdString(ql::test::dataPath(kModel)));
    QTRY_COMPARE_WITH_TIMEOUT(loaded.count(), 1, kSlow);
}

void TestGptqPane::stepPauseResumeCancel()
{
    m_pane->setRequest(stories260KRequest("*=int4:g32:gptq:block=32:actorder"));
    m_pane->setStepMode(true);
    QSignalSpy finished(m_pane.get(), &GptqPane::runFinished);
    m_pane->start();
    QCOMPARE(m_pane->state(), GptqPane::State::Running);

    // Held after the first layer; nothing moves while paused.
    QTRY_COMPARE_WITH_TIMEOUT(m_pane->state(), GptqPane::State::Paused, kSlow);
    QAbstractItemModel* layers = m_pane->layerModel();
    QCOMPARE(layers->rowCount(), 35);  // 5 blocks x 7 matrices
    QCOMPARE(m_pane->finishedLayers(), 1);
    const int deliveries = m_pane->eventDeliveries();
    const QString progress = m_pane->progressText();
    QTest::qWait(500);
    QCOMPARE(m_pane->finishedLayers(), 1);
    QCOMPARE(m_pane->eventDeliveries(), deliveries);
    QCOMPARE(m_pane->progressText(), progress);
    QCOMPARE(m_pane->state(), GptqPane::State::Paused);
    QCOMPARE(cell(layers, 0, 2), QStringLiteral("done"));
    QCOMPARE(cell(layers, 1, 2), QStringLiteral("pending"));

    // Resume twice: one more layer each time.
    for (int expected : {2, 3}) {
        m_pane->resume();
        QTRY_VERIFY_WITH_TIMEOUT(
            m_pane->state() == GptqPane::State::Paused && m_pane->finishedLayers() == expected,
            kSlow);
        QTest::qWait(200);
        QCOMPARE(m_pane->finishedLayers(), expected);
    }
    QCOMPARE(m_pane->gptqLossGraph()->dataCount(), 3);
    QCOMPARE(m_pane->rtnLossGraph()->dataCount(), 3);
    // The Hessian plot shows the last started layer (q, k or v of blk.0: 64 input columns).
    QCOMPARE(m_pane->hessianGraph()->dataCount(), 64);

    // Cancel while paused: the three finished layers stay.
    m_pane->cancel();
    QTRY_COMPARE_WITH_TIMEOUT(finished.count(), 1, kSlow);
    QVERIFY(finished.first().at(0).toBool());
    QCOMPARE(m_pane->state(), GptqPane::State::Finished);
    auto result = m_pane->result();
    QVERIFY(result);
    QVERIFY(result->partial);
    int gptq = 0;
    for (const auto& t : result->tensors) {
        if (!t.report.gptq) continue;
        ++gptq;
        const int row = m_pane->layerModel()
                            ->match(layers->index(0, 0), Qt::DisplayRole,
                                    QString::fromStdString(t.report.plan.name))
                            .value(0)
                            .row();
        QCOMPARE(cell(layers, row, 2), QStringLiteral("done"));
        QCOMPARE(layers->data(layers->index(row, 4), Qt::UserRole).toDouble(), t.report.gptq->loss);
        QCOMPARE(layers->data(layers->index(row, 3), Qt::UserRole).toDouble(),
                 t.report.gptq->rtnLoss);
    }
    QCOMPARE(gptq, 3);
    for (int r = 3; r < 35; ++r) QCOMPARE(cell(layers, r, 2), QStringLiteral("not run"));
    QCOMPARE(m_session->quantizedModel(), result);
    m_pane->setStepMode(false);
}

void TestGptqPane::partialModelEvaluatesAndExports()
{
    auto result = m_pane->result();
    QVERIFY(result && result->partial);
    QAbstractItemModel* layers = m_pane->layerModel();

    // Inspect: clicking a finished layer selects it in the session, showing quantized values.
    const QString name = cell(layers, 0, 0);
    QSignalSpy statsReady(m_session.get(), &AppSession::statsReady);
    m_pane->layerView()->clicked(layers->index(0, 0));
    QCOMPARE(m_session->selectedTensor(), name);
    QVERIFY(m_session->selectedIsQuantized());
    QTRY_VERIFY_WITH_TIMEOUT(m_session->stats() != nullptr, kSlow);
    auto decoded = ql::dequantizedWeights(*result, name.toStdString());
    QVERIFY(decoded.ok());
    const auto [lo, hi] = std::minmax_element(decoded->begin(), decoded->end());
    QCOMPARE(m_session->stats()->min, double(*lo));
    QCOMPARE(m_session->stats()->max, double(*hi));
    // A layer that did not run shows the source values.
    m_pane->layerView()->clicked(layers->index(20, 0));
    QVERIFY(!m_session->selectedIsQuantized());

    // Evaluate: the PPL and KL core computes for the same partial model.
    m_pane->setEvalRequest({ql::test::dataPath(kEvalText), 128, 6});
    QSignalSpy evaluated(m_pane.get(), &GptqPane::evaluationFinished);
    m_pane->evaluate();
    QTRY_COMPARE_WITH_TIMEOUT(evaluated.count(), 1, kSlow);
    QVERIFY2(evaluated.first().at(0).toBool(), qPrintable(evaluated.first().at(1).toString()));
    auto eval = m_pane->evalResult();
    QVERIFY(eval && eval->kl);
    auto model = m_session->model();
    auto tok = ql::Tokenizer::create(*model);
    QVERIFY(tok.ok());
    auto text = ql::readTextFile(ql::test::dataPath(kEvalText));
    QVERIFY(text.ok());
    const auto windows = ql::makeLlamaCppChunks(**tok, *text, 128, 6);
    ql::LlamaLoadOptions options;
    options.override =
        [&result](const ql::TensorInfo& t) -> ql::Result<std::optional<std::vector<float>>> {
        if (!result->find(t.name)) return std::optional<std::vector<float>>();
        auto w = ql::dequantizedWeights(*result, t.name);
        if (!w) return w.error();
        return std::optional<std::vector<float>>(std::move(w).value());
    };
    auto ref = ql::LlamaModel::create(*model);
    auto quant = ql::LlamaModel::create(*model, options);
    QVERIFY(ref.ok() && quant.ok());
    ql::LlamaLogitsSource refSource(*ref), quantSource(*quant);
    auto expected = ql::evaluate(quantSource, windows, &refSource);
    QVERIFY(expected.ok());
    QCOMPARE(eval->ppl, expected->ppl);
    QCOMPARE(eval->kl->mean, expected->kl->mean);
    QVERIFY(eval->kl->mean > 0);
    QVERIFY(eval->ppl > *eval->referencePpl * 0.9 && eval->ppl < *eval->referencePpl * 2);

    // Export: a GGUF with the three layers in int4 (as F16 values: GGUF has no INT4 type) and
    // the rest in the source's type.
    QTemporaryDir dir;
    QVERIFY(dir.isValid());
    const QString path = dir.filePath(QStringLiteral("partial.gguf"));
    QSignalSpy exported(m_pane.get(), &GptqPane::exportFinished);
    m_pane->exportGguf(path);
    QTRY_COMPARE_WITH_TIMEOUT(exported.count(), 1, kSlow);
    QVERIFY2(exported.first().at(0).toBool(), qPrintable(exported.first().at(1).toString()));
    QVERIFY(QFileInfo::exists(path));
    QCOMPARE(QDir(dir.path()).entryList(QDir::Files).size(), 1);  // no temporary left behind
    auto reopened = ql::openModel(path.toStdString());
    QVERIFY(reopened.ok());
    for (const auto& t : result->tensors) {
        const ql::TensorInfo* info = reopened->find(t.report.plan.name);
        QVERIFY(info);
        if (t.report.unfinished) QCOMPARE(info->type, model->find(info->name)->type);
    }
    auto meta = reopened->metadata.getString("quantlens.layout");
    QVERIFY(meta && meta->find("gptq") != std::string::npos);
}

void TestGptqPane::fullRunIsThrottled()
{
    m_pane->setRequest(stories260KRequest("*=int4:g32:gptq:actorder"));
    QSignalSpy finished(m_pane.get(), &GptqPane::runFinished);
    QElapsedTimer clock;
    clock.start();
    m_pane->start();
    QTRY_COMPARE_WITH_TIMEOUT(finished.count(), 1, kSlow);
    const double seconds = clock.elapsed() / 1000.0;
    QVERIFY(finished.first().at(0).toBool());
    auto result = m_pane->result();
    QVERIFY(result && !result->partial);
    QCOMPARE(m_pane->finishedLayers(), 35);
    QCOMPARE(m_pane->gptqLossGraph()->dataCount(), 35);
    // ~30 deliveries a second at most (plus the final flush).
    QVERIFY2(
        m_pane->eventDeliveries() <= int(seconds * 1000 / GptqRelay::kMinIntervalMs) + 2,
        qPrintable(
            QStringLiteral("%1 deliveries in %2 s").arg(m_pane->eventDeliveries()).arg(seconds)));
    // GPTQ beats RTN on its own loss in every layer of stories260K.
    QAbstractItemModel* layers = m_pane->layerModel();
    for (int r = 0; r < layers->rowCount(); ++r)
        QVERIFY(layers->data(layers->index(r, 5), Qt::UserRole).toDouble() < 1.0);
    QVERIFY(m_pane->dampLog().isEmpty());
}

// A pane closed while its run holds at the gate: the run is cancelled, nothing is delivered to
// the dead pane, the worker goes idle.
void TestGptqPane::paneClosedMidRun()
{
    auto pane = std::make_unique<GptqPane>(m_session.get(), m_session->jobs(), m_state.get());
    pane->setRequest(stories260KRequest("*=int4:g32:gptq"));
    pane->setStepMode(true);
    pane->start();
    QTRY_COMPARE_WITH_TIMEOUT(pane->state(), GptqPane::State::Paused, kSlow);
    pane.reset();
    QTRY_VERIFY_WITH_TIMEOUT(!m_session->jobs()->isBusy(), kSlow);
}

void TestGptqPane::screenshot()
{
    const QString dir = qEnvironmentVariable("QL_PANE_SCREENSHOTS");
    if (dir.isEmpty()) QSKIP("set QL_PANE_SCREENSHOTS to a folder to save the pane as PNG");
    // Mid-run: paused in step mode after 19 layers, the 20th's Hessian not yet shown.
    m_pane->resize(1400, 860);
    m_pane->show();
    GptqRunRequest request = stories260KRequest("*=int4:g32:gptq:actorder");
    request.samples = 32;
    request.seqLen = 256;
    m_pane->setRequest(request);
    m_pane->setEvalRequest(
        {std::filesystem::canonical(ql::test::dataPath(kEvalText)).string(), 256, 16});
    m_pane->setStepMode(true);
    m_pane->start();
    for (int k = 1; k <= 19; ++k) {
        QTRY_VERIFY_WITH_TIMEOUT(
            m_pane->state() == GptqPane::State::Paused && m_pane->finishedLayers() == k, kSlow);
        if (k < 19) m_pane->resume();
    }
    m_pane->layerView()->selectRow(18);
    QTest::qWait(400);
    QVERIFY(m_pane->grab().save(dir + QStringLiteral("/gptq-live.png")));
    QSignalSpy finished(m_pane.get(), &GptqPane::runFinished);
    m_pane->setStepMode(false);
    m_pane->resume();
    QTRY_COMPARE_WITH_TIMEOUT(finished.count(), 1, kSlow);
    QTest::qWait(300);
    QVERIFY(m_pane->grab().save(dir + QStringLiteral("/gptq-finished.png")));
    m_pane->hide();
}

// In the main window: the dock exists, the Quantize menu raises it, the other docks stay.
void TestGptqPane::dockedInMainWindow()
{
    MainWindow window;
    QVERIFY(window.gptqPane());
    QVERIFY(window.gptqDock());
    QCOMPARE(window.gptqDock()->windowTitle(), QStringLiteral("GPTQ Run"));
    QMenu* quantize = nullptr;
    for (QAction* a : window.menuBar()->actions())
        if (a->text().remove(QLatin1Char('&')) == QStringLiteral("Quantize")) quantize = a->menu();
    QVERIFY(quantize);
    QAction* run = quantize->actions().value(0);
    QVERIFY(run && run->text().contains(QStringLiteral("GPTQ")));
    window.show();
    window.gptqDock()->hide();
    run->trigger();
    QVERIFY(window.gptqDock()->isVisible());
    for (const char* dock : {"modelDock", "calibrationDock", "activationsDock", "gridDock"})
        QVERIFY2(window.findChild<QDockWidget*>(QString::fromLatin1(dock)), dock);

    // Docked at the default window size, after a run: what a user sees.
    const QString dir = qEnvironmentVariable("QL_PANE_SCREENSHOTS");
    if (dir.isEmpty()) return;
    window.setAutoSelectTensor(false);
    window.resize(1400, 900);
    QSignalSpy loaded(window.session(), &AppSession::modelLoaded);
    window.openPath(QString::fromStdString(ql::test::dataPath(kModel)));
    QTRY_COMPARE_WITH_TIMEOUT(loaded.count(), 1, kSlow);
    window.gptqPane()->setRequest(stories260KRequest("*=int4:g32:gptq:actorder"));
    QSignalSpy finished(window.gptqPane(), &GptqPane::runFinished);
    window.gptqPane()->start();
    QTRY_COMPARE_WITH_TIMEOUT(finished.count(), 1, kSlow);
    window.gptqPane()->layerView()->clicked(window.gptqPane()->layerModel()->index(3, 0));
    QTRY_VERIFY_WITH_TIMEOUT(window.session()->stats() != nullptr, kSlow);
    QTest::qWait(400);
    QVERIFY(window.grab().save(dir + QStringLiteral("/gptq-docked.png")));
}

void TestGptqPane::cleanupTestCase()
{
    m_pane.reset();
    m_state.reset();
    m_session.reset();
}

QTEST_MAIN(TestGptqPane)
#include "test_gptq_pane.moc"
