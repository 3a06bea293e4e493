/*
 * A real GraphQL server for the graphql job type's tests: graphql_server.js (graphql-js from
 * Debian's node-graphql behind node's http module) in a child process, listening on 127.0.0.1 on
 * a free port. The script documents the schema and the answers.
 */
#ifndef BW_TEST_GRAPHQL_SERVER_H
#define BW_TEST_GRAPHQL_SERVER_H

#include <sys/types.h>

/* Caller-owned; bw_test_graphql_server_start fills every field. */
typedef struct bw_test_graphql_server {
    pid_t pid; /* 0 when not running */
    int port;
    char url[64]; /* "http://127.0.0.1:<port>/graphql" */
} bw_test_graphql_server_t;

/* Starts node on the script (node from /usr/bin or PATH, graphql-js from /usr/share/nodejs) and
   waits up to 10 s for its "PORT <n>" line. 0 on success; -1 with the reason on stderr (node or
   node-graphql missing, the script failing), and nothing left running. The child is SIGKILLed if
   the starting thread dies. */
int bw_test_graphql_server_start(bw_test_graphql_server_t *g);

/* SIGTERM and reap (SIGKILL after 5 s). Safe to call twice and on a server that never started. */
void bw_test_graphql_server_stop(bw_test_graphql_server_t *g);

#endif
