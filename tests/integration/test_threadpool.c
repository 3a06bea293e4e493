/*
 * Integration: WORKER_THREADPOOL_SIZE sizes libuv's thread pool of the real binary (UV_THREADPOOL_SIZE set
 * before the pool's first use); 0 derives it from WORKER_MAX_CONCURRENCY, clamped to 4..64. The pool is
 * made to start with a large assignment (decoded on the pool), then the worker's unnamed threads are
 * counted in /proc: the pool's threads are the only ones whose number depends on the setting (the
 * worker's own threads are named: bw-http, bw-log, bw-dlq, bw-nats-rt), so differences between
 * workers run the same way are exactly differences of pool size.
 */
#include <dirent.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "harness.h"
#include "testutil.h"

static bw_harness_t H;

static int setup(void **state)
{
    static const char *const env[] = {"WORKER_THREADPOOL_SIZE=4", "WORKER_MAX_CONCURRENCY=12", NULL};
    return bw_harness_start(&H, env);
}

static int teardown(void **state)
{
    return bw_harness_finish(&H, 0);
}

/* Threads of pid still called like the process (comm "beamline-worke", cut at 15 bytes). */
static int unnamed_threads(pid_t pid)
{
    char dir[64], path[400];
    int n = 0;
    snprintf(dir, sizeof dir, "/proc/%d/task", (int)pid);
    DIR *d = opendir(dir);
    assert_non_null(d);
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        snprintf(path, sizeof path, "%s/%s/comm", dir, e->d_name);
        char *comm = bw_test_read_file(path, NULL);
        if (comm != NULL && strncmp(comm, "beamline-worke", 14) == 0)
            n++;
        free(comm);
    }
    closedir(d);
    return n;
}

/* Starts the pool of worker idx (a 20 KB assignment is decoded there) and counts its unnamed threads. */
static int pool_started_threads(int idx, const char *id)
{
    static char payload[24 * 1024];
    memset(payload, 0, sizeof payload);
    strcpy(payload, "{\"pad\":\"");
    memset(payload + strlen(payload), 'x', 20 * 1024);
    strcat(payload, "\"}");
    assert_int_equal(bw_harness_submit(&H, id, "echo", payload, 10000), 0);
    json_t *r = bw_harness_result(&H, id, 10000);
    assert_non_null(r);
    json_decref(r);
    return unnamed_threads(H.workers[idx].pid);
}

/* Stops worker idx (the only one serving) so that the next worker gets the next assignment. */
static void stop_worker(int idx)
{
    int code = -1;
    assert_int_equal(bw_test_proc_signal(&H.workers[idx], SIGTERM), 0);
    assert_int_equal(bw_test_proc_wait(&H.workers[idx], 20000, &code), 0);
    assert_int_equal(code, 0);
    H.exit_checked[idx] = 1;
}

static int next_worker(const char *max, const char *size)
{
    static char m[64], s[64];
    snprintf(m, sizeof m, "WORKER_MAX_CONCURRENCY=%s", max);
    snprintf(s, sizeof s, "WORKER_THREADPOOL_SIZE=%s", size);
    const char *const env[] = {m, s, NULL};
    int idx = bw_harness_add_worker(&H, env);
    assert_true(idx > 0);
    return idx;
}

static void test_pool_size_from_configuration(void **state)
{
    int base = pool_started_threads(0, "pool-4"); /* 4 pool threads + the rest */
    stop_worker(0);
    /* derived: one thread per job slot */
    int w = next_worker("12", "0");
    int derived12 = pool_started_threads(w, "pool-derived-12");
    stop_worker(w);
    /* derived, at the bounds: never under 4, never over 64 */
    w = next_worker("1", "0");
    int derived1 = pool_started_threads(w, "pool-derived-1");
    stop_worker(w);
    w = next_worker("100", "0");
    int derived100 = pool_started_threads(w, "pool-derived-100");
    print_message("unnamed threads: size 4 -> %d, derived(12) -> %d, derived(1) -> %d, derived(100) -> %d\n",
                  base, derived12, derived1, derived100);
    assert_int_equal(derived12 - base, 12 - 4);
    assert_int_equal(derived1 - base, 0);
    assert_int_equal(derived100 - base, 64 - 4);
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_pool_size_from_configuration)};
    int rc = cmocka_run_group_tests_name("thread pool", tests, setup, teardown);
    nats_CloseAndWait(2000);
    return rc;
}
