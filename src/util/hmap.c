/* Chained hash map, FNV-1a hashing, power-of-two bucket count doubled at load factor 1. */
#include "util/hmap.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "util/xalloc.h"

typedef struct entry {
    struct entry *next;
    uint64_t hash;
    void *value;
    size_t klen;
    char key[];
} entry_t;

struct bw_hmap {
    entry_t **buckets;
    size_t nbuckets;
    size_t size;
};

static uint64_t fnv1a(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ull;
    }
    return h;
}

bw_hmap_t *bw_hmap_create(void)
{
    bw_hmap_t *m = bw_calloc(1, sizeof *m);
    m->nbuckets = 64;
    m->buckets = bw_calloc(m->nbuckets, sizeof *m->buckets);
    return m;
}

void bw_hmap_destroy(bw_hmap_t *m)
{
    if (m == NULL)
        return;
    for (size_t i = 0; i < m->nbuckets; i++) {
        entry_t *e = m->buckets[i];
        while (e != NULL) {
            entry_t *next = e->next;
            free(e);
            e = next;
        }
    }
    free(m->buckets);
    free(m);
}

static entry_t **find_slot(const bw_hmap_t *m, const char *key, size_t klen, uint64_t h)
{
    entry_t **pp = &m->buckets[h & (m->nbuckets - 1)];
    for (; *pp != NULL; pp = &(*pp)->next)
        if ((*pp)->hash == h && (*pp)->klen == klen && memcmp((*pp)->key, key, klen) == 0)
            break;
    return pp;
}

static void grow(bw_hmap_t *m)
{
    size_t n = m->nbuckets * 2;
    entry_t **b = bw_calloc(n, sizeof *b);
    for (size_t i = 0; i < m->nbuckets; i++) {
        entry_t *e = m->buckets[i];
        while (e != NULL) {
            entry_t *next = e->next;
            e->next = b[e->hash & (n - 1)];
            b[e->hash & (n - 1)] = e;
            e = next;
        }
    }
    free(m->buckets);
    m->buckets = b;
    m->nbuckets = n;
}

void *bw_hmap_put(bw_hmap_t *m, const char *key, size_t klen, void *value)
{
    uint64_t h = fnv1a(key, klen);
    entry_t **pp = find_slot(m, key, klen, h);
    if (*pp != NULL) {
        void *old = (*pp)->value;
        (*pp)->value = value;
        return old;
    }
    entry_t *e = bw_malloc(sizeof *e + klen + 1);
    e->next = NULL;
    e->hash = h;
    e->value = value;
    e->klen = klen;
    memcpy(e->key, key, klen);
    e->key[klen] = '\0';
    *pp = e;
    if (++m->size > m->nbuckets)
        grow(m);
    return NULL;
}

void *bw_hmap_get(const bw_hmap_t *m, const char *key, size_t klen)
{
    entry_t **pp = find_slot(m, key, klen, fnv1a(key, klen));
    return *pp != NULL ? (*pp)->value : NULL;
}

void *bw_hmap_del(bw_hmap_t *m, const char *key, size_t klen)
{
    entry_t **pp = find_slot(m, key, klen, fnv1a(key, klen));
    entry_t *e = *pp;
    if (e == NULL)
        return NULL;
    void *v = e->value;
    *pp = e->next;
    free(e);
    m->size--;
    return v;
}

size_t bw_hmap_size(const bw_hmap_t *m)
{
    return m->size;
}

void bw_hmap_foreach(const bw_hmap_t *m, void (*fn)(void *ud, const char *key, void *value), void *ud)
{
    for (size_t i = 0; i < m->nbuckets; i++)
        for (entry_t *e = m->buckets[i]; e != NULL; e = e->next)
            fn(ud, e->key, e->value);
}
