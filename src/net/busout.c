/*
 * The bus's outbound half (see net/bus.c's top comment for the whole): publishing with headers, retries
 * with exponential backoff on a loop timer and a dead letter after RESULT_PUBLISH_MAX_RETRIES, the
 * confirmation FIFO of published results and acks (done only when a PING sent after them got its PONG),
 * and the refusals nats.c reports (a refused result becomes a PUBLISH_ERROR dead letter). Loop thread
 * only, except where a function says otherwise.
 */
#include "net/bus_int.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "obs/log.h"
#include "obs/metrics.h"
#include "util/clock.h"
#include "util/xalloc.h"

/* ---- confirmations (loop thread; see the top of the file) ---- */

static bool confirmed_kind(bw_out_kind_t k)
{
    return k == BW_OUT_RESULT || k == BW_OUT_ACK; /* heartbeats go stale; dead letters are in the file */
}

static uint64_t sent_end_seq(const bw_bus_t *b)
{
    return b->head_seq + (b->sent_len - b->sent_head);
}

static void on_hold_timer(uv_timer_t *t);

/* Releases kept messages from the head while they are confirmed and no longer held (all: held or not,
   at close), and arms the hold timer for the next one held. */
static void release_confirmed(bw_bus_t *b, bool all)
{
    uint64_t now = uv_now(b->loop);
    while (b->sent_head < b->sent_len && b->head_seq < b->conf_seq &&
           (all || b->sent[b->sent_head].hold_until <= now)) {
        if (b->sent[b->sent_head].msg != NULL)
            bw_bus_release_later(b, b->sent[b->sent_head].msg);
        b->sent_head++;
        b->head_seq++;
    }
    if (b->sent_head == b->sent_len) {
        b->sent_head = b->sent_len = 0;
    } else if (b->sent_head >= 1024 && b->sent_head * 2 >= b->sent_len) {
        /* compacted once at least half is dead: amortised O(1) per message */
        memmove(b->sent, b->sent + b->sent_head, (b->sent_len - b->sent_head) * sizeof *b->sent);
        b->sent_len -= b->sent_head;
        b->sent_head = 0;
    }
    if (b->head_seq < b->conf_seq && b->sent_head < b->sent_len) {
        uint64_t until = b->sent[b->sent_head].hold_until;
        uv_timer_start(&b->hold_timer, on_hold_timer, until > now ? until - now : 0, 0);
    } else {
        uv_timer_stop(&b->hold_timer);
    }
}

static void on_hold_timer(uv_timer_t *t)
{
    release_confirmed(t->data, false);
}

/* Every kept message with a sequence number below upto is confirmed: released now, or held for hold_ms
   (see the top of the file). */
static void confirm_upto(bw_bus_t *b, uint64_t upto, uint64_t hold_ms)
{
    uint64_t until = uv_now(b->loop) + hold_ms;
    size_t i = b->sent_head + (size_t)(b->conf_seq - b->head_seq);
    for (; b->conf_seq < upto && i < b->sent_len; i++, b->conf_seq++)
        b->sent[i].hold_until = until;
    release_confirmed(b, false);
    if (b->js != NULL)
        bw_busjs_confirmed(b, b->conf_seq);
}

/* Loop thread, right after a PONG: could the server have refused anything before it? nats.c records a
   refusal as the connection's last error while it parses the -ERR (on this thread, before the PONG);
   NATS_OK means no error was ever recorded on this connection. */
static bool refusal_possible(bw_bus_t *b)
{
    const char *txt = NULL;
    return natsConnection_GetLastError(b->nc, &txt) != NATS_OK;
}

static void on_confirm_timer(uv_timer_t *t);

static void arm_confirm(bw_bus_t *b, uint64_t delay_ms)
{
    if (!b->confirming && !uv_is_active((uv_handle_t *)&b->confirm_timer) && !atomic_load(&b->closing))
        uv_timer_start(&b->confirm_timer, on_confirm_timer, delay_ms, 0);
}

static void confirmed(bw_bus_t *b, int rc, void *ud)
{
    uint64_t *upto = ud;
    b->confirming = false;
    if (rc == 0)
        confirm_upto(b, *upto, refusal_possible(b) ? REFUSAL_HOLD_MS : 0);
    free(upto);
    if (bw_bus_unconfirmed(b) > 0)
        arm_confirm(b, rc == 0 ? CONFIRM_DELAY_MS : CONFIRM_OFFLINE_MS);
}

/* One round trip confirms everything published before it was asked for. */
void bw_busout_start_confirm(bw_bus_t *b, int64_t timeout_ms)
{
    uint64_t *upto = bw_calloc(1, sizeof *upto);
    *upto = sent_end_seq(b);
    b->confirming = true;
    bw_bus_roundtrip(b, false, timeout_ms, confirmed, upto);
}

static void on_confirm_timer(uv_timer_t *t)
{
    bw_bus_t *b = t->data;
    if (b->confirming || bw_bus_unconfirmed(b) == 0)
        return;
    if (!atomic_load(&b->connected)) { /* a PING would wait for the reconnect: look again later */
        arm_confirm(b, CONFIRM_OFFLINE_MS);
        return;
    }
    bw_busout_start_confirm(b, CONFIRM_TIMEOUT_MS);
}

static void keep_unconfirmed(bw_bus_t *b, natsMsg *msg, bw_out_kind_t kind)
{
    if (b->sent_len == b->sent_cap) {
        b->sent_cap = b->sent_cap ? b->sent_cap * 2 : 256;
        b->sent = bw_realloc(b->sent, b->sent_cap * sizeof *b->sent);
    }
    b->sent[b->sent_len++] = (sent_t){msg, kind, 0};
    arm_confirm(b, CONFIRM_DELAY_MS);
}

/* A kept message as a PUBLISH_ERROR dead letter with its subject, bytes and headers (what `dlq replay`
   needs to deliver it). */
static void dead_letter_msg(bw_bus_t *b, natsMsg *msg, bw_out_kind_t kind, const char *why)
{
    const char **keys = NULL;
    int nkeys = 0;
    bw_outmsg_t m = {.kind = kind,
                     .subject = natsMsg_GetSubject(msg),
                     .data = natsMsg_GetData(msg),
                     .len = (size_t)natsMsg_GetDataLength(msg)};
    if (natsMsgHeader_Keys(msg, &keys, &nkeys) == NATS_OK) {
        for (int k = 0, j = 0; k < nkeys && j < BW_OUTMSG_MAX_HEADERS; k++) {
            const char *v = bw_bus_msg_header(msg, keys[k]);
            if (v != NULL) {
                m.hkeys[j] = keys[k];
                m.hvals[j++] = v;
            }
        }
    }
    bw_metrics_inc(BW_C_PUBLISH_FAILURES);
    if (b->dead != NULL)
        bw_deadletters_undelivered(b->dead, &m, why);
    free((void *)keys);
}

/* At close, once every refusal is known: what is held is released, and every kept message the server
   never confirmed becomes a dead letter. */
void bw_busout_dead_letter_unconfirmed(bw_bus_t *b, const char *why)
{
    size_t first = b->sent_head + (size_t)(b->conf_seq - b->head_seq), n = 0;
    for (size_t i = first; i < b->sent_len; i++)
        n += b->sent[i].msg != NULL;
    if (n > 0)
        bw_log(BW_LOG_ERROR,
               "messages not confirmed by the server before the connection closed: dead-lettered",
               BW_LI("count", (long long)n), BW_LS("error", why));
    for (size_t i = first; i < b->sent_len; i++)
        if (b->sent[i].msg != NULL)
            dead_letter_msg(b, b->sent[i].msg, b->sent[i].kind, why);
    b->conf_seq = sent_end_seq(b);
    release_confirmed(b, true);
}

/* Every kept message on subject (held or unconfirmed: all were published before the refusal was
   reported) becomes a PUBLISH_ERROR dead letter. */
static void refuse_subject(bw_bus_t *b, const char *subject)
{
    char why[320];
    size_t n = 0;
    snprintf(why, sizeof why, "Permissions Violation for Publish to \"%s\"", subject);
    for (size_t i = b->sent_head; i < b->sent_len; i++) {
        sent_t *e = &b->sent[i];
        if (e->msg == NULL || strcmp(natsMsg_GetSubject(e->msg), subject) != 0)
            continue;
        dead_letter_msg(b, e->msg, e->kind, why);
        bw_bus_release_later(b, e->msg);
        e->msg = NULL;
        n++;
    }
    if (n > 0)
        bw_log(BW_LOG_WARN, "publishes refused by the NATS server: dead-lettered", BW_LS("subject", subject),
               BW_LI("count", (long long)n));
}

/* Loop thread: takes the refusals nats.c reported. */
void bw_busout_take_refusals(bw_bus_t *b)
{
    bw_list_t todo, *l;
    bw_list_init(&todo);
    pthread_mutex_lock(&b->refusal_mu);
    while ((l = bw_list_shift(&b->refusals)) != NULL)
        bw_list_push(&todo, l);
    b->nrefusals = 0;
    pthread_mutex_unlock(&b->refusal_mu);
    while ((l = bw_list_shift(&todo)) != NULL) {
        refusal_t *r = bw_list_entry(l, refusal_t, link);
        refuse_subject(b, r->subject);
        free(r);
    }
}

void bw_busout_on_refusal_async(uv_async_t *a)
{
    bw_busout_take_refusals(a->data);
}

/* ---- publishing (loop thread) ---- */

uint64_t bw_busout_end_seq(const bw_bus_t *b)
{
    return sent_end_seq(b);
}

natsStatus bw_busout_publish_raw(bw_bus_t *b, bw_out_kind_t kind, const char *subject, const char *reply,
                                 const char *data, size_t len, const char *const *hk, const char *const *hv)
{
    natsMsg *msg = NULL;
    natsStatus s = natsMsg_Create(&msg, subject, reply, data, (int)len);
    for (int i = 0; s == NATS_OK && i < BW_OUTMSG_MAX_HEADERS && hk[i] != NULL; i++)
        if (hv[i] != NULL)
            s = natsMsgHeader_Set(msg, hk[i], hv[i]);
    if (s == NATS_OK)
        s = natsConnection_PublishMsg(b->nc, msg);
    if (s == NATS_OK && confirmed_kind(kind) && reply == NULL)
        keep_unconfirmed(b, msg, kind);
    else if (msg != NULL)
        bw_bus_release_later(b, msg);
    return s;
}

static uint64_t backoff_ms(int attempts)
{
    uint64_t d = RETRY_BASE_MS;
    for (int i = 1; i < attempts && d < RETRY_MAX_MS; i++)
        d *= 2;
    d = d > RETRY_MAX_MS ? RETRY_MAX_MS : d;
    return d / 2 + (uint64_t)rand() % (d / 2 + 1);
}

static void schedule_retry_timer(bw_bus_t *b)
{
    uint64_t now = uv_now(b->loop), next = UINT64_MAX;
    for (bw_list_t *l = b->retries.next; l != &b->retries; l = l->next) {
        retry_t *r = bw_list_entry(l, retry_t, link);
        if (r->due_ms < next)
            next = r->due_ms;
    }
    if (next != UINT64_MAX)
        uv_timer_start(&b->retry_timer, bw_busout_on_retry_timer, next > now ? next - now : 0, 0);
}

static void retry_free(retry_t *r)
{
    free(r->subject);
    free(r->data);
    for (int i = 0; i < BW_OUTMSG_MAX_HEADERS; i++) {
        free(r->hkeys[i]);
        free(r->hvals[i]);
    }
    free(r);
}

/* The result could not be delivered: it becomes a PUBLISH_ERROR dead letter (file + DLQ subject). */
static void give_up(bw_bus_t *b, retry_t *r, natsStatus s)
{
    bw_outmsg_t m = {.kind = r->kind, .subject = r->subject, .data = r->data, .len = r->len};
    bw_metrics_inc(BW_C_PUBLISH_FAILURES);
    for (int i = 0; i < BW_OUTMSG_MAX_HEADERS; i++) {
        m.hkeys[i] = r->hkeys[i];
        m.hvals[i] = r->hvals[i];
    }
    bw_log(BW_LOG_ERROR,
           r->kind == BW_OUT_ACK ? "ack publish failed after retries" : "result publish failed after retries",
           BW_LS("subject", r->subject), BW_LS("error", natsStatus_GetText(s)),
           BW_LI("attempts", r->attempts));
    if (b->dead != NULL)
        bw_deadletters_undelivered(b->dead, &m, natsStatus_GetText(s));
}

void bw_busout_on_retry_timer(uv_timer_t *t)
{
    bw_bus_t *b = t->data;
    uint64_t now = uv_now(b->loop);
    bw_list_t *l = b->retries.next;
    while (l != &b->retries) {
        retry_t *r = bw_list_entry(l, retry_t, link);
        l = l->next;
        if (r->due_ms > now)
            continue;
        bw_metrics_inc(BW_C_PUBLISH_RETRIES);
        natsStatus s = bw_busout_publish_raw(b, r->kind, r->subject, NULL, r->data, r->len,
                                             (const char *const *)r->hkeys, (const char *const *)r->hvals);
        if (s != NATS_OK && ++r->attempts <= b->cfg->result_publish_max_retries) {
            r->due_ms = now + backoff_ms(r->attempts);
            continue;
        }
        if (s != NATS_OK)
            give_up(b, r, s);
        bw_list_remove(&r->link);
        retry_free(r);
    }
    schedule_retry_timer(b);
}

static void enqueue_retry(bw_bus_t *b, const bw_outmsg_t *m, natsStatus s)
{
    retry_t *r = bw_calloc(1, sizeof *r);
    r->kind = m->kind;
    r->subject = bw_strdup(m->subject);
    r->data = bw_strndup(m->data, m->len);
    r->len = m->len;
    for (int i = 0; i < BW_OUTMSG_MAX_HEADERS && m->hkeys[i] != NULL; i++) {
        r->hkeys[i] = bw_strdup(m->hkeys[i]);
        r->hvals[i] = m->hvals[i] ? bw_strdup(m->hvals[i]) : NULL;
    }
    r->attempts = 1;
    if (b->cfg->result_publish_max_retries == 0) {
        give_up(b, r, s);
        retry_free(r);
        return;
    }
    r->due_ms = uv_now(b->loop) + backoff_ms(1);
    bw_list_push(&b->retries, &r->link);
    bw_log(BW_LOG_WARN, "publish failed: will retry", BW_LS("subject", m->subject),
           BW_LS("error", natsStatus_GetText(s)));
    schedule_retry_timer(b);
}

void bw_bus_publish(void *ud, const bw_outmsg_t *m)
{
    bw_bus_t *b = ud;
    if (b->js != NULL && m->kind == BW_OUT_RESULT && m->assignment_id != NULL)
        bw_busjs_publish_result(b, m);
    else
        bw_busout_publish_core(b, m);
}

void bw_busout_publish_core(bw_bus_t *b, const bw_outmsg_t *m)
{
    natsStatus s = bw_busout_publish_raw(b, m->kind, m->subject, NULL, m->data, m->len, m->hkeys, m->hvals);
    if (s == NATS_OK)
        return;
    /* Results and acks are retried: a dead letter is already in the DLQ file, a heartbeat goes stale. */
    if (confirmed_kind(m->kind))
        enqueue_retry(b, m, s);
    else
        bw_log(BW_LOG_DEBUG, "publish dropped", BW_LS("subject", m->subject),
               BW_LS("error", natsStatus_GetText(s)));
}

void bw_busout_flush_retries(bw_bus_t *b)
{
    bw_list_t *l;
    while ((l = bw_list_shift(&b->retries)) != NULL) {
        retry_t *r = bw_list_entry(l, retry_t, link);
        natsStatus s =
            b->nc ? bw_busout_publish_raw(b, r->kind, r->subject, NULL, r->data, r->len,
                                          (const char *const *)r->hkeys, (const char *const *)r->hvals)
                  : NATS_CONNECTION_CLOSED;
        if (s != NATS_OK)
            give_up(b, r, s);
        retry_free(r);
    }
}

size_t bw_bus_unconfirmed(bw_bus_t *b)
{
    return (size_t)(sent_end_seq(b) - b->conf_seq);
}
