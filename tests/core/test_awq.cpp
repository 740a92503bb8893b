// AWQ (quant/awq.h):
//  (a) on random weights whose inputs have a few outlier channels (H built from such activations),
//      AWQ's output error tr(dW H dW^T) is below RTN's at int4:g32 and int3:g32;
//  (b) folding is exact: stories260K with the folded norms / ffn_up and the scaled, unquantized
//      weights gives the original logits to 1e-4;
//  (c) stories260K calibrated on tiny.txt (32 x 256): AWQ's total output error is below RTN's at
//      int4:g32 and int3:g32, through quantizeModel; option parsing;
//  (d) quantlens-cli quantize / eval with an awq layout calibrate on the fly from --text /
//      --calib-text and log each scaled tensor's alpha and error change against rtn on stderr.
#include <QtTest>

#include <QProcess>
#include <QTemporaryDir>

#include <Eigen/Dense>
#include <cmath>
#include <random>

#include "calib/calibrate.h"
#include "io/model_loader.h"
#include "layout/layout.h"
#include "model/llama.h"
#include "quant/awq.h"
#include "quant/format.h"
#include "quant/ggml_dequant.h"
#include "quant/quantize_model.h"
#include "test_data.h"

using namespace ql;

namespace {

const char* kModel = "models/stories260K/stories260K.gguf";
const char* kCalibText = "text/calibration/tiny.txt";

}  // namespace

class TestAwq : public QObject {
    Q_OBJECT

private slots:
    void options()
    {
        using Opts = std::vector<std::pair<std::string, std::string>>;
        auto d = parseAwqOptions(Opts{});
        QVERIFY(d.ok());
        QCOMPARE(d->grid, 20);
        QVERIFY(!d->clip);
        auto o = parseAwqOptions(Opts{{"grid", "10"}, {"clip", "true"}});
        QVERIFY(o.ok());
        QCOMPARE(o->grid, 10);
        QVERIFY(o->clip);
        QCOMPARE(awqOptionsText(*o), std::string("grid=10 clip"));
        QVERIFY(!parseAwqOptions(Opts{{"grid", "0"}}).ok());
        QVERIFY(!parseAwqOptions(Opts{{"damp", "0.1"}}).ok());
        auto layout = Layout::parse("*=int4:g32:awq:grid=10:clip=true");
        QVERIFY(layout.ok());
    }

    // (a)
    void randomOutliers()
    {
        const std::int64_t rows = 96, cols = 128, tokens = 1024;
        std::mt19937_64 rng(7);
        std::normal_distribution<double> n01(0.0, 1.0);
        std::vector<float> w(std::size_t(rows * cols));
        for (auto& v : w) v = float(0.05 * n01(rng));
        Eigen::VectorXd chanScale = Eigen::VectorXd::Ones(cols);
        for (int c : {3, 17, 40, 77, 100, 121}) chanScale[c] = 20.0;
        Eigen::MatrixXd x(tokens, cols);
        for (std::int64_t t = 0; t < tokens; ++t)
            for (std::int64_t c = 0; c < cols; ++c) x(t, c) = n01(rng) * chanScale[c];
        const Eigen::MatrixXd hm = x.transpose() * x;
        std::vector<double> h(std::size_t(cols * cols));
        for (std::int64_t i = 0; i < cols; ++i)
            for (std::int64_t j = 0; j < cols; ++j) h[std::size_t(i * cols + j)] = hm(i, j);
        std::vector<double> meanAbs(static_cast<std::size_t>(cols));
        for (std::int64_t c = 0; c < cols; ++c)
            meanAbs[std::size_t(c)] = x.col(c).cwiseAbs().mean();

        for (const char* fmt : {"int4:g32", "int3:g32"}) {
            auto f = parseQuantFormat(fmt);
            QVERIFY(f.ok());
            AwqLayer layer{w.data(), rows, cols, *f};
            auto s = searchAwqScales(std::span<const AwqLayer>(&layer, 1), meanAbs, h, {});
            QVERIFY(s.ok());
            qInfo("%s: alpha %.2f, error %.4e vs rtn %.4e", fmt, s->alpha, s->awqError[0],
                  s->rtnError[0]);
            QVERIFY(s->alpha > 0);
            QVERIFY(s->awqError[0] < 0.9 * s->rtnError[0]);
        }
    }

    // (b) and (c)
    void stories260K()
    {
        QL_REQUIRE_DATA(kModel);
        QL_REQUIRE_DATA(kCalibText);
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
        auto reference = LlamaModel::create(*model);
        QVERIFY(reference.ok());
        CalibrationConfig config;
        config.hessian = HessianPrecision::Float64;
        auto calib = calibrateWindows(*reference, **tok, *windows, config);
        QVERIFY(calib.ok());

        // Without a calibration: a clear error.
        auto awqLayout = Layout::parse("*=int4:g32:awq");
        QVERIFY(awqLayout.ok());
        auto none = quantizeModel(*model, *awqLayout, nullptr);
        QVERIFY(!none.ok());
        QVERIFY(none.error().message.find("Hessian") != std::string::npos);

        // (b) folding is exact.
        auto plan = awqLayout->resolve(*model);
        QVERIFY(plan.ok());
        auto transform = computeAwqTransform(*model, *plan, &*calib);
        QVERIFY(transform.ok());
        QVERIFY(transform->find("blk.0.attn_norm.weight"));
        QVERIFY(transform->find("blk.0.ffn_norm.weight"));
        QVERIFY(transform->find("blk.0.ffn_up.weight"));
        QVERIFY(!transform->find("blk.0.attn_output.weight"));
        LlamaLoadOptions options;
        const AwqTransform& tr = *transform;
        const Model& m = *model;
        options.override = [&](const TensorInfo& t) -> Result<std::optional<std::vector<float>>> {
            const AwqTensorPlan* p = tr.find(t.name);
            if (!p) return std::optional<std::vector<float>>();
            auto v = dequantizeTensor(m, t);
            if (!v) return v.error();
            const std::int64_t cols = t.shape.back();
            p->apply(*v, std::int64_t(v->size()) / cols, cols);
            return std::optional<std::vector<float>>(std::move(v).value());
        };
        auto folded = LlamaModel::create(*model, options);
        QVERIFY(folded.ok());
        const auto& tokens = (*windows)[0].tokens;
        std::vector<TokenId> head(tokens.begin(), tokens.begin() + 64);
        auto a = reference->logits(head);
        auto b = folded->logits(head);
        QVERIFY(a.ok() && b.ok());
        const double maxDiff = (*a - *b).cwiseAbs().maxCoeff();
        qInfo("folded vs original logits: max |diff| %.3e", maxDiff);
        QVERIFY(maxDiff < 1e-4);

        // (c) total output error, AWQ vs RTN, through quantizeModel.
        for (const char* fmt : {"int4:g32", "int3:g32"}) {
            double rtnTotal = 0, awqTotal = 0, searchRtn = 0;
            auto rtnLayout = Layout::parse(std::string("*=") + fmt);
            QVERIFY(rtnLayout.ok());
            auto rtn = quantizeModel(*model, *rtnLayout, &*calib);
            QVERIFY(rtn.ok());
            auto layout = Layout::parse(std::string("*=") + fmt + ":awq");
            QVERIFY(layout.ok());
            auto awq = quantizeModel(*model, *layout, &*calib);
            QVERIFY2(awq.ok(), awq.ok() ? "" : awq.error().message.c_str());
            int scaled = 0;
            for (const auto& t : awq->tensors) {
                if (!t.report.outputError) continue;
                const auto* r = rtn->find(t.report.plan.name);
                QVERIFY(r && r->report.outputError);
                rtnTotal += r->report.outputError->weighted;
                awqTotal += t.report.outputError->weighted;
                if (t.report.awq) {
                    ++scaled;
                    searchRtn += t.report.awq->rtnError;
                    qInfo("%s", awqSummary(t.report).c_str());
                }
                if (t.report.plan.name.find("attn_output") != std::string::npos)
                    QVERIFY(!t.report.note.empty());
            }
            qInfo("%s: total output error awq %.4e vs rtn %.4e", fmt, awqTotal, rtnTotal);
            QVERIFY(scaled >= 6);  // q, k, v, gate, up, down of each block
            QVERIFY(awqTotal < rtnTotal);
            QVERIFY(searchRtn > 0);
            // The folded norms come out as F32 tensors of the quantized model.
            const auto* norm = awq->find("blk.0.attn_norm.weight");
            QVERIFY(norm && !norm->report.copied);
        }
    }

    // (d)
    void cliOnTheFly()
    {
        QL_REQUIRE_DATA(kModel);
        QL_REQUIRE_DATA(kCalibText);
        QTemporaryDir dir;
        QVERIFY(dir.isValid());
        const QString model = QString::fromStdString(ql::test::dataPath(kModel));
        const QString text = QString::fromStdString(ql::test::dataPath(kCalibText));
        auto run = [](const QStringList& args, QByteArray& out, QByteArray& err) {
            QProcess p;
            p.start(QStringLiteral(QL_TEST_CLI), args);
            if (!p.waitForStarted(10000) || !p.waitForFinished(600000)) return -1;
            out = p.readAllStandardOutput();
            err = p.readAllStandardError();
            return p.exitStatus() == QProcess::NormalExit ? p.exitCode() : -1;
        };
        QByteArray out, err;
        const QString gguf = dir.filePath("awq.gguf");
        QCOMPARE(run({"quantize", model, "--layout", "*=int4:g32:awq", "--text", text, "--samples",
                      "16", "--seqlen", "128", "--out", gguf},
                     out, err),
                 0);
        QVERIFY2(err.contains("awq: blk.0.attn_q.weight int4:g32: alpha "), err.constData());
        QVERIFY(err.contains("awq: blk.4.ffn_down.weight"));
        QVERIFY(QFileInfo::exists(gguf));
        QCOMPARE(run({"eval", model, "--text", text, "--ctx", "128", "--chunks", "4", "--layout",
                      "*=int4:g32:awq", "--calib-text", text, "--samples", "16", "--seqlen", "128"},
                     out, err),
                 0);
        QVERIFY(err.contains("awq: blk.2.ffn_gate.weight"));
        QVERIFY(out.contains("KL mean"));
    }
};

QTEST_GUILESS_MAIN(TestAwq)
#include "test_awq.moc"
