#!/usr/bin/env bash
# Do our quantized GGUF files run in llama.cpp? Quantizes a model (default stories260K) with each
# layout, runs llama.cpp's llama-perplexity on the file and `quantlens-cli eval --layout` (which
# simulates the same quantization in memory) on the same text and context, and prints one markdown
# table: the two perplexities should agree to within a few tenths of a percent.
#
# llama.cpp is run twice per file: as it comes, and with --no-repack, which keeps weights out of
# its "extra" CPU buffer types (AMX on Intel Xeons with AMX, CPU_REPACK on AVX2/ARM) and so uses
# the plain ggml kernels. A file whose two llama.cpp figures differ by much hits a bug in those
# kernels (llama.cpp 0.3.16 / ggml 4227c9b on AMX: Q4_0 and Q4_1 wrong for every model, llama.cpp's
# own files included, llama.cpp PR 16315; F16 rows whose length is not a multiple of 16 wrong,
# which is why our fallback for such rows is F32).
#
# Not part of CI (CI has no llama.cpp). A CPU build of llama.cpp, e.g. from the llama-cpp-python
# sdist (vendor/llama.cpp):
#   cmake -S vendor/llama.cpp -B LLAMA_BUILD -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DGGML_OPENMP=ON
#   cmake --build LLAMA_BUILD -j --target llama-perplexity
#
# usage: tests/tools/llamacpp_check.sh LLAMA_BUILD_DIR QUANTLENS_CLI [options]
#   --model FILE     model to quantize (default $QUANTLENS_DATA/models/stories260K/stories260K.gguf)
#   --text FILE      text (default $QUANTLENS_DATA/text/eval/wikitext-2-raw-test.txt)
#   --ctx N          context (default 512)
#   --chunks N       at most N windows (default: all; 1580 for wikitext-2 and stories260K)
#   --layout SPEC    a layout, one row each; repeatable (default *=q8_0, *=q4_0, *=q4_k, *=q6_k)
#   --threads N      llama.cpp threads (default 1: on a model as small as stories260K, thread
#                    synchronisation costs more than it gains, 12x slower with 2 on 2 cores)
#   --no-default     skip the llama.cpp run without --no-repack
#   --keep DIR       write the GGUF files and logs to DIR (default: a temporary folder, removed)
# QUANTLENS_DATA defaults to ../shared/data beside the repository.
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 2; }
[ $# -ge 2 ] || usage
llama="$1"; cli="$2"; shift 2
root="$(cd "$(dirname "$0")/../.." && pwd)"
data="${QUANTLENS_DATA:-$root/../shared/data}"
model="$data/models/stories260K/stories260K.gguf"
text="$data/text/eval/wikitext-2-raw-test.txt"
ctx=512; chunks=""; layouts=(); threads=1; both=1; keep=""
while [ $# -gt 0 ]; do
  case "$1" in
    --model) model="$2"; shift 2 ;;
    --text) text="$2"; shift 2 ;;
    --ctx) ctx="$2"; shift 2 ;;
    --chunks) chunks="$2"; shift 2 ;;
    --layout) layouts+=("$2"); shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    --no-default) both=0; shift ;;
    --keep) keep="$2"; shift 2 ;;
    *) usage ;;
  esac
done
[ ${#layouts[@]} -gt 0 ] || layouts=("*=q8_0" "*=q4_0" "*=q4_k" "*=q6_k")

perplexity="$llama/bin/llama-perplexity"
[ -x "$perplexity" ] || { echo "no llama-perplexity in $llama/bin" >&2; exit 2; }
[ -x "$cli" ] || { echo "no quantlens-cli at $cli" >&2; exit 2; }
for f in "$model" "$text"; do [ -f "$f" ] || { echo "missing $f" >&2; exit 2; }; done
if [ -n "$keep" ]; then
  work="$keep"; mkdir -p "$work"
else
  work="$(mktemp -d)"; trap 'rm -rf "$work"' EXIT
fi

# "PPL +/- err" from llama-perplexity's last line, or what went wrong.
llama_ppl() {
  local file="$1" log="$2"; shift 2
  local args=(-m "$file" -f "$text" -c "$ctx" -t "$threads")
  [ -n "$chunks" ] && args+=(--chunks "$chunks")
  if ! "$perplexity" "${args[@]}" "$@" >"$log" 2>&1; then echo "failed (exit $?)"; return; fi
  local final
  final="$(sed -n 's/^Final estimate: PPL = \([^ ]*\) +\/- \([^ ]*\).*/\1 ± \2/p' "$log")"
  if [ -n "$final" ]; then echo "$final"
  elif grep -q "nan" "$log"; then echo "nan"
  else echo "no result"; fi
}

# "PPL ± err" from quantlens-cli eval --json; with a layout, the quantized model's.
our_ppl() {
  local log="$1"; shift
  local args=(eval "$model" --text "$text" --ctx "$ctx" --json)
  [ -n "$chunks" ] && args+=(--chunks "$chunks")
  if ! "$cli" "${args[@]}" "$@" >"$log" 2>"$log.err"; then echo "failed"; return; fi
  python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); print("%.4f ± %.4f" % (j["ppl"], j["ppl_stderr"]))' "$log"
}

size() { echo "$(( $(stat -c %s "$1") / 1024 )) KiB"; }

header="| layout | file | llama.cpp PPL | llama.cpp PPL --no-repack | quantlens eval PPL | fallbacks |"
rule="|---|---|---|---|---|---|"
[ "$both" = 1 ] || { header="| layout | file | llama.cpp PPL --no-repack | quantlens eval PPL | fallbacks |"; rule="|---|---|---|---|---|"; }
rows=()
row() {  # name file ours fallbacks
  local name="$1" file="$2" ours="$3" fb="$4" tag="${5:-src}" a="" b
  [ "$both" = 1 ] && a="$(llama_ppl "$file" "$work/$tag.llama.log") | "
  b="$(llama_ppl "$file" "$work/$tag.llama-nr.log" --no-repack)"
  rows+=("| \`$name\` | $(size "$file") | $a$b | $ours | $fb |")
  echo "${rows[-1]}" >&2
}

row "f32 (source)" "$model" "$(our_ppl "$work/f32.eval.json")" "" f32
i=0
for layout in "${layouts[@]}"; do
  i=$((i + 1))
  out="$work/l$i.gguf"
  if ! "$cli" quantize "$model" --layout "$layout" --out "$out" --json >"$work/l$i.quantize.json" \
       2>"$work/l$i.quantize.err"; then
    rows+=("| \`$layout\` | quantize failed: $(tail -1 "$work/l$i.quantize.err") |$([ "$both" = 1 ] && echo " |") | | |")
    continue
  fi
  fb="$(python3 -c 'import json,sys
j=json.load(open(sys.argv[1])); f=j.get("fallbacks", [])
print(", ".join(sorted({"%s -> %s" % (x["wanted"], x["got"]) for x in f})) + (" (%d)" % len(f) if f else ""))' \
        "$work/l$i.quantize.json" 2>/dev/null || echo "?")"
  row "$layout" "$out" "$(our_ppl "$work/l$i.eval.json" --layout "$layout")" "$fb" "l$i"
done

echo "model $(basename "$model"), text $(basename "$text"), ctx $ctx${chunks:+, $chunks windows}, llama.cpp $(basename "$llama")"
echo
echo "$header"
echo "$rule"
printf '%s\n' "${rows[@]}"
