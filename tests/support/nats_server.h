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
    pid_t pid;        /* 0 when not running */
    int port;         /* the client port, kept after stop so the server can be restarted on it */
    char dir[256];    /* temp dir holding nats.log and the ports file; "" when none */
    char url[64];     /* "nats://127.0.0.1:<port>" */
    const char *conf; /* optional nats-server configuration text (e.g. authorization), set before start */
    int jetstream;    /* set before start: run with JetStream (-js), its store in <dir>/js, so a stop with
                         keep_dir and bw_test_nats_start_on restart the server on the same store */
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

/* A JetStream cluster of real servers (routes on loopback), for the delivery fault tests: each node has
   its own temp dir holding its store (<dir>/js), log and configuration; node i can be killed and
   restarted on its port and store. */
#define BW_TEST_NATS_MAX_NODES 5

typedef struct bw_test_nats_cluster {
    bw_test_nats_t nodes[BW_TEST_NATS_MAX_NODES];
    int n;
    int route_ports[BW_TEST_NATS_MAX_NODES];
    char conf[BW_TEST_NATS_MAX_NODES][1024];
    char urls[BW_TEST_NATS_MAX_NODES * 32]; /* every node's client URL, comma-separated */
} bw_test_nats_cluster_t;

/* Starts n (1..BW_TEST_NATS_MAX_NODES) JetStream servers; with n > 1 they form one cluster named "bw".
   Waits until every node accepts connections (not for a meta leader: see the caller's first JetStream
   request). 0 on success; on failure nothing is left running. */
int bw_test_nats_cluster_start(bw_test_nats_cluster_t *c, int n);
/* Restarts node i (stopped or killed) on its port and store. 0 on success. */
int bw_test_nats_cluster_restart(bw_test_nats_cluster_t *c, int i);
/* Stops every node and removes their dirs. Safe on a cluster that never started. */
void bw_test_nats_cluster_stop(bw_test_nats_cluster_t *c);

#endif
