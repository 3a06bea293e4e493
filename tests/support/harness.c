/* The integration fixture; see harness.h. */
#include "harness.h"

#include <setjmp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "http_client.h"
#include "prom_check.h"
#include "router_check.h"
#include "testutil.h"

static const char *const subjects[] = {BW_H_RESULTS, BW_H_HEARTBEAT, BW_H_DLQ, BW_H_ACK, NULL};

static bool env_has(const char *const *env, size_t n, const char *kv)
{
    size_t klen = strcspn(kv, "=") + 1;
    for (size_t j = 0; j < n; j++)
        if (strncmp(env[j], kv, klen) == 0)
            return true;
    return false;
}

/* The test's variables, then NATS_URL and the quiet test defaults unless the test set them. */
static char **merged_env(const bw_harness_t *h, const char *const *env, char *url_buf, size_t len)
{
    static const char *const defaults[] = {"CAF_HEARTBEAT_INTERVAL_MS=200", "SHUTDOWN_TIMEOUT_MS=10000",
                                           "HEALTH_BIND=127.0.0.1:0", NULL};
    size_t n = 0, m = 0;
    while (env != NULL && env[n] != NULL)
        n++;
    char **out = calloc(n + 8, sizeof *out);
    for (size_t i = 0; i < n; i++)
        out[m++] = (char *)env[i];
    snprintf(url_buf, len, "NATS_URL=%s", h->nats.url);
    if (!env_has(env, n, url_buf))
        out[m++] = url_buf;
    for (size_t i = 0; defaults[i] != NULL; i++)
        if (!env_has(env, n, defaults[i]))
            out[m++] = (char *)defaults[i];
    return out;
}

/* The harness's temp dir (DLQ files, approval journals), made on first use. */
static bool harness_dir(bw_harness_t *h)
{
    if (h->dlq_dir[0] != '\0')
        return true;
    snprintf(h->dlq_dir, sizeof h->dlq_dir, "/tmp/bw-harness-dlq-XXXXXX");
    if (mkdtemp(h->dlq_dir) != NULL)
        return true;
    h->dlq_dir[0] = '\0';
    return false;
}

/* The worker's DLQ file: the test's DLQ_PATH, else a file of its own in the harness's temp dir (so
   that what a test claims went to the DLQ can be read back; never /dev/null). */
static const char *dlq_env(bw_harness_t *h, const char *const *env, char *buf, size_t len)
{
    int i = h->nworkers;
    for (size_t j = 0; env != NULL && env[j] != NULL; j++) {
        if (strncmp(env[j], "DLQ_PATH=", 9) == 0) {
            snprintf(h->dlq_paths[i], sizeof h->dlq_paths[i], "%s", env[j] + 9);
            return NULL;
        }
    }
    if (!harness_dir(h))
        return NULL;
    snprintf(h->dlq_paths[i], sizeof h->dlq_paths[i], "%s/worker-%d.jsonl", h->dlq_dir, i);
    snprintf(buf, len, "DLQ_PATH=%s", h->dlq_paths[i]);
    return buf;
}

/* The worker's approval journal directory: the test's APPROVAL_DIR, else one of its own beside its DLQ
   file (so that workers never share one, and nothing is left in /tmp). */
static const char *approval_env(bw_harness_t *h, const char *const *env, char *buf, size_t len)
{
    int i = h->nworkers;
    for (size_t j = 0; env != NULL && env[j] != NULL; j++) {
        if (strncmp(env[j], "APPROVAL_DIR=", 13) == 0) {
            snprintf(h->approval_dirs[i], sizeof h->approval_dirs[i], "%s", env[j] + 13);
            return NULL;
        }
    }
    if (!harness_dir(h)) /* also when the test set DLQ_PATH: never the shared default of /tmp */
        return NULL;
    snprintf(h->approval_dirs[i], sizeof h->approval_dirs[i], "%s/approvals-%d", h->dlq_dir, i);
    snprintf(buf, len, "APPROVAL_DIR=%s", h->approval_dirs[i]);
    return buf;
}

int bw_harness_spawn(bw_harness_t *h, const char *const *env)
{
    char url[128], dlq[400], adir[400];
    if (h->nworkers >= BW_H_MAX_WORKERS)
        return -1;
    char **e = merged_env(h, env, url, sizeof url);
    const char *extra[] = {dlq_env(h, env, dlq, sizeof dlq), approval_env(h, env, adir, sizeof adir)};
    for (size_t x = 0; x < 2; x++) {
        if (extra[x] == NULL)
            continue;
        size_t n = 0; /* merged_env left room for them */
        while (e[n] != NULL)
            n++;
        e[n] = (char *)extra[x];
    }
    int rc = bw_test_proc_start(&h->workers[h->nworkers], NULL, (const char *const *)e);
    free(e);
    return rc != 0 ? -1 : h->nworkers++;
}

const char *bw_harness_approval_dir(const bw_harness_t *h, int i)
{
    return h->approval_dirs[i];
}

const char *bw_harness_dlq_path(const bw_harness_t *h, int i)
{
    return h->dlq_paths[i];
}

json_t *bw_harness_dead_letters(const bw_harness_t *h, int i)
{
    json_t *all = json_array();
    char *text = bw_test_read_file(h->dlq_paths[i], NULL);
    for (char *line = text, *nl; line != NULL && *line != '\0'; line = nl + 1) {
        nl = strchr(line, '\n');
        if (nl == NULL)
            break; /* a line being written: not whole yet */
        json_t *j = json_loadb(line, (size_t)(nl - line), 0, NULL);
        if (!json_is_object(j))
            fail_msg("DLQ line of worker %d is not a JSON object: %.200s", i, line);
        json_array_append_new(all, j);
    }
    free(text);
    return all;
}

int bw_harness_add_worker(bw_harness_t *h, const char *const *env)
{
    int i = bw_harness_spawn(h, env);
    if (i < 0)
        return -1;
    if (bw_test_proc_wait_log(&h->workers[i], "\"worker ready\"", 10000) != 0) {
        bw_test_proc_dump_log(&h->workers[i]);
        return -1;
    }
    return i;
}

/* The server (with JetStream when js) and the collecting client. */
static int start_server(bw_harness_t *h, int js)
{
    memset(h, 0, sizeof *h);
    h->nats.jetstream = js;
    if (bw_test_nats_start(&h->nats) != 0)
        return -1;
    if ((h->client = bw_test_client_create(h->nats.url)) == NULL)
        return -1;
    for (int i = 0; subjects[i] != NULL; i++)
        if (bw_test_client_collect(h->client, subjects[i]) != 0)
            return -1;
    return 0;
}

int bw_harness_start(bw_harness_t *h, const char *const *env)
{
    if (start_server(h, 0) != 0)
        return -1;
    return bw_harness_add_worker(h, env) < 0 ? -1 : 0;
}

int bw_harness_start_js_server(bw_harness_t *h)
{
    return start_server(h, 1);
}

int bw_harness_start_js(bw_harness_t *h, const char *const *env)
{
    if (start_server(h, 1) != 0)
        return -1;
    return bw_harness_add_worker(h, env) < 0 ? -1 : 0;
}

int bw_harness_start_http(bw_harness_t *h, const char *const *env)
{
    if (bw_harness_start(h, env) != 0)
        return -1;
    int port = bw_test_worker_http_port(&h->workers[0]);
    if (port <= 0) {
        bw_test_proc_dump_log(&h->workers[0]);
        return -1;
    }
    return port;
}

int bw_harness_stop(bw_harness_t *h, int dump)
{
    int bad = 0;
    /* A graceful stop that must exit 0: under the sanitizers this is where a leak or an error
       inside the worker turns into a failed test. */
    for (int i = 0; i < h->nworkers; i++) {
        int code = -1;
        bw_test_proc_t *p = &h->workers[i];
        bw_test_proc_signal(p, SIGTERM); /* fails harmlessly when it already exited */
        if (bw_test_proc_wait(p, 20000, &code) == 0 && (code == 0 || h->exit_checked[i]))
            continue;
        /* also at exit: a group teardown's failure is not counted by cmocka */
        bw_test_fail_later("worker %d did not stop cleanly (exit code %d)", i, code);
        bad++;
    }
    for (int i = 0; i < h->nworkers; i++) {
        if (dump || bad)
            bw_test_proc_dump_log(&h->workers[i]);
        bw_test_proc_stop(&h->workers[i]);
    }
    bw_test_client_destroy(h->client);
    bw_test_nats_stop(&h->nats, 0);
    if (h->dlq_dir[0] != '\0')
        bw_test_rm_rf(h->dlq_dir);
    memset(h, 0, sizeof *h);
    return bad ? -1 : 0;
}

char *bw_harness_tenant_assignment(const char *tenant, const char *id, const char *type, const char *payload,
                                   int deadline_ms)
{
    json_t *p = json_loads(payload, 0, NULL);
    if (p == NULL)
        return NULL;
    json_t *a = json_pack("{sssssssss{sssO}s{si}}", "version", "1", "assignment_id", id, "request_id", id,
                          "tenant_id", tenant, "job", "type", type, "payload", p, "options", "deadline_ms",
                          deadline_ms);
    char *s = json_dumps(a, JSON_COMPACT);
    json_decref(a);
    json_decref(p);
    return s;
}

char *bw_harness_assignment(const char *id, const char *type, const char *payload, int deadline_ms)
{
    json_t *p = payload ? json_loads(payload, 0, NULL) : NULL;
    json_t *a = json_pack("{sssssssssss{sssO*}s{ss}}", "version", "1", "assignment_id", id, "request_id", id,
                          "tenant_id", "acme", "trace_id", "0af7651916cd43dd8448eb211c80319c", "job", "type",
                          type, "payload", p, "executor", "provider_id", "test-provider");
    if (deadline_ms > 0)
        json_object_set_new(a, "options", json_pack("{si}", "deadline_ms", deadline_ms));
    char *s = json_dumps(a, JSON_COMPACT);
    json_decref(a);
    json_decref(p);
    return s;
}

int bw_harness_publish_raw(bw_harness_t *h, const char *data, const char *const *headers)
{
    return bw_test_client_publish(h->client, BW_H_ASSIGN, data, headers);
}

int bw_harness_submit(bw_harness_t *h, const char *id, const char *type, const char *payload, int deadline_ms)
{
    static const char *const hdrs[] = {"tenant_id", "acme", "version", "1", NULL};
    char *s = bw_harness_assignment(id, type, payload, deadline_ms);
    int rc = bw_harness_publish_raw(h, s, hdrs);
    free(s);
    return rc;
}

int bw_harness_submit_many(bw_harness_t *h, const char *prefix, int n, const char *type)
{
    return bw_harness_submit_many_with(h, prefix, n, type, NULL, 10000);
}

int bw_harness_submit_many_with(bw_harness_t *h, const char *prefix, int n, const char *type,
                                const char *payload, int deadline_ms)
{
    static const char *const hdrs[] = {"tenant_id", "acme", "version", "1", NULL};
    natsConnection *nc = bw_test_client_conn(h->client);
    natsStatus s = NATS_OK;
    for (int i = 0; s == NATS_OK && i < n; i++) {
        char id[128], numbered[32];
        snprintf(id, sizeof id, "%s-%d", prefix, i);
        snprintf(numbered, sizeof numbered, "{\"i\":%d}", i);
        char *a = bw_harness_assignment(id, type, payload ? payload : numbered, deadline_ms);
        natsMsg *msg = NULL;
        s = natsMsg_Create(&msg, BW_H_ASSIGN, NULL, a, (int)strlen(a));
        for (int k = 0; s == NATS_OK && hdrs[k] != NULL; k += 2)
            s = natsMsgHeader_Set(msg, hdrs[k], hdrs[k + 1]);
        if (s == NATS_OK)
            s = natsConnection_PublishMsg(nc, msg);
        natsMsg_Destroy(msg);
        free(a);
    }
    if (s == NATS_OK)
        s = natsConnection_FlushTimeout(nc, 10000);
    return s == NATS_OK ? 0 : -1;
}

int bw_harness_cancel(bw_harness_t *h, const char *id, const char *reason)
{
    json_t *c = json_pack("{ssss}", "assignment_id", id, "reason", reason);
    char *s = json_dumps(c, JSON_COMPACT);
    int rc = bw_test_client_publish(h->client, BW_H_CANCEL, s, NULL);
    free(s);
    json_decref(c);
    return rc;
}

static json_t *unwrap(json_t *j)
{
    json_t *d = json_object_get(j, "data");
    return json_is_object(d) && json_object_get(j, "kind") ? d : j;
}

/* The router accepts it and the contract's headers are there. Returns 0 when fine. */
static int check_result_msg(const bw_test_msg_t *m, int allow_envelope)
{
    char code[64];
    json_t *bare = unwrap(m->json);
    if (bare != m->json && !allow_envelope) {
        fprintf(stderr, "unexpected envelope: %s\n", m->data);
        return -1;
    }
    char *data = json_dumps(bare, JSON_COMPACT);
    bw_router_check_t *rc = bw_router_check_create();
    int verdict = bw_router_check(rc, BW_H_RESULTS, m->headers, data, strlen(data), code, sizeof code);
    bw_router_check_destroy(rc);
    free(data);
    const char *tenant = json_string_value(json_object_get(m->headers, "tenant_id"));
    const char *version = json_string_value(json_object_get(m->headers, "version"));
    const char *msgid = json_string_value(json_object_get(m->headers, "Nats-Msg-Id"));
    const char *id = json_string_value(json_object_get(bare, "assignment_id"));
    char want_msgid[512];
    snprintf(want_msgid, sizeof want_msgid, "result-%s", id ? id : "");
    int bad = verdict != 0 || tenant == NULL || version == NULL || strcmp(version, "1") != 0 ||
              msgid == NULL || strcmp(msgid, want_msgid) != 0 ||
              strcmp(tenant, json_string_value(json_object_get(bare, "tenant_id"))) != 0;
    if (bad)
        fprintf(stderr, "result not acceptable (%s): %s\n", code, m->data);
    return bad ? -1 : 0;
}

json_t *bw_harness_result(bw_harness_t *h, const char *id, int wait_ms)
{
    bw_test_msg_t *m = NULL;
    if (bw_test_client_find(h->client, BW_H_RESULTS, id, wait_ms, &m) <= 0 || m == NULL)
        return NULL;
    if (check_result_msg(m, 1) != 0)
        fail_msg("result for %s is not router-acceptable", id);
    json_t *r = json_incref(unwrap(m->json));
    bw_test_msg_destroy(m);
    return r;
}

int bw_harness_result_count(bw_harness_t *h, const char *id)
{
    return bw_test_client_find(h->client, BW_H_RESULTS, id, 0, NULL);
}

int bw_harness_check_all_results(bw_harness_t *h, int unwrap_env)
{
    int bad = 0, n = bw_test_client_count(h->client, BW_H_RESULTS);
    for (int i = 0; i < n; i++) {
        bw_test_msg_t *m = bw_test_client_get(h->client, BW_H_RESULTS, i);
        if (m == NULL || m->json == NULL || check_result_msg(m, unwrap_env) != 0)
            bad++;
        bw_test_msg_destroy(m);
    }
    return bad;
}

int bw_harness_finish(bw_harness_t *h, int unwrap)
{
    int bad = h->client != NULL ? bw_harness_check_all_results(h, unwrap) : 0;
    int rc = bw_harness_stop(h, bad != 0 || getenv("BW_TEST_VERBOSE") != NULL);
    return bad == 0 && rc == 0 ? 0 : -1;
}

double bw_harness_metric(bw_harness_t *h, const char *series)
{
    return bw_harness_metric_of(h, 0, series);
}

double bw_harness_metric_of(bw_harness_t *h, int i, const char *series)
{
    int port = bw_test_worker_http_port(&h->workers[i]), status = 0;
    char *body = NULL, why[300];
    assert_true(port > 0);
    assert_int_equal(bw_test_http(port, "GET", "/metrics", NULL, &status, &body, NULL), 0);
    assert_int_equal(status, 200);
    if (bw_prom_check(body, why, sizeof why) != 0)
        fail_msg("invalid /metrics: %s", why);
    double v = bw_prom_value(body, series);
    free(body);
    return v;
}

int bw_harness_cli(const bw_harness_t *h, const char *dlq_path, const char *const *args, char **out)
{
    char url[128], dlq[400];
    snprintf(url, sizeof url, "NATS_URL=%s", h->nats.url);
    snprintf(dlq, sizeof dlq, "DLQ_PATH=%s", dlq_path);
    const char *const env[] = {url, dlq, NULL};
    char *err = NULL;
    int rc = bw_test_run(args, env, NULL, out, &err);
    if (err != NULL && *err)
        fprintf(stderr, "%s", err);
    free(err);
    return rc;
}

int bw_harness_wait_exit(bw_harness_t *h, int i, int timeout_ms)
{
    int code = -1;
    if (bw_test_proc_wait(&h->workers[i], timeout_ms, &code) != 0) {
        bw_test_proc_dump_log(&h->workers[i]);
        fail_msg("worker %d did not exit within %d ms", i, timeout_ms);
    }
    h->exit_checked[i] = 1;
    return code;
}
