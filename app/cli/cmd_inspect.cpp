// `quantlens-cli inspect MODEL`: the model's architecture and hyper-parameters, then one line
// (or JSON object) per tensor with its storage and weight statistics. Statistics come from
// ql::computeTensorStats, tensor by tensor, so memory stays at one decoded tensor; progress is
// weighted by element count.
#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "cli_common.h"
#include "io/model_loader.h"
#include "stats/tensor_stats.h"

namespace qlcli {

const std::string_view kInspectHelp =
    "usage: quantlens-cli inspect MODEL [--json] [--no-stats] [--outlier-k K]\n"
    "                             [--outlier-mode median|std]\n\n"
    "Prints the architecture and hyper-parameters of MODEL (a .gguf file, a Hugging Face\n"
    "safetensors folder or a llama2.c .bin), then every tensor: name, role, type, shape, bytes\n"
    "and, unless --no-stats, min, max, mean, std, excess kurtosis, abs-max and the number of\n"
    "outlier channels among input columns (cols) and output rows (rows).\n\n"
    "  --json                 one JSON object on stdout instead of tables\n"
    "  --no-stats             headers only: no tensor data is read\n"
    "  --outlier-k K          outlier factor (default 5)\n"
    "  --outlier-mode MODE    median: a channel's abs-max > K x the median abs-max (default);\n"
    "                         std: > mean + K x std of the channels' abs-max\n";

namespace {

using json = nlohmann::json;

const char* formatId(ql::ModelFormat f)
{
    switch (f) {
        case ql::ModelFormat::Gguf: return "gguf";
        case ql::ModelFormat::Safetensors: return "safetensors";
        case ql::ModelFormat::Llama2c: return "llama2c";
    }
    return "unknown";
}

json hparamsJson(const ql::HyperParams& h)
{
    json j = {{"architecture", h.architecture},
              {"blockCount", h.blockCount},
              {"embeddingDim", h.embeddingDim},
              {"ffnDim", h.ffnDim},
              {"headCount", h.headCount},
              {"headCountKv", h.headCountKv},
              {"headDim", h.headDim},
              {"vocabSize", h.vocabSize},
              {"contextLength", h.contextLength},
              {"rmsNormEps", h.rmsNormEps},
              {"ropeTheta", h.ropeTheta},
              {"tiedEmbeddings", h.tiedEmbeddings},
              {"attentionBias", h.attentionBias}};
    if (!h.ropeScaling.type.empty())
        j["ropeScaling"] = {{"type", h.ropeScaling.type},
                            {"factor", h.ropeScaling.factor},
                            {"originalContext", h.ropeScaling.originalContext},
                            {"lowFreqFactor", h.ropeScaling.lowFreqFactor},
                            {"highFreqFactor", h.ropeScaling.highFreqFactor}};
    return j;
}

// Scalar metadata only: token lists and other arrays would swamp the output.
json metadataJson(const ql::Metadata& m)
{
    json j = json::object();
    for (const std::string& key : m.keys()) {
        const ql::MetaValue* v = m.find(key);
        if (!v || v->type == ql::MetaType::Array) continue;
        if (const std::string* s = v->asString())
            j[key] = *s;
        else if (const bool* b = std::get_if<bool>(&v->value))
            j[key] = *b;
        else if (v->type == ql::MetaType::F32 || v->type == ql::MetaType::F64)
            j[key] = v->asDouble().value_or(0.0);
        else
            j[key] = v->asInt().value_or(0);
    }
    return j;
}

json outliersJson(const ql::OutlierChannels& o)
{
    return {{"threshold", o.threshold}, {"count", o.indices.size()}, {"indices", o.indices}};
}

json statsJson(const ql::TensorStats& s)
{
    return {{"count", s.count},
            {"nonFinite", s.nonFinite},
            {"min", s.min},
            {"max", s.max},
            {"mean", s.mean},
            {"std", s.std},
            {"kurtosis", s.kurtosis},
            {"absMax", s.absMax},
            {"outlierShare", s.outlierShare},
            {"outlierCols", outliersJson(s.colOutliers)},
            {"outlierRows", outliersJson(s.rowOutliers)}};
}

void printHeader(const ql::Model& m, const ql::OutlierRule& rule, bool stats)
{
    const ql::HyperParams& h = m.hparams;
    std::printf("model         %s\n", m.path.c_str());
    std::printf("format        %s, architecture %s\n", ql::modelFormatName(m.format),
                h.architecture.c_str());
    std::printf("blocks        %lld, embedding %lld, ffn %lld, vocabulary %lld, context %lld\n",
                (long long)h.blockCount, (long long)h.embeddingDim, (long long)h.ffnDim,
                (long long)h.vocabSize, (long long)h.contextLength);
    std::printf("attention     %lld heads, %lld kv heads, head dim %lld%s\n",
                (long long)h.headCount, (long long)h.headCountKv, (long long)h.headDim,
                h.attentionBias ? ", q/k/v bias" : "");
    std::printf("norm, rope    rms eps %s, rope theta %s", formatNumber(h.rmsNormEps, 8).c_str(),
                formatNumber(h.ropeTheta, 8).c_str());
    if (!h.ropeScaling.type.empty())
        std::printf(", rope scaling %s x%s", h.ropeScaling.type.c_str(),
                    formatNumber(h.ropeScaling.factor).c_str());
    std::printf("\nembeddings    %s\n",
                h.tiedEmbeddings ? "tied (output reuses token_embd)" : "separate output matrix");
    std::printf("tensors       %zu, %s parameters, %s\n", m.tensors.size(),
                formatCount(m.totalParameters()).c_str(), formatBytes(m.totalBytes()).c_str());
    for (const std::string& w : m.warnings) std::printf("warning       %s\n", w.c_str());
    if (stats)
        std::printf("outliers      channel abs-max > %s\n",
                    rule.mode == ql::OutlierMode::MedianMultiple
                        ? (formatNumber(rule.k) + " x median").c_str()
                        : ("mean + " + formatNumber(rule.k) + " x std").c_str());
    std::printf("\n");
}

}  // namespace

int runInspect(Args args)
{
    std::string path;
    bool asJson = false, withStats = true;
    ql::OutlierRule rule;
    ArgParser p(args);
    while (p.next()) {
        if (p.is("--help") || p.is("-h")) {
            std::fwrite(kInspectHelp.data(), 1, kInspectHelp.size(), stdout);
            return kExitOk;
        } else if (p.is("--json")) {
            asJson = true;
        } else if (p.is("--no-stats")) {
            withStats = false;
        } else if (p.is("--outlier-k")) {
            if (auto k = p.number(0.0, 1e6)) rule.k = *k;
        } else if (p.is("--outlier-mode")) {
            if (auto mode = p.value()) {
                if (*mode == "median")
                    rule.mode = ql::OutlierMode::MedianMultiple;
                else if (*mode == "std")
                    rule.mode = ql::OutlierMode::StdMultiple;
                else
                    p.error("--outlier-mode is median or std, not '" + *mode + "'");
            }
        } else if (!p.isOption() && path.empty()) {
            path = p.current();
        } else {
            p.unknown();
        }
    }
    if (p.failed()) return usageError(p.errorMessage(), "inspect");
    if (path.empty()) return usageError("inspect needs a MODEL", "inspect");

    ProgressLine progress;
    auto model = ql::openModel(path, progress.part(0.0, withStats ? 0.01 : 1.0));
    if (!model) {
        progress.finish();
        return fail(model.error().message);
    }

    ql::TensorStatsOptions options;
    options.outliers = rule;
    options.histogramBins = 1;  // inspect prints no histogram or heatmap
    options.heatmapMaxRows = options.heatmapMaxCols = 1;

    std::vector<ql::TensorStats> stats;
    if (withStats) {
        const double total = double(std::max<std::int64_t>(1, model->totalParameters()));
        double done = 0;
        for (const ql::TensorInfo& t : model->tensors) {
            const double share = double(t.elementCount()) / total;
            auto s = ql::computeTensorStats(
                *model, t, options,
                progress.part(0.01 + 0.99 * done, 0.01 + 0.99 * (done + share)));
            if (!s) {
                progress.finish();
                return fail(s.error().message);
            }
            stats.push_back(std::move(*s));
            done += share;
        }
    }
    progress.finish();

    if (asJson) {
        json j;
        j["quantlens"] = QL_VERSION;
        j["path"] = model->path;
        j["format"] = formatId(model->format);
        j["architecture"] = model->hparams.architecture;
        j["hyperParameters"] = hparamsJson(model->hparams);
        j["tensorCount"] = model->tensors.size();
        j["parameters"] = model->totalParameters();
        j["bytes"] = model->totalBytes();
        j["warnings"] = model->warnings;
        j["metadata"] = metadataJson(model->metadata);
        if (withStats)
            j["outlierRule"] = {
                {"mode", rule.mode == ql::OutlierMode::MedianMultiple ? "median" : "std"},
                {"k", rule.k}};
        json tensors = json::array();
        for (std::size_t i = 0; i < model->tensors.size(); ++i) {
            const ql::TensorInfo& t = model->tensors[i];
            json tj = {{"name", t.name},
                       {"sourceName", t.sourceName},
                       {"role", ql::tensorRoleName(t.role)},
                       {"block", t.block},
                       {"type", std::string(ql::tensorTypeName(t.type))},
                       {"shape", t.shape},
                       {"elements", t.elementCount()},
                       {"bytes", t.bytes}};
            if (withStats) tj["stats"] = statsJson(stats[i]);
            tensors.push_back(std::move(tj));
        }
        j["tensors"] = std::move(tensors);
        // NaN/Inf have no JSON spelling: nlohmann writes null.
        std::printf("%s\n", j.dump(1).c_str());
        return kExitOk;
    }

    printHeader(*model, rule, withStats);
    std::size_t nameWidth = 4;
    for (const ql::TensorInfo& t : model->tensors) nameWidth = std::max(nameWidth, t.name.size());
    std::printf("%-*s %-11s %-5s %-12s %10s", int(nameWidth), "name", "role", "type", "shape",
                "bytes");
    if (withStats)
        std::printf(" %10s %10s %10s %10s %8s %10s %5s %5s", "min", "max", "mean", "std", "kurt",
                    "absmax", "ocols", "orows");
    std::printf("\n");
    for (std::size_t i = 0; i < model->tensors.size(); ++i) {
        const ql::TensorInfo& t = model->tensors[i];
        std::printf("%-*s %-11s %-5s %-12s %10s", int(nameWidth), t.name.c_str(),
                    ql::tensorRoleName(t.role), std::string(ql::tensorTypeName(t.type)).c_str(),
                    formatShape(t.shape).c_str(), formatBytes(t.bytes).c_str());
        if (withStats) {
            const ql::TensorStats& s = stats[i];
            std::printf(" %10s %10s %10s %10s %8s %10s %5zu %5zu", formatNumber(s.min).c_str(),
                        formatNumber(s.max).c_str(), formatNumber(s.mean).c_str(),
                        formatNumber(s.std).c_str(), formatNumber(s.kurtosis, 3).c_str(),
                        formatNumber(s.absMax).c_str(), s.colOutliers.indices.size(),
                        s.rowOutliers.indices.size());
            if (s.nonFinite) std::printf("  (%lld NaN/Inf)", (long long)s.nonFinite);
        }
        std::printf("\n");
    }
    return kExitOk;
}

}  // namespace qlcli
