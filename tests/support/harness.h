/*
 * The integration-test fixture: a real nats-server on a free port, one or more real worker processes
 * (the built binary) and a test client that records every result, ack, heartbeat and dead letter.
 * Every result the harness hands back has been checked against the router's intake rules.
 */
#ifndef BW_TEST_HARNESS_H
#define BW_TEST_HARNESS_H

#include <jansson.h>

#include "client.h"
#include "nats_server.h"
#include "proc.h"

#define BW_H_MAX_WORKERS 4
#define BW_H_RESULTS "caf.exec.result.v1"
#define BW_H_ASSIGN "caf.exec.assign.v1"
#define BW_H_CANCEL "caf.exec.cancel.v1"
#define BW_H_HEARTBEAT "caf.status.heartbeat.v1"
#define BW_H_DLQ "caf.deadletter.v1"
#define BW_H_ACK "caf.exec.assign.v1.ack"

typedef struct bw_harness {
    bw_test_nats_t nats;
    bw_test_proc_t workers[BW_H_MAX_WORKERS];
    int nworkers;
    int exit_checked[BW_H_MAX_WORKERS]; /* the test checked this worker's exit itself */
    bw_test_client_t *client;
    /* Each worker writes its dead letters to a file of its own (DLQ_PATH) in dlq_dir, a temp dir the
       harness makes and removes, unless the test set DLQ_PATH itself; dlq_paths[i] is the one used. */
    char dlq_dir[64];
    char dlq_paths[BW_H_MAX_WORKERS][320];
    /* Likewise each worker's APPROVAL_DIR: dlq_dir/approvals-<i> unless the test set APPROVAL_DIR. */
    char approval_dirs[BW_H_MAX_WORKERS][320];
} bw_harness_t;

/* Starts nats-server, the test client (collecting every subject above) and one worker with the
   extra environment env ("K=V", NULL-terminated, may be NULL). 0 on success. */
int bw_harness_start(bw_harness_t *h, const char *const *env);
/* bw_harness_start with a JetStream server (-js, its store in h->nats.dir/js): the worker's env says
   CAF_CONSUMER=jetstream and the rest itself. */
int bw_harness_start_js(bw_harness_t *h, const char *const *env);
/* Only the JetStream server and the collecting client, no worker: the test adds them (bw_harness_spawn,
   bw_harness_add_worker) once it has set up streams or when a worker is expected to fail its start-up. */
int bw_harness_start_js_server(bw_harness_t *h);
/* bw_harness_start, then the first worker's health server port (it logs it); -1 (with the worker's log
   dumped) when either fails. */
int bw_harness_start_http(bw_harness_t *h, const char *const *env);
/* Starts one more worker with the harness's environment (NATS_URL, quiet test defaults) plus env,
   without waiting; returns its index or -1. */
int bw_harness_spawn(bw_harness_t *h, const char *const *env);
/* The approval journal directory of worker i (the harness's own, or the test's APPROVAL_DIR). */
const char *bw_harness_approval_dir(const bw_harness_t *h, int i);
/* The DLQ file of worker i (the harness's own temp file, or the test's DLQ_PATH). */
const char *bw_harness_dlq_path(const bw_harness_t *h, int i);
/* The dead letters in worker i's DLQ file so far, one JSON object per line, as a JSON array (caller
   decrefs; empty when the file does not exist). Fails the test on a line that is not a JSON object. */
json_t *bw_harness_dead_letters(const bw_harness_t *h, int i);
/* Runs the worker binary with args (e.g. "dlq", "replay") against the harness's nats-server and the DLQ
   file dlq_path; its stderr goes to the test's, its stdout to *out (caller frees; out may be NULL).
   Returns the exit code. */
int bw_harness_cli(const bw_harness_t *h, const char *dlq_path, const char *const *args, char **out);

/* Starts one more worker; returns its index or -1. Waits until it logs "worker ready". */
int bw_harness_add_worker(bw_harness_t *h, const char *const *env);
/* Stops the workers with SIGTERM (each must exit 0 within 20 s: a crash, a hang or a sanitizer
   report fails), then the client and the server. Dumps worker logs to stderr when dump is non-zero
   or a worker did not stop cleanly. Returns 0 when every worker stopped cleanly. */
int bw_harness_stop(bw_harness_t *h, int dump);
/* Waits for worker i's exit and returns its exit code (fails the test, with the worker's log, after
   timeout_ms); the harness then does not require exit code 0 of it. */
int bw_harness_wait_exit(bw_harness_t *h, int i, int timeout_ms);

/* A bare ExecAssignment (malloc'd JSON; caller frees). payload may be NULL; deadline_ms <= 0 omits
   options.deadline_ms. */
char *bw_harness_assignment(const char *id, const char *type, const char *payload, int deadline_ms);
/* An assignment of tenant, no trace or executor (payload: JSON text, NULL when it is not valid JSON);
   the caller frees it. */
char *bw_harness_tenant_assignment(const char *tenant, const char *id, const char *type, const char *payload,
                                   int deadline_ms);
/* Publishes an assignment built as above with the router's headers (tenant_id, version). */
int bw_harness_submit(bw_harness_t *h, const char *id, const char *type, const char *payload,
                      int deadline_ms);
/* Publishes n assignments "<prefix>-<i>" of the given type with payload {"i":<i>} back to back (one
   flush at the end), with the router's headers. 0 on success. */
int bw_harness_submit_many(bw_harness_t *h, const char *prefix, int n, const char *type);
/* The same with one payload for all (NULL = {"i":<i>}) and a deadline. */
int bw_harness_submit_many_with(bw_harness_t *h, const char *prefix, int n, const char *type,
                                const char *payload, int deadline_ms);
/* Publishes raw bytes on the assign subject with optional headers. */
int bw_harness_publish_raw(bw_harness_t *h, const char *data, const char *const *headers);
/* Publishes a cancel request. */
int bw_harness_cancel(bw_harness_t *h, const char *id, const char *reason);
/* Waits up to wait_ms for the result of id; returns the bare result object (envelope unwrapped,
   caller decrefs) or NULL. Fails the test if the result message is not router-acceptable (in router
   format) or lacks the contract's headers. */
json_t *bw_harness_result(bw_harness_t *h, const char *id, int wait_ms);
/* Number of results received so far for id. */
int bw_harness_result_count(bw_harness_t *h, const char *id);
/* Checks every result received so far with the router's rules; returns how many were rejected
   (printing each). Envelope-form results are unwrapped first when unwrap is non-zero. */
int bw_harness_check_all_results(bw_harness_t *h, int unwrap);

/* The value of a series ("name{labels}" exactly) on the first worker's /metrics, or NAN when absent;
   fails the test when the page cannot be fetched or is not a valid exposition. */
double bw_harness_metric(bw_harness_t *h, const char *series);
/* The same on worker i's /metrics. */
double bw_harness_metric_of(bw_harness_t *h, int i, const char *series);

/* The usual group teardown: checks every result received with the router's rules, then stops
   (dumping worker logs when something was wrong or BW_TEST_VERBOSE is set). 0 when all was fine. */
int bw_harness_finish(bw_harness_t *h, int unwrap);

#endif
