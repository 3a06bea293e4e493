/*
 * What pgpool.c and pgpipe.c share: the pool's structures and the functions each gives the other.
 * Loop thread only. Not for other modules: they use pgpool.h.
 */
#ifndef BW_NET_PGPOOL_INT_H
#define BW_NET_PGPOOL_INT_H

#include "net/pgpool.h"
#include "util/buf.h"
#include "util/list.h"

#define PIPE_DEPTH 16       /* requests on one connection at most */
#define PIPE_HEAD_AGE_MS 10 /* joining a connection whose running statement is younger than this */
#define PIPE_MAX_SVC_MS 5   /* ... while the pool's statements take less than this on average */
#define CANCEL_AFTER_MS 10  /* a withdrawn statement still running this long is cancelled */
#define CANCEL_WINDOW_MS 2000
#define STMT_CACHE 32            /* statements prepared per connection at most (least recently used go) */
#define PREPARE_AFTER 2          /* a statement's text is prepared on its second use on a connection */
#define STALE_MAX 8              /* prepared statements waiting for their DEALLOCATE */
#define DEFAULT_CONNECT_MS 10000 /* a connection attempt's bound when the string sets no connect_timeout */
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

typedef enum { C_CONNECTING, C_IDLE, C_BUSY, C_PIPE, C_RESET } cstate_t;

/* What a pool's queue holds: an acquire or a request (the first member of both), for a tenant. */
typedef struct qnode {
    bw_list_t link;
    bool is_req;
    const char *tenant; /* the caller's */
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
    bw_list_t link; /* p->idle while idle, p->piped while in pipeline mode, p->opening while connecting,
                       p->resets while reset */
    char *tenant;   /* the tenant it last served; NULL: none since it was opened or reset */
    uint64_t idle_since, opened_at;
    bool in_cb;  /* a result callback runs (a release in it closes the connection after it) */
    bool doomed; /* released from inside a result callback */
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
    int max, open, connecting, resetting;
    int64_t connect_ms; /* a connection attempt fails after this long (connect_timeout, else 10 s) */
    int waiting;        /* as dispatch() last counted */
    int closing;        /* timers still to close at shutdown */
    int64_t idle_ms;
    bw_list_t idle, piped, waits, resets;
    uv_timer_t kick, reaper, stall, connect_timer;
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

#define COPY_REFUSED "COPY to or from the client is not supported by the worker"

/* pgpool.c */
void bw_pg_kick(bw_pg_pool_t *p);              /* dispatch() soon, from a zero timer */
void bw_pg_watch(bw_pg_conn_t *c, int events); /* polls the connection's socket for events */
void bw_pg_free_req(bw_pg_req_t *r);
void bw_pg_conn_close(bw_pg_conn_t *c); /* requests still in c->sent are freed without a callback */
bool bw_pg_serves(const bw_pg_conn_t *c, const char *t); /* c may serve tenant t as it is */
void bw_pg_hand_over(bw_pg_conn_t *c);                   /* to the first wait, or idle */
bool bw_pg_is_copy(ExecStatusType st);

/* pgpipe.c */
void bw_pg_pipe_fail(bw_pg_conn_t *c, const char *why); /* its requests learn why; closed */
void bw_pg_pipe_send(bw_pg_conn_t *c, bw_pg_req_t *r, uint64_t now);
bool bw_pg_enter_pipe(bw_pg_conn_t *c);
bw_pg_conn_t *bw_pg_pipe_for(bw_pg_pool_t *p, uint64_t now, const char *t);
bool bw_pg_pipe_input(bw_pg_conn_t *c); /* whether c is still open */

#endif
