/*
 * The wire contract (PROTOCOL.md): decoding ExecAssignments in both input forms, and encoding
 * ExecResults (router format or envelope), acks, heartbeats and dead letters. Pure functions over
 * jansson values, no I/O, so they are unit-tested against the router's own conformance vectors.
 */
#ifndef BW_CORE_PROTOCOL_H
#define BW_CORE_PROTOCOL_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define BW_MAX_ID_BYTES 256
#define BW_MAX_TENANT_BYTES 256

/* Reads one header of the incoming message; returns NULL when absent. */
typedef const char *(*bw_header_get_fn)(void *ud, const char *name);

typedef struct bw_headers {
    bw_header_get_fn get;
    void *ud;
} bw_headers_t;

/* A decoded assignment. All strings are owned; dispose with bw_assignment_dispose. */
typedef struct bw_assignment {
    char *assignment_id;
    char *request_id;
    char *tenant_id;
    char *job_type;                   /* NULL when missing (then the decode is BW_DECODE_INVALID) */
    char *provider_id;                /* executor.provider_id, or NULL (the worker id is used) */
    char *trace_id;                   /* a router-valid trace id, or NULL */
    char *run_id, *flow_id, *step_id; /* all three or none, each router-valid */
    json_t *root;                     /* the bare assignment object (owned reference) */
    json_t *payload;                  /* job.payload, borrowed from root; NULL when absent */
    size_t msg_bytes;                 /* size of the assignment message as received */
    int64_t timeout_ms;
    int64_t retry_max_attempts; /* options.retry.max_attempts, 0 when absent */
    int64_t retry_backoff_ms;
    bool enveloped;
    bool payload_has_nul; /* a string of job.payload contains U+0000 (allowed there only) */
} bw_assignment_t;

typedef enum {
    BW_DECODE_OK = 0,
    BW_DECODE_INVALID, /* answer with an error result: error_code says why */
    BW_DECODE_DEAD,    /* no result possible: dead-letter with reason error_code */
} bw_decode_status_t;

typedef struct bw_decode_error {
    const char *code; /* PARSE_ERROR, DECODE_ERROR, INVALID_ASSIGNMENT, PAYLOAD_REF_UNSUPPORTED */
    char message[256];
    /* BW_DECODE_INVALID only: the worker could not read the whole message (JSON that jansson refuses, a
       U+0000 outside job.payload) but could read its ids; it is answered, and the original is also
       dead-lettered with this reason (PARSE_ERROR or DECODE_ERROR). NULL otherwise. */
    const char *dead_reason;
} bw_decode_error_t;

/* Decodes one assign message. a and e are always initialised (dispose a whatever the outcome); on
   BW_DECODE_INVALID the ids needed for the error result are filled in. JSON that jansson refuses (deeper
   than 2,048 levels, 1e400, a lone surrogate, U+0000 in a key) is BW_DECODE_INVALID with
   INVALID_ASSIGNMENT and dead_reason PARSE_ERROR when its ids can still be read (core/idscan.h), else
   BW_DECODE_DEAD / PARSE_ERROR. */
bw_decode_status_t bw_assignment_decode(const char *data, size_t len, const bw_headers_t *hdr,
                                        int64_t default_timeout_ms, bw_assignment_t *a,
                                        bw_decode_error_t *err);
void bw_assignment_dispose(bw_assignment_t *a);

/* The decoded assignment as a JSON object (its ids, its bare object, its effective timeout), for a job
   that is kept across restarts (pending approvals); bw_assignment_from_json rebuilds it: 0, or -1 (a is
   then zeroed) when o is not such an object. */
json_t *bw_assignment_to_json(const bw_assignment_t *a);
int bw_assignment_from_json(json_t *o, bw_assignment_t *a);

typedef enum { BW_ST_SUCCESS = 0, BW_ST_ERROR, BW_ST_TIMEOUT, BW_ST_CANCELLED } bw_status_t;

const char *bw_status_name(bw_status_t s);

typedef struct bw_result {
    bw_status_t status;
    json_t *output;         /* borrowed; omitted when NULL or JSON null */
    json_t *logs;           /* borrowed; a "logs" member when a non-empty array */
    const char *error_code; /* required unless success */
    const char *error_message;
    int64_t latency_ms;
    int64_t timestamp_ms;
    int attempts;
    size_t max_bytes; /* 0, or: encoding stops soon after the text passes this (see bw_result_encode) */
} bw_result_t;

/* Encodes an ExecResult (router format; wrapped as {version:v1,kind:exec_result,data} when envelope).
   Never emits JSON null at the top level. Caller frees the returned string; *len gets its length. With
   r->max_bytes, writing the output stops soon after the text passes it (*len > max_bytes then, and the
   text is not a usable result): an output that shares structure, whose full text would be far larger
   than its memory, costs O(max_bytes) to reject. */
char *bw_result_encode(const bw_assignment_t *a, const bw_result_t *r, const char *worker_id, bool envelope,
                       size_t *len);

/* Encodes an ExecAssignmentAck with status "accepted", "rejected" or "error". Caller frees. */
char *bw_ack_encode(const bw_assignment_t *a, const char *status, const char *message, bool envelope,
                    size_t *len);

typedef struct bw_heartbeat {
    const char *worker_id;
    const char *status; /* idle | busy | draining | stopped */
    double load;
    int64_t in_flight, queued, max_concurrency;
    int64_t uptime_s;
    int64_t rss_bytes;
    const char *build;
    json_t *consumer; /* borrowed; NULL: none (JetStream mode: the consumer's counters) */
} bw_heartbeat_t;

char *bw_heartbeat_encode(const bw_heartbeat_t *h, bool envelope, size_t *len);

typedef struct bw_dead_letter {
    const char *reason; /* PARSE_ERROR | DECODE_ERROR | PUBLISH_ERROR | MAX_DELIVER */
    const char *worker_id;
    const char *subject;
    const char *data; /* the original message or the unpublished result */
    size_t len;
    json_t *headers; /* borrowed object name -> string, or NULL */
    const char *assignment_id, *trace_id, *error;
    size_t max_message_bytes; /* the original is stored only up to this size */
} bw_dead_letter_t;

char *bw_dead_letter_encode(const bw_dead_letter_t *d, bool envelope, size_t *len);

#endif
