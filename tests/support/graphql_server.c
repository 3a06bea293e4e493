/*
 * Starts and stops graphql_server.js for tests. The script picks its own port and reports it on
 * the first line of stdout, read here through a pipe, which avoids the race of probing for a free
 * port first; the line is printed from the listen callback, so the server is ready once it is read.
 */
#include "graphql_server.h"

#include "testutil.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define SCRIPT BW_TEST_SUPPORT_DIR "/graphql_server.js"
#define NODE_MODULES "/usr/share/nodejs"
#define START_TIMEOUT_MS 10000
#define STOP_GRACE_MS 5000

extern char **environ;

/* /usr/bin/node, else the first node on PATH, into out; -1 when there is none. */
static int find_node(char *out, size_t size)
{
    const char *path = getenv("PATH");

    snprintf(out, size, "/usr/bin/node");
    if (access(out, X_OK) == 0)
        return 0;
    for (const char *dir = path; dir != NULL && *dir != '\0';) {
        size_t len = strcspn(dir, ":");
        if (len > 0 && (size_t)snprintf(out, size, "%.*s/node", (int)len, dir) < size &&
            access(out, X_OK) == 0)
            return 0;
        dir += len + (dir[len] == ':');
    }
    return -1;
}

/* The current environment with NODE_PATH pointing at Debian's node modules (the array is
   malloc'd, its strings are not copied). */
static char **node_env(void)
{
    static char node_path[] = "NODE_PATH=" NODE_MODULES;
    size_t n = 0, m = 0;

    while (environ[n] != NULL)
        n++;
    char **env = calloc(n + 2, sizeof *env);
    if (env == NULL)
        return NULL;
    for (size_t i = 0; i < n; i++)
        if (strncmp(environ[i], "NODE_PATH=", 10) != 0)
            env[m++] = environ[i];
    env[m] = node_path;
    return env;
}

/* Reads the "PORT <n>" line from fd. The port, or -1 when the child exits (EOF) or the deadline
   passes first. */
static int read_port(int fd, int64_t deadline)
{
    char line[64];
    size_t len = 0;

    while (len < sizeof line - 1) {
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        int64_t left = deadline - bw_test_now_ms();
        if (left <= 0)
            return -1;
        int n = poll(&pfd, 1, (int)left);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            continue;
        ssize_t r = read(fd, line + len, sizeof line - 1 - len);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        len += (size_t)r;
        line[len] = '\0';
        if (strchr(line, '\n') != NULL) {
            int port = 0;
            return sscanf(line, "PORT %d", &port) == 1 && port > 0 && port <= 65535 ? port : -1;
        }
    }
    return -1;
}

int bw_test_graphql_server_start(bw_test_graphql_server_t *g)
{
    char node[PATH_MAX];
    char *argv[] = {node, (char *)SCRIPT, NULL};
    char **env = NULL;
    int out[2] = {-1, -1}, status;

    memset(g, 0, sizeof *g);
    if (find_node(node, sizeof node) != 0) {
        fprintf(stderr, "graphql_server: node not found in /usr/bin or PATH (apt-get install nodejs)\n");
        return -1;
    }
    if (access(NODE_MODULES "/graphql/package.json", R_OK) != 0) {
        fprintf(stderr,
                "graphql_server: graphql-js not found in " NODE_MODULES " (apt-get install node-graphql)\n");
        return -1;
    }
    if ((env = node_env()) == NULL || pipe2(out, O_CLOEXEC) != 0)
        goto fail;
    int fds[3] = {-1, out[1], STDERR_FILENO};
    g->pid = bw_test_spawn(node, argv, env, fds);
    close(out[1]);
    out[1] = -1;
    if (g->pid <= 0) {
        g->pid = 0;
        goto fail;
    }
    g->port = read_port(out[0], bw_test_now_ms() + START_TIMEOUT_MS);
    if (g->port <= 0) {
        if (bw_test_reap(g->pid, &status) == 1) {
            fprintf(stderr, "graphql_server: %s %s exited with code %d before printing its port\n", node,
                    SCRIPT, bw_test_exit_code(status));
            g->pid = 0;
        } else {
            fprintf(stderr, "graphql_server: %s %s printed no port within %d ms\n", node, SCRIPT,
                    START_TIMEOUT_MS);
        }
        goto fail;
    }
    snprintf(g->url, sizeof g->url, "http://127.0.0.1:%d/graphql", g->port);
    close(out[0]);
    free(env);
    return 0;
fail:
    if (out[0] >= 0)
        close(out[0]);
    free(env);
    bw_test_graphql_server_stop(g);
    return -1;
}

void bw_test_graphql_server_stop(bw_test_graphql_server_t *g)
{
    if (g->pid > 0)
        bw_test_terminate(g->pid, STOP_GRACE_MS);
    g->pid = 0;
}
