#!/usr/bin/env bash
# Builds the .deb with CPack, unpacks it into a scratch root (dpkg -x), checks its declared
# dependencies, desktop entry, icon, MIME type and AppStream metadata, and runs the installed
# quantlens-cli --version and the GUI (offscreen, taking a screenshot) from the scratch root.
set -euo pipefail
build="$1"; data="$2"
scratch="$(mktemp -d)"; trap 'rm -rf "$scratch"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
(cd "$build" && cpack -G DEB -B "$scratch/out" >/dev/null)
deb="$(ls "$scratch"/out/quantlens_*.deb)"
# Captured first: `dpkg-deb | grep -q` under pipefail fails when grep exits early (SIGPIPE).
info="$(dpkg-deb --info "$deb")"
depends="$(grep '^ Depends:' <<<"$info" || true)"
for dep in libqt6widgets6 libqt6svg6 libqcustomplot2.1-qt6 libhdf5 hicolor-icon-theme \
           shared-mime-info; do
  grep -q "$dep" <<<"$depends" || fail "dependency $dep not declared ($depends)"
done

root="$scratch/root"
dpkg-deb -x "$deb" "$root"
id=io.github.quantlens.QuantLens
desktop="$root/usr/share/applications/$id.desktop"
metainfo="$root/usr/share/metainfo/$id.metainfo.xml"
for f in usr/bin/quantlens usr/bin/quantlens-cli "${desktop#"$root/"}" "${metainfo#"$root/"}" \
         usr/share/icons/hicolor/scalable/apps/$id.svg usr/share/mime/packages/$id.mime.xml; do
  [ -e "$root/$f" ] || fail "$f missing from the package"
done

# Desktop entry: valid, and what it names is installed.
if command -v desktop-file-validate >/dev/null; then
  desktop-file-validate "$desktop" || fail "desktop entry does not validate"
fi
exec_bin="$(sed -n 's/^Exec=\([^ ]*\).*/\1/p' "$desktop")"
[ -x "$root/usr/bin/$exec_bin" ] || fail "Exec=$exec_bin is not an installed program"
icon="$(sed -n 's/^Icon=//p' "$desktop")"
[ -e "$root/usr/share/icons/hicolor/scalable/apps/$icon.svg" ] || fail "Icon=$icon not installed"
xmllint --noout "$root/usr/share/icons/hicolor/scalable/apps/$icon.svg" || fail "icon is not SVG"

# AppStream metadata: appstreamcli where installed (appstream package), else well-formed XML.
if command -v appstreamcli >/dev/null; then
  appstreamcli validate --no-net "$metainfo" >/dev/null || fail "metainfo does not validate"
else
  xmllint --noout "$metainfo" || fail "metainfo is not well-formed XML"
fi
grep -q "<launchable type=\"desktop-id\">$id.desktop</launchable>" "$metainfo" ||
  fail "metainfo does not launch $id.desktop"
xmllint --noout "$root/usr/share/mime/packages/$id.mime.xml" || fail "MIME type XML malformed"

# The installed programs, from the scratch root (its own libraries first, if any).
export LD_LIBRARY_PATH="$root/usr/lib:$root/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
version="$("$root/usr/bin/quantlens-cli" --version)"
echo "$version" | grep -q "quantlens-cli 0\." || fail "--version printed '$version'"
gui_version="$(QT_QPA_PLATFORM=offscreen "$root/usr/bin/quantlens" --version 2>&1)"
grep -q "0\." <<<"$gui_version" || fail "quantlens --version printed '$gui_version'"
model="$data/models/stories260K/stories260K.gguf"
if [ -f "$model" ]; then
  QT_QPA_PLATFORM=offscreen "$root/usr/bin/quantlens" --screenshot "$scratch/shot.png" \
    --select blk.0.attn_q.weight "$model"
  [ -s "$scratch/shot.png" ] || fail "the installed GUI made no screenshot"
fi
echo "1 passed, 0 failed"
