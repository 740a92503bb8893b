// LayoutTableModel: the per-tensor layout as a table (tensor, shape, format, bpw, bytes, predicted
// ΔKL, measured error), over a ql::TensorLayout. Every edit (one cell, a bulk "set format for
// these rows", new rules, a preset, an allocation) is one command on the model's QUndoStack, so
// undo/redo restore whole layouts. Sizes come from core's size accounting (ql::estimateSize: the
// exported GGUF's bytes), predicted ΔKL from a sensitivity table when one is set.
#pragma once

#include <QAbstractTableModel>
#include <QStringList>
#include <QUndoStack>

#include <memory>
#include <optional>
#include <vector>

#include "layout/sensitivity.h"
#include "layout/size.h"
#include "layout/tensor_layout.h"
#include "model/model.h"

class LayoutTableModel : public QAbstractTableModel {
    Q_OBJECT
public:
    enum Column { Tensor, Shape, Format, Bpw, Bytes, PredictedKl, MeasuredError, ColumnCount };

    explicit LayoutTableModel(QObject* parent = nullptr);

    void setModel(std::shared_ptr<const ql::Model> model);
    std::shared_ptr<const ql::Model> model() const { return m_model; }
    void setSensitivity(std::shared_ptr<const ql::SensitivityTable> table);
    std::shared_ptr<const ql::SensitivityTable> sensitivity() const { return m_sensitivity; }
    // Relative RMSE of each tensor's weights under the current layout (from a measuring job).
    void setMeasuredErrors(const std::vector<std::pair<std::string, double>>& errors);

    const ql::TensorLayout& layout() const { return m_layout; }
    const ql::SizeReport& size() const { return m_size; }
    double predictedKl() const { return m_predicted; }
    QString layoutText() const;
    QUndoStack* undoStack() { return &m_undo; }

    // Edits, each one undo step; false (nothing changed) with `error` set on bad input.
    bool setFormat(const QList<int>& rows, const QString& format, QString* error = nullptr);
    bool applyRules(const QString& rules, QString* error = nullptr);
    bool applyLayout(const ql::TensorLayout& layout, const QString& what);
    // Without an undo step (used by the undo commands themselves).
    void replaceLayout(const ql::TensorLayout& layout);

    QString tensorAt(int row) const;
    int rowOf(const QString& tensor) const;

    int rowCount(const QModelIndex& parent = {}) const override;
    int columnCount(const QModelIndex& parent = {}) const override;
    QVariant data(const QModelIndex& index, int role = Qt::DisplayRole) const override;
    QVariant headerData(int section, Qt::Orientation orientation, int role) const override;
    Qt::ItemFlags flags(const QModelIndex& index) const override;
    bool setData(const QModelIndex& index, const QVariant& value, int role) override;

signals:
    void layoutEdited();  // after every change of the layout (edit, undo, redo)

private:
    void recompute();
    std::shared_ptr<const ql::Model> m_model;
    std::shared_ptr<const ql::SensitivityTable> m_sensitivity;
    std::vector<const ql::TensorInfo*> m_rows;  // the model's matrices
    ql::TensorLayout m_layout;
    ql::SizeReport m_size;
    std::optional<ql::LayoutPlan> m_plan;
    double m_predicted = 0;
    std::vector<double> m_measured;  // per row, NaN when unknown
    QUndoStack m_undo;
};
