// Perplexity of stories260K with llama.cpp's protocol, against llama.cpp's own perplexity tool
// (PPL 10.2379 on text/eval/tinystories-valid-1000.txt at ctx 512, from the reference run).
#include <QtTest>

#include "calib/calibrate.h"
#include "io/model_loader.h"
#include "test_data.h"

using namespace ql;

class TestEvalModel : public QObject {
    Q_OBJECT
private slots:
    void llamaCppProtocolMatchesLlamaCpp()
    {
        QL_REQUIRE_DATA("models/stories260K/stories260K.gguf");
        QL_REQUIRE_DATA("text/eval/tinystories-valid-1000.txt");
        auto model = openModel(ql::test::dataPath("models/stories260K/stories260K.gguf"));
        QVERIFY(model.ok());
        auto llama = LlamaModel::create(*model);
        QVERIFY(llama.ok());
        auto tok = Tokenizer::create(*model);
        QVERIFY(tok.ok());
        auto text = readTextFile(ql::test::dataPath("text/eval/tinystories-valid-1000.txt"));
        QVERIFY(text.ok());
        auto chunks = makeLlamaCppChunks(**tok, *text, 512);
        QVERIFY(chunks.size() > 100);
        LlamaLogitsSource src(*llama);
        auto r = evaluate(src, chunks);
        QVERIFY2(r.ok(), r.ok() ? "" : r.error().message.c_str());
        qInfo("PPL %.4f +/- %.4f over %lld tokens in %lld chunks, %.0f tokens/s", r->ppl,
              r->pplStdError, (long long)r->tokens, (long long)r->windows, r->tokensPerSecond);
        QCOMPARE(r->tokens, std::int64_t(chunks.size() * 255));
        QVERIFY2(std::fabs(r->ppl - 10.2379) <= 10.2379 * 1e-3,
                 qPrintable(QString::number(r->ppl, 'f', 4)));
        // The model against itself: zero KL, every top choice kept.
        std::vector<TokenWindow> few(chunks.begin(), chunks.begin() + 4);
        auto self = evaluate(src, few, &src);
        QVERIFY(self.ok());
        QVERIFY(self->kl->mean < 1e-6);
        QCOMPARE(self->kl->sameTop, 1.0);
    }
};

QTEST_APPLESS_MAIN(TestEvalModel)
#include "test_eval_model.moc"
