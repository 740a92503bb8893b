// Token windows for calibration and evaluation, made from text files.
// Calibration: `samples` windows of `seqLen` tokens, either consecutive or at seeded random offsets
// into the concatenated token stream (the generator is std::mt19937_64, fully specified by the
// standard, and offsets are taken as rng() % range, so a seed gives the same windows everywhere).
// Evaluation: llama.cpp's perplexity protocol (chunks of n_ctx tokens, BOS first, the second half
// scored) or one window per document.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "model/tokenizer.h"
#include "util/progress.h"
#include "util/result.h"

namespace ql {

Result<std::string> readTextFile(const std::string& path);

// Splits text into documents at `separator` (e.g. "<|endoftext|>"), trimming surrounding
// whitespace; empty documents are dropped.
std::vector<std::string> splitDocuments(const std::string& text, const std::string& separator);

struct TokenWindow {
    std::vector<TokenId> tokens;
    std::int32_t scoreFrom = 1;  // first position whose *target* is scored: logits at p predict
                                 // p+1; positions [scoreFrom-1, size-2] are scored
};

struct WindowOptions {
    std::int32_t samples = 128;
    std::int32_t seqLen = 512;
    std::uint64_t seed = 0;
    bool consecutive = false;
    bool addBos = true;  // first token of every window is BOS (replacing, as llama.cpp does)
};

// Calibration windows from the token stream of one or more texts.
Result<std::vector<TokenWindow>> makeCalibrationWindows(const Tokenizer& tokenizer,
                                                        const std::vector<std::string>& texts,
                                                        const WindowOptions& options);

// llama.cpp perplexity protocol: the whole text tokenized with BOS, cut into floor(n / ctx)
// chunks of ctx tokens, the first token of each chunk replaced by BOS, and the logits of positions
// [ctx/2, ctx-2] scored against the next token.
std::vector<TokenWindow> makeLlamaCppChunks(const Tokenizer& tokenizer, const std::string& text,
                                            std::int32_t ctx, std::int32_t maxChunks = 0);

// Per-document protocol: each document tokenized with BOS, cut to at most ctx tokens, every
// position scored.
std::vector<TokenWindow> makeDocumentWindows(const Tokenizer& tokenizer,
                                             const std::vector<std::string>& documents,
                                             std::int32_t ctx);

}  // namespace ql
