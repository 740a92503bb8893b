#include "calib/dataset.h"

#include <cctype>
#include <fstream>
#include <random>
#include <sstream>

namespace ql {

Result<std::string> readTextFile(const std::string& path)
{
    std::ifstream in(path, std::ios::binary);
    if (!in) return makeError(ErrorCode::Io, path + ": cannot open text file");
    std::ostringstream ss;
    ss << in.rdbuf();
    if (in.bad()) return makeError(ErrorCode::Io, path + ": read error");
    return ss.str();
}

std::vector<std::string> splitDocuments(const std::string& text, const std::string& separator)
{
    std::vector<std::string> docs;
    auto trimmedPush = [&](std::size_t begin, std::size_t end) {
        while (begin < end && std::isspace(static_cast<unsigned char>(text[begin]))) ++begin;
        while (end > begin && std::isspace(static_cast<unsigned char>(text[end - 1]))) --end;
        if (end > begin) docs.push_back(text.substr(begin, end - begin));
    };
    if (separator.empty()) {
        trimmedPush(0, text.size());
        return docs;
    }
    std::size_t pos = 0;
    while (true) {
        std::size_t next = text.find(separator, pos);
        if (next == std::string::npos) {
            trimmedPush(pos, text.size());
            break;
        }
        trimmedPush(pos, next);
        pos = next + separator.size();
    }
    return docs;
}

Result<std::vector<TokenWindow>> makeCalibrationWindows(const Tokenizer& tokenizer,
                                                        const std::vector<std::string>& texts,
                                                        const WindowOptions& o)
{
    if (o.samples <= 0 || o.seqLen < 2)
        return makeError(ErrorCode::InvalidArgument,
                         "calibration needs samples > 0 and seqlen >= 2");
    const bool bos = o.addBos && tokenizer.bos() >= 0;
    std::vector<TokenId> stream;
    for (const auto& t : texts) {
        auto ids = tokenizer.encode(t, false);
        stream.insert(stream.end(), ids.begin(), ids.end());
    }
    const std::size_t body = static_cast<std::size_t>(o.seqLen) - (bos ? 1 : 0);
    if (stream.size() < body)
        return makeError(ErrorCode::InvalidArgument,
                         "the calibration text has " + std::to_string(stream.size()) +
                             " tokens, fewer than one window of " + std::to_string(o.seqLen));
    std::vector<TokenWindow> windows;
    std::mt19937_64 rng(o.seed);
    const std::size_t range = stream.size() - body + 1;
    for (std::int32_t s = 0; s < o.samples; ++s) {
        std::size_t start;
        if (o.consecutive) {
            start = static_cast<std::size_t>(s) * body;
            if (start + body > stream.size()) break;  // text exhausted: fewer windows
        } else {
            start = static_cast<std::size_t>(rng() % range);
        }
        TokenWindow w;
        if (bos) w.tokens.push_back(tokenizer.bos());
        w.tokens.insert(w.tokens.end(), stream.begin() + start, stream.begin() + start + body);
        windows.push_back(std::move(w));
    }
    return windows;
}

std::vector<TokenWindow> makeLlamaCppChunks(const Tokenizer& tokenizer, const std::string& text,
                                            std::int32_t ctx, std::int32_t maxChunks)
{
    std::vector<TokenWindow> out;
    if (ctx < 4) return out;
    const bool bos = tokenizer.addBosByDefault() && tokenizer.bos() >= 0;
    std::vector<TokenId> tokens = tokenizer.encode(text, bos);
    std::size_t chunks = tokens.size() / ctx;
    if (maxChunks > 0) chunks = std::min<std::size_t>(chunks, maxChunks);
    for (std::size_t c = 0; c < chunks; ++c) {
        TokenWindow w;
        w.tokens.assign(tokens.begin() + c * ctx, tokens.begin() + (c + 1) * ctx);
        if (bos) w.tokens[0] = tokenizer.bos();
        w.scoreFrom = ctx / 2 + 1;
        out.push_back(std::move(w));
    }
    return out;
}

std::vector<TokenWindow> makeDocumentWindows(const Tokenizer& tokenizer,
                                             const std::vector<std::string>& documents,
                                             std::int32_t ctx)
{
    std::vector<TokenWindow> out;
    for (const auto& d : documents) {
        TokenWindow w;
        w.tokens = tokenizer.encode(d, true);
        if (static_cast<std::int32_t>(w.tokens.size()) > ctx) w.tokens.resize(ctx);
        if (w.tokens.size() < 2) continue;
        w.scoreFrom = 1;
        out.push_back(std::move(w));
    }
    return out;
}

}  // namespace ql
