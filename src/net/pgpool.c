/*
 * PostgreSQL pools on the loop (see pgpool.h).
 *
 * Invariants: a connection is CONNECTING (opened for the first wait of its pool), IDLE (in p->idle),
 * BUSY (given to a caller), PIPE (in pipeline mode, in p->piped, with the requests it was sent in
 * c->sent, oldest first) or gone; a pool never has more than max connections open; waits (acquires
 * and requests, in one queue) are served in order by dispatch(), which runs from a zero timer so that
 * callbacks never run inside bw_pg_acquire or bw_pg_submit. A connection's socket is watched by a poll
 * handle allocated on its own (libpq may change sockets while connecting), closed with uv_close and
 * freed in its close callback.
 *
 * A pipelined request is its statement and a Sync: the server runs it in its own implicit transaction,
 * and its results end with PGRES_PIPELINE_SYNC, after the commit, which is when its caller hears that
 * it is over. Before it, when the session's statement_timeout is not the one it wants, the pool sends
 * a SET of its own (its own Sync too). A withdrawn request stays in c->sent (its results are dropped);
 * when it is the one the server runs and goes on past CANCEL_AFTER_MS, the pool sends a cancel request.
 * The server cancels whatever runs when the request arrives: if the withdrawn statement ended just
 * before, the next one is hit (SQLSTATE 57014 within CANCEL_WINDOW_MS); that one was rolled back with
 * its transaction, and is sent again, once.
 */
#include "net/pgpool.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "net/egress.h"
#include "obs/metrics.h"
#include "util/buf.h"
#include "util/clock.h"
#include "util/list.h"
#include "util/xalloc.h"

#define PIPE_DEPTH 16       /* requests on one connection at most */
#define PIPE_HEAD_AGE_MS 10 /* joining a connection whose running statement is younger than this */
#define PIPE_MAX_SVC_MS 5   /* ... while the pool's statements take less than this on average */
#define CANCEL_AFTER_MS 10  /* a withdrawn statement still running this long is cancelled */
#define CANCEL_WINDOW_MS 2000
#define STMT_CACHE 32   /* statements prepared per connection at most (least recently used go) */
#define PREPARE_AFTER 2 /* a statement's text is prepared on its second use on a connection */
#define STALE_MAX 8     /* prepared statements waiting for their DEALLOCATE */
#define MS 1000000ull

/* A statement text seen on a connection, and the name it is prepared under (0: not prepared). */
typedef struct stmt {
    uint64_t hash;
    char *sql;
    int nparams;
    unsigned name, uses;
    uint64_t last; /* c->clock at its last use */
} stmt_t;

/* Session settings every connection gets, which net/pgvalue.c relies on. */
#define SESSION_OPTIONS                                                                                      \
    "-c DateStyle=ISO,YMD -c TimeZone=UTC -c IntervalStyle=iso_8601 -c extra_float_digits=3 "                \
    "-c bytea_output=hex"

typedef enum { C_CONNECTING, C_IDLE, C_BUSY, C_PIPE } cstate_t;

/* What a pool's queue holds: an acquire or a request (the first member of both). */
typedef struct qnode {
    bw_list_t link;
    bool is_req;
} qnode_t;

typedef struct watch {
    uv_poll_t h;
    bw_pg_conn_t *c; /* NULL once the connection let go of it */
} watch_t;

/* A host name being resolved for a connection. */
typedef struct resolve {
    uv_getaddrinfo_t req;
    struct bw_pg_conn *c; /* NULL once the connection went away */
} resolve_t;

struct bw_pg_conn {
    bw_pg_pool_t *pool;
    PGconn *pq;
    /* connecting: the host names resolved so far (off the loop), and what connecting to them takes */
    resolve_t *resolving;
    int host_next, hosts_kept; /* the next host of the string to resolve; how many were kept */
    bw_buf_t hosts, addrs, ports;
    char *resolve_error;
    watch_t *watch;
    int fd;
    int events; /* what the poll handle watches */
    cstate_t state;
    bw_list_t link; /* p->idle while idle, p->piped while in pipeline mode */
    uint64_t idle_since;
    bool broken;
    bool sock_error;    /* libuv reported an error on the socket (and stopped polling it) */
    int64_t timeout_ms; /* statement_timeout of the session, as recorded (-1: unknown) */
    /* the query running, if any (BUSY) */
    bw_pg_result_cb qcb;
    void *qud;
    /* PIPE */
    bw_list_t sent;
    int depth;
    uint64_t cancel_target;   /* the request a cancel request was sent for */
    uint64_t cancel_until_ns; /* until when a 57014 may be that cancel's */
    /* statements prepared by pipelined requests (bw_s<name>) */
    stmt_t stmts[STMT_CACHE];
    int nstmts, nstale;
    unsigned stale[STALE_MAX]; /* names to DEALLOCATE before the next request */
    bool discard;              /* DEALLOCATE ALL before the next request (the session lost track) */
    unsigned next_name;
    uint64_t clock;
};

struct bw_pg_wait {
    qnode_t q; /* p->waits */
    bw_pg_pool_t *pool;
    bw_pg_acquire_cb cb;
    void *ud;
};

struct bw_pg_req {
    qnode_t q; /* p->waits while queued, c->sent once sent */
    bw_pg_pool_t *pool;
    bw_pg_conn_t *conn; /* once sent */
    uint64_t id;
    const char *sql; /* the caller's, or own_sql */
    char *own_sql;
    int nparams;
    const char *const *params;
    int64_t timeout_ms;
    bw_pg_result_cb cb; /* NULL once withdrawn, and for our own statements */
    void *ud;
    bool internal, cancelled, resend, resent;
    int nprep;        /* 1: a Parse (prepare) comes before the statement */
    int phase;        /* results of how many of its statements have ended (a NULL from PQgetResult each) */
    unsigned stmt;    /* the prepared statement it runs, 0: none */
    uint64_t head_ns; /* since when the server runs it (or it was sent to an idle connection) */
};

struct bw_pg_pool {
    uv_loop_t *loop;
    char *dsn;
    int max, open, connecting;
    int waiting; /* as dispatch() last counted */
    int closing; /* timers still to close at shutdown */
    int64_t idle_ms;
    bw_list_t idle, piped, waits;
    uv_timer_t kick, reaper, stall;
    /* the connection string's hosts, resolved before each connection attempt (libpq would resolve them
       on the loop); the policy, for connection strings that came with a job */
    char **hosts, **ports;
    int nhosts, nports;
    bool resolve;
    const bw_egress_t *policy;
    char *policy_error; /* a hostaddr of the string that the policy refuses */
    bw_list_t opening;  /* connections CONNECTING */
    uint64_t svc_ns;    /* moving average of a pipelined statement's time at the head of its connection */
    uint64_t next_id;
    bw_pg_stats_t stats; /* the counters */
    bw_pg_pool_t *next;
};

static bw_pg_pool_t *pools;
static int64_t open_total, waiting_total; /* for the gauges, over every pool */

static void count_open(bw_pg_pool_t *p, int delta)
{
    p->open += delta;
    open_total += delta;
    bw_metrics_set(BW_G_SQL_CONNECTIONS, open_total);
}

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
    c->events = 0;
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
        c->events = 0;
    }
    if (events != c->events) { /* uv_poll_start costs an epoll_ctl or two even when nothing changes */
        uv_poll_start(&c->watch->h, events, on_io);
        c->events = events;
    }
}

/* ---- connections ---- */

static void free_req(bw_pg_req_t *r)
{
    free(r->own_sql);
    free(r);
}

/* Closes the connection; requests still in c->sent are freed without a callback. */
static void conn_close(bw_pg_conn_t *c)
{
    bw_pg_pool_t *p = c->pool;
    unwatch(c);
    if (c->state == C_IDLE || c->state == C_PIPE || c->state == C_CONNECTING)
        bw_list_remove(&c->link);
    if (c->resolving != NULL) { /* its callback only frees it */
        c->resolving->c = NULL;
        uv_cancel((uv_req_t *)&c->resolving->req);
    }
    if (c->hosts.p != NULL) {
        bw_buf_dispose(&c->hosts);
        bw_buf_dispose(&c->addrs);
        bw_buf_dispose(&c->ports);
    }
    free(c->resolve_error);
    for (bw_list_t *n; (n = bw_list_shift(&c->sent)) != NULL;)
        free_req(bw_list_entry(n, bw_pg_req_t, q.link));
    for (int i = 0; i < c->nstmts; i++)
        free(c->stmts[i].sql);
    if (c->state == C_CONNECTING)
        p->connecting--;
    PQfinish(c->pq);
    count_open(p, -1);
    free(c);
    kick(p); /* a slot is free for a waiting job */
}

/* The first waiting job gets the connection; with none, it goes idle. */
static void hand_over(bw_pg_conn_t *c)
{
    bw_pg_pool_t *p = c->pool;
    if (!bw_list_empty(&p->waits)) {
        qnode_t *q = bw_list_entry(p->waits.next, qnode_t, link);
        if (!q->is_req) {
            bw_pg_wait_t *w = (bw_pg_wait_t *)q;
            bw_list_remove(&q->link);
            c->state = C_BUSY;
            bw_pg_acquire_cb cb = w->cb;
            void *ud = w->ud;
            free(w);
            cb(ud, c, NULL);
            return;
        }
        kick(p); /* a request: dispatch() sends it, outside the caller's call */
    }
    c->state = C_IDLE;
    c->idle_since = uv_now(p->loop);
    bw_list_push(&p->idle, &c->link);
    if (!uv_is_active((uv_handle_t *)&p->reaper) && p->idle_ms > 0)
        uv_timer_start(&p->reaper, on_reap, (uint64_t)p->idle_ms, 0);
}

/* A connection attempt failed: the first waiting job learns why (why, or libpq's message; one attempt
   per job). */
static void connect_failed(bw_pg_conn_t *c, const char *why)
{
    bw_pg_pool_t *p = c->pool;
    char msg[512];
    snprintf(msg, sizeof msg, "%s",
             why != NULL     ? why
             : c->pq != NULL ? PQerrorMessage(c->pq)
                             : "out of memory");
    for (size_t n = strlen(msg); n > 0 && (msg[n - 1] == '\n' || msg[n - 1] == ' '); n--)
        msg[n - 1] = '\0';
    conn_close(c);
    bw_metrics_inc(BW_C_SQL_CONNECT_FAILURES);
    qnode_t *q = bw_list_empty(&p->waits) ? NULL : bw_list_entry(bw_list_shift(&p->waits), qnode_t, link);
    if (q != NULL && q->is_req) {
        bw_pg_req_t *r = (bw_pg_req_t *)q;
        bw_pg_result_cb cb = r->cb;
        void *ud = r->ud;
        free_req(r);
        cb(ud, NULL, msg);
    } else if (q != NULL) {
        bw_pg_wait_t *w = (bw_pg_wait_t *)q;
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
        bw_list_remove(&c->link); /* off p->opening */
        c->state = C_BUSY;
        PQsetnonblocking(c->pq, 1);
        watch(c, UV_READABLE); /* notices and a server closing the connection */
        hand_over(c);
        return;
    default:
        connect_failed(c, NULL);
        return;
    }
    if (c->broken)
        connect_failed(c, NULL);
}

/* Starts libpq's connection, to the addresses resolved (when the string's hosts needed resolving). */
static void start_connect(bw_pg_conn_t *c)
{
    bw_pg_pool_t *p = c->pool;
    const char *keys[12] = {"dbname", "options", "client_encoding", "application_name"};
    const char *values[12] = {p->dsn, SESSION_OPTIONS, "UTF8",
                              p->policy != NULL ? "beamline-worker/job-dsn" : "beamline-worker"};
    int n = 4;
    if (p->policy != NULL) { /* a job's string: not the worker's passwords (~/.pgpass), nor its client
                                 certificate (~/.postgresql/postgresql.crt: a path that cannot exist) */
        keys[n] = "passfile";
        values[n++] = "/dev/null";
        keys[n] = "sslcert";
        values[n++] = "/dev/null/none";
        keys[n] = "sslkey";
        values[n++] = "/dev/null/none";
    }
    if (p->resolve) {
        keys[n] = "host";
        values[n++] = c->hosts.p;
        keys[n] = "hostaddr";
        values[n++] = c->addrs.p;
        if (p->nports > 1) {
            keys[n] = "port";
            values[n++] = c->ports.p;
        }
    }
    keys[n] = values[n] = NULL;
    c->pq = PQconnectStartParams(keys, values, 1);
    if (c->pq == NULL || PQstatus(c->pq) == CONNECTION_BAD) {
        connect_failed(c, NULL);
        return;
    }
    connect_step(c);
}

/* ---- host names, resolved on the thread pool ---- */

static void resolve_next(bw_pg_conn_t *c);

/* Keeps host i, to be reached at addr ("" for libpq to use the host itself: a socket path). */
static void keep_host(bw_pg_conn_t *c, int i, const char *addr)
{
    bw_pg_pool_t *p = c->pool;
    if (c->hosts_kept > 0) {
        bw_buf_puts(&c->hosts, ",");
        bw_buf_puts(&c->addrs, ",");
        if (p->nports > 1)
            bw_buf_puts(&c->ports, ",");
    }
    bw_buf_puts(&c->hosts, p->hosts[i]);
    bw_buf_puts(&c->addrs, addr);
    if (p->nports > 1)
        bw_buf_puts(&c->ports, p->ports[i]);
    c->hosts_kept++;
}

static void set_resolve_error(bw_pg_conn_t *c, char *msg)
{
    free(c->resolve_error);
    c->resolve_error = msg;
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    resolve_t *r = (resolve_t *)req;
    bw_pg_conn_t *c = r->c;
    free(r);
    if (c == NULL) {
        uv_freeaddrinfo(res);
        return;
    }
    c->resolving = NULL;
    bw_pg_pool_t *p = c->pool;
    int i = c->host_next;
    const char *refused = NULL;
    char addr[64] = "";
    for (struct addrinfo *ai = status == 0 ? res : NULL; ai != NULL && addr[0] == '\0'; ai = ai->ai_next) {
        const char *why = p->policy != NULL ? bw_egress_check(p->policy, ai->ai_addr, p->hosts[i]) : NULL;
        if (why != NULL)
            refused = why;
        else if (ai->ai_family == AF_INET)
            uv_ip4_name((const struct sockaddr_in *)ai->ai_addr, addr, sizeof addr);
        else if (ai->ai_family == AF_INET6)
            uv_ip6_name((const struct sockaddr_in6 *)ai->ai_addr, addr, sizeof addr);
    }
    uv_freeaddrinfo(res);
    if (addr[0] != '\0')
        keep_host(c, i, addr);
    else if (status != 0)
        set_resolve_error(c,
                          bw_asprintf("could not resolve host \"%s\": %s", p->hosts[i], uv_strerror(status)));
    else
        set_resolve_error(c, bw_asprintf("host \"%s\" refused by the egress policy: %s", p->hosts[i],
                                         refused != NULL ? refused : "no usable address"));
    c->host_next++;
    resolve_next(c);
}

/* Host by host (from c->host_next): names are
   resolved with uv_getaddrinfo, addresses and socket paths taken as they are (the policy judges every
   address); then libpq connects to what was kept. */
static void resolve_next(bw_pg_conn_t *c)
{
    bw_pg_pool_t *p = c->pool;
    for (int i = c->host_next; i < p->nhosts; i = c->host_next) {
        const char *h = p->hosts[i];
        struct sockaddr_storage ss;
        bool numeric = uv_ip4_addr(h, 5432, (struct sockaddr_in *)&ss) == 0 ||
                       uv_ip6_addr(h, 5432, (struct sockaddr_in6 *)&ss) == 0;
        if (h[0] == '/' || h[0] == '@' || h[0] == '\0') { /* a Unix socket: not for job strings */
            if (p->policy == NULL)
                keep_host(c, i, "");
            else
                set_resolve_error(c,
                                  bw_strdup("Unix-domain sockets are refused for a job's connection string"));
        } else if (numeric) {
            const char *why =
                p->policy != NULL ? bw_egress_check(p->policy, (struct sockaddr *)&ss, NULL) : NULL;
            if (why == NULL)
                keep_host(c, i, h);
            else
                set_resolve_error(c, bw_asprintf("host %s refused by the egress policy: %s", h, why));
        } else {
            resolve_t *r = bw_calloc(1, sizeof *r);
            struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
            r->c = c;
            if (uv_getaddrinfo(p->loop, &r->req, on_resolved, h, NULL, &hints) == 0) {
                c->resolving = r;
                return;
            }
            free(r);
            set_resolve_error(c, bw_asprintf("could not resolve host \"%s\"", h));
        }
        c->host_next++;
    }
    if (c->hosts_kept == 0) {
        connect_failed(c, c->resolve_error != NULL ? c->resolve_error : "no host to connect to");
        return;
    }
    start_connect(c);
}

static void open_conn(bw_pg_pool_t *p)
{
    bw_pg_conn_t *c = bw_calloc(1, sizeof *c);
    c->pool = p;
    c->fd = -1;
    bw_list_init(&c->sent);
    c->state = C_CONNECTING;
    bw_list_push(&p->opening, &c->link);
    count_open(p, 1);
    p->connecting++;
    if (p->policy_error != NULL) {
        connect_failed(c, p->policy_error);
        return;
    }
    if (!p->resolve) {
        start_connect(c);
        return;
    }
    bw_buf_init(&c->hosts, 64);
    bw_buf_init(&c->addrs, 64);
    bw_buf_init(&c->ports, 16);
    resolve_next(c);
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
    if (c->qcb != NULL && c->sock_error) /* the rest will never come */
        fail_query(c, "the connection to the server was lost");
}

/* ---- pipelined requests ---- */

static void on_stall(uv_timer_t *t);

static bw_pg_req_t *head_of(bw_pg_conn_t *c)
{
    return bw_list_empty(&c->sent) ? NULL : bw_list_entry(c->sent.next, bw_pg_req_t, q.link);
}

static void watch_stall(bw_pg_pool_t *p)
{
    if (!uv_is_active((uv_handle_t *)&p->stall))
        uv_timer_start(&p->stall, on_stall, CANCEL_AFTER_MS, 0);
}

/* The connection failed: its requests learn why, it is closed. */
static void pipe_fail(bw_pg_conn_t *c, const char *why)
{
    char msg[512];
    snprintf(msg, sizeof msg, "%s", why != NULL && *why ? why : "the connection failed");
    for (size_t n = strlen(msg); n > 0 && (msg[n - 1] == '\n' || msg[n - 1] == ' '); n--)
        msg[n - 1] = '\0';
    bw_list_t gone;
    bw_list_init(&gone);
    for (bw_list_t *n; (n = bw_list_shift(&c->sent)) != NULL;)
        bw_list_push(&gone, n);
    c->depth = 0;
    conn_close(c);
    for (bw_list_t *n; (n = bw_list_shift(&gone)) != NULL;) {
        bw_pg_req_t *r = bw_list_entry(n, bw_pg_req_t, q.link);
        bw_pg_result_cb cb = r->cb;
        void *ud = r->ud;
        free_req(r);
        if (cb != NULL)
            cb(ud, NULL, msg);
    }
}

/* ---- prepared statements ---- */

static uint64_t stmt_hash(const char *sql, int nparams)
{
    uint64_t h = 1469598103934665603ull ^ (uint64_t)nparams; /* FNV-1a */
    for (const unsigned char *p = (const unsigned char *)sql; *p; p++)
        h = (h ^ *p) * 1099511628211ull;
    return h;
}

/* Forgets a prepared statement; DEALLOCATE follows unless the session lost it anyway. */
static void stmt_drop(bw_pg_conn_t *c, int i, bool deallocate)
{
    if (deallocate && c->stmts[i].name != 0) {
        if (c->nstale < STALE_MAX)
            c->stale[c->nstale++] = c->stmts[i].name;
        else
            c->discard = true;
    }
    free(c->stmts[i].sql);
    c->stmts[i] = c->stmts[--c->nstmts];
}

static int stmt_find(const bw_pg_conn_t *c, unsigned name)
{
    for (int i = 0; i < c->nstmts; i++)
        if (c->stmts[i].name == name)
            return i;
    return -1;
}

/* The connection's entry for r's text (made, in place of the least recently used, when new). */
static stmt_t *stmt_for(bw_pg_conn_t *c, const bw_pg_req_t *r)
{
    uint64_t h = stmt_hash(r->sql, r->nparams);
    int lru = 0;
    c->clock++;
    for (int i = 0; i < c->nstmts; i++) {
        stmt_t *st = &c->stmts[i];
        if (st->hash == h && st->nparams == r->nparams && strcmp(st->sql, r->sql) == 0) {
            st->uses++;
            st->last = c->clock;
            return st;
        }
        if (st->last < c->stmts[lru].last)
            lru = i;
    }
    if (c->nstmts == STMT_CACHE)
        stmt_drop(c, lru, true);
    stmt_t *st = &c->stmts[c->nstmts++];
    *st = (stmt_t){.hash = h, .sql = bw_strdup(r->sql), .nparams = r->nparams, .uses = 1, .last = c->clock};
    return st;
}

/* ---- sending ---- */

/* Adds r's statement (prepared when its text comes back: Parse, then Bind/Execute of the named
   statement) and a Sync to the connection's output. */
static bool send_one(bw_pg_conn_t *c, bw_pg_req_t *r, uint64_t now)
{
    stmt_t *st = r->internal ? NULL : stmt_for(c, r);
    char name[24];
    r->nprep = 0;
    r->phase = 0;
    r->stmt = 0;
    if (st != NULL && st->name == 0 && st->uses >= PREPARE_AFTER) {
        st->name = ++c->next_name;
        r->nprep = 1;
    }
    if (st != NULL && st->name != 0) {
        r->stmt = st->name;
        snprintf(name, sizeof name, "bw_s%u", st->name);
        if ((r->nprep && !PQsendPrepare(c->pq, name, r->sql, r->nparams, NULL)) ||
            !PQsendQueryPrepared(c->pq, name, r->nparams, r->params, NULL, NULL, 0))
            return false;
    } else if (!PQsendQueryParams(c->pq, r->sql, r->nparams, NULL, r->params, NULL, NULL, 0)) {
        return false;
    }
    if (!PQpipelineSync(c->pq))
        return false;
    r->conn = c;
    if (bw_list_empty(&c->sent))
        r->head_ns = now;
    if (r->nprep > 0) {
        c->pool->stats.prepared++;
        bw_metrics_inc(BW_C_SQL_PREPARED);
    }
    bw_list_push(&c->sent, &r->q.link);
    c->depth++;
    return true;
}

/* Sends one statement of the pool's own before the requests (its results are only checked). */
static bool send_own(bw_pg_conn_t *c, char *sql, uint64_t now)
{
    bw_pg_req_t *own = bw_calloc(1, sizeof *own);
    own->pool = c->pool;
    own->internal = true;
    own->sql = own->own_sql = sql;
    if (send_one(c, own, now))
        return true;
    free_req(own);
    return false;
}

/* Sends r (taken off the queue) on c, in pipeline mode, after what the session needs first. */
static void pipe_send(bw_pg_conn_t *c, bw_pg_req_t *r, uint64_t now)
{
    bool ok = true;
    if (c->discard) {
        c->discard = false;
        c->nstale = 0;
        ok = send_own(c, bw_strdup("DEALLOCATE ALL"), now);
    }
    while (ok && c->nstale > 0)
        ok = send_own(c, bw_asprintf("DEALLOCATE bw_s%u", c->stale[--c->nstale]), now);
    if (ok && r->timeout_ms > 0 && c->timeout_ms != r->timeout_ms) {
        ok = send_own(c, bw_asprintf("SET statement_timeout = %lld", (long long)r->timeout_ms), now);
        if (ok)
            c->timeout_ms = r->timeout_ms;
    }
    if (ok)
        ok = send_one(c, r, now);
    int rc = ok ? PQflush(c->pq) : -1;
    if (rc < 0) {
        if (r->conn == NULL) /* not sent: back to the head of the queue, for another connection */
            bw_list_unshift(&c->pool->waits, &r->q.link);
        pipe_fail(c, PQerrorMessage(c->pq));
        kick(c->pool);
        return;
    }
    watch(c, rc == 1 ? UV_READABLE | UV_WRITABLE : UV_READABLE);
}

/* An idle connection goes into pipeline mode; false (and closed) if libpq refuses. */
static bool enter_pipe(bw_pg_conn_t *c)
{
    if (!PQenterPipelineMode(c->pq)) {
        c->state = C_BUSY;
        conn_close(c);
        return false;
    }
    c->state = C_PIPE;
    bw_list_push(&c->pool->piped, &c->link);
    return true;
}

/* A busy connection that a request may join (the least loaded), or NULL. */
static bw_pg_conn_t *pipe_for(bw_pg_pool_t *p, uint64_t now)
{
    if (p->svc_ns > PIPE_MAX_SVC_MS * MS)
        return NULL;
    bw_pg_conn_t *best = NULL;
    for (bw_list_t *l = p->piped.next; l != &p->piped; l = l->next) {
        bw_pg_conn_t *c = bw_list_entry(l, bw_pg_conn_t, link);
        bw_pg_req_t *h = head_of(c);
        if (c->depth >= PIPE_DEPTH || c->cancel_until_ns > now || c->broken ||
            (h != NULL && now - h->head_ns > PIPE_HEAD_AGE_MS * MS))
            continue;
        if (best == NULL || c->depth < best->depth)
            best = c;
    }
    return best;
}

/* One result of the request at the head. A 57014 that a cancel request meant for another statement
   caused, and a prepared statement the session no longer has as we know it, mark the request to be
   sent again (its transaction was rolled back). */
static void pipe_result(bw_pg_conn_t *c, bw_pg_req_t *r, PGresult *res)
{
    ExecStatusType st = PQresultStatus(res);
    const char *state = st == PGRES_FATAL_ERROR ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    if (state == NULL)
        state = "";
    if (r->phase < r->nprep) { /* the Parse of a statement being prepared */
        int i = stmt_find(c, r->stmt);
        if (st == PGRES_COMMAND_OK)
            return;
        if (i >= 0)
            stmt_drop(c, i, false);
        r->stmt = 0;
        if (strcmp(state, "42P05") == 0 && !r->resent) { /* a job prepared that name itself */
            c->discard = true;
            r->resend = true;
            return;
        }
    } else if (st == PGRES_PIPELINE_ABORTED) { /* the Execute after a failed Parse */
        return;
    }
    if (strcmp(state, "57014") == 0 && c->cancel_until_ns > bw_mono_ns()) {
        bool target = r->id == c->cancel_target;
        c->cancel_until_ns = 0; /* a cancel request stops one statement at most */
        if (!target && !r->internal && !r->resent) {
            r->resend = true;
            return;
        }
    }
    if (r->stmt != 0 && !r->resent && (strcmp(state, "26000") == 0 || strcmp(state, "0A000") == 0)) {
        /* 26000: the session's prepared statements went (a job ran DEALLOCATE or DISCARD); 0A000: a
           cached plan must not change its result type (the table changed) */
        bool all = state[0] == '2';
        for (int i = c->nstmts - 1; i >= 0; i--)
            if (all || c->stmts[i].name == r->stmt)
                stmt_drop(c, i, !all);
        c->discard |= all;
        r->resend = true;
        return;
    }
    if (r->internal) {
        if (st != PGRES_COMMAND_OK)
            c->timeout_ms = -1;
        return;
    }
    if (r->cb != NULL && !r->resend)
        r->cb(r->ud, res, NULL);
}

/* The head request's Sync arrived: it is over. */
static void pipe_complete(bw_pg_conn_t *c)
{
    bw_pg_pool_t *p = c->pool;
    bw_pg_req_t *r = head_of(c);
    uint64_t now = bw_mono_ns(), took = now - r->head_ns;
    bw_list_remove(&r->q.link);
    c->depth--;
    p->svc_ns = p->svc_ns == 0 ? took : (p->svc_ns * 7 + took) / 8;
    bw_pg_req_t *next = head_of(c);
    if (next != NULL) {
        next->head_ns = now;
        if (next->cb == NULL && !next->internal)
            watch_stall(p);
    }
    if (r->resend && r->cb != NULL) {
        r->conn = NULL;
        r->resend = false;
        r->resent = true;
        p->stats.resent++;
        bw_metrics_inc(BW_C_SQL_RESENT);
        bw_list_unshift(&p->waits, &r->q.link);
        kick(p);
        return;
    }
    bw_pg_result_cb cb = r->cb;
    void *ud = r->ud;
    free_req(r);
    if (cb != NULL)
        cb(ud, NULL, NULL);
}

/* Reads what arrived and hands over every complete result. Returns whether c is still open. */
static bool pipe_input(bw_pg_conn_t *c)
{
    bw_pg_pool_t *p = c->pool;
    if (!PQconsumeInput(c->pq)) {
        pipe_fail(c, PQerrorMessage(c->pq));
        kick(p);
        return false;
    }
    while (!bw_list_empty(&c->sent) && !PQisBusy(c->pq)) {
        bw_pg_req_t *r = head_of(c);
        PGresult *res = PQgetResult(c->pq);
        if (res == NULL) { /* the end of a statement's results; after the last, its Sync follows */
            if (r->phase > r->nprep)
                break;
            r->phase++;
            continue;
        }
        if (PQresultStatus(res) == PGRES_PIPELINE_SYNC)
            pipe_complete(c);
        else
            pipe_result(c, r, res);
        PQclear(res);
    }
    if (PQstatus(c->pq) != CONNECTION_OK) {
        pipe_fail(c, PQerrorMessage(c->pq));
        kick(p);
        return false;
    }
    if (bw_list_empty(&c->sent)) { /* drained: out of pipeline mode, for whoever waits */
        bw_list_remove(&c->link);
        c->state = C_BUSY;
        if (!PQexitPipelineMode(c->pq)) {
            conn_close(c);
            return false;
        }
        hand_over(c);
    } else if (!bw_list_empty(&p->waits)) {
        kick(p);
    }
    return true;
}

static void on_stall(uv_timer_t *t)
{
    bw_pg_pool_t *p = t->data;
    uint64_t now = bw_mono_ns(), next = 0;
    for (bw_list_t *l = p->piped.next; l != &p->piped; l = l->next) {
        bw_pg_conn_t *c = bw_list_entry(l, bw_pg_conn_t, link);
        bw_pg_req_t *h = head_of(c);
        if (h == NULL || h->cb != NULL || h->internal || h->cancelled)
            continue;
        if (now - h->head_ns >= CANCEL_AFTER_MS * MS) {
            h->cancelled = true;
            c->cancel_target = h->id;
            c->cancel_until_ns = now + CANCEL_WINDOW_MS * MS;
            p->stats.cancels++;
            bw_metrics_inc(BW_C_SQL_CANCELS);
            bw_pg_cancel(c);
        } else if (next == 0 || CANCEL_AFTER_MS * MS - (now - h->head_ns) < next) {
            next = CANCEL_AFTER_MS * MS - (now - h->head_ns);
        }
    }
    if (next > 0)
        uv_timer_start(&p->stall, on_stall, (next + MS - 1) / MS, 0);
}

bw_pg_req_t *bw_pg_submit(bw_pg_pool_t *p, const char *sql, int nparams, const char *const *params,
                          int64_t timeout_ms, bw_pg_result_cb cb, void *ud)
{
    bw_pg_req_t *r = bw_calloc(1, sizeof *r);
    r->q.is_req = true;
    r->pool = p;
    r->id = ++p->next_id;
    r->sql = sql;
    r->nparams = nparams;
    r->params = params;
    r->timeout_ms = timeout_ms;
    r->cb = cb;
    r->ud = ud;
    bw_list_push(&p->waits, &r->q.link);
    kick(p);
    return r;
}

void bw_pg_withdraw(bw_pg_req_t *r)
{
    if (r->conn == NULL) {
        bw_list_remove(&r->q.link);
        kick(r->pool); /* counts the waits again */
        free_req(r);
        return;
    }
    r->cb = NULL;
    r->sql = NULL;
    r->params = NULL;
    if (head_of(r->conn) == r)
        watch_stall(r->pool);
}

static void on_io(uv_poll_t *h, int status, int events)
{
    watch_t *w = h->data;
    bw_pg_conn_t *c = w->c;
    if (c == NULL)
        return;
    if (status < 0) /* libuv stopped polling the socket: the next watch() starts it again */
        c->events = 0;
    if (c->state == C_CONNECTING) {
        connect_step(c);
        return;
    }
    if (c->state == C_PIPE) {
        if (events & UV_WRITABLE) {
            int rc = PQflush(c->pq);
            if (rc < 0) {
                bw_pg_pool_t *p = c->pool;
                pipe_fail(c, PQerrorMessage(c->pq));
                kick(p);
                return;
            }
            if (rc == 0)
                watch(c, UV_READABLE);
        }
        if (status < 0) { /* a socket error (e.g. the server reset the connection) */
            bw_pg_pool_t *p = c->pool;
            if (pipe_input(c) &&
                c->state == C_PIPE) { /* the last of what arrived is read; the rest is lost */
                pipe_fail(c, "the connection to the server was lost");
                kick(p);
            }
            return;
        }
        if (events & UV_READABLE)
            pipe_input(c);
        return;
    }
    if (status < 0) /* nothing more will come from that socket */
        c->sock_error = c->broken = true;
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
        query_input(c); /* may end with the query's last callback, after which c may be gone */
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

/* Serves waits in order: from idle connections, requests also by joining a busy connection; then opens
   connections for the rest while slots are free. */
static void dispatch(bw_pg_pool_t *p)
{
    uint64_t now = bw_mono_ns();
    while (!bw_list_empty(&p->waits)) {
        qnode_t *q = bw_list_entry(p->waits.next, qnode_t, link);
        bw_pg_conn_t *c = NULL;
        if (!bw_list_empty(&p->idle)) {
            c = bw_list_entry(bw_list_shift(&p->idle), bw_pg_conn_t, link);
            c->state = C_BUSY;
            if (!q->is_req) {
                hand_over(c);
                continue;
            }
            if (!enter_pipe(c))
                continue;
        } else if (q->is_req && (c = pipe_for(p, now)) != NULL) {
            p->stats.pipelined++;
            bw_metrics_inc(BW_C_SQL_PIPELINED);
        }
        if (c == NULL)
            break;
        bw_list_remove(&q->link);
        pipe_send(c, (bw_pg_req_t *)q, now);
    }
    int pending;
    for (;;) { /* counted again each time: an attempt that fails at once takes its wait along */
        pending = 0;
        for (bw_list_t *l = p->waits.next; l != &p->waits; l = l->next)
            pending++;
        if (pending <= p->connecting || p->open >= p->max)
            break;
        open_conn(p);
    }
    waiting_total += pending - p->waiting;
    p->waiting = pending;
    bw_metrics_set(BW_G_SQL_WAITING, waiting_total);
}

/* Splits a comma-separated list ("" is one empty entry). */
static char **split_list(const char *v, int *n)
{
    char **out = NULL;
    *n = 0;
    for (const char *p = v;;) {
        const char *e = strchr(p, ',');
        size_t len = e != NULL ? (size_t)(e - p) : strlen(p);
        out = bw_realloc(out, (size_t)(*n + 1) * sizeof *out);
        out[(*n)++] = bw_strndup(p, len);
        if (e == NULL)
            return out;
        p = e + 1;
    }
}

static void free_list(char **l, int n)
{
    for (int i = 0; i < n; i++)
        free(l[i]);
    free(l);
}

const char *bw_pg_job_dsn_refusal(const char *dsn, char *why, size_t len)
{
    static const char *const allowed[] = {"host",
                                          "hostaddr",
                                          "port",
                                          "dbname",
                                          "user",
                                          "password",
                                          "connect_timeout",
                                          "sslmode",
                                          "channel_binding",
                                          "gssencmode",
                                          "target_session_attrs",
                                          "application_name",
                                          "fallback_application_name",
                                          "options",
                                          "client_encoding",
                                          "keepalives",
                                          "keepalives_idle",
                                          "keepalives_interval",
                                          "keepalives_count",
                                          "tcp_user_timeout",
                                          "ssl_min_protocol_version",
                                          "ssl_max_protocol_version",
                                          "sslsni",
                                          NULL};
    PQconninfoOption *opts = PQconninfoParse(dsn, NULL);
    const char *refused = NULL, *host = "", *hostaddr = "";
    for (PQconninfoOption *o = opts; o != NULL && o->keyword != NULL && refused == NULL; o++) {
        bool ok = o->val == NULL;
        for (int i = 0; allowed[i] != NULL && !ok; i++)
            ok = strcmp(o->keyword, allowed[i]) == 0;
        if (!ok) {
            snprintf(
                why, len,
                "'%s' is not allowed in a job's connection string (name a connection in SQL_CONNECTIONS)",
                o->keyword);
            refused = why;
        } else if (o->val != NULL && strcmp(o->keyword, "host") == 0) {
            host = o->val;
        } else if (o->val != NULL && strcmp(o->keyword, "hostaddr") == 0) {
            hostaddr = o->val;
        }
    }
    int nh = 0, na = 0;
    char **hs = split_list(host, &nh), **as = split_list(hostaddr, &na);
    for (int i = 0; i < nh && opts != NULL && refused == NULL; i++) {
        /* an empty entry without an address of its own means the default: a socket too */
        bool socket =
            hs[i][0] == '/' || hs[i][0] == '@' || (hs[i][0] == '\0' && (i >= na || as[i][0] == '\0'));
        if (socket) {
            snprintf(why, len,
                     "Unix-domain sockets (a socket path, or no host) are not allowed in a job's "
                     "connection string");
            refused = why;
        }
    }
    free_list(hs, nh);
    free_list(as, na);
    PQconninfoFree(opts); /* a string libpq cannot parse: it says why when connecting */
    return refused;
}

/* What connecting takes: the hosts to resolve first (none when the string gives hostaddr itself, which
   the policy then judges, or cannot be parsed: libpq says why when connecting). */
static void plan_hosts(bw_pg_pool_t *p)
{
    PQconninfoOption *opts = PQconninfoParse(p->dsn, NULL);
    const char *host = NULL, *hostaddr = NULL, *port = NULL;
    for (PQconninfoOption *o = opts; o != NULL && o->keyword != NULL; o++) {
        if (strcmp(o->keyword, "host") == 0)
            host = o->val;
        else if (strcmp(o->keyword, "hostaddr") == 0)
            hostaddr = o->val;
        else if (strcmp(o->keyword, "port") == 0)
            port = o->val;
    }
    if (opts != NULL && hostaddr != NULL && *hostaddr != '\0') {
        int n;
        char **addrs = split_list(hostaddr, &n);
        for (int i = 0; i < n && p->policy != NULL && p->policy_error == NULL; i++) {
            struct sockaddr_storage ss;
            const char *why = NULL;
            if (uv_ip4_addr(addrs[i], 5432, (struct sockaddr_in *)&ss) == 0 ||
                uv_ip6_addr(addrs[i], 5432, (struct sockaddr_in6 *)&ss) == 0)
                why = bw_egress_check(p->policy, (struct sockaddr *)&ss, NULL);
            if (why != NULL)
                p->policy_error = bw_asprintf("hostaddr %s refused by the egress policy: %s", addrs[i], why);
        }
        free_list(addrs, n);
    } else if (opts != NULL) {
        p->hosts = split_list(host != NULL ? host : "", &p->nhosts);
        p->ports = split_list(port != NULL ? port : "", &p->nports);
        if (p->nports > 1 && p->nports != p->nhosts)
            p->nports = 1;              /* libpq refuses the string: it says so when connecting */
        p->resolve = p->policy != NULL; /* plain socket paths need nothing */
        for (int i = 0; i < p->nhosts; i++)
            p->resolve |= p->hosts[i][0] != '/' && p->hosts[i][0] != '@' && p->hosts[i][0] != '\0';
    }
    PQconninfoFree(opts);
}

bw_pg_pool_t *bw_pg_pool(uv_loop_t *loop, const char *dsn, int max, int64_t idle_ms,
                         const bw_egress_t *policy)
{
    for (bw_pg_pool_t *p = pools; p != NULL; p = p->next)
        if (strcmp(p->dsn, dsn) == 0 && p->policy == policy)
            return p;
    bw_pg_pool_t *p = bw_calloc(1, sizeof *p);
    p->loop = loop;
    p->dsn = bw_strdup(dsn);
    p->max = max > 0 ? max : 1;
    p->idle_ms = idle_ms;
    p->policy = policy;
    bw_list_init(&p->idle);
    bw_list_init(&p->piped);
    bw_list_init(&p->opening);
    bw_list_init(&p->waits);
    uv_timer_init(loop, &p->kick);
    uv_timer_init(loop, &p->reaper);
    uv_timer_init(loop, &p->stall);
    p->kick.data = p->reaper.data = p->stall.data = p;
    plan_hosts(p);
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
    bw_list_push(&p->waits, &w->q.link);
    kick(p);
    return w;
}

void bw_pg_acquire_cancel(bw_pg_wait_t *w)
{
    bw_list_remove(&w->q.link);
    kick(w->pool); /* counts the waits again */
    free(w);
}

void bw_pg_pool_stats(const bw_pg_pool_t *p, bw_pg_stats_t *s)
{
    *s = p->stats;
    s->open = p->open;
    s->idle = s->piped = s->waiting = 0;
    for (const bw_list_t *l = p->idle.next; l != &p->idle; l = l->next)
        s->idle++;
    for (const bw_list_t *l = p->piped.next; l != &p->piped; l = l->next)
        s->piped++;
    for (const bw_list_t *l = p->waits.next; l != &p->waits; l = l->next)
        s->waiting++;
}

static void on_pool_closed(uv_handle_t *h)
{
    bw_pg_pool_t *p = h->data;
    if (--p->closing == 0) { /* the pool's timers are all closed */
        free_list(p->hosts, p->nhosts);
        free_list(p->ports, p->nports);
        free(p->policy_error);
        free(p->dsn);
        free(p);
    }
}

void bw_pg_shutdown(void)
{
    while (pools != NULL) {
        bw_pg_pool_t *p = pools;
        pools = p->next;
        waiting_total -= p->waiting;
        bw_metrics_set(BW_G_SQL_WAITING, waiting_total);
        for (bw_list_t *n; (n = bw_list_shift(&p->waits)) != NULL;) {
            qnode_t *q = bw_list_entry(n, qnode_t, link);
            if (q->is_req)
                free_req((bw_pg_req_t *)q);
            else
                free(q);
        }
        while (!bw_list_empty(&p->idle))
            conn_close(bw_list_entry(p->idle.next, bw_pg_conn_t, link));
        while (!bw_list_empty(&p->piped))
            conn_close(bw_list_entry(p->piped.next, bw_pg_conn_t, link));
        while (!bw_list_empty(&p->opening)) /* opened for jobs that are gone */
            conn_close(bw_list_entry(p->opening.next, bw_pg_conn_t, link));
        p->closing = 3;
        uv_close((uv_handle_t *)&p->kick, on_pool_closed);
        uv_close((uv_handle_t *)&p->reaper, on_pool_closed);
        uv_close((uv_handle_t *)&p->stall, on_pool_closed);
    }
}
