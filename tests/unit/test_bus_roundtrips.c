/*
 * Unit (real nats-server, real bus): the worker's own NATS round trips do not use libuv's thread pool.
 * With the pool (one thread here) held by a job-like work item that does not return, the bus still
 * becomes ready (its readiness flush), confirms a published result (the confirming PING), answers a
 * flush and drains its subscription: all on its bw-nats-rt thread. A probe queued behind the blocker
 * shows that the pool really was full the whole time. Once the server is gone, a published result
 * stays unconfirmed and becomes a PUBLISH_ERROR dead letter when the bus closes.
 *
 * The loop polls a descriptor of its own for the NATS socket (a dup), never nats.c's, which nats.c
 * closes before it detaches (so libuv's epoll_ctl could hit a number another thread just got): read
 * from /proc, the socket registered in the loop's epoll set is open under two numbers, and the one
 * registered goes (with the socket) once nats.c detached it, on a reconnect and at close.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <pthread.h>
#include <unistd.h>

#include <cmocka.h>

#include "core/config.h"
#include "core/deadletter.h"
#include "core/worker.h"
#include "nats_server.h"
#include "net/bus.h"
#include "obs/log.h"
#include "testutil.h"

typedef struct fx {
    uv_loop_t loop;
    bw_config_t cfg;
    bw_test_nats_t nats;
    bw_worker_t *w;
    bw_bus_t *bus;
    bw_deadletters_t *dead;
    int dead_published;    /* PUBLISH_ERROR dead letters the bus produced at close */
    char dead_first[4096]; /* ... the first one */
} fx_t;

static fx_t F;

/* ---- a pool thread held like a job holds it (a stalled fsync, an unreachable DNS server) ---- */

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static bool released, blocker_running;
static uv_work_t blocker, probe;
static atomic_int probe_done;

static void block_work(uv_work_t *r)
{
    pthread_mutex_lock(&mu);
    blocker_running = true;
    pthread_cond_broadcast(&cond);
    while (!released)
        pthread_cond_wait(&cond, &mu);
    pthread_mutex_unlock(&mu);
}

static void nop_work(uv_work_t *r)
{
}

static void nop_after(uv_work_t *r, int status)
{
}

static void probe_after(uv_work_t *r, int status)
{
    atomic_store(&probe_done, 1);
}

static void fill_pool(void)
{
    released = blocker_running = false;
    atomic_store(&probe_done, 0);
    assert_int_equal(uv_queue_work(&F.loop, &blocker, block_work, nop_after), 0);
    pthread_mutex_lock(&mu);
    while (!blocker_running)
        pthread_cond_wait(&cond, &mu);
    pthread_mutex_unlock(&mu);
    assert_int_equal(uv_queue_work(&F.loop, &probe, nop_work, probe_after), 0);
}

static void release_pool(void)
{
    pthread_mutex_lock(&mu);
    released = true;
    pthread_cond_broadcast(&cond);
    pthread_mutex_unlock(&mu);
}

/* ---- fixture ---- */

static void publish_fwd(void *ud, const bw_outmsg_t *m)
{
    fx_t *f = ud;
    if (m->kind == BW_OUT_DEAD_LETTER && f->bus == NULL)
        return;
    if (m->kind == BW_OUT_DEAD_LETTER && strstr(m->data, "\"PUBLISH_ERROR\"") != NULL) {
        if (f->dead_published++ == 0)
            snprintf(f->dead_first, sizeof f->dead_first, "%.*s", (int)m->len, m->data);
    }
    bw_bus_publish(f->bus, m);
}

/* Runs the loop until done(), at most timeout_ms; returns done(). */
static bool run_until(bool (*done)(void), int timeout_ms)
{
    int64_t end = bw_test_now_ms() + timeout_ms;
    while (!done() && bw_test_now_ms() < end)
        uv_run(&F.loop, UV_RUN_NOWAIT), bw_test_sleep_ms(1);
    return done();
}

static bool is_ready(void)
{
    return bw_bus_ready(F.bus);
}

static bool all_confirmed(void)
{
    return bw_bus_unconfirmed(F.bus) == 0;
}

static int flush_rc = 1;
static void flushed(void *ud, int rc)
{
    flush_rc = rc;
}

static bool flush_answered(void)
{
    return flush_rc != 1;
}

static bool intake_closed(void)
{
    return bw_bus_intake_closed(F.bus);
}

static bool probe_ran(void)
{
    return atomic_load(&probe_done) != 0;
}

static int setup(void **state)
{
    char err[256], url[128];
    memset(&F, 0, sizeof F);
    if (bw_test_nats_start(&F.nats) != 0)
        return -1;
    snprintf(url, sizeof url, "%s", F.nats.url);
    setenv("NATS_URL", url, 1);
    setenv("LOG_LEVEL", "error", 1);
    setenv("CAF_ACK_ENABLED", "false", 1);
    if (bw_config_load(&F.cfg, err, sizeof err) != 0)
        return -1;
    bw_log_setup(BW_LOG_ERROR, true, "unit");
    uv_loop_init(&F.loop);
    F.dead = bw_deadletters_create(&F.cfg, NULL, publish_fwd, &F);
    bw_worker_opts_t o = {.publish = publish_fwd, .publish_ud = &F, .heartbeats = false, .dead = F.dead};
    F.w = bw_worker_create(&F.loop, &F.cfg, &o);
    return 0;
}

static int teardown(void **state)
{
    release_pool();
    bw_bus_t *b = F.bus;
    if (b != NULL)
        bw_bus_destroy(b);
    F.bus = NULL;
    bw_worker_destroy(F.w);
    uv_run(&F.loop, UV_RUN_DEFAULT);
    uv_loop_close(&F.loop);
    bw_deadletters_destroy(F.dead);
    bw_config_dispose(&F.cfg);
    bw_test_nats_stop(&F.nats, 0);
    return 0;
}

static void publish_kind(bw_out_kind_t kind, const char *subject, const char *id)
{
    char data[256], msgid[128];
    snprintf(data, sizeof data, "{\"assignment_id\":\"%s\",\"status\":\"success\"}", id);
    snprintf(msgid, sizeof msgid, "result-%s", id);
    bw_outmsg_t m = {.kind = kind, .subject = subject, .data = data, .len = strlen(data)};
    m.hkeys[0] = "Nats-Msg-Id";
    m.hvals[0] = msgid;
    bw_bus_publish(F.bus, &m);
}

static void publish_result(const char *id)
{
    publish_kind(BW_OUT_RESULT, "unit.results", id);
}

static void test_round_trips_with_the_pool_full(void **state)
{
    fill_pool();
    int64_t t0 = bw_test_now_ms();
    F.bus = bw_bus_create(&F.loop, &F.cfg, F.w, F.dead);
    assert_non_null(F.bus);
    assert_true(run_until(is_ready, 5000)); /* the readiness flush */
    publish_result("unit-1");
    assert_int_equal(bw_bus_unconfirmed(F.bus), 1);
    assert_true(run_until(all_confirmed, 5000)); /* the confirming PING */
    bw_bus_flush_async(F.bus, 2000, flushed, NULL);
    assert_true(run_until(flush_answered, 5000));
    assert_int_equal(flush_rc, 0);
    bw_bus_stop_intake(F.bus);
    assert_true(run_until(intake_closed, 5000)); /* the drain */
    print_message("ready, confirmed, flushed and drained in %lld ms with the pool full\n",
                  (long long)(bw_test_now_ms() - t0));
    assert_false(probe_ran()); /* the pool was full all along */
    release_pool();
    assert_true(run_until(probe_ran, 5000));
}

static void test_unconfirmed_result_becomes_a_dead_letter(void **state)
{
    F.bus = bw_bus_create(&F.loop, &F.cfg, F.w, F.dead);
    assert_non_null(F.bus);
    assert_true(run_until(is_ready, 5000));
    publish_result("before");
    assert_true(run_until(all_confirmed, 5000));
    bw_test_nats_stop(&F.nats, 1);
    int64_t end = bw_test_now_ms() + 5000;
    while (bw_bus_connected(F.bus) && bw_test_now_ms() < end)
        uv_run(&F.loop, UV_RUN_NOWAIT), bw_test_sleep_ms(1);
    assert_false(bw_bus_connected(F.bus));
    publish_result("during"); /* into nats.c's reconnect buffer: accepted, never confirmed */
    publish_kind(BW_OUT_ACK, "unit.acks", "ack-during");         /* acks too */
    publish_kind(BW_OUT_HEARTBEAT, "unit.heartbeats", "hb-during"); /* heartbeats are not kept */
    int64_t wait = bw_test_now_ms() + 300;
    while (bw_test_now_ms() < wait)
        uv_run(&F.loop, UV_RUN_NOWAIT), bw_test_sleep_ms(1);
    assert_int_equal(bw_bus_unconfirmed(F.bus), 2);
    bw_bus_destroy(F.bus); /* closes: the reconnect buffer is discarded */
    F.bus = NULL;
    assert_int_equal(F.dead_published, 2);
    assert_non_null(strstr(F.dead_first, "\"assignment_id\":\"during\""));
    assert_non_null(strstr(F.dead_first, "\"subject\":\"unit.results\""));
    assert_non_null(strstr(F.dead_first, "\"Nats-Msg-Id\":\"result-during\""));
}

/* ---- descriptors, from /proc ---- */

/* The inode of fd if it is a socket, else 0. */
static unsigned long socket_inode(int fd)
{
    char path[64], link[64];
    unsigned long ino = 0;
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(path, link, sizeof link - 1);
    if (n <= 0)
        return 0;
    link[n] = '\0';
    return sscanf(link, "socket:[%lu]", &ino) == 1 ? ino : 0;
}

/* How many of this process's descriptors are the socket ino (0: any socket). */
static int open_count(unsigned long ino)
{
    DIR *d = opendir("/proc/self/fd");
    struct dirent *e;
    int n = 0;
    while (d != NULL && (e = readdir(d)) != NULL) {
        unsigned long i = e->d_name[0] != '.' ? socket_inode(atoi(e->d_name)) : 0;
        n += i != 0 && (ino == 0 || i == ino);
    }
    if (d != NULL)
        closedir(d);
    return n;
}

/* The socket registered in the loop's epoll set (the loop polls nothing else that is a socket):
   *tfd gets the number it is registered under; returns its inode, 0 when none, fails on two. */
static unsigned long polled_socket(int *tfd)
{
    char path[64], line[256];
    unsigned long found = 0;
    snprintf(path, sizeof path, "/proc/self/fdinfo/%d", uv_backend_fd(&F.loop));
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    while (fgets(line, sizeof line, f) != NULL) {
        int fd;
        if (sscanf(line, "tfd: %d", &fd) != 1 || socket_inode(fd) == 0)
            continue;
        assert_int_equal(found, 0);
        found = socket_inode(fd);
        *tfd = fd;
    }
    fclose(f);
    return found;
}

static unsigned long watched_ino;
static bool watched_gone(void)
{
    return open_count(watched_ino) == 0;
}

static bool reconnected(void)
{
    int tfd;
    return bw_bus_connected(F.bus) && polled_socket(&tfd) != 0 && polled_socket(&tfd) != watched_ino;
}

static void test_the_loop_polls_a_descriptor_of_its_own(void **state)
{
    int sockets_before = open_count(0), tfd = -1, tfd2 = -1;
    F.bus = bw_bus_create(&F.loop, &F.cfg, F.w, F.dead);
    assert_non_null(F.bus);
    assert_true(run_until(is_ready, 5000));
    unsigned long ino = polled_socket(&tfd);
    assert_true(ino != 0);
    /* nats.c's descriptor and the loop's own */
    assert_int_equal(open_count(ino), 2);
    /* a reconnect: nats.c drops the old socket and attaches a new one */
    bw_test_nats_stop(&F.nats, 1);
    int64_t end = bw_test_now_ms() + 5000;
    while (bw_bus_connected(F.bus) && bw_test_now_ms() < end)
        uv_run(&F.loop, UV_RUN_NOWAIT), bw_test_sleep_ms(1);
    assert_false(bw_bus_connected(F.bus));
    /* nats.c stopped polling (it removes its interest, it does not detach) and shut the socket down;
       the loop's dup of it is kept until the next attach */
    assert_int_equal(polled_socket(&tfd2), 0);
    assert_int_equal(bw_test_nats_start_on(&F.nats, F.nats.port), 0);
    watched_ino = ino;
    assert_true(run_until(reconnected, 10000));
    assert_true(run_until(watched_gone, 5000)); /* the new socket's attach closed the old dup */
    unsigned long ino2 = polled_socket(&tfd2);
    assert_int_equal(open_count(ino2), 2);
    /* at close: nats.c closes its descriptor, then detaches; the loop's goes once the handle closed */
    bw_bus_destroy(F.bus);
    F.bus = NULL;
    uv_run(&F.loop, UV_RUN_NOWAIT);
    watched_ino = ino2;
    assert_true(run_until(watched_gone, 5000));
    assert_int_equal(open_count(0), sockets_before);
}

int main(void)
{
    setenv("UV_THREADPOOL_SIZE", "1", 1); /* before the first use of the pool */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_round_trips_with_the_pool_full, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unconfirmed_result_becomes_a_dead_letter, setup, teardown),
        cmocka_unit_test_setup_teardown(test_the_loop_polls_a_descriptor_of_its_own, setup, teardown),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    nats_CloseAndWait(2000);
    return rc;
}
