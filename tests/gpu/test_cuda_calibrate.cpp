// Calibration on the CUDA runner (issue #5) against the CPU reference: stories260K calibrated on
// tiny.txt (16 windows × 128 tokens) through calibrateWindows(LlamaModel) and through
// calibrateWindows(ModelRunner) on the GPU. Every test skips where no CUDA device is present.
// Budgets, F32 (the bar; the forward passes themselves agree to float rounding, so the
// statistics cannot agree more closely than that):
// - per-channel abs-max, mean |x| and mean x²: 1e-5 relative (plus 1e-30 absolute for zeros);
// - Hessian: |H - H_cpu| <= 1e-5 · sqrt(H_ii · H_jj);
// - histogram: the same total count (bins may differ where a value sits on a bin edge);
// - top-k: the same (channel, sample, position) at every rank whose |value| stands clear of its
//   neighbours by more than the value budget (near-ties may swap; the last rank is not checked),
//   and the same token context.
// BF16 (bf16 weights and activations) is a smoke budget only: same shape and counts, abs-max and
// Hessian diagonal within 10%.
// The CLI: `calibrate --device cuda` writes a session that loads and names the GPU; an option the
// GPU path refuses (--top-k above kernels' kMaxTopK) falls back to the CPU with a note.
#include <QProcess>
#include <QTemporaryDir>
#include <QtTest>

#include <algorithm>
#include <cmath>

#include "calib/calibrate.h"
#include "calib/dataset.h"
#include "compute/backend.h"
#include "io/model_loader.h"
#include "model/llama.h"
#include "model/llama_runner.h"
#include "session/session.h"
#include "stats_host.h"
#include "test_data.h"

using namespace ql;

Q_DECLARE_METATYPE(ql::Precision)
Q_DECLARE_METATYPE(ql::HessianPrecision)

namespace {

const char* kModel = "models/stories260K/stories260K.gguf";
const char* kText = "text/calibration/tiny.txt";

#define QL_VERIFY_OK(expr)                                                                     \
    do {                                                                                       \
        const auto& ql_r_ = (expr);                                                            \
        QVERIFY2(ql_r_.ok(),                                                                   \
                 ql_r_.ok() ? "" : qPrintable(QString::fromStdString(ql_r_.error().message))); \
    } while (0)

double relativeExcess(double got, double ref, double rtol)
{
    return std::fabs(got - ref) - (1e-30 + rtol * std::fabs(ref));
}

// Worst |a - b| / sqrt(H_ii H_jj) of a channels × channels Hessian.
double hessianError(const std::vector<double>& a, const std::vector<double>& ref, int c)
{
    double worst = 0;
    for (int i = 0; i < c; ++i)
        for (int j = 0; j < c; ++j) {
            const double d = std::sqrt(ref[std::size_t(i) * c + i] * ref[std::size_t(j) * c + j]);
            if (d > 0)
                worst = std::max(
                    worst, std::fabs(a[std::size_t(i) * c + j] - ref[std::size_t(i) * c + j]) / d);
        }
    return worst;
}

struct Run {
    int exitCode = -1;
    QByteArray out, err;
};

Run runCli(const QStringList& args)
{
    QProcess p;
    p.start(QStringLiteral(QL_TEST_CLI), args);
    Run r;
    if (!p.waitForStarted(10000)) return r;
    p.waitForFinished(600000);
    r.exitCode = p.exitStatus() == QProcess::NormalExit ? p.exitCode() : -1;
    r.out = p.readAllStandardOutput();
    r.err = p.readAllStandardError();
    return r;
}

// F32: the budgets of the file comment, probe by probe.
void compareF32(const CalibrationResult& gpu, const CalibrationResult& cpu, double rtol)
{
    QCOMPARE(gpu.tokens, cpu.tokens);
    QCOMPARE(gpu.probes.size(), cpu.probes.size());
    double worstHessian = 0;
    for (std::size_t p = 0; p < cpu.probes.size(); ++p) {
        const ProbeStats &g = gpu.probes[p], &c = cpu.probes[p];
        const QByteArray name = QByteArray::fromStdString(c.name);
        QCOMPARE(g.name, c.name);
        QCOMPARE(g.stats.channels(), c.stats.channels());
        QCOMPARE(g.stats.tokenCount(), c.stats.tokenCount());
        const int n = c.stats.channels();
        const auto gAbs = g.stats.channelMeanAbs(), cAbs = c.stats.channelMeanAbs();
        const auto gSq = g.stats.channelMeanSquare(), cSq = c.stats.channelMeanSquare();
        for (int j = 0; j < n; ++j) {
            const auto ju = std::size_t(j);
            QVERIFY2(
                relativeExcess(g.stats.channelAbsMax()[ju], c.stats.channelAbsMax()[ju], rtol) <= 0,
                qPrintable(QString("%1 abs-max channel %2: gpu %3, cpu %4")
                               .arg(name.constData())
                               .arg(j)
                               .arg(g.stats.channelAbsMax()[ju], 0, 'g', 9)
                               .arg(c.stats.channelAbsMax()[ju], 0, 'g', 9)));
            QVERIFY2(relativeExcess(gAbs[ju], cAbs[ju], rtol) <= 0,
                     qPrintable(QString("%1 mean |x| channel %2: gpu %3, cpu %4")
                                    .arg(name.constData())
                                    .arg(j)
                                    .arg(gAbs[ju], 0, 'g', 12)
                                    .arg(cAbs[ju], 0, 'g', 12)));
            QVERIFY2(relativeExcess(gSq[ju], cSq[ju], rtol) <= 0,
                     qPrintable(QString("%1 mean x² channel %2: gpu %3, cpu %4")
                                    .arg(name.constData())
                                    .arg(j)
                                    .arg(gSq[ju], 0, 'g', 12)
                                    .arg(cSq[ju], 0, 'g', 12)));
        }
        QCOMPARE(g.stats.histogram().counts.size(), c.stats.histogram().counts.size());
        QCOMPARE(g.stats.histogram().total(), c.stats.histogram().total());
        QCOMPARE(g.stats.hessianPrecision(), c.stats.hessianPrecision());
        if (c.stats.hessianPrecision() != HessianPrecision::None) {
            const double e = hessianError(g.stats.hessian(), c.stats.hessian(), n);
            worstHessian = std::max(worstHessian, e);
            QVERIFY2(e <= rtol,
                     qPrintable(QString("%1 Hessian error %2").arg(name.constData()).arg(e)));
        }
        const auto &gt = g.stats.top(), &ct = c.stats.top();
        QCOMPARE(gt.size(), ct.size());
        QCOMPARE(g.topContext.size(), gt.size());
        for (std::size_t k = 0; k < ct.size(); ++k) {
            const double v = std::fabs(ct[k].value);
            const double margin = 4 * rtol * v;
            const bool clearAbove = k == 0 || std::fabs(ct[k - 1].value) - v > margin;
            // The last rank's neighbour below is not kept: it may have swapped in.
            const bool clearBelow = k + 1 < ct.size() && v - std::fabs(ct[k + 1].value) > margin;
            if (!clearAbove || !clearBelow) continue;
            QVERIFY2(gt[k].channel == ct[k].channel && gt[k].sample == ct[k].sample &&
                         gt[k].position == ct[k].position,
                     qPrintable(QString("%1 top[%2]: gpu ch %3 s %4 p %5 (%6), cpu ch %7 s %8 p "
                                        "%9 (%10)")
                                    .arg(name.constData())
                                    .arg(k)
                                    .arg(gt[k].channel)
                                    .arg(gt[k].sample)
                                    .arg(gt[k].position)
                                    .arg(gt[k].value)
                                    .arg(ct[k].channel)
                                    .arg(ct[k].sample)
                                    .arg(ct[k].position)
                                    .arg(ct[k].value)));
            QVERIFY(relativeExcess(gt[k].value, ct[k].value, rtol) <= 0);
            QCOMPARE(g.topContext[k].token, c.topContext[k].token);
            QCOMPARE(g.topContext[k].before, c.topContext[k].before);
        }
    }
    qInfo("worst Hessian error over %zu probes: %.3g", cpu.probes.size(), worstHessian);
}

void compareBf16(const CalibrationResult& gpu, const CalibrationResult& cpu)
{
    QCOMPARE(gpu.tokens, cpu.tokens);
    QCOMPARE(gpu.probes.size(), cpu.probes.size());
    for (std::size_t p = 0; p < cpu.probes.size(); ++p) {
        const ProbeStats &g = gpu.probes[p], &c = cpu.probes[p];
        QCOMPARE(g.name, c.name);
        QCOMPARE(g.stats.tokenCount(), c.stats.tokenCount());
        QCOMPARE(g.stats.histogram().total(), c.stats.histogram().total());
        const float gMax =
            *std::max_element(g.stats.channelAbsMax().begin(), g.stats.channelAbsMax().end());
        const float cMax =
            *std::max_element(c.stats.channelAbsMax().begin(), c.stats.channelAbsMax().end());
        QVERIFY2(std::fabs(gMax - cMax) <= 0.1 * cMax,
                 qPrintable(QString("%1 abs-max: bf16 %2, cpu %3")
                                .arg(QString::fromStdString(c.name))
                                .arg(gMax)
                                .arg(cMax)));
        if (c.stats.hessianPrecision() == HessianPrecision::None) continue;
        const auto gh = g.stats.hessian(), ch = c.stats.hessian();
        const int n = c.stats.channels();
        double gTrace = 0, cTrace = 0;
        for (int j = 0; j < n; ++j) {
            gTrace += gh[std::size_t(j) * n + j];
            cTrace += ch[std::size_t(j) * n + j];
        }
        QVERIFY2(std::isfinite(gTrace) && std::fabs(gTrace - cTrace) <= 0.1 * cTrace,
                 qPrintable(QString("%1 Hessian trace: bf16 %2, cpu %3")
                                .arg(QString::fromStdString(c.name))
                                .arg(gTrace)
                                .arg(cTrace)));
    }
}

}  // namespace

class TestCudaCalibrate : public QObject {
    Q_OBJECT
private slots:
    void initTestCase()
    {
        const std::string why = cuda::gpuUnavailableReason();
        if (!why.empty()) QSKIP(qPrintable(QString::fromStdString("no GPU: " + why)));
        QL_REQUIRE_DATA(kModel);
        QL_REQUIRE_DATA(kText);
        auto model = openModel(ql::test::dataPath(kModel));
        QL_VERIFY_OK(model);
        auto llama = LlamaModel::create(*model);
        QL_VERIFY_OK(llama);
        auto tok = Tokenizer::create(*model);
        QL_VERIFY_OK(tok);
        m_llama = std::make_unique<LlamaModel>(std::move(llama).value());
        m_tok = std::move(tok).value();
        auto text = readTextFile(ql::test::dataPath(kText));
        QL_VERIFY_OK(text);
        WindowOptions wo;
        wo.samples = 16;
        wo.seqLen = 128;
        wo.seed = 0;
        wo.addBos = m_tok->addBosByDefault();
        auto windows = makeCalibrationWindows(*m_tok, {*text}, wo);
        QL_VERIFY_OK(windows);
        m_windows = std::move(windows).value();
        auto backend = createBackend(BackendKind::Cuda);
        QL_VERIFY_OK(backend);
        m_backend = std::move(backend).value();
    }

    void matchesCpu_data()
    {
        QTest::addColumn<Precision>("precision");
        QTest::addColumn<HessianPrecision>("hessian");
        QTest::addColumn<int>("batch");  // windows per forward; 0: the token budget (all 16)
        QTest::addColumn<bool>("streamed");
        QTest::newRow("f32, H32, one batch")
            << Precision::Float32 << HessianPrecision::Float32 << 0 << false;
        QTest::newRow("f32, H64, batches of 3")
            << Precision::Float32 << HessianPrecision::Float64 << 3 << false;
        QTest::newRow("f32, no Hessian, one window at a time")
            << Precision::Float32 << HessianPrecision::None << 1 << false;
        QTest::newRow("bf16 (smoke), H32, batches of 8")
            << Precision::BFloat16 << HessianPrecision::Float32 << 8 << false;
        // Weights streamed block by block, each block's statistics moved to the host after it:
        // all windows in one call, and batches of 3 (host-side merges across calls).
        QTest::newRow("streamed, f32, H32, one call")
            << Precision::Float32 << HessianPrecision::Float32 << 0 << true;
        QTest::newRow("streamed, f32, H64, batches of 3")
            << Precision::Float32 << HessianPrecision::Float64 << 3 << true;
        QTest::newRow("streamed, bf16 (smoke), H32, one call")
            << Precision::BFloat16 << HessianPrecision::Float32 << 0 << true;
    }
    void matchesCpu()
    {
        QFETCH(Precision, precision);
        QFETCH(HessianPrecision, hessian);
        QFETCH(int, batch);
        QFETCH(bool, streamed);
        CalibrationConfig config;
        config.hessian = hessian;
        auto ref = calibrateWindows(*m_llama, *m_tok, m_windows, config);
        QL_VERIFY_OK(ref);
        RunnerOptions runnerOptions;
        if (streamed) runnerOptions.residency = WeightResidency::Streamed;
        auto runner = createLlamaRunner(*m_backend, *m_llama, precision, runnerOptions);
        QL_VERIFY_OK(runner);
        QCOMPARE((*runner)->streamsWeights(), streamed);
        RunnerCalibrationOptions options;
        options.batch = batch;
        auto got = calibrateWindows(**runner, *m_tok, m_windows, config, {}, options);
        QL_VERIFY_OK(got);
        QCOMPARE(got->device, (*runner)->device().name + ", " + precisionName(precision));
        if (precision == Precision::Float32)
            compareF32(*got, *ref, 1e-5);
        else
            compareBf16(*got, *ref);
        // The runner is left without statistics and still runs plain forwards.
        QCOMPARE((*runner)->takeStats().ok(), false);
        QL_VERIFY_OK((*runner)->forward(m_windows[0].tokens, 1, {}));
        qInfo("%lld tokens in %.3f s on %s (peak %.1f MiB)", (long long)got->tokens, got->seconds,
              got->device.c_str(), double((*runner)->peakMemoryBytes()) / (1 << 20));
    }

    // takeStats hands over what was gathered and starts afresh; disableStats stops collection.
    void takeStatsRestarts()
    {
        auto runner = createLlamaRunner(*m_backend, *m_llama, Precision::Float32);
        QL_VERIFY_OK(runner);
        ModelRunner& r = **runner;
        const std::uint64_t before = r.peakMemoryBytes();
        QL_VERIFY_OK(r.enableStats({}));
        QVERIFY(r.peakMemoryBytes() > before);  // the accumulators count as runner memory
        std::vector<TokenId> two = m_windows[0].tokens;
        two.insert(two.end(), m_windows[1].tokens.begin(), m_windows[1].tokens.end());
        QL_VERIFY_OK(r.forward(two, 2, {}, {}, 5));
        auto first = r.takeStats();
        QL_VERIFY_OK(first);
        QCOMPARE(std::int64_t(first->size()), r.shape().blocks * 4);
        QCOMPARE((*first)[0].tokenCount(), std::int64_t(two.size()));
        for (const auto& t : (*first)[0].top()) QVERIFY(t.sample == 5 || t.sample == 6);
        auto second = r.takeStats();
        QL_VERIFY_OK(second);
        QCOMPARE((*second)[0].tokenCount(), std::int64_t(0));
        r.disableStats();
        QCOMPARE(r.takeStats().error().code, ErrorCode::InvalidArgument);
        QL_VERIFY_OK(r.forward(two, 2, {}));
    }

    void cliCalibratesOnCuda()
    {
        QTemporaryDir dir;
        const QString out = dir.filePath("gpu.h5");
        const Run r =
            runCli({"calibrate", QString::fromStdString(ql::test::dataPath(kModel)), "--text",
                    QString::fromStdString(ql::test::dataPath(kText)), "--samples", "16",
                    "--seqlen", "128", "--device", "cuda", "--out", out});
        QVERIFY2(r.exitCode == 0, r.err.constData());
        QVERIFY2(!r.err.contains("note:"), r.err.constData());
        auto session = readSession(out.toStdString());
        QL_VERIFY_OK(session);
        QVERIFY(session->calibration);
        QCOMPARE(int(session->calibration->probes.size()), 5 * 4);
        QCOMPARE(session->calibration->tokens, std::int64_t(16 * 128));
        const std::string gpuName = m_backend->device().name;
        QVERIFY2(session->calibration->device.rfind(gpuName, 0) == 0,
                 session->calibration->device.c_str());
        QVERIFY(r.out.contains(QByteArray::fromStdString(gpuName)));
    }

    // A GPU-side refusal (more top activations than the kernels keep) is not fatal: the CLI says
    // so and calibrates on the CPU.
    void cliFallsBackToCpu()
    {
        QTemporaryDir dir;
        const QString out = dir.filePath("fallback.h5");
        const Run r =
            runCli({"calibrate", QString::fromStdString(ql::test::dataPath(kModel)), "--text",
                    QString::fromStdString(ql::test::dataPath(kText)), "--samples", "4", "--seqlen",
                    "64", "--device", "cuda", "--top-k", "2000", "--out", out});
        QVERIFY2(r.exitCode == 0, r.err.constData());
        QVERIFY2(r.err.contains("note:") && r.err.contains("CPU"), r.err.constData());
        auto session = readSession(out.toStdString());
        QL_VERIFY_OK(session);
        QVERIFY(session->calibration);
        QVERIFY2(session->calibration->device.rfind("CPU", 0) == 0,
                 session->calibration->device.c_str());
    }

private:
    std::unique_ptr<LlamaModel> m_llama;
    std::unique_ptr<Tokenizer> m_tok;
    std::vector<TokenWindow> m_windows;
    std::unique_ptr<Backend> m_backend;
};

QTEST_APPLESS_MAIN(TestCudaCalibrate)
#include "test_cuda_calibrate.moc"
