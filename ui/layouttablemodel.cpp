#include "layouttablemodel.h"

#include <QColor>
#include <QUndoCommand>

#include <cmath>

#include "format.h"
#include "layout/allocate.h"

namespace {

// One undo step: the whole layout before and after.
class LayoutCommand : public QUndoCommand {
public:
    LayoutCommand(LayoutTableModel* model, ql::TensorLayout before, ql::TensorLayout after,
                  const QString& text)
        : QUndoCommand(text), m_model(model), m_before(std::move(before)), m_after(std::move(after))
    {
    }
    void undo() override { m_model->replaceLayout(m_before); }
    void redo() override { m_model->replaceLayout(m_after); }

private:
    LayoutTableModel* m_model;
    ql::TensorLayout m_before, m_after;
};

QString shapeText(const std::vector<std::int64_t>& shape)
{
    QStringList parts;
    for (auto d : shape) parts << QString::number(d);
    return parts.join(QStringLiteral(" x "));
}

}  // namespace

LayoutTableModel::LayoutTableModel(QObject* parent) : QAbstractTableModel(parent) {}

void LayoutTableModel::setModel(std::shared_ptr<const ql::Model> model)
{
    beginResetModel();
    m_model = std::move(model);
    m_rows.clear();
    m_undo.clear();
    m_layout = {};
    if (m_model) {
        for (const auto& t : m_model->tensors)
            if (t.shape.size() >= 2) m_rows.push_back(&t);
        if (auto l = ql::presetLayout(*m_model, "q4_k_m")) m_layout = *l;
    }
    m_measured.assign(m_rows.size(), std::nan(""));
    recompute();
    endResetModel();
    emit layoutEdited();
}

void LayoutTableModel::setSensitivity(std::shared_ptr<const ql::SensitivityTable> table)
{
    m_sensitivity = std::move(table);
    recompute();
    if (!m_rows.empty()) emit dataChanged(index(0, 0), index(rowCount() - 1, ColumnCount - 1));
    emit layoutEdited();
}

void LayoutTableModel::setMeasuredErrors(const std::vector<std::pair<std::string, double>>& errors)
{
    for (const auto& [name, e] : errors) {
        const int r = rowOf(QString::fromStdString(name));
        if (r >= 0) m_measured[std::size_t(r)] = e;
    }
    if (!m_rows.empty())
        emit dataChanged(index(0, MeasuredError), index(rowCount() - 1, MeasuredError));
}

QString LayoutTableModel::layoutText() const
{
    return QString::fromStdString(m_layout.toText());
}

void LayoutTableModel::recompute()
{
    m_plan.reset();
    m_size = {};
    m_predicted = 0;
    if (!m_model) return;
    auto layout = m_layout.toLayout();
    if (!layout) return;
    auto plan = layout->resolve(*m_model);
    if (!plan) return;
    if (auto size = ql::estimateSize(*m_model, *plan, layout->toString())) m_size = *size;
    if (m_sensitivity) m_predicted = ql::predictedKl(*m_sensitivity, *plan);
    m_plan = std::move(plan).value();
}

void LayoutTableModel::replaceLayout(const ql::TensorLayout& layout)
{
    m_layout = layout;
    std::fill(m_measured.begin(), m_measured.end(), std::nan(""));
    recompute();
    if (!m_rows.empty()) emit dataChanged(index(0, 0), index(rowCount() - 1, ColumnCount - 1));
    emit layoutEdited();
}

bool LayoutTableModel::applyLayout(const ql::TensorLayout& layout, const QString& what)
{
    if (layout == m_layout) return false;
    m_undo.push(new LayoutCommand(this, m_layout, layout, what));
    return true;
}

bool LayoutTableModel::setFormat(const QList<int>& rows, const QString& format, QString* error)
{
    if (!m_model) return false;
    auto f = ql::parseQuantFormat(format.toStdString());
    if (!f) {
        if (error) *error = QString::fromStdString(f.error().message);
        return false;
    }
    ql::TensorLayout next = m_layout;
    for (int r : rows) {
        if (r < 0 || r >= rowCount()) continue;
        ql::Assignment a;
        if (const ql::Assignment* cur = next.find(m_rows[std::size_t(r)]->name)) a = *cur;
        a.tensor = m_rows[std::size_t(r)]->name;
        a.format = *f;
        if (auto st = next.set(*m_model, a); !st) {
            if (error) *error = QString::fromStdString(st.error().message);
            return false;
        }
    }
    return applyLayout(next, rows.size() == 1
                                 ? tr("Set %1 to %2").arg(tensorAt(rows.front()), format)
                                 : tr("Set %1 tensors to %2").arg(rows.size()).arg(format));
}

bool LayoutTableModel::applyRules(const QString& rules, QString* error)
{
    if (!m_model) return false;
    auto next = ql::TensorLayout::fromText(*m_model, rules.toStdString());
    if (!next) {
        if (error) *error = QString::fromStdString(next.error().message);
        return false;
    }
    return applyLayout(*next, tr("Apply rules"));
}

QString LayoutTableModel::tensorAt(int row) const
{
    return row >= 0 && row < rowCount() ? QString::fromStdString(m_rows[std::size_t(row)]->name)
                                        : QString();
}

int LayoutTableModel::rowOf(const QString& tensor) const
{
    const std::string name = tensor.toStdString();
    for (std::size_t i = 0; i < m_rows.size(); ++i)
        if (m_rows[i]->name == name) return int(i);
    return -1;
}

int LayoutTableModel::rowCount(const QModelIndex& parent) const
{
    return parent.isValid() ? 0 : int(m_rows.size());
}

int LayoutTableModel::columnCount(const QModelIndex& parent) const
{
    return parent.isValid() ? 0 : ColumnCount;
}

QVariant LayoutTableModel::data(const QModelIndex& index, int role) const
{
    if (!index.isValid() || index.row() >= rowCount()) return {};
    const ql::TensorInfo& t = *m_rows[std::size_t(index.row())];
    const ql::Assignment* a = m_layout.find(t.name);
    const ql::TensorSize* size = m_size.find(t.name);
    const ql::TensorPlan* plan = m_plan ? m_plan->find(t.name) : nullptr;
    double predicted = std::nan("");
    if (m_sensitivity && plan) {
        if (const ql::SensitivityTensor* s = m_sensitivity->find(t.name)) {
            const std::string stored = ql::formatToString(plan->format);
            predicted = stored == "f32" ? 0.0 : std::nan("");
            for (const auto& c : s->cells)
                if (c.stored == stored) predicted = c.deltaKl;
        }
    }
    if (role == Qt::DisplayRole || role == Qt::EditRole) {
        switch (index.column()) {
            case Tensor: return QString::fromStdString(t.name);
            case Shape: return shapeText(t.shape);
            case Format: {
                if (role == Qt::EditRole)
                    return a ? QString::fromStdString(ql::formatToString(a->format)) : QString();
                if (!a)
                    return tr("(kept %1)")
                        .arg(QString::fromLatin1(ql::tensorTypeName(t.type).data(),
                                                 int(ql::tensorTypeName(t.type).size())));
                QString s = QString::fromStdString(a->spec());
                if (plan && plan->fellBack())
                    s += QStringLiteral(" → ") +
                         QString::fromStdString(ql::formatToString(plan->format));
                return s;
            }
            case Bpw: return size ? QString::number(size->bpw, 'f', 2) : QString();
            case Bytes: return size ? QString::number(size->bytes) : QString();
            case PredictedKl:
                return std::isfinite(predicted) ? QString::number(predicted, 'g', 3) : QString();
            case MeasuredError: {
                const double e = m_measured[std::size_t(index.row())];
                return std::isfinite(e) ? QString::number(e, 'g', 3) : QString();
            }
        }
    }
    if (role == Qt::UserRole) {  // sort keys
        switch (index.column()) {
            case Bpw: return size ? size->bpw : 0.0;
            case Bytes: return size ? qulonglong(size->bytes) : qulonglong(0);
            case PredictedKl: return predicted;
            case MeasuredError: return m_measured[std::size_t(index.row())];
            default: return data(index, Qt::DisplayRole);
        }
    }
    if (role == Qt::TextAlignmentRole && index.column() >= Bpw)
        return int(Qt::AlignRight | Qt::AlignVCenter);
    if (role == Qt::ForegroundRole && index.column() == Format && plan && plan->fellBack())
        return QColor(0xb0, 0x60, 0x00);
    if (role == Qt::ToolTipRole && index.column() == Format && plan && plan->fellBack())
        return QString::fromStdString(plan->fallbackReason);
    return {};
}

QVariant LayoutTableModel::headerData(int section, Qt::Orientation orientation, int role) const
{
    if (orientation != Qt::Horizontal || role != Qt::DisplayRole) return {};
    switch (section) {
        case Tensor: return tr("Tensor");
        case Shape: return tr("Shape");
        case Format: return tr("Format");
        case Bpw: return tr("bpw");
        case Bytes: return tr("Bytes");
        case PredictedKl: return tr("Predicted ΔKL");
        case MeasuredError: return tr("Measured rel. RMSE");
    }
    return {};
}

Qt::ItemFlags LayoutTableModel::flags(const QModelIndex& index) const
{
    Qt::ItemFlags f = QAbstractTableModel::flags(index);
    if (index.column() == Format) f |= Qt::ItemIsEditable;
    return f;
}

bool LayoutTableModel::setData(const QModelIndex& index, const QVariant& value, int role)
{
    if (role != Qt::EditRole || index.column() != Format) return false;
    return setFormat({index.row()}, value.toString());
}
