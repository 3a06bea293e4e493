#!/usr/bin/env bash
# The whole test suite: installs missing packages, builds, runs every unit and integration test
# (each starts the servers it needs on free loopback ports), then runs them all again built with
# AddressSanitizer + UndefinedBehaviorSanitizer. Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
JOBS=$(nproc 2>/dev/null || echo 2)

./scripts/install-deps.sh

run_suite() {
  local dir=$1; shift
  echo "== configure + build ($dir: $*)"
  cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo "$@" >/dev/null
  cmake --build "$dir" -j"$JOBS" 2>&1 | grep -E "error|warning|Error" || true
  cmake --build "$dir" -j"$JOBS" >/dev/null
  echo "== tests ($dir)"
  (cd "$dir" && ctest --output-on-failure --timeout 300 -j"$JOBS")
}

run_suite build
if [ "${BW_SKIP_SANITIZERS:-0}" != "1" ]; then
  run_suite build-asan -DBW_SANITIZE=ON
fi
echo "== all test suites passed"
