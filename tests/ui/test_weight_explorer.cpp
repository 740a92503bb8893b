// GUI tests of the weight explorer (QT_QPA_PLATFORM=offscreen). They drive the real MainWindow
// through its widgets (tree selection, spin boxes, check boxes) and check that what the plots
// hold equals what core computes for the same options, that a corrupt file leaves the open
// model alone, and that the job runner coalesces same-tag jobs.
#include <QtTest>

#include <QAbstractButton>
#include <QDir>
#include <QDoubleSpinBox>
#include <QElapsedTimer>
#include <QFile>
#include <QItemSelectionModel>
#include <QLineEdit>
#include <QSortFilterProxyModel>
#include <QSpinBox>
#include <QTemporaryDir>
#include <QTimer>
#include <QTreeView>

#include <qcustomplot.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <memory>
#include <optional>
#include <thread>

#include "appsession.h"
#include "jobrunner.h"
#include "mainwindow.h"
#include "metadatapane.h"
#include "modeltree.h"
#include "stats/tensor_stats.h"
#include "test_data.h"
#include "weightspane.h"

namespace {

const char* kStories = "models/stories260K/stories260K.gguf";
const QString kAttnQ = QStringLiteral("blk.0.attn_q.weight");
constexpr int kLoadTimeoutMs = 30000;
constexpr int kStatsTimeoutMs = 30000;

// A job that works until cancelled or until `ms` pass, reporting progress every millisecond.
JobRunner::Work<int> busyJob(int value, int ms, std::atomic<int>* ran)
{
    return [value, ms, ran](const ql::ProgressFn& progress) -> ql::Result<int> {
        ++*ran;
        const auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
        while (std::chrono::steady_clock::now() < end) {
            if (!progress(0.5, "working")) return ql::makeError(ql::ErrorCode::Cancelled, "stop");
            std::this_thread::sleep_for(std::chrono::milliseconds(1));
        }
        return value;
    };
}

std::vector<double> barValues(const QCPBars* bars)
{
    std::vector<double> values;
    for (auto it = bars->data()->constBegin(); it != bars->data()->constEnd(); ++it)
        values.push_back(it->value);
    return values;
}

}  // namespace

class TestWeightExplorer : public QObject {
    Q_OBJECT

private:
    QTemporaryDir m_settingsDir;

    // A main window with stories260K loaded and nothing selected.
    std::unique_ptr<MainWindow> openStories()
    {
        auto window = std::make_unique<MainWindow>();
        window->setAutoSelectTensor(false);
        window->resize(1400, 900);
        window->show();
        QSignalSpy loaded(window->session(), &AppSession::modelLoaded);
        window->session()->openModel(QString::fromStdString(ql::test::dataPath(kStories)));
        if (!loaded.wait(kLoadTimeoutMs) && loaded.isEmpty()) return nullptr;
        return window;
    }

    // Select through the tree view's selection model, as a click would.
    static void selectInTree(MainWindow& window, const QString& tensor)
    {
        ModelTree* tree = window.modelTree();
        const QModelIndex source = tree->treeModel()->indexOfTensor(tensor);
        QVERIFY2(source.isValid(), qPrintable(tensor));
        const QModelIndex index = tree->proxyModel()->mapFromSource(source);
        tree->view()->selectionModel()->setCurrentIndex(
            index, QItemSelectionModel::ClearAndSelect | QItemSelectionModel::Rows);
    }

    // Core's statistics of a tensor for the session's current options.
    static ql::TensorStats coreStats(const AppSession& session, const QString& tensor)
    {
        const ql::TensorInfo* info = session.model()->find(tensor.toStdString());
        auto stats = ql::computeTensorStats(*session.model(), *info, session.statsOptions());
        if (!stats) qFatal("computeTensorStats failed: %s", stats.error().message.c_str());
        return std::move(stats).value();
    }

    static void compareHistogram(const QCPBars* bars, const ql::Histogram& expected)
    {
        QCOMPARE(bars->dataCount(), int(expected.counts.size()));
        int i = 0;
        for (auto it = bars->data()->constBegin(); it != bars->data()->constEnd(); ++it, ++i) {
            QCOMPARE(it->value, double(expected.counts[i]));
            const double centre = expected.lo + (i + 0.5) * expected.binWidth();
            QVERIFY(qAbs(it->key - centre) <= 1e-12 + 1e-9 * qAbs(centre));
        }
        QCOMPARE(bars->width(), expected.binWidth());
    }

private slots:
    void initTestCase()
    {
        QCoreApplication::setOrganizationName(QStringLiteral("QuantLensTest"));
        QCoreApplication::setApplicationName(QStringLiteral("test_weight_explorer"));
        QSettings::setPath(QSettings::NativeFormat, QSettings::UserScope, m_settingsDir.path());
    }

    // --- JobRunner ------------------------------------------------------------------------

    void jobRunnerCoalescesSameTag()
    {
        JobRunner runner;
        QObject context;
        QSignalSpy started(&runner, &JobRunner::jobStarted);
        std::atomic<int> ran{0};
        int deliveries = 0;
        int delivered = -1;
        for (int i = 0; i < 50; ++i)
            runner.run<int>(QStringLiteral("histogram"), &context, busyJob(i, 200, &ran),
                            [&](ql::Result<int> result) {
                                ++deliveries;
                                delivered = result ? *result : -2;
                            });
        QVERIFY(runner.isBusy());
        QTRY_VERIFY_WITH_TIMEOUT(!runner.isBusy(), 10000);
        QVERIFY2(ran.load() <= 2, qPrintable(QString::number(ran.load())));
        QCOMPARE(started.count(), ran.load());
        QCOMPARE(deliveries, 1);  // only the newest job reports
        QCOMPARE(delivered, 49);
    }

    void jobRunnerKeepsOtherTags()
    {
        JobRunner runner;
        QObject context;
        std::atomic<int> ran{0};
        QStringList done;
        runner.run<int>(QStringLiteral("a"), &context, busyJob(1, 50, &ran),
                        [&](ql::Result<int> r) { done << QStringLiteral("a%1").arg(r ? *r : -1); });
        runner.run<int>(QStringLiteral("b"), &context, busyJob(2, 10, &ran),
                        [&](ql::Result<int> r) { done << QStringLiteral("b%1").arg(r ? *r : -1); });
        QTRY_COMPARE_WITH_TIMEOUT(done.size(), 2, 10000);
        QCOMPARE(done, (QStringList{QStringLiteral("a1"), QStringLiteral("b2")}));
    }

    void jobRunnerCancelReportsCancelled()
    {
        JobRunner runner;
        QObject context;
        std::atomic<int> ran{0};
        QSignalSpy started(&runner, &JobRunner::jobStarted);
        std::optional<ql::ErrorCode> code;
        runner.run<int>(
            QStringLiteral("stats"), &context, busyJob(7, 20000, &ran),
            [&](ql::Result<int> r) { code = r ? std::nullopt : std::optional(r.error().code); });
        QTRY_COMPARE_WITH_TIMEOUT(started.count(), 1, 5000);
        runner.cancelAll();
        QTRY_VERIFY_WITH_TIMEOUT(code.has_value(), 5000);
        QCOMPARE(*code, ql::ErrorCode::Cancelled);
        QVERIFY(!runner.isBusy());
    }

    void jobRunnerDropsResultForDeletedReceiver()
    {
        JobRunner runner;
        auto context = std::make_unique<QObject>();
        std::atomic<int> ran{0};
        bool called = false;
        runner.run<int>(QStringLiteral("x"), context.get(), busyJob(1, 30, &ran),
                        [&](ql::Result<int>) { called = true; });
        context.reset();
        QTRY_VERIFY_WITH_TIMEOUT(!runner.isBusy(), 5000);
        QVERIFY(!called);
    }

    // --- The window over stories260K ------------------------------------------------------

    void treeListsBlocksAndTensors()
    {
        QL_REQUIRE_DATA(kStories);
        auto window = openStories();
        QVERIFY(window);
        ModelTreeModel* tree = window->modelTree()->treeModel();
        QCOMPARE(tree->blockCount(), 5);
        // 3 global tensors (token_embd, output_norm, output) + 5 blocks × 9.
        QCOMPARE(tree->tensorCount(), 48);
        QCOMPARE(tree->tensorCount(), int(window->session()->model()->tensors.size()));
        QCOMPARE(
            window->recentFiles().value(0),
            QFileInfo(QString::fromStdString(ql::test::dataPath(kStories))).absoluteFilePath());

        const QModelIndex root = tree->index(0, 0);
        QCOMPARE(tree->rowCount(root), 6);  // Global + 5 blocks
        QCOMPARE(tree->index(0, 0, root).data().toString(), QStringLiteral("Global"));
        QCOMPARE(tree->rowCount(tree->index(0, 0, root)), 3);
        const QModelIndex block4 = tree->index(5, 0, root);
        QCOMPARE(block4.data().toString(), QStringLiteral("Block 4"));
        QCOMPARE(tree->rowCount(block4), 9);

        const QModelIndex q = tree->indexOfTensor(kAttnQ);
        QCOMPARE(q.data().toString(), QStringLiteral("attn_q.weight"));
        QCOMPARE(q.siblingAtColumn(ModelTreeModel::ShapeColumn).data().toString(),
                 QStringLiteral("64 × 64"));
        QCOMPARE(q.siblingAtColumn(ModelTreeModel::TypeColumn).data().toString(),
                 QStringLiteral("F32"));
        QCOMPARE(q.siblingAtColumn(ModelTreeModel::SizeColumn).data().toString(),
                 QStringLiteral("16.0 KiB"));

        // The filter keeps the five attn_q tensors (and their groups).
        auto* filter = window->modelTree()->findChild<QLineEdit*>(QStringLiteral("tensorFilter"));
        QVERIFY(filter);
        filter->setText(QStringLiteral("attn_q"));
        QSortFilterProxyModel* proxy = window->modelTree()->proxyModel();
        const QModelIndex proxyRoot = proxy->index(0, 0);
        QCOMPARE(proxy->rowCount(proxyRoot), 5);  // Global has no match and disappears
        for (int b = 0; b < 5; ++b) QCOMPARE(proxy->rowCount(proxy->index(b, 0, proxyRoot)), 1);
    }

    void metadataPaneListsKeys()
    {
        QL_REQUIRE_DATA(kStories);
        auto window = openStories();
        QVERIFY(window);
        const auto model = window->session()->model();
        MetadataTableModel* metadata = window->metadataPane()->metadataModel();
        QCOMPARE(metadata->rowCount(), int(model->metadata.size()));
        QCOMPARE(metadata->rowCount(), 19);
        bool sawTokens = false;
        for (const auto& row : metadata->rows()) {
            if (row.key != QLatin1String("tokenizer.ggml.tokens")) continue;
            sawTokens = true;
            QCOMPARE(row.type, QStringLiteral("string[512]"));
            QVERIFY2(row.value.contains(QLatin1String("512 items")), qPrintable(row.value));
        }
        QVERIFY(sawTokens);
        bool sawBlocks = false;
        for (const auto& row : window->metadataPane()->hyperParamsModel()->rows())
            if (row.key == QLatin1String("blocks")) sawBlocks = row.value == QLatin1String("5");
        QVERIFY(sawBlocks);
    }

    void histogramMatchesCore()
    {
        QL_REQUIRE_DATA(kStories);
        auto window = openStories();
        QVERIFY(window);
        AppSession* session = window->session();
        WeightsPane* pane = window->weightsPane();

        selectInTree(*window, kAttnQ);
        QCOMPARE(session->selectedTensor(), kAttnQ);
        QTRY_VERIFY_WITH_TIMEOUT(pane->drawnStats() && pane->drawnStats() == session->stats(),
                                 kStatsTimeoutMs);
        QCOMPARE(QString::fromStdString(pane->drawnStats()->tensorName), kAttnQ);

        ql::TensorStats expected = coreStats(*session, kAttnQ);
        QCOMPARE(expected.count, qint64(64 * 64));
        compareHistogram(pane->histogramBars(), expected.histogram);
        std::uint64_t total = 0;
        for (auto c : expected.histogram.counts) total += c;
        QCOMPARE(total, std::uint64_t(64 * 64));

        // A new bin count from the spin box is re-binned in core.
        auto* bins = pane->findChild<QSpinBox*>(QStringLiteral("histogramBinsSpin"));
        QVERIFY(bins);
        bins->setValue(64);
        QCOMPARE(session->statsOptions().histogramBins, 64);
        QTRY_COMPARE_WITH_TIMEOUT(pane->histogramBars()->dataCount(), 64, kStatsTimeoutMs);
        QVERIFY(pane->drawnStats() == session->stats());
        compareHistogram(pane->histogramBars(), coreStats(*session, kAttnQ).histogram);

        // Log counts change the axis, not the data.
        const std::vector<double> before = barValues(pane->histogramBars());
        auto* log = pane->findChild<QAbstractButton*>(QStringLiteral("histogramLogCheck"));
        QVERIFY(log);
        auto* plot = pane->findChild<QCustomPlot*>(QStringLiteral("histogramPlot"));
        QVERIFY(plot);
        log->setChecked(true);
        QCOMPARE(plot->yAxis->scaleType(), QCPAxis::stLogarithmic);
        QCOMPARE(barValues(pane->histogramBars()), before);
        log->setChecked(false);
        QCOMPARE(plot->yAxis->scaleType(), QCPAxis::stLinear);
        QCOMPARE(barValues(pane->histogramBars()), before);
    }

    void outlierChannelsMatchCore()
    {
        QL_REQUIRE_DATA(kStories);
        auto window = openStories();
        QVERIFY(window);
        AppSession* session = window->session();
        WeightsPane* pane = window->weightsPane();
        const QString tensor = QStringLiteral("blk.1.ffn_down.weight");
        selectInTree(*window, tensor);
        QTRY_VERIFY_WITH_TIMEOUT(pane->drawnStats() && pane->drawnStats() == session->stats(),
                                 kStatsTimeoutMs);

        // A low k makes outliers certain; the rule is recomputed in core.
        auto* k = pane->findChild<QDoubleSpinBox*>(QStringLiteral("outlierKSpin"));
        QVERIFY(k);
        k->setValue(1.5);
        QCOMPARE(session->statsOptions().outliers.k, 1.5);
        QTRY_VERIFY_WITH_TIMEOUT(pane->drawnStats() && pane->drawnStats() == session->stats(),
                                 kStatsTimeoutMs);
        const ql::TensorStats expected = coreStats(*session, tensor);
        QVERIFY(!expected.colOutliers.indices.empty());
        for (auto [graph, outliers, absMax] :
             {std::tuple{pane->rowOutlierGraph(), expected.rowOutliers, expected.rowAbsMax},
              std::tuple{pane->colOutlierGraph(), expected.colOutliers, expected.colAbsMax}}) {
            std::vector<std::int32_t> indices = outliers.indices;
            std::sort(indices.begin(), indices.end());
            QCOMPARE(graph->dataCount(), int(indices.size()));
            int i = 0;
            for (auto it = graph->data()->constBegin(); it != graph->data()->constEnd();
                 ++it, ++i) {
                QCOMPARE(it->key, double(indices[i]));
                QCOMPARE(it->value, double(absMax[indices[i]]));
            }
            // The drawn set is core's rule applied to core's abs-max.
            const ql::OutlierChannels direct =
                ql::findOutlierChannels(absMax, session->statsOptions().outliers);
            QCOMPARE(direct.indices, outliers.indices);
        }
        QCOMPARE(pane->drawnStats()->outlierShare, expected.outlierShare);
    }

    void selectionFollowsSession()
    {
        QL_REQUIRE_DATA(kStories);
        auto window = openStories();
        QVERIFY(window);
        const QString tensor = QStringLiteral("blk.2.ffn_up.weight");
        window->session()->selectTensor(tensor);
        QTreeView* view = window->modelTree()->view();
        QCOMPARE(view->currentIndex().data(ModelTreeModel::TensorNameRole).toString(), tensor);
    }

    // Moving the selection across every tensor never queues more than one statistics job (a
    // newer selection replaces the queued one and cancels the running one), and what is drawn
    // at the end is the last tensor's.
    void selectionSweepCoalescesJobs()
    {
        QL_REQUIRE_DATA(kStories);
        auto window = openStories();
        QVERIFY(window);
        AppSession* session = window->session();
        const auto model = session->model();
        for (int pass = 0; pass < 4; ++pass) {  // 4 × 48 = 192 selections, no event loop between
            for (const auto& tensor : model->tensors) {
                selectInTree(*window, QString::fromStdString(tensor.name));
                QVERIFY(session->jobs()->queuedCount(QStringLiteral("stats")) <= 1);
            }
        }
        const QString last = QString::fromStdString(model->tensors.back().name);
        QCOMPARE(session->selectedTensor(), last);
        QTRY_VERIFY_WITH_TIMEOUT(
            window->weightsPane()->drawnStats() &&
                window->weightsPane()->drawnStats()->tensorName == last.toStdString(),
            kStatsTimeoutMs);
        QTRY_VERIFY_WITH_TIMEOUT(!session->jobs()->isBusy(), kStatsTimeoutMs);
        QVERIFY(window->weightsPane()->drawnStats() == session->stats());
    }

    // The embedding of SmolLM2 (49152 × 576, 28 M weights) computes on the worker while the UI
    // thread keeps serving events. Needs the SmolLM2 GGUF: at the set-up script's install path
    // or $QUANTLENS_SMOLLM2.
    void staysResponsiveOnLargeTensor()
    {
        QString path = qEnvironmentVariable("QUANTLENS_SMOLLM2");
        if (path.isEmpty())
            path = QDir::homePath() +
                   QStringLiteral("/.local/share/quantlens/models/SmolLM2-135M-Instruct.Q4_1.gguf");
        if (!QFileInfo::exists(path))
            QSKIP(qPrintable(
                QStringLiteral("SmolLM2 GGUF not found at %1 (set QUANTLENS_SMOLLM2)").arg(path)));
        MainWindow window;
        window.setAutoSelectTensor(false);
        window.show();
        AppSession* session = window.session();
        QSignalSpy loaded(session, &AppSession::modelLoaded);
        session->openModel(path);
        QTRY_COMPARE_WITH_TIMEOUT(loaded.count(), 1, kLoadTimeoutMs);

        // Largest gap between ticks of a 10 ms timer while the statistics are computed.
        QElapsedTimer clock;
        qint64 last = 0, worstGap = 0;
        QTimer ticker;
        ticker.setInterval(10);
        connect(&ticker, &QTimer::timeout, this, [&] {
            worstGap = std::max(worstGap, clock.elapsed() - last);
            last = clock.elapsed();
        });
        auto* busy = window.weightsPane()->findChild<QWidget*>(QStringLiteral("weightsBusy"));
        QVERIFY(busy);
        clock.start();
        ticker.start();
        selectInTree(window, QStringLiteral("token_embd.weight"));
        QVERIFY(session->statsPending());
        QVERIFY(busy->isVisible());
        QTRY_VERIFY_WITH_TIMEOUT(window.weightsPane()->drawnStats() != nullptr, 120000);
        ticker.stop();
        const auto stats = window.weightsPane()->drawnStats();
        QCOMPARE(stats->count + stats->nonFinite, qint64(49152) * 576);
        QCOMPARE(int(stats->rowAbsMax.size()), 49152);
        QVERIFY(!busy->isVisible());
        qInfo("computed in %lld ms; longest event-loop gap %lld ms", clock.elapsed(), worstGap);
        QVERIFY2(worstGap < 300, qPrintable(QString::number(worstGap)));
    }

    void corruptFileKeepsModel_data()
    {
        QTest::addColumn<qint64>("keepBytes");
        QTest::newRow("empty") << qint64(0);
        QTest::newRow("header cut") << qint64(700);
        QTest::newRow("tensor data cut") << qint64(600000);
    }

    void corruptFileKeepsModel()
    {
        QFETCH(qint64, keepBytes);
        QL_REQUIRE_DATA(kStories);
        auto window = openStories();
        QVERIFY(window);
        AppSession* session = window->session();
        selectInTree(*window, kAttnQ);
        QTRY_VERIFY_WITH_TIMEOUT(session->stats() != nullptr, kStatsTimeoutMs);
        const auto before = session->model();

        QTemporaryDir dir;
        const QString broken = dir.filePath(QStringLiteral("broken.gguf"));
        QFile source(QString::fromStdString(ql::test::dataPath(kStories)));
        QVERIFY(source.open(QIODevice::ReadOnly));
        QFile out(broken);
        QVERIFY(out.open(QIODevice::WriteOnly));
        out.write(source.read(keepBytes));
        out.close();

        QSignalSpy errors(session, &AppSession::errorOccurred);
        QSignalSpy finished(session, &AppSession::loadFinished);
        QSignalSpy closed(session, &AppSession::modelClosed);
        window->openPath(broken);
        QTRY_COMPARE_WITH_TIMEOUT(finished.count(), 1, kLoadTimeoutMs);
        QCOMPARE(finished.first().at(1).toBool(), false);
        QCOMPARE(errors.count(), 1);
        QVERIFY(errors.first().at(1).toString().contains(QLatin1String("broken.gguf")));
        QCOMPARE(closed.count(), 0);
        QVERIFY(session->model() == before);
        QCOMPARE(session->selectedTensor(), kAttnQ);
        QVERIFY(session->stats() != nullptr);
        QCOMPARE(window->modelTree()->treeModel()->blockCount(), 5);
        QVERIFY(!window->recentFiles().contains(broken));
    }
};

QTEST_MAIN(TestWeightExplorer)
#include "test_weight_explorer.moc"
