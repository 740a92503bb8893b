// Byte-level BPE. Special / added tokens are cut out of the text verbatim first; each remaining
// fragment is pre-tokenized by PCRE2 regex splits into words, and each word is merged on raw
// bytes: the vocabulary is translated from GPT-2's byte-level unicode to raw bytes once at load,
// merges become a hash map (left id, right id) -> (rank, result id), and the text itself is never
// re-encoded. A word's merges run on a linked list of symbols with a min-heap keyed by
// (rank, position), so the lowest-ranked pair merges first, leftmost on ties, as in Hugging Face
// tokenizers. Words repeat a lot in real text, so each encode() call caches the ids per word.
#include "model/tokenizer_bpe.h"

#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <queue>

#include "model/tokenizer_spm.h"  // readGgufVocab

namespace ql {

namespace {

// GPT-2's pattern as Hugging Face's ByteLevel pre-tokenizer writes it.
constexpr const char* kGpt2Regex =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
// Llama 3's pattern with (?i:...) spelled out, as llama.cpp uses it.
constexpr const char* kLlama3Regex =
    R"((?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|)"
    R"(\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
// Qwen2: as Llama 3 but single digits.
constexpr const char* kQwen2Regex =
    R"((?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|)"
    R"(\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
// GPT-4o / Llama 4 (original tokenizer.json form; PCRE2 has the case classes).
constexpr const char* kGpt4oRegex =
    R"([^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+)"
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)?|)"
    R"([^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*)"
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)?|)"
    R"(\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr const char* kTekkenRegex =
    R"([^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|)"
    R"([^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|)"
    R"(\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr const char* kBloomRegex = R"( ?[^(\s|.,!?…。，、।۔،)]+)";

struct NamedPreTokenizer {
    std::vector<const char*> names;
    std::vector<const char*> regexes;
    bool ignoreMerges = false;
    bool addBos = false;
};

// tokenizer.ggml.pre names and the regex sets llama.cpp (src/llama-vocab.cpp) applies for them.
const std::vector<NamedPreTokenizer>& namedPreTokenizers()
{
    static const std::vector<NamedPreTokenizer> table = {
        {{"default"},
         {R"([\p{P}\$\+<=>\^~\|]+)",
          R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S))", R"(\p{N}+)",
          "[0-9][0-9][0-9]"}},
        {{"gpt2", "gpt-2", "phi-2", "jina-es", "jina-de", "gigachat", "jina-v2-es", "jina-v2-de",
          "a.x-4.0", "mellum", "jina-v1-en", "jina-v2-code", "roberta-bpe", "mpt", "olmo", "jais",
          "trillion", "granite-docling", "exaone4"},
         {kGpt2Regex}},
        {{"llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2"},
         {kLlama3Regex},
         true,
         true},
        {{"smaug-bpe", "dbrx", "chatglm-bpe", "glm4"}, {kLlama3Regex}},
        {{"qwen2", "deepseek-r1-qwen", "kormo", "stablelm2", "megrez", "hunyuan", "grok-2"},
         {kQwen2Regex}},
        {{"smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b"},
         {R"(\p{N})", kGpt2Regex}},
        {{"falcon"}, {R"([\p{P}\$\+<=>\^~\|`]+)", kGpt2Regex, "[0-9][0-9][0-9]"}},
        {{"deepseek-coder"},
         {"[\r\n]", R"(\s?\p{L}+)", R"(\s?\p{P}+)", "[一-龥ࠀ-一가-퟿]+", R"(\p{N})"}},
        {{"bloom", "poro-chat", "gpt3-finnish"}, {kBloomRegex}},
        {{"viking"}, {kBloomRegex, R"(\p{N})"}},
        {{"seed-coder"},
         {R"((?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|)"
          R"([^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+|\s+(?!\S)|\s+)"}},
        {{"gpt-4o", "llama4", "minimax-m2"}, {kGpt4oRegex}},
        {{"tekken"}, {kTekkenRegex}, true, true},
    };
    return table;
}

}  // namespace

std::vector<std::string> PreTokenizer::ggufNames()
{
    std::vector<std::string> names;
    for (const NamedPreTokenizer& entry : namedPreTokenizers())
        names.insert(names.end(), entry.names.begin(), entry.names.end());
    return names;
}

namespace {

// Names llama.cpp handles with custom code we do not reproduce: refuse rather than mis-split.
bool isUnsupportedPreName(std::string_view name)
{
    for (const char* n : {"deepseek-llm", "deepseek-v3", "hunyuan-dense", "chameleon", "kimi-k2",
                          "superbpe", "bailingmoe", "bailingmoe2", "llada-moe", "afmoe"})
        if (name == n) return true;
    return false;
}

Result<PreTokenizer::Step> regexStep(std::string_view pattern, bool literal = false)
{
    auto regex = text::Regex::compile(pattern, literal);
    if (!regex) return regex.error();
    PreTokenizer::Step step;
    step.regex = std::move(*regex);
    return step;
}

}  // namespace

// --- PreTokenizer ------------------------------------------------------------------------------

Result<PreTokenizer> PreTokenizer::forGgufName(std::string_view name, bool* ignoreMerges,
                                               bool* addBos)
{
    if (isUnsupportedPreName(name))
        return makeError(ErrorCode::Unsupported,
                         "pre-tokenizer \"" + std::string(name) + "\" is not supported");
    const auto& table = namedPreTokenizers();
    const NamedPreTokenizer* match = &table.front();  // unknown names: llama.cpp's "default"
    for (const NamedPreTokenizer& entry : table)
        for (const char* n : entry.names)
            if (name == n) match = &entry;
    PreTokenizer pre;
    for (const char* pattern : match->regexes) {
        auto step = regexStep(pattern);
        if (!step) return step.error();
        pre.steps.push_back(std::move(*step));
    }
    if (ignoreMerges) *ignoreMerges = match->ignoreMerges;
    if (addBos) *addBos = match->addBos;
    return pre;
}

void PreTokenizer::split(std::string_view text, std::vector<std::string_view>& words,
                         std::deque<std::string>& storage) const
{
    std::vector<std::string_view> pieces{text}, next;
    for (const Step& step : steps) {
        next.clear();
        for (std::string_view piece : pieces) {
            if (step.addPrefixSpace && (piece.empty() || piece.front() != ' ')) {
                storage.push_back(" " + std::string(piece));
                piece = storage.back();
            }
            if (step.regex)
                step.regex->split(piece, step.behavior, step.invert, next);
            else if (!piece.empty())
                next.push_back(piece);
        }
        pieces.swap(next);
    }
    words.insert(words.end(), pieces.begin(), pieces.end());
}

// --- construction ------------------------------------------------------------------------------

Result<std::unique_ptr<BpeTokenizer>> BpeTokenizer::create(Vocab vocab)
{
    const std::size_t n = vocab.tokens.size();
    if (n == 0) return makeError(ErrorCode::Format, "BPE vocabulary is empty");
    if (vocab.kinds.size() != n)
        return makeError(ErrorCode::InvalidArgument, "BPE vocabulary: token kinds size mismatch");
    std::unique_ptr<BpeTokenizer> tok(new BpeTokenizer);
    tok->m_bytes.resize(n);
    tok->m_byteTokens.fill(-1);

    text::StringToId byText;  // vocabulary text -> id, for the merges
    for (std::size_t i = 0; i < n; ++i) {
        const auto id = static_cast<TokenId>(i);
        const std::string& t = vocab.tokens[i];
        const TokenKind kind = vocab.kinds[i];
        if (kind == TokenKind::Control || kind == TokenKind::UserDefined) {
            tok->m_bytes[i] = t;  // added tokens are stored as plain text
            continue;
        }
        byText.emplace(t, id);
        text::byteLevelDecode(t, tok->m_bytes[i]);
        if (kind == TokenKind::Normal) tok->m_byBytes.emplace(tok->m_bytes[i], id);
    }
    for (int b = 0; b < 256; ++b) {
        const auto it = byText.find(text::byteToUnicode(static_cast<std::uint8_t>(b)));
        if (it != byText.end()) tok->m_byteTokens[b] = it->second;
    }

    tok->m_merges.reserve(vocab.merges.size());
    std::string joined;
    for (std::size_t rank = 0; rank < vocab.merges.size(); ++rank) {
        const auto& [left, right] = vocab.merges[rank];
        const auto a = byText.find(left), b = byText.find(right);
        joined = left;
        joined += right;
        const auto c = byText.find(joined);
        if (a == byText.end() || b == byText.end() || c == byText.end()) continue;
        tok->m_merges.emplace(pairKey(a->second, b->second),
                              Merge{static_cast<std::int32_t>(rank), c->second});
    }

    const auto valid = [n](TokenId id) { return id >= 0 && static_cast<std::size_t>(id) < n; };
    for (text::VerbatimToken& v : vocab.verbatim)
        if (!valid(v.id))
            return makeError(ErrorCode::Format, "added token \"" + v.text + "\" has id " +
                                                    std::to_string(v.id) +
                                                    " outside the vocabulary");
    tok->m_special = text::VerbatimMatcher(std::move(vocab.verbatim));
    tok->m_tokens = std::move(vocab.tokens);
    tok->m_kinds = std::move(vocab.kinds);
    tok->m_pre = std::move(vocab.pre);
    tok->m_ignoreMerges = vocab.ignoreMerges;
    tok->m_bos = valid(vocab.bos) ? vocab.bos : -1;
    tok->m_eos = valid(vocab.eos) ? vocab.eos : -1;
    // An "unknown" id that names a control token (SmolLM2: <|endoftext|>) would inject an
    // end-of-text marker mid-text; bytes the vocabulary cannot spell are dropped instead, as
    // Hugging Face tokenizers does without an unk token.
    tok->m_unk = valid(vocab.unk) && tok->m_kinds[vocab.unk] != TokenKind::Control ? vocab.unk : -1;
    tok->m_addBos = vocab.addBos && tok->m_bos >= 0;
    return tok;
}

Result<std::unique_ptr<BpeTokenizer>> BpeTokenizer::fromGguf(const Metadata& metadata)
{
    auto gguf = readGgufVocab(metadata, -1, -1, -1);
    if (!gguf) return gguf.error();
    Vocab vocab;
    vocab.tokens = std::move(gguf->tokens);
    vocab.kinds = std::move(gguf->kinds);

    const MetaValue* merges = metadata.find("tokenizer.ggml.merges");
    const MetaArray* mergeArray = merges ? merges->asArray() : nullptr;
    if (!mergeArray)
        return makeError(ErrorCode::Format, "GGUF tokenizer: tokenizer.ggml.merges is missing");
    vocab.merges.reserve(mergeArray->values.size());
    for (const MetaValue& m : mergeArray->values) {
        const std::string* s = m.asString();
        const std::size_t space = s ? s->find(' ', 1) : std::string::npos;
        if (space == std::string::npos)
            return makeError(ErrorCode::Format, "GGUF tokenizer: malformed merge \"" +
                                                    (s ? *s : std::string()) + "\"");
        vocab.merges.emplace_back(s->substr(0, space), s->substr(space + 1));
    }

    const std::string preName = metadata.getString("tokenizer.ggml.pre").value_or("default");
    bool addBosDefault = false;
    auto pre = PreTokenizer::forGgufName(preName, &vocab.ignoreMerges, &addBosDefault);
    if (!pre) return pre.error();
    vocab.pre = std::move(*pre);
    // Every step ends in the byte-level mapping, implicit in encodeWord().

    for (std::size_t i = 0; i < vocab.tokens.size(); ++i) {
        const TokenKind k = vocab.kinds[i];
        if (k == TokenKind::Control || k == TokenKind::UserDefined || k == TokenKind::Unknown)
            vocab.verbatim.push_back({vocab.tokens[i], static_cast<TokenId>(i)});
    }
    vocab.bos = gguf->bos;
    vocab.eos = gguf->eos;
    vocab.unk = gguf->unk;
    vocab.addBos = gguf->addBos.value_or(addBosDefault);
    return create(std::move(vocab));
}

namespace {

using nlohmann::json;

Result<text::SplitBehavior> parseBehavior(const std::string& s)
{
    if (s == "Isolated") return text::SplitBehavior::Isolated;
    if (s == "Removed") return text::SplitBehavior::Removed;
    if (s == "MergedWithPrevious") return text::SplitBehavior::MergedWithPrevious;
    if (s == "MergedWithNext") return text::SplitBehavior::MergedWithNext;
    if (s == "Contiguous") return text::SplitBehavior::Contiguous;
    return makeError(ErrorCode::Unsupported, "tokenizer.json: unknown split behavior " + s);
}

// Appends the steps of a pre_tokenizer node; `byteLevel` is set when a ByteLevel step is seen.
Status parsePreTokenizer(const json& node, PreTokenizer& pre, bool& byteLevel)
{
    if (node.is_null()) return {};
    const std::string type = node.value("type", "");
    if (byteLevel)
        return makeError(ErrorCode::Unsupported,
                         "tokenizer.json: pre-tokenizer " + type + " after ByteLevel");
    if (type == "Sequence") {
        for (const json& child : node.at("pretokenizers"))
            QL_TRY_STATUS(parsePreTokenizer(child, pre, byteLevel));
        return {};
    }
    if (type == "Split") {
        const json& pattern = node.at("pattern");
        const bool literal = pattern.contains("String");
        const std::string source = literal ? pattern.at("String").get<std::string>()
                                           : pattern.at("Regex").get<std::string>();
        auto step = regexStep(source, literal);
        if (!step) return step.error();
        auto behavior = parseBehavior(node.value("behavior", "Isolated"));
        if (!behavior) return behavior.error();
        step->behavior = *behavior;
        step->invert = node.value("invert", false);
        pre.steps.push_back(std::move(*step));
        return {};
    }
    if (type == "Digits") {
        auto step = regexStep(node.value("individual_digits", false) ? R"(\p{N})" : R"(\p{N}+)");
        if (!step) return step.error();
        pre.steps.push_back(std::move(*step));
        return {};
    }
    if (type == "ByteLevel") {
        PreTokenizer::Step step;
        if (node.value("use_regex", true)) {
            auto s = regexStep(kGpt2Regex);
            if (!s) return s.error();
            step = std::move(*s);
        }
        step.addPrefixSpace = node.value("add_prefix_space", true);
        pre.steps.push_back(std::move(step));
        byteLevel = true;
        return {};
    }
    return makeError(ErrorCode::Unsupported, "tokenizer.json: pre-tokenizer \"" + type +
                                                 "\" is not supported (byte-level BPE only)");
}

// BOS from a TemplateProcessing post-processor: the special token before the sequence "A".
void parsePostProcessor(const json& node, TokenId& bos)
{
    if (node.is_null()) return;
    const std::string type = node.value("type", "");
    if (type == "Sequence") {
        for (const json& child : node.value("processors", json::array()))
            parsePostProcessor(child, bos);
        return;
    }
    if (type != "TemplateProcessing") return;
    const json single = node.value("single", json::array());
    if (single.empty() || !single[0].contains("SpecialToken")) return;
    const std::string name = single[0]["SpecialToken"].value("id", "");
    const json specials = node.value("special_tokens", json::object());
    if (!specials.contains(name)) return;
    const json ids = specials[name].value("ids", json::array());
    if (!ids.empty() && ids[0].is_number_integer()) bos = ids[0].get<TokenId>();
}

// "bos_token" in tokenizer_config.json: a string or {"content": ...}.
std::string configTokenText(const json& config, const char* key)
{
    if (!config.contains(key)) return {};
    const json& v = config[key];
    if (v.is_string()) return v.get<std::string>();
    if (v.is_object() && v.contains("content") && v["content"].is_string())
        return v["content"].get<std::string>();
    return {};
}

}  // namespace

Result<std::unique_ptr<BpeTokenizer>> BpeTokenizer::fromHfJson(const std::string& path,
                                                               const Metadata& metadata)
{
    std::ifstream in(path, std::ios::binary);
    if (!in) return makeError(ErrorCode::Io, "cannot open " + path);
    json root;
    try {
        root = json::parse(in);
    } catch (const json::exception& e) {
        return makeError(ErrorCode::Format, path + ": invalid JSON: " + e.what());
    }
    Vocab vocab;
    bool byteLevel = false;
    TokenId templateBos = -1;
    std::string unkText;
    try {
        const json& model = root.at("model");
        const std::string type = model.value("type", "BPE");
        if (type != "BPE")
            return makeError(ErrorCode::Unsupported, path + ": tokenizer model \"" + type +
                                                         "\" is not supported (BPE only)");
        for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"})
            if (model.contains(key) && model[key].is_string() &&
                !model[key].get<std::string>().empty())
                return makeError(ErrorCode::Unsupported,
                                 path + ": BPE " + key + " is not supported");
        if (model.contains("unk_token") && model["unk_token"].is_string())
            unkText = model["unk_token"].get<std::string>();
        vocab.ignoreMerges = model.value("ignore_merges", false);

        // Ids may leave gaps; the vocabulary spans the largest id of vocab and added tokens.
        const json& entries = model.at("vocab");
        const json added = root.value("added_tokens", json::array());
        std::int64_t maxId = -1;
        for (const auto& [text, id] : entries.items())
            maxId = std::max<std::int64_t>(maxId, id.get<std::int64_t>());
        for (const json& a : added)
            maxId = std::max<std::int64_t>(maxId, a.at("id").get<std::int64_t>());
        // Real vocabularies are dense; a stray huge id must not allocate gigabytes.
        const auto entryCount = static_cast<std::int64_t>(entries.size() + added.size());
        if (maxId >= 2 * entryCount + 1024)
            return makeError(ErrorCode::Format, path + ": token id " + std::to_string(maxId) +
                                                    " is far beyond the " +
                                                    std::to_string(entryCount) + " entries");
        if (maxId < 0 || maxId >= INT32_MAX)
            return makeError(ErrorCode::Format, path + ": empty or oversized vocabulary");
        vocab.tokens.assign(static_cast<std::size_t>(maxId + 1), std::string());
        vocab.kinds.assign(vocab.tokens.size(), TokenKind::Unused);
        for (const auto& [text, id] : entries.items()) {
            const auto i = id.get<std::int64_t>();
            if (i < 0)
                return makeError(ErrorCode::Format, path + ": negative token id for " + text);
            vocab.tokens[i] = text;
            vocab.kinds[i] = TokenKind::Normal;
        }
        for (const json& a : added) {
            const auto i = a.at("id").get<std::int64_t>();
            if (i < 0) return makeError(ErrorCode::Format, path + ": negative added-token id");
            const std::string content = a.at("content").get<std::string>();
            vocab.tokens[i] = content;
            vocab.kinds[i] =
                a.value("special", false) ? TokenKind::Control : TokenKind::UserDefined;
            vocab.verbatim.push_back({content, static_cast<TokenId>(i), a.value("lstrip", false),
                                      a.value("rstrip", false)});
        }

        for (const json& m : model.value("merges", json::array())) {
            if (m.is_string()) {
                const std::string s = m.get<std::string>();
                const std::size_t space = s.find(' ', 1);
                if (space == std::string::npos)
                    return makeError(ErrorCode::Format, path + ": malformed merge \"" + s + "\"");
                vocab.merges.emplace_back(s.substr(0, space), s.substr(space + 1));
            } else if (m.is_array() && m.size() == 2) {
                vocab.merges.emplace_back(m[0].get<std::string>(), m[1].get<std::string>());
            } else {
                return makeError(ErrorCode::Format, path + ": malformed merge " + m.dump());
            }
        }

        const json normalizer = root.value("normalizer", json());
        // NFC is accepted without being applied: text is assumed to be NFC already.
        if (!normalizer.is_null() && normalizer.value("type", "") != "NFC" &&
            !(normalizer.value("type", "") == "Sequence" &&
              normalizer.value("normalizers", json::array()).empty()))
            return makeError(ErrorCode::Unsupported,
                             path + ": normalizer \"" + normalizer.value("type", "") +
                                 "\" is not supported (byte-level BPE only)");
        QL_TRY_STATUS(parsePreTokenizer(root.value("pre_tokenizer", json()), vocab.pre, byteLevel));
        const json decoder = root.value("decoder", json());
        if (!byteLevel && !decoder.is_null() && decoder.value("type", "") == "ByteLevel")
            byteLevel = true;  // ByteLevel decoder with a Split-only pre-tokenizer
        if (!byteLevel)
            return makeError(ErrorCode::Unsupported,
                             path +
                                 ": not a byte-level BPE tokenizer (no ByteLevel pre-tokenizer "
                                 "or decoder); SentencePiece-style tokenizer.json is not "
                                 "supported");
        parsePostProcessor(root.value("post_processor", json()), templateBos);
    } catch (const json::exception& e) {
        return makeError(ErrorCode::Format,
                         path + ": unexpected tokenizer.json layout: " + e.what());
    }

    // BOS / EOS: model metadata, then tokenizer_config.json, then the post-processor template.
    json config;
    const auto configPath = std::filesystem::path(path).parent_path() / "tokenizer_config.json";
    if (std::ifstream cin(configPath, std::ios::binary); cin) {
        try {
            config = json::parse(cin);
        } catch (const json::exception&) {
            config = json();  // a broken side file only loses the BOS/EOS hints
        }
    }
    const auto idOf = [&](const std::string& text) -> TokenId {
        if (text.empty()) return -1;
        for (std::size_t i = 0; i < vocab.tokens.size(); ++i)
            if (vocab.tokens[i] == text) return static_cast<TokenId>(i);
        return -1;
    };
    const auto n = static_cast<std::int64_t>(vocab.tokens.size());
    const auto metaId = [&](const char* key) -> std::optional<TokenId> {
        const auto v = metadata.getInt(key);
        if (!v) return std::nullopt;
        return *v >= 0 && *v < n ? static_cast<TokenId>(*v) : -1;
    };
    const bool haveConfig = config.is_object();
    vocab.bos = metaId("tokenizer.ggml.bos_token_id")
                    .value_or(haveConfig && config.contains("bos_token")
                                  ? idOf(configTokenText(config, "bos_token"))
                                  : templateBos);
    vocab.eos = metaId("tokenizer.ggml.eos_token_id")
                    .value_or(haveConfig ? idOf(configTokenText(config, "eos_token")) : -1);
    vocab.unk = idOf(unkText);
    if (const auto v = metadata.getInt("tokenizer.ggml.add_bos_token"))
        vocab.addBos = *v != 0;
    else if (haveConfig && config.contains("add_bos_token") && config["add_bos_token"].is_boolean())
        vocab.addBos = config["add_bos_token"].get<bool>();
    else
        vocab.addBos = templateBos >= 0;
    if (vocab.bos < 0 && vocab.addBos) vocab.bos = templateBos;
    return create(std::move(vocab));
}

// --- encoding ----------------------------------------------------------------------------------

std::vector<TokenId> BpeTokenizer::encode(std::string_view text, bool addBos, bool addEos) const
{
    std::vector<TokenId> out;
    out.reserve(text.size() / 3 + 2);
    if (addBos && m_bos >= 0) out.push_back(m_bos);

    // Per-call word cache: no locking, and bounded so huge inputs cannot grow it without limit.
    constexpr std::size_t kMaxCachedWords = 1 << 17;
    std::unordered_map<std::string, std::vector<TokenId>, text::StringHash, std::equal_to<>> cache;
    std::vector<std::string_view> words;
    std::deque<std::string> storage;
    std::vector<TokenId> ids;
    for (const text::Fragment& fragment : m_special.partition(text)) {
        if (fragment.token >= 0) {
            out.push_back(fragment.token);
            continue;
        }
        words.clear();
        m_pre.split(fragment.text, words, storage);
        for (std::string_view word : words) {
            if (const auto it = cache.find(word); it != cache.end()) {
                out.insert(out.end(), it->second.begin(), it->second.end());
                continue;
            }
            ids.clear();
            encodeWord(word, ids);
            out.insert(out.end(), ids.begin(), ids.end());
            if (cache.size() < kMaxCachedWords) cache.emplace(std::string(word), ids);
        }
    }
    if (addEos && m_eos >= 0) out.push_back(m_eos);
    return out;
}

void BpeTokenizer::encodeWord(std::string_view word, std::vector<TokenId>& out) const
{
    if (word.empty()) return;
    if (m_ignoreMerges || word.size() == 1) {
        if (const auto it = m_byBytes.find(word); it != m_byBytes.end()) {
            out.push_back(it->second);
            return;
        }
    }

    struct Symbol {
        TokenId id;
        std::int32_t prev, next;  // id -1: merged away
    };
    std::vector<Symbol> symbols;
    symbols.reserve(word.size());
    for (char ch : word) {
        TokenId id = m_byteTokens[static_cast<unsigned char>(ch)];
        if (id < 0) id = m_unk;
        if (id < 0) continue;  // a byte the vocabulary cannot spell, and no <unk>: dropped
        const auto index = static_cast<std::int32_t>(symbols.size());
        symbols.push_back({id, index - 1, index + 1});
    }
    if (symbols.empty()) return;
    symbols.back().next = -1;

    struct Candidate {
        std::int32_t rank, left;
        TokenId leftId, rightId, result;
        bool operator<(const Candidate& o) const  // min-heap on (rank, left)
        {
            return rank != o.rank ? rank > o.rank : left > o.left;
        }
    };
    std::priority_queue<Candidate> queue;
    auto consider = [&](std::int32_t left) {
        if (left < 0) return;
        const std::int32_t right = symbols[left].next;
        if (right < 0) return;
        const auto it = m_merges.find(pairKey(symbols[left].id, symbols[right].id));
        if (it == m_merges.end()) return;
        queue.push({it->second.rank, left, symbols[left].id, symbols[right].id, it->second.result});
    };
    for (std::int32_t i = 0; i + 1 < static_cast<std::int32_t>(symbols.size()); ++i) consider(i);

    while (!queue.empty()) {
        const Candidate c = queue.top();
        queue.pop();
        Symbol& left = symbols[c.left];
        if (left.id != c.leftId || left.next < 0) continue;
        Symbol& right = symbols[left.next];
        if (right.id != c.rightId) continue;  // stale
        left.id = c.result;
        right.id = -1;
        left.next = right.next;
        if (left.next >= 0) symbols[left.next].prev = c.left;
        consider(left.prev);
        consider(c.left);
    }
    for (std::int32_t i = 0; i >= 0; i = symbols[i].next) out.push_back(symbols[i].id);
}

// --- decoding ----------------------------------------------------------------------------------

std::string BpeTokenizer::decode(std::span<const TokenId> ids) const
{
    std::string out;
    for (TokenId id : ids)
        if (id >= 0 && id < vocabSize() && m_kinds[id] != TokenKind::Control) out += m_bytes[id];
    return out;
}

std::string BpeTokenizer::decodeToken(TokenId previous, TokenId id) const
{
    const TokenId one[] = {id};
    return decode(one);
}

std::string BpeTokenizer::piece(TokenId id) const
{
    return id >= 0 && id < vocabSize() ? m_tokens[id] : std::string();
}

TokenKind BpeTokenizer::tokenKind(TokenId id) const
{
    return id >= 0 && id < vocabSize() ? m_kinds[id] : TokenKind::Unused;
}

}  // namespace ql
