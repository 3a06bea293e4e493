/*
 * Integration: the binary's sub-commands run as a user would run them. `exec` (one job from stdin,
 * no NATS), `check-config` (defaults, redaction, a clear exit 2 for a bad variable), --version,
 * --help and unknown commands; then `submit` against a real nats-server and a real worker, and
 * against a closed port (it must fail fast rather than hang).
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "harness.h"
#include "testutil.h"

/* stdout must be exactly one JSON document (jansson rejects trailing data) and an object. */
static json_t *parse_stdout(const bw_test_cli_t *r)
{
    json_error_t e;
    json_t *j = json_loads(r->out, 0, &e);
    if (!json_is_object(j)) {
        bw_test_cli_dump(r);
        fail_msg("stdout is not one JSON object: %s", e.text);
    }
    return j;
}

static const char *str(json_t *o, const char *key)
{
    const char *s = json_string_value(json_object_get(o, key));
    return s ? s : "(missing)";
}

/* ---- exec --------------------------------------------------------------------------------- */

static const char *const exec_args[] = {"exec", NULL};

static void test_exec_echo(void **state)
{
    const char *payload = "{\"hello\":\"w\\u00f6rld\",\"n\":[1,2.5,true],\"o\":{\"k\":\"v\"},\"e\":{}}";
    char in[256];
    bw_test_cli_t r;
    snprintf(in, sizeof in, "{\"type\":\"echo\",\"payload\":%s}", payload);
    bw_test_cli_run(&r, exec_args, NULL, in);
    if (r.rc != 0)
        bw_test_cli_dump(&r);
    assert_int_equal(r.rc, 0);
    json_t *j = parse_stdout(&r);
    json_t *want = json_loads(payload, 0, NULL);
    assert_string_equal(str(j, "status"), "success");
    assert_string_equal(str(j, "version"), "1");
    assert_string_equal(str(j, "job_type"), "echo");
    assert_string_equal(str(j, "tenant_id"), "local");
    assert_true(strlen(str(j, "assignment_id")) > 8);
    assert_true(json_equal(json_object_get(j, "output"), want));
    assert_null(json_object_get(j, "error_code"));
    /* Pretty-printed, one document, and no log line mixed into stdout: logs go to stderr. */
    assert_non_null(strstr(r.out, "\n  \"status\": \"success\""));
    assert_null(strstr(r.out, "\"level\""));
    assert_null(strstr(r.out, "job finished"));
    assert_int_equal(r.out[strlen(r.out) - 1], '\n');
    assert_non_null(strstr(r.err, "job finished"));
    json_decref(want);
    json_decref(j);
    bw_test_cli_dispose(&r);
}

static void test_exec_echo_without_payload(void **state)
{
    bw_test_cli_t r;
    bw_test_cli_run(&r, exec_args, NULL, "{\"type\":\"echo\"}");
    assert_int_equal(r.rc, 0);
    json_t *j = parse_stdout(&r);
    assert_string_equal(str(j, "status"), "success");
    assert_true(json_is_object(json_object_get(j, "output")));
    assert_int_equal(json_object_size(json_object_get(j, "output")), 0);
    json_decref(j);
    bw_test_cli_dispose(&r);
}

static void check_whole_assignment(const char *input, const char *id, const char *tenant)
{
    bw_test_cli_t r;
    bw_test_cli_run(&r, exec_args, NULL, input);
    if (r.rc != 0)
        bw_test_cli_dump(&r);
    assert_int_equal(r.rc, 0);
    json_t *j = parse_stdout(&r);
    assert_string_equal(str(j, "assignment_id"), id);
    assert_string_equal(str(j, "request_id"), "req-7");
    assert_string_equal(str(j, "tenant_id"), tenant);
    assert_string_equal(str(j, "status"), "success");
    assert_string_equal(str(j, "version"), "1");
    /* router format by default, whatever form came in */
    assert_null(json_object_get(j, "kind"));
    assert_int_equal(json_integer_value(json_object_get(json_object_get(j, "output"), "x")), 7);
    json_decref(j);
    bw_test_cli_dispose(&r);
}

static void test_exec_whole_assignment(void **state)
{
    check_whole_assignment("{\"version\":\"1\",\"assignment_id\":\"cli-bare-1\",\"request_id\":\"req-7\","
                           "\"tenant_id\":\"acme\",\"job\":{\"type\":\"echo\",\"payload\":{\"x\":7}}}",
                           "cli-bare-1", "acme");
    check_whole_assignment(
        "{\"version\":\"v1\",\"kind\":\"exec_assign\",\"data\":{\"version\":\"1\","
        "\"assignment_id\":\"cli-env-1\",\"request_id\":\"req-7\",\"tenant_id\":\"globex\","
        "\"job\":{\"type\":\"echo\",\"payload\":{\"x\":7}}}}",
        "cli-env-1", "globex");
}

static void test_exec_sleep(void **state)
{
    bw_test_cli_t r;
    bw_test_cli_run(&r, exec_args, NULL, "{\"type\":\"sleep\",\"payload\":{\"ms\":50}}");
    assert_int_equal(r.rc, 0);
    json_t *j = parse_stdout(&r);
    assert_string_equal(str(j, "status"), "success");
    assert_true(json_integer_value(json_object_get(json_object_get(j, "output"), "slept_ms")) >= 50);
    assert_true(r.ms >= 50);
    json_decref(j);
    bw_test_cli_dispose(&r);
}

static void check_timeout(const char *input)
{
    bw_test_cli_t r;
    bw_test_cli_run(&r, exec_args, NULL, input);
    if (r.rc != 1 || r.ms >= 3000)
        bw_test_cli_dump(&r);
    assert_int_equal(r.rc, 1);
    json_t *j = parse_stdout(&r);
    assert_string_equal(str(j, "status"), "timeout");
    assert_string_equal(str(j, "error_code"), "TIMEOUT");
    assert_true(strlen(str(j, "error_message")) > 5);
    assert_null(json_object_get(j, "output"));
    /* The job is stopped at its deadline, not left to sleep the full 5 s. */
    assert_true(r.ms < 3000);
    json_decref(j);
    bw_test_cli_dispose(&r);
}

static void test_exec_sleep_timeout(void **state)
{
    /* The job-level timeout_ms of the short form, and the payload's timeout_ms. */
    check_timeout("{\"type\":\"sleep\",\"payload\":{\"ms\":5000},\"timeout_ms\":100}");
    check_timeout("{\"type\":\"sleep\",\"payload\":{\"ms\":5000,\"timeout_ms\":100}}");
}

static void test_exec_unknown_type(void **state)
{
    bw_test_cli_t r;
    bw_test_cli_run(&r, exec_args, NULL, "{\"type\":\"teleport\",\"payload\":{}}");
    assert_int_equal(r.rc, 1);
    json_t *j = parse_stdout(&r);
    assert_string_equal(str(j, "status"), "error");
    assert_string_equal(str(j, "error_code"), "UNKNOWN_JOB_TYPE");
    assert_non_null(strstr(str(j, "error_message"), "teleport"));
    json_decref(j);
    bw_test_cli_dispose(&r);
}

static void test_exec_not_json(void **state)
{
    static const char *const inputs[] = {"this is not json", "{\"type\":", "", NULL};
    for (int i = 0; inputs[i] != NULL; i++) {
        bw_test_cli_t r;
        bw_test_cli_run(&r, exec_args, NULL, inputs[i]);
        if (r.rc != 2)
            bw_test_cli_dump(&r);
        assert_int_equal(r.rc, 2);
        assert_string_equal(r.out, "");
        assert_true(strlen(r.err) > 10);
        assert_non_null(strstr(r.err, "exec"));
        bw_test_cli_dispose(&r);
    }
}

/* ---- check-config ------------------------------------------------------------------------- */

static const char *const check_args[] = {"check-config", NULL};

static void test_check_config_defaults(void **state)
{
    /* An empty value means "the default" for every variable but CAF_QUEUE_GROUP, so these make the
       test independent of the caller's environment. */
    static const char *const env[] = {"WORKER_MAX_CONCURRENCY=",
                                      "CAF_ASSIGN_SUBJECT=",
                                      "CAF_RESULT_SUBJECT=",
                                      "NATS_URL=",
                                      "DEFAULT_JOB_TIMEOUT_MS=",
                                      "CAF_MESSAGE_FORMAT=",
                                      NULL};
    bw_test_cli_t r;
    bw_test_cli_run(&r, check_args, env, NULL);
    assert_int_equal(r.rc, 0);
    json_t *j = parse_stdout(&r);
    assert_int_equal(json_integer_value(json_object_get(j, "WORKER_MAX_CONCURRENCY")), 8);
    assert_string_equal(str(j, "CAF_ASSIGN_SUBJECT"), "caf.exec.assign.v1");
    assert_string_equal(str(j, "CAF_RESULT_SUBJECT"), "caf.exec.result.v1");
    assert_string_equal(str(j, "NATS_URL"), "nats://localhost:4222");
    assert_int_equal(json_integer_value(json_object_get(j, "DEFAULT_JOB_TIMEOUT_MS")), 60000);
    assert_string_equal(str(j, "CAF_MESSAGE_FORMAT"), "router");
    assert_true(strncmp(str(j, "WORKER_ID"), "worker-", 7) == 0);
    /* never a null: absent settings are omitted */
    const char *key;
    json_t *v;
    json_object_foreach(j, key, v) assert_false(json_is_null(v));
    json_decref(j);
    bw_test_cli_dispose(&r);
}

static void test_check_config_values_and_redaction(void **state)
{
    static const char *const env[] = {
        "NATS_URL=nats://alice:hunter2@127.0.0.1:4222,nats://s3cr3tT0ken@10.0.0.2:4222",
        "WORKER_MAX_CONCURRENCY=3", "CAF_QUEUE_GROUP=", "WORKER_ID=cli-test-1", NULL};
    bw_test_cli_t r;
    bw_test_cli_run(&r, check_args, env, NULL);
    assert_int_equal(r.rc, 0);
    assert_null(strstr(r.out, "hunter2"));
    assert_null(strstr(r.out, "s3cr3tT0ken"));
    assert_null(strstr(r.err, "hunter2"));
    json_t *j = parse_stdout(&r);
    const char *url = str(j, "NATS_URL");
    assert_non_null(strstr(url, "127.0.0.1:4222"));
    assert_non_null(strstr(url, "10.0.0.2:4222"));
    assert_null(strstr(url, "alice"));
    assert_int_equal(json_integer_value(json_object_get(j, "WORKER_MAX_CONCURRENCY")), 3);
    assert_string_equal(str(j, "CAF_QUEUE_GROUP"), "");
    assert_string_equal(str(j, "WORKER_ID"), "cli-test-1");
    json_decref(j);
    bw_test_cli_dispose(&r);
}

static void check_invalid(const char *assignment, const char *name, const char *range, const char *secret)
{
    const char *const env[] = {assignment, NULL};
    bw_test_cli_t r;
    /* Configuration is checked before any command runs, exec included. */
    static const char *const *const cmds[] = {check_args, exec_args};
    for (int i = 0; i < 2; i++) {
        bw_test_cli_run(&r, cmds[i], env, "{\"type\":\"echo\"}");
        if (r.rc != 2 || strstr(r.err, name) == NULL || strstr(r.err, range) == NULL)
            bw_test_cli_dump(&r);
        assert_int_equal(r.rc, 2);
        assert_string_equal(r.out, "");
        assert_non_null(strstr(r.err, name));
        assert_non_null(strstr(r.err, range));
        if (secret != NULL)
            assert_null(strstr(r.err, secret));
        bw_test_cli_dispose(&r);
    }
}

static void test_invalid_variables(void **state)
{
    check_invalid("WORKER_MAX_CONCURRENCY=0", "WORKER_MAX_CONCURRENCY", "1..100000", NULL);
    check_invalid("WORKER_MAX_CONCURRENCY=eight", "WORKER_MAX_CONCURRENCY", "1..100000", NULL);
    check_invalid("CAF_HEARTBEAT_INTERVAL_MS=5", "CAF_HEARTBEAT_INTERVAL_MS", "100..600000", NULL);
    check_invalid("DLQ_MAX_BYTES=huge", "DLQ_MAX_BYTES", "4096..", NULL);
    check_invalid("CAF_ASSIGN_SUBJECT=caf..assign", "CAF_ASSIGN_SUBJECT", "NATS subject", NULL);
    check_invalid("CAF_MESSAGE_FORMAT=xml", "CAF_MESSAGE_FORMAT", "router", NULL);
    /* A URL can carry a password: the error names the variable but never echoes the value. */
    check_invalid("NATS_URL=http://bob:pa55word@127.0.0.1:4222", "NATS_URL", "nats://", "pa55word");
}

/* ---- --version, --help, unknown ----------------------------------------------------------- */

static void test_version_help_unknown(void **state)
{
    static const char *const version[] = {"--version", NULL}, *const help[] = {"--help", NULL},
                             *const bogus[] = {"frobnicate", NULL};
    bw_test_cli_t r;
    bw_test_cli_run(&r, version, NULL, NULL);
    assert_int_equal(r.rc, 0);
    assert_true(strncmp(r.out, "beamline-worker ", 16) == 0);
    assert_non_null(strstr(r.out, "commit"));
    bw_test_cli_dispose(&r);

    bw_test_cli_run(&r, help, NULL, NULL);
    assert_int_equal(r.rc, 0);
    assert_non_null(strstr(r.out, "usage"));
    assert_non_null(strstr(r.out, "exec"));
    assert_non_null(strstr(r.out, "submit"));
    assert_non_null(strstr(r.out, "check-config"));
    assert_non_null(strstr(r.out, "approvals list"));
    assert_non_null(strstr(r.out, "human_approval"));
    assert_non_null(strstr(r.out, "echo"));
    assert_non_null(strstr(r.out, "sleep"));
    bw_test_cli_dispose(&r);

    bw_test_cli_run(&r, bogus, NULL, NULL);
    assert_int_not_equal(r.rc, 0);
    assert_non_null(strstr(r.err, "frobnicate"));
    bw_test_cli_dispose(&r);
}

/* ---- submit (real nats-server + worker) --------------------------------------------------- */

static bw_harness_t H;
static char url_env[128];

static int submit_setup(void **state)
{
    if (bw_harness_start(&H, NULL) != 0)
        return -1;
    snprintf(url_env, sizeof url_env, "NATS_URL=%s", H.nats.url);
    return 0;
}

static int submit_teardown(void **state)
{
    int bad = bw_harness_check_all_results(&H, 0);
    int rc = bw_harness_stop(&H, bad != 0 || getenv("BW_TEST_VERBOSE") != NULL);
    return bad == 0 && rc == 0 ? 0 : -1;
}

static void test_submit_echo(void **state)
{
    static const char *const args[] = {"submit", "echo", "{\"a\":1}", NULL};
    const char *const env[] = {url_env, NULL};
    bw_test_cli_t r;
    bw_test_cli_run(&r, args, env, NULL);
    if (r.rc != 0)
        bw_test_cli_dump(&r);
    assert_int_equal(r.rc, 0);
    json_t *j = parse_stdout(&r);
    assert_string_equal(str(j, "status"), "success");
    assert_string_equal(str(j, "job_type"), "echo");
    assert_int_equal(json_integer_value(json_object_get(json_object_get(j, "output"), "a")), 1);
    /* The same result went over NATS to every subscriber, router-acceptable, exactly once. */
    json_t *seen = bw_harness_result(&H, str(j, "assignment_id"), 5000);
    assert_non_null(seen);
    assert_true(json_equal(json_object_get(seen, "output"), json_object_get(j, "output")));
    assert_int_equal(bw_harness_result_count(&H, str(j, "assignment_id")), 1);
    json_decref(seen);
    json_decref(j);
    bw_test_cli_dispose(&r);
}

static void test_submit_timeout(void **state)
{
    static const char *const args[] = {"submit", "--wait-ms", "200", "sleep", "{\"ms\":5000}", NULL};
    const char *const env[] = {url_env, NULL};
    bw_test_cli_t r;
    bw_test_cli_run(&r, args, env, NULL);
    if (r.rc != 1)
        bw_test_cli_dump(&r);
    assert_int_equal(r.rc, 1);
    json_t *j = parse_stdout(&r);
    assert_string_equal(str(j, "status"), "timeout");
    assert_string_equal(str(j, "error_code"), "TIMEOUT");
    assert_true(r.ms < 4000);
    json_decref(j);
    bw_test_cli_dispose(&r);
}

static void test_submit_no_server(void **state)
{
    static const char *const args[] = {"submit", "echo", "{}", NULL};
    char env_url[128];
    int port = bw_test_closed_port();
    assert_true(port > 0);
    snprintf(env_url, sizeof env_url, "NATS_URL=nats://127.0.0.1:%d", port);
    const char *const env[] = {env_url, NULL};
    bw_test_cli_t r;
    bw_test_cli_run(&r, args, env, NULL);
    if (r.rc != 3 || r.ms >= 5000)
        bw_test_cli_dump(&r);
    assert_int_equal(r.rc, 3);
    assert_string_equal(r.out, "");
    assert_non_null(strstr(r.err, "NATS"));
    assert_true(r.ms < 5000);
    bw_test_cli_dispose(&r);
}

static void test_submit_bad_arguments(void **state)
{
    static const char *const no_type[] = {"submit", NULL},
                             *const bad_payload[] = {"submit", "echo", "[1,2]", NULL},
                             *const bad_wait[] = {"submit", "--wait-ms", "0", "echo", NULL};
    static const char *const *const cases[] = {no_type, bad_payload, bad_wait};
    const char *const env[] = {url_env, NULL};
    for (int i = 0; i < 3; i++) {
        bw_test_cli_t r;
        bw_test_cli_run(&r, cases[i], env, NULL);
        if (r.rc != 2)
            bw_test_cli_dump(&r);
        assert_int_equal(r.rc, 2);
        assert_true(strlen(r.err) > 0);
        bw_test_cli_dispose(&r);
    }
}

int main(void)
{
    const struct CMUnitTest local[] = {
        cmocka_unit_test_teardown(test_exec_echo, bw_test_cli_free_live),
        cmocka_unit_test_teardown(test_exec_echo_without_payload, bw_test_cli_free_live),
        cmocka_unit_test_teardown(test_exec_whole_assignment, bw_test_cli_free_live),
        cmocka_unit_test_teardown(test_exec_sleep, bw_test_cli_free_live),
        cmocka_unit_test_teardown(test_exec_sleep_timeout, bw_test_cli_free_live),
        cmocka_unit_test_teardown(test_exec_unknown_type, bw_test_cli_free_live),
        cmocka_unit_test_teardown(test_exec_not_json, bw_test_cli_free_live),
        cmocka_unit_test_teardown(test_check_config_defaults, bw_test_cli_free_live),
        cmocka_unit_test_teardown(test_check_config_values_and_redaction, bw_test_cli_free_live),
        cmocka_unit_test_teardown(test_invalid_variables, bw_test_cli_free_live),
        cmocka_unit_test_teardown(test_version_help_unknown, bw_test_cli_free_live),
    };
    const struct CMUnitTest submit[] = {
        cmocka_unit_test_teardown(test_submit_echo, bw_test_cli_free_live),
        cmocka_unit_test_teardown(test_submit_timeout, bw_test_cli_free_live),
        cmocka_unit_test_teardown(test_submit_no_server, bw_test_cli_free_live),
        cmocka_unit_test_teardown(test_submit_bad_arguments, bw_test_cli_free_live),
    };
    int rc = cmocka_run_group_tests_name("cli", local, NULL, NULL);
    rc |= cmocka_run_group_tests_name("submit", submit, submit_setup, submit_teardown);
    nats_CloseAndWait(2000);
    return rc;
}
