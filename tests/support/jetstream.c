/* JetStream helpers for tests; see jetstream.h. */
#include "jetstream.h"

#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CONNECT_TIMEOUT_MS 5000
#define API_WAIT_MS 5000
#define POLL_MS 10

int bw_test_js_connect(bw_test_js_t *j, const char *urls)
{
    natsOptions *o = NULL;
    jsOptions jo;
    natsStatus s;

    memset(j, 0, sizeof *j);
    s = natsOptions_Create(&o);
    if (s == NATS_OK)
        s = natsOptions_SetURL(o, urls);
    if (s == NATS_OK)
        s = natsOptions_SetMaxReconnect(o, -1);
    if (s == NATS_OK)
        s = natsOptions_SetReconnectWait(o, 100);
    if (s == NATS_OK)
        s = natsOptions_SetTimeout(o, 1000);
    if (s == NATS_OK) {
        int64_t deadline = bw_test_now_ms() + CONNECT_TIMEOUT_MS;
        while ((s = natsConnection_Connect(&j->nc, o)) != NATS_OK && bw_test_now_ms() < deadline)
            bw_test_sleep_ms(50);
    }
    natsOptions_Destroy(o);
    if (s == NATS_OK) {
        jsOptions_Init(&jo);
        jo.Wait = API_WAIT_MS;
        s = natsConnection_JetStream(&j->js, j->nc, &jo);
    }
    if (s != NATS_OK) {
        fprintf(stderr, "bw_test_js_connect(%s): %s\n", urls, natsStatus_GetText(s));
        bw_test_js_close(j);
        return -1;
    }
    return 0;
}

void bw_test_js_close(bw_test_js_t *j)
{
    jsCtx_Destroy(j->js);
    if (j->nc != NULL) {
        natsConnection_Close(j->nc);
        natsConnection_Destroy(j->nc);
    }
    memset(j, 0, sizeof *j);
}

int bw_test_js_wait_ready(bw_test_js_t *j, int timeout_ms)
{
    int64_t deadline = bw_test_now_ms() + timeout_ms;
    do {
        jsAccountInfo *ai = NULL;
        if (js_GetAccountInfo(&ai, j->js, NULL, NULL) == NATS_OK) {
            jsAccountInfo_Destroy(ai);
            return 0;
        }
        bw_test_sleep_ms(50);
    } while (bw_test_now_ms() < deadline);
    return -1;
}

static int add_stream(bw_test_js_t *j, jsStreamConfig *cfg)
{
    jsStreamInfo *si = NULL;
    jsErrCode ec = 0;
    natsStatus s = js_AddStream(&si, j->js, cfg, NULL, &ec);
    jsStreamInfo_Destroy(si);
    if (s != NATS_OK) {
        fprintf(stderr, "js_AddStream(%s): %s (%d) %s\n", cfg->Name, natsStatus_GetText(s), (int)ec,
                nats_GetLastError(NULL));
        return -1;
    }
    return 0;
}

int bw_test_js_add_assign_stream(bw_test_js_t *j, const char *name, const char *subject, int replicas)
{
    jsStreamConfig cfg;
    const char *subjects[] = {subject};
    jsStreamConfig_Init(&cfg);
    cfg.Name = name;
    cfg.Subjects = subjects;
    cfg.SubjectsLen = 1;
    cfg.Retention = js_WorkQueuePolicy;
    cfg.Storage = js_FileStorage;
    cfg.Replicas = replicas > 0 ? replicas : 1;
    return add_stream(j, &cfg);
}

int bw_test_js_add_results_stream(bw_test_js_t *j, const char *name, const char *subject, int replicas,
                                  int dup_window_ms)
{
    jsStreamConfig cfg;
    const char *subjects[] = {subject};
    jsStreamConfig_Init(&cfg);
    cfg.Name = name;
    cfg.Subjects = subjects;
    cfg.SubjectsLen = 1;
    cfg.Retention = js_LimitsPolicy;
    cfg.Storage = js_FileStorage;
    cfg.Replicas = replicas > 0 ? replicas : 1;
    cfg.Duplicates = (int64_t)(dup_window_ms > 0 ? dup_window_ms : 100) * 1000000;
    return add_stream(j, &cfg);
}

int bw_test_js_add_bucket(bw_test_js_t *j, const char *bucket, int64_t ttl_ms, int replicas)
{
    kvConfig cfg;
    kvStore *kv = NULL;
    kvConfig_Init(&cfg);
    cfg.Bucket = bucket;
    cfg.History = 1;
    cfg.StorageType = js_FileStorage;
    cfg.TTL = ttl_ms > 0 ? ttl_ms * 1000000 : 0;
    cfg.Replicas = replicas > 0 ? replicas : 1;
    natsStatus s = js_CreateKeyValue(&kv, j->js, &cfg);
    kvStore_Destroy(kv);
    if (s != NATS_OK) {
        fprintf(stderr, "js_CreateKeyValue(%s): %s %s\n", bucket, natsStatus_GetText(s),
                nats_GetLastError(NULL));
        return -1;
    }
    return 0;
}

/* Stream info, or NULL; *missing set when the server says there is no such stream. */
static jsStreamInfo *stream_info(bw_test_js_t *j, const char *name, int *missing)
{
    jsStreamInfo *si = NULL;
    jsErrCode ec = 0;
    natsStatus s = js_GetStreamInfo(&si, j->js, name, NULL, &ec);
    *missing = s == NATS_NOT_FOUND || ec == JSStreamNotFoundErr;
    return s == NATS_OK ? si : NULL;
}

int bw_test_js_stream_exists(bw_test_js_t *j, const char *name)
{
    int missing = 0;
    jsStreamInfo *si = stream_info(j, name, &missing);
    if (si == NULL)
        return missing ? 0 : -1;
    jsStreamInfo_Destroy(si);
    return 1;
}

int bw_test_js_stream(bw_test_js_t *j, const char *name, bw_test_js_stream_t *out)
{
    int missing = 0;
    jsStreamInfo *si = stream_info(j, name, &missing);
    memset(out, 0, sizeof *out);
    if (si == NULL)
        return -1;
    jsStreamConfig *c = si->Config;
    if (c != NULL) {
        out->retention = (int)c->Retention;
        out->storage = (int)c->Storage;
        out->replicas = c->Replicas;
        out->max_age_ms = c->MaxAge / 1000000;
        out->max_msgs_per_subject = c->MaxMsgsPerSubject;
        out->duplicates_ms = c->Duplicates / 1000000;
        snprintf(out->subject, sizeof out->subject, "%s", c->SubjectsLen > 0 ? c->Subjects[0] : "");
    }
    out->msgs = si->State.Msgs;
    jsStreamInfo_Destroy(si);
    return 0;
}

int64_t bw_test_js_stream_msgs(bw_test_js_t *j, const char *name)
{
    int missing = 0;
    jsStreamInfo *si = stream_info(j, name, &missing);
    if (si == NULL)
        return -1;
    int64_t n = (int64_t)si->State.Msgs;
    jsStreamInfo_Destroy(si);
    return n;
}

int64_t bw_test_js_wait_stream_msgs(bw_test_js_t *j, const char *name, int64_t n, int timeout_ms)
{
    int64_t deadline = bw_test_now_ms() + timeout_ms, got;
    while ((got = bw_test_js_stream_msgs(j, name)) < n && bw_test_now_ms() < deadline)
        bw_test_sleep_ms(POLL_MS);
    return got;
}

int bw_test_js_publish(bw_test_js_t *j, const char *subject, const char *data, const char *const *headers,
                       const char *msg_id, uint64_t *seq)
{
    natsMsg *m = NULL;
    jsPubAck *pa = NULL;
    jsPubOptions po;
    jsErrCode ec = 0;
    natsStatus s = natsMsg_Create(&m, subject, NULL, data, data != NULL ? (int)strlen(data) : 0);
    for (int k = 0; s == NATS_OK && headers != NULL && headers[k] != NULL; k += 2)
        s = natsMsgHeader_Set(m, headers[k], headers[k + 1]);
    jsPubOptions_Init(&po);
    po.MsgId = msg_id;
    if (s == NATS_OK)
        s = js_PublishMsg(&pa, j->js, m, &po, &ec);
    if (s == NATS_OK && seq != NULL)
        *seq = pa->Sequence;
    if (s != NATS_OK)
        fprintf(stderr, "js_PublishMsg(%s): %s (%d) %s\n", subject, natsStatus_GetText(s), (int)ec,
                nats_GetLastError(NULL));
    jsPubAck_Destroy(pa);
    natsMsg_Destroy(m);
    return s == NATS_OK ? 0 : -1;
}

char *bw_test_js_assignment(const char *tenant, const char *id, const char *type, const char *payload,
                            int deadline_ms)
{
    json_t *p = payload ? json_loads(payload, 0, NULL) : NULL;
    json_t *a = json_pack("{sssssssssss{sssO*}s{ss}}", "version", "1", "assignment_id", id, "request_id", id,
                          "tenant_id", tenant, "trace_id", "0af7651916cd43dd8448eb211c80319c", "job", "type",
                          type, "payload", p, "executor", "provider_id", "test-provider");
    if (deadline_ms > 0)
        json_object_set_new(a, "options", json_pack("{si}", "deadline_ms", deadline_ms));
    char *s = json_dumps(a, JSON_COMPACT);
    json_decref(a);
    json_decref(p);
    return s;
}

int bw_test_js_submit(bw_test_js_t *j, const char *tenant, const char *id, const char *type,
                      const char *payload, int deadline_ms)
{
    const char *const hdrs[] = {"tenant_id", tenant, "version", "1", NULL};
    char *a = bw_test_js_assignment(tenant, id, type, payload, deadline_ms);
    int rc = bw_test_js_publish(j, BW_JS_ASSIGN_SUBJECT, a, hdrs, NULL, NULL);
    free(a);
    return rc;
}

int bw_test_js_consumer(bw_test_js_t *j, const char *stream, const char *durable, bw_test_js_consumer_t *out)
{
    jsConsumerInfo *ci = NULL;
    jsErrCode ec = 0;
    memset(out, 0, sizeof *out);
    if (js_GetConsumerInfo(&ci, j->js, stream, durable, NULL, &ec) != NATS_OK)
        return -1;
    out->num_pending = ci->NumPending;
    out->num_ack_pending = ci->NumAckPending;
    out->num_redelivered = ci->NumRedelivered;
    out->num_waiting = ci->NumWaiting;
    out->delivered = ci->Delivered.Consumer;
    out->ack_floor = ci->AckFloor.Consumer;
    if (ci->Config != NULL) {
        out->ack_wait_ms = ci->Config->AckWait / 1000000;
        out->max_deliver = ci->Config->MaxDeliver;
        snprintf(out->filter, sizeof out->filter, "%s",
                 ci->Config->FilterSubject != NULL ? ci->Config->FilterSubject : "");
    }
    jsConsumerInfo_Destroy(ci);
    return 0;
}

int bw_test_js_wait_consumer(bw_test_js_t *j, const char *stream, const char *durable,
                             bool (*pred)(const bw_test_js_consumer_t *c, void *ud), void *ud, int timeout_ms,
                             bw_test_js_consumer_t *last)
{
    bw_test_js_consumer_t c;
    int64_t deadline = bw_test_now_ms() + timeout_ms;
    int held = 0;
    for (;;) {
        int ok = bw_test_js_consumer(j, stream, durable, &c) == 0;
        if (ok && pred(&c, ud)) {
            held = 1;
            break;
        }
        if (bw_test_now_ms() >= deadline)
            break;
        bw_test_sleep_ms(POLL_MS);
    }
    if (last != NULL)
        *last = c;
    return held ? 0 : -1;
}

static bool idle(const bw_test_js_consumer_t *c, void *ud)
{
    (void)ud;
    return c->num_pending == 0 && c->num_ack_pending == 0;
}

int bw_test_js_wait_idle(bw_test_js_t *j, const char *stream, const char *durable, int timeout_ms,
                         bw_test_js_consumer_t *last)
{
    return bw_test_js_wait_consumer(j, stream, durable, idle, NULL, timeout_ms, last);
}

int bw_test_js_for_each(bw_test_js_t *j, const char *stream, int (*fn)(natsMsg *m, void *ud), void *ud)
{
    int missing = 0, seen = 0;
    jsStreamInfo *si = stream_info(j, stream, &missing);
    if (si == NULL)
        return -1;
    uint64_t first = si->State.FirstSeq, last = si->State.LastSeq;
    jsStreamInfo_Destroy(si);
    for (uint64_t seq = first; seq >= 1 && seq <= last; seq++) {
        natsMsg *m = NULL;
        jsErrCode ec = 0;
        natsStatus s = js_GetMsg(&m, j->js, stream, seq, NULL, &ec);
        if (s == NATS_NOT_FOUND || ec == JSNoMessageFoundErr)
            continue; /* deleted (or acked out of a work queue) */
        if (s != NATS_OK)
            return -1;
        seen++;
        int stop = fn(m, ud);
        natsMsg_Destroy(m);
        if (stop)
            break;
    }
    return seen;
}

struct count_ctx {
    const char *id;
    int n;
};

static int count_one(natsMsg *m, void *ud)
{
    struct count_ctx *c = ud;
    json_t *j = json_loadb(natsMsg_GetData(m), (size_t)natsMsg_GetDataLength(m), 0, NULL);
    json_t *d = json_object_get(j, "data");
    json_t *bare = json_is_object(d) && json_object_get(j, "kind") ? d : j;
    const char *id = json_string_value(json_object_get(bare, "assignment_id"));
    if (id != NULL && strcmp(id, c->id) == 0)
        c->n++;
    json_decref(j);
    return 0;
}

int bw_test_js_count_results(bw_test_js_t *j, const char *stream, const char *id)
{
    struct count_ctx c = {id, 0};
    return bw_test_js_for_each(j, stream, count_one, &c) < 0 ? -1 : c.n;
}

/* base64url (RFC 4648 section 5) without padding of s, appended at out; returns the bytes written. */
static size_t b64url(const char *s, char *out)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    const unsigned char *p = (const unsigned char *)s;
    size_t n = strlen(s), w = 0, i = 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8 | p[i + 2];
        out[w++] = tab[v >> 18 & 63];
        out[w++] = tab[v >> 12 & 63];
        out[w++] = tab[v >> 6 & 63];
        out[w++] = tab[v & 63];
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)p[i] << 16;
        out[w++] = tab[v >> 18 & 63];
        out[w++] = tab[v >> 12 & 63];
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8;
        out[w++] = tab[v >> 18 & 63];
        out[w++] = tab[v >> 12 & 63];
        out[w++] = tab[v >> 6 & 63];
    }
    return w;
}

char *bw_test_js_result_key(const char *tenant, const char *id, char *buf, size_t len)
{
    size_t need = (strlen(tenant) + 2) / 3 * 4 + (strlen(id) + 2) / 3 * 4 + 2;
    char *tmp = malloc(need);
    size_t w = b64url(tenant, tmp);
    tmp[w++] = '.';
    w += b64url(id, tmp + w);
    tmp[w] = '\0';
    snprintf(buf, len, "%s", tmp);
    free(tmp);
    return buf;
}

char *bw_test_js_kv_result(bw_test_js_t *j, const char *bucket, const char *tenant, const char *id,
                           size_t *len, char **trace_id)
{
    char key[1024], stream[128], subject[1200];
    natsMsg *m = NULL;
    jsErrCode ec = 0;
    const char *op = NULL, *tid = NULL;
    char *out = NULL;

    if (trace_id != NULL)
        *trace_id = NULL;
    bw_test_js_result_key(tenant, id, key, sizeof key);
    snprintf(stream, sizeof stream, "KV_%s", bucket);
    snprintf(subject, sizeof subject, "$KV.%s.%s", bucket, key);
    if (js_GetLastMsg(&m, j->js, stream, subject, NULL, &ec) != NATS_OK)
        return NULL;
    if (natsMsgHeader_Get(m, "KV-Operation", &op) == NATS_OK && op != NULL)
        goto out; /* DEL or PURGE marker: no live value */
    int n = natsMsg_GetDataLength(m);
    out = malloc((size_t)n + 1);
    if (n > 0)
        memcpy(out, natsMsg_GetData(m), (size_t)n);
    out[n] = '\0';
    if (len != NULL)
        *len = (size_t)n;
    if (trace_id != NULL && natsMsgHeader_Get(m, "trace_id", &tid) == NATS_OK && tid != NULL)
        *trace_id = strdup(tid);
out:
    natsMsg_Destroy(m);
    return out;
}

int bw_test_js_kv_keys(bw_test_js_t *j, const char *bucket)
{
    kvStore *kv = NULL;
    kvKeysList keys = {0};
    kvWatchOptions wo;
    int n = -1;
    if (js_KeyValue(&kv, j->js, bucket) != NATS_OK)
        return -1;
    kvWatchOptions_Init(&wo);
    wo.Timeout = API_WAIT_MS;
    natsStatus s = kvStore_Keys(&keys, kv, &wo);
    if (s == NATS_OK)
        n = keys.Count;
    else if (s == NATS_NOT_FOUND)
        n = 0; /* no keys */
    kvKeysList_Destroy(&keys);
    kvStore_Destroy(kv);
    return n;
}

int bw_test_wait_until(bool (*cond)(void *ud), void *ud, int timeout_ms)
{
    int64_t deadline = bw_test_now_ms() + timeout_ms;
    for (;;) {
        if (cond(ud))
            return 0;
        if (bw_test_now_ms() >= deadline)
            return cond(ud) ? 0 : -1;
        bw_test_sleep_ms(POLL_MS);
    }
}

/* The live entry's sequence (> 0), 0 when absent or deleted, -1 when the read failed. */
static int64_t kv_seq(bw_test_js_t *j, const char *bucket, const char *tenant, const char *id)
{
    char key[1024], stream[128], subject[1200];
    natsMsg *m = NULL;
    jsErrCode ec = 0;
    const char *op = NULL;
    int64_t seq = 0;

    bw_test_js_result_key(tenant, id, key, sizeof key);
    snprintf(stream, sizeof stream, "KV_%s", bucket);
    snprintf(subject, sizeof subject, "$KV.%s.%s", bucket, key);
    natsStatus s = js_GetLastMsg(&m, j->js, stream, subject, NULL, &ec);
    if (s == NATS_NOT_FOUND || ec == JSNoMessageFoundErr)
        return 0;
    if (s != NATS_OK)
        return -1;
    if (natsMsgHeader_Get(m, "KV-Operation", &op) != NATS_OK || op == NULL)
        seq = (int64_t)natsMsg_GetSequence(m);
    natsMsg_Destroy(m);
    return seq;
}

uint64_t bw_test_js_kv_revision(bw_test_js_t *j, const char *bucket, const char *tenant, const char *id)
{
    int64_t seq = kv_seq(j, bucket, tenant, id);
    return seq > 0 ? (uint64_t)seq : 0;
}

json_t *bw_test_js_kv_wait_json(bw_test_js_t *j, const char *bucket, const char *tenant, const char *id,
                                int timeout_ms)
{
    int64_t deadline = bw_test_now_ms() + timeout_ms;
    for (;;) {
        size_t len = 0;
        char *v = bw_test_js_kv_result(j, bucket, tenant, id, &len, NULL);
        if (v != NULL) {
            json_t *out = json_loadb(v, len, 0, NULL);
            free(v);
            return out;
        }
        if (bw_test_now_ms() >= deadline)
            return NULL;
        bw_test_sleep_ms(POLL_MS);
    }
}

int bw_test_js_kv_wait_gone(bw_test_js_t *j, const char *bucket, const char *tenant, const char *id,
                            int timeout_ms)
{
    int64_t deadline = bw_test_now_ms() + timeout_ms;
    for (;;) {
        if (kv_seq(j, bucket, tenant, id) == 0)
            return 0;
        if (bw_test_now_ms() >= deadline)
            return -1;
        bw_test_sleep_ms(POLL_MS);
    }
}

int bw_test_js_kv_update(bw_test_js_t *j, const char *bucket, const char *tenant, const char *id,
                         const char *value, uint64_t expect_rev)
{
    char key[1024];
    kvStore *kv = NULL;
    uint64_t rev = 0;
    bw_test_js_result_key(tenant, id, key, sizeof key);
    natsStatus s = js_KeyValue(&kv, j->js, bucket);
    if (s == NATS_OK)
        s = kvStore_Update(&rev, kv, key, value, (int)strlen(value), expect_rev);
    if (s != NATS_OK)
        fprintf(stderr, "kvStore_Update(%s, %s): %s %s\n", bucket, key, natsStatus_GetText(s),
                nats_GetLastError(NULL));
    kvStore_Destroy(kv);
    return s == NATS_OK ? 0 : -1;
}
