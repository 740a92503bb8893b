// The SmoothQuant pane (issue #6): for one probe site (q/k/v, attn_output, gate/up, ffn_down input
// of a block) it draws the per-channel activation abs-max (from the CalibrationState's
// calibration) and the per-channel weight abs-max (column max over the layers reading that input)
// before and after smoothing at the alpha of the slider, on log scales, with the max / median
// ratios of both. The numbers come from core (ql::siteScales, ql::previewSmoothing); the weights
// are decoded on the JobRunner ("smoothquant-site") and kept per site, so moving the slider only
// recomputes the O(channels) preview. "Evaluate W8A8" runs a job ("smoothquant-eval") measuring
// the W8A8 perplexity / KL of the whole model without and with smoothing at that alpha.
#pragma once

#include <QMap>
#include <QWidget>

#include <memory>
#include <optional>
#include <vector>

#include "calib/calibration.h"
#include "eval/evaluator.h"
#include "model/model.h"
#include "quant/smoothquant.h"

class AppSession;
class CalibrationState;
class JobRunner;
class QComboBox;
class QCPGraph;
class QCustomPlot;
class QLabel;
class QLineEdit;
class QProgressBar;
class QPushButton;
class QSlider;
class QSpinBox;
class QStackedWidget;

// What the W8A8 evaluation job returns.
struct SmoothQuantEvaluation {
    double alpha = 0;
    ql::ActivationQuant activations = ql::ActivationQuant::PerToken;
    ql::EvalResult plain;     // W8A8, no smoothing (referencePpl: float32)
    ql::EvalResult smoothed;  // W8A8 with SmoothQuant at alpha
};

class SmoothQuantPane : public QWidget {
    Q_OBJECT
public:
    SmoothQuantPane(AppSession* session, JobRunner* jobs, CalibrationState* state,
                    QWidget* parent = nullptr);
    ~SmoothQuantPane() override;

    QString currentSite() const;
    void setSite(const QString& probe);
    double alpha() const;
    void setAlpha(double alpha);  // 0..1, in steps of 0.01
    void setEvaluationText(const QString& path, int windows, int ctx);
    void setActivationQuant(ql::ActivationQuant mode);  // per token or static
    void evaluate();

    // What is drawn, for tests and screenshots: before / after graphs of both plots.
    QCPGraph* activationBefore() const { return m_actBefore; }
    QCPGraph* activationAfter() const { return m_actAfter; }
    QCPGraph* weightBefore() const { return m_wBefore; }
    QCPGraph* weightAfter() const { return m_wAfter; }
    const ql::SmoothingPreview& preview() const { return m_preview; }
    bool siteReady() const { return m_current != nullptr; }
    const std::optional<SmoothQuantEvaluation>& evaluation() const { return m_evaluation; }
    QLabel* ratioLabel() const { return m_ratios; }
    QLabel* resultLabel() const { return m_result; }

signals:
    void siteShown(const QString& probe);
    void evaluationFinished(bool ok, const QString& message);

private:
    struct SiteData {
        std::shared_ptr<const ql::Model> model;  // keeps site's tensor pointers valid
        ql::FoldSite site;
        std::vector<float> actAbsMax, weightAbsMax;
    };

    QWidget* buildPlots();
    QWidget* buildEvaluation();
    void onModelChanged();
    void onCalibrationChanged();
    void onTensorSelected(const QString& name);
    void onSiteChosen();
    void onAlphaChanged();
    void loadSite(const QString& probe);
    void drawSite();
    void showEvaluation();
    void updateEnabled();

    AppSession* m_session;
    JobRunner* m_jobs;
    CalibrationState* m_state;
    std::shared_ptr<const ql::CalibrationResult> m_calibration;
    QMap<QString, std::shared_ptr<const SiteData>> m_sites;  // decoded per probe
    std::shared_ptr<const SiteData> m_current;
    ql::SmoothingPreview m_preview;
    std::optional<SmoothQuantEvaluation> m_evaluation;
    bool m_evaluating = false;

    QStackedWidget* m_stack = nullptr;
    QLabel* m_placeholder = nullptr;
    QComboBox* m_siteCombo = nullptr;
    QSlider* m_alphaSlider = nullptr;
    QLabel* m_alphaLabel = nullptr;
    QLabel* m_ratios = nullptr;
    QCustomPlot* m_actPlot = nullptr;
    QCustomPlot* m_wPlot = nullptr;
    QCPGraph* m_actBefore = nullptr;
    QCPGraph* m_actAfter = nullptr;
    QCPGraph* m_wBefore = nullptr;
    QCPGraph* m_wAfter = nullptr;

    QComboBox* m_actMode = nullptr;
    QLineEdit* m_textEdit = nullptr;
    QSpinBox* m_windowsSpin = nullptr;
    QSpinBox* m_ctxSpin = nullptr;
    QPushButton* m_evalButton = nullptr;
    QProgressBar* m_progress = nullptr;
    QLabel* m_result = nullptr;
};
