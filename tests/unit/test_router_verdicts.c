/*
 * Proves tests/support/router_check.c against the router's own verdicts: every line of
 * tests/fixtures/router/result-verdicts.jsonl is fed, in file order, into one checker (the order
 * matters: DUPLICATE depends on what earlier lines left behind), and the verdict must equal the
 * line's "expect" exactly. Integration tests rely on this checker to judge what the worker emits.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "router_check.h"
#include "testutil.h"

#define FIXTURE BW_FIXTURES_DIR "/router/result-verdicts.jsonl"
#define FIXTURE_LINES 74

/* Parses the fixture into an array of line objects; NULL when unreadable or a line is not JSON. */
static json_t *load_fixture(void)
{
    char *text = bw_test_read_file(FIXTURE, NULL);
    json_t *lines = json_array();
    char *save = NULL;

    for (char *line = text ? strtok_r(text, "\n", &save) : NULL; line != NULL && lines != NULL;
         line = strtok_r(NULL, "\n", &save)) {
        json_t *obj = json_loads(line, 0, NULL);
        if (!json_is_object(obj)) {
            fprintf(stderr, "fixture line %zu is not a JSON object\n", json_array_size(lines) + 1);
            json_decref(obj);
            json_decref(lines);
            lines = NULL;
            break;
        }
        json_array_append_new(lines, obj);
    }
    if (text == NULL) {
        json_decref(lines);
        lines = NULL;
    }
    free(text);
    return lines;
}

static int group_setup(void **state)
{
    *state = load_fixture();
    return *state != NULL ? 0 : -1;
}

static int group_teardown(void **state)
{
    json_decref(*state);
    return 0;
}

/* The payload bytes as the router received them: a JSON string in the fixture stands for a raw,
   non-JSON body (f11); anything else was sent as its compact JSON encoding. */
static char *payload_bytes(const json_t *payload)
{
    if (json_is_string(payload))
        return strdup(json_string_value(payload));
    return json_dumps(payload, JSON_COMPACT | JSON_ENCODE_ANY);
}

/* Runs one fixture line through rc; writes "ACCEPT OK" / "REJECT <CODE>" into got. */
static void judge(bw_router_check_t *rc, const json_t *line, char *got, size_t gotlen)
{
    char code[64];
    char *payload = payload_bytes(json_object_get(line, "payload"));
    json_t *headers = json_object_get(line, "headers");
    int rejected;

    assert_non_null(payload);
    rejected = bw_router_check(rc, json_string_value(json_object_get(line, "subject")),
                               json_is_object(headers) ? headers : NULL, payload, strlen(payload), code,
                               sizeof(code));
    snprintf(got, gotlen, "%s %s", rejected ? "REJECT" : "ACCEPT", code);
    free(payload);
}

static void test_fixture_has_all_lines(void **state)
{
    json_t *lines = *state;
    size_t i;
    json_t *line;

    assert_int_equal(json_array_size(lines), FIXTURE_LINES);
    json_array_foreach(lines, i, line) {
        assert_non_null(json_string_value(json_object_get(line, "label")));
        assert_non_null(json_string_value(json_object_get(line, "expect")));
        assert_non_null(json_string_value(json_object_get(line, "subject")));
        assert_non_null(json_object_get(line, "payload"));
    }
}

static void test_every_verdict_matches(void **state)
{
    json_t *lines = *state;
    bw_router_check_t *rc = bw_router_check_create();
    int mismatches = 0;
    size_t i;
    json_t *line;

    assert_non_null(rc);
    json_array_foreach(lines, i, line) {
        char got[96];
        const char *expect = json_string_value(json_object_get(line, "expect"));
        judge(rc, line, got, sizeof(got));
        if (strcmp(got, expect) != 0) {
            fprintf(stderr, "line %zu [%s]: expected \"%s\", got \"%s\"\n", i + 1,
                    json_string_value(json_object_get(line, "label")), expect, got);
            mismatches++;
        }
    }
    bw_router_check_destroy(rc);
    assert_int_equal(mismatches, 0);
}

/* The first line whose label starts with prefix, or NULL. */
static json_t *find_label(json_t *lines, const char *prefix)
{
    size_t i;
    json_t *line;

    json_array_foreach(lines, i, line) {
        const char *label = json_string_value(json_object_get(line, "label"));
        if (label != NULL && strncmp(label, prefix, strlen(prefix)) == 0)
            return line;
    }
    return NULL;
}

/* The verdicts depend on order: a fresh checker accepts f1 (the duplicate of a2) when a2 was never
   seen, so DUPLICATE really comes from memory and not from the message itself. */
static void test_duplicate_needs_history(void **state)
{
    json_t *line = find_label(*state, "f1 ");
    bw_router_check_t *rc = bw_router_check_create();
    char got[96];

    assert_non_null(line);
    assert_non_null(rc);
    judge(rc, line, got, sizeof(got));
    assert_string_equal(got, "ACCEPT OK");
    judge(rc, line, got, sizeof(got));
    assert_string_equal(got, "REJECT DUPLICATE");
    bw_router_check_destroy(rc);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fixture_has_all_lines),
        cmocka_unit_test(test_every_verdict_matches),
        cmocka_unit_test(test_duplicate_needs_history),
    };

    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
