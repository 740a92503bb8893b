// Corrupt model files: real files (stories260K as GGUF, llama2.c and a written safetensors
// folder, a Q4_K GGUF) truncated at every header field boundary and at random points, and with
// random bytes of their headers changed; plus hand-made hostile files (huge counts and lengths,
// overflowing shapes, deep nesting). Every truncation must be refused with an error; a changed
// byte must give an error or a model whose every tensor lies inside its file; no hostile file may
// make the loader ask for more than 1 MiB in one allocation.
#include <QTemporaryDir>
#include <QtTest>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <fcntl.h>
#include <filesystem>
#include <new>
#include <random>
#include <set>
#include <unistd.h>

#include "io/model_loader.h"
#include "io/safetensors.h"
#include "model_file_builder.h"
#include "test_data.h"

// --- allocation watch: the largest single request while tracking is on --------------------------

namespace {
std::atomic<bool> g_trackAllocations{false};
std::atomic<std::size_t> g_largestAllocation{0};
}  // namespace

void* operator new(std::size_t n)
{
    if (g_trackAllocations.load(std::memory_order_relaxed)) {
        std::size_t seen = g_largestAllocation.load(std::memory_order_relaxed);
        while (n > seen && !g_largestAllocation.compare_exchange_weak(seen, n)) {
        }
    }
    if (void* p = std::malloc(n ? n : 1)) return p;
    throw std::bad_alloc();
}
void* operator new[](std::size_t n)
{
    return ::operator new(n);
}
// Every unaligned form is replaced so that new and delete always pair as malloc and free (ASan
// checks the pairing); aligned forms keep the library's pair.
void* operator new(std::size_t n, const std::nothrow_t&) noexcept
{
    try {
        return ::operator new(n);
    } catch (const std::bad_alloc&) {
        return nullptr;
    }
}
void* operator new[](std::size_t n, const std::nothrow_t&) noexcept
{
    return ::operator new(n, std::nothrow);
}
void operator delete(void* p, const std::nothrow_t&) noexcept
{
    std::free(p);
}
void operator delete[](void* p, const std::nothrow_t&) noexcept
{
    std::free(p);
}
void operator delete(void* p) noexcept
{
    std::free(p);
}
void operator delete[](void* p) noexcept
{
    std::free(p);
}
void operator delete(void* p, std::size_t) noexcept
{
    std::free(p);
}
void operator delete[](void* p, std::size_t) noexcept
{
    std::free(p);
}

using namespace ql;
using namespace qltest;

namespace {

const char* kGguf = "models/stories260K/stories260K.gguf";
const char* kBin = "models/stories260K/stories260K.bin";
const char* kQ4K = "vectors/gguf-quants/Q4_K_S.gguf";

// A model that opened despite a corruption must still be safe to read.
void checkInBounds(const Model& m)
{
    QVERIFY(validateModel(m).ok());
    for (const auto& t : m.tensors) {
        QVERIFY(t.fileIndex >= 0 && static_cast<std::size_t>(t.fileIndex) < m.files.size());
        QVERIFY(t.elementCount() > 0);
        QCOMPARE(tensorBytes(t.type, static_cast<std::uint64_t>(t.elementCount())),
                 std::optional<std::uint64_t>(t.bytes));
        QVERIFY(m.files[t.fileIndex]->contains(t.offset, t.bytes));
        auto data = m.data(t);
        QCOMPARE(data.size(), t.bytes);
        volatile std::uint8_t touch = data.front();
        touch = data.back();
        (void)touch;
    }
}

// The file a test corrupts, the path it opens, and the parts of it that matter.
struct Subject {
    std::string file;                       // the file that is truncated / changed
    std::string open;                       // what openModel gets
    std::vector<std::uint8_t> original;     // its intact bytes
    std::uint64_t headerEnd = 0;            // [0, headerEnd) is the region bytes are changed in
    std::uint64_t requiredEnd = 0;          // every truncation below this must fail
    std::vector<std::uint64_t> boundaries;  // field boundaries to truncate at
};

}  // namespace

class TestCorrupt : public QObject {
    Q_OBJECT

private:
    QTemporaryDir m_dir;
    std::map<QString, Subject> m_subjects;

    // Copies a data file into the temp dir; GGUF boundaries come from an independent walk.
    bool addGguf(const QString& key, const std::string& rel)
    {
        if (!test::haveData(rel)) return false;
        Subject s;
        s.original = readBytes(test::dataPath(rel));
        s.file = s.open = m_dir.filePath(key + ".gguf").toStdString();
        GgufLayout layout = GgufWalker(s.original).walk();
        s.boundaries = layout.fieldEnds;
        s.boundaries.push_back(0);
        s.boundaries.push_back(layout.dataStart);
        s.headerEnd = layout.dataStart;
        s.requiredEnd = layout.dataEnd;
        m_subjects[key] = std::move(s);
        return true;
    }

private slots:
    void initTestCase()
    {
        QVERIFY(m_dir.isValid());
        addGguf("stories260K.gguf", kGguf);
        addGguf("Q4_K_S.gguf", kQ4K);
        if (test::haveData(kBin)) {
            Subject s;
            s.original = readBytes(test::dataPath(kBin));
            s.file = s.open = m_dir.filePath("stories260K.bin").toStdString();
            s.headerEnd = 28;
            s.requiredEnd = s.original.size();
            for (std::uint64_t b = 0; b <= 28; b += 4) s.boundaries.push_back(b);
            auto m = openModel(test::dataPath(kBin));
            QVERIFY(m.ok());
            for (const auto& t : m->tensors) s.boundaries.push_back(t.offset);

            // A safetensors folder written from it (F16, so dtype sizes matter).
            const std::string folder = m_dir.filePath("st").toStdString();
            QVERIFY(writeSafetensorsFolder(*m, folder, TensorType::F16).ok());
            Subject st;
            st.file = folder + "/model.safetensors";
            st.open = folder;
            st.original = readBytes(st.file);
            std::uint64_t n = 0;
            std::memcpy(&n, st.original.data(), 8);
            st.headerEnd = 8 + n;
            st.requiredEnd = st.original.size();
            for (std::uint64_t b = 0; b <= 8; ++b) st.boundaries.push_back(b);
            for (std::uint64_t b = 9; b < 8 + n; b += 61) st.boundaries.push_back(b);
            st.boundaries.push_back(8 + n);
            auto sm = openModel(folder);
            QVERIFY(sm.ok());
            for (const auto& t : sm->tensors) st.boundaries.push_back(t.offset);

            Subject config;
            config.file = folder + "/config.json";
            config.open = folder;
            config.original = readBytes(config.file);
            config.headerEnd = config.original.size();
            config.requiredEnd = config.original.size();
            for (std::uint64_t b = 0; b < config.original.size(); b += 7)
                config.boundaries.push_back(b);
            m_subjects["stories260K.bin"] = std::move(s);
            m_subjects["model.safetensors"] = std::move(st);
            m_subjects["config.json"] = std::move(config);
        }
    }

    void truncation_data()
    {
        QTest::addColumn<QString>("key");
        for (const char* k :
             {"stories260K.gguf", "Q4_K_S.gguf", "stories260K.bin", "model.safetensors"})
            QTest::newRow(k) << k;
    }

    void truncation()
    {
        QFETCH(QString, key);
        if (!m_subjects.count(key)) QSKIP("test data not found (set QUANTLENS_DATA)");
        Subject& s = m_subjects[key];
        std::mt19937_64 rng(qHash(key));
        std::set<std::uint64_t, std::greater<>> points;
        for (auto b : s.boundaries)
            if (b < s.requiredEnd) points.insert(b);
        const std::size_t fieldPoints = points.size();
        std::uniform_int_distribution<std::uint64_t> anywhere(0, s.requiredEnd - 1);
        for (int i = 0; i < 200; ++i) points.insert(anywhere(rng));

        writeBytes(s.file, s.original);
        // Longest first, so each step only shortens the same file.
        for (std::uint64_t p : points) {
            std::filesystem::resize_file(s.file, p);
            auto r = openModel(s.open);
            if (r.ok())
                QFAIL(qPrintable(QString("truncated at byte %1 of %2, it still opened")
                                     .arg(p)
                                     .arg(s.original.size())));
            QVERIFY(!r.error().message.empty());
        }
        writeBytes(s.file, s.original);
        QVERIFY(openModel(s.open).ok());
        qInfo("%zu truncations (%zu at field boundaries) all refused", points.size(), fieldPoints);
    }

    void byteChanges_data()
    {
        QTest::addColumn<QString>("key");
        QTest::addColumn<int>("count");
        QTest::newRow("stories260K.gguf") << "stories260K.gguf" << 500;
        QTest::newRow("Q4_K_S.gguf") << "Q4_K_S.gguf" << 500;
        QTest::newRow("stories260K.bin") << "stories260K.bin" << 500;
        QTest::newRow("model.safetensors") << "model.safetensors" << 500;
        QTest::newRow("config.json") << "config.json" << 200;
    }

    void byteChanges()
    {
        QFETCH(QString, key);
        QFETCH(int, count);
        if (!m_subjects.count(key)) QSKIP("test data not found (set QUANTLENS_DATA)");
        Subject& s = m_subjects[key];
        std::mt19937_64 rng(qHash(key) + 1);
        std::uniform_int_distribution<std::uint64_t> where(0, s.headerEnd - 1);
        std::uniform_int_distribution<int> mask(1, 255), extra(0, 9);

        writeBytes(s.file, s.original);
        const int fd = ::open(s.file.c_str(), O_RDWR);
        QVERIFY(fd >= 0);
        int refused = 0, opened = 0;
        for (int i = 0; i < count; ++i) {
            // Mostly one byte; sometimes a few at once.
            const int changes = extra(rng) == 0 ? 4 : 1;
            std::vector<std::uint64_t> at;
            for (int c = 0; c < changes; ++c) {
                at.push_back(where(rng));
                const std::uint8_t v = s.original[at.back()] ^ static_cast<std::uint8_t>(mask(rng));
                QCOMPARE(::pwrite(fd, &v, 1, static_cast<off_t>(at.back())), ssize_t(1));
            }
            {
                auto r = openModel(s.open);
                if (r.ok()) {
                    ++opened;
                    checkInBounds(*r);
                    if (QTest::currentTestFailed())
                        qWarning("after changing byte %llu", (unsigned long long)at.front());
                } else {
                    ++refused;
                    QVERIFY(!r.error().message.empty());
                }
            }
            if (QTest::currentTestFailed()) break;
            for (auto a : at)
                QCOMPARE(::pwrite(fd, &s.original[a], 1, static_cast<off_t>(a)), ssize_t(1));
        }
        ::close(fd);
        writeBytes(s.file, s.original);
        qInfo("%d changes in bytes [0, %llu): %d refused, %d opened with every tensor in bounds",
              count, (unsigned long long)s.headerEnd, refused, opened);
    }

    void hostileFiles_data()
    {
        QTest::addColumn<QByteArray>("bytes");
        QTest::addColumn<QString>("ext");
        QTest::addColumn<QString>("needle");
        auto row = [](const char* name, const std::vector<std::uint8_t>& b, const char* ext,
                      const char* needle) {
            std::vector<std::uint8_t> padded = b;
            if (padded.size() < 1024) padded.resize(1024, 0);  // a 1 KB file claiming more
            QTest::newRow(name) << QByteArray(reinterpret_cast<const char*>(padded.data()),
                                              qsizetype(padded.size()))
                                << ext << needle;
        };
        auto gguf = [](std::uint64_t tensors, std::uint64_t kvs) {
            ByteWriter w;
            w.u32(0x46554747).u32(3).u64(tensors).u64(kvs);
            return w;
        };
        const std::uint64_t tera = 1ull << 40;

        row("gguf: 2^40 metadata entries", gguf(0, tera).b, ".gguf",
            "metadata count 1099511627776");
        row("gguf: 2^40 tensors", gguf(tera, 0).b, ".gguf", "tensor count 1099511627776");
        row("gguf: 2^64-1 tensors", gguf(~0ull, 1).b, ".gguf", "tensor count 18446744073709551615");
        {
            ByteWriter w = gguf(0, 1);
            w.u64(tera);  // a 1 TB key
            row("gguf: 1 TB key", w.b, ".gguf", "claims 1099511627776 bytes");
        }
        {
            ByteWriter w = gguf(0, 1);
            w.str("general.name").u32(kString).u64(tera);
            row("gguf: 1 TB string value", w.b, ".gguf", "claims 1099511627776 bytes");
        }
        {
            ByteWriter w = gguf(0, 1);
            w.str("a").u32(kArray).u32(kU8).u64(tera);
            row("gguf: 2^40 u8 array", w.b, ".gguf", "claims 1099511627776 u8 elements");
        }
        {
            ByteWriter w = gguf(0, 1);
            w.str("a").u32(kArray).u32(kString).u64(1ull << 62);
            row("gguf: 2^62 string array", w.b, ".gguf", "string elements");
        }
        {
            ByteWriter w = gguf(0, 1);
            w.str("a").u32(kArray);
            for (int i = 0; i < 60; ++i) w.u32(kArray).u64(1);
            row("gguf: arrays nested 60 deep", w.b, ".gguf", "nested more than");
        }
        {
            ByteWriter w = gguf(0, 1);
            w.str("a").u32(13).u32(0);
            row("gguf: value type 13", w.b, ".gguf", "unknown value type 13");
        }
        {
            ByteWriter w = gguf(0, 1);
            w.str("a").u32(kArray).u32(77).u64(1);
            row("gguf: array of type 77", w.b, ".gguf", "unknown element type 77");
        }
        {
            ByteWriter w = gguf(0, 1);
            w.str("a").u32(kBool).u8(7);
            row("gguf: bool 7", w.b, ".gguf", "must be 0 or 1");
        }
        {
            ByteWriter w = gguf(0, 2);
            w.str("a").u32(kU8).u8(1).str("a").u32(kU8).u8(2);
            row("gguf: duplicate key", w.b, ".gguf", "appears twice");
        }
        {
            ByteWriter w = gguf(0, 1);
            w.str("general.alignment").u32(kU32).u32(3);
            row("gguf: alignment 3", w.b, ".gguf", "general.alignment is 3");
        }
        auto oneTensor = [&](std::vector<std::uint64_t> ne, std::uint32_t type,
                             std::uint64_t offset) {
            ByteWriter w = gguf(1, 1);
            w.str("general.architecture").u32(kString).str("llama");
            w.str("blk.0.attn_q.weight").u32(static_cast<std::uint32_t>(ne.size()));
            for (auto d : ne) w.u64(d);
            w.u32(type).u64(offset);
            return w.b;
        };
        row("gguf: shape overflows int64", oneTensor({tera, tera, tera, tera}, 0, 0), ".gguf",
            "overflows 64 bits");
        row("gguf: dimension 2^63", oneTensor({1ull << 63}, 0, 0), ".gguf",
            "is 9223372036854775808");
        row("gguf: dimension 0", oneTensor({32, 0}, 0, 0), ".gguf", "ne[1] at byte");
        row("gguf: 1 TB tensor", oneTensor({tera / 4}, 0, 0), ".gguf", "run past the end");
        row("gguf: offset 2^63", oneTensor({8}, 0, 1ull << 63), ".gguf", "run past the end");
        row("gguf: unaligned offset", oneTensor({8}, 0, 4), ".gguf",
            "not a multiple of the alignment");
        row("gguf: Q4_0 row of 33", oneTensor({33}, 2, 0), ".gguf", "block size 32");
        row("gguf: IQ2_XXS", oneTensor({256}, 16, 0), ".gguf", "has type IQ2_XXS");
        {
            ByteWriter w = gguf(1, 0);
            w.str("t").u32(100);
            row("gguf: 100 dimensions", w.b, ".gguf", "n_dims at byte");
        }

        auto st = [](std::uint64_t headerLength, const std::string& json) {
            ByteWriter w;
            w.u64(headerLength);
            w.b.insert(w.b.end(), json.begin(), json.end());
            return w.b;
        };
        row("safetensors: header length 2^63", st(1ull << 63, "{}"), ".safetensors",
            "header length 9223372036854775808");
        row("safetensors: header past the end", st(4096, "{}"), ".safetensors",
            "runs past the end");
        const std::string pad(900, ' ');
        auto header = [&](const std::string& json) {
            return st(json.size() + pad.size(), json + pad);
        };
        row("safetensors: shape overflows",
            header(
                R"({"model.norm.weight":{"dtype":"F32","shape":[4611686018427387904,4611686018427387904],"data_offsets":[0,4]}})"),
            ".safetensors", "more elements than 64 bits can count");
        row("safetensors: negative dimension",
            header(R"({"model.norm.weight":{"dtype":"F32","shape":[-8],"data_offsets":[0,4]}})"),
            ".safetensors", "not a list of non-negative integers");
        row("safetensors: offsets past the data",
            header(
                R"({"model.norm.weight":{"dtype":"F32","shape":[8],"data_offsets":[0,1099511627776]}})"),
            ".safetensors", "lie outside");
        row("safetensors: reversed offsets",
            header(R"({"model.norm.weight":{"dtype":"F32","shape":[1],"data_offsets":[8,4]}})"),
            ".safetensors", "lie outside");
        row("safetensors: size mismatch",
            header(R"({"model.norm.weight":{"dtype":"F32","shape":[8],"data_offsets":[0,4]}})"),
            ".safetensors", "hold 4 bytes, but F32 [8] needs 32");
        row("safetensors: header not an object", header("[1, 2, 3]"), ".safetensors",
            "not an object");
        row("safetensors: broken JSON", header(R"({"model.norm.weight":{"dtype":)"), ".safetensors",
            "invalid JSON");
        row("safetensors: offsets not numbers",
            header(R"({"model.norm.weight":{"dtype":"F32","shape":[1],"data_offsets":["0","4"]}})"),
            ".safetensors", "data_offsets is not a pair");

        auto legacy = [](std::vector<std::int32_t> p) {
            ByteWriter w;
            for (auto v : p) w.i32(v);
            return w.b;
        };
        const std::int32_t big = 0x7fffffff;
        row("llama2c: huge sizes", legacy({1 << 30, big, big, 1 << 29, 1 << 29, big, big}), ".bin",
            "need more than 2^64 bytes, the file has 1024");
        row("llama2c: vocab INT_MIN", legacy({64, 172, 5, 8, 4, INT32_MIN, 512}), ".bin",
            "vocab_size 2147483648");
        row("llama2c: zero heads", legacy({64, 172, 5, 0, 4, 512, 512}), ".bin",
            "n_heads at byte 12 is 0");
        row("llama2c: kv heads above heads", legacy({64, 172, 5, 8, 16, 512, 512}), ".bin",
            "not a multiple of n_kv_heads");
        {
            ByteWriter w;
            w.u32(0x616b3432).i32(1).i32(64);
            QTest::newRow("llama2c: short v1 header")
                << QByteArray(reinterpret_cast<const char*>(w.b.data()), qsizetype(w.b.size()))
                << ".bin"
                << "truncated";
        }
    }

    void hostileFiles()
    {
        QFETCH(QByteArray, bytes);
        QFETCH(QString, ext);
        QFETCH(QString, needle);
        QTemporaryDir dir;
        const std::string path = dir.filePath("hostile" + ext).toStdString();
        writeBytes(path, std::vector<std::uint8_t>(bytes.begin(), bytes.end()));
        writeText(dir.filePath("config.json").toStdString(),
                  R"({"model_type": "llama", "hidden_size": 8, "intermediate_size": 16,
                      "num_hidden_layers": 1, "num_attention_heads": 2, "vocab_size": 4})");

        g_largestAllocation = 0;
        g_trackAllocations = true;
        auto r = openModel(path);
        g_trackAllocations = false;
        QVERIFY(!r.ok());
        QVERIFY2(QString::fromStdString(r.error().message).contains(needle),
                 r.error().message.c_str());
        QVERIFY2(
            g_largestAllocation < (1u << 20),
            qPrintable(QString("largest allocation %1 bytes").arg(g_largestAllocation.load())));
    }
};

QTEST_APPLESS_MAIN(TestCorrupt)
#include "test_corrupt.moc"
