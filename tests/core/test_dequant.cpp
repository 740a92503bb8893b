// Decoding of every stored type (quant/ggml_dequant.h).
//
// fp16/bf16 conversions are checked exhaustively (all 65536 codes) and against an independent
// nearest-value search; block decoders against hand-built blocks with known values and against
// llama.cpp's own output in ../shared/data/vectors/gguf-quants: dequant/TYPE.blk.0.attn_q.f32 is
// llama.cpp's decoding of blk.0.attn_q.weight and must match bit for bit, and rmse.tsv is
// llama.cpp's RMSE of each decoded tensor against source-f32.gguf, which ours must reproduce.
#include <QtTest>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <map>
#include <random>
#include <sstream>

#include "io/model_loader.h"
#include "quant/ggml_dequant.h"
#include "test_data.h"

using namespace ql;

namespace {

const std::string kDir = "vectors/gguf-quants/";

std::vector<float> readF32File(const std::string& path)
{
    std::ifstream f(path, std::ios::binary);
    std::vector<char> bytes((std::istreambuf_iterator<char>(f)), {});
    std::vector<float> v(bytes.size() / 4);
    for (std::size_t i = 0; i < v.size(); ++i) {
        const auto* p = reinterpret_cast<const unsigned char*>(bytes.data() + 4 * i);
        v[i] = std::bit_cast<float>(std::uint32_t(p[0]) | std::uint32_t(p[1]) << 8 |
                                    std::uint32_t(p[2]) << 16 | std::uint32_t(p[3]) << 24);
    }
    return v;
}

// Distance in units in the last place between two finite floats of any sign.
std::int64_t ulpDistance(float a, float b)
{
    auto key = [](float x) {
        const std::int32_t i = std::bit_cast<std::int32_t>(x);
        return i < 0 ? std::int64_t(std::numeric_limits<std::int32_t>::min()) - i : std::int64_t(i);
    };
    return std::llabs(key(a) - key(b));
}

// Independent oracle for fp32 -> 16-bit float rounding: the nearest of all finite codes, ties to
// the even code; beyond the largest finite value by half an ulp or more, infinity.
struct NearestCode {
    std::vector<std::pair<double, std::uint16_t>> positives;  // sorted finite non-negative codes
    double overflow = 0;                                      // smallest value that rounds to Inf
    std::uint16_t infCode = 0;

    NearestCode(float (*decode)(std::uint16_t), std::uint16_t inf, double overflowAt)
        : overflow(overflowAt), infCode(inf)
    {
        for (std::uint32_t c = 0; c < inf; ++c) positives.push_back({decode(std::uint16_t(c)), c});
        std::sort(positives.begin(), positives.end());
    }
    std::uint16_t operator()(float f) const
    {
        const std::uint16_t sign = std::signbit(f) ? 0x8000 : 0;
        const double a = std::fabs(double(f));
        if (a >= overflow) return sign | infCode;
        auto hi = std::lower_bound(positives.begin(), positives.end(),
                                   std::pair<double, std::uint16_t>{a, 0});
        if (hi == positives.begin()) return sign | hi->second;
        auto lo = hi - 1;
        if (hi == positives.end()) return sign | lo->second;
        const double dLo = a - lo->first, dHi = hi->first - a;
        if (dLo < dHi) return sign | lo->second;
        if (dHi < dLo) return sign | hi->second;
        return sign | ((lo->second & 1) ? hi->second : lo->second);
    }
};

void putHalf(std::uint8_t* p, float v)
{
    const std::uint16_t h = fp32ToFp16(v);
    p[0] = std::uint8_t(h);
    p[1] = std::uint8_t(h >> 8);
}

std::vector<float> decode(TensorType type, const std::vector<std::uint8_t>& block)
{
    std::vector<float> out(traits(type).blockSize);
    const Status st = dequantizeRow(type, block, out);
    if (!st)
        qFatal("dequantizeRow(%s): %s", tensorTypeName(type).data(), st.error().message.c_str());
    return out;
}

struct RmseRow {
    std::string file, tensor, type;
    double rmse = 0;
};

std::vector<RmseRow> readRmseTable()
{
    std::vector<RmseRow> rows;
    std::ifstream f(test::dataPath(kDir + "rmse.tsv"));
    std::string line;
    std::getline(f, line);  // header: file, tensor, type, rmse_vs_source
    while (std::getline(f, line)) {
        std::istringstream s(line);
        RmseRow r;
        if (s >> r.file >> r.tensor >> r.type >> r.rmse) rows.push_back(r);
    }
    return rows;
}

const char* const kQuantFiles[] = {"Q8_0", "Q4_0",   "Q4_1",   "Q5_0",   "Q5_1",
                                   "Q2_K", "Q3_K_S", "Q4_K_S", "Q5_K_S", "Q6_K"};

}  // namespace

class TestDequant : public QObject {
    Q_OBJECT

    std::unique_ptr<Model> m_source;
    std::map<std::string, std::vector<float>> m_sourceWeights;

    const std::vector<float>& sourceWeights(const std::string& name)
    {
        if (!m_source) {
            auto m = openModel(test::dataPath(kDir + "source-f32.gguf"));
            if (!m) qFatal("source-f32.gguf: %s", m.error().message.c_str());
            m_source = std::make_unique<Model>(std::move(*m));
        }
        auto it = m_sourceWeights.find(name);
        if (it != m_sourceWeights.end()) return it->second;
        const TensorInfo* t = m_source->find(name);
        if (!t) qFatal("source-f32.gguf has no tensor %s", name.c_str());
        auto w = dequantizeTensor(*m_source, *t);
        if (!w) qFatal("%s: %s", name.c_str(), w.error().message.c_str());
        return m_sourceWeights[name] = std::move(*w);
    }

private slots:
    // --- 16-bit floats: no files needed ---------------------------------------------------

    void fp16RoundTripsEveryCode()
    {
        int nans = 0;
        for (std::uint32_t c = 0; c < 65536; ++c) {
            const float f = fp16ToFp32(std::uint16_t(c));
            if (std::isnan(f)) {
                ++nans;
                QVERIFY(std::isnan(fp16ToFp32(fp32ToFp16(f))));
                continue;
            }
            QCOMPARE(fp32ToFp16(f), std::uint16_t(c));
        }
        QCOMPARE(nans, 2 * 1023);  // exponent 31 with a non-zero mantissa, both signs
    }

    void fp16KnownValues_data()
    {
        QTest::addColumn<float>("value");
        QTest::addColumn<int>("code");
        QTest::newRow("one") << 1.0f << 0x3c00;
        QTest::newRow("minus two") << -2.0f << 0xc000;
        QTest::newRow("max") << 65504.0f << 0x7bff;
        QTest::newRow("just below overflow") << 65519.99f << 0x7bff;
        QTest::newRow("overflow tie") << 65520.0f << 0x7c00;
        QTest::newRow("inf") << std::numeric_limits<float>::infinity() << 0x7c00;
        QTest::newRow("smallest subnormal") << std::ldexp(1.0f, -24) << 0x0001;
        QTest::newRow("half smallest subnormal ties to 0") << std::ldexp(1.0f, -25) << 0x0000;
        QTest::newRow("1.5 x 2^-25 rounds up") << 1.5f * std::ldexp(1.0f, -25) << 0x0001;
        QTest::newRow("1.5 x 2^-24 ties to even 2") << 1.5f * std::ldexp(1.0f, -24) << 0x0002;
        QTest::newRow("largest subnormal") << 1023.0f * std::ldexp(1.0f, -24) << 0x03ff;
        QTest::newRow("subnormal rounds to min normal")
            << 1023.75f * std::ldexp(1.0f, -24) << 0x0400;
        QTest::newRow("tie 1+2^-11 to even") << 1.0f + std::ldexp(1.0f, -11) << 0x3c00;
        QTest::newRow("tie 1+3*2^-11 to even") << 1.0f + 3 * std::ldexp(1.0f, -11) << 0x3c02;
        QTest::newRow("negative zero") << -0.0f << 0x8000;
        QTest::newRow("fp32 subnormal") << std::numeric_limits<float>::denorm_min() << 0x0000;
    }
    void fp16KnownValues()
    {
        QFETCH(float, value);
        QFETCH(int, code);
        QCOMPARE(int(fp32ToFp16(value)), code);
    }

    void fp16RoundsToNearestEven()
    {
        const NearestCode oracle(fp16ToFp32, 0x7c00, 65520.0);
        std::mt19937 rng(7);
        std::uniform_int_distribution<std::uint32_t> bits;
        int checked = 0;
        for (int i = 0; i < 400000; ++i) {
            // Mostly values within (and around) the fp16 range, plus arbitrary bit patterns.
            float f = i % 4 ? std::ldexp(std::uniform_real_distribution<float>(-1, 1)(rng),
                                         int(rng() % 44) - 28)
                            : std::bit_cast<float>(bits(rng));
            if (std::isnan(f)) continue;
            const std::uint16_t expect = oracle(f), got = fp32ToFp16(f);
            if (expect != got)
                QFAIL(qPrintable(QString("fp32ToFp16(%1 = 0x%2) = 0x%3, expected 0x%4")
                                     .arg(double(f), 0, 'g', 10)
                                     .arg(std::bit_cast<std::uint32_t>(f), 8, 16, QChar('0'))
                                     .arg(got, 4, 16, QChar('0'))
                                     .arg(expect, 4, 16, QChar('0'))));
            ++checked;
        }
        QVERIFY(checked > 390000);
#if defined(__FLT16_MAX__)
        // The compiler's own conversion (hardware or libgcc) agrees on arbitrary bit patterns.
        for (int i = 0; i < 200000; ++i) {
            const float f = std::bit_cast<float>(bits(rng));
            if (std::isnan(f)) continue;
            QCOMPARE(fp32ToFp16(f), std::bit_cast<std::uint16_t>(static_cast<_Float16>(f)));
        }
#endif
    }

    void bf16RoundTripsEveryCode()
    {
        for (std::uint32_t c = 0; c < 65536; ++c) {
            const float f = bf16ToFp32(std::uint16_t(c));
            QCOMPARE(std::bit_cast<std::uint32_t>(f), c << 16);
            if (std::isnan(f)) {
                QVERIFY(std::isnan(bf16ToFp32(fp32ToBf16(f))));
                continue;
            }
            QCOMPARE(fp32ToBf16(f), std::uint16_t(c));
        }
    }

    void bf16RoundsToNearestEven()
    {
        // Largest finite bf16 is 0x7f7f (3.3895e38); half an ulp above rounds to Inf.
        const double maxFinite = bf16ToFp32(0x7f7f);
        const double ulpAtMax = maxFinite - double(bf16ToFp32(0x7f7e));
        const NearestCode oracle(bf16ToFp32, 0x7f80, maxFinite + ulpAtMax / 2);
        std::mt19937 rng(11);
        std::uniform_int_distribution<std::uint32_t> bits;
        for (int i = 0; i < 400000; ++i) {
            float f = std::bit_cast<float>(bits(rng));
            if (i % 8 == 0) f = std::bit_cast<float>((bits(rng) & 0xffff8000u) | 0x8000u);  // ties
            if (std::isnan(f)) continue;
            QCOMPARE(fp32ToBf16(f), oracle(f));
        }
        QCOMPARE(fp32ToBf16(1.0f + std::ldexp(1.0f, -8)), std::uint16_t(0x3f80));      // tie, even
        QCOMPARE(fp32ToBf16(1.0f + 3 * std::ldexp(1.0f, -8)), std::uint16_t(0x3f82));  // tie, up
        QVERIFY(std::isnan(bf16ToFp32(fp32ToBf16(std::bit_cast<float>(0x7f800001u)))));
    }

    // --- hand-built blocks --------------------------------------------------------------

    void legacyBlocks()
    {
        {  // Q8_0: d = 0.5, q = -16..15
            std::vector<std::uint8_t> b(34);
            putHalf(b.data(), 0.5f);
            for (int j = 0; j < 32; ++j) b[2 + j] = std::uint8_t(std::int8_t(j - 16));
            const auto y = decode(TensorType::Q8_0, b);
            for (int j = 0; j < 32; ++j) QCOMPARE(y[j], 0.5f * float(j - 16));
        }
        {  // Q4_0: element j low nibble of byte j, j+16 high nibble; value (q-8)*d
            std::vector<std::uint8_t> b(18);
            putHalf(b.data(), 0.25f);
            for (int j = 0; j < 16; ++j) b[2 + j] = std::uint8_t(j | ((15 - j) << 4));
            const auto y = decode(TensorType::Q4_0, b);
            for (int j = 0; j < 16; ++j) {
                QCOMPARE(y[j], 0.25f * float(j - 8));
                QCOMPARE(y[j + 16], 0.25f * float(15 - j - 8));
            }
        }
        {  // Q4_1: q*d + m
            std::vector<std::uint8_t> b(20);
            putHalf(b.data(), 2.0f);
            putHalf(b.data() + 2, -3.0f);
            for (int j = 0; j < 16; ++j) b[4 + j] = std::uint8_t(j | (j << 4));
            const auto y = decode(TensorType::Q4_1, b);
            for (int j = 0; j < 16; ++j) {
                QCOMPARE(y[j], 2.0f * float(j) - 3.0f);
                QCOMPARE(y[j + 16], 2.0f * float(j) - 3.0f);
            }
        }
        {  // Q5_0: fifth bit j of the 32-bit qh for element j; value (q-16)*d
            std::vector<std::uint8_t> b(22);
            putHalf(b.data(), 1.0f);
            const std::uint32_t qh = 0xa5f0c381u;
            for (int k = 0; k < 4; ++k) b[2 + k] = std::uint8_t(qh >> (8 * k));
            for (int j = 0; j < 16; ++j) b[6 + j] = std::uint8_t((j & 15) | ((j * 7 & 15) << 4));
            const auto y = decode(TensorType::Q5_0, b);
            for (int j = 0; j < 16; ++j) {
                QCOMPARE(y[j], float((j | int((qh >> j & 1) << 4)) - 16));
                QCOMPARE(y[j + 16], float(((j * 7 & 15) | int((qh >> (j + 16) & 1) << 4)) - 16));
            }
        }
        {  // Q5_1: q*d + m, q in 0..31
            std::vector<std::uint8_t> b(24);
            putHalf(b.data(), 0.5f);
            putHalf(b.data() + 2, 1.0f);
            const std::uint32_t qh = 0xffff0000u;  // fifth bit set for elements 16..31
            for (int k = 0; k < 4; ++k) b[4 + k] = std::uint8_t(qh >> (8 * k));
            for (int j = 0; j < 16; ++j) b[8 + j] = std::uint8_t(j | (j << 4));
            const auto y = decode(TensorType::Q5_1, b);
            for (int j = 0; j < 16; ++j) {
                QCOMPARE(y[j], 0.5f * float(j) + 1.0f);
                QCOMPARE(y[j + 16], 0.5f * float(j + 16) + 1.0f);
            }
        }
    }

    void kQuantBlocks()
    {
        {  // Q6_K: every ql = 0x21, qh = 0 -> q = 1-32 (low nibble) / 2-32 (high); scales j+1
            std::vector<std::uint8_t> b(210, 0);
            for (int i = 0; i < 128; ++i) b[i] = 0x21;
            for (int j = 0; j < 16; ++j) b[192 + j] = std::uint8_t(std::int8_t(j - 8));
            putHalf(b.data() + 208, 0.125f);
            const auto y = decode(TensorType::Q6_K, b);
            // Weight w: half n = w/128, quarter k = (w%128)/32, l = w%32; scale 8n + l/16 + 2k.
            for (int w = 0; w < 256; ++w) {
                const int n = w / 128, k = (w % 128) / 32, l = w % 32;
                const int q = (k < 2 ? 1 : 2) - 32;
                const int s = 8 * n + l / 16 + 2 * k - 8;
                QCOMPARE(y[w], 0.125f * float(s) * float(q));
            }
        }
        {  // Q4_K: sub-block scales/mins 6-bit packed; sub-block s covers weights 32s..32s+31
            std::vector<std::uint8_t> b(144, 0);
            putHalf(b.data(), 0.5f);
            putHalf(b.data() + 2, 0.25f);
            const int sc[8] = {1, 2, 3, 63, 5, 40, 7, 33}, mn[8] = {0, 9, 18, 27, 36, 45, 54, 63};
            std::uint8_t* s = b.data() + 4;
            for (int j = 0; j < 4; ++j) {
                s[j] = std::uint8_t(sc[j] | ((sc[j + 4] >> 4) << 6));
                s[j + 4] = std::uint8_t(mn[j] | ((mn[j + 4] >> 4) << 6));
                s[j + 8] = std::uint8_t((sc[j + 4] & 15) | ((mn[j + 4] & 15) << 4));
            }
            for (int i = 0; i < 128; ++i) b[16 + i] = std::uint8_t((i % 16) | ((15 - i % 16) << 4));
            const auto y = decode(TensorType::Q4_K, b);
            for (int w = 0; w < 256; ++w) {
                const int sub = w / 32, l = w % 32, byte = (sub / 2) * 32 + l;
                const int q = sub % 2 == 0 ? (byte % 16) : 15 - byte % 16;
                QCOMPARE(y[w], (0.5f * float(sc[sub])) * float(q) - 0.25f * float(mn[sub]));
            }
        }
    }

    void rejectsBadSizes()
    {
        std::vector<std::uint8_t> src(34);
        std::vector<float> dst(32);
        QVERIFY(dequantizeRow(TensorType::Q8_0, src, dst).ok());
        std::vector<float> notWhole(31);
        Status st = dequantizeRow(TensorType::Q8_0, src, notWhole);
        QVERIFY(!st.ok());
        QCOMPARE(st.error().code, ErrorCode::InvalidArgument);
        st = dequantizeRow(TensorType::Q8_0, std::span(src).first(33), dst);
        QVERIFY(!st.ok());
        QCOMPARE(st.error().code, ErrorCode::InvalidArgument);
        st = dequantizeRow(TensorType(99), src, dst);
        QVERIFY(!st.ok());
        QCOMPARE(st.error().code, ErrorCode::Unsupported);
        std::vector<float> empty;
        QVERIFY(dequantizeRow(TensorType::Q4_K, {}, empty).ok());
    }

    // --- llama.cpp's vectors -----------------------------------------------------------

    void matchesLlamaCpp_data()
    {
        QTest::addColumn<QString>("file");
        for (const char* f : kQuantFiles) QTest::newRow(f) << QString(f);
    }
    void matchesLlamaCpp()
    {
        QFETCH(QString, file);
        const std::string name = file.toStdString();
        QL_REQUIRE_DATA(kDir + name + ".gguf");
        auto model = openModel(test::dataPath(kDir + name + ".gguf"));
        QVERIFY2(model.ok(), model.ok() ? "" : model.error().message.c_str());
        const TensorInfo* t = model->find("blk.0.attn_q.weight");
        QVERIFY(t);
        QCOMPARE(t->shape, (std::vector<std::int64_t>{256, 256}));
        auto ours = dequantizeTensor(*model, *t);
        QVERIFY2(ours.ok(), ours.ok() ? "" : ours.error().message.c_str());
        const auto theirs =
            readF32File(test::dataPath(kDir + "dequant/" + name + ".blk.0.attn_q.f32"));
        QCOMPARE(theirs.size(), std::size_t(65536));
        QCOMPARE(ours->size(), theirs.size());
        std::int64_t differ = 0, maxUlp = 0;
        for (std::size_t i = 0; i < theirs.size(); ++i) {
            if (std::bit_cast<std::uint32_t>((*ours)[i]) == std::bit_cast<std::uint32_t>(theirs[i]))
                continue;
            ++differ;
            maxUlp = std::max(maxUlp, ulpDistance((*ours)[i], theirs[i]));
        }
        if (differ)
            qWarning("%s: %lld of 65536 values differ, by at most %lld ulp", name.c_str(),
                     (long long)differ, (long long)maxUlp);
        QCOMPARE(differ, std::int64_t(0));
        QVERIFY(std::memcmp(ours->data(), theirs.data(), theirs.size() * 4) == 0);
    }

    // Every tensor of every file decodes, and its error against the F32 source is llama.cpp's.
    void rmseMatchesLlamaCpp_data()
    {
        QTest::addColumn<QString>("file");
        for (const char* f : kQuantFiles) QTest::newRow(f) << QString(f);
    }
    void rmseMatchesLlamaCpp()
    {
        QFETCH(QString, file);
        const std::string name = file.toStdString() + ".gguf";
        QL_REQUIRE_DATA(kDir + name);
        QL_REQUIRE_DATA(kDir + "rmse.tsv");
        std::map<std::string, RmseRow> expected;
        for (const RmseRow& r : readRmseTable())
            if (r.file == name) expected[r.tensor] = r;
        QVERIFY(expected.size() >= 16);

        auto model = openModel(test::dataPath(kDir + name));
        QVERIFY2(model.ok(), model.ok() ? "" : model.error().message.c_str());
        std::size_t quantized = 0;
        for (const TensorInfo& t : model->tensors) {
            auto w = dequantizeTensor(*model, t);
            QVERIFY2(w.ok(), qPrintable(QString::fromStdString(t.name + ": " +
                                                               (w.ok() ? "" : w.error().message))));
            const std::vector<float>& src = sourceWeights(t.name);
            QCOMPARE(w->size(), src.size());
            double sum = 0;
            for (std::size_t i = 0; i < src.size(); ++i) {
                const double d = double((*w)[i]) - double(src[i]);
                sum += d * d;
            }
            const double rmse = std::sqrt(sum / double(src.size()));
            auto it = expected.find(t.name);
            if (it == expected.end()) {
                // Not in the table: a tensor llama-quantize kept in F32 (the norms).
                QCOMPARE(t.type, TensorType::F32);
                QCOMPARE(rmse, 0.0);
                continue;
            }
            ++quantized;
            QCOMPARE(std::string(tensorTypeName(t.type)), it->second.type);
            const double rel = std::fabs(rmse - it->second.rmse) / it->second.rmse;
            if (rel > 1e-6)
                QFAIL(qPrintable(QString("%1 %2: RMSE %3, llama.cpp %4 (relative %5)")
                                     .arg(file, QString::fromStdString(t.name))
                                     .arg(rmse, 0, 'e', 9)
                                     .arg(it->second.rmse, 0, 'e', 9)
                                     .arg(rel, 0, 'e', 2)));
        }
        QCOMPARE(quantized, expected.size());
    }

    // The threaded whole-tensor path equals the single-call row decoder, reports monotonic
    // progress ending at 1, and stops with Cancelled when the callback says so.
    void tensorDecodeThreadsAndCancels()
    {
        QL_REQUIRE_DATA(kDir + "Q4_K_S.gguf");
        auto model = openModel(test::dataPath(kDir + "Q4_K_S.gguf"));
        QVERIFY(model.ok());
        const TensorInfo* t = model->find("blk.0.ffn_up.weight");
        QVERIFY(t);
        QVERIFY(t->elementCount() > (1 << 17));  // several chunks
        std::vector<float> direct(std::size_t(t->elementCount()));
        QVERIFY(dequantizeRow(t->type, model->data(*t), direct).ok());

        std::vector<double> seen;
        auto threaded = dequantizeTensor(*model, *t, [&](double f, std::string_view) {
            seen.push_back(f);
            return true;
        });
        QVERIFY(threaded.ok());
        QVERIFY(std::memcmp(threaded->data(), direct.data(), direct.size() * 4) == 0);
        QVERIFY(seen.size() >= 2);
        QVERIFY(std::is_sorted(seen.begin(), seen.end()));
        QCOMPARE(seen.back(), 1.0);

        int calls = 0;
        auto cancelled =
            dequantizeTensor(*model, *t, [&](double, std::string_view) { return ++calls < 2; });
        QVERIFY(!cancelled.ok());
        QCOMPARE(cancelled.error().code, ErrorCode::Cancelled);
    }

    void tensorOutsideItsFileIsAnError()
    {
        QL_REQUIRE_DATA(kDir + "Q8_0.gguf");
        auto model = openModel(test::dataPath(kDir + "Q8_0.gguf"));
        QVERIFY(model.ok());
        TensorInfo t = *model->find("blk.0.attn_q.weight");
        t.offset = model->files[0]->size() - 100;
        auto w = dequantizeTensor(*model, t);
        QVERIFY(!w.ok());
        QCOMPARE(w.error().code, ErrorCode::Format);
        t = *model->find("blk.0.attn_q.weight");
        t.shape = {255, 255};  // not whole Q8_0 blocks
        w = dequantizeTensor(*model, t);
        QVERIFY(!w.ok());
        QCOMPARE(w.error().code, ErrorCode::Format);
    }
};

QTEST_GUILESS_MAIN(TestDequant)
#include "test_dequant.moc"
