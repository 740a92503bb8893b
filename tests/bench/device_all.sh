#!/usr/bin/env bash
# Issues #5/#6 in one GPU-machine call: build, tests/gpu executables and benchmarks against
# transformers / PyTorch on generated Llama-3.2-1B- and Llama-3.1-8B-shaped folders. Sections
# (arguments; default all): tests calib1b forward1b stream8b forward8b hessian gptq gptq1b
# (true-sequential GPTQ of the whole 1B shape, 128 x 2048 tokens). `tests` runs every
# tests/gpu executable; QL_TESTS="test_a test_b" picks some.
# A section is skipped when the time budget (QL_BUDGET seconds, default 540) is short. Logs in
# $OUT. Carry [".device", ".cache"] (packaging/device-stage.sh, packaging/device-qt-bundle.sh):
#   run: bash tests/bench/device_all.sh tests calib1b stream8b
# The GPU machine's image has no Qt: the Qt Test executables build against the carried bundle,
# whose libraries (ICU, glib, ...) are put on the library path only for the build and the tests.
set -u
cd "$(dirname "$0")/../.."
start=$SECONDS; budget=${QL_BUDGET:-540}
sections="${*:-tests calib1b forward1b stream8b forward8b hessian gptq gptq1b}"
want() { [[ " $sections " == *" $1 "* ]]; }
log() { echo "[$((SECONDS - start)) s] $*" | tee -a $OUT/steps.log; }
left() { echo $((budget - (SECONDS - start))); }
source .device/env.sh
mkdir -p /tmp/qt && tar -xJf .cache/qt6-bundle.tar.xz -C /tmp/qt
withqt() { LD_LIBRARY_PATH=/tmp/qt/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} "$@"; }
Q=/tmp/qt/lib/x86_64-linux-gnu/cmake
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > $OUT/gpu.txt 2>&1
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" >> $OUT/gpu.txt 2>&1
log "configure + build (sections: $sections)"
cmake -S . -B /tmp/b -G Ninja -DQL_BUILD_GUI=OFF -DCMAKE_CUDA_ARCHITECTURES=90 \
  -DCMAKE_BUILD_TYPE=Release -DQt6_DIR=$Q/Qt6 -DQt6CoreTools_DIR=$Q/Qt6CoreTools \
  -DCMAKE_PREFIX_PATH="/tmp/qt:$CMAKE_PREFIX_PATH" > $OUT/configure.log 2>&1 || { tail -30 $OUT/configure.log; exit 1; }
withqt cmake --build /tmp/b -j16 --target quantlens-cli > $OUT/build.log 2>&1 || { grep -E "error|FAILED" $OUT/build.log | head -30; exit 1; }
cli=/tmp/b/app/quantlens-cli
d=$QUANTLENS_DATA
(want calib1b || want forward1b || want gptq || want gptq1b) && { [ -f /tmp/l1b/config.json ] || $cli generate --shape llama-1b --out /tmp/l1b > $OUT/generate.log 2>&1; } &
(want stream8b || want forward8b) && { sleep 20; [ -f /tmp/l8b/config.json ] || $cli generate --shape llama-8b --out /tmp/l8b >> $OUT/generate8.log 2>&1; } &
gpu_tests=${QL_TESTS:-$(ls tests/gpu/*.cpp | xargs -n1 basename | sed 's/\.cpp$//')}
if want tests; then
  withqt cmake --build /tmp/b -j16 --target $gpu_tests >> $OUT/build.log 2>&1 || grep -E "error|FAILED" $OUT/build.log | head -20
  log "gpu tests"
  for t in $gpu_tests; do
    withqt timeout 200 /tmp/b/tests/$t > $OUT/$t.log 2>&1; echo "$t exit $?" | tee -a $OUT/steps.log
    grep -E "^(FAIL|SKIP|Totals)|Loc:" $OUT/$t.log | head -12
  done
  grep -hE "QINFO.*(PPL|perplexity|streamed)" $OUT/test_cuda_*.log | head -8
  grep -hE "QINFO.*(codes|overall)" $OUT/test_cuda_gptq.log 2>/dev/null | cut -c1-200 | head -30
  grep -hE "QINFO" $OUT/test_cuda_sequential.log 2>/dev/null | cut -c1-300 | head -10
fi
wait1b() { for i in $(seq 150); do [ -f /tmp/l1b/config.json ] && break; sleep 1; done; }
if want calib1b && [ "$(left)" -gt 90 ]; then
  wait1b; log "bench calibrate 1b: Hessian f32, none; transformers hooks"
  timeout 100 $cli bench calibrate /tmp/l1b --seqlen 2048 --samples 16 --precision bf16 2>&1 | tee $OUT/bench_calibrate_1b.log | tail -9
  timeout 60 $cli bench calibrate /tmp/l1b --seqlen 2048 --samples 16 --precision bf16 --hessian none 2>&1 | tee $OUT/bench_calibrate_1b_noH.log | tail -6
  PYTHONUNBUFFERED=1 timeout 120 python3 tests/bench/hf_calibrate.py /tmp/l1b --seqlen 2048 --samples 16 > $OUT/hf_calibrate_1b.log 2>&1; tail -6 $OUT/hf_calibrate_1b.log
fi
if want forward1b && [ "$(left)" -gt 60 ]; then
  wait1b; log "bench forward 1b"
  timeout 60 $cli bench forward /tmp/l1b --seqlen 2048 --batch 1 2>&1 | tee $OUT/bench_forward_1b.log | grep -vE "^\s*$" | tail -6
fi
if want hessian && [ "$(left)" -gt 60 ]; then
  log "bench hessian"; timeout 60 $cli bench hessian 2>&1 | tee $OUT/bench_hessian.log | tail -24
  log "bench hessian: Llama-3.2-1B widths, one calibration batch, time per pass"
  timeout 60 $cli bench hessian --channels 2048,8192 --tokens 32768 --breakdown 2>&1 | tee $OUT/bench_hessian_1b.log | tail -34
fi
if want gptq && [ "$(left)" -gt 60 ]; then
  log "bench gptq"; timeout 120 $cli bench gptq 2>&1 | tee $OUT/bench_gptq.log | tail -16
  timeout 60 $cli bench gptq --rows 4096 --cols 4096 --actorder 2>&1 | tee $OUT/bench_gptq_actorder.log | tail -5
  [ -f tests/bench/torch_gptq.py ] && { PYTHONUNBUFFERED=1 timeout 120 python3 tests/bench/torch_gptq.py > $OUT/torch_gptq.log 2>&1; tail -8 $OUT/torch_gptq.log; }
fi
if want gptq1b && [ "$(left)" -gt 90 ]; then
  wait1b; log "bench gptq-model 1b: true-sequential int4 g128, 128 x 2048 tokens"
  timeout $(( $(left) - 20 )) $cli bench gptq-model /tmp/l1b --samples 128 --seqlen 2048 2>&1 | tee $OUT/bench_gptq_model_1b.log | grep -v "^\s*$" | tail -14
fi
if (want stream8b || want forward8b) && [ "$(left)" -gt 120 ]; then
  log "wait for llama-8b"
  for i in $(seq 150); do [ -f /tmp/l8b/config.json ] && break; sleep 1; done
  tail -2 $OUT/generate8.log
  if want stream8b; then
    log "8b calibration streamed under --gpu-memory 12GiB ($(left) s left)"
    timeout $(( $(left) - 60 )) $cli bench calibrate /tmp/l8b --seqlen 2048 --samples 16 --batch 16 --precision bf16 --gpu-memory 12GiB 2>&1 | tee $OUT/bench_calibrate_8b_stream.log | tail -9
  fi
  if want forward8b && [ "$(left)" -gt 60 ]; then
    log "bench forward 8b"; timeout $(( $(left) - 10 )) $cli bench forward /tmp/l8b --seqlen 2048 --batch 1 2>&1 | tee $OUT/bench_forward_8b.log | tail -6
  fi
fi
log "done"
