// Shared pieces of quantlens-cli: the subcommand table, error reporting and exit codes,
// option parsing, a stderr progress line and number formatting.
//
// Conventions every subcommand follows: results go to stdout; an error is ONE line
// "quantlens-cli: error: <message>" on stderr with exit code 2 (bad usage adds a hint line
// naming `quantlens-cli help <command>`); progress is drawn on stderr only when stderr is a
// terminal, so scripts and tests see clean streams.
#pragma once

#include <chrono>
#include <functional>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "calib/dataset.h"
#include "quant/quantize_model.h"
#include "util/progress.h"

namespace qlcli {

constexpr int kExitOk = 0;
constexpr int kExitFailed = 1;  // ran, but a checked target was missed (bench PASS/FAIL)
constexpr int kExitError = 2;   // bad usage or bad input

using Args = std::span<const std::string>;

struct Command {
    std::string_view name;
    std::string_view summary;  // one line for `quantlens-cli --help`
    std::string_view help;  // full text for `quantlens-cli help <name>`; empty: run it with --help
    int (*run)(Args args);  // args: everything after the command word
};

// Every subcommand, in help order.
std::span<const Command> commands();
const Command* findCommand(std::string_view name);

// Prints "quantlens-cli: error: <message>" (newlines folded) and returns kExitError.
int fail(std::string_view message);
// As fail(), then "Try 'quantlens-cli help <command>'." on a second line.
int usageError(std::string_view message, std::string_view command);

// Walks the arguments of one subcommand: options (--name, --name VALUE, --name=VALUE) and
// positionals. Parse errors are remembered; the caller reports the first one via usageError.
class ArgParser {
public:
    explicit ArgParser(Args args) : m_args(args) {}
    bool next();  // advance; false at the end or after an error
    bool isOption() const { return m_current.size() > 1 && m_current[0] == '-'; }
    const std::string& current() const { return m_current; }
    bool is(std::string_view option);    // current option equals `option` (also --opt=value)
    std::optional<std::string> value();  // the option's value (inline or the next argument)
    std::optional<double> number(double min, double max);
    std::optional<std::int64_t> integer(std::int64_t min, std::int64_t max);
    void unknown();  // records "unknown option X" or "unexpected argument X"
    void error(std::string message);
    bool failed() const { return !m_error.empty(); }
    const std::string& errorMessage() const { return m_error; }

private:
    Args m_args;
    std::size_t m_index = 0;
    std::string m_current;
    std::optional<std::string> m_inlineValue;
    std::string m_error;
};

// Ctrl-C / SIGTERM: the first one asks long work to stop (progress callbacks return false, so
// core cancels cleanly and removes partial output); a second one ends the process at once.
void installInterruptHandler();
bool interrupted();

// A single progress line on stderr ("\r<what>  42%"), drawn only when stderr is a terminal and
// at most ~10 times a second; finish() erases it. The callbacks cancel after an interrupt.
class ProgressLine {
public:
    ProgressLine();
    ~ProgressLine() { finish(); }
    ql::ProgressFn callback();
    // Progress of a part [p0, p1] of the whole job.
    ql::ProgressFn part(double p0, double p1);
    void finish();
    bool enabled() const { return m_enabled; }

private:
    void draw(double fraction, std::string_view what);
    bool m_enabled = false;
    bool m_drawn = false;
    std::chrono::steady_clock::time_point m_last{};
};

std::string formatBytes(std::uint64_t bytes);  // "1.23 GB", "512 B" (decimal units)
std::string formatCount(std::int64_t n);       // "6,738,415,616"
std::string formatShape(const std::vector<std::int64_t>& shape);  // "4096x11008"
std::string formatNumber(double v, int significant = 4);          // %.4g, "nan" / "inf" spelled out

double secondsSince(std::chrono::steady_clock::time_point start);

int runInspect(Args args);
int runGenerate(Args args);
int runBench(Args args);
int runBenchHessian(Args args);  // `bench hessian`, app/cli/cmd_bench_hessian.cpp
int runDevices(Args args);
int runCalibrate(Args args);    // app/cli/cmd_calibrate.cpp
int runEval(Args args);         // app/cli/cmd_eval.cpp
int runExport(Args args);       // app/cli/cmd_export.cpp
int runSession(Args args);      // app/cli/cmd_session.cpp
int runSmoothQuant(Args args);  // app/cli/cmd_smoothquant.cpp
int runSensitivity(Args args);  // app/cli/cmd_layout.cpp
int runAllocate(Args args);     // app/cli/cmd_layout.cpp
int runLayout(Args args);       // app/cli/cmd_layout.cpp
int runArgvCommand(int (*run)(int, char**), Args argsWithCommandWord);

extern const std::string_view kInspectHelp;
extern const std::string_view kGenerateHelp;
extern const std::string_view kBenchHelp;
extern const std::string_view kCalibrateHelp;
extern const std::string_view kEvalHelp;
extern const std::string_view kExportHelp;
extern const std::string_view kSessionHelp;
extern const std::string_view kSmoothQuantHelp;
extern const std::string_view kSensitivityHelp;
extern const std::string_view kAllocateHelp;
extern const std::string_view kLayoutHelp;

// Calibration of the unquantized model on text files, for methods that take their statistics from
// one calibration (awq): windows as makeCalibrationWindows makes them, float64 Hessians.
ql::Result<ql::CalibrationResult> calibrateOnTheFly(const ql::Model& model,
                                                    const std::vector<std::string>& texts,
                                                    ql::WindowOptions windowOptions,
                                                    const ql::ProgressFn& progress);

// Prints each GPTQ tensor's loss against rtn's, and every raise of its dampening, and each AWQ
// tensor's alpha and output error against rtn's, to stderr (quantize and eval); `clearProgress`
// wipes a progress line first.
class GptqLog final : public ql::TensorObserver {
public:
    explicit GptqLog(std::function<void()> clearProgress) : m_clear(std::move(clearProgress)) {}
    void tensorDone(const ql::TensorReport& t) override;

private:
    std::function<void()> m_clear;
};

}  // namespace qlcli

// Commands that parse argv themselves: argv[0] is the command word, then its options.
int runBenchQuant(int argc, char** argv);  // `bench quant`, app/cli/cmd_bench_quant.cpp
int runQuantize(int argc, char** argv);    // `quantize`, app/cli/cmd_quantize.cpp
