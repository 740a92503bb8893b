#!/usr/bin/env bash
# Builds the .deb with CPack, unpacks it into a scratch root, checks its metadata and files, and
# runs quantlens-cli --version and the GUI (offscreen, taking a screenshot) from the installed paths.
set -euo pipefail
build="$1"; data="$2"
scratch="$(mktemp -d)"; trap 'rm -rf "$scratch"' EXIT
(cd "$build" && cpack -G DEB -B "$scratch/out" >/dev/null)
deb="$(ls "$scratch"/out/quantlens_*.deb)"
# Captured first: `dpkg-deb | grep -q` under pipefail fails when grep exits early (SIGPIPE).
info="$(dpkg-deb --info "$deb")"
grep -q "Depends:.*libqt6widgets6" <<<"$info" || { echo "FAIL: Qt dependency not declared"; exit 1; }
dpkg-deb -x "$deb" "$scratch/root"
for f in usr/bin/quantlens usr/bin/quantlens-cli \
         usr/share/applications/io.github.quantlens.QuantLens.desktop \
         usr/share/metainfo/io.github.quantlens.QuantLens.metainfo.xml \
         usr/share/icons/hicolor/scalable/apps/io.github.quantlens.QuantLens.svg; do
  [ -e "$scratch/root/$f" ] || { echo "FAIL: $f missing from the package"; exit 1; }
done
version="$("$scratch/root/usr/bin/quantlens-cli" --version)"
echo "$version" | grep -q "quantlens-cli 0\." || { echo "FAIL: --version printed '$version'"; exit 1; }
model="$data/models/stories260K/stories260K.gguf"
if [ -f "$model" ]; then
  QT_QPA_PLATFORM=offscreen "$scratch/root/usr/bin/quantlens" --screenshot "$scratch/shot.png" \
    --select blk.0.attn_q.weight "$model"
  [ -s "$scratch/shot.png" ] || { echo "FAIL: the installed GUI made no screenshot"; exit 1; }
fi
echo "1 passed, 0 failed"
