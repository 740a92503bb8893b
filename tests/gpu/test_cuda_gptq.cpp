// GPU GPTQ (kernels/cuda_gptq.h, issue #6) against the CPU oracle, quant/gptq.h's quantizeGptq, on
// the same inputs, with the Cholesky factor in double (f64) and in float (f32, the default) each.
// Budgets (the column loop and the left-looking updates run in float32, so a weight sitting on a
// rounding boundary may round the other way and feed a slightly different error forward):
// - integer codes: >= 99.9% equal (per matrix on the synthetic layers; over all matrices, and
//   >= 99.5% per matrix, on stories260K whose matrices hold only 4k-11k weights), f32 as f64;
// - loss, rtnLoss, error.weighted, rtnError.weighted: 1e-3 relative;
// - dampening: the same fraction and the same raises; dead columns, order and group index equal;
// - the returned QuantizedTensor decodes (core's codec) to exactly the returned weights.
// Same inputs: the device takes H in float32, so every H here is rounded to float32 first (the
// CPU sees the same values; otherwise two diagonal entries equal in float32 but not in double
// would order act-order differently).
// Data: heavy-tailed activations (Student-t, 3 dof, every 17th channel 20x) give H = X^T X in
// double; dead input channels; an indefinite H (a planted negative direction, several raises)
// and a rank-deficient one (fewer tokens than channels, damp=0); and the real linear layers of
// stories260K calibrated on text/calibration/tiny.txt. Every comparison prints its agreement.
// Without a device: the device's schedule (gptq_plan.h) and its left-looking algebra replayed on
// the CPU in double reproduce quantizeGptq (leftLookingReference). On the device: the monitor sees
// the CPU's events, and its pause gate holds and cancels the loop (monitor).
#include <QtTest>

#include <Eigen/Dense>
#include <atomic>
#include <bit>
#include <chrono>
#include <cmath>
#include <cstring>
#include <mutex>
#include <numeric>
#include <random>
#include <thread>

#include "calib/calibrate.h"
#include "calib/dataset.h"
#include "compute/backend.h"
#include "cuda_context.h"
#include "cuda_gptq.h"
#include "cusolver_api.h"
#include "device_buffer.h"
#include "gptq_plan.h"
#include "io/model_loader.h"
#include "model/llama.h"
#include "model/tokenizer.h"
#include "quant/ggml_dequant.h"
#include "quant/gptq.h"
#include "quant/gptq_observer.h"
#include "quant/quantize_model.h"
#include "quant/uniform.h"
#include "test_data.h"
#include "util/pause_gate.h"

using namespace ql;

namespace {

const char* kModel = "models/stories260K/stories260K.gguf";
const char* kText = "text/calibration/tiny.txt";

struct Layer {
    std::int64_t rows = 0, cols = 0;
    std::vector<float> w;
    std::vector<double> h;
};

// Heavy-tailed weights and H = X^T X of heavy-tailed activations (`tokens` rows); channels
// c % deadEvery == 5 are always zero (dead) when deadEvery > 0.
Layer makeLayer(std::int64_t rows, std::int64_t cols, std::int64_t tokens, int deadEvery,
                unsigned seed)
{
    std::mt19937 rng(seed);
    std::student_t_distribution<float> t(3.0f);
    Layer l;
    l.rows = rows;
    l.cols = cols;
    l.w.resize(std::size_t(rows * cols));
    for (std::int64_t r = 0; r < rows; ++r)
        for (std::int64_t c = 0; c < cols; ++c)
            l.w[std::size_t(r * cols + c)] = 0.02f * t(rng) * (c % 29 == 3 ? 4.0f : 1.0f);
    Eigen::MatrixXd x(tokens, cols);
    for (std::int64_t i = 0; i < tokens; ++i)
        for (std::int64_t c = 0; c < cols; ++c) {
            const bool dead = deadEvery > 0 && c % deadEvery == 5;
            x(i, c) = dead ? 0.0 : double(t(rng) * (c % 17 == 3 ? 20.0f : 1.0f));
        }
    const Eigen::MatrixXd h = x.transpose() * x;
    l.h.resize(std::size_t(cols * cols));
    for (std::int64_t i = 0; i < cols; ++i)
        for (std::int64_t j = 0; j < cols; ++j)
            l.h[std::size_t(i * cols + j)] = double(float(h(i, j)));
    return l;
}

constexpr cuda::GptqFactorPrecision kFactors[] = {cuda::GptqFactorPrecision::F64,
                                                  cuda::GptqFactorPrecision::F32};

const char* factorName(cuda::GptqFactorPrecision p)
{
    return p == cuda::GptqFactorPrecision::F64   ? " [f64]"
           : p == cuda::GptqFactorPrecision::F32 ? " [f32]"
                                                 : " [default]";
}

// Plants a negative direction v = (e_a - e_b) / sqrt 2 with v^T H' v = -0.3 mean(diag H) in two
// outlier channels (c % 17 == 3), so GPTQ raises the dampening several times; H rounded to float.
void makeIndefinite(Layer& l, std::int64_t a, std::int64_t b)
{
    const std::int64_t n = l.cols;
    double mean = 0;
    for (std::int64_t i = 0; i < n; ++i) mean += l.h[std::size_t(i * n + i)];
    mean /= double(n);
    auto H = [&](std::int64_t i, std::int64_t j) -> double& { return l.h[std::size_t(i * n + j)]; };
    const double vhv = (H(a, a) + H(b, b) - 2 * H(a, b)) / 2;
    const double s = vhv + 0.3 * mean;
    H(a, a) -= s / 2;
    H(b, b) -= s / 2;
    H(a, b) += s / 2;
    H(b, a) += s / 2;
    for (double& v : l.h) v = double(float(v));
}

// The device algorithm (cuda_gptq.cpp, gptq.cu) on the CPU in double, on the device's schedule:
// F from the reversed matrix's Cholesky factor, the left-looking accumulators, units fitted on
// the in-block triangular solve and, beyond their block, on the first rows of U. Uniform formats.
struct Replay {
    std::vector<std::uint8_t> codes;  // row-major, original order, as QuantizedTensor::codes
    double loss = 0;
    std::vector<std::string> dampRaises;
    std::int64_t uRows = 0, beyond = 0;
};

Replay replayDevice(const Layer& l, const QuantFormat& f, const GptqOptions& o)
{
    using Eigen::MatrixXd;
    const std::int64_t rows = l.rows, n = l.cols;
    std::vector<double> hd(static_cast<std::size_t>(n));
    std::vector<bool> dead(std::size_t(n), false);
    for (std::int64_t i = 0; i < n; ++i) {
        hd[std::size_t(i)] = l.h[std::size_t(i * n + i)];
        if (hd[std::size_t(i)] == 0) dead[std::size_t(i)] = true, hd[std::size_t(i)] = 1;
    }
    std::vector<std::int32_t> perm(static_cast<std::size_t>(n));
    std::iota(perm.begin(), perm.end(), 0);
    if (o.actOrder)
        std::stable_sort(perm.begin(), perm.end(), [&](std::int32_t a, std::int32_t b) {
            return hd[std::size_t(a)] > hd[std::size_t(b)];
        });
    std::vector<std::int32_t> pos(static_cast<std::size_t>(n));
    for (std::int64_t p = 0; p < n; ++p) pos[std::size_t(perm[std::size_t(p)])] = std::int32_t(p);
    double mean = 0;
    for (double v : hd) mean += v;
    mean /= double(n);
    const bool perTensor = f.granularity == Granularity::PerTensor;
    const std::int64_t unitLen = scaleGroupSize(f, n);
    const std::int64_t units = (n + unitLen - 1) / unitLen;
    const cuda::GptqPlan plan =
        cuda::planGptq(pos, unitLen, !perTensor && !o.staticGroups, o.actOrder);
    Replay out;
    out.uRows = plan.uRows;
    out.beyond = std::int64_t(plan.beyond.size());

    // F (Hd = F F^T) from J Hd J = L L^T, raising damp as the device does.
    double frac = o.damp;
    MatrixXd F;
    for (;;) {
        MatrixXd R(n, n);
        for (std::int64_t j = 0; j < n; ++j)
            for (std::int64_t i = 0; i < n; ++i) {
                const std::int32_t a = perm[std::size_t(n - 1 - i)],
                                   b = perm[std::size_t(n - 1 - j)];
                R(i, j) = (a == b && dead[std::size_t(a)]) ? 1.0 : l.h[std::size_t(b * n + a)];
                if (i == j) R(i, j) += frac * mean;
            }
        Eigen::LLT<MatrixXd> llt(R);
        if (llt.info() == Eigen::Success) {
            const MatrixXd L = llt.matrixL();
            F = MatrixXd::Zero(n, n);
            for (std::int64_t i = 0; i < n; ++i)
                for (std::int64_t k = i; k < n; ++k) F(i, k) = L(n - 1 - i, n - 1 - k);
            break;
        }
        const double next = frac > 0 ? frac * 10 : 1e-4;
        char buf[160];
        std::snprintf(buf, sizeof buf,
                      "Cholesky failed at damp=%.3g (H + damp I is not positive definite); raised "
                      "to damp=%.3g",
                      frac, next);
        out.dampRaises.push_back(buf);
        frac = next;
    }
    const std::int64_t T = plan.uRows;
    MatrixXd Urows;  // U's first T rows: X F = [I 0]
    if (T > 0)
        Urows = F.triangularView<Eigen::Upper>().solve<Eigen::OnTheRight>(MatrixXd::Identity(T, n));

    MatrixXd W0(rows, n), D = MatrixXd::Zero(rows, n),
                          E = MatrixXd::Zero(rows, std::max<std::int64_t>(T, 1));
    for (std::int64_t p = 0; p < n; ++p)
        for (std::int64_t r = 0; r < rows; ++r)
            W0(r, p) = dead[std::size_t(perm[std::size_t(p)])]
                           ? 0.0
                           : double(l.w[std::size_t(r * n + perm[std::size_t(p)])]);
    std::vector<UniformGrid> grids(std::size_t(rows * units));
    auto fit = [&](std::int64_t r, std::int64_t u, float lo, float hi) {
        grids[std::size_t(r * units + u)] = uniformGrid(lo, hi, f.bits, f.symmetric);
    };
    for (std::int64_t r = 0; r < rows; ++r) {
        if (perTensor) {
            float lo = 0, hi = 0;
            for (std::int64_t p = 0; p < rows * n; ++p) {
                const float v = float(W0(p % rows, p / rows));
                lo = std::min(lo, v), hi = std::max(hi, v);
            }
            for (std::int64_t rr = 0; rr < rows; ++rr) fit(rr, 0, lo, hi);
            break;
        }
        if (!o.staticGroups) continue;
        for (std::int64_t u = 0; u < units; ++u) {
            float lo = 0, hi = 0;
            for (std::int64_t c = u * unitLen; c < std::min(n, (u + 1) * unitLen); ++c) {
                const float v = float(W0(r, pos[std::size_t(c)]));
                lo = std::min(lo, v), hi = std::max(hi, v);
            }
            fit(r, u, lo, hi);
        }
    }
    out.codes.assign(std::size_t(rows * n), 0);
    const int offset = f.symmetric ? 1 << (f.bits - 1) : 0;
    for (std::int64_t b = 0; b < plan.blocks(); ++b) {
        const std::int64_t i1 = plan.blockStart[std::size_t(b)],
                           i2 = plan.blockStart[std::size_t(b + 1)];
        const std::int64_t count = i2 - i1;
        MatrixXd acc = MatrixXd::Zero(rows, count);
        if (i1 > 0) acc = D.leftCols(i1) * F.block(0, i1, i1, count);
        for (std::int64_t i = 0; i < count; ++i) {
            const std::int64_t p = i1 + i;
            const std::int32_t u = plan.fitAt[std::size_t(p)];
            if (u >= 0) {
                MatrixXd y = acc;  // the in-block solve
                for (std::int64_t k = i; k < count; ++k)
                    for (std::int64_t m = k + 1; m < count; ++m)
                        y.col(m) -= (y.col(k) / F(i1 + k, i1 + k)) * F(i1 + k, i1 + m);
                for (std::int64_t r = 0; r < rows; ++r) {
                    float lo = 0, hi = 0;
                    auto take = [&](double v) {
                        lo = std::min(lo, float(v)), hi = std::max(hi, float(v));
                    };
                    for (std::int64_t k = i; k < count; ++k)
                        if (perm[std::size_t(i1 + k)] / unitLen == u)
                            take(W0(r, i1 + k) + y(r, k) / F(i1 + k, i1 + k));
                    for (std::int32_t q = plan.unitBeyond[std::size_t(2 * u)];
                         q < plan.unitBeyond[std::size_t(2 * u + 1)]; ++q) {
                        const std::int64_t k = plan.beyond[std::size_t(q)];
                        double v = W0(r, k);
                        for (std::int64_t j = 0; j < p; ++j) v -= E(r, j) * Urows(j, k);
                        take(v);
                    }
                    fit(r, u, lo, hi);
                }
            }
            const std::int64_t c = perm[std::size_t(p)];
            for (std::int64_t r = 0; r < rows; ++r) {
                const double x = W0(r, p) + acc(r, i) / F(p, p);
                const UniformGrid& g =
                    grids[std::size_t(r * units + (perTensor ? 0 : c / unitLen))];
                int code = g.qmin;
                float q = g.dequantize(g.qmin);
                if (g.scale > 0) {  // nearest level, ties to the lower one
                    code = g.quantize(float(x));
                    q = g.dequantize(code);
                    for (int k : {code - 1, code + 1}) {
                        if (k < g.qmin || k > g.qmax) continue;
                        const float v = g.dequantize(k);
                        const double dv = std::fabs(x - double(v)), dq = std::fabs(x - double(q));
                        if (dv < dq || (dv == dq && v < q)) code = k, q = v;
                    }
                }
                out.codes[std::size_t(r * n + c)] = std::uint8_t(code + offset);
                D(r, p) = W0(r, p) - double(q);
                const double e = (x - double(q)) * F(p, p);
                out.loss += e * e;
                if (p < T) E(r, p) = e;
            }
            for (std::int64_t m = i + 1; m < count; ++m) acc.col(m) += D.col(p) * F(p, i1 + m);
        }
    }
    return out;
}

// Records the events of one GPTQ layer.
class Recorder : public GptqObserver {
public:
    void layerStarted(const GptqLayerStart& e) override
    {
        std::lock_guard lock(m_mutex);
        start = e;
        ++starts;
    }
    void layerProgress(const GptqLayerProgress& e) override
    {
        std::lock_guard lock(m_mutex);
        progress.push_back(e);
    }
    void dampRaised(const GptqDampRaise& e) override
    {
        std::lock_guard lock(m_mutex);
        raises.push_back(e);
    }
    void layerFinished(const GptqLayerDone& e) override
    {
        std::lock_guard lock(m_mutex);
        done = e;
        ++finished;
    }
    std::size_t progressCount() const
    {
        std::lock_guard lock(m_mutex);
        return progress.size();
    }

    GptqLayerStart start;
    std::vector<GptqLayerProgress> progress;
    std::vector<GptqDampRaise> raises;
    GptqLayerDone done;
    int starts = 0, finished = 0;

private:
    mutable std::mutex m_mutex;
};

struct Agreement {
    double codes = 0;   // fraction of equal codes
    double scales = 0;  // fraction of equal scales
    double maxWeightDiff = 0;
};

class TestCudaGptq : public QObject {
    Q_OBJECT

    std::shared_ptr<cuda::CudaContext> m_ctx;
    QString m_skip;

    Result<GptqResult> runGpu(const Layer& l, const QuantFormat& f, const GptqOptions& o,
                              const ProgressFn& progress = {},
                              cuda::GptqFactorPrecision factor = cuda::GptqFactorPrecision::F64,
                              const GptqMonitor& monitor = {},
                              cuda::GptqDeviceTimings* timings = nullptr)
    {
        cuda::MemoryTracker tracker;
        auto w = cuda::DeviceBuffer<float>::allocate(l.w.size(), &tracker, "test weights");
        if (!w) return w.error();
        auto h = cuda::DeviceBuffer<float>::allocate(l.h.size(), &tracker, "test Hessian");
        if (!h) return h.error();
        std::vector<float> hf(l.h.begin(), l.h.end());
        if (auto s = m_ctx->copyToDevice(w->data(), l.w.data(), l.w.size() * 4); !s.ok())
            return s.error();
        if (auto s = m_ctx->copyToDevice(h->data(), hf.data(), hf.size() * 4); !s.ok())
            return s.error();
        auto r = cuda::quantizeGptqDeviceTimed(*m_ctx, w->data(), h->data(), l.rows, l.cols, f, o,
                                               progress, monitor, factor, timings);
        if (r) {
            // dW must hold the quantized weights.
            std::vector<float> back(l.w.size());
            if (auto s = m_ctx->copyToHost(back.data(), w->data(), back.size() * 4); !s.ok())
                return s.error();
            if (std::memcmp(back.data(), r->weights.data(), back.size() * 4) != 0)
                return makeError(ErrorCode::Device, "dW does not hold the returned weights");
        }
        return r;
    }

    // Compares and prints; checks everything but the code agreement (the caller's budget).
    Agreement compare(const char* what, const GptqResult& cpu, const GptqResult& gpu,
                      bool checkLosses = true)
    {
        Agreement a;
        const auto& cc = cpu.quantized.codes;
        const auto& gc = gpu.quantized.codes;
        [&] { QCOMPARE(gc.size(), cc.size()); }();
        std::size_t equal = 0;
        for (std::size_t i = 0; i < cc.size() && i < gc.size(); ++i) equal += cc[i] == gc[i];
        a.codes = cc.empty() ? 1.0 : double(equal) / double(cc.size());
        std::size_t sameScale = 0;
        const auto& cs = cpu.quantized.scales;
        const auto& gs = gpu.quantized.scales;
        for (std::size_t i = 0; i < cs.size() && i < gs.size(); ++i) sameScale += cs[i] == gs[i];
        a.scales = cs.empty() ? 1.0 : double(sameScale) / double(cs.size());
        for (std::size_t i = 0; i < cpu.weights.size() && i < gpu.weights.size(); ++i)
            a.maxWeightDiff =
                std::max(a.maxWeightDiff, double(std::fabs(cpu.weights[i] - gpu.weights[i])));
        auto rel = [](double x, double y) {
            return std::fabs(x - y) / std::max({std::fabs(x), std::fabs(y), 1e-300});
        };
        qInfo(
            "%s: codes %.4f%% equal (%zu of %zu differ), scales %.4f%% equal, max |dw| %.3g; "
            "loss cpu %.6g gpu %.6g (rel %.2g), rtnLoss rel %.2g, error rel %.2g, rtnError "
            "rel %.2g; damp cpu %g gpu %g, raises cpu %zu gpu %zu",
            what, 100 * a.codes, cc.size() - equal, cc.size(), 100 * a.scales, a.maxWeightDiff,
            cpu.loss, gpu.loss, rel(cpu.loss, gpu.loss), rel(cpu.rtnLoss, gpu.rtnLoss),
            rel(cpu.error.weighted, gpu.error.weighted),
            rel(cpu.rtnError.weighted, gpu.rtnError.weighted), cpu.damp, gpu.damp,
            cpu.dampRaises.size(), gpu.dampRaises.size());
        for (const auto& r : gpu.dampRaises) qInfo("  gpu raise: %s", r.c_str());
        [&] {
            QCOMPARE(gpu.dampRaises, cpu.dampRaises);
            QCOMPARE(gpu.damp, cpu.damp);
            QCOMPARE(gpu.deadColumns, cpu.deadColumns);
            QCOMPARE(gpu.order, cpu.order);
            QCOMPARE(gpu.groupIndex, cpu.groupIndex);
            QCOMPARE(gpu.quantized.scales.size(), cpu.quantized.scales.size());
            QCOMPARE(gpu.quantized.zeroPoints.size(), cpu.quantized.zeroPoints.size());
            QVERIFY(gpu.quantized.validate().ok());
            auto decoded = gpu.quantized.dequantize();
            QVERIFY(decoded.ok());
            QCOMPARE(decoded->size(), gpu.weights.size());
            QVERIFY(std::memcmp(decoded->data(), gpu.weights.data(), decoded->size() * 4) == 0);
            if (checkLosses) {
                QVERIFY2(rel(cpu.loss, gpu.loss) <= 1e-3, what);
                QVERIFY2(rel(cpu.rtnLoss, gpu.rtnLoss) <= 1e-3, what);
                QVERIFY2(rel(cpu.error.weighted, gpu.error.weighted) <= 1e-3, what);
                QVERIFY2(rel(cpu.rtnError.weighted, gpu.rtnError.weighted) <= 1e-3, what);
                QVERIFY2(rel(cpu.error.reference, gpu.error.reference) <= 1e-4, what);
            }
        }();
        return a;
    }

private slots:
    void initTestCase()
    {
        const auto gpus = listGpus();
        if (gpus.empty()) {
            m_skip = "no CUDA device";
            return;
        }
        auto ctx = cuda::CudaContext::create(0);
        QVERIFY2(ctx.ok(), ctx.ok() ? "" : ctx.error().message.c_str());
        m_ctx = *ctx;
        qInfo("device: %s", m_ctx->info().name.c_str());
    }

    void supports()
    {
        QVERIFY(cuda::gptqDeviceSupports(uniformFormat(4, true, Granularity::PerGroup, 128)));
        QVERIFY(cuda::gptqDeviceSupports(uniformFormat(2, false, Granularity::PerTensor)));
        QVERIFY(cuda::gptqDeviceSupports(uniformFormat(8, true, Granularity::PerChannel)));
        QVERIFY(!cuda::gptqDeviceSupports(nf4Format()));
        QVERIFY(!cuda::gptqDeviceSupports(ggmlFormat(TensorType::Q4_K)));
        QVERIFY(!cuda::gptqDeviceSupports(floatFormat(TensorType::F16)));
        // cuSOLVER is loaded at run time (no device needed for that).
        auto api = cuda::cusolverApi();
        QVERIFY2(api.ok(), api.ok() ? "" : api.error().message.c_str());
        QVERIFY((*api)->potrf && (*api)->potrfBufferSize);
    }

    // No device needed: the device's schedule and algebra, replayed in double, give quantizeGptq's
    // codes and loss (a weight on a rounding boundary may go the other way: 99.99%). The rows
    // cover units inside their block, units fitted before their block (act-order, g256: rows of
    // U), blocks cut at units (g96), per channel, per tensor, static groups, dead columns, raises.
    void leftLookingReference_data()
    {
        QTest::addColumn<QString>("fmt");
        QTest::addColumn<bool>("actOrder");
        QTest::addColumn<bool>("staticGroups");
        QTest::addColumn<int>("tokens");
        QTest::addColumn<double>("damp");
        QTest::addColumn<int>("deadEvery");
        QTest::newRow("int4:g128") << "int4:g128" << false << false << 1024 << 0.01 << 0;
        QTest::newRow("int4:g128 actorder") << "int4:g128" << true << false << 1024 << 0.01 << 0;
        QTest::newRow("int3:g64:asym actorder")
            << "int3:g64:asym" << true << false << 1024 << 0.01 << 0;
        QTest::newRow("int4:g96:asym") << "int4:g96:asym" << false << false << 1024 << 0.01 << 0;
        QTest::newRow("int4:g256") << "int4:g256" << false << false << 1024 << 0.01 << 0;
        QTest::newRow("int4:g256 actorder") << "int4:g256" << true << false << 1024 << 0.01 << 0;
        QTest::newRow("int8 actorder") << "int8" << true << false << 1024 << 0.01 << 0;
        QTest::newRow("int4:tensor") << "int4:tensor" << false << false << 1024 << 0.01 << 0;
        QTest::newRow("int4:g128 static actorder")
            << "int4:g128" << true << true << 1024 << 0.01 << 0;
        QTest::newRow("int2:g32:asym dead actorder")
            << "int2:g32:asym" << true << false << 1024 << 0.01 << 37;
        QTest::newRow("int4:g128 rank deficient damp=0")
            << "int4:g128" << false << false << 128 << 0.0 << 0;
    }

    void leftLookingReference()
    {
        QFETCH(QString, fmt);
        QFETCH(bool, actOrder);
        QFETCH(bool, staticGroups);
        QFETCH(int, tokens);
        QFETCH(double, damp);
        QFETCH(int, deadEvery);
        const Layer l = makeLayer(192, 512, tokens, deadEvery, 31);
        auto f = parseQuantFormat(fmt.toStdString());
        QVERIFY(f.ok());
        GptqOptions o;
        o.actOrder = actOrder;
        o.staticGroups = staticGroups;
        o.damp = damp;
        auto cpu = quantizeGptq(l.w.data(), l.rows, l.cols, l.h, *f, o);
        QVERIFY2(cpu.ok(), cpu.ok() ? "" : cpu.error().message.c_str());
        const Replay r = replayDevice(l, *f, o);
        std::size_t equal = 0;
        for (std::size_t i = 0; i < r.codes.size(); ++i)
            equal += r.codes[i] == cpu->quantized.codes[i];
        const double agree = double(equal) / double(r.codes.size());
        const double rel = std::fabs(r.loss - cpu->loss) / cpu->loss;
        qInfo(
            "%s: codes %.4f%% equal (%zu differ), loss rel %.2g, %lld columns beyond their "
            "unit's block, %lld rows of U",
            QTest::currentDataTag(), 100 * agree, r.codes.size() - equal, rel,
            static_cast<long long>(r.beyond), static_cast<long long>(r.uRows));
        QCOMPARE(r.dampRaises, cpu->dampRaises);
        QVERIFY2(agree >= 0.9999, qPrintable(QString("codes %1% equal").arg(100 * agree)));
        QVERIFY(rel <= 1e-9);
        if (actOrder && !staticGroups && f->granularity == Granularity::PerGroup)
            QVERIFY(r.uRows > 0);  // the rows-of-U path is exercised
    }

    void synthetic_data()
    {
        QTest::addColumn<int>("rows");
        QTest::addColumn<int>("cols");
        QTest::addColumn<QString>("fmt");
        QTest::addColumn<bool>("actOrder");
        QTest::addColumn<bool>("staticGroups");
        QTest::addColumn<int>("block");
        QTest::addColumn<int>("deadEvery");
        const char* fmts[] = {"int4:g128", "int3:g64:asym", "int8"};
        for (int shape = 0; shape < 2; ++shape) {
            const int rows = shape == 0 ? 512 : 1024, cols = shape == 0 ? 1024 : 2048;
            for (const char* f : fmts)
                for (bool ao : {false, true})
                    QTest::newRow(qPrintable(QString("%1x%2 %3%4")
                                                 .arg(rows)
                                                 .arg(cols)
                                                 .arg(f)
                                                 .arg(ao ? " actorder" : "")))
                        << rows << cols << QString(f) << ao << false << 128 << 0;
        }
        QTest::newRow("512x1024 int4:g128 static actorder")
            << 512 << 1024 << "int4:g128" << true << true << 128 << 0;
        QTest::newRow("512x1024 int4:g128:asym static")
            << 512 << 1024 << "int4:g128:asym" << false << true << 128 << 0;
        QTest::newRow("512x1024 int4:g96:asym (groups across blocks)")
            << 512 << 1024 << "int4:g96:asym" << false << false << 128 << 0;
        QTest::newRow("512x1024 int4:g256 actorder block=64")
            << 512 << 1024 << "int4:g256" << true << false << 64 << 0;
        QTest::newRow("512x1024 int4:tensor")
            << 512 << 1024 << "int4:tensor" << false << false << 128 << 0;
        QTest::newRow("300x1000 int2:g32:asym dead columns actorder")
            << 300 << 1000 << "int2:g32:asym" << true << false << 128 << 37;
        QTest::newRow("300x1000 int4:g128 dead columns block=1000")
            << 300 << 1000 << "int4:g128" << false << false << 1000 << 37;
    }

    void synthetic()
    {
        if (!m_ctx) QSKIP(qPrintable(m_skip));
        QFETCH(int, rows);
        QFETCH(int, cols);
        QFETCH(QString, fmt);
        QFETCH(bool, actOrder);
        QFETCH(bool, staticGroups);
        QFETCH(int, block);
        QFETCH(int, deadEvery);
        const Layer l =
            makeLayer(rows, cols, 2 * std::int64_t(cols), deadEvery, 1000 + rows + cols);
        auto f = parseQuantFormat(fmt.toStdString());
        QVERIFY(f.ok());
        GptqOptions o;
        o.actOrder = actOrder;
        o.staticGroups = staticGroups;
        o.blockSize = block;
        auto cpu = quantizeGptq(l.w.data(), rows, cols, l.h, *f, o);
        QVERIFY2(cpu.ok(), cpu.ok() ? "" : cpu.error().message.c_str());
        for (auto factor : kFactors) {
            const QByteArray what = QByteArray(QTest::currentDataTag()) + factorName(factor);
            cuda::GptqDeviceTimings t;
            auto gpu = runGpu(l, *f, o, {}, factor, {}, &t);
            QVERIFY2(gpu.ok(), gpu.ok() ? "" : gpu.error().message.c_str());
            qInfo("  factor f%d%s, %lld rows of U", t.factorBits,
                  t.factorFellBack ? " (fell back)" : "", static_cast<long long>(t.uRows));
            if (deadEvery > 0) QVERIFY(gpu->deadColumns > 0);
            const Agreement a = compare(what.constData(), *cpu, *gpu);
            if (QTest::currentTestFailed()) return;
            QVERIFY2(a.codes >= 0.999,
                     qPrintable(QString("%1: codes %2% equal").arg(what).arg(100 * a.codes)));
            QVERIFY(gpu->loss < gpu->rtnLoss);
        }
    }

    // A planted negative direction: several raises, identical on both (f32 falls back to f64
    // before each raise, so the reasons are the f64 ones).
    void indefiniteHessian()
    {
        if (!m_ctx) QSKIP(qPrintable(m_skip));
        Layer l = makeLayer(256, 512, 1024, 0, 7);
        makeIndefinite(l, 3, 20);
        QVERIFY(l.h[3 * 512 + 3] > 0 && l.h[20 * 512 + 20] > 0);
        const QuantFormat f = uniformFormat(4, true, Granularity::PerGroup, 128);
        auto cpu = quantizeGptq(l.w.data(), l.rows, l.cols, l.h, f, {});
        QVERIFY2(cpu.ok(), cpu.ok() ? "" : cpu.error().message.c_str());
        QVERIFY(!cpu->dampRaises.empty());
        for (auto factor : kFactors) {
            auto gpu = runGpu(l, f, {}, {}, factor);
            QVERIFY2(gpu.ok(), gpu.ok() ? "" : gpu.error().message.c_str());
            const QByteArray what = QByteArray("indefinite H") + factorName(factor);
            const Agreement ag = compare(what.constData(), *cpu, *gpu);
            if (QTest::currentTestFailed()) return;
            QVERIFY2(ag.codes >= 0.999, qPrintable(QString("codes %1% equal").arg(100 * ag.codes)));
        }
    }

    // Rank deficient (tokens < channels) with damp=0: the first factorization fails on both and
    // the raise to 1e-4 is identical. The damped H has condition ~1e4 x its spread, so the float
    // loop is allowed 1% of codes here (printed; expected far fewer). Its smallest pivot is
    // expected below kGptqF32MinPivot, so that f32 falls back to f64 (printed).
    void rankDeficientHessian()
    {
        if (!m_ctx) QSKIP(qPrintable(m_skip));
        const Layer l = makeLayer(256, 512, 128, 0, 11);
        GptqOptions o;
        o.damp = 0;
        const QuantFormat f = uniformFormat(4, true, Granularity::PerGroup, 128);
        auto cpu = quantizeGptq(l.w.data(), l.rows, l.cols, l.h, f, o);
        QVERIFY2(cpu.ok(), cpu.ok() ? "" : cpu.error().message.c_str());
        QVERIFY(!cpu->dampRaises.empty());
        for (auto factor : kFactors) {
            cuda::GptqDeviceTimings t;
            auto gpu = runGpu(l, f, o, {}, factor, {}, &t);
            QVERIFY2(gpu.ok(), gpu.ok() ? "" : gpu.error().message.c_str());
            qInfo("  factor f%d%s", t.factorBits, t.factorFellBack ? " (fell back)" : "");
            const QByteArray what = QByteArray("rank-deficient H, damp=0") + factorName(factor);
            const Agreement a = compare(what.constData(), *cpu, *gpu, false);
            if (QTest::currentTestFailed()) return;
            QVERIFY2(a.codes >= 0.99, qPrintable(QString("codes %1% equal").arg(100 * a.codes)));
        }
    }

    // The factor's two precisions on the same inputs, code by code (printed), including a layer
    // whose f32 factor is kept although its pivots are small-ish (damp 1e-3, tokens < channels).
    void factorPrecision_data()
    {
        QTest::addColumn<int>("tokens");
        QTest::addColumn<double>("damp");
        QTest::addColumn<double>("budget");
        QTest::newRow("well conditioned (2 x cols tokens)") << 2048 << 0.01 << 0.999;
        QTest::newRow("tokens < cols, damp 0.01") << 256 << 0.01 << 0.999;
        QTest::newRow("tokens < cols, damp 0.001") << 256 << 0.001 << 0.995;
    }

    void factorPrecision()
    {
        if (!m_ctx) QSKIP(qPrintable(m_skip));
        QFETCH(int, tokens);
        QFETCH(double, damp);
        QFETCH(double, budget);
        const Layer l = makeLayer(512, 1024, tokens, 0, 23);
        const QuantFormat f = uniformFormat(4, true, Granularity::PerGroup, 128);
        GptqOptions o;
        o.damp = damp;
        cuda::GptqDeviceTimings t32, t64;
        auto g32 = runGpu(l, f, o, {}, cuda::GptqFactorPrecision::F32, {}, &t32);
        QVERIFY2(g32.ok(), g32.ok() ? "" : g32.error().message.c_str());
        auto g64 = runGpu(l, f, o, {}, cuda::GptqFactorPrecision::F64, {}, &t64);
        QVERIFY2(g64.ok(), g64.ok() ? "" : g64.error().message.c_str());
        QCOMPARE(t64.factorBits, 64);
        qInfo("  f32 run used f%d%s", t32.factorBits, t32.factorFellBack ? " (fell back)" : "");
        const Agreement a = compare(QTest::currentDataTag(), *g64, *g32, false);
        if (QTest::currentTestFailed()) return;
        QVERIFY2(a.codes >= budget, qPrintable(QString("codes %1% equal").arg(100 * a.codes)));
        QVERIFY(std::fabs(g32->loss - g64->loss) <= 1e-2 * g64->loss);
    }

    void errors()
    {
        if (!m_ctx) QSKIP(qPrintable(m_skip));
        Layer l = makeLayer(64, 128, 256, 0, 3);
        const QuantFormat f = uniformFormat(4, true, Granularity::PerGroup, 32);
        // Cancel before the loop and inside it.
        for (double at : {0.0, 0.05, 0.5}) {
            auto r =
                runGpu(l, f, {}, [at](double fraction, std::string_view) { return fraction < at; });
            QVERIFY(!r.ok());
            QCOMPARE(r.error().code, ErrorCode::Cancelled);
        }
        // A format the device lacks, a non-finite weight, a negative diagonal.
        auto nf4 = runGpu(l, nf4Format(), {});
        QVERIFY(!nf4.ok());
        QCOMPARE(nf4.error().code, ErrorCode::Unsupported);
        Layer bad = l;
        bad.w[17] = std::nanf("");
        auto nan = runGpu(bad, f, {});
        QVERIFY(!nan.ok());
        QCOMPARE(nan.error().code, ErrorCode::InvalidArgument);
        bad = l;
        bad.h[5 * 128 + 5] = -1;
        auto neg = runGpu(bad, f, {});
        QVERIFY(!neg.ok());
        QVERIFY(neg.error().message.find("negative") != std::string::npos);
    }

    // The monitor on the device: the CPU's events in the CPU's order (layerStarted, dampRaised per
    // raise, layerProgress per lazy block of options.blockSize, layerFinished); the pause gate
    // holds the loop (no progress while paused) and a resumed run gives the same result; a
    // cancelled gate cancels without layerFinished.
    void monitor()
    {
        if (!m_ctx) QSKIP(qPrintable(m_skip));
        Layer l = makeLayer(128, 2048, 4096, 37, 41);
        makeIndefinite(l, 3, 20);
        const QuantFormat f = uniformFormat(4, false, Granularity::PerGroup, 128);
        GptqOptions o;
        o.actOrder = true;
        o.blockSize = 64;  // lazy blocks that are not the device's
        Recorder cpuEvents, gpuEvents;
        auto cpu = quantizeGptq(l.w.data(), l.rows, l.cols, l.h, f, o, nullptr, {},
                                GptqMonitor{&cpuEvents, nullptr, "blk.0.w"});
        QVERIFY2(cpu.ok(), cpu.ok() ? "" : cpu.error().message.c_str());
        QVERIFY(!cpu->dampRaises.empty());
        auto gpu = runGpu(l, f, o, {}, cuda::GptqFactorPrecision::Default,
                          GptqMonitor{&gpuEvents, nullptr, "blk.0.w"});
        QVERIFY2(gpu.ok(), gpu.ok() ? "" : gpu.error().message.c_str());
        QCOMPARE(gpuEvents.starts, 1);
        QCOMPARE(gpuEvents.finished, 1);
        const GptqLayerStart &cs = cpuEvents.start, &gs = gpuEvents.start;
        QCOMPARE(gs.tensor, std::string("blk.0.w"));
        QCOMPARE(gs.rows, cs.rows);
        QCOMPARE(gs.cols, cs.cols);
        QCOMPARE(gs.format, cs.format);
        QCOMPARE(gs.hessianDiagonal, cs.hessianDiagonal);
        QCOMPARE(gs.order, cs.order);
        QCOMPARE(gs.actOrder, cs.actOrder);
        QCOMPARE(gs.damp, cs.damp);
        QCOMPARE(gs.blockSize, cs.blockSize);
        QCOMPARE(gs.deadColumns, cs.deadColumns);
        QCOMPARE(gpuEvents.raises.size(), cpuEvents.raises.size());
        for (std::size_t i = 0; i < cpuEvents.raises.size(); ++i) {
            QCOMPARE(gpuEvents.raises[i].tensor, cpuEvents.raises[i].tensor);
            QCOMPARE(gpuEvents.raises[i].from, cpuEvents.raises[i].from);
            QCOMPARE(gpuEvents.raises[i].to, cpuEvents.raises[i].to);
            QCOMPARE(gpuEvents.raises[i].message, cpuEvents.raises[i].message);
        }
        QCOMPARE(gpuEvents.progress.size(), cpuEvents.progress.size());
        QCOMPARE(gpuEvents.progress.size(), std::size_t(2048 / 64));
        for (std::size_t i = 0; i < cpuEvents.progress.size(); ++i) {
            const GptqLayerProgress &c = cpuEvents.progress[i], &g = gpuEvents.progress[i];
            QCOMPARE(g.tensor, c.tensor);
            QCOMPARE(g.block, c.block);
            QCOMPARE(g.blocks, c.blocks);
            QCOMPARE(g.column, c.column);
            QCOMPARE(g.cols, c.cols);
            QCOMPARE(g.fraction, c.fraction);
        }
        const GptqLayerDone &cd = cpuEvents.done, &gd = gpuEvents.done;
        QCOMPARE(gd.tensor, cd.tensor);
        QCOMPARE(gd.damp, cd.damp);
        QCOMPARE(gd.dampRaises, cd.dampRaises);
        QCOMPARE(gd.deadColumns, cd.deadColumns);
        QCOMPARE(gd.loss, gpu->loss);
        QCOMPARE(gd.rtnLoss, gpu->rtnLoss);
        QVERIFY(std::fabs(gd.loss - cd.loss) <= 1e-3 * cd.loss);

        // Paused before the loop: the run stops at its first gate with the blocks so far
        // reported, stays there, and goes on when resumed.
        PauseGate gate;
        gate.pause();
        Recorder paused;
        std::atomic<bool> held{false}, stayed{false};
        std::thread resumer([&] {
            const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
            while (!gate.isHolding() && std::chrono::steady_clock::now() < deadline)
                std::this_thread::sleep_for(std::chrono::milliseconds(1));
            held = gate.isHolding();
            const std::size_t before = paused.progressCount();
            std::this_thread::sleep_for(std::chrono::milliseconds(200));
            stayed = gate.isHolding() && paused.progressCount() == before && before > 0 &&
                     before < std::size_t(2048 / 64);
            gate.resume();
        });
        auto resumed = runGpu(l, f, o, {}, cuda::GptqFactorPrecision::Default,
                              GptqMonitor{&paused, &gate, "blk.0.w"});
        resumer.join();
        QVERIFY2(resumed.ok(), resumed.ok() ? "" : resumed.error().message.c_str());
        QVERIFY(held);
        QVERIFY(stayed);
        QCOMPARE(paused.progress.size(), std::size_t(2048 / 64));
        QCOMPARE(resumed->quantized.codes, gpu->quantized.codes);
        QCOMPARE(resumed->weights, gpu->weights);

        // A cancelled gate ends the run at its first gate, without layerFinished.
        PauseGate cancelled;
        cancelled.cancel();
        Recorder stopped;
        auto r = runGpu(l, f, o, {}, cuda::GptqFactorPrecision::Default,
                        GptqMonitor{&stopped, &cancelled, "blk.0.w"});
        QVERIFY(!r.ok());
        QCOMPARE(r.error().code, ErrorCode::Cancelled);
        QCOMPARE(stopped.starts, 1);
        QCOMPARE(stopped.finished, 0);
        QVERIFY(!stopped.progress.empty());
    }

    // Backend::quantizeGptq: the CUDA backend gives what the device path gives, and falls back to
    // the CPU (saying so) for a format it lacks; the CPU backend gives quantizeGptq's result.
    void backend()
    {
        const Layer l = makeLayer(128, 256, 512, 0, 5);
        const QuantFormat f = uniformFormat(4, false, Granularity::PerGroup, 64);
        GptqOptions o;
        o.actOrder = true;
        auto cpuBackend = createCpuBackend();
        auto viaCpu = cpuBackend->quantizeGptq(l.w.data(), l.rows, l.cols, l.h, f, o, nullptr, {});
        QVERIFY(viaCpu.ok());
        auto direct = quantizeGptq(l.w.data(), l.rows, l.cols, l.h, f, o);
        QVERIFY(direct.ok());
        QCOMPARE(viaCpu->quantized.codes, direct->quantized.codes);
        QCOMPARE(viaCpu->weights, direct->weights);
        QCOMPARE(viaCpu->note, std::string("cpu"));
        if (!m_ctx) QSKIP(qPrintable(m_skip));
        auto gpuBackend = createBackend(BackendKind::Cuda);
        QVERIFY(gpuBackend.ok());
        auto viaGpu =
            (*gpuBackend)->quantizeGptq(l.w.data(), l.rows, l.cols, l.h, f, o, nullptr, {});
        QVERIFY2(viaGpu.ok(), viaGpu.ok() ? "" : viaGpu.error().message.c_str());
        QCOMPARE(viaGpu->note, std::string("cuda"));
        auto gpuDirect = runGpu(l, f, o, {}, cuda::GptqFactorPrecision::Default);
        QVERIFY(gpuDirect.ok());
        QCOMPARE(viaGpu->quantized.codes, gpuDirect->quantized.codes);
        QCOMPARE(viaGpu->quantized.scales, gpuDirect->quantized.scales);
        QCOMPARE(viaGpu->weights, gpuDirect->weights);
        QVERIFY(std::fabs(viaGpu->loss - gpuDirect->loss) <= 1e-9 * gpuDirect->loss);
        auto fallback =
            (*gpuBackend)
                ->quantizeGptq(l.w.data(), l.rows, l.cols, l.h, nf4Format(), o, nullptr, {});
        QVERIFY(fallback.ok());
        QVERIFY(fallback->note.rfind("cpu", 0) == 0);
        auto cpuNf4 = quantizeGptq(l.w.data(), l.rows, l.cols, l.h, nf4Format(), o);
        QVERIFY(cpuNf4.ok());
        QCOMPARE(fallback->quantized.codes, cpuNf4->quantized.codes);
    }

    // Every linear layer of stories260K with its calibrated Hessian (tiny.txt, 32 x 256 tokens).
    void stories260K_data()
    {
        QTest::addColumn<QString>("fmt");
        QTest::addColumn<bool>("actOrder");
        QTest::newRow("int4:g32") << "int4:g32" << false;
        QTest::newRow("int3:g32:asym actorder") << "int3:g32:asym" << true;
        QTest::newRow("int8 actorder") << "int8" << true;
    }

    void stories260K()
    {
        if (!m_ctx) QSKIP(qPrintable(m_skip));
        QL_REQUIRE_DATA(kModel);
        QL_REQUIRE_DATA(kText);
        QFETCH(QString, fmt);
        QFETCH(bool, actOrder);
        auto model = openModel(ql::test::dataPath(kModel));
        QVERIFY(model.ok());
        auto tok = Tokenizer::create(*model);
        QVERIFY(tok.ok());
        auto text = readTextFile(ql::test::dataPath(kText));
        QVERIFY(text.ok());
        WindowOptions wo;
        wo.samples = 32;
        wo.seqLen = 256;
        wo.addBos = (*tok)->addBosByDefault();
        auto windows = makeCalibrationWindows(**tok, {*text}, wo);
        QVERIFY(windows.ok());
        auto llama = LlamaModel::create(*model);
        QVERIFY(llama.ok());
        CalibrationConfig config;
        config.hessian = HessianPrecision::Float64;
        auto calib = calibrateWindows(*llama, **tok, *windows, config);
        QVERIFY(calib.ok());
        auto f = parseQuantFormat(fmt.toStdString());
        QVERIFY(f.ok());
        GptqOptions o;
        o.actOrder = actOrder;
        std::size_t total = 0, equal[2] = {};
        int matrices = 0;
        for (const TensorInfo& t : model->tensors) {
            const std::string probe = inputProbeName(t);
            if (probe.empty() || !isLinearWeight(t.role) || t.shape.size() != 2) continue;
            const ProbeStats* p = calib->find(probe);
            QVERIFY2(p, probe.c_str());
            Layer l;
            l.rows = t.shape[0];
            l.cols = t.shape[1];
            QCOMPARE(std::int64_t(p->stats.channels()), l.cols);
            auto w = dequantizeTensor(*model, t);
            QVERIFY(w.ok());
            l.w = std::move(*w);
            l.h = p->stats.hessian();
            for (double& v : l.h) v = double(float(v));
            if (checkFormatFits(*f, l.rows, l.cols).ok() == false) continue;
            auto cpu = quantizeGptq(l.w.data(), l.rows, l.cols, l.h, *f, o);
            QVERIFY2(cpu.ok(), cpu.ok() ? "" : cpu.error().message.c_str());
            for (std::size_t k = 0; k < 2; ++k) {
                auto gpu = runGpu(l, *f, o, {}, kFactors[k]);
                QVERIFY2(gpu.ok(), gpu.ok() ? "" : gpu.error().message.c_str());
                const std::string what = t.name + factorName(kFactors[k]);
                const Agreement a = compare(what.c_str(), *cpu, *gpu);
                if (QTest::currentTestFailed()) return;
                QVERIFY2(a.codes >= 0.995, what.c_str());
                equal[k] +=
                    std::size_t(std::llround(a.codes * double(cpu->quantized.codes.size())));
            }
            total += cpu->quantized.codes.size();
            ++matrices;
        }
        QVERIFY(matrices >= 5 * 3);
        for (std::size_t k = 0; k < 2; ++k) {
            const double all = double(equal[k]) / double(total);
            qInfo("stories260K %s%s: %d matrices, codes %.4f%% equal overall", qPrintable(fmt),
                  factorName(kFactors[k]), matrices, 100 * all);
            QVERIFY(all >= 0.999);
        }
    }
};

}  // namespace

QTEST_APPLESS_MAIN(TestCudaGptq)
#include "test_cuda_gptq.moc"
