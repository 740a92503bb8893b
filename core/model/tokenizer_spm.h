// SentencePiece-style BPE with scores (Llama 1/2, TinyLlama, llama2.c models).
//
// Vocabulary sources:
//  - GGUF metadata, tokenizer.ggml.model = "llama": tokenizer.ggml.tokens (strings, "▁" for
//    space), .scores (f32), .token_type (i32: 1 normal, 2 unknown, 3 control, 4 user-defined,
//    5 unused, 6 byte), .bos_token_id / .eos_token_id / .unknown_token_id / .padding_token_id
//    (u32; 0xFFFFFFFF or out of range = none), .add_bos_token (default true), .add_space_prefix
//    (default true).
//  - llama2.c tokenizer.bin: int32 max_token_length, then for each of vocab_size tokens:
//    float32 score, int32 byte length, the bytes (spaces stored raw, not as "▁"). Ids 0/1/2 are
//    <unk>/BOS/EOS, "<0xXX>" pieces are byte tokens. The vocabulary size is not stored: it comes
//    from the checkpoint header (read to the end of the file when unknown).
#pragma once

#include <array>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "model/metadata.h"
#include "model/tokenizer.h"
#include "model/unicode.h"

namespace ql {

// The tokenizer.ggml.* fields both tokenizer kinds read from GGUF metadata.
struct GgufVocab {
    std::vector<std::string> tokens;
    std::vector<float> scores;  // empty when the file has none
    std::vector<TokenKind> kinds;
    TokenId bos = -1, eos = -1, unk = -1, pad = -1;  // -1: none
    std::optional<bool> addBos, addEos, addSpacePrefix;
};
// Special ids absent from the metadata take the given defaults; ids present but out of range
// (0xFFFFFFFF marks "none") become -1.
Result<GgufVocab> readGgufVocab(const Metadata& metadata, TokenId defaultBos, TokenId defaultEos,
                                TokenId defaultUnk);

class SpmTokenizer final : public Tokenizer {
public:
    struct Piece {
        std::string text;  // as in the vocabulary ("▁" or ' ' for a space)
        float score = 0.0f;
        TokenKind kind = TokenKind::Normal;
    };
    struct Options {
        TokenId bos = 1, eos = 2, unk = 0;
        bool addBos = true;
        bool addSpacePrefix = true;
        bool matchSpecialTokens = false;  // control / user-defined pieces matched verbatim in text
    };

    static Result<std::unique_ptr<SpmTokenizer>> create(std::vector<Piece> pieces,
                                                        const Options& options);
    static Result<std::unique_ptr<SpmTokenizer>> fromGguf(const Metadata& metadata);
    static Result<std::unique_ptr<SpmTokenizer>> fromLlama2c(const std::string& path,
                                                             std::int64_t vocabSize);

    using Tokenizer::encode;
    std::vector<TokenId> encode(std::string_view text, bool addBos,
                                bool addEos = false) const override;
    std::string decode(std::span<const TokenId> ids) const override;
    std::string decodeToken(TokenId previous, TokenId id) const override;
    std::string piece(TokenId id) const override;
    TokenKind tokenKind(TokenId id) const override;

    std::int32_t vocabSize() const override { return static_cast<std::int32_t>(m_pieces.size()); }
    TokenId bos() const override { return m_options.bos; }
    TokenId eos() const override { return m_options.eos; }
    bool addBosByDefault() const override { return m_options.addBos; }
    const char* kindName() const override { return "SentencePiece BPE"; }

private:
    SpmTokenizer() = default;
    void encodeText(std::string_view text, bool spacePrefix, std::vector<TokenId>& out) const;
    // Appends the text of `id`; `atStart` strips the dummy-prefix space of the first piece.
    void appendPiece(TokenId id, bool& atStart, std::string& out) const;

    std::vector<Piece> m_pieces;
    std::vector<std::string> m_surface;  // decoded text per id ("▁" -> ' ')
    text::StringToId m_lookup;           // surface text -> id, for normal / user-defined pieces
    std::array<TokenId, 256> m_byteTokens{};
    text::VerbatimMatcher m_special;
    Options m_options;
};

}  // namespace ql
