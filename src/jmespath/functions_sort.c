/*
 * Ordering built-ins: sort, sort_by, min, max, min_by, max_by.
 *
 * Keys are numbers or strings, never mixed within one call (invalid-type otherwise). Sorting is
 * a stable merge sort, so equal keys keep their input order as in the reference implementation,
 * and min/max return the first of several equal extremes. Elements are moved by reference.
 *
 * Budget: each merge pass is charged before it runs, one step per element plus the bytes of all
 * string keys (a comparison never reads more than the shorter key, and each comparison places
 * one element), so a sort costs O(n log n) steps; min and max charge one pass.
 */
#include <stdlib.h>
#include <string.h>

#include "jmespath_int.h"

typedef struct {
    json_t *key; /* borrowed from val (sort, min, max) or owned (the _by variants) */
    json_t *val; /* borrowed from the input array */
} item_t;

static int key_cmp(const json_t *a, const json_t *b)
{
    return json_is_string(a) ? jp_str_cmp(a, b) : jp_num_cmp(a, b);
}

static void merge_runs(item_t *dst, const item_t *src, size_t lo, size_t mid, size_t hi)
{
    size_t i = lo, j = mid, k = lo;
    while (i < mid && j < hi)
        dst[k++] = key_cmp(src[j].key, src[i].key) < 0 ? src[j++] : src[i++]; /* ties take the left: stable */
    while (i < mid)
        dst[k++] = src[i++];
    while (j < hi)
        dst[k++] = src[j++];
}

/* Steps one pass over items costs: the elements, plus their string keys' bytes. */
static uint64_t pass_cost(const item_t *items, size_t n)
{
    uint64_t bytes = 0;
    for (size_t i = 0; i < n; i++)
        bytes += json_is_string(items[i].key) ? json_string_length(items[i].key) : 0;
    return n + bytes / JP_BYTES_PER_STEP;
}

/* Bottom-up merge sort of v[0..n); returns whichever buffer holds the result, or NULL when the
   budget ran out. */
static item_t *merge_sort(jp_ctx_t *c, item_t *v, item_t *tmp, size_t n)
{
    uint64_t cost = pass_cost(v, n);
    for (size_t width = 1; width < n; width *= 2) {
        if (!jp_charge(c, cost))
            return NULL;
        for (size_t lo = 0; lo < n; lo += 2 * width) {
            size_t mid = lo + width < n ? lo + width : n;
            size_t hi = lo + 2 * width < n ? lo + 2 * width : n;
            merge_runs(tmp, v, lo, mid, hi);
        }
        item_t *swap = v;
        v = tmp;
        tmp = swap;
    }
    return v;
}

static json_t *sorted_array(jp_ctx_t *c, item_t *items, size_t n)
{
    if (!jp_mem(c, JP_SLOT_BYTES * n))
        return NULL;
    item_t *tmp = jp_xmalloc(n * sizeof *tmp);
    item_t *sorted = merge_sort(c, items, tmp, n);
    json_t *r = NULL;
    if (sorted != NULL) {
        r = jp_xjson(json_array());
        for (size_t i = 0; i < n; i++)
            json_array_append(r, sorted[i].val);
    }
    free(tmp);
    return r;
}

json_t *jp_fn_sort(jp_ctx_t *c, const jp_node_t *call, jp_arg_t *args, size_t nargs)
{
    json_t *a = args[0].v;
    size_t n = json_array_size(a);
    item_t *items = jp_xmalloc(n * sizeof *items);
    for (size_t i = 0; i < n; i++)
        items[i].key = items[i].val = json_array_get(a, i);
    json_t *r = jp_charge(c, n) ? sorted_array(c, items, n) : NULL;
    free(items);
    return r;
}

/* The first extreme element of a (already checked to hold only numbers or only strings);
   sign is 1 for max, -1 for min. */
static json_t *extreme(jp_ctx_t *c, const json_t *a, int sign)
{
    json_t *best = NULL;
    uint64_t bytes = 0;
    for (size_t i = 0, end = json_array_size(a); i < end; i++)
        bytes += json_is_string(json_array_get(a, i)) ? json_string_length(json_array_get(a, i)) : 0;
    if (!jp_charge(c, json_array_size(a) + bytes / JP_BYTES_PER_STEP))
        return NULL;
    for (size_t i = 0, end = json_array_size(a); i < end; i++) {
        json_t *v = json_array_get(a, i);
        if (best == NULL || sign * key_cmp(v, best) > 0)
            best = v;
    }
    return best != NULL ? json_incref(best) : json_null();
}

json_t *jp_fn_max(jp_ctx_t *c, const jp_node_t *call, jp_arg_t *args, size_t nargs)
{
    return extreme(c, args[0].v, 1);
}

json_t *jp_fn_min(jp_ctx_t *c, const jp_node_t *call, jp_arg_t *args, size_t nargs)
{
    return extreme(c, args[0].v, -1);
}

/* Evaluates the key expression on every element of args[0] into items (keys owned). The keys
   must be all numbers or all strings. Returns 0, or -1 with the error recorded and every key
   already computed released. */
static int eval_keys(jp_ctx_t *c, const jp_node_t *call, jp_arg_t *args, item_t *items, size_t n)
{
    const json_t *a = args[0].v;
    for (size_t i = 0; i < n; i++) {
        items[i].val = json_array_get(a, i);
        items[i].key = jp_eval(c, args[1].ref, items[i].val);
        bool ok = items[i].key != NULL;
        if (ok && !json_is_number(items[i].key) && !json_is_string(items[i].key))
            ok = false;
        else if (ok && i > 0 && json_is_string(items[i].key) != json_is_string(items[0].key))
            ok = false;
        if (!ok) {
            if (items[i].key != NULL)
                jp_fail(c, BW_JMESPATH_EINVALID_TYPE, call->offset,
                        "%s() expects the expression to give only numbers or only strings, got %s for "
                        "element %zu",
                        call->u.fn->name, jp_type_name(items[i].key), i);
            for (size_t k = 0; k <= i; k++)
                json_decref(items[k].key);
            return -1;
        }
    }
    return 0;
}

static void release_keys(item_t *items, size_t n)
{
    for (size_t i = 0; i < n; i++)
        json_decref(items[i].key);
    free(items);
}

json_t *jp_fn_sort_by(jp_ctx_t *c, const jp_node_t *call, jp_arg_t *args, size_t nargs)
{
    size_t n = json_array_size(args[0].v);
    item_t *items = jp_xmalloc(n * sizeof *items);
    if (eval_keys(c, call, args, items, n) != 0) {
        free(items);
        return NULL;
    }
    json_t *r = sorted_array(c, items, n);
    release_keys(items, n);
    return r;
}

static json_t *extreme_by(jp_ctx_t *c, const jp_node_t *call, jp_arg_t *args, int sign)
{
    size_t n = json_array_size(args[0].v);
    if (n == 0)
        return json_null();
    item_t *items = jp_xmalloc(n * sizeof *items);
    if (eval_keys(c, call, args, items, n) != 0) {
        free(items);
        return NULL;
    }
    size_t best = 0;
    json_t *r = NULL;
    if (jp_charge(c, pass_cost(items, n))) {
        for (size_t i = 1; i < n; i++)
            if (sign * key_cmp(items[i].key, items[best].key) > 0)
                best = i;
        r = json_incref(items[best].val);
    }
    release_keys(items, n);
    return r;
}

json_t *jp_fn_max_by(jp_ctx_t *c, const jp_node_t *call, jp_arg_t *args, size_t nargs)
{
    return extreme_by(c, call, args, 1);
}

json_t *jp_fn_min_by(jp_ctx_t *c, const jp_node_t *call, jp_arg_t *args, size_t nargs)
{
    return extreme_by(c, call, args, -1);
}
