/*
 * Private interface between the JMESPath lexer, parser, evaluator and built-in functions.
 *
 * Ownership: everything a compiled expression holds lives in its arena (nodes, child arrays,
 * decoded names) except literal values, which are jansson references listed in the expression
 * and dropped by bw_jmespath_destroy. Nothing in a compiled expression changes after compile.
 */
#ifndef BW_JMESPATH_INT_H
#define BW_JMESPATH_INT_H

#include <jansson.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "jmespath.h"

/* ---- memory: allocation failure aborts (the server's policy), so callers never check ---- */

void *jp_xmalloc(size_t n);
void *jp_xrealloc(void *p, size_t n);
/* Returns v, aborting when jansson failed to allocate it (v == NULL). */
json_t *jp_xjson(json_t *v);

typedef struct jp_chunk jp_chunk_t;
/* Bump allocator: blocks are freed all at once, so freeing a tree needs no recursion. */
typedef struct {
    jp_chunk_t *head;
    size_t bytes; /* total bytes obtained from malloc, for bw_jmespath_expr_size */
} jp_arena_t;

void *jp_arena_alloc(jp_arena_t *a, size_t n);
void jp_arena_free(jp_arena_t *a);

/* A growable byte buffer; p is NUL-terminated once anything was appended. */
typedef struct {
    char *p;
    size_t len, cap;
} jp_buf_t;

void jp_buf_append(jp_buf_t *b, const void *s, size_t n);
void jp_buf_putc(jp_buf_t *b, char c);

/* Fills err (may be NULL) with status, offset and "at offset N: <fmt>" and returns status. */
int jp_set_error(bw_jmespath_error_t *err, bw_jmespath_status_t status, size_t offset, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
int jp_set_verror(bw_jmespath_error_t *err, bw_jmespath_status_t status, size_t offset, const char *fmt,
                  va_list ap);

/* ---- the AST ---- */

typedef enum {
    N_FIELD,   /* u.name; object member or null */
    N_CURRENT, /* @ and the implicit identity */
    N_LITERAL, /* u.lit */
    N_INDEX,   /* u.index; array element or null */
    N_SLICE,   /* u.slice; array slice or null */
    N_CHAIN,   /* kids[0] on the input, then each next kid on the previous result (a.b[0]) */
    N_PIPE,    /* evaluated like N_CHAIN; kept apart because only pipes join pipes */
    N_PROJECT, /* kids[0] must give an array; kids[1] applied to each element, nulls dropped */
    N_VALUES,  /* like N_PROJECT over the values of an object */
    N_FILTER,  /* like N_PROJECT, keeping elements where kids[2] is truthy */
    N_FLATTEN, /* kids[0] must give an array; nested arrays are merged one level */
    N_LIST,    /* multi-select list */
    N_HASH,    /* multi-select hash, keys in u.keys */
    N_OR,      /* first truthy kid, else the last kid's value */
    N_AND,     /* first falsy kid, else the last kid's value */
    N_NOT,
    N_CMP,   /* u.op */
    N_CALL,  /* u.fn, arguments in kids */
    N_EXPREF /* &kids[0]: only meaningful as a function argument */
} jp_kind_t;

typedef enum { CMP_EQ, CMP_NE, CMP_LT, CMP_LE, CMP_GT, CMP_GE } jp_cmp_t;

typedef struct {
    const char *s;
    size_t len;
} jp_str_t;

typedef struct jp_func jp_func_t;
typedef struct jp_node jp_node_t;

struct jp_node {
    uint8_t kind;    /* jp_kind_t */
    uint16_t height; /* 1 + the tallest kid: bounds the evaluator's recursion */
    uint32_t cost;   /* steps charged per evaluation, set by jp_set_costs (see there) */
    size_t offset;   /* where the node starts in the expression, for error messages */
    size_t nkids, cap;
    jp_node_t **kids; /* arena memory */
    union {
        jp_str_t name;
        json_t *lit;
        int64_t index;
        struct {
            int64_t v[3]; /* start, stop, step */
            bool has[3];
        } slice;
        jp_cmp_t op;
        const jp_func_t *fn;
        jp_str_t *keys; /* N_HASH: one per kid */
    } u;
};

struct bw_jmespath_expr {
    jp_arena_t arena;
    json_t **lits; /* literal values, released on destroy */
    size_t nlits, litcap;
    size_t lit_bytes; /* estimated size of the literals */
    jp_node_t *root;
};

/* Registers a literal value with the expression, which takes over the reference. */
void jp_expr_own(bw_jmespath_expr_t *e, json_t *lit, size_t text_len);

/* Parses src[0..len) (valid UTF-8, checked by the caller) into e->root. 0 or a status, err filled. */
int jp_parse(bw_jmespath_expr_t *e, const char *src, size_t len, bw_jmespath_error_t *err);

/* ---- the lexer ---- */

typedef enum {
    T_EOF,
    T_IDENT,
    T_QIDENT,
    T_NUMBER,
    T_LITERAL, /* backtick JSON and 'raw strings' alike: tok.lit */
    T_DOT,
    T_STAR,
    T_FLATTEN, /* [] */
    T_FILTER,  /* [? */
    T_LBRACKET,
    T_RBRACKET,
    T_LBRACE,
    T_RBRACE,
    T_LPAREN,
    T_RPAREN,
    T_COMMA,
    T_COLON,
    T_PIPE,
    T_OR,
    T_AND,
    T_NOT,
    T_EQ,
    T_NE,
    T_LT,
    T_LE,
    T_GT,
    T_GE,
    T_AT,
    T_EXPREF,
    T_COUNT
} jp_tok_type_t;

typedef struct {
    jp_tok_type_t type;
    size_t off, end; /* [off, end) in the source */
    jp_str_t str;    /* identifiers: decoded name in the arena */
    int64_t num;     /* T_NUMBER, saturated to the int64 range */
    json_t *lit;     /* T_LITERAL, owned by the expression */
} jp_token_t;

typedef struct {
    const char *src;
    size_t len, pos;
    bw_jmespath_expr_t *e;
} jp_lexer_t;

/* Scans the next token into *t. 0, or a status with err filled. */
int jp_lex(jp_lexer_t *lx, jp_token_t *t, bw_jmespath_error_t *err);
/* A short quoted description of the token for messages: "'foo'", "']'", "end of expression". */
void jp_token_describe(const jp_lexer_t *lx, const jp_token_t *t, char *out, size_t outsz);
/* The spelling of a token type, quoted ("']'"), for "expected ..." messages. */
const char *jp_token_name(jp_tok_type_t type);

/* ---- evaluation ---- */

/* Steps between two looks at the cancel flag; also the most a charge takes from the budget in
   one go on the fast path. */
#define JP_CHECK_EVERY 4096
/* Bytes of string scanned or compared that count as one step, and bytes of new string written
   (which also take memory: the budget bounds that too). */
#define JP_BYTES_PER_STEP 64
#define JP_OUT_BYTES_PER_STEP 16
/* Extra steps for making a new value (array, object, string, number) and for inserting a member
   into a new object: memory allocation costs several plain steps. */
#define JP_NEW_COST 4
#define JP_INSERT_COST 3

/* One evaluation's state. The budget is split in two so that the fast path is a compare and a
   subtraction: tick is what may be spent before the next checkpoint, reserve the rest of the
   budget; steps used so far = max_steps - reserve - tick. */
typedef struct {
    bw_jmespath_error_t *err;
    int status;
    uint32_t tick;
    uint64_t reserve;
    uint64_t max_steps;
    uint64_t bytes_left, max_bytes; /* the memory budget (bw_jmespath_eval_opts_t.max_bytes) */
    const _Atomic int *cancel;      /* may be NULL */
} jp_ctx_t;

/* What new values count against the memory budget, besides their string bytes. */
#define JP_SLOT_BYTES 16   /* an element of a new array */
#define JP_MEMBER_BYTES 48 /* a member of a new object, besides its key */

/* Starts an evaluation context (o may be NULL: defaults). */
void jp_ctx_init(jp_ctx_t *c, const bw_jmespath_eval_opts_t *o, bw_jmespath_error_t *err);
/* The checkpoint behind jp_charge: refills tick from reserve, looks at the cancel flag. */
bool jp_charge_slow(jp_ctx_t *c, uint64_t n);

/* Records the memory budget's exhaustion; false. */
bool jp_mem_fail(jp_ctx_t *c);

/* Takes n bytes from the memory budget before building values that hold them. True to go on; false
   once the budget is spent (the error is in c). */
static inline bool jp_mem(jp_ctx_t *c, uint64_t n)
{
    if (__builtin_expect(n <= c->bytes_left, 1)) {
        c->bytes_left -= n;
        return true;
    }
    return jp_mem_fail(c);
}

/* Charges n steps before doing work worth n steps. True to go on; false once the budget is
   spent, the evaluation was cancelled or an error was recorded (the error is in c). */
static inline bool jp_charge(jp_ctx_t *c, uint64_t n)
{
    if (__builtin_expect(n < c->tick, 1)) {
        c->tick -= (uint32_t)n;
        return true;
    }
    return jp_charge_slow(c, n);
}

/* Steps for scanning n bytes of string: at least one. */
static inline uint64_t jp_bytes_cost(size_t n)
{
    return 1 + n / JP_BYTES_PER_STEP;
}

/* Steps for writing n bytes of new string: at least one. */
static inline uint64_t jp_out_cost(size_t n)
{
    return 1 + n / JP_OUT_BYTES_PER_STEP;
}

/* Charges writing n bytes of new string: its steps and its bytes. */
static inline bool jp_charge_out(jp_ctx_t *c, size_t n)
{
    return jp_mem(c, n) && jp_charge(c, jp_out_cost(n));
}

/* Sets every node's cost after parsing: one step, plus the string bytes a node hashes (field
   names, hash keys), plus, for chains and pipes, the cost of the leaf steps they run inline. */
void jp_set_costs(jp_node_t *n);

/* Evaluates n against v (borrowed). Returns a new reference, or NULL after recording an error
   in c. Recursion is bounded by the node height (BW_JMESPATH_MAX_NESTING). */
json_t *jp_eval(jp_ctx_t *c, const jp_node_t *n, json_t *v);
/* Records an error in c and returns NULL, for "return jp_fail(...)" in evaluators. */
json_t *jp_fail(jp_ctx_t *c, bw_jmespath_status_t st, size_t off, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* ---- built-in functions ---- */

/* One argument: a value (new reference) or, for &expr arguments, the referenced expression. */
typedef struct {
    json_t *v;
    const jp_node_t *ref;
} jp_arg_t;

typedef json_t *(*jp_fn_t)(jp_ctx_t *c, const jp_node_t *call, jp_arg_t *args, size_t nargs);

/* Parameter types, a bit set per parameter. */
enum {
    A_NUMBER = 1 << 0,
    A_STRING = 1 << 1,
    A_BOOL = 1 << 2,
    A_NULL = 1 << 3,
    A_ARRAY = 1 << 4,
    A_OBJECT = 1 << 5,
    A_EXPREF = 1 << 6,
    A_ARR_NUM = 1 << 7, /* array whose elements are all numbers */
    A_ARR_STR = 1 << 8, /* array whose elements are all strings */
    A_ANY = A_NUMBER | A_STRING | A_BOOL | A_NULL | A_ARRAY | A_OBJECT
};

struct jp_func {
    const char *name;
    uint8_t nparams;   /* fixed parameters; the last one repeats when variadic */
    bool variadic;     /* at least nparams arguments */
    uint16_t types[3]; /* A_* per parameter */
    jp_fn_t fn;
};

/* The built-in named name[0..len), or NULL. */
const jp_func_t *jp_func_lookup(const char *name, size_t len);
/* Checks argument types against the signature; 0, or -1 after recording invalid-type in c. */
int jp_func_check(jp_ctx_t *c, const jp_node_t *call, const jp_arg_t *args, size_t nargs);

/* Collection built-ins (functions_sort.c). */
json_t *jp_fn_sort(jp_ctx_t *c, const jp_node_t *call, jp_arg_t *args, size_t nargs);
json_t *jp_fn_sort_by(jp_ctx_t *c, const jp_node_t *call, jp_arg_t *args, size_t nargs);
json_t *jp_fn_max(jp_ctx_t *c, const jp_node_t *call, jp_arg_t *args, size_t nargs);
json_t *jp_fn_min(jp_ctx_t *c, const jp_node_t *call, jp_arg_t *args, size_t nargs);
json_t *jp_fn_max_by(jp_ctx_t *c, const jp_node_t *call, jp_arg_t *args, size_t nargs);
json_t *jp_fn_min_by(jp_ctx_t *c, const jp_node_t *call, jp_arg_t *args, size_t nargs);

/* ---- values (value.c) ---- */

/* JMESPath type name: "number", "string", "boolean", "array", "object", "null". */
const char *jp_type_name(const json_t *v);
/* False for null, false, "", [] and {}; true otherwise (0 included). */
bool jp_truthy(const json_t *v);
/* Exact three-way comparison of two jansson numbers (integer or real, mixed). */
int jp_num_cmp(const json_t *a, const json_t *b);
/* Code point order of two strings (UTF-8 byte order). */
int jp_str_cmp(const json_t *a, const json_t *b);
/* Deep equality with numeric comparison (1 == 1.0) and unordered objects, charging a step per
   value visited. 1 equal, 0 not, -1 when the budget ran out (error recorded in c) or the data
   nests deeper than BW_JMESPATH_MAX_DATA_DEPTH (not recorded: the caller says where). */
int jp_equal(jp_ctx_t *c, const json_t *a, const json_t *b);
/* A real, or JSON null when d is not finite (JSON cannot carry it): callers whose arithmetic can
   overflow use jp_finite instead. */
json_t *jp_real(double d);
/* The real d, or NULL after recording invalid-value ("<fn>() overflows: ...") in c when d is ±Infinity
   or NaN: an overflow is an error, never a silent null. */
json_t *jp_finite(jp_ctx_t *c, const jp_node_t *call, double d);
/* An integer when d is integral and fits int64, else jp_real(d). */
json_t *jp_integral(double d);
/* Parses s[0..n) per the JSON number grammar; NULL when it is not one, or (with *overflow set) when it
   is one beyond the range of a double ("1e400"). */
json_t *jp_parse_number(const char *s, size_t n, bool *overflow);

/* ---- UTF-8 (value.c) ---- */

/* Offset of the first byte that is not part of valid UTF-8 (no overlongs, surrogates or values
   above U+10FFFF), or n when s[0..n) is valid. */
size_t jp_utf8_check(const char *s, size_t n);
/* Number of code points in s[0..n) (lead bytes; tolerant of invalid input). */
size_t jp_utf8_count(const char *s, size_t n);
/* Length of the character starting at s[0], at most n (tolerant of invalid input). */
size_t jp_utf8_charlen(const char *s, size_t n);

/* ---- JSON text (dump.c) ---- */

/* Appends v as compact JSON (no spaces; reals in shortest round-trip form like Python's repr),
   charging a step per value and per 16 bytes of string written. 0, or -1 when the budget ran out (error
   recorded in c) or v nests deeper than BW_JMESPATH_MAX_DATA_DEPTH (not recorded). */
int jp_dump(jp_ctx_t *c, jp_buf_t *b, const json_t *v);

#endif
