#!/usr/bin/env bash
# The whole test suite: installs missing packages, builds, runs every unit and integration test
# (each starts the servers it needs on free loopback ports), then runs them all again built with
# AddressSanitizer + UndefinedBehaviorSanitizer, then the tests labelled `threads` built with
# ThreadSanitizer. Exits non-zero on any failure, and when a suite ran no test at all.
# BW_SKIP_SANITIZERS=1 runs the plain build only (and says so at the end: it is not the whole suite).
set -euo pipefail
cd "$(dirname "$0")/.."
JOBS=$(nproc 2>/dev/null || echo 2)
# One test program more than there are cores: most of a test's time is spent waiting for its worker, its
# servers and their answers, not on a CPU (on 2 cores: plain 182 -> 124 s, TSan 261 -> 184 s). The tests
# are written to hold on a loaded machine (they are also run with two CPU burners beside them).
CTEST_JOBS=${BW_CTEST_JOBS:-$((JOBS + 1))}

./scripts/install-deps.sh

SUMMARY=()

# run_suite DIR "CTEST ARGS" CMAKE ARGS...: configures and builds DIR, runs ctest there. ctest's own
# summary ("N% tests passed, M tests failed out of K", then skipped and failed tests by name) is the
# last thing it prints; a suite with no test in it fails (--no-tests=error).
run_suite() {
  local dir=$1 ctest_args=$2; shift 2
  echo "== configure + build ($dir: $*)"
  cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo "$@" >/dev/null
  cmake --build "$dir" -j"$JOBS" 2>&1 | grep -E "error|warning|Error" || true
  cmake --build "$dir" -j"$JOBS" >/dev/null
  echo "== tests ($dir${ctest_args:+, $ctest_args})"
  local start=$SECONDS log="$dir/ctest-output.log" rc=0
  # shellcheck disable=SC2086 # ctest_args is a list of words
  (cd "$dir" && ctest --output-on-failure --timeout 300 -j"$CTEST_JOBS" --no-tests=error $ctest_args) 2>&1 |
    tee "$log" || rc=$?
  local counts skipped
  counts=$(grep -E "tests passed, [0-9]+ tests? failed out of [0-9]+" "$log" | tail -1 || true)
  skipped=$(grep -cE "^ *[0-9]+/[0-9]+ Test +#[0-9]+: .*\*\*\*Skipped" "$log" || true)
  SUMMARY+=("$dir: ${counts:-no ctest summary}, $skipped skipped, $((SECONDS - start)) s")
  if [ "$rc" -ne 0 ] || [ -z "$counts" ] || [[ "$counts" == *"out of 0" ]]; then
    echo "== FAILED: $dir (${counts:-ctest printed no summary})"
    printf '   %s\n' "${SUMMARY[@]}"
    exit 1
  fi
}

run_suite build ""
# the Debian package from the plain build: contents, extracted binary, lintian, the unit (and, as root under
# CI, dpkg -i / purge)
start=$SECONDS
./scripts/check-package.sh build || { echo "== FAILED: the package check"; exit 1; }
SUMMARY+=("package: cpack + checks, $((SECONDS - start)) s")
if [ "${BW_SKIP_SANITIZERS:-0}" != "1" ]; then
  run_suite build-asan "" -DBW_SANITIZE=ON
  run_suite build-tsan "-L threads" -DBW_TSAN=ON
  echo "== all test suites passed: plain, ASan+UBSan, TSan (tests labelled threads)"
else
  echo "== plain suite passed; SKIPPED (BW_SKIP_SANITIZERS=1): the ASan+UBSan and TSan suites"
fi
printf '   %s\n' "${SUMMARY[@]}"
