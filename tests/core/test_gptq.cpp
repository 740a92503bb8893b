// GPTQ (issue #6), CPU reference:
//  (a) on random W and H, quantizeGptq with an INT-n grid reproduces a straightforward
//      implementation of the paper's loop written here (no lazy batches, no Cholesky: H^-1 kept
//      explicitly and reduced by Gaussian elimination after each column), to 1e-5;
//  (b) its output error tr(dW H dW^T) is below round-to-nearest's in the same format;
//  (c) for every format family the QuantizedTensor decodes bit for bit to GPTQ's weights, every
//      weight is one of its group's grid levels, and the reported loss is tr(dW H' dW^T);
//  (d) on the real stories260K, calibrated on TinyStories training text, true-sequential GPTQ
//      beats RTN in perplexity and KL divergence on TinyStories validation text.
// Plus: damp raises on an indefinite Hessian, option parsing, cancellation, clear errors when the
// calibration lacks Hessians.
#include <QtTest>

#include <Eigen/Dense>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>

#include "calib/calibrate.h"
#include "eval/evaluator.h"
#include "io/model_loader.h"
#include "layout/layout.h"
#include "quant/gptq.h"
#include "quant/gptq_sequential.h"
#include "quant/quantize_model.h"
#include "quant/uniform.h"
#include "test_data.h"

using namespace ql;

namespace {

const char* kModel = "models/stories260K/stories260K.gguf";
const char* kCalibText = "text/calibration/tiny.txt";
const char* kEvalText = "text/eval/tinystories-valid-1000.txt";

struct Problem {
    std::int64_t rows = 0, cols = 0;
    std::vector<float> w;       // rows x cols
    std::vector<double> h;      // cols x cols
    std::vector<float> weight;  // importance: diag(H) / tokens
};

// W: Gaussian with a heavier-tailed share; H = X^T X for correlated inputs with uneven channel
// scales (a few outlier channels), some channels always zero ("dead") when asked.
Problem makeProblem(std::int64_t rows, std::int64_t cols, std::uint64_t seed, int dead = 0)
{
    std::mt19937_64 rng(seed);
    std::normal_distribution<double> n01(0.0, 1.0);
    Problem p;
    p.rows = rows;
    p.cols = cols;
    p.w.resize(std::size_t(rows * cols));
    for (auto& v : p.w) {
        const double g = n01(rng);
        v = float(0.05 * (std::uniform_real_distribution<double>(0, 1)(rng) < 0.05 ? 4 * g : g));
    }
    const std::int64_t tokens = 3 * cols;
    Eigen::MatrixXd Z(tokens, cols), A(cols, cols);
    for (Eigen::Index i = 0; i < Z.size(); ++i) Z.data()[i] = n01(rng);
    for (Eigen::Index i = 0; i < A.size(); ++i) A.data()[i] = 0.4 * n01(rng) / std::sqrt(cols);
    A.diagonal().array() += 1.0;
    Eigen::MatrixXd X = Z * A;
    for (Eigen::Index c = 0; c < cols; ++c) {
        double s = std::exp(0.6 * n01(rng));
        if (c % 17 == 5) s *= 6;  // outlier channels
        X.col(c) *= s;
    }
    for (int d = 0; d < dead; ++d) X.col((d * 7 + 3) % cols).setZero();
    const Eigen::MatrixXd H = X.transpose() * X;
    p.h.resize(std::size_t(cols * cols));
    p.weight.resize(std::size_t(cols));
    for (Eigen::Index i = 0; i < cols; ++i) {
        p.weight[std::size_t(i)] = float(H(i, i) / double(tokens));
        for (Eigen::Index j = 0; j < cols; ++j) p.h[std::size_t(i * cols + j)] = H(i, j);
    }
    return p;
}

// The paper's column loop, literally: explicit H^-1, OBS update of the remaining weights, Gaussian
// elimination of the quantized column from H^-1. INT-n groups are fitted (min/max -> the format's
// uniformGrid) on the current weights when the loop first reaches a group, or from the original
// weights before the loop with staticGroups. Returns the quantized weights; `loss` gets
// sum (w - q)^2 / [H^-1]_qq.
std::vector<float> referenceGptq(const Problem& p, int bits, bool symmetric, std::int64_t group,
                                 double damp, bool actOrder, bool staticGroups, double& loss)
{
    const std::int64_t rows = p.rows, cols = p.cols;
    const std::int64_t gs = group > 0 ? group : cols;
    Eigen::MatrixXd H(cols, cols);
    for (std::int64_t i = 0; i < cols; ++i)
        for (std::int64_t j = 0; j < cols; ++j) H(i, j) = p.h[std::size_t(i * cols + j)];
    std::vector<double> W(p.w.begin(), p.w.end());
    for (std::int64_t c = 0; c < cols; ++c) {
        if (H(c, c) != 0) continue;
        H(c, c) = 1;
        for (std::int64_t r = 0; r < rows; ++r) W[std::size_t(r * cols + c)] = 0;
    }
    std::vector<std::int64_t> order(static_cast<std::size_t>(cols));
    std::iota(order.begin(), order.end(), 0);
    if (actOrder)
        std::stable_sort(order.begin(), order.end(),
                         [&](std::int64_t a, std::int64_t b) { return H(a, a) > H(b, b); });
    H.diagonal().array() += damp * H.diagonal().mean();
    Eigen::MatrixXd Hinv = H.inverse();

    const std::int64_t groups = (cols + gs - 1) / gs;
    std::vector<UniformGrid> grid(std::size_t(rows * groups));
    std::vector<bool> fitted(std::size_t(groups), false);
    auto fit = [&](std::int64_t g) {
        for (std::int64_t r = 0; r < rows; ++r) {
            float lo = 0, hi = 0;
            for (std::int64_t c = g * gs; c < std::min(cols, (g + 1) * gs); ++c) {
                lo = std::min(lo, float(W[std::size_t(r * cols + c)]));
                hi = std::max(hi, float(W[std::size_t(r * cols + c)]));
            }
            grid[std::size_t(r * groups + g)] = uniformGrid(lo, hi, bits, symmetric);
        }
        fitted[std::size_t(g)] = true;
    };
    if (staticGroups)
        for (std::int64_t g = 0; g < groups; ++g) fit(g);

    std::vector<float> Q(std::size_t(rows * cols));
    std::vector<bool> done(std::size_t(cols), false);
    loss = 0;
    for (std::int64_t c : order) {
        const std::int64_t g = c / gs;
        if (!fitted[std::size_t(g)]) fit(g);
        const double d = Hinv(c, c);
        for (std::int64_t r = 0; r < rows; ++r) {
            const UniformGrid& u = grid[std::size_t(r * groups + g)];
            const double x = W[std::size_t(r * cols + c)];
            double k = u.scale > 0 ? std::nearbyint(x / u.scale + u.zero) : u.zero;
            k = std::clamp(k, double(u.qmin), double(u.qmax));
            const float v = u.dequantize(int(k));
            Q[std::size_t(r * cols + c)] = v;
            loss += (x - v) * (x - v) / d;
            for (std::int64_t j = 0; j < cols; ++j)
                if (!done[std::size_t(j)] && j != c)
                    W[std::size_t(r * cols + j)] -= (x - v) / d * Hinv(c, j);
        }
        done[std::size_t(c)] = true;
        const Eigen::VectorXd col = Hinv.col(c);
        Hinv -= col * col.transpose() / d;
    }
    return Q;
}

// tr(dW H' dW^T) with H' the Hessian GPTQ factorizes (dead columns: H_ii = 1, W_:i = 0; damped).
double dampedLoss(const Problem& p, const std::vector<float>& q, double dampAbsolute)
{
    Eigen::MatrixXd H(p.cols, p.cols), dW(p.rows, p.cols);
    for (std::int64_t i = 0; i < p.cols; ++i)
        for (std::int64_t j = 0; j < p.cols; ++j) H(i, j) = p.h[std::size_t(i * p.cols + j)];
    for (std::int64_t c = 0; c < p.cols; ++c) {
        const bool dead = H(c, c) == 0;
        if (dead) H(c, c) = 1;
        for (std::int64_t r = 0; r < p.rows; ++r)
            dW(r, c) = double(q[std::size_t(r * p.cols + c)]) -
                       (dead ? 0.0 : double(p.w[std::size_t(r * p.cols + c)]));
    }
    H.diagonal().array() += dampAbsolute;
    return (dW * H).cwiseProduct(dW).sum();
}

QuantFormat format(const char* text)
{
    auto f = parseQuantFormat(text);
    if (!f) qFatal("bad format %s", text);
    return *f;
}

struct Scores {
    double ppl = 0, kl = 0;
};

}  // namespace

class TestGptq : public QObject {
    Q_OBJECT
private slots:
    // (a)
    void matchesReferenceLoop_data()
    {
        QTest::addColumn<int>("bits");
        QTest::addColumn<bool>("symmetric");
        QTest::addColumn<int>("group");
        QTest::addColumn<int>("cols");
        QTest::addColumn<int>("block");
        QTest::addColumn<bool>("actOrder");
        QTest::addColumn<bool>("staticGroups");
        QTest::addColumn<int>("dead");
        QTest::newRow("int4 per channel") << 4 << true << 0 << 96 << 128 << false << false << 0;
        QTest::newRow("int4 g32") << 4 << true << 32 << 160 << 128 << false << false << 0;
        QTest::newRow("int4 g32 asym, block 16")
            << 4 << false << 32 << 160 << 16 << false << false << 0;
        QTest::newRow("int4 g32 actorder, block 24")
            << 4 << true << 32 << 160 << 24 << true << false << 0;
        QTest::newRow("int4 g32 actorder static")
            << 4 << true << 32 << 160 << 128 << true << true << 0;
        QTest::newRow("int4 g48 partial group, dead columns")
            << 4 << true << 48 << 150 << 128 << false << false << 2;
        QTest::newRow("int3 g32 asym actorder, block 7, dead columns")
            << 3 << false << 32 << 128 << 7 << true << false << 3;
    }
    void matchesReferenceLoop()
    {
        QFETCH(int, bits);
        QFETCH(bool, symmetric);
        QFETCH(int, group);
        QFETCH(int, cols);
        QFETCH(int, block);
        QFETCH(bool, actOrder);
        QFETCH(bool, staticGroups);
        QFETCH(int, dead);
        const Problem p = makeProblem(48, cols, 1234 + cols + bits, dead);
        const QuantFormat f = uniformFormat(
            bits, symmetric, group > 0 ? Granularity::PerGroup : Granularity::PerChannel, group);
        GptqOptions o;
        o.blockSize = block;
        o.actOrder = actOrder;
        o.staticGroups = staticGroups;
        auto g = quantizeGptq(p.w.data(), p.rows, p.cols, p.h, f, o);
        QVERIFY2(g.ok(), g.ok() ? "" : g.error().message.c_str());
        QCOMPARE(g->deadColumns, std::int64_t(dead));
        double refLoss = 0;
        const auto ref =
            referenceGptq(p, bits, symmetric, group, o.damp, actOrder, staticGroups, refLoss);
        double worst = 0;
        for (std::size_t i = 0; i < ref.size(); ++i)
            worst = std::max(worst, double(std::fabs(ref[i] - g->weights[i])));
        QVERIFY2(worst <= 1e-5, qPrintable(QString("max |gptq - reference| = %1").arg(worst)));
        QVERIFY2(std::fabs(g->loss - refLoss) <= 1e-6 * refLoss,
                 qPrintable(QString("loss %1 vs reference %2").arg(g->loss).arg(refLoss)));
    }

    // (b)
    void beatsRtn_data()
    {
        QTest::addColumn<QString>("fmt");
        QTest::addColumn<bool>("actOrder");
        QTest::addColumn<bool>("importance");
        for (const char* f : {"int4", "int4:g32", "int3:g32", "int3:g32:asym", "q4_0", "q4_k"}) {
            QTest::newRow(f) << QString(f) << false << false;
            QTest::newRow(qPrintable(QString(f) + " actorder")) << QString(f) << true << false;
        }
        QTest::newRow("q4_0 importance") << "q4_0" << false << true;
        QTest::newRow("q4_k importance actorder") << "q4_k" << true << true;
    }
    void beatsRtn()
    {
        QFETCH(QString, fmt);
        QFETCH(bool, actOrder);
        QFETCH(bool, importance);
        static const Problem p = makeProblem(64, 256, 77);
        GptqOptions o;
        o.actOrder = actOrder;
        auto g = quantizeGptq(p.w.data(), p.rows, p.cols, p.h, format(qPrintable(fmt)), o,
                              importance ? p.weight.data() : nullptr);
        QVERIFY2(g.ok(), g.ok() ? "" : g.error().message.c_str());
        QVERIFY2(g->error.weighted < 0.8 * g->rtnError.weighted,
                 qPrintable(QString("tr(dW H dW^T): gptq %1, rtn %2")
                                .arg(g->error.weighted)
                                .arg(g->rtnError.weighted)));
        QVERIFY(g->loss < g->rtnLoss);
    }

    // (c)
    void decodesExactly_data()
    {
        QTest::addColumn<QString>("fmt");
        QTest::addColumn<bool>("actOrder");
        QTest::addColumn<bool>("staticGroups");
        QTest::addColumn<bool>("importance");
        const char* formats[] = {
            "int4",    "int4:g32:asym", "int8:tensor", "int2:g16", "int5:g24", "nf4",
            "nf4:g32", "nf4:dq",        "mxfp4",       "nvfp4",    "fp8_e4m3", "fp8_e5m2:channel",
            "q8_0",    "q4_0",          "q4_1",        "q5_0",     "q5_1",     "q2_k",
            "q3_k",    "q4_k",          "q5_k",        "q6_k"};
        for (const char* f : formats) {
            QTest::newRow(f) << QString(f) << false << false << false;
            QTest::newRow(qPrintable(QString(f) + " actorder"))
                << QString(f) << true << false << true;
            QTest::newRow(qPrintable(QString(f) + " actorder static"))
                << QString(f) << true << true << false;
        }
    }
    void decodesExactly()
    {
        QFETCH(QString, fmt);
        QFETCH(bool, actOrder);
        QFETCH(bool, staticGroups);
        QFETCH(bool, importance);
        static const Problem p = makeProblem(16, 256, 99, 2);
        GptqOptions o;
        o.actOrder = actOrder;
        o.staticGroups = staticGroups;
        o.blockSize = 96;
        auto g = quantizeGptq(p.w.data(), p.rows, p.cols, p.h, format(qPrintable(fmt)), o,
                              importance ? p.weight.data() : nullptr);
        QVERIFY2(g.ok(), g.ok() ? "" : g.error().message.c_str());
        QVERIFY(g->quantized.validate().ok());
        auto decoded = g->quantized.dequantize();
        QVERIFY(decoded.ok());
        QCOMPARE(decoded->size(), g->weights.size());
        QVERIFY(std::memcmp(decoded->data(), g->weights.data(), decoded->size() * sizeof(float)) ==
                0);
        for (std::int64_t r = 0; r < p.rows; ++r) {
            for (std::int64_t c = 0; c < p.cols; ++c) {
                auto levels = gridLevels(g->quantized, r, c);
                QVERIFY(levels.ok());
                const float v = g->weights[std::size_t(r * p.cols + c)];
                if (std::find(levels->begin(), levels->end(), v) == levels->end())
                    QFAIL(qPrintable(QString("weight (%1, %2) = %3 is not a level of its group")
                                         .arg(r)
                                         .arg(c)
                                         .arg(v)));
            }
        }
        const double loss = dampedLoss(p, g->weights, g->dampAbsolute);
        QVERIFY2(std::fabs(loss - g->loss) <= 1e-6 * loss,
                 qPrintable(QString("loss %1, tr(dW H' dW^T) %2").arg(g->loss).arg(loss)));
        QCOMPARE(g->order.size(), std::size_t(p.cols));
    }

    void dampeningRaisedWhenCholeskyFails()
    {
        // X^T X of rank 40 < 64 minus 3% of its mean diagonal: 1% damping leaves it indefinite,
        // 10% makes it positive definite.
        Problem p = makeProblem(16, 64, 5);
        std::mt19937_64 rng(6);
        std::normal_distribution<double> n01;
        Eigen::MatrixXd X(40, 64);
        for (Eigen::Index i = 0; i < X.size(); ++i) X.data()[i] = n01(rng);
        Eigen::MatrixXd H = X.transpose() * X;
        H.diagonal().array() -= 0.03 * H.diagonal().mean();
        for (Eigen::Index i = 0; i < 64; ++i)
            for (Eigen::Index j = 0; j < 64; ++j) p.h[std::size_t(i * 64 + j)] = H(i, j);
        auto g = quantizeGptq(p.w.data(), p.rows, p.cols, p.h, format("int4:g32"));
        QVERIFY2(g.ok(), g.ok() ? "" : g.error().message.c_str());
        QCOMPARE(g->dampRaises.size(), std::size_t(1));
        QVERIFY(g->dampRaises[0].find("raised to damp=0.1") != std::string::npos);
        QCOMPARE(g->damp, 0.1);

        // Explicit damp=0 on a singular Hessian: raised from 0.
        GptqOptions o;
        o.damp = 0;
        H.diagonal().array() += 0.03 * (H.diagonal().array() / 0.97).mean();
        for (Eigen::Index i = 0; i < 64; ++i)
            for (Eigen::Index j = 0; j < 64; ++j) p.h[std::size_t(i * 64 + j)] = H(i, j);
        auto g0 = quantizeGptq(p.w.data(), p.rows, p.cols, p.h, format("int4:g32"), o);
        QVERIFY2(g0.ok(), g0.ok() ? "" : g0.error().message.c_str());
        QVERIFY(!g0->dampRaises.empty());
        QVERIFY(g0->damp > 0);
    }

    void badInputIsRefused()
    {
        const Problem p = makeProblem(8, 64, 3);
        auto f = quantizeGptq(p.w.data(), p.rows, p.cols, p.h, format("f16"));
        QVERIFY(!f.ok());
        QVERIFY(f.error().message.find("float format") != std::string::npos);
        auto shape = quantizeGptq(p.w.data(), p.rows, p.cols,
                                  std::span<const double>(p.h.data(), 10), format("int4"));
        QVERIFY(!shape.ok());
        auto fits = quantizeGptq(p.w.data(), p.rows, p.cols, p.h, format("q4_k"));
        QVERIFY(!fits.ok());
        QVERIFY(fits.error().message.find("256") != std::string::npos);
        std::vector<float> w = p.w;
        w[5] = std::nanf("");
        auto nan = quantizeGptq(w.data(), p.rows, p.cols, p.h, format("int4"));
        QVERIFY(!nan.ok());
        int calls = 0;
        auto cancelled = quantizeGptq(p.w.data(), p.rows, p.cols, p.h, format("int4"), {}, nullptr,
                                      [&](double, std::string_view) { return ++calls < 2; });
        QVERIFY(!cancelled.ok());
        QCOMPARE(cancelled.error().code, ErrorCode::Cancelled);
    }

    void optionsParse()
    {
        auto layout = Layout::parse("*=int4:g128:gptq:damp=0.02:block=64:actorder:static");
        QVERIFY2(layout.ok(), layout.ok() ? "" : layout.error().message.c_str());
        const LayoutRule& r = layout->rules()[0];
        QCOMPARE(r.method, QuantMethod::Gptq);
        auto o = parseGptqOptions(r.methodOptions);
        QVERIFY(o.ok());
        QCOMPARE(o->damp, 0.02);
        QCOMPARE(o->blockSize, std::int64_t(64));
        QVERIFY(o->actOrder);
        QVERIFY(o->staticGroups);
        // The canonical form parses back to the same rule.
        auto again = Layout::parse(layout->toString());
        QVERIFY(again.ok());
        QCOMPARE(again->toString(), layout->toString());
        QCOMPARE(gptqOptionsText(*o), std::string("damp=0.02 block=64 actorder static"));

        auto rtnFlag = Layout::parse("*=q4_0:actorder");
        QVERIFY(!rtnFlag.ok());
        QVERIFY(rtnFlag.error().message.find("rtn takes no options") != std::string::npos);
        const std::vector<std::pair<std::string, std::string>> bad[] = {
            {{"damp", "-1"}}, {{"block", "0"}}, {{"actorder", "maybe"}}, {{"groupsize", "128"}}};
        for (const auto& b : bad) QVERIFY(!parseGptqOptions(b).ok());
    }

    // (d) and the integration with quantizeModel.
    void stories260K()
    {
        QL_REQUIRE_DATA(kModel);
        QL_REQUIRE_DATA(kCalibText);
        QL_REQUIRE_DATA(kEvalText);
        auto model = openModel(ql::test::dataPath(kModel));
        QVERIFY(model.ok());
        auto tok = Tokenizer::create(*model);
        QVERIFY(tok.ok());
        auto calibText = readTextFile(ql::test::dataPath(kCalibText));
        QVERIFY(calibText.ok());
        WindowOptions wo;
        wo.samples = 32;
        wo.seqLen = 256;
        wo.addBos = (*tok)->addBosByDefault();
        auto windows = makeCalibrationWindows(**tok, {*calibText}, wo);
        QVERIFY(windows.ok());
        auto evalText = readTextFile(ql::test::dataPath(kEvalText));
        QVERIFY(evalText.ok());
        const auto evalWindows = makeLlamaCppChunks(**tok, evalText->substr(0, 200000), 256, 48);
        QVERIFY(evalWindows.size() >= 40);

        auto reference = LlamaModel::create(*model);
        QVERIFY(reference.ok());
        LlamaLogitsSource refSource(*reference);
        auto score = [&](const LlamaModel& m) {
            LlamaLogitsSource src(m);
            auto r = evaluate(src, evalWindows, &refSource);
            if (!r) qFatal("%s", r.error().message.c_str());
            return Scores{r->ppl, r->kl->mean};
        };

        // Calibration of the unquantized model: importance for RTN, Hessians for plain GPTQ.
        CalibrationConfig config;
        config.hessian = HessianPrecision::Float64;
        auto calib = calibrateWindows(*reference, **tok, *windows, config);
        QVERIFY(calib.ok());

        // Clear errors without Hessians, before any work.
        auto gptqLayout = Layout::parse("*=int4:g32:gptq");
        QVERIFY(gptqLayout.ok());
        auto none = quantizeModel(*model, *gptqLayout, nullptr);
        QVERIFY(!none.ok());
        QVERIFY(none.error().message.find("blk.0.attn_q.weight: gptq needs the Hessian of its "
                                          "input blk.0.attn_qkv") != std::string::npos);
        CalibrationConfig noHessian;
        noHessian.hessian = HessianPrecision::None;
        auto statsOnly = calibrateWindows(
            *reference, **tok, std::vector<TokenWindow>(windows->begin(), windows->begin() + 2),
            noHessian);
        QVERIFY(statsOnly.ok());
        auto noH = quantizeModel(*model, *gptqLayout, &*statsOnly);
        QVERIFY(!noH.ok());
        QVERIFY(noH.error().message.find("--hessian f32 or f64") != std::string::npos);

        auto quantizedLlama = [&](const QuantizedModel& q) {
            LlamaLoadOptions options;
            options.override =
                [&q](const TensorInfo& t) -> Result<std::optional<std::vector<float>>> {
                if (!q.find(t.name)) return std::optional<std::vector<float>>();
                auto w = dequantizedWeights(q, t.name);
                if (!w) return w.error();
                return std::optional<std::vector<float>>(std::move(w).value());
            };
            auto lm = LlamaModel::create(*model, options);
            if (!lm) qFatal("%s", lm.error().message.c_str());
            return std::move(lm).value();
        };

        for (const char* fmt : {"int4:g32", "int3:g32", "q4_0"}) {
            auto rtnLayout = Layout::parse(std::string("*=") + fmt);
            QVERIFY(rtnLayout.ok());
            auto rtn = quantizeModel(*model, *rtnLayout, &*calib);
            QVERIFY(rtn.ok());
            const Scores r = score(quantizedLlama(*rtn));

            auto layout = Layout::parse(std::string("*=") + fmt + ":gptq");
            QVERIFY(layout.ok());
            auto llama = LlamaModel::create(*model);
            QVERIFY(llama.ok());
            auto seq = quantizeModelSequential(*model, *llama, *windows, *layout);
            QVERIFY2(seq.ok(), seq.ok() ? "" : seq.error().message.c_str());
            const Scores g = score(*llama);
            qInfo("%-9s RTN ppl %.4f kl %.5f | GPTQ (true-sequential) ppl %.4f kl %.5f", fmt, r.ppl,
                  r.kl, g.ppl, g.kl);
            QVERIFY2(g.ppl < r.ppl, fmt);
            QVERIFY2(g.kl < r.kl, fmt);

            // Every linear layer ran GPTQ with a sequential Hessian and beat RTN on its own loss;
            // the LlamaModel holds exactly the decoded quantized weights.
            QVERIFY(seq->calibration.probes.size() >= std::size_t(3 * llama->config().blocks));
            for (const auto& probe : seq->calibration.probes)
                QCOMPARE(probe.stats.hessianPrecision(), HessianPrecision::Float64);
            int gptqTensors = 0;
            for (const auto& t : seq->model.tensors) {
                if (!t.report.gptq) continue;
                ++gptqTensors;
                QVERIFY(t.report.gptq->loss < t.report.gptq->rtnLoss);
                auto w = t.quantized.dequantize();
                QVERIFY(w.ok());
                const auto held = llama->weights().values(t.report.plan.name);
                QVERIFY(std::equal(held.begin(), held.end(), w->begin(), w->end()));
            }
            // 7 matrices per block; ffn_down (172 columns) falls back to a float for q4_0.
            QCOMPARE(gptqTensors,
                     int(llama->config().blocks) * (std::string(fmt) == "q4_0" ? 6 : 7));
            const TensorQuantization* embd = seq->model.find("token_embd.weight");
            QVERIFY(embd && !embd->report.gptq);
            QVERIFY(embd->report.note.find("quantized with rtn") != std::string::npos);

            if (std::string(fmt) == "int4:g32") {
                // GPTQ with the unquantized model's Hessians (a session) also beats RTN.
                auto plain = quantizeModel(*model, *layout, &*calib);
                QVERIFY2(plain.ok(), plain.ok() ? "" : plain.error().message.c_str());
                const Scores s = score(quantizedLlama(*plain));
                qInfo("%-9s GPTQ (session Hessians) ppl %.4f kl %.5f", fmt, s.ppl, s.kl);
                QVERIFY(s.ppl < r.ppl);
                QVERIFY(s.kl < r.kl);
            }
        }
    }
};

QTEST_APPLESS_MAIN(TestGptq)
#include "test_gptq.moc"
