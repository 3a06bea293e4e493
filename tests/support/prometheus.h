/*
 * A real Prometheus server for tests (Debian's prometheus package, /usr/bin/prometheus), in a temp dir
 * of its own (configuration, TSDB, log), listening on a free loopback port, and a client of its HTTP
 * API (libcurl). The test writes the configuration (scrape targets, rule files); the server is ready
 * once /-/ready answers 200 and its /api/v1/status/flags name our configuration file, which proves
 * that the port is ours.
 */
#ifndef BW_TEST_PROMETHEUS_H
#define BW_TEST_PROMETHEUS_H

#include <jansson.h>
#include <sys/types.h>

#define BW_TEST_PROMETHEUS_BIN "/usr/bin/prometheus"

/* Caller-owned; zero-initialise. */
typedef struct bw_test_prom {
    pid_t pid;     /* 0 when not running */
    int port;      /* the web port (API, UI) on 127.0.0.1 */
    char dir[256]; /* temp dir: prometheus.yml, data/, prometheus.log; "" when none */
} bw_test_prom_t;

/* 1 when the Prometheus binary is installed (it is executable), else 0. */
int bw_test_prom_available(void);

/* Writes config (prometheus.yml text) into a fresh temp dir and starts the server on a free port
   (retrying on another when the one picked was taken meanwhile); waits up to 20 s until it is ready.
   0 on success; on failure nothing is left running, the log is dumped to stderr and -1 returned. */
int bw_test_prom_start(bw_test_prom_t *p, const char *config);

/* SIGTERM and reap (SIGKILL after 5 s), then removes the dir unless BW_TEST_KEEP_LOGS is set. Safe to
   call twice and on a server that never started. */
void bw_test_prom_stop(bw_test_prom_t *p);

/* Writes the server's log to stderr (for a failing test). */
void bw_test_prom_dump_log(const bw_test_prom_t *p);

/* GET path_and_query (already URL-encoded) from the server; the parsed JSON body (caller decrefs), or
   NULL when the request failed or the body is not JSON. *http_status (may be NULL) gets the status. */
json_t *bw_test_prom_get(const bw_test_prom_t *p, const char *path_and_query, long *http_status);

/* An instant query (/api/v1/query?query=<promql, URL-encoded>) evaluated now. The whole answer,
   {"status":..,"data":{"resultType":..,"result":[..]}} or {"status":"error","errorType":..,"error":..}
   (caller decrefs), or NULL when the server could not be asked. */
json_t *bw_test_prom_query(const bw_test_prom_t *p, const char *promql);

/* The result vector of a successful instant query (borrowed from answer), or NULL when the answer is
   an error or not a vector. */
json_t *bw_test_prom_vector(json_t *answer);

/* A sample's value (its "value": [time, "string"]) as a double; NAN when it has none. */
double bw_test_prom_sample_value(json_t *sample);

#endif
