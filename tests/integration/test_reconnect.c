/*
 * Integration: the worker against a nats-server that goes away and comes back on the same port.
 * (a) an idle worker reconnects by itself and serves again; (b) a restart while 50 sleeps are in
 * flight loses no result and duplicates none (each completes after the restart or is buffered by
 * nats.c and flushed on reconnect), and the worker keeps serving; (c) a worker started before its
 * server is reachable retries, becomes ready once the server is up and serves; (d) only the
 * worker's link goes down (a TCP proxy in this file cuts it) while the test client stays connected,
 * so results finished during the outage must reach it exactly once, from nats.c's reconnect buffer.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "harness.h"
#include "testutil.h"

#define SLEEPS 50
#define ECHOES 50
#define SLEEP_MS 2500
#define DOWN_MS 600
#define AFTER 200
#define CUT_SLEEPS 20
#define CUT_SLEEP_MS 2000

static bw_harness_t H;

static int setup_idle(void **state)
{
    static const char *const env[] = {"WORKER_ID=reconnect-idle", NULL};
    return bw_harness_start(&H, env);
}

static int setup_load(void **state)
{
    static const char *const env[] = {"WORKER_ID=reconnect-load", "WORKER_MAX_CONCURRENCY=100",
                                      "CAF_ACK_ENABLED=true", NULL};
    return bw_harness_start(&H, env);
}

static int setup_none(void **state)
{
    memset(&H, 0, sizeof H);
    return 0;
}

static int teardown(void **state)
{
    return bw_harness_finish(&H, 0);
}

/* Waits until the test client is connected again, then makes a round trip so that the server has
   its re-sent subscriptions before anyone publishes results. */
static void wait_client_connected(int timeout_ms)
{
    natsConnection *nc = bw_test_client_conn(H.client);
    int64_t deadline = bw_test_now_ms() + timeout_ms;
    while (natsConnection_Status(nc) != NATS_CONN_STATUS_CONNECTED && bw_test_now_ms() < deadline)
        bw_test_sleep_ms(10);
    assert_int_equal(natsConnection_Status(nc), NATS_CONN_STATUS_CONNECTED);
    assert_int_equal(natsConnection_FlushTimeout(nc, 5000), NATS_OK);
}

static void fail_with_log(const char *what)
{
    for (int i = 0; i < H.nworkers; i++)
        bw_test_proc_dump_log(&H.workers[i]);
    fail_msg("%s", what);
}

/* Waits until the worker's subscriptions are live on the restarted server: a heartbeat it sent over
   its new connection reached the (reconnected) test client. nats.c re-sends the SUBs first on a new
   connection and the server handles one connection's protocol in order, so the SUBs are registered
   by then. The "nats reconnected" log line alone does not promise that: nats.c 3.4 posts the
   reconnected callback before it flushes the re-sent SUBs to the socket. Call it after
   wait_client_connected. */
static void wait_worker_resubscribed(void)
{
    int before = bw_test_client_count(H.client, BW_H_HEARTBEAT);
    if (bw_test_client_wait_count(H.client, BW_H_HEARTBEAT, before + 1, 10000) < before + 1)
        fail_with_log("no heartbeat from the worker after the restart");
}

/* One echo job through the worker: exactly one success result with the payload as output. */
static void round_trip(const char *id)
{
    assert_int_equal(bw_harness_submit(&H, id, "echo", "{\"probe\":true}", 10000), 0);
    json_t *r = bw_harness_result(&H, id, 10000);
    if (r == NULL)
        fail_with_log("no result for the probe job");
    assert_string_equal(json_string_value(json_object_get(r, "status")), "success");
    assert_true(json_is_true(json_object_get(json_object_get(r, "output"), "probe")));
    assert_int_equal(bw_harness_result_count(&H, id), 1);
    json_decref(r);
}

/* Stops the server (keeping its dir), waits down_ms and starts it again on the same port. */
static void restart_server(int down_ms)
{
    int port = H.nats.port;
    bw_test_nats_stop(&H.nats, 1);
    bw_test_sleep_ms(down_ms);
    assert_int_equal(bw_test_nats_start_on(&H.nats, port), 0);
    assert_int_equal(H.nats.port, port);
}

/* The worker process is alive and keeps publishing heartbeats that say idle or busy. */
static void assert_worker_serving(bw_test_proc_t *p)
{
    assert_int_equal(bw_test_proc_signal(p, 0), 0);
    int before = bw_test_client_count(H.client, BW_H_HEARTBEAT);
    assert_true(bw_test_client_wait_count(H.client, BW_H_HEARTBEAT, before + 2, 5000) >= before + 2);
    bw_test_msg_t *m = bw_test_client_get(H.client, BW_H_HEARTBEAT, before + 1);
    assert_non_null(m);
    const char *st = json_string_value(json_object_get(m->json, "status"));
    assert_true(st != NULL && (strcmp(st, "idle") == 0 || strcmp(st, "busy") == 0));
    bw_test_msg_destroy(m);
    assert_int_equal(bw_test_proc_log_count(p, "publish failed after retries"), 0);
    assert_int_equal(bw_test_proc_log_count(p, "slow consumer"), 0);
}

/* ---- (a) idle restart ---------------------------------------------------------------------- */

static void test_idle_restart(void **state)
{
    round_trip("idle-before");
    restart_server(500);
    wait_client_connected(10000);
    if (bw_test_proc_wait_log(&H.workers[0], "\"nats reconnected\"", 15000) != 0)
        fail_with_log("the worker did not log \"nats reconnected\"");
    assert_true(bw_test_proc_log_count(&H.workers[0], "nats disconnected") >= 1);
    wait_worker_resubscribed();
    round_trip("idle-after");
    assert_worker_serving(&H.workers[0]);
}

/* ---- (b) restart under load ---------------------------------------------------------------- */

/* Every "<prefix>-<i>", i < n, has exactly one result so far and it is a success. */
static void expect_once_each(const char *prefix, int n)
{
    int bad = 0;
    for (int i = 0; i < n; i++) {
        char id[64];
        snprintf(id, sizeof id, "%s-%d", prefix, i);
        bw_test_msg_t *m = NULL;
        int c = bw_test_client_find(H.client, BW_H_RESULTS, id, 0, &m);
        const char *st = m ? json_string_value(json_object_get(m->json, "status")) : NULL;
        if (c != 1 || st == NULL || strcmp(st, "success") != 0) {
            if (bad++ < 10)
                print_error("%s: %d result(s), status %s\n", id, c, st ? st : "-");
        }
        bw_test_msg_destroy(m);
    }
    if (bad)
        fail_with_log("results missing, duplicated or not successful");
}

static void test_restart_under_load(void **state)
{
    char payload[64];
    snprintf(payload, sizeof payload, "{\"ms\":%d}", SLEEP_MS);
    int64_t t0 = bw_test_now_ms();
    for (int i = 0; i < SLEEPS; i++) {
        char id[64];
        snprintf(id, sizeof id, "load-sleep-%d", i);
        assert_int_equal(bw_harness_submit(&H, id, "sleep", payload, 30000), 0);
    }
    assert_int_equal(bw_harness_submit_many(&H, "load-echo", ECHOES, "echo"), 0);
    /* Every job is accepted (one ack each) and the echoes are done: the sleeps are in flight. */
    if (bw_test_client_wait_count(H.client, BW_H_ACK, SLEEPS + ECHOES, 10000) < SLEEPS + ECHOES ||
        bw_test_client_wait_count(H.client, BW_H_RESULTS, ECHOES, 10000) < ECHOES)
        fail_with_log("jobs were not accepted before the restart");
    expect_once_each("load-echo", ECHOES);
    int64_t t_stop = bw_test_now_ms() - t0;
    if (bw_test_client_count(H.client, BW_H_RESULTS) != ECHOES)
        print_error("warning: sleeps finished before the server was stopped (+%lld ms)\n", (long long)t_stop);
    restart_server(DOWN_MS);
    int64_t t_up = bw_test_now_ms() - t0;
    wait_client_connected(10000);
    int64_t t_client = bw_test_now_ms() - t0;
    print_message("server stopped at +%lld ms, up at +%lld ms, client back at +%lld ms; sleeps end at "
                  "+%d ms\n",
                  (long long)t_stop, (long long)t_up, (long long)t_client, SLEEP_MS);
    /* The premise: the outage falls inside the sleeps, and the test client is subscribed again
       before they end (a result the worker flushes before the client resubscribed would be lost to
       the client, not to the router). Say so when a very slow run breaks it. */
    if (t_client >= SLEEP_MS - 100)
        print_error("warning: the client came back at +%lld ms, after the sleeps ended\n",
                    (long long)t_client);
    /* Finishing the sleeps needs no more than their duration plus the worker's reconnect backoff. */
    int got = bw_test_client_wait_count(H.client, BW_H_RESULTS, ECHOES + SLEEPS, 20000);
    print_message("%d/%d results at +%lld ms\n", got, ECHOES + SLEEPS, (long long)(bw_test_now_ms() - t0));
    bw_test_sleep_ms(300); /* a duplicate, if any, would arrive now */
    expect_once_each("load-sleep", SLEEPS);
    assert_int_equal(bw_test_client_count(H.client, BW_H_RESULTS), ECHOES + SLEEPS);
    if (bw_test_proc_wait_log(&H.workers[0], "\"nats reconnected\"", 10000) != 0)
        fail_with_log("the worker did not log \"nats reconnected\"");

    /* The worker serves normally afterwards. */
    assert_int_equal(bw_harness_submit_many(&H, "after", AFTER, "echo"), 0);
    got = bw_test_client_wait_count(H.client, BW_H_RESULTS, ECHOES + SLEEPS + AFTER, 20000);
    bw_test_sleep_ms(300);
    expect_once_each("after", AFTER);
    assert_int_equal(bw_test_client_count(H.client, BW_H_RESULTS), ECHOES + SLEEPS + AFTER);
    assert_worker_serving(&H.workers[0]);
}

/* ---- (c) worker started before the server ------------------------------------------------- */

static void test_start_before_server(void **state)
{
    char url[128];
    assert_int_equal(bw_test_nats_start(&H.nats), 0);
    int port = H.nats.port;
    bw_test_nats_stop(&H.nats, 1);
    snprintf(url, sizeof url, "NATS_URL=nats://127.0.0.1:%d", port);
    const char *const env[] = {url, "WORKER_ID=reconnect-late", NULL};
    bw_test_proc_t *p = &H.workers[0];
    assert_int_equal(bw_harness_spawn(&H, env), 0);
    if (bw_test_proc_wait_log(p, "nats not reachable yet", 10000) != 0)
        fail_with_log("the worker did not report the unreachable server");
    assert_int_equal(bw_test_proc_log_count(p, "\"worker ready\""), 0);
    assert_int_equal(bw_test_proc_signal(p, 0), 0); /* still running, retrying */

    assert_int_equal(bw_test_nats_start_on(&H.nats, port), 0);
    if (bw_test_proc_wait_log(p, "\"worker ready\"", 15000) != 0)
        fail_with_log("the worker did not become ready once the server was up");
    H.client = bw_test_client_create(H.nats.url);
    assert_non_null(H.client);
    static const char *const subjects[] = {BW_H_RESULTS, BW_H_HEARTBEAT, BW_H_DLQ, BW_H_ACK, NULL};
    for (int i = 0; subjects[i] != NULL; i++)
        assert_int_equal(bw_test_client_collect(H.client, subjects[i]), 0);
    round_trip("late-1");
    assert_worker_serving(p);
}

/* NATS_URL as a list (README: comma-separated): the first server never answers, the second does; the
   worker connects to it and serves (nats.c 3.4 would take the whole list as one unparsable URL). */
static void test_url_list(void **state)
{
    char url[256];
    assert_int_equal(bw_test_nats_start(&H.nats), 0);
    snprintf(url, sizeof url, "NATS_URL=nats://127.0.0.1:%d, %s", bw_test_closed_port(), H.nats.url);
    const char *const env[] = {url, "WORKER_ID=reconnect-list", NULL};
    bw_test_proc_t *p = &H.workers[0];
    assert_int_equal(bw_harness_spawn(&H, env), 0);
    if (bw_test_proc_wait_log(p, "\"worker ready\"", 15000) != 0)
        fail_with_log("the worker did not connect to the second server of its list");
    H.client = bw_test_client_create(H.nats.url);
    assert_non_null(H.client);
    assert_int_equal(bw_test_client_collect(H.client, BW_H_RESULTS), 0);
    round_trip("list-1");
}

/* ---- (d) the worker's link cut by a proxy ------------------------------------------------- */

/* A loopback TCP forwarder between the worker and nats-server, run by one thread. While "down" it
   has closed every forwarded connection and its listening socket, so the worker's reconnects are
   refused; "up" listens again on the same port. */
#define PROXY_MAX_PAIRS 8

typedef struct proxy {
    int port, upstream;
    int lfd;
    int pairs[PROXY_MAX_PAIRS][2]; /* client side, server side; -1 when unused */
    atomic_int want;               /* 1 up, 0 down, -1 exit */
    atomic_int is;                 /* the state the thread has applied */
    pthread_t thread;
} proxy_t;

static proxy_t P;

static int proxy_listen(int port)
{
    struct sockaddr_in a = {
        .sin_family = AF_INET, .sin_port = htons((uint16_t)port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    int one = 1, fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, (struct sockaddr *)&a, sizeof a) != 0 || listen(fd, 16) != 0 ||
        getsockname(fd, (struct sockaddr *)&a, &len) != 0) {
        close(fd);
        return -1;
    }
    P.port = ntohs(a.sin_port);
    return fd;
}

static int proxy_connect_upstream(void)
{
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons((uint16_t)P.upstream),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        close(fd);
        fd = -1;
    }
    return fd;
}

static void proxy_close_pair(int i)
{
    for (int k = 0; k < 2; k++) {
        if (P.pairs[i][k] >= 0)
            close(P.pairs[i][k]);
        P.pairs[i][k] = -1;
    }
}

static void proxy_accept(void)
{
    int c = accept4(P.lfd, NULL, NULL, SOCK_CLOEXEC);
    int u = c >= 0 ? proxy_connect_upstream() : -1;
    for (int i = 0; u >= 0 && i < PROXY_MAX_PAIRS; i++) {
        if (P.pairs[i][0] < 0) {
            P.pairs[i][0] = c;
            P.pairs[i][1] = u;
            return;
        }
    }
    if (c >= 0)
        close(c);
    if (u >= 0)
        close(u);
}

/* Moves what is readable on side k of pair i to the other side; closes the pair on EOF/error. */
static void proxy_forward(int i, int k)
{
    char buf[65536];
    ssize_t n = read(P.pairs[i][k], buf, sizeof buf);
    if (n <= 0) {
        if (n < 0 && (errno == EINTR || errno == EAGAIN))
            return;
        proxy_close_pair(i);
        return;
    }
    for (ssize_t off = 0; off < n;) {
        ssize_t w = send(P.pairs[i][1 - k], buf + off, (size_t)(n - off), MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            proxy_close_pair(i);
            return;
        }
        off += w;
    }
}

/* Applies the wanted state: down closes everything, up listens again. */
static void proxy_apply(int want)
{
    if (want != 1) {
        for (int i = 0; i < PROXY_MAX_PAIRS; i++)
            proxy_close_pair(i);
        if (P.lfd >= 0)
            close(P.lfd);
        P.lfd = -1;
    } else if (P.lfd < 0) {
        P.lfd = proxy_listen(P.port);
    }
    atomic_store(&P.is, want);
}

static void *proxy_main(void *arg)
{
    (void)arg;
    for (;;) {
        int want = atomic_load(&P.want);
        if (want != atomic_load(&P.is) || (want == 1 && P.lfd < 0))
            proxy_apply(want);
        if (want < 0)
            return NULL;
        struct pollfd pfd[1 + 2 * PROXY_MAX_PAIRS];
        int n = 0;
        pfd[n++] = (struct pollfd){.fd = P.lfd, .events = POLLIN};
        for (int i = 0; i < PROXY_MAX_PAIRS; i++)
            for (int k = 0; k < 2; k++)
                pfd[n++] = (struct pollfd){.fd = P.pairs[i][k], .events = POLLIN};
        if (poll(pfd, (nfds_t)n, 10) <= 0)
            continue;
        if (P.lfd >= 0 && (pfd[0].revents & POLLIN))
            proxy_accept();
        for (int i = 0; i < PROXY_MAX_PAIRS; i++)
            for (int k = 0; k < 2; k++)
                if (P.pairs[i][k] >= 0 && (pfd[1 + 2 * i + k].revents & (POLLIN | POLLHUP | POLLERR)))
                    proxy_forward(i, k);
    }
}

static int proxy_start(int upstream)
{
    memset(&P, 0, sizeof P);
    memset(P.pairs, -1, sizeof P.pairs);
    P.upstream = upstream;
    if ((P.lfd = proxy_listen(0)) < 0)
        return -1;
    atomic_store(&P.want, 1);
    atomic_store(&P.is, 1);
    return pthread_create(&P.thread, NULL, proxy_main, NULL) == 0 ? 0 : -1;
}

/* Sets the proxy up (1), down (0) or stops it (-1) and waits until the thread has done it. */
static void proxy_set(int want)
{
    atomic_store(&P.want, want);
    if (want < 0) {
        pthread_join(P.thread, NULL);
        return;
    }
    int64_t deadline = bw_test_now_ms() + 5000;
    while (atomic_load(&P.is) != want && bw_test_now_ms() < deadline)
        bw_test_sleep_ms(5);
    assert_int_equal(atomic_load(&P.is), want);
    if (want == 1)
        assert_true(P.lfd >= 0);
}

static int setup_proxy(void **state)
{
    static const char *const subjects[] = {BW_H_RESULTS, BW_H_HEARTBEAT, BW_H_DLQ, BW_H_ACK, NULL};
    char url[128];
    memset(&H, 0, sizeof H);
    if (bw_test_nats_start(&H.nats) != 0 || proxy_start(H.nats.port) != 0)
        return -1;
    if ((H.client = bw_test_client_create(H.nats.url)) == NULL)
        return -1;
    for (int i = 0; subjects[i] != NULL; i++)
        if (bw_test_client_collect(H.client, subjects[i]) != 0)
            return -1;
    snprintf(url, sizeof url, "NATS_URL=nats://127.0.0.1:%d", P.port);
    const char *const env[] = {url, "WORKER_ID=reconnect-cut", "CAF_ACK_ENABLED=true", NULL};
    if (bw_harness_spawn(&H, env) != 0)
        return -1;
    if (bw_test_proc_wait_log(&H.workers[0], "\"worker ready\"", 10000) != 0) {
        bw_test_proc_dump_log(&H.workers[0]);
        return -1;
    }
    return 0;
}

static int teardown_proxy(void **state)
{
    int rc = teardown(state);
    proxy_set(-1);
    if (P.lfd >= 0)
        close(P.lfd);
    return rc;
}

/* Lines of the worker's log that contain both a and b. */
static int log_lines_with(bw_test_proc_t *p, const char *a, const char *b)
{
    char *log = bw_test_read_file(p->log_path, NULL);
    int n = 0;
    for (char *line = log, *end; line != NULL && *line != '\0'; line = end ? end + 1 : NULL) {
        end = strchr(line, '\n');
        if (end != NULL)
            *end = '\0';
        n += strstr(line, a) != NULL && strstr(line, b) != NULL;
    }
    free(log);
    return n;
}

static void test_results_buffered_while_cut(void **state)
{
    char payload[64];
    snprintf(payload, sizeof payload, "{\"ms\":%d}", CUT_SLEEP_MS);
    round_trip("cut-before");
    for (int i = 0; i < CUT_SLEEPS; i++) {
        char id[64];
        snprintf(id, sizeof id, "cut-sleep-%d", i);
        assert_int_equal(bw_harness_submit(&H, id, "sleep", payload, 30000), 0);
    }
    /* acks for cut-before and every sleep: all of them are running */
    if (bw_test_client_wait_count(H.client, BW_H_ACK, 1 + CUT_SLEEPS, 10000) < 1 + CUT_SLEEPS)
        fail_with_log("the sleeps were not accepted");
    proxy_set(0);
    if (bw_test_proc_wait_log(&H.workers[0], "nats disconnected", 10000) != 0)
        fail_with_log("the worker did not notice the cut");
    /* The sleeps finish (and their results are published into nats.c's buffer) during the cut. */
    int64_t deadline = bw_test_now_ms() + CUT_SLEEP_MS + 10000;
    while (log_lines_with(&H.workers[0], "\"job finished\"", "cut-sleep-") < CUT_SLEEPS &&
           bw_test_now_ms() < deadline)
        bw_test_sleep_ms(20);
    if (log_lines_with(&H.workers[0], "\"job finished\"", "cut-sleep-") < CUT_SLEEPS)
        fail_with_log("the sleeps did not finish during the cut");
    assert_int_equal(bw_test_client_count(H.client, BW_H_RESULTS), 1); /* only cut-before so far */
    proxy_set(1);
    if (bw_test_proc_wait_log(&H.workers[0], "\"nats reconnected\"", 15000) != 0)
        fail_with_log("the worker did not reconnect through the proxy");
    int got = bw_test_client_wait_count(H.client, BW_H_RESULTS, 1 + CUT_SLEEPS, 10000);
    bw_test_sleep_ms(300); /* a duplicate, if any, would arrive now */
    print_message("%d/%d sleep results after the cut\n", got - 1, CUT_SLEEPS);
    expect_once_each("cut-sleep", CUT_SLEEPS);
    assert_int_equal(bw_test_client_count(H.client, BW_H_RESULTS), 1 + CUT_SLEEPS);
    round_trip("cut-after");
    assert_worker_serving(&H.workers[0]);
}

int main(void)
{
    const struct CMUnitTest idle[] = {cmocka_unit_test(test_idle_restart)};
    const struct CMUnitTest load[] = {cmocka_unit_test(test_restart_under_load)};
    const struct CMUnitTest late[] = {cmocka_unit_test(test_start_before_server)};
    const struct CMUnitTest list[] = {cmocka_unit_test(test_url_list)};
    const struct CMUnitTest cut[] = {cmocka_unit_test(test_results_buffered_while_cut)};
    int rc = cmocka_run_group_tests_name("idle restart", idle, setup_idle, teardown);
    rc |= cmocka_run_group_tests_name("restart under load", load, setup_load, teardown);
    rc |= cmocka_run_group_tests_name("server comes up late", late, setup_none, teardown);
    rc |= cmocka_run_group_tests_name("a list of servers", list, setup_none, teardown);
    rc |= cmocka_run_group_tests_name("worker link cut", cut, setup_proxy, teardown_proxy);
    nats_CloseAndWait(2000);
    return rc;
}
