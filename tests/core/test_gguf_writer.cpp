// GGUF writer and `quantlens-cli quantize` (issue "Quantization formats, RTN, error metrics", CLI
// part). A quantized stories260K written to a temporary GGUF is read back by our loader: same
// metadata (tokenizer arrays included), tensor types as planned, decoded weights equal to the
// in-memory QuantizedModel's. source-f32.gguf quantized by us equals llama.cpp's own files
// (vectors/gguf-quants) byte for byte in the legacy formats. Every matrix written has rows that
// llama.cpp's CPU kernels run (llamaCppRowMultiple; F16 fallbacks broke llama.cpp on AMX CPUs).
// Cancelled and failed writes leave no file. When Python's `gguf` package (llama.cpp's gguf-py) is
// importable, its reader checks the file too (tests/python/check_gguf.py).
#include <QJsonArray>
#include <QJsonDocument>
#include <QJsonObject>
#include <QProcess>
#include <QTemporaryDir>
#include <QtTest>

#include <sys/stat.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <random>

#include "export/gguf_writer.h"
#include "io/model_loader.h"
#include "io/safetensors.h"
#include "layout/layout.h"
#include "quant/ggml_dequant.h"
#include "quant/quantize_model.h"
#include "session/session.h"
#include "test_data.h"

using namespace ql;
namespace fs = std::filesystem;

namespace {

const std::string kStories = "models/stories260K/stories260K.gguf";
const std::string kStoriesBin = "models/stories260K/stories260K.bin";
const std::string kVectors = "vectors/gguf-quants/";

std::vector<std::uint8_t> fileBytes(const std::string& path)
{
    std::ifstream in(path, std::ios::binary);
    return std::vector<std::uint8_t>(std::istreambuf_iterator<char>(in), {});
}

bool metaEqual(const MetaValue& a, const MetaValue& b)
{
    if (a.type != b.type) return false;
    switch (a.type) {
        case MetaType::String:
            return a.asString() && b.asString() && *a.asString() == *b.asString();
        case MetaType::F32:
        case MetaType::F64: return a.asDouble() == b.asDouble();
        case MetaType::Array: {
            const MetaArray* x = a.asArray();
            const MetaArray* y = b.asArray();
            if (!x || !y || x->elementType != y->elementType ||
                x->values.size() != y->values.size())
                return false;
            for (std::size_t i = 0; i < x->values.size(); ++i)
                if (!metaEqual(x->values[i], y->values[i])) return false;
            return true;
        }
        default: return a.asInt() == b.asInt();
    }
}

bool bitwiseEqual(const std::vector<float>& a, const std::vector<float>& b)
{
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * 4) == 0;
}

QStringList filesIn(const QString& dir)
{
    QStringList names;
    for (const auto& e : fs::directory_iterator(dir.toStdString()))
        names << QString::fromStdString(e.path().filename().string());
    return names;
}

Model open(const std::string& path)
{
    auto m = openModel(path);
    if (!m) qFatal("%s", m.error().message.c_str());
    return std::move(m).value();
}

Layout layoutOf(const QString& spec)
{
    auto l = Layout::parse(spec.toStdString());
    if (!l) qFatal("%s", l.error().message.c_str());
    return std::move(l).value();
}

// From the source tree by a compile definition: __FILE__ is relative when ccache rewrites paths.
const std::string kCheckScript = QL_TEST_SOURCE_DIR "/python/check_gguf.py";

bool pythonGgufAvailable()
{
    QProcess p;
    p.start("python3", {"-c", "import gguf, numpy"});
    return p.waitForFinished(60000) && p.exitStatus() == QProcess::NormalExit && p.exitCode() == 0;
}

// Activation statistics for every probe of a model, from seeded Gaussian inputs with every 17th
// channel ten times larger (outlier channels), with Hessians.
CalibrationResult syntheticCalibration(const Model& model)
{
    CalibrationResult c;
    c.tokens = 256;
    std::mt19937 rng(7);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    for (int b = 0; b < int(model.hparams.blockCount); ++b) {
        for (ProbeSite site : {ProbeSite::AttnQkv, ProbeSite::AttnOutput, ProbeSite::FfnGateUp,
                               ProbeSite::FfnDown}) {
            const auto channels = std::int32_t(
                site == ProbeSite::FfnDown ? model.hparams.ffnDim : model.hparams.embeddingDim);
            ActivationStats stats(channels, HessianPrecision::Float64, 256, 8);
            std::vector<float> x(std::size_t(c.tokens * channels));
            for (std::size_t i = 0; i < x.size(); ++i)
                x[i] = normal(rng) * ((i % std::size_t(channels)) % 17 == 0 ? 10.0f : 1.0f);
            stats.add(x, c.tokens, 0, 0);
            c.probes.push_back(ProbeStats{probeName(b, site), b, site, std::move(stats), {}});
        }
    }
    return c;
}

struct CliRun {
    int exitCode = -1;
    QString out, err;
    bool started = false;
};

CliRun runCli(const QStringList& args)
{
    CliRun r;
    QProcess p;
    p.start(QL_TEST_CLI, QStringList{"quantize"} + args);
    r.started = p.waitForStarted(30000);
    if (!r.started) return r;
    p.waitForFinished(300000);
    r.exitCode = p.exitStatus() == QProcess::NormalExit ? p.exitCode() : -1;
    r.out = QString::fromUtf8(p.readAllStandardOutput());
    r.err = QString::fromUtf8(p.readAllStandardError());
    return r;
}

}  // namespace

class TestGgufWriter : public QObject {
    Q_OBJECT

    QTemporaryDir m_dir;

    std::string out(const std::string& name) const
    {
        return m_dir.path().toStdString() + "/" + name;
    }

private slots:
    void initTestCase() { QVERIFY(m_dir.isValid()); }

    void roundTrip_data()
    {
        QTest::addColumn<QString>("spec");
        QTest::addColumn<bool>("f32");  // dequantized formats written as F32 instead of F16
        QTest::addColumn<int>("fileType");
        QTest::newRow("q8_0") << "*=q8_0" << false << 7;
        QTest::newRow("q4_0, output f16") << "*=q4_0; output.weight=f16" << false << 2;
        QTest::newRow("q4_k falls back") << "*=q4_k" << false << 8;  // mostly Q5_0
        QTest::newRow("q6_k, norm named") << "*=q6_k; output_norm.weight=f16" << false << 7;
        QTest::newRow("bf16 and q5_1") << "*=bf16; blk.[0-2].*=q5_1" << false << 32;
        QTest::newRow("nf4 as f32") << "*=nf4" << true << 0;
        QTest::newRow("nf4:dq as f16") << "*=nf4:dq; token_embd.weight=q8_0" << false << 1;
        QTest::newRow("int4 asym, fp8, bf16")
            << "*=int4:g32:asym; token_embd.weight=bf16; output.weight=fp8_e4m3" << false << 1;
        QTest::newRow("fp4 as f32") << "*=mxfp4; blk.0.*=nvfp4; *ffn_down*=int8" << true << 0;
    }
    void roundTrip()
    {
        QL_REQUIRE_DATA(kStories);
        QFETCH(QString, spec);
        QFETCH(bool, f32);
        QFETCH(int, fileType);
        const Model model = open(test::dataPath(kStories));
        const Layout layout = layoutOf(spec);
        auto qm = quantizeModel(model, layout);
        QVERIFY2(qm.ok(), qm.ok() ? "" : qm.error().message.c_str());

        GgufExportOptions options;
        options.dequantType = f32 ? TensorType::F32 : TensorType::F16;
        const std::string pathA = out("roundtrip-a.gguf"), pathB = out("roundtrip-b.gguf");
        auto written = writeGguf(model, *qm, pathA, options);
        QVERIFY2(written.ok(), written.ok() ? "" : written.error().message.c_str());
        auto streamed = exportGguf(model, layout, pathB, nullptr, options);
        QVERIFY2(streamed.ok(), streamed.ok() ? "" : streamed.error().message.c_str());
        // Streaming one tensor at a time writes the same file as writing from memory.
        QVERIFY(fileBytes(pathA) == fileBytes(pathB));
        QCOMPARE(written->fileBytes, std::uint64_t(fs::file_size(pathA)));
        QCOMPARE(written->fileBytes % 32, std::uint64_t(0));
        QCOMPARE(written->fallbacks.size(), qm->plan.fallbacks.size());

        auto back = openGguf(pathA);
        QVERIFY2(back.ok(), back.ok() ? "" : back.error().message.c_str());

        // Every source key comes back with its type and value.
        for (const std::string& key : model.metadata.keys()) {
            const MetaValue* v = back->metadata.find(key);
            QVERIFY2(v, key.c_str());
            QVERIFY2(metaEqual(*v, *model.metadata.find(key)), key.c_str());
        }
        QCOMPARE(back->metadata.getInt("general.file_type"), std::optional<std::int64_t>(fileType));
        QCOMPARE(back->metadata.getString("quantlens.layout"),
                 std::optional<std::string>(layout.toString()));
        QCOMPARE(back->metadata.getString("quantlens.source"),
                 std::optional<std::string>("stories260K.gguf"));
        const MetaValue* tokens = back->metadata.find("tokenizer.ggml.tokens");
        QVERIFY(tokens && tokens->asArray() && tokens->asArray()->values.size() == 512);

        // Tensors: order, shapes, planned types, decoded values.
        QCOMPARE(back->tensors.size(), model.tensors.size());
        std::vector<std::string> dequantizedNames;
        bool anyBlock = false;
        for (std::size_t i = 0; i < model.tensors.size(); ++i) {
            const TensorInfo& t = back->tensors[i];
            const TensorPlan& p = qm->plan.tensors[i];
            QCOMPARE(t.name, model.tensors[i].name);
            QVERIFY(t.shape == model.tensors[i].shape);
            bool dequantized = false;
            const TensorType expectType =
                ggufStorageType(p.format, options.dequantType, p.cols, &dequantized);
            QVERIFY2(t.type == expectType, t.name.c_str());
            QCOMPARE(written->tensors[i].storedType, expectType);
            QCOMPARE(written->tensors[i].dequantized, dequantized);
            if (dequantized) dequantizedNames.push_back(t.name + "=" + formatToString(p.format));
            if (p.format.kind == QuantKind::Ggml) anyBlock = true;

            auto decoded = dequantizeTensor(*back, t);
            QVERIFY(decoded.ok());
            auto expected = dequantizedWeights(*qm, t.name);
            QVERIFY(expected.ok());
            if (dequantized && expectType == TensorType::F16)
                for (float& v : *expected) v = fp16ToFp32(fp32ToFp16(v));
            QVERIFY2(bitwiseEqual(*decoded, *expected), t.name.c_str());

            // The reported metrics are those of the decoded weights against the source.
            auto source = dequantizeTensor(model, model.tensors[i]);
            QVERIFY(source.ok());
            auto memory = dequantizedWeights(*qm, t.name);
            double se = 0, maxErr = 0;
            for (std::size_t k = 0; k < source->size(); ++k) {
                const double d = double((*memory)[k]) - double((*source)[k]);
                se += d * d;
                maxErr = std::max(maxErr, std::fabs(d));
            }
            const ErrorMetrics& m = qm->tensors[i].report.metrics;
            QVERIFY(std::fabs(m.mse - se / double(source->size())) <= 1e-12 + 1e-9 * m.mse);
            QCOMPARE(m.maxAbsError, maxErr);
        }
        QCOMPARE(back->metadata.getInt("general.quantization_version").has_value(), anyBlock);
        const MetaValue* listed = back->metadata.find("quantlens.dequantized");
        QCOMPARE(listed != nullptr, !dequantizedNames.empty());
        if (listed) {
            QCOMPARE(listed->asArray()->values.size(), dequantizedNames.size());
            for (std::size_t i = 0; i < dequantizedNames.size(); ++i)
                QCOMPARE(*listed->asArray()->values[i].asString(), dequantizedNames[i]);
        }
    }

    // Every GGUF value type survives the trip with its type: the stories metadata has only u32,
    // f32, strings and arrays of them, so the other types are added here.
    void everyMetadataType()
    {
        QL_REQUIRE_DATA(kStories);
        Model model = open(test::dataPath(kStories));
        auto value = [](MetaType type, auto v) {
            MetaValue m;
            m.type = type;
            m.value = v;
            return m;
        };
        auto array = [](MetaType type, std::vector<MetaValue> values) {
            MetaValue m;
            m.type = MetaType::Array;
            m.value = MetaArray{type, std::move(values)};
            return m;
        };
        const std::vector<std::pair<std::string, MetaValue>> added = {
            {"test.u8", value(MetaType::U8, std::uint64_t(200))},
            {"test.i8", value(MetaType::I8, std::int64_t(-100))},
            {"test.u16", value(MetaType::U16, std::uint64_t(65535))},
            {"test.i16", value(MetaType::I16, std::int64_t(-32768))},
            {"test.i32", value(MetaType::I32, std::int64_t(-2147483647 - 1))},
            {"test.u64", value(MetaType::U64, std::uint64_t(18446744073709551615ull))},
            {"test.i64", value(MetaType::I64, std::int64_t(-9000000000000000000ll))},
            {"test.f64", value(MetaType::F64, 0.1)},
            {"test.f32", value(MetaType::F32, double(0.1f))},
            {"test.bool", value(MetaType::Bool, true)},
            {"test.empty", array(MetaType::String, {})},
            {"test.nested",
             array(MetaType::Array, {array(MetaType::I16, {value(MetaType::I16, std::int64_t(-5))}),
                                     array(MetaType::Bool, {value(MetaType::Bool, false),
                                                            value(MetaType::Bool, true)})})},
        };
        for (const auto& [k, v] : added) model.metadata.set(k, v);
        const std::string path = out("every-type.gguf");
        auto r = exportGguf(model, layoutOf("*=q8_0"), path);
        QVERIFY2(r.ok(), r.ok() ? "" : r.error().message.c_str());
        const Model back = open(path);
        for (const auto& [k, v] : added) {
            const MetaValue* got = back.metadata.find(k);
            QVERIFY2(got && metaEqual(*got, v), k.c_str());
        }
        // Keys keep the source's order; new keys follow it.
        const auto& keys = back.metadata.keys();
        for (std::size_t i = 0; i < model.metadata.keys().size(); ++i)
            QCOMPARE(keys[i], model.metadata.keys()[i]);
    }

    // Our encoders in llama.cpp's legacy formats are byte-identical to llama-quantize --pure.
    void matchesLlamaCpp_data()
    {
        QTest::addColumn<QString>("type");
        for (const char* t : {"Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"})
            QTest::newRow(t) << QString(t);
    }
    void matchesLlamaCpp()
    {
        QFETCH(QString, type);
        const std::string refName = kVectors + type.toStdString() + ".gguf";
        QL_REQUIRE_DATA(kVectors + "source-f32.gguf");
        QL_REQUIRE_DATA(refName);
        const Model source = open(test::dataPath(kVectors + "source-f32.gguf"));
        const Model reference = open(test::dataPath(refName));
        const std::string path = out("vectors-" + type.toLower().toStdString() + ".gguf");
        auto report = exportGguf(source, layoutOf("*=" + type.toLower()), path);
        QVERIFY2(report.ok(), report.ok() ? "" : report.error().message.c_str());
        QVERIFY(report->fallbacks.empty());
        const Model ours = open(path);
        QCOMPARE(ours.tensors.size(), reference.tensors.size());
        int matrices = 0;
        for (const TensorInfo& ref : reference.tensors) {
            const TensorInfo* t = ours.find(ref.name);
            QVERIFY2(t, ref.name.c_str());
            QVERIFY2(t->type == ref.type, ref.name.c_str());
            QVERIFY(t->shape == ref.shape);
            const auto a = ours.data(*t);
            const auto b = reference.data(ref);
            QVERIFY2(a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size()) == 0,
                     qPrintable(QString::fromStdString(ref.name) + " differs from llama.cpp's"));
            if (ref.shape.size() == 2) ++matrices;
        }
        QCOMPARE(matrices, 16);  // embedding, output, 7 per block
        QCOMPARE(ours.metadata.getInt("general.file_type"),
                 reference.metadata.getInt("general.file_type"));
        QCOMPARE(ours.metadata.getInt("general.quantization_version"),
                 std::optional<std::int64_t>(2));
    }

    // Regression (issue "The GGUF keeps all metadata and the tokenizer and loads in llama.cpp"):
    // our *=q8_0 / *=q4_0 stories260K files gave NaN / PPL ~1e5 in llama-perplexity on a Xeon
    // with AMX. ffn_down (rows of 172) fell back to F16, and llama.cpp's AMX F16 matmul reads rows
    // 16 values at a time past a shorter tail. Every matrix of the file must now have rows that
    // llama.cpp's CPU kernels run (llamaCppRowMultiple): the fallback is F32 and is listed, a
    // dequantized format is widened to F32, and F16 asked for explicitly is warned about.
    void llamaCppRunsEveryMatrix_data()
    {
        QTest::addColumn<QString>("spec");
        QTest::addColumn<int>("downType");      // the stored type of the five ffn_down
        QTest::addColumn<QString>("fallback");  // quantlens.fallbacks entry of blk.0.ffn_down
        QTest::addColumn<bool>("warned");       // the F16 warning is expected
        QTest::addColumn<int>("fallbacks");     // tensors whose format fell back
        const int f32 = int(TensorType::F32), f16 = int(TensorType::F16);
        QTest::newRow("q8_0") << "*=q8_0" << f32 << "blk.0.ffn_down.weight: q8_0 -> f32" << false
                              << 5;
        QTest::newRow("q4_0") << "*=q4_0" << f32 << "blk.0.ffn_down.weight: q4_0 -> f32" << false
                              << 5;
        QTest::newRow("q4_k") << "*=q4_k" << f32 << "blk.0.ffn_down.weight: q4_k -> f32" << false
                              << 37;  // the rest -> q5_0
        QTest::newRow("q6_k") << "*=q6_k" << f32 << "blk.0.ffn_down.weight: q6_k -> f32" << false
                              << 37;  // the rest -> q8_0
        QTest::newRow("nf4 widened") << "*=nf4" << f32 << "" << false << 0;
        QTest::newRow("f16 asked for") << "*=f16" << f16 << "" << true << 0;
    }
    void llamaCppRunsEveryMatrix()
    {
        QL_REQUIRE_DATA(kStories);
        QFETCH(QString, spec);
        QFETCH(int, downType);
        QFETCH(QString, fallback);
        QFETCH(bool, warned);
        QFETCH(int, fallbacks);
        const Model model = open(test::dataPath(kStories));
        const std::string path = out("llamacpp-rows.gguf");
        auto report = exportGguf(model, layoutOf(spec), path);  // dequantized as F16 (default)
        QVERIFY2(report.ok(), report.ok() ? "" : report.error().message.c_str());
        const Model back = open(path);
        int downs = 0, badF16 = 0;
        for (const TensorInfo& t : back.tensors) {
            if (t.shape.size() < 2) continue;
            const std::int64_t cols = t.shape.back();
            if (t.role == TensorRole::FfnDown) {
                QCOMPARE(cols, std::int64_t(172));
                QVERIFY2(int(t.type) == downType, t.name.c_str());
                ++downs;
            }
            if (cols % llamaCppRowMultiple(t.type) == 0) continue;
            QVERIFY2(warned && t.type == TensorType::F16,
                     qPrintable(QString::fromStdString(t.name) + ": " +
                                QString::fromUtf8(tensorTypeName(t.type)) + " rows of " +
                                QString::number(cols) + " do not run in llama.cpp"));
            ++badF16;
        }
        QCOMPARE(downs, 5);
        QCOMPARE(badF16, warned ? 5 : 0);
        bool warning = false;
        for (const auto& w : report->warnings)
            warning = warning || (w.find("not a multiple of 16") != std::string::npos &&
                                  w.find("blk.0.ffn_down.weight") != std::string::npos);
        QCOMPARE(warning, warned);
        bool widened = false;
        for (const auto& n : report->notes)
            widened = widened || n.find("written as F32, not F16") != std::string::npos;
        QCOMPARE(widened, spec == "*=nf4");
        const MetaValue* listed = back.metadata.find("quantlens.fallbacks");
        QCOMPARE(report->fallbacks.size(), std::size_t(fallbacks));
        QCOMPARE(listed != nullptr, !fallback.isEmpty());
        if (listed) {
            QCOMPARE(listed->asArray()->values.size(), std::size_t(fallbacks));
            bool found = false;
            for (const MetaValue& v : listed->asArray()->values)
                found = found || QString::fromStdString(*v.asString()) == fallback;
            QVERIFY2(found, qPrintable(fallback));
        }
    }

    // A llama2.c checkpoint: the GGUF keys its loader fills in and the tokenizer from tok512.bin,
    // converted as llama.cpp stores it (stories260K.gguf holds the same model).
    void fromLlama2c()
    {
        QL_REQUIRE_DATA(kStoriesBin);
        QL_REQUIRE_DATA(kStories);
        const Model bin = open(test::dataPath(kStoriesBin));
        const Model gguf = open(test::dataPath(kStories));
        QVERIFY(bin.format == ModelFormat::Llama2c);
        const std::string path = out("from-llama2c.gguf");
        auto report = exportGguf(bin, layoutOf("*=f32"), path);
        QVERIFY2(report.ok(), report.ok() ? "" : report.error().message.c_str());
        QVERIFY(report->warnings.empty());
        const Model back = open(path);
        QVERIFY(back.tokenizer.kind == TokenizerSource::Kind::GgufMetadata);
        for (const char* key :
             {"tokenizer.ggml.model", "tokenizer.ggml.tokens", "tokenizer.ggml.scores",
              "tokenizer.ggml.token_type", "tokenizer.ggml.bos_token_id",
              "tokenizer.ggml.eos_token_id", "tokenizer.ggml.unknown_token_id",
              "llama.embedding_length", "llama.block_count", "llama.feed_forward_length",
              "llama.attention.head_count", "llama.attention.head_count_kv",
              "llama.attention.layer_norm_rms_epsilon"}) {
            const MetaValue* a = back.metadata.find(key);
            const MetaValue* b = gguf.metadata.find(key);
            QVERIFY2(a && b, key);
            QVERIFY2(metaEqual(*a, *b), key);
        }
        QCOMPARE(back.metadata.getString("quantlens.source_format"),
                 std::optional<std::string>(modelFormatName(ModelFormat::Llama2c)));
        // Tensors are copied unchanged: byte-identical to the GGUF conversion of the same model.
        QCOMPARE(back.tensors.size(), bin.tensors.size());
        for (const TensorInfo& t : back.tensors) {
            const TensorInfo* g = gguf.find(t.name);
            QVERIFY2(g, t.name.c_str());
            QVERIFY(t.shape == g->shape);
            const auto a = back.data(t);
            const auto b = gguf.data(*g);
            QVERIFY2(a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size()) == 0,
                     t.name.c_str());
        }
        for (const auto& r : report->tensors) QVERIFY(r.report.copied);
    }

    // A Hugging Face folder (written from stories260K.gguf): its attn_q/attn_k rows are in
    // "rotate half" order and go back to llama.cpp's, so the GGUF equals the one made from the
    // original GGUF tensor for tensor; a byte-level BPE tokenizer.json becomes tokenizer.ggml.*.
    void fromSafetensors_data()
    {
        QTest::addColumn<QString>("spec");
        QTest::newRow("f32 copied") << "*=f32";
        QTest::newRow("q8_0") << "*=q8_0";
        QTest::newRow("nf4 dequantized") << "*=nf4; blk.1.attn_k.weight=q4_1";
    }
    void fromSafetensors()
    {
        QL_REQUIRE_DATA(kStories);
        QFETCH(QString, spec);
        const Model gguf = open(test::dataPath(kStories));
        QTemporaryDir dir;
        const std::string folder = (dir.path() + "/hf").toStdString();
        QVERIFY(writeSafetensorsFolder(gguf, folder, TensorType::F32).ok());
        QJsonObject vocab;
        for (int i = 0; i < 300; ++i) vocab[QString("t%1").arg(i)] = i;
        const QJsonObject tokenizer{
            {"model", QJsonObject{{"type", "BPE"},
                                  {"vocab", vocab},
                                  {"merges", QJsonArray{"t1 t2", QJsonArray{"t3", "t4"}}}}},
            {"added_tokens",
             QJsonArray{QJsonObject{{"id", 300}, {"content", "<|endoftext|>"}, {"special", true}},
                        QJsonObject{{"id", 301}, {"content", "<tool>"}, {"special", false}}}}};
        {
            std::ofstream f(folder + "/tokenizer.json");
            f << QJsonDocument(tokenizer).toJson().toStdString();
        }
        const Model hf = open(folder);
        QVERIFY(hf.format == ModelFormat::Safetensors);
        const Layout layout = layoutOf(spec);
        const std::string pathA = out("from-hf.gguf"), pathB = out("from-gguf.gguf");
        auto a = exportGguf(hf, layout, pathA);
        QVERIFY2(a.ok(), a.ok() ? "" : a.error().message.c_str());
        auto b = exportGguf(gguf, layout, pathB);
        QVERIFY(b.ok());
        // The RoPE reordering is noted for the Hugging Face model only; dequantized ffn_down
        // (rows of 172) are noted as widened to F32 for both (llamaCppRunsEveryMatrix).
        auto reordered = [](const GgufWriteReport& r) {
            int n = 0;
            for (const auto& note : r.notes)
                n += QString::fromStdString(note).startsWith("10 attn_q/attn_k tensors");
            return n;
        };
        QCOMPARE(reordered(*a), 1);
        QCOMPARE(reordered(*b), 0);
        QCOMPARE(a->notes.size(), b->notes.size() + 1);

        const Model ma = open(pathA), mb = open(pathB);
        QCOMPARE(ma.tensors.size(), mb.tensors.size());
        for (const TensorInfo& t : mb.tensors) {
            const TensorInfo* u = ma.find(t.name);
            QVERIFY2(u, t.name.c_str());
            QVERIFY(u->type == t.type && u->shape == t.shape);
            const auto x = ma.data(*u);
            const auto y = mb.data(t);
            QVERIFY2(x.size() == y.size() && std::memcmp(x.data(), y.data(), x.size()) == 0,
                     t.name.c_str());
        }
        for (const char* key :
             {"llama.embedding_length", "llama.block_count", "llama.feed_forward_length",
              "llama.attention.head_count", "llama.attention.head_count_kv",
              "llama.rope.dimension_count", "general.file_type"})
            QVERIFY2(ma.metadata.getInt(key) && ma.metadata.getInt(key) == mb.metadata.getInt(key),
                     key);

        QCOMPARE(ma.metadata.getString("tokenizer.ggml.model"), std::optional<std::string>("gpt2"));
        const auto& tokens = ma.metadata.find("tokenizer.ggml.tokens")->asArray()->values;
        const auto& types = ma.metadata.find("tokenizer.ggml.token_type")->asArray()->values;
        QCOMPARE(tokens.size(), std::size_t(512));  // padded to the embedding's rows
        QCOMPARE(types.size(), std::size_t(512));
        QCOMPARE(*tokens[7].asString(), std::string("t7"));
        QCOMPARE(*tokens[300].asString(), std::string("<|endoftext|>"));
        QCOMPARE(types[300].asInt(), std::optional<std::int64_t>(3));  // control
        QCOMPARE(types[301].asInt(), std::optional<std::int64_t>(4));  // user-defined
        QCOMPARE(*tokens[400].asString(), std::string("[PAD400]"));
        QCOMPARE(types[400].asInt(), std::optional<std::int64_t>(5));  // unused
        const auto& merges = ma.metadata.find("tokenizer.ggml.merges")->asArray()->values;
        QCOMPARE(merges.size(), std::size_t(2));
        QCOMPARE(*merges[1].asString(), std::string("t3 t4"));
    }

    void cancelledWriteLeavesNoFile_data()
    {
        QTest::addColumn<bool>("streaming");
        QTest::addColumn<int>("allowedCalls");
        QTest::newRow("streaming, at once") << true << 0;
        QTest::newRow("streaming, midway") << true << 20;
        QTest::newRow("from memory, midway") << false << 10;
    }
    void cancelledWriteLeavesNoFile()
    {
        QL_REQUIRE_DATA(kStories);
        QFETCH(bool, streaming);
        QFETCH(int, allowedCalls);
        const Model model = open(test::dataPath(kStories));
        const Layout layout = layoutOf("*=q4_k");
        QTemporaryDir dir;
        const std::string path = (dir.path() + "/cancelled.gguf").toStdString();
        int calls = 0;
        ProgressFn cancel = [&](double, std::string_view) { return calls++ < allowedCalls; };
        Result<GgufWriteReport> r = makeError(ErrorCode::Io, "not run");
        if (streaming) {
            r = exportGguf(model, layout, path, nullptr, {}, cancel);
        } else {
            auto qm = quantizeModel(model, layout);
            QVERIFY(qm.ok());
            r = writeGguf(model, *qm, path, {}, cancel);
        }
        QVERIFY(!r.ok());
        QVERIFY(r.error().code == ErrorCode::Cancelled);
        QVERIFY(calls > allowedCalls);
        QVERIFY2(filesIn(dir.path()).isEmpty(), qPrintable(filesIn(dir.path()).join(", ")));
        if (!streaming) {
            calls = 0;
            auto qm = quantizeModel(model, layout, nullptr, cancel);
            QVERIFY(!qm.ok());
            QVERIFY(qm.error().code == ErrorCode::Cancelled);
        }

        // An existing file is left alone by a cancelled write.
        {
            std::ofstream f(path, std::ios::binary);
            f << "previous";
        }
        calls = 0;
        r = exportGguf(model, layout, path, nullptr, {}, cancel);
        QVERIFY(!r.ok());
        QCOMPARE(filesIn(dir.path()), QStringList{"cancelled.gguf"});
        QCOMPARE(fileBytes(path).size(), std::size_t(8));
    }

    void unwritableDestination()
    {
        QL_REQUIRE_DATA(kStories);
        const Model model = open(test::dataPath(kStories));
        const Layout layout = layoutOf("*=q8_0");
        QTemporaryDir dir;
        const std::string file = (dir.path() + "/plain-file").toStdString();
        {
            std::ofstream f(file);
            f << "x";
        }
        std::vector<std::string> bad = {(dir.path() + "/no/such/folder/out.gguf").toStdString(),
                                        file + "/out.gguf"};
        const std::string readOnly = (dir.path() + "/read-only").toStdString();
        fs::create_directory(readOnly);
        ::chmod(readOnly.c_str(), 0555);
        if (::geteuid() != 0) bad.push_back(readOnly + "/out.gguf");  // root writes anyway
        for (const std::string& path : bad) {
            auto r = exportGguf(model, layout, path);
            QVERIFY2(!r.ok(), path.c_str());
            QVERIFY(r.error().code == ErrorCode::Io);
            QVERIFY2(
                QString::fromStdString(r.error().message).contains(QString::fromStdString(path)),
                r.error().message.c_str());
        }
        ::chmod(readOnly.c_str(), 0755);
        QCOMPARE(filesIn(dir.path()).size(), 2);  // plain-file and read-only, nothing else
        QVERIFY(filesIn(QString::fromStdString(readOnly)).isEmpty());
        // Refused before any file is made: an impossible dequantized type.
        GgufExportOptions options;
        options.dequantType = TensorType::Q8_0;
        auto r = exportGguf(model, layoutOf("*=nf4"), out("never.gguf"), nullptr, options);
        QVERIFY(!r.ok());
        QVERIFY(!fs::exists(out("never.gguf")));
    }

    // llama.cpp's own reader (gguf-py) accepts the file: tensor count, types, shapes, metadata, and
    // its decoder gives our decoded values.
    void pythonReaderAccepts()
    {
        QL_REQUIRE_DATA(kStories);
        if (!pythonGgufAvailable())
            QSKIP("python3 cannot import gguf and numpy (pip install gguf): gguf-py check skipped");
        const Model model = open(test::dataPath(kStories));
        const Layout layout = layoutOf("*=q4_0; output.weight=q8_0; blk.0.*=nf4; blk.1.ffn_*=f16");
        const std::string path = out("python-check.gguf");
        auto report = exportGguf(model, layout, path);
        QVERIFY2(report.ok(), report.ok() ? "" : report.error().message.c_str());
        const Model back = open(path);

        QJsonObject tensors, decoded;
        for (const TensorInfo& t : back.tensors) {
            QJsonArray ne;
            for (auto d = t.shape.rbegin(); d != t.shape.rend(); ++d) ne.append(qint64(*d));
            tensors[QString::fromStdString(t.name)] = QJsonObject{
                {"type", QString::fromStdString(std::string(tensorTypeName(t.type)))}, {"ne", ne}};
        }
        for (const char* name : {"blk.2.attn_q.weight", "output.weight", "blk.0.attn_q.weight",
                                 "blk.1.ffn_down.weight", "blk.3.ffn_norm.weight"}) {
            const TensorInfo* t = back.find(name);
            QVERIFY(t);
            auto values = dequantizeTensor(back, *t);
            QVERIFY(values.ok());
            const std::string dump = out(std::string(name) + ".f32");
            std::ofstream f(dump, std::ios::binary);
            f.write(reinterpret_cast<const char*>(values->data()),
                    std::streamsize(values->size() * 4));
            decoded[name] = QString::fromStdString(dump);
        }
        QJsonArray tokenList;
        for (const auto& v : model.metadata.find("tokenizer.ggml.tokens")->asArray()->values)
            tokenList.append(QString::fromStdString(*v.asString()));
        const QJsonObject metadata{
            {"general.architecture", "llama"},
            {"general.file_type", 2},
            {"general.quantization_version", 2},
            {"llama.block_count", 5},
            {"llama.feed_forward_length", 172},
            {"llama.attention.layer_norm_rms_epsilon", 1e-5},
            {"tokenizer.ggml.model", "llama"},
            {"tokenizer.ggml.tokens", tokenList},
            {"quantlens.layout", QString::fromStdString(layout.toString())},
        };
        const QJsonObject expect{{"tensor_count", int(back.tensors.size())},
                                 {"tensors", tensors},
                                 {"metadata", metadata},
                                 {"decoded", decoded}};
        const std::string expectPath = out("python-expect.json");
        {
            std::ofstream f(expectPath);
            f << QJsonDocument(expect).toJson().toStdString();
        }
        QProcess p;
        p.start("python3", {QString::fromStdString(kCheckScript), QString::fromStdString(path),
                            QString::fromStdString(expectPath)});
        QVERIFY(p.waitForFinished(120000));
        const QString output =
            QString::fromUtf8(p.readAllStandardOutput() + p.readAllStandardError());
        QVERIFY2(p.exitCode() == 0, qPrintable(output));
        QVERIFY(output.startsWith("ok: 48 tensors"));
    }

    // With calibration, each matrix is weighted by its input probe: importance for the llama.cpp
    // formats' scale search, and the Hessian-weighted output error tr(dW H dW^T) in the report.
    void calibrationWeighting()
    {
        QL_REQUIRE_DATA(kStories);
        const Model model = open(test::dataPath(kStories));
        const CalibrationResult calib = syntheticCalibration(model);
        const Layout layout = layoutOf("*=q4_0");
        auto plain = quantizeModel(model, layout);
        auto weighted = quantizeModel(model, layout, &calib);
        QVERIFY(plain.ok() && weighted.ok());
        const std::map<std::string, std::string> probes = {
            {"blk.2.attn_q.weight", "blk.2.attn_qkv"},
            {"blk.2.attn_k.weight", "blk.2.attn_qkv"},
            {"blk.2.attn_v.weight", "blk.2.attn_qkv"},
            {"blk.2.attn_output.weight", "blk.2.attn_output"},
            {"blk.2.ffn_gate.weight", "blk.2.ffn_gate_up"},
            {"blk.2.ffn_up.weight", "blk.2.ffn_gate_up"},
            {"blk.2.ffn_down.weight", "blk.2.ffn_down"},
            {"token_embd.weight", ""},
            {"output.weight", ""},
            {"blk.2.ffn_norm.weight", ""}};
        for (const auto& [name, probe] : probes) {
            const TensorQuantization* t = weighted->find(name);
            QVERIFY(t);
            QCOMPARE(t->report.probe, probe);
            QCOMPARE(t->report.outputError.has_value(), !probe.empty());
            // Importance steers the Q4_0 search only (ffn_down fell back to F16).
            QCOMPARE(t->report.usedImportance,
                     !probe.empty() && t->report.plan.format.kind == QuantKind::Ggml);
            if (probe.empty()) continue;
            // tr(dW H dW^T), computed here with plain loops.
            const std::vector<double> h = calib.find(probe)->stats.hessian();
            auto w = dequantizeTensor(model, *model.find(name));
            auto q = dequantizedWeights(*weighted, name);
            const std::int64_t rows = t->report.plan.rows, cols = t->report.plan.cols;
            double expect = 0;
            for (std::int64_t r = 0; r < rows; ++r)
                for (std::int64_t i = 0; i < cols; ++i) {
                    const double di = double((*q)[r * cols + i]) - (*w)[r * cols + i];
                    for (std::int64_t j = 0; j < cols; ++j)
                        expect += di * h[i * cols + j] *
                                  (double((*q)[r * cols + j]) - (*w)[r * cols + j]);
                }
            QVERIFY2(std::fabs(t->report.outputError->weighted - expect) <= 1e-9 * expect,
                     name.c_str());
        }
        // The importance-weighted search lowers the output error the Hessian predicts, summed over
        // the weighted matrices, against llama.cpp's unweighted rule.
        double errPlain = 0, errWeighted = 0;
        int changed = 0;
        for (std::size_t i = 0; i < weighted->tensors.size(); ++i) {
            const TensorQuantization& a = plain->tensors[i];
            const TensorQuantization& b = weighted->tensors[i];
            if (!b.report.usedImportance) continue;
            if (a.quantized.blocks != b.quantized.blocks) ++changed;
            const std::vector<double> h = calib.find(b.report.probe)->stats.hessian();
            auto w = dequantizeTensor(model, *model.find(a.report.plan.name));
            auto qa = a.quantized.dequantize();
            auto e = hessianWeightedError(*w, *qa, a.report.plan.rows, a.report.plan.cols, h);
            QVERIFY(e.ok());
            errPlain += e->weighted;
            errWeighted += b.report.outputError->weighted;
        }
        QCOMPARE(changed, 30);  // 6 Q4_0 matrices with a probe per block
        QVERIFY2(errWeighted < errPlain,
                 qPrintable(QString("weighted %1, plain %2").arg(errWeighted).arg(errPlain)));

        // A probe of the wrong width is not used, and the report says so.
        CalibrationResult wrong = calib;
        for (auto& p : wrong.probes)
            if (p.name == "blk.0.attn_qkv")
                p.stats = ActivationStats(32, HessianPrecision::Float64, 256, 8);
        auto t = quantizeTensor(model, *weighted->plan.find("blk.0.attn_q.weight"), &wrong);
        QVERIFY(t.ok());
        QVERIFY(!t->report.usedImportance);
        QVERIFY(!t->report.outputError);
        QVERIFY(QString::fromStdString(t->report.note).contains("not used"));
    }

    void cliWithSession()
    {
        QL_REQUIRE_DATA(kStories);
        const CliRun help = runCli({"--help"});
        if (!help.started || !help.out.contains("usage: quantlens-cli quantize"))
            QSKIP("`quantlens-cli quantize` is not wired into the CLI's main yet");
        const Model model = open(test::dataPath(kStories));
        auto id = identifyModel(model);
        QVERIFY(id.ok());
        SessionData session{*id, syntheticCalibration(model)};
        const std::string sessionPath = out("session.h5");
        QVERIFY(writeSession(sessionPath, session).ok());
        const QString outPath = QString::fromStdString(out("cli-session.gguf"));
        const QStringList args{QString::fromStdString(test::dataPath(kStories)),
                               "--layout",
                               "*=q4_0",
                               "--out",
                               outPath,
                               "--session",
                               QString::fromStdString(sessionPath)};
        CliRun r = runCli(args);
        QCOMPARE(r.exitCode, 0);
        QVERIFY(r.out.contains("H err rel"));
        r = runCli(args + QStringList{"--json"});
        QCOMPARE(r.exitCode, 0);
        int withHessian = 0;
        for (const auto& v : QJsonDocument::fromJson(r.out.toUtf8()).object()["tensors"].toArray())
            if (v.toObject().contains("hessian_error_relative")) ++withHessian;
        QCOMPARE(withHessian, 35);  // 7 matrices per block

        // A session made for another model is refused.
        session.model.hash ^= 1;
        QVERIFY(writeSession(sessionPath, session).ok());
        r = runCli(args);
        QCOMPARE(r.exitCode, 2);
        QVERIFY2(r.err.contains("has changed"), qPrintable(r.err));
    }

    void cli_data()
    {
        QTest::addColumn<QStringList>("args");  // {MODEL} and {OUT} are replaced
        QTest::addColumn<int>("exitCode");
        QTest::addColumn<QString>("message");  // in stderr (errors) or stdout (success)
        QTest::newRow("bad rule") << QStringList{"{MODEL}", "--layout", "*=q4_0; output", "--out",
                                                 "{OUT}"}
                                  << 2 << "rule 2 \"output\"";
        QTest::newRow("unknown format")
            << QStringList{"{MODEL}", "--layout", "*=q9_k", "--out", "{OUT}"} << 2 << "q9_k";
        QTest::newRow("missing model")
            << QStringList{"/nonexistent/model.gguf", "--layout", "*=q4_0", "--out", "{OUT}"} << 2
            << "/nonexistent/model.gguf";
        QTest::newRow("missing layout file")
            << QStringList{"{MODEL}", "--layout", "@/nonexistent/rules.txt", "--out", "{OUT}"} << 2
            << "/nonexistent/rules.txt";
        QTest::newRow("missing output folder")
            << QStringList{"{MODEL}", "--layout", "*=q4_0", "--out", "/nonexistent/x.gguf"} << 2
            << "does not exist";
        QTest::newRow("awq without calibration")
            << QStringList{"{MODEL}", "--layout", "*=int4:g64:awq", "--out", "{OUT}"} << 2
            << "awq needs the Hessian of its input blk.0.attn_qkv";
        QTest::newRow("gptq without calibration")
            << QStringList{"{MODEL}", "--layout", "*=int4:g64:gptq", "--out", "{OUT}"} << 2
            << "gptq needs the Hessian of its input blk.0.attn_qkv";
        const QString calibText =
            QString::fromStdString(test::dataPath("text/calibration/tiny.txt"));
        QTest::newRow("gptq true-sequential")
            << QStringList{"{MODEL}", "--layout",  "*=q4_0:gptq", "--out",    "{OUT}", "--text",
                           calibText, "--samples", "4",           "--seqlen", "64"}
            << 0 << "gptq (loss";
        QTest::newRow("bad dequant dtype")
            << QStringList{"{MODEL}", "--layout",        "*=nf4", "--out",
                           "{OUT}",   "--dequant-dtype", "q8"}
            << 2 << "f16 or f32";
        QTest::newRow("q4_0") << QStringList{"{MODEL}", "--layout", "*=q4_0", "--out", "{OUT}"} << 0
                              << "blk.0.ffn_down.weight: q4_0 -> f32";
        QTest::newRow("nf4 research")
            << QStringList{"{MODEL}", "--layout", "*=nf4", "--out", "{OUT}"} << 0
            << "dequantized for research (37)";
    }
    void cli()
    {
        QL_REQUIRE_DATA(kStories);
        const CliRun help = runCli({"--help"});
        if (!help.started || !help.out.contains("usage: quantlens-cli quantize"))
            QSKIP("`quantlens-cli quantize` is not wired into the CLI's main yet");
        QFETCH(QStringList, args);
        QFETCH(int, exitCode);
        QFETCH(QString, message);
        const QString outPath = QString::fromStdString(out("cli.gguf"));
        fs::remove(outPath.toStdString());
        for (QString& a : args) {
            a.replace("{MODEL}", QString::fromStdString(test::dataPath(kStories)));
            a.replace("{OUT}", outPath);
        }
        const CliRun r = runCli(args);
        QCOMPARE(r.exitCode, exitCode);
        if (exitCode != 0) {
            const QString line = r.err.trimmed();
            QVERIFY2(!line.contains('\n'), qPrintable(r.err));  // one line
            QVERIFY2(line.contains(message), qPrintable(r.err));
            QVERIFY(!fs::exists(outPath.toStdString()));
            return;
        }
        QVERIFY2(r.out.contains(message), qPrintable(r.out));
        QVERIFY(r.out.contains(
            "totals: 48 tensors, 292800 weights"));  // output.weight is not tied in the GGUF
        QVERIFY(openGguf(outPath.toStdString()).ok());
    }

    void cliJson()
    {
        QL_REQUIRE_DATA(kStories);
        const CliRun help = runCli({"--help"});
        if (!help.started || !help.out.contains("usage: quantlens-cli quantize"))
            QSKIP("`quantlens-cli quantize` is not wired into the CLI's main yet");
        const QString outPath = QString::fromStdString(out("cli-json.gguf"));
        const CliRun r = runCli({QString::fromStdString(test::dataPath(kStories)), "--layout",
                                 "*=q4_0; output.weight=q8_0", "--out", outPath, "--json"});
        QCOMPARE(r.exitCode, 0);
        const QJsonObject j = QJsonDocument::fromJson(r.out.toUtf8()).object();
        QCOMPARE(j["tensors"].toArray().size(), 48);
        QCOMPARE(j["fallbacks"].toArray().size(), 5);
        QCOMPARE(j["totals"].toObject()["weights"].toInteger(), qint64(292800));
        for (const auto& v : j["tensors"].toArray()) {
            const QJsonObject t = v.toObject();
            if (t["name"] == "output.weight") {
                QCOMPARE(t["stored_type"].toString(), QString("Q8_0"));
                QCOMPARE(t["bpw"].toDouble(), 8.5);
                QVERIFY(t["sqnr_db"].toDouble() > 30);
            }
        }
    }
};

QTEST_GUILESS_MAIN(TestGgufWriter)
#include "test_gguf_writer.moc"
