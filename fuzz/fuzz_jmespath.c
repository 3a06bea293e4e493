/*
 * Fuzz target: the JMESPath library (src/jmespath) on arbitrary expressions and documents.
 *
 * Input layout: expression, then a separator, then a JSON document. The separator is the first NUL
 * byte when there is one, else the first newline; without either, the whole input is the
 * expression. When the document part is missing or does not parse, a fixed document that has
 * every JSON type is used instead. The seed corpus (fuzz/make_jmespath_corpus.py) holds every
 * compliance-suite expression with its document, NUL-separated.
 *
 * Oracles, beyond "no crash, no leak, no undefined behaviour":
 * - compile: 0 with an expression (size > 0), or a known non-zero status with *out NULL and a
 *   non-empty, NUL-terminated message whose offset lies inside the expression (or is SIZE_MAX);
 * - eval, under a small step budget so that no input can time out: a result iff the status is 0,
 *   the same checks on the error otherwise, never "cancelled" (the flag stays clear), and never
 *   more steps than the budget;
 * - a second evaluation of the same compiled expression gives the same status and, when the
 *   result is small enough to compare as a tree (results may share structure), an equal result;
 * - metering is exact and deterministic: a successful evaluation that took N steps succeeds again
 *   with a budget of exactly N and fails with "limit" with N - 1;
 * - with the cancel flag already set, evaluation always stops with "cancelled".
 */
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "jmespath/jmespath.h"
#include "jmespath/jmespath_test.h"

#define FUZZ_MAX_STEPS 1000000u
#define FUZZ_MAX_TREE 100000 /* results with more nodes than this, once expanded, are not compared */

static const char rich_doc[] =
    "{\"a\": {\"b\": {\"c\": [1, 2, 3]}}, \"foo\": [{\"bar\": 1, \"baz\": \"x\"}, {\"bar\": 2.5, \"baz\": "
    "null},"
    " {\"bar\": -3, \"baz\": [\"y\", \"z\"]}, []], \"s\": \"h\\u00e9llo \\ud83d\\ude00\", \"t\": true,"
    " \"f\": false, \"n\": null, \"e\": {}, \"ea\": [], \"nums\": [5, 3.5, -1, 0, 1e300, "
    "9223372036854775807],"
    " \"strs\": [\"b\", \"a\", \"\", \"c\"], \"nested\": [[1, [2, [3]]], [4], 5],"
    " \"objs\": [{\"k\": 2, \"v\": \"b\"}, {\"k\": 1, \"v\": \"a\"}], \"\": \"empty key\"}";

/* Does v expand to at most *left nodes? Decrements *left per node, stops early. */
static bool small_tree(const json_t *v, long *left)
{
    size_t i;
    const char *key;
    json_t *x;
    if (--*left < 0)
        return false;
    if (json_is_array(v)) {
        json_array_foreach(v, i, x)
        {
            if (!small_tree(x, left))
                return false;
        }
    } else if (json_is_object(v)) {
        json_object_foreach((json_t *)v, key, x)
        {
            if (!small_tree(x, left))
                return false;
        }
    }
    return true;
}

static void check_error(int rc, const bw_jmespath_error_t *err, size_t expr_len)
{
    if (rc <= 0 || (int)err->status != rc || err->message[0] == '\0')
        abort();
    if (memchr(err->message, '\0', sizeof err->message) == NULL)
        abort();
    if (strcmp(bw_jmespath_status_name(rc), "unknown") == 0 || rc == BW_JMESPATH_ECANCELLED)
        abort();
    if (err->offset != SIZE_MAX && err->offset > expr_len)
        abort();
}

static int eval_with(const bw_jmespath_expr_t *e, json_t *doc, uint64_t max_steps, const _Atomic int *cancel)
{
    bw_jmespath_eval_opts_t o = {.max_steps = max_steps, .cancel = cancel};
    bw_jmespath_error_t err;
    json_t *r = NULL;
    int rc = bw_jmespath_eval_opts(e, doc, &o, &r, &err);
    if ((rc == 0) != (r != NULL))
        abort();
    json_decref(r);
    return rc;
}

static void check_exact_budget(const bw_jmespath_expr_t *e, json_t *doc, uint64_t steps)
{
    if (eval_with(e, doc, steps, NULL) != 0)
        abort();
    if (steps > 1 && eval_with(e, doc, steps - 1, NULL) != BW_JMESPATH_ELIMIT)
        abort();
}

static void check_cancelled(const bw_jmespath_expr_t *e, json_t *doc)
{
    static _Atomic int set = 1;
    if (eval_with(e, doc, FUZZ_MAX_STEPS, &set) != BW_JMESPATH_ECANCELLED)
        abort();
}

/* Evaluates twice (the second time counting steps) and compares. */
static void check_eval(const bw_jmespath_expr_t *e, json_t *doc, size_t expr_len)
{
    static _Atomic int never = 0;
    bw_jmespath_eval_opts_t o = {.max_steps = FUZZ_MAX_STEPS, .cancel = &never};
    bw_jmespath_error_t err;
    json_t *r1 = NULL, *r2 = NULL;
    uint64_t steps = 0;
    int rc = bw_jmespath_eval_opts(e, doc, &o, &r1, &err);
    if ((rc == 0) != (r1 != NULL))
        abort();
    if (rc != 0)
        check_error(rc, &err, expr_len);
    int rc2 = bw_jmespath_test_eval_steps(e, doc, &o, &r2, &steps);
    if (rc2 != rc || (rc2 == 0) != (r2 != NULL) || steps > FUZZ_MAX_STEPS)
        abort();
    long left = FUZZ_MAX_TREE;
    if (rc == 0 && small_tree(r1, &left) && !json_equal(r1, r2))
        abort();
    json_decref(r1);
    json_decref(r2);
    if (rc == 0)
        check_exact_budget(e, doc, steps);
    check_cancelled(e, doc);
}

/* Splits the input: *expr_len bytes of expression; the document follows the separator. */
static json_t *split(const uint8_t *data, size_t size, size_t *expr_len)
{
    const uint8_t *sep = memchr(data, '\0', size);
    if (sep == NULL)
        sep = memchr(data, '\n', size);
    *expr_len = sep != NULL ? (size_t)(sep - data) : size;
    json_t *doc = NULL;
    if (sep != NULL)
        doc = json_loadb((const char *)sep + 1, size - *expr_len - 1, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
    return doc != NULL ? doc : json_loads(rich_doc, 0, NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t len;
    json_t *doc = split(data, size, &len);
    char *expr = malloc(len ? len : 1); /* exact size, so ASan sees any read past len */
    memcpy(expr, data, len);
    bw_jmespath_expr_t *e = NULL;
    bw_jmespath_error_t err;
    int rc = bw_jmespath_compile(expr, len, &e, &err);
    if ((rc == 0) != (e != NULL))
        abort();
    if (rc != 0)
        check_error(rc, &err, len);
    else if (bw_jmespath_expr_size(e) == 0)
        abort();
    else
        check_eval(e, doc, len);
    bw_jmespath_destroy(e);
    free(expr);
    json_decref(doc);
    return 0;
}
