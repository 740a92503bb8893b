#!/usr/bin/env bash
# Stages what a GPU build machine without Debian's -dev packages needs into .device/ (ignored by
# git, carried to the machine): nlohmann-json's headers and CMake config, PCRE2's header and static
# library with a pkg-config file, and the shared test data the GPU tests and benchmarks read.
# On the machine:  source .device/env.sh && cmake -S . -B build-gpu -DQL_BUILD_GUI=OFF ...
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
data="${QUANTLENS_DATA:-$root/../shared/data}"
dev="$root/.device"; prefix="$dev/prefix"
mkdir -p "$prefix/include" "$prefix/lib/pkgconfig" "$prefix/share/cmake" "$dev/data"
cp -r /usr/include/nlohmann "$prefix/include/"
cp -r /usr/share/cmake/nlohmann_json "$prefix/share/cmake/"
sed -i "s|/usr/include|\${CMAKE_CURRENT_LIST_DIR}/../../../include|g" \
  "$prefix/share/cmake/nlohmann_json/nlohmann_jsonTargets.cmake"
cp /usr/include/pcre2.h "$prefix/include/"
cp /usr/lib/x86_64-linux-gnu/libpcre2-8.a "$prefix/lib/"
cat > "$prefix/lib/pkgconfig/libpcre2-8.pc" <<PC
prefix=\${pcfiledir}/../..
Name: libpcre2-8
Description: PCRE2 (8-bit), staged
Version: 10.42
Libs: -L\${prefix}/lib -lpcre2-8
Cflags: -I\${prefix}/include
PC
# Test data: the model, the evaluation and calibration text (a few MB), the quant vectors.
mkdir -p "$dev/data/models" "$dev/data/text" "$dev/data/vectors"
cp -r "$data/models/stories260K" "$dev/data/models/"
cp -r "$data/text/eval" "$data/text/calibration" "$dev/data/text/"
cp -r "$data/vectors/gguf-quants" "$dev/data/vectors/"
cat > "$dev/env.sh" <<'ENV'
d="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export CMAKE_PREFIX_PATH="$d/prefix${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
export PKG_CONFIG_PATH="$d/prefix/lib/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
export QUANTLENS_DATA="$d/data"
ENV
du -sh "$dev"
