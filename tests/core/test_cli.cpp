// quantlens-cli as a user runs it (the built binary, QL_TEST_CLI, through QProcess): inspect's
// JSON against core's own statistics on stories260K, its error contract (exit 2 and exactly one
// "quantlens-cli: error:" line on stderr for bad input), and generate -> inspect -> bench open
// round trips on a generated tiny model.
#include <QtTest>

#include <sys/stat.h>

#include <QJsonArray>
#include <QJsonDocument>
#include <QJsonObject>
#include <QProcess>
#include <QTemporaryDir>

#include <filesystem>
#include <fstream>
#include <set>

#include "io/model_loader.h"
#include "stats/tensor_stats.h"
#include "test_data.h"

using namespace ql;

namespace {

const std::string kStories = "models/stories260K/stories260K.gguf";

struct Run {
    int exitCode = -1;
    QByteArray out, err;
    QStringList errLines() const { return QString::fromUtf8(err).split('\n', Qt::SkipEmptyParts); }
};

Run runCli(const QStringList& args, int timeoutMs = 300000)
{
    QProcess p;
    p.start(QStringLiteral(QL_TEST_CLI), args);
    Run r;
    if (!p.waitForStarted(10000)) {
        r.err = "could not start " QL_TEST_CLI;
        return r;
    }
    p.waitForFinished(timeoutMs);
    r.exitCode = p.exitStatus() == QProcess::NormalExit ? p.exitCode() : -1;
    r.out = p.readAllStandardOutput();
    r.err = p.readAllStandardError();
    return r;
}

QJsonObject parseJson(const Run& r)
{
    QJsonParseError e;
    const QJsonDocument doc = QJsonDocument::fromJson(r.out, &e);
    if (e.error != QJsonParseError::NoError)
        qWarning("JSON parse error at %d: %s", e.offset, qPrintable(e.errorString()));
    return doc.object();
}

bool close(double a, double b)
{
    return std::fabs(a - b) <= 1e-12 * std::max(std::fabs(a), std::fabs(b)) + 1e-300;
}

std::vector<std::int32_t> indices(const QJsonValue& v)
{
    std::vector<std::int32_t> out;
    for (const QJsonValue& i : v.toArray()) out.push_back(std::int32_t(i.toInt()));
    return out;
}

}  // namespace

class TestCli : public QObject {
    Q_OBJECT

private slots:
    void initTestCase()
    {
        QVERIFY2(QFileInfo::exists(QStringLiteral(QL_TEST_CLI)),
                 "build quantlens-cli first (" QL_TEST_CLI ")");
    }

    void versionAndHelp()
    {
        Run r = runCli({"--version"});
        QCOMPARE(r.exitCode, 0);
        QVERIFY(r.out.startsWith("quantlens-cli "));
        r = runCli({"--help"});
        QCOMPARE(r.exitCode, 0);
        for (const char* cmd : {"inspect", "generate", "bench"}) QVERIFY(r.out.contains(cmd));
        r = runCli({"help", "inspect"});
        QCOMPARE(r.exitCode, 0);
        QVERIFY(r.out.startsWith("usage: quantlens-cli inspect"));
        r = runCli({"generate", "--help"});
        QCOMPARE(r.exitCode, 0);
        QVERIFY(r.out.contains("--sparse"));
    }

    // inspect --json agrees with computeTensorStats for every tensor, under several rules.
    void inspectJsonMatchesCore_data()
    {
        QTest::addColumn<QString>("mode");
        QTest::addColumn<double>("k");
        QTest::newRow("default (median x5)") << QString() << 5.0;
        QTest::newRow("median x2") << "median" << 2.0;
        QTest::newRow("std x3") << "std" << 3.0;
    }
    void inspectJsonMatchesCore()
    {
        QFETCH(QString, mode);
        QFETCH(double, k);
        QL_REQUIRE_DATA(kStories);
        const QString path = QString::fromStdString(test::dataPath(kStories));
        QStringList args{"inspect", path, "--json"};
        if (!mode.isEmpty())
            args << "--outlier-mode" << mode << "--outlier-k" << QString::number(k);
        const Run r = runCli(args);
        QCOMPARE(r.exitCode, 0);
        QVERIFY2(r.err.isEmpty(), r.err.constData());  // no progress when stderr is not a tty
        const QJsonObject j = parseJson(r);
        QVERIFY(!j.isEmpty());

        auto model = openModel(path.toStdString());
        QVERIFY(model.ok());
        QCOMPARE(j["format"].toString(), QString("gguf"));
        QCOMPARE(j["architecture"].toString(), QString("llama"));
        const QJsonObject hp = j["hyperParameters"].toObject();
        QCOMPARE(hp["blockCount"].toInt(), 5);
        QCOMPARE(hp["embeddingDim"].toInt(), 64);
        QCOMPARE(hp["ffnDim"].toInt(), 172);
        QCOMPARE(hp["headCount"].toInt(), 8);
        QCOMPARE(hp["headCountKv"].toInt(), 4);
        QCOMPARE(hp["vocabSize"].toInt(), 512);
        QCOMPARE(j["tensorCount"].toInt(), int(model->tensors.size()));
        QCOMPARE(j["parameters"].toDouble(), double(model->totalParameters()));
        const QJsonObject rule = j["outlierRule"].toObject();
        QCOMPARE(rule["mode"].toString(), mode.isEmpty() ? QString("median") : mode);
        QCOMPARE(rule["k"].toDouble(), k);

        const QJsonArray tensors = j["tensors"].toArray();
        QCOMPARE(tensors.size(), qsizetype(model->tensors.size()));
        QCOMPARE(tensors.size(), 5 * 9 + 3);  // 9 per block + token_embd, output_norm, output
        std::set<int> blocks;
        TensorStatsOptions options;
        options.outliers = {mode == "std" ? OutlierMode::StdMultiple : OutlierMode::MedianMultiple,
                            k};
        int outlierChannels = 0;
        for (qsizetype i = 0; i < tensors.size(); ++i) {
            const QJsonObject t = tensors[i].toObject();
            const TensorInfo& info = model->tensors[std::size_t(i)];
            QCOMPARE(t["name"].toString().toStdString(), info.name);
            QCOMPARE(t["role"].toString(), QString(tensorRoleName(info.role)));
            QCOMPARE(t["type"].toString(), QString("F32"));
            QCOMPARE(t["bytes"].toDouble(), double(info.bytes));
            QJsonArray shape;
            for (auto d : info.shape) shape.append(qint64(d));
            QCOMPARE(t["shape"].toArray(), shape);
            if (t["block"].toInt() >= 0) blocks.insert(t["block"].toInt());

            auto core = computeTensorStats(*model, info, options);
            QVERIFY(core.ok());
            const QJsonObject s = t["stats"].toObject();
            QCOMPARE(s["count"].toDouble(), double(core->count));
            for (auto [key, value] : {std::pair{"min", core->min},
                                      {"max", core->max},
                                      {"mean", core->mean},
                                      {"std", core->std},
                                      {"kurtosis", core->kurtosis},
                                      {"absMax", core->absMax},
                                      {"outlierShare", core->outlierShare}})
                QVERIFY2(close(s[key].toDouble(), value),
                         qPrintable(QString("%1 %2: %3 vs core %4")
                                        .arg(t["name"].toString(), key)
                                        .arg(s[key].toDouble(), 0, 'g', 17)
                                        .arg(value, 0, 'g', 17)));
            const QJsonObject cols = s["outlierCols"].toObject(),
                              rows = s["outlierRows"].toObject();
            QCOMPARE(cols["count"].toInt(), int(core->colOutliers.indices.size()));
            QCOMPARE(rows["count"].toInt(), int(core->rowOutliers.indices.size()));
            QCOMPARE(indices(cols["indices"]), core->colOutliers.indices);
            QCOMPARE(indices(rows["indices"]), core->rowOutliers.indices);
            QVERIFY(close(cols["threshold"].toDouble(), core->colOutliers.threshold));
            outlierChannels += cols["count"].toInt() + rows["count"].toInt();
        }
        QCOMPARE(blocks, (std::set<int>{0, 1, 2, 3, 4}));
        if (k < 5) QVERIFY(outlierChannels > 0);  // the looser rules do find channels
    }

    void inspectTableAndNoStats()
    {
        QL_REQUIRE_DATA(kStories);
        const QString path = QString::fromStdString(test::dataPath(kStories));
        Run r = runCli({"inspect", path});
        QCOMPARE(r.exitCode, 0);
        QVERIFY(r.out.contains("blocks        5, embedding 64, ffn 172"));
        QVERIFY(r.out.contains("blk.4.ffn_down.weight"));
        QVERIFY(r.out.contains("kurt"));
        r = runCli({"inspect", path, "--json", "--no-stats"});
        QCOMPARE(r.exitCode, 0);
        const QJsonArray tensors = parseJson(r)["tensors"].toArray();
        QCOMPARE(tensors.size(), 48);
        for (const QJsonValue& t : tensors) QVERIFY(!t.toObject().contains("stats"));
    }

    // Bad input: exit 2, nothing on stdout, exactly one stderr line "quantlens-cli: error: ...".
    void badInputIsOneErrorLine_data()
    {
        QTest::addColumn<QString>("kind");
        QTest::newRow("truncated gguf") << "truncated";
        QTest::newRow("gguf cut inside the header") << "header";
        QTest::newRow("missing file") << "missing";
        QTest::newRow("empty file") << "empty";
        QTest::newRow("text file") << "text";
    }
    void badInputIsOneErrorLine()
    {
        QFETCH(QString, kind);
        QL_REQUIRE_DATA(kStories);
        QTemporaryDir tmp;
        QVERIFY(tmp.isValid());
        const std::string source = test::dataPath(kStories);
        std::string path = tmp.filePath("model.gguf").toStdString();
        if (kind == "truncated" || kind == "header") {
            std::ifstream in(source, std::ios::binary);
            std::vector<char> bytes((std::istreambuf_iterator<char>(in)), {});
            bytes.resize(kind == "truncated" ? bytes.size() / 2 : 100);
            std::ofstream(path, std::ios::binary)
                .write(bytes.data(), std::streamsize(bytes.size()));
        } else if (kind == "empty") {
            std::ofstream(path, std::ios::binary);
        } else if (kind == "text") {
            path = tmp.filePath("notes.txt").toStdString();
            std::ofstream(path) << "not a model\n";
        } else {
            path = tmp.filePath("does-not-exist.gguf").toStdString();
        }
        for (const QStringList& extra :
             {QStringList{}, QStringList{"--json"}, QStringList{"--no-stats"}}) {
            const Run r = runCli(QStringList{"inspect", QString::fromStdString(path)} + extra);
            QCOMPARE(r.exitCode, 2);
            QVERIFY(r.out.isEmpty());
            QVERIFY2(r.err.endsWith('\n'), r.err.constData());
            QCOMPARE(r.err.count('\n'), 1);
            QVERIFY2(r.err.startsWith("quantlens-cli: error: "), r.err.constData());
        }
    }

    void badUsage_data()
    {
        QTest::addColumn<QStringList>("args");
        QTest::newRow("no command") << QStringList{};
        QTest::newRow("unknown command") << QStringList{"frobnicate"};
        QTest::newRow("inspect without a model") << QStringList{"inspect"};
        QTest::newRow("unknown option") << QStringList{"inspect", "m.gguf", "--colour"};
        QTest::newRow("bad outlier mode")
            << QStringList{"inspect", "m.gguf", "--outlier-mode", "mad"};
        QTest::newRow("bad k") << QStringList{"inspect", "m.gguf", "--outlier-k", "-1"};
        QTest::newRow("missing value") << QStringList{"inspect", "m.gguf", "--outlier-k"};
        QTest::newRow("unknown shape") << QStringList{"generate", "--shape", "gpt-5", "--out", "x"};
        QTest::newRow("bad dtype")
            << QStringList{"generate", "--shape", "tiny", "--out", "x", "--dtype", "q4"};
        QTest::newRow("bench without a benchmark") << QStringList{"bench"};
        QTest::newRow("bench open repeat 0") << QStringList{"bench", "open", "x", "--repeat", "0"};
    }
    void badUsage()
    {
        QFETCH(QStringList, args);
        const Run r = runCli(args);
        QCOMPARE(r.exitCode, 2);
        QVERIFY(r.out.isEmpty());
        const QStringList lines = r.errLines();
        QVERIFY(!lines.isEmpty());
        QVERIFY2(lines[0].startsWith("quantlens-cli: error: ") || lines[0].startsWith("usage:"),
                 r.err.constData());
    }

    void generateInspectRoundTrip()
    {
        QTemporaryDir tmp;
        QVERIFY(tmp.isValid());
        const QString dir = tmp.filePath("tiny");
        Run r = runCli({"generate", "--shape", "tiny", "--out", dir, "--seed", "7"});
        QCOMPARE(r.exitCode, 0);
        QVERIFY2(r.out.startsWith("wrote "), r.out.constData());
        QVERIFY(QFileInfo::exists(dir + "/config.json"));
        QVERIFY(QFileInfo::exists(dir + "/model.safetensors"));
        QVERIFY(QDir(dir).entryList({"*.partial"}, QDir::Files).isEmpty());

        r = runCli({"inspect", dir, "--json", "--outlier-mode", "std", "--outlier-k", "3"});
        QCOMPARE(r.exitCode, 0);
        const QJsonObject j = parseJson(r);
        QCOMPARE(j["format"].toString(), QString("safetensors"));
        const QJsonObject hp = j["hyperParameters"].toObject();
        QCOMPARE(hp["blockCount"].toInt(), 2);
        QCOMPARE(hp["embeddingDim"].toInt(), 128);
        QCOMPARE(hp["ffnDim"].toInt(), 384);
        QCOMPARE(hp["headCount"].toInt(), 4);
        QCOMPARE(hp["headCountKv"].toInt(), 2);
        QCOMPARE(hp["vocabSize"].toInt(), 1000);
        const QJsonArray tensors = j["tensors"].toArray();
        QCOMPARE(tensors.size(), 2 * 9 + 3);
        std::map<std::string, QJsonObject> byName;
        for (const QJsonValue& v : tensors) {
            const QJsonObject t = v.toObject();
            byName[t["name"].toString().toStdString()] = t;
            QCOMPARE(t["type"].toString(), QString("BF16"));
            const QJsonObject s = t["stats"].toObject();
            if (t["role"].toString().endsWith("norm")) {
                QVERIFY(std::fabs(s["mean"].toDouble() - 1.0) < 0.05);  // gains around 1
                continue;
            }
            // Heavy tails and one outlier input channel in every matrix.
            QVERIFY2(s["kurtosis"].toDouble() > 1.0, qPrintable(t["name"].toString()));
            QVERIFY(std::fabs(s["mean"].toDouble()) < 0.01);
            QVERIFY(s["std"].toDouble() > 0.01 && s["std"].toDouble() < 0.05);
            QVERIFY2(s["outlierCols"].toObject()["count"].toInt() >= 1,
                     qPrintable(t["name"].toString()));
        }
        QCOMPARE(byName.count("output.weight"), std::size_t(1));
        // Matrices reading the same width share their outlier channel, as real ones do.
        auto firstOutlier = [&](const char* name) {
            return byName[name]["stats"]
                .toObject()["outlierCols"]
                .toObject()["indices"]
                .toArray()[0]
                .toInt();
        };
        QCOMPARE(firstOutlier("blk.0.attn_q.weight"), firstOutlier("blk.1.ffn_up.weight"));
        QCOMPARE(firstOutlier("blk.0.attn_k.weight"), firstOutlier("token_embd.weight"));

        // Same seed, same bytes; another seed, other bytes.
        const QString again = tmp.filePath("again"), other = tmp.filePath("other");
        QCOMPARE(runCli({"generate", "--shape", "tiny", "--out", again, "--seed", "7"}).exitCode,
                 0);
        QCOMPARE(runCli({"generate", "--shape", "tiny", "--out", other, "--seed", "8"}).exitCode,
                 0);
        auto bytes = [](const QString& d) {
            QFile f(d + "/model.safetensors");
            return f.open(QIODevice::ReadOnly) ? f.readAll() : QByteArray();
        };
        QVERIFY(!bytes(dir).isEmpty());
        QVERIFY(bytes(dir) == bytes(again));
        QVERIFY(bytes(dir) != bytes(other));

        // An existing model is not overwritten without --force.
        r = runCli({"generate", "--shape", "tiny", "--out", dir});
        QCOMPARE(r.exitCode, 2);
        QCOMPARE(r.errLines().size(), 1);
        QVERIFY(r.err.startsWith("quantlens-cli: error: "));
        QCOMPARE(runCli({"generate", "--shape", "tiny", "--out", dir, "--seed", "8", "--force"})
                     .exitCode,
                 0);
        QVERIFY(bytes(dir) == bytes(other));

        r = runCli({"bench", "open", dir, "--repeat", "2"});
        QCOMPARE(r.exitCode, 0);
        QCOMPARE(r.out.count("PASS"), 2);
        QVERIFY(r.out.contains("VmHWM"));
    }

    void generateSparseLeavesHoles()
    {
        QTemporaryDir tmp;
        QVERIFY(tmp.isValid());
        const QString dir = tmp.filePath("sparse");
        Run r = runCli({"generate", "--shape", "tiny", "--out", dir, "--sparse", "--dtype", "f32"});
        QCOMPARE(r.exitCode, 0);
        const std::string file = (dir + "/model.safetensors").toStdString();
        struct stat st {};
        QCOMPARE(::stat(file.c_str(), &st), 0);
        auto model = openModel(dir.toStdString());
        QVERIFY2(model.ok(), model.ok() ? "" : model.error().message.c_str());
        QCOMPARE(model->tensors.size(), std::size_t(21));
        QCOMPARE(model->tensors[0].type, TensorType::F32);
        QVERIFY(std::uint64_t(st.st_size) > model->totalBytes());
        // Most of the file is a hole (where the file system supports them).
        if (std::uint64_t(st.st_blocks) * 512 >= model->totalBytes())
            qWarning("this file system allocated the holes");
        r = runCli({"inspect", dir, "--json"});
        QCOMPARE(r.exitCode, 0);
        for (const QJsonValue& t : parseJson(r)["tensors"].toArray())
            QCOMPARE(t.toObject()["stats"].toObject()["absMax"].toDouble(),
                     0.0);  // holes read as 0
    }
};

QTEST_GUILESS_MAIN(TestCli)
#include "test_cli.moc"
