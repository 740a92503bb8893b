// Opening models. openModel() detects the format from the path (a .gguf file, a folder with
// config.json + safetensors, or a llama2.c .bin checkpoint) and reads headers only; tensor data
// stays in the memory-mapped files until dequantized.
#pragma once

#include <string>
#include <vector>

#include "model/model.h"
#include "util/progress.h"
#include "util/result.h"

namespace ql {

Result<Model> openModel(const std::string& path, const ProgressFn& progress = {});

Result<Model> openGguf(const std::string& path);
// A Hugging Face folder (config.json + model.safetensors or model.safetensors.index.json), or a
// single .safetensors file whose folder holds config.json.
Result<Model> openSafetensors(const std::string& path);
// llama2.c checkpoint (legacy header or version-1 "ak42" header); tokenizer.bin / tok*.bin beside
// it is recorded as the tokenizer when present.
Result<Model> openLlama2c(const std::string& path);

// Shared post-processing: validate hyper-parameters against tensor shapes; returns an error when
// they disagree (e.g. config says 8 heads but attn_q is not divisible).
Status validateModel(const Model& model);

}  // namespace ql
