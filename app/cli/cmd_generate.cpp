// `quantlens-cli generate`: a Llama-shaped Hugging Face model folder with random weights whose
// statistics look like a trained model's: Student-t entries (heavier tails for the attention
// projections and ffn_down than for the rest), and in every matrix the same few input channels
// of each width scaled 5-10x, the way real residual-stream outlier dimensions show up in all
// the matrices that read them. RMSNorm gains sit around 1.
//
// Every value is a pure function of (seed, tensor index, element index): a counter-based hash
// feeds the uniforms, so output is identical for any chunking or thread count, and chunks are
// filled on all cores.
//
// A model that fits one file (<= 5 GB) is written by ql::writeSafetensorsStream. Larger ones,
// and --sparse ones, are written here: shards of at most 5 GB listed by
// model.safetensors.index.json (the Hugging Face layout), and with --sparse each shard holds its
// header and then a hole (ftruncate) where the data would be, which reads back as zeros; that is
// enough to benchmark opening a 7B-shaped model on a small disk. All files are written under
// ".partial" names and renamed into place when everything is complete.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "cli_common.h"
#include "io/safetensors.h"
#include "quant/ggml_dequant.h"

namespace qlcli {

const std::string_view kGenerateHelp =
    "usage: quantlens-cli generate --shape llama-7b|llama-1b|llama-8b|tiny --out DIR\n"
    "                              [--dtype bf16|f16|f32] [--seed S] [--sparse] [--force]\n\n"
    "Writes a Llama-shaped Hugging Face model folder (config.json + model.safetensors, or\n"
    "shards of at most 5 GB with model.safetensors.index.json) holding heavy-tailed random\n"
    "weights with a few outlier input channels, so that statistics look realistic.\n\n"
    "  --shape NAME   llama-7b (Llama-2 7B), llama-8b (Llama-3.1 8B), llama-1b (Llama-3.2 1B),\n"
    "                 tiny (2 blocks, width 128: for tests)\n"
    "  --out DIR      output folder (created when missing)\n"
    "  --dtype T      bf16 (default), f16 or f32\n"
    "  --seed S       random seed (default 1); the same seed gives the same bytes\n"
    "  --sparse       write headers only and leave the data as holes that read as zeros\n"
    "                 (for open benchmarks on small disks)\n"
    "  --force        replace a model already in DIR\n";

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

constexpr std::uint64_t kMaxShardBytes = 5'000'000'000ull;  // Hugging Face's "5GB"

struct ShapePreset {
    std::string_view name;
    ql::HyperParams hp;
};

ql::HyperParams llamaParams(std::int64_t dim, std::int64_t ffn, std::int64_t blocks,
                            std::int64_t heads, std::int64_t kvHeads, std::int64_t vocab,
                            std::int64_t context, double theta, bool tied)
{
    ql::HyperParams hp;
    hp.architecture = "llama";
    hp.embeddingDim = dim;
    hp.ffnDim = ffn;
    hp.blockCount = blocks;
    hp.headCount = heads;
    hp.headCountKv = kvHeads;
    hp.headDim = dim / heads;
    hp.vocabSize = vocab;
    hp.contextLength = context;
    hp.rmsNormEps = 1e-5;
    hp.ropeTheta = theta;
    hp.tiedEmbeddings = tied;
    return hp;
}

std::vector<ShapePreset> shapePresets()
{
    ql::HyperParams l1 = llamaParams(2048, 8192, 16, 32, 8, 128256, 131072, 500000.0, true);
    ql::HyperParams l8 = llamaParams(4096, 14336, 32, 32, 8, 128256, 131072, 500000.0, false);
    for (ql::HyperParams* hp : {&l1, &l8}) {
        hp->ropeScaling.type = "llama3";
        hp->ropeScaling.factor = hp == &l1 ? 32.0 : 8.0;
        hp->ropeScaling.originalContext = 8192;
        hp->ropeScaling.lowFreqFactor = 1.0;
        hp->ropeScaling.highFreqFactor = 4.0;
    }
    return {
        {"llama-7b", llamaParams(4096, 11008, 32, 32, 32, 32000, 4096, 10000.0, false)},
        {"llama-8b", l8},
        {"llama-1b", l1},
        {"tiny", llamaParams(128, 384, 2, 4, 2, 1000, 256, 10000.0, false)},
    };
}

// How the values of one tensor are drawn.
struct TensorPlan {
    ql::SafetensorsTensorSpec spec;
    bool norm = false;  // RMSNorm gain: 1 + small noise
    int nu = 8;         // Student-t degrees of freedom (even)
    double sigma = 0.02;
    std::uint64_t bytes = 0;
};

std::vector<TensorPlan> planTensors(const ql::HyperParams& hp, std::uint64_t elementBytes)
{
    const std::int64_t dim = hp.embeddingDim, q = hp.headCount * hp.headDim,
                       kv = hp.headCountKv * hp.headDim;
    std::vector<TensorPlan> plans;
    auto add = [&](std::string name, std::vector<std::int64_t> shape, int nu, bool norm = false) {
        TensorPlan p;
        p.spec = {std::move(name), std::move(shape)};
        p.norm = norm;
        p.nu = nu;
        std::uint64_t n = 1;
        for (auto d : p.spec.shape) n *= std::uint64_t(d);
        p.bytes = n * elementBytes;
        plans.push_back(std::move(p));
    };
    add("token_embd.weight", {hp.vocabSize, dim}, 10);
    for (std::int64_t b = 0; b < hp.blockCount; ++b) {
        const std::string blk = "blk." + std::to_string(b) + ".";
        add(blk + "attn_norm.weight", {dim}, 8, true);
        add(blk + "attn_q.weight", {q, dim}, 6);
        add(blk + "attn_k.weight", {kv, dim}, 6);
        add(blk + "attn_v.weight", {kv, dim}, 10);
        add(blk + "attn_output.weight", {dim, q}, 6);
        add(blk + "ffn_norm.weight", {dim}, 8, true);
        add(blk + "ffn_gate.weight", {hp.ffnDim, dim}, 10);
        add(blk + "ffn_up.weight", {hp.ffnDim, dim}, 10);
        add(blk + "ffn_down.weight", {dim, hp.ffnDim}, 6);
    }
    add("output_norm.weight", {dim}, 8, true);
    if (!hp.tiedEmbeddings) add("output.weight", {hp.vocabSize, dim}, 10);
    return plans;
}

// --- values -------------------------------------------------------------------------------

inline std::uint64_t mix64(std::uint64_t z)
{
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

// A uniform in (0, 1) from 32 random bits.
inline double unit(std::uint32_t bits)
{
    return (double(bits) + 0.5) * (1.0 / 4294967296.0);
}

class WeightGenerator {
public:
    WeightGenerator(std::uint64_t seed, const std::vector<TensorPlan>& plans)
        : m_seed(seed), m_plans(plans)
    {
        for (const TensorPlan& p : plans) {
            const std::int64_t cols = p.spec.shape.back();
            if (p.norm || m_colScale.count(cols)) continue;
            // A few input channels of this width (one per thousand, at least one), scaled 5-10x.
            std::vector<float> scale(std::size_t(cols), 1.0f);
            const std::int64_t outliers = std::max<std::int64_t>(1, cols / 1000);
            for (std::int64_t j = 0; j < outliers; ++j) {
                const std::uint64_t h =
                    mix64(mix64(seed ^ 0x5ca1eull) + std::uint64_t(cols) * 7919 + std::uint64_t(j));
                scale[std::size_t(h % std::uint64_t(cols))] =
                    float(5.0 + 5.0 * unit(std::uint32_t(h >> 32)));
            }
            m_colScale.emplace(cols, std::move(scale));
        }
    }

    // Elements [first, first + out.size()) of tensor `index`, on all cores.
    void fill(std::size_t index, std::int64_t first, std::span<float> out) const
    {
        const TensorPlan& p = m_plans[index];
        const std::int64_t cols = p.spec.shape.back();
        const float* colScale = p.norm ? nullptr : m_colScale.at(cols).data();
        const std::uint64_t key = mix64(m_seed * 0x100000001b3ull + index);
        auto work = [&](std::size_t begin, std::size_t end) {
            std::int64_t col = (first + std::int64_t(begin)) % cols;
            for (std::size_t i = begin; i < end; ++i) {
                const std::uint64_t elementKey = key + std::uint64_t(first + std::int64_t(i)) * 8;
                out[i] = p.norm ? normGain(elementKey)
                                : float(p.sigma * studentT(elementKey, p.nu)) * colScale[col];
                if (++col == cols) col = 0;
            }
        };
        const std::size_t n = out.size();
        const unsigned threads = unsigned(std::clamp<std::size_t>(
            n / 65536, 1, std::max(1u, std::thread::hardware_concurrency())));
        const std::size_t step = (n + threads - 1) / threads;
        std::vector<std::thread> pool;
        for (unsigned t = 1; t < threads; ++t) {
            const std::size_t b = std::min(n, t * step), e = std::min(n, b + step);
            try {
                pool.emplace_back(work, b, e);
            } catch (const std::system_error&) {
                work(b, e);
            }
        }
        work(0, std::min(n, step));
        for (std::thread& th : pool) th.join();
    }

private:
    // A Box-Muller normal from the first two uniforms of `key`.
    static double normal(std::uint64_t h)
    {
        return std::sqrt(-2.0 * std::log(unit(std::uint32_t(h)))) *
               std::cos(6.283185307179586 * unit(std::uint32_t(h >> 32)));
    }

    static float normGain(std::uint64_t key) { return float(1.0 + 0.1 * normal(mix64(key))); }

    // Student-t with `nu` (even) degrees of freedom, scaled to unit variance: a normal divided
    // by sqrt(chi-square(nu) / nu), the chi-square being -2 log of nu/2 uniforms' product.
    static double studentT(std::uint64_t key, int nu)
    {
        const double z = normal(mix64(key));
        double product = 1.0;
        for (int k = 0; k < nu / 2; k += 2) {
            const std::uint64_t h = mix64(key + 1 + std::uint64_t(k / 2));
            product *= unit(std::uint32_t(h));
            if (k + 1 < nu / 2) product *= unit(std::uint32_t(h >> 32));
        }
        const double chi2 = -2.0 * std::log(product);
        return z * std::sqrt(double(nu - 2) / chi2);  // sqrt(nu/chi2) * sqrt((nu-2)/nu)
    }

    std::uint64_t m_seed;
    const std::vector<TensorPlan>& m_plans;
    std::map<std::int64_t, std::vector<float>> m_colScale;  // by input width
};

// --- files ----------------------------------------------------------------------------------

// Removes the listed files unless released: nothing half-written is left behind.
struct PartialFiles {
    std::vector<fs::path> paths;
    ~PartialFiles()
    {
        std::error_code ec;
        for (const fs::path& p : paths) fs::remove(p, ec);
    }
};

ql::Error ioError(const fs::path& path, const std::string& what)
{
    return ql::makeError(ql::ErrorCode::Io,
                         path.string() + ": " + what + ": " + std::strerror(errno));
}

json configJson(const ql::HyperParams& hp, const char* torchDtype)
{
    json c = {{"architectures", {"LlamaForCausalLM"}},
              {"model_type", "llama"},
              {"hidden_size", hp.embeddingDim},
              {"intermediate_size", hp.ffnDim},
              {"num_hidden_layers", hp.blockCount},
              {"num_attention_heads", hp.headCount},
              {"num_key_value_heads", hp.headCountKv},
              {"head_dim", hp.headDim},
              {"vocab_size", hp.vocabSize},
              {"max_position_embeddings", hp.contextLength},
              {"rms_norm_eps", hp.rmsNormEps},
              {"rope_theta", hp.ropeTheta},
              {"tie_word_embeddings", hp.tiedEmbeddings},
              {"hidden_act", "silu"},
              {"attention_bias", false},
              {"torch_dtype", torchDtype},
              {"rope_scaling", nullptr}};
    if (!hp.ropeScaling.type.empty())
        c["rope_scaling"] = {{"rope_type", hp.ropeScaling.type},
                             {"factor", hp.ropeScaling.factor},
                             {"original_max_position_embeddings", hp.ropeScaling.originalContext},
                             {"low_freq_factor", hp.ropeScaling.lowFreqFactor},
                             {"high_freq_factor", hp.ropeScaling.highFreqFactor}};
    return c;
}

ql::Status writeWhole(int fd, const void* data, std::size_t size, const fs::path& path)
{
    const char* p = static_cast<const char*>(data);
    while (size > 0) {
        const ssize_t n = ::write(fd, p, size);
        if (n < 0) {
            if (errno == EINTR) continue;
            return ioError(path, "write failed");
        }
        p += n;
        size -= std::size_t(n);
    }
    return {};
}

ql::Status writeTextFile(const fs::path& path, const std::string& text)
{
    const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return ioError(path, "cannot create");
    ql::Status st = writeWhole(fd, text.data(), text.size(), path);
    if (st && ::fsync(fd) != 0) st = ioError(path, "fsync failed");
    if (::close(fd) != 0 && st) st = ioError(path, "close failed");
    return st;
}

struct Shard {
    std::string fileName;
    std::vector<std::size_t> tensors;
    std::uint64_t dataBytes = 0;
};

// Tensors in order, a new shard whenever the next tensor would pass kMaxShardBytes.
std::vector<Shard> planShards(const std::vector<TensorPlan>& plans)
{
    std::vector<Shard> shards;
    for (std::size_t i = 0; i < plans.size(); ++i) {
        if (shards.empty() || (!shards.back().tensors.empty() &&
                               shards.back().dataBytes + plans[i].bytes > kMaxShardBytes))
            shards.emplace_back();
        shards.back().tensors.push_back(i);
        shards.back().dataBytes += plans[i].bytes;
    }
    for (std::size_t s = 0; s < shards.size(); ++s) {
        char name[64];
        std::snprintf(name, sizeof name, "model-%05zu-of-%05zu.safetensors", s + 1, shards.size());
        shards[s].fileName = shards.size() == 1 ? "model.safetensors" : name;
    }
    return shards;
}

// Shards of at most kMaxShardBytes, or dense/sparse single files, written by this file.
ql::Status writeShards(const fs::path& dir, const ql::HyperParams& hp,
                       const std::vector<TensorPlan>& plans, ql::TensorType dtype, bool sparse,
                       const WeightGenerator& gen, const ql::ProgressFn& progress)
{
    const std::vector<Shard> shards = planShards(plans);
    const char* dtypeName = dtype == ql::TensorType::F32   ? "F32"
                            : dtype == ql::TensorType::F16 ? "F16"
                                                           : "BF16";
    const std::uint64_t elementBytes = dtype == ql::TensorType::F32 ? 4 : 2;
    std::uint64_t totalBytes = 0;
    for (const Shard& s : shards) totalBytes += s.dataBytes;

    PartialFiles partial;
    std::uint64_t written = 0;
    std::vector<float> values;
    std::vector<std::uint8_t> bytes;
    json weightMap = json::object();
    for (const Shard& shard : shards) {
        json header = json::object();
        header["__metadata__"] = {{"format", "pt"}};
        std::uint64_t offset = 0;
        for (std::size_t i : shard.tensors) {
            const std::string hfName = ql::hfTensorName(plans[i].spec.name);
            header[hfName] = {{"dtype", dtypeName},
                              {"shape", plans[i].spec.shape},
                              {"data_offsets", {offset, offset + plans[i].bytes}}};
            offset += plans[i].bytes;
            weightMap[hfName] = shard.fileName;
        }
        std::string text = header.dump();
        text.append((8 - text.size() % 8) % 8, ' ');
        std::uint8_t length[8];
        for (int k = 0; k < 8; ++k) length[k] = std::uint8_t(std::uint64_t(text.size()) >> (8 * k));

        const fs::path path = dir / (shard.fileName + ".partial");
        const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (fd < 0) return ioError(path, "cannot create");
        partial.paths.push_back(path);
        auto closeFd = std::unique_ptr<int, void (*)(int*)>(new int(fd), [](int* f) {
            if (*f >= 0) ::close(*f);
            delete f;
        });
        QL_TRY_STATUS(writeWhole(fd, length, 8, path));
        QL_TRY_STATUS(writeWhole(fd, text.data(), text.size(), path));
        if (sparse) {
            // The data is a hole: no blocks are allocated and it reads back as zeros.
            if (::ftruncate(fd, off_t(8 + text.size() + shard.dataBytes)) != 0)
                return ioError(path, "cannot size the file");
            written += shard.dataBytes;
            if (!ql::reportProgress(
                    progress, double(written) / double(std::max<std::uint64_t>(1, totalBytes)),
                    "writing " + shard.fileName))
                return ql::makeError(ql::ErrorCode::Cancelled,
                                     "writing " + dir.string() + " was cancelled");
        } else {
            constexpr std::int64_t kChunk = 1 << 20;
            for (std::size_t i : shard.tensors) {
                const std::int64_t count = std::int64_t(plans[i].bytes / elementBytes);
                for (std::int64_t first = 0; first < count; first += kChunk) {
                    const std::int64_t n = std::min(kChunk, count - first);
                    values.resize(std::size_t(n));
                    gen.fill(i, first, values);
                    bytes.resize(std::size_t(n) * elementBytes);
                    std::uint8_t* out = bytes.data();
                    for (float v : values) {
                        if (dtype == ql::TensorType::F32) {
                            const std::uint32_t x = std::bit_cast<std::uint32_t>(v);
                            for (int k = 0; k < 4; ++k) *out++ = std::uint8_t(x >> (8 * k));
                        } else {
                            const std::uint16_t h = dtype == ql::TensorType::F16
                                                        ? ql::fp32ToFp16(v)
                                                        : ql::fp32ToBf16(v);
                            *out++ = std::uint8_t(h);
                            *out++ = std::uint8_t(h >> 8);
                        }
                    }
                    QL_TRY_STATUS(writeWhole(fd, bytes.data(), bytes.size(), path));
                    written += bytes.size();
                    if (!ql::reportProgress(progress, double(written) / double(totalBytes),
                                            "writing " + shard.fileName))
                        return ql::makeError(ql::ErrorCode::Cancelled,
                                             "writing " + dir.string() + " was cancelled");
                }
            }
        }
        if (::fsync(fd) != 0) return ioError(path, "fsync failed");
        *closeFd = -1;
        if (::close(fd) != 0) return ioError(path, "close failed");
    }

    if (shards.size() > 1) {
        const json index = {{"metadata", {{"total_size", totalBytes}}}, {"weight_map", weightMap}};
        const fs::path path = dir / "model.safetensors.index.json.partial";
        partial.paths.push_back(path);
        QL_TRY_STATUS(writeTextFile(path, index.dump(2) + "\n"));
    }
    const fs::path configPath = dir / "config.json.partial";
    partial.paths.push_back(configPath);
    const char* torchDtype = dtype == ql::TensorType::F32   ? "float32"
                             : dtype == ql::TensorType::F16 ? "float16"
                                                            : "bfloat16";
    QL_TRY_STATUS(writeTextFile(configPath, configJson(hp, torchDtype).dump(2) + "\n"));

    // Everything is complete: shards, then the index, then config.json, which makes the folder a
    // model.
    for (const fs::path& p : partial.paths) {
        std::error_code ec;
        fs::path final = p;
        final.replace_extension();  // drop ".partial"
        fs::rename(p, final, ec);
        if (ec)
            return ql::makeError(ql::ErrorCode::Io,
                                 p.string() + ": cannot rename into place: " + ec.message());
    }
    partial.paths.clear();
    return {};
}

// Model files a previous run may have left in `dir`.
std::vector<fs::path> existingModelFiles(const fs::path& dir)
{
    std::vector<fs::path> found;
    std::error_code ec;
    for (const auto& entry : fs::directory_iterator(dir, ec)) {
        const std::string name = entry.path().filename().string();
        if (name == "config.json" || name == "model.safetensors.index.json" ||
            (name.rfind("model", 0) == 0 && entry.path().extension() == ".safetensors"))
            found.push_back(entry.path());
    }
    return found;
}

}  // namespace

int runGenerate(Args args)
{
    std::string shapeName, out, dtypeName = "bf16";
    std::uint64_t seed = 1;
    bool sparse = false, force = false;
    ArgParser p(args);
    while (p.next()) {
        if (p.is("--help") || p.is("-h")) {
            std::fwrite(kGenerateHelp.data(), 1, kGenerateHelp.size(), stdout);
            return kExitOk;
        } else if (p.is("--shape")) {
            if (auto v = p.value()) shapeName = *v;
        } else if (p.is("--out")) {
            if (auto v = p.value()) out = *v;
        } else if (p.is("--dtype")) {
            if (auto v = p.value()) dtypeName = *v;
        } else if (p.is("--seed")) {
            if (auto v = p.integer(0, std::numeric_limits<std::int64_t>::max()))
                seed = std::uint64_t(*v);
        } else if (p.is("--sparse")) {
            sparse = true;
        } else if (p.is("--force")) {
            force = true;
        } else {
            p.unknown();
        }
    }
    if (p.failed()) return usageError(p.errorMessage(), "generate");
    if (shapeName.empty() || out.empty())
        return usageError("generate needs --shape and --out", "generate");
    const auto presets = shapePresets();
    auto preset = std::find_if(presets.begin(), presets.end(),
                               [&](const ShapePreset& s) { return s.name == shapeName; });
    if (preset == presets.end())
        return usageError("unknown shape '" + shapeName + "' (llama-7b, llama-8b, llama-1b, tiny)",
                          "generate");
    ql::TensorType dtype;
    if (dtypeName == "bf16")
        dtype = ql::TensorType::BF16;
    else if (dtypeName == "f16")
        dtype = ql::TensorType::F16;
    else if (dtypeName == "f32")
        dtype = ql::TensorType::F32;
    else
        return usageError("--dtype is bf16, f16 or f32, not '" + dtypeName + "'", "generate");

    const fs::path dir(out);
    std::error_code ec;
    if (fs::exists(dir, ec) && !fs::is_directory(dir, ec))
        return fail(out + " exists and is not a folder");
    fs::create_directories(dir, ec);
    if (ec) return fail(out + ": cannot create the folder: " + ec.message());
    const auto stale = existingModelFiles(dir);
    if (!stale.empty() && !force)
        return fail(out + " already holds a model (" + stale.front().filename().string() +
                    "); pass --force to replace it");
    for (const fs::path& f : stale) fs::remove(f, ec);

    const ql::HyperParams& hp = preset->hp;
    const std::uint64_t elementBytes = dtype == ql::TensorType::F32 ? 4 : 2;
    const std::vector<TensorPlan> plans = planTensors(hp, elementBytes);
    std::uint64_t totalBytes = 0;
    std::int64_t parameters = 0;
    for (const TensorPlan& t : plans) {
        totalBytes += t.bytes;
        parameters += std::int64_t(t.bytes / elementBytes);
    }
    const WeightGenerator gen(seed, plans);
    const bool single = !sparse && totalBytes <= kMaxShardBytes;

    ProgressLine progress;
    const auto start = std::chrono::steady_clock::now();
    ql::Status st;
    if (single) {
        std::vector<ql::SafetensorsTensorSpec> specs;
        for (const TensorPlan& t : plans) specs.push_back(t.spec);
        st = ql::writeSafetensorsStream(
            out, hp, specs, dtype,
            [&](std::size_t index, std::int64_t first, std::span<float> values) -> ql::Status {
                gen.fill(index, first, values);
                return {};
            },
            progress.callback());
    } else {
        st = writeShards(dir, hp, plans, dtype, sparse, gen, progress.callback());
    }
    progress.finish();
    if (!st) return fail(st.error().message);
    const std::size_t files = single ? 1 : planShards(plans).size();
    std::printf("wrote %s: %.*s shape, %zu tensors, %s parameters, %s %s in %zu file%s%s, %.2f s\n",
                out.c_str(), int(shapeName.size()), shapeName.data(), plans.size(),
                formatCount(parameters).c_str(), formatBytes(totalBytes).c_str(),
                std::string(ql::tensorTypeName(dtype)).c_str(), files, files == 1 ? "" : "s",
                sparse ? " (sparse: data left as holes)" : "", secondsSince(start));
    return kExitOk;
}

}  // namespace qlcli
