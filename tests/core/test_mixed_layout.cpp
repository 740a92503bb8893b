// Mixed-precision layouts (issue #7): per-tensor layouts round-tripping with the rule text,
// presets (llama.cpp's Q4_K_M mix on stories260K and on SmolLM2-like names), size accounting
// against the file our GGUF writer really writes, ties, the per-tensor sensitivity sweep on
// stories260K and its session storage, allocation against uniform layouts of equal size, and the
// CLI end to end (sensitivity -> allocate -> quantize/eval --layout @FILE).
#include <QProcess>
#include <QtTest>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>
#include <unistd.h>

#include "calib/dataset.h"
#include "export/gguf_writer.h"
#include "io/gguf.h"
#include "io/model_loader.h"
#include "layout/allocate.h"
#include "layout/sensitivity.h"
#include "layout/size.h"
#include "layout/tensor_layout.h"
#include "model/tokenizer.h"
#include "session/session.h"
#include "test_data.h"

using namespace ql;

namespace {

const std::string kStories = "models/stories260K/stories260K.gguf";
const std::string kText = "text/eval/tinystories-valid-1000.txt";

std::string tempPath(const std::string& name)
{
    return (std::filesystem::temp_directory_path() /
            ("ql_test_mixed_" + std::to_string(::getpid()) + "_" + name))
        .string();
}

// SmolLM2-135M's tensor names and shapes (30 blocks, dim 576, FFN 1536, GQA 9/3, tied head),
// without data: presets look at names, roles and shapes only.
Model smolLike()
{
    Model m;
    m.hparams.blockCount = 30;
    auto add = [&](const std::string& name, std::vector<std::int64_t> shape) {
        TensorInfo t;
        t.name = t.sourceName = name;
        const TensorNameInfo info = classifyTensorName(name);
        t.role = info.role;
        t.block = info.block;
        t.shape = std::move(shape);
        m.tensors.push_back(t);
    };
    add("token_embd.weight", {49152, 576});
    for (int b = 0; b < 30; ++b) {
        const std::string p = "blk." + std::to_string(b) + ".";
        add(p + "attn_norm.weight", {576});
        add(p + "attn_q.weight", {576, 576});
        add(p + "attn_k.weight", {192, 576});
        add(p + "attn_v.weight", {192, 576});
        add(p + "attn_output.weight", {576, 576});
        add(p + "ffn_norm.weight", {576});
        add(p + "ffn_gate.weight", {1536, 576});
        add(p + "ffn_up.weight", {1536, 576});
        add(p + "ffn_down.weight", {576, 1536});
    }
    add("output_norm.weight", {576});
    return m;
}

struct Sweep {
    Model model;
    SensitivityTable table;
};

// One sensitivity sweep on stories260K shared by the tests (4 windows of 64 tokens).
const Sweep& stories()
{
    static Sweep sweep = [] {
        Sweep s;
        auto m = openModel(test::dataPath(kStories));
        if (!m) qFatal("%s", m.error().message.c_str());
        s.model = std::move(m).value();
        auto tok = Tokenizer::create(s.model);
        auto text = readTextFile(test::dataPath(kText));
        auto windows = makeLlamaCppChunks(**tok, *text, 64, 4);
        SensitivityOptions o;
        for (const char* f : {"q4_0", "q5_0", "q8_0", "f16", "int3:g32", "int8"})
            o.formats.push_back(*parseQuantFormat(f));
        auto cpu = createCpuBackend();
        auto t = measureSensitivity(s.model, *cpu, windows, nullptr, o);
        if (!t) qFatal("%s", t.error().message.c_str());
        s.table = std::move(t).value();
        return s;
    }();
    return sweep;
}

struct CliRun {
    int code = -1;
    QString out, err;
};

CliRun cli(const QStringList& args)
{
    QProcess p;
    p.start(QStringLiteral(QL_TEST_CLI), args);
    p.waitForFinished(600000);
    return {p.exitCode(), QString::fromUtf8(p.readAllStandardOutput()),
            QString::fromUtf8(p.readAllStandardError())};
}

}  // namespace

class TestMixedLayout : public QObject {
    Q_OBJECT

private slots:
    void roundTrip_data()
    {
        QTest::addColumn<QString>("spec");
        QTest::newRow("mix") << "*=q4_k; blk.0.*=q8_0; blk.1.ffn_down.weight=f16; "
                                "output.weight=q6_k";
        QTest::newRow("methods") << "*=q4_0:gptq:damp=0.02; blk.4.*=int4:g32:asym; "
                                    "token_embd.weight=q8_0";
        QTest::newRow("partial") << "blk.*.attn_*=q5_0; blk.2.attn_v.weight=q8_0";
        QTest::newRow("norm") << "*=q4_1; blk.0.attn_norm.weight=f16";
    }
    void roundTrip()
    {
        QL_REQUIRE_DATA(kStories);
        QFETCH(QString, spec);
        auto model = openModel(test::dataPath(kStories));
        QVERIFY(model.ok());
        auto a = TensorLayout::fromText(*model, spec.toStdString());
        QVERIFY2(a.ok(), a.ok() ? "" : a.error().message.c_str());
        const std::string text = a->toText();
        auto b = TensorLayout::fromText(*model, text);
        QVERIFY2(b.ok(), text.c_str());
        QVERIFY2(*a == *b, text.c_str());
        // The rules resolve to the same per-tensor plan as the original spec.
        auto p1 = Layout::parse(spec.toStdString())->resolve(*model);
        auto p2 = Layout::parse(text)->resolve(*model);
        QCOMPARE(p1->tensors.size(), p2->tensors.size());
        for (std::size_t i = 0; i < p1->tensors.size(); ++i) {
            QCOMPARE(formatToString(p1->tensors[i].format), formatToString(p2->tensors[i].format));
            QVERIFY(p1->tensors[i].method == p2->tensors[i].method);
        }
        // A per-tensor edit survives the trip too.
        Assignment edit{"blk.3.ffn_up.weight", *parseQuantFormat("q8_0"), QuantMethod::Rtn, {}};
        QVERIFY(a->set(*model, edit).ok());
        auto c = TensorLayout::fromText(*model, a->toText());
        QVERIFY(c.ok());
        QCOMPARE(c->find("blk.3.ffn_up.weight")->spec(), std::string("q8_0"));
        QVERIFY(*a == *c);
    }

    void presetQ4KMStories()
    {
        QL_REQUIRE_DATA(kStories);
        auto model = openModel(test::dataPath(kStories));
        QVERIFY(model.ok());
        auto t = presetLayout(*model, "q4_k_m");
        QVERIFY(t.ok());
        // n = 5: use_more_bits picks blocks 2 and 4 (llama-quantize Q4_K_M agrees: its log
        // raises blk.2/blk.4 attn_v and ffn_down to q6_K).
        for (int b = 0; b < 5; ++b) {
            const bool more = b == 2 || b == 4;
            QCOMPARE(t->find("blk." + std::to_string(b) + ".attn_v.weight")->spec(),
                     std::string(more ? "q6_k" : "q4_k"));
            QCOMPARE(t->find("blk." + std::to_string(b) + ".ffn_down.weight")->spec(),
                     std::string(more ? "q6_k" : "q4_k"));
            QCOMPARE(t->find("blk." + std::to_string(b) + ".attn_q.weight")->spec(),
                     std::string("q4_k"));
        }
        QCOMPARE(t->find("output.weight")->spec(), std::string("q6_k"));
        QCOMPARE(t->find("token_embd.weight")->spec(), std::string("q4_k"));
        // Stored after llama.cpp's fallbacks (64/172-column rows): q4_k -> q5_0, q6_k -> q8_0.
        auto plan = t->toLayout()->resolve(*model);
        QCOMPARE(formatToString(plan->find("blk.2.attn_v.weight")->format), std::string("q8_0"));
        QCOMPARE(formatToString(plan->find("blk.1.attn_q.weight")->format), std::string("q5_0"));
        QCOMPARE(formatToString(plan->find("output.weight")->format), std::string("q8_0"));
    }

    void presetsSmolLike()
    {
        const Model m = smolLike();
        auto t = presetLayout(m, "q4_k_m");
        QVERIFY(t.ok());
        // use_more_bits(i, 30): i < 3, i >= 26, (i - 3) % 3 == 2.
        const std::set<int> more = {0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29};
        for (int b = 0; b < 30; ++b) {
            QCOMPARE(llamaCppUseMoreBits(b, 30), more.count(b) == 1);
            QCOMPARE(t->find("blk." + std::to_string(b) + ".attn_v.weight")->spec(),
                     std::string(more.count(b) ? "q6_k" : "q4_k"));
        }
        // Tied head: token_embd is the output, raised to q6_k as llama.cpp does.
        QCOMPARE(t->find("token_embd.weight")->spec(), std::string("q6_k"));
        auto e = presetLayout(m, "edges8");
        QVERIFY(e.ok());
        QCOMPARE(e->find("blk.0.ffn_up.weight")->spec(), std::string("q8_0"));
        QCOMPARE(e->find("blk.29.attn_q.weight")->spec(), std::string("q8_0"));
        QCOMPARE(e->find("blk.15.attn_q.weight")->spec(), std::string("q4_k"));
        QCOMPARE(e->find("token_embd.weight")->spec(), std::string("q8_0"));
        auto u = presetLayout(m, "uniform:q5_k");
        QVERIFY(u.ok());
        QCOMPARE(u->toText(), std::string("*=q5_k"));
        QVERIFY(!presetLayout(m, "q9_x").ok());
    }

    void ties()
    {
        const Model m = smolLike();
        auto t = TensorLayout::fromText(m,
                                        "*=q4_k; blk.3.attn_v.weight=q6_k; "
                                        "blk.7.ffn_gate.weight=q2_k");
        QVERIFY(t.ok());
        TensorLayout untied = *t;
        QVERIFY(applyTies(m, untied, TieTarget::None).empty());
        const auto changes = applyTies(m, *t, TieTarget::GptqSafetensors);
        // q and k of block 3 rise to v's q6_k; block 7's gate rises to up's q4_k.
        QCOMPARE(int(changes.size()), 3);
        QCOMPARE(t->find("blk.3.attn_q.weight")->spec(), std::string("q6_k"));
        QCOMPARE(t->find("blk.3.attn_k.weight")->spec(), std::string("q6_k"));
        QCOMPARE(t->find("blk.7.ffn_gate.weight")->spec(), std::string("q4_k"));
        QCOMPARE(int(tieGroups(m, TieTarget::GptqSafetensors).size()), 60);
    }

    void sizeMatchesWriter_data()
    {
        QTest::addColumn<QString>("spec");
        QTest::newRow("q4_k_m") << "preset:q4_k_m";
        QTest::newRow("edges8") << "preset:edges8";
        QTest::newRow("q8_0") << "*=q8_0";
        QTest::newRow("int4 as f16/f32") << "*=int4:g32";
        QTest::newRow("mixed") << "*=q4_0; blk.1.*=q5_1; blk.2.ffn_down.weight=f16";
    }
    void sizeMatchesWriter()
    {
        QL_REQUIRE_DATA(kStories);
        QFETCH(QString, spec);
        auto model = openModel(test::dataPath(kStories));
        QVERIFY(model.ok());
        std::string text = spec.toStdString();
        if (text.rfind("preset:", 0) == 0) text = *presetText(*model, text.substr(7));
        auto layout = Layout::parse(text);
        QVERIFY(layout.ok());
        auto size = estimateSize(*model, *layout);
        QVERIFY(size.ok());
        const std::string path = tempPath("size.gguf");
        auto written = exportGguf(*model, *layout, path);
        QVERIFY2(written.ok(), written.ok() ? "" : written.error().message.c_str());
        const auto actual = std::filesystem::file_size(path);
        std::filesystem::remove(path);
        // Tolerance: none. The header is recomputed key by key, so the estimate is exact.
        QCOMPARE(size->fileBytes, std::uint64_t(actual));
        QCOMPARE(size->tensorBytes, written->tensorBytes);
        std::uint64_t perBlock = 0;
        for (const auto& b : size->blocks) perBlock += b.bytes;
        QCOMPARE(perBlock, size->tensorBytes);
        QVERIFY(size->bpw > 0 && size->bpw <= 32.0);
        // Memory: weights + KV (2 x 5 blocks x 512 ctx x 4 heads x 8 x 2 bytes) + activations.
        MemoryOptions mo;
        mo.context = 512;
        mo.reserveBytes = 0;
        const auto mem = estimateMemory(*model, *size, mo);
        QCOMPARE(mem.kvCache, std::uint64_t(2 * 5 * 512 * 4 * 8 * 2));
        QCOMPARE(mem.total, mem.weights + mem.kvCache + mem.activations);
        QVERIFY(mem.fits(mem.total) && !mem.fits(mem.total - 1));
    }

    void sensitivityStories()
    {
        QL_REQUIRE_DATA(kStories);
        QL_REQUIRE_DATA(kText);
        const Sweep& s = stories();
        const SensitivityTable& t = s.table;
        QCOMPARE(int(t.tensors.size()), 37);  // 5 x 7 matrices + token_embd + output
        QVERIFY(t.positions >= 4 * 31 && t.positions <= 4 * 32);  // half of each window
        const int q4 = t.formatIndex("q4_0"), q8 = t.formatIndex("q8_0");
        const int i3 = t.formatIndex("int3:g32"), i8 = t.formatIndex("int8");
        double sum4 = 0, sum8 = 0, sumI3 = 0, sumI8 = 0;
        int lowerWins = 0;
        for (const auto& x : t.tensors) {
            for (const auto& c : x.cells) {
                QVERIFY2(c.deltaKl >= 0, x.name.c_str());
                QVERIFY(c.sameTop >= 0 && c.sameTop <= 1);
            }
            sum4 += x.cells[q4].deltaKl;
            sum8 += x.cells[q8].deltaKl;
            sumI3 += x.cells[i3].deltaKl;
            sumI8 += x.cells[i8].deltaKl;
            if (x.cells[i3].deltaKl > x.cells[i8].deltaKl) ++lowerWins;
            QVERIFY(std::isfinite(x.kurtosis) && std::isfinite(x.outlierShare));
        }
        // Fewer bits: more sensitive on average (and for most tensors).
        QVERIFY2(sum4 > 2 * sum8, qPrintable(QString("%1 %2").arg(sum4).arg(sum8)));
        QVERIFY(sumI3 > 5 * sumI8);
        QVERIFY(lowerWins >= 30);
        // ffn_down has 172 columns: q4_0/q5_0/q8_0 all fall back to f32 (exact, ΔKL 0).
        const SensitivityTensor* down = t.find("blk.0.ffn_down.weight");
        QCOMPARE(down->cells[q4].stored, std::string("f32"));
        QCOMPARE(down->cells[q4].deltaKl, 0.0);
        QCOMPARE(down->cells[q4].bytes, std::uint64_t(64 * 172 * 4));
        // Spearman sanity: perfect and reversed orders, ties averaged.
        QCOMPARE(spearman({1, 2, 3, 4}, {10, 20, 30, 40}), 1.0);
        QCOMPARE(spearman({1, 2, 3, 4}, {4, 3, 2, 1}), -1.0);
        QVERIFY(std::isnan(spearman({1, 2}, {1, 2})));
        const auto corr = proxyCorrelations(t);
        QCOMPARE(int(corr.size()), 5);

        // Stored in the session, read back equal.
        SessionData session;
        session.model = *identifyModel(s.model);
        session.sensitivity = t;
        const std::string path = tempPath("sens.h5");
        QVERIFY(writeSession(path, session).ok());
        auto back = readSession(path);
        std::filesystem::remove(path);
        QVERIFY2(back.ok(), back.ok() ? "" : back.error().message.c_str());
        QVERIFY(back->sensitivity.has_value());
        const SensitivityTable& r = *back->sensitivity;
        QCOMPARE(r.formats, t.formats);
        QCOMPARE(r.tensors.size(), t.tensors.size());
        QCOMPARE(r.tensors[3].name, t.tensors[3].name);
        QCOMPARE(r.tensors[3].cells[q4].deltaKl, t.tensors[3].cells[q4].deltaKl);
        QCOMPARE(r.tensors[3].cells[q4].stored, t.tensors[3].cells[q4].stored);
        QCOMPARE(r.tensors[3].kurtosis, t.tensors[3].kurtosis);
    }

    void allocation()
    {
        QL_REQUIRE_DATA(kStories);
        QL_REQUIRE_DATA(kText);
        const Sweep& s = stories();
        for (const char* uniform : {"*=q4_0", "*=q5_0", "*=q8_0"}) {
            auto layout = Layout::parse(uniform);
            auto plan = layout->resolve(s.model);
            auto size = estimateSize(s.model, *plan, layout->toString());
            const double uniformKl = predictedKl(s.table, *plan);
            AllocationOptions o;
            o.targetBytes = size->fileBytes;
            auto a = allocateLayout(s.model, s.table, o);
            QVERIFY2(a.ok(), a.ok() ? "" : a.error().message.c_str());
            QVERIFY(a->size.fileBytes <= size->fileBytes);
            // The allocation re-estimated from its own text, and the same number.
            auto check = estimateSize(s.model, *Layout::parse(a->text));
            QCOMPARE(check->fileBytes, a->size.fileBytes);
            QVERIFY2(a->predictedKl <= uniformKl,
                     qPrintable(
                         QString("%1: %2 vs %3").arg(uniform).arg(a->predictedKl).arg(uniformKl)));
        }
        // Bits per weight target: tensor data only.
        AllocationOptions o;
        // (ffn_down's 172-column rows fit no block format: f16 at best, so ~6.9 bpw is the floor.)
        o.targetBpw = 6.0;
        QVERIFY(!allocateLayout(s.model, s.table, o).ok());
        o.targetBpw = 9.0;
        auto a = allocateLayout(s.model, s.table, o);
        QVERIFY2(a.ok(), a.ok() ? "" : a.error().message.c_str());
        QVERIFY(a->size.bpw <= 9.0);
        QVERIFY(a->size.bpw > 8.5);
        // Ties: every q/k/v and gate/up group ends up in one format.
        o.ties = TieTarget::GptqSafetensors;
        a = allocateLayout(s.model, s.table, o);
        QVERIFY(a.ok());
        for (const auto& g : tieGroups(s.model, TieTarget::GptqSafetensors))
            for (const auto& name : g)
                QCOMPARE(a->layout.find(name)->spec(), a->layout.find(g.front())->spec());
        // Impossible targets are errors, not layouts.
        o.targetBpw.reset();
        o.targetBytes = 1000;
        QVERIFY(!allocateLayout(s.model, s.table, o).ok());
    }

    void cliEndToEnd()
    {
        QL_REQUIRE_DATA(kStories);
        QL_REQUIRE_DATA(kText);
        const QString model = QString::fromStdString(test::dataPath(kStories));
        const QString text = QString::fromStdString(test::dataPath(kText));
        const QString session = QString::fromStdString(tempPath("cli.h5"));
        const QString layout = QString::fromStdString(tempPath("layout.txt"));
        const QString gguf = QString::fromStdString(tempPath("alloc.gguf"));
        auto r = cli({"sensitivity", model, "--session", session, "--text", text, "--formats",
                      "q4_0,q8_0,int8", "--ctx", "64", "--chunks", "2", "--device", "cpu"});
        QVERIFY2(r.code == 0, qPrintable(r.err));
        QVERIFY(r.out.contains("blk.0.attn_q.weight"));
        QVERIFY(r.out.contains("kurtosis"));
        r = cli({"allocate", model, "--session", session, "--target-bpw", "20", "--out", layout});
        QVERIFY2(r.code == 0, qPrintable(r.err));
        QVERIFY(r.out.contains("predicted KL"));
        QVERIFY(std::filesystem::exists(layout.toStdString()));
        r = cli({"quantize", model, "--layout", "@" + layout, "--out", gguf});
        QVERIFY2(r.code == 0, qPrintable(r.err));
        r = cli({"layout", model, "--layout", "@" + layout, "--session", session, "--json"});
        QVERIFY2(r.code == 0, qPrintable(r.err));
        QVERIFY(r.out.contains(
            QString("\"file_bytes\": %1").arg(std::filesystem::file_size(gguf.toStdString()))));
        r = cli({"eval", model, "--text", text, "--ctx", "64", "--chunks", "2", "--layout",
                 "@" + layout, "--session", session});
        QVERIFY2(r.code == 0, qPrintable(r.err));
        QVERIFY(r.out.contains("KL mean"));
        QVERIFY(r.out.contains("predicted"));
        r = cli(
            {"allocate", model, "--session", session, "--target-bytes", "100", "--out", layout});
        QCOMPARE(r.code, 2);
        for (const auto& f : {session, layout, gguf}) std::filesystem::remove(f.toStdString());
    }
};

QTEST_GUILESS_MAIN(TestMixedLayout)
#include "test_mixed_layout.moc"
