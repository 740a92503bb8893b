// Layout rule parser and resolver. The spec is cut into rules by lines, '#' comments and ';',
// keeping the line and column where every rule and every ':' token starts, so an error can point
// at the token at fault. The right-hand side of a rule is split into method tokens (rtn, gptq,
// awq, method=..., key=value, and the bare flags actorder / static, stored as flag=true) and
// format tokens; the format tokens go to parseQuantFormat, and when
// it refuses them the culprit is found by parsing ever longer prefixes (format options are
// independent, so the first prefix that fails ends with the bad token). Resolution walks the
// rules backwards per tensor, so the last match wins without building any index.
#include "layout/layout.h"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

namespace ql {
namespace {

bool isBlank(char c)
{
    return c == ' ' || c == '\t' || c == '\r';
}

std::string lower(std::string_view s)
{
    std::string out(s);
    for (char& c : out) c = char(std::tolower(static_cast<unsigned char>(c)));
    return out;
}

bool isIdentifier(std::string_view s)
{
    if (s.empty()) return false;
    for (char c : s)
        if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '_')) return false;
    return true;
}

// A piece of the spec with the position of its first character.
struct Piece {
    std::string text;
    int line = 1;
    int column = 1;
};

// Trims blanks, moving the column along.
Piece trimmed(std::string_view s, int line, int column)
{
    std::size_t b = 0, e = s.size();
    while (b < e && isBlank(s[b])) ++b;
    while (e > b && isBlank(s[e - 1])) --e;
    return Piece{std::string(s.substr(b, e - b)), line, column + int(b)};
}

// Splits `s` (starting at `column`) at every `sep`, trimming each part.
std::vector<Piece> split(std::string_view s, char sep, int line, int column)
{
    std::vector<Piece> out;
    std::size_t start = 0;
    while (true) {
        const std::size_t at = s.find(sep, start);
        const std::string_view part =
            s.substr(start, at == std::string_view::npos ? s.npos : at - start);
        out.push_back(trimmed(part, line, column + int(start)));
        if (at == std::string_view::npos) break;
        start = at + 1;
    }
    return out;
}

// Method options that may be written without a value (GPTQ's act-order and static groups).
bool isMethodFlag(std::string_view word)
{
    return word == "actorder" || word == "act_order" || word == "static";
}

bool parseMethodName(std::string_view name, QuantMethod& out)
{
    if (name == "rtn")
        out = QuantMethod::Rtn;
    else if (name == "gptq")
        out = QuantMethod::Gptq;
    else if (name == "awq")
        out = QuantMethod::Awq;
    else
        return false;
    return true;
}

// Matches one character against the class starting at pattern[p] == '['. `next` receives the
// index after the closing ']'; false with next == npos when the class is not closed.
bool classMatch(std::string_view pattern, std::size_t p, char c, std::size_t& next)
{
    std::size_t i = p + 1;
    bool negate = false;
    if (i < pattern.size() && (pattern[i] == '!' || pattern[i] == '^')) {
        negate = true;
        ++i;
    }
    bool matched = false;
    bool first = true;
    while (i < pattern.size() && (first || pattern[i] != ']')) {
        first = false;
        char lo = pattern[i];
        char hi = lo;
        if (i + 2 < pattern.size() && pattern[i + 1] == '-' && pattern[i + 2] != ']') {
            hi = pattern[i + 2];
            i += 3;
        } else {
            i += 1;
        }
        if (c >= lo && c <= hi) matched = true;
    }
    if (i >= pattern.size()) {
        next = std::string_view::npos;
        return false;
    }
    next = i + 1;
    return matched != negate;
}

}  // namespace

const char* quantMethodName(QuantMethod method)
{
    switch (method) {
        case QuantMethod::Rtn: return "rtn";
        case QuantMethod::Gptq: return "gptq";
        case QuantMethod::Awq: return "awq";
    }
    return "?";
}

// ---------------------------------------------------------------- globs

bool globMatch(std::string_view pattern, std::string_view text)
{
    std::size_t p = 0, t = 0;
    std::size_t starP = std::string_view::npos, starT = 0;
    while (t < text.size()) {
        if (p < pattern.size()) {
            const char pc = pattern[p];
            if (pc == '*') {
                starP = ++p;
                starT = t;
                continue;
            }
            if (pc == '?') {
                ++p;
                ++t;
                continue;
            }
            if (pc == '[') {
                std::size_t next = 0;
                const bool ok = classMatch(pattern, p, text[t], next);
                if (next == std::string_view::npos) {
                    // Unclosed class (checkGlob refuses it): a literal '['.
                    if (text[t] == '[') {
                        ++p;
                        ++t;
                        continue;
                    }
                } else if (ok) {
                    p = next;
                    ++t;
                    continue;
                }
            } else if (pc == text[t]) {
                ++p;
                ++t;
                continue;
            }
        }
        if (starP == std::string_view::npos) return false;
        p = starP;
        t = ++starT;
    }
    while (p < pattern.size() && pattern[p] == '*') ++p;
    return p == pattern.size();
}

Status checkGlob(std::string_view pattern, std::size_t* offset)
{
    auto fail = [&](std::size_t at, std::string why) -> Status {
        if (offset) *offset = at;
        return makeError(ErrorCode::InvalidArgument, std::move(why));
    };
    for (std::size_t i = 0; i < pattern.size(); ++i) {
        if (pattern[i] != '[') continue;
        std::size_t j = i + 1;
        if (j < pattern.size() && (pattern[j] == '!' || pattern[j] == '^')) ++j;
        bool first = true;
        while (j < pattern.size() && (first || pattern[j] != ']')) {
            first = false;
            if (j + 2 < pattern.size() && pattern[j + 1] == '-' && pattern[j + 2] != ']') {
                if (pattern[j] > pattern[j + 2])
                    return fail(j, "character range '" + std::string(pattern.substr(j, 3)) +
                                       "' runs backwards");
                j += 3;
            } else {
                ++j;
            }
        }
        if (j >= pattern.size()) return fail(i, "'[' is never closed by ']'");
        i = j;
    }
    return {};
}

// ---------------------------------------------------------------- rules

bool LayoutRule::hasWildcard() const
{
    return pattern.find_first_of("*?[") != std::string::npos;
}

std::string LayoutRule::toString() const
{
    std::string s = pattern + "=" + formatToString(format);
    if (method != QuantMethod::Rtn) s += std::string(":") + quantMethodName(method);
    for (const auto& [k, v] : methodOptions) s += ":" + k + "=" + v;
    return s;
}

std::string describeRule(const Layout& layout, int index)
{
    if (index < 0 || index >= int(layout.rules().size())) return "no rule";
    return "rule " + std::to_string(index + 1) + " \"" + layout.rules()[std::size_t(index)].text +
           "\"";
}

const TensorPlan* LayoutPlan::find(std::string_view name) const
{
    for (const auto& t : tensors)
        if (t.name == name) return &t;
    return nullptr;
}

Result<Layout> Layout::parse(std::string_view spec)
{
    return parseText(spec, {});
}

Result<Layout> Layout::parseFile(const std::string& path)
{
    std::ifstream in(path, std::ios::binary);
    if (!in)
        return makeError(ErrorCode::Io,
                         "cannot read layout file " + path + ": " + std::strerror(errno));
    std::ostringstream ss;
    ss << in.rdbuf();
    if (in.bad()) return makeError(ErrorCode::Io, "cannot read layout file " + path);
    return parseText(ss.str(), path);
}

Result<Layout> Layout::fromArgument(std::string_view argument)
{
    if (!argument.empty() && argument[0] == '@') {
        if (argument.size() == 1)
            return makeError(ErrorCode::InvalidArgument, "layout '@' names no file (use @FILE)");
        return parseFile(std::string(argument.substr(1)));
    }
    return parse(argument);
}

Result<Layout> Layout::parseText(std::string_view spec, const std::string& file)
{
    const bool multiLine = spec.find('\n') != std::string_view::npos;
    Layout layout;

    // Lines, comments stripped, then rules split at ';'.
    std::vector<Piece> pieces;
    int lineNo = 0;
    std::size_t start = 0;
    while (start <= spec.size()) {
        ++lineNo;
        std::size_t end = spec.find('\n', start);
        if (end == std::string_view::npos) end = spec.size();
        std::string_view line = spec.substr(start, end - start);
        if (const auto hash = line.find('#'); hash != std::string_view::npos)
            line = line.substr(0, hash);
        for (Piece& p : split(line, ';', lineNo, 1))
            if (!p.text.empty()) pieces.push_back(std::move(p));
        start = end + 1;
    }
    if (pieces.empty())
        return makeError(ErrorCode::InvalidArgument,
                         (file.empty() ? std::string("layout") : "layout file " + file) +
                             " has no rules (expected PATTERN=FORMAT, e.g. \"*=q4_k\")");

    for (std::size_t n = 0; n < pieces.size(); ++n) {
        const Piece& piece = pieces[n];
        auto fail = [&](int line, int column, const std::string& why) -> Error {
            std::string where;
            if (!file.empty())
                where = file + ":" + std::to_string(line) + ":" + std::to_string(column) + ": ";
            const std::string rule = "rule " + std::to_string(n + 1) + " \"" + piece.text + "\"";
            if (!file.empty())
                return makeError(ErrorCode::InvalidArgument, where + rule + ": " + why);
            where = multiLine
                        ? "line " + std::to_string(line) + ", column " + std::to_string(column)
                        : "column " + std::to_string(column);
            return makeError(ErrorCode::InvalidArgument,
                             "layout " + rule + " at " + where + ": " + why);
        };

        LayoutRule rule;
        rule.text = piece.text;
        rule.line = piece.line;
        rule.column = piece.column;

        const std::size_t eq = piece.text.find('=');
        if (eq == std::string::npos)
            return fail(piece.line, piece.column, "no '=' (a rule is PATTERN=FORMAT)");
        const Piece pattern =
            trimmed(std::string_view(piece.text).substr(0, eq), piece.line, piece.column);
        if (pattern.text.empty()) return fail(piece.line, piece.column, "empty pattern before '='");
        if (const auto blank = pattern.text.find_first_of(" \t"); blank != std::string::npos)
            return fail(pattern.line, pattern.column + int(blank), "space inside the pattern");
        std::size_t globAt = 0;
        if (auto glob = checkGlob(pattern.text, &globAt); !glob)
            return fail(pattern.line, pattern.column + int(globAt), glob.error().message);
        rule.pattern = pattern.text;

        const int rhsColumn = piece.column + int(eq) + 1;
        const std::string_view rhs = std::string_view(piece.text).substr(eq + 1);
        if (trimmed(rhs, piece.line, rhsColumn).text.empty())
            return fail(piece.line, rhsColumn, "no format after '='");

        std::vector<Piece> formatTokens;
        bool methodSeen = false;
        int firstOptionColumn = 0;
        std::string firstOption;
        for (const Piece& tok : split(rhs, ':', piece.line, rhsColumn)) {
            if (tok.text.empty())
                return fail(tok.line, tok.column,
                            "empty option (two ':' in a row, or a trailing ':')");
            const std::string word = lower(tok.text);
            const auto tokEq = word.find('=');
            std::string methodName;
            if (tokEq == std::string::npos) {
                QuantMethod m;
                if (parseMethodName(word, m)) methodName = word;
            } else if (word.substr(0, tokEq) == "method") {
                methodName = word.substr(tokEq + 1);
                QuantMethod m;
                if (!parseMethodName(methodName, m))
                    return fail(tok.line, tok.column + int(tokEq) + 1,
                                "unknown method '" + methodName + "' (rtn, gptq or awq)");
            }
            if (!methodName.empty()) {
                if (methodSeen)
                    return fail(tok.line, tok.column,
                                "second method '" + methodName + "' (a rule has one method)");
                methodSeen = true;
                parseMethodName(methodName, rule.method);
                continue;
            }
            if (tokEq == std::string::npos && isMethodFlag(word)) {
                if (firstOption.empty()) {
                    firstOption = tok.text;
                    firstOptionColumn = tok.column;
                }
                rule.methodOptions.emplace_back(word, "true");
                continue;
            }
            if (tokEq != std::string::npos) {
                const std::string key = word.substr(0, tokEq);
                const std::string value = tok.text.substr(tokEq + 1);
                if (!isIdentifier(key))
                    return fail(tok.line, tok.column,
                                "bad option name '" + tok.text.substr(0, tokEq) +
                                    "' (method options are key=value)");
                if (trimmed(value, 0, 0).text.empty())
                    return fail(tok.line, tok.column + int(tokEq) + 1,
                                "option '" + key + "' has no value");
                if (firstOption.empty()) {
                    firstOption = tok.text;
                    firstOptionColumn = tok.column;
                }
                rule.methodOptions.emplace_back(key, trimmed(value, 0, 0).text);
                continue;
            }
            formatTokens.push_back(tok);
        }
        if (formatTokens.empty()) return fail(piece.line, rhsColumn, "no format, only a method");

        std::string formatText;
        for (std::size_t i = 0; i < formatTokens.size(); ++i) {
            if (i) formatText += ':';
            formatText += formatTokens[i].text;
        }
        auto format = parseQuantFormat(formatText);
        if (!format) {
            // Find the token at fault: the first prefix that no longer parses ends with it.
            std::size_t culprit = formatTokens.size() - 1;
            std::string prefix;
            for (std::size_t i = 0; i < formatTokens.size(); ++i) {
                if (i) prefix += ':';
                prefix += formatTokens[i].text;
                if (!parseQuantFormat(prefix)) {
                    culprit = i;
                    break;
                }
            }
            return fail(formatTokens[culprit].line, formatTokens[culprit].column,
                        format.error().message);
        }
        rule.format = *format;
        if (rule.method == QuantMethod::Rtn && !rule.methodOptions.empty())
            return fail(piece.line, firstOptionColumn,
                        "option '" + firstOption +
                            "' belongs to a method (gptq, awq); rtn takes no options");
        layout.m_rules.push_back(std::move(rule));
    }
    return layout;
}

std::string Layout::toString() const
{
    std::string s;
    for (std::size_t i = 0; i < m_rules.size(); ++i) {
        if (i) s += "; ";
        s += m_rules[i].toString();
    }
    return s;
}

int Layout::decidingRule(std::string_view name, bool vector) const
{
    for (int i = int(m_rules.size()) - 1; i >= 0; --i) {
        const LayoutRule& r = m_rules[std::size_t(i)];
        if (vector ? (!r.hasWildcard() && r.pattern == name) : globMatch(r.pattern, name)) return i;
    }
    return -1;
}

namespace {

bool isVectorTensor(const TensorInfo& t)
{
    if (t.shape.size() <= 1) return true;
    switch (t.role) {
        case TensorRole::AttnNorm:
        case TensorRole::FfnNorm:
        case TensorRole::OutputNorm: return true;
        default: return false;
    }
}

QuantFormat storedFormat(TensorType type)
{
    if (type == TensorType::F32 || type == TensorType::F16 || type == TensorType::BF16)
        return floatFormat(type);
    return ggmlFormat(type);
}

}  // namespace

Result<LayoutPlan> Layout::resolve(const Model& model) const
{
    LayoutPlan plan;
    plan.tensors.reserve(model.tensors.size());
    std::vector<int> matches(m_rules.size(), 0), decisions(m_rules.size(), 0),
        vectorOnly(m_rules.size(), 0);
    for (const TensorInfo& t : model.tensors) {
        TensorPlan p;
        p.name = t.name;
        p.shape = t.shape;
        p.cols = t.shape.empty() ? 1 : t.shape.back();
        p.rows = p.cols > 0 ? std::max<std::int64_t>(1, t.elementCount() / p.cols) : 0;
        p.sourceType = t.type;
        const bool vector = isVectorTensor(t);
        for (std::size_t i = 0; i < m_rules.size(); ++i)
            if (globMatch(m_rules[i].pattern, t.name)) {
                ++matches[i];
                if (vector && m_rules[i].hasWildcard()) ++vectorOnly[i];
            }
        p.rule = decidingRule(t.name, vector);
        if (p.rule >= 0) {
            const LayoutRule& r = m_rules[std::size_t(p.rule)];
            ++decisions[std::size_t(p.rule)];
            p.choice = PlanChoice::Rule;
            p.requested = r.format;
            p.method = r.method;
            p.methodOptions = r.methodOptions;
        } else if (vector) {
            p.choice = PlanChoice::KeptVector;
            p.requested = floatFormat(TensorType::F32);
        } else {
            p.choice = PlanChoice::Unmatched;
            p.requested = storedFormat(t.type);
        }
        p.format = p.requested;
        if (auto fits = checkFormatFits(p.requested, p.rows, p.cols); !fits) {
            const QuantFormat fb = fallbackFormat(p.requested, p.rows, p.cols);
            if (fb == p.requested || !checkFormatFits(fb, p.rows, p.cols))
                return makeError(fits.error().code, "tensor " + t.name + " (" +
                                                        describeRule(*this, p.rule) +
                                                        "): " + fits.error().message);
            p.format = fb;
            p.fallbackReason = fits.error().message;
            plan.fallbacks.push_back({t.name, p.requested, p.format, p.fallbackReason});
        }
        plan.tensors.push_back(std::move(p));
    }
    for (std::size_t i = 0; i < m_rules.size(); ++i) {
        const std::string rule = describeRule(*this, int(i));
        if (matches[i] == 0)
            plan.warnings.push_back(rule + " matches no tensor");
        else if (decisions[i] == 0 && vectorOnly[i] == matches[i])
            plan.warnings.push_back(rule +
                                    " matches only 1-D tensors (norms), which stay F32 unless a "
                                    "rule names them exactly");
        else if (decisions[i] == 0)
            plan.warnings.push_back(rule + " decides no tensor: later rules override every match");
    }
    return plan;
}

}  // namespace ql
