/*
 * Smoke test of the test support code itself, so integration failures can be trusted to be about
 * the worker: a real nats-server starts on a free port, a client collects 100 messages with their
 * headers intact, the port is really closed after stop, and a restart on the same port (what the
 * reconnect tests do) accepts clients again. A client that lived through the restart reconnects
 * by itself. (proc.c always runs the worker binary, so the integration tests exercise it.)
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "client.h"
#include "nats_server.h"
#include "testutil.h"

#define SUBJECT "bw.smoke.v1"
#define N_MSGS 100

static int setup_server(void **state)
{
    static bw_test_nats_t server;

    memset(&server, 0, sizeof(server));
    if (bw_test_nats_start(&server) != 0)
        return -1;
    *state = &server;
    return 0;
}

static int teardown_server(void **state)
{
    bw_test_nats_stop(*state, 0);
    return 0;
}

static void publish_numbered(bw_test_client_t *c, int n)
{
    for (int i = 0; i < n; i++) {
        char data[64], seq[16];
        const char *headers[] = {"seq", seq, "tenant_id", "acme", "Nats-Msg-Id", data, NULL};
        snprintf(seq, sizeof(seq), "%d", i);
        snprintf(data, sizeof(data), "{\"assignment_id\":\"a-%d\",\"n\":%d}", i, i);
        assert_int_equal(bw_test_client_publish(c, SUBJECT, data, headers), 0);
    }
}

/* Message i arrived intact: payload parsed, every header present with its first value. */
static void check_message(bw_test_client_t *c, int i)
{
    char seq[16], data[64];
    bw_test_msg_t *m = bw_test_client_get(c, SUBJECT, i);

    snprintf(seq, sizeof(seq), "%d", i);
    snprintf(data, sizeof(data), "{\"assignment_id\":\"a-%d\",\"n\":%d}", i, i);
    assert_non_null(m);
    assert_string_equal(m->subject, SUBJECT);
    assert_string_equal(m->data, data);
    assert_int_equal(m->len, (int)strlen(data));
    assert_non_null(m->json);
    assert_int_equal(json_integer_value(json_object_get(m->json, "n")), i);
    assert_string_equal(json_string_value(json_object_get(m->headers, "seq")), seq);
    assert_string_equal(json_string_value(json_object_get(m->headers, "tenant_id")), "acme");
    assert_string_equal(json_string_value(json_object_get(m->headers, "Nats-Msg-Id")), data);
    bw_test_msg_destroy(m);
}

static void test_hundred_messages_with_headers(void **state)
{
    bw_test_nats_t *server = *state;
    bw_test_client_t *c = bw_test_client_create(server->url);
    bw_test_msg_t *found = NULL;

    assert_non_null(c);
    assert_int_equal(bw_test_client_collect(c, "bw.smoke.>"), 0);
    publish_numbered(c, N_MSGS);
    assert_int_equal(bw_test_client_wait_count(c, SUBJECT, N_MSGS, 5000), N_MSGS);
    for (int i = 0; i < N_MSGS; i++)
        check_message(c, i);
    assert_null(bw_test_client_get(c, SUBJECT, N_MSGS));
    assert_int_equal(bw_test_client_count(c, "bw.*.v1"), N_MSGS);
    assert_int_equal(bw_test_client_count(c, "other"), 0);
    assert_int_equal(bw_test_client_find(c, SUBJECT, "a-42", 1000, &found), 1);
    assert_non_null(found);
    assert_int_equal(json_integer_value(json_object_get(found->json, "n")), 42);
    bw_test_msg_destroy(found);
    bw_test_client_destroy(c);
}

/* find() looks inside {version, kind, data} envelopes, and waits for late messages. */
static void test_find_in_envelope(void **state)
{
    bw_test_nats_t *server = *state;
    bw_test_client_t *c = bw_test_client_create(server->url);
    bw_test_msg_t *found = NULL;

    assert_non_null(c);
    assert_int_equal(bw_test_client_collect(c, "bw.env"), 0);
    assert_int_equal(bw_test_client_find(c, "bw.env", "x-1", 50, &found), 0);
    assert_null(found);
    assert_int_equal(bw_test_client_publish(c, "bw.env",
                                            "{\"version\":\"v1\",\"kind\":\"exec_result\","
                                            "\"data\":{\"assignment_id\":\"x-1\"}}",
                                            NULL),
                     0);
    assert_int_equal(bw_test_client_find(c, "bw.env", "x-1", 5000, NULL), 1);
    bw_test_client_destroy(c);
}

static void test_stop_closes_port_and_restart_reuses_it(void **state)
{
    bw_test_nats_t *server = *state;
    int port = server->port;
    char log_path[300];
    struct stat st;
    bw_test_client_t *c;

    bw_test_nats_stop(server, 1);
    assert_int_equal(server->pid, 0);
    assert_int_not_equal(bw_test_tcp_probe(port), 0);
    snprintf(log_path, sizeof(log_path), "%s/nats.log", server->dir);
    assert_int_equal(stat(log_path, &st), 0); /* keep_dir kept the log */
    bw_test_nats_stop(server, 1);            /* stopping twice is harmless */

    assert_int_equal(bw_test_nats_start_on(server, port), 0);
    assert_int_equal(server->port, port);
    c = bw_test_client_create(server->url);
    assert_non_null(c);
    assert_int_equal(bw_test_client_collect(c, SUBJECT), 0);
    assert_int_equal(bw_test_client_publish(c, SUBJECT, "again", NULL), 0);
    assert_int_equal(bw_test_client_wait_count(c, SUBJECT, 1, 5000), 1);
    bw_test_client_destroy(c);
}

/* A client that outlives its server must still be destroyable without hanging. */
static void test_client_survives_server_loss(void **state)
{
    bw_test_nats_t *server = *state;
    bw_test_client_t *c = bw_test_client_create(server->url);
    int port = server->port;

    assert_non_null(c);
    assert_int_equal(bw_test_client_collect(c, SUBJECT), 0);
    bw_test_nats_stop(server, 1);
    bw_test_sleep_ms(200);
    assert_int_equal(bw_test_nats_start_on(server, port), 0);
    /* The client reconnects on its own and resubscribes. */
    for (int i = 0; i < 50 && bw_test_client_count(c, SUBJECT) == 0; i++) {
        bw_test_client_publish(c, SUBJECT, "after restart", NULL);
        bw_test_client_wait_count(c, SUBJECT, 1, 100);
    }
    assert_true(bw_test_client_count(c, SUBJECT) >= 1);
    bw_test_client_destroy(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hundred_messages_with_headers),
        cmocka_unit_test(test_find_in_envelope),
        cmocka_unit_test(test_stop_closes_port_and_restart_reuses_it),
        cmocka_unit_test(test_client_survives_server_loss),
    };
    int failed = cmocka_run_group_tests(tests, setup_server, teardown_server);

    /* Release nats.c's library-wide state so LeakSanitizer sees a clean exit. */
    nats_CloseAndWait(5000);
    return failed;
}
