// llama.cpp block encoders (issue "Quantization formats, RTN, error metrics") against llama.cpp's
// own output in ../shared/data/vectors/gguf-quants: source-f32.gguf quantized by
// `llama-quantize --pure TYPE` (no importance matrix), rmse.tsv, and llama.cpp's decoding of
// blk.0.attn_q.
#include <QtTest>

#include <cmath>
#include <cstring>
#include <fstream>
#include <map>
#include <random>
#include <sstream>

#include "io/model_loader.h"
#include "quant/error_metrics.h"
#include "quant/format.h"
#include "quant/ggml_dequant.h"
#include "quant/ggml_quantize.h"
#include "quant/rtn.h"
#include "test_data.h"

using namespace ql;

namespace {

const std::string kDir = "vectors/gguf-quants/";

struct Source {
    Model model;
    std::map<std::string, std::vector<float>> weights;  // 2-D tensors by name
};

std::vector<float> readF32(const std::string& path)
{
    std::ifstream f(path, std::ios::binary);
    std::vector<char> bytes((std::istreambuf_iterator<char>(f)), {});
    std::vector<float> v(bytes.size() / 4);
    std::memcpy(v.data(), bytes.data(), v.size() * 4);
    return v;
}

// rmse.tsv: file, tensor, type, rmse_vs_source.
struct RmseRow {
    std::string file, tensor, type;
    double rmse = 0;
};

std::vector<RmseRow> readRmseTable()
{
    std::vector<RmseRow> rows;
    std::ifstream f(test::dataPath(kDir + "rmse.tsv"));
    std::string line;
    std::getline(f, line);  // header
    while (std::getline(f, line)) {
        std::istringstream s(line);
        RmseRow r;
        if (s >> r.file >> r.tensor >> r.type >> r.rmse) rows.push_back(r);
    }
    return rows;
}

double rmse(const std::vector<float>& a, const std::vector<float>& b)
{
    double s = 0;
    for (std::size_t i = 0; i < a.size(); ++i) s += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    return std::sqrt(s / double(a.size()));
}

}  // namespace

class TestGgmlQuantize : public QObject {
    Q_OBJECT

    std::unique_ptr<Source> m_source;

    const Source& source()
    {
        if (!m_source) {
            auto m = openModel(test::dataPath(kDir + "source-f32.gguf"));
            if (!m) qFatal("source-f32.gguf: %s", m.error().message.c_str());
            m_source = std::make_unique<Source>();
            m_source->model = std::move(*m);
            for (const TensorInfo& t : m_source->model.tensors) {
                if (t.shape.size() != 2) continue;
                auto w = dequantizeTensor(m_source->model, t);
                if (!w) qFatal("%s: %s", t.name.c_str(), w.error().message.c_str());
                m_source->weights[t.name] = std::move(*w);
            }
        }
        return *m_source;
    }

private slots:
    // Q8_0, Q4_0, Q4_1, Q5_0, Q5_1: every block of every tensor equals llama.cpp's bytes.
    void legacyByteIdentical_data()
    {
        QTest::addColumn<QString>("type");
        for (const char* t : {"Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"}) QTest::newRow(t) << t;
    }
    void legacyByteIdentical()
    {
        QFETCH(QString, type);
        const std::string file = kDir + type.toStdString() + ".gguf";
        QL_REQUIRE_DATA(file);
        const TensorType tt = *tensorTypeFromName(type.toStdString());
        auto quant = openModel(test::dataPath(file));
        QVERIFY2(quant.ok(), quant.ok() ? "" : quant.error().message.c_str());
        int tensors = 0;
        for (const TensorInfo& t : quant->tensors) {
            if (t.type != tt) continue;
            const auto& w = source().weights.at(t.name);
            const auto theirs = quant->data(t);
            std::vector<std::uint8_t> mine(theirs.size());
            const std::size_t rowBytes = theirs.size() / std::size_t(t.rows());
            for (std::int64_t r = 0; r < t.rows(); ++r) {
                auto st = quantizeRowGgml(
                    tt, std::span<const float>(w.data() + r * t.cols(), std::size_t(t.cols())),
                    std::span<std::uint8_t>(mine.data() + r * rowBytes, rowBytes));
                QVERIFY(st.ok());
            }
            const auto diff = std::mismatch(mine.begin(), mine.end(), theirs.begin());
            QVERIFY2(diff.first == mine.end(),
                     qPrintable(QString("%1 %2: first difference at byte %3 (block %4)")
                                    .arg(type, QString::fromStdString(t.name))
                                    .arg(diff.first - mine.begin())
                                    .arg((diff.first - mine.begin()) / traits(tt).blockBytes)));
            ++tensors;
        }
        QCOMPARE(tensors, 16);
    }

    // k-quants: RMSE against the source no worse than llama.cpp's (rmse.tsv) for every tensor.
    void kQuantRmseNoWorseThanLlama_data()
    {
        QTest::addColumn<QString>("type");
        QTest::addColumn<QString>("file");
        QTest::newRow("Q2_K") << "Q2_K"
                              << "Q2_K.gguf";
        QTest::newRow("Q3_K") << "Q3_K"
                              << "Q3_K_S.gguf";
        QTest::newRow("Q4_K") << "Q4_K"
                              << "Q4_K_S.gguf";
        QTest::newRow("Q5_K") << "Q5_K"
                              << "Q5_K_S.gguf";
        QTest::newRow("Q6_K") << "Q6_K"
                              << "Q6_K.gguf";
    }
    void kQuantRmseNoWorseThanLlama()
    {
        QFETCH(QString, type);
        QFETCH(QString, file);
        QL_REQUIRE_DATA(kDir + "rmse.tsv");
        const QuantFormat f = ggmlFormat(*tensorTypeFromName(type.toStdString()));
        int tensors = 0;
        double worstRatio = 0, sumRatio = 0;
        for (const RmseRow& row : readRmseTable()) {
            if (row.file != file.toStdString()) continue;
            QCOMPARE(QString::fromStdString(row.type), type);
            const TensorInfo* t = source().model.find(row.tensor);
            QVERIFY(t);
            const auto& w = source().weights.at(row.tensor);
            auto q = quantizeRtn(w.data(), t->rows(), t->cols(), f);
            QVERIFY(q.ok());
            auto d = q->dequantize();
            QVERIFY(d.ok());
            const double mine = rmse(w, *d);
            const double ratio = mine / row.rmse;
            worstRatio = std::max(worstRatio, ratio);
            sumRatio += ratio;
            ++tensors;
            QVERIFY2(mine <= row.rmse * (1 + 1e-6),
                     qPrintable(QString("%1 %2: RMSE %3 > llama.cpp %4")
                                    .arg(type, QString::fromStdString(row.tensor))
                                    .arg(mine, 0, 'e', 6)
                                    .arg(row.rmse, 0, 'e', 6)));
        }
        QCOMPARE(tensors, 16);
        qInfo("%s: RMSE / llama.cpp's over %d tensors: mean %.4f, worst %.4f", qPrintable(type),
              tensors, sumRatio / tensors, worstRatio);
    }

    // Our per-weight reading of the block layout (ggmlWeightCode, used by the grid and the
    // step-through) agrees with llama.cpp's own decoding of its files and with dequantizeRow on
    // our encodings, bit for bit.
    void weightCodeMatchesLlamaDecoding_data()
    {
        QTest::addColumn<QString>("file");
        QTest::addColumn<QString>("type");
        for (const char* f : {"Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q6_K"})
            QTest::newRow(f) << f << f;
        QTest::newRow("Q3_K_S") << "Q3_K_S"
                                << "Q3_K";
        QTest::newRow("Q4_K_S") << "Q4_K_S"
                                << "Q4_K";
        QTest::newRow("Q5_K_S") << "Q5_K_S"
                                << "Q5_K";
    }
    void weightCodeMatchesLlamaDecoding()
    {
        QFETCH(QString, file);
        QFETCH(QString, type);
        const std::string golden = kDir + "dequant/" + file.toStdString() + ".blk.0.attn_q.f32";
        QL_REQUIRE_DATA(golden);
        const TensorType tt = *tensorTypeFromName(type.toStdString());
        auto quant = openModel(test::dataPath(kDir + file.toStdString() + ".gguf"));
        QVERIFY(quant.ok());
        const TensorInfo* t = quant->find("blk.0.attn_q.weight");
        QVERIFY(t && t->type == tt);
        const auto bytes = quant->data(*t);
        const auto expected = readF32(test::dataPath(golden));
        QCOMPARE(expected.size(), std::size_t(256 * 256));
        const auto& tr = traits(tt);
        for (std::size_t i = 0; i < expected.size(); ++i) {
            const auto block = bytes.subspan((i / tr.blockSize) * tr.blockBytes, tr.blockBytes);
            const GgmlWeightCode c = ggmlWeightCode(tt, block, int(i % tr.blockSize));
            QVERIFY2(
                c.value == expected[i],
                qPrintable(
                    QString("weight %1: %2, llama.cpp %3").arg(i).arg(c.value).arg(expected[i])));
            QVERIFY(c.level >= c.levelMin && c.level <= c.levelMax);
        }
    }

    void decodeOfEncodeEqualsDequantizeRow_data()
    {
        QTest::addColumn<QString>("type");
        QTest::addColumn<bool>("weighted");
        for (const char* t :
             {"Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"}) {
            QTest::newRow(t) << t << false;
            QTest::newRow(qPrintable(QString(t) + " weighted")) << t << true;
        }
    }
    void decodeOfEncodeEqualsDequantizeRow()
    {
        QFETCH(QString, type);
        QFETCH(bool, weighted);
        const TensorType tt = *tensorTypeFromName(type.toStdString());
        const std::int64_t rows = 16, cols = 1024;
        std::mt19937 rng(3);
        std::student_t_distribution<float> dist(3.0f);
        std::vector<float> w(std::size_t(rows * cols));
        for (auto& v : w) v = 0.05f * dist(rng);
        std::vector<float> importance(static_cast<std::size_t>(cols));
        for (auto& v : importance) v = std::exp(2.0f * std::normal_distribution<float>()(rng));
        auto q = quantizeRtn(w.data(), rows, cols, ggmlFormat(tt),
                             weighted ? importance.data() : nullptr);
        QVERIFY(q.ok());
        auto d = q->dequantize();
        QVERIFY(d.ok());
        std::vector<float> direct(w.size());
        QVERIFY(dequantizeRow(tt, q->blocks, direct).ok());
        const auto& tr = traits(tt);
        for (std::size_t i = 0; i < w.size(); ++i) {
            QVERIFY((*d)[i] == direct[i]);
            const auto block = std::span<const std::uint8_t>(q->blocks).subspan(
                (i / tr.blockSize) * tr.blockBytes, tr.blockBytes);
            QVERIFY2(ggmlWeightCode(tt, block, int(i % tr.blockSize)).value == direct[i],
                     qPrintable(QString("weight %1").arg(i)));
        }
        // And the encoding is a good one: error well below the grid step everywhere.
        auto e = computeErrorMetrics(w, *d);
        QVERIFY(e->relativeRmse < 0.4);
    }

    // Importance weighting (per input column, like mean x^2 from calibration) lowers the error it
    // is asked to minimise, on a real tensor with a synthetic heavy-tailed importance vector.
    void importanceLowersWeightedError_data()
    {
        QTest::addColumn<QString>("type");
        for (const char* t :
             {"Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"})
            QTest::newRow(t) << t;
    }
    void importanceLowersWeightedError()
    {
        QFETCH(QString, type);
        QL_REQUIRE_DATA(kDir + "source-f32.gguf");
        const TensorType tt = *tensorTypeFromName(type.toStdString());
        const TensorInfo* t = source().model.find("blk.0.ffn_down.weight");
        QVERIFY(t);
        const auto& w = source().weights.at(t->name);
        const std::int64_t rows = t->rows(), cols = t->cols();
        // Log-normal importance with a few dominant channels (like activation outliers).
        std::mt19937 rng(42);
        std::normal_distribution<double> g;
        std::vector<double> importance(static_cast<std::size_t>(cols));
        for (std::int64_t c = 0; c < cols; ++c)
            importance[c] = std::exp(1.5 * g(rng)) * (c % 97 == 5 ? 50.0 : 1.0);
        std::vector<float> imp32(importance.begin(), importance.end());

        auto plain = quantizeRtn(w.data(), rows, cols, ggmlFormat(tt));
        auto weighted = quantizeRtn(w.data(), rows, cols, ggmlFormat(tt), imp32.data());
        QVERIFY(plain.ok() && weighted.ok());
        const auto dp = *plain->dequantize();
        const auto dw = *weighted->dequantize();
        const double ep = *importanceWeightedMse(w, dp, rows, cols, importance);
        const double ew = *importanceWeightedMse(w, dw, rows, cols, importance);
        qInfo(
            "%s: importance-weighted MSE %.4e unweighted search, %.4e weighted (x%.3f); plain RMSE "
            "%.4e -> %.4e",
            qPrintable(type), ep, ew, ew / ep, rmse(w, dp), rmse(w, dw));
        QVERIFY2(ew < 0.97 * ep, qPrintable(QString("weighted %1 vs %2").arg(ew).arg(ep)));
    }

    // Formats whose block does not divide cols are refused with the fallback named.
    void fallbackChain_data()
    {
        QTest::addColumn<QString>("rule");
        QTest::addColumn<int>("cols");
        QTest::addColumn<QString>("fallback");
        QTest::newRow("q2_k 64") << "q2_k" << 64 << "q4_0";
        QTest::newRow("q3_k 96") << "q3_k" << 96 << "q4_0";
        QTest::newRow("q4_k 64") << "q4_k" << 64 << "q5_0";
        QTest::newRow("q5_k 64") << "q5_k" << 64 << "q5_1";
        QTest::newRow("q6_k 64") << "q6_k" << 64 << "q8_0";
        // 32 does not divide cols: F16 only where llama.cpp's AMX F16 kernel runs the rows
        // (16 divides cols), else F32 (llamaCppRowMultiple).
        QTest::newRow("q4_k 172") << "q4_k" << 172 << "f32";
        QTest::newRow("q6_k 172") << "q6_k" << 172 << "f32";
        QTest::newRow("q4_0 172") << "q4_0" << 172 << "f32";
        QTest::newRow("q8_0 176") << "q8_0" << 176 << "f16";
        QTest::newRow("q4_k 176") << "q4_k" << 176 << "f16";
        QTest::newRow("q4_k 512 fits") << "q4_k" << 512 << "q4_k";
        QTest::newRow("int4:g128 172 fits") << "int4:g128" << 172 << "int4:g128";
    }
    void fallbackChain()
    {
        QFETCH(QString, rule);
        QFETCH(int, cols);
        QFETCH(QString, fallback);
        const QuantFormat f = *parseQuantFormat(rule.toStdString());
        QCOMPARE(QString::fromStdString(formatToString(fallbackFormat(f, 8, cols))), fallback);
        const auto fits = checkFormatFits(f, 8, cols);
        QCOMPARE(fits.ok(), fallback == rule);
        if (!fits.ok()) {
            const QString msg = QString::fromStdString(fits.error().message);
            QVERIFY2(msg.contains(QString("cols = %1").arg(cols)) &&
                         msg.contains("fallback: " + fallback),
                     qPrintable(msg));
            std::vector<float> w(std::size_t(8 * cols), 0.1f);
            auto q = quantizeRtn(w.data(), 8, cols, f);
            QVERIFY(!q.ok());
            QCOMPARE(QString::fromStdString(q.error().message), msg);
            QVERIFY(quantizeRtn(w.data(), 8, cols, fallbackFormat(f, 8, cols)).ok());
        }
    }

    void rowErrors()
    {
        std::vector<float> x(100, 1.0f);
        std::vector<std::uint8_t> y(1000);
        auto st = quantizeRowGgml(TensorType::Q4_0, x, y);
        QVERIFY(!st.ok());
        QVERIFY(QString::fromStdString(st.error().message).contains("multiple of 32"));
        x.resize(64);
        QVERIFY(!quantizeRowGgml(TensorType::Q4_0, x, y).ok());  // wrong destination size
        y.resize(36);
        QVERIFY(quantizeRowGgml(TensorType::Q4_0, x, y).ok());
        QCOMPARE(int(quantizeRowGgml(TensorType::F16, x, y).error().code),
                 int(ErrorCode::Unsupported));
    }
};

QTEST_APPLESS_MAIN(TestGgmlQuantize)
#include "test_ggml_quantize.moc"
