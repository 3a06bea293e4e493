/*
 * Integration: the dead-letter queue through the real binary. Garbage input lands in DLQ_PATH (and on
 * the DLQ subject) with the original bytes and headers; results that cannot be published while NATS is
 * down beyond the retries become PUBLISH_ERROR dead letters and `dlq replay` delivers them afterwards;
 * stored assignments are resubmitted byte for byte; the file rotates; an unwritable path costs only
 * the file copy, never the service. Results the server refuses (permissions) become PUBLISH_ERROR dead
 * letters one for one, which a user allowed to publish replays; refusals on another subject (heartbeats)
 * dead-letter no result.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "harness.h"
#include "http_client.h"
#include "testutil.h"

static bw_harness_t H;
static char dir[256], dlq_env[320], path[300];

static int start(const char *const *extra)
{
    const char *env[16] = {dlq_env};
    int n = 1;
    snprintf(dir, sizeof dir, "/tmp/bw-dlq-test-XXXXXX");
    if (mkdtemp(dir) == NULL)
        return -1;
    snprintf(path, sizeof path, "%s/dlq.jsonl", dir);
    snprintf(dlq_env, sizeof dlq_env, "DLQ_PATH=%s", path);
    for (int i = 0; extra != NULL && extra[i] != NULL && n < 15; i++)
        env[n++] = extra[i];
    env[n] = NULL;
    return bw_harness_start(&H, env);
}

static int teardown(void **state)
{
    int rc = bw_harness_finish(&H, 0);
    bw_test_rm_rf(dir);
    return rc;
}

/* Runs a CLI command against this test's NATS and DLQ file; returns the exit code, *out (caller frees). */
static int cli(const char *const *args, char **out)
{
    return bw_harness_cli(&H, path, args, out);
}

/* Waits until the DLQ file has at least n lines; returns the count. */
static int wait_lines(const char *file, int n, int timeout_ms)
{
    int64_t end = bw_test_now_ms() + timeout_ms;
    int count = 0;
    do {
        char *s = bw_test_read_file(file, NULL);
        count = 0;
        for (char *p = s; p && (p = strchr(p, '\n')) != NULL; p++)
            count++;
        free(s);
        if (count >= n)
            break;
        bw_test_sleep_ms(20);
    } while (bw_test_now_ms() < end);
    return count;
}

static int setup_plain(void **state)
{
    return start(NULL);
}

static void test_garbage_to_file_and_list(void **state)
{
    static const char *const hdrs[] = {"tenant_id", "acme", "x-origin", "fuzzer", NULL};
    assert_int_equal(bw_harness_publish_raw(&H, "{not json", hdrs), 0);
    assert_int_equal(bw_harness_publish_raw(&H, "\xff\xfe binary", NULL), 0);
    assert_int_equal(bw_harness_publish_raw(&H, "{\"tenant_id\":\"acme\",\"job\":{\"type\":\"echo\"}}", NULL),
                     0);
    assert_int_equal(wait_lines(path, 3, 5000), 3);
    /* the same letters went out on the DLQ subject */
    assert_true(bw_test_client_wait_count(H.client, BW_H_DLQ, 3, 5000) >= 3);
    char *out = NULL;
    const char *const list_json[] = {"dlq", "list", "--json", NULL};
    assert_int_equal(cli(list_json, &out), 0);
    json_t *first = json_loadb(out, strcspn(out, "\n"), 0, NULL);
    assert_non_null(first);
    assert_string_equal(json_string_value(json_object_get(first, "reason")), "PARSE_ERROR");
    assert_string_equal(json_string_value(json_object_get(first, "message")), "{not json");
    assert_string_equal(json_string_value(json_object_get(first, "message_format")), "text");
    assert_string_equal(json_string_value(json_object_get(json_object_get(first, "headers"), "x-origin")),
                        "fuzzer");
    assert_int_equal(
        strlen(json_string_value(json_object_get(json_object_get(first, "payload_ref"), "sha256"))), 64);
    json_decref(first);
    assert_non_null(strstr(out, "\"message_format\":\"base64\""));
    assert_non_null(strstr(out, "\"reason\":\"DECODE_ERROR\""));
    free(out);
    const char *const list_reason[] = {"dlq", "list", "--reason", "DECODE_ERROR", NULL};
    assert_int_equal(cli(list_reason, &out), 0);
    assert_non_null(strstr(out, "1 dead letter(s)"));
    free(out);
    const char *const list_future[] = {"dlq", "list", "--since", "2099-01-01T00:00:00Z", NULL};
    assert_int_equal(cli(list_future, &out), 0);
    assert_non_null(strstr(out, "0 dead letter(s)"));
    free(out);
}

static void test_replay_resubmits_assignments_byte_for_byte(void **state)
{
    assert_int_equal(bw_test_client_collect(H.client, BW_H_ASSIGN), 0);
    int before = bw_test_client_count(H.client, BW_H_ASSIGN);
    char *out = NULL;
    const char *const replay[] = {"dlq", "replay", "--reason", "PARSE_ERROR", NULL};
    assert_int_equal(cli(replay, &out), 0);
    if (strstr(out, "\"replayed\":2") == NULL)
        fail_msg("dlq replay said: %s", out);
    assert_non_null(strstr(out, "\"assignments\":2"));
    free(out);
    assert_true(bw_test_client_wait_count(H.client, BW_H_ASSIGN, before + 2, 5000) >= before + 2);
    bw_test_msg_t *a = bw_test_client_get(H.client, BW_H_ASSIGN, before);
    bw_test_msg_t *b = bw_test_client_get(H.client, BW_H_ASSIGN, before + 1);
    assert_int_equal(a->len, 9);
    assert_memory_equal(a->data, "{not json", 9);
    assert_string_equal(json_string_value(json_object_get(a->headers, "x-origin")), "fuzzer");
    assert_int_equal(b->len, 9);
    assert_memory_equal(b->data, "\xff\xfe binary", 9);
    bw_test_msg_destroy(a);
    bw_test_msg_destroy(b);
    /* --dry-run publishes nothing */
    const char *const dry[] = {"dlq", "replay", "--dry-run", NULL};
    assert_int_equal(cli(dry, &out), 0);
    assert_non_null(strstr(out, "\"dry_run\":true"));
    free(out);
}

static int setup_fragile(void **state)
{
    static const char *const env[] = {"NATS_RECONNECT_BUF_BYTES=1KiB", "RESULT_PUBLISH_MAX_RETRIES=2",
                                      "WORKER_MAX_CONCURRENCY=16", "LOG_LEVEL=debug", NULL};
    return start(env);
}

static void test_undeliverable_results_replayed(void **state)
{
    enum { N = 6 };
    char id[32];
    for (int i = 0; i < N; i++) {
        snprintf(id, sizeof id, "lost-%d", i);
        assert_int_equal(bw_harness_submit(&H, id, "sleep", "{\"ms\":2500}", 30000), 0);
    }
    /* all six are running (the debug log shows their admission) before NATS goes away */
    assert_int_equal(bw_test_proc_wait_log(&H.workers[0], "\"assignment_id\":\"lost-5\"", 5000), 0);
    int port = H.nats.port;
    bw_test_nats_stop(&H.nats, 1);
    /* the jobs finish while NATS is down: the 1 KiB buffer takes at most one result, the others fail
       their retries and become PUBLISH_ERROR dead letters */
    int64_t end = bw_test_now_ms() + 10000;
    while (bw_test_proc_log_count(&H.workers[0], "result publish failed after retries") < N - 2 &&
           bw_test_now_ms() < end)
        bw_test_sleep_ms(50);
    assert_true(bw_test_proc_log_count(&H.workers[0], "result publish failed after retries") >= N - 2);
    assert_int_equal(bw_test_nats_start_on(&H.nats, port), 0);
    assert_int_equal(bw_test_proc_wait_log(&H.workers[0], "nats reconnected", 10000), 0);
    bw_test_sleep_ms(300); /* let the test client resubscribe too */
    char *out = NULL;
    const char *const replay[] = {"dlq", "replay", "--reason", "PUBLISH_ERROR", NULL};
    assert_int_equal(cli(replay, &out), 0);
    assert_non_null(strstr(out, "\"failed\":0"));
    free(out);
    for (int i = 0; i < N; i++) {
        snprintf(id, sizeof id, "lost-%d", i);
        json_t *r = bw_harness_result(&H, id, 5000); /* checks the router's rules and headers */
        if (r == NULL)
            fail_msg("result %s never delivered", id);
        assert_string_equal(json_string_value(json_object_get(r, "status")), "success");
        json_decref(r);
        assert_int_equal(bw_harness_result_count(&H, id), 1);
    }
}

static int setup_rotating(void **state)
{
    static const char *const env[] = {"DLQ_MAX_BYTES=4KiB", "DLQ_MAX_ROTATIONS=2", "DLQ_TOTAL_MAX_BYTES=1MiB",
                                      NULL};
    return start(env);
}

static void test_rotation_through_the_binary(void **state)
{
    char garbage[400];
    memset(garbage, 'g', sizeof garbage - 1);
    garbage[sizeof garbage - 1] = 0;
    garbage[0] = '{';
    for (int i = 0; i < 60; i++)
        assert_int_equal(bw_harness_publish_raw(&H, garbage, NULL), 0);
    assert_true(bw_test_client_wait_count(H.client, BW_H_DLQ, 60, 10000) >= 60);
    char p1[320], p2[320], p3[320];
    snprintf(p1, sizeof p1, "%s.1", path);
    snprintf(p2, sizeof p2, "%s.2", path);
    snprintf(p3, sizeof p3, "%s.3", path);
    struct stat st;
    /* The client got the 60 on NATS; the file's writer thread may still be rotating (a rotation shifts .1
       to .2 and .2 to .3, then prunes .3: .2 is briefly missing). Its own count says when it wrote them. */
    int64_t end = bw_test_now_ms() + 10000;
    double written = 0;
    while ((written = bw_harness_metric(&H, "beamline_worker_dlq_file_written_total")) < 60 &&
           bw_test_now_ms() < end)
        bw_test_sleep_ms(20);
    assert_true(written >= 60);
    assert_int_equal(stat(path, &st), 0);
    assert_true(st.st_size <= 4096);
    assert_int_equal(stat(p1, &st), 0);
    assert_true(st.st_size <= 4096 && st.st_size > 2000);
    assert_int_equal(stat(p2, &st), 0);
    assert_int_not_equal(stat(p3, &st), 0); /* DLQ_MAX_ROTATIONS=2 */
}

static int setup_unwritable(void **state)
{
    static const char *const env[] = {"DLQ_PATH=/proc/version/not-a-dir/dlq.jsonl", NULL};
    snprintf(dir, sizeof dir, "/tmp/bw-dlq-test-unused");
    return bw_harness_start(&H, env);
}

static void test_unwritable_path_keeps_serving(void **state)
{
    assert_int_equal(bw_harness_publish_raw(&H, "{broken", NULL), 0);
    assert_true(bw_test_client_wait_count(H.client, BW_H_DLQ, 1, 5000) >= 1);
    assert_int_equal(bw_test_proc_wait_log(&H.workers[0], "/proc/version/not-a-dir/dlq.jsonl", 5000), 0);
    assert_int_equal(bw_harness_submit(&H, "still-serving", "echo", "{}", 5000), 0);
    json_t *r = bw_harness_result(&H, "still-serving", 5000);
    assert_non_null(r);
    json_decref(r);
}

/* A user-restricted server: the worker may not publish results. nats.c learns of it only after the
   fact, so the worker must say so: a warn line naming the subject, a counter, and /readyz 503
   PUBLISH_PERMISSION_DENIED until 10 s pass without another refusal. */
static const char restricted_conf[] =
    "authorization {\n"
    "  users = [\n"
    "    {user: worker, password: wpass, permissions: {publish: {deny: [\"caf.exec.result.v1\"]}}}\n"
    "    {user: client, password: cpass}\n"
    "  ]\n"
    "}\n";

/* A nats-server with conf (users worker/wpass and client/cpass), a client collecting results, and one
   worker connected as the worker user. */
static int setup_with_conf(const char *conf)
{
    char client_url[128], worker_url[160];
    memset(&H, 0, sizeof H);
    snprintf(dir, sizeof dir, "/tmp/bw-dlq-test-unused");
    H.nats.conf = conf;
    if (bw_test_nats_start(&H.nats) != 0)
        return -1;
    snprintf(client_url, sizeof client_url, "nats://client:cpass@127.0.0.1:%d", H.nats.port);
    if ((H.client = bw_test_client_create(client_url)) == NULL ||
        bw_test_client_collect(H.client, BW_H_RESULTS) != 0)
        return -1;
    snprintf(worker_url, sizeof worker_url, "NATS_URL=nats://worker:wpass@127.0.0.1:%d", H.nats.port);
    const char *const env[] = {worker_url, NULL};
    return bw_harness_add_worker(&H, env) < 0 ? -1 : 0;
}

static int setup_restricted(void **state)
{
    return setup_with_conf(restricted_conf);
}

/* GET /readyz of worker 0: the status, and the body's first line in why. */
static int readyz(char *why, size_t len)
{
    int status = 0;
    char *body = NULL;
    assert_int_equal(
        bw_test_http(bw_test_worker_http_port(&H.workers[0]), "GET", "/readyz", NULL, &status, &body, NULL),
        0);
    snprintf(why, len, "%.*s", (int)strcspn(body ? body : "", "\n"), body ? body : "");
    free(body);
    return status;
}

static void test_permission_denied_results_are_reported(void **state)
{
    char why[128];
    assert_int_equal(readyz(why, sizeof why), 200);
    assert_int_equal(bw_harness_submit(&H, "denied-1", "echo", "{}", 5000), 0);
    assert_int_equal(bw_test_proc_wait_log(&H.workers[0], "nats permission violation", 5000), 0);
    int64_t t_denied = bw_test_now_ms();
    /* one line, at warn, naming the refused subject */
    char *log = bw_test_read_file(H.workers[0].log_path, NULL);
    char *line = strstr(log, "nats permission violation");
    assert_non_null(line);
    while (line > log && line[-1] != '\n')
        line--;
    char *eol = strchr(line, '\n');
    if (eol != NULL)
        *eol = '\0';
    json_t *j = json_loads(line, 0, NULL);
    if (j == NULL)
        fail_msg("not a JSON log line: %s", line);
    assert_string_equal(json_string_value(json_object_get(j, "level")), "warn");
    assert_string_equal(json_string_value(json_object_get(j, "subject")), "caf.exec.result.v1");
    json_decref(j);
    free(log);
    assert_int_equal(bw_harness_result_count(&H, "denied-1"), 0);
    /* a worker that cannot deliver results is not ready */
    assert_int_equal(readyz(why, sizeof why), 503);
    assert_string_equal(why, "PUBLISH_PERMISSION_DENIED");
    /* ... until 10 s pass without another refusal (not before: 1 s of margin for a slow start) */
    int status;
    while ((status = readyz(why, sizeof why)) == 503 && bw_test_now_ms() - t_denied < 20000)
        bw_test_sleep_ms(200);
    assert_int_equal(status, 200);
    assert_string_equal(why, "READY");
    assert_true(bw_test_now_ms() - t_denied >= 9000);
}

#define REFUSED_N 20

/* The dead letters of worker 0 whose assignment id starts with prefix, for reason. */
static json_t *letters_for(const char *prefix, const char *reason)
{
    json_t *all = bw_harness_dead_letters(&H, 0), *out = json_array(), *v;
    size_t i;
    json_array_foreach(all, i, v)
    {
        const char *id = json_string_value(json_object_get(v, "assignment_id"));
        const char *why = json_string_value(json_object_get(v, "reason"));
        if (id != NULL && why != NULL && strncmp(id, prefix, strlen(prefix)) == 0 && strcmp(why, reason) == 0)
            json_array_append(out, v);
    }
    json_decref(all);
    return out;
}

/* Waits up to timeout_ms for at least n such letters; returns them (caller decrefs). */
static json_t *wait_letters(const char *prefix, const char *reason, size_t n, int timeout_ms)
{
    int64_t end = bw_test_now_ms() + timeout_ms;
    json_t *dl;
    while (json_array_size(dl = letters_for(prefix, reason)) < n && bw_test_now_ms() < end) {
        json_decref(dl);
        bw_test_sleep_ms(50);
    }
    return dl;
}

/* The server refuses every result (permissions), yet answers the PING after each: a PONG alone does not
   prove delivery. Each refused result must be a PUBLISH_ERROR dead letter holding the full result and
   its headers, exactly once, and `dlq replay` by a user who may publish on the result subject delivers
   every one of them. */
static void test_refused_results_become_dead_letters(void **state)
{
    assert_int_equal(bw_harness_submit_many(&H, "refused", REFUSED_N, "echo"), 0);
    json_t *dl = wait_letters("refused-", "PUBLISH_ERROR", REFUSED_N, 20000);
    assert_int_equal(json_array_size(dl), REFUSED_N);
    bool seen[REFUSED_N] = {false};
    json_t *v;
    size_t i;
    json_array_foreach(dl, i, v)
    {
        int k = atoi(json_string_value(json_object_get(v, "assignment_id")) + strlen("refused-"));
        assert_true(k >= 0 && k < REFUSED_N);
        assert_false(seen[k]);
        seen[k] = true;
        assert_string_equal(json_string_value(json_object_get(json_object_get(v, "payload_ref"), "subject")),
                            BW_H_RESULTS);
        json_t *result = json_object_get(v, "message"); /* the full result, as JSON */
        assert_true(json_is_object(result));
        assert_string_equal(json_string_value(json_object_get(result, "status")), "success");
        assert_string_equal(json_string_value(json_object_get(result, "assignment_id")),
                            json_string_value(json_object_get(v, "assignment_id")));
        char msgid[64];
        snprintf(msgid, sizeof msgid, "result-refused-%d", k);
        assert_string_equal(json_string_value(json_object_get(json_object_get(v, "headers"), "Nats-Msg-Id")),
                            msgid);
        assert_non_null(strstr(json_string_value(json_object_get(v, "error")), "Permissions Violation"));
    }
    json_decref(dl);
    for (int k = 0; k < REFUSED_N; k++) {
        char id[32];
        snprintf(id, sizeof id, "refused-%d", k);
        assert_int_equal(bw_harness_result_count(&H, id), 0);
    }
    /* once publishing is allowed (here: a user who may), the dead letters deliver the results */
    char url[160], dlq[400], *out = NULL, *err = NULL;
    snprintf(url, sizeof url, "NATS_URL=nats://client:cpass@127.0.0.1:%d", H.nats.port);
    snprintf(dlq, sizeof dlq, "DLQ_PATH=%s", bw_harness_dlq_path(&H, 0));
    const char *const env[] = {url, dlq, NULL};
    const char *const replay[] = {"dlq", "replay", "--reason", "PUBLISH_ERROR", NULL};
    assert_int_equal(bw_test_run(replay, env, NULL, &out, &err), 0);
    if (strstr(out, "\"failed\":0") == NULL)
        fail_msg("dlq replay said: %s %s", out, err ? err : "");
    free(out);
    free(err);
    for (int k = 0; k < REFUSED_N; k++) {
        char id[32];
        snprintf(id, sizeof id, "refused-%d", k);
        json_t *r = bw_harness_result(&H, id, 5000);
        if (r == NULL)
            fail_msg("no replayed result for %s", id);
        assert_string_equal(json_string_value(json_object_get(r, "status")), "success");
        json_decref(r);
        assert_int_equal(bw_harness_result_count(&H, id), 1);
    }
    /* and none was dead-lettered twice meanwhile */
    dl = letters_for("refused-", "PUBLISH_ERROR");
    assert_int_equal(json_array_size(dl), REFUSED_N);
    json_decref(dl);
}

/* Heartbeats are refused, results are not: confirmations are held (a refusal was recorded on the
   connection) and refusals keep coming while 500 echo results go out; none of them may become a dead
   letter (a refusal names its subject), and every one arrives. */
static const char heartbeat_denied_conf[] =
    "authorization {\n"
    "  users = [\n"
    "    {user: worker, password: wpass, permissions: {publish: {deny: [\"caf.status.heartbeat.v1\"]}}}\n"
    "    {user: client, password: cpass}\n"
    "  ]\n"
    "}\n";

static int setup_heartbeat_denied(void **state)
{
    return setup_with_conf(heartbeat_denied_conf);
}

static void test_other_refusals_dead_letter_no_result(void **state)
{
    /* a heartbeat was refused before the burst: the connection has a refusal on record */
    assert_int_equal(bw_test_proc_wait_log(&H.workers[0], "nats permission violation", 5000), 0);
    assert_int_equal(bw_harness_submit_many(&H, "burst", 500, "echo"), 0);
    assert_true(bw_test_client_wait_count(H.client, BW_H_RESULTS, 500, 60000) >= 500);
    for (int k = 0; k < 500; k++) {
        char id[32];
        snprintf(id, sizeof id, "burst-%d", k);
        assert_int_equal(bw_harness_result_count(&H, id), 1);
    }
    /* refusals of heartbeats that came after the last result (and their holds) are past */
    double before = bw_harness_metric(&H, "beamline_worker_nats_permission_errors_total");
    int64_t end = bw_test_now_ms() + 20000;
    while (bw_harness_metric(&H, "beamline_worker_nats_permission_errors_total") < before + 3 &&
           bw_test_now_ms() < end)
        bw_test_sleep_ms(100);
    assert_true(bw_harness_metric(&H, "beamline_worker_nats_permission_errors_total") >= before + 3);
    json_t *all = bw_harness_dead_letters(&H, 0);
    if (json_array_size(all) > 0) {
        char *s = json_dumps(json_array_get(all, 0), JSON_COMPACT);
        fail_msg("%zu dead letter(s), first: %.300s", json_array_size(all), s);
    }
    json_decref(all);
}

int main(void)
{
    int rc = 0;
    const struct CMUnitTest plain[] = {
        cmocka_unit_test(test_garbage_to_file_and_list),
        cmocka_unit_test(test_replay_resubmits_assignments_byte_for_byte),
    };
    const struct CMUnitTest fragile[] = {cmocka_unit_test(test_undeliverable_results_replayed)};
    const struct CMUnitTest rotating[] = {cmocka_unit_test(test_rotation_through_the_binary)};
    const struct CMUnitTest unwritable[] = {cmocka_unit_test(test_unwritable_path_keeps_serving)};
    rc |= cmocka_run_group_tests_name("garbage", plain, setup_plain, teardown);
    rc |= cmocka_run_group_tests_name("publish failure", fragile, setup_fragile, teardown);
    rc |= cmocka_run_group_tests_name("rotation", rotating, setup_rotating, teardown);
    rc |= cmocka_run_group_tests_name("unwritable", unwritable, setup_unwritable, teardown);
    const struct CMUnitTest restricted[] = {cmocka_unit_test(test_permission_denied_results_are_reported),
                                            cmocka_unit_test(test_refused_results_become_dead_letters)};
    rc |= cmocka_run_group_tests_name("permission denied", restricted, setup_restricted, teardown);
    const struct CMUnitTest other[] = {cmocka_unit_test(test_other_refusals_dead_letter_no_result)};
    rc |= cmocka_run_group_tests_name("heartbeats denied", other, setup_heartbeat_denied, teardown);
    nats_CloseAndWait(2000);
    return rc;
}
