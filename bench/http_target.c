/*
 * bw-http-target: the test suite's scriptable HTTP server (tests/support/http_server.c: one libuv thread,
 * thousands of connections) as a process, for bench/run-http.sh. Prints "PORT <n>" and serves until
 * SIGINT or SIGTERM.
 */
#include <signal.h>
#include <stdio.h>
#include <unistd.h>

#include "http_server.h"

static volatile sig_atomic_t stop;

static void on_signal(int sig)
{
    stop = 1;
}

int main(void)
{
    bw_test_http_server_t *s = bw_test_http_server_start();
    if (s == NULL) {
        fprintf(stderr, "bw-http-target: cannot start the server\n");
        return 1;
    }
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    printf("PORT %d\n", bw_test_http_server_port(s));
    fflush(stdout);
    while (!stop)
        pause();
    fprintf(stderr, "bw-http-target: %ld requests, at most %d connections at once\n",
            bw_test_http_server_total(s), bw_test_http_server_max_open(s));
    bw_test_http_server_stop(s);
    return 0;
}
