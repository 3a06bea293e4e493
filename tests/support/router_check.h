/*
 * The Beamline router's intake rules for ExecResult and ExecAssignmentAck messages, as an
 * executable spec. It reproduces every verdict in tests/fixtures/router/result-verdicts.jsonl
 * (proved by tests/unit/test_router_verdicts.c), so integration tests can assert that every
 * result and ack the worker emits would be accepted by the real router.
 */
#ifndef BW_TEST_ROUTER_CHECK_H
#define BW_TEST_ROUTER_CHECK_H

#include <jansson.h>
#include <stddef.h>

#define BW_ROUTER_RESULT_SUBJECT "caf.exec.result.v1"
#define BW_ROUTER_ACK_SUBJECT "caf.exec.assign.v1.ack"

/* Remembers the ids of results and of acks (separately) that got far enough to be recorded, so
   that redeliveries are rejected as DUPLICATE the way the router does. Thread-safe. */
typedef struct bw_router_check bw_router_check_t;

/* NULL on out of memory. Destroy with bw_router_check_destroy. */
bw_router_check_t *bw_router_check_create(void);

/* NULL is a no-op. */
void bw_router_check_destroy(bw_router_check_t *rc);

/* Judges one message as the router would on receiving it on `subject`. headers: JSON object of
   header name -> string value (borrowed; NULL = no headers). payload: the raw bytes. Writes "OK"
   or the reject code (e.g. "CORRELATION_FIELDS_INVALID") into code[codelen]. Returns 0 for ACCEPT,
   1 for REJECT. Like the router, it may remember the message's id even when it rejects it. */
int bw_router_check(bw_router_check_t *rc, const char *subject, json_t *headers, const char *payload,
                    size_t len, char *code, size_t codelen);

#endif
