/*
 * Memory of finished results by (tenant, assignment id), so that a redelivered or duplicated assignment
 * republishes the remembered result instead of running twice. The same id from another tenant is another
 * job: it never sees this tenant's result. Bounded three ways: entry count, total bytes and age (TTL); the
 * least recently stored entry goes first. Loop thread only.
 */
#ifndef BW_STORE_DEDUP_H
#define BW_STORE_DEDUP_H

#include <stddef.h>
#include <stdint.h>

/* Room for the key of a tenant and an assignment id of up to 256 bytes each (the decoder's bounds). */
#define BW_JOB_KEY_MAX 600

/* The key of everything remembered per assignment: "<tenant length>:<tenant><assignment id>". The length
   prefix makes it unambiguous (tenant "a" with id "bX" and tenant "ab" with id "X" differ). Writes it to
   out (not NUL-terminated) and returns its length, or 0 when tenant or id is longer than 256 bytes (no
   assignment the decoder accepts has such ids, so nothing is remembered under them). */
size_t bw_job_key(char out[BW_JOB_KEY_MAX], const char *tenant_id, const char *assignment_id);

typedef struct bw_dedup bw_dedup_t;

typedef struct bw_dedup_entry {
    const char *assignment_id;
    const char *tenant_id;
    const char *trace_id; /* may be NULL */
    const char *result;   /* the encoded result as published */
    size_t result_len;
} bw_dedup_entry_t;

/* max_entries 0 disables the memory. Caller frees with bw_dedup_destroy. */
bw_dedup_t *bw_dedup_create(size_t max_entries, size_t max_bytes, int64_t ttl_ms);
void bw_dedup_destroy(bw_dedup_t *d);
/* Remembers a result (copied) under (tenant, assignment id); replaces an older one for the same pair.
   now_ms is any monotonic clock. */
void bw_dedup_put(bw_dedup_t *d, const bw_dedup_entry_t *e, int64_t now_ms);
/* Fills *out with borrowed pointers valid until the next put; returns 0, or -1 when unknown/expired. */
int bw_dedup_get(bw_dedup_t *d, const char *tenant_id, const char *assignment_id, int64_t now_ms,
                 bw_dedup_entry_t *out);
size_t bw_dedup_count(const bw_dedup_t *d);
size_t bw_dedup_bytes(const bw_dedup_t *d);

#endif
