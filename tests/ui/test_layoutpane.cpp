// The Layout pane (issue #7): the table model's bulk edit, cell edit, rules and undo/redo; the size
// bar against core's size accounting; allocation from a sensitivity sweep of stories260K, the
// Pareto front and the heatmap. QL_PANE_SCREENSHOTS=DIR saves the pane as DIR/layout.png.
#include <QPlainTextEdit>
#include <QTableView>
#include <QtTest>

#include "appsession.h"
#include "calib/dataset.h"
#include "layout/allocate.h"
#include "layoutpane.h"
#include "model/tokenizer.h"
#include "test_data.h"

namespace {
const char* kStories = "models/stories260K/stories260K.gguf";
const char* kText = "text/eval/tinystories-valid-1000.txt";
}  // namespace

class TestLayoutPane : public QObject {
    Q_OBJECT
private slots:
    void initTestCase()
    {
        QL_REQUIRE_DATA(kStories);
        m_session = new AppSession(this);
        QSignalSpy loaded(m_session, &AppSession::modelLoaded);
        m_session->openModel(QString::fromStdString(ql::test::dataPath(kStories)));
        QTRY_COMPARE_WITH_TIMEOUT(loaded.count(), 1, 30000);
        m_pane = new LayoutPane(m_session, m_session->jobs());
    }
    void cleanupTestCase() { delete m_pane; }

    void tableBulkEditUndoRedo()
    {
        LayoutTableModel* model = m_pane->tableModel();
        QCOMPARE(model->rowCount(), 37);  // 35 block matrices + token_embd + output
        // Starts on the Q4_K_M preset.
        const int v2 = model->rowOf(QStringLiteral("blk.2.attn_v.weight"));
        QCOMPARE(model->index(v2, LayoutTableModel::Format).data().toString(),
                 QStringLiteral("q6_k → q8_0"));
        const QString before = model->layoutText();
        const std::uint64_t bytesBefore = model->size().fileBytes;

        // Bulk edit: three rows selected in the view, one format.
        QTableView* view = m_pane->tableView();
        view->clearSelection();
        QList<int> rows;
        for (const char* n : {"blk.0.attn_q.weight", "blk.1.attn_q.weight", "blk.3.ffn_up.weight"})
            rows << model->rowOf(QString::fromLatin1(n));
        for (int r : rows)
            view->selectionModel()->select(model->index(r, 0),
                                           QItemSelectionModel::Select | QItemSelectionModel::Rows);
        QVERIFY(m_pane->setSelectedFormat(QStringLiteral("q8_0")));
        for (int r : rows)
            QCOMPARE(model->index(r, LayoutTableModel::Format).data().toString(),
                     QStringLiteral("q8_0"));
        QCOMPARE(model->undoStack()->count(), 1);
        QVERIFY(model->size().fileBytes > bytesBefore);
        // The size bar shows core's figure.
        QCOMPARE(m_pane->sizeBar()->bytes(), model->size().fileBytes);

        // A cell edit through the model, then undo twice and redo once.
        QVERIFY(model->setData(model->index(v2, LayoutTableModel::Format), "q4_0", Qt::EditRole));
        QCOMPARE(model->index(v2, LayoutTableModel::Format).data().toString(),
                 QStringLiteral("q4_0"));
        model->undoStack()->undo();
        QCOMPARE(model->index(v2, LayoutTableModel::Format).data().toString(),
                 QStringLiteral("q6_k → q8_0"));
        model->undoStack()->undo();
        QCOMPARE(model->layoutText(), before);
        QCOMPARE(model->size().fileBytes, bytesBefore);
        model->undoStack()->redo();
        QCOMPARE(model->index(rows[0], LayoutTableModel::Format).data().toString(),
                 QStringLiteral("q8_0"));
        // A bad format changes nothing.
        QString error;
        QVERIFY(!model->setFormat(rows, QStringLiteral("q9_z"), &error));
        QVERIFY(!error.isEmpty());
    }

    void rulesEditor()
    {
        LayoutTableModel* model = m_pane->tableModel();
        m_pane->rulesEditor()->setPlainText(QStringLiteral("*=q4_0\nblk.0.*=q8_0"));
        QVERIFY(m_pane->applyRulesText());
        QCOMPARE(model->index(model->rowOf("blk.0.ffn_up.weight"), LayoutTableModel::Format)
                     .data()
                     .toString(),
                 QStringLiteral("q8_0"));
        QCOMPARE(model->index(model->rowOf("blk.1.ffn_up.weight"), LayoutTableModel::Format)
                     .data()
                     .toString(),
                 QStringLiteral("q4_0"));
        // ffn_down (172 columns) shows its fallback.
        QVERIFY(model->index(model->rowOf("blk.1.ffn_down.weight"), LayoutTableModel::Format)
                    .data()
                    .toString()
                    .contains(QStringLiteral("→ f32")));
        auto expected = ql::estimateSize(*m_session->model(),
                                         *ql::Layout::parse(model->layoutText().toStdString()));
        QCOMPARE(model->size().fileBytes, expected->fileBytes);
        QString error;
        m_pane->rulesEditor()->setPlainText(QStringLiteral("*=q4_0; blk.[.*=q8_0"));
        QVERIFY(!m_pane->applyRulesText(&error));
        QVERIFY(!error.isEmpty());
        model->undoStack()->undo();
    }

    void allocationAndPlots()
    {
        QL_REQUIRE_DATA(kText);
        auto m = m_session->model();
        auto tok = ql::Tokenizer::create(*m);
        auto text = ql::readTextFile(ql::test::dataPath(kText));
        auto windows = ql::makeLlamaCppChunks(**tok, *text, 64, 2);
        ql::SensitivityOptions o;
        for (const char* f : {"q4_0", "q5_0", "q8_0", "f16"})
            o.formats.push_back(*ql::parseQuantFormat(f));
        auto cpu = ql::createCpuBackend();
        auto table = ql::measureSensitivity(*m, *cpu, windows, nullptr, o);
        QVERIFY(table.ok());
        QSignalSpy front(m_pane, &LayoutPane::frontReady);
        m_pane->setSensitivity(std::make_shared<const ql::SensitivityTable>(*table));
        QTRY_COMPARE_WITH_TIMEOUT(front.count(), 1, 60000);
        QVERIFY(m_pane->frontPoints() >= 10);
        LayoutTableModel* model = m_pane->tableModel();
        QVERIFY(!model->index(0, LayoutTableModel::PredictedKl).data().toString().isEmpty());
        m_pane->setTargetBytes(330000);
        QString error;
        QVERIFY2(m_pane->allocate(&error), qPrintable(error));
        QVERIFY(model->size().fileBytes <= 330000);
        QCOMPARE(m_pane->sizeBar()->target(), std::uint64_t(330000));
        // Undo brings back the layout before the allocation.
        const QString allocated = model->layoutText();
        model->undoStack()->undo();
        QVERIFY(model->layoutText() != allocated);
        model->undoStack()->redo();
        QCOMPARE(model->layoutText(), allocated);

        // Evaluating the allocated layout: measured KL beside the predicted one.
        QSignalSpy evaluated(m_pane, &LayoutPane::evaluated);
        m_pane->evaluate(QString::fromStdString(ql::test::dataPath(kText)));
        QTRY_COMPARE_WITH_TIMEOUT(evaluated.count(), 1, 120000);
        const double kl = evaluated.at(0).at(0).toDouble();
        const double sameTop = evaluated.at(0).at(2).toDouble();
        QVERIFY(kl > 0 && kl < 0.2);
        QVERIFY(sameTop > 0.8 && sameTop <= 1.0);

        const QString dir = qEnvironmentVariable("QL_PANE_SCREENSHOTS");
        if (!dir.isEmpty()) {
            m_pane->measureErrors();
            QTRY_VERIFY_WITH_TIMEOUT(
                !model->index(0, LayoutTableModel::MeasuredError).data().toString().isEmpty(),
                60000);
            m_pane->tableView()->selectRow(model->rowOf("blk.2.attn_v.weight"));
            m_pane->resize(1400, 860);
            m_pane->show();
            m_pane->tableView()->resizeColumnsToContents();
            QTest::qWait(400);
            QVERIFY(m_pane->grab().save(dir + QStringLiteral("/layout.png")));
        }
    }

private:
    AppSession* m_session = nullptr;
    LayoutPane* m_pane = nullptr;
};

QTEST_MAIN(TestLayoutPane)
#include "test_layoutpane.moc"
