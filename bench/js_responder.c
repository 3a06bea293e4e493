/*
 * bw-js-responder: the JetStream baseline (issue 16), the least a worker must do per echo job when
 * assignments come from a durable pull consumer. It binds to the durable consumer the worker uses
 * (stream CAF_ASSIGN on caf.exec.assign.v1, WorkQueue retention, file storage; durable caf-workers, ack
 * explicit, ack wait 30 s, max_deliver -1, max_ack_pending 100,000: created with the worker's settings when
 * missing), fetches in batches, publishes one router-shaped result per message (the same fields and
 * headers as bw-responder) and acks it. Nothing else: no result store, no confirmation of the published
 * results before the ack, no in-progress acks, no dedup, no logs.
 *
 * Fetching: natsSubscription_Fetch alone asks the server for the whole batch and, when nothing is
 * waiting, holds its pull request open until the batch is full or the request expires, so a load
 * smaller than the batch would stall until then. This takes what is there (a no-wait request for up to
 * --batch messages) and, when nothing is, waits for the next message (a one-message fetch), then asks
 * for a batch again. One thread (main) fetches, answers and acks; nats.c's threads read the socket and,
 * without --send-asap, write it (its flusher).
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

typedef struct opts {
    const char *url, *subject, *result_subject, *stream, *durable;
    int batch;
    int64_t wait_ms, ack_wait_ms;
    bool send_asap;
} opts_t;

static volatile sig_atomic_t g_stop;
static opts_t O = {"nats://127.0.0.1:4222",
                   "caf.exec.assign.v1",
                   "caf.exec.result.v1",
                   "CAF_ASSIGN",
                   "caf-workers",
                   256,
                   500,
                   30000,
                   false};

static void publish(natsConnection *nc, const char *data, const char *tenant, const char *id)
{
    natsMsg *m = rs_result_msg(O.result_subject, data, tenant, id);
    if (m == NULL)
        return;
    natsConnection_PublishMsg(nc, m);
    natsMsg_Destroy(m);
}

/* Answers one delivery and acks it (a plain +ACK publish: no wait for the server's confirmation). */
static void answer(natsConnection *nc, natsMsg *msg)
{
    long long t0 = rs_now_ms();
    json_t *root = json_loadb(natsMsg_GetData(msg), (size_t)natsMsg_GetDataLength(msg), 0, NULL);
    json_t *a = json_is_object(json_object_get(root, "data")) ? json_object_get(root, "data") : root;
    json_t *r = rs_echo_result(a, t0, "bw-js-responder");
    if (r != NULL) {
        char *s = json_dumps(r, JSON_COMPACT | JSON_PRESERVE_ORDER);
        publish(nc, s, rs_str(a, "tenant_id"), rs_str(a, "assignment_id"));
        free(s);
        json_decref(r);
    }
    json_decref(root);
    natsMsg_Ack(msg, NULL);
}

/* Up to --batch messages that are waiting now, else the next one to arrive within --wait-ms.
   NATS_TIMEOUT when nothing came. */
static natsStatus fetch(natsSubscription *sub, natsMsgList *list)
{
    jsFetchRequest req;
    jsFetchRequest_Init(&req);
    req.Batch = O.batch;
    req.NoWait = true;
    req.Expires = O.wait_ms * 1000000;
    natsStatus s = natsSubscription_FetchRequest(list, sub, &req);
    if (s == NATS_NOT_FOUND || s == NATS_TIMEOUT)
        s = natsSubscription_Fetch(list, sub, 1, O.wait_ms, NULL);
    return s == NATS_NOT_FOUND ? NATS_TIMEOUT : s;
}

/* The stream (created when missing, as the worker does with CAF_JS_CREATE=true) and the durable. */
static natsStatus ensure_stream_and_consumer(jsCtx *js)
{
    jsStreamInfo *si = NULL;
    jsConsumerInfo *ci = NULL;
    jsErrCode jerr = 0;
    natsStatus s = js_GetStreamInfo(&si, js, O.stream, NULL, &jerr);
    if (s == NATS_NOT_FOUND) {
        jsStreamConfig sc;
        const char *subjects[] = {O.subject};
        jsStreamConfig_Init(&sc);
        sc.Name = O.stream;
        sc.Subjects = subjects;
        sc.SubjectsLen = 1;
        sc.Retention = js_WorkQueuePolicy;
        sc.Storage = js_FileStorage;
        sc.Replicas = 1;
        s = js_AddStream(&si, js, &sc, NULL, &jerr);
    }
    jsStreamInfo_Destroy(si);
    if (s != NATS_OK)
        return s;
    s = js_GetConsumerInfo(&ci, js, O.stream, O.durable, NULL, &jerr);
    if (s == NATS_NOT_FOUND) {
        jsConsumerConfig cc;
        jsConsumerConfig_Init(&cc);
        cc.Durable = O.durable;
        cc.AckPolicy = js_AckExplicit;
        cc.AckWait = O.ack_wait_ms * 1000000;
        cc.MaxDeliver = -1;
        cc.FilterSubject = O.subject;
        cc.MaxAckPending = 100000; /* as the worker creates it (src/net/busjs.c) */
        s = js_AddConsumer(&ci, js, O.stream, &cc, NULL, &jerr);
    }
    jsConsumerInfo_Destroy(ci);
    return s;
}

static void on_signal(int sig)
{
    g_stop = 1;
}

static int parse(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(argv[i], "--send-asap"))
            O.send_asap = true;
        else if (!strcmp(argv[i], "--url") && v)
            O.url = argv[++i];
        else if (!strcmp(argv[i], "--subject") && v)
            O.subject = argv[++i];
        else if (!strcmp(argv[i], "--result-subject") && v)
            O.result_subject = argv[++i];
        else if (!strcmp(argv[i], "--stream") && v)
            O.stream = argv[++i];
        else if (!strcmp(argv[i], "--durable") && v)
            O.durable = argv[++i];
        else if (!strcmp(argv[i], "--batch") && v && atoi(v) > 0)
            O.batch = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--wait-ms") && v && atoi(v) > 0)
            O.wait_ms = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--ack-wait-ms") && v && atoi(v) > 0)
            O.ack_wait_ms = atoi(argv[++i]);
        else
            return -1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    natsOptions *o = NULL;
    natsConnection *nc = NULL;
    jsCtx *js = NULL;
    natsSubscription *sub = NULL;
    jsSubOptions so;
    jsErrCode jerr = 0;
    int rc = 1;
    if (getenv("NATS_URL") != NULL)
        O.url = getenv("NATS_URL");
    if (parse(argc, argv) < 0) {
        fprintf(stderr, "usage: bw-js-responder [--url U] [--subject S] [--result-subject R] [--stream N] "
                        "[--durable D] [--batch N] [--wait-ms MS] [--ack-wait-ms MS] [--send-asap]\n");
        return 2;
    }
    struct sigaction sa = {.sa_handler = on_signal};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    jsSubOptions_Init(&so);
    so.Stream = O.stream;
    so.Consumer = O.durable; /* bind: the durable outlives this process, as the workers' does */
    if (natsOptions_Create(&o) != NATS_OK || natsOptions_SetURL(o, O.url) != NATS_OK ||
        natsOptions_SetSendAsap(o, O.send_asap) != NATS_OK || natsConnection_Connect(&nc, o) != NATS_OK ||
        natsConnection_JetStream(&js, nc, NULL) != NATS_OK || ensure_stream_and_consumer(js) != NATS_OK ||
        js_PullSubscribe(&sub, js, O.subject, O.durable, NULL, &so, &jerr) != NATS_OK) {
        fprintf(stderr, "bw-js-responder: %s (JetStream error %d)\n", nats_GetLastError(NULL), (int)jerr);
        goto out;
    }
    printf("js responder ready (stream %s, durable %s, batch %d, %s writes)\n", O.stream, O.durable, O.batch,
           O.send_asap ? "asap" : "buffered");
    fflush(stdout);
    while (!g_stop) {
        natsMsgList list = {0};
        natsStatus s = fetch(sub, &list);
        if (s != NATS_OK && s != NATS_TIMEOUT) {
            fprintf(stderr, "bw-js-responder: fetch: %s\n", natsStatus_GetText(s));
            nats_Sleep(100);
        }
        for (int i = 0; i < list.Count; i++)
            answer(nc, list.Msgs[i]);
        natsMsgList_Destroy(&list);
    }
    natsConnection_FlushTimeout(nc, 2000); /* the last results and acks */
    rc = 0;
out:
    natsSubscription_Destroy(sub); /* not Unsubscribe: that would delete the durable */
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
    natsOptions_Destroy(o);
    nats_Close();
    return rc;
}
