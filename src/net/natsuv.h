/*
 * nats.c's external event-loop callbacks on a libuv loop: the connection's socket is polled by the loop
 * and nats.c reads and writes it from the loop thread. Written here rather than taken from the adapter
 * that ships with libnats-dev because that one cannot make its first attach from nats.c's reconnect
 * thread (it returns NATS_ILLEGAL_STATE), which is how a connection that retried at start-up
 * (RetryOnFailedConnect) comes up; this one creates its loop handles up front, on the loop thread.
 */
#ifndef BW_NET_NATSUV_H
#define BW_NET_NATSUV_H

#include <nats/nats.h>
#include <uv.h>

typedef struct bw_natsuv bw_natsuv_t;

/* Loop thread. The adapter for one connection on loop; free with bw_natsuv_destroy. */
bw_natsuv_t *bw_natsuv_create(uv_loop_t *loop);
/* Installs the adapter's callbacks in opts (natsOptions_SetEventLoop). */
natsStatus bw_natsuv_set_options(bw_natsuv_t *a, natsOptions *opts);
/* Loop thread, once the connection is closed: stops polling and closes the adapter's handles; the
   memory goes when the loop has run their close callbacks. NULL is a no-op. */
void bw_natsuv_destroy(bw_natsuv_t *a);

#endif
