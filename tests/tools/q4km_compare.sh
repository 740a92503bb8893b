#!/usr/bin/env bash
# Issue #7's quality goal: at the file size llama.cpp's Q4_K_M gives a model, does QuantLens's
# automatically allocated layout (GPTQ) have a lower mean KL divergence than llama.cpp's Q4_K_M,
# both measured by llama.cpp's own llama-perplexity --kl-divergence on the same text?
#
#   1. llama-quantize MODEL Q4_K_M                       -> q4km.gguf (its size is the target)
#   2. quantlens-cli calibrate (Hessians, for the proxies) on the calibration text
#   3. quantlens-cli sensitivity on the calibration text (not the evaluation text)
#   4. quantlens-cli allocate --target-size-of q4km.gguf --method gptq -> layout.txt
#   5. quantlens-cli quantize --layout @layout.txt --text CALIB (true-sequential GPTQ) -> ours.gguf
#   6. llama-perplexity --kl-divergence-base on MODEL, then --kl-divergence on both files
# Both llama.cpp runs use --no-repack (llama.cpp's AMX/repack kernels compute Q4_0/Q4_1 and F16
# rows of odd length wrongly on some CPUs; see llamacpp_check.sh), one thread.
#
# usage: tests/tools/q4km_compare.sh LLAMA_BUILD_DIR QUANTLENS_CLI [options]
#   --model FILE    (default $QUANTLENS_DATA/models/stories260K/stories260K.gguf)
#   --text FILE     evaluation text (default $QUANTLENS_DATA/text/eval/tinystories-valid-1000.txt)
#   --calib FILE    calibration text (default $QUANTLENS_DATA/text/calibration/tiny.txt)
#   --ctx N         llama-perplexity context (default 512)
#   --chunks N      at most N chunks (default: all)
#   --threads N     llama.cpp threads (default 1)
#   --keep DIR      keep the files and logs in DIR
set -euo pipefail
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 2; }
[ $# -ge 2 ] || usage
llama="$1"; cli="$2"; shift 2
root="$(cd "$(dirname "$0")/../.." && pwd)"
data="${QUANTLENS_DATA:-$root/../shared/data}"
model="$data/models/stories260K/stories260K.gguf"
text="$data/text/eval/tinystories-valid-1000.txt"
calib="$data/text/calibration/tiny.txt"
ctx=512; chunks=""; threads=1; keep=""
while [ $# -gt 0 ]; do
  case "$1" in
    --model) model="$2"; shift 2 ;;
    --text) text="$2"; shift 2 ;;
    --calib) calib="$2"; shift 2 ;;
    --ctx) ctx="$2"; shift 2 ;;
    --chunks) chunks="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    --keep) keep="$2"; shift 2 ;;
    *) usage ;;
  esac
done
for f in "$llama/bin/llama-perplexity" "$llama/bin/llama-quantize" "$cli"; do
  [ -x "$f" ] || { echo "missing $f" >&2; exit 2; }
done
if [ -n "$keep" ]; then work="$keep"; mkdir -p "$work"; else work="$(mktemp -d)"; trap 'rm -rf "$work"' EXIT; fi

step() { echo "== $*" >&2; }
step "llama-quantize Q4_K_M"
"$llama/bin/llama-quantize" "$model" "$work/q4km.gguf" Q4_K_M 1 >"$work/quantize.log" 2>&1
step "calibrate (Hessians for the proxies)"
"$cli" calibrate "$model" --text "$calib" --samples 64 --seqlen 256 --hessian f64 \
  --out "$work/session.h5" >"$work/calibrate.log" 2>&1
step "sensitivity"
"$cli" sensitivity "$model" --session "$work/session.h5" --text "$calib" --ctx 128 --chunks 16 \
  --formats q4_0,q4_1,q5_0,q5_1,q8_0,f16,q4_k,q6_k >"$work/sensitivity.txt"
step "allocate"
"$cli" allocate "$model" --session "$work/session.h5" --target-size-of "$work/q4km.gguf" \
  --method gptq --out "$work/layout.txt" >"$work/allocate.txt"
step "quantize (true-sequential GPTQ)"
"$cli" quantize "$model" --layout "@$work/layout.txt" --text "$calib" --samples 128 --seqlen 512 \
  --out "$work/ours.gguf" >"$work/ours.quantize.log" 2>&1

ppl_args=(-f "$text" -c "$ctx" -t "$threads" --no-repack)
[ -n "$chunks" ] && ppl_args+=(--chunks "$chunks")
step "llama-perplexity base logits"
"$llama/bin/llama-perplexity" -m "$model" "${ppl_args[@]}" --kl-divergence-base "$work/base.kld" \
  >"$work/base.log" 2>&1
kld() {  # file tag -> "mean_kld ppl same_top"
  "$llama/bin/llama-perplexity" -m "$1" "${ppl_args[@]}" --kl-divergence-base "$work/base.kld" \
    --kl-divergence >"$work/$2.log" 2>&1
  local mean ppl top
  mean="$(sed -n 's/^Mean    KLD: *\([^ ]*\) .*/\1/p' "$work/$2.log" | tail -1)"
  ppl="$(sed -n 's/^Mean PPL(Q) *: *\([^ ]*\) .*/\1/p' "$work/$2.log" | tail -1)"
  top="$(sed -n 's/^Same top p: *\([^ ]*\) .*/\1/p' "$work/$2.log" | tail -1)"
  echo "$mean | $ppl | $top"
}
step "llama-perplexity --kl-divergence: llama.cpp Q4_K_M"
a="$(kld "$work/q4km.gguf" q4km)"
step "llama-perplexity --kl-divergence: QuantLens allocation"
b="$(kld "$work/ours.gguf" ours)"
size() { stat -c %s "$1"; }
echo "model $(basename "$model"), text $(basename "$text"), ctx $ctx, llama.cpp --no-repack"
echo
echo "| file | bytes | mean KLD | PPL(Q) | same top p (%) |"
echo "|---|---|---|---|---|"
echo "| llama.cpp Q4_K_M | $(size "$work/q4km.gguf") | $a |"
echo "| QuantLens allocate + GPTQ | $(size "$work/ours.gguf") | $b |"
echo
echo "layout: $(grep -v '^#' "$work/layout.txt" | paste -sd';' -)"
