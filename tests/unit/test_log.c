/* Unit tests for obs/log.c: JSON line format, levels, text format, e-mail masking. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "obs/log.h"

/* Runs one bw_log call with output captured through a pipe; returns what was written (malloc'd). */
#define CAPTURE(out, stmt)                                       \
    do {                                                         \
        int fds[2];                                              \
        assert_int_equal(pipe(fds), 0);                          \
        bw_log_set_fd(fds[1]);                                   \
        stmt;                                                    \
        close(fds[1]);                                           \
        char buf[8192];                                          \
        ssize_t n = read(fds[0], buf, sizeof buf - 1);           \
        close(fds[0]);                                           \
        buf[n > 0 ? n : 0] = 0;                                  \
        out = strdup(buf);                                       \
        bw_log_set_fd(1);                                        \
    } while (0)

static void test_json_line(void **state)
{
    char *out;
    bw_log_setup(BW_LOG_INFO, true, "worker-1");
    CAPTURE(out, bw_log(BW_LOG_INFO, "job \"finished\"", BW_LS("assignment_id", "a-1"), BW_LI("latency_ms", 42),
                        BW_LS("absent", NULL), BW_LRAW("raw", "{\"x\":1}")));
    assert_ptr_equal(strchr(out, '\n'), out + strlen(out) - 1); /* exactly one line */
    json_t *j = json_loads(out, 0, NULL);
    assert_non_null(j);
    assert_string_equal(json_string_value(json_object_get(j, "level")), "info");
    assert_string_equal(json_string_value(json_object_get(j, "msg")), "job \"finished\"");
    assert_string_equal(json_string_value(json_object_get(j, "worker_id")), "worker-1");
    assert_string_equal(json_string_value(json_object_get(j, "assignment_id")), "a-1");
    assert_int_equal(json_integer_value(json_object_get(j, "latency_ms")), 42);
    assert_null(json_object_get(j, "absent"));
    assert_int_equal(json_integer_value(json_object_get(json_object_get(j, "raw"), "x")), 1);
    const char *ts = json_string_value(json_object_get(j, "ts"));
    assert_int_equal(strlen(ts), 24); /* 2026-01-05T08:00:00.412Z */
    assert_true(ts[4] == '-' && ts[10] == 'T' && ts[19] == '.' && ts[23] == 'Z');
    json_decref(j);
    free(out);
}

static void test_levels(void **state)
{
    char *out;
    bw_log_setup(BW_LOG_WARN, true, "w");
    CAPTURE(out, bw_log(BW_LOG_INFO, "hidden"));
    assert_string_equal(out, "");
    free(out);
    CAPTURE(out, bw_log(BW_LOG_ERROR, "shown"));
    assert_non_null(strstr(out, "\"level\":\"error\""));
    free(out);
    assert_int_equal(bw_log_level_parse("debug"), BW_LOG_DEBUG);
    assert_int_equal(bw_log_level_parse("warn"), BW_LOG_WARN);
    assert_int_equal(bw_log_level_parse("verbose"), -1);
}

static void test_text_format(void **state)
{
    char *out;
    bw_log_setup(BW_LOG_DEBUG, false, "w");
    CAPTURE(out, bw_log(BW_LOG_DEBUG, "job queued", BW_LS("assignment_id", "a-2"), BW_LI("n", 7)));
    assert_non_null(strstr(out, " debug job queued assignment_id=a-2 n=7\n"));
    free(out);
}

static void test_control_characters_escaped(void **state)
{
    char *out;
    bw_log_setup(BW_LOG_INFO, true, "w");
    CAPTURE(out, bw_log(BW_LOG_INFO, "multi\nline\ttab\x01", BW_LS("k", "a\\b")));
    assert_int_equal(strchr(out, '\n'), out + strlen(out) - 1); /* still one line */
    json_t *j = json_loads(out, 0, NULL);
    assert_string_equal(json_string_value(json_object_get(j, "msg")), "multi\nline\ttab\x01");
    assert_string_equal(json_string_value(json_object_get(j, "k")), "a\\b");
    json_decref(j);
    free(out);
}

static void test_email_masking(void **state)
{
    static const char *const cases[][2] = {
        {"contact alice@example.com now", "contact a***@example.com now"},
        {"a.b+tag@mail.example.org,bob@x.io", "a***@mail.example.org,b***@x.io"},
        {"no address here", "no address here"},
        {"user@localhost", "user@localhost"}, /* no dot in the domain: not an address */
        {"@example.com", "@example.com"},
        {"trailing@", "trailing@"},
        {"x@y.", "x@y."},
        {"two@@example.com", "two@@example.com"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *m = bw_log_mask_emails(cases[i][0]);
        if (strcmp(m, cases[i][1]) != 0)
            fail_msg("mask(%s) = %s, want %s", cases[i][0], m, cases[i][1]);
        free(m);
    }
    char *out;
    bw_log_setup(BW_LOG_INFO, true, "w");
    CAPTURE(out, bw_log(BW_LOG_INFO, "mail to carol@example.com failed", BW_LS("error_message", "dave@corp.example rejected")));
    assert_null(strstr(out, "carol@"));
    assert_null(strstr(out, "dave@"));
    assert_non_null(strstr(out, "c***@example.com"));
    assert_non_null(strstr(out, "d***@corp.example"));
    free(out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_json_line),
        cmocka_unit_test(test_levels),
        cmocka_unit_test(test_text_format),
        cmocka_unit_test(test_control_characters_escaped),
        cmocka_unit_test(test_email_masking),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
