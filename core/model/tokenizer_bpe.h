// Byte-level BPE (GPT-2 family: Llama 3, Qwen2, SmolLM, StarCoder, ...).
//
// Vocabulary sources:
//  - GGUF metadata, tokenizer.ggml.model = "gpt2": tokenizer.ggml.tokens (byte-level unicode
//    strings, "Ġ" for space), .token_type, .merges ("left right" strings, rank = index),
//    .pre (names the pre-tokenizer regex set, as llama.cpp defines them), .bos_token_id /
//    .eos_token_id / ..., .add_bos_token (default false; true for the llama3 family, as in
//    llama.cpp).
//  - Hugging Face tokenizer.json: model {type "BPE", vocab {token: id}, merges ["a b"] or
//    [["a", "b"]], ignore_merges}, added_tokens [{id, content, special, lstrip, rstrip}],
//    pre_tokenizer (Sequence of Split / ByteLevel / Digits), post_processor (TemplateProcessing
//    gives BOS). Only byte-level models are handled; SentencePiece-style tokenizer.json
//    (Metaspace, byte_fallback) is refused as Unsupported.
#pragma once

#include <array>
#include <deque>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "model/metadata.h"
#include "model/tokenizer.h"
#include "model/unicode.h"

namespace ql {

// A pre-tokenizer: regex splits applied in order to every piece (Hugging Face's Sequence of
// Split pre-tokenizers), then GPT-2's byte-level mapping.
struct PreTokenizer {
    struct Step {
        std::shared_ptr<const text::Regex> regex;
        text::SplitBehavior behavior = text::SplitBehavior::Isolated;
        bool invert = false;
        bool addPrefixSpace =
            false;  // ByteLevel(add_prefix_space): prepend ' ' to each piece first
    };
    std::vector<Step> steps;

    // The regex set llama.cpp uses for a tokenizer.ggml.pre name; unknown names get "default",
    // as in llama.cpp. `ignoreMerges` / `addBos` receive that name's flags.
    static Result<PreTokenizer> forGgufName(std::string_view name, bool* ignoreMerges,
                                            bool* addBos);
    // The tokenizer.ggml.pre names forGgufName() knows.
    static std::vector<std::string> ggufNames();
    // Appends the pre-tokenized words of `text`; `storage` keeps pieces that needed a prefix space.
    void split(std::string_view text, std::vector<std::string_view>& words,
               std::deque<std::string>& storage) const;
};

class BpeTokenizer final : public Tokenizer {
public:
    struct Vocab {
        std::vector<std::string> tokens;  // byte-level unicode text; added tokens as plain text
        std::vector<TokenKind> kinds;
        std::vector<std::pair<std::string, std::string>> merges;  // in rank order
        std::vector<text::VerbatimToken> verbatim;                // matched before pre-tokenizing
        PreTokenizer pre;
        bool ignoreMerges = false;  // a word that is itself a token skips the merges
        TokenId bos = -1, eos = -1, unk = -1;
        bool addBos = false;
    };

    static Result<std::unique_ptr<BpeTokenizer>> create(Vocab vocab);
    static Result<std::unique_ptr<BpeTokenizer>> fromGguf(const Metadata& metadata);
    // `metadata` may supply tokenizer.ggml.bos_token_id / eos_token_id / add_bos_token; otherwise
    // they come from tokenizer_config.json beside the file, then from the post-processor.
    static Result<std::unique_ptr<BpeTokenizer>> fromHfJson(const std::string& path,
                                                            const Metadata& metadata);

    using Tokenizer::encode;
    std::vector<TokenId> encode(std::string_view text, bool addBos,
                                bool addEos = false) const override;
    std::string decode(std::span<const TokenId> ids) const override;
    std::string decodeToken(TokenId previous, TokenId id) const override;
    std::string piece(TokenId id) const override;
    TokenKind tokenKind(TokenId id) const override;

    std::int32_t vocabSize() const override { return static_cast<std::int32_t>(m_tokens.size()); }
    TokenId bos() const override { return m_bos; }
    TokenId eos() const override { return m_eos; }
    bool addBosByDefault() const override { return m_addBos; }
    const char* kindName() const override { return "byte-level BPE"; }

private:
    BpeTokenizer() = default;
    void encodeWord(std::string_view word, std::vector<TokenId>& out) const;

    struct Merge {
        std::int32_t rank;
        TokenId result;
    };
    static std::uint64_t pairKey(TokenId a, TokenId b)
    {
        return (static_cast<std::uint64_t>(static_cast<std::uint32_t>(a)) << 32) |
               static_cast<std::uint32_t>(b);
    }

    std::vector<std::string> m_tokens;  // as in the vocabulary
    std::vector<std::string> m_bytes;   // raw bytes each token stands for
    std::vector<TokenKind> m_kinds;
    text::StringToId m_byBytes;  // raw bytes -> id (normal tokens)
    std::unordered_map<std::uint64_t, Merge> m_merges;
    std::array<TokenId, 256> m_byteTokens{};
    text::VerbatimMatcher m_special;
    PreTokenizer m_pre;
    bool m_ignoreMerges = false;
    TokenId m_bos = -1, m_eos = -1, m_unk = -1;
    bool m_addBos = false;
};

}  // namespace ql
