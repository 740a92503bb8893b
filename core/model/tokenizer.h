// Tokenizers built from a Model's TokenizerSource: SentencePiece-style BPE with scores (GGUF
// tokenizer.ggml.model = "llama", llama2.c tokenizer.bin) with byte fallback, and byte-level BPE
// (GGUF "gpt2" with merges, Hugging Face tokenizer.json) with pre-tokenization and special tokens.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "model/model.h"
#include "util/result.h"

namespace ql {

using TokenId = std::int32_t;

// Token types, numbered as GGUF's tokenizer.ggml.token_type.
enum class TokenKind : std::uint8_t {
    Normal = 1,
    Unknown = 2,
    Control = 3,      // BOS, EOS, chat markers: matched verbatim in text, skipped by decode()
    UserDefined = 4,  // matched verbatim in text, decoded as their text
    Unused = 5,
    Byte = 6,  // <0xXX> byte-fallback pieces
};

class Tokenizer {
public:
    virtual ~Tokenizer() = default;

    static Result<std::unique_ptr<Tokenizer>> create(const Model& model);

    // addBos/addEos default to the model's metadata (tokenizer.ggml.add_bos_token etc.).
    virtual std::vector<TokenId> encode(std::string_view text, bool addBos,
                                        bool addEos = false) const = 0;
    std::vector<TokenId> encode(std::string_view text) const
    {
        return encode(text, addBosByDefault());
    }
    // Decode a sequence; special tokens (BOS/EOS) are skipped.
    virtual std::string decode(std::span<const TokenId> ids) const = 0;
    // Text of one token as it continues after `previous` (SentencePiece strips the leading space
    // after BOS), for streaming generation.
    virtual std::string decodeToken(TokenId previous, TokenId id) const = 0;
    // The raw vocabulary piece (for display).
    virtual std::string piece(TokenId id) const = 0;
    virtual TokenKind tokenKind(TokenId id) const { return TokenKind::Normal; }

    virtual std::int32_t vocabSize() const = 0;
    virtual TokenId bos() const = 0;  // -1 when the model has none
    virtual TokenId eos() const = 0;
    virtual bool addBosByDefault() const = 0;
    virtual const char* kindName() const = 0;  // "SentencePiece BPE", "byte-level BPE"
};

}  // namespace ql
