/*
 * Memory of finished results by assignment_id, so that a redelivered or duplicated assignment
 * republishes the remembered result instead of running twice. Bounded three ways: entry count, total
 * bytes and age (TTL); the least recently stored entry goes first. Loop thread only.
 */
#ifndef BW_STORE_DEDUP_H
#define BW_STORE_DEDUP_H

#include <stddef.h>
#include <stdint.h>

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
/* Remembers a result (copied); replaces an older one for the same id. now_ms is any monotonic clock. */
void bw_dedup_put(bw_dedup_t *d, const bw_dedup_entry_t *e, int64_t now_ms);
/* Fills *out with borrowed pointers valid until the next put; returns 0, or -1 when unknown/expired. */
int bw_dedup_get(bw_dedup_t *d, const char *assignment_id, int64_t now_ms, bw_dedup_entry_t *out);
size_t bw_dedup_count(const bw_dedup_t *d);
size_t bw_dedup_bytes(const bw_dedup_t *d);

#endif
