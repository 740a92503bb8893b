// The "try the model" pane shows exactly core's greedy continuation, and the golden llama2.c
// greedy text of stories260K starts the same way.
#include <QtTest>

#include <fstream>
#include <sstream>

#include "appsession.h"
#include "generatepane.h"
#include "io/model_loader.h"
#include "model/llama.h"
#include "model/tokenizer.h"
#include "test_data.h"

class TestGenerate : public QObject {
    Q_OBJECT
private slots:
    void paneShowsCoreGreedyText()
    {
        const char* rel = "models/stories260K/stories260K.gguf";
        QL_REQUIRE_DATA(rel);
        AppSession session;
        QSignalSpy loaded(&session, &AppSession::modelLoaded);
        session.openModel(QString::fromStdString(ql::test::dataPath(rel)));
        QTRY_COMPARE_WITH_TIMEOUT(loaded.count(), 1, 30000);
        GeneratePane pane(&session);
        QSignalSpy done(&pane, &GeneratePane::generationFinished);
        pane.generate(QString(), 40);
        QTRY_COMPARE_WITH_TIMEOUT(done.count(), 1, 60000);

        auto model = ql::openModel(ql::test::dataPath(rel));
        QVERIFY(model.ok());
        auto tok = ql::Tokenizer::create(*model);
        auto llama = ql::LlamaModel::create(*model);
        QVERIFY(tok.ok() && llama.ok());
        std::vector<ql::TokenId> ids{(*tok)->bos()};
        auto out = llama->generateGreedy(ids, 40, true);
        QVERIFY(out.ok());
        ids.insert(ids.end(), out->begin(), out->end());
        const QString expected = QString::fromStdString((*tok)->decode(ids));
        QCOMPARE(pane.output(), expected);

        std::ifstream golden(ql::test::dataPath("models/stories260K/greedy-200.txt"));
        std::stringstream ss;
        ss << golden.rdbuf();
        const QString goldenText = QString::fromStdString(ss.str());
        QVERIFY2(goldenText.startsWith(expected.left(60)),
                 qPrintable(QString("pane: %1\ngolden: %2").arg(expected, goldenText.left(80))));
    }
};

QTEST_MAIN(TestGenerate)
#include "test_generate.moc"
