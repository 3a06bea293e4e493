/*
 * Threads: nats.c runs its own reader/flusher threads and one delivery thread per subscription. The
 * delivery callbacks decode (JSON parsing stays off the loop) and push bw_inbound_t items through the
 * hand-off; everything else in this file runs on the loop thread, except the connection event
 * callbacks, which only touch atomics and log.
 */
#include "net/bus.h"

#include <nats/nats.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "obs/log.h"
#include "obs/metrics.h"
#include "util/clock.h"
#include "util/handoff.h"
#include "util/xalloc.h"

#define ASSIGN_PENDING_MSGS 500000
#define ASSIGN_PENDING_BYTES (1024 * 1024 * 1024)
#define DECODE_ON_LOOP_MAX (16 * 1024)
#define RETRY_BASE_MS 100
#define RETRY_MAX_MS 10000

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

struct bw_bus {
    uv_loop_t *loop;
    const bw_config_t *cfg;
    bw_worker_t *worker;
    bw_deadletters_t *dead;
    natsConnection *nc;
    natsSubscription *assign_sub, *cancel_sub;
    bw_handoff_t *handoff;
    bw_list_t retries;
    uv_timer_t retry_timer;
    uv_async_t fatal; /* the connection closed outside shutdown */
    void (*on_fatal)(void *ud);
    void *fatal_ud;
    atomic_bool connected, ready, closing, subscribed;
    pthread_mutex_t closed_lock;
    pthread_cond_t closed_cond;
    bool closed; /* guarded by closed_lock: nats.c's closed callback ran, no callback follows */
    atomic_int_fast64_t max_payload; /* the server's, cached at (re)connect: read once per result */
};

/* ---- inbound (nats.c delivery threads) ---- */

static const char *msg_header(void *ud, const char *name)
{
    const char *v = NULL;
    return natsMsgHeader_Get(ud, name, &v) == NATS_OK ? v : NULL;
}

static json_t *headers_json(natsMsg *msg)
{
    const char **keys = NULL;
    int n = 0;
    json_t *o = json_object();
    if (natsMsgHeader_Keys(msg, &keys, &n) == NATS_OK) {
        for (int i = 0; i < n; i++) {
            const char *v = msg_header(msg, keys[i]);
            json_t *js = v ? json_string(v) : NULL;
            if (js != NULL)
                json_object_set_new(o, keys[i], js);
        }
        free((void *)keys);
    }
    return o;
}

/* Decodes msg into in and releases msg (any thread). */
static void decode_msg(bw_bus_t *b, bw_inbound_t *in, natsMsg *msg)
{
    bw_headers_t h = {msg_header, msg};
    bw_inbound_decode(in, natsMsg_GetSubject(msg), natsMsg_GetData(msg), (size_t)natsMsg_GetDataLength(msg), &h,
                      b->cfg->default_job_timeout_ms);
    if (in->st == BW_DECODE_DEAD)
        in->headers = headers_json(msg);
    natsMsg_Destroy(msg);
}

/* Small assignments are decoded on the loop, so that every allocation of a job is made and freed on
   one thread (glibc frees across threads slowly); large ones are decoded here, off the loop. */
static void on_assign(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    bw_bus_t *b = closure;
    bw_inbound_t *in = bw_calloc(1, sizeof *in);
    in->kind = BW_IN_ASSIGN;
    in->received_ns = bw_mono_ns();
    if (natsMsg_GetDataLength(msg) <= DECODE_ON_LOOP_MAX)
        in->undecoded = msg;
    else
        decode_msg(b, in, msg);
    bw_handoff_push(b->handoff, &in->link);
}

static void on_cancel(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    bw_bus_t *b = closure;
    bw_inbound_t *in = bw_inbound_cancel(natsMsg_GetData(msg), (size_t)natsMsg_GetDataLength(msg));
    natsMsg_Destroy(msg);
    if (in != NULL)
        bw_handoff_push(b->handoff, &in->link);
}

static void on_handoff(void *ud, bw_list_t *item)
{
    bw_bus_t *b = ud;
    bw_inbound_t *in = bw_list_entry(item, bw_inbound_t, link);
    if (in->undecoded != NULL) {
        decode_msg(b, in, in->undecoded);
        in->undecoded = NULL;
    }
    bw_worker_accept(b->worker, in);
}

/* ---- connection events (nats.c callback thread) ---- */

static void mark_ready(bw_bus_t *b, natsConnection *nc)
{
    /* A round trip makes sure the server has registered our subscriptions before we say ready. */
    if (natsConnection_FlushTimeout(nc, 5000) != NATS_OK)
        return;
    bw_metrics_set(BW_G_SUBSCRIBED, 1);
    if (!atomic_exchange(&b->ready, true))
        bw_log(BW_LOG_INFO, "worker ready", BW_LS("assign_subject", b->cfg->assign_subject),
               BW_LS("queue_group", b->cfg->queue_group));
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
    if (atomic_load(&b->subscribed))
        mark_ready(b, nc);
}

static void on_disconnected(natsConnection *nc, void *closure)
{
    bw_bus_t *b = closure;
    set_connected(b, nc, false);
    if (atomic_load(&b->closing))
        return;
    bw_metrics_inc(BW_C_NATS_DISCONNECTS);
    bw_log(BW_LOG_WARN, "nats disconnected: reconnecting with backoff");
}

static void on_reconnected(natsConnection *nc, void *closure)
{
    bw_bus_t *b = closure;
    bw_metrics_inc(BW_C_NATS_RECONNECTS);
    /* nats.c calls this before the re-sent subscriptions are flushed: a round trip first, so that
       "reconnected" (and readiness) means the server routes assignments to us again. */
    natsConnection_FlushTimeout(nc, 5000);
    set_connected(b, nc, true);
    bw_log(BW_LOG_INFO, "nats reconnected");
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
        /* The server refused a publish or subscribe (account permissions). nats.c reports it only here,
           after the fact and without the message, so it is counted and logged loudly. */
        const char *why = NULL;
        natsConnection_GetLastError(nc, &why);
        bw_metrics_inc(BW_C_PERMISSION_ERRORS);
        bw_log(BW_LOG_ERROR, "nats permission violation: check the account's publish/subscribe permissions",
               BW_LS("error", why ? why : natsStatus_GetText(err)));
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

#define TRY(call)                     \
    do {                              \
        if ((s = (call)) != NATS_OK)  \
            goto out;                 \
    } while (0)

int bw_bus_apply_options(natsOptions *opts, const bw_config_t *cfg, const char *name)
{
    natsStatus s = NATS_OK;
    TRY(natsOptions_SetURL(opts, cfg->nats_url));
    TRY(natsOptions_SetName(opts, name));
    TRY(natsOptions_SetMaxReconnect(opts, -1));
    TRY(natsOptions_SetReconnectBufSize(opts, (int)cfg->nats_reconnect_buf_bytes));
    TRY(natsOptions_SetCustomReconnectDelay(opts, reconnect_delay, NULL));
    TRY(natsOptions_SetTimeout(opts, 2000));
    TRY(natsOptions_SetSendAsap(opts, cfg->nats_send_asap));
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

static int subscribe(bw_bus_t *b)
{
    natsStatus s;
    const bw_config_t *c = b->cfg;
    if (c->queue_group[0] != '\0')
        s = natsConnection_QueueSubscribe(&b->assign_sub, b->nc, c->assign_subject, c->queue_group,
                                          on_assign, b);
    else
        s = natsConnection_Subscribe(&b->assign_sub, b->nc, c->assign_subject, on_assign, b);
    if (s == NATS_OK)
        s = natsSubscription_SetPendingLimits(b->assign_sub, ASSIGN_PENDING_MSGS, ASSIGN_PENDING_BYTES);
    if (s == NATS_OK)
        s = natsConnection_Subscribe(&b->cancel_sub, b->nc, c->cancel_subject, on_cancel, b);
    if (s != NATS_OK) {
        const char *why = NULL;
        natsConnection_GetLastError(b->nc, &why); /* e.g. the server's authorization error */
        bw_log(BW_LOG_ERROR, "subscribe failed", BW_LS("error", nats_GetLastError(NULL)),
               BW_LS("connection_error", why));
    }
    return s == NATS_OK ? 0 : -1;
}

static void on_retry_timer(uv_timer_t *t);

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

bw_bus_t *bw_bus_create(uv_loop_t *loop, const bw_config_t *cfg, bw_worker_t *worker,
                        bw_deadletters_t *dead)
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
    b->handoff = bw_handoff_create(loop, on_handoff, b);
    uv_timer_init(loop, &b->retry_timer);
    b->retry_timer.data = b;
    uv_async_init(loop, &b->fatal, on_fatal_async);
    b->fatal.data = b;
    snprintf(name, sizeof name, "beamline-worker %s", cfg->worker_id);
    if (natsOptions_Create(&opts) != NATS_OK || bw_bus_apply_options(opts, cfg, name) < 0)
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
    /* Whichever of this thread and the connected callback sees both flags says ready (once). */
    atomic_store(&b->subscribed, true);
    if (atomic_load(&b->connected))
        mark_ready(b, b->nc);
    natsOptions_Destroy(opts);
    return b;
fail:
    natsOptions_Destroy(opts);
    bw_bus_destroy(b);
    return NULL;
}

/* ---- publishing (loop thread) ---- */

static natsStatus publish_raw(bw_bus_t *b, const char *subject, const char *data, size_t len,
                              const char *const *hk, const char *const *hv)
{
    natsMsg *msg = NULL;
    natsStatus s = natsMsg_Create(&msg, subject, NULL, data, (int)len);
    for (int i = 0; s == NATS_OK && i < BW_OUTMSG_MAX_HEADERS && hk[i] != NULL; i++)
        if (hv[i] != NULL)
            s = natsMsgHeader_Set(msg, hk[i], hv[i]);
    if (s == NATS_OK)
        s = natsConnection_PublishMsg(b->nc, msg);
    natsMsg_Destroy(msg);
    return s;
}

static uint64_t backoff_ms(int attempts)
{
    uint64_t d = RETRY_BASE_MS;
    for (int i = 1; i < attempts && d < RETRY_MAX_MS; i++)
        d *= 2;
    d = d > RETRY_MAX_MS ? RETRY_MAX_MS : d;
    return d / 2 + (uint64_t)rand() % (d / 2 + 1);
}

static void schedule_retry_timer(bw_bus_t *b)
{
    uint64_t now = uv_now(b->loop), next = UINT64_MAX;
    for (bw_list_t *l = b->retries.next; l != &b->retries; l = l->next) {
        retry_t *r = bw_list_entry(l, retry_t, link);
        if (r->due_ms < next)
            next = r->due_ms;
    }
    if (next != UINT64_MAX)
        uv_timer_start(&b->retry_timer, on_retry_timer, next > now ? next - now : 0, 0);
}

static void retry_free(retry_t *r)
{
    free(r->subject);
    free(r->data);
    for (int i = 0; i < BW_OUTMSG_MAX_HEADERS; i++) {
        free(r->hkeys[i]);
        free(r->hvals[i]);
    }
    free(r);
}

/* The result could not be delivered: it becomes a PUBLISH_ERROR dead letter (file + DLQ subject). */
static void give_up(bw_bus_t *b, retry_t *r, natsStatus s)
{
    bw_outmsg_t m = {.kind = r->kind, .subject = r->subject, .data = r->data, .len = r->len};
    bw_metrics_inc(BW_C_PUBLISH_FAILURES);
    for (int i = 0; i < BW_OUTMSG_MAX_HEADERS; i++) {
        m.hkeys[i] = r->hkeys[i];
        m.hvals[i] = r->hvals[i];
    }
    bw_log(BW_LOG_ERROR, "result publish failed after retries", BW_LS("subject", r->subject),
           BW_LS("error", natsStatus_GetText(s)), BW_LI("attempts", r->attempts));
    if (b->dead != NULL)
        bw_deadletters_undelivered(b->dead, &m, natsStatus_GetText(s));
}

static void on_retry_timer(uv_timer_t *t)
{
    bw_bus_t *b = t->data;
    uint64_t now = uv_now(b->loop);
    bw_list_t *l = b->retries.next;
    while (l != &b->retries) {
        retry_t *r = bw_list_entry(l, retry_t, link);
        l = l->next;
        if (r->due_ms > now)
            continue;
        bw_metrics_inc(BW_C_PUBLISH_RETRIES);
        natsStatus s = publish_raw(b, r->subject, r->data, r->len, (const char *const *)r->hkeys,
                                   (const char *const *)r->hvals);
        if (s != NATS_OK && ++r->attempts <= b->cfg->result_publish_max_retries) {
            r->due_ms = now + backoff_ms(r->attempts);
            continue;
        }
        if (s != NATS_OK)
            give_up(b, r, s);
        bw_list_remove(&r->link);
        retry_free(r);
    }
    schedule_retry_timer(b);
}

static void enqueue_retry(bw_bus_t *b, const bw_outmsg_t *m, natsStatus s)
{
    retry_t *r = bw_calloc(1, sizeof *r);
    r->kind = m->kind;
    r->subject = bw_strdup(m->subject);
    r->data = bw_strndup(m->data, m->len);
    r->len = m->len;
    for (int i = 0; i < BW_OUTMSG_MAX_HEADERS && m->hkeys[i] != NULL; i++) {
        r->hkeys[i] = bw_strdup(m->hkeys[i]);
        r->hvals[i] = m->hvals[i] ? bw_strdup(m->hvals[i]) : NULL;
    }
    r->attempts = 1;
    if (b->cfg->result_publish_max_retries == 0) {
        give_up(b, r, s);
        retry_free(r);
        return;
    }
    r->due_ms = uv_now(b->loop) + backoff_ms(1);
    bw_list_push(&b->retries, &r->link);
    bw_log(BW_LOG_WARN, "publish failed: will retry", BW_LS("subject", m->subject),
           BW_LS("error", natsStatus_GetText(s)));
    schedule_retry_timer(b);
}

void bw_bus_publish(void *ud, const bw_outmsg_t *m)
{
    bw_bus_t *b = ud;
    natsStatus s = publish_raw(b, m->subject, m->data, m->len, m->hkeys, m->hvals);
    if (s == NATS_OK)
        return;
    /* Only results are retried: a dead letter is already in the DLQ file. */
    if (m->kind == BW_OUT_RESULT)
        enqueue_retry(b, m, s);
    else
        bw_log(BW_LOG_DEBUG, "publish dropped", BW_LS("subject", m->subject),
               BW_LS("error", natsStatus_GetText(s)));
}

/* ---- control ---- */

void bw_bus_stop_intake(bw_bus_t *b)
{
    atomic_store(&b->ready, false);
    bw_metrics_set(BW_G_SUBSCRIBED, 0);
    if (b->assign_sub != NULL)
        natsSubscription_Drain(b->assign_sub);
}

int bw_bus_flush(bw_bus_t *b, int64_t timeout_ms)
{
    return natsConnection_FlushTimeout(b->nc, timeout_ms) == NATS_OK ? 0 : -1;
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

size_t bw_bus_pending_inbound(bw_bus_t *b)
{
    return b->handoff != NULL ? bw_handoff_pending(b->handoff) : 0;
}

bool bw_bus_connected(bw_bus_t *b)
{
    return atomic_load(&b->connected);
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
    free(b);
}

/* Returns once no delivery callback of sub can be running any more. */
static void quiesce(natsSubscription *sub)
{
    if (sub == NULL || !natsSubscription_IsValid(sub))
        return;
    if (natsSubscription_Drain(sub) != NATS_OK ||
        natsSubscription_WaitForDrainCompletion(sub, 2000) != NATS_OK)
        natsSubscription_Unsubscribe(sub);
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

void bw_bus_destroy(bw_bus_t *b)
{
    if (b == NULL)
        return;
    /* Order matters: no delivery callback may run any more (quiesce), then what was handed over is
       processed while the connection can still carry its results, then pending retries get one last
       attempt (else the DLQ), and only then the connection goes. */
    atomic_store(&b->closing, true);
    quiesce(b->assign_sub);
    quiesce(b->cancel_sub);
    bw_handoff_destroy(b->handoff);
    b->handoff = NULL;
    bw_list_t *l;
    while ((l = bw_list_shift(&b->retries)) != NULL) {
        retry_t *r = bw_list_entry(l, retry_t, link);
        natsStatus s = b->nc ? publish_raw(b, r->subject, r->data, r->len, (const char *const *)r->hkeys,
                                           (const char *const *)r->hvals)
                             : NATS_CONNECTION_CLOSED;
        if (s != NATS_OK)
            give_up(b, r, s);
        retry_free(r);
    }
    if (b->nc != NULL) {
        if (atomic_load(&b->connected))
            natsConnection_FlushTimeout(b->nc, 2000);
        natsConnection_Close(b->nc);
        wait_closed(b);
    }
    natsSubscription_Destroy(b->assign_sub);
    natsSubscription_Destroy(b->cancel_sub);
    natsConnection_Destroy(b->nc);
    b->nc = NULL;
    uv_close((uv_handle_t *)&b->fatal, NULL);
    uv_close((uv_handle_t *)&b->retry_timer, on_bus_closed);
}
