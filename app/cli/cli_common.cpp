#include "cli_common.h"

#include "calib/calibrate.h"

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

namespace qlcli {

int fail(std::string_view message)
{
    std::string line(message);
    for (char& c : line)
        if (c == '\n' || c == '\r') c = ' ';
    std::fprintf(stderr, "quantlens-cli: error: %s\n", line.c_str());
    return kExitError;
}

int usageError(std::string_view message, std::string_view command)
{
    fail(message);
    std::fprintf(stderr, "Try 'quantlens-cli help%s%.*s'.\n", command.empty() ? "" : " ",
                 int(command.size()), command.data());
    return kExitError;
}

int runArgvCommand(int (*run)(int, char**), Args argsWithCommandWord)
{
    std::vector<std::string> copy(argsWithCommandWord.begin(), argsWithCommandWord.end());
    std::vector<char*> argv;
    for (std::string& a : copy) argv.push_back(a.data());
    argv.push_back(nullptr);
    return run(int(copy.size()), argv.data());
}

// --- ArgParser ----------------------------------------------------------------------------

bool ArgParser::next()
{
    if (failed() || m_index >= m_args.size()) return false;
    m_current = m_args[m_index++];
    m_inlineValue.reset();
    if (m_current.size() > 2 && m_current.compare(0, 2, "--") == 0) {
        if (auto eq = m_current.find('='); eq != std::string::npos) {
            m_inlineValue = m_current.substr(eq + 1);
            m_current.resize(eq);
        }
    }
    return true;
}

bool ArgParser::is(std::string_view option)
{
    return m_current == option;
}

std::optional<std::string> ArgParser::value()
{
    if (m_inlineValue) return *m_inlineValue;
    if (m_index < m_args.size()) return m_args[m_index++];
    error(m_current + " needs a value");
    return std::nullopt;
}

std::optional<double> ArgParser::number(double min, double max)
{
    const std::string option = m_current;
    auto v = value();
    if (!v) return std::nullopt;
    errno = 0;
    char* end = nullptr;
    const double d = std::strtod(v->c_str(), &end);
    if (v->empty() || *end != '\0' || errno != 0 || !std::isfinite(d) || d < min || d > max) {
        error(option + " takes a number from " + formatNumber(min) + " to " + formatNumber(max) +
              ", not '" + *v + "'");
        return std::nullopt;
    }
    return d;
}

std::optional<std::int64_t> ArgParser::integer(std::int64_t min, std::int64_t max)
{
    const std::string option = m_current;
    auto v = value();
    if (!v) return std::nullopt;
    errno = 0;
    char* end = nullptr;
    const long long n = std::strtoll(v->c_str(), &end, 10);
    if (v->empty() || *end != '\0' || errno != 0 || n < min || n > max) {
        error(option + " takes a whole number from " + std::to_string(min) + " to " +
              std::to_string(max) + ", not '" + *v + "'");
        return std::nullopt;
    }
    return n;
}

void ArgParser::unknown()
{
    error(isOption() ? "unknown option " + m_current : "unexpected argument '" + m_current + "'");
}

void ArgParser::error(std::string message)
{
    if (m_error.empty()) m_error = std::move(message);
}

// --- interrupts ---------------------------------------------------------------------------

namespace {
std::atomic<bool> g_interrupted{false};
static_assert(std::atomic<bool>::is_always_lock_free);

extern "C" void onInterrupt(int signal)
{
    g_interrupted.store(true);
    ::signal(signal, SIG_DFL);  // a second signal ends the process
}
}  // namespace

void installInterruptHandler()
{
    ::signal(SIGINT, onInterrupt);
    ::signal(SIGTERM, onInterrupt);
}

bool interrupted()
{
    return g_interrupted.load();
}

// --- ProgressLine -------------------------------------------------------------------------

ProgressLine::ProgressLine() : m_enabled(::isatty(STDERR_FILENO) == 1) {}

ql::ProgressFn ProgressLine::callback()
{
    return part(0.0, 1.0);
}

ql::ProgressFn ProgressLine::part(double p0, double p1)
{
    return [this, p0, p1](double f, std::string_view what) {
        if (m_enabled) draw(p0 + (p1 - p0) * f, what);
        return !interrupted();
    };
}

void ProgressLine::draw(double fraction, std::string_view what)
{
    const auto now = std::chrono::steady_clock::now();
    if (m_drawn && fraction < 1.0 && now - m_last < std::chrono::milliseconds(100)) return;
    m_last = now;
    m_drawn = true;
    const int width = 60;
    std::string text(what.substr(0, width));
    std::fprintf(stderr, "\r%-*s %5.1f%%", width, text.c_str(),
                 100.0 * std::clamp(fraction, 0.0, 1.0));
    std::fflush(stderr);
}

void ProgressLine::finish()
{
    if (!m_drawn) return;
    std::fprintf(stderr, "\r%*s\r", 68, "");
    std::fflush(stderr);
    m_drawn = false;
}

// --- formatting ---------------------------------------------------------------------------

std::string formatBytes(std::uint64_t bytes)
{
    static const char* const units[] = {"B", "kB", "MB", "GB", "TB"};
    double v = double(bytes);
    int u = 0;
    while (v >= 1000.0 && u < 4) {
        v /= 1000.0;
        ++u;
    }
    char buf[32];
    if (u == 0)
        std::snprintf(buf, sizeof buf, "%llu B", static_cast<unsigned long long>(bytes));
    else
        std::snprintf(buf, sizeof buf, "%.2f %s", v, units[u]);
    return buf;
}

std::string formatCount(std::int64_t n)
{
    std::string digits = std::to_string(n < 0 ? -n : n);
    std::string out;
    for (std::size_t i = 0; i < digits.size(); ++i) {
        if (i && (digits.size() - i) % 3 == 0) out += ',';
        out += digits[i];
    }
    return n < 0 ? "-" + out : out;
}

std::string formatShape(const std::vector<std::int64_t>& shape)
{
    std::string s;
    for (std::size_t i = 0; i < shape.size(); ++i) {
        if (i) s += 'x';
        s += std::to_string(shape[i]);
    }
    return s.empty() ? "scalar" : s;
}

std::string formatNumber(double v, int significant)
{
    if (std::isnan(v)) return "nan";
    if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
    char buf[40];
    std::snprintf(buf, sizeof buf, "%.*g", significant, v);
    return buf;
}

double secondsSince(std::chrono::steady_clock::time_point start)
{
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// --- GptqLog -------------------------------------------------------------------------------

ql::Result<ql::CalibrationResult> calibrateOnTheFly(const ql::Model& model,
                                                    const std::vector<std::string>& texts,
                                                    ql::WindowOptions windowOptions,
                                                    const ql::ProgressFn& progress)
{
    auto tokenizer = ql::Tokenizer::create(model);
    if (!tokenizer) return tokenizer.error();
    std::vector<std::string> contents;
    for (const auto& f : texts) {
        auto t = ql::readTextFile(f);
        if (!t) return t.error();
        contents.push_back(std::move(t).value());
    }
    windowOptions.addBos = (*tokenizer)->addBosByDefault();
    auto windows = ql::makeCalibrationWindows(**tokenizer, contents, windowOptions);
    if (!windows) return windows.error();
    auto llama = ql::LlamaModel::create(model);
    if (!llama) return llama.error();
    ql::CalibrationConfig config;
    config.textFiles = texts;
    config.samples = windowOptions.samples;
    config.seqLen = windowOptions.seqLen;
    config.seed = windowOptions.seed;
    config.hessian = ql::HessianPrecision::Float64;
    return ql::calibrateWindows(*llama, **tokenizer, *windows, config, progress);
}

void GptqLog::tensorDone(const ql::TensorReport& t)
{
    if (t.awq) {
        if (m_clear) m_clear();
        std::fprintf(stderr, "awq: %s\n", ql::awqSummary(t).c_str());
        return;
    }
    if (!t.gptq) return;
    if (m_clear) m_clear();
    for (const auto& raise : t.gptq->dampRaises)
        std::fprintf(stderr, "gptq: %s: %s\n", t.plan.name.c_str(), raise.c_str());
    std::fprintf(stderr, "gptq: %s\n", ql::gptqSummary(t).c_str());
}

}  // namespace qlcli
