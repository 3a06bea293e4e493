#!/usr/bin/env bash
# Installs the Debian 12 packages beamline-worker needs to build, run and test; only the missing ones.
# Uses sudo when not root. Safe to run repeatedly. Then, when node and npm are there, the browser test's
# npm packages (tests/browser: playwright-core, which drives Debian's chromium; no browser download).
set -euo pipefail

PACKAGES=(
  build-essential cmake pkg-config git
  libnats-dev libuv1-dev libjansson-dev libssl-dev
  libcmocka-dev nats-server
  libjavascriptcoregtk-4.1-dev libseccomp-dev libcurl4-openssl-dev
  nodejs node-graphql openssl postgresql libpq-dev libjemalloc-dev
  chromium fonts-liberation
  prometheus lintian systemd man-db groff-base
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "install-deps: need root or sudo to install: ${missing[*]}" >&2; exit 1; }
    SUDO="sudo"
  fi
  echo "install-deps: installing ${missing[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

# The browser test's packages, exactly as package-lock.json pins them; only when missing or older than the
# lock file. Without npm the browser test skips (and fails under CI=true).
BROWSER_DIR="$(cd "$(dirname "$0")/.." && pwd)/tests/browser"
if command -v node >/dev/null && command -v npm >/dev/null; then
  if [ ! -d "$BROWSER_DIR/node_modules" ] || [ "$BROWSER_DIR/package-lock.json" -nt "$BROWSER_DIR/node_modules" ]; then
    echo "install-deps: npm ci in $BROWSER_DIR" >&2
    (cd "$BROWSER_DIR" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund >&2)
    touch "$BROWSER_DIR/node_modules" # npm ci keeps the directory's old time when nothing changed
  fi
else
  echo "install-deps: no node/npm: the browser test (test_approvals_ui) will skip" >&2
fi
