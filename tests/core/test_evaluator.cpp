// Evaluator arithmetic on logits sources with closed-form answers; the real-model figures
// (stories260K vs llama.cpp's perplexity tool) are checked in test_eval_model.
#include <QtTest>

#include <cmath>

#include "eval/evaluator.h"

using namespace ql;

namespace {

// Logits depend only on the vocabulary index: logit[v] = scale * v (a fixed softmax).
class FixedSource : public LogitsSource {
public:
    FixedSource(int vocab, double scale) : m_vocab(vocab), m_scale(scale) {}
    Status forward(std::span<const TokenId> tokens, const PositionFn& fn,
                   const ProgressFn&) override
    {
        std::vector<float> logits(m_vocab);
        for (int v = 0; v < m_vocab; ++v) logits[v] = static_cast<float>(m_scale * v);
        for (std::size_t p = 0; p < tokens.size(); ++p) fn(static_cast<std::int32_t>(p), logits);
        ++calls;
        return {};
    }
    std::int32_t vocabSize() const override { return m_vocab; }
    int calls = 0;

private:
    int m_vocab;
    double m_scale;
};

std::vector<double> softmax(int vocab, double scale)
{
    std::vector<double> p(vocab);
    double s = 0;
    for (int v = 0; v < vocab; ++v) s += p[v] = std::exp(scale * v);
    for (auto& x : p) x /= s;
    return p;
}

}  // namespace

class TestEvaluator : public QObject {
    Q_OBJECT
private slots:
    void uniformModelHasVocabPerplexity()
    {
        FixedSource uniform(37, 0.0);
        std::vector<TokenWindow> windows(3);
        for (auto& w : windows) w.tokens = {1, 5, 7, 9, 11, 2};
        auto r = evaluate(uniform, windows);
        QVERIFY(r.ok());
        QCOMPARE(r->tokens, std::int64_t(15));
        QVERIFY(std::fabs(r->ppl - 37.0) < 37.0 * 1e-6);  // log-probs are float32
    }

    void scoredPositionsFollowTheProtocol()
    {
        // llama.cpp protocol for ctx 8: logits of positions 4..6 scored (3 tokens per chunk).
        FixedSource src(10, 0.3);
        TokenWindow w;
        w.tokens = {1, 0, 0, 0, 0, 9, 8, 7};
        w.scoreFrom = 8 / 2 + 1;
        auto r = evaluate(src, {w});
        QVERIFY(r.ok());
        QCOMPARE(r->tokens, std::int64_t(3));
        auto p = softmax(10, 0.3);
        double nll = -(std::log(p[9]) + std::log(p[8]) + std::log(p[7])) / 3;
        QVERIFY(std::fabs(r->nll - nll) < 1e-6);
    }

    void klAgainstReference()
    {
        FixedSource ref(16, 0.2), same(16, 0.2), other(16, -0.1);
        std::vector<TokenWindow> windows(2);
        for (auto& w : windows) w.tokens = {1, 3, 15, 4, 0};
        auto self = evaluate(same, windows, &ref);
        QVERIFY(self.ok());
        QVERIFY(self->kl->mean < 1e-7);
        QCOMPARE(self->kl->sameTop, 1.0);
        QVERIFY(std::fabs(self->kl->meanDeltaP) < 1e-7);
        QVERIFY(std::fabs(*self->referencePpl - self->ppl) < 1e-9);

        auto r = evaluate(other, windows, &ref);
        QVERIFY(r.ok());
        auto p = softmax(16, 0.2), q = softmax(16, -0.1);
        double kl = 0;
        for (int v = 0; v < 16; ++v) kl += p[v] * std::log(p[v] / q[v]);
        QVERIFY2(std::fabs(r->kl->mean - kl) < 1e-5, qPrintable(QString::number(r->kl->mean)));
        QVERIFY(std::fabs(r->kl->median - kl) < 1e-5);
        QCOMPARE(r->kl->sameTop, 0.0);  // argmax moves from 15 to 0
        double dp = 0;
        for (TokenId t : {3, 15, 4, 0}) dp += q[t] - p[t];
        QVERIFY(std::fabs(r->kl->meanDeltaP - dp / 4) < 1e-6);
    }

    void cancellation()
    {
        FixedSource src(8, 0.1);
        std::vector<TokenWindow> windows(10);
        for (auto& w : windows) w.tokens = {1, 2, 3, 4};
        int calls = 0;
        auto r =
            evaluate(src, windows, nullptr, [&](double, std::string_view) { return ++calls < 3; });
        QVERIFY(!r.ok());
        QCOMPARE(r.error().code, ErrorCode::Cancelled);
        QVERIFY(src.calls < 10);
    }

    void emptyInputIsAnError()
    {
        FixedSource src(8, 0.1);
        TokenWindow w;
        w.tokens = {1};
        QVERIFY(!evaluate(src, {w}).ok());
    }
};

QTEST_APPLESS_MAIN(TestEvaluator)
#include "test_evaluator.moc"
