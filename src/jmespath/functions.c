/*
 * JMESPath built-in functions: the signature table, argument type checking and the scalar,
 * string and object built-ins (sorting and min/max live in functions_sort.c).
 *
 * Arity is checked at compile time from the table; types are checked here at run time, after all
 * arguments were evaluated, exactly as the specification orders it. Implementations receive
 * arguments whose types already match their signature, return a new reference, and build
 * results from borrowed values (increfs, no deep copies). Whatever grows with the data (type
 * checks of array elements, strings scanned or built, members copied) is charged to the
 * evaluation's budget before it is done; a failed charge returns NULL with the error recorded.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jmespath_int.h"

/* ---- argument type checking ---- */

static unsigned type_bit(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        return A_OBJECT;
    case JSON_ARRAY:
        return A_ARRAY;
    case JSON_STRING:
        return A_STRING;
    case JSON_INTEGER:
    case JSON_REAL:
        return A_NUMBER;
    case JSON_TRUE:
    case JSON_FALSE:
        return A_BOOL;
    default:
        return A_NULL;
    }
}

/* Does array a satisfy A_ARR_NUM / A_ARR_STR in mask? With both allowed, the first element
   decides which one the whole array must be. Sets *bad to the first offending element. */
static bool typed_array_ok(const json_t *a, unsigned mask, const json_t **bad)
{
    size_t n = json_array_size(a);
    if (n == 0)
        return true;
    unsigned want = type_bit(json_array_get(a, 0));
    if (!((want == A_NUMBER && (mask & A_ARR_NUM)) || (want == A_STRING && (mask & A_ARR_STR)))) {
        *bad = json_array_get(a, 0);
        return false;
    }
    for (size_t i = 1; i < n; i++) {
        if (type_bit(json_array_get(a, i)) != want) {
            *bad = json_array_get(a, i);
            return false;
        }
    }
    return true;
}

/* "a number or a string", for messages. */
static void describe_mask(unsigned mask, char *out, size_t outsz)
{
    static const struct {
        unsigned bit;
        const char *name;
    } names[] = {{A_NUMBER, "a number"},
                 {A_STRING, "a string"},
                 {A_BOOL, "a boolean"},
                 {A_NULL, "null"},
                 {A_ARRAY, "an array"},
                 {A_OBJECT, "an object"},
                 {A_EXPREF, "an expression reference (&expr)"},
                 {A_ARR_NUM, "an array of numbers"},
                 {A_ARR_STR, "an array of strings"}};
    size_t len = 0;
    out[0] = '\0';
    if ((mask & A_ANY) == A_ANY) {
        snprintf(out, outsz, "a value");
        return;
    }
    for (size_t i = 0; i < sizeof names / sizeof names[0] && len < outsz; i++)
        if (mask & names[i].bit)
            len += (size_t)snprintf(out + len, outsz - len, "%s%s", len ? " or " : "", names[i].name);
}

static int check_arg(jp_ctx_t *c, const jp_node_t *call, size_t i, const jp_arg_t *a, unsigned mask)
{
    const json_t *bad = NULL;
    char got[64];
    if (a->ref != NULL) {
        if (mask & A_EXPREF)
            return 0;
        snprintf(got, sizeof got, "an expression reference");
    } else if (mask & A_EXPREF) {
        snprintf(got, sizeof got, "%s", jp_type_name(a->v));
    } else if (mask & type_bit(a->v)) {
        return 0;
    } else if (json_is_array(a->v) && (mask & (A_ARR_NUM | A_ARR_STR))) {
        if (!jp_charge(c, json_array_size(a->v)))
            return -1;
        if (typed_array_ok(a->v, mask, &bad))
            return 0;
        snprintf(got, sizeof got, "an array containing %s", jp_type_name(bad));
    } else
        snprintf(got, sizeof got, "%s", jp_type_name(a->v));
    char want[160];
    describe_mask(mask, want, sizeof want);
    jp_fail(c, BW_JMESPATH_EINVALID_TYPE, call->offset, "%s() expects argument %zu to be %s, got %s",
            call->u.fn->name, i + 1, want, got);
    return -1;
}

int jp_func_check(jp_ctx_t *c, const jp_node_t *call, const jp_arg_t *args, size_t nargs)
{
    const jp_func_t *fn = call->u.fn;
    for (size_t i = 0; i < nargs; i++) {
        size_t k = i < fn->nparams ? i : (size_t)fn->nparams - 1; /* variadic: the last type repeats */
        if (check_arg(c, call, i, &args[i], fn->types[k]) != 0)
            return -1;
    }
    return 0;
}

/* ---- numbers ---- */

static json_t *fn_abs(jp_ctx_t *c, const jp_node_t *call, jp_arg_t *args, size_t nargs)
{
    json_t *v = args[0].v;
    if (json_is_real(v))
        return jp_real(fabs(json_real_value(v)));
    json_int_t i = json_integer_value(v);
    if (i >= 0)
        return json_incref(v);
    return i == INT64_MIN ? jp_real(-(double)i) : jp_xjson(json_integer(-i));
}

static json_t *fn_ceil(jp_ctx_t *c, const jp_node_t *call, jp_arg_t *args, size_t nargs)
{
    json_t *v = args[0].v;
    return json_is_integer(v) ? json_incref(v) : jp_integral(ceil(json_real_value(v)));
}

static json_t *fn_floor(jp_ctx_t *c, const jp_node_t *call, jp_arg_t *args, size_t nargs)
{
    json_t *v = args[0].v;
    return json_is_integer(v) ? json_incref(v) : jp_integral(floor(json_real_value(v)));
}

/* Sums like Python's sum(): exact integers until a real (or an overflow) turns it into a double,
   then left-to-right double additions, so results match the reference implementation. */
static json_t *sum_array(const json_t *a, bool *is_real, double *dsum)
{
    json_int_t isum = 0;
    *is_real = false;
    *dsum = 0;
    for (size_t i = 0, end = json_array_size(a); i < end; i++) {
        const json_t *v = json_array_get(a, i);
        json_int_t next;
        if (*is_real) {
            *dsum += json_number_value(v);
        } else if (json_is_integer(v) && !__builtin_add_overflow(isum, json_integer_value(v), &next)) {
            isum = next;
        } else {
            *is_real = true;
            *dsum = (double)isum + json_number_value(v);
        }
    }
    if (!*is_real)
        *dsum = (double)isum;
    return *is_real ? NULL : jp_xjson(json_integer(isum));
}

json_t *jp_finite(jp_ctx_t *c, const jp_node_t *call, double d)
{
    if (!isfinite(d))
        return jp_fail(
            c, BW_JMESPATH_EINVALID_VALUE, call->offset,
            "%s() overflows: its result (%s) is beyond the range of a double, which JSON cannot carry",
            call->u.fn->name,
            isnan(d) ? "NaN"
            : d > 0  ? "Infinity"
                     : "-Infinity");
    return jp_xjson(json_real(d));
}

static json_t *fn_sum(jp_ctx_t *c, const jp_node_t *call, jp_arg_t *args, size_t nargs)
{
    if (!jp_charge(c, json_array_size(args[0].v)))
        return NULL;
    bool is_real;
    double d;
    json_t *i = sum_array(args[0].v, &is_real, &d);
    return is_real ? jp_finite(c, call, d) : i;
}

static json_t *fn_avg(jp_ctx_t *c, const jp_node_t *call, jp_arg_t *args, size_t nargs)
{
    size_t n = json_array_size(args[0].v);
    if (n == 0)
        return json_null();
    if (!jp_charge(c, n))
        return NULL;
    bool is_real;
    double d;
    json_decref(sum_array(args[0].v, &is_real, &d));
    return jp_finite(c, call, d / (double)n); /* [1e308,1e308]: the sum overflows, not the average */
}

/* ---- strings ---- */

static json_t *fn_starts_with(jp_ctx_t *c, const jp_node_t *call, jp_arg_t *args, size_t nargs)
{
    size_t n = json_string_length(args[0].v), k = json_string_length(args[1].v);
    if (!jp_charge(c, jp_bytes_cost(k)))
        return NULL;
    return json_boolean(k <= n && memcmp(json_string_value(args[0].v), json_string_value(args[1].v), k) == 0);
}

static json_t *fn_ends_with(jp_ctx_t *c, const jp_node_t *call, jp_arg_t *args, size_t nargs)
{
    size_t n = json_string_length(args[0].v), k = json_string_length(args[1].v);
    if (!jp_charge(c, jp_bytes_cost(k)))
        return NULL;
    return json_boolean(k <= n &&
                        memcmp(json_string_value(args[0].v) + n - k, json_string_value(args[1].v), k) == 0);
}

static json_t *fn_contains(jp_ctx_t *c, const jp_node_t *call, jp_arg_t *args, size_t nargs)
{
    json_t *subject = args[0].v, *search = args[1].v;
    if (json_is_string(subject)) {
        if (!json_is_string(search))
            return json_false();
        size_t k = json_string_length(search);
        if (!jp_charge(c, jp_bytes_cost(json_string_length(subject) + k))) /* memmem is linear */
            return NULL;
        return json_boolean(k == 0 || memmem(json_string_value(subject), json_string_length(subject),
                                             json_string_value(search), k) != NULL);
    }
    for (size_t i = 0, end = json_array_size(subject); i < end; i++) {
        int eq = jp_charge(c, 1) ? jp_equal(c, json_array_get(subject, i), search) : -1;
        if (eq < 0)
            return jp_fail(c, BW_JMESPATH_ELIMIT, call->offset,
                           "contains(): data nests deeper than %d levels", BW_JMESPATH_MAX_DATA_DEPTH);
        if (eq)
            return json_true();
    }
    return json_false();
}

static json_t *fn_join(jp_ctx_t *c, const jp_node_t *call, jp_arg_t *args, size_t nargs)
{
    const json_t *glue = args[0].v, *a = args[1].v;
    jp_buf_t b = {0};
    json_t *r = NULL;
    for (size_t i = 0, end = json_array_size(a); i < end; i++) {
        const json_t *s = json_array_get(a, i);
        if (!jp_charge_out(c, json_string_length(glue) + json_string_length(s)))
            goto out;
        if (i > 0)
            jp_buf_append(&b, json_string_value(glue), json_string_length(glue));
        jp_buf_append(&b, json_string_value(s), json_string_length(s));
    }
    r = jp_xjson(json_stringn_nocheck(b.p ? b.p : "", b.len));
out:
    free(b.p);
    return r;
}

static json_t *reverse_string(const json_t *v)
{
    const char *s = json_string_value(v);
    size_t n = json_string_length(v);
    char *out = jp_xmalloc(n + 1);
    /* Whole characters move, bytes inside each keep their order. */
    for (size_t i = 0; i < n;) {
        size_t k = jp_utf8_charlen(s + i, n - i);
        memcpy(out + n - i - k, s + i, k);
        i += k;
    }
    json_t *r = jp_xjson(json_stringn_nocheck(out, n));
    free(out);
    return r;
}

static json_t *fn_reverse(jp_ctx_t *c, const jp_node_t *call, jp_arg_t *args, size_t nargs)
{
    json_t *v = args[0].v;
    if (json_is_string(v)
            ? !jp_charge_out(c, json_string_length(v))
            : !jp_charge(c, json_array_size(v)) || !jp_mem(c, JP_SLOT_BYTES * json_array_size(v)))
        return NULL;
    if (json_is_string(v))
        return reverse_string(v);
    size_t n = json_array_size(v);
    json_t *r = jp_xjson(json_array());
    for (size_t i = n; i > 0; i--)
        json_array_append(r, json_array_get(v, i - 1));
    return r;
}

static json_t *fn_length(jp_ctx_t *c, const jp_node_t *call, jp_arg_t *args, size_t nargs)
{
    json_t *v = args[0].v;
    if (json_is_string(v) && !jp_charge(c, jp_bytes_cost(json_string_length(v))))
        return NULL;
    size_t n = json_is_string(v)  ? jp_utf8_count(json_string_value(v), json_string_length(v))
               : json_is_array(v) ? json_array_size(v)
                                  : json_object_size(v);
    return jp_xjson(json_integer((json_int_t)n));
}

/* ---- objects ---- */

static json_t *fn_keys(jp_ctx_t *c, const jp_node_t *call, jp_arg_t *args, size_t nargs)
{
    const char *key;
    size_t klen;
    json_t *val, *r = jp_xjson(json_array());
    json_object_keylen_foreach(args[0].v, key, klen, val)
    {
        if (!jp_charge(c, JP_NEW_COST) || !jp_charge_out(c, klen) || !jp_mem(c, JP_SLOT_BYTES)) {
            json_decref(r);
            return NULL;
        }
        json_array_append_new(r, jp_xjson(json_stringn_nocheck(key, klen)));
    }
    return r;
}

static json_t *fn_values(jp_ctx_t *c, const jp_node_t *call, jp_arg_t *args, size_t nargs)
{
    const char *key;
    json_t *val, *r = NULL;
    if (!jp_charge(c, json_object_size(args[0].v)) || !jp_mem(c, JP_SLOT_BYTES * json_object_size(args[0].v)))
        return NULL;
    r = jp_xjson(json_array());
    json_object_foreach(args[0].v, key, val)
    {
        json_array_append(r, val);
    }
    return r;
}

/* Copies the members of src into dst (later keys win, first position kept). -1 when the budget
   ran out. */
static int merge_into(jp_ctx_t *c, json_t *dst, json_t *src)
{
    const char *key;
    size_t klen;
    json_t *val;
    json_object_keylen_foreach(src, key, klen, val)
    {
        if (!jp_charge(c, JP_INSERT_COST + jp_bytes_cost(klen)) || !jp_mem(c, JP_MEMBER_BYTES + klen))
            return -1;
        json_object_setn_nocheck(dst, key, klen, val);
    }
    return 0;
}

static json_t *fn_merge(jp_ctx_t *c, const jp_node_t *call, jp_arg_t *args, size_t nargs)
{
    if (nargs == 1)
        return json_incref(args[0].v);
    json_t *r = jp_xjson(json_object());
    for (size_t i = 0; i < nargs; i++) {
        if (merge_into(c, r, args[i].v) != 0) {
            json_decref(r);
            return NULL;
        }
    }
    return r;
}

/* ---- any value ---- */

static json_t *fn_not_null(jp_ctx_t *c, const jp_node_t *call, jp_arg_t *args, size_t nargs)
{
    for (size_t i = 0; i < nargs; i++)
        if (!json_is_null(args[i].v))
            return json_incref(args[i].v);
    return json_null();
}

static json_t *fn_type(jp_ctx_t *c, const jp_node_t *call, jp_arg_t *args, size_t nargs)
{
    return jp_xjson(json_string(jp_type_name(args[0].v)));
}

static json_t *fn_to_array(jp_ctx_t *c, const jp_node_t *call, jp_arg_t *args, size_t nargs)
{
    json_t *v = args[0].v;
    if (json_is_array(v))
        return json_incref(v);
    json_t *r = jp_xjson(json_array());
    json_array_append(r, v);
    return r;
}

static json_t *fn_to_string(jp_ctx_t *c, const jp_node_t *call, jp_arg_t *args, size_t nargs)
{
    json_t *v = args[0].v;
    if (json_is_string(v))
        return json_incref(v);
    jp_buf_t b = {0};
    json_t *r = NULL;
    if (jp_dump(c, &b, v) == 0)
        r = jp_xjson(json_stringn_nocheck(b.p, b.len));
    else
        jp_fail(c, BW_JMESPATH_ELIMIT, call->offset, "to_string(): data nests deeper than %d levels",
                BW_JMESPATH_MAX_DATA_DEPTH);
    free(b.p);
    return r;
}

static json_t *fn_to_number(jp_ctx_t *c, const jp_node_t *call, jp_arg_t *args, size_t nargs)
{
    json_t *v = args[0].v;
    if (json_is_number(v))
        return json_incref(v);
    if (!json_is_string(v))
        return json_null();
    if (!jp_charge(c, jp_bytes_cost(json_string_length(v))))
        return NULL;
    bool overflow;
    json_t *r = jp_parse_number(json_string_value(v), json_string_length(v), &overflow);
    if (overflow)
        return jp_fail(c, BW_JMESPATH_EINVALID_VALUE, call->offset,
                       "to_number(): the string is a number beyond the range of a double");
    return r != NULL ? r : json_null();
}

static json_t *fn_map(jp_ctx_t *c, const jp_node_t *call, jp_arg_t *args, size_t nargs)
{
    const json_t *a = args[1].v;
    json_t *r = jp_xjson(json_array());
    for (size_t i = 0, end = json_array_size(a); i < end; i++) {
        json_t *v = jp_mem(c, JP_SLOT_BYTES) ? jp_eval(c, args[0].ref, json_array_get(a, i)) : NULL;
        if (v == NULL) {
            json_decref(r);
            return NULL;
        }
        json_array_append_new(r, v); /* map keeps nulls, unlike projections */
    }
    return r;
}

/* ---- the table ---- */

static const jp_func_t funcs[] = {
    {"abs", 1, false, {A_NUMBER}, fn_abs},
    {"avg", 1, false, {A_ARR_NUM}, fn_avg},
    {"ceil", 1, false, {A_NUMBER}, fn_ceil},
    {"contains", 2, false, {A_ARRAY | A_STRING, A_ANY}, fn_contains},
    {"ends_with", 2, false, {A_STRING, A_STRING}, fn_ends_with},
    {"floor", 1, false, {A_NUMBER}, fn_floor},
    {"join", 2, false, {A_STRING, A_ARR_STR}, fn_join},
    {"keys", 1, false, {A_OBJECT}, fn_keys},
    {"length", 1, false, {A_STRING | A_ARRAY | A_OBJECT}, fn_length},
    {"map", 2, false, {A_EXPREF, A_ARRAY}, fn_map},
    {"max", 1, false, {A_ARR_NUM | A_ARR_STR}, jp_fn_max},
    {"max_by", 2, false, {A_ARRAY, A_EXPREF}, jp_fn_max_by},
    {"merge", 1, true, {A_OBJECT}, fn_merge},
    {"min", 1, false, {A_ARR_NUM | A_ARR_STR}, jp_fn_min},
    {"min_by", 2, false, {A_ARRAY, A_EXPREF}, jp_fn_min_by},
    {"not_null", 1, true, {A_ANY}, fn_not_null},
    {"reverse", 1, false, {A_ARRAY | A_STRING}, fn_reverse},
    {"sort", 1, false, {A_ARR_NUM | A_ARR_STR}, jp_fn_sort},
    {"sort_by", 2, false, {A_ARRAY, A_EXPREF}, jp_fn_sort_by},
    {"starts_with", 2, false, {A_STRING, A_STRING}, fn_starts_with},
    {"sum", 1, false, {A_ARR_NUM}, fn_sum},
    {"to_array", 1, false, {A_ANY}, fn_to_array},
    {"to_number", 1, false, {A_ANY}, fn_to_number},
    {"to_string", 1, false, {A_ANY}, fn_to_string},
    {"type", 1, false, {A_ANY}, fn_type},
    {"values", 1, false, {A_OBJECT}, fn_values},
};

const jp_func_t *jp_func_lookup(const char *name, size_t len)
{
    for (size_t i = 0; i < sizeof funcs / sizeof funcs[0]; i++)
        if (strlen(funcs[i].name) == len && memcmp(funcs[i].name, name, len) == 0)
            return &funcs[i];
    return NULL;
}
