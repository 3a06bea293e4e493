/*
 * A NATS test client that records every message it receives, so tests can publish assignments
 * and then assert on the results, acks, heartbeats and dead letters the worker emitted.
 */
#ifndef BW_TEST_CLIENT_H
#define BW_TEST_CLIENT_H

#include <jansson.h>
#include <nats/nats.h>

/* A received message. Owned by whoever got it from bw_test_client_get/_find; free it with
   bw_test_msg_destroy. */
typedef struct bw_test_msg {
    char *subject;
    char *data;      /* payload bytes, NUL-terminated for convenience */
    int len;         /* payload length without the NUL */
    json_t *json;    /* parsed payload, or NULL when it is not JSON */
    json_t *headers; /* object: header name -> first value (string); empty when none */
} bw_test_msg_t;

typedef struct bw_test_client bw_test_client_t;

/* Connects to url, retrying for up to 5 s (the server may still be starting), with unlimited
   100 ms reconnects so a test can restart the server under it. NULL on failure. Destroy with
   bw_test_client_destroy. */
bw_test_client_t *bw_test_client_create(const char *url);

/* Subscribes (asynchronously) to subject, which may contain wildcards, and stores every message
   that arrives. Pending limits are unlimited, so bursts are never dropped. 0 on success. */
int bw_test_client_collect(bw_test_client_t *c, const char *subject);

/* Publishes data (NULL = empty) on subject with optional headers given as NULL-terminated
   {"k", "v", "k2", "v2", NULL} pairs (may be NULL), then flushes. 0 on success. */
int bw_test_client_publish(bw_test_client_t *c, const char *subject, const char *data,
                           const char *const *headers);

/* Messages collected so far whose subject matches `subject` (exact, or a pattern with * and >). */
int bw_test_client_count(bw_test_client_t *c, const char *subject);

/* Waits until count(subject) >= n or timeout_ms passed; returns the count reached. */
int bw_test_client_wait_count(bw_test_client_t *c, const char *subject, int n, int timeout_ms);

/* Copy of the i-th (0-based, arrival order) message matching subject, or NULL. Caller destroys. */
bw_test_msg_t *bw_test_client_get(bw_test_client_t *c, const char *subject, int i);

/* Counts messages on subject whose payload - or payload.data when the payload is an envelope
   {version, kind, data} - has "assignment_id" equal to assignment_id. Waits up to wait_ms for at
   least one. When first is not NULL it gets a copy of the first match (NULL if none; caller
   destroys). */
int bw_test_client_find(bw_test_client_t *c, const char *subject, const char *assignment_id,
                        int wait_ms, bw_test_msg_t **first);

/* Frees a message; NULL is a no-op. */
void bw_test_msg_destroy(bw_test_msg_t *m);

/* Unsubscribes, closes the connection and frees every stored message; NULL is a no-op. */
void bw_test_client_destroy(bw_test_client_t *c);

/* The underlying connection, borrowed (valid until destroy), for anything not covered here. */
natsConnection *bw_test_client_conn(bw_test_client_t *c);

#endif
