/* Unit tests for core/config.c: defaults, ranges, sizes, subjects, redaction. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <jansson.h>

#include "core/config.h"
#include "testutil.h"

static const char *const all_vars[] = {"NATS_URL",
                                       "NATS_CREDS",
                                       "NATS_NKEY",
                                       "NATS_NKEY_SEED",
                                       "NATS_TLS_CA",
                                       "NATS_TLS_CERT",
                                       "NATS_TLS_KEY",
                                       "WORKER_ID",
                                       "WORKER_MAX_CONCURRENCY",
                                       "WORKER_QUEUE_MAX",
                                       "FS_BASE_DIR",
                                       "CAF_ASSIGN_SUBJECT",
                                       "CAF_QUEUE_GROUP",
                                       "CAF_RESULT_SUBJECT",
                                       "CAF_HEARTBEAT_SUBJECT",
                                       "CAF_DLQ_SUBJECT",
                                       "CAF_ACK_SUBJECT",
                                       "CAF_CANCEL_SUBJECT",
                                       "CAF_MESSAGE_FORMAT",
                                       "CAF_ACK_ENABLED",
                                       "CAF_HEARTBEAT_INTERVAL_MS",
                                       "DEFAULT_JOB_TIMEOUT_MS",
                                       "SHUTDOWN_TIMEOUT_MS",
                                       "HEALTH_BIND",
                                       "DLQ_PATH",
                                       "DLQ_MAX_BYTES",
                                       "DLQ_TOTAL_MAX_BYTES",
                                       "DLQ_MAX_AGE_DAYS",
                                       "DLQ_MAX_ROTATIONS",
                                       "RESULT_PUBLISH_MAX_RETRIES",
                                       "DEDUP_CACHE_SIZE",
                                       "DEDUP_TTL_MS",
                                       "DEDUP_CACHE_MAX_BYTES",
                                       "LOG_LEVEL",
                                       "LOG_FORMAT",
                                       "HTTP_MAX_RESPONSE_BYTES",
                                       "HTTP_MAX_REDIRECTS",
                                       "HTTP_ALLOW_CIDRS",
                                       "HTTP_ALLOW_HOSTS",
                                       "HTTP_CA_FILE",
                                       "SQL_CONNECTIONS",
                                       "SQL_ALLOW_PAYLOAD_DSN",
                                       "SQL_POOL_MAX",
                                       "SQL_POOL_IDLE_MS",
                                       "SQL_MAX_ROWS",
                                       "APPROVAL_DIR",
                                       "APPROVAL_MAX_PENDING",
                                       "APPROVAL_TOKEN",
                                       "APPROVAL_ALLOW_AUTO",
                                       "CAF_APPROVAL_REQUEST_SUBJECT",
                                       "CAF_APPROVAL_DECISION_SUBJECT",
                                       "CAF_APPROVAL_LIST_SUBJECT",
                                       "CAF_CONSUMER",
                                       "CAF_JS_STREAM",
                                       "CAF_JS_CREATE",
                                       "CAF_JS_REPLICAS",
                                       "CAF_JS_DURABLE",
                                       "CAF_JS_ACK_WAIT_MS",
                                       "CAF_JS_MAX_DELIVER",
                                       "CAF_JS_NAK_DELAY_MS",
                                       "CAF_JS_RESULTS_BUCKET",
                                       "CAF_JS_RESULT_STORE",
                                       "WORKER_TYPE_CONCURRENCY",
                                       "TENANT_WEIGHTS",
                                       "TENANT_MAX_CONCURRENCY",
                                       "TENANT_QUEUE_MAX",
                                       "METRICS_TENANT_LABELS",
                                       NULL};

static int clear_env(void **state)
{
    (void)state;
    for (int i = 0; all_vars[i]; i++)
        unsetenv(all_vars[i]);
    return 0;
}

static void test_defaults(void **state)
{
    bw_config_t c;
    char err[512] = "";
    assert_int_equal(bw_config_load(&c, err, sizeof err), 0);
    assert_string_equal(c.nats_url, "nats://localhost:4222");
    assert_true(strncmp(c.worker_id, "worker-", 7) == 0);
    assert_int_equal(strlen(c.worker_id), 7 + 36);
    assert_int_equal(c.max_concurrency, 8);
    assert_string_equal(c.fs_base_dir, "/tmp/worker-storage");
    assert_string_equal(c.assign_subject, "caf.exec.assign.v1");
    assert_string_equal(c.queue_group, "caf-workers");
    assert_string_equal(c.result_subject, "caf.exec.result.v1");
    assert_string_equal(c.heartbeat_subject, "caf.status.heartbeat.v1");
    assert_string_equal(c.dlq_subject, "caf.deadletter.v1");
    assert_string_equal(c.ack_subject, "caf.exec.assign.v1.ack");
    assert_string_equal(c.cancel_subject, "caf.exec.cancel.v1");
    assert_int_equal(c.heartbeat_interval_ms, 5000);
    assert_int_equal(c.default_job_timeout_ms, 60000);
    assert_string_equal(c.health_bind, "0.0.0.0:9091");
    assert_string_equal(c.dlq_path, "/tmp/worker-dlq.jsonl");
    assert_int_equal(c.dlq_max_bytes, 100000000);
    assert_int_equal(c.dlq_total_max_bytes, 1000000000);
    assert_int_equal(c.dlq_max_age_days, 0);
    assert_int_equal(c.result_publish_max_retries, 5);
    assert_false(c.envelope);
    assert_false(c.ack_enabled);
    assert_true(c.log_json);
    assert_string_equal(c.approval_dir, "/tmp/worker-approvals");
    assert_int_equal(c.approval_max_pending, 10000);
    assert_null(c.approval_token);
    assert_false(c.approval_allow_auto);
    assert_string_equal(c.approval_request_subject, "caf.human.request.v1");
    assert_string_equal(c.approval_decision_subject, "caf.human.decision.v1");
    assert_string_equal(c.approval_list_subject, "caf.human.list.v1");
    bw_config_dispose(&c);
}

/* APPROVAL_TOKEN: 16 characters are enough, 15 are not (test_invalid_values_name_the_variable), and the
   token never appears in the error or the dump. */
static void test_approval_token(void **state)
{
    bw_config_t c;
    char err[512] = "";
    setenv("APPROVAL_TOKEN", "sixteen-chars!!!", 1);
    assert_int_equal(bw_config_load(&c, err, sizeof err), 0);
    assert_string_equal(c.approval_token, "sixteen-chars!!!");
    char *dump = bw_config_to_json(&c);
    assert_null(strstr(dump, "sixteen-chars"));
    free(dump);
    bw_config_dispose(&c);
    setenv("APPROVAL_TOKEN", "short-secret", 1);
    assert_int_equal(bw_config_load(&c, err, sizeof err), -1);
    assert_null(strstr(err, "short-secret"));
    bw_config_dispose(&c);
    unsetenv("APPROVAL_TOKEN");
}

typedef struct bad_case {
    const char *var, *value, *expect_in_message;
} bad_case_t;

static void test_invalid_values_name_the_variable(void **state)
{
    static const bad_case_t cases[] = {
        {"WORKER_MAX_CONCURRENCY", "0", "1..100000"},
        {"WORKER_MAX_CONCURRENCY", "12abc", "1..100000"},
        {"WORKER_MAX_CONCURRENCY", "100001", "1..100000"},
        {"CAF_HEARTBEAT_INTERVAL_MS", "99", "100..600000"},
        {"DEFAULT_JOB_TIMEOUT_MS", "3600001", "100..3600000"},
        {"RESULT_PUBLISH_MAX_RETRIES", "21", "0..20"},
        {"RESULT_PUBLISH_MAX_RETRIES", "-1", "0..20"},
        {"DLQ_MAX_BYTES", "lots", "size"},
        {"DLQ_MAX_BYTES", "10XB", "size"},
        {"CAF_ASSIGN_SUBJECT", "caf..assign", "NATS subject"},
        {"CAF_RESULT_SUBJECT", "caf.result.*", "NATS subject"},
        {"CAF_DLQ_SUBJECT", ".caf", "NATS subject"},
        {"CAF_MESSAGE_FORMAT", "xml", "router, envelope"},
        {"CAF_ACK_ENABLED", "maybe", "true or false"},
        {"LOG_LEVEL", "verbose", "debug"},
        {"LOG_FORMAT", "yaml", "json"},
        {"HEALTH_BIND", "nohost", "host:port"},
        {"HEALTH_BIND", "0.0.0.0:70000", "host:port"},
        {"NATS_URL", "http://x:1", "nats://"},
        {"WORKER_ID", "has space", "characters"},
        {"DLQ_MAX_AGE_DAYS", "0", "1..3650"},
        {"CAF_QUEUE_GROUP", "a b", "empty or"},
        {"HTTP_ALLOW_CIDRS", "10.0.0.0/8,10.0.0/33", "10.0.0/33"},
        {"HTTP_ALLOW_HOSTS", "ok.internal bad/host", "bad/host"},
        {"HTTP_MAX_REDIRECTS", "51", "0..50"},
        {"HTTP_MAX_RESPONSE_BYTES", "2GiB", "1..1073741824"},
        {"HTTP_MAX_RESPONSE_BYTES", "0", "1..1073741824"},
        {"SQL_POOL_MAX", "0", "1..1000"},
        {"SQL_ALLOW_PAYLOAD_DSN", "sometimes", "true or false"},
        {"SQL_MAX_ROWS", "0", "1..10000000"},
        {"APPROVAL_MAX_PENDING", "0", "1..1000000"},
        {"APPROVAL_MAX_PENDING", "1000001", "1..1000000"},
        {"APPROVAL_ALLOW_AUTO", "yes please", "true or false"},
        {"CAF_APPROVAL_DECISION_SUBJECT", "caf.human.>", "NATS subject"},
        {"APPROVAL_TOKEN", "fifteen-chars!!", "at least 16 characters"},
        {"CAF_CONSUMER", "pull", "core, jetstream"},
        {"CAF_JS_STREAM", "a.b", "letters, digits"},
        {"CAF_JS_STREAM", "S2345678901234567890123456789012345678901234567890123456789012345", "1..64"},
        {"CAF_JS_DURABLE", "a*", "letters, digits"},
        {"CAF_JS_RESULTS_BUCKET", "b>", "letters, digits"},
        {"CAF_JS_REPLICAS", "6", "1..5"},
        {"CAF_JS_REPLICAS", "0", "1..5"},
        {"CAF_JS_MAX_DELIVER", "0", "1..1000"},
        {"CAF_JS_MAX_DELIVER", "1001", "1..1000"},
        {"CAF_JS_ACK_WAIT_MS", "999", "1000..3600000"},
        {"CAF_JS_NAK_DELAY_MS", "-1", "0..3600000"},
        {"CAF_JS_CREATE", "perhaps", "true or false"},
        {"CAF_JS_RESULT_STORE", "sometimes", "true or false"},
        {"WORKER_TYPE_CONCURRENCY", "sleep", "name=N"},
        {"WORKER_TYPE_CONCURRENCY", "sleep=-1", "0..100000"},
        {"WORKER_TYPE_CONCURRENCY", "sleep=100001", "'sleep=100001' is not"},
        {"WORKER_TYPE_CONCURRENCY", "http=8,teleport=2", "'teleport' is not a job type"},
        {"WORKER_TYPE_CONCURRENCY", "=3", "'=3' is not"},
        {"WORKER_TYPE_CONCURRENCY", "sleep=3x", "'sleep=3x' is not"},
        {"TENANT_WEIGHTS", "acme=0", "1..1000"},
        {"TENANT_WEIGHTS", "acme=3,beta=1001", "'beta=1001' is not"},
        {"TENANT_WEIGHTS", "acme", "'acme' is not"},
        {"TENANT_MAX_CONCURRENCY", "-1", "0..100000"},
        {"TENANT_QUEUE_MAX", "1000001", "0..1000000"},
        {"METRICS_TENANT_LABELS", "some", "true or false"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        bw_config_t c;
        char err[512] = "";
        clear_env(NULL);
        setenv(cases[i].var, cases[i].value, 1);
        int rc = bw_config_load(&c, err, sizeof err);
        bw_config_dispose(&c);
        if (rc != -1 || strstr(err, cases[i].var) == NULL || strstr(err, cases[i].expect_in_message) == NULL)
            fail_msg("%s=%s: rc=%d err=%s", cases[i].var, cases[i].value, rc, err);
    }
}

static int count_pair(void *ud, const char *name, size_t len, int64_t value, char *err, size_t errlen)
{
    (void)err;
    (void)errlen;
    char line[300];
    snprintf(line, sizeof line, "[%.*s]=%lld;", (int)len, name, (long long)value);
    strcat(ud, line);
    return 0;
}

/* The scheduling settings: TENANT_QUEUE_MAX follows WORKER_QUEUE_MAX unless set; the lists' items are
   trimmed, empty ones skipped, and a tenant name may hold '=' (the last one splits). */
static void test_scheduling_settings(void **state)
{
    bw_config_t c;
    char err[512] = "", got[1024] = "";
    clear_env(NULL);
    setenv("WORKER_QUEUE_MAX", "77", 1);
    assert_int_equal(bw_config_load(&c, err, sizeof err), 0);
    assert_int_equal(c.tenant_queue_max, 77);
    assert_int_equal(c.tenant_max_concurrency, 0);
    assert_false(c.metrics_tenant_labels);
    assert_null(c.type_concurrency);
    bw_config_dispose(&c);
    setenv("TENANT_QUEUE_MAX", "0", 1);
    setenv("TENANT_WEIGHTS", " acme = 3 ,, a=b=7,beta=1 ", 1);
    setenv("WORKER_TYPE_CONCURRENCY", "sleep=0,javascript=1", 1);
    setenv("METRICS_TENANT_LABELS", "true", 1);
    assert_int_equal(bw_config_load(&c, err, sizeof err), 0);
    assert_int_equal(c.tenant_queue_max, 0);
    assert_true(c.metrics_tenant_labels);
    assert_int_equal(
        bw_config_pairs("TENANT_WEIGHTS", c.tenant_weights, 1, 1000, count_pair, got, err, sizeof err), 0);
    assert_string_equal(got, "[acme]=3;[a=b]=7;[beta]=1;");
    bw_config_dispose(&c);
    clear_env(NULL);
}

static void test_valid_overrides(void **state)
{
    bw_config_t c;
    char err[512] = "";
    setenv("WORKER_MAX_CONCURRENCY", "10000", 1);
    setenv("DLQ_MAX_BYTES", "512KiB", 1);
    setenv("DLQ_TOTAL_MAX_BYTES", "1GB", 1);
    setenv("CAF_MESSAGE_FORMAT", "envelope", 1);
    setenv("CAF_ACK_ENABLED", "true", 1);
    setenv("CAF_QUEUE_GROUP", "", 1);
    setenv("WORKER_ID", "worker-a.1", 1);
    setenv("LOG_FORMAT", "text", 1);
    setenv("LOG_LEVEL", "debug", 1);
    assert_int_equal(bw_config_load(&c, err, sizeof err), 0);
    assert_int_equal(c.max_concurrency, 10000);
    assert_int_equal(c.dlq_max_bytes, 512 * 1024);
    assert_true(c.envelope);
    assert_true(c.ack_enabled);
    assert_string_equal(c.queue_group, "");
    assert_string_equal(c.worker_id, "worker-a.1");
    assert_false(c.log_json);
    assert_int_equal(c.log_level, 0);
    bw_config_dispose(&c);
}

static void test_jetstream_settings(void **state)
{
    bw_config_t c;
    char err[512] = "";
    assert_int_equal(bw_config_load(&c, err, sizeof err), 0);
    assert_int_equal(c.js_mode, 0); /* core by default */
    assert_string_equal(c.js_stream, "CAF_ASSIGN");
    assert_string_equal(c.js_durable, "caf-workers");
    assert_string_equal(c.js_results_bucket, "caf_results");
    assert_false(c.js_create);
    assert_int_equal(c.js_replicas, 1);
    assert_int_equal(c.js_ack_wait_ms, 30000);
    assert_int_equal(c.js_max_deliver, 5);
    assert_true(c.js_result_store);
    bw_config_dispose(&c);
    /* the limits themselves are accepted */
    setenv("CAF_CONSUMER", "jetstream", 1);
    setenv("CAF_JS_STREAM", "S234567890123456789012345678901234567890123456789012345678901234", 1);
    setenv("CAF_JS_MAX_DELIVER", "1000", 1);
    setenv("CAF_JS_REPLICAS", "5", 1);
    setenv("CAF_JS_ACK_WAIT_MS", "1000", 1);
    setenv("CAF_JS_CREATE", "true", 1);
    assert_int_equal(bw_config_load(&c, err, sizeof err), 0);
    assert_int_equal(c.js_mode, 1);
    assert_int_equal(strlen(c.js_stream), 64);
    assert_int_equal(c.js_max_deliver, 1000);
    assert_int_equal(c.js_replicas, 5);
    assert_true(c.js_create);
    bw_config_dispose(&c);
    setenv("CAF_JS_MAX_DELIVER", "1", 1);
    assert_int_equal(bw_config_load(&c, err, sizeof err), 0);
    assert_int_equal(c.js_max_deliver, 1);
    bw_config_dispose(&c);
}

static void test_cross_checks(void **state)
{
    bw_config_t c;
    char err[512] = "";
    setenv("DLQ_MAX_BYTES", "2GB", 1);
    setenv("DLQ_TOTAL_MAX_BYTES", "1GB", 1);
    assert_int_equal(bw_config_load(&c, err, sizeof err), -1);
    assert_non_null(strstr(err, "DLQ_TOTAL_MAX_BYTES"));
    bw_config_dispose(&c);
    clear_env(NULL);
    setenv("NATS_TLS_CERT", "/x.pem", 1);
    assert_int_equal(bw_config_load(&c, err, sizeof err), -1);
    assert_non_null(strstr(err, "NATS_TLS_KEY"));
    bw_config_dispose(&c);
}

static void test_sizes(void **state)
{
    assert_int_equal(bw_parse_size("4096"), 4096);
    assert_int_equal(bw_parse_size("100MB"), 100000000);
    assert_int_equal(bw_parse_size("1GB"), 1000000000);
    assert_int_equal(bw_parse_size("512KiB"), 524288);
    assert_int_equal(bw_parse_size("64MiB"), 64 * 1024 * 1024);
    assert_int_equal(bw_parse_size("1gib"), 1 << 30);
    assert_int_equal(bw_parse_size("2 MB"), 2000000);
    assert_int_equal(bw_parse_size(""), -1);
    assert_int_equal(bw_parse_size("-1"), -1);
    assert_int_equal(bw_parse_size("1.5GB"), -1);
    assert_int_equal(bw_parse_size("99999999999999999999"), -1);
    assert_int_equal(bw_parse_size("9999999999TiB"), -1);
}

static void test_subjects(void **state)
{
    assert_true(bw_subject_valid("caf.exec.assign.v1"));
    assert_true(bw_subject_valid("a_b-c"));
    assert_false(bw_subject_valid(""));
    assert_false(bw_subject_valid("a..b"));
    assert_false(bw_subject_valid("a."));
    assert_false(bw_subject_valid("a.>"));
    assert_false(bw_subject_valid("a b"));
}

static void test_redaction(void **state)
{
    char *r = bw_redact_url("nats://user:secret@host:4222,tls://tok@h2:4443,nats://plain:1");
    assert_string_equal(r, "nats://***@host:4222,tls://***@h2:4443,nats://plain:1");
    free(r);
    bw_config_t c;
    char err[512] = "";
    setenv("NATS_URL", "nats://user:hunter2@localhost:4222", 1);
    assert_int_equal(bw_config_load(&c, err, sizeof err), 0);
    char *json = bw_config_to_json(&c);
    assert_null(strstr(json, "hunter2"));
    assert_non_null(strstr(json, "\"WORKER_MAX_CONCURRENCY\": 8"));
    assert_non_null(strstr(json, "\"DLQ_MAX_BYTES\": 100000000"));
    free(json);
    bw_config_dispose(&c);
    /* the error message never echoes a URL that may hold credentials */
    setenv("NATS_URL", "http://user:hunter2@x", 1);
    assert_int_equal(bw_config_load(&c, err, sizeof err), -1);
    assert_null(strstr(err, "hunter2"));
    bw_config_dispose(&c);
}

/* The README's configuration table names every variable the worker reads (a user's only reference). */
static void test_readme_lists_every_variable(void **state)
{
    bw_config_t c;
    char err[512] = "", *readme = NULL;
    assert_int_equal(bw_config_load(&c, err, sizeof err), 0);
    char *js = bw_config_to_json(&c);
    json_t *all = json_loads(js, 0, NULL);
    free(js);
    assert_non_null(all);
    size_t len = 0;
    readme = bw_test_read_file(BW_FIXTURES_DIR "/../../README.md", &len);
    assert_non_null(readme);
    const char *k;
    json_t *v;
    int n = 0;
    json_object_foreach(all, k, v)
    {
        char cell[128];
        snprintf(cell, sizeof cell, "| `%s` |", k);
        if (strstr(readme, cell) == NULL)
            fail_msg("README's configuration table has no row for %s", k);
        n++;
    }
    assert_true(n > 40);
    json_decref(all);
    free(readme);
    bw_config_dispose(&c);
}

/* deploy/default/beamline-worker (the package's /etc/default file) lists every variable, commented. */
static void test_default_file_lists_every_variable(void **state)
{
    bw_config_t c;
    char err[512] = "", *file = NULL;
    assert_int_equal(bw_config_load(&c, err, sizeof err), 0);
    char *js = bw_config_to_json(&c);
    json_t *all = json_loads(js, 0, NULL);
    free(js);
    size_t len = 0;
    file = bw_test_read_file(BW_FIXTURES_DIR "/../../deploy/default/beamline-worker", &len);
    assert_non_null(file);
    const char *k;
    json_t *v;
    json_object_foreach(all, k, v)
    {
        char line[128];
        snprintf(line, sizeof line, "\n#%s=", k);
        if (strstr(file, line) == NULL)
            fail_msg("deploy/default/beamline-worker has no line #%s=", k);
    }
    json_decref(all);
    free(file);
    bw_config_dispose(&c);
}

/* Under systemd's StateDirectory= the worker's files default to that directory; set variables win. */
static void test_state_directory_defaults(void **state)
{
    bw_config_t c;
    char err[512] = "";
    setenv("STATE_DIRECTORY", "/var/lib/beamline-worker:/var/lib/other", 1);
    assert_int_equal(bw_config_load(&c, err, sizeof err), 0);
    assert_string_equal(c.dlq_path, "/var/lib/beamline-worker/dlq.jsonl");
    assert_string_equal(c.fs_base_dir, "/var/lib/beamline-worker/blobs");
    assert_string_equal(c.approval_dir, "/var/lib/beamline-worker/approvals");
    bw_config_dispose(&c);
    setenv("DLQ_PATH", "/srv/dlq.jsonl", 1);
    assert_int_equal(bw_config_load(&c, err, sizeof err), 0);
    assert_string_equal(c.dlq_path, "/srv/dlq.jsonl");
    bw_config_dispose(&c);
    setenv("STATE_DIRECTORY", "relative", 1); /* not what systemd sets: ignored */
    unsetenv("DLQ_PATH");
    assert_int_equal(bw_config_load(&c, err, sizeof err), 0);
    assert_string_equal(c.dlq_path, "/tmp/worker-dlq.jsonl");
    bw_config_dispose(&c);
    unsetenv("STATE_DIRECTORY");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_defaults, clear_env),
        cmocka_unit_test_setup(test_invalid_values_name_the_variable, clear_env),
        cmocka_unit_test_setup(test_scheduling_settings, clear_env),
        cmocka_unit_test_setup(test_valid_overrides, clear_env),
        cmocka_unit_test_setup(test_cross_checks, clear_env),
        cmocka_unit_test_setup(test_jetstream_settings, clear_env),
        cmocka_unit_test_setup(test_approval_token, clear_env),
        cmocka_unit_test(test_sizes),
        cmocka_unit_test(test_subjects),
        cmocka_unit_test_setup(test_redaction, clear_env),
        cmocka_unit_test_setup(test_readme_lists_every_variable, clear_env),
        cmocka_unit_test_setup(test_default_file_lists_every_variable, clear_env),
        cmocka_unit_test_setup(test_state_directory_defaults, clear_env),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
