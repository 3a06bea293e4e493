/*
 * bw-responder: the baseline for every throughput and CPU ratio (DESIGN.md "Bars"): the least a
 * worker must do per echo job on this machine. It parses each assignment with jansson, builds the same
 * router-format result (same fields and headers as beamline-worker) and publishes it: no scheduling,
 * no deadlines, no dedup, no logs. Two transports: --event-loop is the worker's own, to the letter: nats.c
 * in external event-loop mode on the worker's adapter (net/natsuv.c), SendAsap on (so no flusher thread,
 * whatever --send-asap says: everything published in one loop iteration leaves in one write before the
 * loop blocks), and received messages destroyed in batches before the loop blocks, with the worker's
 * thresholds (net/bus.c), instead of one by one. Without it, nats.c's threads (reader, the subscription's
 * delivery thread, which answers, and the flusher unless --send-asap).
 */
#include <jansson.h>
#include <nats/nats.h>

#include "rs_echo.h"
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "net/natsuv.h"

/* The worker's release policy (net/bus.c): destroyed together, before the loop blocks, once RELEASE_MIN
   wait, or they hold RELEASE_BYTES, or the first waited RELEASE_NS. */
#define RELEASE_BATCH 256
#define RELEASE_MIN 64
#define RELEASE_BYTES (1024 * 1024)
#define RELEASE_NS (20 * 1000000ull)

typedef struct opts {
    const char *url, *subject, *queue, *result_subject;
    bool send_asap, event_loop;
} opts_t;

static volatile sig_atomic_t g_stop;
static opts_t O = {
    "nats://127.0.0.1:4222", "caf.exec.assign.v1", "caf-workers", "caf.exec.result.v1", false, false};

static struct {
    natsMsg *msgs[RELEASE_BATCH];
    size_t n, bytes;
    unsigned long long first_ns;
} R;

static unsigned long long mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (unsigned long long)ts.tv_sec * 1000000000ull + (unsigned long long)ts.tv_nsec;
}

static void release_all(void)
{
    for (size_t i = 0; i < R.n; i++)
        natsMsg_Destroy(R.msgs[i]);
    R.n = R.bytes = 0;
}

/* --event-loop: the message is destroyed with others before the loop blocks (see on_prepare). */
static void release_later(natsMsg *msg)
{
    if (R.n == RELEASE_BATCH)
        release_all();
    if (R.n == 0)
        R.first_ns = mono_ns();
    R.bytes += (size_t)natsMsg_GetDataLength(msg);
    R.msgs[R.n++] = msg;
}

static void on_prepare(uv_prepare_t *p)
{
    if (R.n >= RELEASE_MIN || R.bytes >= RELEASE_BYTES || (R.n > 0 && mono_ns() - R.first_ns >= RELEASE_NS))
        release_all();
}

static void publish(natsConnection *nc, const char *data, const char *tenant, const char *id)
{
    natsMsg *m = rs_result_msg(O.result_subject, data, tenant, id);
    if (m == NULL)
        return;
    natsConnection_PublishMsg(nc, m);
    if (O.event_loop)
        release_later(m); /* as the worker does with the results it publishes */
    else
        natsMsg_Destroy(m);
}

static void on_msg(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    if (nc == NULL)
        nc = closure;
    long long t0 = rs_now_ms();
    json_t *root = json_loadb(natsMsg_GetData(msg), (size_t)natsMsg_GetDataLength(msg), 0, NULL);
    json_t *a = json_is_object(json_object_get(root, "data")) ? json_object_get(root, "data") : root;
    json_t *r = rs_echo_result(a, t0, "bw-responder");
    if (r != NULL) {
        char *s = json_dumps(r, JSON_COMPACT | JSON_PRESERVE_ORDER);
        publish(nc, s, rs_str(a, "tenant_id"), rs_str(a, "assignment_id"));
        free(s);
        json_decref(r);
    }
    json_decref(root);
    if (O.event_loop)
        release_later(msg);
    else
        natsMsg_Destroy(msg);
}

/* --event-loop: the subscription is synchronous and drained once per loop iteration, after the
   socket reads (uv_check runs right after the poll phase): one thread does everything. */
static void on_check(uv_check_t *c)
{
    natsSubscription *sub = c->data;
    natsMsg *msg = NULL;
    while (natsSubscription_NextMsg(&msg, sub, 0) == NATS_OK)
        on_msg(NULL, sub, msg, c->loop->data);
}

static void on_signal(int sig)
{
    g_stop = 1;
}

static void on_uv_signal(uv_signal_t *h, int sig)
{
    uv_stop(h->loop);
}

static int parse(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(argv[i], "--send-asap"))
            O.send_asap = true;
        else if (!strcmp(argv[i], "--event-loop"))
            O.event_loop = true;
        else if (!strcmp(argv[i], "--url") && v)
            O.url = argv[++i];
        else if (!strcmp(argv[i], "--subject") && v)
            O.subject = argv[++i];
        else if (!strcmp(argv[i], "--queue") && v)
            O.queue = argv[++i];
        else if (!strcmp(argv[i], "--result-subject") && v)
            O.result_subject = argv[++i];
        else
            return -1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    natsOptions *o = NULL;
    natsConnection *nc = NULL;
    natsSubscription *sub = NULL;
    if (getenv("NATS_URL") != NULL)
        O.url = getenv("NATS_URL");
    if (parse(argc, argv) < 0) {
        fprintf(stderr,
                "usage: bw-responder [--url U] [--subject S] [--queue Q] [--result-subject R] [--send-asap] "
                "[--event-loop]\n");
        return 2;
    }
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    /* --event-loop: nats.c's external event loop mode on the worker's own adapter: socket reads and writes
       happen on this thread's loop (no reader or flusher thread), and the synchronous subscription is
       drained on it too: the same transport as beamline-worker, SendAsap included. */
    uv_loop_t *loop = uv_default_loop();
    bw_natsuv_t *io = O.event_loop ? bw_natsuv_create(loop) : NULL;
    if (natsOptions_Create(&o) != NATS_OK || natsOptions_SetURL(o, O.url) != NATS_OK ||
        (io != NULL && bw_natsuv_set_options(io, o) != NATS_OK) ||
        natsOptions_SetSendAsap(o, O.send_asap || O.event_loop) != NATS_OK ||
        natsConnection_Connect(&nc, o) != NATS_OK ||
        (O.event_loop
             ? natsConnection_QueueSubscribeSync(&sub, nc, O.subject, O.queue)
             : natsConnection_QueueSubscribe(&sub, nc, O.subject, O.queue, on_msg, NULL)) != NATS_OK ||
        natsSubscription_SetPendingLimits(sub, 500000, 1024 * 1024 * 1024) != NATS_OK ||
        (!O.event_loop && natsConnection_Flush(nc) != NATS_OK)) {
        fprintf(stderr, "bw-responder: %s\n", nats_GetLastError(NULL));
        return 1;
    }
    printf("responder ready (%s)\n", O.event_loop  ? "event loop, the worker's transport"
                                     : O.send_asap ? "nats.c threads, asap writes"
                                                   : "nats.c threads, buffered writes");
    fflush(stdout);
    if (O.event_loop) {
        uv_signal_t sig;
        uv_signal_init(loop, &sig);
        uv_signal_start(&sig, on_uv_signal, SIGTERM);
        uv_check_t check;
        loop->data = nc;
        uv_check_init(loop, &check);
        check.data = sub;
        uv_check_start(&check, on_check);
        uv_prepare_t prepare;
        uv_prepare_init(loop, &prepare);
        uv_prepare_start(&prepare, on_prepare);
        uv_run(loop, UV_RUN_DEFAULT);
        release_all();
    } else {
        while (!g_stop)
            pause();
    }
    natsSubscription_Destroy(sub);
    natsConnection_Destroy(nc);
    natsOptions_Destroy(o);
    bw_natsuv_destroy(io);
    uv_run(loop, UV_RUN_NOWAIT); /* the adapter's close callbacks */
    nats_Close();
    return 0;
}
