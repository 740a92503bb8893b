// quantlens-cli: QuantLens without the GUI. `quantlens-cli COMMAND [options]`; each command
// lives in its own cmd_*.cpp and is listed in the table below. Exit codes: 0 success, 1 a
// checked target was missed (bench), 2 bad usage or bad input (one error line on stderr).
#include <csignal>
#include <cstdio>
#include <string>
#include <vector>

#include "cli_common.h"

#ifndef QL_VERSION
#define QL_VERSION "unknown"
#endif

namespace qlcli {
namespace {

void printOverview(std::FILE* out)
{
    std::fprintf(out,
                 "usage: quantlens-cli COMMAND [options]\n"
                 "       quantlens-cli help COMMAND | --help | --version\n\n"
                 "QuantLens " QL_VERSION " command-line tools.\n\nCommands:\n");
    for (const Command& c : commands())
        std::fprintf(out, "  %-11.*s %.*s\n", int(c.name.size()), c.name.data(),
                     int(c.summary.size()), c.summary.data());
    std::fprintf(out,
                 "\nModels: a .gguf file, a Hugging Face folder (config.json + safetensors) or a\n"
                 "llama2.c .bin checkpoint. Exit status: 0 success, 1 a benchmark target missed,\n"
                 "2 bad usage or input.\n");
}

}  // namespace

std::span<const Command> commands()
{
    // Built on first use: the help texts live in other translation units.
    static const Command table[] = {
        {"inspect", "architecture, hyper-parameters and per-tensor weight statistics", kInspectHelp,
         runInspect},
        {"generate", "write a Llama-shaped safetensors model with realistic random weights",
         kGenerateHelp, runGenerate},
        {"quantize",
         "quantize a model with layout rules and write a GGUF file",
         {},
         [](Args args) {
             std::vector<std::string> all{"quantize"};
             all.insert(all.end(), args.begin(), args.end());
             return runArgvCommand(runQuantize, all);
         }},
        {"calibrate", "collect activation statistics on calibration text into a session",
         kCalibrateHelp, runCalibrate},
        {"eval", "perplexity, and KL divergence of a quantized model from the original", kEvalHelp,
         runEval},
        {"export", "write a quantized model as GGUF, GPTQ safetensors or fake-quant safetensors",
         kExportHelp, runExport},
        {"session", "what a session file holds, how long it takes to open, model match",
         kSessionHelp, runSession},
        {"smoothquant",
         "SmoothQuant scales, activation ranges before/after, W8A8 perplexity and KL",
         kSmoothQuantHelp, runSmoothQuant},
        {"sensitivity", "per-tensor ΔKL of each format, with proxies, into a session",
         kSensitivityHelp, runSensitivity},
        {"allocate", "per-tensor formats for a size target from measured sensitivity",
         kAllocateHelp, runAllocate},
        {"layout", "size accounting of a layout or preset: per tensor, per block, file, memory",
         kLayoutHelp, runLayout},
        {"bench", "benchmarks: open (headers, time, RSS), stats, quant", kBenchHelp, runBench},
        {"devices", "the compute devices this build can use (CPU, CUDA GPUs)", {}, runDevices},
    };
    return table;
}

const Command* findCommand(std::string_view name)
{
    for (const Command& c : commands())
        if (c.name == name) return &c;
    return nullptr;
}

}  // namespace qlcli

int main(int argc, char** argv)
{
    using namespace qlcli;
    installInterruptHandler();
    const std::vector<std::string> args(argv + 1, argv + argc);
    if (args.empty()) {
        printOverview(stderr);
        return kExitError;
    }
    const std::string& first = args[0];
    if (first == "--version" || first == "-V" || first == "version") {
        std::printf("quantlens-cli %s\n", QL_VERSION);
        return kExitOk;
    }
    if (first == "--help" || first == "-h" || (first == "help" && args.size() == 1)) {
        printOverview(stdout);
        return kExitOk;
    }
    if (first == "help") {
        const Command* c = findCommand(args[1]);
        if (!c) return usageError("no command '" + args[1] + "'", "");
        if (c->help.empty()) return c->run(std::vector<std::string>{"--help"});
        std::fwrite(c->help.data(), 1, c->help.size(), stdout);
        return kExitOk;
    }
    const Command* c = findCommand(first);
    if (!c)
        return usageError(
            first[0] == '-' ? "unknown option " + first : "no command '" + first + "'", "");
    // Each command answers --help itself (bench passes it on to its sub-benchmark).
    const int status = c->run(std::vector<std::string>(args.begin() + 1, args.end()));
    return interrupted() ? 128 + SIGINT : status;
}
