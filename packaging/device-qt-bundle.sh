#!/usr/bin/env bash
# Packs Qt 6 Core + Test (headers, CMake packages, moc and the other tools those packages check
# for, the libraries with ICU, glib, ...) from this Debian machine into .cache/qt6-bundle.tar.xz
# (~13 MB, ignored by git). The GPU machine's image has no Qt, so the Qt Test executables in
# tests/gpu cannot be configured there without it. Relocatable: the CMake packages find their
# files relative to themselves. On the GPU machine (carry .cache):
#   mkdir -p /tmp/qt && tar -xJf .cache/qt6-bundle.tar.xz -C /tmp/qt
#   Q=/tmp/qt/lib/x86_64-linux-gnu/cmake
#   cmake ... -DQt6_DIR=$Q/Qt6 -DQt6CoreTools_DIR=$Q/Qt6CoreTools -DCMAKE_PREFIX_PATH=/tmp/qt:...
# and LD_LIBRARY_PATH=/tmp/qt/lib/x86_64-linux-gnu for the build (moc) and the test run only.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
L=/usr/lib/x86_64-linux-gnu
R="$(mktemp -d)"; trap 'rm -rf "$R"' EXIT
mkdir -p "$R/lib/x86_64-linux-gnu/cmake" "$R/include/x86_64-linux-gnu/qt6" \
  "$R/lib/x86_64-linux-gnu/qt6/mkspecs" "$R/lib/x86_64-linux-gnu/metatypes"
for d in Qt6 Qt6Core Qt6CoreTools Qt6Test Qt6HostInfo Qt6BuildInternals; do
  cp -r "$L/cmake/$d" "$R/lib/x86_64-linux-gnu/cmake/"
done
cp -r /usr/include/x86_64-linux-gnu/qt6/QtCore /usr/include/x86_64-linux-gnu/qt6/QtTest \
  "$R/include/x86_64-linux-gnu/qt6/"
cp -r "$L/qt6/mkspecs/linux-g++" "$L/qt6/mkspecs/common" "$R/lib/x86_64-linux-gnu/qt6/mkspecs/"
cp "$L/metatypes/qt6core_none_metatypes.json" "$L/metatypes/qt6test_none_metatypes.json" \
  "$R/lib/x86_64-linux-gnu/metatypes/"
cp -a "$L"/libQt6Core.so* "$L"/libQt6Test.so* "$R/lib/x86_64-linux-gnu/"
for lib in libicuuc.so.72 libicui18n.so.72 libicudata.so.72 libdouble-conversion.so.3 libb2.so.1 \
           libpcre2-16.so.0 libzstd.so.1 libglib-2.0.so.0; do
  cp -L "/lib/x86_64-linux-gnu/$lib" "$R/lib/x86_64-linux-gnu/"
done
# Every file the imported targets name (CMake refuses a package with one missing), as real files.
grep -rhoE '_IMPORT_PREFIX\}/[^" );]+' "$R/lib/x86_64-linux-gnu/cmake/" | sort -u |
  while read -r p; do
    rel="${p#_IMPORT_PREFIX\}/}"
    if [ -f "/usr/$rel" ] && [ ! -e "$R/$rel" ]; then
      mkdir -p "$(dirname "$R/$rel")"; cp -L "/usr/$rel" "$R/$rel"
    fi
  done
mkdir -p "$root/.cache"
tar -cf - -C "$R" . | xz -T0 -6 > "$root/.cache/qt6-bundle.tar.xz"
ls -la "$root/.cache/qt6-bundle.tar.xz"
