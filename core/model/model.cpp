#include "model/model.h"

namespace ql {

const char* modelFormatName(ModelFormat format)
{
    switch (format) {
        case ModelFormat::Gguf: return "GGUF";
        case ModelFormat::Safetensors: return "safetensors";
        case ModelFormat::Llama2c: return "llama2.c";
    }
    return "?";
}

const char* tensorRoleName(TensorRole role)
{
    switch (role) {
        case TensorRole::TokenEmbd: return "token_embd";
        case TensorRole::OutputNorm: return "output_norm";
        case TensorRole::Output: return "output";
        case TensorRole::AttnNorm: return "attn_norm";
        case TensorRole::AttnQ: return "attn_q";
        case TensorRole::AttnK: return "attn_k";
        case TensorRole::AttnV: return "attn_v";
        case TensorRole::AttnOutput: return "attn_output";
        case TensorRole::AttnQBias: return "attn_q.bias";
        case TensorRole::AttnKBias: return "attn_k.bias";
        case TensorRole::AttnVBias: return "attn_v.bias";
        case TensorRole::FfnNorm: return "ffn_norm";
        case TensorRole::FfnGate: return "ffn_gate";
        case TensorRole::FfnUp: return "ffn_up";
        case TensorRole::FfnDown: return "ffn_down";
        case TensorRole::RopeFreqs: return "rope_freqs";
        case TensorRole::Other: return "other";
    }
    return "?";
}

bool isLinearWeight(TensorRole role)
{
    switch (role) {
        case TensorRole::TokenEmbd:
        case TensorRole::Output:
        case TensorRole::AttnQ:
        case TensorRole::AttnK:
        case TensorRole::AttnV:
        case TensorRole::AttnOutput:
        case TensorRole::FfnGate:
        case TensorRole::FfnUp:
        case TensorRole::FfnDown: return true;
        default: return false;
    }
}

std::int64_t TensorInfo::elementCount() const
{
    std::int64_t n = 1;
    for (auto d : shape) n *= d;
    return n;
}

std::int64_t TensorInfo::cols() const
{
    return shape.empty() ? 1 : shape.back();
}

std::int64_t TensorInfo::rows() const
{
    std::int64_t n = 1;
    for (std::size_t i = 0; i + 1 < shape.size(); ++i) n *= shape[i];
    return n;
}

const TensorInfo* Model::find(const std::string& name) const
{
    for (const auto& t : tensors)
        if (t.name == name) return &t;
    return nullptr;
}

const TensorInfo* Model::find(TensorRole role, int block) const
{
    for (const auto& t : tensors)
        if (t.role == role && t.block == block) return &t;
    return nullptr;
}

std::uint64_t Model::totalBytes() const
{
    std::uint64_t n = 0;
    for (const auto& t : tensors) n += t.bytes;
    return n;
}

std::int64_t Model::totalParameters() const
{
    std::int64_t n = 0;
    for (const auto& t : tensors) n += t.elementCount();
    return n;
}

std::span<const std::uint8_t> Model::data(const TensorInfo& tensor) const
{
    if (tensor.fileIndex < 0 || static_cast<std::size_t>(tensor.fileIndex) >= files.size())
        return {};
    return files[tensor.fileIndex]->bytes(tensor.offset, tensor.bytes);
}

}  // namespace ql
