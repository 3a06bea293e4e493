/*
 * PostgreSQL pools on the loop (see pgpool.h); pipelined requests are in pgpipe.c.
 *
 * Invariants: a connection is CONNECTING (opened for the first wait of its pool, in p->opening), IDLE
 * (in p->idle), BUSY (given to a caller), PIPE (in pipeline mode, in p->piped, with the requests it was
 * sent in c->sent, oldest first), RESET (running DISCARD ALL before it serves another tenant, in
 * p->resets) or gone; a pool never has more than max connections open; waits (acquires and requests, in
 * one queue) are served in order by dispatch(), which runs from a zero timer so that callbacks never run
 * inside bw_pg_acquire or bw_pg_submit. A connection's socket is watched by a poll handle allocated on
 * its own (libpq may change sockets while connecting), closed with uv_close and freed in its close
 * callback.
 */
#include "net/pgpool_int.h"

#include <arpa/inet.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "net/egress.h"
#include "obs/metrics.h"
#include "util/clock.h"
#include "util/xalloc.h"

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

void bw_pg_kick(bw_pg_pool_t *p)
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
void bw_pg_watch(bw_pg_conn_t *c, int events)
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

void bw_pg_free_req(bw_pg_req_t *r)
{
    free(r->own_sql);
    free(r);
}

/* Closes the connection; requests still in c->sent are freed without a callback. */
void bw_pg_conn_close(bw_pg_conn_t *c)
{
    bw_pg_pool_t *p = c->pool;
    unwatch(c);
    if (c->state == C_IDLE || c->state == C_PIPE || c->state == C_CONNECTING || c->state == C_RESET)
        bw_list_remove(&c->link);
    if (c->state == C_RESET)
        p->resetting--;
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
    free(c->tenant);
    for (bw_list_t *n; (n = bw_list_shift(&c->sent)) != NULL;)
        bw_pg_free_req(bw_list_entry(n, bw_pg_req_t, q.link));
    for (int i = 0; i < c->nstmts; i++)
        free(c->stmts[i].sql);
    if (c->state == C_CONNECTING)
        p->connecting--;
    PQfinish(c->pq);
    count_open(p, -1);
    free(c);
    bw_pg_kick(p); /* a slot is free for a waiting job */
}

/* Whether c may serve tenant t as it is: it served t last, or nobody since it was opened or reset. */
bool bw_pg_serves(const bw_pg_conn_t *c, const char *t)
{
    return c->tenant == NULL || strcmp(c->tenant, t) == 0;
}

/* c serves t from now on. */
static void claim(bw_pg_conn_t *c, const char *t)
{
    if (c->tenant == NULL)
        c->tenant = bw_strdup(t);
}

/* The first waiting job gets the connection when it may; otherwise it goes idle (and dispatch() decides:
   another connection for that job, or this one reset for it). */
void bw_pg_hand_over(bw_pg_conn_t *c)
{
    bw_pg_pool_t *p = c->pool;
    if (!bw_list_empty(&p->waits)) {
        qnode_t *q = bw_list_entry(p->waits.next, qnode_t, link);
        if (!q->is_req && bw_pg_serves(c, q->tenant)) {
            bw_pg_wait_t *w = (bw_pg_wait_t *)q;
            bw_list_remove(&q->link);
            c->state = C_BUSY;
            claim(c, q->tenant);
            bw_pg_acquire_cb cb = w->cb;
            void *ud = w->ud;
            free(w);
            cb(ud, c, NULL);
            return;
        }
        bw_pg_kick(
            p); /* a request, or another tenant's job: dispatch() serves it, outside the caller's call */
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
    bw_pg_conn_close(c);
    bw_metrics_inc(BW_C_SQL_CONNECT_FAILURES);
    qnode_t *q = bw_list_empty(&p->waits) ? NULL : bw_list_entry(bw_list_shift(&p->waits), qnode_t, link);
    if (q != NULL && q->is_req) {
        bw_pg_req_t *r = (bw_pg_req_t *)q;
        bw_pg_result_cb cb = r->cb;
        void *ud = r->ud;
        bw_pg_free_req(r);
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
        bw_pg_watch(c, UV_READABLE);
        break;
    case PGRES_POLLING_WRITING:
        bw_pg_watch(c, UV_WRITABLE);
        break;
    case PGRES_POLLING_OK:
        c->pool->connecting--;
        bw_list_remove(&c->link); /* off p->opening */
        c->state = C_BUSY;
        PQsetnonblocking(c->pq, 1);
        bw_pg_watch(c, UV_READABLE); /* notices and a server closing the connection */
        bw_pg_hand_over(c);
        return;
    default:
        connect_failed(c, NULL);
        return;
    }
    if (c->broken)
        connect_failed(c, NULL);
}

/* Notices (RAISE NOTICE, warnings) are dropped: libpq's default prints each one to stderr, whatever its
   size and however many a statement raises, from the loop. */
static void drop_notice(void *arg, const char *message)
{
    (void)arg;
    (void)message;
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
    PQsetNoticeProcessor(c->pq, drop_notice, NULL);
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

/* PQconnectPoll ignores connect_timeout (libpq leaves the timing of an asynchronous connection to its
   caller): attempts that take longer than the pool's connect_ms fail here, resolution included. A server
   that accepts connections and never answers (stopped, overloaded) would hold a slot of the pool
   forever otherwise. */
static void on_connect_timer(uv_timer_t *t)
{
    bw_pg_pool_t *p = t->data;
    uint64_t now = uv_now(p->loop), next = 0;
    bw_list_t *l = p->opening.next;
    while (l != &p->opening) {
        bw_pg_conn_t *c = bw_list_entry(l, bw_pg_conn_t, link);
        l = l->next;
        uint64_t due = c->opened_at + (uint64_t)p->connect_ms;
        if (due <= now) {
            char why[128];
            snprintf(why, sizeof why, "no connection within %lld ms (connect_timeout)",
                     (long long)p->connect_ms);
            connect_failed(c, why);
            l = p->opening.next; /* again from the start: connect_failed's callback may change the list */
        } else if (next == 0 || due - now < next) {
            next = due - now;
        }
    }
    if (next > 0)
        uv_timer_start(&p->connect_timer, on_connect_timer, next, 0);
}

static void open_conn(bw_pg_pool_t *p)
{
    bw_pg_conn_t *c = bw_calloc(1, sizeof *c);
    c->pool = p;
    c->fd = -1;
    bw_list_init(&c->sent);
    c->state = C_CONNECTING;
    c->opened_at = uv_now(p->loop);
    if (!uv_is_active((uv_handle_t *)&p->connect_timer))
        uv_timer_start(&p->connect_timer, on_connect_timer, (uint64_t)p->connect_ms, 0);
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

bool bw_pg_is_copy(ExecStatusType st)
{
    return st == PGRES_COPY_IN || st == PGRES_COPY_OUT || st == PGRES_COPY_BOTH;
}

/* The statement turned out to be a COPY with the client (after the caller heard of it): COPY FROM STDIN
   is ended with a failure (the server answers with an error, the session stays usable); for COPY TO
   STDOUT (or COPY BOTH) the protocol has no way out but reading all of it, so the connection is
   closed instead. false when the query is over (failed). libpq keeps handing out the same COPY result
   until the copy ends: left alone, it would spin the loop. */
static bool refuse_copy(bw_pg_conn_t *c, ExecStatusType st)
{
    if (st == PGRES_COPY_IN && PQputCopyEnd(c->pq, COPY_REFUSED) == 1) {
        int rc = PQflush(c->pq);
        if (rc >= 0) {
            bw_pg_watch(c, rc == 1 ? UV_READABLE | UV_WRITABLE : UV_READABLE);
            return true;
        }
    }
    fail_query(c, COPY_REFUSED);
    return false;
}

/* Reads what arrived and hands over every complete result (a row at a time in single-row mode). */
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
            bw_pg_watch(c, UV_READABLE);
            cb(c->qud, NULL, NULL);
            return;
        }
        ExecStatusType st = PQresultStatus(res);
        c->in_cb = true;
        cb(c->qud, res, NULL);
        c->in_cb = false;
        PQclear(res);
        if (c->doomed) { /* released by the callback: the rest of the query is not wanted */
            bw_pg_conn_close(c);
            return;
        }
        if (bw_pg_is_copy(st) && !refuse_copy(c, st))
            return;
    }
    if (c->qcb != NULL && c->sock_error) /* the rest will never come */
        fail_query(c, "the connection to the server was lost");
}

static void on_io(uv_poll_t *h, int status, int events)
{
    watch_t *w = h->data;
    bw_pg_conn_t *c = w->c;
    if (c == NULL)
        return;
    if (status < 0) /* libuv stopped polling the socket: the next bw_pg_watch() starts it again */
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
                bw_pg_pipe_fail(c, PQerrorMessage(c->pq));
                bw_pg_kick(p);
                return;
            }
            if (rc == 0)
                bw_pg_watch(c, UV_READABLE);
        }
        if (status < 0) { /* a socket error (e.g. the server reset the connection) */
            bw_pg_pool_t *p = c->pool;
            if (bw_pg_pipe_input(c) &&
                c->state == C_PIPE) { /* the last of what arrived is read; the rest is lost */
                bw_pg_pipe_fail(c, "the connection to the server was lost");
                bw_pg_kick(p);
            }
            return;
        }
        if (events & UV_READABLE)
            bw_pg_pipe_input(c);
        return;
    }
    if (status < 0) /* nothing more will come from that socket */
        c->sock_error = c->broken = true;
    if (c->qcb == NULL) { /* idle or between queries: the server may be telling us it goes away */
        if (!PQconsumeInput(c->pq) || PQstatus(c->pq) == CONNECTION_BAD)
            c->broken = true;
        if (c->broken && c->state == C_IDLE)
            bw_pg_conn_close(c);
        return;
    }
    if (events & UV_WRITABLE) {
        int rc = PQflush(c->pq);
        if (rc < 0) {
            fail_query(c, PQerrorMessage(c->pq));
            return;
        }
        if (rc == 0)
            bw_pg_watch(c, UV_READABLE);
    }
    if ((events & UV_READABLE) || status < 0)
        query_input(c); /* may end with the query's last callback, after which c may be gone */
}

int bw_pg_query(bw_pg_conn_t *c, const char *sql, int nparams, const char *const *params, bw_pg_result_cb cb,
                void *ud)
{
    if (c->broken || !PQsendQueryParams(c->pq, sql, nparams, NULL, params, NULL, NULL, 0))
        return -1;
    PQsetSingleRowMode(c->pq); /* rows one by one: the caller bounds what it keeps */
    c->qcb = cb;
    c->qud = ud;
    int rc = PQflush(c->pq);
    if (rc < 0) {
        c->qcb = NULL;
        return -1;
    }
    bw_pg_watch(c, rc == 1 ? UV_READABLE | UV_WRITABLE : UV_READABLE);
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

static atomic_int cancels_out; /* cancel threads still running */

static void *cancel_main(void *arg)
{
    char err[256];
    PQcancel(arg, err, sizeof err);
    PQfreeCancel(arg);
    atomic_fetch_sub(&cancels_out, 1);
    return NULL;
}

/* PQcancel opens a connection of its own and waits for the server to close it, with no bound of its own
   (connect_timeout does not apply to it, and a stopped server's kernel acknowledges everything): so not
   on the loop, nor on the libuv pool that jobs, DNS and the worker's own work share, but on a detached
   thread of its own, BW_PG_CANCELS_MAX at most. The PGcancel copy outlives the connection. */
bool bw_pg_cancel(bw_pg_conn_t *c)
{
    if (atomic_fetch_add(&cancels_out, 1) >= BW_PG_CANCELS_MAX) {
        atomic_fetch_sub(&cancels_out, 1);
        return false;
    }
    PGcancel *k = PQgetCancel(c->pq);
    pthread_attr_t attr;
    pthread_t t;
    bool ok = k != NULL && pthread_attr_init(&attr) == 0;
    if (ok) {
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        pthread_attr_setstacksize(&attr, 256 * 1024);
        ok = pthread_create(&t, &attr, cancel_main, k) == 0;
        pthread_attr_destroy(&attr);
    }
    if (!ok) {
        PQfreeCancel(k);
        atomic_fetch_sub(&cancels_out, 1);
    }
    return ok;
}

void bw_pg_release(bw_pg_conn_t *c, bool broken)
{
    c->qcb = NULL;
    if (c->in_cb) { /* query_input closes it once the callback returned */
        c->doomed = true;
        return;
    }
    if (broken || c->broken || PQstatus(c->pq) != CONNECTION_OK ||
        PQtransactionStatus(c->pq) != PQTRANS_IDLE) {
        c->state = C_BUSY;
        bw_pg_conn_close(c);
        return;
    }
    bw_pg_hand_over(c);
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
            bw_pg_conn_close(c);
        else if (next == 0 || c->idle_since + (uint64_t)p->idle_ms - now < next)
            next = c->idle_since + (uint64_t)p->idle_ms - now;
    }
    if (next > 0)
        uv_timer_start(&p->reaper, on_reap, next, 0);
}

/* An idle connection that may serve tenant t as it is (preferably one that served t: its prepared
   statements are there), taken off the idle list; or NULL. */
static bw_pg_conn_t *idle_for(bw_pg_pool_t *p, const char *t)
{
    bw_pg_conn_t *clean = NULL;
    for (bw_list_t *l = p->idle.next; l != &p->idle; l = l->next) {
        bw_pg_conn_t *c = bw_list_entry(l, bw_pg_conn_t, link);
        if (c->tenant != NULL && strcmp(c->tenant, t) == 0) {
            clean = c;
            break;
        }
        if (c->tenant == NULL && clean == NULL)
            clean = c;
    }
    if (clean != NULL)
        bw_list_remove(&clean->link);
    return clean;
}

static void on_reset(void *ud, PGresult *res, const char *error)
{
    bw_pg_conn_t *c = ud;
    if (res != NULL) {
        if (PQresultStatus(res) != PGRES_COMMAND_OK)
            c->broken = true;
        return;
    }
    bw_pg_pool_t *p = c->pool;
    bw_list_remove(&c->link); /* off p->resets */
    p->resetting--;
    c->state = C_BUSY;
    if (error != NULL || c->broken || PQtransactionStatus(c->pq) != PQTRANS_IDLE) {
        bw_pg_conn_close(c);
        return;
    }
    /* the session forgot its prepared statements and settings: so do we */
    for (int i = 0; i < c->nstmts; i++)
        free(c->stmts[i].sql);
    c->nstmts = c->nstale = 0;
    c->discard = false;
    c->timeout_ms = -1;
    free(c->tenant);
    c->tenant = NULL;
    p->stats.resets++;
    bw_metrics_inc(BW_C_SQL_TENANT_RESETS);
    bw_pg_hand_over(c);
}

/* Another tenant needs the idle connection c (the pool is at its bound): DISCARD ALL first, which
   leaves nothing of the session's state behind (RESET ALL, SET SESSION AUTHORIZATION DEFAULT,
   DEALLOCATE ALL, CLOSE ALL, UNLISTEN *, pg_advisory_unlock_all(), DISCARD TEMP, PLANS, SEQUENCES);
   the startup options (SESSION_OPTIONS) are what RESET goes back to. */
static void reset_conn(bw_pg_conn_t *c)
{
    bw_pg_pool_t *p = c->pool;
    bw_list_remove(&c->link); /* off p->idle */
    c->state = C_RESET;
    bw_list_push(&p->resets, &c->link);
    p->resetting++;
    if (bw_pg_query(c, "DISCARD ALL", 0, NULL, on_reset, c) != 0)
        bw_pg_conn_close(c);
}

/* Serves waits in order: from idle connections that may serve their tenant, requests also by joining a
   busy connection of their tenant; then, for the rest, opens connections while slots are free, and
   at the bound resets idle connections of other tenants. */
static void dispatch(bw_pg_pool_t *p)
{
    uint64_t now = bw_mono_ns();
    while (!bw_list_empty(&p->waits)) {
        qnode_t *q = bw_list_entry(p->waits.next, qnode_t, link);
        bw_pg_conn_t *c = idle_for(p, q->tenant);
        if (c != NULL) {
            c->state = C_BUSY;
            if (!q->is_req) {
                bw_pg_hand_over(c);
                continue;
            }
            if (!bw_pg_enter_pipe(c))
                continue;
        } else if (q->is_req && (c = bw_pg_pipe_for(p, now, q->tenant)) != NULL) {
            p->stats.pipelined++;
            bw_metrics_inc(BW_C_SQL_PIPELINED);
        }
        if (c == NULL)
            break;
        claim(c, q->tenant);
        bw_list_remove(&q->link);
        bw_pg_pipe_send(c, (bw_pg_req_t *)q, now);
    }
    int pending;
    for (;;) { /* counted again each time: an attempt that fails at once takes its wait along */
        pending = 0;
        for (bw_list_t *l = p->waits.next; l != &p->waits; l = l->next)
            pending++;
        if (pending <= p->connecting + p->resetting)
            break;
        if (p->open < p->max)
            open_conn(p);
        else if (!bw_list_empty(&p->idle)) /* the least recently used */
            reset_conn(bw_list_entry(p->idle.next, bw_pg_conn_t, link));
        else
            break;
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
    p->connect_ms = DEFAULT_CONNECT_MS;
    for (PQconninfoOption *o = opts; o != NULL && o->keyword != NULL; o++) {
        if (strcmp(o->keyword, "connect_timeout") == 0 && o->val != NULL && atoi(o->val) > 0)
            p->connect_ms = (int64_t)(atoi(o->val) < 2 ? 2 : atoi(o->val)) * 1000; /* libpq's minimum: 2 s */
        else if (strcmp(o->keyword, "host") == 0)
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
    bw_list_init(&p->resets);
    uv_timer_init(loop, &p->kick);
    uv_timer_init(loop, &p->reaper);
    uv_timer_init(loop, &p->stall);
    uv_timer_init(loop, &p->connect_timer);
    p->kick.data = p->reaper.data = p->stall.data = p->connect_timer.data = p;
    plan_hosts(p);
    p->next = pools;
    pools = p;
    return p;
}

bw_pg_wait_t *bw_pg_acquire(bw_pg_pool_t *p, const char *tenant, bw_pg_acquire_cb cb, void *ud)
{
    bw_pg_wait_t *w = bw_calloc(1, sizeof *w);
    w->q.tenant = tenant != NULL ? tenant : "";
    w->pool = p;
    w->cb = cb;
    w->ud = ud;
    bw_list_push(&p->waits, &w->q.link);
    bw_pg_kick(p);
    return w;
}

void bw_pg_acquire_cancel(bw_pg_wait_t *w)
{
    bw_list_remove(&w->q.link);
    bw_pg_kick(w->pool); /* counts the waits again */
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
                bw_pg_free_req((bw_pg_req_t *)q);
            else
                free(q);
        }
        while (!bw_list_empty(&p->idle))
            bw_pg_conn_close(bw_list_entry(p->idle.next, bw_pg_conn_t, link));
        while (!bw_list_empty(&p->piped))
            bw_pg_conn_close(bw_list_entry(p->piped.next, bw_pg_conn_t, link));
        while (!bw_list_empty(&p->opening)) /* opened for jobs that are gone */
            bw_pg_conn_close(bw_list_entry(p->opening.next, bw_pg_conn_t, link));
        while (!bw_list_empty(&p->resets))
            bw_pg_conn_close(bw_list_entry(p->resets.next, bw_pg_conn_t, link));
        p->closing = 4;
        uv_close((uv_handle_t *)&p->kick, on_pool_closed);
        uv_close((uv_handle_t *)&p->reaper, on_pool_closed);
        uv_close((uv_handle_t *)&p->stall, on_pool_closed);
        uv_close((uv_handle_t *)&p->connect_timer, on_pool_closed);
    }
}
