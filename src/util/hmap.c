/* Chained hash map, power-of-two bucket count doubled at load factor 1. Keys are hashed with SipHash-1-3
   under a random per-process key: the worker's maps are keyed by ids an assignment's sender chooses, and
   with an unkeyed hash (FNV-1a, as before) anyone could precompute thousands of ids that land in one
   bucket and turn every lookup on the loop into a walk of that chain. */
#include "util/hmap.h"

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

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

static uint64_t sip_k0, sip_k1;
static pthread_once_t sip_once = PTHREAD_ONCE_INIT;

static void sip_init(void)
{
    uint64_t k[2];
    if (getrandom(k, sizeof k, 0) != (ssize_t)sizeof k) {
        /* no entropy source (very early boot): still different per process and per start */
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        k[0] = (uint64_t)ts.tv_nsec * 0x9e3779b97f4a7c15ull ^ (uint64_t)getpid();
        k[1] = (uint64_t)ts.tv_sec * 0xc2b2ae3d27d4eb4full ^ (uint64_t)(uintptr_t)&ts;
    }
    sip_k0 = k[0];
    sip_k1 = k[1];
}

#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND                                                                                             \
    do {                                                                                                     \
        v0 += v1;                                                                                            \
        v1 = ROTL(v1, 13);                                                                                   \
        v1 ^= v0;                                                                                            \
        v0 = ROTL(v0, 32);                                                                                   \
        v2 += v3;                                                                                            \
        v3 = ROTL(v3, 16);                                                                                   \
        v3 ^= v2;                                                                                            \
        v0 += v3;                                                                                            \
        v3 = ROTL(v3, 21);                                                                                   \
        v3 ^= v0;                                                                                            \
        v2 += v1;                                                                                            \
        v1 = ROTL(v1, 17);                                                                                   \
        v1 ^= v2;                                                                                            \
        v2 = ROTL(v2, 32);                                                                                   \
    } while (0)

/* SipHash-1-3 (one compression round, three finalisation rounds: the variant Rust and Python use for
   their hash tables). */
static uint64_t siphash13(const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s;
    uint64_t v0 = sip_k0 ^ 0x736f6d6570736575ull, v1 = sip_k1 ^ 0x646f72616e646f6dull;
    uint64_t v2 = sip_k0 ^ 0x6c7967656e657261ull, v3 = sip_k1 ^ 0x7465646279746573ull;
    uint64_t b = (uint64_t)n << 56, m;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        memcpy(&m, p + i, 8); /* little-endian hosts only (x86-64, aarch64) */
        v3 ^= m;
        SIPROUND;
        v0 ^= m;
    }
    for (size_t j = 0; i + j < n; j++)
        b |= (uint64_t)p[i + j] << (8 * j);
    v3 ^= b;
    SIPROUND;
    v0 ^= b;
    v2 ^= 0xff;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    return v0 ^ v1 ^ v2 ^ v3;
}

static uint64_t hash_key(const char *s, size_t n)
{
    return siphash13(s, n);
}

bw_hmap_t *bw_hmap_create(void)
{
    pthread_once(&sip_once, sip_init);
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
    uint64_t h = hash_key(key, klen);
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
    entry_t **pp = find_slot(m, key, klen, hash_key(key, klen));
    return *pp != NULL ? (*pp)->value : NULL;
}

void *bw_hmap_del(bw_hmap_t *m, const char *key, size_t klen)
{
    entry_t **pp = find_slot(m, key, klen, hash_key(key, klen));
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

size_t bw_hmap_longest_chain(const bw_hmap_t *m)
{
    size_t longest = 0;
    for (size_t i = 0; i < m->nbuckets; i++) {
        size_t n = 0;
        for (const entry_t *e = m->buckets[i]; e != NULL; e = e->next)
            n++;
        longest = n > longest ? n : longest;
    }
    return longest;
}

void bw_hmap_foreach(const bw_hmap_t *m, void (*fn)(void *ud, const char *key, void *value), void *ud)
{
    for (size_t i = 0; i < m->nbuckets; i++)
        for (entry_t *e = m->buckets[i]; e != NULL; e = e->next)
            fn(ud, e->key, e->value);
}
