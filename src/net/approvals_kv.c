/*
 * JetStream mode: the approvals bucket (CAF_JS_APPROVALS_BUCKET) for core/approvals.c, on the bus's
 * connection. Writes and reads are requests with reply inboxes on the loop thread (bw_busjs_request):
 *  - put: a publish on $KV.<bucket>.<key> with Nats-Expected-Last-Subject-Sequence (0: the key must never
 *    have been written), answered by the stream's PubAck ({"seq"}: the new revision) or its error 10071
 *    ("wrong last sequence": another writer was first);
 *  - delete: the same with KV-Operation: DEL and no body (a delete marker);
 *  - get: a direct get {"last_by_subj"} (headers Nats-Sequence, KV-Operation; status 404 when none), or
 *    the stream's message get where direct gets are off.
 * The mirror is fed by nats.c's key-value watcher (an ordered consumer, which restarts itself after gaps
 * and reconnects) on its own thread "bw-akv-watch", which hands entries to the loop through a queue and
 * an async handle.
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/approvals.h"
#include "net/bus_int.h"
#include "obs/log.h"
#include "util/base64.h"
#include "util/list.h"
#include "util/xalloc.h"

#define APPROVALS_MAX_AGE_MS (8LL * 24 * 3600 * 1000) /* the longest approval (7 days) and a day */
#define WATCH_WAIT_MS 1000
#define ERR_WRONG_LAST_SEQUENCE "10071"

typedef struct event {
    bw_list_t link;
    bool loaded; /* the watcher delivered what the bucket held when it began */
    uint64_t rev;
    char *key;
    char *val; /* NULL: deleted or purged */
    size_t len;
} event_t;

struct bw_akv {
    bw_bus_t *b;
    char *prefix;      /* $KV.<bucket>. */
    char *get_subject; /* $JS.API.DIRECT.GET.KV_<bucket> or $JS.API.STREAM.MSG.GET.KV_<bucket> */
    bool direct;       /* set on bw-nats-rt during set-up, read on the loop after it */
    bw_akv_ops_t ops;
    /* the watcher (started once, on bw-nats-rt) */
    jsCtx *ctx;
    kvStore *kv;
    kvWatcher *w;
    pthread_t thread;
    bool started;
    atomic_bool stop;
    pthread_mutex_t mu;
    bw_list_t events;
    uv_async_t async;
};

typedef enum { C_PUT, C_DEL, C_GET } call_kind_t;

typedef struct call {
    const struct bw_akv *k;
    call_kind_t kind;
    bw_akv_cb cb;
    void *cbud;
} call_t;

/* ---- requests (loop thread) ---- */

static const char *header(natsMsg *msg, const char *name)
{
    const char *v = NULL;
    return natsMsgHeader_Get(msg, name, &v) == NATS_OK ? v : NULL;
}

/* A PubAck: {"stream","seq"} written, {"error":{"err_code":10071}} another writer was first. */
static bw_akv_status_t puback(natsMsg *msg, uint64_t *rev)
{
    if (msg == NULL || header(msg, "Status") != NULL)
        return BW_AKV_ERROR;
    json_t *o = json_loadb(natsMsg_GetData(msg), (size_t)natsMsg_GetDataLength(msg), 0, NULL);
    json_t *seq = json_object_get(o, "seq"), *err = json_object_get(o, "error");
    bw_akv_status_t st = BW_AKV_ERROR;
    if (err == NULL && json_is_integer(seq)) {
        *rev = (uint64_t)json_integer_value(seq);
        st = BW_AKV_OK;
    } else if (json_integer_value(json_object_get(err, "err_code")) == atoi(ERR_WRONG_LAST_SEQUENCE)) {
        st = BW_AKV_CONFLICT;
    }
    json_decref(o);
    return st;
}

/* A read's answer: direct get (the message itself) or message get (JSON holding it in base64). */
static void got(const struct bw_akv *k, const call_t *c, natsMsg *msg)
{
    if (msg == NULL) {
        c->cb(c->cbud, BW_AKV_ERROR, 0, NULL, 0);
        return;
    }
    const char *status = header(msg, "Status");
    if (k->direct) {
        const char *seq = header(msg, "Nats-Sequence");
        if (status != NULL || seq == NULL)
            c->cb(c->cbud, status != NULL && strcmp(status, "404") == 0 ? BW_AKV_ABSENT : BW_AKV_ERROR, 0,
                  NULL, 0);
        else if (header(msg, "KV-Operation") != NULL)
            c->cb(c->cbud, BW_AKV_ABSENT, 0, NULL, 0);
        else
            c->cb(c->cbud, BW_AKV_OK, strtoull(seq, NULL, 10), natsMsg_GetData(msg),
                  (size_t)natsMsg_GetDataLength(msg));
        return;
    }
    json_t *o = json_loadb(natsMsg_GetData(msg), (size_t)natsMsg_GetDataLength(msg), 0, NULL);
    json_t *m = json_object_get(o, "message"), *err = json_object_get(o, "error");
    const char *d64 = json_string_value(json_object_get(m, "data"));
    const char *h64 = json_string_value(json_object_get(m, "hdrs"));
    size_t dlen = 0, hlen = 0;
    unsigned char *data = d64 ? bw_base64_decode(d64, strlen(d64), &dlen) : NULL;
    unsigned char *hdrs = h64 ? bw_base64_decode(h64, strlen(h64), &hlen) : NULL;
    bool deleted = hdrs != NULL && memmem(hdrs, hlen, "KV-Operation:", 13) != NULL;
    if (m != NULL && json_is_integer(json_object_get(m, "seq")) && !deleted)
        c->cb(c->cbud, BW_AKV_OK, (uint64_t)json_integer_value(json_object_get(m, "seq")),
              data ? (const char *)data : "", dlen);
    else if (deleted || json_integer_value(json_object_get(err, "code")) == 404)
        c->cb(c->cbud, BW_AKV_ABSENT, 0, NULL, 0);
    else
        c->cb(c->cbud, BW_AKV_ERROR, 0, NULL, 0);
    free(data);
    free(hdrs);
    json_decref(o);
}

static void on_answer(void *ud, natsMsg *msg)
{
    call_t *c = ud;
    uint64_t rev = 0;
    if (c->kind == C_GET) {
        got(c->k, c, msg);
    } else {
        bw_akv_status_t st = puback(msg, &rev);
        c->cb(c->cbud, st, rev, NULL, 0);
    }
    free(c);
}

static void send_call(struct bw_akv *k, call_kind_t kind, const char *subject, const char *data, size_t len,
                      const char *const *hk, const char *const *hv, bw_akv_cb cb, void *cbud)
{
    call_t *c = bw_calloc(1, sizeof *c);
    *c = (call_t){k, kind, cb, cbud};
    if (!atomic_load(&k->b->connected) ||
        bw_busjs_request(k->b, subject, data, len, hk, hv, on_answer, c) != NATS_OK) {
        cb(cbud, BW_AKV_ERROR, 0, NULL, 0);
        free(c);
    }
}

static char *key_subject(const struct bw_akv *k, const char *key)
{
    return bw_asprintf("%s%s", k->prefix, key);
}

static void op_put(void *ud, const char *key, const char *val, size_t len, uint64_t expect, bw_akv_cb cb,
                   void *cbud)
{
    struct bw_akv *k = ud;
    char seq[24], *subject = key_subject(k, key);
    snprintf(seq, sizeof seq, "%" PRIu64, expect);
    const char *hk[BW_OUTMSG_MAX_HEADERS] = {"Nats-Expected-Last-Subject-Sequence"};
    const char *hv[BW_OUTMSG_MAX_HEADERS] = {seq};
    send_call(k, C_PUT, subject, val, len, hk, hv, cb, cbud);
    free(subject);
}

static void op_del(void *ud, const char *key, uint64_t expect, bw_akv_cb cb, void *cbud)
{
    struct bw_akv *k = ud;
    char seq[24], *subject = key_subject(k, key);
    snprintf(seq, sizeof seq, "%" PRIu64, expect);
    const char *hk[BW_OUTMSG_MAX_HEADERS] = {"KV-Operation", "Nats-Expected-Last-Subject-Sequence"};
    const char *hv[BW_OUTMSG_MAX_HEADERS] = {"DEL", seq};
    send_call(k, C_DEL, subject, "", 0, hk, hv, cb, cbud);
    free(subject);
}

static void op_get(void *ud, const char *key, bw_akv_cb cb, void *cbud)
{
    struct bw_akv *k = ud;
    char *subject = key_subject(k, key);
    json_t *body = json_pack("{s:s}", "last_by_subj", subject); /* both gets take it */
    char *s = json_dumps(body, JSON_COMPACT);
    send_call(k, C_GET, k->get_subject, s, strlen(s), NULL, NULL, cb, cbud);
    free(s);
    json_decref(body);
    free(subject);
}

static void op_drop(void *ud)
{
    struct bw_akv *k = ud;
    bw_busjs_drop_requests(k->b, on_answer);
}

/* ---- the watcher (bw-akv-watch) ---- */

static void push(struct bw_akv *k, event_t *e)
{
    pthread_mutex_lock(&k->mu);
    bw_list_push(&k->events, &e->link);
    pthread_mutex_unlock(&k->mu);
    uv_async_send(&k->async);
}

static void *watch_main(void *arg)
{
    struct bw_akv *k = arg;
    pthread_setname_np(pthread_self(), "bw-akv-watch");
    while (!atomic_load(&k->stop)) {
        kvEntry *ke = NULL;
        natsStatus s = kvWatcher_Next(&ke, k->w, WATCH_WAIT_MS);
        if (s == NATS_TIMEOUT)
            continue;
        if (s != NATS_OK)
            break; /* stopped (NATS_ILLEGAL_STATE), or the connection is closed */
        event_t *e = bw_calloc(1, sizeof *e);
        if (ke == NULL) {
            e->loaded = true;
        } else {
            e->key = bw_strdup(kvEntry_Key(ke));
            e->rev = kvEntry_Revision(ke);
            if (kvEntry_Operation(ke) == kvOp_Put) {
                e->len = (size_t)kvEntry_ValueLen(ke);
                e->val = bw_malloc(e->len + 1);
                memcpy(e->val, kvEntry_Value(ke), e->len);
                e->val[e->len] = '\0';
            }
            kvEntry_Destroy(ke);
        }
        push(k, e);
    }
    return NULL;
}

static void event_free(event_t *e)
{
    free(e->key);
    free(e->val);
    free(e);
}

static void on_events(uv_async_t *a)
{
    struct bw_akv *k = a->data;
    bw_list_t todo;
    bw_list_init(&todo);
    pthread_mutex_lock(&k->mu);
    while (!bw_list_empty(&k->events))
        bw_list_push(&todo, bw_list_shift(&k->events));
    pthread_mutex_unlock(&k->mu);
    while (!bw_list_empty(&todo)) {
        event_t *e = bw_list_entry(bw_list_shift(&todo), event_t, link);
        if (k->b->approvals != NULL) {
            if (e->loaded)
                bw_approvals_kv_loaded(k->b->approvals);
            else
                bw_approvals_kv_entry(k->b->approvals, e->key, e->rev, e->val, e->len);
        }
        event_free(e);
    }
}

/* ---- lifecycle ---- */

struct bw_akv *bw_akv_create(bw_bus_t *b)
{
    struct bw_akv *k = bw_calloc(1, sizeof *k);
    k->b = b;
    k->prefix = bw_asprintf("$KV.%s.", b->cfg->js_approvals_bucket);
    k->ops = (bw_akv_ops_t){k, op_put, op_del, op_get, op_drop};
    pthread_mutex_init(&k->mu, NULL);
    bw_list_init(&k->events);
    uv_async_init(b->loop, &k->async, on_events);
    k->async.data = k;
    uv_unref((uv_handle_t *)&k->async);
    return k;
}

const bw_akv_ops_t *bw_bus_approvals_kv(bw_bus_t *b)
{
    return b->akv != NULL ? &b->akv->ops : NULL;
}

/* bw-nats-rt, during the JetStream set-up: the bucket, then (once) the watcher. */
int bw_akv_setup(bw_bus_t *b, jsCtx *ctx)
{
    struct bw_akv *k = b->akv;
    if (k == NULL)
        return 0;
    const char *bucket = b->cfg->js_approvals_bucket;
    bool direct = false;
    int rc =
        bw_busjs_ensure_bucket(b->js, ctx, bucket, "CAF_JS_APPROVALS_BUCKET", APPROVALS_MAX_AGE_MS, &direct);
    if (rc != 0 || k->started)
        return rc;
    free(k->get_subject);
    k->get_subject = bw_asprintf("$JS.API.%s.KV_%s", direct ? "DIRECT.GET" : "STREAM.MSG.GET", bucket);
    k->direct = direct;
    jsOptions o;
    jsOptions_Init(&o);
    o.Wait = 5000;
    kvWatchOptions wo;
    kvWatchOptions_Init(&wo);
    natsStatus s = natsConnection_JetStream(&k->ctx, b->nc, &o);
    if (s == NATS_OK)
        s = js_KeyValue(&k->kv, k->ctx, bucket);
    if (s == NATS_OK)
        s = kvStore_WatchAll(&k->w, k->kv, &wo);
    if (s == NATS_OK && pthread_create(&k->thread, NULL, watch_main, k) != 0)
        s = NATS_SYS_ERROR;
    if (s != NATS_OK) {
        bw_log(BW_LOG_WARN, "cannot watch the approvals bucket: retrying", BW_LS("bucket", bucket),
               BW_LS("error", nats_GetLastError(NULL) ? nats_GetLastError(NULL) : natsStatus_GetText(s)));
        kvWatcher_Destroy(k->w);
        kvStore_Destroy(k->kv);
        jsCtx_Destroy(k->ctx);
        k->w = NULL;
        k->kv = NULL;
        k->ctx = NULL;
        return -1;
    }
    k->started = true;
    return 0;
}

static void on_async_closed(uv_handle_t *h)
{
    struct bw_akv *k = h->data;
    while (!bw_list_empty(&k->events))
        event_free(bw_list_entry(bw_list_shift(&k->events), event_t, link));
    pthread_mutex_destroy(&k->mu);
    free(k);
}

/* Loop thread, once the connection is closed: the watcher stops; the rest is freed once the loop ran. */
void bw_akv_destroy(bw_bus_t *b)
{
    struct bw_akv *k = b->akv;
    if (k == NULL)
        return;
    b->akv = NULL;
    if (k->started) {
        atomic_store(&k->stop, true);
        kvWatcher_Stop(k->w);
        pthread_join(k->thread, NULL);
        kvWatcher_Destroy(k->w);
        kvStore_Destroy(k->kv);
        jsCtx_Destroy(k->ctx);
    }
    free(k->prefix);
    free(k->get_subject);
    uv_close((uv_handle_t *)&k->async, on_async_closed);
}
