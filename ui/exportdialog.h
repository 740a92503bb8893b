// The Export dialog (File ▸ Export…): writes the open model, quantized with a layout, as GGUF,
// GPTQ safetensors or fake-quant safetensors (core/export, the same calls as `quantlens-cli
// export`). Before anything is written it shows ql::checkExportCompatibility as a table: every
// tensor the target cannot store as planned, what it cannot represent and the fallback taken,
// recomputed (metadata only, no weights touched) whenever the target or the layout changes.
//
// Export copies the model, the calibration, the layout and the options into one "export" job on
// the JobRunner; the dialog only shows its progress and can cancel it. The core writers stage
// every file under a temporary name and rename at the end, so a cancel or a failure leaves the
// output path as it was.
#pragma once

#include <QAbstractTableModel>
#include <QDialog>

#include <memory>
#include <optional>
#include <vector>

#include "export/hf_export.h"

namespace ql {
struct CalibrationResult;
}  // namespace ql

class JobRunner;
class QComboBox;
class QDialogButtonBox;
class QLabel;
class QLineEdit;
class QProgressBar;
class QPushButton;
class QTableView;
class QTimer;

// The compatibility check's issues, one row per tensor.
class ExportIssueModel : public QAbstractTableModel {
    Q_OBJECT
public:
    enum Column { Tensor, Wanted, Fallback, Problem, ColumnCount };
    using QAbstractTableModel::QAbstractTableModel;

    void setIssues(std::vector<ql::ExportIssue> issues);
    const std::vector<ql::ExportIssue>& issues() const { return m_issues; }

    int rowCount(const QModelIndex& parent = {}) const override;
    int columnCount(const QModelIndex& parent = {}) const override;
    QVariant data(const QModelIndex& index, int role) const override;
    QVariant headerData(int section, Qt::Orientation orientation, int role) const override;

private:
    std::vector<ql::ExportIssue> m_issues;
};

class ExportDialog : public QDialog {
    Q_OBJECT
public:
    // The targets in the order of the target box.
    enum class Target { Gguf, Gptq, FakeQuantF16, FakeQuantBF16 };

    ExportDialog(std::shared_ptr<const ql::Model> model,
                 std::shared_ptr<const ql::CalibrationResult> calibration, JobRunner* jobs,
                 QWidget* parent = nullptr);
    ~ExportDialog() override;

    static QString defaultLayout() { return QStringLiteral("*=q4_k"); }

    Target target() const;
    void setTarget(Target target);
    QString layoutText() const;
    void setLayoutText(const QString& text);
    QString outputPath() const;
    void setOutputPath(const QString& path);

    // The last compatibility check: empty when it failed (checkMessage() says why).
    const std::optional<ql::ExportCompatibility>& compatibility() const { return m_compat; }
    QString checkMessage() const;
    const ExportIssueModel* issueModel() const { return m_issues; }
    bool isExporting() const { return m_exporting; }
    QString statusText() const;

public slots:
    void refreshCompatibility();  // runs the check now (it also runs shortly after each edit)
    void startExport();
    void cancelExport();

signals:
    void exportFinished(bool ok, const QString& message);

protected:
    void reject() override;  // Esc / Close while exporting cancels first

private:
    void browse();
    void onTargetChanged();
    void onJobProgress(const QString& tag, double fraction, const QString& text);
    void setExporting(bool exporting);
    void updateEnabled();
    QString suggestedPath(Target target) const;

    std::shared_ptr<const ql::Model> m_model;
    std::shared_ptr<const ql::CalibrationResult> m_calibration;
    JobRunner* m_jobs;
    std::optional<ql::ExportCompatibility> m_compat;
    bool m_exporting = false;
    bool m_pathEdited = false;  // the user chose a path: target changes keep it

    QComboBox* m_target = nullptr;
    QComboBox* m_fallback = nullptr;
    QLineEdit* m_layout = nullptr;
    QLineEdit* m_path = nullptr;
    QPushButton* m_browse = nullptr;
    QLabel* m_summary = nullptr;
    QLabel* m_notes = nullptr;
    ExportIssueModel* m_issues = nullptr;
    QTableView* m_table = nullptr;
    QProgressBar* m_progress = nullptr;
    QLabel* m_status = nullptr;
    QPushButton* m_export = nullptr;
    QPushButton* m_cancel = nullptr;
    QDialogButtonBox* m_buttons = nullptr;
    QTimer* m_recheck = nullptr;
};
