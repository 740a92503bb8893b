// HDF5 session: calibration statistics survive a write/read round trip exactly; writes are atomic;
// malformed files and a changed model are reported.
#include <QtTest>

#include <filesystem>
#include <fstream>
#include <random>

#include "session/session.h"

using namespace ql;

namespace {

CalibrationResult makeCalibration(HessianPrecision precision)
{
    CalibrationResult c;
    c.config.textFiles = {"/data/a.txt", "/data/b.txt"};
    c.config.samples = 4;
    c.config.seqLen = 16;
    c.config.seed = 1234567890123ull;
    c.config.hessian = precision;
    c.config.histogramBins = 256;
    c.config.topK = 5;
    c.tokens = 64;
    c.seconds = 1.5;
    c.device = "CPU (2 threads)";
    std::mt19937 rng(5);
    std::student_t_distribution<float> t(4.0f);
    for (int block = 0; block < 12; ++block)  // 12 blocks: name order differs from block order
        for (ProbeSite site : {ProbeSite::AttnQkv, ProbeSite::FfnDown}) {
            const int ch = site == ProbeSite::AttnQkv ? 8 : 12;
            ProbeStats p;
            p.name = probeName(block, site);
            p.block = block;
            p.site = site;
            p.stats = ActivationStats(ch, precision, 256, 5);
            std::vector<float> x(64 * ch);
            for (auto& v : x) v = t(rng);
            p.stats.add(x, 64, 0);
            for (std::size_t i = 0; i < p.stats.top().size(); ++i)
                p.topContext.push_back({"Once upon", " a time ünïcode", " there"});
            c.probes.push_back(std::move(p));
        }
    return c;
}

}  // namespace

class TestSession : public QObject {
    Q_OBJECT
private slots:
    void roundTrip_data()
    {
        QTest::addColumn<int>("precision");
        QTest::newRow("no hessian") << int(HessianPrecision::None);
        QTest::newRow("f32 hessian") << int(HessianPrecision::Float32);
        QTest::newRow("f64 hessian") << int(HessianPrecision::Float64);
    }
    void roundTrip()
    {
        QFETCH(int, precision);
        QTemporaryDir dir;
        const std::string path = dir.filePath("s.h5").toStdString();
        SessionData s;
        s.model = {"/models/m.gguf", "GGUF", "llama", 12345, 0xfedcba9876543210ull, 260032};
        s.calibration = makeCalibration(HessianPrecision(precision));
        QVERIFY(writeSession(path, s).ok());
        QVERIFY(!std::filesystem::exists(path + ".tmp-" +
                                         std::to_string(QCoreApplication::applicationPid())));
        auto r = readSession(path);
        QVERIFY2(r.ok(), r.ok() ? "" : r.error().message.c_str());
        QCOMPARE(r->model.hash, s.model.hash);
        QCOMPARE(r->model.path, s.model.path);
        QCOMPARE(r->model.parameters, s.model.parameters);
        QVERIFY(r->calibration.has_value());
        const auto& a = *s.calibration;
        const auto& b = *r->calibration;
        QCOMPARE(b.config.textFiles, a.config.textFiles);
        QCOMPARE(b.config.seed, a.config.seed);
        QCOMPARE(b.config.hessian, a.config.hessian);
        QCOMPARE(b.probes.size(), a.probes.size());
        for (std::size_t i = 0; i < a.probes.size(); ++i) {
            const auto& pa = a.probes[i];
            const auto& pb = b.probes[i];
            QCOMPARE(pb.name, pa.name);
            QCOMPARE(pb.site, pa.site);
            QCOMPARE(pb.stats.channelAbsMax(), pa.stats.channelAbsMax());
            QCOMPARE(pb.stats.sumSquare(), pa.stats.sumSquare());
            QCOMPARE(pb.stats.histogram().counts, pa.stats.histogram().counts);
            QCOMPARE(pb.stats.histogram().range, pa.stats.histogram().range);
            QCOMPARE(pb.stats.hessian(), pa.stats.hessian());
            QCOMPARE(pb.stats.top().size(), pa.stats.top().size());
            QCOMPARE(pb.topContext.at(0).token, std::string(" a time ünïcode"));
            for (std::size_t k = 0; k < pa.stats.top().size(); ++k)
                QCOMPARE(pb.stats.top()[k].value, pa.stats.top()[k].value);
        }
    }

    void badFiles()
    {
        QTemporaryDir dir;
        QVERIFY(!readSession(dir.filePath("missing.h5").toStdString()).ok());
        const std::string junk = dir.filePath("junk.h5").toStdString();
        std::ofstream(junk) << "not hdf5 at all";
        auto r = readSession(junk);
        QVERIFY(!r.ok());
        QVERIFY(r.error().message.find("not an HDF5 file") != std::string::npos);
        // A valid session truncated in the middle is refused, never crashes.
        const std::string good = dir.filePath("good.h5").toStdString();
        SessionData s;
        s.calibration = makeCalibration(HessianPrecision::Float32);
        QVERIFY(writeSession(good, s).ok());
        auto size = std::filesystem::file_size(good);
        for (double f : {0.1, 0.5, 0.9}) {
            std::filesystem::copy_file(good, junk,
                                       std::filesystem::copy_options::overwrite_existing);
            std::filesystem::resize_file(junk, static_cast<std::uintmax_t>(size * f));
            QVERIFY(!readSession(junk).ok());
        }
        // Writing into a folder that does not exist fails cleanly and leaves nothing behind.
        QVERIFY(!writeSession(dir.filePath("no/such/dir/s.h5").toStdString(), s).ok());
    }

    void changedModelDetected()
    {
        ModelIdentity a{"/m", "GGUF", "llama", 100, 1, 10};
        ModelIdentity b = a;
        QVERIFY(checkModelIdentity(a, b).ok());
        b.hash = 2;
        auto st = checkModelIdentity(a, b);
        QVERIFY(!st.ok());
        QVERIFY(st.error().message.find("changed") != std::string::npos);
    }
};

QTEST_GUILESS_MAIN(TestSession)
#include "test_session.moc"
