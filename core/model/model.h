// The canonical model description. Whatever the source (GGUF, a Hugging Face safetensors
// folder, a llama2.c checkpoint), loading produces one Model: hyper-parameters, metadata in
// GGUF vocabulary, and the tensors mapped to roles, each pointing into a memory-mapped file.
//
// Tensor names are canonical GGUF names ("blk.3.attn_q.weight", "token_embd.weight"); the name in
// the source file is kept in `sourceName`. Shapes are row-major, outermost first, as in PyTorch:
// a linear layer's weight is {out_features, in_features} (GGUF stores the reverse, ne[0]
// innermost).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "io/mapped_file.h"
#include "model/metadata.h"
#include "model/tensor_type.h"

namespace ql {

enum class ModelFormat { Gguf, Safetensors, Llama2c };
const char* modelFormatName(ModelFormat format);

enum class TensorRole {
    TokenEmbd,
    OutputNorm,
    Output,
    AttnNorm,
    AttnQ,
    AttnK,
    AttnV,
    AttnOutput,
    AttnQBias,
    AttnKBias,
    AttnVBias,
    FfnNorm,
    FfnGate,
    FfnUp,
    FfnDown,
    RopeFreqs,
    Other,
};
const char* tensorRoleName(TensorRole role);  // "attn_q", "ffn_down", ...
bool isLinearWeight(TensorRole role);         // 2-D matrices a quantizer acts on

struct TensorInfo {
    std::string name;        // canonical GGUF name
    std::string sourceName;  // name inside the source file
    TensorRole role = TensorRole::Other;
    int block = -1;                   // transformer block index, -1 outside the blocks
    std::vector<std::int64_t> shape;  // row-major, outermost first
    TensorType type = TensorType::F32;
    int fileIndex = 0;         // index into Model::files
    std::uint64_t offset = 0;  // absolute byte offset of the data in that file
    std::uint64_t bytes = 0;   // stored bytes

    std::int64_t elementCount() const;
    std::int64_t rows() const;  // product of all but the last dimension (1 for 1-D)
    std::int64_t cols() const;  // last dimension
};

struct RopeScaling {
    std::string type;  // "", "linear", "yarn", "llama3", "dynamic"
    double factor = 1.0;
    std::int64_t originalContext = 0;
    double lowFreqFactor = 1.0;
    double highFreqFactor = 4.0;
};

struct HyperParams {
    std::string architecture;  // "llama", "mistral", "qwen2", ...
    std::int64_t blockCount = 0;
    std::int64_t embeddingDim = 0;
    std::int64_t ffnDim = 0;
    std::int64_t headCount = 0;
    std::int64_t headCountKv = 0;
    std::int64_t headDim = 0;
    std::int64_t vocabSize = 0;
    std::int64_t contextLength = 0;
    double rmsNormEps = 1e-5;
    double ropeTheta = 10000.0;
    RopeScaling ropeScaling;
    bool tiedEmbeddings = false;  // no separate output.weight: the head reuses token_embd
    bool attentionBias = false;   // q/k/v biases (Qwen2)
};

// Where the tokenizer lives; issue 3 builds tokenizers from it.
struct TokenizerSource {
    enum class Kind { None, GgufMetadata, HfTokenizerJson, Llama2cBin } kind = Kind::None;
    std::string path;  // tokenizer.json or tokenizer.bin; empty for GGUF (it is in metadata)
};

struct Model {
    ModelFormat format = ModelFormat::Gguf;
    std::string path;  // file or folder that was opened
    HyperParams hparams;
    Metadata metadata;
    std::vector<TensorInfo> tensors;
    TokenizerSource tokenizer;
    std::vector<std::shared_ptr<MappedFile>> files;
    std::vector<std::string> warnings;  // non-fatal findings while loading

    const TensorInfo* find(const std::string& name) const;
    const TensorInfo* find(TensorRole role, int block = -1) const;
    std::uint64_t totalBytes() const;
    std::int64_t totalParameters() const;
    // Raw stored bytes of a tensor (bounds were checked at load).
    std::span<const std::uint8_t> data(const TensorInfo& tensor) const;
};

}  // namespace ql
