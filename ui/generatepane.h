// "Try the model": greedy generation from a prompt, on the job runner (tag "generate"), so a user
// can check that a model — or, later, a quantized layout — still talks sense.
#pragma once

#include <QWidget>

class AppSession;
class QLineEdit;
class QPlainTextEdit;
class QPushButton;
class QSpinBox;
class QLabel;

class GeneratePane : public QWidget {
    Q_OBJECT
public:
    explicit GeneratePane(AppSession* session, QWidget* parent = nullptr);

    // Starts a generation with explicit parameters (also what the Generate button does).
    void generate(const QString& prompt, int maxTokens);
    QString output() const;

signals:
    void generationFinished(const QString& text);

private:
    void onModelChanged();

    AppSession* m_session;
    QLineEdit* m_prompt;
    QSpinBox* m_maxTokens;
    QPushButton* m_run;
    QPushButton* m_cancel;
    QPlainTextEdit* m_output;
    QLabel* m_status;
};
