/*
 * Dead letters: what the worker could not answer or could not deliver. Each one is appended to the
 * local DLQ file (always the bare form, for replay) and published on CAF_DLQ_SUBJECT (enveloped in
 * envelope mode), counted by reason and logged. Loop thread only.
 */
#ifndef BW_CORE_DEADLETTER_H
#define BW_CORE_DEADLETTER_H

#include "core/config.h"
#include "core/protocol.h"
#include "core/worker.h"
#include "store/dlq.h"

typedef struct bw_deadletters bw_deadletters_t;

/* dlq may be NULL (no file). publish sends the message on the DLQ subject; it is not retried (the file
   keeps the letter). Caller frees with bw_deadletters_destroy. */
bw_deadletters_t *bw_deadletters_create(const bw_config_t *cfg, bw_dlq_t *dlq, bw_publish_fn publish,
                                        void *ud);
void bw_deadletters_destroy(bw_deadletters_t *d);
/* Records one dead letter (reason, original bytes, headers…); worker_id and the size cap come from the
   configuration. */
void bw_deadletters_send(bw_deadletters_t *d, bw_dead_letter_t *letter);

/* Loop thread. The transport's largest message (fn(ud): NATS max_payload, 0 = no limit; fn may be NULL): a
   letter too large for it is published without its original (message_truncated, payload_ref kept), which
   the DLQ file still holds whole. */
void bw_deadletters_set_max_payload(bw_deadletters_t *d, size_t (*fn)(void *ud), void *ud);

/* A result (or other message) that could not be published: a PUBLISH_ERROR dead letter carrying it and
   its headers (assignment_id and trace_id taken from the Nats-Msg-Id and trace_id headers). */
void bw_deadletters_undelivered(bw_deadletters_t *d, const bw_outmsg_t *m, const char *error);

#endif
