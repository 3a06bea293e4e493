/*
 * Mutex-protected list + uv_async. Producers append under the lock; the loop swaps the whole list out
 * under the lock and processes it without holding it, so producers never wait on job work.
 */
#include "util/handoff.h"

#include <pthread.h>
#include <stdlib.h>

#include "util/xalloc.h"

struct bw_handoff {
    uv_async_t async;
    pthread_mutex_t lock;
    bw_list_t items; /* guarded by lock */
    size_t pending;  /* guarded by lock */
    bw_handoff_cb cb;
    void *ud;
};

static void drain(bw_handoff_t *h)
{
    bw_list_t batch;
    bw_list_init(&batch);
    pthread_mutex_lock(&h->lock);
    if (!bw_list_empty(&h->items)) {
        batch.next = h->items.next;
        batch.prev = h->items.prev;
        batch.next->prev = &batch;
        batch.prev->next = &batch;
        bw_list_init(&h->items);
    }
    h->pending = 0;
    pthread_mutex_unlock(&h->lock);
    bw_list_t *n;
    while ((n = bw_list_shift(&batch)) != NULL)
        h->cb(h->ud, n);
}

static void on_async(uv_async_t *a)
{
    drain(a->data);
}

bw_handoff_t *bw_handoff_create(uv_loop_t *loop, bw_handoff_cb cb, void *ud)
{
    bw_handoff_t *h = bw_calloc(1, sizeof *h);
    pthread_mutex_init(&h->lock, NULL);
    bw_list_init(&h->items);
    h->cb = cb;
    h->ud = ud;
    uv_async_init(loop, &h->async, on_async);
    h->async.data = h;
    return h;
}

void bw_handoff_push(bw_handoff_t *h, bw_list_t *item)
{
    pthread_mutex_lock(&h->lock);
    bw_list_push(&h->items, item);
    h->pending++;
    pthread_mutex_unlock(&h->lock);
    uv_async_send(&h->async);
}

size_t bw_handoff_pending(bw_handoff_t *h)
{
    pthread_mutex_lock(&h->lock);
    size_t n = h->pending;
    pthread_mutex_unlock(&h->lock);
    return n;
}

static void on_closed(uv_handle_t *handle)
{
    bw_handoff_t *h = handle->data;
    pthread_mutex_destroy(&h->lock);
    free(h);
}

void bw_handoff_destroy(bw_handoff_t *h)
{
    if (h == NULL)
        return;
    drain(h);
    uv_close((uv_handle_t *)&h->async, on_closed);
}
