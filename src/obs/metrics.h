/*
 * Process-wide metrics. Every value is a C11 atomic, so any thread updates it without a lock and the
 * HTTP thread renders it without waiting on the loop or on job work. Label sets are bounded: job types
 * are the registered handler names plus "other", statuses and dead-letter reasons are fixed lists.
 */
#ifndef BW_OBS_METRICS_H
#define BW_OBS_METRICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util/buf.h"

typedef enum {
    BW_C_DUPLICATES = 0,
    BW_C_NATS_RECONNECTS,
    BW_C_NATS_DISCONNECTS,
    BW_C_SLOW_CONSUMER_EVENTS,
    BW_C_PUBLISH_RETRIES,
    BW_C_PUBLISH_FAILURES,
    BW_C_HEARTBEATS,
    BW_C_PERMISSION_ERRORS,
    BW_C_SANDBOX_STARTS,          /* script sandbox processes started */
    BW_C_SANDBOX_DEATHS,          /* ... that died during a job (crash, abort, their own limits) */
    BW_C_SANDBOX_MEMORY_KILLS,    /* ... killed over SCRIPT_MAX_MEMORY_MB */
    BW_C_SANDBOX_STOP_KILLS,      /* ... killed to stop a job (cancel, deadline) */
    BW_C_SQL_CONNECT_FAILURES,    /* PostgreSQL connection attempts that failed */
    BW_C_SQL_PIPELINED,           /* sql statements sent on a connection busy with others */
    BW_C_SQL_PREPARED,            /* sql statements prepared (on a connection's second use of the text) */
    BW_C_SQL_RESENT,              /* ... sent again (hit by another's cancel, prepared statement lost) */
    BW_C_SQL_TENANT_RESETS,       /* connections reset (DISCARD ALL) to serve another tenant */
    BW_C_SQL_CANCELS,             /* cancel requests for statements of cancelled or overdue jobs */
    BW_C_HEALTH_HEADER_TIMEOUTS,  /* health connections closed: headers not in within the timeout */
    BW_C_HEALTH_EVICTIONS,        /* ... closed to admit a new one (server or address full) */
    BW_C_APPROVAL_JOURNAL_ERRORS, /* approval journal writes that failed (disk full, I/O error) */
    BW_C_JS_DELIVERED,            /* JetStream: assignment deliveries received */
    BW_C_JS_REDELIVERED,          /* ... of which redeliveries (delivery count > 1) */
    BW_C_JS_ACKS,                 /* deliveries acknowledged (their result is out) */
    BW_C_JS_NAKS,                 /* ... given back (drain, a result not published, a worker fault) */
    BW_C_JS_TERMS,                /* ... terminated (can never succeed: dead-lettered) */
    BW_C_JS_IN_PROGRESS,          /* in-progress acks sent for long or waiting jobs */
    BW_C_JS_MAX_DELIVER,          /* assignments dead-lettered at CAF_JS_MAX_DELIVER */
    BW_C_JS_PULLS,                /* pull requests sent */
    BW_C_JS_STORE_HITS,           /* assignments answered from the shared result store */
    BW_C_JS_STORE_ERRORS,         /* result store reads or writes that failed */
    BW_C_REFUSED_QUEUE,           /* assignments refused QUEUE_FULL: WORKER_QUEUE_MAX waiting */
    BW_C_REFUSED_TENANT_QUEUE,    /* ... their tenant's TENANT_QUEUE_MAX waiting */
    BW_C__COUNT
} bw_counter_t;

typedef enum {
    BW_G_IN_FLIGHT = 0,
    BW_G_QUEUED,
    BW_G_NATS_CONNECTED,
    BW_G_SUBSCRIBED, /* the assign subscription is live and confirmed by the server */
    BW_G_DRAINING,
    BW_G_DROPPED, /* messages nats.c dropped on the assign subscription (slow consumer), total */
    BW_G_MAX_CONCURRENCY,
    BW_G_SANDBOXES,               /* script sandbox processes alive */
    BW_G_SANDBOXES_BUSY,          /* ... running a job */
    BW_G_SANDBOX_QUEUE,           /* script jobs waiting for a sandbox */
    BW_G_SQL_CONNECTIONS,         /* PostgreSQL connections open (all pools) */
    BW_G_SQL_WAITING,             /* sql jobs waiting for a connection (all pools) */
    BW_G_HEALTH_CONNECTIONS,      /* connections the health server holds */
    BW_G_APPROVALS_PENDING,       /* human approvals waiting for a decision */
    BW_G_PUBLISH_DENIED_UNTIL_MS, /* bw_mono_ms() until which a refused publish keeps the worker not ready */
    BW_G_JS_ACK_PENDING,          /* JetStream deliveries this worker holds unacknowledged */
    BW_G_JS_PENDING,              /* the consumer's messages not yet delivered (last seen) */
    BW_G_JS_PULL_OUTSTANDING,     /* messages asked for in pull requests and not yet received */
    BW_G_TENANTS_WAITING,         /* tenants with at least one job waiting */
    BW_G_SHARED_RUNNING,          /* running jobs that hold one of WORKER_MAX_CONCURRENCY's slots */
    BW_G__COUNT
} bw_gauge_t;

/* Registers the job-type label values (NULL-terminated); call once before any other function. */
void bw_metrics_init(const char *const *job_types);
/* Index of a job type for the calls below; unknown or NULL types share the label "other". */
int bw_metrics_type(const char *job_type);
void bw_metrics_job_received(int type);
/* status is a bw_status_t (success, error, timeout, cancelled). */
void bw_metrics_job_finished(int type, int status, uint64_t duration_us);
void bw_metrics_inc(bw_counter_t c);
/* A job type's waiting and running jobs (its index from bw_metrics_type). */
void bw_metrics_set_type_jobs(int type, int64_t waiting, int64_t running);
/* METRICS_TENANT_LABELS: the per-tenant series (text exposition lines, copied), rendered after the others;
   NULL removes them. Any thread. */
void bw_metrics_set_tenant_text(const char *text, size_t len);
void bw_metrics_add(bw_counter_t c, uint64_t n);
void bw_metrics_set(bw_gauge_t g, int64_t v);
int64_t bw_metrics_get(bw_gauge_t g);
/* reason: PARSE_ERROR, DECODE_ERROR, PUBLISH_ERROR, MAX_DELIVER (others count as OTHER). */
void bw_metrics_dead_letter(const char *reason);

/* A decision on a human approval: outcome 0 = accepted, else the refusal (core/approvals.h's
   bw_arefuse_t, whose names are given once with bw_metrics_init_approvals). */
void bw_metrics_approval_decision(int outcome);
/* Names of the decision outcomes, index 0 "accepted" (NULL-terminated, static; at most 16). */
void bw_metrics_init_approvals(const char *const *outcomes);
/* A human approval decided (its quorum reached) ms after it was requested. */
void bw_metrics_approval_decided(uint64_t ms);

/* Extra lines at render time (e.g. the DLQ file's own counters); called on the HTTP thread. */
typedef void (*bw_metrics_collector_fn)(void *ud, bw_buf_t *out);
/* Any thread. Once it returns, the previous collector is not running and never runs again (a render
   in progress is waited for), so its ud may be freed. fn NULL removes it. */
void bw_metrics_set_collector(bw_metrics_collector_fn fn, void *ud);

/* The process's resident set size in bytes (0 when /proc is unreadable). */
int64_t bw_metrics_rss_bytes(void);
/* "READY", or why not: "DRAINING", "NOT_CONNECTED", "NOT_SUBSCRIBED", "PUBLISH_PERMISSION_DENIED". */
const char *bw_metrics_readiness(void);
/* Why the NATS server refused the last connection attempt (credentials, TLS), which /readyz adds after
   NOT_CONNECTED; "" clears it. Never holds a secret: the text is the server's or OpenSSL's. Any thread. */
void bw_metrics_set_connect_error(const char *why);
/* A copy of it in out ("" when none). Any thread. */
void bw_metrics_connect_error(char *out, size_t len);
/* The Prometheus text exposition (format 0.0.4) appended to out. */
void bw_metrics_render(bw_buf_t *out);
/* The /_state JSON object appended to out. */
void bw_metrics_state_json(bw_buf_t *out, const char *worker_id);

#endif
