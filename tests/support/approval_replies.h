/*
 * Checks of the approvals' decision replies (README, "Deciding over NATS"), shared by the approvals tests:
 * {"accepted":true,"completed":bool} or {"accepted":false,"reason":R,"message":M}. Each consumes the
 * reply (decrefs it) and fails the test with the reply printed when it is not the one expected.
 */
#ifndef BW_TEST_APPROVAL_REPLIES_H
#define BW_TEST_APPROVAL_REPLIES_H

#include <jansson.h>
#include <stdbool.h>

void bw_test_expect_accepted(json_t *reply, bool completed);
/* A refusal with this reason and a message. */
void bw_test_expect_refused(json_t *reply, const char *reason);

#endif
