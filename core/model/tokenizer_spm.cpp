// SentencePiece-style BPE: the text (with a dummy-prefix space) is split into UTF-8 characters,
// then the adjacent pair whose concatenation is a vocabulary piece with the highest score is
// merged, leftmost first on ties, until no pair is a piece; characters left outside the
// vocabulary fall back to <0xXX> byte tokens. Symbols form a linked list over the text and
// candidate pairs sit in a max-heap keyed by (score, leftmost position); a popped pair is stale
// when its left symbol has since grown, which its recorded byte length detects, so each merge
// costs O(log n). Spaces are kept as ' ' internally: "▁" in a GGUF vocabulary is mapped to ' '
// at load, which makes GGUF and llama2.c vocabularies (raw spaces) behave the same.
#include "model/tokenizer_spm.h"

#include <cstring>
#include <fstream>
#include <iterator>
#include <queue>

namespace ql {

namespace {

constexpr std::string_view kSpaceMark = "\xE2\x96\x81";  // U+2581 "▁"
constexpr std::string_view kUnknownSurface =
    " \xE2\x81\x87 ";  // " ⁇ ", as sentencepiece shows <unk>

std::string replaceAll(std::string_view s, std::string_view from, std::string_view to)
{
    std::string out;
    out.reserve(s.size());
    for (std::size_t pos = 0;;) {
        const std::size_t hit = s.find(from, pos);
        if (hit == std::string_view::npos) {
            out.append(s.substr(pos));
            return out;
        }
        out.append(s.substr(pos, hit - pos));
        out.append(to);
        pos = hit + from.size();
    }
}

// "<0xAB>" -> 0xAB, or -1.
int parseBytePiece(std::string_view s)
{
    if (s.size() != 6 || s.substr(0, 3) != "<0x" || s[5] != '>') return -1;
    int value = 0;
    for (char c : s.substr(3, 2)) {
        value <<= 4;
        if (c >= '0' && c <= '9')
            value |= c - '0';
        else if (c >= 'A' && c <= 'F')
            value |= c - 'A' + 10;
        else if (c >= 'a' && c <= 'f')
            value |= c - 'a' + 10;
        else
            return -1;
    }
    return value;
}

TokenKind tokenKindFromGguf(std::int64_t type)
{
    return type >= 1 && type <= 6 ? static_cast<TokenKind>(type) : TokenKind::Normal;
}

}  // namespace

Result<GgufVocab> readGgufVocab(const Metadata& metadata, TokenId defaultBos, TokenId defaultEos,
                                TokenId defaultUnk)
{
    GgufVocab vocab;
    const MetaValue* tokens = metadata.find("tokenizer.ggml.tokens");
    const MetaArray* tokenArray = tokens ? tokens->asArray() : nullptr;
    if (!tokenArray || tokenArray->values.empty())
        return makeError(ErrorCode::Format, "GGUF tokenizer: tokenizer.ggml.tokens is missing");
    const std::size_t n = tokenArray->values.size();
    if (n > static_cast<std::size_t>(INT32_MAX))
        return makeError(ErrorCode::Format, "GGUF tokenizer: vocabulary too large");
    vocab.tokens.reserve(n);
    for (std::size_t i = 0; i < n; ++i) {
        const std::string* s = tokenArray->values[i].asString();
        if (!s)
            return makeError(ErrorCode::Format, "GGUF tokenizer: tokenizer.ggml.tokens[" +
                                                    std::to_string(i) + "] is not a string");
        vocab.tokens.push_back(*s);
    }

    if (const MetaValue* v = metadata.find("tokenizer.ggml.scores")) {
        const MetaArray* a = v->asArray();
        if (!a || a->values.size() != n)
            return makeError(ErrorCode::Format,
                             "GGUF tokenizer: tokenizer.ggml.scores does not match the "
                             "vocabulary size " +
                                 std::to_string(n));
        vocab.scores.reserve(n);
        for (const MetaValue& x : a->values)
            vocab.scores.push_back(static_cast<float>(x.asDouble().value_or(0.0)));
    }

    vocab.kinds.assign(n, TokenKind::Normal);
    if (const MetaValue* v = metadata.find("tokenizer.ggml.token_type")) {
        const MetaArray* a = v->asArray();
        if (!a || a->values.size() != n)
            return makeError(ErrorCode::Format,
                             "GGUF tokenizer: tokenizer.ggml.token_type does not match the "
                             "vocabulary size " +
                                 std::to_string(n));
        for (std::size_t i = 0; i < n; ++i)
            vocab.kinds[i] = tokenKindFromGguf(a->values[i].asInt().value_or(1));
    }

    auto specialId = [&](const char* key, TokenId fallback) -> TokenId {
        const std::optional<std::int64_t> v = metadata.getInt(key);
        if (!v) return fallback;
        return *v >= 0 && *v < static_cast<std::int64_t>(n) ? static_cast<TokenId>(*v) : -1;
    };
    vocab.bos = specialId("tokenizer.ggml.bos_token_id", defaultBos);
    vocab.eos = specialId("tokenizer.ggml.eos_token_id", defaultEos);
    vocab.unk = specialId("tokenizer.ggml.unknown_token_id", defaultUnk);
    vocab.pad = specialId("tokenizer.ggml.padding_token_id", -1);
    auto flag = [&](const char* key) -> std::optional<bool> {
        if (auto v = metadata.getInt(key)) return *v != 0;
        return std::nullopt;
    };
    vocab.addBos = flag("tokenizer.ggml.add_bos_token");
    vocab.addEos = flag("tokenizer.ggml.add_eos_token");
    vocab.addSpacePrefix = flag("tokenizer.ggml.add_space_prefix");
    return vocab;
}

// --- construction ------------------------------------------------------------------------------

Result<std::unique_ptr<SpmTokenizer>> SpmTokenizer::create(std::vector<Piece> pieces,
                                                           const Options& options)
{
    if (pieces.empty()) return makeError(ErrorCode::Format, "SentencePiece vocabulary is empty");
    std::unique_ptr<SpmTokenizer> tok(new SpmTokenizer);
    const auto n = static_cast<TokenId>(pieces.size());
    tok->m_options = options;
    for (TokenId* id : {&tok->m_options.bos, &tok->m_options.eos, &tok->m_options.unk})
        if (*id >= n) *id = -1;
    tok->m_byteTokens.fill(-1);
    tok->m_surface.resize(pieces.size());
    std::vector<text::VerbatimToken> special;
    for (TokenId id = 0; id < n; ++id) {
        Piece& p = pieces[id];
        if (p.kind == TokenKind::Normal || p.kind == TokenKind::Byte) {
            // Byte pieces are recognised by name too: llama2.c files carry no token types.
            const int byte = parseBytePiece(p.text);
            if (byte >= 0) {
                p.kind = TokenKind::Byte;
                if (tok->m_byteTokens[byte] < 0) tok->m_byteTokens[byte] = id;
                tok->m_surface[id] = std::string(1, static_cast<char>(byte));
                continue;
            }
            if (p.kind == TokenKind::Byte) p.kind = TokenKind::Normal;
        }
        std::string surface = replaceAll(p.text, kSpaceMark, " ");
        switch (p.kind) {
            case TokenKind::Normal:
            case TokenKind::UserDefined:
                tok->m_lookup.emplace(surface, id);  // the first of duplicate pieces wins
                if (p.kind == TokenKind::UserDefined) special.push_back({p.text, id});
                break;
            case TokenKind::Control:
            case TokenKind::Unknown: special.push_back({p.text, id}); break;
            default: break;
        }
        tok->m_surface[id] = std::move(surface);
    }
    if (options.matchSpecialTokens) tok->m_special = text::VerbatimMatcher(std::move(special));
    tok->m_pieces = std::move(pieces);
    return tok;
}

Result<std::unique_ptr<SpmTokenizer>> SpmTokenizer::fromGguf(const Metadata& metadata)
{
    auto vocab = readGgufVocab(metadata, 1, 2, 0);  // llama.cpp's SentencePiece defaults
    if (!vocab) return vocab.error();
    GgufVocab& v = *vocab;
    std::vector<Piece> pieces(v.tokens.size());
    for (std::size_t i = 0; i < pieces.size(); ++i) {
        pieces[i].text = std::move(v.tokens[i]);
        pieces[i].score = v.scores.empty() ? 0.0f : v.scores[i];
        pieces[i].kind = v.kinds[i];
    }
    Options options;
    options.bos = v.bos;
    options.eos = v.eos;
    options.unk = v.unk;
    options.addBos = v.addBos.value_or(true);
    options.addSpacePrefix = v.addSpacePrefix.value_or(true);
    options.matchSpecialTokens = true;
    return create(std::move(pieces), options);
}

Result<std::unique_ptr<SpmTokenizer>> SpmTokenizer::fromLlama2c(const std::string& path,
                                                                std::int64_t vocabSize)
{
    std::ifstream in(path, std::ios::binary);
    if (!in) return makeError(ErrorCode::Io, "cannot open llama2.c tokenizer " + path);
    const std::string blob((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const auto fail = [&](const std::string& what) {
        return makeError(ErrorCode::Format, "llama2.c tokenizer " + path + ": " + what);
    };
    std::size_t off = 0;
    auto readI32 = [&](std::int32_t& v) {
        if (blob.size() - off < 4) return false;
        std::memcpy(&v, blob.data() + off, 4);
        off += 4;
        return true;
    };
    std::int32_t maxTokenLength = 0;
    if (!readI32(maxTokenLength) || maxTokenLength <= 0)
        return fail("missing or invalid max_token_length header");

    std::vector<Piece> pieces;
    if (vocabSize > 0) pieces.reserve(static_cast<std::size_t>(vocabSize));
    while (vocabSize > 0 ? static_cast<std::int64_t>(pieces.size()) < vocabSize
                         : off < blob.size()) {
        const std::string at = "token " + std::to_string(pieces.size());
        std::int32_t scoreBits = 0, length = 0;
        if (!readI32(scoreBits) || !readI32(length))
            return fail("truncated at " + at + " (expected " + std::to_string(vocabSize) +
                        " tokens)");
        if (length < 0 || length > maxTokenLength ||
            static_cast<std::size_t>(length) > blob.size() - off)
            return fail(at + " has invalid length " + std::to_string(length));
        Piece p;
        std::memcpy(&p.score, &scoreBits, 4);
        p.text.assign(blob.data() + off, static_cast<std::size_t>(length));
        off += static_cast<std::size_t>(length);
        pieces.push_back(std::move(p));
    }
    if (pieces.size() < 3) return fail("fewer than 3 tokens");
    // llama2.c's export: 0 = <unk>, 1 = BOS ("\n<s>\n"), 2 = EOS ("\n</s>\n").
    pieces[0].kind = TokenKind::Unknown;
    pieces[1].kind = TokenKind::Control;
    pieces[2].kind = TokenKind::Control;
    return create(std::move(pieces), Options{});
}

// --- encoding ----------------------------------------------------------------------------------

std::vector<TokenId> SpmTokenizer::encode(std::string_view text, bool addBos, bool addEos) const
{
    std::vector<TokenId> out;
    out.reserve(text.size() / 3 + 2);
    if (addBos && m_options.bos >= 0) out.push_back(m_options.bos);
    const std::vector<text::Fragment> fragments = m_special.partition(text);
    for (std::size_t i = 0; i < fragments.size(); ++i) {
        if (fragments[i].token >= 0) {
            out.push_back(fragments[i].token);
            continue;
        }
        // The dummy prefix belongs to the start of the text, as in sentencepiece.
        const bool atStart = fragments[i].text.data() == text.data();
        encodeText(fragments[i].text, m_options.addSpacePrefix && atStart, out);
    }
    if (addEos && m_options.eos >= 0) out.push_back(m_options.eos);
    return out;
}

void SpmTokenizer::encodeText(std::string_view input, bool spacePrefix,
                              std::vector<TokenId>& out) const
{
    if (input.empty()) return;
    std::string buffer;
    buffer.reserve(input.size() + 1);
    if (spacePrefix) buffer += ' ';
    buffer.append(input);
    const std::string_view text = buffer;

    struct Symbol {
        std::uint32_t start, length;  // length 0: merged into its left neighbour
        std::int32_t prev, next;
    };
    std::vector<Symbol> symbols;
    symbols.reserve(text.size());
    for (std::size_t pos = 0; pos < text.size();) {
        const auto len = static_cast<std::uint32_t>(text::utf8CharLength(text, pos));
        const auto index = static_cast<std::int32_t>(symbols.size());
        symbols.push_back({static_cast<std::uint32_t>(pos), len, index - 1, index + 1});
        pos += len;
    }
    symbols.back().next = -1;

    struct Candidate {
        float score;
        std::int32_t left;
        std::uint32_t length;  // bytes of left + right when queued
        bool operator<(const Candidate& o) const
        {
            return score != o.score ? score < o.score : left > o.left;  // max score, leftmost
        }
    };
    std::priority_queue<Candidate> queue;
    auto consider = [&](std::int32_t left, std::int32_t right) {
        if (left < 0 || right < 0) return;
        const std::uint32_t length = symbols[left].length + symbols[right].length;
        const auto it = m_lookup.find(text.substr(symbols[left].start, length));
        if (it == m_lookup.end()) return;
        queue.push({m_pieces[it->second].score, left, length});
    };
    for (std::size_t i = 1; i < symbols.size(); ++i)
        consider(static_cast<std::int32_t>(i - 1), static_cast<std::int32_t>(i));

    while (!queue.empty()) {
        const Candidate c = queue.top();
        queue.pop();
        Symbol& left = symbols[c.left];
        if (left.length == 0 || left.next < 0) continue;
        Symbol& right = symbols[left.next];
        if (left.length + right.length != c.length) continue;  // stale: a side has changed
        left.length = c.length;
        right.length = 0;
        left.next = right.next;
        if (left.next >= 0) symbols[left.next].prev = c.left;
        consider(left.prev, c.left);
        consider(c.left, left.next);
    }

    for (std::int32_t i = 0; i >= 0; i = symbols[i].next) {
        const std::string_view s = text.substr(symbols[i].start, symbols[i].length);
        if (const auto it = m_lookup.find(s); it != m_lookup.end()) {
            out.push_back(it->second);
            continue;
        }
        for (char ch : s) {
            const TokenId b = m_byteTokens[static_cast<unsigned char>(ch)];
            if (b >= 0) {
                out.push_back(b);
            } else if (m_options.unk >= 0) {
                out.push_back(m_options.unk);
                break;  // one <unk> per character
            }
        }
    }
}

// --- decoding ----------------------------------------------------------------------------------

void SpmTokenizer::appendPiece(TokenId id, bool& atStart, std::string& out) const
{
    if (id < 0 || id >= vocabSize()) return;
    const TokenKind kind = m_pieces[id].kind;
    if (kind == TokenKind::Control || kind == TokenKind::Unused) return;
    std::string_view s =
        kind == TokenKind::Unknown ? kUnknownSurface : std::string_view(m_surface[id]);
    if (atStart && m_options.addSpacePrefix && !s.empty() && s.front() == ' ') s.remove_prefix(1);
    atStart = false;
    out.append(s);
}

std::string SpmTokenizer::decode(std::span<const TokenId> ids) const
{
    std::string out;
    bool atStart = true;
    for (TokenId id : ids) appendPiece(id, atStart, out);
    return out;
}

std::string SpmTokenizer::decodeToken(TokenId previous, TokenId id) const
{
    std::string out;
    bool atStart = previous < 0 || previous == m_options.bos;
    appendPiece(id, atStart, out);
    return out;
}

std::string SpmTokenizer::piece(TokenId id) const
{
    return id >= 0 && id < vocabSize() ? m_pieces[id].text : std::string();
}

TokenKind SpmTokenizer::tokenKind(TokenId id) const
{
    return id >= 0 && id < vocabSize() ? m_pieces[id].kind : TokenKind::Unused;
}

}  // namespace ql
