/* Intrusive doubly linked list (the kernel's and libuv's QUEUE habit): the node lives in the item. */
#ifndef BW_UTIL_LIST_H
#define BW_UTIL_LIST_H

#include <stdbool.h>
#include <stddef.h>

typedef struct bw_list {
    struct bw_list *prev, *next;
} bw_list_t;

#define bw_list_entry(node, type, member) ((type *)((char *)(node)-offsetof(type, member)))

static inline void bw_list_init(bw_list_t *l)
{
    l->prev = l->next = l;
}
static inline bool bw_list_empty(const bw_list_t *l)
{
    return l->next == l;
}
/* Appends n at the tail of l. */
static inline void bw_list_push(bw_list_t *l, bw_list_t *n)
{
    n->prev = l->prev;
    n->next = l;
    l->prev->next = n;
    l->prev = n;
}
/* Inserts n at the head of l. */
static inline void bw_list_unshift(bw_list_t *l, bw_list_t *n)
{
    n->next = l->next;
    n->prev = l;
    l->next->prev = n;
    l->next = n;
}
/* Unlinks n and leaves it self-linked, so a second remove is harmless. */
static inline void bw_list_remove(bw_list_t *n)
{
    n->prev->next = n->next;
    n->next->prev = n->prev;
    n->prev = n->next = n;
}
/* Removes and returns the head, or NULL. */
static inline bw_list_t *bw_list_shift(bw_list_t *l)
{
    if (bw_list_empty(l))
        return NULL;
    bw_list_t *n = l->next;
    bw_list_remove(n);
    return n;
}

#endif
