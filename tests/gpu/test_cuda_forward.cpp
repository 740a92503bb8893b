// The CUDA forward pass (kernels/, issue #5) against the CPU reference (compute/cpu_ops.h,
// model/llama.h), on the GPU machine; every test skips where no CUDA device is present.
// - Every device op (kernels/ops.h wrappers around the runner's own kernels) against its cpu::
//   op on random inputs, F32 and BF16, with the tolerance stated in each row: F32 to float
//   rounding; BF16 against the CPU op run on the same bf16-rounded inputs, so the budget is the
//   output rounding (2^-9 relative) plus float32 accumulation order.
// - The same ops on real inputs: stories260K's weights and the activations its forward pass
//   produces (captured with a ForwardProbe).
// - Whole models: stories260K's logits (batch of 2 sequences) F32 and BF16 against
//   LlamaModel::logits; synthetic Hugging Face folders with head dimension 64 and 128 (GQA, q/k/v
//   biases, half-split RoPE, tied and untied heads: the flash kernel's path in BF16).
// - Perplexity on wikitext-2 (ctx 512, llama.cpp protocol): F32 equal to the CPU figure within
//   1e-4 relative, BF16 within 1%.
// - Errors: bad token ids, an impossible allocation (ErrorCode::OutOfMemory, the device usable
//   afterwards), unknown tensor names; replaceWeight equals a CPU model with the same weight.
#include <QTemporaryDir>
#include <QtTest>

#include <algorithm>
#include <cmath>
#include <future>
#include <random>
#include <thread>

#include "calib/calibrate.h"
#include "calib/dataset.h"
#include "compute/backend.h"
#include "compute/cpu_ops.h"
#include "io/model_loader.h"
#include "io/safetensors.h"
#include "model/llama.h"
#include "model/llama_runner.h"
#include "ops.h"
#include "quant/ggml_dequant.h"
#include "test_data.h"

using namespace ql;
using cuda::DType;

Q_DECLARE_METATYPE(cuda::DType)
Q_DECLARE_METATYPE(cuda::ops::Attention)
Q_DECLARE_METATYPE(ql::Precision)

namespace {

const char* kStoriesGguf = "models/stories260K/stories260K.gguf";
const char* kTinyStories = "text/eval/tinystories-valid-1000.txt";
const char* kWikitext = "text/eval/wikitext-2-raw-test.txt";

std::vector<float> randomVector(std::size_t n, unsigned seed, float scale = 1.0f)
{
    std::mt19937 rng(seed);
    std::normal_distribution<float> d(0.0f, scale);
    std::vector<float> v(n);
    for (float& x : v) x = d(rng);
    return v;
}

std::vector<float> roundedBf16(std::span<const float> x)
{
    std::vector<float> out(x.size());
    for (std::size_t i = 0; i < x.size(); ++i) out[i] = bf16ToFp32(fp32ToBf16(x[i]));
    return out;
}

// Inputs as the device sees them in `type`.
std::vector<float> asStored(std::span<const float> x, DType type)
{
    return type == DType::BF16 ? roundedBf16(x) : std::vector<float>(x.begin(), x.end());
}

Eigen::Map<const MatrixXfRowMajor> mat(const std::vector<float>& v, Eigen::Index rows,
                                       Eigen::Index cols)
{
    return Eigen::Map<const MatrixXfRowMajor>(v.data(), rows, cols);
}

std::vector<float> toVector(const MatrixXfRowMajor& m)
{
    return std::vector<float>(m.data(), m.data() + m.size());
}

// Checks |got - ref| <= atol + rtol·|ref| everywhere; the message names the worst element.
QString closeness(std::span<const float> got, std::span<const float> ref, double atol, double rtol,
                  bool* ok)
{
    *ok = got.size() == ref.size();
    if (!*ok) return QString("size %1, expected %2").arg(got.size()).arg(ref.size());
    double maxAbs = 0, worstExcess = -INFINITY;
    std::size_t worst = 0;
    for (std::size_t i = 0; i < got.size(); ++i) {
        const double d = std::fabs(double(got[i]) - double(ref[i]));
        if (!std::isfinite(double(got[i]))) {
            *ok = false;
            return QString("non-finite value at %1").arg(i);
        }
        maxAbs = std::max(maxAbs, d);
        const double excess = d - (atol + rtol * std::fabs(double(ref[i])));
        if (excess > worstExcess) {
            worstExcess = excess;
            worst = i;
        }
    }
    *ok = worstExcess <= 0;
    return QString("max |diff| %1; worst element %2: got %3, expected %4 (atol %5, rtol %6)")
        .arg(maxAbs, 0, 'g', 3)
        .arg(worst)
        .arg(got[worst], 0, 'g', 8)
        .arg(ref[worst], 0, 'g', 8)
        .arg(atol)
        .arg(rtol);
}

#define QL_VERIFY_OK(expr)                                                                     \
    do {                                                                                       \
        const auto& ql_r_ = (expr);                                                            \
        QVERIFY2(ql_r_.ok(),                                                                   \
                 ql_r_.ok() ? "" : qPrintable(QString::fromStdString(ql_r_.error().message))); \
    } while (0)

#define QL_EXPECT_CLOSE(got, ref, atol, rtol)                                     \
    do {                                                                          \
        bool ql_ok_ = false;                                                      \
        const QString ql_msg_ = closeness((got), (ref), (atol), (rtol), &ql_ok_); \
        if (ql_ok_) qInfo("%s", qPrintable(ql_msg_));                             \
        QVERIFY2(ql_ok_, qPrintable(ql_msg_));                                    \
    } while (0)

// The CPU reference of the device attention: cpu::attention per sequence from position 0.
std::vector<float> cpuAttention(const std::vector<float>& q, const std::vector<float>& k,
                                const std::vector<float>& v, std::int64_t batch, std::int64_t T,
                                std::int64_t heads, std::int64_t kvHeads, std::int64_t D)
{
    const std::int64_t qDim = heads * D, kvDim = kvHeads * D;
    MatrixXfRowMajor out(batch * T, qDim);
    for (std::int64_t b = 0; b < batch; ++b) {
        auto qs = mat(q, batch * T, qDim).middleRows(b * T, T);
        auto ks = mat(k, batch * T, kvDim).middleRows(b * T, T);
        auto vs = mat(v, batch * T, kvDim).middleRows(b * T, T);
        MatrixXfRowMajor o(T, qDim);
        auto st = cpu::attention(qs, ks, vs, heads, kvHeads, D, 0, o);
        if (!st) qFatal("cpu::attention failed: %s", st.error().message.c_str());
        out.middleRows(b * T, T) = o;
    }
    return toVector(out);
}

// Captures the inputs of block 0's linear layers and block 0's output.
struct CaptureProbe : ForwardProbe {
    MatrixXfRowMajor qkvInput, attnOutput, ffnDownInput, block0Output;
    void onLinearInput(int block, LinearGroup group,
                       const Eigen::Ref<const MatrixXfRowMajor>& x) override
    {
        if (block != 0) return;
        if (group == LinearGroup::AttnQkv) qkvInput = x;
        if (group == LinearGroup::AttnOutput) attnOutput = x;
        if (group == LinearGroup::FfnDown) ffnDownInput = x;
    }
    void onBlockOutput(int block, const Eigen::Ref<const MatrixXfRowMajor>& hidden) override
    {
        if (block == 0) block0Output = hidden;
    }
};

// A random model written as a Hugging Face folder (half-split RoPE on load).
struct SyntheticSpec {
    const char* architecture;
    std::int64_t dim, ffn, heads, kvHeads, headDim, vocab, blocks;
    bool tied, bias;
};

Status writeSynthetic(const std::string& dir, const SyntheticSpec& s)
{
    HyperParams hp;
    hp.architecture = s.architecture;
    hp.blockCount = s.blocks;
    hp.embeddingDim = s.dim;
    hp.ffnDim = s.ffn;
    hp.headCount = s.heads;
    hp.headCountKv = s.kvHeads;
    hp.headDim = s.headDim;
    hp.vocabSize = s.vocab;
    hp.contextLength = 4096;
    hp.rmsNormEps = 1e-5;
    hp.ropeTheta = 10000.0;
    hp.tiedEmbeddings = s.tied;
    hp.attentionBias = s.bias;
    std::vector<SafetensorsTensorSpec> specs;
    std::vector<float> scales;  // per tensor: 0 marks a norm gain
    auto add = [&](std::string name, std::vector<std::int64_t> shape, float scale) {
        specs.push_back({std::move(name), std::move(shape)});
        scales.push_back(scale);
    };
    const std::int64_t q = s.heads * s.headDim, kv = s.kvHeads * s.headDim;
    add("token_embd.weight", {s.vocab, s.dim}, 1.0f);
    for (std::int64_t b = 0; b < s.blocks; ++b) {
        const std::string p = "blk." + std::to_string(b) + ".";
        add(p + "attn_norm.weight", {s.dim}, 0);
        add(p + "attn_q.weight", {q, s.dim}, 1.0f / std::sqrt(float(s.dim)));
        add(p + "attn_k.weight", {kv, s.dim}, 1.0f / std::sqrt(float(s.dim)));
        add(p + "attn_v.weight", {kv, s.dim}, 1.0f / std::sqrt(float(s.dim)));
        if (s.bias) {
            add(p + "attn_q.bias", {q}, 0.3f);
            add(p + "attn_k.bias", {kv}, 0.3f);
            add(p + "attn_v.bias", {kv}, 0.3f);
        }
        add(p + "attn_output.weight", {s.dim, q}, 1.0f / std::sqrt(float(q)));
        add(p + "ffn_norm.weight", {s.dim}, 0);
        add(p + "ffn_gate.weight", {s.ffn, s.dim}, 1.0f / std::sqrt(float(s.dim)));
        add(p + "ffn_up.weight", {s.ffn, s.dim}, 1.0f / std::sqrt(float(s.dim)));
        add(p + "ffn_down.weight", {s.dim, s.ffn}, 1.0f / std::sqrt(float(s.ffn)));
    }
    add("output_norm.weight", {s.dim}, 0);
    if (!s.tied) add("output.weight", {s.vocab, s.dim}, 1.0f / std::sqrt(float(s.dim)));
    return writeSafetensorsStream(
        dir, hp, specs, TensorType::F32,
        [&](std::size_t index, std::int64_t first, std::span<float> out) -> Status {
            std::mt19937 rng(unsigned(index * 7919 + std::size_t(first)));
            std::normal_distribution<float> d(0.0f, 1.0f);
            for (float& x : out)
                x = scales[index] == 0 ? 1.0f + 0.1f * d(rng) : scales[index] * d(rng);
            return {};
        });
}

struct CompareFigures {
    double maxAbs = 0, relRms = 0, sameTop = 0;
};

// Logits of `runner` (batch of sequences) against LlamaModel::logits of each sequence.
CompareFigures compareLogits(ModelRunner& runner, const LlamaModel& cpu,
                             const std::vector<std::vector<TokenId>>& seqs, bool* ok,
                             std::vector<float>* gotAll = nullptr,
                             std::vector<float>* refAll = nullptr)
{
    *ok = false;
    const std::int64_t T = std::int64_t(seqs[0].size());
    const std::int64_t V = cpu.config().vocab;
    std::vector<TokenId> flat;
    for (const auto& s : seqs) flat.insert(flat.end(), s.begin(), s.end());
    std::vector<float> got(flat.size() * std::size_t(V), NAN);
    std::int64_t calls = 0, lastIndex = -1;
    bool ordered = true;
    auto st = runner.forward(flat, std::int64_t(seqs.size()),
                             [&](std::int64_t seq, std::int32_t pos, std::span<const float> l) {
                                 const std::int64_t index = seq * T + pos;
                                 ordered = ordered && index == lastIndex + 1;
                                 lastIndex = index;
                                 ++calls;
                                 std::copy(l.begin(), l.end(), got.begin() + index * V);
                             });
    if (!st) {
        qWarning("forward failed: %s", st.error().message.c_str());
        return {};
    }
    if (calls != std::int64_t(flat.size()) || !ordered) {
        qWarning("logits callback: %lld calls, in order: %d", (long long)calls, int(ordered));
        return {};
    }
    std::vector<float> ref;
    for (const auto& s : seqs) {
        auto l = cpu.logits(s);
        if (!l) return {};
        const MatrixXfRowMajor rm = *l;
        ref.insert(ref.end(), rm.data(), rm.data() + rm.size());
    }
    CompareFigures f;
    double sumSq = 0, refSq = 0;
    std::int64_t same = 0;
    for (std::size_t i = 0; i < got.size(); ++i) {
        const double d = double(got[i]) - ref[i];
        f.maxAbs = std::max(f.maxAbs, std::fabs(d));
        sumSq += d * d;
        refSq += double(ref[i]) * ref[i];
    }
    for (std::size_t r = 0; r < flat.size(); ++r) {
        auto g = got.begin() + std::ptrdiff_t(r * V), e = ref.begin() + std::ptrdiff_t(r * V);
        same += std::max_element(g, g + V) - g == std::max_element(e, e + V) - e;
    }
    f.relRms = std::sqrt(sumSq / std::max(refSq, 1e-30));
    f.sameTop = double(same) / double(flat.size());
    *ok = std::isfinite(f.maxAbs);
    if (gotAll) *gotAll = std::move(got);
    if (refAll) *refAll = std::move(ref);
    return f;
}

}  // namespace

class TestCudaForward : public QObject {
    Q_OBJECT
private slots:
    void initTestCase()
    {
        auto st = cuda::ops::available();
        if (!st)
            QSKIP(
                qPrintable("no usable CUDA device: " + QString::fromStdString(st.error().message)));
        const auto gpus = listGpus();
        if (!gpus.empty()) qInfo("GPU: %s, sm_%d", gpus[0].name.c_str(), gpus[0].computeCapability);
    }

    // --- ops, random inputs ---------------------------------------------------------------

    void rmsNorm_data()
    {
        QTest::addColumn<int>("rows");
        QTest::addColumn<int>("cols");
        QTest::addColumn<DType>("type");
        QTest::addColumn<double>("atol");
        QTest::addColumn<double>("rtol");
        QTest::newRow("17x64 f32") << 17 << 64 << DType::F32 << 1e-6 << 2e-6;
        QTest::newRow("512x2048 f32") << 512 << 2048 << DType::F32 << 1e-6 << 2e-6;
        QTest::newRow("300x4096 bf16 (cast fused)") << 300 << 4096 << DType::BF16 << 1e-6 << 4e-3;
    }
    void rmsNorm()
    {
        QFETCH(int, rows);
        QFETCH(int, cols);
        QFETCH(DType, type);
        QFETCH(double, atol);
        QFETCH(double, rtol);
        const auto x = randomVector(std::size_t(rows) * cols, 1, 3.0f);
        const auto w = randomVector(std::size_t(cols), 2);
        auto got = cuda::ops::rmsNorm(x, rows, w, 1e-5f, type);
        QL_VERIFY_OK(got);
        MatrixXfRowMajor ref(rows, cols);
        cpu::rmsNorm(mat(x, rows, cols), Eigen::Map<const Eigen::VectorXf>(w.data(), cols), 1e-5f,
                     ref);
        QL_EXPECT_CLOSE(*got, toVector(ref), atol, rtol);
    }

    void linear_data()
    {
        QTest::addColumn<int>("rows");
        QTest::addColumn<int>("in");
        QTest::addColumn<int>("out");
        QTest::addColumn<bool>("bias");
        QTest::addColumn<DType>("type");
        // Different summation orders: error ~ eps·K for outputs of size ~sqrt(K).
        QTest::newRow("37x256 -> 96 f32") << 37 << 256 << 96 << false << DType::F32;
        QTest::newRow("512x1024 -> 384 f32 + bias") << 512 << 1024 << 384 << true << DType::F32;
        QTest::newRow("37x256 -> 96 bf16") << 37 << 256 << 96 << false << DType::BF16;
        QTest::newRow("1024x2048 -> 1536 bf16 + bias")
            << 1024 << 2048 << 1536 << true << DType::BF16;
    }
    void linear()
    {
        QFETCH(int, rows);
        QFETCH(int, in);
        QFETCH(int, out);
        QFETCH(bool, bias);
        QFETCH(DType, type);
        const auto x = randomVector(std::size_t(rows) * in, 3);
        const auto w = randomVector(std::size_t(out) * in, 4);
        const auto b = bias ? randomVector(std::size_t(out), 5) : std::vector<float>();
        auto got = cuda::ops::linear(x, rows, w, out, b, type);
        QL_VERIFY_OK(got);
        // BF16: the GEMM reads bf16 operands and accumulates in float32; so does the reference.
        const auto xs = asStored(x, type), ws = asStored(w, type);
        MatrixXfRowMajor ref(rows, out);
        Eigen::VectorXf bv = bias
                                 ? Eigen::VectorXf(Eigen::Map<const Eigen::VectorXf>(b.data(), out))
                                 : Eigen::VectorXf();
        cpu::linear(mat(xs, rows, in), mat(ws, out, in), bias ? &bv : nullptr, ref);
        QL_EXPECT_CLOSE(*got, toVector(ref), 2e-7 * in, 1e-5);
    }

    void rope_data()
    {
        QTest::addColumn<bool>("halfSplit");
        QTest::addColumn<double>("magnitude");
        QTest::addColumn<DType>("type");
        QTest::addColumn<double>("rtol");
        QTest::newRow("adjacent f32") << false << 1.0 << DType::F32 << 1e-6;
        QTest::newRow("half-split f32, magnitude 1.2") << true << 1.2 << DType::F32 << 1e-6;
        QTest::newRow("adjacent bf16") << false << 1.0 << DType::BF16 << 4e-3;
        QTest::newRow("half-split bf16") << true << 1.0 << DType::BF16 << 4e-3;
    }
    void rope()
    {
        QFETCH(bool, halfSplit);
        QFETCH(double, magnitude);
        QFETCH(DType, type);
        QFETCH(double, rtol);
        const std::int64_t batch = 2, T = 100, heads = 4, D = 64;
        RopeParams p;
        p.headDim = D;
        p.theta = 500000.0;
        p.scaling = "llama3";
        p.factor = 8;
        p.originalContext = 64;
        auto freqs = ropeFrequencies(p);
        QL_VERIFY_OK(freqs);
        freqs->magnitude = magnitude;
        freqs->style = halfSplit ? RopeStyle::HalfSplit : RopeStyle::AdjacentPairs;
        const auto x = randomVector(std::size_t(batch * T * heads * D), 6);
        auto got =
            cuda::ops::rope(x, batch * T, heads, D, freqs->invFreq, magnitude, halfSplit, T, type);
        QL_VERIFY_OK(got);
        const auto xs = asStored(x, type);
        MatrixXfRowMajor ref = mat(xs, batch * T, heads * D);
        const RopeTable table = makeRopeTable(*freqs, 0, T);
        for (std::int64_t b = 0; b < batch; ++b)
            cpu::applyRope(ref.middleRows(b * T, T), heads, D, table);
        QL_EXPECT_CLOSE(*got, toVector(ref), 1e-6, rtol);
    }

    void attention_data()
    {
        QTest::addColumn<int>("batch");
        QTest::addColumn<int>("seqLen");
        QTest::addColumn<int>("heads");
        QTest::addColumn<int>("kvHeads");
        QTest::addColumn<int>("headDim");
        QTest::addColumn<DType>("type");
        QTest::addColumn<cuda::ops::Attention>("kernel");
        QTest::addColumn<double>("atol");
        QTest::addColumn<double>("rtol");
        using A = cuda::ops::Attention;
        // F32: softmax and GEMM summation order only. BF16: P and the output are rounded to
        // bf16 (2^-9 relative each) against a float reference on the same bf16 q/k/v.
        QTest::newRow("1x7, 4/2 heads of 8, f32 cuBLAS")
            << 1 << 7 << 4 << 2 << 8 << DType::F32 << A::Blas << 1e-5 << 1e-4;
        QTest::newRow("2x130, 8/2 heads of 64, f32 cuBLAS")
            << 2 << 130 << 8 << 2 << 64 << DType::F32 << A::Blas << 1e-5 << 1e-4;
        QTest::newRow("2x130, 8/2 heads of 64, bf16 cuBLAS")
            << 2 << 130 << 8 << 2 << 64 << DType::BF16 << A::Blas << 1e-2 << 8e-3;
        QTest::newRow("2x130, 8/2 heads of 64, bf16 flash")
            << 2 << 130 << 8 << 2 << 64 << DType::BF16 << A::Flash << 1e-2 << 8e-3;
        QTest::newRow("1x300, 4/4 heads of 128, bf16 flash")
            << 1 << 300 << 4 << 4 << 128 << DType::BF16 << A::Flash << 1e-2 << 8e-3;
        QTest::newRow("3x64, 2/1 heads of 32, bf16 flash")
            << 3 << 64 << 2 << 1 << 32 << DType::BF16 << A::Flash << 1e-2 << 8e-3;
        QTest::newRow("1x2048, 32/8 heads of 64 (Llama-3.2-1B), bf16 flash")
            << 1 << 2048 << 32 << 8 << 64 << DType::BF16 << A::Flash << 1e-2 << 8e-3;
        QTest::newRow("1x2048, 32/8 heads of 64 (Llama-3.2-1B), bf16 cuBLAS")
            << 1 << 2048 << 32 << 8 << 64 << DType::BF16 << A::Blas << 1e-2 << 8e-3;
        QTest::newRow("1x1000, 8/2 heads of 128, f32 cuBLAS")
            << 1 << 1000 << 8 << 2 << 128 << DType::F32 << A::Blas << 1e-5 << 1e-4;
    }
    void attention()
    {
        QFETCH(int, batch);
        QFETCH(int, seqLen);
        QFETCH(int, heads);
        QFETCH(int, kvHeads);
        QFETCH(int, headDim);
        QFETCH(DType, type);
        QFETCH(cuda::ops::Attention, kernel);
        QFETCH(double, atol);
        QFETCH(double, rtol);
        const std::size_t rows = std::size_t(batch) * seqLen;
        // q scaled so that softmax is neither flat nor one-hot.
        const auto q = randomVector(rows * heads * headDim, 7, 1.5f);
        const auto k = randomVector(rows * kvHeads * headDim, 8);
        const auto v = randomVector(rows * kvHeads * headDim, 9);
        auto got =
            cuda::ops::attention(q, k, v, batch, seqLen, heads, kvHeads, headDim, type, kernel);
        QL_VERIFY_OK(got);
        const auto ref = cpuAttention(asStored(q, type), asStored(k, type), asStored(v, type),
                                      batch, seqLen, heads, kvHeads, headDim);
        QL_EXPECT_CLOSE(*got, ref, atol, rtol);
    }

    void flashRefusesUnsupportedShapes()
    {
        const auto q = randomVector(10 * 2 * 8, 1), k = randomVector(10 * 8, 2);
        auto r =
            cuda::ops::attention(q, k, k, 1, 10, 2, 1, 8, DType::BF16, cuda::ops::Attention::Flash);
        QVERIFY(!r.ok());
        QCOMPARE(r.error().code, ErrorCode::Unsupported);
        // Auto falls back to cuBLAS for head dimension 8.
        auto a =
            cuda::ops::attention(q, k, k, 1, 10, 2, 1, 8, DType::BF16, cuda::ops::Attention::Auto);
        QL_VERIFY_OK(a);
    }

    void swiglu_data()
    {
        QTest::addColumn<DType>("type");
        QTest::addColumn<double>("rtol");
        QTest::newRow("f32") << DType::F32 << 1e-6;
        QTest::newRow("bf16") << DType::BF16 << 4e-3;
    }
    void swiglu()
    {
        QFETCH(DType, type);
        QFETCH(double, rtol);
        const int rows = 77, cols = 1000;
        const auto g = randomVector(std::size_t(rows) * cols, 10, 4.0f);
        const auto u = randomVector(std::size_t(rows) * cols, 11);
        auto got = cuda::ops::swiglu(g, u, rows, cols, type);
        QL_VERIFY_OK(got);
        const auto gs = asStored(g, type), us = asStored(u, type);
        MatrixXfRowMajor ref(rows, cols);
        cpu::swiglu(mat(gs, rows, cols), mat(us, rows, cols), ref);
        QL_EXPECT_CLOSE(*got, toVector(ref), 1e-6, rtol);
    }

    void embedding_data()
    {
        QTest::addColumn<DType>("type");
        QTest::newRow("f32 table") << DType::F32;
        QTest::newRow("bf16 table") << DType::BF16;
    }
    void embedding()
    {
        QFETCH(DType, type);
        const int vocab = 1000, dim = 96;
        const auto table = randomVector(std::size_t(vocab) * dim, 12);
        std::vector<std::int32_t> ids{0, 999, 5, 5, 123, 998, 1};
        auto got = cuda::ops::embedding(table, dim, ids, type);
        QL_VERIFY_OK(got);
        const auto ts = asStored(table, type);
        MatrixXfRowMajor ref(Eigen::Index(ids.size()), dim);
        QL_VERIFY_OK(cpu::embeddingLookup(mat(ts, vocab, dim), ids, ref));
        QL_EXPECT_CLOSE(*got, toVector(ref), 0.0, 0.0);  // a copy: exact
        const std::int32_t bad[] = {1000};
        QVERIFY(!cuda::ops::embedding(table, dim, bad, type).ok());
    }

    // --- ops, real inputs (stories260K) ------------------------------------------------------

    void realInputs()
    {
        QL_REQUIRE_DATA(kStoriesGguf);
        QL_REQUIRE_DATA(kTinyStories);
        auto model = openModel(test::dataPath(kStoriesGguf));
        QL_VERIFY_OK(model);
        auto llama = LlamaModel::create(*model);
        QL_VERIFY_OK(llama);
        auto tok = Tokenizer::create(*model);
        QL_VERIFY_OK(tok);
        auto text = readTextFile(test::dataPath(kTinyStories));
        QL_VERIFY_OK(text);
        const auto chunks = makeLlamaCppChunks(**tok, *text, 256, 1);
        QVERIFY(!chunks.empty());
        const std::vector<TokenId>& tokens = chunks[0].tokens;
        CaptureProbe probe;
        QL_VERIFY_OK(llama->logits(tokens, {}, &probe));
        const LlamaConfig& c = llama->config();
        const std::int64_t T = std::int64_t(tokens.size());
        const LlamaBlockWeights& b0 = llama->weights().block(0);
        const LlamaBlockWeights& b1 = llama->weights().block(1);

        // RMSNorm of block 1's input (block 0's output) with block 1's gain.
        const auto x1 = toVector(probe.block0Output);
        const std::vector<float> gain(b1.attnNorm.data(), b1.attnNorm.data() + c.dim);
        auto normed = cuda::ops::rmsNorm(x1, T, gain, c.rmsNormEps, DType::F32);
        QL_VERIFY_OK(normed);
        MatrixXfRowMajor refNorm(T, c.dim);
        cpu::rmsNorm(probe.block0Output, b1.attnNorm, c.rmsNormEps, refNorm);
        QL_EXPECT_CLOSE(*normed, toVector(refNorm), 1e-6, 2e-6);

        // q/k projections of block 0 on its real input, then RoPE and attention on real q/k/v.
        const auto h = toVector(probe.qkvInput);
        const std::int64_t qDim = c.heads * c.headDim, kvDim = c.kvHeads * c.headDim;
        auto q = cuda::ops::linear(h, T, toVector(b0.wq), qDim, {}, DType::F32);
        QL_VERIFY_OK(q);
        MatrixXfRowMajor refQ(T, qDim), refK(T, kvDim), refV(T, kvDim);
        cpu::linear(probe.qkvInput, b0.wq, nullptr, refQ);
        cpu::linear(probe.qkvInput, b0.wk, nullptr, refK);
        cpu::linear(probe.qkvInput, b0.wv, nullptr, refV);
        QL_EXPECT_CLOSE(*q, toVector(refQ), 2e-7 * c.dim, 1e-5);
        const RopeTable table = makeRopeTable(c.rope, 0, T);
        auto rq =
            cuda::ops::rope(toVector(refQ), T, c.heads, c.headDim, c.rope.invFreq, c.rope.magnitude,
                            c.rope.style == RopeStyle::HalfSplit, T, DType::F32);
        QL_VERIFY_OK(rq);
        cpu::applyRope(refQ, c.heads, c.headDim, table);
        cpu::applyRope(refK, c.kvHeads, c.headDim, table);
        QL_EXPECT_CLOSE(*rq, toVector(refQ), 1e-6, 1e-6);
        for (DType type : {DType::F32, DType::BF16}) {
            auto att =
                cuda::ops::attention(toVector(refQ), toVector(refK), toVector(refV), 1, T, c.heads,
                                     c.kvHeads, c.headDim, type, cuda::ops::Attention::Auto);
            QL_VERIFY_OK(att);
            if (type == DType::F32) {
                // The probe saw exactly what the CPU attention produced.
                QL_EXPECT_CLOSE(*att, toVector(probe.attnOutput), 1e-5, 1e-4);
            } else {
                const auto ref =
                    cpuAttention(roundedBf16(toVector(refQ)), roundedBf16(toVector(refK)),
                                 roundedBf16(toVector(refV)), 1, T, c.heads, c.kvHeads, c.headDim);
                QL_EXPECT_CLOSE(*att, ref, 1e-2, 8e-3);
            }
        }
        // SwiGLU's output is block 0's ffn_down input.
        MatrixXfRowMajor hf(T, c.dim), g(T, c.ffnDim), u(T, c.ffnDim);
        cpu::rmsNorm(probe.qkvInput, b0.ffnNorm, c.rmsNormEps, hf);  // any real activation
        cpu::linear(hf, b0.gate, nullptr, g);
        cpu::linear(hf, b0.up, nullptr, u);
        auto sw = cuda::ops::swiglu(toVector(g), toVector(u), T, c.ffnDim, DType::F32);
        QL_VERIFY_OK(sw);
        MatrixXfRowMajor refSw(T, c.ffnDim);
        cpu::swiglu(g, u, refSw);
        QL_EXPECT_CLOSE(*sw, toVector(refSw), 1e-6, 1e-6);
    }

    // --- whole models ------------------------------------------------------------------------

    void storiesLogits_data()
    {
        QTest::addColumn<Precision>("precision");
        QTest::addColumn<double>("maxAbs");
        QTest::addColumn<double>("relRms");
        QTest::addColumn<double>("sameTop");
        // F32: float rounding only. BF16: every weight and GEMM input rounded to bf16; measured
        // on the H100 (issue #5): max |diff| 0.60 on logits of magnitude ~15, relative RMS
        // 5.3e-3, top-1 kept at 99.0% of positions. F32 measured: 3.5e-5, 3.8e-7, 100%.
        QTest::newRow("f32") << Precision::Float32 << 1e-3 << 1e-5 << 1.0;
        QTest::newRow("bf16") << Precision::BFloat16 << 1.0 << 2e-2 << 0.97;
    }
    void storiesLogits()
    {
        QFETCH(Precision, precision);
        QFETCH(double, maxAbs);
        QFETCH(double, relRms);
        QFETCH(double, sameTop);
        QL_REQUIRE_DATA(kStoriesGguf);
        QL_REQUIRE_DATA(kTinyStories);
        auto model = openModel(test::dataPath(kStoriesGguf));
        QL_VERIFY_OK(model);
        auto llama = LlamaModel::create(*model);
        QL_VERIFY_OK(llama);
        auto tok = Tokenizer::create(*model);
        QL_VERIFY_OK(tok);
        auto text = readTextFile(test::dataPath(kTinyStories));
        QL_VERIFY_OK(text);
        const auto chunks = makeLlamaCppChunks(**tok, *text, 256, 2);
        QCOMPARE(chunks.size(), std::size_t(2));
        auto backend = createBackend(BackendKind::Cuda);
        QL_VERIFY_OK(backend);
        auto runner = createLlamaRunner(**backend, *llama, precision);
        QL_VERIFY_OK(runner);
        QVERIFY((*runner)->device().isGpu);
        bool ok = false;
        const auto f = compareLogits(**runner, *llama, {chunks[0].tokens, chunks[1].tokens}, &ok);
        QVERIFY(ok);
        qInfo("%s: max |diff| %.3g, relative RMS %.3g, same top-1 %.4f, runner peak %.2f MiB",
              precisionName(precision), f.maxAbs, f.relRms, f.sameTop,
              double((*runner)->peakMemoryBytes()) / (1 << 20));
        QVERIFY2(f.maxAbs <= maxAbs, qPrintable(QString::number(f.maxAbs)));
        QVERIFY2(f.relRms <= relRms, qPrintable(QString::number(f.relRms)));
        QVERIFY2(f.sameTop >= sameTop, qPrintable(QString::number(f.sameTop)));
    }

    // Weights streamed block by block give the resident runner's logits exactly (the same
    // kernels on the same rows); a small memory limit makes Auto stream; replaceWeight reaches a
    // streamed block.
    void streamedMatchesResident_data()
    {
        QTest::addColumn<Precision>("precision");
        QTest::newRow("f32") << Precision::Float32;
        QTest::newRow("bf16") << Precision::BFloat16;
    }
    void streamedMatchesResident()
    {
        QFETCH(Precision, precision);
        QL_REQUIRE_DATA(kStoriesGguf);
        QL_REQUIRE_DATA(kTinyStories);
        auto model = openModel(test::dataPath(kStoriesGguf));
        QL_VERIFY_OK(model);
        auto llama = LlamaModel::create(*model);
        QL_VERIFY_OK(llama);
        auto tok = Tokenizer::create(*model);
        QL_VERIFY_OK(tok);
        auto text = readTextFile(test::dataPath(kTinyStories));
        QL_VERIFY_OK(text);
        const auto chunks = makeLlamaCppChunks(**tok, *text, 256, 3);
        QCOMPARE(chunks.size(), std::size_t(3));
        std::vector<TokenId> tokens;
        for (const auto& c : chunks) tokens.insert(tokens.end(), c.tokens.begin(), c.tokens.end());
        auto backend = createBackend(BackendKind::Cuda);
        QL_VERIFY_OK(backend);
        auto resident = createLlamaRunner(**backend, *llama, precision);
        QL_VERIFY_OK(resident);
        QVERIFY(!(*resident)->streamsWeights());
        RunnerOptions small;
        small.memoryLimit = 1 << 20;  // 1 MiB: nothing fits, Auto streams
        auto streamed = createLlamaRunner(**backend, *llama, precision, small);
        QL_VERIFY_OK(streamed);
        QVERIFY((*streamed)->streamsWeights());
        const std::size_t vocab = std::size_t(llama->config().vocab);
        auto logitsOf = [&](ModelRunner& r) {
            std::vector<float> all(tokens.size() * vocab);
            const std::int64_t T = std::int64_t(chunks[0].tokens.size());
            auto st = r.forward(tokens, 3,
                                [&](std::int64_t seq, std::int32_t pos, std::span<const float> l) {
                                    std::copy(l.begin(), l.end(),
                                              all.begin() + (seq * T + pos) * std::int64_t(vocab));
                                });
            return st ? all : std::vector<float>();
        };
        const auto a = logitsOf(**resident);
        const auto b = logitsOf(**streamed);
        QVERIFY(!a.empty() && a.size() == b.size());
        double maxDiff = 0;
        for (std::size_t i = 0; i < a.size(); ++i)
            maxDiff = std::max(maxDiff, double(std::abs(a[i] - b[i])));
        qInfo("%s: streamed vs resident max |diff| %.3g; peak %.2f vs %.2f MiB",
              precisionName(precision), maxDiff, double((*streamed)->peakMemoryBytes()) / (1 << 20),
              double((*resident)->peakMemoryBytes()) / (1 << 20));
        QVERIFY2(maxDiff <= 1e-6, qPrintable(QString::number(maxDiff)));
        // A replaced block weight reaches the next streamed forward, as on the resident runner.
        const auto& w = llama->weights().block(1).wo;
        std::vector<float> zero(std::size_t(w.size()), 0.0f);
        QL_VERIFY_OK((*resident)->replaceWeight("blk.1.attn_output.weight", zero));
        QL_VERIFY_OK((*streamed)->replaceWeight("blk.1.attn_output.weight", zero));
        const auto c = logitsOf(**resident);
        const auto d = logitsOf(**streamed);
        double changed = 0, diff = 0;
        for (std::size_t i = 0; i < c.size(); ++i) {
            changed = std::max(changed, double(std::abs(c[i] - a[i])));
            diff = std::max(diff, double(std::abs(c[i] - d[i])));
        }
        QVERIFY(changed > 1e-3);
        QVERIFY2(diff <= 1e-6, qPrintable(QString::number(diff)));
    }

    void syntheticModels_data()
    {
        QTest::addColumn<QString>("arch");
        QTest::addColumn<int>("headDim");
        QTest::addColumn<int>("heads");
        QTest::addColumn<int>("kvHeads");
        QTest::addColumn<bool>("tied");
        QTest::addColumn<bool>("bias");
        QTest::addColumn<Precision>("precision");
        QTest::addColumn<double>("relRms");
        QTest::newRow("qwen2: biases, 4/2 heads of 64, untied, f32")
            << "qwen2" << 64 << 4 << 2 << false << true << Precision::Float32 << 1e-5;
        QTest::newRow("qwen2: biases, 4/2 heads of 64, untied, bf16 (flash)")
            << "qwen2" << 64 << 4 << 2 << false << true << Precision::BFloat16 << 3e-2;
        QTest::newRow("llama: 4/1 heads of 128, tied, f32")
            << "llama" << 128 << 4 << 1 << true << false << Precision::Float32 << 1e-5;
        QTest::newRow("llama: 4/1 heads of 128, tied, bf16 (flash)")
            << "llama" << 128 << 4 << 1 << true << false << Precision::BFloat16 << 3e-2;
    }
    void syntheticModels()
    {
        QFETCH(QString, arch);
        QFETCH(int, headDim);
        QFETCH(int, heads);
        QFETCH(int, kvHeads);
        QFETCH(bool, tied);
        QFETCH(bool, bias);
        QFETCH(Precision, precision);
        QFETCH(double, relRms);
        QTemporaryDir dir;
        QVERIFY(dir.isValid());
        const std::string archName = arch.toStdString();
        const SyntheticSpec spec{archName.c_str(),
                                 std::int64_t(heads) * headDim,
                                 768,
                                 heads,
                                 kvHeads,
                                 headDim,
                                 500,
                                 2,
                                 tied,
                                 bias};
        QL_VERIFY_OK(writeSynthetic(dir.path().toStdString(), spec));
        auto model = openModel(dir.path().toStdString());
        QL_VERIFY_OK(model);
        auto llama = LlamaModel::create(*model);
        QL_VERIFY_OK(llama);
        QCOMPARE(llama->config().attentionBias, bias);
        QCOMPARE(llama->config().tiedOutput, tied);
        QCOMPARE(int(llama->config().rope.style), int(RopeStyle::HalfSplit));
        auto backend = createBackend(BackendKind::Cuda);
        QL_VERIFY_OK(backend);
        auto runner = createLlamaRunner(**backend, *llama, precision);
        QL_VERIFY_OK(runner);
        std::mt19937 rng(3);
        std::vector<std::vector<TokenId>> seqs(2, std::vector<TokenId>(200));
        for (auto& s : seqs)
            for (auto& t : s) t = TokenId(rng() % 500);
        bool ok = false;
        const auto f = compareLogits(**runner, *llama, seqs, &ok);
        QVERIFY(ok);
        qInfo("max |diff| %.3g, relative RMS %.3g, same top-1 %.4f", f.maxAbs, f.relRms, f.sameTop);
        QVERIFY2(f.relRms <= relRms, qPrintable(QString::number(f.relRms)));
    }

    // --- errors and weight replacement -------------------------------------------------------

    void errors()
    {
        QL_REQUIRE_DATA(kStoriesGguf);
        auto model = openModel(test::dataPath(kStoriesGguf));
        QL_VERIFY_OK(model);
        auto llama = LlamaModel::create(*model);
        QL_VERIFY_OK(llama);
        auto backend = createBackend(BackendKind::Cuda);
        QL_VERIFY_OK(backend);
        auto runner = createLlamaRunner(**backend, *llama, Precision::Float32);
        QL_VERIFY_OK(runner);
        const std::vector<TokenId> bad{1, 2, 512};
        auto st = (*runner)->forward(bad, 1, {});
        QVERIFY(!st.ok());
        QCOMPARE(st.error().code, ErrorCode::InvalidArgument);
        const std::vector<TokenId> three{1, 2, 3};
        QCOMPARE((*runner)->forward(three, 2, {}).error().code, ErrorCode::InvalidArgument);
        QCOMPARE(
            (*runner)->replaceWeight("blk.99.attn_q.weight", std::vector<float>(4)).error().code,
            ErrorCode::InvalidArgument);
        QCOMPARE((*runner)->replaceWeight("output.weight", std::vector<float>(4)).error().code,
                 ErrorCode::InvalidArgument);  // stories260K's head is tied
        RunnerStatsOptions tooMany;  // the GPU keeps at most 1024 top activations per probe
        tooMany.topK = 5000;
        QVERIFY(!(*runner)->enableStats(tooMany).ok());

        // A model far beyond any GPU: an error to read, and the device still works afterwards.
        LlamaWeightsView huge;
        huge.shape = shapeOf(llama->config());
        huge.shape.vocab = std::int64_t(1) << 30;
        huge.shape.dim = 4096;
        huge.shape.blocks = 1;
        huge.blocks.resize(1);
        auto oom = (*backend)->createRunner(huge, Precision::Float32, RunnerOptions{});
        QVERIFY(!oom.ok());
        QCOMPARE(oom.error().code, ErrorCode::OutOfMemory);
        qInfo("%s", oom.error().message.c_str());
        const std::vector<TokenId> ok{1, 2, 3};
        QL_VERIFY_OK((*runner)->forward(ok, 1, {}));
    }

    void replaceWeight()
    {
        QL_REQUIRE_DATA(kStoriesGguf);
        auto model = openModel(test::dataPath(kStoriesGguf));
        QL_VERIFY_OK(model);
        auto llama = LlamaModel::create(*model);
        QL_VERIFY_OK(llama);
        auto backend = createBackend(BackendKind::Cuda);
        QL_VERIFY_OK(backend);
        for (Precision p : {Precision::Float32, Precision::BFloat16}) {
            auto runner = createLlamaRunner(**backend, *llama, p);
            QL_VERIFY_OK(runner);
            auto edited = LlamaModel::create(*model);
            QL_VERIFY_OK(edited);
            for (const char* name : {"blk.0.attn_k.weight", "blk.1.ffn_up.weight",
                                     "blk.2.attn_norm.weight", "token_embd.weight"}) {
                auto values = llama->weights().values(name);
                std::vector<float> changed(values.begin(), values.end());
                for (std::size_t i = 0; i < changed.size(); ++i)
                    changed[i] *= (i % 3 == 0) ? -0.5f : 1.25f;
                QL_VERIFY_OK(edited->weights().replaceWeights(name, changed));
                QL_VERIFY_OK((*runner)->replaceWeight(name, changed));
            }
            std::vector<TokenId> seq(100);
            for (std::size_t i = 0; i < seq.size(); ++i) seq[i] = TokenId((i * 37 + 1) % 512);
            bool ok = false;
            const auto f = compareLogits(**runner, *edited, {seq}, &ok);
            QVERIFY(ok);
            qInfo("%s after replacement: max |diff| %.3g, relative RMS %.3g", precisionName(p),
                  f.maxAbs, f.relRms);
            QVERIFY(f.relRms <= (p == Precision::Float32 ? 1e-5 : 2e-2));
        }
    }

    void perplexity()
    {
        QL_REQUIRE_DATA(kStoriesGguf);
        QL_REQUIRE_DATA(kWikitext);
        auto model = openModel(test::dataPath(kStoriesGguf));
        QL_VERIFY_OK(model);
        auto llama = LlamaModel::create(*model);
        QL_VERIFY_OK(llama);
        auto tok = Tokenizer::create(*model);
        QL_VERIFY_OK(tok);
        auto text = readTextFile(test::dataPath(kWikitext));
        QL_VERIFY_OK(text);
        const auto windows = makeLlamaCppChunks(**tok, *text, 512);
        QVERIFY(windows.size() > 1000);
        // The CPU figure on all cores while the GPU runs: contiguous parts of the windows on their
        // own threads (LlamaModel's const forward is reentrant), mean NLLs weighted by tokens.
        // One thread takes ~150 s on the GPU machine; the parts take a fraction of that.
        const std::size_t parts =
            std::clamp<std::size_t>(std::thread::hardware_concurrency(), 1, 16);
        std::vector<std::future<Result<EvalResult>>> cpuParts;
        for (std::size_t i = 0; i < parts; ++i) {
            const std::size_t b = windows.size() * i / parts, e = windows.size() * (i + 1) / parts;
            cpuParts.push_back(std::async(std::launch::async, [&llama, &windows, b, e] {
                LlamaLogitsSource src(*llama);
                const std::vector<TokenWindow> part(windows.begin() + std::ptrdiff_t(b),
                                                    windows.begin() + std::ptrdiff_t(e));
                return evaluate(src, part);
            }));
        }
        auto backend = createBackend(BackendKind::Cuda);
        QL_VERIFY_OK(backend);
        std::vector<EvalResult> gpu;
        for (Precision p : {Precision::Float32, Precision::BFloat16}) {
            auto runner = createLlamaRunner(**backend, *llama, p);
            QL_VERIFY_OK(runner);
            RunnerLogitsSource src(**runner);
            auto r = evaluate(src, windows);
            QL_VERIFY_OK(r);
            qInfo("GPU %s: PPL %.6f over %lld tokens, %.0f tokens/s", precisionName(p), r->ppl,
                  (long long)r->tokens, r->tokensPerSecond);
            gpu.push_back(*r);
        }
        double nllSum = 0;
        std::int64_t cpuTokens = 0;
        for (auto& f : cpuParts) {
            auto r = f.get();
            QL_VERIFY_OK(r);
            nllSum += r->nll * double(r->tokens);
            cpuTokens += r->tokens;
        }
        const double cpuPpl = std::exp(nllSum / double(cpuTokens));
        qInfo("CPU f32: PPL %.6f (%zu threads)", cpuPpl, parts);
        QCOMPARE(gpu[0].tokens, cpuTokens);
        const double relF32 = std::fabs(gpu[0].ppl - cpuPpl) / cpuPpl;
        const double relBf16 = std::fabs(gpu[1].ppl - cpuPpl) / cpuPpl;
        qInfo("relative PPL difference: f32 %.3g, bf16 %.3g", relF32, relBf16);
        QVERIFY2(relF32 <= 1e-4, qPrintable(QString::number(relF32)));
        QVERIFY2(relBf16 <= 1e-2, qPrintable(QString::number(relBf16)));
    }
};

QTEST_APPLESS_MAIN(TestCudaForward)
#include "test_cuda_forward.moc"
