/*
 * JMESPath (https://jmespath.org/specification.html) over jansson values: compile an expression
 * once, evaluate it many times, from any number of threads.
 *
 * A compiled expression is immutable. Results are new references that may share structure with
 * the data they were taken from (a field lookup returns the very value found in the data), so
 * callers must treat results as read-only, like the data itself.
 */
#ifndef BW_JMESPATH_H
#define BW_JMESPATH_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

typedef struct bw_jmespath_expr bw_jmespath_expr_t; /* opaque compiled expression, immutable */

/* Error kinds, named after the compliance suite's error classes (see bw_jmespath_status_name). */
typedef enum {
    BW_JMESPATH_OK = 0,
    BW_JMESPATH_ESYNTAX,
    BW_JMESPATH_EINVALID_TYPE,
    BW_JMESPATH_EINVALID_VALUE,
    BW_JMESPATH_EINVALID_ARITY,
    BW_JMESPATH_EUNKNOWN_FUNCTION,
    BW_JMESPATH_ELIMIT,
    BW_JMESPATH_ECANCELLED
} bw_jmespath_status_t;

/* Filled by compile and eval on failure. message always starts with "at offset N: " when offset is
   known; offset is the byte offset in the expression, or SIZE_MAX when no position applies. */
typedef struct {
    bw_jmespath_status_t status;
    size_t offset;
    char message[256];
} bw_jmespath_error_t;

/* Nesting limit of an expression (parenthesis, brackets, projections, operators): deeper
   expressions fail to compile with BW_JMESPATH_ELIMIT instead of risking the stack. */
#define BW_JMESPATH_MAX_NESTING 256
/* Nesting limit of data walked by deep operations (equality, to_string): deeper values make the
   evaluation fail with BW_JMESPATH_ELIMIT. jansson's own parser stops at 2048 as well. */
#define BW_JMESPATH_MAX_DATA_DEPTH 2048

/* Compiles expr[0..len) (need not be NUL-terminated; never read past len). Returns 0 and sets *out
   (caller frees with bw_jmespath_destroy), or returns the status, sets *out to NULL and fills *err
   (err may be NULL). Invalid UTF-8 is a syntax error. Unknown functions and wrong argument counts
   are reported here (BW_JMESPATH_EUNKNOWN_FUNCTION, BW_JMESPATH_EINVALID_ARITY). */
int bw_jmespath_compile(const char *expr, size_t len, bw_jmespath_expr_t **out, bw_jmespath_error_t *err);

/* Work budget of one evaluation when the caller sets none. Measured on the 2-core build machine
   (release build), a step costs 15 to 90 ns depending on the operation and on cache misses, so
   the default stops a runaway evaluation after 0.3 to 1.5 s, having allocated no more than a few
   hundred MB (measured: 190 MB for the worst case, to_string of a shared structure), while a
   heavy legitimate job (every value of a 1 MB document visited ten times) needs about 1e6 steps
   and no compliance case needs more than 1e3 (tests/unit/test_jmespath.c checks that margin). */
#define BW_JMESPATH_DEFAULT_MAX_STEPS 20000000u

/* Per-evaluation options. A step is one node evaluated or one element, member or value visited,
   anywhere the work grows with the data: projections, filters, flatten, slices, equality,
   ordering, to_string, every function; 64 bytes of string compared or 16 bytes written count as
   a step, and making a value a few. Total CPU time and memory of an evaluation are therefore
   O(max_steps) whatever the expression and the data, including results that share structure
   (`{a:@,b:@} | {a:@,b:@} | ...` then `to_string(@)`). */
/* Memory bound of one evaluation when the caller sets none: see max_bytes. */
#define BW_JMESPATH_DEFAULT_MAX_BYTES (64u * 1024 * 1024)

typedef struct {
    uint64_t max_steps; /* 0 = BW_JMESPATH_DEFAULT_MAX_STEPS; past it, BW_JMESPATH_ELIMIT */
    /* 0 = BW_JMESPATH_DEFAULT_MAX_BYTES: the bytes of new values an evaluation may build, counted as they
       are built (before the memory is held): every byte of new string (to_string, join, keys, ...), every
       element slot of a new array (16) and member of a new object (48 and its key); past it,
       BW_JMESPATH_ELIMIT "exceeded its memory budget". The step budget alone lets an evaluation build a few
       hundred MB (16 bytes of string a step); this bounds it by the caller's measure of what a result may
       be. Values shared with the data or between results are not counted again. */
    uint64_t max_bytes;
    const _Atomic int *cancel; /* optional: evaluation stops with BW_JMESPATH_ECANCELLED soon
                                  (within a few thousand steps) after *cancel becomes non-zero */
} bw_jmespath_eval_opts_t;

/* Evaluates e against data (borrowed; NULL is taken as JSON null) within the budget and cancel
   flag of o (NULL: defaults, no cancel flag). Returns 0 and *result (a new reference, never NULL:
   JSON null for no match), or returns the status, sets *result to NULL and fills *err (err may be
   NULL): BW_JMESPATH_ELIMIT with "evaluation exceeded its budget of N steps" when the budget runs
   out, BW_JMESPATH_ECANCELLED when *o->cancel was set. Thread-safe: one compiled expression may be
   evaluated by several threads at once, as long as nobody mutates data meanwhile; the cancel flag
   may be set from any thread.
   Results may share structure with each other as well as with data: a result a few steps long can
   print as gigabytes (see above), so serialise results with a writer that has a size limit. */
int bw_jmespath_eval_opts(const bw_jmespath_expr_t *e, json_t *data, const bw_jmespath_eval_opts_t *o,
                          json_t **result, bw_jmespath_error_t *err);

/* bw_jmespath_eval_opts with the default options. */
int bw_jmespath_eval(const bw_jmespath_expr_t *e, json_t *data, json_t **result, bw_jmespath_error_t *err);

/* Frees a compiled expression. NULL is a no-op. Results already returned stay valid. */
void bw_jmespath_destroy(bw_jmespath_expr_t *e);

/* Stable kind name: "ok", "syntax", "invalid-type", "invalid-value", "invalid-arity",
   "unknown-function", "limit", "cancelled" ("unknown" for values outside the enum). */
const char *bw_jmespath_status_name(bw_jmespath_status_t s);

/* Approximate bytes held by e (nodes, names, literals), for an LRU cache's accounting. */
size_t bw_jmespath_expr_size(const bw_jmespath_expr_t *e);

#endif
