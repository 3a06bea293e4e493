/*
 * lg_tmpl: the ExecAssignment bw-loadgen sends, rendered once as text with "holes" where a job's
 * decimal sequence number goes (its assignment_id and every {{seq}} of the payload), so a send is a
 * few memcpy calls and no JSON encoding.
 */
#ifndef BW_BENCH_LG_TMPL_H
#define BW_BENCH_LG_TMPL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define LG_TMPL_MAX_HOLES 64 /* seq insertions per message, the assignment_id's included */

/* Embedded by the caller: lg_tmpl_build fills it, lg_tmpl_dispose frees the text. */
typedef struct lg_tmpl {
    char *text;
    size_t len;
    size_t holes[LG_TMPL_MAX_HOLES]; /* offsets into text, ascending */
    int nholes;
} lg_tmpl_t;

/* What goes into the assignment. Strings are borrowed for the duration of lg_tmpl_build. */
typedef struct lg_tmpl_spec {
    bool envelope;         /* wrap as {"version":"v1","kind":"exec_assign","data":{...}} */
    const char *id_prefix; /* assignment_id before the seq, e.g. "lg-1a2b3c4d-"; must need no escaping */
    const char *tenant, *type;
    const char *payload; /* JSON object text; each "{{seq}}" becomes a hole */
    int64_t deadline_ms;
} lg_tmpl_spec_t;

/*
 * Builds the template into `t` (zeroed by the caller). Returns false, with a message on stderr, when
 * tenant or type is not UTF-8, the payload has too many {{seq}}, or the rendered assignment is not
 * JSON with a payload object. Call lg_tmpl_dispose in every case.
 */
bool lg_tmpl_build(lg_tmpl_t *t, const lg_tmpl_spec_t *spec);

/* Frees the text; the struct may be rebuilt afterwards. */
void lg_tmpl_dispose(lg_tmpl_t *t);

/* Size of a buffer that holds any rendering (terminating byte included). */
size_t lg_tmpl_max_len(const lg_tmpl_t *t);

/* Writes the assignment for `seq` into `out` (lg_tmpl_max_len bytes) and returns its length. */
size_t lg_tmpl_render(const lg_tmpl_t *t, uint64_t seq, char *out);

/* Writes `v` in decimal to `out` (at least 20 bytes, not terminated); returns the digit count. */
size_t lg_fmt_u64(uint64_t v, char *out);

#endif
