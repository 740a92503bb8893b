#include "generatepane.h"

#include <QHBoxLayout>
#include <QLabel>
#include <QLineEdit>
#include <QPlainTextEdit>
#include <QPushButton>
#include <QSpinBox>
#include <QVBoxLayout>
#include <chrono>

#include "appsession.h"
#include "jobrunner.h"
#include "model/llama.h"
#include "model/tokenizer.h"

namespace {

struct Generation {
    std::string text;
    std::int64_t tokens = 0;
    double seconds = 0;
};

}  // namespace

GeneratePane::GeneratePane(AppSession* session, QWidget* parent)
    : QWidget(parent), m_session(session)
{
    m_prompt = new QLineEdit(this);
    m_prompt->setPlaceholderText(tr("Prompt (empty: start from BOS)"));
    m_prompt->setText(QStringLiteral("Once upon a time"));
    m_maxTokens = new QSpinBox(this);
    m_maxTokens->setRange(1, 2048);
    m_maxTokens->setValue(64);
    m_maxTokens->setPrefix(tr("max "));
    m_maxTokens->setSuffix(tr(" tokens"));
    m_run = new QPushButton(tr("Generate"), this);
    m_cancel = new QPushButton(tr("Cancel"), this);
    m_cancel->setEnabled(false);
    m_output = new QPlainTextEdit(this);
    m_output->setReadOnly(true);
    m_output->setPlaceholderText(tr("Greedy (temperature 0) continuation appears here."));
    m_status = new QLabel(this);

    auto* row = new QHBoxLayout;
    row->addWidget(m_prompt, 1);
    row->addWidget(m_maxTokens);
    row->addWidget(m_run);
    row->addWidget(m_cancel);
    auto* layout = new QVBoxLayout(this);
    layout->addLayout(row);
    layout->addWidget(m_output, 1);
    layout->addWidget(m_status);

    connect(m_run, &QPushButton::clicked, this,
            [this] { generate(m_prompt->text(), m_maxTokens->value()); });
    connect(m_prompt, &QLineEdit::returnPressed, m_run, &QPushButton::click);
    connect(m_cancel, &QPushButton::clicked, this, [this] {
        m_session->jobs()->cancel(QStringLiteral("generate"));
        m_cancel->setEnabled(false);
        m_run->setEnabled(m_session->model() != nullptr);
        m_status->setText(tr("Cancelled"));
    });
    connect(m_session, &AppSession::modelLoaded, this, &GeneratePane::onModelChanged);
    connect(m_session, &AppSession::modelClosed, this, &GeneratePane::onModelChanged);
    onModelChanged();
}

void GeneratePane::onModelChanged()
{
    m_run->setEnabled(m_session->model() != nullptr);
    m_output->clear();
    m_status->clear();
}

QString GeneratePane::output() const
{
    return m_output->toPlainText();
}

void GeneratePane::generate(const QString& prompt, int maxTokens)
{
    auto model = m_session->model();
    if (!model) return;
    const std::string text = prompt.toStdString();  // copied into the job: no widget reads there
    m_run->setEnabled(false);
    m_cancel->setEnabled(true);
    m_status->setText(tr("Generating…"));
    m_session->jobs()->run<Generation>(
        QStringLiteral("generate"), this,
        [model, text, maxTokens](const ql::ProgressFn& progress) -> ql::Result<Generation> {
            auto tok = ql::Tokenizer::create(*model);
            if (!tok) return tok.error();
            auto llama = ql::LlamaModel::create(*model, {}, progress);
            if (!llama) return llama.error();
            std::vector<ql::TokenId> ids = (*tok)->encode(text, true);
            if (ids.empty() && (*tok)->bos() >= 0) ids.push_back((*tok)->bos());
            const auto start = std::chrono::steady_clock::now();
            auto out = llama->generateGreedy(ids, maxTokens, true, progress);
            if (!out) return out.error();
            Generation g;
            g.tokens = static_cast<std::int64_t>(out->size());
            std::vector<ql::TokenId> all = ids;
            all.insert(all.end(), out->begin(), out->end());
            g.text = (*tok)->decode(all);
            g.seconds =
                std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
            return g;
        },
        [this](const ql::Result<Generation>& r) {
            m_run->setEnabled(m_session->model() != nullptr);
            m_cancel->setEnabled(false);
            if (!r.ok()) {
                m_status->setText(QString::fromStdString(r.error().message));
                return;
            }
            m_output->setPlainText(QString::fromStdString(r->text));
            m_status->setText(tr("%1 tokens in %2 s (%3 tokens/s), greedy")
                                  .arg(r->tokens)
                                  .arg(r->seconds, 0, 'f', 2)
                                  .arg(r->seconds > 0 ? r->tokens / r->seconds : 0.0, 0, 'f', 0));
            emit generationFinished(output());
        });
}
