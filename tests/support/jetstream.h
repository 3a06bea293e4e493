/*
 * JetStream helpers for tests, on nats.c's synchronous JetStream API (jsCtx, js_AddStream,
 * js_GetStreamInfo, js_GetConsumerInfo, kvStore_*): create the streams the worker uses (or a
 * results stream that keeps every result), publish assignments with a PubAck, read the consumer's
 * and a stream's state, read the shared result store by (tenant, assignment id), and poll a
 * condition with short sleeps. Each helper connection is its own (not the harness client's), so it
 * survives the harness client's subscriptions and can follow a cluster's nodes.
 */
#ifndef BW_TEST_JETSTREAM_H
#define BW_TEST_JETSTREAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>
#include <nats/nats.h>

/* The design's defaults (CAF_JS_STREAM, CAF_JS_DURABLE, CAF_JS_RESULTS_BUCKET, the subjects). */
#define BW_JS_STREAM "CAF_ASSIGN"
#define BW_JS_DURABLE "caf-workers"
#define BW_JS_BUCKET "caf_results"
#define BW_JS_ASSIGN_SUBJECT "caf.exec.assign.v1"
#define BW_JS_RESULT_SUBJECT "caf.exec.result.v1"
/* The name tests give a stream capturing the result subject. */
#define BW_JS_RESULTS_STREAM "CAF_RESULTS"

/* A connection and its JetStream context. Caller-owned; zero-initialise. */
typedef struct bw_test_js {
    natsConnection *nc;
    jsCtx *js;
} bw_test_js_t;

/* Connects to urls (one URL or several, comma-separated: a cluster's nodes), retrying for up to 5 s,
   with unlimited 100 ms reconnects; JetStream API requests wait up to 5 s. 0 on success. */
int bw_test_js_connect(bw_test_js_t *j, const char *urls);
/* Closes and frees; safe on a zeroed or closed one. */
void bw_test_js_close(bw_test_js_t *j);
/* Waits (up to timeout_ms) until the JetStream API answers (a cluster has a meta leader). 0 when it does. */
int bw_test_js_wait_ready(bw_test_js_t *j, int timeout_ms);

/* Creates the assignment stream the way the worker's CAF_JS_CREATE does: subject subject, file storage,
   WorkQueue retention, replicas. 0 on success (also when it exists with the same configuration). */
int bw_test_js_add_assign_stream(bw_test_js_t *j, const char *name, const char *subject, int replicas);
/* Creates a stream capturing subject (results) with Limits retention and a duplicate window of
   dup_window_ms (<= 0: 100 ms, the server's minimum, so that it keeps practically every duplicate and they
   can be counted). 0 on success. */
int bw_test_js_add_results_stream(bw_test_js_t *j, const char *name, const char *subject, int replicas,
                                  int dup_window_ms);
/* Creates a KV bucket the way the worker's CAF_JS_CREATE does (history 1, file storage, TTL ttl_ms, 0 =
   none). 0 on success. */
int bw_test_js_add_bucket(bw_test_js_t *j, const char *bucket, int64_t ttl_ms, int replicas);
/* Whether a stream exists (1), does not (0), or the request failed (-1). A KV bucket B is stream KV_B. */
int bw_test_js_stream_exists(bw_test_js_t *j, const char *name);
/* A stream's configuration and state (js_GetStreamInfo). */
typedef struct bw_test_js_stream {
    int retention; /* jsRetentionPolicy: js_LimitsPolicy, js_InterestPolicy, js_WorkQueuePolicy */
    int storage;   /* jsStorageType: js_FileStorage, js_MemoryStorage */
    int64_t replicas;
    int64_t max_age_ms;           /* 0 = none */
    int64_t max_msgs_per_subject; /* -1 = unlimited (a KV bucket's history) */
    int64_t duplicates_ms;        /* the duplicate window */
    char subject[128];            /* the first subject */
    uint64_t msgs;
} bw_test_js_stream_t;

/* Reads a stream's configuration and state into *out. 0 on success, -1 when missing or on error. */
int bw_test_js_stream(bw_test_js_t *j, const char *name, bw_test_js_stream_t *out);
/* Messages in a stream now, or -1 (missing stream, request failed). */
int64_t bw_test_js_stream_msgs(bw_test_js_t *j, const char *name);
/* Polls until the stream holds at least n messages or timeout_ms passed; returns the last count (-1 when
   it could not be read). */
int64_t bw_test_js_wait_stream_msgs(bw_test_js_t *j, const char *name, int64_t n, int timeout_ms);

/* Publishes data on subject with headers ({"k", "v", ..., NULL}, may be NULL) and waits for the PubAck
   (msg_id, may be NULL, sets Nats-Msg-Id). 0 on success; *seq (may be NULL) gets the stream sequence. */
int bw_test_js_publish(bw_test_js_t *j, const char *subject, const char *data, const char *const *headers,
                       const char *msg_id, uint64_t *seq);
/* An ExecAssignment like bw_harness_assignment's but for the given tenant (malloc'd JSON; caller frees). */
char *bw_test_js_assignment(const char *tenant, const char *id, const char *type, const char *payload,
                            int deadline_ms);
/* Publishes that assignment on BW_JS_ASSIGN_SUBJECT with the router's headers (tenant_id, version) and
   waits for the PubAck. 0 on success. */
int bw_test_js_submit(bw_test_js_t *j, const char *tenant, const char *id, const char *type,
                      const char *payload, int deadline_ms);

/* A consumer's state (js_GetConsumerInfo). */
typedef struct bw_test_js_consumer {
    uint64_t num_pending;    /* messages of the stream not yet delivered */
    int64_t num_ack_pending; /* delivered, not yet acked/termed */
    int64_t num_redelivered; /* delivered more than once, still unacked */
    int64_t num_waiting;     /* open pull requests */
    uint64_t delivered;      /* consumer sequence of the last delivery (counts redeliveries) */
    uint64_t ack_floor;      /* consumer sequence of the ack floor */
    int64_t ack_wait_ms;     /* the configuration's */
    int64_t max_deliver;     /* the configuration's (-1 = unlimited) */
    char filter[128];        /* the configuration's filter subject */
} bw_test_js_consumer_t;

/* Reads a consumer's state into *out. 0 on success, -1 when it does not exist or the request failed. */
int bw_test_js_consumer(bw_test_js_t *j, const char *stream, const char *durable, bw_test_js_consumer_t *out);
/* Polls the consumer until pred(state, ud) holds or timeout_ms passed. 0 when it held; *last (may be
   NULL) gets the last state read. */
int bw_test_js_wait_consumer(bw_test_js_t *j, const char *stream, const char *durable,
                             bool (*pred)(const bw_test_js_consumer_t *c, void *ud), void *ud, int timeout_ms,
                             bw_test_js_consumer_t *last);
/* Polls until the consumer has nothing pending and nothing awaiting an ack. 0 when so. */
int bw_test_js_wait_idle(bw_test_js_t *j, const char *stream, const char *durable, int timeout_ms,
                         bw_test_js_consumer_t *last);

/* Calls fn for every message of a stream in sequence order (js_GetMsg; deleted sequences skipped) until
   fn returns non-zero. Returns the number of messages seen, or -1 when the stream cannot be read. The
   message is borrowed for the call. */
int bw_test_js_for_each(bw_test_js_t *j, const char *stream, int (*fn)(natsMsg *m, void *ud), void *ud);
/* Number of messages in a stream whose payload (or payload.data of an envelope) has "assignment_id" id;
   -1 when the stream cannot be read. */
int bw_test_js_count_results(bw_test_js_t *j, const char *stream, const char *id);

/* The results bucket's key of (tenant, id): base64url without padding of each, joined by ".". Writes it
   to buf (len bytes) and returns buf. */
char *bw_test_js_result_key(const char *tenant, const char *id, char *buf, size_t len);
/* The stored result body of (tenant, id) in bucket: malloc'd, NUL-terminated (caller frees), *len (may
   be NULL) gets its length; NULL when absent (or deleted) or on error. *trace_id (may be NULL) gets the
   entry's trace_id header (malloc'd; NULL when none). */
char *bw_test_js_kv_result(bw_test_js_t *j, const char *bucket, const char *tenant, const char *id,
                           size_t *len, char **trace_id);
/* Number of live keys in a bucket, or -1 (missing bucket, request failed). */
int bw_test_js_kv_keys(bw_test_js_t *j, const char *bucket);

/* Polls cond(ud) every 10 ms until it holds or timeout_ms passed. 0 when it held (checked once more at
   the deadline). */
int bw_test_wait_until(bool (*cond)(void *ud), void *ud, int timeout_ms);

/* ---- pending approvals in a KV bucket (CAF_JS_APPROVALS_BUCKET) ---------------------------------- */

/* The stream sequence (the KV revision) of the live entry of (tenant, id) in bucket, under the key
   bw_test_js_result_key gives; 0 when the key is absent or deleted (or the read failed). */
uint64_t bw_test_js_kv_revision(bw_test_js_t *j, const char *bucket, const char *tenant, const char *id);
/* The live entry of (tenant, id) in bucket parsed as JSON (caller decrefs), waiting up to timeout_ms for it
   to appear; NULL when it did not (or is not JSON). */
json_t *bw_test_js_kv_wait_json(bw_test_js_t *j, const char *bucket, const char *tenant, const char *id,
                                int timeout_ms);
/* Waits up to timeout_ms until (tenant, id) has no live entry in bucket (deleted, purged or never there).
   0 when so. */
int bw_test_js_kv_wait_gone(bw_test_js_t *j, const char *bucket, const char *tenant, const char *id,
                            int timeout_ms);

/* Writes value under (tenant, id)'s key in bucket only when the key's last revision is expect_rev
   (kvStore_Update), as a worker's revision-checked write does. 0 on success. */
int bw_test_js_kv_update(bw_test_js_t *j, const char *bucket, const char *tenant, const char *id,
                         const char *value, uint64_t expect_rev);

#endif
