/*
 * JetStream delivery (CAF_CONSUMER=jetstream): a durable pull consumer on the bus's own connection, on the
 * loop thread. Nothing here waits for the server on the loop: a pull request, an ack, a result store read
 * or write is a publish (with a reply subject in our inbox where an answer is due), and the answers come
 * back through two synchronous subscriptions the bus drains after every poll, like the core-mode ones.
 * Only the set-up (stream, consumer, results bucket, whether a stream captures results) uses nats.c's
 * blocking JetStream API, on the bus's round-trip thread bw-nats-rt.
 *
 * A delivery's life: it arrives on <inbox>.p.<pull> with its ack subject ($JS.ACK....: the delivery count
 * and the consumer's pending count are tokens of it) and is decoded. Not JSON or no assignment id:
 * dead-lettered by the worker and terminated (+TERM), never redelivered. Otherwise it joins the chain of
 * deliveries of its job (tenant and assignment id: duplicates of one job share one result), and unless
 * the worker already has the job or its result, the shared result store (a KV bucket) is read first: a
 * stored result is published again byte for byte and the job does not run. When the job's result is
 * published, the chain is settled: acked (+ACK) once the result is out (the results stream's PubAck, or
 * the flush round trip that confirms core publishes) and stored in the bucket; NAKed with
 * CAF_JS_NAK_DELAY_MS when the result could not get out. Every delivery held gets an in-progress ack
 * (+WPI) every third of the consumer's ack wait, so long jobs and queued ones are not redelivered.
 *
 * Backpressure: deliveries held by running or queued jobs, store reads and decodes in flight, and
 * messages asked for in open pull requests together never exceed WORKER_MAX_CONCURRENCY: a busy worker
 * leaves the work in the stream for the others. Draining stops pulling; what arrives afterwards and
 * what is unfinished at the shutdown timeout is NAKed without delay for another worker.
 */
#include "net/bus_int.h"
#include "net/jsproto.h"

#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "obs/log.h"
#include "obs/metrics.h"
#include "store/dedup.h"
#include "util/base64.h"
#include "util/clock.h"
#include "util/hmap.h"
#include "util/xalloc.h"

/* A pull request waits this long on the server for messages. Short: a request cannot be withdrawn, and
   until it expires the server may hand it messages this worker gives back while it stops. */
#define PULL_EXPIRES_MS 2000
#define PULL_LOST_MS 1500 /* no end of it this long after it expired: lost (e.g. a leader change) */
#define GIVE_BACK_MARGIN_MS 100
#define PULL_PAUSE_MIN_MS 250
#define PULL_PAUSE_MAX_MS 5000
#define REPLY_TIMEOUT_MS 5000 /* PubAcks and store reads */
#define SWEEP_MS 250
#define SETUP_RETRY_MIN_MS 500
#define SETUP_RETRY_MAX_MS 5000
#define SETUP_FATAL (-2)
#define MAX_ACK_PENDING 100000 /* of a consumer the worker creates */

typedef struct delivery {
    bw_list_t held;        /* js->held until acked, NAKed or terminated (in-progress acks) */
    struct delivery *next; /* the next delivery of the same job */
    uint64_t count;        /* the server's delivery count */
    char ack[];            /* the ack subject */
} delivery_t;

/* A job's result on its way out: its deliveries are acked once every confirmation owed is in. */
typedef struct settle {
    bw_list_t all;  /* js->settles */
    bw_list_t link; /* js->flushing (core publish path), in sequence order */
    delivery_t *chain;
    int waiting;    /* confirmations owed: the result's, the store write's */
    bool failed;    /* the result did not get out: NAK */
    uint64_t seq;   /* core path: the result's number in the bus's confirmation FIFO */
    uint64_t epoch; /* ... and the connection it went out on (b->epoch) */
    bool flushing;  /* in js->flushing */
} settle_t;

typedef enum { R_RESULT, R_STORE_PUT, R_STORE_GET, R_STREAMS, R_CALL } reply_kind_t;

typedef struct reply {
    bw_list_t link; /* js->replies, oldest first */
    uint64_t id;
    reply_kind_t kind;
    uint64_t deadline;                  /* loop time */
    settle_t *settle;                   /* R_RESULT, R_STORE_PUT (may be NULL) */
    bw_inbound_t *in;                   /* R_STORE_GET */
    void (*fn)(void *ud, natsMsg *msg); /* R_CALL (bw_busjs_request) */
    void *ud;
} reply_t;

/* The open pull request. One at a time: delivered messages carry the stream's subject, not the
   request's, so only a single open request lets the worker know exactly how many are still due. */
typedef struct pull {
    uint64_t id; /* 0: none open */
    int64_t remaining;
    uint64_t expires_ms; /* loop time at which the server ends it */
} pull_t;

typedef struct bw_busjs {
    bw_bus_t *b;
    char inbox[64];
    char *next_subject; /* $JS.API.CONSUMER.MSG.NEXT.<stream>.<durable> */
    char *kv_prefix;    /* $KV.<bucket>. */
    char *get_subject;  /* $JS.API.DIRECT.GET.KV_<bucket> or $JS.API.STREAM.MSG.GET.KV_<bucket> */
    /* set up on bw-nats-rt, read on the loop after the completion */
    bool direct_get, results_js;
    int64_t ack_wait_ms; /* the consumer's */
    char setup_error[512];
    bool ready, setting_up, draining, gave_back;
    bool rechecking; /* a question whether a stream still captures results is out */
    int setup_delay_ms;
    bw_hmap_t *jobs; /* job key -> chain of deliveries not yet settled */
    bw_list_t held;
    size_t nheld;
    bw_hmap_t *replies_by_id; /* 8-byte id -> reply */
    bw_list_t replies;
    uint64_t next_id;
    bw_list_t flushing;
    bw_list_t settles; /* every settle not yet done */
    pull_t pull;
    int64_t pause_ms; /* pulling paused after refusals (pull_refused) */
    uint64_t paused_until;
    size_t lookups; /* store reads in flight */
    uv_timer_t wpi, sweep, setup_timer;
    uint64_t delivered, redelivered, acks, naks, terms, store_hits;
    int64_t pending; /* the consumer's, from the last ack subject */
} bw_busjs_t;

/* ---- small things ---- */

/* The bucket subject of tenant's assignment id, $KV.<bucket>.<key>, into out (STORE_SUBJECT_MAX bytes): key
   base64url(tenant) "." base64url(id), no padding (KV keys allow [-/_=.a-zA-Z0-9]; ids and tenants may hold
   anything, up to BW_MAX_TENANT_BYTES and BW_MAX_ID_BYTES). */
#define STORE_SUBJECT_MAX (96 + (BW_MAX_TENANT_BYTES + 2) / 3 * 4 + (BW_MAX_ID_BYTES + 2) / 3 * 4)
static const char *store_subject(const bw_busjs_t *js, const char *tenant, const char *id, char *out)
{
    size_t tl = strnlen(tenant, BW_MAX_TENANT_BYTES), il = strnlen(id, BW_MAX_ID_BYTES);
    size_t pl = strlen(js->kv_prefix);
    memcpy(out, js->kv_prefix, pl);
    size_t o = pl + bw_js_b64url(out + pl, tenant, tl);
    out[o++] = '.';
    bw_js_b64url(out + o, id, il);
    return out;
}

static void js_send(bw_busjs_t *js, const char *subject, const char *data)
{
    natsConnection_PublishString(js->b->nc, subject, data);
}

static void delivery_free(bw_busjs_t *js, delivery_t *d)
{
    bw_list_remove(&d->held);
    js->nheld--;
    free(d);
}

static void update_gauges(bw_busjs_t *js)
{
    bw_metrics_set(BW_G_JS_ACK_PENDING, (int64_t)js->nheld);
    bw_metrics_set(BW_G_JS_PULL_OUTSTANDING, js->pull.remaining);
}

/* Acks (+ACK), NAKs (-NAK, with a delay) or terminates (+TERM) every delivery of chain, and frees it. */
typedef enum { SETTLE_ACK, SETTLE_NAK, SETTLE_GIVE_BACK, SETTLE_TERM } settle_how_t;

static int64_t give_back_delay_ms(const bw_busjs_t *js);
static void start_setup(bw_busjs_t *js);

/* SETTLE_NAK: a worker-side failure, tried again after CAF_JS_NAK_DELAY_MS. SETTLE_GIVE_BACK (drain,
   shutdown): for another worker as soon as this one's pull request is over, which would otherwise take
   the message again (see give_back_delay_ms). */
static void settle_chain(bw_busjs_t *js, delivery_t *chain, settle_how_t how)
{
    char nak[64];
    int64_t delay = how == SETTLE_NAK         ? js->b->cfg->js_nak_delay_ms
                    : how == SETTLE_GIVE_BACK ? give_back_delay_ms(js)
                                              : 0;
    if (delay > 0)
        snprintf(nak, sizeof nak, "-NAK {\"delay\":%" PRId64 "}", delay * 1000000);
    else
        snprintf(nak, sizeof nak, "-NAK");
    while (chain != NULL) {
        delivery_t *next = chain->next;
        switch (how) {
        case SETTLE_ACK:
            js_send(js, chain->ack, "+ACK");
            js->acks++;
            bw_metrics_inc(BW_C_JS_ACKS);
            break;
        case SETTLE_NAK:
        case SETTLE_GIVE_BACK:
            js_send(js, chain->ack, nak);
            js->naks++;
            bw_metrics_inc(BW_C_JS_NAKS);
            break;
        case SETTLE_TERM:
            js_send(js, chain->ack, "+TERM");
            js->terms++;
            bw_metrics_inc(BW_C_JS_TERMS);
            break;
        }
        delivery_free(js, chain);
        chain = next;
    }
    update_gauges(js);
}

static delivery_t *take_chain(bw_busjs_t *js, const char *tenant, const char *id)
{
    char key[BW_JOB_KEY_MAX];
    size_t kl = bw_job_key(key, tenant, id);
    return kl > 0 ? bw_hmap_del(js->jobs, key, kl) : NULL;
}

/* ---- replies (PubAcks, store reads) ---- */

static reply_t *reply_new(bw_busjs_t *js, reply_kind_t kind, char *subject, size_t len)
{
    reply_t *r = bw_calloc(1, sizeof *r);
    r->id = ++js->next_id;
    r->kind = kind;
    r->deadline = uv_now(js->b->loop) + REPLY_TIMEOUT_MS;
    snprintf(subject, len, "%s.r.%" PRIu64, js->inbox, r->id);
    return r;
}

static void reply_track(bw_busjs_t *js, reply_t *r)
{
    bw_hmap_put(js->replies_by_id, (const char *)&r->id, sizeof r->id, r);
    bw_list_push(&js->replies, &r->link);
}

static void reply_forget(bw_busjs_t *js, reply_t *r)
{
    bw_hmap_del(js->replies_by_id, (const char *)&r->id, sizeof r->id);
    bw_list_remove(&r->link);
}

static void settle_free(bw_busjs_t *js, settle_t *st)
{
    if (st->flushing)
        bw_list_remove(&st->link);
    bw_list_remove(&st->all);
    free(st);
}

/* One confirmation owed to st is in (ok: the result or the store write got out). */
static void settle_step(bw_busjs_t *js, settle_t *st, bool result, bool ok)
{
    if (result && !ok)
        st->failed = true;
    if (--st->waiting > 0)
        return;
    if (st->failed)
        bw_log(BW_LOG_WARN, "result not confirmed by the server: assignment given back for redelivery");
    settle_chain(js, st->chain, st->failed ? SETTLE_NAK : SETTLE_ACK);
    settle_free(js, st);
}

static void run_job(bw_busjs_t *js, bw_inbound_t *in)
{
    js->lookups--;
    bw_worker_accept(js->b->worker, in);
}

/* A stored result is trusted as that job's only when it names the same assignment and tenant. */
static bool stored_result_matches(const char *data, size_t len, const bw_assignment_t *a)
{
    json_t *o = json_loadb(data, len, 0, NULL), *d = o;
    if (json_is_object(json_object_get(o, "data")) && json_object_get(o, "assignment_id") == NULL)
        d = json_object_get(o, "data"); /* envelope form */
    const char *id = json_string_value(json_object_get(d, "assignment_id"));
    const char *t = json_string_value(json_object_get(d, "tenant_id"));
    bool ok = id != NULL && t != NULL && strcmp(id, a->assignment_id) == 0 && strcmp(t, a->tenant_id) == 0;
    json_decref(o);
    return ok;
}

/* The store's answer for in's job: data (len) is the stored result, or NULL when there is none. */
static void store_answer(bw_busjs_t *js, bw_inbound_t *in, const char *data, size_t len, const char *trace)
{
    if (data == NULL || len == 0 || !stored_result_matches(data, len, &in->a)) {
        if (data != NULL && len > 0) {
            bw_metrics_inc(BW_C_JS_STORE_ERRORS);
            bw_log(BW_LOG_WARN, "stored result does not belong to the assignment: ignored",
                   BW_LS("assignment_id", in->a.assignment_id), BW_LS("tenant_id", in->a.tenant_id));
        }
        run_job(js, in);
        return;
    }
    js->lookups--;
    js->store_hits++;
    bw_metrics_inc(BW_C_JS_STORE_HITS);
    bw_log(BW_LOG_INFO, "assignment already finished: stored result republished",
           BW_LS("assignment_id", in->a.assignment_id), BW_LS("tenant_id", in->a.tenant_id),
           BW_LI("delivery", (long long)in->deliveries));
    char msgid[BW_MAX_ID_BYTES + 16];
    snprintf(msgid, sizeof msgid, "result-%s", in->a.assignment_id);
    bw_outmsg_t m = {.kind = BW_OUT_RESULT,
                     .subject = js->b->cfg->result_subject,
                     .data = data,
                     .len = len,
                     .hkeys = {"tenant_id", "version", "Nats-Msg-Id", trace ? "trace_id" : NULL},
                     .hvals = {in->a.tenant_id, "1", msgid, trace},
                     .tenant = in->a.tenant_id,
                     .assignment_id = in->a.assignment_id,
                     .replay = true};
    bw_worker_remember(js->b->worker, in->a.tenant_id, in->a.assignment_id, trace, data, len);
    bw_busjs_publish_result(js->b, &m);
    bw_metrics_inc(BW_C_DUPLICATES);
    bw_inbound_destroy(in);
}

static const char *status_of(natsMsg *msg)
{
    const char *v = NULL;
    return natsMsgHeader_Get(msg, "Status", &v) == NATS_OK ? v : NULL;
}

/* A direct get answers with the stored message itself (status 404 when none); the classic message get
   with JSON holding it in base64. */
static void store_get_reply(bw_busjs_t *js, reply_t *r, natsMsg *msg)
{
    bw_inbound_t *in = r->in;
    if (js->gave_back || atomic_load(&js->b->closing)) { /* shutdown: its delivery goes (or went) back */
        js->lookups--;
        bw_inbound_destroy(in);
        return;
    }
    if (msg == NULL) { /* no answer in time: run it (at least once) */
        bw_metrics_inc(BW_C_JS_STORE_ERRORS);
        run_job(js, in);
        return;
    }
    if (js->direct_get && natsMsg_GetDataLength(msg) == 0) {
        /* the usual answer, "404 Message Not Found" (or a delete marker, or an error status): no stored
           result. Told by its empty body: reading a header would make nats.c parse them all (a hash map
           per job); a bucket that fails shows in its writes */
        store_answer(js, in, NULL, 0, NULL);
        return;
    }
    const char *status = status_of(msg);
    if (js->direct_get) {
        const char *op = bw_bus_msg_header(msg, "KV-Operation");
        if (status != NULL || op != NULL) {
            if (status != NULL && strcmp(status, "404") != 0)
                bw_metrics_inc(BW_C_JS_STORE_ERRORS);
            store_answer(js, in, NULL, 0, NULL);
            return;
        }
        store_answer(js, in, natsMsg_GetData(msg), (size_t)natsMsg_GetDataLength(msg),
                     bw_bus_msg_header(msg, "trace_id"));
        return;
    }
    json_t *o = json_loadb(natsMsg_GetData(msg), (size_t)natsMsg_GetDataLength(msg), 0, NULL);
    json_t *m = json_object_get(o, "message");
    const char *d64 = json_string_value(json_object_get(m, "data"));
    const char *h64 = json_string_value(json_object_get(m, "hdrs"));
    size_t dlen = 0, hlen = 0;
    unsigned char *data = d64 ? bw_base64_decode(d64, strlen(d64), &dlen) : NULL;
    unsigned char *hdrs = h64 ? bw_base64_decode(h64, strlen(h64), &hlen) : NULL;
    char trace[300] = "";
    bool deleted = false;
    if (hdrs != NULL) { /* "NATS/1.0\r\nname: value\r\n..." */
        char *h = bw_strndup((const char *)hdrs, hlen), *save = NULL;
        for (char *line = strtok_r(h, "\r\n", &save); line != NULL; line = strtok_r(NULL, "\r\n", &save)) {
            if (strncasecmp(line, "trace_id:", 9) == 0)
                snprintf(trace, sizeof trace, "%s", line + 9 + strspn(line + 9, " "));
            if (strncasecmp(line, "KV-Operation:", 13) == 0)
                deleted = true;
        }
        free(h);
    }
    if (m == NULL && json_object_get(o, "error") == NULL)
        bw_metrics_inc(BW_C_JS_STORE_ERRORS);
    store_answer(js, in, deleted ? NULL : (const char *)data, deleted ? 0 : dlen, trace[0] ? trace : NULL);
    free(data);
    free(hdrs);
    json_decref(o);
}

/* A PubAck: {"stream":…,"seq":…[,"duplicate":true]} or {"error":{…}} (or a 503 status: no stream took
   it). The server writes it: looked at, not parsed (one per result and per store write). */
static bool puback_ok(natsMsg *msg)
{
    if (msg == NULL || status_of(msg) != NULL)
        return false;
    const char *d = natsMsg_GetData(msg);
    int n = natsMsg_GetDataLength(msg);
    return n > 10 && d[0] == '{' && memmem(d, (size_t)n, "\"stream\":", 9) != NULL &&
           memmem(d, (size_t)n, "\"error\":", 8) == NULL;
}

static void reply_track(bw_busjs_t *js, reply_t *r);

/* A result's PubAck did not come: does a stream still capture the result subject? (Asked without
   waiting; the answer switches between JetStream and core publishes.) */
static void recheck_results_stream(bw_busjs_t *js)
{
    if (js->rechecking)
        return;
    char reply[96], body[400];
    reply_t *r = reply_new(js, R_STREAMS, reply, sizeof reply);
    snprintf(body, sizeof body, "{\"subject\":\"%s\"}", js->b->cfg->result_subject);
    if (natsConnection_PublishRequestString(js->b->nc, "$JS.API.STREAM.NAMES", reply, body) != NATS_OK) {
        free(r);
        return;
    }
    js->rechecking = true;
    reply_track(js, r);
}

static void streams_reply(bw_busjs_t *js, natsMsg *msg)
{
    js->rechecking = false;
    if (msg == NULL || status_of(msg) != NULL)
        return;
    json_t *o = json_loadb(natsMsg_GetData(msg), (size_t)natsMsg_GetDataLength(msg), 0, NULL);
    bool any = json_array_size(json_object_get(o, "streams")) > 0;
    if (json_object_get(o, "error") == NULL && any != js->results_js) {
        js->results_js = any;
        bw_log(BW_LOG_WARN,
               any ? "a stream captures the result subject now: results go out as JetStream publishes"
                   : "no stream captures the result subject any more: results go out as core "
                     "publishes confirmed by a flush");
    }
    json_decref(o);
}

/* A reply (msg) or its timeout (msg NULL). */
static void reply_done(bw_busjs_t *js, reply_t *r, natsMsg *msg)
{
    bool ok;
    switch (r->kind) {
    case R_STORE_GET:
        store_get_reply(js, r, msg);
        break;
    case R_RESULT:
        ok = puback_ok(msg);
        if (msg != NULL && status_of(msg) != NULL && strcmp(status_of(msg), "503") == 0) {
            /* no stream takes results any more (it was deleted): the server still delivered the result to
               its subscribers, and its answer proves it had it; core publishes from now on */
            if (js->results_js)
                bw_log(BW_LOG_WARN, "no stream captures the result subject any more: results go out as core "
                                    "publishes confirmed by a flush");
            js->results_js = false;
            ok = true;
        } else if (!ok) {
            bw_log(BW_LOG_WARN, "result not acknowledged by its stream: given back",
                   BW_LS("status", msg ? status_of(msg) : "timeout"));
            recheck_results_stream(js);
        }
        if (r->settle != NULL)
            settle_step(js, r->settle, true, ok);
        break;
    case R_STREAMS:
        streams_reply(js, msg);
        break;
    case R_CALL:
        r->fn(r->ud, msg);
        break;
    case R_STORE_PUT:
        ok = puback_ok(msg);
        if (!ok) {
            bw_metrics_inc(BW_C_JS_STORE_ERRORS);
            bw_log(BW_LOG_WARN,
                   "result store write failed: a redelivery of this assignment would run it again",
                   BW_LS("status", msg ? status_of(msg) : "timeout"));
        }
        if (r->settle != NULL)
            settle_step(js, r->settle, false, ok);
        break;
    }
    free(r);
}

natsStatus bw_busjs_request(bw_bus_t *b, const char *subject, const char *data, size_t len,
                            const char *const *hk, const char *const *hv, void (*fn)(void *ud, natsMsg *msg),
                            void *ud)
{
    bw_busjs_t *js = b->js;
    char reply[96];
    reply_t *r = reply_new(js, R_CALL, reply, sizeof reply);
    static const char *const none[BW_OUTMSG_MAX_HEADERS] = {NULL};
    natsStatus s =
        bw_busout_publish_raw(b, BW_OUT_APPROVAL, subject, reply, data, len, hk ? hk : none, hv ? hv : none);
    if (s != NATS_OK) {
        free(r);
        return s;
    }
    r->fn = fn;
    r->ud = ud;
    reply_track(js, r);
    return NATS_OK;
}

void bw_busjs_drop_requests(bw_bus_t *b, void (*fn)(void *ud, natsMsg *msg))
{
    bw_busjs_t *js = b->js;
    bw_list_t *l = js->replies.next;
    while (l != &js->replies) {
        reply_t *r = bw_list_entry(l, reply_t, link);
        l = l->next;
        if (r->kind == R_CALL && r->fn == fn) {
            reply_forget(js, r);
            fn(r->ud, NULL);
            free(r);
        }
    }
}

void bw_busjs_take_reply(bw_bus_t *b, natsMsg *msg)
{
    bw_busjs_t *js = b->js;
    const char *subj = natsMsg_GetSubject(msg), *dot = strrchr(subj, '.');
    uint64_t id = dot ? strtoull(dot + 1, NULL, 10) : 0;
    reply_t *r = bw_hmap_get(js->replies_by_id, (const char *)&id, sizeof id);
    if (r != NULL) {
        reply_forget(js, r);
        reply_done(js, r, msg);
    }
    bw_bus_release_later(b, msg);
}

/* ---- results ---- */

static const char *header_value(const bw_outmsg_t *m, const char *name)
{
    for (int i = 0; i < BW_OUTMSG_MAX_HEADERS && m->hkeys[i] != NULL; i++)
        if (strcmp(m->hkeys[i], name) == 0)
            return m->hvals[i];
    return NULL;
}

static void store_put(bw_busjs_t *js, const bw_outmsg_t *m, settle_t *st)
{
    char reply[96];
    reply_t *r = reply_new(js, R_STORE_PUT, reply, sizeof reply);
    char buf[STORE_SUBJECT_MAX];
    const char *subject = store_subject(js, m->tenant, m->assignment_id, buf);
    const char *trace = header_value(m, "trace_id");
    const char *hk[BW_OUTMSG_MAX_HEADERS] = {trace ? "trace_id" : NULL}, *hv[BW_OUTMSG_MAX_HEADERS] = {trace};
    natsStatus s = bw_busout_publish_raw(js->b, BW_OUT_APPROVAL, subject, reply, m->data, m->len, hk, hv);
    if (s != NATS_OK) {
        bw_metrics_inc(BW_C_JS_STORE_ERRORS);
        free(r);
        return;
    }
    r->settle = st;
    if (st != NULL)
        st->waiting++;
    reply_track(js, r);
}

void bw_busjs_publish_result(bw_bus_t *b, const bw_outmsg_t *m)
{
    bw_busjs_t *js = b->js;
    delivery_t *chain = take_chain(js, m->tenant, m->assignment_id);
    settle_t *st = NULL;
    if (chain != NULL) {
        st = bw_calloc(1, sizeof *st);
        st->chain = chain;
        st->waiting = 1; /* held until everything is sent */
        bw_list_init(&st->link);
        bw_list_push(&js->settles, &st->all);
    }
    if (js->results_js) {
        char reply[96];
        reply_t *r = reply_new(js, R_RESULT, reply, sizeof reply);
        natsStatus s =
            bw_busout_publish_raw(b, BW_OUT_RESULT, m->subject, reply, m->data, m->len, m->hkeys, m->hvals);
        if (s == NATS_OK) {
            r->settle = st;
            if (st != NULL)
                st->waiting++;
            reply_track(js, r);
        } else {
            free(r);
            if (st != NULL)
                st->failed = true;
            else
                bw_busout_publish_core(b, m); /* no delivery to give back: retries, then the DLQ */
        }
    } else if (st == NULL) {
        bw_busout_publish_core(b, m);
    } else if (bw_busout_publish_raw(b, m->kind, m->subject, NULL, m->data, m->len, m->hkeys, m->hvals) ==
               NATS_OK) {
        st->seq = bw_busout_end_seq(b) - 1; /* confirmed once the FIFO confirmed it */
        st->epoch = atomic_load(&b->epoch);
        st->waiting++;
        st->flushing = true;
        bw_list_push(&js->flushing, &st->link);
    } else {
        st->failed = true;
    }
    if (!m->replay && js->kv_prefix != NULL && !(st != NULL && st->failed))
        store_put(js, m, st);
    if (st != NULL)
        settle_step(js, st, false, true);
}

void bw_busjs_confirmed(bw_bus_t *b, uint64_t conf_seq)
{
    bw_busjs_t *js = b->js;
    while (!bw_list_empty(&js->flushing)) {
        settle_t *st = bw_list_entry(js->flushing.next, settle_t, link);
        if (st->seq >= conf_seq)
            break; /* in order: the FIFO confirms a prefix */
        bw_list_remove(&st->link);
        st->flushing = false;
        /* The FIFO confirms with a round trip on the connection of now. A result written to a connection
           lost since may have died in its socket: not proven out, so its assignment goes back (the next
           delivery finds the result in the store, or runs the job again) rather than being acked. */
        settle_step(js, st, true, st->epoch == atomic_load(&b->epoch));
    }
}

bool bw_bus_redeliver(bw_bus_t *b, const char *tenant, const char *id)
{
    bw_busjs_t *js = b->js;
    if (js == NULL)
        return false;
    char key[BW_JOB_KEY_MAX];
    size_t kl = bw_job_key(key, tenant, id);
    delivery_t *chain = kl > 0 ? bw_hmap_get(js->jobs, key, kl) : NULL;
    if (chain == NULL)
        return true; /* given back already (shutdown): whoever holds it runs it */
    uint64_t most = 0;
    for (delivery_t *d = chain; d != NULL; d = d->next)
        most = d->count > most ? d->count : most;
    if (most >= (uint64_t)b->cfg->js_max_deliver)
        return false;
    bw_hmap_del(js->jobs, key, kl);
    settle_chain(js, chain, SETTLE_NAK);
    return true;
}

void bw_bus_parked(bw_bus_t *b, const char *tenant, const char *id)
{
    if (b->js != NULL) {
        delivery_t *chain = take_chain(b->js, tenant, id);
        settle_chain(b->js, chain, SETTLE_ACK); /* the approval is in its journal */
    }
}

/* ---- deliveries ---- */

static void pull_end(bw_busjs_t *js)
{
    js->pull.id = 0;
    js->pull.remaining = 0;
    update_gauges(js);
}

/* How long a message given back must wait so that it does not come back to this worker's open pull
   request (2.9 has no way to withdraw one): until that request expires, 0 when none is open. */
static int64_t give_back_delay_ms(const bw_busjs_t *js)
{
    uint64_t now = uv_now(js->b->loop);
    if (js->pull.id == 0 || js->pull.expires_ms + GIVE_BACK_MARGIN_MS <= now)
        return 0;
    return (int64_t)(js->pull.expires_ms + GIVE_BACK_MARGIN_MS - now);
}

/* A pull request the server refused or ended early (409 consumer deleted or too many waiting requests, 503
   no JetStream leader, ...): asking again at once would spin, so pulling pauses, 250 ms doubling to 5 s
   while it goes on (logged once per streak); a deleted consumer is created again (set-up runs again). */
static void pull_refused(bw_busjs_t *js, const char *status, const char *description)
{
    bool first = js->pause_ms == 0;
    js->pause_ms = first                                  ? PULL_PAUSE_MIN_MS
                   : js->pause_ms * 2 > PULL_PAUSE_MAX_MS ? PULL_PAUSE_MAX_MS
                                                          : js->pause_ms * 2;
    js->paused_until = uv_now(js->b->loop) + (uint64_t)js->pause_ms;
    if (first)
        bw_log(BW_LOG_WARN, "JetStream pull request refused: pulling pauses", BW_LS("status", status),
               BW_LS("description", description), BW_LI("pause_ms", js->pause_ms));
    if (description != NULL && strstr(description, "Consumer Deleted") != NULL) {
        js->ready = false;
        start_setup(js);
    }
}

static uint64_t subject_id(const char *subject)
{
    const char *dot = strrchr(subject, '.');
    return dot ? strtoull(dot + 1, NULL, 10) : 0;
}

static void decoded(bw_bus_t *b, bw_inbound_t *in)
{
    bw_busjs_t *js = b->js;
    delivery_t *d = in->delivery;
    in->delivery = NULL;
    if (in->st == BW_DECODE_DEAD) { /* no id: no result possible, dead-lettered by the worker */
        bw_worker_accept(b->worker, in);
        d->next = NULL;
        settle_chain(js, d, SETTLE_TERM);
        return;
    }
    if (js->gave_back || atomic_load(&b->closing)) { /* shutdown: no job starts now */
        d->next = NULL;
        settle_chain(js, d, SETTLE_GIVE_BACK);
        bw_inbound_destroy(in);
        return;
    }
    char key[BW_JOB_KEY_MAX];
    size_t kl = bw_job_key(key, in->a.tenant_id, in->a.assignment_id);
    d->next = bw_hmap_get(js->jobs, key, kl);
    bw_hmap_put(js->jobs, key, kl, d);
    in->deliveries = d->count;
    in->max_delivered = d->count > (uint64_t)b->cfg->js_max_deliver;
    js->lookups++;
    if (bw_worker_find(b->worker, in->a.tenant_id, in->a.assignment_id) != NULL ||
        bw_worker_has_result(b->worker, in->a.tenant_id, in->a.assignment_id) || js->kv_prefix == NULL) {
        run_job(js, in);
        return;
    }
    char reply[96], body[1200];
    reply_t *r = reply_new(js, R_STORE_GET, reply, sizeof reply);
    char subject[STORE_SUBJECT_MAX];
    snprintf(body, sizeof body, "{\"last_by_subj\":\"%s\"}",
             store_subject(js, in->a.tenant_id, in->a.assignment_id, subject));
    r->in = in;
    if (natsConnection_PublishRequestString(b->nc, js->get_subject, reply, body) != NATS_OK) {
        free(r);
        bw_metrics_inc(BW_C_JS_STORE_ERRORS);
        run_job(js, in);
        return;
    }
    reply_track(js, r);
}

void bw_busjs_take_pull(bw_bus_t *b, natsMsg *msg)
{
    bw_busjs_t *js = b->js;
    const char *ack = natsMsg_GetReply(msg), *status = status_of(msg);
    uint64_t count = 0;
    int64_t pending = 0;
    if (ack == NULL || bw_js_parse_ack(ack, &count, &pending) < 0) {
        /* a status of a pull request: 100 it still waits (a heartbeat); 404 no messages, 408 expired, 409
           (e.g. too many waiting requests) end it */
        bool ours = js->pull.id != 0 && subject_id(natsMsg_GetSubject(msg)) == js->pull.id;
        bool normal =
            status != NULL && (!strcmp(status, "100") || !strcmp(status, "404") || !strcmp(status, "408"));
        if (ours && (status == NULL || strcmp(status, "100") != 0))
            pull_end(js);
        if (ours && !normal)
            pull_refused(js, status, bw_bus_msg_header(msg, "Description"));
        else if (ours)
            js->pause_ms = 0;
        bw_bus_release_later(b, msg);
        return;
    }
    js->pause_ms = 0;
    if (js->pull.id != 0) { /* one request open at a time: this message is its */
        if (--js->pull.remaining <= 0)
            pull_end(js);
        update_gauges(js);
    }
    js->delivered++;
    js->pending = pending;
    bw_metrics_inc(BW_C_JS_DELIVERED);
    bw_metrics_set(BW_G_JS_PENDING, pending);
    if (count > 1) {
        js->redelivered++;
        bw_metrics_inc(BW_C_JS_REDELIVERED);
    }
    size_t al = strlen(ack);
    delivery_t *d = bw_malloc(sizeof *d + al + 1);
    memcpy(d->ack, ack, al + 1);
    d->count = count;
    d->next = NULL;
    bw_list_push(&js->held, &d->held);
    js->nheld++;
    update_gauges(js);
    if (js->draining || js->gave_back || atomic_load(&b->closing)) { /* another worker takes it at once */
        settle_chain(js, d, SETTLE_GIVE_BACK);
        bw_bus_release_later(b, msg);
        return;
    }
    bw_inbound_t *in = bw_calloc(1, sizeof *in);
    in->delivery = d;
    if (count > (uint64_t)b->cfg->js_max_deliver) { /* kept for the MAX_DELIVER dead letter */
        in->raw = bw_strndup(natsMsg_GetData(msg), (size_t)natsMsg_GetDataLength(msg));
        in->raw_len = (size_t)natsMsg_GetDataLength(msg);
        in->subject = bw_strdup(b->cfg->assign_subject);
        in->headers = bw_bus_headers_json(msg);
    }
    bw_bus_decode(b, msg, in, decoded);
}

/* ---- pulling ---- */

static void pull(bw_busjs_t *js, int64_t n)
{
    char reply[96], body[160];
    uint64_t id = ++js->next_id;
    snprintf(reply, sizeof reply, "%s.p.%" PRIu64, js->inbox, id);
    snprintf(body, sizeof body, "{\"batch\":%" PRId64 ",\"expires\":%" PRId64 "}", n,
             (int64_t)PULL_EXPIRES_MS * 1000000);
    if (natsConnection_PublishRequestString(js->b->nc, js->next_subject, reply, body) != NATS_OK)
        return;
    js->pull = (pull_t){.id = id, .remaining = n, .expires_ms = uv_now(js->b->loop) + PULL_EXPIRES_MS};
    bw_metrics_inc(BW_C_JS_PULLS);
    update_gauges(js);
}

/* Pulls as many as there is room for (bw_worker_room: jobs that could start now), less the store reads and
   decodes in flight: what it fetches runs soon, the rest stays in the stream for other workers. */
void bw_busjs_tick(bw_bus_t *b)
{
    bw_busjs_t *js = b->js;
    if (!js->ready || js->pull.id != 0 || js->draining || js->gave_back || atomic_load(&b->closing) ||
        !atomic_load(&b->connected) || uv_now(b->loop) < js->paused_until)
        return;
    int64_t room = bw_worker_room(b->worker) - (int64_t)js->lookups - (int64_t)b->decoding;
    if (room > 0)
        pull(js, room);
}

/* ---- timers ---- */

static void on_wpi(uv_timer_t *t)
{
    bw_busjs_t *js = t->data;
    if (!atomic_load(&js->b->connected))
        return;
    for (bw_list_t *l = js->held.next; l != &js->held; l = l->next) {
        js_send(js, bw_list_entry(l, delivery_t, held)->ack, "+WPI");
        bw_metrics_inc(BW_C_JS_IN_PROGRESS);
    }
}

static void on_sweep(uv_timer_t *t)
{
    bw_busjs_t *js = t->data;
    uint64_t now = uv_now(js->b->loop);
    while (!bw_list_empty(&js->replies)) {
        reply_t *r = bw_list_entry(js->replies.next, reply_t, link);
        if (r->deadline > now)
            break;
        reply_forget(js, r);
        reply_done(js, r, NULL);
    }
    if (js->pull.id != 0 && now > js->pull.expires_ms + PULL_LOST_MS) {
        bw_log(BW_LOG_WARN, "JetStream pull request lost (it never ended): asking again");
        pull_end(js);
        bw_busjs_tick(js->b);
    }
}

/* ---- set-up (bw-nats-rt) ---- */

static int setup_fail(bw_busjs_t *js, int rc, const char *fmt, const char *a, const char *b2)
{
    snprintf(js->setup_error, sizeof js->setup_error, fmt, a, b2);
    return rc;
}

static int transient(bw_busjs_t *js, const char *what, natsStatus s, jsErrCode e)
{
    char why[300];
    snprintf(why, sizeof why, "%s (error %d)",
             nats_GetLastError(NULL) ? nats_GetLastError(NULL) : natsStatus_GetText(s), (int)e);
    if (s == NATS_NO_RESPONDERS)
        snprintf(why, sizeof why, "no JetStream on the server (is it started with JetStream enabled?)");
    return setup_fail(js, -1, "%s: %s", what, why);
}

static int ensure_stream(bw_busjs_t *js, jsCtx *ctx)
{
    const bw_config_t *c = js->b->cfg;
    jsStreamInfo *si = NULL;
    jsErrCode e = 0;
    natsStatus s = js_GetStreamInfo(&si, ctx, c->js_stream, NULL, &e);
    if (s == NATS_NOT_FOUND || e == JSStreamNotFoundErr) {
        if (!c->js_create)
            return setup_fail(
                js, SETUP_FATAL,
                "JetStream stream '%s' (CAF_JS_STREAM) does not exist: create it (README, JetStream) "
                "or set CAF_JS_CREATE=true%s",
                c->js_stream, "");
        jsStreamConfig sc;
        jsStreamConfig_Init(&sc);
        const char *subjects[] = {c->assign_subject};
        sc.Name = c->js_stream;
        sc.Subjects = subjects;
        sc.SubjectsLen = 1;
        sc.Retention = js_WorkQueuePolicy;
        sc.Storage = js_FileStorage;
        sc.Replicas = (int)c->js_replicas;
        s = js_AddStream(&si, ctx, &sc, NULL, &e);
        if (s != NATS_OK)
            return transient(js, "cannot create the JetStream stream (CAF_JS_STREAM)", s, e);
        bw_log(BW_LOG_INFO, "JetStream stream created", BW_LS("stream", c->js_stream),
               BW_LS("subject", c->assign_subject), BW_LI("replicas", c->js_replicas));
    } else if (s != NATS_OK) {
        return transient(js, "cannot read the JetStream stream (CAF_JS_STREAM)", s, e);
    }
    bool covers = false;
    for (int i = 0; si->Config != NULL && i < si->Config->SubjectsLen && !covers; i++)
        covers = bw_js_subject_covers(si->Config->Subjects[i], c->assign_subject);
    jsStreamInfo_Destroy(si);
    if (!covers)
        return setup_fail(js, SETUP_FATAL,
                          "JetStream stream '%s' (CAF_JS_STREAM) does not hold the assign subject '%s' "
                          "(CAF_ASSIGN_SUBJECT)",
                          c->js_stream, c->assign_subject);
    return 0;
}

static int ensure_consumer(bw_busjs_t *js, jsCtx *ctx)
{
    const bw_config_t *c = js->b->cfg;
    jsConsumerInfo *ci = NULL;
    jsErrCode e = 0;
    natsStatus s = js_GetConsumerInfo(&ci, ctx, c->js_stream, c->js_durable, NULL, &e);
    if (s == NATS_NOT_FOUND || e == JSConsumerNotFoundErr) {
        jsConsumerConfig cc;
        jsConsumerConfig_Init(&cc);
        cc.Durable = c->js_durable;
        cc.AckPolicy = js_AckExplicit;
        cc.AckWait = c->js_ack_wait_ms * 1000000;
        cc.MaxDeliver = -1; /* the worker counts: CAF_JS_MAX_DELIVER */
        cc.FilterSubject = c->assign_subject;
        cc.MaxAckPending = MAX_ACK_PENDING;
        s = js_AddConsumer(&ci, ctx, c->js_stream, &cc, NULL, &e);
        if (s != NATS_OK)
            return transient(js, "cannot create the JetStream consumer (CAF_JS_DURABLE)", s, e);
        bw_log(BW_LOG_INFO, "JetStream consumer created", BW_LS("stream", c->js_stream),
               BW_LS("durable", c->js_durable));
    } else if (s != NATS_OK) {
        return transient(js, "cannot read the JetStream consumer (CAF_JS_DURABLE)", s, e);
    }
    jsConsumerConfig *cc = ci->Config;
    int rc = 0;
    if (cc->DeliverSubject != NULL && cc->DeliverSubject[0] != '\0')
        rc = setup_fail(js, SETUP_FATAL, "JetStream consumer '%s' (CAF_JS_DURABLE) is a push consumer%s",
                        c->js_durable, ": the worker needs a pull consumer");
    else if (cc->AckPolicy != js_AckExplicit)
        rc = setup_fail(js, SETUP_FATAL, "JetStream consumer '%s' (CAF_JS_DURABLE) %s", c->js_durable,
                        "does not use explicit acks (ack policy explicit is required)");
    else if (cc->MaxDeliver > 0 && cc->MaxDeliver <= c->js_max_deliver)
        rc = setup_fail(js, SETUP_FATAL,
                        "JetStream consumer '%s' (CAF_JS_DURABLE) stops delivering at its max_deliver, at or "
                        "below CAF_JS_MAX_DELIVER=%s: set its max_deliver to -1",
                        c->js_durable, "(the worker dead-letters at its own limit)");
    js->ack_wait_ms = cc->AckWait > 0 ? cc->AckWait / 1000000 : c->js_ack_wait_ms;
    if (rc == 0 && js->ack_wait_ms != c->js_ack_wait_ms)
        bw_log(BW_LOG_WARN, "the consumer's ack wait differs from CAF_JS_ACK_WAIT_MS: using the consumer's",
               BW_LI("ack_wait_ms", js->ack_wait_ms));
    jsConsumerInfo_Destroy(ci);
    return rc;
}

/* A KV bucket (stream KV_<bucket>): checked, or created with CAF_JS_CREATE as a KV client creates one. var
   names its variable in messages; max_age_ms 0: none. *direct: the bucket answers direct gets. */
int bw_busjs_ensure_bucket(bw_busjs_t *js, jsCtx *ctx, const char *bucket, const char *var,
                           int64_t max_age_ms, bool *direct)
{
    const bw_config_t *c = js->b->cfg;
    char name[128], subject[160], what[200];
    snprintf(name, sizeof name, "KV_%s", bucket);
    jsStreamInfo *si = NULL;
    jsErrCode e = 0;
    natsStatus s = js_GetStreamInfo(&si, ctx, name, NULL, &e);
    if (s == NATS_NOT_FOUND || e == JSStreamNotFoundErr) {
        if (!c->js_create)
            return setup_fail(js, SETUP_FATAL,
                              "JetStream key-value bucket '%s' (%s) does not exist: create it "
                              "(README, JetStream) or set CAF_JS_CREATE=true",
                              bucket, var);
        /* what a KV client creates: one value per key, deletes as markers, values expire by age */
        jsStreamConfig sc;
        jsStreamConfig_Init(&sc);
        snprintf(subject, sizeof subject, "$KV.%s.>", bucket);
        const char *subjects[] = {subject};
        sc.Name = name;
        sc.Subjects = subjects;
        sc.SubjectsLen = 1;
        sc.MaxMsgsPerSubject = 1;
        sc.MaxAge = max_age_ms * 1000000;
        sc.Storage = js_FileStorage;
        sc.Replicas = (int)c->js_replicas;
        sc.Discard = js_DiscardNew;
        sc.AllowRollup = true;
        sc.DenyDelete = true;
        sc.AllowDirect = true;
        sc.Duplicates = 120LL * 1000000000;
        s = js_AddStream(&si, ctx, &sc, NULL, &e);
        snprintf(what, sizeof what, "cannot create the bucket %s (%s)", bucket, var);
        if (s != NATS_OK)
            return transient(js, what, s, e);
        bw_log(BW_LOG_INFO, "JetStream bucket created", BW_LS("bucket", bucket), BW_LS("variable", var),
               BW_LI("ttl_ms", max_age_ms));
    } else if (s != NATS_OK) {
        snprintf(what, sizeof what, "cannot read the bucket %s (%s)", bucket, var);
        return transient(js, what, s, e);
    }
    *direct = si->Config != NULL && si->Config->AllowDirect;
    jsStreamInfo_Destroy(si);
    return 0;
}

/* Whether some stream captures the result subject ($JS.API.STREAM.NAMES filtered by subject). */
static int check_results_stream(bw_busjs_t *js)
{
    char body[400];
    natsMsg *reply = NULL;
    snprintf(body, sizeof body, "{\"subject\":\"%s\"}", js->b->cfg->result_subject);
    natsStatus s = natsConnection_RequestString(&reply, js->b->nc, "$JS.API.STREAM.NAMES", body, 5000);
    if (s != NATS_OK)
        return transient(js, "cannot list the JetStream streams", s, 0);
    json_t *o = json_loadb(natsMsg_GetData(reply), (size_t)natsMsg_GetDataLength(reply), 0, NULL);
    js->results_js = json_array_size(json_object_get(o, "streams")) > 0;
    json_decref(o);
    natsMsg_Destroy(reply);
    return 0;
}

static int setup_work(bw_bus_t *b, void *ud) /* bw-nats-rt */
{
    bw_busjs_t *js = b->js;
    jsCtx *ctx = NULL;
    jsOptions o;
    jsOptions_Init(&o);
    o.Wait = 5000;
    int rc;
    if (natsConnection_JetStream(&ctx, b->nc, &o) != NATS_OK)
        return setup_fail(js, -1, "cannot use JetStream on the connection%s%s", "", "");
    const bw_config_t *c = b->cfg;
    if ((rc = ensure_stream(js, ctx)) == 0 && (rc = ensure_consumer(js, ctx)) == 0 &&
        (!c->js_result_store ||
         (rc = bw_busjs_ensure_bucket(js, ctx, c->js_results_bucket, "CAF_JS_RESULTS_BUCKET", c->dedup_ttl_ms,
                                      &js->direct_get)) == 0) &&
        (rc = bw_akv_setup(b, ctx)) == 0)
        rc = check_results_stream(js);
    jsCtx_Destroy(ctx);
    return rc;
}

static void on_setup_timer(uv_timer_t *t);

static void setup_done(bw_bus_t *b, int rc, void *ud)
{
    bw_busjs_t *js = b->js;
    js->setting_up = false;
    if (atomic_load(&b->closing))
        return;
    if (rc == SETUP_FATAL) {
        bw_log(BW_LOG_ERROR, "JetStream set-up failed: exiting", BW_LS("error", js->setup_error));
        uv_async_send(&b->fatal);
        return;
    }
    if (rc != 0) {
        bw_log(BW_LOG_WARN, "JetStream set-up failed: retrying", BW_LS("error", js->setup_error),
               BW_LI("retry_ms", js->setup_delay_ms));
        uv_timer_start(&js->setup_timer, on_setup_timer, (uint64_t)js->setup_delay_ms, 0);
        js->setup_delay_ms =
            js->setup_delay_ms * 2 > SETUP_RETRY_MAX_MS ? SETUP_RETRY_MAX_MS : js->setup_delay_ms * 2;
        return;
    }
    const bw_config_t *c = b->cfg;
    char prefix[128];
    snprintf(prefix, sizeof prefix, "$KV.%s.", c->js_results_bucket);
    free(js->kv_prefix); /* set-up runs again after the consumer was deleted */
    free(js->get_subject);
    js->kv_prefix = c->js_result_store ? bw_strdup(prefix) : NULL; /* NULL: no result store */
    snprintf(prefix, sizeof prefix, "$JS.API.%s.KV_%s", js->direct_get ? "DIRECT.GET" : "STREAM.MSG.GET",
             c->js_results_bucket);
    js->get_subject = bw_strdup(prefix);
    js->ready = true;
    int64_t every = js->ack_wait_ms / 3 > 100 ? js->ack_wait_ms / 3 : 100;
    uv_timer_start(&js->wpi, on_wpi, (uint64_t)every, (uint64_t)every);
    bw_log(BW_LOG_INFO, "JetStream consumer ready", BW_LS("stream", c->js_stream),
           BW_LS("durable", c->js_durable),
           BW_LS("results", js->results_js ? "jetstream publish" : "core publish + flush"),
           BW_LS("result_store", c->js_result_store ? c->js_results_bucket : "off"),
           BW_LI("ack_wait_ms", js->ack_wait_ms));
    bw_bus_say_ready(b);
    bw_busjs_tick(b);
}

static void start_setup(bw_busjs_t *js)
{
    if (js->setting_up || js->ready)
        return;
    js->setting_up = true;
    bw_bus_run_async(js->b, setup_work, setup_done, NULL);
}

static void on_setup_timer(uv_timer_t *t)
{
    start_setup(t->data);
}

void bw_busjs_connected(bw_bus_t *b)
{
    bw_busjs_t *js = b->js;
    if (!js->ready) {
        start_setup(js);
        return;
    }
    /* the open pull request of the lost connection may or may not still be served: asked again */
    pull_end(js);
    bw_busjs_tick(b);
}

/* ---- lifecycle ---- */

bw_busjs_t *bw_busjs_create(bw_bus_t *b)
{
    bw_busjs_t *js = bw_calloc(1, sizeof *js);
    js->b = b;
    char *inbox = NULL;
    natsInbox_Create(&inbox);
    snprintf(js->inbox, sizeof js->inbox, "%s", inbox ? inbox : "_INBOX.bw");
    natsInbox_Destroy(inbox);
    char s[300];
    snprintf(s, sizeof s, "$JS.API.CONSUMER.MSG.NEXT.%s.%s", b->cfg->js_stream, b->cfg->js_durable);
    js->next_subject = bw_strdup(s);
    js->jobs = bw_hmap_create();
    js->replies_by_id = bw_hmap_create();
    bw_list_init(&js->held);
    bw_list_init(&js->replies);
    bw_list_init(&js->flushing);
    bw_list_init(&js->settles);
    js->setup_delay_ms = SETUP_RETRY_MIN_MS;
    js->ack_wait_ms = b->cfg->js_ack_wait_ms;
    uv_timer_init(b->loop, &js->wpi);
    js->wpi.data = js;
    uv_unref((uv_handle_t *)&js->wpi);
    uv_timer_init(b->loop, &js->sweep);
    js->sweep.data = js;
    uv_timer_start(&js->sweep, on_sweep, SWEEP_MS, SWEEP_MS);
    uv_unref((uv_handle_t *)&js->sweep);
    uv_timer_init(b->loop, &js->setup_timer);
    js->setup_timer.data = js;
    return js;
}

natsStatus bw_busjs_subscribe(bw_bus_t *b)
{
    char s[96];
    snprintf(s, sizeof s, "%s.p.*", b->js->inbox);
    natsStatus st = natsConnection_SubscribeSync(&b->assign_sub, b->nc, s);
    if (st == NATS_OK)
        st = natsSubscription_SetPendingLimits(b->assign_sub, -1, -1);
    snprintf(s, sizeof s, "%s.r.*", b->js->inbox);
    if (st == NATS_OK)
        st = natsConnection_SubscribeSync(&b->js_reply_sub, b->nc, s);
    if (st == NATS_OK)
        st = natsSubscription_SetPendingLimits(b->js_reply_sub, -1, -1);
    return st;
}

static void on_intake_timer(uv_timer_t *t)
{
    bw_busjs_t *js = t->data;
    bw_bus_drain_intake(js->b);
}

void bw_busjs_stop_intake(bw_bus_t *b)
{
    bw_busjs_t *js = b->js;
    js->draining = true;
    /* nats-server 2.9 cannot withdraw a pull request, and still sends to one whose inbox was just
       unsubscribed: those messages would wait out the ack wait. The inbox stays until the request expired;
       what arrives meanwhile is given back (NAK delayed past that expiry, see give_back_delay_ms). */
    uv_timer_stop(&js->setup_timer);
    uv_timer_start(&js->setup_timer, on_intake_timer, (uint64_t)give_back_delay_ms(js), 0);
}

void bw_busjs_wait_pull(bw_bus_t *b)
{
    bw_busjs_t *js = b->js;
    uv_ref((uv_handle_t *)&js->sweep); /* wakes the loop while waiting */
    while (js->pull.id != 0 && uv_now(b->loop) < js->pull.expires_ms + GIVE_BACK_MARGIN_MS &&
           atomic_load(&b->connected)) {
        uv_run(b->loop, UV_RUN_ONCE);
        natsMsg *msg = NULL;
        while (b->assign_sub != NULL && natsSubscription_NextMsg(&msg, b->assign_sub, 0) == NATS_OK)
            bw_busjs_take_pull(b, msg);
    }
    uv_unref((uv_handle_t *)&js->sweep);
}

void bw_busjs_finish_replies(bw_bus_t *b, int64_t timeout_ms)
{
    bw_busjs_t *js = b->js;
    uint64_t until = bw_mono_ms() + (uint64_t)timeout_ms;
    uv_ref((uv_handle_t *)&js->sweep); /* wakes the loop while waiting */
    while (!bw_list_empty(&js->replies) && bw_mono_ms() < until && atomic_load(&b->connected)) {
        uv_run(b->loop, UV_RUN_ONCE);
        natsMsg *msg = NULL;
        while (natsSubscription_NextMsg(&msg, b->js_reply_sub, 0) == NATS_OK)
            bw_busjs_take_reply(b, msg);
    }
    uv_unref((uv_handle_t *)&js->sweep);
}

static void collect_chain(void *ud, const char *key, void *value)
{
    (void)key;
    delivery_t ***cursor = ud;
    *(*cursor)++ = value;
}

void bw_busjs_give_back_all(bw_bus_t *b, const char *why)
{
    bw_busjs_t *js = b->js;
    if (js == NULL)
        return;
    js->gave_back = true;
    size_t n = bw_hmap_size(js->jobs), given = 0;
    if (n == 0)
        return;
    delivery_t **chains = bw_calloc(n, sizeof *chains), **cursor = chains;
    bw_hmap_foreach(js->jobs, collect_chain, &cursor);
    for (delivery_t **c = chains; c < cursor; c++) {
        for (delivery_t *d = *c; d != NULL; d = d->next)
            given++;
        settle_chain(js, *c, SETTLE_GIVE_BACK);
    }
    free(chains);
    bw_hmap_destroy(js->jobs);
    js->jobs = bw_hmap_create();
    bw_log(BW_LOG_INFO, "unfinished assignments given back to the server",
           BW_LI("deliveries", (long long)given), BW_LS("reason", why));
}

void bw_bus_give_back_all(bw_bus_t *b)
{
    bw_busjs_give_back_all(b, "shutdown timeout");
}

bool bw_bus_jetstream(const bw_bus_t *b)
{
    return b != NULL && b->js != NULL;
}

json_t *bw_bus_consumer_json(bw_bus_t *b)
{
    bw_busjs_t *js = b != NULL ? b->js : NULL;
    if (js == NULL)
        return NULL;
    return json_pack("{ss ss ss sI sI sI sI sI sI sI sI}", "mode", "jetstream", "stream", b->cfg->js_stream,
                     "durable", b->cfg->js_durable, "ack_pending", (json_int_t)js->nheld, "pending",
                     (json_int_t)js->pending, "delivered", (json_int_t)js->delivered, "redelivered",
                     (json_int_t)js->redelivered, "acks", (json_int_t)js->acks, "naks", (json_int_t)js->naks,
                     "terms", (json_int_t)js->terms, "result_store_hits", (json_int_t)js->store_hits);
}

static void free_chain(void *ud, const char *key, void *value)
{
    (void)ud;
    (void)key;
    for (delivery_t *d = value, *next; d != NULL; d = next) {
        next = d->next;
        free(d);
    }
}

static void free_reply(void *ud, const char *key, void *value)
{
    (void)ud;
    (void)key;
    reply_t *r = value;
    if (r->in != NULL)
        bw_inbound_destroy(r->in);
    free(r);
}

static void on_js_closed(uv_handle_t *h)
{
    free(h->data);
}

/* After the connection closed: what is left is freed (held deliveries are redelivered by the server after
   their ack wait). */
void bw_busjs_destroy(bw_bus_t *b)
{
    bw_busjs_t *js = b->js;
    if (js == NULL)
        return;
    b->js = NULL;
    bw_hmap_foreach(js->replies_by_id, free_reply, NULL);
    bw_hmap_destroy(js->replies_by_id);
    bw_hmap_foreach(js->jobs, free_chain, NULL);
    bw_hmap_destroy(js->jobs);
    while (!bw_list_empty(&js->settles)) {
        settle_t *st = bw_list_entry(js->settles.next, settle_t, all);
        bw_list_remove(&st->all);
        free_chain(NULL, NULL, st->chain);
        free(st);
    }
    free(js->next_subject);
    free(js->kv_prefix);
    free(js->get_subject);
    uv_close((uv_handle_t *)&js->wpi, NULL);
    uv_close((uv_handle_t *)&js->sweep, NULL);
    uv_close((uv_handle_t *)&js->setup_timer, on_js_closed); /* the last: frees js */
}
