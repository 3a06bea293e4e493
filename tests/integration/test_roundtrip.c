/*
 * Integration: jobs through a real nats-server and the real worker binary. Echo in both input forms,
 * the router's own assignments replayed with their headers, envelope output, unknown types, malformed
 * and invalid assignments (dead letters vs error results), acks and heartbeats.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "harness.h"
#include "testutil.h"

static bw_harness_t H;

static int setup(void **state)
{
    static const char *const env[] = {"CAF_ACK_ENABLED=true", NULL};
    return bw_harness_start(&H, env);
}

static int teardown(void **state)
{
    return bw_harness_finish(&H, 0);
}

/* enveloped results are unwrapped before the router's rules are applied */
static int teardown_envelope(void **state)
{
    return bw_harness_finish(&H, 1);
}

static void test_echo_bare(void **state)
{
    assert_int_equal(
        bw_harness_submit(&H, "echo-bare-1", "echo", "{\"hello\":\"world\",\"n\":[1,2.5,null]}", 5000), 0);
    json_t *r = bw_harness_result(&H, "echo-bare-1", 5000);
    assert_non_null(r);
    assert_string_equal(json_string_value(json_object_get(r, "status")), "success");
    assert_string_equal(json_string_value(json_object_get(r, "version")), "1");
    assert_string_equal(json_string_value(json_object_get(r, "job_type")), "echo");
    assert_string_equal(json_string_value(json_object_get(r, "provider_id")), "test-provider");
    assert_string_equal(json_string_value(json_object_get(r, "trace_id")),
                        "0af7651916cd43dd8448eb211c80319c");
    json_t *want = json_loads("{\"hello\":\"world\",\"n\":[1,2.5,null]}", 0, NULL);
    assert_true(json_equal(json_object_get(r, "output"), want));
    assert_true(json_integer_value(json_object_get(r, "timestamp")) > 1700000000000LL);
    assert_true(json_is_integer(json_object_get(r, "latency_ms")));
    json_decref(want);
    json_decref(r);
}

static void test_echo_envelope_input(void **state)
{
    const char *msg = "{\"version\":\"v1\",\"kind\":\"exec_assign\",\"data\":{\"version\":\"1\",\"assignment_"
                      "id\":\"echo-env-1\","
                      "\"tenant_id\":\"globex\",\"job\":{\"type\":\"echo\",\"payload\":{\"x\":42}}}}";
    assert_int_equal(bw_harness_publish_raw(&H, msg, NULL), 0);
    json_t *r = bw_harness_result(&H, "echo-env-1", 5000);
    assert_non_null(r);
    assert_string_equal(json_string_value(json_object_get(r, "status")), "success");
    assert_string_equal(json_string_value(json_object_get(r, "tenant_id")), "globex");
    assert_int_equal(json_integer_value(json_object_get(json_object_get(r, "output"), "x")), 42);
    json_decref(r);
}

static void test_router_assignments_replayed(void **state)
{
    FILE *f = fopen(BW_FIXTURES_DIR "/router/assignments.jsonl", "r");
    assert_non_null(f);
    char *line = NULL, *ids[64];
    size_t cap = 0;
    int n = 0;
    while (getline(&line, &cap, f) > 0 && n < 64) {
        json_t *rec = json_loads(line, 0, NULL);
        const char *hk[32];
        int k = 0;
        const char *key;
        json_t *v;
        json_object_foreach(json_object_get(rec, "headers"), key, v)
        {
            hk[k++] = key;
            hk[k++] = json_string_value(v);
        }
        hk[k] = NULL;
        json_t *p = json_object_get(rec, "payload");
        ids[n++] = strdup(json_string_value(json_object_get(p, "assignment_id")));
        /* The router's http jobs ask for https://example.org/health: a test may not reach out (not even
           to a DNS server), so they are pointed at a loopback port, which the default egress policy
           refuses before any packet leaves. */
        json_t *jp = json_object_get(json_object_get(p, "job"), "payload");
        if (json_is_string(json_object_get(jp, "url")))
            json_object_set_new(jp, "url", json_string("http://127.0.0.1:9/health"));
        /* the same for the sql jobs' db.internal: a closed loopback port */
        if (json_is_string(json_object_get(jp, "connection_string")))
            json_object_set_new(jp, "connection_string", json_string("postgres://app:app@127.0.0.1:9/app"));
        char *data = json_dumps(p, JSON_COMPACT);
        assert_int_equal(
            bw_test_client_publish(H.client, json_string_value(json_object_get(rec, "subject")), data, hk),
            0);
        free(data);
        json_decref(rec);
    }
    free(line);
    fclose(f);
    assert_int_equal(n, 30);
    for (int i = 0; i < n; i++) {
        json_t *r = bw_harness_result(&H, ids[i], 10000);
        if (r == NULL)
            fail_msg("no result for router assignment %s", ids[i]);
        const char *type = json_string_value(json_object_get(r, "job_type"));
        const char *status = json_string_value(json_object_get(r, "status"));
        if (strcmp(type, "echo") == 0 || strcmp(type, "sleep") == 0)
            assert_string_equal(status, "success");
        else if (strcmp(type, "jmespath") == 0) { /* items[?price > `10`].name */
            assert_string_equal(status, "success");
            json_t *want = json_loads("[\"widget\"]", 0, NULL);
            assert_true(json_equal(json_object_get(r, "output"), want));
            json_decref(want);
        } else if (strcmp(type, "javascript") == 0) { /* function main(args) { return {sum: a + b} } */
            assert_string_equal(status, "success");
            json_t *want = json_loads("{\"sum\":42}", 0, NULL);
            assert_true(json_equal(json_object_get(r, "output"), want));
            json_decref(want);
        } else if (strcmp(type, "http") == 0) {
            assert_string_equal(json_string_value(json_object_get(r, "error_code")), "EGRESS_DENIED");
        } else if (strcmp(type, "sql") == 0) {
            assert_string_equal(json_string_value(json_object_get(r, "error_code")), "DB_CONNECTION_ERROR");
        } else /* handlers of later issues: a clear error until they land */
            assert_string_equal(json_string_value(json_object_get(r, "error_code")), "UNKNOWN_JOB_TYPE");
        assert_int_equal(bw_harness_result_count(&H, ids[i]), 1);
        json_decref(r);
        free(ids[i]);
    }
}

static void test_unknown_type(void **state)
{
    assert_int_equal(bw_harness_submit(&H, "unknown-1", "teleport", "{}", 5000), 0);
    json_t *r = bw_harness_result(&H, "unknown-1", 5000);
    assert_non_null(r);
    assert_string_equal(json_string_value(json_object_get(r, "status")), "error");
    assert_string_equal(json_string_value(json_object_get(r, "error_code")), "UNKNOWN_JOB_TYPE");
    assert_non_null(strstr(json_string_value(json_object_get(r, "error_message")), "teleport"));
    json_decref(r);
}

/* Waits for a dead letter whose payload_ref.len equals len; returns it or NULL. */
static json_t *dead_letter_with_len(int len)
{
    for (int tries = 0; tries < 100; tries++) {
        int n = bw_test_client_count(H.client, BW_H_DLQ);
        for (int i = 0; i < n; i++) {
            bw_test_msg_t *m = bw_test_client_get(H.client, BW_H_DLQ, i);
            json_t *ref = json_object_get(m->json, "payload_ref");
            if (json_integer_value(json_object_get(ref, "len")) == len) {
                json_t *j = json_incref(m->json);
                bw_test_msg_destroy(m);
                return j;
            }
            bw_test_msg_destroy(m);
        }
        bw_test_sleep_ms(50);
    }
    return NULL;
}

static void test_malformed_goes_to_dead_letter(void **state)
{
    static const char *const hdrs[] = {"tenant_id", "acme", "x-probe", "malformed", NULL};
    const char *garbage = "{this is not json";
    assert_int_equal(bw_harness_publish_raw(&H, garbage, hdrs), 0);
    json_t *d = dead_letter_with_len((int)strlen(garbage));
    assert_non_null(d);
    assert_string_equal(json_string_value(json_object_get(d, "reason")), "PARSE_ERROR");
    assert_string_equal(json_string_value(json_object_get(d, "message")), garbage);
    assert_string_equal(json_string_value(json_object_get(json_object_get(d, "headers"), "x-probe")),
                        "malformed");
    assert_string_equal(json_string_value(json_object_get(json_object_get(d, "payload_ref"), "subject")),
                        BW_H_ASSIGN);
    json_decref(d);
    const char *no_id = "{\"tenant_id\":\"acme\",\"job\":{\"type\":\"echo\"},\"pad\":\"1234567\"}";
    assert_int_equal(bw_harness_publish_raw(&H, no_id, NULL), 0);
    d = dead_letter_with_len((int)strlen(no_id));
    assert_non_null(d);
    assert_string_equal(json_string_value(json_object_get(d, "reason")), "DECODE_ERROR");
    assert_string_equal(json_string_value(json_object_get(json_object_get(d, "message"), "pad")), "1234567");
    json_decref(d);
    /* the worker is still serving */
    assert_int_equal(bw_harness_submit(&H, "after-garbage", "echo", "{}", 5000), 0);
    json_t *r = bw_harness_result(&H, "after-garbage", 5000);
    assert_non_null(r);
    json_decref(r);
}

static void test_invalid_assignment_gets_error_result(void **state)
{
    const char *bad_type =
        "{\"version\":\"1\",\"assignment_id\":\"invalid-1\",\"tenant_id\":\"acme\",\"job\":{\"payload\":{}}}";
    const char *bad_payload = "{\"version\":\"1\",\"assignment_id\":\"invalid-2\",\"tenant_id\":\"acme\","
                              "\"job\":{\"type\":\"echo\",\"payload\":[1]}}";
    const char *bad_sleep = "{\"version\":\"1\",\"assignment_id\":\"invalid-3\",\"tenant_id\":\"acme\","
                            "\"job\":{\"type\":\"sleep\",\"payload\":{\"ms\":\"soon\"}}}";
    assert_int_equal(bw_harness_publish_raw(&H, bad_type, NULL), 0);
    assert_int_equal(bw_harness_publish_raw(&H, bad_payload, NULL), 0);
    assert_int_equal(bw_harness_publish_raw(&H, bad_sleep, NULL), 0);
    const char *ids[] = {"invalid-1", "invalid-2", "invalid-3"};
    const char *codes[] = {"INVALID_ASSIGNMENT", "INVALID_ASSIGNMENT", "INVALID_PAYLOAD"};
    for (int i = 0; i < 3; i++) {
        json_t *r = bw_harness_result(&H, ids[i], 5000);
        assert_non_null(r);
        assert_string_equal(json_string_value(json_object_get(r, "status")), "error");
        assert_string_equal(json_string_value(json_object_get(r, "error_code")), codes[i]);
        assert_true(strlen(json_string_value(json_object_get(r, "error_message"))) > 5);
        json_decref(r);
    }
}

static void test_result_too_large(void **state)
{
    /* an echo whose assignment just fits the server's max_payload (1 MiB) but whose result does not */
    const int max = 1024 * 1024;
    char *probe = bw_harness_assignment("too-large-1", "echo", "{\"blob\":\"\"}", 5000);
    size_t fill = (size_t)max - strlen(probe) - 100; /* headers count against max_payload too */
    free(probe);
    char *payload = malloc(fill + 32);
    int n = snprintf(payload, fill + 32, "{\"blob\":\"");
    memset(payload + n, 'x', fill);
    strcpy(payload + n + fill, "\"}");
    assert_int_equal(bw_harness_submit(&H, "too-large-1", "echo", payload, 5000), 0);
    free(payload);
    json_t *r = bw_harness_result(&H, "too-large-1", 5000);
    assert_non_null(r);
    assert_string_equal(json_string_value(json_object_get(r, "status")), "error");
    assert_string_equal(json_string_value(json_object_get(r, "error_code")), "RESULT_TOO_LARGE");
    assert_non_null(strstr(json_string_value(json_object_get(r, "error_message")), "max_payload"));
    json_decref(r);
}

static void test_acks(void **state)
{
    assert_int_equal(bw_harness_submit(&H, "ack-1", "echo", "{}", 5000), 0);
    json_t *r = bw_harness_result(&H, "ack-1", 5000);
    assert_non_null(r);
    json_decref(r);
    bw_test_msg_t *m = NULL;
    assert_int_equal(bw_test_client_find(H.client, BW_H_ACK, "ack-1", 2000, &m), 1);
    assert_string_equal(json_string_value(json_object_get(m->json, "status")), "accepted");
    assert_string_equal(json_string_value(json_object_get(m->json, "tenant_id")), "acme");
    assert_string_equal(json_string_value(json_object_get(m->json, "version")), "1");
    assert_true(json_is_integer(json_object_get(m->json, "acknowledged_at")));
    bw_test_msg_destroy(m);
    assert_int_equal(bw_test_client_find(H.client, BW_H_ACK, "unknown-1", 2000, &m), 1);
    assert_string_equal(json_string_value(json_object_get(m->json, "status")), "error");
    bw_test_msg_destroy(m);
}

static void test_heartbeats(void **state)
{
    int before = bw_test_client_count(H.client, BW_H_HEARTBEAT);
    assert_true(bw_test_client_wait_count(H.client, BW_H_HEARTBEAT, before + 2, 3000) >= before + 2);
    bw_test_msg_t *m = bw_test_client_get(H.client, BW_H_HEARTBEAT, before + 1);
    json_t *j = m->json;
    assert_string_equal(json_string_value(json_object_get(j, "version")), "1");
    assert_true(strncmp(json_string_value(json_object_get(j, "worker_id")), "worker-", 7) == 0);
    const char *st = json_string_value(json_object_get(j, "status"));
    assert_true(strcmp(st, "idle") == 0 || strcmp(st, "busy") == 0);
    assert_int_equal(json_integer_value(json_object_get(j, "max_concurrency")), 8);
    assert_true(json_is_number(json_object_get(j, "load")));
    assert_true(json_integer_value(json_object_get(json_object_get(j, "resources"), "rss_bytes")) > 0);
    assert_non_null(json_string_value(json_object_get(j, "build")));
    bw_test_msg_destroy(m);
}

static void test_envelope_output_mode(void **state)
{
    static const char *const env[] = {"CAF_MESSAGE_FORMAT=envelope", "CAF_QUEUE_GROUP=envelope-group",
                                      "CAF_ASSIGN_SUBJECT=caf.exec.assign.envelope", NULL};
    assert_true(bw_harness_add_worker(&H, env) > 0);
    char *a = bw_harness_assignment("env-out-1", "echo", "{\"k\":\"v\"}", 5000);
    static const char *const hdrs[] = {"tenant_id", "acme", NULL};
    assert_int_equal(bw_test_client_publish(H.client, "caf.exec.assign.envelope", a, hdrs), 0);
    free(a);
    bw_test_msg_t *m = NULL;
    assert_int_equal(bw_test_client_find(H.client, BW_H_RESULTS, "env-out-1", 5000, &m), 1);
    assert_string_equal(json_string_value(json_object_get(m->json, "version")), "v1");
    assert_string_equal(json_string_value(json_object_get(m->json, "kind")), "exec_result");
    json_t *d = json_object_get(m->json, "data");
    assert_string_equal(json_string_value(json_object_get(d, "status")), "success");
    assert_string_equal(json_string_value(json_object_get(d, "version")), "1");
    bw_test_msg_destroy(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_echo_bare),
        cmocka_unit_test(test_echo_envelope_input),
        cmocka_unit_test(test_router_assignments_replayed),
        cmocka_unit_test(test_unknown_type),
        cmocka_unit_test(test_malformed_goes_to_dead_letter),
        cmocka_unit_test(test_invalid_assignment_gets_error_result),
        cmocka_unit_test(test_result_too_large),
        cmocka_unit_test(test_acks),
        cmocka_unit_test(test_heartbeats),
    };
    int rc = cmocka_run_group_tests(tests, setup, teardown);
    const struct CMUnitTest env_tests[] = {cmocka_unit_test(test_envelope_output_mode)};
    rc |= cmocka_run_group_tests_name("envelope", env_tests, setup, teardown_envelope);
    nats_CloseAndWait(2000);
    return rc;
}
