/*
 * Pipelined requests of the PostgreSQL pools (see pgpool.h and pgpool.c).
 *
 * A pipelined request is its statement and a Sync: the server runs it in its own implicit transaction,
 * and its results end with PGRES_PIPELINE_SYNC, after the commit, which is when its caller hears that
 * it is over. Before it, when the session's statement_timeout is not the one it wants, the pool sends
 * a SET of its own (its own Sync too). A withdrawn request stays in c->sent (its results are dropped);
 * when it is the one the server runs and goes on past CANCEL_AFTER_MS, the pool sends a cancel request.
 * The server cancels whatever runs when the request arrives: if the withdrawn statement ended just
 * before, the next one is hit (SQLSTATE 57014 within CANCEL_WINDOW_MS); that one was rolled back with
 * its transaction, and is sent again, once. Rows come one at a time (single-row mode, set for each
 * statement before any of its results is parsed). Requests join only a connection of their tenant.
 */
#include "net/pgpool_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "obs/metrics.h"
#include "util/clock.h"
#include "util/xalloc.h"

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
void bw_pg_pipe_fail(bw_pg_conn_t *c, const char *why)
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
    bw_pg_conn_close(c);
    for (bw_list_t *n; (n = bw_list_shift(&gone)) != NULL;) {
        bw_pg_req_t *r = bw_list_entry(n, bw_pg_req_t, q.link);
        bw_pg_result_cb cb = r->cb;
        void *ud = r->ud;
        bw_pg_free_req(r);
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
    bw_pg_free_req(own);
    return false;
}

/* Sends r (taken off the queue) on c, in pipeline mode, after what the session needs first. */
void bw_pg_pipe_send(bw_pg_conn_t *c, bw_pg_req_t *r, uint64_t now)
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
        bw_pg_pipe_fail(c, PQerrorMessage(c->pq));
        bw_pg_kick(c->pool);
        return;
    }
    bw_pg_watch(c, rc == 1 ? UV_READABLE | UV_WRITABLE : UV_READABLE);
}

/* An idle connection goes into pipeline mode; false (and closed) if libpq refuses. */
bool bw_pg_enter_pipe(bw_pg_conn_t *c)
{
    if (!PQenterPipelineMode(c->pq)) {
        c->state = C_BUSY;
        bw_pg_conn_close(c);
        return false;
    }
    c->state = C_PIPE;
    bw_list_push(&c->pool->piped, &c->link);
    return true;
}

/* A busy connection of tenant t that a request may join (the least loaded), or NULL. */
bw_pg_conn_t *bw_pg_pipe_for(bw_pg_pool_t *p, uint64_t now, const char *t)
{
    if (p->svc_ns > PIPE_MAX_SVC_MS * MS)
        return NULL;
    bw_pg_conn_t *best = NULL;
    for (bw_list_t *l = p->piped.next; l != &p->piped; l = l->next) {
        bw_pg_conn_t *c = bw_list_entry(l, bw_pg_conn_t, link);
        bw_pg_req_t *h = head_of(c);
        if (c->depth >= PIPE_DEPTH || c->cancel_until_ns > now || c->broken || !bw_pg_serves(c, t) ||
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
        /* a cancel request stops one statement at most; but the target may have ended by its own
           statement_timeout (the same SQLSTATE) while the request was on its way: then it is still to
           come, and hits the next statement */
        const char *msg = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
        if (!target || msg == NULL || strstr(msg, "statement timeout") == NULL)
            c->cancel_until_ns = 0;
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
        bw_pg_kick(p);
        return;
    }
    bw_pg_result_cb cb = r->cb;
    void *ud = r->ud;
    bw_pg_free_req(r);
    if (cb != NULL)
        cb(ud, NULL, NULL);
}

/* Reads what arrived and hands over every complete result. Returns whether c is still open. */
bool bw_pg_pipe_input(bw_pg_conn_t *c)
{
    bw_pg_pool_t *p = c->pool;
    if (!PQconsumeInput(c->pq)) {
        bw_pg_pipe_fail(c, PQerrorMessage(c->pq));
        bw_pg_kick(p);
        return false;
    }
    for (;;) {
        /* Single-row mode for the statement whose results come next, before anything of them is parsed
           (libpq applies it to the statement at the head of its queue, and only then; for anything but a
           statement, or one already begun, it does nothing). */
        PQsetSingleRowMode(c->pq);
        if (bw_list_empty(&c->sent) || PQisBusy(c->pq))
            break;
        bw_pg_req_t *r = head_of(c);
        PGresult *res = PQgetResult(c->pq);
        if (res == NULL) { /* the end of a statement's results; after the last, its Sync follows */
            if (r->phase > r->nprep)
                break;
            r->phase++;
            continue;
        }
        ExecStatusType st = PQresultStatus(res);
        if (st == PGRES_PIPELINE_SYNC)
            pipe_complete(c);
        else
            pipe_result(c, r, res);
        PQclear(res);
        if (bw_pg_is_copy(
                st)) { /* refused (its caller heard of it); what follows it in the pipeline is lost */
            bw_pg_pipe_fail(c, COPY_REFUSED);
            bw_pg_kick(p);
            return false;
        }
    }
    if (PQstatus(c->pq) != CONNECTION_OK) {
        bw_pg_pipe_fail(c, PQerrorMessage(c->pq));
        bw_pg_kick(p);
        return false;
    }
    if (bw_list_empty(&c->sent)) { /* drained: out of pipeline mode, for whoever waits */
        bw_list_remove(&c->link);
        c->state = C_BUSY;
        if (!PQexitPipelineMode(c->pq)) {
            bw_pg_conn_close(c);
            return false;
        }
        bw_pg_hand_over(c);
    } else if (!bw_list_empty(&p->waits)) {
        bw_pg_kick(p);
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
            if (bw_pg_cancel(c)) { /* else the statement runs on, within its statement_timeout */
                p->stats.cancels++;
                bw_metrics_inc(BW_C_SQL_CANCELS);
            }
        } else if (next == 0 || CANCEL_AFTER_MS * MS - (now - h->head_ns) < next) {
            next = CANCEL_AFTER_MS * MS - (now - h->head_ns);
        }
    }
    if (next > 0)
        uv_timer_start(&p->stall, on_stall, (next + MS - 1) / MS, 0);
}

bw_pg_req_t *bw_pg_submit(bw_pg_pool_t *p, const char *tenant, const char *sql, int nparams,
                          const char *const *params, int64_t timeout_ms, bw_pg_result_cb cb, void *ud)
{
    bw_pg_req_t *r = bw_calloc(1, sizeof *r);
    r->q.is_req = true;
    r->q.tenant = tenant != NULL ? tenant : "";
    r->pool = p;
    r->id = ++p->next_id;
    r->sql = sql;
    r->nparams = nparams;
    r->params = params;
    r->timeout_ms = timeout_ms;
    r->cb = cb;
    r->ud = ud;
    bw_list_push(&p->waits, &r->q.link);
    bw_pg_kick(p);
    return r;
}

void bw_pg_withdraw(bw_pg_req_t *r)
{
    if (r->conn == NULL) {
        bw_list_remove(&r->q.link);
        bw_pg_kick(r->pool); /* counts the waits again */
        bw_pg_free_req(r);
        return;
    }
    r->cb = NULL;
    r->sql = NULL;
    r->params = NULL;
    if (head_of(r->conn) == r)
        watch_stall(r->pool);
}
