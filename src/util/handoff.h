/*
 * The one cross-thread hand-off into the event loop (h2o's multithread receiver): any thread pushes an
 * item, the loop thread is woken through uv_async_send and drains the items in FIFO order.
 */
#ifndef BW_UTIL_HANDOFF_H
#define BW_UTIL_HANDOFF_H

#include <stddef.h>
#include <uv.h>

#include "util/list.h"

typedef struct bw_handoff bw_handoff_t;

/* Called on the loop thread for each item, in push order; the callee owns the item. */
typedef void (*bw_handoff_cb)(void *ud, bw_list_t *item);

/* Creates the hand-off bound to loop (call on the loop thread). Caller frees with bw_handoff_destroy. */
bw_handoff_t *bw_handoff_create(uv_loop_t *loop, bw_handoff_cb cb, void *ud);
/* Thread-safe: queues item (embedded in the pushed object) and wakes the loop. */
void bw_handoff_push(bw_handoff_t *h, bw_list_t *item);
/* Number of items waiting (approximate when read off the loop). */
size_t bw_handoff_pending(bw_handoff_t *h);
/* Loop thread only. Closes the async handle; remaining items are passed to cb first. */
void bw_handoff_destroy(bw_handoff_t *h);

#endif
