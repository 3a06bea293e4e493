/* JetStream load and loss/duplicate accounting for the delivery fault tests; see js_load.h. */
#include "js_load.h"

#include <nats/nats.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

#define CONNECT_WAIT_MS 10000
#define STREAM_WAIT_MS 30000
#define PUB_MAX_WAIT_MS 2000
#define RETRY_PAUSE_MS 20
#define POLL_MS 50
#define JS_NO_MESSAGE_FOUND 10037 /* JSNoMessageFoundErr: a sequence with nothing (deleted) */
#define JS_CLUSTER_NOT_AVAILABLE 10008
#define JS_CLUSTER_NO_PEERS 10005
/* The results stream's duplicate window: the server's minimum (100 ms). A duplicate result comes from a
   redelivery (after an ack wait of at least a second) or a re-run, so practically all are stored. */
#define DUP_WINDOW_NS (100LL * 1000 * 1000)

typedef struct item {
    char *id;
    char *subject;
    char *body;
    atomic_bool accepted;
} item_t;

struct bw_js_load {
    natsConnection *nc;
    jsCtx *js;
    char results_stream[80];
    item_t *items;
    int nitems, cap;
    int next_publish; /* first item the next bw_js_load_start publishes */
    pthread_t thread;
    bool running;
    int per_second, timeout_ms, from, to;
    atomic_int accepted, retries, unaccepted;
    uint64_t next_seq; /* next results stream sequence to read */
    json_t *index;     /* id -> item index */
    json_t *first;     /* id -> first result read */
    json_t *counts;    /* id -> results read */
    json_t *raw;       /* id -> the first result's body, as stored */
    int results, unexpected, cancelled, dup_identical;
};

static natsStatus set_servers(natsOptions *o, const char *urls)
{
    char *copy = strdup(urls), *save = NULL;
    const char *servers[16];
    int n = 0;
    for (char *t = strtok_r(copy, ",", &save); t != NULL && n < 16; t = strtok_r(NULL, ",", &save))
        servers[n++] = t;
    natsStatus s = n > 0 ? natsOptions_SetServers(o, servers, n) : NATS_INVALID_ARG;
    free(copy);
    return s;
}

bw_js_load_t *bw_js_load_create(const char *urls)
{
    bw_js_load_t *l = calloc(1, sizeof *l);
    natsOptions *o = NULL;
    natsStatus s = natsOptions_Create(&o);
    if (s == NATS_OK)
        s = set_servers(o, urls);
    if (s == NATS_OK)
        s = natsOptions_SetNoRandomize(o, true); /* the first URL first: a test can make it the victim */
    if (s == NATS_OK)
        s = natsOptions_SetMaxReconnect(o, -1);
    if (s == NATS_OK)
        s = natsOptions_SetReconnectWait(o, 50);
    if (s == NATS_OK)
        s = natsOptions_SetTimeout(o, 2000);
    if (s == NATS_OK)
        s = natsOptions_SetReconnectBufSize(o, 64 * 1024 * 1024);
    for (int64_t end = bw_test_now_ms() + CONNECT_WAIT_MS; s == NATS_OK;) {
        if ((s = natsConnection_Connect(&l->nc, o)) == NATS_OK || bw_test_now_ms() >= end)
            break;
        bw_test_sleep_ms(POLL_MS);
        s = NATS_OK;
    }
    natsOptions_Destroy(o);
    if (s == NATS_OK)
        s = natsConnection_JetStream(&l->js, l->nc, NULL);
    if (s != NATS_OK) {
        fprintf(stderr, "js_load: cannot connect to %s: %s\n", urls, nats_GetLastError(NULL));
        bw_js_load_destroy(l);
        return NULL;
    }
    l->index = json_object();
    l->first = json_object();
    l->counts = json_object();
    l->raw = json_object();
    l->next_seq = 1;
    return l;
}

void bw_js_load_destroy(bw_js_load_t *l)
{
    if (l == NULL)
        return;
    bw_js_load_join(l);
    for (int i = 0; i < l->nitems; i++) {
        free(l->items[i].id);
        free(l->items[i].subject);
        free(l->items[i].body);
    }
    free(l->items);
    json_decref(l->index);
    json_decref(l->first);
    json_decref(l->counts);
    json_decref(l->raw);
    jsCtx_Destroy(l->js);
    natsConnection_Destroy(l->nc);
    free(l);
}

int bw_js_load_results_stream(bw_js_load_t *l, const char *name, const char *subject, int replicas)
{
    const char *subjects[] = {subject};
    jsStreamConfig sc;
    jsStreamConfig_Init(&sc);
    sc.Name = name;
    sc.Subjects = subjects;
    sc.SubjectsLen = 1;
    sc.Replicas = replicas;
    sc.Storage = js_FileStorage;
    sc.Duplicates = DUP_WINDOW_NS; /* duplicates are stored, so they can be counted */
    natsStatus s = NATS_ERR;
    jsErrCode jerr = 0;
    for (int64_t end = bw_test_now_ms() + STREAM_WAIT_MS; s != NATS_OK && bw_test_now_ms() < end;) {
        jsStreamInfo *si = NULL;
        s = js_AddStream(&si, l->js, &sc, NULL, &jerr);
        jsStreamInfo_Destroy(si);
        if (s != NATS_OK)
            bw_test_sleep_ms(
                POLL_MS); /* a new cluster elects its meta leader: there is no event to wait on */
    }
    if (s != NATS_OK) {
        fprintf(stderr, "js_load: no results stream %s within %d ms: %s (err %d)\n", name, STREAM_WAIT_MS,
                nats_GetLastError(NULL), (int)jerr);
        return -1;
    }
    snprintf(l->results_stream, sizeof l->results_stream, "%s", name);
    return 0;
}

void bw_js_load_add(bw_js_load_t *l, const char *subject, const char *prefix, int n, const char *type,
                    const char *payload)
{
    if (l->nitems + n > l->cap) {
        l->cap = (l->nitems + n) * 2;
        l->items = realloc(l->items, (size_t)l->cap * sizeof *l->items);
    }
    for (int i = 0; i < n; i++) {
        char id[160], numbered[32];
        snprintf(id, sizeof id, "%s-%d", prefix, i);
        snprintf(numbered, sizeof numbered, "{\"i\":%d}", i);
        json_t *p = json_loads(payload ? payload : numbered, 0, NULL);
        json_t *a = json_pack("{sssssssssss{sssO*}s{ss}s{si}}", "version", "1", "assignment_id", id,
                              "request_id", id, "tenant_id", "acme", "trace_id",
                              "0af7651916cd43dd8448eb211c80319c", "job", "type", type, "payload", p,
                              "executor", "provider_id", "test-provider", "options", "deadline_ms", 60000);
        item_t *it = &l->items[l->nitems];
        it->id = strdup(id);
        it->subject = strdup(subject);
        it->body = json_dumps(a, JSON_COMPACT);
        atomic_init(&it->accepted, false);
        json_object_set_new(l->index, id, json_integer(l->nitems));
        l->nitems++;
        json_decref(a);
        json_decref(p);
    }
}

/* Publishes one item until the stream acknowledges it or the deadline passes. */
static void publish_one(bw_js_load_t *l, item_t *it, int64_t deadline)
{
    jsPubOptions po;
    jsPubOptions_Init(&po);
    po.MaxWait = PUB_MAX_WAIT_MS;
    for (int attempt = 0;; attempt++) {
        natsMsg *m = NULL;
        jsPubAck *pa = NULL;
        jsErrCode jerr = 0;
        natsStatus s = natsMsg_Create(&m, it->subject, NULL, it->body, (int)strlen(it->body));
        if (s == NATS_OK)
            s = natsMsgHeader_Set(m, "tenant_id", "acme");
        if (s == NATS_OK)
            s = natsMsgHeader_Set(m, "version", "1");
        if (s == NATS_OK)
            s = js_PublishMsg(&pa, l->js, m, &po, &jerr);
        jsPubAck_Destroy(pa);
        natsMsg_Destroy(m);
        if (s == NATS_OK) {
            atomic_store(&it->accepted, true);
            atomic_fetch_add(&l->accepted, 1);
            return;
        }
        if (bw_test_now_ms() >= deadline) {
            atomic_fetch_add(&l->unaccepted, 1);
            return;
        }
        atomic_fetch_add(&l->retries, 1);
        bw_test_sleep_ms(RETRY_PAUSE_MS);
    }
}

static void *publisher(void *arg)
{
    bw_js_load_t *l = arg;
    int64_t t0 = bw_test_now_ms(), deadline = t0 + l->timeout_ms;
    for (int i = l->from; i < l->to; i++) {
        if (l->per_second > 0) {
            int64_t due = t0 + (int64_t)(i - l->from) * 1000 / l->per_second;
            int64_t now = bw_test_now_ms();
            if (due > now)
                bw_test_sleep_ms((int)(due - now)); /* pacing the load, not waiting for an event */
        }
        publish_one(l, &l->items[i], deadline);
    }
    return NULL;
}

int bw_js_load_start(bw_js_load_t *l, int per_second, int timeout_ms)
{
    bw_js_load_join(l);
    l->per_second = per_second;
    l->timeout_ms = timeout_ms;
    l->from = l->next_publish;
    l->to = l->nitems;
    l->next_publish = l->nitems;
    if (pthread_create(&l->thread, NULL, publisher, l) != 0)
        return -1;
    l->running = true;
    return 0;
}

int bw_js_load_join(bw_js_load_t *l)
{
    if (l->running) {
        pthread_join(l->thread, NULL);
        l->running = false;
    }
    return atomic_load(&l->accepted);
}

int bw_js_load_accepted(bw_js_load_t *l)
{
    return atomic_load(&l->accepted);
}

/* The stream's state: message count and last sequence. 0 on success. */
static int stream_state(bw_js_load_t *l, const char *name, uint64_t *msgs, uint64_t *last)
{
    jsStreamInfo *si = NULL;
    jsOptions o;
    jsOptions_Init(&o);
    o.Wait = 2000;
    if (js_GetStreamInfo(&si, l->js, name, &o, NULL) != NATS_OK)
        return -1;
    if (msgs != NULL)
        *msgs = si->State.Msgs;
    if (last != NULL)
        *last = si->State.LastSeq;
    jsStreamInfo_Destroy(si);
    return 0;
}

int64_t bw_js_load_stream_msgs(bw_js_load_t *l, const char *name)
{
    uint64_t msgs = 0;
    return stream_state(l, name, &msgs, NULL) == 0 ? (int64_t)msgs : -1;
}

int64_t bw_js_load_stored(bw_js_load_t *l)
{
    return bw_js_load_stream_msgs(l, l->results_stream);
}

int bw_js_load_wait_replicas(bw_js_load_t *l, const char *name, int followers, int timeout_ms)
{
    jsOptions o;
    jsOptions_Init(&o);
    o.Wait = 2000;
    for (int64_t end = bw_test_now_ms() + timeout_ms; bw_test_now_ms() < end; bw_test_sleep_ms(POLL_MS)) {
        jsStreamInfo *si = NULL;
        if (js_GetStreamInfo(&si, l->js, name, &o, NULL) != NATS_OK)
            continue;
        int current = 0;
        for (int k = 0; si->Cluster != NULL && k < si->Cluster->ReplicasLen; k++)
            current += si->Cluster->Replicas[k]->Current && !si->Cluster->Replicas[k]->Offline;
        bool leader = si->Cluster != NULL && si->Cluster->Leader != NULL;
        jsStreamInfo_Destroy(si);
        if (leader && current == followers)
            return 0;
    }
    return -1;
}

int bw_js_load_wait_stored(bw_js_load_t *l, int64_t n, int timeout_ms)
{
    for (int64_t end = bw_test_now_ms() + timeout_ms; bw_test_now_ms() < end; bw_test_sleep_ms(10))
        if (bw_js_load_stored(l) >= n)
            return 0;
    return -1;
}

/* Accounts one stored result message. */
static void take_result(bw_js_load_t *l, const char *data, int len)
{
    json_t *j = json_loadb(data, (size_t)len, 0, NULL), *bare = j;
    json_t *d = json_object_get(j, "data");
    if (json_is_object(d) && json_object_get(j, "kind") != NULL)
        bare = d; /* envelope format */
    const char *id = json_string_value(json_object_get(bare, "assignment_id"));
    const char *status = json_string_value(json_object_get(bare, "status"));
    l->results++;
    if (status != NULL && strcmp(status, "cancelled") == 0)
        l->cancelled++;
    if (id == NULL || json_object_get(l->index, id) == NULL) {
        if (l->unexpected++ < 5)
            fprintf(stderr, "js_load: unexpected result: %.300s\n", data);
    } else {
        json_int_t c = json_integer_value(json_object_get(l->counts, id));
        json_object_set_new(l->counts, id, json_integer(c + 1));
        const char *first_raw = json_string_value(json_object_get(l->raw, id));
        if (c == 0) {
            json_object_set(l->first, id, bare);
            json_object_set_new(l->raw, id, json_stringn(data, (size_t)len));
        } else if (first_raw != NULL && strlen(first_raw) == (size_t)len &&
                   memcmp(first_raw, data, (size_t)len) == 0) {
            l->dup_identical++; /* republished from the result store, byte for byte */
        }
    }
    json_decref(j);
}

/* Reads the results stream up to sequence last (retrying failures until deadline). 0 when done. */
static int read_up_to(bw_js_load_t *l, uint64_t last, int64_t deadline)
{
    while (l->next_seq <= last) {
        natsMsg *m = NULL;
        jsErrCode jerr = 0;
        natsStatus s = js_GetMsg(&m, l->js, l->results_stream, l->next_seq, NULL, &jerr);
        if (s == NATS_OK) {
            take_result(l, natsMsg_GetData(m), natsMsg_GetDataLength(m));
            natsMsg_Destroy(m);
            l->next_seq++;
        } else if (jerr == JS_NO_MESSAGE_FOUND) {
            l->next_seq++;
        } else if (bw_test_now_ms() >= deadline) {
            return -1;
        } else {
            bw_test_sleep_ms(POLL_MS); /* a failover in progress: the stream answers again soon */
        }
    }
    return 0;
}

static int answered_accepted(const bw_js_load_t *l)
{
    int n = 0;
    for (int i = 0; i < l->nitems; i++)
        if (atomic_load(&l->items[i].accepted) && json_object_get(l->counts, l->items[i].id) != NULL)
            n++;
    return n;
}

static void fill_stats(const bw_js_load_t *l, bw_js_load_stats_t *st)
{
    memset(st, 0, sizeof *st);
    st->accepted = atomic_load(&l->accepted);
    st->retries = atomic_load(&l->retries);
    st->unaccepted = atomic_load(&l->unaccepted);
    st->results = l->results;
    st->unexpected = l->unexpected;
    st->cancelled = l->cancelled;
    st->dup_identical = l->dup_identical;
    for (int i = 0; i < l->nitems; i++) {
        const item_t *it = &l->items[i];
        json_int_t c = json_integer_value(json_object_get(l->counts, it->id));
        if (c > 1)
            st->dup += (int)(c - 1);
        if (!atomic_load(&it->accepted))
            continue;
        if (c == 0) {
            st->lost++;
            continue;
        }
        st->distinct++;
        const char *status = json_string_value(json_object_get(json_object_get(l->first, it->id), "status"));
        if (status == NULL || strcmp(status, "success") != 0)
            st->not_success++;
    }
}

int bw_js_load_collect(bw_js_load_t *l, const char *assign_stream, int timeout_ms, bw_js_load_stats_t *st)
{
    int64_t deadline = bw_test_now_ms() + timeout_ms;
    bw_js_load_join(l);
    for (;;) {
        uint64_t last = 0, pending = 1;
        bool known = stream_state(l, l->results_stream, NULL, &last) == 0;
        if (known)
            read_up_to(l, last, deadline);
        bool settled = answered_accepted(l) == atomic_load(&l->accepted) &&
                       stream_state(l, assign_stream, &pending, NULL) == 0 && pending == 0;
        if (settled && stream_state(l, l->results_stream, NULL, &last) == 0) {
            read_up_to(l, last, deadline); /* what came before the last acknowledgement */
            break;
        }
        if (bw_test_now_ms() >= deadline)
            break;
        bw_test_sleep_ms(POLL_MS);
    }
    fill_stats(l, st);
    return st->lost == 0 ? 0 : -1;
}

void bw_js_load_report(const bw_js_load_t *l, const char *name, const bw_js_load_stats_t *st)
{
    fprintf(stderr,
            "FAULT %s: accepted=%d results=%d lost=%d dup=%d (byte-identical %d) retries=%d unaccepted=%d "
            "unexpected=%d not_success=%d cancelled=%d\n",
            name, st->accepted, st->results, st->lost, st->dup, st->dup_identical, st->retries,
            st->unaccepted, st->unexpected, st->not_success, st->cancelled);
    int shown = 0;
    for (int i = 0; i < l->nitems && shown < 10; i++) {
        const item_t *it = &l->items[i];
        if (atomic_load(&it->accepted) && json_object_get(l->counts, it->id) == NULL) {
            fprintf(stderr, "  lost: %s\n", it->id);
            shown++;
        }
    }
    for (int i = 0, n = 0; i < l->nitems && n < 5; i++) {
        json_t *r = json_object_get(l->first, l->items[i].id);
        const char *status = json_string_value(json_object_get(r, "status"));
        if (r != NULL && (status == NULL || strcmp(status, "success") != 0)) {
            char *s = json_dumps(r, JSON_COMPACT);
            fprintf(stderr, "  not success: %.300s\n", s);
            free(s);
            n++;
        }
    }
}

json_t *bw_js_load_result(const bw_js_load_t *l, const char *id)
{
    return json_object_get(l->first, id);
}
