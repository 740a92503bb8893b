// Issue #8: exports and sessions.
//  * GPTQ packing (io/gptq_layout.h) against hand-computed words: 4-bit 0x76543210, 3-bit values
//    straddling word boundaries, zero-minus-one, a zero point 0 written mirrored.
//  * GPTQ safetensors of a quantized stories260K, read back by our loader: every packed layer
//    equals the in-memory QuantizedModel's decoded weights exactly (scales are fp16 values in
//    both), the other tensors exactly too when written as F32 (F16 by default: F16 rounding);
//    logits of the reopened folder agree with the in-memory quantized model's.
//  * tests/python/gptq_dequant.py (NumPy, written from the format's description) agrees with a
//    fake-quant F32 export, when python3 has numpy.
//  * Round trip: a GGUF of a quantized stories260K, opened again, evaluates exactly like the
//    in-memory quantized model (same PPL to print precision).
//  * Cancelled exports leave no file; the compatibility check lists what GPTQ cannot store.
//  * Sessions v2: every group round-trips; a session of stories260K reopens in under 1 s;
//    a changed model file is detected.
#include <QProcess>
#include <QTemporaryDir>
#include <QtTest>

#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "calib/calibrate.h"
#include "export/gguf_writer.h"
#include "export/hf_export.h"
#include "io/gptq_layout.h"
#include "io/model_loader.h"
#include "layout/layout.h"
#include "quant/ggml_dequant.h"
#include "quant/quantize_model.h"
#include "session/session.h"
#include "test_data.h"

using namespace ql;
namespace fs = std::filesystem;

namespace {

const std::string kStories = "models/stories260K/stories260K.gguf";
const std::string kEvalText = "text/eval/tinystories-valid-1000.txt";

QuantizedModel quantize(const Model& model, const std::string& rules)
{
    auto layout = Layout::parse(rules);
    if (!layout) qFatal("%s", layout.error().message.c_str());
    auto q = quantizeModel(model, *layout);
    if (!q) qFatal("%s", q.error().message.c_str());
    return std::move(q).value();
}

// Hugging Face row order of a GGUF llama q/k row (see io/safetensors.h).
std::int64_t ggufRow(std::int64_t hfRow, std::int64_t headDim)
{
    const std::int64_t half = headDim / 2, head = hfRow / headDim, within = hfRow % headDim;
    return head * headDim + 2 * (within % half) + within / half;
}

std::vector<float> tensorFloats(const Model& m, const TensorInfo& t)
{
    std::vector<float> v(std::size_t(t.elementCount()));
    auto bytes = m.data(t);
    if (t.type == TensorType::F32) {
        std::memcpy(v.data(), bytes.data(), v.size() * 4);
    } else {
        for (std::size_t k = 0; k < v.size(); ++k) {
            std::uint16_t h;
            std::memcpy(&h, bytes.data() + 2 * k, 2);
            v[k] = fp16ToFp32(h);
        }
    }
    return v;
}

double ppl(const Model& model, const LlamaLoadOptions& options, int chunks)
{
    auto llama = LlamaModel::create(model, options);
    if (!llama) qFatal("%s", llama.error().message.c_str());
    auto tok = Tokenizer::create(model);
    if (!tok) qFatal("%s", tok.error().message.c_str());
    auto text = readTextFile(ql::test::dataPath(kEvalText));
    auto windows = makeLlamaCppChunks(**tok, *text, 512, chunks);
    LlamaLogitsSource src(*llama);
    auto r = evaluate(src, windows);
    if (!r) qFatal("%s", r.error().message.c_str());
    return r->ppl;
}

bool pythonHas(const QString& modules)
{
    QProcess p;
    p.start("python3", {"-c", "import " + modules});
    return p.waitForFinished(60000) && p.exitStatus() == QProcess::NormalExit && p.exitCode() == 0;
}

}  // namespace

class TestHfExport : public QObject {
    Q_OBJECT
private slots:
    void packing()
    {
        // 4 bits: value k at bits 4k of its word.
        std::uint32_t v[8] = {0, 1, 2, 3, 4, 5, 6, 7}, w[1];
        gptqPackSequence(v, 8, 4, w);
        QCOMPARE(w[0], 0x76543210u);
        // 3 bits: 32 values in 3 words; value 10 straddles words 0/1, value 21 words 1/2.
        std::uint32_t v3[32] = {}, w3[3];
        v3[10] = 0b101;  // low 2 bits -> word 0 bits 30-31, high bit -> word 1 bit 0
        v3[21] = 0b011;  // low bit -> word 1 bit 31, high 2 bits -> word 2 bits 0-1
        v3[31] = 0b111;  // word 2 bits 29-31
        gptqPackSequence(v3, 32, 3, w3);
        QCOMPARE(w3[0], 0x40000000u);
        QCOMPARE(w3[1], 0x80000001u);
        QCOMPARE(w3[2], 0xE0000001u);
        for (int k = 0; k < 32; ++k) QCOMPARE(gptqUnpackValue(w3, k, 3), v3[k]);
        // Zero minus one; a zero point 0 mirrored (scale negated, codes reflected), exactly.
        const std::vector<std::uint8_t> codes = {0, 3, 15, 7, 9, 1,  2,  4,
                                                 5, 6, 7,  8, 9, 10, 11, 12};  // 2 rows x 8
        const std::vector<std::uint8_t> zeros = {8, 0};
        const std::vector<std::uint16_t> scales = {fp32ToFp16(0.5f), fp32ToFp16(0.25f)};
        const std::vector<std::int32_t> gIdx(8, 0);
        std::vector<std::uint8_t> codes8(8 * 8), zeros8(8);
        std::vector<std::uint16_t> scales8(8);
        for (int o = 0; o < 8; ++o) {
            for (int i = 0; i < 8; ++i) codes8[o * 8 + i] = codes[(o % 2) * 8 + i];
            zeros8[o] = zeros[o % 2];
            scales8[o] = scales[o % 2];
        }
        std::int64_t mirrored = 0;
        auto L = gptqPack(4, 8, 8, 1, codes8, zeros8, scales8, gIdx, &mirrored);
        QVERIFY(L.ok());
        QCOMPARE(mirrored, std::int64_t(4));
        // Stored zeros: 7 for the rows with zero 8, 14 (= 15 - 1) for the mirrored rows.
        QCOMPARE(std::uint32_t(L->qzeros[0]), 0xE7E7E7E7u);
        auto w8 = gptqDequantize(*L);
        QVERIFY(w8.ok());
        for (int o = 0; o < 8; ++o)
            for (int i = 0; i < 8; ++i) {
                const float s = o % 2 ? 0.25f : 0.5f;
                const float want = s * float(int(codes8[o * 8 + i]) - zeros8[o]);
                QCOMPARE((*w8)[o * 8 + i], want);
            }
        // Shapes that do not pack are refused.
        QVERIFY(!gptqPack(4, 8, 12, 1, std::vector<std::uint8_t>(96), zeros8, scales8,
                          std::vector<std::int32_t>(12, 0), nullptr)
                     .ok());
    }

    void compatibility()
    {
        QL_REQUIRE_DATA(kStories);
        auto model = openModel(ql::test::dataPath(kStories));
        QVERIFY(model.ok());
        auto layout = Layout::parse("*=int4:g32; blk.1.attn_q.weight=q8_0");
        QVERIFY(layout.ok());
        auto plan = layout->resolve(*model);
        QVERIFY(plan.ok());
        auto c = checkExportCompatibility(ExportTarget::GptqSafetensors, *model, *plan);
        QVERIFY(c.ok());
        QVERIFY(c->gptqFormat && *c->gptqFormat == *parseQuantFormat("int4:g32"));
        auto has = [&](const std::string& tensor, const std::string& fallbackPart) {
            for (const auto& i : c->issues)
                if (i.tensor == tensor && i.fallback.find(fallbackPart) != std::string::npos)
                    return true;
            return false;
        };
        QVERIFY(has("blk.1.attn_q.weight", "left unquantized"));    // another format
        QVERIFY(has("blk.0.ffn_down.weight", "left unquantized"));  // 172 inputs do not pack
        QVERIFY(has("token_embd.weight", "decoded values"));
        HfExportOptions re;
        re.fallback = GptqFallback::Requantize;
        auto c2 = checkExportCompatibility(ExportTarget::GptqSafetensors, *model, *plan, re);
        QVERIFY(c2.ok());
        bool requantized = false;
        for (const auto& i : c2->issues)
            requantized |= i.tensor == "blk.1.attn_q.weight" &&
                           i.fallback.find("re-quantized") != std::string::npos;
        QVERIFY(requantized);
        // Nothing in a GPTQ format: refused with KeepFloat, int4:g128 with Requantize.
        auto q4k = Layout::parse("*=q4_0")->resolve(*model);
        QVERIFY(!checkExportCompatibility(ExportTarget::GptqSafetensors, *model, *q4k).ok());
        auto c3 = checkExportCompatibility(ExportTarget::GptqSafetensors, *model, *q4k, re);
        QVERIFY(c3.ok());
        QCOMPARE(formatToString(*c3->gptqFormat), formatToString(*parseQuantFormat("int4:g128")));
        // GGUF: INT formats are written as decoded floats.
        auto cg = checkExportCompatibility(ExportTarget::Gguf, *model, *plan);
        QVERIFY(cg.ok());
        QVERIFY(!cg->issues.empty());
    }

    void gptqRoundTrip_data()
    {
        QTest::addColumn<QString>("layout");
        QTest::newRow("int4 g32 sym") << "*=int4:g32";
        QTest::newRow("int4 g32 asym") << "*=int4:g32:asym";
        QTest::newRow("int3 g32 asym") << "*=int3:g32:asym";
        QTest::newRow("int2 g16 asym") << "*=int2:g16:asym";
        QTest::newRow("int8 channel") << "*=int8";
        QTest::newRow("mixed q4_0 kept float") << "*=int4:g32; blk.2.*=q4_0";
    }
    void gptqRoundTrip()
    {
        QFETCH(QString, layout);
        QL_REQUIRE_DATA(kStories);
        auto model = openModel(ql::test::dataPath(kStories));
        QVERIFY(model.ok());
        const QuantizedModel q = quantize(*model, layout.toStdString());
        QTemporaryDir tmp;
        const std::string dir = tmp.filePath("gptq").toStdString();
        HfExportOptions options;
        options.floatType = TensorType::F32;  // exact for the tensors left float, too
        auto r = writeGptqFolder(*model, q, dir, options);
        QVERIFY2(r.ok(), r.ok() ? "" : r.error().message.c_str());
        QVERIFY(fs::exists(dir + "/config.json") && fs::exists(dir + "/model.safetensors"));
        for (const auto& e : fs::directory_iterator(dir))
            QVERIFY2(e.path().string().find(".partial") == std::string::npos, e.path().c_str());

        auto back = openModel(dir);
        QVERIFY2(back.ok(), back.ok() ? "" : back.error().message.c_str());
        QVERIFY(back->metadata.find("quantlens.gptq"));
        const std::int64_t hd = model->hparams.headDim;
        int packed = 0;
        for (const auto& t : q.tensors) {
            const std::string& name = t.report.plan.name;
            const TensorInfo* info = back->find(name);
            QVERIFY2(info, name.c_str());
            auto want = dequantizedWeights(q, name);
            QVERIFY(want.ok());
            const std::vector<float> got = tensorFloats(*back, *info);
            QCOMPARE(got.size(), want->size());
            const TensorInfo* src = model->find(name);
            const bool permuted = src->role == TensorRole::AttnQ || src->role == TensorRole::AttnK;
            const std::int64_t cols = t.report.plan.shape.size() == 1 ? 1 : t.report.plan.cols;
            const std::int64_t rows = std::int64_t(got.size()) / cols;
            for (std::int64_t row = 0; row < rows; ++row) {
                const std::int64_t from = permuted ? ggufRow(row, hd) : row;
                for (std::int64_t c = 0; c < cols; ++c)
                    if (got[std::size_t(row * cols + c)] != (*want)[std::size_t(from * cols + c)])
                        QFAIL(qPrintable(QString("%1 [%2, %3]: %4 != %5")
                                             .arg(QString::fromStdString(name))
                                             .arg(row)
                                             .arg(c)
                                             .arg(got[std::size_t(row * cols + c)])
                                             .arg((*want)[std::size_t(from * cols + c)])));
            }
            packed +=
                info->type == TensorType::F32 && t.quantized.format.kind == QuantKind::Uniform;
        }
        QVERIFY(packed > 0);
        QCOMPARE(r->compatibility.gptqLayers > 0, true);
    }

    void numpyDequantizerAgrees()
    {
        QL_REQUIRE_DATA(kStories);
        if (!pythonHas("numpy")) QSKIP("python3 cannot import numpy: NumPy GPTQ check skipped");
        auto model = openModel(ql::test::dataPath(kStories));
        QVERIFY(model.ok());
        for (const char* rules : {"*=int4:g32:asym", "*=int3:g32", "*=int2:g16:asym", "*=int8"}) {
            const QuantizedModel q = quantize(*model, rules);
            QTemporaryDir tmp;
            const std::string g = tmp.filePath("g").toStdString(),
                              f = tmp.filePath("f").toStdString();
            QVERIFY(writeGptqFolder(*model, q, g).ok());
            HfExportOptions fo;
            fo.floatType = TensorType::F32;
            QVERIFY(writeFakeQuantFolder(*model, q, f, fo).ok());
            QProcess p;
            p.start("python3", {QString(QL_TEST_SOURCE_DIR) + "/python/gptq_dequant.py",
                                QString::fromStdString(g), QString::fromStdString(f)});
            QVERIFY(p.waitForFinished(120000));
            const QString out =
                QString::fromUtf8(p.readAllStandardOutput() + p.readAllStandardError());
            qInfo("%s: %s", rules, qPrintable(out.trimmed()));
            QVERIFY2(p.exitCode() == 0, qPrintable(out));
        }
    }

    void fakeQuantDtypes()
    {
        QL_REQUIRE_DATA(kStories);
        auto model = openModel(ql::test::dataPath(kStories));
        QVERIFY(model.ok());
        const QuantizedModel q = quantize(*model, "*=q4_0");
        for (TensorType t : {TensorType::F16, TensorType::BF16}) {
            QTemporaryDir tmp;
            const std::string dir = tmp.filePath("fq").toStdString();
            HfExportOptions o;
            o.floatType = t;
            auto r = writeFakeQuantFolder(*model, q, dir, o);
            QVERIFY(r.ok());
            auto back = openModel(dir);
            QVERIFY2(back.ok(), back.ok() ? "" : back.error().message.c_str());
            const TensorInfo* v = back->find("blk.0.attn_v.weight");
            QVERIFY(v && v->type == t);
        }
    }

    void cancelledExportLeavesNothing()
    {
        QL_REQUIRE_DATA(kStories);
        auto model = openModel(ql::test::dataPath(kStories));
        QVERIFY(model.ok());
        const QuantizedModel q = quantize(*model, "*=int4:g32");
        QTemporaryDir tmp;
        const std::string dir = tmp.filePath("out").toStdString();
        int calls = 0;
        auto r = writeGptqFolder(*model, q, dir, {},
                                 [&](double, std::string_view) { return ++calls < 5; });
        QVERIFY(!r.ok());
        QCOMPARE(r.error().code, ErrorCode::Cancelled);
        QVERIFY(!fs::exists(dir));  // created by the export, removed again
        fs::create_directories(dir);
        std::ofstream(dir + "/config.json") << "{\"old\": true}";
        calls = 0;
        QVERIFY(!writeFakeQuantFolder(*model, q, dir, {}, [&](double, std::string_view) {
                     return ++calls < 5;
                 }).ok());
        std::vector<std::string> left;
        for (const auto& e : fs::directory_iterator(dir)) left.push_back(e.path().filename());
        QCOMPARE(left.size(), std::size_t(1));  // the old config.json, untouched
        std::ifstream in(dir + "/config.json");
        std::string text((std::istreambuf_iterator<char>(in)), {});
        QCOMPARE(text, std::string("{\"old\": true}"));
    }

    void ggufRoundTripEvaluatesIdentically()
    {
        QL_REQUIRE_DATA(kStories);
        QL_REQUIRE_DATA(kEvalText);
        auto model = openModel(ql::test::dataPath(kStories));
        QVERIFY(model.ok());
        // llama.cpp block formats are stored natively, so the file holds the very bytes.
        const QuantizedModel q = quantize(*model, "*=q4_0; blk.0.*=q8_0");
        QTemporaryDir tmp;
        const std::string path = tmp.filePath("q.gguf").toStdString();
        auto w = writeGguf(*model, q, path);
        QVERIFY(w.ok());
        LlamaLoadOptions inMemory;
        inMemory.override = [&q](const TensorInfo& t) -> Result<std::optional<std::vector<float>>> {
            if (!q.find(t.name)) return std::optional<std::vector<float>>();
            auto v = dequantizedWeights(q, t.name);
            if (!v) return v.error();
            return std::optional<std::vector<float>>(std::move(v).value());
        };
        const double a = ppl(*model, inMemory, 40);
        auto back = openModel(path);
        QVERIFY(back.ok());
        const double b = ppl(*back, {}, 40);
        qInfo("PPL in memory %.6f, exported GGUF reopened %.6f (40 chunks of 512)", a, b);
        QCOMPARE(QString::number(a, 'f', 4), QString::number(b, 'f', 4));
        QCOMPARE(a, b);  // the same float weights, the same forward pass: bit-identical
    }

    void sessionRoundTripAndReopenTime()
    {
        QL_REQUIRE_DATA(kStories);
        QL_REQUIRE_DATA("text/calibration/tiny.txt");
        auto model = openModel(ql::test::dataPath(kStories));
        QVERIFY(model.ok());
        auto id = identifyModel(*model);
        QVERIFY(id.ok());
        CalibrationConfig cc;
        cc.textFiles = {ql::test::dataPath("text/calibration/tiny.txt")};
        cc.samples = 16;
        cc.seqLen = 128;
        cc.hessian = HessianPrecision::Float64;
        auto llama = LlamaModel::create(*model);
        QVERIFY(llama.ok());
        auto tok = Tokenizer::create(*model);
        QVERIFY(tok.ok());
        auto calib = calibrate(*llama, **tok, cc);
        QVERIFY2(calib.ok(), calib.ok() ? "" : calib.error().message.c_str());
        auto layout = Layout::parse("*=int4:g32:gptq:actorder");
        auto qm = quantizeModel(*model, *layout, &*calib);
        QVERIFY2(qm.ok(), qm.ok() ? "" : qm.error().message.c_str());

        SessionData s;
        s.model = *id;
        s.calibration = std::move(calib).value();
        s.layout = layout->toString();
        s.quantization = summarizeQuantization(*qm);
        SessionEvaluation e;
        e.layout = s.layout;
        e.text = "tinystories-valid-1000.txt";
        e.ctx = 512;
        e.tokens = 1000;
        e.windows = 4;
        e.ppl = 12.5;
        e.pplStdError = 0.25;
        e.referencePpl = 10.2;
        e.klMean = 0.27;
        s.evaluations = {e};
        s.view = {{"selected_tensor", "blk.3.attn_q.weight"}, {"geometry", "AdnQywADAAA="}};
        QTemporaryDir tmp;
        const std::string path = tmp.filePath("s.h5").toStdString();
        QVERIFY(writeSession(path, s).ok());

        const auto t0 = std::chrono::steady_clock::now();
        auto r = readSession(path);
        const double seconds =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        QVERIFY2(r.ok(), r.ok() ? "" : r.error().message.c_str());
        qInfo("session with calibration (f64 Hessians) and GPTQ results reopened in %.1f ms",
              1000 * seconds);
        QVERIFY(seconds < 1.0);
        QCOMPARE(r->fileVersion, kSessionVersion);
        QCOMPARE(r->layout, s.layout);
        QVERIFY(r->quantization);
        QCOMPARE(r->quantization->tensors.size(), s.quantization->tensors.size());
        int gptq = 0;
        for (std::size_t i = 0; i < s.quantization->tensors.size(); ++i) {
            const auto &a = s.quantization->tensors[i], &b = r->quantization->tensors[i];
            QCOMPARE(b.name, a.name);
            QCOMPARE(b.format, a.format);
            QCOMPARE(b.mse, a.mse);
            QCOMPARE(std::isnan(b.gptqLoss), std::isnan(a.gptqLoss));
            if (!std::isnan(a.gptqLoss)) {
                ++gptq;
                QCOMPARE(b.gptqLoss, a.gptqLoss);
                QCOMPARE(b.rtnLoss, a.rtnLoss);
                QCOMPARE(b.damp, a.damp);
                QVERIFY(b.actOrder);
                QVERIFY(!b.orderHead.empty());
                QCOMPARE(b.orderHead, a.orderHead);
            }
        }
        QVERIFY(gptq > 0);
        QCOMPARE(r->evaluations.size(), std::size_t(1));
        QCOMPARE(r->evaluations[0].ppl, 12.5);
        QCOMPARE(*r->evaluations[0].klMean, 0.27);
        QVERIFY(!r->evaluations[0].klP99);
        QVERIFY(r->viewValue("selected_tensor"));
        QCOMPARE(*r->viewValue("selected_tensor"), std::string("blk.3.attn_q.weight"));
        QVERIFY(r->calibration && r->calibration->probes.size() == s.calibration->probes.size());

        // A changed model file is detected.
        ModelIdentity changed = *id;
        changed.hash ^= 1;
        auto same = checkModelIdentity(r->model, changed);
        QVERIFY(!same.ok());
        QVERIFY(same.error().message.find("changed") != std::string::npos);
    }
};

QTEST_APPLESS_MAIN(TestHfExport)
#include "test_hf_export.moc"
