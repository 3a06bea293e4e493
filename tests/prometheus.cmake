# The Prometheus alert rules (deploy/prometheus): promtool checks them and runs their unit tests, and a
# coverage check makes sure every alert has a test in which it fires and one in which it stays silent.
# The dashboard and the rules against a real Prometheus: tests/integration/test_prometheus.c.
#
# Included from tests/CMakeLists.txt. The same file run as a script (cmake -DRULES=... -DTESTS=... -P
# prometheus.cmake) is that coverage check, so it needs no shell, Python or YAML library.
#
# promtool comes with Debian's prometheus package (scripts/install-deps.sh). Without it the tests skip
# (exit 77), except under CI=true, where they fail.

if(CMAKE_SCRIPT_MODE_FILE)
  cmake_policy(VERSION 3.16) # IN_LIST
  # Alert names from the rules; from the tests, for each `alertname:` whether its exp_alerts was empty
  # ([]) or listed alerts. Line-based on purpose: both files are written in that shape.
  file(STRINGS "${RULES}" rule_lines REGEX "^ *- alert: ")
  file(STRINGS "${TESTS}" test_lines REGEX "^ *(- eval_time:|alertname:|exp_alerts:)")
  set(current "")
  foreach(line IN LISTS test_lines)
    if(line MATCHES "alertname: *([A-Za-z0-9_]+)")
      set(current "${CMAKE_MATCH_1}")
    elseif(line MATCHES "exp_alerts: *\\[\\]")
      list(APPEND silent "${current}")
    elseif(line MATCHES "exp_alerts: *$")
      list(APPEND fires "${current}")
    endif()
  endforeach()
  set(missing "")
  foreach(line IN LISTS rule_lines)
    string(REGEX REPLACE "^ *- alert: *([A-Za-z0-9_]+).*" "\\1" name "${line}")
    if(NOT name IN_LIST fires)
      string(APPEND missing "  ${name}: no test in which it fires\n")
    endif()
    if(NOT name IN_LIST silent)
      string(APPEND missing "  ${name}: no test in which it stays silent\n")
    endif()
  endforeach()
  list(LENGTH rule_lines nrules)
  if(nrules EQUAL 0)
    message(FATAL_ERROR "no alert found in ${RULES}")
  elseif(missing)
    message(FATAL_ERROR "alerts not covered by ${TESTS}:\n${missing}")
  endif()
  message(STATUS "all ${nrules} alerts fire in a test and stay silent in another")
  return()
endif()

set(BW_PROM_DIR ${PROJECT_SOURCE_DIR}/deploy/prometheus)
find_program(BW_PROMTOOL promtool)
if(BW_PROMTOOL)
  set(bw_promtool ${BW_PROMTOOL})
else()
  # A stand-in that skips, or fails under CI: a missing package must not pass silently there. (No ';' in
  # the script: CMake would split the command there.)
  set(bw_promtool sh -c "echo 'promtool not found (Debian package prometheus)' >&2 && test \"$CI\" != true && exit 77 || exit 1" promtool)
endif()
add_test(NAME prometheus_rules_check COMMAND ${bw_promtool} check rules ${BW_PROM_DIR}/alerts.yml)
add_test(NAME prometheus_rules_test COMMAND ${bw_promtool} test rules ${BW_PROM_DIR}/alerts_test.yml)
add_test(NAME prometheus_rules_coverage
         COMMAND ${CMAKE_COMMAND} -DRULES=${BW_PROM_DIR}/alerts.yml -DTESTS=${BW_PROM_DIR}/alerts_test.yml
                 -P ${CMAKE_CURRENT_LIST_FILE})
set_tests_properties(prometheus_rules_check prometheus_rules_test prometheus_rules_coverage
                     PROPERTIES LABELS unit TIMEOUT 60 SKIP_RETURN_CODE 77)
