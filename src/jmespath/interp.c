/*
 * Tree-walking evaluator over the immutable AST.
 *
 * Every evaluator returns a new reference or NULL after recording an error in the context; no
 * state is shared between calls, which is what makes one compiled expression safe to evaluate
 * from several threads. Values found in the data are returned by reference (incref), never
 * copied; leaf steps (field, index, @, literal) are even walked without touching reference
 * counts. Recursion follows the tree, whose height the parser capped.
 *
 * Work is metered: every node evaluated and every element visited is charged to the context's
 * budget before the work is done (jp_charge), and a failed charge unwinds like any error. The
 * functions and the deep walks (equality, to_string) charge the same way, so an evaluation never
 * does more than O(max_steps) work, and it looks at the cancel flag every JP_CHECK_EVERY steps.
 */
#include <inttypes.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "jmespath_int.h"

/* ---- the budget ---- */

void jp_ctx_init(jp_ctx_t *c, const bw_jmespath_eval_opts_t *o, bw_jmespath_error_t *err)
{
    c->err = err;
    c->status = 0;
    c->max_steps = o != NULL && o->max_steps != 0 ? o->max_steps : BW_JMESPATH_DEFAULT_MAX_STEPS;
    c->cancel = o != NULL ? o->cancel : NULL;
    c->max_bytes = o != NULL && o->max_bytes != 0 ? o->max_bytes : BW_JMESPATH_DEFAULT_MAX_BYTES;
    c->bytes_left = c->max_bytes;
    c->reserve = c->max_steps;
    c->tick = 0; /* the first charge takes the slow path, which looks at the flag */
}

bool jp_charge_slow(jp_ctx_t *c, uint64_t n)
{
    if (c->status != 0)
        return false;
    n -= c->tick; /* n >= tick here: spend what the tick had left */
    c->tick = 0;
    if (c->cancel != NULL && atomic_load_explicit(c->cancel, memory_order_relaxed) != 0) {
        jp_fail(c, BW_JMESPATH_ECANCELLED, SIZE_MAX, "evaluation cancelled");
        return false;
    }
    if (n > c->reserve) {
        c->reserve = 0;
        jp_fail(c, BW_JMESPATH_ELIMIT, SIZE_MAX, "evaluation exceeded its budget of %" PRIu64 " steps",
                c->max_steps);
        return false;
    }
    c->reserve -= n;
    c->tick = c->reserve < JP_CHECK_EVERY ? (uint32_t)c->reserve : JP_CHECK_EVERY;
    c->reserve -= c->tick;
    return true;
}

bool jp_mem_fail(jp_ctx_t *c)
{
    c->bytes_left = 0;
    jp_fail(c, BW_JMESPATH_ELIMIT, SIZE_MAX, "evaluation exceeded its memory budget of %" PRIu64 " bytes",
            c->max_bytes);
    return false;
}

json_t *jp_fail(jp_ctx_t *c, bw_jmespath_status_t st, size_t off, const char *fmt, ...)
{
    if (c->status == 0) {
        va_list ap;
        va_start(ap, fmt);
        c->status = jp_set_verror(c->err, st, off, fmt, ap);
        va_end(ap);
    }
    return NULL;
}

static bool is_leaf(const jp_node_t *n)
{
    return n->kind == N_FIELD || n->kind == N_INDEX || n->kind == N_CURRENT || n->kind == N_LITERAL;
}

static uint32_t saturate(uint64_t x)
{
    return x > UINT32_MAX ? UINT32_MAX : (uint32_t)x;
}

/* Whether evaluating n builds a new value (most function results do). */
static bool builds(const jp_node_t *n)
{
    switch (n->kind) {
    case N_SLICE:
    case N_PROJECT:
    case N_VALUES:
    case N_FILTER:
    case N_FLATTEN:
    case N_LIST:
    case N_HASH:
    case N_CALL:
        return true;
    default:
        return false;
    }
}

void jp_set_costs(jp_node_t *n)
{
    uint64_t cost = n->kind == N_FIELD ? jp_bytes_cost(n->u.name.len) : 1;
    bool seq = n->kind == N_CHAIN || n->kind == N_PIPE;
    if (builds(n))
        cost += JP_NEW_COST;
    for (size_t i = 0; i < n->nkids; i++) {
        jp_set_costs(n->kids[i]);
        if (seq && is_leaf(n->kids[i]))
            cost += n->kids[i]->cost; /* eval_sequence runs leaf steps without jp_eval */
        if (n->kind == N_HASH)        /* the key is copied and hashed on insertion */
            cost += JP_INSERT_COST + n->u.keys[i].len / JP_BYTES_PER_STEP;
    }
    n->cost = saturate(cost);
}

static json_t *index_of(const json_t *v, int64_t i)
{
    if (!json_is_array(v))
        return json_null();
    size_t n = json_array_size(v);
    if (i < 0)
        i += (int64_t)n;
    if (i < 0 || (uint64_t)i >= n)
        return json_null();
    return json_array_get(v, (size_t)i);
}

/* A leaf's value, borrowed from v or from the tree. */
static json_t *leaf(const jp_node_t *n, json_t *v)
{
    json_t *r;
    switch (n->kind) {
    case N_FIELD:
        r = json_is_object(v) ? json_object_getn(v, n->u.name.s, n->u.name.len) : NULL;
        return r != NULL ? r : json_null();
    case N_INDEX:
        return index_of(v, n->u.index);
    case N_LITERAL:
        return n->u.lit;
    default:
        return v;
    }
}

/* Evaluates n against v; the result is borrowed when *owned is left NULL, else *owned holds the
   reference to drop. NULL on error. */
static json_t *eval_tmp(jp_ctx_t *c, const jp_node_t *n, json_t *v, json_t **owned)
{
    if (is_leaf(n)) {
        *owned = NULL;
        return jp_charge(c, n->cost) ? leaf(n, v) : NULL;
    }
    *owned = jp_eval(c, n, v);
    return *owned;
}

/* Applies kids in sequence, each to the previous result (a.b.c, a[0][1], a | b). There is no
   early exit on null: the specification (and the reference implementation) evaluates every
   step, so `missing.length(@)` is a type error rather than null. Leaf steps borrow from
   whatever owns the previous value. */
static json_t *eval_sequence(jp_ctx_t *c, const jp_node_t *n, json_t *v)
{
    json_t *owner = NULL, *cur = v;
    for (size_t i = 0; i < n->nkids; i++) {
        const jp_node_t *k = n->kids[i];
        if (is_leaf(k)) {
            cur = leaf(k, cur);
            continue;
        }
        json_t *r = jp_eval(c, k, cur);
        json_decref(owner);
        owner = cur = r;
        if (r == NULL)
            return NULL;
    }
    json_incref(cur);
    json_decref(owner);
    return cur;
}

static bool has_null(const json_t *a)
{
    for (size_t i = 0, end = json_array_size(a); i < end; i++)
        if (json_is_null(json_array_get(a, i)))
            return true;
    return false;
}

/* Appends rhs(v) to out unless it is null. -1 on error. */
static int project_one(jp_ctx_t *c, const jp_node_t *rhs, json_t *v, json_t *out)
{
    json_t *owned;
    json_t *r = eval_tmp(c, rhs, v, &owned);
    if (r == NULL)
        return -1;
    if (!json_is_null(r) && !jp_mem(c, JP_SLOT_BYTES)) {
        json_decref(owned);
        return -1;
    }
    if (!json_is_null(r))
        json_array_append(out, r);
    json_decref(owned);
    return 0;
}

/* rhs over the elements of array a, nulls dropped. */
static json_t *project_array(jp_ctx_t *c, const jp_node_t *rhs, json_t *a)
{
    if (rhs->kind == N_CURRENT) {
        if (!jp_charge(c, json_array_size(a)))
            return NULL;
        if (!has_null(a))
            return json_incref(a); /* identity projection: the array itself */
    }
    json_t *out = jp_xjson(json_array());
    for (size_t i = 0, end = json_array_size(a); i < end; i++) {
        if (project_one(c, rhs, json_array_get(a, i), out) != 0) {
            json_decref(out);
            return NULL;
        }
    }
    return out;
}

/* rhs over the elements of a flattened one level ("a[].b"), without building the flattened
   array first. */
static json_t *project_flat(jp_ctx_t *c, const jp_node_t *rhs, json_t *a)
{
    json_t *out = jp_xjson(json_array());
    for (size_t i = 0, end = json_array_size(a); i < end; i++) {
        json_t *el = json_array_get(a, i);
        size_t n = json_is_array(el) ? json_array_size(el) : 1;
        if (!jp_charge(c, 1)) { /* empty arrays cost no rhs evaluation */
            json_decref(out);
            return NULL;
        }
        for (size_t k = 0; k < n; k++) {
            if (project_one(c, rhs, json_is_array(el) ? json_array_get(el, k) : el, out) != 0) {
                json_decref(out);
                return NULL;
            }
        }
    }
    return out;
}

static json_t *eval_project(jp_ctx_t *c, const jp_node_t *n, json_t *v)
{
    json_t *owned;
    bool flat = n->kids[0]->kind == N_FLATTEN;
    json_t *base = eval_tmp(c, flat ? n->kids[0]->kids[0] : n->kids[0], v, &owned);
    if (base == NULL)
        return NULL;
    json_t *r = !json_is_array(base) ? json_null()
                : flat               ? project_flat(c, n->kids[1], base)
                                     : project_array(c, n->kids[1], base);
    json_decref(owned);
    return r;
}

static json_t *eval_values(jp_ctx_t *c, const jp_node_t *n, json_t *v)
{
    json_t *owned, *val, *out = NULL;
    const char *key;
    json_t *base = eval_tmp(c, n->kids[0], v, &owned);
    if (base == NULL || !json_is_object(base)) {
        json_decref(owned);
        return base == NULL ? NULL : json_null();
    }
    out = jp_xjson(json_array());
    json_object_foreach(base, key, val)
    {
        if (project_one(c, n->kids[1], val, out) != 0) {
            json_decref(out);
            out = NULL;
            break;
        }
    }
    json_decref(owned);
    return out;
}

/* Appends rhs(v) to out when cond(v) is truthy. -1 on error. */
static int filter_one(jp_ctx_t *c, const jp_node_t *n, json_t *v, json_t *out)
{
    json_t *owned;
    json_t *cond = eval_tmp(c, n->kids[2], v, &owned);
    if (cond == NULL)
        return -1;
    bool keep = jp_truthy(cond);
    json_decref(owned);
    return keep ? project_one(c, n->kids[1], v, out) : 0;
}

static json_t *eval_filter(jp_ctx_t *c, const jp_node_t *n, json_t *v)
{
    json_t *owned, *out = NULL;
    json_t *base = eval_tmp(c, n->kids[0], v, &owned);
    if (base == NULL || !json_is_array(base)) {
        json_decref(owned);
        return base == NULL ? NULL : json_null();
    }
    out = jp_xjson(json_array());
    for (size_t i = 0, end = json_array_size(base); i < end; i++) {
        if (filter_one(c, n, json_array_get(base, i), out) != 0) {
            json_decref(out);
            out = NULL;
            break;
        }
    }
    json_decref(owned);
    return out;
}

/* One level of flattening: nested arrays are spliced, other elements kept. */
static json_t *eval_flatten(jp_ctx_t *c, const jp_node_t *n, json_t *v)
{
    json_t *owned;
    json_t *base = eval_tmp(c, n->kids[0], v, &owned);
    if (base == NULL || !json_is_array(base)) {
        json_decref(owned);
        return base == NULL ? NULL : json_null();
    }
    json_t *out = jp_xjson(json_array());
    for (size_t i = 0, end = json_array_size(base); i < end; i++) {
        json_t *el = json_array_get(base, i);
        if (!jp_charge(c, 1 + json_array_size(el)) ||
            !jp_mem(c, JP_SLOT_BYTES * (json_is_array(el) ? json_array_size(el) : 1))) {
            json_decref(out);
            out = NULL;
            break;
        }
        if (json_is_array(el))
            json_array_extend(out, el);
        else
            json_array_append(out, el);
    }
    json_decref(owned);
    return out;
}

/* jp_eval with the leaf case inlined: multi-selects are mostly lists of field names. */
static json_t *eval_new(jp_ctx_t *c, const jp_node_t *n, json_t *v)
{
    if (is_leaf(n))
        return jp_charge(c, n->cost) ? json_incref(leaf(n, v)) : NULL;
    return jp_eval(c, n, v);
}

static json_t *eval_list(jp_ctx_t *c, const jp_node_t *n, json_t *v)
{
    if (json_is_null(v))
        return json_null();
    json_t *out = jp_xjson(json_array());
    for (size_t i = 0; i < n->nkids; i++) {
        json_t *r = jp_mem(c, JP_SLOT_BYTES) ? eval_new(c, n->kids[i], v) : NULL;
        if (r == NULL) {
            json_decref(out);
            return NULL;
        }
        json_array_append_new(out, r);
    }
    return out;
}

static json_t *eval_hash(jp_ctx_t *c, const jp_node_t *n, json_t *v)
{
    if (json_is_null(v))
        return json_null();
    json_t *out = jp_xjson(json_object());
    for (size_t i = 0; i < n->nkids; i++) {
        json_t *r = jp_mem(c, JP_MEMBER_BYTES + n->u.keys[i].len) ? eval_new(c, n->kids[i], v) : NULL;
        if (r == NULL) {
            json_decref(out);
            return NULL;
        }
        json_object_setn_new_nocheck(out, n->u.keys[i].s, n->u.keys[i].len, r);
    }
    return out;
}

/* || and &&: the first kid whose truthiness is `stop`, else the last kid's value. */
static json_t *eval_logic(jp_ctx_t *c, const jp_node_t *n, json_t *v, bool stop)
{
    for (size_t i = 0;; i++) {
        json_t *r = jp_eval(c, n->kids[i], v);
        if (r == NULL || i + 1 == n->nkids || jp_truthy(r) == stop)
            return r;
        json_decref(r);
    }
}

static json_t *eval_not(jp_ctx_t *c, const jp_node_t *n, json_t *v)
{
    json_t *owned;
    json_t *r = eval_tmp(c, n->kids[0], v, &owned);
    if (r == NULL)
        return NULL;
    bool truthy = jp_truthy(r);
    json_decref(owned);
    return json_boolean(!truthy);
}

static json_t *compare(jp_ctx_t *c, const jp_node_t *n, const json_t *a, const json_t *b)
{
    if (n->u.op == CMP_EQ || n->u.op == CMP_NE) {
        int eq = jp_equal(c, a, b);
        if (eq < 0)
            return jp_fail(c, BW_JMESPATH_ELIMIT, n->offset, "comparison: data nests deeper than %d levels",
                           BW_JMESPATH_MAX_DATA_DEPTH);
        return json_boolean((eq == 1) == (n->u.op == CMP_EQ));
    }
    if (!json_is_number(a) || !json_is_number(b))
        return json_null(); /* ordering is only defined between numbers */
    int r = jp_num_cmp(a, b);
    switch (n->u.op) {
    case CMP_LT:
        return json_boolean(r < 0);
    case CMP_LE:
        return json_boolean(r <= 0);
    case CMP_GT:
        return json_boolean(r > 0);
    default:
        return json_boolean(r >= 0);
    }
}

static json_t *eval_cmp(jp_ctx_t *c, const jp_node_t *n, json_t *v)
{
    json_t *oa = NULL, *ob = NULL, *r = NULL;
    json_t *a = eval_tmp(c, n->kids[0], v, &oa);
    json_t *b = a != NULL ? eval_tmp(c, n->kids[1], v, &ob) : NULL;
    if (b != NULL)
        r = compare(c, n, a, b);
    json_decref(oa);
    json_decref(ob);
    return r;
}

static json_t *eval_call(jp_ctx_t *c, const jp_node_t *n, json_t *v)
{
    jp_arg_t small[4], *args = n->nkids <= 4 ? small : jp_xmalloc(n->nkids * sizeof *args);
    json_t *res = NULL;
    size_t done = 0;
    for (; done < n->nkids; done++) {
        const jp_node_t *k = n->kids[done];
        args[done].ref = k->kind == N_EXPREF ? k->kids[0] : NULL;
        args[done].v = k->kind == N_EXPREF ? NULL : jp_eval(c, k, v);
        if (args[done].ref == NULL && args[done].v == NULL)
            goto out;
    }
    if (jp_func_check(c, n, args, n->nkids) == 0)
        res = n->u.fn->fn(c, n, args, n->nkids);
out:
    for (size_t i = 0; i < done; i++)
        json_decref(args[i].v);
    if (args != small)
        free(args);
    return res;
}

static json_t *eval_slice(jp_ctx_t *c, const jp_node_t *n, json_t *v);

json_t *jp_eval(jp_ctx_t *c, const jp_node_t *n, json_t *v)
{
    if (!jp_charge(c, n->cost))
        return NULL;
    switch ((jp_kind_t)n->kind) {
    case N_FIELD:
    case N_INDEX:
    case N_CURRENT:
    case N_LITERAL:
        return json_incref(leaf(n, v));
    case N_SLICE:
        return eval_slice(c, n, v);
    case N_CHAIN:
        return eval_sequence(c, n, v);
    case N_PIPE:
        return eval_sequence(c, n, v);
    case N_PROJECT:
        return eval_project(c, n, v);
    case N_VALUES:
        return eval_values(c, n, v);
    case N_FILTER:
        return eval_filter(c, n, v);
    case N_FLATTEN:
        return eval_flatten(c, n, v);
    case N_LIST:
        return eval_list(c, n, v);
    case N_HASH:
        return eval_hash(c, n, v);
    case N_OR:
        return eval_logic(c, n, v, true);
    case N_AND:
        return eval_logic(c, n, v, false);
    case N_NOT:
        return eval_not(c, n, v);
    case N_CMP:
        return eval_cmp(c, n, v);
    case N_CALL:
        return eval_call(c, n, v);
    case N_EXPREF:
        break;
    }
    return jp_fail(c, BW_JMESPATH_EINVALID_TYPE, n->offset,
                   "an expression reference (&...) can only be a function argument");
}

/* ---- slices, with Python's semantics (negative steps, clamping) ---- */

static int64_t clamp_bound(int64_t x, int64_t len, bool neg_step)
{
    if (x < 0) {
        x += len;
        if (x < 0)
            x = neg_step ? -1 : 0;
    } else if (x >= len)
        x = neg_step ? len - 1 : len;
    return x;
}

/* Charged up front: a slice takes at most every element of v. */
static json_t *eval_slice(jp_ctx_t *c, const jp_node_t *n, json_t *v)
{
    if (!json_is_array(v))
        return json_null();
    if (!jp_charge(c, json_array_size(v)) || !jp_mem(c, JP_SLOT_BYTES * json_array_size(v)))
        return NULL;
    int64_t len = (int64_t)json_array_size(v);
    int64_t step = n->u.slice.has[2] ? n->u.slice.v[2] : 1; /* 0 was refused at compile time */
    bool neg = step < 0;
    int64_t start = n->u.slice.has[0] ? clamp_bound(n->u.slice.v[0], len, neg) : neg ? len - 1 : 0;
    int64_t stop = n->u.slice.has[1] ? clamp_bound(n->u.slice.v[1], len, neg) : neg ? -1 : len;
    json_t *out = jp_xjson(json_array());
    if (!neg) {
        for (int64_t i = start; i < stop; i += step) {
            json_array_append(out, json_array_get(v, (size_t)i));
            if (step > len) /* avoid overflowing i += step */
                break;
        }
    } else {
        for (int64_t i = start; i > stop; i += step) {
            json_array_append(out, json_array_get(v, (size_t)i));
            if (step < -len)
                break;
        }
    }
    return out;
}
