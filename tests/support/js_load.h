/*
 * Load for the JetStream delivery fault tests (issue 16): assignments published into the assign stream
 * with JetStream publishes, each one "accepted" only once the stream acknowledged it (a publish with no
 * PubAck is retried, and counted: a retry of a publish that was stored after all makes a duplicate
 * assignment), and every result read back from a results stream that captures the result subject, so
 * that nothing is missed while clients reconnect. The accounting: accepted assignments, results stored,
 * distinct answered, lost (accepted and never answered), duplicates (results beyond the first per id).
 */
#ifndef BW_TEST_JS_LOAD_H
#define BW_TEST_JS_LOAD_H

#include <jansson.h>
#include <stdint.h>

typedef struct bw_js_load bw_js_load_t;

typedef struct bw_js_load_stats {
    int accepted;      /* assignments the stream acknowledged */
    int retries;       /* publishes retried (no PubAck in time, or an error) */
    int unaccepted;    /* assignments never acknowledged before the publisher's deadline */
    int results;       /* result messages stored in the results stream and read back */
    int distinct;      /* accepted assignments with at least one result */
    int lost;          /* accepted assignments with no result */
    int dup;           /* results beyond the first for an assignment */
    int dup_identical; /* of those, byte for byte the first (republished from the result store) */
    int unexpected;    /* results for ids that were never accepted (or unparsable) */
    int not_success;   /* first results whose status is not "success" */
    int cancelled;     /* results (any, duplicates too) with status "cancelled" */
} bw_js_load_stats_t;

/* Connects to urls (a comma-separated list of nats:// URLs; every one is in the server pool, tried in that
   order, so a test can make the first one the node it kills), retrying
   for up to 10 s, with unlimited quick reconnects. NULL on failure. */
bw_js_load_t *bw_js_load_create(const char *urls);
void bw_js_load_destroy(bw_js_load_t *l);

/* Creates the results stream `name` capturing `subject` (file storage, `replicas` replicas, a 100 ms
   duplicate window, the server's minimum, so that a duplicate result is stored and counted rather than
   dropped by the window). Retries while a cluster has no meta leader yet (up to 30 s). Later reads use this
   stream. 0 on success. */
int bw_js_load_results_stream(bw_js_load_t *l, const char *name, const char *subject, int replicas);

/* Queues n assignments "<prefix>-<i>" (i = 0..n-1) of job type `type` with job payload `payload` (a JSON
   object text; NULL = {"i":<i>}) and options.deadline_ms 60000, published on `subject` with the router's
   headers (tenant_id acme, version 1) by the next bw_js_load_start. */
void bw_js_load_add(bw_js_load_t *l, const char *subject, const char *prefix, int n, const char *type,
                    const char *payload);

/* Starts a thread publishing every queued assignment not published yet, in order, at most per_second a
   second (0 = as fast as the PubAcks come), each with a synchronous JetStream publish retried until the
   stream acknowledges it or timeout_ms have passed since the start. 0 when the thread started. */
int bw_js_load_start(bw_js_load_t *l, int per_second, int timeout_ms);
/* Waits for the publishing thread (no-op when none runs); returns the number accepted so far in all. */
int bw_js_load_join(bw_js_load_t *l);
/* Assignments accepted so far (safe while the thread runs). */
int bw_js_load_accepted(bw_js_load_t *l);

/* Messages in the results stream now (its state), -1 when it cannot be asked right now. */
int64_t bw_js_load_stored(bw_js_load_t *l);
/* Messages in stream `name` now, -1 when it cannot be asked right now. */
int64_t bw_js_load_stream_msgs(bw_js_load_t *l, const char *name);

/* Waits (polling) until stream `name` has a leader and `followers` followers, all current and online
   (a restarted cluster node caught up). 0 when so within timeout_ms. */
int bw_js_load_wait_replicas(bw_js_load_t *l, const char *name, int followers, int timeout_ms);

/* Waits (polling) until the results stream holds at least n messages; 0 when it did within timeout_ms. */
int bw_js_load_wait_stored(bw_js_load_t *l, int64_t n, int timeout_ms);

/* Reads the results stream (from where the last call stopped) until every accepted assignment has a
   result and `assign_stream` is empty (WorkQueue retention: every delivery acknowledged, so no further
   result can come), or timeout_ms passed; then reads what is left up to the stream's last message and
   fills st (cumulative over every batch of this load). 0 when nothing is lost. */
int bw_js_load_collect(bw_js_load_t *l, const char *assign_stream, int timeout_ms, bw_js_load_stats_t *st);

/* Prints one greppable line on stderr, "FAULT <name>: accepted=… results=… lost=… dup=… (byte-identical
   …) retries=… unaccepted=… unexpected=… not_success=… cancelled=…" (cumulative over the load's batches),
   then the first lost ids, if any. */
void bw_js_load_report(const bw_js_load_t *l, const char *name, const bw_js_load_stats_t *st);

/* The first result read for id (borrowed, valid until destroy), NULL when none was read. */
json_t *bw_js_load_result(const bw_js_load_t *l, const char *id);

#endif
