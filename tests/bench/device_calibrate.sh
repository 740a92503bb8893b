#!/usr/bin/env bash
# Issue #5, calibration on the GPU machine: build, tests/gpu/test_cuda_calibrate (CUDA runner
# against the CPU reference on stories260K, CLI calibrate --device cuda and its CPU fallback), the
# forward tests the runner change touches, `bench calibrate` on a generated Llama-3.2-1B-shaped
# folder (bf16 and f32) and transformers with hooks on the same folder (tests/bench/hf_calibrate.py).
# Logs in $OUT. Needs .device (packaging/device-stage.sh) and .cache/qt6-bundle.tar.xz
# (packaging/device-qt-bundle.sh) carried:
#   run: bash tests/bench/device_calibrate.sh   carry: [".device", ".cache"]
set -u
cd "$(dirname "$0")/../.."
start=$SECONDS
log() { echo "[$((SECONDS - start)) s] $*" | tee -a $OUT/steps.log; }
source .device/env.sh
# Qt 6 Core + Test (moc included) for the Qt Test executables: the image has no Qt.
mkdir -p /tmp/qt && tar -xJf .cache/qt6-bundle.tar.xz -C /tmp/qt
# Its libraries (ICU, glib, ...) only for the build (moc) and the test, not for python or the CLI.
withqt() { LD_LIBRARY_PATH=/tmp/qt/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} "$@"; }
Q=/tmp/qt/lib/x86_64-linux-gnu/cmake
# PCRE2 as -L/-l (a bare .a path in Libs becomes a link option placed before the objects).
mkdir -p /tmp/pc && cat > /tmp/pc/libpcre2-8.pc <<PC
prefix=$PWD/.device/prefix
Name: libpcre2-8
Description: PCRE2 (8-bit), staged
Version: 10.42
Libs: -L\${prefix}/lib -lpcre2-8
Cflags: -I\${prefix}/include
PC
export PKG_CONFIG_PATH=/tmp/pc:$PKG_CONFIG_PATH
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > $OUT/gpu.txt 2>&1
log "configure"
cmake -S . -B /tmp/b -G Ninja -DQL_BUILD_GUI=OFF -DCMAKE_CUDA_ARCHITECTURES=90 \
  -DCMAKE_BUILD_TYPE=Release -DQt6_DIR=$Q/Qt6 -DQt6CoreTools_DIR=$Q/Qt6CoreTools \
  -DCMAKE_PREFIX_PATH="/tmp/qt:$CMAKE_PREFIX_PATH" > $OUT/configure.log 2>&1 || { tail -30 $OUT/configure.log; exit 1; }
targets="quantlens-cli test_cuda_calibrate test_cuda_forward"
log "build $targets"
withqt cmake --build /tmp/b -j16 --target $targets > $OUT/build.log 2>&1 || { grep -E "error|FAILED" $OUT/build.log | head -30; exit 1; }
cli=/tmp/b/app/quantlens-cli
($cli generate --shape llama-1b --out /tmp/l1b > $OUT/generate.log 2>&1 &)
log "test_cuda_calibrate"
withqt timeout 200 /tmp/b/tests/test_cuda_calibrate > $OUT/test_calibrate.log 2>&1; echo "test exit $?" >> $OUT/test_calibrate.log
grep -E "^(PASS|FAIL|SKIP|Totals)|QINFO|Loc:|exit" $OUT/test_calibrate.log | head -60
log "test_cuda_forward (runner regression)"
withqt timeout 60 /tmp/b/tests/test_cuda_forward storiesLogits syntheticModels errors replaceWeight > $OUT/test_forward.log 2>&1; echo "test exit $?" >> $OUT/test_forward.log
grep -E "^(PASS|FAIL|Totals)|exit" $OUT/test_forward.log | head -20
log "CLI calibrate, stories260K"
d=$QUANTLENS_DATA
for dev in "cpu" "cuda --precision f32" "cuda --precision bf16"; do
  timeout 60 $cli calibrate $d/models/stories260K/stories260K.gguf --text $d/text/calibration/tiny.txt \
    --samples 64 --seqlen 256 --out /tmp/s.h5 --device $dev 2>&1 | grep -E "calibrated|note|error|blk.4.ffn_down"
done
log "wait for generate"
for i in $(seq 90); do [ -f /tmp/l1b/config.json ] && break; sleep 1; done; cat $OUT/generate.log
log "bench calibrate"
timeout 120 $cli bench calibrate /tmp/l1b --seqlen 2048 --samples 16 --precision bf16 > $OUT/bench.log 2>&1
timeout 120 $cli bench calibrate /tmp/l1b --seqlen 2048 --samples 16 --precision f32 2>&1 | grep -E "device|stats|overhead|memory" | sed 's/^/[f32] /' >> $OUT/bench.log
timeout 120 $cli bench calibrate /tmp/l1b --seqlen 2048 --samples 16 --precision bf16 --json > $OUT/bench.json 2>&1
cat $OUT/bench.log
log "transformers with hooks"
PYTHONUNBUFFERED=1 timeout 150 python3 tests/bench/hf_calibrate.py /tmp/l1b --seqlen 2048 --samples 16 > $OUT/hf.log 2>&1
tail -12 $OUT/hf.log
log "done"
