/*
 * PostgreSQL pools on the loop (see pgpool.h).
 *
 * Invariants: a connection is CONNECTING (opened for the first wait of its pool), IDLE (in p->idle),
 * BUSY (given to a caller) or gone; a pool never has more than max connections open; waits are served
 * in order by dispatch(), which runs from a zero timer so that acquire callbacks never run inside
 * bw_pg_acquire. A connection's socket is watched by a poll handle allocated on its own (libpq may
 * change sockets while connecting), closed with uv_close and freed in its close callback.
 */
#include "net/pgpool.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/list.h"
#include "util/xalloc.h"

/* Session settings every connection gets, which net/pgvalue.c relies on. */
#define SESSION_OPTIONS                                                                                      \
    "-c DateStyle=ISO,YMD -c TimeZone=UTC -c IntervalStyle=iso_8601 -c extra_float_digits=3 "                \
    "-c bytea_output=hex"

typedef enum { C_CONNECTING, C_IDLE, C_BUSY } cstate_t;

typedef struct watch {
    uv_poll_t h;
    bw_pg_conn_t *c; /* NULL once the connection let go of it */
} watch_t;

struct bw_pg_conn {
    bw_pg_pool_t *pool;
    PGconn *pq;
    watch_t *watch;
    int fd;
    cstate_t state;
    bw_list_t link; /* p->idle while idle */
    uint64_t idle_since;
    bool broken;
    int64_t timeout_ms; /* statement_timeout of the session, as bw_pg_conn_set_timeout recorded it */
    /* the query running, if any */
    bw_pg_result_cb qcb;
    void *qud;
};

struct bw_pg_wait {
    bw_list_t link; /* p->waits */
    bw_pg_pool_t *pool;
    bw_pg_acquire_cb cb;
    void *ud;
};

struct bw_pg_pool {
    uv_loop_t *loop;
    char *dsn;
    int max, open, connecting;
    int closing; /* timers still to close at shutdown */
    int64_t idle_ms;
    bw_list_t idle, waits;
    uv_timer_t kick, reaper;
    bw_pg_pool_t *next;
};

static bw_pg_pool_t *pools;

static void dispatch(bw_pg_pool_t *p);
static void on_kick(uv_timer_t *t);
static void on_reap(uv_timer_t *t);

static void kick(bw_pg_pool_t *p)
{
    uv_timer_start(&p->kick, on_kick, 0, 0);
}

/* ---- sockets ---- */

static void on_watch_closed(uv_handle_t *h)
{
    free(h->data);
}

static void unwatch(bw_pg_conn_t *c)
{
    if (c->watch == NULL)
        return;
    c->watch->c = NULL;
    uv_poll_stop(&c->watch->h);
    uv_close((uv_handle_t *)&c->watch->h, on_watch_closed);
    c->watch = NULL;
    c->fd = -1;
}

static void on_io(uv_poll_t *h, int status, int events);

/* Watches the connection's socket for events (re-made when libpq changed sockets). */
static void watch(bw_pg_conn_t *c, int events)
{
    int fd = PQsocket(c->pq);
    if (c->watch != NULL && fd != c->fd)
        unwatch(c);
    if (c->watch == NULL) {
        watch_t *w = bw_calloc(1, sizeof *w);
        w->c = c;
        w->h.data = w;
        if (fd < 0 || uv_poll_init_socket(c->pool->loop, &w->h, fd) != 0) {
            free(w);
            c->broken = true;
            return;
        }
        c->watch = w;
        c->fd = fd;
    }
    uv_poll_start(&c->watch->h, events, on_io);
}

/* ---- connections ---- */

static void conn_close(bw_pg_conn_t *c)
{
    bw_pg_pool_t *p = c->pool;
    unwatch(c);
    if (c->state == C_IDLE)
        bw_list_remove(&c->link);
    if (c->state == C_CONNECTING)
        p->connecting--;
    PQfinish(c->pq);
    p->open--;
    free(c);
    kick(p); /* a slot is free for a waiting job */
}

/* The first waiting job gets the connection; with none, it goes idle. */
static void hand_over(bw_pg_conn_t *c)
{
    bw_pg_pool_t *p = c->pool;
    if (!bw_list_empty(&p->waits)) {
        bw_pg_wait_t *w = bw_list_entry(bw_list_shift(&p->waits), bw_pg_wait_t, link);
        c->state = C_BUSY;
        bw_pg_acquire_cb cb = w->cb;
        void *ud = w->ud;
        free(w);
        cb(ud, c, NULL);
        return;
    }
    c->state = C_IDLE;
    c->idle_since = uv_now(p->loop);
    bw_list_push(&p->idle, &c->link);
    if (!uv_is_active((uv_handle_t *)&p->reaper) && p->idle_ms > 0)
        uv_timer_start(&p->reaper, on_reap, (uint64_t)p->idle_ms, 0);
}

/* A connection attempt failed: the first waiting job learns why (one attempt per job). */
static void connect_failed(bw_pg_conn_t *c)
{
    bw_pg_pool_t *p = c->pool;
    char msg[512];
    snprintf(msg, sizeof msg, "%s", PQerrorMessage(c->pq));
    for (size_t n = strlen(msg); n > 0 && (msg[n - 1] == '\n' || msg[n - 1] == ' '); n--)
        msg[n - 1] = '\0';
    conn_close(c);
    if (!bw_list_empty(&p->waits)) {
        bw_pg_wait_t *w = bw_list_entry(bw_list_shift(&p->waits), bw_pg_wait_t, link);
        bw_pg_acquire_cb cb = w->cb;
        void *ud = w->ud;
        free(w);
        cb(ud, NULL, msg);
    }
}

static void connect_step(bw_pg_conn_t *c)
{
    switch (PQconnectPoll(c->pq)) {
    case PGRES_POLLING_READING:
        watch(c, UV_READABLE);
        break;
    case PGRES_POLLING_WRITING:
        watch(c, UV_WRITABLE);
        break;
    case PGRES_POLLING_OK:
        c->pool->connecting--;
        PQsetnonblocking(c->pq, 1);
        watch(c, UV_READABLE); /* notices and a server closing the connection */
        hand_over(c);
        return;
    default:
        connect_failed(c);
        return;
    }
    if (c->broken)
        connect_failed(c);
}

static void open_conn(bw_pg_pool_t *p)
{
    static const char *const keys[] = {"dbname", "options", "client_encoding", "application_name", NULL};
    const char *const values[] = {p->dsn, SESSION_OPTIONS, "UTF8", "beamline-worker", NULL};
    bw_pg_conn_t *c = bw_calloc(1, sizeof *c);
    c->pool = p;
    c->fd = -1;
    c->state = C_CONNECTING;
    c->pq = PQconnectStartParams(keys, values, 1);
    p->open++;
    p->connecting++;
    if (c->pq == NULL || PQstatus(c->pq) == CONNECTION_BAD) {
        if (c->pq == NULL)
            c->pq = PQconnectStart(""); /* for conn_close's PQfinish and an error message */
        connect_failed(c);
        return;
    }
    connect_step(c);
}

/* ---- queries ---- */

static void fail_query(bw_pg_conn_t *c, const char *why)
{
    bw_pg_result_cb cb = c->qcb;
    c->qcb = NULL;
    c->broken = true;
    if (cb != NULL)
        cb(c->qud, NULL, why);
}

/* Reads what arrived and hands over every complete result. */
static void query_input(bw_pg_conn_t *c)
{
    if (!PQconsumeInput(c->pq)) {
        fail_query(c, PQerrorMessage(c->pq));
        return;
    }
    while (c->qcb != NULL && !PQisBusy(c->pq)) {
        PGresult *res = PQgetResult(c->pq);
        bw_pg_result_cb cb = c->qcb;
        if (res == NULL) {
            c->qcb = NULL;
            watch(c, UV_READABLE);
            cb(c->qud, NULL, NULL);
            return;
        }
        cb(c->qud, res, NULL);
        PQclear(res);
    }
}

static void on_io(uv_poll_t *h, int status, int events)
{
    watch_t *w = h->data;
    bw_pg_conn_t *c = w->c;
    if (c == NULL)
        return;
    if (c->state == C_CONNECTING) {
        connect_step(c);
        return;
    }
    if (c->qcb == NULL) { /* idle or between queries: the server may be telling us it goes away */
        if (!PQconsumeInput(c->pq) || PQstatus(c->pq) == CONNECTION_BAD)
            c->broken = true;
        if (c->broken && c->state == C_IDLE)
            conn_close(c);
        return;
    }
    if (events & UV_WRITABLE) {
        int rc = PQflush(c->pq);
        if (rc < 0) {
            fail_query(c, PQerrorMessage(c->pq));
            return;
        }
        if (rc == 0)
            watch(c, UV_READABLE);
    }
    if ((events & UV_READABLE) || status < 0)
        query_input(c);
}

int bw_pg_query(bw_pg_conn_t *c, const char *sql, int nparams, const char *const *params, bw_pg_result_cb cb,
                void *ud)
{
    if (c->broken || !PQsendQueryParams(c->pq, sql, nparams, NULL, params, NULL, NULL, 0))
        return -1;
    c->qcb = cb;
    c->qud = ud;
    int rc = PQflush(c->pq);
    if (rc < 0) {
        c->qcb = NULL;
        return -1;
    }
    watch(c, rc == 1 ? UV_READABLE | UV_WRITABLE : UV_READABLE);
    return 0;
}

int64_t bw_pg_conn_timeout(const bw_pg_conn_t *c)
{
    return c->timeout_ms;
}

void bw_pg_conn_set_timeout(bw_pg_conn_t *c, int64_t ms)
{
    c->timeout_ms = ms;
}

typedef struct cancel_work {
    uv_work_t w;
    PGcancel *k;
} cancel_work_t;

static void cancel_on_pool(uv_work_t *w)
{
    char err[256];
    PQcancel(((cancel_work_t *)w)->k, err, sizeof err);
}

static void cancel_done(uv_work_t *w, int status)
{
    PQfreeCancel(((cancel_work_t *)w)->k);
    free(w);
}

/* PQcancel opens a connection of its own and waits for the server: on the thread pool, not the loop
   (a far or unreachable server would stall every job). The PGcancel copy outlives the connection. */
void bw_pg_cancel(bw_pg_conn_t *c)
{
    PGcancel *k = PQgetCancel(c->pq);
    if (k == NULL)
        return;
    cancel_work_t *cw = bw_calloc(1, sizeof *cw);
    cw->k = k;
    if (uv_queue_work(c->pool->loop, &cw->w, cancel_on_pool, cancel_done) != 0) {
        PQfreeCancel(k);
        free(cw);
    }
}

void bw_pg_release(bw_pg_conn_t *c, bool broken)
{
    c->qcb = NULL;
    if (broken || c->broken || PQstatus(c->pq) != CONNECTION_OK ||
        PQtransactionStatus(c->pq) != PQTRANS_IDLE) {
        c->state = C_BUSY;
        conn_close(c);
        return;
    }
    hand_over(c);
}

/* ---- pools ---- */

static void on_kick(uv_timer_t *t)
{
    dispatch(t->data);
}

static void on_reap(uv_timer_t *t)
{
    bw_pg_pool_t *p = t->data;
    uint64_t now = uv_now(p->loop), next = 0;
    bw_list_t *l = p->idle.next;
    while (l != &p->idle) {
        bw_pg_conn_t *c = bw_list_entry(l, bw_pg_conn_t, link);
        l = l->next;
        if (now - c->idle_since >= (uint64_t)p->idle_ms)
            conn_close(c);
        else if (next == 0 || c->idle_since + (uint64_t)p->idle_ms - now < next)
            next = c->idle_since + (uint64_t)p->idle_ms - now;
    }
    if (next > 0)
        uv_timer_start(&p->reaper, on_reap, next, 0);
}

/* Serves waits from idle connections, then opens connections for the rest while slots are free. */
static void dispatch(bw_pg_pool_t *p)
{
    while (!bw_list_empty(&p->waits) && !bw_list_empty(&p->idle)) {
        bw_pg_conn_t *c = bw_list_entry(bw_list_shift(&p->idle), bw_pg_conn_t, link);
        c->state = C_BUSY;
        hand_over(c);
    }
    for (;;) { /* counted again each time: an attempt that fails at once takes its wait along */
        int pending = 0;
        for (bw_list_t *l = p->waits.next; l != &p->waits; l = l->next)
            pending++;
        if (pending <= p->connecting || p->open >= p->max)
            break;
        open_conn(p);
    }
}

bw_pg_pool_t *bw_pg_pool(uv_loop_t *loop, const char *dsn, int max, int64_t idle_ms)
{
    for (bw_pg_pool_t *p = pools; p != NULL; p = p->next)
        if (strcmp(p->dsn, dsn) == 0)
            return p;
    bw_pg_pool_t *p = bw_calloc(1, sizeof *p);
    p->loop = loop;
    p->dsn = bw_strdup(dsn);
    p->max = max > 0 ? max : 1;
    p->idle_ms = idle_ms;
    bw_list_init(&p->idle);
    bw_list_init(&p->waits);
    uv_timer_init(loop, &p->kick);
    uv_timer_init(loop, &p->reaper);
    p->kick.data = p->reaper.data = p;
    p->next = pools;
    pools = p;
    return p;
}

bw_pg_wait_t *bw_pg_acquire(bw_pg_pool_t *p, bw_pg_acquire_cb cb, void *ud)
{
    bw_pg_wait_t *w = bw_calloc(1, sizeof *w);
    w->pool = p;
    w->cb = cb;
    w->ud = ud;
    bw_list_push(&p->waits, &w->link);
    kick(p);
    return w;
}

void bw_pg_acquire_cancel(bw_pg_wait_t *w)
{
    bw_list_remove(&w->link);
    free(w);
}

static void on_pool_closed(uv_handle_t *h)
{
    bw_pg_pool_t *p = h->data;
    if (--p->closing == 0) { /* the kick and reaper timers are both closed */
        free(p->dsn);
        free(p);
    }
}

void bw_pg_shutdown(void)
{
    while (pools != NULL) {
        bw_pg_pool_t *p = pools;
        pools = p->next;
        while (!bw_list_empty(&p->waits))
            free(bw_list_entry(bw_list_shift(&p->waits), bw_pg_wait_t, link));
        while (!bw_list_empty(&p->idle))
            conn_close(bw_list_entry(p->idle.next, bw_pg_conn_t, link));
        p->closing = 2;
        uv_close((uv_handle_t *)&p->kick, on_pool_closed);
        uv_close((uv_handle_t *)&p->reaper, on_pool_closed);
    }
}
