#!/usr/bin/env bash
# Builds the Debian package from a build directory (cpack -G DEB) and checks it: its contents, the binary
# extracted from it, lintian (no errors), the systemd unit (systemd-analyze verify, and its security
# exposure below 2.0), and, when run as root with CI=true, dpkg -i / --version / dpkg -P (purge).
# Usage: scripts/check-package.sh [BUILD_DIR]   (default: build; scripts/test.sh runs it after the plain suite)
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build}
fail() { echo "check-package: FAILED: $*" >&2; exit 1; }

(cd "$BUILD" && cpack -G DEB >/dev/null) || fail "cpack -G DEB in $BUILD"
DEB=$(ls -t "$BUILD"/beamline-worker_*.deb | head -1)
echo "check-package: $DEB ($(stat -c %s "$DEB") bytes)"

CONTENTS=$(dpkg-deb -c "$DEB" | awk '{print $6}')
for want in ./usr/bin/beamline-worker ./lib/systemd/system/beamline-worker.service ./etc/default/beamline-worker \
            ./usr/share/man/man1/beamline-worker.1.gz ./usr/share/doc/beamline-worker/copyright \
            ./usr/share/doc/beamline-worker/changelog.gz ./usr/share/doc/beamline-worker/README.md; do
  grep -qx "$want" <<<"$CONTENTS" || fail "$want is not in the package"
done
dpkg-deb -f "$DEB" Depends | grep -q libnats || fail "Depends (from shlibdeps) does not name libnats"
dpkg-deb -I "$DEB" conffiles | grep -qx /etc/default/beamline-worker || fail "/etc/default/beamline-worker is not a conffile"

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
dpkg-deb -x "$DEB" "$TMP/root"
"$TMP/root/usr/bin/beamline-worker" --version | grep -q "beamline-worker" || fail "the extracted binary's --version"
if command -v man >/dev/null; then
  man -l "$TMP/root/usr/share/man/man1/beamline-worker.1.gz" >/dev/null 2>&1 || fail "man -l on the man page"
fi

# lintian: warnings are reported, errors fail (it warns when run as root)
LINT=$(lintian --tag-display-limit 0 "$DEB" 2>&1 | grep -v "running with root privileges" || true)
[ -z "$LINT" ] || printf 'check-package: lintian:\n%s\n' "$LINT"
if grep -q "^E:" <<<"$LINT"; then fail "lintian reported errors"; fi

# the unit: verified against the extracted binary (ExecStart rewritten) and the extracted man page
sed "s|^ExecStart=/usr/bin/beamline-worker|ExecStart=$TMP/root/usr/bin/beamline-worker|" \
  deploy/systemd/beamline-worker.service >"$TMP/beamline-worker.service"
VERIFY=$(MANPATH="$TMP/root/usr/share/man" systemd-analyze verify "$TMP/beamline-worker.service" 2>&1 || true)
[ -z "$VERIFY" ] || fail "systemd-analyze verify: $VERIFY"
SCORE=$(systemd-analyze security --offline=yes "$TMP/beamline-worker.service" 2>&1 | sed -n 's/.*Overall exposure level for .*: \([0-9.]*\).*/\1/p')
[ -n "$SCORE" ] || fail "systemd-analyze security printed no exposure level"
awk -v s="$SCORE" 'BEGIN { exit !(s < 2.0) }' || fail "systemd-analyze security exposure $SCORE (want below 2.0)"
echo "check-package: systemd-analyze security exposure $SCORE"

if [ "$(id -u)" -eq 0 ] && [ "${CI:-}" = "true" ]; then
  if dpkg-query -W -f='${Status}' beamline-worker 2>/dev/null | grep -q "ok installed"; then
    fail "beamline-worker is already installed here: not touching it"
  fi
  dpkg -i "$DEB" >/dev/null || fail "dpkg -i"
  /usr/bin/beamline-worker --version >/dev/null || { dpkg -P beamline-worker >/dev/null; fail "beamline-worker --version after dpkg -i"; }
  dpkg -P beamline-worker >/dev/null || fail "dpkg -P"
  echo "check-package: dpkg -i, --version, dpkg -P: ok"
fi
echo "check-package: ok ($(dpkg-deb -c "$DEB" | wc -l) entries)"
