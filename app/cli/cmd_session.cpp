// quantlens-cli session info S.h5 [--model PATH]: what a session holds and how long opening it
// takes (core/session), and whether the model file still matches (hash).
#include <chrono>
#include <cstdio>
#include <filesystem>

#include "cli_common.h"
#include "io/model_loader.h"
#include "session/session.h"

namespace qlcli {

const std::string_view kSessionHelp = R"(usage: quantlens-cli session info S.h5 [--no-check]

Prints what the session holds (model reference and hash, calibration, layout, GPTQ results,
evaluations, view state), the time to open it, and whether the model file it names still
matches its hash (skipped with --no-check). Exit status 2 when the model has changed.
)";

int runSession(Args args)
{
    ArgParser p(args);
    std::string verb, path;
    bool check = true;
    while (p.next()) {
        if (!p.isOption()) {
            if (verb.empty())
                verb = p.current();
            else if (path.empty())
                path = p.current();
            else
                p.unknown();
        } else if (p.is("--no-check")) {
            check = false;
        } else if (p.is("--help") || p.is("-h")) {
            std::fwrite(kSessionHelp.data(), 1, kSessionHelp.size(), stdout);
            return kExitOk;
        } else {
            p.unknown();
        }
    }
    if (p.failed()) return usageError(p.errorMessage(), "session");
    if (verb != "info" || path.empty()) return usageError("usage: session info S.h5", "session");
    const auto start = std::chrono::steady_clock::now();
    auto s = ql::readSession(path);
    const double openSeconds = secondsSince(start);
    if (!s) return fail(s.error().message);
    for (const auto& line : ql::describeSession(*s)) std::printf("%s\n", line.c_str());
    std::printf("opened in   %.1f ms\n", 1000 * openSeconds);
    if (!check) return kExitOk;
    std::error_code ec;
    if (!std::filesystem::exists(s->model.path, ec)) {
        std::printf("model       %s is missing\n", s->model.path.c_str());
        return kExitError;
    }
    auto model = ql::openModel(s->model.path);
    if (!model) return fail(model.error().message);
    auto id = ql::identifyModel(*model);
    if (!id) return fail(id.error().message);
    if (auto same = ql::checkModelIdentity(s->model, *id); !same) {
        std::printf("model       CHANGED: %s\n", same.error().message.c_str());
        return kExitError;
    }
    std::printf("model       unchanged (hash matches)\n");
    return kExitOk;
}

}  // namespace qlcli
