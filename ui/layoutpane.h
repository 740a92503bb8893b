// The "Layout" pane: hand-tuning a mixed-precision layout. A LayoutTableModel table (multi-select,
// bulk "set format"), a rules editor applied to the table, undo/redo, presets, automatic
// allocation for a target size, a size bar against that target, a Pareto plot of file size vs
// predicted KL (the current layout, the presets, the automatic one and the allocation front), and
// a heatmap of measured sensitivity by block x tensor role.
//
// Sensitivity comes from a session file (/sensitivity) or from a sweep run here on a text file;
// both run on the session's JobRunner, as does the allocation front (one allocation per size).
#pragma once

#include <QWidget>

#include <memory>
#include <vector>

#include "layout/sensitivity.h"
#include "layouttablemodel.h"

class AppSession;
class JobRunner;
class QComboBox;
class QCPColorMap;
class QCustomPlot;
class QDoubleSpinBox;
class QLabel;
class QPlainTextEdit;
class QPushButton;
class QTableView;

// A horizontal bar: the layout's file size against the target.
class SizeBar : public QWidget {
    Q_OBJECT
public:
    explicit SizeBar(QWidget* parent = nullptr);
    void setValues(std::uint64_t bytes, std::uint64_t target);
    QSize sizeHint() const override { return {300, 22}; }
    std::uint64_t bytes() const { return m_bytes; }
    std::uint64_t target() const { return m_target; }

protected:
    void paintEvent(QPaintEvent* event) override;

private:
    std::uint64_t m_bytes = 0, m_target = 0;
};

class LayoutPane : public QWidget {
    Q_OBJECT
public:
    LayoutPane(AppSession* session, JobRunner* jobs, QWidget* parent = nullptr);

    LayoutTableModel* tableModel() const { return m_model; }
    QTableView* tableView() const { return m_table; }
    SizeBar* sizeBar() const { return m_sizeBar; }
    QPlainTextEdit* rulesEditor() const { return m_rules; }

    void setTargetBytes(std::uint64_t bytes);
    std::uint64_t targetBytes() const;
    void setSensitivity(std::shared_ptr<const ql::SensitivityTable> table);
    // Allocation for the target size; false with a message when impossible.
    bool allocate(QString* error = nullptr);
    void applyPreset(const QString& preset);
    bool applyRulesText(QString* error = nullptr);
    // Sets the selected rows' format (bulk edit).
    bool setSelectedFormat(const QString& format);
    bool frontPending() const { return m_frontPending; }
    int frontPoints() const { return int(m_front.size()); }

public slots:
    void loadSession(const QString& path);
    void measureSensitivity(const QString& textPath);
    void measureErrors();
    // Quantizes the current layout and measures KL, PPL and same-top against the unquantized
    // model on 8 x 128 tokens of `textPath` (the GPU when present); shown beside the prediction.
    void evaluate(const QString& textPath);

signals:
    void sensitivityChanged();
    void frontReady();
    void evaluated(double measuredKl, double ppl, double sameTop);

private:
    void onModelLoaded();
    void onLayoutEdited();
    void updatePareto();
    void updateHeatmap();
    void computeFront();

    AppSession* m_session;
    JobRunner* m_jobs;
    LayoutTableModel* m_model;
    QTableView* m_table = nullptr;
    QComboBox* m_preset = nullptr;
    QComboBox* m_bulkFormat = nullptr;
    QComboBox* m_heatFormat = nullptr;
    QDoubleSpinBox* m_target = nullptr;
    QPlainTextEdit* m_rules = nullptr;
    QLabel* m_rulesError = nullptr;
    QLabel* m_summary = nullptr;
    QLabel* m_status = nullptr;
    SizeBar* m_sizeBar = nullptr;
    QCustomPlot* m_pareto = nullptr;
    QCustomPlot* m_heat = nullptr;
    QCPColorMap* m_heatMap = nullptr;
    struct Point {
        std::uint64_t bytes;
        double kl;
        QString label;
    };
    std::vector<Point> m_presetPoints;
    std::vector<Point> m_front;
    std::optional<Point> m_auto;
    bool m_frontPending = false;
};
