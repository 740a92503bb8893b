// Tokenizer::create picks the implementation from the model's TokenizerSource: GGUF metadata
// (tokenizer.ggml.model "llama" -> SentencePiece BPE, "gpt2" -> byte-level BPE), a llama2.c
// tokenizer.bin, or a Hugging Face tokenizer.json. The implementations live in tokenizer_spm.cpp
// and tokenizer_bpe.cpp.
#include "model/tokenizer.h"

#include "model/tokenizer_bpe.h"
#include "model/tokenizer_spm.h"

namespace ql {

namespace {

template <class T>
Result<std::unique_ptr<Tokenizer>> upcast(Result<std::unique_ptr<T>> r)
{
    if (!r) return r.error();
    return std::unique_ptr<Tokenizer>(std::move(*r));
}

Result<std::unique_ptr<Tokenizer>> fromGgufMetadata(const Metadata& metadata)
{
    const std::optional<std::string> kind = metadata.getString("tokenizer.ggml.model");
    if (!kind) return makeError(ErrorCode::Format, "model metadata has no tokenizer.ggml.model");
    if (*kind == "llama") return upcast(SpmTokenizer::fromGguf(metadata));
    if (*kind == "gpt2") return upcast(BpeTokenizer::fromGguf(metadata));
    return makeError(ErrorCode::Unsupported,
                     "tokenizer type \"" + *kind + "\" is not supported (llama and gpt2 are)");
}

}  // namespace

Result<std::unique_ptr<Tokenizer>> Tokenizer::create(const Model& model)
{
    switch (model.tokenizer.kind) {
        case TokenizerSource::Kind::GgufMetadata: return fromGgufMetadata(model.metadata);
        case TokenizerSource::Kind::Llama2cBin:
            return upcast(SpmTokenizer::fromLlama2c(model.tokenizer.path, model.hparams.vocabSize));
        case TokenizerSource::Kind::HfTokenizerJson:
            return upcast(BpeTokenizer::fromHfJson(model.tokenizer.path, model.metadata));
        case TokenizerSource::Kind::None:
            if (model.metadata.find("tokenizer.ggml.model"))
                return fromGgufMetadata(model.metadata);
            break;
    }
    return makeError(ErrorCode::Unsupported, "the model " + model.path + " has no tokenizer");
}

}  // namespace ql
