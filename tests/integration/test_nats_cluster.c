/*
 * Integration: the broker the JetStream delivery mode (issue 16) relies on, as Debian packages it: a real
 * 3-node nats-server cluster (routes on loopback), a stream with 3 replicas, and the node the client is
 * connected to killed (SIGKILL) in the middle of publishing. Every publish acknowledged before, during
 * and after the failover is in the stream once (de-duplicated by Nats-Msg-Id), the client fails over to
 * the other nodes, and the killed node catches up when it comes back. This is the test support the
 * worker's fault tests build on (tests/support/nats_server.h, bw_test_nats_cluster_*).
 */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <nats/nats.h>

#include "nats_server.h"
#include "testutil.h"

#define STREAM "BWT"
#define WAIT_MS 30000 /* elections take seconds; a busy machine may take several */

static bw_test_nats_cluster_t C;
static natsConnection *nc;
static jsCtx *js;

static int setup(void **state)
{
    natsOptions *o = NULL;
    if (bw_test_nats_cluster_start(&C, 3) != 0)
        return -1;
    const char *servers[] = {C.nodes[0].url, C.nodes[1].url, C.nodes[2].url};
    if (natsOptions_Create(&o) != NATS_OK || natsOptions_SetServers(o, servers, 3) != NATS_OK ||
        natsOptions_SetMaxReconnect(o, -1) != NATS_OK || natsOptions_SetReconnectWait(o, 50) != NATS_OK ||
        natsOptions_SetTimeout(o, 2000) != NATS_OK || natsConnection_Connect(&nc, o) != NATS_OK) {
        fprintf(stderr, "cannot connect to %s: %s\n", C.urls, nats_GetLastError(NULL));
        natsOptions_Destroy(o);
        return -1;
    }
    natsOptions_Destroy(o);
    return natsConnection_JetStream(&js, nc, NULL) == NATS_OK ? 0 : -1;
}

static int teardown(void **state)
{
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
    bw_test_nats_cluster_stop(&C);
    return 0;
}

/* Creates the R3 stream, retrying while the cluster has no meta leader yet (its first seconds). */
static void add_stream(void)
{
    const char *subjects[] = {"bwt.>"};
    jsStreamConfig sc;
    jsStreamConfig_Init(&sc);
    sc.Name = STREAM;
    sc.Subjects = subjects;
    sc.SubjectsLen = 1;
    sc.Replicas = 3;
    sc.Storage = js_FileStorage;
    natsStatus s = NATS_ERR;
    for (int64_t end = bw_test_now_ms() + WAIT_MS; s != NATS_OK && bw_test_now_ms() < end;) {
        jsStreamInfo *si = NULL;
        jsErrCode jerr = 0;
        s = js_AddStream(&si, js, &sc, NULL, &jerr);
        jsStreamInfo_Destroy(si);
        if (s != NATS_OK)
            bw_test_sleep_ms(50); /* polling the cluster's own election: there is no event to wait on */
    }
    if (s != NATS_OK)
        fail_msg("no R3 stream within %d ms: %s", WAIT_MS, nats_GetLastError(NULL));
}

/* Publishes message i with Nats-Msg-Id "m-<i>" until the stream acknowledges it (a failover makes some
   attempts fail or time out; the id makes a retry of one that was stored a no-op). Returns the attempts. */
static int publish_acked(int i)
{
    char id[32], data[64];
    snprintf(id, sizeof id, "m-%d", i);
    int n = snprintf(data, sizeof data, "{\"i\":%d}", i);
    jsPubOptions po;
    jsPubOptions_Init(&po);
    po.MsgId = id;
    po.MaxWait = 2000;
    int attempts = 0;
    for (int64_t end = bw_test_now_ms() + WAIT_MS; bw_test_now_ms() < end;) {
        jsPubAck *ack = NULL;
        attempts++;
        natsStatus s = js_Publish(&ack, js, "bwt.m", data, n, &po, NULL);
        jsPubAck_Destroy(ack);
        if (s == NATS_OK)
            return attempts;
        bw_test_sleep_ms(20);
    }
    fail_msg("message %d not acknowledged within %d ms: %s", i, WAIT_MS, nats_GetLastError(NULL));
    return attempts;
}

/* The index of the node the connection uses now. */
static int connected_node(void)
{
    char url[128] = "";
    assert_int_equal(natsConnection_GetConnectedUrl(nc, url, sizeof url), NATS_OK);
    const char *colon = strrchr(url, ':');
    int port = colon ? atoi(colon + 1) : 0;
    for (int i = 0; i < C.n; i++)
        if (C.nodes[i].port == port)
            return i;
    fail_msg("connected to %s, which is none of the nodes", url);
    return -1;
}

/* Waits until the stream holds want messages on every replica, all current. */
static void wait_replicated(uint64_t want)
{
    uint64_t msgs = 0;
    int current = 0;
    for (int64_t end = bw_test_now_ms() + WAIT_MS; bw_test_now_ms() < end; bw_test_sleep_ms(50)) {
        jsStreamInfo *si = NULL;
        if (js_GetStreamInfo(&si, js, STREAM, NULL, NULL) != NATS_OK)
            continue;
        msgs = si->State.Msgs;
        current = 0;
        for (int k = 0; si->Cluster != NULL && k < si->Cluster->ReplicasLen; k++)
            current += si->Cluster->Replicas[k]->Current && !si->Cluster->Replicas[k]->Offline;
        bool leader = si->Cluster != NULL && si->Cluster->Leader != NULL;
        jsStreamInfo_Destroy(si);
        if (msgs == want && leader && current == 2) /* the leader and its two followers */
            return;
    }
    fail_msg("stream holds %llu messages (want %llu) with %d current followers (want 2)",
             (unsigned long long)msgs, (unsigned long long)want, current);
}

static void test_r3_stream_survives_the_connected_node_killed(void **state)
{
    enum { PER_PHASE = 200 };
    add_stream();
    int retried = 0;
    for (int i = 0; i < PER_PHASE; i++)
        retried += publish_acked(i) - 1;
    int victim = connected_node();
    assert_int_equal(kill(C.nodes[victim].pid, SIGKILL), 0);
    for (int i = PER_PHASE; i < 2 * PER_PHASE; i++)
        retried += publish_acked(i) - 1;
    assert_true(connected_node() != victim); /* failed over */
    assert_int_equal(bw_test_nats_cluster_restart(&C, victim), 0);
    wait_replicated(2 * PER_PHASE); /* every acknowledged message, once, on all three */
    print_message("node n%d killed: %d publishes retried during the failover, 0 lost, 0 duplicated\n", victim,
                  retried);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_r3_stream_survives_the_connected_node_killed),
    };
    int rc = cmocka_run_group_tests(tests, setup, teardown);
    nats_CloseAndWait(2000);
    return bw_test_exit_status(rc);
}
