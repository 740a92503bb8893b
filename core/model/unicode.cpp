// Text helpers for the tokenizers. Regexes are PCRE2 (8-bit, UTF + UCP so \p{L}, \p{N} and \s
// follow Unicode, JIT-compiled when the library supports it); a match-data block is kept per
// thread so splitting allocates nothing per call. The special-token matcher buckets tokens by
// first byte and tries the longest first, giving leftmost-longest matches in one pass.
#include "model/unicode.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>
#include <array>

namespace ql::text {

int utf8SequenceLength(unsigned char lead)
{
    if (lead < 0x80) return 1;
    if ((lead & 0xE0) == 0xC0) return 2;
    if ((lead & 0xF0) == 0xE0) return 3;
    if ((lead & 0xF8) == 0xF0) return 4;
    return 1;
}

std::size_t utf8CharLength(std::string_view text, std::size_t pos)
{
    const std::size_t n =
        static_cast<std::size_t>(utf8SequenceLength(static_cast<unsigned char>(text[pos])));
    return std::min(n, text.size() - pos);
}

void appendUtf8(std::string& out, char32_t cp)
{
    if (cp < 0x80) {
        out += static_cast<char>(cp);
    } else if (cp < 0x800) {
        out += static_cast<char>(0xC0 | (cp >> 6));
        out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        out += static_cast<char>(0xE0 | (cp >> 12));
        out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
        out += static_cast<char>(0xF0 | (cp >> 18));
        out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
        out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        out += static_cast<char>(0x80 | (cp & 0x3F));
    }
}

char32_t decodeUtf8(std::string_view text, std::size_t pos, std::size_t* length)
{
    const auto lead = static_cast<unsigned char>(text[pos]);
    const int n = utf8SequenceLength(lead);
    if (n == 1 || pos + n > text.size()) {
        *length = 1;
        return lead < 0x80 ? lead : 0xFFFD;
    }
    char32_t cp = lead & (0x7F >> n);
    for (int i = 1; i < n; ++i) {
        const auto c = static_cast<unsigned char>(text[pos + i]);
        if ((c & 0xC0) != 0x80) {
            *length = 1;
            return 0xFFFD;
        }
        cp = (cp << 6) | (c & 0x3F);
    }
    *length = static_cast<std::size_t>(n);
    return cp;
}

namespace {

// GPT-2 keeps the printable bytes ('!'..'~', '¡'..'¬', '®'..'ÿ') as themselves and maps the other
// 68 bytes, in order, to U+0100 upwards.
bool isKeptByte(int b)
{
    return (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174;
}

struct ByteTables {
    std::array<std::string, 256> toUnicode;
    std::array<std::int16_t, 256 + 68> toByte{};

    ByteTables()
    {
        toByte.fill(-1);
        int next = 256;
        for (int b = 0; b < 256; ++b) {
            const char32_t cp = isKeptByte(b) ? static_cast<char32_t>(b) : next++;
            appendUtf8(toUnicode[b], cp);
            toByte[cp] = static_cast<std::int16_t>(b);
        }
    }
};

const ByteTables& byteTables()
{
    static const ByteTables tables;
    return tables;
}

}  // namespace

const std::string& byteToUnicode(std::uint8_t byte)
{
    return byteTables().toUnicode[byte];
}

int unicodeToByte(char32_t cp)
{
    const auto& t = byteTables().toByte;
    return cp < t.size() ? t[cp] : -1;
}

bool byteLevelDecode(std::string_view unicodeText, std::string& out)
{
    out.clear();
    for (std::size_t pos = 0; pos < unicodeText.size();) {
        std::size_t len = 0;
        const int b = unicodeToByte(decodeUtf8(unicodeText, pos, &len));
        if (b < 0) {
            out.assign(unicodeText);
            return false;
        }
        out += static_cast<char>(b);
        pos += len;
    }
    return true;
}

// --- Regex -------------------------------------------------------------------------------------

struct Regex::Impl {
    pcre2_code* code = nullptr;
};

namespace {

struct MatchData {
    pcre2_match_data* data = pcre2_match_data_create(1, nullptr);
    ~MatchData() { pcre2_match_data_free(data); }
};

}  // namespace

Regex::~Regex()
{
    if (m_impl) pcre2_code_free(m_impl->code);
    delete m_impl;
}

Result<std::shared_ptr<const Regex>> Regex::compile(std::string_view pattern, bool literal)
{
    // PCRE2_LITERAL may not be combined with UCP; a literal needs no character classes anyway.
    std::uint32_t options = PCRE2_UTF | PCRE2_MATCH_INVALID_UTF;
    options |= literal ? PCRE2_LITERAL : PCRE2_UCP;
    int errorCode = 0;
    PCRE2_SIZE errorOffset = 0;
    pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                                     options, &errorCode, &errorOffset, nullptr);
    if (!code) {
        PCRE2_UCHAR message[256];
        pcre2_get_error_message(errorCode, message, sizeof message);
        return makeError(ErrorCode::Format, "invalid pre-tokenizer regex at offset " +
                                                std::to_string(errorOffset) + ": " +
                                                reinterpret_cast<const char*>(message) + " in \"" +
                                                std::string(pattern) + "\"");
    }
    pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);  // falls back to the interpreter on failure
    std::shared_ptr<Regex> regex(new Regex);
    regex->m_pattern.assign(pattern);
    regex->m_impl = new Impl{code};
    return std::shared_ptr<const Regex>(std::move(regex));
}

void Regex::split(std::string_view text, SplitBehavior behavior, bool invert,
                  std::vector<std::string_view>& out) const
{
    if (text.empty()) return;
    thread_local MatchData match;
    const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());

    // Spans covering the text in order, each flagged as a match or not.
    struct Span {
        std::size_t begin, end;
        bool isMatch;
    };
    std::vector<Span> spans;
    std::size_t last = 0, pos = 0;
    while (pos < text.size()) {
        int rc = pcre2_match(m_impl->code, subject, text.size(), pos, 0, match.data, nullptr);
        if (rc < 0 && rc != PCRE2_ERROR_NOMATCH)  // JIT stack exhausted: the interpreter uses heap
            rc = pcre2_match(m_impl->code, subject, text.size(), pos, PCRE2_NO_JIT, match.data,
                             nullptr);
        if (rc < 0) break;  // no further match (a resource error leaves the rest unsplit)
        const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(match.data);
        const std::size_t begin = ov[0], end = ov[1];
        if (end <= begin) {  // an empty match splits nothing; step over one character
            if (begin >= text.size()) break;
            pos = begin + utf8CharLength(text, begin);
            continue;
        }
        if (begin > last) spans.push_back({last, begin, false});
        spans.push_back({begin, end, true});
        last = pos = end;
    }
    if (last < text.size()) spans.push_back({last, text.size(), false});
    if (invert)
        for (Span& s : spans) s.isMatch = !s.isMatch;

    auto view = [&](std::size_t b, std::size_t e) { return text.substr(b, e - b); };
    switch (behavior) {
        case SplitBehavior::Isolated:
            for (const Span& s : spans) out.push_back(view(s.begin, s.end));
            break;
        case SplitBehavior::Removed:
            for (const Span& s : spans)
                if (!s.isMatch) out.push_back(view(s.begin, s.end));
            break;
        case SplitBehavior::MergedWithPrevious: {
            // A match joins the piece before it unless that piece was a match too.
            bool previousMatch = true;
            for (const Span& s : spans) {
                if (s.isMatch && !previousMatch)
                    out.back() =
                        view(static_cast<std::size_t>(out.back().data() - text.data()), s.end);
                else
                    out.push_back(view(s.begin, s.end));
                previousMatch = s.isMatch;
            }
            break;
        }
        case SplitBehavior::MergedWithNext: {
            std::size_t pending = std::string_view::npos;
            for (const Span& s : spans) {
                if (s.isMatch) {
                    if (pending != std::string_view::npos) out.push_back(view(pending, s.begin));
                    pending = s.begin;
                } else {
                    out.push_back(
                        view(pending != std::string_view::npos ? pending : s.begin, s.end));
                    pending = std::string_view::npos;
                }
            }
            if (pending != std::string_view::npos) out.push_back(view(pending, text.size()));
            break;
        }
        case SplitBehavior::Contiguous: {
            bool previousMatch = false;
            for (const Span& s : spans) {
                if (s.isMatch && previousMatch)
                    out.back() =
                        view(static_cast<std::size_t>(out.back().data() - text.data()), s.end);
                else
                    out.push_back(view(s.begin, s.end));
                previousMatch = s.isMatch;
            }
            break;
        }
    }
}

// --- VerbatimMatcher ---------------------------------------------------------------------------

VerbatimMatcher::VerbatimMatcher(std::vector<VerbatimToken> tokens) : m_tokens(std::move(tokens))
{
    std::erase_if(m_tokens, [](const VerbatimToken& t) { return t.text.empty(); });
    std::stable_sort(m_tokens.begin(), m_tokens.end(), [](const auto& a, const auto& b) {
        const auto fa = static_cast<unsigned char>(a.text[0]);
        const auto fb = static_cast<unsigned char>(b.text[0]);
        return fa != fb ? fa < fb : a.text.size() > b.text.size();
    });
    m_firstByte.assign(257, 0);
    for (const VerbatimToken& t : m_tokens)
        ++m_firstByte[static_cast<unsigned char>(t.text[0]) + 1];
    for (int i = 0; i < 256; ++i) m_firstByte[i + 1] += m_firstByte[i];
}

namespace {
bool isSpace(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}
}  // namespace

std::vector<Fragment> VerbatimMatcher::partition(std::string_view text) const
{
    std::vector<Fragment> out;
    if (m_tokens.empty()) {
        if (!text.empty()) out.push_back({text, -1});
        return out;
    }
    std::size_t textStart = 0, i = 0;
    while (i < text.size()) {
        const auto b = static_cast<unsigned char>(text[i]);
        const VerbatimToken* hit = nullptr;
        for (std::int32_t k = m_firstByte[b]; k < m_firstByte[b + 1]; ++k) {
            const VerbatimToken& t = m_tokens[k];
            if (text.compare(i, t.text.size(), t.text) == 0) {
                hit = &t;
                break;
            }
        }
        if (!hit) {
            ++i;
            continue;
        }
        std::size_t leftEnd = i;
        if (hit->lstrip)
            while (leftEnd > textStart && isSpace(text[leftEnd - 1])) --leftEnd;
        if (leftEnd > textStart) out.push_back({text.substr(textStart, leftEnd - textStart), -1});
        out.push_back({{}, hit->id});
        i += hit->text.size();
        if (hit->rstrip)
            while (i < text.size() && isSpace(text[i])) ++i;
        textStart = i;
    }
    if (textStart < text.size()) out.push_back({text.substr(textStart), -1});
    return out;
}

}  // namespace ql::text
