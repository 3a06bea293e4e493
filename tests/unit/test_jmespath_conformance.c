/*
 * Runs the official JMESPath compliance suite (every .json file in tests/fixtures/jmespath, copied from the
 * jmespath.test project) against src/jmespath: one test per file, then a total over every file
 * in the directory. Results are compared with JMESPath equality (1 == 1.0, unordered objects);
 * error cases must fail with exactly the suite's error kind; benchmark cases (no result) must
 * compile and evaluate. Every miss is printed with its file, expression, expectation and outcome.
 */
#include <dirent.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "jmespath/jmespath.h"
#include "jmespath/jmespath_test.h"

#define SUITE_DIR BW_FIXTURES_DIR "/jmespath"

static const char *const suite_files[] = {
    "basic.json",     "benchmarks.json",  "boolean.json", "current.json",  "escape.json",      "filters.json",
    "functions.json", "identifiers.json", "indices.json", "literal.json",  "multiselect.json", "pipe.json",
    "slice.json",     "syntax.json",      "unicode.json", "wildcard.json",
};
#define N_SUITE_FILES (sizeof suite_files / sizeof suite_files[0])

static size_t total_cases, total_passed, files_run;

static char *show(const json_t *v)
{
    return v != NULL ? json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY) : strdup("(none)");
}

static void report_miss(const char *file, const char *expr, const json_t *want, const char *want_err, int rc,
                        const json_t *got, const bw_jmespath_error_t *err)
{
    char *w = want_err != NULL ? strdup(want_err) : show(want);
    char *g = rc == 0 ? show(got) : NULL;
    printf("FAIL %s: %s\n  expected: %s%s\n  got:      ", file, expr, want_err != NULL ? "error " : "", w);
    if (rc == 0)
        printf("%s\n", g);
    else
        printf("error %s (%s)\n", bw_jmespath_status_name(rc), err->message);
    free(w);
    free(g);
}

/* Runs one case against given; true when it passes. */
static bool run_case(const char *file, json_t *given, const json_t *c)
{
    const json_t *jexpr = json_object_get(c, "expression");
    const json_t *want = json_object_get(c, "result");
    const char *want_err = json_string_value(json_object_get(c, "error"));
    bool bench = json_object_get(c, "bench") != NULL;
    bw_jmespath_expr_t *e = NULL;
    bw_jmespath_error_t err = {0};
    json_t *got = NULL;
    if (!json_is_string(jexpr)) {
        printf("FAIL %s: case without an expression\n", file);
        return false;
    }
    const char *expr = json_string_value(jexpr);
    int rc = bw_jmespath_compile(expr, json_string_length(jexpr), &e, &err);
    if (rc == 0)
        rc = bw_jmespath_eval(e, given, &got, &err);
    bool ok;
    if (want_err != NULL)
        ok = rc != 0 && strcmp(bw_jmespath_status_name(rc), want_err) == 0;
    else if (want == NULL)
        ok = bench && rc == 0;
    else
        ok = rc == 0 && bw_jmespath_test_equal(got, want);
    if (!ok)
        report_miss(file, expr, want, want_err, rc, got, &err);
    json_decref(got);
    bw_jmespath_destroy(e);
    return ok;
}

/* Runs every case of one suite file; prints and returns the tally. */
static void run_file(const char *name, size_t *cases, size_t *passed)
{
    char path[512];
    json_error_t jerr;
    snprintf(path, sizeof path, "%s/%s", SUITE_DIR, name);
    json_t *groups = json_load_file(path, 0, &jerr);
    *cases = *passed = 0;
    if (!json_is_array(groups))
        fail_msg("cannot load %s: %s", path, jerr.text);
    size_t gi, ci;
    json_t *group, *c;
    json_array_foreach(groups, gi, group)
    {
        json_t *given = json_object_get(group, "given");
        json_array_foreach(json_object_get(group, "cases"), ci, c)
        {
            (*cases)++;
            *passed += run_case(name, given, c);
        }
    }
    json_decref(groups);
    printf("jmespath conformance: %-18s %zu/%zu passed\n", name, *passed, *cases);
    total_cases += *cases;
    total_passed += *passed;
    files_run++;
}

static void test_file(void **state)
{
    size_t cases, passed;
    run_file(*state, &cases, &passed);
    assert_true(cases > 0);
    assert_int_equal(passed, cases);
}

static bool is_listed(const char *name)
{
    for (size_t i = 0; i < N_SUITE_FILES; i++)
        if (strcmp(suite_files[i], name) == 0)
            return true;
    return false;
}

/* Runs any suite file not in the list above (so a file added to the directory is never skipped),
   then prints the total over everything. */
static void test_total(void **state)
{
    DIR *d = opendir(SUITE_DIR);
    assert_non_null(d);
    size_t found = 0, extra_missed = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        size_t n = strlen(de->d_name);
        if (n < 5 || strcmp(de->d_name + n - 5, ".json") != 0)
            continue;
        found++;
        if (!is_listed(de->d_name)) {
            size_t cases, passed;
            run_file(de->d_name, &cases, &passed);
            extra_missed += cases - passed;
        }
    }
    closedir(d);
    printf("jmespath conformance: %zu/%zu passed (%zu files)\n", total_passed, total_cases, files_run);
    assert_int_equal(found, files_run);
    assert_int_equal(extra_missed, 0);
    assert_int_equal(total_passed, total_cases);
}

int main(void)
{
    struct CMUnitTest tests[N_SUITE_FILES + 1];
    for (size_t i = 0; i < N_SUITE_FILES; i++) {
        tests[i] = (struct CMUnitTest)cmocka_unit_test_prestate(test_file, (void *)suite_files[i]);
        tests[i].name = suite_files[i];
    }
    tests[N_SUITE_FILES] = (struct CMUnitTest)cmocka_unit_test(test_total);
    return _cmocka_run_group_tests("jmespath_conformance", tests, N_SUITE_FILES + 1, NULL, NULL);
}
