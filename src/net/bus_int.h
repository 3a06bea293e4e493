/*
 * Private to net/bus.c and net/busout.c: the bus's state and the functions the two halves call in each
 * other. Loop thread unless a field or function says otherwise.
 */
#ifndef BW_NET_BUS_INT_H
#define BW_NET_BUS_INT_H

#include <nats/nats.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "net/bus.h"
#include "net/natsuv.h"
#include "util/list.h"

#define RELEASE_BATCH 256 /* messages destroyed together at most (see release_later) */
#define RELEASE_BYTES (1024 * 1024)
#define RELEASE_NS (20 * 1000000ull)
#define RETRY_BASE_MS 100
#define RETRY_MAX_MS 10000
#define CONFIRM_DELAY_MS 20     /* a confirming round trip starts at most this long after a publish */
#define CONFIRM_OFFLINE_MS 100  /* ... re-checked this often while disconnected */
#define CONFIRM_TIMEOUT_MS 2000 /* one round trip's wait for its PONG */
#define REFUSAL_HOLD_MS 2000    /* a confirmed message is kept this long once a refusal was seen (top) */

typedef struct retry {
    bw_list_t link;
    bw_out_kind_t kind;
    char *subject;
    char *data;
    size_t len;
    char *hkeys[BW_OUTMSG_MAX_HEADERS];
    char *hvals[BW_OUTMSG_MAX_HEADERS];
    int attempts;
    uint64_t due_ms;
} retry_t;

/* A round trip to the server (or a subscription drain) run on the bus's bw-nats-rt thread. */
/* A published result or ack waiting for its confirmation (see the top of the file). */
typedef struct sent {
    natsMsg *msg; /* NULL once dead-lettered as refused */
    bw_out_kind_t kind;
    uint64_t hold_until; /* confirmed ones: released at this loop time (ms) */
} sent_t;

/* A refused subject reported on nats.c's callback thread, for the loop. */
typedef struct refusal {
    bw_list_t link;
    char subject[256];
} refusal_t;

struct bw_bus {
    uv_loop_t *loop;
    const bw_config_t *cfg;
    bw_worker_t *worker;
    bw_deadletters_t *dead;
    natsConnection *nc;
    bw_natsuv_t *io;
    natsSubscription *assign_sub, *cancel_sub;
    /* human approvals: decisions on the shared subject and on this worker's own, list requests */
    natsSubscription *decision_sub, *own_decision_sub, *list_sub;
    struct bw_approvals *approvals; /* NULL: approval requests are not answered */
    uv_check_t drain;               /* takes what the poll phase read off the socket */
    uv_idle_t backlog;              /* keeps the loop from blocking while a drain left messages behind */
    uv_prepare_t release;           /* releases the iteration's messages before the loop blocks */
    natsMsg *releases[RELEASE_BATCH];
    size_t nreleases;
    size_t release_bytes; /* payload bytes of the messages waiting */
    uint64_t release_ns;  /* when the first of them came (monotonic) */
    size_t decoding;      /* loop thread: large assignments on the thread pool */
    size_t roundtrips;    /* loop thread: round trips in flight */
    /* the bw-nats-rt thread: requests in todo, answers in done (both under rt_mu), rt_async wakes the loop */
    pthread_t rt_thread;
    bool rt_started, rt_quit;
    pthread_mutex_t rt_mu;
    pthread_cond_t rt_cond;
    bw_list_t rt_todo, rt_done;
    uv_async_t rt_async;
    atomic_uint_fast64_t epoch; /* incremented on every disconnect */
    /* loop thread: results and acks published and not yet released, sent[head..len) with sequence
       numbers head_seq..; those below conf_seq are confirmed and held (see the top of the file) */
    sent_t *sent;
    size_t sent_head, sent_len, sent_cap;
    uint64_t head_seq, conf_seq;
    uv_timer_t confirm_timer;
    uv_timer_t hold_timer;
    /* refusals reported by nats.c (its callback thread), taken by the loop (refusal_async) */
    pthread_mutex_t refusal_mu;
    bw_list_t refusals;
    size_t nrefusals;
    bool refusals_closed; /* the bus is closing: no more reports */
    uv_async_t refusal_async;
    bool confirming;     /* a confirming round trip is in flight */
    bool intake_drained; /* loop thread: the assign subscription is in nats.c's drain mode */
    bw_list_t retries;
    uv_timer_t retry_timer;
    uv_async_t fatal; /* the connection closed outside shutdown */
    void (*on_fatal)(void *ud);
    void *fatal_ud;
    atomic_bool connected, ready, closing, subscribed;
    pthread_mutex_t closed_lock;
    pthread_cond_t closed_cond;
    bool closed; /* guarded by closed_lock: nats.c's closed callback ran, no callback follows */
    atomic_int_fast64_t max_payload;    /* the server's, cached at (re)connect: read once per result */
    struct bw_busjs *js;                /* CAF_CONSUMER=jetstream (net/busjs.c); NULL in core mode */
    atomic_int disconnects_unconfirmed; /* disconnects since the last round trip answered (wedge check) */
    int reconnect_strikes; /* loop thread: unanswered round trips on the reconnected connection */
    uint64_t strike_epoch; /* ... of this epoch */
    atomic_bool wedged;
    natsSubscription *js_reply_sub; /* jetstream: replies to our requests (PubAcks, store reads) */
    struct bw_akv *akv;             /* jetstream: the approvals bucket (net/approvals_kv.c) */
};

/* net/bus.c */
/* A header's value of msg (bw_headers_t's accessor). */
const char *bw_bus_msg_header(void *ud, const char *name);
/* msg is destroyed with others before the loop blocks. */
void bw_bus_release_later(bw_bus_t *b, natsMsg *msg);
/* A flush (or, with drain, the assign subscription's drain) on bw-nats-rt; done(b, rc, ud) on the loop,
   rc 0 when the server answered on the same connection it was asked on. */
void bw_bus_roundtrip(bw_bus_t *b, bool drain, int64_t timeout_ms, void (*done)(bw_bus_t *, int, void *),
                      void *ud);

/* Decodes an assign message (on the loop when small, on the thread pool when large) into in and calls
   done(b, in) on the loop; msg is released. */
void bw_bus_decode(bw_bus_t *b, natsMsg *msg, bw_inbound_t *in, void (*done)(bw_bus_t *, bw_inbound_t *));
/* Headers of msg as a JSON object (name -> first value). */
json_t *bw_bus_headers_json(natsMsg *msg);
/* work(b, ud) on bw-nats-rt (it may wait for the server: the loop reads the answers), then done(b, rc,
   ud) on the loop with work's return value. */
void bw_bus_run_async(bw_bus_t *b, int (*work)(bw_bus_t *, void *), void (*done)(bw_bus_t *, int, void *),
                      void *ud);
/* Drains the assign subscription (JetStream: the pull inbox): intake ends once the server confirmed it. */
void bw_bus_drain_intake(bw_bus_t *b);
/* Connected, subscribed (and, with JetStream, the stream and consumer confirmed): ready. */
void bw_bus_say_ready(bw_bus_t *b);

/* net/busout.c */
/* Publishes one message (results and acks are kept for confirmation); NATS_OK or why not. */
natsStatus bw_busout_publish_raw(bw_bus_t *b, bw_out_kind_t kind, const char *subject, const char *reply,
                                 const char *data, size_t len, const char *const *hk, const char *const *hv);
/* The confirmation sequence number the next kept message will get (a kept message with number n is
   confirmed once conf_seq > n). */
uint64_t bw_busout_end_seq(const bw_bus_t *b);
/* The core publish path of bw_bus_publish (retries, then a dead letter). */
void bw_busout_publish_core(bw_bus_t *b, const bw_outmsg_t *m);

/* net/busjs.c: the JetStream consumer (CAF_CONSUMER=jetstream), loop thread */
struct bw_busjs *bw_busjs_create(bw_bus_t *b);
/* Subscribes the pull inbox (as b->assign_sub, so drains work as in core mode) and the reply inbox. */
natsStatus bw_busjs_subscribe(bw_bus_t *b);
/* The first confirmed connection: checks/creates the stream, consumer and bucket on bw-nats-rt, then
   says ready and starts pulling. Later calls (reconnects) forget open pull requests and pull again. */
void bw_busjs_connected(bw_bus_t *b);
void bw_busjs_take_pull(bw_bus_t *b, natsMsg *msg);
void bw_busjs_take_reply(bw_bus_t *b, natsMsg *msg);
/* Once per loop iteration: pulls when there is room. */
void bw_busjs_tick(bw_bus_t *b);
/* A result (m->kind == BW_OUT_RESULT): published, stored, and its job's deliveries acked once out. */
void bw_busjs_publish_result(bw_bus_t *b, const bw_outmsg_t *m);
/* The confirmation FIFO confirmed every kept message below conf_seq. */
void bw_busjs_confirmed(bw_bus_t *b, uint64_t conf_seq);
/* Draining: no more pulls; the pull inbox is drained once the open pull request expired (until then the
   server may still send to it, and what comes is given back). */
void bw_busjs_stop_intake(bw_bus_t *b);
/* At close: runs the loop until the open pull request expired (at most PULL_EXPIRES_MS), giving back what
   still comes, so that nothing is sent to a connection about to close. */
void bw_busjs_wait_pull(bw_bus_t *b);
/* At close: waits (running the loop) for the replies still owed, at most timeout_ms. */
void bw_busjs_finish_replies(bw_bus_t *b, int64_t timeout_ms);
/* At close: every delivery still held is given back (NAK, no delay). */
void bw_busjs_give_back_all(bw_bus_t *b, const char *why);
void bw_busjs_destroy(bw_bus_t *b);
void bw_busout_on_retry_timer(uv_timer_t *t);
void bw_busout_on_refusal_async(uv_async_t *a);
/* Pending retries get one last attempt; what fails goes to the dead letters. */
void bw_busout_flush_retries(bw_bus_t *b);
/* One confirming round trip for everything published so far. */
void bw_busout_start_confirm(bw_bus_t *b, int64_t timeout_ms);
/* Turns the refusals nats.c reported into dead letters of the messages they refused. */
void bw_busout_take_refusals(bw_bus_t *b);
/* Every kept, unconfirmed message becomes a PUBLISH_ERROR dead letter saying why. */
void bw_busout_dead_letter_unconfirmed(bw_bus_t *b, const char *why);

/* net/busjs.c, for net/approvals_kv.c */
struct bw_busjs;
/* Publishes data on subject (headers hk/hv, may be NULL) with a reply inbox of the JetStream consumer's;
   fn(ud, msg) runs on the loop with the answer (borrowed), or with NULL when none came in time. NATS_OK,
   or why it was not sent (fn is then not called). */
natsStatus bw_busjs_request(bw_bus_t *b, const char *subject, const char *data, size_t len,
                            const char *const *hk, const char *const *hv, void (*fn)(void *ud, natsMsg *msg),
                            void *ud);
/* Runs every request's fn still waiting with NULL now (and forgets them). */
void bw_busjs_drop_requests(bw_bus_t *b, void (*fn)(void *ud, natsMsg *msg));
/* bw-nats-rt: a KV bucket checked or created (CAF_JS_CREATE) like a KV client does; var names its setting
   in messages; *direct: it answers direct gets. 0, -1 (transient: retried), or fatal (exit naming var). */
int bw_busjs_ensure_bucket(struct bw_busjs *js, jsCtx *ctx, const char *bucket, const char *var,
                           int64_t max_age_ms, bool *direct);

/* net/approvals_kv.c: the approvals bucket of JetStream mode */
struct bw_akv *bw_akv_create(bw_bus_t *b);
/* bw-nats-rt, in the JetStream set-up: checks/creates the bucket, starts the watcher once. */
int bw_akv_setup(bw_bus_t *b, jsCtx *ctx);
/* Loop thread, after the connection closed (the watcher's clean-up would otherwise ask the server). */
void bw_akv_destroy(bw_bus_t *b);

#endif
