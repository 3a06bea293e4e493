/*
 * The worker's NATS connection (nats.c in event-loop mode on the worker's libuv loop): connects with
 * retry/backoff forever, subscribes to the assign subject in the queue group and to the cancel subject,
 * reads, decodes and hands messages to the worker on the loop thread, and publishes outgoing messages
 * with headers (written once per loop iteration), retrying failed publishes with exponential backoff on
 * loop timers. Results and acks count as delivered only once a PING sent after them got its PONG;
 * whatever is unconfirmed when the connection closes becomes a PUBLISH_ERROR dead letter. Round trips
 * run on the bus's own thread (bw-nats-rt), never on libuv's thread pool.
 */
#ifndef BW_NET_BUS_H
#define BW_NET_BUS_H

#include <stdbool.h>
#include <stdint.h>
#include <nats/nats.h>
#include <uv.h>

#include "core/config.h"
#include "core/deadletter.h"
#include "core/worker.h"

typedef struct bw_bus bw_bus_t;

/* Loop thread. Creates the connection (returns even when the server is not reachable yet: it keeps
   trying forever) and the subscriptions; decoded inbound messages go to bw_worker_accept on the loop.
   Results that cannot be published after RESULT_PUBLISH_MAX_RETRIES become dead letters in dead.
   Returns NULL and logs when the options are unusable (bad credentials file, TLS files). */
bw_bus_t *bw_bus_create(uv_loop_t *loop, const bw_config_t *cfg, bw_worker_t *worker, bw_deadletters_t *dead);
/* Loop thread. cb(ud) runs on the loop when nats.c closed the connection by itself (it gave up, e.g.
   on an authorization error); not when bw_bus_destroy closes it. */
void bw_bus_on_fatal(bw_bus_t *b, void (*cb)(void *ud), void *ud);
/* Loop thread; the bw_publish_fn for the worker (ud is the bus). */
void bw_bus_publish(void *bus, const bw_outmsg_t *m);
/* The server's max_payload, cached at (re)connect (0 while never connected); the worker's hook. */
size_t bw_bus_max_payload(void *bus);
/* Loop thread. Stops receiving assignments: the subscription drains (messages already delivered to
   this client are still processed), cancels keep arriving. */
void bw_bus_stop_intake(bw_bus_t *b);
/* Loop thread. A round trip to the server (so every earlier publish has reached it), waiting at most
   timeout_ms on the bus's round-trip thread; cb(ud, 0 or -1) runs on the loop afterwards. */
void bw_bus_flush_async(bw_bus_t *b, int64_t timeout_ms, void (*cb)(void *ud, int rc), void *ud);
/* True once the assign subscription finished draining (every delivered message was handed over). */
bool bw_bus_intake_closed(bw_bus_t *b);
/* Inbound messages received by the client but not yet taken by the worker. */
size_t bw_bus_pending_inbound(bw_bus_t *b);
/* Loop thread. Results and acks published and not yet confirmed by the server. */
size_t bw_bus_unconfirmed(bw_bus_t *b);
/* Connected to a server right now. */
bool bw_bus_connected(bw_bus_t *b);
/* The connection cannot recover in this process (nats.c's parser survived a reconnect mid-token, see
   bus.c): the fatal callback ran; the daemon restarts the process. */
bool bw_bus_wedged(bw_bus_t *b);
/* Connected, subscribed and not draining. */
bool bw_bus_ready(bw_bus_t *b);
/* Loop thread, after uv_run returned: takes what the client still holds, gives pending retries a last
   attempt (else they become dead letters), flushes (running the loop until that is done), closes the
   connection and its handles (a final uv_run completes their close). */
void bw_bus_destroy(bw_bus_t *b);

/* JetStream mode (CAF_CONSUMER=jetstream), loop thread. */
bool bw_bus_jetstream(const bw_bus_t *b);
/* The worker's redeliver hook: NAKs the deliveries of tenant's id (with CAF_JS_NAK_DELAY_MS) unless one
   reached CAF_JS_MAX_DELIVER; true when given back. */
bool bw_bus_redeliver(bw_bus_t *b, const char *tenant, const char *id);
/* The worker's parked hook: the deliveries of tenant's id are acked (the job's state is stored). */
void bw_bus_parked(bw_bus_t *b, const char *tenant, const char *id);
/* Shutdown past its timeout: every delivery still held is given back (NAK, no delay) for another worker;
   the caller abandons the jobs (bw_worker_abandon_all). */
void bw_bus_give_back_all(bw_bus_t *b);
/* The consumer's counters for heartbeats (NULL in core mode); caller decrefs. */
json_t *bw_bus_consumer_json(bw_bus_t *b);

struct bw_approvals;
/* Loop thread. Where approval decisions and list requests go (NULL: they are not answered). */
void bw_bus_set_approvals(bw_bus_t *b, struct bw_approvals *r);
struct bw_akv_ops;
/* JetStream mode: the approvals bucket's operations for the registry (core/approvals.h); NULL in core
   mode. */
const struct bw_akv_ops *bw_bus_approvals_kv(bw_bus_t *b);

/* Applies the connection options of cfg (URL, credentials, TLS, reconnect policy) to opts. */
int bw_bus_apply_options(natsOptions *opts, const bw_config_t *cfg, const char *name);

/* For the CLI tools: one connection attempt with the daemon's options (credentials, TLS), no
   reconnects, so a tool fails fast when nothing answers. 0 or -1 (nats_GetLastError tells why). */
int bw_bus_connect_once(natsConnection **nc, const bw_config_t *cfg, const char *name);
/* One connection attempt with cfg's options and no retry, closed at once (the daemon's, before
   bw_bus_create). 1 when a server took the TCP connection and then refused it (credentials, TLS, another
   -ERR, a hang-up): its reason, without the file:line prefix and never a secret, in why. 0 otherwise:
   connected, or no server reachable at all (nats.c's own retries handle that), or options that cannot be
   applied (bw_bus_create reports them).
   Blocks for at most the connect timeout. Any thread. */
int bw_bus_probe(const bw_config_t *cfg, const char *name, char *why, size_t len);

#endif
