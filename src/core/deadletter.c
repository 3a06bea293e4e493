/* One path for every dead letter, whoever produced it: the scheduler (bad input) or the bus (a result
   that could not be published). */
#include "core/deadletter.h"

#include <stdlib.h>
#include <string.h>

#include "obs/log.h"
#include "obs/metrics.h"
#include "util/xalloc.h"

struct bw_deadletters {
    const bw_config_t *cfg;
    bw_dlq_t *dlq;
    bw_publish_fn publish;
    void *ud;
    size_t (*max_payload)(void *ud); /* NULL: no limit */
    void *max_ud;
};

bw_deadletters_t *bw_deadletters_create(const bw_config_t *cfg, bw_dlq_t *dlq, bw_publish_fn publish,
                                        void *ud)
{
    bw_deadletters_t *d = bw_calloc(1, sizeof *d);
    d->cfg = cfg;
    d->dlq = dlq;
    d->publish = publish;
    d->ud = ud;
    return d;
}

void bw_deadletters_set_max_payload(bw_deadletters_t *d, size_t (*fn)(void *ud), void *ud)
{
    d->max_payload = fn;
    d->max_ud = ud;
}

void bw_deadletters_destroy(bw_deadletters_t *d)
{
    free(d);
}

void bw_deadletters_send(bw_deadletters_t *d, bw_dead_letter_t *letter)
{
    size_t len;
    letter->worker_id = d->cfg->worker_id;
    letter->max_message_bytes = (size_t)d->cfg->dlq_message_max_bytes;
    bw_metrics_dead_letter(letter->reason);
    bw_log(BW_LOG_WARN, "dead letter", BW_LS("reason", letter->reason), BW_LS("error", letter->error),
           BW_LS("assignment_id", letter->assignment_id), BW_LS("subject", letter->subject),
           BW_LI("bytes", letter->len));
    char *line = bw_dead_letter_encode(letter, false, &len);
    if (d->dlq != NULL)
        bw_dlq_append(d->dlq, line, len);
    if (d->cfg->envelope) {
        free(line);
        line = bw_dead_letter_encode(letter, true, &len);
    }
    size_t max = d->max_payload != NULL ? d->max_payload(d->max_ud) : 0;
    if (max > 0 && len > max) { /* the server would refuse it: the subject gets it without the original */
        free(line);
        letter->max_message_bytes = 0;
        line = bw_dead_letter_encode(letter, d->cfg->envelope, &len);
    }
    bw_outmsg_t m = {.kind = BW_OUT_DEAD_LETTER, .subject = d->cfg->dlq_subject, .data = line, .len = len};
    d->publish(d->ud, &m);
    free(line);
}

void bw_deadletters_undelivered(bw_deadletters_t *d, const bw_outmsg_t *m, const char *error)
{
    json_t *headers = json_object();
    const char *msgid = NULL, *trace = NULL;
    for (int i = 0; i < BW_OUTMSG_MAX_HEADERS && m->hkeys[i] != NULL; i++) {
        if (m->hvals[i] == NULL)
            continue;
        json_object_set_new(headers, m->hkeys[i], json_string(m->hvals[i]));
        if (strcmp(m->hkeys[i], "Nats-Msg-Id") == 0)
            msgid = m->hvals[i];
        else if (strcmp(m->hkeys[i], "trace_id") == 0)
            trace = m->hvals[i];
    }
    bw_dead_letter_t letter = {.reason = "PUBLISH_ERROR",
                               .subject = m->subject,
                               .data = m->data,
                               .len = m->len,
                               .headers = headers,
                               .trace_id = trace,
                               .error = error,
                               .assignment_id = msgid && !strncmp(msgid, "result-", 7) ? msgid + 7 : NULL};
    bw_deadletters_send(d, &letter);
    json_decref(headers);
}
