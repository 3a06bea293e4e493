/*
 * A string-keyed hash map with chaining. Keys are copied; values are borrowed pointers. Not thread-safe:
 * each map belongs to one thread (the loop, for the worker's maps).
 */
#ifndef BW_UTIL_HMAP_H
#define BW_UTIL_HMAP_H

#include <stddef.h>

typedef struct bw_hmap bw_hmap_t;

/* Caller frees with bw_hmap_destroy (values are not freed). */
bw_hmap_t *bw_hmap_create(void);
void bw_hmap_destroy(bw_hmap_t *m);
/* Inserts or replaces; returns the previous value or NULL. */
void *bw_hmap_put(bw_hmap_t *m, const char *key, size_t klen, void *value);
void *bw_hmap_get(const bw_hmap_t *m, const char *key, size_t klen);
/* Removes and returns the value, or NULL when absent. */
void *bw_hmap_del(bw_hmap_t *m, const char *key, size_t klen);
size_t bw_hmap_size(const bw_hmap_t *m);
/* The number of entries in the fullest bucket (for tests: keys chosen to collide must not share one). */
size_t bw_hmap_longest_chain(const bw_hmap_t *m);
/* Calls fn for each entry; fn must not modify the map. */
void bw_hmap_foreach(const bw_hmap_t *m, void (*fn)(void *ud, const char *key, void *value), void *ud);

#endif
