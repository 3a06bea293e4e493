/*
 * NATS test client that keeps every message it receives. Messages arrive on nats.c dispatcher
 * threads and are appended to one list under c->mu; waiters sleep on c->cv (CLOCK_MONOTONIC), which
 * is broadcast after each append. Readers only ever get deep copies, so no jansson object is
 * shared between threads. Out of memory aborts: this is test code and a partial record would
 * only produce a misleading failure later.
 */
#include "client.h"

#include "testutil.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define CONNECT_TIMEOUT_MS 5000
#define CLOSE_TIMEOUT_MS 5000
#define FLUSH_TIMEOUT_MS 5000

struct bw_test_client {
    natsConnection *nc;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bw_test_msg_t **msgs; /* arrival order; guarded by mu */
    size_t n_msgs, cap_msgs;
    natsSubscription **subs; /* only touched by the owning test thread */
    size_t n_subs, cap_subs;
    int live_subs; /* subscriptions whose handler may still run; guarded by mu */
};

/* ---- small helpers ----------------------------------------------------------------------- */

static void *must(void *p)
{
    if (p == NULL) {
        fprintf(stderr, "bw test client: out of memory\n");
        abort();
    }
    return p;
}

/* Grows *arr (elements of `size` bytes) so that one more fits. */
static void grow(void **arr, size_t *cap, size_t n, size_t size)
{
    if (n < *cap)
        return;
    *cap = *cap ? *cap * 2 : 64;
    *arr = must(realloc(*arr, *cap * size));
}

static char *memdup_nul(const char *p, size_t n)
{
    char *d = must(malloc(n + 1));

    if (n > 0)
        memcpy(d, p, n);
    d[n] = '\0';
    return d;
}

/* NATS subject matching: tokens split on '.', '*' matches one token, '>' the rest (one or more). */
static int subject_matches(const char *pat, const char *subj)
{
    if (strcmp(pat, subj) == 0)
        return 1;
    for (;;) {
        size_t pl = strcspn(pat, "."), sl = strcspn(subj, ".");
        if (pl == 1 && pat[0] == '>')
            return sl > 0;
        if (!(pl == 1 && pat[0] == '*') && (pl != sl || memcmp(pat, subj, pl) != 0))
            return 0;
        pat += pl;
        subj += sl;
        if (*pat == '\0' || *subj == '\0')
            return *pat == *subj;
        pat++;
        subj++;
    }
}

/* Sleeps on the condvar until deadline (bw_test_now_ms scale). mu held on entry and on return. */
static void wait_until(bw_test_client_t *c, int64_t deadline)
{
    struct timespec ts = {(time_t)(deadline / 1000), (long)(deadline % 1000) * 1000000L};

    pthread_cond_timedwait(&c->cv, &c->mu, &ts);
}

/* ---- messages ---------------------------------------------------------------------------- */

/* Header name -> first value. Keys and values are kept byte-for-byte (no UTF-8 check). */
static json_t *headers_of(natsMsg *msg)
{
    json_t *obj = must(json_object());
    const char **keys = NULL;
    int count = 0;

    if (natsMsgHeader_Keys(msg, &keys, &count) != NATS_OK)
        return obj;
    for (int i = 0; i < count; i++) {
        const char *v = NULL;
        if (natsMsgHeader_Get(msg, keys[i], &v) == NATS_OK && v != NULL)
            json_object_set_new_nocheck(obj, keys[i], must(json_string_nocheck(v)));
    }
    free((void *)keys);
    return obj;
}

static bw_test_msg_t *msg_from_nats(natsMsg *msg)
{
    bw_test_msg_t *m = must(calloc(1, sizeof(*m)));
    int len = natsMsg_GetDataLength(msg);

    m->subject = must(strdup(natsMsg_GetSubject(msg)));
    m->len = len;
    m->data = memdup_nul(natsMsg_GetData(msg), (size_t)len);
    m->json = json_loadb(m->data, (size_t)len, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
    m->headers = headers_of(msg);
    return m;
}

static bw_test_msg_t *msg_copy(const bw_test_msg_t *src)
{
    bw_test_msg_t *m = must(calloc(1, sizeof(*m)));

    m->subject = must(strdup(src->subject));
    m->len = src->len;
    m->data = memdup_nul(src->data, (size_t)src->len);
    m->json = src->json != NULL ? must(json_deep_copy(src->json)) : NULL;
    m->headers = must(json_deep_copy(src->headers));
    return m;
}

void bw_test_msg_destroy(bw_test_msg_t *m)
{
    if (m == NULL)
        return;
    free(m->subject);
    free(m->data);
    json_decref(m->json);
    json_decref(m->headers);
    free(m);
}

/* ---- callbacks (nats.c dispatcher threads) ----------------------------------------------- */

static void on_msg(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    bw_test_client_t *c = closure;
    bw_test_msg_t *m = msg_from_nats(msg);

    (void)nc;
    (void)sub;
    natsMsg_Destroy(msg);
    pthread_mutex_lock(&c->mu);
    grow((void **)&c->msgs, &c->cap_msgs, c->n_msgs, sizeof(*c->msgs));
    c->msgs[c->n_msgs++] = m;
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
}

/* Called once a closed subscription's handler can no longer run: only then may c be freed. */
static void on_sub_complete(void *closure)
{
    bw_test_client_t *c = closure;

    pthread_mutex_lock(&c->mu);
    c->live_subs--;
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
}

/* ---- connection -------------------------------------------------------------------------- */

static natsOptions *make_options(const char *url)
{
    natsOptions *opts = NULL;

    if (natsOptions_Create(&opts) != NATS_OK)
        return NULL;
    if (natsOptions_SetURL(opts, url) != NATS_OK || natsOptions_SetTimeout(opts, 1000) != NATS_OK ||
        natsOptions_SetMaxReconnect(opts, -1) != NATS_OK ||
        natsOptions_SetReconnectWait(opts, 100) != NATS_OK) {
        natsOptions_Destroy(opts);
        return NULL;
    }
    return opts;
}

/* Connects, retrying until CONNECT_TIMEOUT_MS has passed. NULL on failure. */
static natsConnection *connect_with_retry(const char *url)
{
    natsOptions *opts = make_options(url);
    natsConnection *nc = NULL;
    int64_t deadline = bw_test_now_ms() + CONNECT_TIMEOUT_MS;

    while (opts != NULL && natsConnection_Connect(&nc, opts) != NATS_OK) {
        nc = NULL;
        if (bw_test_now_ms() >= deadline)
            break;
        bw_test_sleep_ms(100);
    }
    natsOptions_Destroy(opts);
    return nc;
}

static int init_sync(bw_test_client_t *c)
{
    pthread_condattr_t attr;
    int rc = -1;

    if (pthread_condattr_init(&attr) != 0)
        return -1;
    if (pthread_condattr_setclock(&attr, CLOCK_MONOTONIC) == 0 && pthread_cond_init(&c->cv, &attr) == 0) {
        if (pthread_mutex_init(&c->mu, NULL) == 0)
            rc = 0;
        else
            pthread_cond_destroy(&c->cv);
    }
    pthread_condattr_destroy(&attr);
    return rc;
}

bw_test_client_t *bw_test_client_create(const char *url)
{
    bw_test_client_t *c = calloc(1, sizeof(*c));

    if (c == NULL)
        return NULL;
    if (init_sync(c) != 0) {
        free(c);
        return NULL;
    }
    c->nc = connect_with_retry(url);
    if (c->nc == NULL) {
        bw_test_client_destroy(c);
        return NULL;
    }
    return c;
}

natsConnection *bw_test_client_conn(bw_test_client_t *c)
{
    return c->nc;
}

int bw_test_client_collect(bw_test_client_t *c, const char *subject)
{
    natsSubscription *sub = NULL;

    if (natsConnection_Subscribe(&sub, c->nc, subject, on_msg, c) != NATS_OK)
        return -1;
    grow((void **)&c->subs, &c->cap_subs, c->n_subs, sizeof(*c->subs));
    c->subs[c->n_subs++] = sub; /* destroy closes it whatever happens next */
    /* Completion only fires after a close, which only this thread triggers (reconnects are
       unlimited), so counting the subscription after registering the callback cannot race. */
    if (natsSubscription_SetOnCompleteCB(sub, on_sub_complete, c) != NATS_OK)
        return -1;
    pthread_mutex_lock(&c->mu);
    c->live_subs++;
    pthread_mutex_unlock(&c->mu);
    if (natsSubscription_SetPendingLimits(sub, -1, -1) != NATS_OK)
        return -1;
    /* Round trip, so the server knows the subscription before the test publishes. */
    return natsConnection_FlushTimeout(c->nc, FLUSH_TIMEOUT_MS) == NATS_OK ? 0 : -1;
}

int bw_test_client_publish(bw_test_client_t *c, const char *subject, const char *data,
                           const char *const *headers)
{
    natsMsg *msg = NULL;
    natsStatus s = natsMsg_Create(&msg, subject, NULL, data, data != NULL ? (int)strlen(data) : 0);

    for (size_t i = 0; s == NATS_OK && headers != NULL && headers[i] != NULL; i += 2) {
        if (headers[i + 1] == NULL)
            s = NATS_INVALID_ARG; /* odd number of strings */
        else
            s = natsMsgHeader_Add(msg, headers[i], headers[i + 1]);
    }
    if (s == NATS_OK)
        s = natsConnection_PublishMsg(c->nc, msg);
    if (s == NATS_OK)
        s = natsConnection_FlushTimeout(c->nc, FLUSH_TIMEOUT_MS);
    natsMsg_Destroy(msg);
    return s == NATS_OK ? 0 : -1;
}

/* ---- queries ----------------------------------------------------------------------------- */

/* mu held. */
static int count_locked(bw_test_client_t *c, const char *subject)
{
    int n = 0;

    for (size_t i = 0; i < c->n_msgs; i++)
        n += subject_matches(subject, c->msgs[i]->subject);
    return n;
}

int bw_test_client_count(bw_test_client_t *c, const char *subject)
{
    int n;

    pthread_mutex_lock(&c->mu);
    n = count_locked(c, subject);
    pthread_mutex_unlock(&c->mu);
    return n;
}

int bw_test_client_wait_count(bw_test_client_t *c, const char *subject, int n, int timeout_ms)
{
    int64_t deadline = bw_test_now_ms() + timeout_ms;
    int got;

    pthread_mutex_lock(&c->mu);
    while ((got = count_locked(c, subject)) < n && bw_test_now_ms() < deadline)
        wait_until(c, deadline);
    pthread_mutex_unlock(&c->mu);
    return got;
}

bw_test_msg_t *bw_test_client_get(bw_test_client_t *c, const char *subject, int i)
{
    bw_test_msg_t *copy = NULL;

    pthread_mutex_lock(&c->mu);
    for (size_t k = 0; k < c->n_msgs && copy == NULL; k++) {
        if (subject_matches(subject, c->msgs[k]->subject) && i-- == 0)
            copy = msg_copy(c->msgs[k]);
    }
    pthread_mutex_unlock(&c->mu);
    return copy;
}

/* The object that carries assignment_id: the payload, or its data when it is an envelope. */
static const char *assignment_id_of(const json_t *payload)
{
    const json_t *body = payload;
    json_t *data = json_object_get(payload, "data");

    if (json_is_object(data) && json_object_get(payload, "kind") != NULL &&
        json_object_get(payload, "version") != NULL)
        body = data;
    return json_string_value(json_object_get(body, "assignment_id"));
}

/* mu held. Counts matches and copies the first one into *first when asked. */
static int find_locked(bw_test_client_t *c, const char *subject, const char *id, bw_test_msg_t **first)
{
    int n = 0;

    for (size_t k = 0; k < c->n_msgs; k++) {
        const char *aid = assignment_id_of(c->msgs[k]->json);
        if (!subject_matches(subject, c->msgs[k]->subject) || aid == NULL || strcmp(aid, id) != 0)
            continue;
        if (n++ == 0 && first != NULL)
            *first = msg_copy(c->msgs[k]);
    }
    return n;
}

int bw_test_client_find(bw_test_client_t *c, const char *subject, const char *assignment_id,
                        int wait_ms, bw_test_msg_t **first)
{
    int64_t deadline = bw_test_now_ms() + wait_ms;
    int n;

    if (first != NULL)
        *first = NULL;
    pthread_mutex_lock(&c->mu);
    while ((n = find_locked(c, subject, assignment_id, first)) == 0 && bw_test_now_ms() < deadline)
        wait_until(c, deadline);
    pthread_mutex_unlock(&c->mu);
    return n;
}

/* ---- teardown ---------------------------------------------------------------------------- */

/* Closes every subscription and the connection, then waits until no handler can run anymore. */
static void close_subscriptions(bw_test_client_t *c)
{
    int64_t deadline = bw_test_now_ms() + CLOSE_TIMEOUT_MS;

    for (size_t i = 0; i < c->n_subs; i++)
        natsSubscription_Unsubscribe(c->subs[i]);
    /* Closing the connection also closes subscriptions whose unsubscribe failed (e.g. while
       disconnected), so every completion callback fires. */
    natsConnection_Close(c->nc);
    pthread_mutex_lock(&c->mu);
    while (c->live_subs > 0 && bw_test_now_ms() < deadline)
        wait_until(c, deadline);
    if (c->live_subs > 0)
        fprintf(stderr, "bw test client: %d subscription(s) did not complete\n", c->live_subs);
    pthread_mutex_unlock(&c->mu);
    for (size_t i = 0; i < c->n_subs; i++)
        natsSubscription_Destroy(c->subs[i]);
}

void bw_test_client_destroy(bw_test_client_t *c)
{
    if (c == NULL)
        return;
    if (c->nc != NULL) {
        close_subscriptions(c);
        natsConnection_Destroy(c->nc);
    }
    for (size_t i = 0; i < c->n_msgs; i++)
        bw_test_msg_destroy(c->msgs[i]);
    free(c->msgs);
    free(c->subs);
    pthread_cond_destroy(&c->cv);
    pthread_mutex_destroy(&c->mu);
    free(c);
}
