#!/usr/bin/env bash
# Installs the Debian 12 packages beamline-worker needs to build, run and test; only the missing ones.
# Uses sudo when not root. Safe to run repeatedly.
set -euo pipefail

PACKAGES=(
  build-essential cmake pkg-config git
  libnats-dev libuv1-dev libjansson-dev libssl-dev
  libcmocka-dev nats-server
  libjavascriptcoregtk-4.1-dev libseccomp-dev libcurl4-openssl-dev
  nodejs node-graphql openssl postgresql libpq-dev libjemalloc-dev
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "install-deps: need root or sudo to install: ${missing[*]}" >&2; exit 1; }
  SUDO="sudo"
fi
echo "install-deps: installing ${missing[*]}" >&2
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
