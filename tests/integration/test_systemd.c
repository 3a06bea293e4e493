/*
 * The worker under systemd's notify protocol (deploy/systemd: Type=notify, WatchdogSec=), without
 * systemd: the test binds the AF_UNIX datagram socket systemd would, passes it as NOTIFY_SOCKET with
 * WATCHDOG_USEC, and reads what the real worker sends. READY=1 once it is ready, WATCHDOG=1 pings from
 * its loop, STATUS= when readiness changes (the NATS server gone), STOPPING=1 on SIGTERM.
 */
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cmocka.h>

#include "harness.h"
#include "testutil.h"

static char dir[64], path[96];
static int sock = -1;

static int setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof dir, "/tmp/bw-systemd-XXXXXX");
    if (mkdtemp(dir) == NULL)
        return -1;
    snprintf(path, sizeof path, "%s/notify", dir);
    sock = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path);
    return sock >= 0 && bind(sock, (struct sockaddr *)&sa, sizeof sa) == 0 ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    close(sock);
    unlink(path);
    rmdir(dir);
    return 0;
}

/* The next datagram within timeout_ms into buf; 0, or -1 when none came. */
static int next_datagram(char *buf, size_t len, int timeout_ms)
{
    struct pollfd p = {.fd = sock, .events = POLLIN};
    if (poll(&p, 1, timeout_ms) != 1)
        return -1;
    ssize_t n = recv(sock, buf, len - 1, 0);
    if (n < 0)
        return -1;
    buf[n] = '\0';
    return 0;
}

/* Reads datagrams until one equals want (within timeout_ms); counts the WATCHDOG=1 pings seen on the way
   (*pings, may be NULL) and fails on an unexpected READY=1 (ready_ok false). 0 when it came. */
static int wait_for(const char *want, int timeout_ms, int *pings, bool ready_ok)
{
    int64_t end = bw_test_now_ms() + timeout_ms;
    char buf[256];
    while (bw_test_now_ms() < end) {
        if (next_datagram(buf, sizeof buf, (int)(end - bw_test_now_ms())) != 0)
            return -1;
        if (strcmp(buf, want) == 0)
            return 0;
        if (strcmp(buf, "WATCHDOG=1") == 0) {
            if (pings != NULL)
                (*pings)++;
        } else if (!ready_ok && strncmp(buf, "READY=1", 7) == 0) {
            fail_msg("unexpected %s while waiting for %s", buf, want);
        }
    }
    return -1;
}

static void test_ready_watchdog_status_stopping(void **state)
{
    (void)state;
    bw_harness_t h;
    char notify[160];
    snprintf(notify, sizeof notify, "NOTIFY_SOCKET=%s", path);
    const char *env[] = {notify, "WATCHDOG_USEC=300000", NULL};
    assert_int_equal(bw_harness_start(&h, env), 0);
    /* READY=1 with the readiness, then the loop's pings (every 100 ms for a 300 ms watchdog) */
    if (wait_for("READY=1\nSTATUS=READY", 10000, NULL, true) != 0) {
        bw_test_proc_dump_log(&h.workers[0]);
        fail_msg("no READY=1 from the worker");
    }
    int pings = 0;
    while (pings < 3) {
        char buf[256];
        assert_int_equal(next_datagram(buf, sizeof buf, 5000), 0);
        if (strcmp(buf, "WATCHDOG=1") == 0)
            pings++;
    }
    /* the server goes: readiness changes, and the pings go on (the loop still turns) */
    bw_test_nats_stop(&h.nats, 1);
    pings = 0;
    assert_int_equal(wait_for("STATUS=NOT_CONNECTED", 10000, &pings, false), 0);
    assert_int_equal(wait_for("WATCHDOG=1", 5000, NULL, false), 0);
    assert_int_equal(bw_test_nats_start_on(&h.nats, h.nats.port), 0);
    assert_int_equal(wait_for("STATUS=READY", 15000, NULL, false), 0); /* READY=1 is said once only */
    assert_int_equal(bw_test_proc_signal(&h.workers[0], SIGTERM), 0);
    assert_int_equal(wait_for("STOPPING=1\nSTATUS=draining", 10000, NULL, false), 0);
    int code = -1;
    assert_int_equal(bw_test_proc_wait(&h.workers[0], 20000, &code), 0);
    assert_int_equal(code, 0);
    bw_harness_stop(&h, 0);
}

/* Without NOTIFY_SOCKET nothing is sent (a worker run by hand, or by another supervisor). */
static void test_silent_without_systemd(void **state)
{
    (void)state;
    bw_harness_t h;
    const char *env[] = {"WATCHDOG_USEC=300000", NULL};
    assert_int_equal(bw_harness_start(&h, env), 0);
    assert_int_equal(bw_test_proc_log_count(&h.workers[0], "run by systemd"), 0);
    char buf[256];
    /* the worker is ready and its loop has turned for a while (it answered jobs): still nothing here */
    assert_int_equal(bw_harness_submit(&h, "sd-1", "echo", "{}", 5000), 0);
    json_t *r = bw_harness_result(&h, "sd-1", 10000);
    assert_non_null(r);
    json_decref(r);
    assert_int_equal(next_datagram(buf, sizeof buf, 0), -1);
    assert_int_equal(bw_harness_stop(&h, 0), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ready_watchdog_status_stopping),
        cmocka_unit_test(test_silent_without_systemd),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
