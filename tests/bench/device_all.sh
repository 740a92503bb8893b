#!/usr/bin/env bash
# Issues #5 and #6 in one GPU-machine call: build, every tests/gpu executable, and the benchmarks against
# transformers on generated Llama-3.2-1B- and Llama-3.1-8B-shaped folders (bench forward,
# bench calibrate, bench hessian; tests/bench/hf_forward.py, hf_calibrate.py) and GPTQ (bench gptq
# against tests/bench/torch_gptq.py). Sections run in
# order of importance and are skipped when the time budget (QL_BUDGET seconds, default 480) would
# be exceeded. Logs in $OUT. Carry [".device", ".cache"] (packaging/device-stage.sh,
# packaging/device-qt-bundle.sh):   run: bash tests/bench/device_all.sh
# The GPU machine's image has no Qt: the Qt Test executables build against the carried bundle,
# whose libraries (ICU, glib, ...) are put on the library path only for the build and the tests.
set -u
cd "$(dirname "$0")/../.."
start=$SECONDS; budget=${QL_BUDGET:-480}
log() { echo "[$((SECONDS - start)) s] $*" | tee -a $OUT/steps.log; }
left() { echo $((budget - (SECONDS - start))); }
source .device/env.sh
mkdir -p /tmp/qt && tar -xJf .cache/qt6-bundle.tar.xz -C /tmp/qt
withqt() { LD_LIBRARY_PATH=/tmp/qt/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} "$@"; }
Q=/tmp/qt/lib/x86_64-linux-gnu/cmake
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > $OUT/gpu.txt 2>&1
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" >> $OUT/gpu.txt 2>&1
log "configure + build"
cmake -S . -B /tmp/b -G Ninja -DQL_BUILD_GUI=OFF -DCMAKE_CUDA_ARCHITECTURES=90 \
  -DCMAKE_BUILD_TYPE=Release -DQt6_DIR=$Q/Qt6 -DQt6CoreTools_DIR=$Q/Qt6CoreTools \
  -DCMAKE_PREFIX_PATH="/tmp/qt:$CMAKE_PREFIX_PATH" > $OUT/configure.log 2>&1 || { tail -30 $OUT/configure.log; exit 1; }
withqt cmake --build /tmp/b -j16 --target quantlens-cli > $OUT/build.log 2>&1 || { grep -E "error|FAILED" $OUT/build.log | head -30; exit 1; }
cli=/tmp/b/app/quantlens-cli
($cli generate --shape llama-1b --out /tmp/l1b > $OUT/generate.log 2>&1; \
 $cli generate --shape llama-8b --out /tmp/l8b >> $OUT/generate.log 2>&1) &
withqt cmake --build /tmp/b -j16 --target test_cuda_forward test_cuda_stats test_cuda_calibrate test_cuda_gptq >> $OUT/build.log 2>&1 || grep -E "error|FAILED" $OUT/build.log | head -20
log "gpu tests"
for t in test_cuda_stats test_cuda_forward test_cuda_calibrate test_cuda_gptq; do
  withqt timeout 150 /tmp/b/tests/$t > $OUT/$t.log 2>&1; echo "$t exit $?" | tee -a $OUT/steps.log
  grep -E "^(FAIL|SKIP|Totals)|Loc:" $OUT/$t.log | head -12
done
grep -hE "QINFO.*(PPL|perplexity)" $OUT/test_cuda_forward.log | head -6
grep -hE "QINFO.*(codes|overall)" $OUT/test_cuda_gptq.log | cut -c1-200 | head -40
log "CLI calibrate stories260K: cpu, cuda f32, cuda bf16"
d=$QUANTLENS_DATA
for dev in "cpu" "cuda --precision f32" "cuda --precision bf16"; do
  timeout 60 $cli calibrate $d/models/stories260K/stories260K.gguf --text $d/text/calibration/tiny.txt \
    --samples 64 --seqlen 256 --out /tmp/s.h5 --device $dev 2>&1 | grep -E "calibrated|tokens/s|note|error" | head -3
done
log "wait for llama-1b"
for i in $(seq 120); do [ -f /tmp/l1b/config.json ] && break; sleep 1; done
log "bench forward 1b"
timeout 60 $cli bench forward /tmp/l1b --seqlen 2048 --batch 1 2>&1 | tee $OUT/bench_forward_1b.log | grep -vE "^\s*$" | tail -8
PYTHONUNBUFFERED=1 timeout 90 python3 tests/bench/hf_forward.py /tmp/l1b --seqlen 2048 --batch 1 > $OUT/hf_forward_1b.log 2>&1; tail -5 $OUT/hf_forward_1b.log
log "bench calibrate 1b"
timeout 100 $cli bench calibrate /tmp/l1b --seqlen 2048 --samples 16 --precision bf16 2>&1 | tee $OUT/bench_calibrate_1b.log | tail -10
PYTHONUNBUFFERED=1 timeout 120 python3 tests/bench/hf_calibrate.py /tmp/l1b --seqlen 2048 --samples 16 > $OUT/hf_calibrate_1b.log 2>&1; tail -6 $OUT/hf_calibrate_1b.log
log "bench gptq"
timeout 120 $cli bench gptq 2>&1 | tee $OUT/bench_gptq.log | tail -20
timeout 60 $cli bench gptq --rows 4096 --cols 4096 --actorder 2>&1 | tee $OUT/bench_gptq_actorder.log | tail -6
PYTHONUNBUFFERED=1 timeout 150 python3 tests/bench/torch_gptq.py > $OUT/torch_gptq.log 2>&1; tail -5 $OUT/torch_gptq.log
log "bench hessian"
timeout 60 $cli bench hessian 2>&1 | tee $OUT/bench_hessian.log | tail -12
if [ "$(left)" -gt 120 ]; then
  log "wait for llama-8b"
  for i in $(seq 90); do [ -f /tmp/l8b/config.json ] && break; sleep 1; done
  cat $OUT/generate.log | tail -2
  log "bench forward 8b ($(left) s left)"
  timeout $(( $(left) / 2 )) $cli bench forward /tmp/l8b --seqlen 2048 --batch 1 2>&1 | tee $OUT/bench_forward_8b.log | tail -8
  [ "$(left)" -gt 40 ] && { PYTHONUNBUFFERED=1 timeout $(( $(left) - 5 )) python3 tests/bench/hf_forward.py /tmp/l8b --seqlen 2048 --batch 1 > $OUT/hf_forward_8b.log 2>&1; tail -5 $OUT/hf_forward_8b.log; }
fi
log "done"
