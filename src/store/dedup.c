/*
 * A hash map for lookup plus an insertion-ordered list for eviction. Entries are stored in one
 * allocation each (header + key + strings + result) so that eviction is a single free.
 */
#include "store/dedup.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/hmap.h"
#include "util/list.h"
#include "util/xalloc.h"

typedef struct node {
    bw_list_t link;
    int64_t expires_ms;
    size_t bytes;
    const char *key; /* bw_job_key of the entry, in storage */
    size_t klen;
    bw_dedup_entry_t e;
    char storage[];
} node_t;

struct bw_dedup {
    bw_hmap_t *map;
    bw_list_t order; /* oldest first */
    size_t count, bytes, max_entries, max_bytes;
    int64_t ttl_ms;
};

size_t bw_job_key(char out[BW_JOB_KEY_MAX], const char *tenant_id, const char *assignment_id)
{
    size_t tl = strnlen(tenant_id, 257), il = strnlen(assignment_id, 257);
    if (tl > 256 || il > 256)
        return 0;
    int n = snprintf(out, BW_JOB_KEY_MAX, "%zu:", tl);
    memcpy(out + n, tenant_id, tl);
    memcpy(out + (size_t)n + tl, assignment_id, il);
    return (size_t)n + tl + il;
}

bw_dedup_t *bw_dedup_create(size_t max_entries, size_t max_bytes, int64_t ttl_ms)
{
    bw_dedup_t *d = bw_calloc(1, sizeof *d);
    d->map = bw_hmap_create();
    bw_list_init(&d->order);
    d->max_entries = max_entries;
    d->max_bytes = max_bytes;
    d->ttl_ms = ttl_ms;
    return d;
}

static void drop(bw_dedup_t *d, node_t *n)
{
    bw_hmap_del(d->map, n->key, n->klen);
    bw_list_remove(&n->link);
    d->count--;
    d->bytes -= n->bytes;
    free(n);
}

void bw_dedup_destroy(bw_dedup_t *d)
{
    if (d == NULL)
        return;
    bw_list_t *l;
    while ((l = bw_list_shift(&d->order)) != NULL)
        free(bw_list_entry(l, node_t, link));
    bw_hmap_destroy(d->map);
    free(d);
}

static char *stash(char **cursor, const char *s, size_t len)
{
    char *dst = *cursor;
    memcpy(dst, s, len);
    dst[len] = '\0';
    *cursor += len + 1;
    return dst;
}

static void evict(bw_dedup_t *d, int64_t now_ms)
{
    while (!bw_list_empty(&d->order)) {
        node_t *oldest = bw_list_entry(d->order.next, node_t, link);
        if (d->count <= d->max_entries && d->bytes <= d->max_bytes && oldest->expires_ms > now_ms)
            break;
        drop(d, oldest);
    }
}

void bw_dedup_put(bw_dedup_t *d, const bw_dedup_entry_t *e, int64_t now_ms)
{
    char key[BW_JOB_KEY_MAX];
    size_t kl = bw_job_key(key, e->tenant_id, e->assignment_id);
    size_t il = strlen(e->assignment_id), tl = strlen(e->tenant_id);
    size_t rl = e->trace_id ? strlen(e->trace_id) : 0;
    size_t bytes = sizeof(node_t) + kl + il + tl + rl + e->result_len + 5;
    if (d->max_entries == 0 || kl == 0 || bytes > d->max_bytes)
        return;
    node_t *old = bw_hmap_get(d->map, key, kl);
    if (old != NULL)
        drop(d, old);
    node_t *n = bw_malloc(bytes);
    char *cur = n->storage;
    n->bytes = bytes;
    n->expires_ms = now_ms + d->ttl_ms;
    n->key = stash(&cur, key, kl);
    n->klen = kl;
    n->e.assignment_id = stash(&cur, e->assignment_id, il);
    n->e.tenant_id = stash(&cur, e->tenant_id, tl);
    n->e.trace_id = e->trace_id ? stash(&cur, e->trace_id, rl) : NULL;
    n->e.result = stash(&cur, e->result, e->result_len);
    n->e.result_len = e->result_len;
    bw_hmap_put(d->map, n->key, kl, n);
    bw_list_push(&d->order, &n->link);
    d->count++;
    d->bytes += bytes;
    evict(d, now_ms);
}

int bw_dedup_get(bw_dedup_t *d, const char *tenant_id, const char *assignment_id, int64_t now_ms,
                 bw_dedup_entry_t *out)
{
    char key[BW_JOB_KEY_MAX];
    size_t kl = bw_job_key(key, tenant_id, assignment_id);
    node_t *n = kl > 0 ? bw_hmap_get(d->map, key, kl) : NULL;
    if (n == NULL)
        return -1;
    if (n->expires_ms <= now_ms) {
        drop(d, n);
        return -1;
    }
    *out = n->e;
    return 0;
}

size_t bw_dedup_count(const bw_dedup_t *d)
{
    return d->count;
}

size_t bw_dedup_bytes(const bw_dedup_t *d)
{
    return d->bytes;
}
