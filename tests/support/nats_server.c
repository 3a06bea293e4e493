/*
 * Starts and stops /usr/sbin/nats-server for tests. A free port is picked by the server itself
 * (-p -1) and published in its ports file (<dir>/nats-server_<pid>.ports, JSON
 * {"nats":["nats://127.0.0.1:PORT"]}), which avoids the race of probing for a free port first.
 * The server is "ready" only once a TCP connect succeeds, so callers can connect immediately.
 */
#include "nats_server.h"

#include "testutil.h"

#include <dirent.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define START_TIMEOUT_MS 5000
#define STOP_GRACE_MS 3000
#define POLL_MS 10

/* Parses the port out of the ports file content; 0 when absent or malformed. */
static int parse_ports_json(const char *text)
{
    json_t *root = json_loads(text, 0, NULL);
    const char *url = json_string_value(json_array_get(json_object_get(root, "nats"), 0));
    const char *colon = url != NULL ? strrchr(url, ':') : NULL;
    int port = colon != NULL ? atoi(colon + 1) : 0;

    json_decref(root);
    return port;
}

/* Reads the port that server `pid` published in dir; 0 while the file is not written yet. */
static int read_ports_file(const char *dir, pid_t pid)
{
    char path[512];
    char *text;
    int port;

    snprintf(path, sizeof(path), "%s/nats-server_%d.ports", dir, (int)pid);
    text = bw_test_read_file(path, NULL);
    if (text == NULL)
        return 0;
    port = parse_ports_json(text);
    free(text);
    return port;
}

/* Creates s->dir unless a kept one is being reused. */
static int ensure_dir(bw_test_nats_t *s)
{
    if (s->dir[0] != '\0')
        return 0;
    snprintf(s->dir, sizeof(s->dir), "/tmp/bw-nats-XXXXXX");
    if (mkdtemp(s->dir) == NULL) {
        s->dir[0] = '\0';
        return -1;
    }
    return 0;
}

/* Forks the server with its output appended to <dir>/nats.log. */
static pid_t spawn_server(const bw_test_nats_t *s, int port)
{
    char log_path[512], port_arg[16], conf_path[512], store[512];
    char *argv[] = {(char *)"nats-server",
                    (char *)"-a",
                    (char *)"127.0.0.1",
                    (char *)"-p",
                    port_arg,
                    (char *)"--ports_file_dir",
                    (char *)s->dir,
                    NULL,
                    NULL,
                    NULL,
                    NULL,
                    NULL,
                    NULL};
    int fds[3] = {-1, -1, -1}, argc = 7;
    pid_t pid = -1;

    if (s->conf != NULL) {
        snprintf(conf_path, sizeof conf_path, "%s/nats.conf", s->dir);
        FILE *f = fopen(conf_path, "w");
        if (f == NULL || fputs(s->conf, f) < 0 || fclose(f) != 0)
            return -1;
        argv[argc++] = (char *)"-c";
        argv[argc++] = conf_path;
    }
    if (s->jetstream) {
        snprintf(store, sizeof store, "%s/js", s->dir);
        argv[argc++] = (char *)"-js";
        argv[argc++] = (char *)"-sd";
        argv[argc++] = store;
    }

    snprintf(port_arg, sizeof(port_arg), "%d", port > 0 ? port : -1);
    snprintf(log_path, sizeof(log_path), "%s/nats.log", s->dir);
    fds[1] = fds[2] = open(log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fds[1] < 0)
        goto out;
    pid = bw_test_spawn(BW_TEST_NATS_SERVER_BIN, argv, NULL, fds);
out:
    if (fds[1] >= 0)
        close(fds[1]);
    return pid;
}

/* Polls until the server has published its port and accepts TCP connections there. The ports
   file is required even for a fixed port: it proves that *our* server owns the port, not some
   other listener that a bare connect would also reach. */
static int wait_ready(bw_test_nats_t *s)
{
    int64_t deadline = bw_test_now_ms() + START_TIMEOUT_MS;

    while (bw_test_now_ms() < deadline) {
        if (bw_test_reap(s->pid, NULL) != 0) {
            s->pid = 0; /* exited (bad flags, port taken): reaped, nothing to stop */
            return -1;
        }
        int port = read_ports_file(s->dir, s->pid);
        if (port > 0 && bw_test_tcp_probe(port) == 0) {
            s->port = port;
            return 0;
        }
        bw_test_sleep_ms(POLL_MS);
    }
    return -1;
}

int bw_test_nats_start(bw_test_nats_t *s)
{
    s->dir[0] = '\0';
    return bw_test_nats_start_on(s, -1);
}

int bw_test_nats_start_on(bw_test_nats_t *s, int port)
{
    int fresh_dir = s->dir[0] == '\0';

    s->pid = 0;
    s->port = port > 0 ? port : 0;
    s->url[0] = '\0';
    if (ensure_dir(s) != 0)
        return -1;
    s->pid = spawn_server(s, port);
    if (s->pid <= 0) {
        s->pid = 0;
        goto fail;
    }
    if (wait_ready(s) != 0)
        goto fail;
    snprintf(s->url, sizeof(s->url), "nats://127.0.0.1:%d", s->port);
    return 0;
fail:
    /* Keep a reused dir (it belongs to the caller's earlier run) but drop one we just made. */
    bw_test_nats_stop(s, !fresh_dir || getenv("BW_TEST_KEEP_LOGS") != NULL);
    return -1;
}

void bw_test_nats_stop(bw_test_nats_t *s, int keep_dir)
{
    if (s->pid > 0)
        bw_test_terminate(s->pid, STOP_GRACE_MS);
    s->pid = 0;
    if (!keep_dir && s->dir[0] != '\0') {
        bw_test_rm_rf(s->dir);
        s->dir[0] = '\0';
    }
}

/* ---- JetStream clusters ---- */

/* The node's configuration: its name, its store under its own dir, and routes to every other node. The
   client port comes from the command line (-p), as for a single server. */
static void cluster_conf(bw_test_nats_cluster_t *c, int i)
{
    char routes[BW_TEST_NATS_MAX_NODES * 40] = "";
    size_t used = 0;
    for (int k = 0; k < c->n; k++)
        if (k != i)
            used += (size_t)snprintf(routes + used, sizeof routes - used, "%snats-route://127.0.0.1:%d",
                                     used ? ", " : "", c->route_ports[k]);
    int w = snprintf(c->conf[i], sizeof c->conf[i], "server_name: n%d\njetstream { store_dir: \"%s/js\" }\n",
                     i, c->nodes[i].dir);
    if (c->n > 1)
        snprintf(c->conf[i] + w, sizeof c->conf[i] - (size_t)w,
                 "cluster { name: bw, listen: 127.0.0.1:%d, routes: [%s] }\n", c->route_ports[i], routes);
    c->nodes[i].conf = c->conf[i];
}

int bw_test_nats_cluster_start(bw_test_nats_cluster_t *c, int n)
{
    memset(c, 0, sizeof *c);
    if (n < 1 || n > BW_TEST_NATS_MAX_NODES)
        return -1;
    c->n = n;
    for (int i = 0; i < n; i++) {
        if (ensure_dir(&c->nodes[i]) != 0 || (c->route_ports[i] = bw_test_closed_port()) <= 0)
            goto fail;
    }
    for (int i = 0; i < n; i++) {
        cluster_conf(c, i);
        if (bw_test_nats_start_on(&c->nodes[i], -1) != 0)
            goto fail;
        size_t used = strlen(c->urls);
        snprintf(c->urls + used, sizeof c->urls - used, "%s%s", used ? "," : "", c->nodes[i].url);
    }
    return 0;
fail:
    bw_test_nats_cluster_stop(c);
    return -1;
}

int bw_test_nats_cluster_restart(bw_test_nats_cluster_t *c, int i)
{
    if (i < 0 || i >= c->n)
        return -1;
    bw_test_nats_stop(&c->nodes[i], 1); /* reaps a killed node; keeps its store */
    return bw_test_nats_start_on(&c->nodes[i], c->nodes[i].port);
}

void bw_test_nats_cluster_stop(bw_test_nats_cluster_t *c)
{
    for (int i = 0; i < c->n; i++)
        bw_test_nats_stop(&c->nodes[i], getenv("BW_TEST_KEEP_LOGS") != NULL);
    c->n = 0;
}
