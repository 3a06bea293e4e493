/*
 * PostgreSQL connections on the loop: libpq's asynchronous API (PQconnectStart/PQconnectPoll,
 * PQsendQueryParams, PQconsumeInput/PQisBusy/PQgetResult) driven by a uv_poll on each connection's
 * socket. One pool per connection string, at most `max` connections; a job beyond that waits in a FIFO
 * (within its deadline: the caller cancels the wait). Idle connections are closed after idle_ms; a
 * connection that broke, or that a job left in a transaction or busy, is closed instead of reused.
 * Loop thread only.
 */
#ifndef BW_NET_PGPOOL_H
#define BW_NET_PGPOOL_H

#include <libpq-fe.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

typedef struct bw_pg_pool bw_pg_pool_t;
typedef struct bw_pg_conn bw_pg_conn_t;
typedef struct bw_pg_wait bw_pg_wait_t;

/* A connection for the caller, or NULL and why (the message has no credentials). */
typedef void (*bw_pg_acquire_cb)(void *ud, bw_pg_conn_t *c, const char *error);
/* Each result of the query in turn; then res NULL: the query is over (error set when the connection
   failed under it). The callback does not own res (it is cleared after the call). */
typedef void (*bw_pg_result_cb)(void *ud, PGresult *res, const char *error);

/* The pool for dsn (created on first use; pools live until bw_pg_shutdown). */
bw_pg_pool_t *bw_pg_pool(uv_loop_t *loop, const char *dsn, int max, int64_t idle_ms);
/* Asks for a connection: cb runs later (never inside this call). Returns a handle valid until cb ran. */
bw_pg_wait_t *bw_pg_acquire(bw_pg_pool_t *p, bw_pg_acquire_cb cb, void *ud);
/* Withdraws a wait whose cb has not run. */
void bw_pg_acquire_cancel(bw_pg_wait_t *w);
/* Sends one statement with text parameters (NULL entries are SQL NULL); results come to cb. 0 or -1. */
int bw_pg_query(bw_pg_conn_t *c, const char *sql, int nparams, const char *const *params, bw_pg_result_cb cb,
                void *ud);
/* Asks the server to cancel what the connection runs (PQcancel on the thread pool; the query then ends
   with an error through its cb, if the connection is still there). */
void bw_pg_cancel(bw_pg_conn_t *c);
/* Gives the connection back. Unless it is idle and clean (no query running, not in a transaction, not
   broken), it is closed. */
void bw_pg_release(bw_pg_conn_t *c, bool broken);
/* The statement_timeout the connection's session has (0: not set by us), as its user records it. */
int64_t bw_pg_conn_timeout(const bw_pg_conn_t *c);
void bw_pg_conn_set_timeout(bw_pg_conn_t *c, int64_t ms);

/* Closes every connection and pool; waits get no callback. */
void bw_pg_shutdown(void);

#endif
