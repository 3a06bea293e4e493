/*
 * A real nats-server for tests (the nats.c habit: integration tests talk to the real thing on
 * loopback). Each server runs in its own temp dir, listens on 127.0.0.1 only, and logs to
 * <dir>/nats.log.
 */
#ifndef BW_TEST_NATS_SERVER_H
#define BW_TEST_NATS_SERVER_H

#include <sys/types.h>

#define BW_TEST_NATS_SERVER_BIN "/usr/sbin/nats-server"

/* Caller-owned (embed it or put it on the stack; zero-initialise before the first start). */
typedef struct bw_test_nats {
    pid_t pid;     /* 0 when not running */
    int port;      /* the client port, kept after stop so the server can be restarted on it */
    char dir[256]; /* temp dir holding nats.log and the ports file; "" when none */
    char url[64];  /* "nats://127.0.0.1:<port>" */
    const char *conf; /* optional nats-server configuration text (e.g. authorization), set before start */
} bw_test_nats_t;

/* Starts a server on a free port (-p -1, port read from the ports file) in a fresh mkdtemp dir and
   waits (at most 5 s) until a TCP connect succeeds. 0 on success; on failure nothing is left
   running and -1 is returned. */
int bw_test_nats_start(bw_test_nats_t *s);

/* Same, on the given port (port <= 0 means a free one). Reuses s->dir when it is set, which is how
   a reconnect test restarts the server it stopped with keep_dir on the port it had. */
int bw_test_nats_start_on(bw_test_nats_t *s, int port);

/* SIGTERM and reap (SIGKILL after 3 s). Keeps the dir when keep_dir, else removes it. Safe to call
   twice and on a server that never started. */
void bw_test_nats_stop(bw_test_nats_t *s, int keep_dir);

#endif
