/*
 * Public entry points of the JMESPath library: compile, evaluate, destroy, and the status names.
 *
 * A compiled expression owns an arena (the whole AST) and a list of literal values; destroy
 * releases both without walking the tree, so it is cheap and needs no recursion.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "jmespath_int.h"
#include "jmespath_test.h"

static const char *const status_names[] = {
    [BW_JMESPATH_OK] = "ok",
    [BW_JMESPATH_ESYNTAX] = "syntax",
    [BW_JMESPATH_EINVALID_TYPE] = "invalid-type",
    [BW_JMESPATH_EINVALID_VALUE] = "invalid-value",
    [BW_JMESPATH_EINVALID_ARITY] = "invalid-arity",
    [BW_JMESPATH_EUNKNOWN_FUNCTION] = "unknown-function",
    [BW_JMESPATH_ELIMIT] = "limit",
    [BW_JMESPATH_ECANCELLED] = "cancelled",
};

const char *bw_jmespath_status_name(bw_jmespath_status_t s)
{
    if ((unsigned)s < sizeof status_names / sizeof status_names[0])
        return status_names[s];
    return "unknown";
}

static void clear_error(bw_jmespath_error_t *err)
{
    if (err != NULL) {
        err->status = BW_JMESPATH_OK;
        err->offset = SIZE_MAX;
        err->message[0] = '\0';
    }
}

void jp_expr_own(bw_jmespath_expr_t *e, json_t *lit, size_t text_len)
{
    if (e->nlits == e->litcap) {
        e->litcap = e->litcap ? e->litcap * 2 : 8;
        e->lits = jp_xrealloc(e->lits, e->litcap * sizeof *e->lits);
    }
    e->lits[e->nlits++] = lit;
    /* jansson values take a few times their text; a guess is all an LRU needs. */
    e->lit_bytes += 64 + 2 * text_len;
}

int bw_jmespath_compile(const char *expr, size_t len, bw_jmespath_expr_t **out, bw_jmespath_error_t *err)
{
    clear_error(err);
    *out = NULL;
    if (expr == NULL && len > 0)
        return jp_set_error(err, BW_JMESPATH_ESYNTAX, SIZE_MAX, "no expression text");
    size_t bad = jp_utf8_check(expr, len);
    if (bad < len)
        return jp_set_error(err, BW_JMESPATH_ESYNTAX, bad, "invalid UTF-8 in expression");
    bw_jmespath_expr_t *e = jp_xmalloc(sizeof *e);
    memset(e, 0, sizeof *e);
    int rc = jp_parse(e, expr != NULL ? expr : "", len, err);
    if (rc != 0) {
        bw_jmespath_destroy(e);
        return rc;
    }
    jp_set_costs(e->root);
    *out = e;
    return 0;
}

/* Evaluates within c; the result or NULL with c->status set. */
static json_t *eval_in(jp_ctx_t *c, const bw_jmespath_expr_t *e, json_t *data)
{
    return jp_eval(c, e->root, data != NULL ? data : json_null());
}

int bw_jmespath_eval_opts(const bw_jmespath_expr_t *e, json_t *data, const bw_jmespath_eval_opts_t *o,
                          json_t **result, bw_jmespath_error_t *err)
{
    jp_ctx_t c;
    clear_error(err);
    jp_ctx_init(&c, o, err);
    *result = eval_in(&c, e, data);
    return *result != NULL ? 0 : c.status;
}

int bw_jmespath_eval(const bw_jmespath_expr_t *e, json_t *data, json_t **result, bw_jmespath_error_t *err)
{
    return bw_jmespath_eval_opts(e, data, NULL, result, err);
}

void bw_jmespath_destroy(bw_jmespath_expr_t *e)
{
    if (e == NULL)
        return;
    for (size_t i = 0; i < e->nlits; i++)
        json_decref(e->lits[i]);
    free(e->lits);
    jp_arena_free(&e->arena);
    free(e);
}

size_t bw_jmespath_expr_size(const bw_jmespath_expr_t *e)
{
    if (e == NULL)
        return 0;
    return sizeof *e + e->arena.bytes + e->litcap * sizeof *e->lits + e->lit_bytes;
}

/* Test helper (jmespath_test.h): the evaluator's own equality, without a budget. */
bool bw_jmespath_test_equal(const json_t *a, const json_t *b)
{
    jp_ctx_t c;
    bw_jmespath_eval_opts_t o = {.max_steps = UINT64_MAX};
    jp_ctx_init(&c, &o, NULL);
    return jp_equal(&c, a, b) == 1;
}

/* Test helper (jmespath_test.h): an evaluation that also reports the steps it used. */
int bw_jmespath_test_eval_steps(const bw_jmespath_expr_t *e, json_t *data, const bw_jmespath_eval_opts_t *o,
                                json_t **result, uint64_t *steps)
{
    jp_ctx_t c;
    jp_ctx_init(&c, o, NULL);
    *result = eval_in(&c, e, data);
    *steps = c.max_steps - c.reserve - c.tick;
    return *result != NULL ? 0 : c.status;
}
