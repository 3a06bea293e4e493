/*
 * Starts and stops /usr/bin/prometheus for tests and asks its HTTP API. Prometheus cannot publish the
 * port it bound (":0" is logged as ":0"), so a free port is picked first (bound and released) and a
 * start that loses the race for it ("address already in use") is retried on another. Requests go
 * through libcurl, which the worker links anyway: Prometheus answers large API responses chunked, and
 * the health-server test client deliberately does not decode that.
 */
#include "prometheus.h"

#include "testutil.h"

#include <curl/curl.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define START_TIMEOUT_MS 20000
#define STOP_GRACE_MS 5000
#define REQUEST_TIMEOUT_MS 10000
#define POLL_MS 20
#define START_ATTEMPTS 3

int bw_test_prom_available(void)
{
    return access(BW_TEST_PROMETHEUS_BIN, X_OK) == 0;
}

/* ---- HTTP ---------------------------------------------------------------------------------------- */

typedef struct body {
    char *data;
    size_t len;
} body_t;

static size_t on_data(char *ptr, size_t size, size_t n, void *ud)
{
    body_t *b = ud;
    size_t add = size * n;
    char *grown = realloc(b->data, b->len + add + 1);
    if (grown == NULL)
        return 0; /* curl fails the transfer */
    memcpy(grown + b->len, ptr, add);
    b->len += add;
    grown[b->len] = '\0';
    b->data = grown;
    return add;
}

/* GET http://127.0.0.1:port<path>; the body (malloc'd, NUL-terminated, caller frees) or NULL when no
   response came within timeout_ms. *status gets the HTTP status. */
static char *http_get(int port, const char *path, int timeout_ms, long *status)
{
    char url[8192];
    body_t b = {0};
    CURL *c = curl_easy_init();
    CURLcode rc = CURLE_FAILED_INIT;

    *status = 0;
    if (c == NULL || (size_t)snprintf(url, sizeof url, "http://127.0.0.1:%d%s", port, path) >= sizeof url)
        goto out;
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)timeout_ms);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_NOPROXY, "*"); /* a proxy from the environment must not see loopback */
    rc = curl_easy_perform(c);
    if (rc == CURLE_OK)
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, status);
out:
    if (c != NULL)
        curl_easy_cleanup(c);
    if (rc != CURLE_OK) {
        free(b.data);
        return NULL;
    }
    if (b.data == NULL)
        b.data = calloc(1, 1);
    return b.data;
}

json_t *bw_test_prom_get(const bw_test_prom_t *p, const char *path_and_query, long *http_status)
{
    long status;
    char *text = http_get(p->port, path_and_query, REQUEST_TIMEOUT_MS, &status);
    json_t *j = text != NULL ? json_loads(text, 0, NULL) : NULL;
    if (http_status != NULL)
        *http_status = status;
    free(text);
    return j;
}

json_t *bw_test_prom_query(const bw_test_prom_t *p, const char *promql)
{
    CURL *c = curl_easy_init();
    char *enc = c != NULL ? curl_easy_escape(c, promql, 0) : NULL;
    char *path = NULL;
    json_t *j = NULL;

    if (enc != NULL && asprintf(&path, "/api/v1/query?query=%s", enc) > 0)
        j = bw_test_prom_get(p, path, NULL);
    free(path);
    curl_free(enc);
    if (c != NULL)
        curl_easy_cleanup(c);
    return j;
}

json_t *bw_test_prom_vector(json_t *answer)
{
    json_t *data = json_object_get(answer, "data");
    const char *status = json_string_value(json_object_get(answer, "status"));
    const char *type = json_string_value(json_object_get(data, "resultType"));
    if (status == NULL || strcmp(status, "success") != 0 || type == NULL || strcmp(type, "vector") != 0)
        return NULL;
    return json_object_get(data, "result");
}

double bw_test_prom_sample_value(json_t *sample)
{
    /* Prometheus writes values as strings, "NaN" and "+Inf" included; strtod reads them all. */
    const char *v = json_string_value(json_array_get(json_object_get(sample, "value"), 1));
    return v != NULL ? strtod(v, NULL) : NAN;
}

/* ---- the server ---------------------------------------------------------------------------------- */

static pid_t spawn_server(const bw_test_prom_t *p)
{
    char log_path[320], conf_arg[320], data_arg[320], listen_arg[64];
    char *argv[] = {(char *)"prometheus", conf_arg, data_arg, listen_arg,
                    /* No console templates or libraries: Debian's defaults point at /etc. */
                    (char *)"--web.console.templates=", (char *)"--web.console.libraries=", NULL};
    int fds[3] = {-1, -1, -1};
    pid_t pid = -1;

    snprintf(conf_arg, sizeof conf_arg, "--config.file=%s/prometheus.yml", p->dir);
    snprintf(data_arg, sizeof data_arg, "--storage.tsdb.path=%s/data", p->dir);
    snprintf(listen_arg, sizeof listen_arg, "--web.listen-address=127.0.0.1:%d", p->port);
    snprintf(log_path, sizeof log_path, "%s/prometheus.log", p->dir);
    fds[1] = fds[2] = open(log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fds[1] >= 0)
        pid = bw_test_spawn(BW_TEST_PROMETHEUS_BIN, argv, NULL, fds);
    if (fds[1] >= 0)
        close(fds[1]);
    return pid;
}

/* Whether the server on p->port runs with our configuration file (another Prometheus could hold the
   port if ours lost the race for it and has not exited yet). */
static int is_ours(const bw_test_prom_t *p)
{
    char want[320];
    json_t *flags = bw_test_prom_get(p, "/api/v1/status/flags", NULL);
    const char *conf = json_string_value(json_object_get(json_object_get(flags, "data"), "config.file"));
    int ours;

    snprintf(want, sizeof want, "%s/prometheus.yml", p->dir);
    ours = conf != NULL && strcmp(conf, want) == 0;
    json_decref(flags);
    return ours;
}

/* 0 once ready; 1 when the server exited because its port was taken (try another); -1 otherwise. */
static int wait_ready(bw_test_prom_t *p)
{
    int64_t deadline = bw_test_now_ms() + START_TIMEOUT_MS;
    char log_path[320];

    snprintf(log_path, sizeof log_path, "%s/prometheus.log", p->dir);
    while (bw_test_now_ms() < deadline) {
        if (bw_test_reap(p->pid, NULL) != 0) {
            p->pid = 0;
            char *log = bw_test_read_file(log_path, NULL);
            int taken = log != NULL && strstr(log, "address already in use") != NULL;
            free(log);
            return taken ? 1 : -1;
        }
        long status;
        char *body = http_get(p->port, "/-/ready", 1000, &status);
        int ready = body != NULL && status == 200;
        free(body);
        if (ready)
            return is_ours(p) ? 0 : -1;
        bw_test_sleep_ms(POLL_MS);
    }
    return -1;
}

static int write_config(const bw_test_prom_t *p, const char *config)
{
    char path[320];
    snprintf(path, sizeof path, "%s/prometheus.yml", p->dir);
    FILE *f = fopen(path, "w");
    if (f == NULL)
        return -1;
    int bad = fputs(config, f) < 0;
    return fclose(f) != 0 || bad ? -1 : 0;
}

int bw_test_prom_start(bw_test_prom_t *p, const char *config)
{
    int rc = -1;

    p->pid = 0;
    p->port = 0;
    snprintf(p->dir, sizeof p->dir, "/tmp/bw-prom-XXXXXX");
    if (mkdtemp(p->dir) == NULL) {
        p->dir[0] = '\0';
        return -1;
    }
    if (write_config(p, config) != 0)
        goto out;
    for (int attempt = 0; attempt < START_ATTEMPTS; attempt++) {
        if ((p->port = bw_test_closed_port()) <= 0 || (p->pid = spawn_server(p)) <= 0) {
            p->pid = 0;
            goto out;
        }
        rc = wait_ready(p);
        if (rc != 1)
            break;
    }
out:
    if (rc != 0) {
        bw_test_prom_dump_log(p);
        bw_test_prom_stop(p);
        return -1;
    }
    return 0;
}

void bw_test_prom_stop(bw_test_prom_t *p)
{
    if (p->pid > 0)
        bw_test_terminate(p->pid, STOP_GRACE_MS);
    p->pid = 0;
    if (p->dir[0] != '\0' && getenv("BW_TEST_KEEP_LOGS") == NULL)
        bw_test_rm_rf(p->dir);
    p->dir[0] = '\0';
}

void bw_test_prom_dump_log(const bw_test_prom_t *p)
{
    char path[320];
    if (p->dir[0] == '\0')
        return;
    snprintf(path, sizeof path, "%s/prometheus.log", p->dir);
    char *log = bw_test_read_file(path, NULL);
    fprintf(stderr, "---- %s ----\n%s---- end of %s ----\n", path, log != NULL ? log : "(unreadable)\n",
            path);
    free(log);
}
