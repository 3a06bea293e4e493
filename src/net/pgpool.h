/*
 * PostgreSQL connections on the loop: libpq's asynchronous API (PQconnectStart/PQconnectPoll,
 * PQsendQueryParams, PQconsumeInput/PQisBusy/PQgetResult) driven by a uv_poll on each connection's
 * socket. One pool per connection string, at most `max` connections; a job beyond that waits in a FIFO
 * (within its deadline: the caller cancels the wait). Idle connections are closed after idle_ms; a
 * connection that broke, or that a job left in a transaction or busy, is closed instead of reused.
 *
 * Two ways to use a connection: acquire one for a job of several statements (a transaction), or submit
 * one statement as a request. A request runs in its own implicit transaction (its own Sync), so the
 * pool may pipeline it with other requests on a connection (libpq's pipeline mode): when every
 * connection is busy, a request joins the least loaded one whose statements look short (the one it
 * runs has run less than PIPE_HEAD_AGE_MS, and the pool's statements take less than PIPE_MAX_SVC_MS
 * on average), at most PIPE_DEPTH deep; otherwise it waits. Waits, of both kinds, are served in order.
 *
 * Tenants: a connection remembers the tenant it last served and goes (or is pipelined) only to that
 * tenant's jobs as it is; before it serves another tenant it is reset (DISCARD ALL: settings, roles,
 * temporary tables, prepared statements, advisory locks, listens), so that no session state crosses
 * tenants. max stays per connection string: many tenants share the bound.
 *
 * Results come row by row (libpq's single-row mode: PGRES_SINGLE_TUPLE each, then a PGRES_TUPLES_OK
 * without rows), so the caller bounds what it keeps. COPY to or from the client is refused: COPY FROM
 * STDIN is ended with a failure, COPY TO STDOUT closes the connection; no result status spins the loop.
 * Loop thread only.
 */
#ifndef BW_NET_PGPOOL_H
#define BW_NET_PGPOOL_H

#include <libpq-fe.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "net/egress.h"

typedef struct bw_pg_pool bw_pg_pool_t;
typedef struct bw_pg_conn bw_pg_conn_t;
typedef struct bw_pg_wait bw_pg_wait_t;

/* A connection for the caller, or NULL and why (the message has no credentials). */
typedef void (*bw_pg_acquire_cb)(void *ud, bw_pg_conn_t *c, const char *error);
/* Each result of the query in turn; then res NULL: the query is over (error set when the connection
   failed under it). The callback does not own res (it is cleared after the call). */
typedef void (*bw_pg_result_cb)(void *ud, PGresult *res, const char *error);

/* The pool for dsn (created on first use; pools live until bw_pg_shutdown). The hosts of dsn are
   resolved on the libuv thread pool before each connection attempt (libpq would resolve them on the
   loop); with a policy (for connection strings that come with jobs), every address is judged by it and
   Unix-domain sockets are refused. */
bw_pg_pool_t *bw_pg_pool(uv_loop_t *loop, const char *dsn, int max, int64_t idle_ms,
                         const bw_egress_t *policy);
/* NULL when a connection string that came with a job uses only what such a string may: host, hostaddr,
   port, dbname, user, password and connection options; else why not (in why). Files on the worker's host
   (passfile, service, sslkey, ...) and Unix-domain sockets are refused. */
const char *bw_pg_job_dsn_refusal(const char *dsn, char *why, size_t len);
/* Asks for a connection for tenant (the caller's string, read until cb ran; NULL: ""): cb runs later
   (never inside this call). Returns a handle valid until cb ran. */
bw_pg_wait_t *bw_pg_acquire(bw_pg_pool_t *p, const char *tenant, bw_pg_acquire_cb cb, void *ud);
/* Withdraws a wait whose cb has not run. */
void bw_pg_acquire_cancel(bw_pg_wait_t *w);
/* Sends one statement with text parameters (NULL entries are SQL NULL); results come to cb. 0 or -1. */
int bw_pg_query(bw_pg_conn_t *c, const char *sql, int nparams, const char *const *params, bw_pg_result_cb cb,
                void *ud);
/* Asks the server to cancel what the connection runs (PQcancel on a thread of its own, at most
   BW_PG_CANCELS_MAX at once: a server that never answers holds a thread, never the libuv pool; the
   query then ends with an error through its cb, if the connection is still there). false when no
   cancel request could be sent (too many outstanding). */
#define BW_PG_CANCELS_MAX 4
bool bw_pg_cancel(bw_pg_conn_t *c);
/* Gives the connection back. Unless it is idle and clean (no query running, not in a transaction, not
   broken), it is closed. May be called from inside a result callback (the close then follows it). */
void bw_pg_release(bw_pg_conn_t *c, bool broken);
/* The statement_timeout the connection's session has (0: not set by us), as its user records it. */
int64_t bw_pg_conn_timeout(const bw_pg_conn_t *c);
void bw_pg_conn_set_timeout(bw_pg_conn_t *c, int64_t ms);

typedef struct bw_pg_req bw_pg_req_t;

/* Submits one statement (text parameters, NULL entries are SQL NULL) with statement_timeout set to
   timeout_ms (> 0) for it. Results come to cb as for bw_pg_query, then cb(ud, NULL, NULL) once the
   statement's transaction is committed, or cb(ud, NULL, error) when no connection could be made or the
   connection failed under it. sql and params are the caller's, read until that last callback or a
   withdrawal (a statement cancelled by another's cancel request is sent again). cb never runs inside
   this call. The handle is valid until the last callback. tenant as for bw_pg_acquire. */
bw_pg_req_t *bw_pg_submit(bw_pg_pool_t *p, const char *tenant, const char *sql, int nparams,
                          const char *const *params, int64_t timeout_ms, bw_pg_result_cb cb, void *ud);
/* Withdraws a request whose last callback has not run: no callback follows. A statement the server
   already has is cancelled when it runs longer than CANCEL_AFTER_MS from then on; its connection is
   kept. */
void bw_pg_withdraw(bw_pg_req_t *r);

typedef struct bw_pg_stats {
    int open, idle, piped, waiting;
    uint64_t pipelined; /* requests sent to a connection that had others outstanding */
    uint64_t prepared;  /* statements prepared */
    uint64_t resent;    /* requests sent again (cancelled by another's cancel, prepared statement lost) */
    uint64_t cancels;   /* cancel requests sent for withdrawn statements */
    uint64_t resets;    /* connections reset (DISCARD ALL) to serve another tenant */
} bw_pg_stats_t;

void bw_pg_pool_stats(const bw_pg_pool_t *p, bw_pg_stats_t *s);

/* Closes every connection and pool; waits get no callback. */
void bw_pg_shutdown(void);

#endif
