// Watching and steering GPTQ (issue #6, live GPTQ view), on the real stories260K:
//  (a) a true-sequential run reports runStarted with every GPTQ layer in processing order, then
//      per layer layerStarted (Hessian diagonal, act-order permutation, damp), one layerProgress
//      per lazy block and layerFinished with the loss the result reports;
//  (b) a damp raise is reported between layerStarted and the first block;
//  (c) a run paused at its gate stops advancing, and resumed gives bit for bit the result of an
//      uninterrupted run;
//  (d) a run cancelled after N layers (through the progress callback, or the gate while paused)
//      returns a partial model with exactly N GPTQ layers, each equal to the uninterrupted run's,
//      the rest kept as in the source; it evaluates and exports to GGUF;
//  (e) quantizeModel with session Hessians reports the same events and keeps partial results.
#include <QtTest>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <mutex>
#include <numeric>
#include <thread>

#include "calib/calibrate.h"
#include "eval/evaluator.h"
#include "export/gguf_writer.h"
#include "io/model_loader.h"
#include "layout/layout.h"
#include "quant/gptq.h"
#include "quant/gptq_observer.h"
#include "quant/gptq_sequential.h"
#include "quant/quantize_model.h"
#include "test_data.h"
#include "util/pause_gate.h"

using namespace ql;

namespace {

const char* kModel = "models/stories260K/stories260K.gguf";
const char* kCalibText = "text/calibration/tiny.txt";
const char* kLayout = "*=int4:g32:gptq:block=32:actorder";

enum class Kind { Run, Start, Progress, Damp, Done };

struct Event {
    Kind kind;
    std::string tensor;
    GptqRunStart run;
    GptqLayerStart start;
    GptqLayerProgress progress;
    GptqDampRaise damp;
    GptqLayerDone done;
};

// Records every event; optional hooks run on the worker after a layer finishes.
class Recorder : public GptqObserver {
public:
    void runStarted(const GptqRunStart& e) override { push({Kind::Run, {}, e, {}, {}, {}, {}}); }
    void layerStarted(const GptqLayerStart& e) override
    {
        push({Kind::Start, e.tensor, {}, e, {}, {}, {}});
    }
    void layerProgress(const GptqLayerProgress& e) override
    {
        push({Kind::Progress, e.tensor, {}, {}, e, {}, {}});
    }
    void dampRaised(const GptqDampRaise& e) override
    {
        push({Kind::Damp, e.tensor, {}, {}, {}, e, {}});
    }
    void layerFinished(const GptqLayerDone& e) override
    {
        push({Kind::Done, e.tensor, {}, {}, {}, {}, e});
        const int n = ++finished;
        if (onFinished) onFinished(n);
    }

    std::vector<Event> events() const
    {
        std::lock_guard lock(m_mutex);
        return m_events;
    }
    std::size_t count() const
    {
        std::lock_guard lock(m_mutex);
        return m_events.size();
    }

    std::atomic_int finished{0};
    std::function<void(int)> onFinished;

private:
    void push(Event e)
    {
        std::lock_guard lock(m_mutex);
        m_events.push_back(std::move(e));
    }
    mutable std::mutex m_mutex;
    std::vector<Event> m_events;
};

bool sameTensor(const QuantizedTensor& a, const QuantizedTensor& b)
{
    return a.format == b.format && a.rows == b.rows && a.cols == b.cols && a.codes == b.codes &&
           a.scales == b.scales && a.zeroPoints == b.zeroPoints && a.blocks == b.blocks;
}

}  // namespace

class TestGptqObserver : public QObject {
    Q_OBJECT

    std::optional<Model> m_model;
    std::unique_ptr<Tokenizer> m_tokenizer;
    std::vector<TokenWindow> m_windows;
    std::optional<Layout> m_layout;
    std::optional<SequentialQuantization> m_full;  // uninterrupted, no observer
    double m_fullSeconds = 0;

    // On `use` when given (it must hold the unquantized weights), else on a fresh LlamaModel.
    Result<SequentialQuantization> runSequential(const QuantizeOptions& options,
                                                 const ProgressFn& progress = {},
                                                 LlamaModel* use = nullptr)
    {
        std::optional<LlamaModel> own;
        if (!use) {
            auto llama = LlamaModel::create(*m_model);
            if (!llama) return llama.error();
            own.emplace(std::move(llama).value());
            use = &*own;
        }
        return quantizeModelSequential(*m_model, *use, m_windows, *m_layout, progress, options);
    }

    // The full run's tensor, by name.
    const TensorQuantization& full(const std::string& name) const
    {
        const TensorQuantization* t = m_full->model.find(name);
        if (!t) qFatal("no tensor %s", name.c_str());
        return *t;
    }

private slots:
    void initTestCase()
    {
        QL_REQUIRE_DATA(kModel);
        QL_REQUIRE_DATA(kCalibText);
        auto model = openModel(ql::test::dataPath(kModel));
        QVERIFY(model.ok());
        m_model = std::move(model).value();
        auto tok = Tokenizer::create(*m_model);
        QVERIFY(tok.ok());
        m_tokenizer = std::move(tok).value();
        auto text = readTextFile(ql::test::dataPath(kCalibText));
        QVERIFY(text.ok());
        WindowOptions wo;
        wo.samples = 8;
        wo.seqLen = 128;
        wo.addBos = m_tokenizer->addBosByDefault();
        auto windows = makeCalibrationWindows(*m_tokenizer, {*text}, wo);
        QVERIFY(windows.ok());
        m_windows = std::move(windows).value();
        auto layout = Layout::parse(kLayout);
        QVERIFY(layout.ok());
        m_layout = std::move(layout).value();
        const auto t0 = std::chrono::steady_clock::now();
        auto full = runSequential({});
        QVERIFY2(full.ok(), full.ok() ? "" : full.error().message.c_str());
        m_fullSeconds =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        QVERIFY(!full->model.partial);
        m_full = std::move(full).value();
    }

    // (a)
    void eventOrderAndCounts()
    {
        Recorder rec;
        QuantizeOptions options;
        options.gptqObserver = &rec;
        auto r = runSequential(options);
        QVERIFY(r.ok());
        const auto events = rec.events();
        QVERIFY(!events.empty());
        QCOMPARE(events.front().kind, Kind::Run);
        const GptqRunStart& run = events.front().run;
        QVERIFY(run.sequential);
        // stories260K: 5 blocks of 7 matrices, all GPTQ; the embedding (tied head) is rtn.
        QCOMPARE(run.layers.size(), std::size_t(35));
        QCOMPARE(run.layers.front().tensor.substr(0, 6), std::string("blk.0."));
        QCOMPARE(run.layers.back().tensor, std::string("blk.4.ffn_down.weight"));

        std::size_t at = 1, progressEvents = 0;
        for (const GptqPlannedLayer& layer : run.layers) {
            QVERIFY(at < events.size());
            const Event& s = events[at++];
            QCOMPARE(s.kind, Kind::Start);
            QCOMPARE(s.tensor, layer.tensor);
            QCOMPARE(s.start.rows, layer.rows);
            QCOMPARE(s.start.cols, layer.cols);
            QCOMPARE(s.start.format, std::string("int4:g32"));
            QCOMPARE(s.start.blockSize, std::int64_t(32));
            QVERIFY(s.start.actOrder);
            QCOMPARE(s.start.damp, 0.01);
            QCOMPARE(std::int64_t(s.start.hessianDiagonal.size()), layer.cols);
            // The permutation sorts the diagonal descending.
            QCOMPARE(std::int64_t(s.start.order.size()), layer.cols);
            std::vector<std::int32_t> sorted = s.start.order;
            std::sort(sorted.begin(), sorted.end());
            for (std::int32_t i = 0; i < std::int32_t(sorted.size()); ++i) QCOMPARE(sorted[i], i);
            for (std::size_t i = 1; i < s.start.order.size(); ++i)
                QVERIFY(s.start.hessianDiagonal[std::size_t(s.start.order[i - 1])] >=
                        s.start.hessianDiagonal[std::size_t(s.start.order[i])]);
            const std::int64_t blocks = (layer.cols + 31) / 32;
            for (std::int64_t b = 0; b < blocks; ++b) {
                QVERIFY(at < events.size());
                const Event& p = events[at++];
                QCOMPARE(p.kind, Kind::Progress);
                QCOMPARE(p.tensor, layer.tensor);
                QCOMPARE(p.progress.block, b);
                QCOMPARE(p.progress.blocks, blocks);
                QCOMPARE(p.progress.column, std::min(layer.cols, 32 * (b + 1)));
                QCOMPARE(p.progress.fraction, double(p.progress.column) / double(layer.cols));
                ++progressEvents;
            }
            QVERIFY(at < events.size());
            const Event& d = events[at++];
            QCOMPARE(d.kind, Kind::Done);
            QCOMPARE(d.tensor, layer.tensor);
            const TensorQuantization* t = r->model.find(layer.tensor);
            QVERIFY(t && t->report.gptq);
            QCOMPARE(d.done.loss, t->report.gptq->loss);
            QCOMPARE(d.done.rtnLoss, t->report.gptq->rtnLoss);
            QCOMPARE(d.done.damp, t->report.gptq->damp);
            QVERIFY(d.done.loss > 0 && d.done.rtnLoss > 0);
            QVERIFY(d.done.error.relative > 0 && d.done.rtnError.relative > 0);
            QVERIFY(d.done.seconds >= 0);
        }
        QCOMPARE(at, events.size());
        // q/k/v, attn_output, gate, up: 64 columns = 2 blocks; ffn_down: 172 = 6 blocks.
        QCOMPARE(progressEvents, std::size_t(5 * (6 * 2 + 6)));
        // Watching changes nothing.
        for (const auto& t : r->model.tensors)
            QVERIFY2(sameTensor(t.quantized, full(t.report.plan.name).quantized),
                     t.report.plan.name.c_str());
    }

    // (b)
    void dampRaiseIsReported()
    {
        // An indefinite "Hessian": the first factorization fails.
        const std::int64_t rows = 4, cols = 8;
        std::vector<float> w(std::size_t(rows * cols));
        for (std::size_t i = 0; i < w.size(); ++i) w[i] = float(std::sin(double(i)));
        std::vector<double> h(std::size_t(cols * cols), 0.0);
        for (std::int64_t i = 0; i < cols; ++i) h[std::size_t(i * cols + i)] = 1.0;
        h[1] = h[std::size_t(cols)] = 1.5;  // [[1, 1.5], [1.5, 1]] has eigenvalue -0.5
        Recorder rec;
        GptqMonitor monitor{&rec, nullptr, "toy"};
        auto fmt = parseQuantFormat("int4:channel");
        QVERIFY(fmt.ok());
        auto g = quantizeGptq(w.data(), rows, cols, h, *fmt, {}, nullptr, {}, monitor);
        QVERIFY(g.ok());
        QVERIFY(!g->dampRaises.empty());
        const auto events = rec.events();
        QCOMPARE(events.front().kind, Kind::Start);
        QCOMPARE(events.front().start.damp, 0.01);
        std::size_t raises = 0;
        std::size_t i = 1;
        for (; i < events.size() && events[i].kind == Kind::Damp; ++i, ++raises) {
            QCOMPARE(events[i].damp.message, g->dampRaises[raises]);
            QVERIFY(events[i].damp.to > events[i].damp.from);
        }
        QCOMPARE(raises, g->dampRaises.size());
        QCOMPARE(events[i].kind, Kind::Progress);
        QCOMPARE(events.back().kind, Kind::Done);
        QCOMPARE(events.back().done.damp, g->damp);
        QCOMPARE(events.back().done.dampRaises, std::int64_t(raises));
    }

    // (c)
    void pauseAndResumeChangeNothing()
    {
        Recorder rec;
        PauseGate gate;
        rec.onFinished = [&gate](int n) {
            if (n == 5) gate.pause();
        };
        QuantizeOptions options;
        options.gptqObserver = &rec;
        options.pauseGate = &gate;
        std::optional<Result<SequentialQuantization>> result;
        std::thread worker([&] { result.emplace(runSequential(options)); });
        QTRY_VERIFY_WITH_TIMEOUT(gate.isHolding(), 60000);
        const std::size_t held = rec.count();
        QCOMPARE(rec.finished.load(), 5);
        std::this_thread::sleep_for(std::chrono::milliseconds(400));
        QCOMPARE(rec.count(), held);  // nothing advances while paused
        QVERIFY(gate.isHolding());
        gate.resume();
        worker.join();
        QVERIFY(result && result->ok());
        QCOMPARE(rec.finished.load(), 35);
        QVERIFY(!(*result)->model.partial);
        for (const auto& t : (*result)->model.tensors)
            QVERIFY2(sameTensor(t.quantized, full(t.report.plan.name).quantized),
                     t.report.plan.name.c_str());
    }

    // (d)
    void cancelAfterNLayersKeepsThem_data()
    {
        QTest::addColumn<int>("n");
        QTest::addColumn<bool>("throughGate");
        QTest::newRow("progress, 1") << 1 << false;
        QTest::newRow("progress, 12") << 12 << false;
        QTest::newRow("gate while paused, 20") << 20 << true;
    }

    void cancelAfterNLayersKeepsThem()
    {
        QFETCH(int, n);
        QFETCH(bool, throughGate);
        Recorder rec;
        PauseGate gate;
        std::atomic_bool stop{false};
        rec.onFinished = [&](int k) {
            if (k != n) return;
            if (throughGate)
                gate.pause();
            else
                stop = true;
        };
        QuantizeOptions options;
        options.gptqObserver = &rec;
        options.pauseGate = &gate;
        options.partialOnCancel = true;
        ProgressFn progress = [&](double, std::string_view) { return !stop.load(); };
        std::optional<Result<SequentialQuantization>> result;
        std::optional<LlamaModel> llama;
        auto keep = LlamaModel::create(*m_model);
        QVERIFY(keep.ok());
        llama.emplace(std::move(keep).value());
        std::thread worker([&] { result.emplace(runSequential(options, progress, &*llama)); });
        if (throughGate) {
            QTRY_VERIFY_WITH_TIMEOUT(gate.isHolding(), 60000);
            gate.cancel();
        }
        worker.join();
        QVERIFY(result);
        QVERIFY2(result->ok(), result->ok() ? "" : result->error().message.c_str());
        const QuantizedModel& q = (*result)->model;
        QVERIFY(q.partial);
        QCOMPARE(rec.finished.load(), n);
        QCOMPARE(q.tensors.size(), m_full->model.tensors.size());

        int gptqDone = 0;
        for (std::size_t i = 0; i < q.tensors.size(); ++i) {
            const TensorQuantization& t = q.tensors[i];
            const std::string& name = t.report.plan.name;
            QCOMPARE(name, m_full->model.tensors[i].report.plan.name);
            QCOMPARE(q.plan.tensors[i].format, t.quantized.format);
            if (t.report.unfinished) {
                // As in the source: its own type and bytes.
                const TensorInfo* info = m_model->find(name);
                QVERIFY(info);
                const auto bytes = m_model->data(*info);
                QVERIFY(std::equal(bytes.begin(), bytes.end(), t.quantized.blocks.begin(),
                                   t.quantized.blocks.end()));
                QVERIFY(!t.report.gptq);
                continue;
            }
            QVERIFY2(sameTensor(t.quantized, full(name).quantized), name.c_str());
            if (t.report.gptq) ++gptqDone;
        }
        QCOMPARE(gptqDone, n);
        QVERIFY(q.finishedCount() < q.tensors.size());
        QVERIFY(!q.plan.warnings.empty());
        QVERIFY(q.plan.warnings.back().find("partial model") != std::string::npos);

        // The LlamaModel holds exactly the partial model's weights.
        LlamaLoadOptions load;
        load.override = [&q](const TensorInfo& t) -> Result<std::optional<std::vector<float>>> {
            if (!q.find(t.name)) return std::optional<std::vector<float>>();
            auto w = dequantizedWeights(q, t.name);
            if (!w) return w.error();
            return std::optional<std::vector<float>>(std::move(w).value());
        };
        auto rebuilt = LlamaModel::create(*m_model, load);
        QVERIFY(rebuilt.ok());
        for (const auto& t : q.tensors) {
            const auto a = llama->weights().values(t.report.plan.name);
            const auto b = rebuilt->weights().values(t.report.plan.name);
            QVERIFY2(std::equal(a.begin(), a.end(), b.begin(), b.end()),
                     t.report.plan.name.c_str());
        }

        // It evaluates: between the unquantized model and the full GPTQ run.
        auto reference = LlamaModel::create(*m_model);
        QVERIFY(reference.ok());
        auto evalWindows = std::vector<TokenWindow>(m_windows.begin(), m_windows.begin() + 4);
        LlamaLogitsSource refSource(*reference), partSource(*rebuilt);
        auto part = evaluate(partSource, evalWindows, &refSource);
        QVERIFY(part.ok());
        QVERIFY(std::isfinite(part->ppl) && part->ppl > 1);
        QVERIFY(part->kl->mean > 0);

        // It exports: finished tensors in their format, the others in the source's type.
        const std::string path =
            (std::filesystem::temp_directory_path() /
             ("ql-partial-" + std::to_string(n) + "-" + std::to_string(::getpid()) + ".gguf"))
                .string();
        auto written = writeGguf(*m_model, q, path);
        QVERIFY2(written.ok(), written.ok() ? "" : written.error().message.c_str());
        auto reopened = openModel(path);
        QVERIFY(reopened.ok());
        for (const auto& t : q.tensors) {
            const TensorInfo* a = reopened->find(t.report.plan.name);
            QVERIFY(a);
            if (t.report.unfinished) QCOMPARE(a->type, m_model->find(a->name)->type);
        }
        std::filesystem::remove(path);
    }

    // (e)
    void sessionHessiansPartial()
    {
        auto llama = LlamaModel::create(*m_model);
        QVERIFY(llama.ok());
        CalibrationConfig config;
        config.hessian = HessianPrecision::Float64;
        auto calib = calibrateWindows(*llama, *m_tokenizer, m_windows, config);
        QVERIFY(calib.ok());
        Recorder rec;
        std::atomic_bool stop{false};
        rec.onFinished = [&](int k) {
            if (k == 4) stop = true;
        };
        QuantizeOptions options;
        options.gptqObserver = &rec;
        options.partialOnCancel = true;
        auto q = quantizeModel(
            *m_model, *m_layout, &*calib, [&](double, std::string_view) { return !stop.load(); },
            options);
        QVERIFY(q.ok());
        QVERIFY(q->partial);
        const auto events = rec.events();
        QCOMPARE(events.front().kind, Kind::Run);
        QVERIFY(!events.front().run.sequential);
        QCOMPARE(events.front().run.layers.size(), std::size_t(35));
        int gptq = 0;
        for (const auto& t : q->tensors) gptq += t.report.gptq ? 1 : 0;
        QCOMPARE(gptq, 4);
        // Without partialOnCancel a cancelled run is an error, as before.
        stop = false;
        rec.finished = 0;
        options.partialOnCancel = false;
        auto cancelled = quantizeModel(
            *m_model, *m_layout, &*calib, [&](double, std::string_view) { return !stop.load(); },
            options);
        QVERIFY(!cancelled.ok());
        QCOMPARE(cancelled.error().code, ErrorCode::Cancelled);
    }
};

QTEST_APPLESS_MAIN(TestGptqObserver)
#include "test_gptq_observer.moc"
