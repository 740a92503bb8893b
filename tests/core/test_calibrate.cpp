// Calibration on stories260K: the statistics equal direct recomputation from the captured
// activations (abs-max = max |x|, Hessian = XᵀX), windows are reproducible from the seed, and the
// result survives the HDF5 session round trip. Calibrating through a ModelRunner (issue #5; here
// the CPU runner, batched) gives the LlamaModel path's result; tests/gpu/test_cuda_calibrate.cpp
// holds the CUDA runner to the same reference.
#include <QtTest>

#include <cmath>

#include "calib/calibrate.h"
#include "io/model_loader.h"
#include "model/llama_runner.h"
#include "session/session.h"
#include "test_data.h"

using namespace ql;

namespace {

const char* kModel = "models/stories260K/stories260K.gguf";
const char* kText = "text/calibration/tiny.txt";

// Records every activation fed to one probe site.
class Capture : public ForwardProbe {
public:
    Capture(int block, LinearGroup group) : m_block(block), m_group(group) {}
    void onLinearInput(int block, LinearGroup group,
                       const Eigen::Ref<const MatrixXfRowMajor>& x) override
    {
        if (block == m_block && group == m_group) rows.push_back(x);
    }
    std::vector<MatrixXfRowMajor> rows;

private:
    int m_block;
    LinearGroup m_group;
};

}  // namespace

class TestCalibrate : public QObject {
    Q_OBJECT
private slots:
    void initTestCase()
    {
        QL_REQUIRE_DATA(kModel);
        QL_REQUIRE_DATA(kText);
        auto model = openModel(ql::test::dataPath(kModel));
        QVERIFY(model.ok());
        auto llama = LlamaModel::create(*model);
        QVERIFY(llama.ok());
        auto tok = Tokenizer::create(*model);
        QVERIFY(tok.ok());
        m_llama = std::make_unique<LlamaModel>(std::move(llama).value());
        m_tok = std::move(tok).value();
        auto text = readTextFile(ql::test::dataPath(kText));
        QVERIFY(text.ok());
        m_text = std::move(text).value();
    }

    void statisticsMatchCapturedActivations_data()
    {
        QTest::addColumn<int>("block");
        QTest::addColumn<int>("group");
        QTest::newRow("blk.0 qkv") << 0 << int(LinearGroup::AttnQkv);
        QTest::newRow("blk.2 attn_output") << 2 << int(LinearGroup::AttnOutput);
        QTest::newRow("blk.4 ffn_down") << 4 << int(LinearGroup::FfnDown);
    }
    void statisticsMatchCapturedActivations()
    {
        QFETCH(int, block);
        QFETCH(int, group);
        WindowOptions wo;
        wo.samples = 6;
        wo.seqLen = 96;
        wo.seed = 42;
        auto windows = makeCalibrationWindows(*m_tok, {m_text}, wo);
        QVERIFY(windows.ok());
        QCOMPARE(int(windows->size()), 6);
        for (const auto& w : *windows) {
            QCOMPARE(int(w.tokens.size()), 96);
            QCOMPARE(w.tokens[0], m_tok->bos());
        }
        CalibrationConfig config;
        config.hessian = HessianPrecision::Float64;
        auto result = calibrateWindows(*m_llama, *m_tok, *windows, config);
        QVERIFY2(result.ok(), result.ok() ? "" : result.error().message.c_str());
        QCOMPARE(int(result->probes.size()), 5 * 4);
        QCOMPARE(result->tokens, std::int64_t(6 * 96));

        Capture capture(block, LinearGroup(group));
        for (const auto& w : *windows) QVERIFY(m_llama->logits(w.tokens, {}, &capture).ok());
        const ProbeStats* p = result->find(probeName(block, probeSiteOf(LinearGroup(group))));
        QVERIFY(p);
        const int c = p->stats.channels();
        QCOMPARE(c, int(capture.rows[0].cols()));
        Eigen::MatrixXd h = Eigen::MatrixXd::Zero(c, c);
        std::vector<float> absMax(c, 0.0f);
        for (const auto& x : capture.rows) {
            Eigen::MatrixXd xd = x.cast<double>();
            h += xd.transpose() * xd;
            for (int j = 0; j < c; ++j)
                absMax[j] = std::max(absMax[j], x.col(j).cwiseAbs().maxCoeff());
        }
        QCOMPARE(p->stats.channelAbsMax(), absMax);
        auto hs = p->stats.hessian();
        double worst = 0;
        for (int a = 0; a < c; ++a)
            for (int b = 0; b < c; ++b)
                worst = std::max(worst,
                                 std::fabs(hs[a * c + b] - h(a, b)) / std::sqrt(h(a, a) * h(b, b)));
        QVERIFY2(worst < 1e-9, qPrintable(QString("Hessian relative error %1").arg(worst)));
        // The largest activation is located exactly, and its token text is resolved.
        const auto& top = p->stats.top().front();
        float atTop = capture.rows[top.sample](top.position, top.channel);
        QCOMPARE(atTop, top.value);
        QVERIFY(!p->topContext.front().token.empty());
    }

    void seedReproducesWindows()
    {
        WindowOptions wo;
        wo.samples = 4;
        wo.seqLen = 32;
        wo.seed = 7;
        auto a = makeCalibrationWindows(*m_tok, {m_text}, wo);
        auto b = makeCalibrationWindows(*m_tok, {m_text}, wo);
        wo.seed = 8;
        auto c = makeCalibrationWindows(*m_tok, {m_text}, wo);
        QVERIFY(a.ok() && b.ok() && c.ok());
        for (int i = 0; i < 4; ++i) QCOMPARE((*a)[i].tokens, (*b)[i].tokens);
        QVERIFY((*a)[0].tokens != (*c)[0].tokens);
        wo.consecutive = true;
        auto d = makeCalibrationWindows(*m_tok, {m_text}, wo);
        QVERIFY(d.ok());
        auto stream = m_tok->encode(m_text, false);
        QCOMPARE((*d)[1].tokens[1], stream[31]);  // BOS + 31 tokens per window
    }

    void sessionRoundTripOfRealCalibration()
    {
        CalibrationConfig config;
        config.textFiles = {ql::test::dataPath(kText)};
        config.samples = 3;
        config.seqLen = 64;
        config.seed = 1;
        auto model = openModel(ql::test::dataPath(kModel));
        QVERIFY(model.ok());
        int calls = 0;
        auto r = calibrate(*m_llama, *m_tok, config, [&](double, std::string_view) {
            ++calls;
            return true;
        });
        QVERIFY(r.ok());
        QVERIFY(calls > 0);
        auto id = identifyModel(*model);
        QVERIFY(id.ok());
        QTemporaryDir dir;
        const std::string path = dir.filePath("s.h5").toStdString();
        QVERIFY(writeSession(path, {*id, *r}).ok());
        auto back = readSession(path);
        QVERIFY(back.ok());
        QVERIFY(checkModelIdentity(back->model, *id).ok());
        QCOMPARE(back->calibration->probes.size(), r->probes.size());
        for (std::size_t i = 0; i < r->probes.size(); ++i) {
            QCOMPARE(back->calibration->probes[i].name, r->probes[i].name);
            QCOMPARE(back->calibration->probes[i].stats.hessian(), r->probes[i].stats.hessian());
            QCOMPARE(back->calibration->probes[i].topContext.front().before,
                     r->probes[i].topContext.front().before);
        }
    }

    void runnerMatchesModelPath()
    {
        WindowOptions wo;
        wo.samples = 7;
        wo.seqLen = 64;
        wo.seed = 3;
        auto windows = makeCalibrationWindows(*m_tok, {m_text}, wo);
        QVERIFY(windows.ok());
        // A shorter last window: the runner batches equal lengths only.
        windows->back().tokens.resize(40);
        CalibrationConfig config;
        auto ref = calibrateWindows(*m_llama, *m_tok, *windows, config);
        QVERIFY(ref.ok());
        CpuLlamaRunner runner(*m_llama);
        RunnerCalibrationOptions batching;
        batching.batch = 3;
        int calls = 0;
        auto got = calibrateWindows(
            runner, *m_tok, *windows, config,
            [&](double f, std::string_view) {
                ++calls;
                return f >= 0 && f <= 1;
            },
            batching);
        QVERIFY2(got.ok(), got.ok() ? "" : got.error().message.c_str());
        QVERIFY(calls > 0);
        QCOMPARE(got->tokens, ref->tokens);
        QCOMPARE(got->device, runner.device().name + ", f32");
        QCOMPARE(got->probes.size(), ref->probes.size());
        for (std::size_t i = 0; i < ref->probes.size(); ++i) {
            const ProbeStats& a = got->probes[i];
            const ProbeStats& b = ref->probes[i];
            QCOMPARE(a.name, b.name);
            QCOMPARE(a.stats.tokenCount(), b.stats.tokenCount());
            QCOMPARE(a.stats.channelAbsMax(), b.stats.channelAbsMax());
            QCOMPARE(a.stats.sumAbs(), b.stats.sumAbs());
            QCOMPARE(a.stats.sumSquare(), b.stats.sumSquare());
            QCOMPARE(a.stats.hessian(), b.stats.hessian());
            QCOMPARE(a.stats.histogram().counts, b.stats.histogram().counts);
            QCOMPARE(a.stats.top().size(), b.stats.top().size());
            for (std::size_t k = 0; k < a.stats.top().size(); ++k) {
                QCOMPARE(a.stats.top()[k].value, b.stats.top()[k].value);
                QCOMPARE(a.stats.top()[k].sample, b.stats.top()[k].sample);
                QCOMPARE(a.stats.top()[k].position, b.stats.top()[k].position);
                QCOMPARE(a.topContext[k].token, b.topContext[k].token);
                QCOMPARE(a.topContext[k].before, b.topContext[k].before);
            }
        }
        // The runner is left without statistics.
        QCOMPARE(runner.takeStats().ok(), false);
        // Cancelling stops the run with Cancelled.
        auto cancelled = calibrateWindows(
            runner, *m_tok, *windows, config, [](double, std::string_view) { return false; },
            batching);
        QVERIFY(!cancelled.ok());
        QCOMPARE(cancelled.error().code, ErrorCode::Cancelled);
    }

    void cancelStopsEarly()
    {
        CalibrationConfig config;
        config.textFiles = {ql::test::dataPath(kText)};
        config.samples = 50;
        config.seqLen = 64;
        int calls = 0;
        auto r = calibrate(*m_llama, *m_tok, config,
                           [&](double, std::string_view) { return ++calls < 5; });
        QVERIFY(!r.ok());
        QCOMPARE(r.error().code, ErrorCode::Cancelled);
    }

private:
    std::unique_ptr<LlamaModel> m_llama;
    std::unique_ptr<Tokenizer> m_tok;
    std::string m_text;
};

QTEST_APPLESS_MAIN(TestCalibrate)
#include "test_calibrate.moc"
