// Text helpers shared by the tokenizers: UTF-8 stepping, GPT-2's byte <-> unicode table, a
// PCRE2-backed regex splitter for pre-tokenization, and the verbatim special-token partition.
// Unicode classes (\p{L}, \p{N}, \s) come from PCRE2 with UTF + UCP rather than our own tables.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "util/result.h"

namespace ql::text {

// Bytes in the UTF-8 sequence that starts with `lead`; 1 for a continuation or invalid byte, so
// that stepping through malformed text always advances.
int utf8SequenceLength(unsigned char lead);
// Length of the character at text[pos] (clamped to the end of text).
std::size_t utf8CharLength(std::string_view text, std::size_t pos);
void appendUtf8(std::string& out, char32_t codepoint);
// Decodes one character at text[pos]; returns U+FFFD for malformed input. `length` receives the
// bytes consumed.
char32_t decodeUtf8(std::string_view text, std::size_t pos, std::size_t* length);

// std::string keys looked up by std::string_view without building a temporary string.
struct StringHash {
    using is_transparent = void;
    std::size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
using StringToId = std::unordered_map<std::string, std::int32_t, StringHash, std::equal_to<>>;

// GPT-2's reversible byte <-> printable-unicode map used by byte-level BPE vocabularies
// (space -> "Ġ", newline -> "Ċ", ...).
const std::string& byteToUnicode(std::uint8_t byte);
// The byte a vocabulary character stands for, or -1 when it is not one of the 256.
int unicodeToByte(char32_t codepoint);
// A byte-level vocabulary string back to raw bytes; false when it holds a character outside the
// table (then `out` holds the UTF-8 of the string unchanged).
bool byteLevelDecode(std::string_view unicodeText, std::string& out);

// How a regex split treats what the pattern matched (Hugging Face's SplitDelimiterBehavior).
enum class SplitBehavior { Isolated, Removed, MergedWithPrevious, MergedWithNext, Contiguous };

// A compiled PCRE2 pattern (UTF + UCP, JIT when available). Thread-safe: matching state is per
// call. Invalid UTF-8 in the subject is tolerated (it is never part of a match).
class Regex {
public:
    ~Regex();
    Regex(const Regex&) = delete;
    Regex& operator=(const Regex&) = delete;

    static Result<std::shared_ptr<const Regex>> compile(std::string_view pattern,
                                                        bool literal = false);

    // Splits `text` into pieces per `behavior`, appending views into `text` to `out`. Empty
    // pieces are dropped. `invert` swaps the roles of matches and the text between them.
    void split(std::string_view text, SplitBehavior behavior, bool invert,
               std::vector<std::string_view>& out) const;

    const std::string& pattern() const { return m_pattern; }

private:
    Regex() = default;
    struct Impl;
    std::string m_pattern;
    Impl* m_impl = nullptr;
};

// A token matched verbatim in the input before any pre-tokenization (special / added tokens).
struct VerbatimToken {
    std::string text;
    std::int32_t id = -1;
    bool lstrip = false;  // swallow whitespace on its left (Hugging Face AddedToken.lstrip)
    bool rstrip = false;  // ... and on its right
};

// One piece of input after the special-token partition: either raw text or a token id.
struct Fragment {
    std::string_view text;  // empty when this is a token
    std::int32_t token = -1;
};

// Leftmost-longest verbatim matching of a set of tokens.
class VerbatimMatcher {
public:
    VerbatimMatcher() = default;
    explicit VerbatimMatcher(std::vector<VerbatimToken> tokens);
    bool empty() const { return m_tokens.empty(); }
    std::vector<Fragment> partition(std::string_view text) const;

private:
    std::vector<VerbatimToken> m_tokens;    // sorted by first byte, then longest first
    std::vector<std::int32_t> m_firstByte;  // [256 + 1] offsets into m_tokens per first byte
};

}  // namespace ql::text
