// SmoothQuant and the W8A8 simulation (quant/smoothquant.h, quant/w8a8.h), issue #6, on
// stories260K calibrated on tiny.txt:
//  (a) folding is exact: the smoothed float model (attn_output included, tied per KV head under
//      grouped-query attention) gives the original logits to 1e-4 relative;
//  (b) the W8A8 model's linear input and weights of one layer equal a direct per-token (and
//      static per-tensor) int8 reference written here, and its q projection follows;
//  (c) smoothing lowers the activation max/median channel ratio and the W8A8 output error;
//  (d) quantlens-cli smoothquant end to end: the table, the W8A8 evaluation, --out writing a GGUF
//      whose logits equal the original's; bad usage is one error line.
#include <QtTest>

#include <QProcess>
#include <QTemporaryDir>

#include <Eigen/Dense>
#include <cmath>

#include "calib/calibrate.h"
#include "io/model_loader.h"
#include "model/llama.h"
#include "quant/smoothquant.h"
#include "quant/w8a8.h"
#include "test_data.h"

using namespace ql;

namespace {

const char* kModel = "models/stories260K/stories260K.gguf";
const char* kCalibText = "text/calibration/tiny.txt";
const char* kEvalText = "text/eval/tinystories-valid-1000.txt";

struct Fixture {
    std::optional<Model> model;
    std::unique_ptr<Tokenizer> tokenizer;
    std::optional<LlamaModel> reference;
    std::vector<TokenWindow> windows;
    std::optional<CalibrationResult> calibration;
};

Fixture& fixture()
{
    static Fixture f;
    if (f.model) return f;
    auto model = openModel(ql::test::dataPath(kModel));
    if (!model) qFatal("%s", model.error().message.c_str());
    f.model = std::move(model).value();
    auto tok = Tokenizer::create(*f.model);
    if (!tok) qFatal("%s", tok.error().message.c_str());
    f.tokenizer = std::move(tok).value();
    auto text = readTextFile(ql::test::dataPath(kCalibText));
    if (!text) qFatal("%s", text.error().message.c_str());
    WindowOptions wo;
    wo.samples = 32;
    wo.seqLen = 256;
    wo.addBos = f.tokenizer->addBosByDefault();
    auto windows = makeCalibrationWindows(*f.tokenizer, {*text}, wo);
    if (!windows) qFatal("%s", windows.error().message.c_str());
    f.windows = std::move(windows).value();
    auto ref = LlamaModel::create(*f.model);
    if (!ref) qFatal("%s", ref.error().message.c_str());
    f.reference.emplace(std::move(ref).value());
    CalibrationConfig config;
    config.hessian = HessianPrecision::None;
    auto calib = calibrateWindows(*f.reference, *f.tokenizer, f.windows, config);
    if (!calib) qFatal("%s", calib.error().message.c_str());
    f.calibration = std::move(calib).value();
    return f;
}

// Captures one linear input of one block.
class Capture final : public ForwardProbe {
public:
    Capture(int block, LinearGroup group) : m_block(block), m_group(group) {}
    void onLinearInput(int block, LinearGroup group,
                       const Eigen::Ref<const MatrixXfRowMajor>& x) override
    {
        if (block == m_block && group == m_group) captured = x;
    }
    MatrixXfRowMajor captured;

private:
    int m_block;
    LinearGroup m_group;
};

// Direct symmetric int8 of one row with a given clip: integer codes, then code x scale.
std::vector<double> int8Reference(const float* x, std::int64_t n, double clip)
{
    std::vector<double> out(std::size_t(n), 0.0);
    if (!(clip > 0)) {
        for (std::int64_t i = 0; i < n; ++i) out[std::size_t(i)] = x[i];
        return out;
    }
    const float scale = float(clip) / 127.0f;
    for (std::int64_t i = 0; i < n; ++i) {
        long code = std::lround(double(x[i] / scale));
        if (std::fabs(double(x[i] / scale) - std::trunc(double(x[i] / scale))) == 0.5)
            code = long(std::nearbyint(double(x[i] / scale)));  // ties to even, as rint
        code = std::clamp(code, -127L, 127L);
        out[std::size_t(i)] = double(float(code) * scale);
    }
    return out;
}

double rowAbsMax(const float* x, std::int64_t n)
{
    double m = 0;
    for (std::int64_t i = 0; i < n; ++i) m = std::max(m, std::fabs(double(x[i])));
    return m;
}

struct CliRun {
    int exitCode = -1;
    QByteArray out, err;
};

CliRun runCli(const QStringList& args)
{
    QProcess p;
    p.start(QStringLiteral(QL_TEST_CLI), args);
    CliRun r;
    if (!p.waitForStarted(10000)) return r;
    p.waitForFinished(600000);
    r.exitCode = p.exitStatus() == QProcess::NormalExit ? p.exitCode() : -1;
    r.out = p.readAllStandardOutput();
    r.err = p.readAllStandardError();
    return r;
}

}  // namespace

class TestSmoothQuant : public QObject {
    Q_OBJECT

private slots:
    void initTestCase() { QL_REQUIRE_DATA(kModel); }

    void helpers()
    {
        const std::vector<float> v{1, -2, 3, 10};
        QCOMPARE(maxMedianRatio(v), 10.0 / 2.5);
        const std::vector<float> act{4, 1, 0}, w{1, 4, 2};
        const auto s = smoothingScales(act, w, 0.5);
        QCOMPARE(s[0], 2.0f);
        QCOMPARE(s[1], 0.5f);
        QCOMPARE(s[2], 1.0f);  // no activation: left alone
        QVERIFY(parseAlphaGrid("0.3,0.5,0.8").ok());
        QVERIFY(!parseAlphaGrid("0.3,1.5").ok());
        QVERIFY(!parseAlphaGrid("").ok());
        std::vector<double> t{1, 5, 2, 3, 4, 0, 7, 1};  // 4 heads x 2, 2 KV heads
        tieToKvHeads(t, 4, 2, 2, [](double a, double b) { return std::max(a, b); });
        QCOMPARE(t, (std::vector<double>{2, 5, 2, 5, 7, 1, 7, 1}));
    }

    // (a)
    void foldingIsExact()
    {
        QL_REQUIRE_DATA(kCalibText);
        Fixture& f = fixture();
        SmoothQuantOptions options;
        options.alpha = 0.5;
        auto t = computeSmoothQuant(*f.model, *f.calibration, options);
        QVERIFY2(t.ok(), t.ok() ? "" : t.error().message.c_str());
        int smoothed = 0;
        for (const SmoothSite& s : t->sites) smoothed += s.smoothed;
        QCOMPARE(smoothed, 4 * int(f.model->hparams.blockCount));  // attn_output included
        // attn_v takes q/k/v's column scales and attn_output's row scales; ffn_up likewise.
        const ScaleFold& v = t->folds.at("blk.0.attn_v.weight");
        QVERIFY(!v.colMul.empty() && !v.rowDiv.empty());
        const ScaleFold& up = t->folds.at("blk.0.ffn_up.weight");
        QVERIFY(!up.colMul.empty() && !up.rowDiv.empty());

        W8A8Options none;
        none.weightBits = 0;
        none.activations = ActivationQuant::None;
        auto folded = createW8A8Model(*f.model, &t->folds, none);
        QVERIFY(folded.ok());
        const auto& tokens = f.windows[0].tokens;
        auto a = f.reference->logits(tokens);
        auto b = folded->logits(tokens);
        QVERIFY(a.ok() && b.ok());
        const double diff = (*a - *b).cwiseAbs().maxCoeff();
        const double scale = a->cwiseAbs().maxCoeff();
        qInfo("smoothed vs original logits: max |diff| %.3e (max |logit| %.3f)", diff, scale);
        QVERIFY(diff <= 1e-4 * scale);
    }

    // (b)
    void w8a8MatchesDirectReference_data()
    {
        QTest::addColumn<int>("mode");
        QTest::newRow("per-token") << int(ActivationQuant::PerToken);
        QTest::newRow("static") << int(ActivationQuant::PerTensorStatic);
    }
    void w8a8MatchesDirectReference()
    {
        QL_REQUIRE_DATA(kCalibText);
        QFETCH(int, mode);
        Fixture& f = fixture();
        W8A8Options o;
        o.activations = ActivationQuant(mode);
        auto w8 = createW8A8Model(*f.model, nullptr, o, &*f.calibration);
        QVERIFY(w8.ok());
        const std::vector<TokenId> tokens(f.windows[1].tokens.begin(),
                                          f.windows[1].tokens.begin() + 64);
        // Block 0's attention input is the same float value in both models before rounding.
        Capture ref(0, LinearGroup::AttnQkv), got(0, LinearGroup::AttnQkv);
        QVERIFY(f.reference->logits(tokens, {}, &ref).ok());
        QVERIFY(w8->logits(tokens, {}, &got).ok());
        const std::int64_t dim = ref.captured.cols();
        QCOMPARE(got.captured.rows(), Eigen::Index(tokens.size()));
        double clip = 0;
        for (float m : f.calibration->find("blk.0.attn_qkv")->stats.channelAbsMax())
            clip = std::max(clip, double(m));
        double maxErr = 0;
        int saturated = 0;
        for (Eigen::Index r = 0; r < ref.captured.rows(); ++r) {
            const float* x = ref.captured.row(r).data();
            const double c = o.activations == ActivationQuant::PerToken ? rowAbsMax(x, dim) : clip;
            const auto q = int8Reference(x, dim, c);
            for (std::int64_t j = 0; j < dim; ++j) {
                maxErr = std::max(maxErr, std::fabs(q[std::size_t(j)] - got.captured(r, j)));
                saturated += std::fabs(x[j]) > c;
            }
        }
        qInfo("%s: max |int8 reference - simulated| %.3e, %d saturated", QTest::currentDataTag(),
              maxErr, saturated);
        QVERIFY(maxErr < 1e-6);
        // The distinct values per row are at most 255 int8 levels.
        // Weights: attn_q rounded per output channel.
        const auto wq = w8->weights().values("blk.0.attn_q.weight");
        const auto wf = f.reference->weights().values("blk.0.attn_q.weight");
        double maxW = 0;
        for (std::int64_t r = 0; r < dim; ++r) {
            const auto q =
                int8Reference(wf.data() + r * dim, dim, rowAbsMax(wf.data() + r * dim, dim));
            for (std::int64_t j = 0; j < dim; ++j)
                maxW = std::max(maxW, std::fabs(q[std::size_t(j)] - wq[std::size_t(r * dim + j)]));
        }
        QVERIFY(maxW < 1e-7);
        // The q projection of the rounded input and weights, against double.
        const MatrixXfRowMajor y = got.captured * w8->weights().block(0).wq.transpose();
        const Eigen::MatrixXd yRef =
            got.captured.cast<double>() * w8->weights().block(0).wq.cast<double>().transpose();
        QVERIFY((y.cast<double>() - yRef).cwiseAbs().maxCoeff() < 1e-4);
        // The model's output moved, but not far: W8A8 on one window.
        auto a = f.reference->logits(tokens);
        auto b = w8->logits(tokens);
        QVERIFY(a.ok() && b.ok());
        const double d = (*a - *b).cwiseAbs().maxCoeff();
        QVERIFY(d > 0 && d < 0.5 * a->cwiseAbs().maxCoeff());
    }

    // (c)
    void smoothingReducesRangesAndError()
    {
        QL_REQUIRE_DATA(kCalibText);
        Fixture& f = fixture();
        const std::vector<TokenWindow> search(f.windows.begin(), f.windows.begin() + 8);
        SmoothQuantOptions fixed;
        fixed.alpha = 0.5;
        auto t = computeSmoothQuant(*f.model, *f.calibration, fixed, &*f.reference, &search);
        QVERIFY(t.ok());
        double ratioBefore = 0, ratioAfter = 0, errBefore = 0, errAfter = 0;
        for (const SmoothSite& s : t->sites) {
            qInfo("%-18s act max/med %7.2f -> %6.2f  weight %6.2f -> %6.2f  error %.3e -> %.3e",
                  s.probe.c_str(), s.actRatioBefore, s.actRatioAfter, s.weightRatioBefore,
                  s.weightRatioAfter, s.errorBefore, s.errorAfter);
            ratioBefore += std::log(s.actRatioBefore);
            ratioAfter += std::log(s.actRatioAfter);
            errBefore += s.errorBefore;
            errAfter += s.errorAfter;
        }
        QVERIFY(ratioAfter < ratioBefore);
        QVERIFY(errAfter < errBefore);

        SmoothQuantOptions grid;
        grid.alphaGrid = {0.3, 0.4, 0.5, 0.6, 0.7, 0.8};
        auto g = computeSmoothQuant(*f.model, *f.calibration, grid, &*f.reference, &search);
        QVERIFY(g.ok());
        double gBefore = 0, gAfter = 0;
        for (const SmoothSite& s : g->sites) {
            QVERIFY(s.errorAfter <= s.errorBefore);
            QCOMPARE(s.errorByAlpha.size(), grid.alphaGrid.size());
            gBefore += s.errorBefore;
            gAfter += s.errorAfter;
        }
        qInfo(
            "W8A8 output error summed over sites: %.4e unsmoothed, %.4e at alpha 0.5, %.4e "
            "searched",
            errBefore, errAfter, gAfter);
        QVERIFY(gAfter < 0.95 * gBefore);
        QVERIFY(gAfter <= errAfter * (1 + 1e-9));
        // The search needs windows.
        QVERIFY(!computeSmoothQuant(*f.model, *f.calibration, grid).ok());
    }

    // (d)
    void cliEndToEnd()
    {
        QL_REQUIRE_DATA(kCalibText);
        QL_REQUIRE_DATA(kEvalText);
        QTemporaryDir dir;
        QVERIFY(dir.isValid());
        const QString out = dir.filePath("smoothed.gguf");
        const QString model = QString::fromStdString(ql::test::dataPath(kModel));
        const CliRun r = runCli(
            {"smoothquant", model, "--text", QString::fromStdString(ql::test::dataPath(kCalibText)),
             "--samples", "16", "--seqlen", "256", "--alpha-grid", "0.4,0.6", "--eval-text",
             QString::fromStdString(ql::test::dataPath(kEvalText)), "--ctx", "256", "--chunks", "8",
             "--out", out});
        QVERIFY2(r.exitCode == 0, r.err.constData());
        const QString text = QString::fromUtf8(r.out);
        qInfo("%s", r.out.constData());
        QVERIFY(text.contains("blk.4.ffn_down"));
        QVERIFY(text.contains("blk.0.attn_output"));
        QVERIFY(text.contains("W8A8, no smoothing"));
        QVERIFY(text.contains("W8A8, SmoothQuant alpha per site"));
        QVERIFY(text.contains("W8A8, SmoothQuant alpha 0.4 everywhere"));
        QVERIFY(text.contains("wrote"));

        auto smoothed = openModel(out.toStdString());
        QVERIFY2(smoothed.ok(), smoothed.ok() ? "" : smoothed.error().message.c_str());
        auto lm = LlamaModel::create(*smoothed);
        QVERIFY(lm.ok());
        Fixture& f = fixture();
        const auto& tokens = f.windows[2].tokens;
        auto a = f.reference->logits(tokens);
        auto b = lm->logits(tokens);
        QVERIFY(a.ok() && b.ok());
        const double diff = (*a - *b).cwiseAbs().maxCoeff();
        QVERIFY(diff <= 1e-4 * a->cwiseAbs().maxCoeff());
        // The norms changed (smoothing was folded in), the embedding did not.
        QVERIFY(lm->weights().values("blk.0.attn_norm.weight")[0] !=
                f.reference->weights().values("blk.0.attn_norm.weight")[0]);

        const CliRun bad = runCli({"smoothquant", model, "--alpha-grid", "0.5"});
        QCOMPARE(bad.exitCode, 2);
        QVERIFY(bad.err.startsWith("quantlens-cli: error:"));
        const CliRun both = runCli(
            {"smoothquant", model, "--text", "x.txt", "--alpha", "0.5", "--alpha-grid", "0.5"});
        QCOMPARE(both.exitCode, 2);
    }
};

QTEST_GUILESS_MAIN(TestSmoothQuant)
#include "test_smoothquant.moc"
