/*
 * What the two baseline responders (bw-responder, bw-js-responder) share: the router-format echo result
 * they answer an assignment with, and the result message with the contract's headers.
 */
#ifndef BW_BENCH_RS_ECHO_H
#define BW_BENCH_RS_ECHO_H

#include <jansson.h>
#include <nats/nats.h>

/* Wall-clock milliseconds. */
long long rs_now_ms(void);
/* A string member of o, or NULL. */
const char *rs_str(json_t *o, const char *k);
/* The echo result of assignment a (the bare object) received at t0 (rs_now_ms), as `name` (provider and
   worker id); NULL when a has no assignment id, tenant or job type. Caller decrefs. */
json_t *rs_echo_result(json_t *a, long long t0, const char *name);
/* The result message: data on subject with the headers tenant_id, version 1, Nats-Msg-Id result-<id>.
   NULL when it cannot be made. Caller publishes and destroys it. */
natsMsg *rs_result_msg(const char *subject, const char *data, const char *tenant, const char *id);

#endif
