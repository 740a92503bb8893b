// The SmoothQuant pane (issue #6) on stories260K calibrated on tiny.txt: the plotted per-channel
// activation and weight abs-max before and after smoothing equal core's (the calibration's
// abs-max, the weights' column abs-max, divided / multiplied by ql::siteScales at the slider's
// alpha), the tree selection picks the site, and the W8A8 evaluation job gives the figures core
// gives for the same windows. With QL_PANE_SCREENSHOTS=<dir> the pane is saved as smoothquant.png.
#include <QDir>
#include <QLabel>
#include <QSignalSpy>
#include <QStandardPaths>
#include <QtTest>

#include <qcustomplot.h>

#include <cmath>

#include "appsession.h"
#include "calib/calibrate.h"
#include "calibrationstate.h"
#include "jobrunner.h"
#include "quant/ggml_dequant.h"
#include "quant/smoothquant.h"
#include "quant/w8a8.h"
#include "smoothquantpane.h"
#include "test_data.h"

namespace {

const std::string kModel = "models/stories260K/stories260K.gguf";
const std::string kText = "text/calibration/tiny.txt";
const std::string kEval = "text/eval/tinystories-valid-1000.txt";
constexpr int kSlow = 300000;

std::vector<double> values(const QCPGraph* g)
{
    std::vector<double> v;
    for (auto it = g->data()->constBegin(); it != g->data()->constEnd(); ++it)
        v.push_back(it->value);
    return v;
}

}  // namespace

class TestSmoothQuantPane : public QObject {
    Q_OBJECT
private slots:
    void initTestCase();
    void plotsMatchCore_data();
    void plotsMatchCore();
    void treeSelectionPicksSite();
    void evaluationMatchesCore();
    void screenshot();

private:
    std::unique_ptr<AppSession> m_session;
    std::unique_ptr<CalibrationState> m_state;
    std::unique_ptr<SmoothQuantPane> m_pane;
    std::shared_ptr<const ql::CalibrationResult> m_calibration;
};

void TestSmoothQuantPane::initTestCase()
{
    QStandardPaths::setTestModeEnabled(true);
    QL_REQUIRE_DATA(kModel);
    QL_REQUIRE_DATA(kText);
    m_session = std::make_unique<AppSession>();
    m_state = std::make_unique<CalibrationState>();
    m_pane = std::make_unique<SmoothQuantPane>(m_session.get(), m_session->jobs(), m_state.get());
    m_pane->resize(1100, 720);
    QSignalSpy loaded(m_session.get(), &AppSession::modelLoaded);
    m_session->openModel(QString::fromStdString(ql::test::dataPath(kModel)));
    QTRY_COMPARE_WITH_TIMEOUT(loaded.count(), 1, kSlow);

    auto llama = ql::LlamaModel::create(*m_session->model());
    QVERIFY(llama.ok());
    auto tok = ql::Tokenizer::create(*m_session->model());
    QVERIFY(tok.ok());
    ql::CalibrationConfig config;
    config.textFiles = {ql::test::dataPath(kText)};
    config.samples = 32;
    config.seqLen = 256;
    config.hessian = ql::HessianPrecision::None;
    auto calib = ql::calibrate(*llama, **tok, config);
    QVERIFY(calib.ok());
    m_calibration = std::make_shared<const ql::CalibrationResult>(std::move(calib).value());
    QSignalSpy shown(m_pane.get(), &SmoothQuantPane::siteShown);
    m_state->setResult(m_calibration, QStringLiteral("test"));
    QTRY_VERIFY_WITH_TIMEOUT(m_pane->siteReady(), kSlow);
}

void TestSmoothQuantPane::plotsMatchCore_data()
{
    QTest::addColumn<QString>("probe");
    QTest::addColumn<double>("alpha");
    QTest::addColumn<bool>("narrows");  // the activation max/median ratio drops
    QTest::newRow("qkv 0.5") << "blk.0.attn_qkv" << 0.5 << true;
    // attn_output's channels are close already (max/median 1.3); tied scales need not narrow them.
    QTest::newRow("attn_output 0.7 (tied)") << "blk.1.attn_output" << 0.7 << false;
    QTest::newRow("ffn_down 0.3") << "blk.4.ffn_down" << 0.3 << true;
}

void TestSmoothQuantPane::plotsMatchCore()
{
    QFETCH(QString, probe);
    QFETCH(double, alpha);
    QFETCH(bool, narrows);
    m_pane->setSite(probe);
    m_pane->setAlpha(alpha);
    QTRY_VERIFY_WITH_TIMEOUT(m_pane->siteReady() && m_pane->currentSite() == probe, kSlow);
    QVERIFY(m_pane->ratioLabel()->text().contains("<b>" + probe + "</b>"));

    const ql::Model& model = *m_session->model();
    const ql::ProbeStats* p = m_calibration->find(probe.toStdString());
    QVERIFY(p);
    const ql::FoldSite* site = nullptr;
    const auto sites = ql::foldSites(model, p->block);
    for (const auto& s : sites)
        if (s.site == p->site) site = &s;
    QVERIFY(site);
    // Weight column abs-max, straight from the decoded tensors.
    std::vector<float> wmax(std::size_t(site->channels), 0.0f);
    for (const ql::TensorInfo* m : site->members) {
        auto w = ql::dequantizeTensor(model, *m);
        QVERIFY(w.ok());
        for (std::size_t i = 0; i < w->size(); ++i)
            wmax[i % wmax.size()] = std::max(wmax[i % wmax.size()], std::fabs((*w)[i]));
    }
    const std::vector<float>& act = p->stats.channelAbsMax();
    const std::vector<float> s = ql::siteScales(*site, act, wmax, alpha);
    const auto actBefore = values(m_pane->activationBefore());
    const auto actAfter = values(m_pane->activationAfter());
    const auto wBefore = values(m_pane->weightBefore());
    const auto wAfter = values(m_pane->weightAfter());
    QCOMPARE(actBefore.size(), act.size());
    QCOMPARE(wAfter.size(), wmax.size());
    for (std::size_t c = 0; c < act.size(); ++c) {
        QCOMPARE(float(actBefore[c]), std::max(act[c], 1e-12f));
        QVERIFY(std::fabs(actAfter[c] - act[c] / s[c]) <= 1e-6 * std::fabs(act[c] / s[c]));
        QCOMPARE(float(wBefore[c]), wmax[c]);
        QVERIFY(std::fabs(wAfter[c] - wmax[c] * s[c]) <= 1e-6 * std::fabs(wmax[c] * s[c]));
    }
    if (site->needsTiedHeads()) {  // query heads 0 and 1 share KV head 0
        for (std::int64_t d = 0; d < site->headDim; ++d)
            QCOMPARE(s[std::size_t(d)], s[std::size_t(site->headDim + d)]);
    }
    if (narrows) QVERIFY(m_pane->preview().actRatioAfter < m_pane->preview().actRatioBefore);
    QVERIFY(m_pane->ratioLabel()->text().contains(
        QString::number(m_pane->preview().actRatioBefore, 'g', 3)));
}

void TestSmoothQuantPane::treeSelectionPicksSite()
{
    m_session->selectTensor(QStringLiteral("blk.2.ffn_up.weight"));
    QTRY_COMPARE_WITH_TIMEOUT(m_pane->currentSite(), QStringLiteral("blk.2.ffn_gate_up"), kSlow);
    QTRY_VERIFY_WITH_TIMEOUT(m_pane->siteReady(), kSlow);
}

void TestSmoothQuantPane::evaluationMatchesCore()
{
    QL_REQUIRE_DATA(kEval);
    const QString text = QDir::cleanPath(QString::fromStdString(ql::test::dataPath(kEval)));
    m_pane->setAlpha(0.5);
    m_pane->setEvaluationText(text, 8, 256);
    QSignalSpy done(m_pane.get(), &SmoothQuantPane::evaluationFinished);
    m_pane->evaluate();
    QTRY_COMPARE_WITH_TIMEOUT(done.count(), 1, kSlow);
    QVERIFY2(done.at(0).at(0).toBool(), qPrintable(done.at(0).at(1).toString()));
    const auto& e = m_pane->evaluation();
    QVERIFY(e.has_value());

    // The same evaluation straight through core.
    const ql::Model& model = *m_session->model();
    auto content = ql::readTextFile(text.toStdString());
    QVERIFY(content.ok());
    auto tok = ql::Tokenizer::create(model);
    QVERIFY(tok.ok());
    const auto chunks = ql::makeLlamaCppChunks(**tok, *content, 256, 8);
    auto reference = ql::LlamaModel::create(model);
    QVERIFY(reference.ok());
    ql::SmoothQuantOptions options;
    options.alpha = 0.5;
    auto t = ql::computeSmoothQuant(model, *m_calibration, options);
    QVERIFY(t.ok());
    auto w8 = ql::createW8A8Model(model, &t->folds, options.w8a8, m_calibration.get());
    QVERIFY(w8.ok());
    ql::LlamaLogitsSource source(*w8), ref(*reference);
    auto r = ql::evaluate(source, chunks, &ref);
    QVERIFY(r.ok());
    qInfo("pane: float %.4f, W8A8 %.4f (KL %.5f), smoothed %.4f (KL %.5f)", *e->plain.referencePpl,
          e->plain.ppl, e->plain.kl->mean, e->smoothed.ppl, e->smoothed.kl->mean);
    QCOMPARE(e->smoothed.ppl, r->ppl);
    QCOMPARE(e->smoothed.kl->mean, r->kl->mean);
    QVERIFY(e->plain.kl->mean > 0 && e->smoothed.kl->mean > 0);
    QVERIFY(std::fabs(e->plain.ppl / *e->plain.referencePpl - 1) < 0.05);
    QVERIFY(m_pane->resultLabel()->text().contains(QString::number(r->ppl, 'f', 4)));
}

void TestSmoothQuantPane::screenshot()
{
    const QString dir = qEnvironmentVariable("QL_PANE_SCREENSHOTS");
    if (dir.isEmpty()) QSKIP("set QL_PANE_SCREENSHOTS to a folder to save the pane as PNG");
    m_pane->setSite(QStringLiteral("blk.3.ffn_down"));
    m_pane->setAlpha(0.5);
    QTRY_VERIFY_WITH_TIMEOUT(m_pane->siteReady() && m_pane->currentSite() == "blk.3.ffn_down",
                             kSlow);
    // Static per-tensor activations, where smoothing shows most on this model.
    m_pane->setActivationQuant(ql::ActivationQuant::PerTensorStatic);
    m_pane->setEvaluationText(QDir::cleanPath(QString::fromStdString(ql::test::dataPath(kEval))),
                              16, 512);
    QSignalSpy done(m_pane.get(), &SmoothQuantPane::evaluationFinished);
    m_pane->evaluate();
    QTRY_COMPARE_WITH_TIMEOUT(done.count(), 1, kSlow);
    m_pane->show();
    QTest::qWait(200);
    QVERIFY(m_pane->grab().save(dir + QStringLiteral("/smoothquant.png")));
}

QTEST_MAIN(TestSmoothQuantPane)
#include "test_smoothquant_pane.moc"
