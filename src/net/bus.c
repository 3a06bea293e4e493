/*
 * Transport: nats.c in its external event-loop mode, on our libuv loop (net/natsuv.c). The loop thread reads
 * and writes the socket itself: no reader thread, no flusher thread, and publishes made during one loop
 * iteration leave in one write when the socket is next writable. Both subscriptions are synchronous and are
 * drained by a uv_check right after the poll phase, so an assignment is read, decoded, run and answered on
 * the loop with no thread hand-off (small ones; large ones are decoded on libuv's thread pool). nats.c still
 * runs its reconnect thread, its timer thread (pings) and its callback thread (connection events: they only
 * touch atomics, log, and hand round trips to bw-nats-rt: they never wait). Anything that waits for a
 * server round trip (flush, subscription drain) must not run on the loop, which is the thread that reads
 * the answer: those run on one thread of the bus's own ("bw-nats-rt", a FIFO of requests, each with a
 * timeout), never on libuv's thread pool, which jobs can fill (file I/O, DNS, JMESPath, PQcancel): a full
 * pool must not stall readiness, drain or shutdown.
 *
 * Confirmation: a publish only puts bytes in nats.c's buffer (or, while disconnected, in its reconnect
 * buffer, which natsConnection_Close discards). A result or ack is done when a PING sent after it got its
 * PONG (the server handles one connection's protocol in order). Published results and acks are therefore
 * kept (the natsMsg itself: no copy) in a FIFO numbered by sequence; a timer starts one round trip at a
 * time on bw-nats-rt, at most every CONFIRM_DELAY_MS, which confirms everything published before it. The
 * hot path pays an array append per result; a round trip costs a few system calls per CONFIRM_DELAY_MS,
 * not per job. Whatever is still unconfirmed when the connection closes becomes a PUBLISH_ERROR dead
 * letter, which `dlq replay` delivers.
 *
 * Refusals: a publish the server refuses (permissions) still gets its PONG, so a PONG alone does not
 * prove delivery. nats.c parses the server's -ERR on the loop thread, in order, before the PONG of any
 * PING sent after the refused publish, and records it at once as the connection's last error; but it
 * reports it (with the subject, not the message) later, on its callback thread. So: when the
 * connection's last error is still NATS_OK at a PONG, nothing was refused before it and the round
 * trip's messages are released at once (the normal case: no cost). Otherwise they are held for
 * REFUSAL_HOLD_MS after the PONG. A reported refusal on subject S turns every kept message on S (held
 * or unconfirmed) into a PUBLISH_ERROR dead letter. That may dead-letter a message the server did take
 * (when only some publishes on S are refused): a duplicate the router drops by assignment id, where the
 * other choice would lose a result. At close, nats.c's closed callback comes after every earlier
 * callback, so once it ran, every refusal is known and what is held is released.
 *
 * This file holds the connection, the inbound half, the round-trip thread and shutdown; publishing,
 * retries, the confirmation FIFO and refusals are in net/busout.c; their shared state in net/bus_int.h.
 */
#include "net/bus.h"

#include "core/approvals.h"

#include "net/bus_int.h"

#include <nats/nats.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "net/natsuv.h"
#include "obs/log.h"
#include "obs/metrics.h"
#include "util/clock.h"
#include "util/xalloc.h"

#define ASSIGN_PENDING_MSGS 500000
#define ASSIGN_PENDING_BYTES (1024 * 1024 * 1024)
#define DECODE_ON_LOOP_MAX (16 * 1024)
#define RELEASE_MIN 64   /* ... and at least, unless they hold RELEASE_BYTES or waited RELEASE_NS */
#define DRAIN_BATCH 1024 /* messages taken per loop iteration before timers and I/O get a turn */
#define FINAL_CONFIRM_TIMEOUT_MS 2000
#define PERMISSION_NOT_READY_MS 10000 /* /readyz says PUBLISH_PERMISSION_DENIED this long after one */
#define REFUSALS_MAX 1024 /* refusals reported and not yet taken by the loop (more: one is kept) */
/* nats.c 3.4 in event-loop mode keeps its protocol parser across reconnects (nats-io/nats.c#1007): a
   connection lost in the middle of a protocol line leaves the parser mid-token, and every later connection
   fails to parse (a reconnect loop) or has its bytes eaten as a payload (no PONG ever comes). That many
   disconnects with no confirmed round trip between them, or that many unanswered round trips on one
   reconnected connection, mean the connection is wedged: the worker stops and starts afresh. */
#define WEDGE_DISCONNECTS 8
#define WEDGE_ROUNDTRIPS 2

typedef struct roundtrip {
    bw_list_t link;
    bw_bus_t *b;
    int64_t timeout_ms;
    bool drain;                         /* drain the assign subscription instead of flushing */
    int (*work)(bw_bus_t *b, void *ud); /* or run this instead (bw_bus_run_async) */
    bool detached;  /* asked for by nats.c's callback thread: not counted in b->roundtrips */
    uint64_t epoch; /* the connection's epoch when it was asked for (loop thread) */
    int rc;
    void (*done)(bw_bus_t *b, int rc, void *ud); /* loop thread */
    void *ud;
} roundtrip_t;

/* A large assignment decoded on the thread pool. */
typedef struct decode_job {
    uv_work_t req;
    bw_bus_t *b;
    bw_inbound_t *in;
    void (*done)(bw_bus_t *, bw_inbound_t *);
} decode_job_t;

/* ---- inbound (loop thread, except decode_work) ---- */

const char *bw_bus_msg_header(void *ud, const char *name)
{
    const char *v = NULL;
    return natsMsgHeader_Get(ud, name, &v) == NATS_OK ? v : NULL;
}

json_t *bw_bus_headers_json(natsMsg *msg)
{
    const char **keys = NULL;
    int n = 0;
    json_t *o = json_object();
    if (natsMsgHeader_Keys(msg, &keys, &n) == NATS_OK) {
        for (int i = 0; i < n; i++) {
            const char *v = bw_bus_msg_header(msg, keys[i]);
            json_t *js = v ? json_string(v) : NULL;
            if (js != NULL)
                json_object_set_new(o, keys[i], js);
        }
        free((void *)keys);
    }
    return o;
}

/* Loop thread. nats.c hands every destroyed message to its collector thread and wakes that thread
   whenever it sleeps: destroyed one by one, that is two wake-ups (and a contended lock) per job. Messages
   are therefore released together, before the loop blocks, once RELEASE_MIN of them wait (or they hold
   RELEASE_BYTES, or the first waited RELEASE_NS): when jobs end one per loop iteration (scripts, whose
   answers each wake the loop), a per-iteration release would still wake the collector once per job. */
static void release_all(bw_bus_t *b)
{
    for (size_t i = 0; i < b->nreleases; i++)
        natsMsg_Destroy(b->releases[i]);
    b->nreleases = 0;
    b->release_bytes = 0;
}

void bw_bus_release_later(bw_bus_t *b, natsMsg *msg)
{
    if (b->nreleases == RELEASE_BATCH)
        release_all(b);
    if (b->nreleases == 0)
        b->release_ns = bw_mono_ns();
    b->release_bytes += (size_t)natsMsg_GetDataLength(msg);
    b->releases[b->nreleases++] = msg;
}

static void on_release(uv_prepare_t *p)
{
    bw_bus_t *b = p->data;
    if (b->nreleases >= RELEASE_MIN || b->release_bytes >= RELEASE_BYTES ||
        (b->nreleases > 0 && bw_mono_ns() - b->release_ns >= RELEASE_NS))
        release_all(b);
}

/* Decodes msg into in (any thread); the caller releases msg. */
static void decode_msg(bw_bus_t *b, bw_inbound_t *in, natsMsg *msg)
{
    bw_headers_t h = {bw_bus_msg_header, msg};
    bw_inbound_decode(in, natsMsg_GetSubject(msg), natsMsg_GetData(msg), (size_t)natsMsg_GetDataLength(msg),
                      &h, b->cfg->default_job_timeout_ms);
    if (in->dead_letter)
        in->headers = bw_bus_headers_json(msg);
}

static void decode_work(uv_work_t *req) /* thread pool */
{
    decode_job_t *d = req->data;
    decode_msg(d->b, d->in, d->in->undecoded);
    natsMsg_Destroy(d->in->undecoded);
    d->in->undecoded = NULL;
}

static void decode_done(uv_work_t *req, int status)
{
    decode_job_t *d = req->data;
    d->b->decoding--;
    d->done(d->b, d->in);
    free(d);
}

/* Small assignments are decoded right here, so a job's allocations are made and freed on one thread;
   large ones go to the thread pool, so that parsing a megabyte of JSON does not stall the loop. */
void bw_bus_decode(bw_bus_t *b, natsMsg *msg, bw_inbound_t *in, void (*done)(bw_bus_t *, bw_inbound_t *))
{
    in->kind = BW_IN_ASSIGN;
    in->received_ns = bw_mono_ns();
    if (natsMsg_GetDataLength(msg) <= DECODE_ON_LOOP_MAX) {
        decode_msg(b, in, msg);
        bw_bus_release_later(b, msg);
        done(b, in);
        return;
    }
    decode_job_t *d = bw_calloc(1, sizeof *d);
    d->b = b;
    d->in = in;
    d->done = done;
    d->req.data = d;
    in->undecoded = msg;
    b->decoding++;
    uv_queue_work(b->loop, &d->req, decode_work, decode_done);
}

static void accept_decoded(bw_bus_t *b, bw_inbound_t *in)
{
    bw_worker_accept(b->worker, in);
}

static void take_assign(bw_bus_t *b, natsMsg *msg)
{
    bw_bus_decode(b, msg, bw_calloc(1, sizeof(bw_inbound_t)), accept_decoded);
}

static void take_cancel(bw_bus_t *b, natsMsg *msg)
{
    bw_headers_t h = {bw_bus_msg_header, msg}; /* the tenant may come in the tenant_id header */
    bw_inbound_t *in = bw_inbound_cancel(natsMsg_GetData(msg), (size_t)natsMsg_GetDataLength(msg), &h);
    bw_bus_release_later(b, msg);
    if (in != NULL)
        bw_worker_accept(b->worker, in);
}

/* Approval decisions and list requests: answered by the registry on the loop (or left unanswered while
   there is none, at start-up and shutdown). */
static void take_approval(bw_bus_t *b, natsMsg *msg, int what)
{
    const char *reply = natsMsg_GetReply(msg);
    if (b->approvals != NULL) {
        if (what == 2)
            bw_approvals_on_list(b->approvals, natsMsg_GetData(msg), (size_t)natsMsg_GetDataLength(msg),
                                 reply);
        else
            bw_approvals_on_decision(b->approvals, natsMsg_GetData(msg), (size_t)natsMsg_GetDataLength(msg),
                                     reply, what == 1);
    }
    bw_bus_release_later(b, msg);
}

static void take_decision(bw_bus_t *b, natsMsg *msg)
{
    take_approval(b, msg, 0);
}

static void take_own_decision(bw_bus_t *b, natsMsg *msg)
{
    take_approval(b, msg, 1);
}

static void take_list(bw_bus_t *b, natsMsg *msg)
{
    take_approval(b, msg, 2);
}

void bw_bus_set_approvals(bw_bus_t *b, struct bw_approvals *r)
{
    b->approvals = r;
}

/* Takes up to max messages of sub; returns how many it took. Once the subscription is draining, a
   non-zero timeout makes nats.c return at once and close it when it is empty (with 0 it only says
   "nothing yet"); before that, 0 is what keeps the loop from blocking. */
static size_t drain_sub(bw_bus_t *b, natsSubscription *sub, void (*take)(bw_bus_t *, natsMsg *), size_t max)
{
    natsMsg *msg = NULL;
    size_t n = 0;
    int64_t timeout = sub != NULL && sub == b->assign_sub && b->intake_drained ? 1 : 0;
    while (sub != NULL && n < max && natsSubscription_NextMsg(&msg, sub, timeout) == NATS_OK) {
        take(b, msg);
        n++;
    }
    return n;
}

static void on_backlog(uv_idle_t *h)
{
    /* Nothing to do: an active idle handle makes the next poll phase non-blocking, so the drain
       check runs again at once. */
}

static void on_drain(uv_check_t *c)
{
    bw_bus_t *b = c->data;
    size_t n = drain_sub(b, b->assign_sub, b->js ? bw_busjs_take_pull : take_assign, DRAIN_BATCH);
    if (b->js != NULL)
        n += drain_sub(b, b->js_reply_sub, bw_busjs_take_reply, DRAIN_BATCH);
    n += drain_sub(b, b->cancel_sub, take_cancel, DRAIN_BATCH);
    n += drain_sub(b, b->decision_sub, take_decision, DRAIN_BATCH);
    n += drain_sub(b, b->own_decision_sub, take_own_decision, DRAIN_BATCH);
    n += drain_sub(b, b->list_sub, take_list, DRAIN_BATCH);
    if (n > 0 && bw_bus_pending_inbound(b) > b->decoding)
        uv_idle_start(&b->backlog, on_backlog);
    else
        uv_idle_stop(&b->backlog);
    if (b->js != NULL)
        bw_busjs_tick(b);
}

/* ---- round trips (bw-nats-rt thread, completion on the loop) ---- */

static void roundtrip_run(roundtrip_t *r) /* bw-nats-rt */
{
    natsStatus s;
    if (r->work != NULL) {
        r->rc = r->work(r->b, r->ud);
        return;
    }
    if (r->drain)
        s = natsSubscription_Drain(r->b->assign_sub); /* returns at once; nats.c completes it */
    else
        s = natsConnection_FlushTimeout(r->b->nc, r->timeout_ms);
    /* A PONG on a connection made after a disconnect proves nothing about bytes the old one lost. */
    r->rc = s == NATS_OK && atomic_load(&r->b->epoch) == r->epoch ? 0 : -1;
}

static void *rt_main(void *arg)
{
    bw_bus_t *b = arg;
    pthread_setname_np(pthread_self(), "bw-nats-rt");
    pthread_mutex_lock(&b->rt_mu);
    for (;;) {
        while (bw_list_empty(&b->rt_todo) && !b->rt_quit)
            pthread_cond_wait(&b->rt_cond, &b->rt_mu);
        bw_list_t *l = bw_list_shift(&b->rt_todo);
        if (l == NULL)
            break; /* quit, and nothing left to answer */
        pthread_mutex_unlock(&b->rt_mu);
        roundtrip_run(bw_list_entry(l, roundtrip_t, link));
        pthread_mutex_lock(&b->rt_mu);
        bw_list_push(&b->rt_done, l);
        uv_async_send(&b->rt_async);
    }
    pthread_mutex_unlock(&b->rt_mu);
    return NULL;
}

/* Loop thread: runs the callbacks of the answered round trips. */
static void rt_complete(bw_bus_t *b)
{
    bw_list_t done;
    bw_list_init(&done);
    pthread_mutex_lock(&b->rt_mu);
    while (!bw_list_empty(&b->rt_done))
        bw_list_push(&done, bw_list_shift(&b->rt_done));
    pthread_mutex_unlock(&b->rt_mu);
    bw_list_t *l;
    while ((l = bw_list_shift(&done)) != NULL) {
        roundtrip_t *r = bw_list_entry(l, roundtrip_t, link);
        if (!r->detached && --b->roundtrips == 0)
            uv_unref((uv_handle_t *)&b->rt_async); /* only answers in flight keep the loop alive */
        if (r->done != NULL)
            r->done(b, r->rc, r->ud);
        free(r);
    }
}

static void on_rt_async(uv_async_t *a)
{
    rt_complete(a->data);
}

static int rt_start(bw_bus_t *b)
{
    pthread_mutex_init(&b->rt_mu, NULL);
    pthread_cond_init(&b->rt_cond, NULL);
    bw_list_init(&b->rt_todo);
    bw_list_init(&b->rt_done);
    uv_async_init(b->loop, &b->rt_async, on_rt_async);
    b->rt_async.data = b;
    uv_unref((uv_handle_t *)&b->rt_async);
    if (pthread_create(&b->rt_thread, NULL, rt_main, b) != 0) {
        bw_log(BW_LOG_ERROR, "cannot start the NATS round-trip thread");
        return -1;
    }
    b->rt_started = true;
    return 0;
}

/* Loop thread, after the connection is closed (so no round trip still waits for a PONG): answers what
   is left (each fails at once on a closed connection) and ends the thread. */
static void rt_stop(bw_bus_t *b)
{
    if (!b->rt_started)
        return;
    pthread_mutex_lock(&b->rt_mu);
    b->rt_quit = true;
    pthread_cond_signal(&b->rt_cond);
    pthread_mutex_unlock(&b->rt_mu);
    pthread_join(b->rt_thread, NULL);
    b->rt_started = false;
    rt_complete(b);
}

/* A round trip asked for now (its epoch: the connection's now); caller queues it. */
static roundtrip_t *roundtrip_new(bw_bus_t *b, int64_t timeout_ms, void (*done)(bw_bus_t *, int, void *),
                                  void *ud)
{
    roundtrip_t *r = bw_calloc(1, sizeof *r);
    r->b = b;
    r->timeout_ms = timeout_ms;
    r->epoch = atomic_load(&b->epoch);
    r->done = done;
    r->ud = ud;
    return r;
}

/* Loop thread: hands r to bw-nats-rt; while any is in flight the loop stays alive for its answer. */
static void roundtrip_queue(bw_bus_t *b, roundtrip_t *r)
{
    if (b->roundtrips++ == 0)
        uv_ref((uv_handle_t *)&b->rt_async);
    pthread_mutex_lock(&b->rt_mu);
    bw_list_push(&b->rt_todo, &r->link);
    pthread_cond_signal(&b->rt_cond);
    pthread_mutex_unlock(&b->rt_mu);
}

void bw_bus_roundtrip(bw_bus_t *b, bool drain, int64_t timeout_ms, void (*done)(bw_bus_t *, int, void *),
                      void *ud)
{
    roundtrip_t *r = roundtrip_new(b, timeout_ms, done, ud);
    r->drain = drain;
    roundtrip_queue(b, r);
}

void bw_bus_run_async(bw_bus_t *b, int (*work)(bw_bus_t *, void *), void (*done)(bw_bus_t *, int, void *),
                      void *ud)
{
    roundtrip_t *r = roundtrip_new(b, 0, done, ud);
    r->work = work;
    roundtrip_queue(b, r);
}

/* nats.c's callback thread: a round trip on bw-nats-rt, done(b, rc, ud) on the loop. The callback
   thread must not wait for a PONG itself: it also reports refusals, which the loop must learn of while
   it still holds the refused messages (see the top of the file). Dropped once the bus is closing. */
static void roundtrip_detached(bw_bus_t *b, int64_t timeout_ms, void (*done)(bw_bus_t *, int, void *),
                               void *ud)
{
    roundtrip_t *r = roundtrip_new(b, timeout_ms, done, ud);
    r->detached = true;
    pthread_mutex_lock(&b->rt_mu);
    if (b->rt_quit || atomic_load(&b->closing)) {
        pthread_mutex_unlock(&b->rt_mu);
        free(r);
        return;
    }
    bw_list_push(&b->rt_todo, &r->link);
    pthread_cond_signal(&b->rt_cond);
    pthread_mutex_unlock(&b->rt_mu);
}

/* ---- connection events (nats.c callback thread) ---- */

void bw_bus_say_ready(bw_bus_t *b)
{
    bw_metrics_set(BW_G_SUBSCRIBED, 1);
    if (!atomic_exchange(&b->ready, true))
        bw_log(BW_LOG_INFO, "worker ready", BW_LS("assign_subject", b->cfg->assign_subject),
               BW_LS(b->js ? "consumer" : "queue_group", b->js ? b->cfg->js_durable : b->cfg->queue_group));
}

/* The connection is beyond repair in this process (see WEDGE_DISCONNECTS): loop thread or nats.c's callback
   thread. */
static void wedged(bw_bus_t *b, const char *why)
{
    if (atomic_exchange(&b->wedged, true) || atomic_load(&b->closing))
        return;
    bw_log(BW_LOG_ERROR,
           "NATS connection wedged (nats.c keeps its protocol parser across reconnects in event-loop mode, "
           "nats-io/nats.c#1007): restarting the worker",
           BW_LS("error", why));
    uv_async_send(&b->fatal);
}

/* A round trip came back: the connection works. */
static void roundtrip_ok(bw_bus_t *b)
{
    atomic_store(&b->disconnects_unconfirmed, 0);
    b->reconnect_strikes = 0;
}

static void ready_flushed(bw_bus_t *b, int rc, void *ud)
{
    if (rc != 0)
        return;
    roundtrip_ok(b);
    if (b->js != NULL)
        bw_busjs_connected(b); /* ready once the stream and the consumer are confirmed */
    else
        bw_bus_say_ready(b);
}

static void set_connected(bw_bus_t *b, natsConnection *nc, bool up)
{
    if (up && nc != NULL)
        atomic_store(&b->max_payload, natsConnection_GetMaxPayload(nc));
    atomic_store(&b->connected, up);
    bw_metrics_set(BW_G_NATS_CONNECTED, up);
}

static void on_connected(natsConnection *nc, void *closure)
{
    bw_bus_t *b = closure;
    set_connected(b, nc, true);
    bw_log(BW_LOG_INFO, "nats connected");
    /* A round trip makes sure the server has registered our subscriptions before we say ready. */
    if (atomic_load(&b->subscribed))
        roundtrip_detached(b, 5000, ready_flushed, NULL);
}

static void on_disconnected(natsConnection *nc, void *closure)
{
    bw_bus_t *b = closure;
    atomic_fetch_add(&b->epoch, 1);
    set_connected(b, nc, false);
    if (atomic_load(&b->closing))
        return;
    bw_metrics_inc(BW_C_NATS_DISCONNECTS);
    bw_log(BW_LOG_WARN, b->js != NULL
                            ? "nats disconnected: reconnecting with backoff"
                            : "nats disconnected: reconnecting with backoff (core mode: assignments "
                              "sent to this worker meanwhile are lost)");
    if (atomic_fetch_add(&b->disconnects_unconfirmed, 1) + 1 >= WEDGE_DISCONNECTS)
        wedged(b, "repeated disconnects with no round trip answered in between");
}

/* Loop thread: the reconnect's round trip is back (or timed out): connected, unless the connection
   dropped again meanwhile (ud: the epoch it was asked in). */
static void reconnect_flushed(bw_bus_t *b, int rc, void *ud)
{
    if (atomic_load(&b->closing) || atomic_load(&b->epoch) != (uint64_t)(uintptr_t)ud)
        return;
    if (rc != 0) { /* connected, yet no PONG: the parser may be eating what the server sends */
        if (b->strike_epoch != (uint64_t)(uintptr_t)ud) {
            b->strike_epoch = (uint64_t)(uintptr_t)ud;
            b->reconnect_strikes = 0;
        }
        if (++b->reconnect_strikes >= WEDGE_ROUNDTRIPS)
            wedged(b, "the reconnected connection does not answer round trips");
        else
            bw_bus_roundtrip(b, false, 5000, reconnect_flushed, ud);
        return;
    }
    roundtrip_ok(b);
    set_connected(b, b->nc, true);
    bw_log(BW_LOG_INFO, "nats reconnected");
    if (b->js != NULL)
        bw_busjs_connected(b);
}

static void on_reconnected(natsConnection *nc, void *closure)
{
    bw_bus_t *b = closure;
    bw_metrics_inc(BW_C_NATS_RECONNECTS);
    /* nats.c calls this before the re-sent subscriptions are flushed: a round trip first, so that
       "reconnected" (and readiness) means the server routes assignments to us again. */
    roundtrip_detached(b, 5000, reconnect_flushed, (void *)(uintptr_t)atomic_load(&b->epoch));
}

static void on_closed(natsConnection *nc, void *closure)
{
    bw_bus_t *b = closure;
    const char *why = NULL;
    set_connected(b, nc, false);
    if (atomic_load(&b->closing)) {
        bw_log(BW_LOG_INFO, "nats connection closed");
    } else {
        /* nats.c gave up (e.g. an authorization error): without a connection the worker can do
           nothing, so the daemon exits non-zero and the supervisor can tell. */
        natsConnection_GetLastError(nc, &why);
        bw_log(BW_LOG_ERROR, "nats connection closed by the client library: exiting",
               BW_LS("error", why ? why : "unknown"));
        uv_async_send(&b->fatal);
    }
    pthread_mutex_lock(&b->closed_lock);
    b->closed = true;
    pthread_cond_signal(&b->closed_cond);
    pthread_mutex_unlock(&b->closed_lock);
}

/* The quoted subject of the server's 'Permissions Violation for Publish to "S"' into out ("" when the
   text is not one for a publish). */
static void denied_subject(const char *why, char *out, size_t len)
{
    static const char marker[] = "publish to \"";
    out[0] = '\0';
    for (const char *p = why; p != NULL && *p != '\0'; p++) {
        if (strncasecmp(p, marker, sizeof marker - 1) != 0)
            continue;
        p += sizeof marker - 1;
        size_t n = strcspn(p, "\"");
        n = n < len - 1 ? n : len - 1;
        memcpy(out, p, n);
        out[n] = '\0';
        return;
    }
}

/* nats.c's callback thread: hands a refused subject to the loop (see the top of the file). One
   refusal per subject waiting is enough: the loop dead-letters every message on it kept so far. */
static void report_refusal(bw_bus_t *b, const char *subject)
{
    pthread_mutex_lock(&b->refusal_mu);
    bool known = false;
    for (bw_list_t *l = b->refusals.next; l != &b->refusals && !known; l = l->next)
        known = strcmp(bw_list_entry(l, refusal_t, link)->subject, subject) == 0;
    if (!known && !b->refusals_closed && b->nrefusals < REFUSALS_MAX) {
        refusal_t *r = bw_calloc(1, sizeof *r);
        snprintf(r->subject, sizeof r->subject, "%s", subject);
        bw_list_push(&b->refusals, &r->link);
        b->nrefusals++;
        uv_async_send(&b->refusal_async);
    }
    pthread_mutex_unlock(&b->refusal_mu);
}

/* nats.c's callback thread. The server refused a publish or subscribe (account permissions). nats.c
   reports it only here, after the fact and without the message: counted, logged at warn with the
   subject, the loop dead-letters the messages on that subject it still keeps, and a refused publish
   makes the worker not ready for PERMISSION_NOT_READY_MS (a worker that cannot deliver results should
   not count as ready; each new refusal extends it). The text of this very error is the thread's last
   error (nats.c sets it for the callback); the connection's may already be a later one's. */
static void permission_violation(bw_bus_t *b, natsConnection *nc)
{
    const char *why = nats_GetLastError(NULL);
    char subject[256];
    if (why == NULL || strstr(why, "ermission") == NULL)
        natsConnection_GetLastError(nc, &why);
    denied_subject(why, subject, sizeof subject);
    bw_metrics_inc(BW_C_PERMISSION_ERRORS);
    if (subject[0] != '\0') {
        bw_metrics_set(BW_G_PUBLISH_DENIED_UNTIL_MS, (int64_t)(bw_mono_ms() + PERMISSION_NOT_READY_MS));
        report_refusal(b, subject);
    }
    bw_log(BW_LOG_WARN, "nats permission violation: check the account's publish/subscribe permissions",
           BW_LS("subject", subject[0] ? subject : NULL), BW_LS("error", why ? why : "permission denied"));
}

static void on_async_error(natsConnection *nc, natsSubscription *sub, natsStatus err, void *closure)
{
    bw_bus_t *b = closure;
    int64_t dropped = 0;
    if (err == NATS_SLOW_CONSUMER) {
        bw_metrics_inc(BW_C_SLOW_CONSUMER_EVENTS);
        if (sub != NULL)
            natsSubscription_GetDropped(sub, &dropped);
        if (sub == b->assign_sub)
            bw_metrics_set(BW_G_DROPPED, dropped);
        bw_log(BW_LOG_ERROR, "slow consumer: the client dropped messages",
               BW_LS("subject", sub == b->assign_sub ? b->cfg->assign_subject : b->cfg->cancel_subject),
               BW_LI("dropped_total", dropped));
        return;
    }
    if (err == NATS_NOT_PERMITTED) {
        permission_violation(b, nc);
        return;
    }
    bw_log(BW_LOG_ERROR, "nats asynchronous error", BW_LS("error", natsStatus_GetText(err)));
}

static int64_t reconnect_delay(natsConnection *nc, int attempts, void *closure)
{
    /* Exponential backoff from 100 ms to 2 s with ±25% jitter, for ever. */
    int64_t d = 100;
    for (int i = 1; i < attempts && d < 2000; i++)
        d *= 2;
    if (d > 2000)
        d = 2000;
    return d - d / 4 + (int64_t)(rand() % (int)(d / 2 + 1));
}

/* ---- options ---- */

#define TRY(call)                                                                                            \
    do {                                                                                                     \
        if ((s = (call)) != NATS_OK)                                                                         \
            goto out;                                                                                        \
    } while (0)

/* NATS_URL's servers: nats.c 3.4 takes one URL in natsOptions_SetURL (a comma-separated list there is one
   unparsable URL, and nothing ever connects), so the list is split here and given as the server pool. */
static natsStatus set_servers(natsOptions *opts, const char *list)
{
    char *copy = bw_strdup(list), *save = NULL;
    const char *servers[64];
    int n = 0;
    for (char *t = strtok_r(copy, ",", &save); t != NULL && n < 64; t = strtok_r(NULL, ",", &save)) {
        while (*t == ' ' || *t == '\t')
            t++;
        char *e = t + strlen(t);
        while (e > t && (e[-1] == ' ' || e[-1] == '\t'))
            *--e = '\0';
        if (*t != '\0')
            servers[n++] = t;
    }
    natsStatus s = n > 0 ? natsOptions_SetServers(opts, servers, n) : NATS_INVALID_ARG;
    free(copy);
    return s;
}

int bw_bus_apply_options(natsOptions *opts, const bw_config_t *cfg, const char *name)
{
    natsStatus s = NATS_OK;
    TRY(set_servers(opts, cfg->nats_url));
    TRY(natsOptions_SetName(opts, name));
    TRY(natsOptions_SetMaxReconnect(opts, -1));
    TRY(natsOptions_SetReconnectBufSize(opts, (int)cfg->nats_reconnect_buf_bytes));
    TRY(natsOptions_SetCustomReconnectDelay(opts, reconnect_delay, NULL));
    TRY(natsOptions_SetTimeout(opts, 2000));
    TRY(natsOptions_SetPingInterval(opts, 10000));
    if (cfg->nats_creds != NULL)
        TRY(natsOptions_SetUserCredentialsFromFiles(opts, cfg->nats_creds, NULL));
    if (cfg->nats_nkey != NULL)
        TRY(natsOptions_SetNKeyFromSeed(opts, cfg->nats_nkey, cfg->nats_nkey_seed));
    if (cfg->nats_tls_ca != NULL)
        TRY(natsOptions_LoadCATrustedCertificates(opts, cfg->nats_tls_ca));
    if (cfg->nats_tls_cert != NULL)
        TRY(natsOptions_LoadCertificatesChain(opts, cfg->nats_tls_cert, cfg->nats_tls_key));
    if (cfg->nats_tls_ca != NULL || cfg->nats_tls_cert != NULL)
        TRY(natsOptions_SetSecure(opts, true));
out:
    if (s != NATS_OK)
        bw_log(BW_LOG_ERROR, "invalid NATS options", BW_LS("error", nats_GetLastError(NULL)));
    return s == NATS_OK ? 0 : -1;
}

int bw_bus_connect_once(natsConnection **nc, const bw_config_t *cfg, const char *name)
{
    natsOptions *opts = NULL;
    int rc = -1;
    if (natsOptions_Create(&opts) == NATS_OK && bw_bus_apply_options(opts, cfg, name) == 0 &&
        natsOptions_SetMaxReconnect(opts, 0) == NATS_OK && natsConnection_Connect(nc, opts) == NATS_OK)
        rc = 0;
    natsOptions_Destroy(opts);
    return rc;
}

int bw_bus_probe(const bw_config_t *cfg, const char *name, char *why, size_t len)
{
    natsOptions *opts = NULL;
    natsConnection *nc = NULL;
    natsStatus s = NATS_OK;
    why[0] = '\0';
    if (natsOptions_Create(&opts) != NATS_OK || bw_bus_apply_options(opts, cfg, name) < 0 ||
        natsOptions_SetMaxReconnect(opts, 0) != NATS_OK) {
        natsOptions_Destroy(opts);
        return 0;
    }
    s = natsConnection_Connect(&nc, opts);
    /* nats.c's text: "(conn.c:2161): Authorization Violation" or an OpenSSL verification error */
    const char *text = nats_GetLastError(NULL), *p = text ? strstr(text, "): ") : NULL;
    snprintf(why, len, "%s", p ? p + 3 : text ? text : natsStatus_GetText(s));
    /* With TLS 1.3 the client's handshake is over before the server checks the client's certificate: an
       untrusted one shows only as the server hanging up before its PONG */
    if ((s == NATS_PROTOCOL_ERROR || s == NATS_IO_ERROR) && cfg->nats_tls_cert != NULL &&
        strlen(why) + 1 < len)
        snprintf(why + strlen(why), len - strlen(why),
                 " (the server hung up after the TLS handshake: does it "
                 "trust the client certificate of NATS_TLS_CERT?)");
    natsConnection_Destroy(nc);
    natsOptions_Destroy(opts);
    if (s == NATS_OK || s == NATS_NO_SERVER) {
        why[0] = '\0';
        return 0;
    }
    return 1;
}

static int subscribe(bw_bus_t *b)
{
    natsStatus s;
    const bw_config_t *c = b->cfg;
    if (b->js != NULL)
        s = bw_busjs_subscribe(b);
    else if (c->queue_group[0] != '\0')
        s = natsConnection_QueueSubscribeSync(&b->assign_sub, b->nc, c->assign_subject, c->queue_group);
    else
        s = natsConnection_SubscribeSync(&b->assign_sub, b->nc, c->assign_subject);
    if (s == NATS_OK && b->js == NULL)
        s = natsSubscription_SetPendingLimits(b->assign_sub, ASSIGN_PENDING_MSGS, ASSIGN_PENDING_BYTES);
    if (s == NATS_OK)
        s = natsConnection_SubscribeSync(&b->cancel_sub, b->nc, c->cancel_subject);
    /* JetStream mode: every worker knows every approval (the bucket), so one of them takes each decision and
       list request: a queue group named after the bucket */
    if (s == NATS_OK)
        s = b->akv != NULL
                ? natsConnection_QueueSubscribeSync(&b->decision_sub, b->nc, c->approval_decision_subject,
                                                    c->js_approvals_bucket)
                : natsConnection_SubscribeSync(&b->decision_sub, b->nc, c->approval_decision_subject);
    if (s == NATS_OK) {
        char *own = bw_approvals_own_subject(c);
        s = natsConnection_SubscribeSync(&b->own_decision_sub, b->nc, own);
        free(own);
    }
    if (s == NATS_OK)
        s = b->akv != NULL ? natsConnection_QueueSubscribeSync(&b->list_sub, b->nc, c->approval_list_subject,
                                                               c->js_approvals_bucket)
                           : natsConnection_SubscribeSync(&b->list_sub, b->nc, c->approval_list_subject);
    if (s != NATS_OK) {
        const char *why = NULL;
        natsConnection_GetLastError(b->nc, &why); /* e.g. the server's authorization error */
        bw_log(BW_LOG_ERROR, "subscribe failed", BW_LS("error", nats_GetLastError(NULL)),
               BW_LS("connection_error", why));
    }
    return s == NATS_OK ? 0 : -1;
}

static void on_fatal_async(uv_async_t *a)
{
    bw_bus_t *b = a->data;
    if (b->on_fatal != NULL)
        b->on_fatal(b->fatal_ud);
}

void bw_bus_on_fatal(bw_bus_t *b, void (*cb)(void *ud), void *ud)
{
    b->on_fatal = cb;
    b->fatal_ud = ud;
}

bw_bus_t *bw_bus_create(uv_loop_t *loop, const bw_config_t *cfg, bw_worker_t *worker, bw_deadletters_t *dead)
{
    natsOptions *opts = NULL;
    bw_bus_t *b = bw_calloc(1, sizeof *b);
    char name[200];
    b->loop = loop;
    b->cfg = cfg;
    b->worker = worker;
    b->dead = dead;
    pthread_mutex_init(&b->closed_lock, NULL);
    pthread_cond_init(&b->closed_cond, NULL);
    bw_list_init(&b->retries);
    uv_check_init(loop, &b->drain);
    b->drain.data = b;
    uv_idle_init(loop, &b->backlog);
    uv_prepare_init(loop, &b->release);
    b->release.data = b;
    uv_prepare_start(&b->release, on_release);
    uv_unref((uv_handle_t *)&b->release);
    uv_timer_init(loop, &b->retry_timer);
    b->retry_timer.data = b;
    uv_async_init(loop, &b->fatal, on_fatal_async);
    b->fatal.data = b;
    uv_timer_init(loop, &b->confirm_timer);
    b->confirm_timer.data = b;
    uv_unref((uv_handle_t *)&b->confirm_timer);
    uv_timer_init(loop, &b->hold_timer);
    b->hold_timer.data = b;
    uv_unref((uv_handle_t *)&b->hold_timer);
    pthread_mutex_init(&b->refusal_mu, NULL);
    bw_list_init(&b->refusals);
    uv_async_init(loop, &b->refusal_async, bw_busout_on_refusal_async);
    b->refusal_async.data = b;
    uv_unref((uv_handle_t *)&b->refusal_async);
    if (rt_start(b) < 0)
        goto fail;
    if (cfg->js_mode == 1) {
        b->js = bw_busjs_create(b);
        b->akv = bw_akv_create(b);
    }
    snprintf(name, sizeof name, "beamline-worker %s", cfg->worker_id);
    b->io = bw_natsuv_create(loop);
    /* SendAsap: without it nats.c starts its flusher thread even in event-loop mode, which waits 1 ms
       and then asks the loop (across threads) to write; with it a publish asks the loop directly, and
       the adapter writes once per loop iteration. */
    if (natsOptions_Create(&opts) != NATS_OK || bw_bus_apply_options(opts, cfg, name) < 0 ||
        bw_natsuv_set_options(b->io, opts) != NATS_OK || natsOptions_SetSendAsap(opts, true) != NATS_OK)
        goto fail;
    natsOptions_SetRetryOnFailedConnect(opts, true, on_connected, b);
    natsOptions_SetDisconnectedCB(opts, on_disconnected, b);
    natsOptions_SetReconnectedCB(opts, on_reconnected, b);
    natsOptions_SetClosedCB(opts, on_closed, b);
    natsOptions_SetErrorHandler(opts, on_async_error, b);
    natsStatus s = natsConnection_Connect(&b->nc, opts);
    if (s != NATS_OK && s != NATS_NOT_YET_CONNECTED) {
        bw_log(BW_LOG_ERROR, "nats connect failed", BW_LS("error", nats_GetLastError(NULL)));
        goto fail;
    }
    if (s == NATS_NOT_YET_CONNECTED) {
        char *url = bw_redact_url(cfg->nats_url);
        bw_log(BW_LOG_WARN, "nats not reachable yet: retrying with backoff", BW_LS("url", url));
        free(url);
    } else {
        set_connected(b, b->nc, true);
    }
    /* from here on the connected callback may run concurrently: it reads only atomics */
    if (subscribe(b) < 0)
        goto fail;
    uv_check_start(&b->drain, on_drain);
    /* Whichever of this thread and the connected callback sees both flags says ready (once); here the
       round trip runs on bw-nats-rt, since this loop is the one that will read the answer. */
    atomic_store(&b->subscribed, true);
    if (atomic_load(&b->connected))
        bw_bus_roundtrip(b, false, 5000, ready_flushed, NULL);
    natsOptions_Destroy(opts);
    return b;
fail:
    natsOptions_Destroy(opts);
    bw_bus_destroy(b);
    return NULL;
}

/* ---- control ---- */

static void intake_drained(bw_bus_t *b, int rc, void *ud)
{
    /* Drain failed (no connection, or no answer in time): unsubscribe outright so that intake ends;
       what the server had already sent is in the client and still taken. */
    if (rc < 0 && b->assign_sub != NULL && natsSubscription_IsValid(b->assign_sub))
        natsSubscription_Unsubscribe(b->assign_sub);
    b->intake_drained = rc == 0;
}

void bw_bus_drain_intake(bw_bus_t *b)
{
    if (b->assign_sub != NULL && natsSubscription_IsValid(b->assign_sub))
        bw_bus_roundtrip(b, true, 0, intake_drained, NULL);
}

void bw_bus_stop_intake(bw_bus_t *b)
{
    atomic_store(&b->ready, false);
    bw_metrics_set(BW_G_SUBSCRIBED, 0);
    if (b->js != NULL)
        bw_busjs_stop_intake(b); /* drains the pull inbox once its pull request expired */
    else
        bw_bus_drain_intake(b);
}

typedef struct flush_cb {
    void (*cb)(void *ud, int rc);
    void *ud;
} flush_cb_t;

static void flushed(bw_bus_t *b, int rc, void *ud)
{
    flush_cb_t *f = ud;
    f->cb(f->ud, rc);
    free(f);
}

void bw_bus_flush_async(bw_bus_t *b, int64_t timeout_ms, void (*cb)(void *ud, int rc), void *ud)
{
    flush_cb_t *f = bw_calloc(1, sizeof *f);
    f->cb = cb;
    f->ud = ud;
    bw_bus_roundtrip(b, false, timeout_ms, flushed, f);
}

size_t bw_bus_max_payload(void *ud)
{
    bw_bus_t *b = ud;
    int64_t max = atomic_load(&b->max_payload);
    return max > 0 ? (size_t)max : 0;
}

bool bw_bus_intake_closed(bw_bus_t *b)
{
    return b->assign_sub == NULL || !natsSubscription_IsValid(b->assign_sub);
}

static size_t sub_pending(natsSubscription *sub)
{
    int n = 0;
    if (sub == NULL || natsSubscription_GetPending(sub, &n, NULL) != NATS_OK)
        return 0;
    return n > 0 ? (size_t)n : 0;
}

size_t bw_bus_pending_inbound(bw_bus_t *b)
{
    return sub_pending(b->assign_sub) + sub_pending(b->js_reply_sub) + sub_pending(b->cancel_sub) +
           sub_pending(b->decision_sub) + sub_pending(b->own_decision_sub) + sub_pending(b->list_sub) +
           b->decoding;
}

bool bw_bus_connected(bw_bus_t *b)
{
    return atomic_load(&b->connected);
}

bool bw_bus_wedged(bw_bus_t *b)
{
    return atomic_load(&b->wedged);
}

bool bw_bus_ready(bw_bus_t *b)
{
    return atomic_load(&b->ready) && atomic_load(&b->connected);
}

static void on_bus_closed(uv_handle_t *h)
{
    bw_bus_t *b = h->data;
    pthread_mutex_destroy(&b->closed_lock);
    pthread_cond_destroy(&b->closed_cond);
    pthread_mutex_destroy(&b->rt_mu);
    pthread_cond_destroy(&b->rt_cond);
    pthread_mutex_destroy(&b->refusal_mu);
    free(b->sent);
    free(b);
}

/* nats.c reports the close on its callback thread; the bus must outlive that callback. */
static void wait_closed(bw_bus_t *b)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 3;
    pthread_mutex_lock(&b->closed_lock);
    while (!b->closed)
        if (pthread_cond_timedwait(&b->closed_cond, &b->closed_lock, &until) != 0)
            break;
    pthread_mutex_unlock(&b->closed_lock);
}

/* Runs the loop until every thread-pool job and round trip of the bus is back (the loop is not running
   otherwise). */
static void settle(bw_bus_t *b)
{
    while (b->decoding > 0 || b->roundtrips > 0)
        uv_run(b->loop, UV_RUN_ONCE);
}

void bw_bus_destroy(bw_bus_t *b)
{
    if (b == NULL)
        return;
    /* Loop thread, with the loop stopped (or never started). Order matters: what the client already
       received is taken, pending retries get one last attempt (else the DLQ), a round trip makes sure
       the server has every result and ack (the loop runs meanwhile: it does the socket I/O), the
       connection goes, and what the server never confirmed becomes a dead letter. */
    atomic_store(&b->closing, true);
    uv_check_stop(&b->drain);
    uv_idle_stop(&b->backlog);
    uv_timer_stop(&b->confirm_timer);
    settle(b);
    if (b->js != NULL && b->nc != NULL && atomic_load(&b->connected))
        bw_busjs_wait_pull(b); /* what the server may still send to its pull request goes back */
    drain_sub(b, b->assign_sub, b->js ? bw_busjs_take_pull : take_assign,
              SIZE_MAX); /* JetStream: given back */
    drain_sub(b, b->cancel_sub, take_cancel, SIZE_MAX);
    settle(b);
    bw_busout_flush_retries(b);
    if (b->js != NULL && b->nc != NULL && atomic_load(&b->connected)) {
        /* results waiting for their PubAck or store write; then what is still held goes back */
        bw_busjs_finish_replies(b, FINAL_CONFIRM_TIMEOUT_MS);
        bw_busjs_give_back_all(b, "worker shutting down");
    }
    release_all(b);
    const char *why = "not confirmed by the NATS server before shutdown (disconnected)";
    if (b->nc != NULL) {
        if (atomic_load(&b->connected)) {
            bw_busout_start_confirm(b, FINAL_CONFIRM_TIMEOUT_MS);
            settle(b);
            if (b->js != NULL) { /* the acks that confirmation released: out before the close */
                bw_bus_roundtrip(b, false, FINAL_CONFIRM_TIMEOUT_MS, NULL, NULL);
                settle(b);
            }
            why = "not confirmed by the NATS server before shutdown (no PONG in time)";
        }
        natsConnection_Close(b->nc);
        wait_closed(b);
    }
    rt_stop(b); /* after the close: no round trip can still be waiting for a PONG */
    /* after the close too: stopping the bucket's watcher on an open connection would ask the server (a
       request the loop, which reads the answers, cannot serve now) */
    bw_akv_destroy(b);
    /* nats.c's closed callback ran after every callback posted before it: every refusal is known */
    pthread_mutex_lock(&b->refusal_mu);
    b->refusals_closed = true;
    pthread_mutex_unlock(&b->refusal_mu);
    bw_busout_take_refusals(b);
    bw_busout_dead_letter_unconfirmed(b, why);
    natsSubscription_Destroy(b->assign_sub);
    natsSubscription_Destroy(b->js_reply_sub);
    bw_busjs_destroy(b);
    natsSubscription_Destroy(b->cancel_sub);
    natsSubscription_Destroy(b->decision_sub);
    natsSubscription_Destroy(b->own_decision_sub);
    natsSubscription_Destroy(b->list_sub);
    natsConnection_Destroy(b->nc);
    b->nc = NULL;
    bw_natsuv_destroy(b->io);
    release_all(b); /* what the last round trip's loop turns published */
    uv_close((uv_handle_t *)&b->release, NULL);
    uv_close((uv_handle_t *)&b->drain, NULL);
    uv_close((uv_handle_t *)&b->backlog, NULL);
    uv_close((uv_handle_t *)&b->fatal, NULL);
    uv_close((uv_handle_t *)&b->confirm_timer, NULL);
    uv_close((uv_handle_t *)&b->hold_timer, NULL);
    uv_close((uv_handle_t *)&b->refusal_async, NULL);
    uv_close((uv_handle_t *)&b->rt_async, NULL);
    uv_close((uv_handle_t *)&b->retry_timer, on_bus_closed);
}
