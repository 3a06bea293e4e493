/*
 * Secured NATS, against real nats-server processes: TLS with server verification, mutual TLS,
 * user/password and token in the URL, an NKey with its seed file, and a credentials file (operator,
 * account and user JWTs, the server in operator mode with a memory resolver). Certificates come from the
 * `openssl` command, NKeys and JWTs from tests/support/nats_auth.c (ed25519 by OpenSSL; nats.c reads the
 * seeds and the server checks every key, JWT and signature).
 *
 * For each way: the worker connects and runs an echo job through the server. For each wrong credential
 * (a CA that did not sign the server's certificate, a client certificate from another CA, a wrong
 * password, a wrong token, an NKey and a user JWT the server does not know): the worker stays up and not
 * ready, /readyz answers 503 with the reason, the log names the reason without the secret, and it keeps
 * trying (two refused attempts of the worker's in the server's log).
 *
 * Then a worker runs under exactly the permission blocks of the operations guide (docs/operations.md,
 * read from the page), core and JetStream:
 * every subject of the block is used (an acked job, a human_approval decided over NATS, an approvals
 * list, a dead letter, heartbeats; in JetStream mode also a job longer than the ack wait) and nothing is
 * refused; the server refuses the worker's credential a cancel and an approval decision; and a worker
 * whose results leave on a subject outside the block is refused, says so in its log and on /readyz.
 */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <cmocka.h>

#include "harness.h"
#include "http_client.h"
#include "nats_auth.h"
#include "testutil.h"

#define WAIT_MS 10000
#define PASSWORD "pw-3f9c1e7a55d2"
#define WRONG_PASSWORD "pw-wrong-81be02c4"
#define TOKEN "tok-6a0d4b2e9c17f3a8"
#define WRONG_TOKEN "tok-wrong-2b7e95d0c4a1"

static bw_test_pki_t PKI;
static char KEYDIR[64];

/* One secured server and its workers; a fresh one per test. */
static bw_harness_t H;
static char conf[16384];

static int setup_group(void **state)
{
    if (bw_test_pki_create(&PKI) != 0)
        return -1;
    snprintf(KEYDIR, sizeof KEYDIR, "/tmp/bw-keys-XXXXXX");
    return mkdtemp(KEYDIR) != NULL ? 0 : -1;
}

static int teardown_group(void **state)
{
    bw_test_pki_destroy(&PKI);
    if (KEYDIR[0] != '\0')
        bw_test_rm_rf(KEYDIR);
    return 0;
}

/* Teardown of each test: the workers must exit 0 on SIGTERM (connected or not). */
static int teardown(void **state)
{
    int rc = bw_harness_stop(&H, getenv("BW_TEST_VERBOSE") != NULL);
    if (rc != 0)
        bw_test_fail_later("a worker did not stop cleanly");
    return 0;
}

static void start_server(const char *text)
{
    memset(&H, 0, sizeof H);
    snprintf(conf, sizeof conf, "%s", text);
    H.nats.conf = conf;
    assert_int_equal(bw_test_nats_start(&H.nats), 0);
}

static void key_path(char *out, size_t len, const char *name)
{
    snprintf(out, len, "%s/%s", KEYDIR, name);
}

static char *server_log(void)
{
    char path[320];
    snprintf(path, sizeof path, "%s/nats.log", H.nats.dir);
    return bw_test_read_file(path, NULL);
}

static int server_log_count(const char *needle)
{
    char path[320];
    snprintf(path, sizeof path, "%s/nats.log", H.nats.dir);
    return bw_test_file_count(path, needle);
}

/* GET /readyz of worker i: the status, and the body's first line in why. */
static int readyz(int i, char *why, size_t len)
{
    int status = 0;
    char *body = NULL;
    int port = bw_test_worker_http_port(&H.workers[i]);
    assert_true(port > 0);
    assert_int_equal(bw_test_http(port, "GET", "/readyz", NULL, &status, &body, NULL), 0);
    snprintf(why, len, "%.*s", (int)strcspn(body ? body : "", "\n"), body ? body : "");
    free(body);
    return status;
}

/* The worker (env) becomes ready, and an echo job sent by a client authenticated as `client` is answered. */
static void worker_runs_a_job(const char *const *env, const bw_test_auth_t *client, const char *id)
{
    assert_int_equal(bw_harness_add_worker(&H, env), 0);
    char why[256];
    assert_int_equal(readyz(0, why, sizeof why), 200);
    natsConnection *nc = bw_test_auth_connect(client);
    assert_non_null(nc);
    json_t *r = bw_test_auth_echo(nc, id, WAIT_MS);
    natsConnection_Destroy(nc);
    assert_non_null(r);
    assert_string_equal(json_string_value(json_object_get(r, "status")), "success");
    assert_string_equal(json_string_value(json_object_get(json_object_get(r, "output"), "probe")), id);
    json_decref(r);
}

/* The worker's refused attempts in the server's log: lines with attempt, less those with not (NULL: none;
   the harness's TCP probe of a TLS server shows as "TLS handshake error: EOF"). */
static int attempts(const char *attempt, const char * not )
{
    return server_log_count(attempt) - (not ? server_log_count(not ) : 0);
}

/* The worker (env) cannot get in: it stays up and not ready, /readyz says why (reason_any: one of the
   '|'-separated words, case-insensitive), the log says it too without any of secrets (NULL-terminated),
   and the server saw at least two refused attempts (see attempts()); the second comes after the worker
   took the first refusal's reason, so /readyz has it by then. */
static void worker_kept_out(const char *const *env, const char *attempt, const char * not,
                            const char *reason_any, const char *const *secrets)
{
    int i = bw_harness_spawn(&H, env);
    assert_int_equal(i, 0);
    int64_t deadline = bw_test_now_ms() + 3 * WAIT_MS;
    char st = 'R';
    int ppid = 0;
    while (attempts(attempt, not ) < 2 && bw_test_now_ms() < deadline &&
           bw_test_proc_stat(H.workers[0].pid, &st, &ppid) == 0 && st != 'Z' &&
           bw_test_proc_log_count(&H.workers[0], "\"worker ready\"") == 0)
        bw_test_sleep_ms(20);
    if (attempts(attempt, not ) < 2) {
        bw_test_proc_dump_log(&H.workers[0]);
        char *s = server_log();
        fprintf(stderr, "---- nats.log ----\n%s\n", s ? s : "");
        free(s);
        fail_msg("fewer than two refused attempts (\"%s\") in the server's log", attempt);
    }
    assert_int_equal(bw_test_proc_log_count(&H.workers[0], "\"worker ready\""), 0);
    assert_int_equal(bw_test_reap(H.workers[0].pid, &H.workers[0].status), 0); /* still running */

    char why[256], words[128];
    /* the log line may still be in the log writer's queue when /readyz already says why: read until it is
       out (once seen at -j3 beside two CPU burners under ASan) */
    int named = 0;
    char *log = NULL;
    for (int64_t end = bw_test_now_ms() + WAIT_MS;; bw_test_sleep_ms(20)) {
        free(log);
        assert_int_equal(readyz(0, why, sizeof why), 503); /* the reason may come after NOT_CONNECTED */
        assert_true(strncmp(why, "NOT_CONNECTED", 13) == 0);
        log = bw_test_read_file(H.workers[0].log_path, NULL);
        assert_non_null(log);
        snprintf(words, sizeof words, "%s", reason_any);
        named = 0;
        for (char *save = NULL, *w = strtok_r(words, "|", &save); w != NULL; w = strtok_r(NULL, "|", &save))
            named |= (strcasestr(why, w) != NULL) | (strcasestr(log, w) != NULL) << 1;
        if (named == 3 || bw_test_now_ms() > end)
            break;
    }
    if (named != 3) {
        bw_test_proc_dump_log(&H.workers[0]);
        fail_msg("the reason (%s) is not named by %s: /readyz says \"%s\"", reason_any,
                 (named & 1) ? "the log" : "/readyz", why);
    }
    for (size_t k = 0; secrets != NULL && secrets[k] != NULL; k++) {
        if (strstr(log, secrets[k]) != NULL || strstr(why, secrets[k]) != NULL) {
            bw_test_proc_dump_log(&H.workers[0]);
            fail_msg("the secret %s is in the worker's log or /readyz", secrets[k]);
        }
    }
    free(log);
}

/* ---- TLS ---- */

static const char *tls_conf(int verify_clients)
{
    static char text[2048];
    snprintf(
        text, sizeof text,
        "tls {\n  cert_file: \"%s\"\n  key_file: \"%s\"\n  ca_file: \"%s\"\n  verify: %s\n  timeout: 5\n}\n",
        PKI.server_cert, PKI.server_key, PKI.ca, verify_clients ? "true" : "false");
    return text;
}

static void tls_url(char *out, size_t len)
{
    snprintf(out, len, "tls://127.0.0.1:%d", H.nats.port);
}

static void test_tls_server_verified(void **state)
{
    char url[96], env_url[128], env_ca[200];
    start_server(tls_conf(0));
    tls_url(url, sizeof url);
    snprintf(env_url, sizeof env_url, "NATS_URL=%s", url);
    snprintf(env_ca, sizeof env_ca, "NATS_TLS_CA=%s", PKI.ca);
    const char *const env[] = {env_url, env_ca, NULL};
    bw_test_auth_t client = {.url = url, .ca = PKI.ca};
    worker_runs_a_job(env, &client, "tls-echo-1");
}

static void test_tls_wrong_ca_keeps_it_out(void **state)
{
    char env_url[128], env_ca[200];
    start_server(tls_conf(0));
    snprintf(env_url, sizeof env_url, "NATS_URL=tls://127.0.0.1:%d", H.nats.port);
    snprintf(env_ca, sizeof env_ca, "NATS_TLS_CA=%s", PKI.other_ca);
    const char *const env[] = {env_url, env_ca, NULL};
    worker_kept_out(env, "TLS handshake error", "TLS handshake error: EOF",
                    "unable to get local issuer certificate", NULL);
}

static void test_mutual_tls(void **state)
{
    char url[96], env_url[128], env_ca[200], env_cert[200], env_key[200];
    start_server(tls_conf(1));
    tls_url(url, sizeof url);
    snprintf(env_url, sizeof env_url, "NATS_URL=%s", url);
    snprintf(env_ca, sizeof env_ca, "NATS_TLS_CA=%s", PKI.ca);
    snprintf(env_cert, sizeof env_cert, "NATS_TLS_CERT=%s", PKI.client_cert);
    snprintf(env_key, sizeof env_key, "NATS_TLS_KEY=%s", PKI.client_key);
    const char *const env[] = {env_url, env_ca, env_cert, env_key, NULL};
    bw_test_auth_t client = {.url = url, .ca = PKI.ca, .cert = PKI.client_cert, .key = PKI.client_key};
    worker_runs_a_job(env, &client, "mtls-echo-1");
}

/* A client certificate from a CA the server does not trust: the server ends the handshake. */
static void test_mutual_tls_untrusted_client_keeps_it_out(void **state)
{
    char env_url[128], env_ca[200], env_cert[200], env_key[200];
    start_server(tls_conf(1));
    snprintf(env_url, sizeof env_url, "NATS_URL=tls://127.0.0.1:%d", H.nats.port);
    snprintf(env_ca, sizeof env_ca, "NATS_TLS_CA=%s", PKI.ca);
    snprintf(env_cert, sizeof env_cert, "NATS_TLS_CERT=%s", PKI.other_client_cert);
    snprintf(env_key, sizeof env_key, "NATS_TLS_KEY=%s", PKI.other_client_key);
    const char *const env[] = {env_url, env_ca, env_cert, env_key, NULL};
    worker_kept_out(env, "TLS handshake error", "TLS handshake error: EOF", "NATS_TLS_CERT", NULL);
}

/* ---- user/password and token in the URL ---- */

static const char userpass_conf[] = "authorization {\n  users = [\n"
                                    "    {user: worker, password: \"" PASSWORD "\"}\n"
                                    "    {user: client, password: \"" PASSWORD "\"}\n  ]\n}\n";

static void test_user_password(void **state)
{
    char env_url[160], url[128];
    start_server(userpass_conf);
    snprintf(env_url, sizeof env_url, "NATS_URL=nats://worker:" PASSWORD "@127.0.0.1:%d", H.nats.port);
    snprintf(url, sizeof url, "nats://client:" PASSWORD "@127.0.0.1:%d", H.nats.port);
    const char *const env[] = {env_url, NULL};
    worker_runs_a_job(env, &(bw_test_auth_t){.url = url}, "userpass-echo-1");
    /* the password never reaches the log, even on success */
    assert_int_equal(bw_test_proc_log_count(&H.workers[0], PASSWORD), 0);
}

static void test_wrong_password_keeps_it_out(void **state)
{
    char env_url[160];
    start_server(userpass_conf);
    snprintf(env_url, sizeof env_url, "NATS_URL=nats://worker:" WRONG_PASSWORD "@127.0.0.1:%d", H.nats.port);
    const char *const env[] = {env_url, NULL};
    const char *const secrets[] = {WRONG_PASSWORD, NULL};
    worker_kept_out(env, "authentication error", NULL, "Authorization Violation", secrets);
}

static const char token_conf[] = "authorization {\n  token: \"" TOKEN "\"\n}\n";

static void test_token(void **state)
{
    char env_url[160], url[128];
    start_server(token_conf);
    snprintf(url, sizeof url, "nats://" TOKEN "@127.0.0.1:%d", H.nats.port);
    snprintf(env_url, sizeof env_url, "NATS_URL=%s", url);
    const char *const env[] = {env_url, NULL};
    worker_runs_a_job(env, &(bw_test_auth_t){.url = url}, "token-echo-1");
    assert_int_equal(bw_test_proc_log_count(&H.workers[0], TOKEN), 0);
}

static void test_wrong_token_keeps_it_out(void **state)
{
    char env_url[160];
    start_server(token_conf);
    snprintf(env_url, sizeof env_url, "NATS_URL=nats://" WRONG_TOKEN "@127.0.0.1:%d", H.nats.port);
    const char *const env[] = {env_url, NULL};
    const char *const secrets[] = {WRONG_TOKEN, NULL};
    worker_kept_out(env, "authentication error", NULL, "Authorization Violation", secrets);
}

/* ---- NKey ---- */

/* A server that knows the worker's and the client's NKeys (and nothing else). */
static void start_nkey_server(const bw_test_nkey_t *worker, const bw_test_nkey_t *client)
{
    char text[512];
    snprintf(text, sizeof text, "authorization {\n  users = [\n    {nkey: %s}\n    {nkey: %s}\n  ]\n}\n",
             worker->pub, client->pub);
    start_server(text);
}

static void test_nkey(void **state)
{
    bw_test_nkey_t worker, client;
    char seed[160], cseed[160], env_url[128], env_pub[96], env_seed[200], url[96];
    assert_int_equal(bw_test_nkey_create(&worker, BW_NKEY_USER), 0);
    assert_int_equal(bw_test_nkey_create(&client, BW_NKEY_USER), 0);
    key_path(seed, sizeof seed, "worker.nk");
    key_path(cseed, sizeof cseed, "client.nk");
    assert_int_equal(bw_test_nkey_write_seed(&worker, seed), 0);
    assert_int_equal(bw_test_nkey_write_seed(&client, cseed), 0);
    start_nkey_server(&worker, &client);
    snprintf(url, sizeof url, "nats://127.0.0.1:%d", H.nats.port);
    snprintf(env_url, sizeof env_url, "NATS_URL=%s", url);
    snprintf(env_pub, sizeof env_pub, "NATS_NKEY=%s", worker.pub);
    snprintf(env_seed, sizeof env_seed, "NATS_NKEY_SEED=%s", seed);
    const char *const env[] = {env_url, env_pub, env_seed, NULL};
    worker_runs_a_job(env, &(bw_test_auth_t){.url = url, .nkey = client.pub, .nkey_seed = cseed},
                      "nkey-echo-1");
    assert_int_equal(bw_test_proc_log_count(&H.workers[0], worker.seed), 0);
}

static void test_unknown_nkey_keeps_it_out(void **state)
{
    bw_test_nkey_t known, client, stranger;
    char seed[160], env_url[128], env_pub[96], env_seed[200];
    assert_int_equal(bw_test_nkey_create(&known, BW_NKEY_USER), 0);
    assert_int_equal(bw_test_nkey_create(&client, BW_NKEY_USER), 0);
    assert_int_equal(bw_test_nkey_create(&stranger, BW_NKEY_USER), 0);
    key_path(seed, sizeof seed, "stranger.nk");
    assert_int_equal(bw_test_nkey_write_seed(&stranger, seed), 0);
    start_nkey_server(&known, &client);
    snprintf(env_url, sizeof env_url, "NATS_URL=nats://127.0.0.1:%d", H.nats.port);
    snprintf(env_pub, sizeof env_pub, "NATS_NKEY=%s", stranger.pub);
    snprintf(env_seed, sizeof env_seed, "NATS_NKEY_SEED=%s", seed);
    const char *const env[] = {env_url, env_pub, env_seed, NULL};
    const char *const secrets[] = {stranger.seed, NULL};
    worker_kept_out(env, "authentication error", NULL, "Authorization Violation", secrets);
}

/* ---- credentials file (operator mode) ---- */

/* An operator, an account it signed, and the server in operator mode with the account preloaded. Any
   user JWT that account signs gets in. */
typedef struct trust {
    bw_test_nkey_t op, acc;
} trust_t;

static void start_operator_server(trust_t *t)
{
    char text[8192];
    assert_int_equal(bw_test_nkey_create(&t->op, BW_NKEY_OPERATOR), 0);
    assert_int_equal(bw_test_nkey_create(&t->acc, BW_NKEY_ACCOUNT), 0);
    char *op_jwt = bw_test_jwt_operator(&t->op, "bw-test-operator");
    char *acc_jwt = bw_test_jwt_account(&t->op, &t->acc, "bw-workers", 0);
    assert_non_null(op_jwt);
    assert_non_null(acc_jwt);
    snprintf(text, sizeof text, "operator: \"%s\"\nresolver: MEMORY\nresolver_preload: {\n  %s: \"%s\"\n}\n",
             op_jwt, t->acc.pub, acc_jwt);
    free(op_jwt);
    free(acc_jwt);
    start_server(text);
}

/* A user of account acc in a credentials file at path; its key into user. */
static void make_creds(const bw_test_nkey_t *acc, bw_test_nkey_t *user, const char *name, const char *path)
{
    assert_int_equal(bw_test_nkey_create(user, BW_NKEY_USER), 0);
    char *jwt = bw_test_jwt_user(acc, user, name);
    assert_non_null(jwt);
    assert_int_equal(bw_test_creds_write(path, jwt, user), 0);
    free(jwt);
}

static void test_credentials_file(void **state)
{
    trust_t t;
    bw_test_nkey_t worker, client;
    char wcreds[160], ccreds[160], env_url[128], env_creds[200], url[96];
    start_operator_server(&t);
    key_path(wcreds, sizeof wcreds, "worker.creds");
    key_path(ccreds, sizeof ccreds, "client.creds");
    make_creds(&t.acc, &worker, "worker", wcreds);
    make_creds(&t.acc, &client, "client", ccreds);
    snprintf(url, sizeof url, "nats://127.0.0.1:%d", H.nats.port);
    snprintf(env_url, sizeof env_url, "NATS_URL=%s", url);
    snprintf(env_creds, sizeof env_creds, "NATS_CREDS=%s", wcreds);
    const char *const env[] = {env_url, env_creds, NULL};
    worker_runs_a_job(env, &(bw_test_auth_t){.url = url, .creds = ccreds}, "creds-echo-1");
    assert_int_equal(bw_test_proc_log_count(&H.workers[0], worker.seed), 0);
}

/* A user signed by an account the server has never heard of. */
static void test_unknown_user_keeps_it_out(void **state)
{
    trust_t t;
    bw_test_nkey_t rogue_acc, user;
    char creds[160], env_url[128], env_creds[200];
    start_operator_server(&t);
    assert_int_equal(bw_test_nkey_create(&rogue_acc, BW_NKEY_ACCOUNT), 0);
    key_path(creds, sizeof creds, "rogue.creds");
    make_creds(&rogue_acc, &user, "rogue", creds);
    snprintf(env_url, sizeof env_url, "NATS_URL=nats://127.0.0.1:%d", H.nats.port);
    snprintf(env_creds, sizeof env_creds, "NATS_CREDS=%s", creds);
    const char *const env[] = {env_url, env_creds, NULL};
    const char *const secrets[] = {user.seed, NULL};
    worker_kept_out(env, "authentication error", NULL, "Authorization Violation", secrets);
}

/* ---- the documented permission block ---- */

/* The fenced block after the marker in the operations guide (docs/operations.md). malloc'd; fails the
   test when absent. */
static char *documented_block(const char *marker)
{
    static const char *const pages[] = {BW_TEST_SUPPORT_DIR "/../../docs/operations.md"};
    for (size_t i = 0; i < sizeof pages / sizeof pages[0]; i++) {
        char *text = bw_test_read_file(pages[i], NULL);
        char *m = text ? strstr(text, marker) : NULL;
        char *open = m ? strstr(m, "```\n") : NULL;
        char *close = open ? strstr(open + 4, "```") : NULL;
        if (close != NULL) {
            char *block = strndup(open + 4, (size_t)(close - open - 4));
            free(text);
            return block;
        }
        free(text);
    }
    fail_msg("no block marked %s in docs/operations.md", marker);
    return NULL;
}

/* The documented block (marker, its permissions variable var) as the server's configuration, plus a
   client user that may do anything (the scheduler, the approvers, the operator of a real deployment).
   $WORKER_PASSWORD comes from the environment, as an operator's would. The block's users list must be
   exactly the worker's line (anything else in it would go untested); the client is added to it. */
static void start_permission_server(const char *marker, const char *var, int jetstream)
{
    char *block = documented_block(marker);
    char *auth = strstr(block, "authorization {");
    assert_non_null(auth);
    char expect[512], text[12288];
    snprintf(expect, sizeof expect,
             "authorization {\n  users = [\n    {user: worker, password: $WORKER_PASSWORD, permissions: "
             "$%s}\n  ]\n}\n",
             var);
    assert_string_equal(auth, expect);
    *auth = '\0';
    snprintf(text, sizeof text,
             "%sauthorization {\n  users = [\n"
             "    {user: worker, password: $WORKER_PASSWORD, permissions: $%s}\n"
             "    {user: client, password: \"" PASSWORD "\"}\n  ]\n}\n",
             block, var);
    free(block);
    setenv("WORKER_PASSWORD", PASSWORD, 1);
    memset(&H, 0, sizeof H);
    H.nats.jetstream = jetstream;
    snprintf(conf, sizeof conf, "%s", text);
    H.nats.conf = conf;
    assert_int_equal(bw_test_nats_start(&H.nats), 0);
}

static natsMsg *next_msg(natsSubscription *sub, const char *what)
{
    natsMsg *m = NULL;
    if (natsSubscription_NextMsg(&m, sub, WAIT_MS) != NATS_OK)
        fail_msg("no %s within %d ms", what, WAIT_MS);
    return m;
}

/* Through the worker, every subject of the block in use: an assignment's ack (CAF_ACK_ENABLED), the
   ApprovalRequest of a human_approval job, a decision request on the subject it names (answered through
   allow_responses), the job's result, and a dead letter for an assignment that is not JSON. */
static void uses_every_subject(const char *client_url, const char *id)
{
    natsConnection *nc = bw_test_auth_connect(&(bw_test_auth_t){.url = client_url});
    natsSubscription *req = NULL, *res = NULL, *ack = NULL, *dlq = NULL;
    assert_non_null(nc);
    assert_int_equal(natsConnection_SubscribeSync(&req, nc, "caf.human.request.v1"), NATS_OK);
    assert_int_equal(natsConnection_SubscribeSync(&res, nc, "caf.exec.result.v1"), NATS_OK);
    assert_int_equal(natsConnection_SubscribeSync(&ack, nc, "caf.exec.assign.v1.ack"), NATS_OK);
    assert_int_equal(natsConnection_SubscribeSync(&dlq, nc, "caf.deadletter.v1"), NATS_OK);
    assert_int_equal(natsConnection_Flush(nc), NATS_OK);
    assert_int_equal(bw_test_auth_submit(nc, id, "human_approval", "{\"prompt\":\"Deploy?\"}"), 0);

    natsMsg *m = next_msg(req, "ApprovalRequest");
    json_t *ar = json_loadb(natsMsg_GetData(m), (size_t)natsMsg_GetDataLength(m), 0, NULL);
    natsMsg_Destroy(m);
    const char *subject = json_string_value(json_object_get(ar, "decision_subject"));
    assert_non_null(subject);
    char body[300];
    snprintf(
        body, sizeof body,
        "{\"assignment_id\":\"%s\",\"tenant_id\":\"acme\",\"decision\":\"Approve\",\"approver\":\"alice\"}",
        id);
    natsMsg *reply = NULL;
    assert_int_equal(natsConnection_RequestString(&reply, nc, subject, body, WAIT_MS), NATS_OK);
    json_decref(ar);
    json_t *verdict = json_loadb(natsMsg_GetData(reply), (size_t)natsMsg_GetDataLength(reply), 0, NULL);
    natsMsg_Destroy(reply);
    assert_true(json_is_true(json_object_get(verdict, "accepted")));
    json_decref(verdict);
    json_t *r = bw_test_auth_wait_result(res, id, WAIT_MS);
    assert_non_null(r);
    assert_string_equal(json_string_value(json_object_get(r, "status")), "success");
    assert_string_equal(json_string_value(json_object_get(json_object_get(r, "output"), "decision")),
                        "Approve");
    json_decref(r);
    natsMsg_Destroy(next_msg(ack, "ack"));

    assert_int_equal(natsConnection_PublishString(nc, "caf.exec.assign.v1", "not json"), NATS_OK);
    assert_int_equal(natsConnection_Flush(nc), NATS_OK);
    natsMsg_Destroy(next_msg(dlq, "dead letter"));
    natsSubscription_Destroy(req);
    natsSubscription_Destroy(res);
    natsSubscription_Destroy(ack);
    natsSubscription_Destroy(dlq);
    natsConnection_Destroy(nc);
}

/* Worker i is ready, an approvals list request through it is answered, and nothing it did was refused. */
static void works_within_the_block(int i, const char *client_url)
{
    char why[256];
    natsConnection *nc = bw_test_auth_connect(&(bw_test_auth_t){.url = client_url});
    assert_non_null(nc);
    natsMsg *reply = NULL;
    assert_int_equal(natsConnection_RequestString(&reply, nc, "caf.human.list.v1", "{}", WAIT_MS), NATS_OK);
    json_t *list = json_loadb(natsMsg_GetData(reply), (size_t)natsMsg_GetDataLength(reply), 0, NULL);
    assert_non_null(list);
    json_decref(list);
    natsMsg_Destroy(reply);
    natsConnection_Destroy(nc);
    assert_int_equal(readyz(i, why, sizeof why), 200);
    if (bw_test_proc_log_count(&H.workers[i], "permission violation") != 0 ||
        server_log_count("Violation") != 0) {
        bw_test_proc_dump_log(&H.workers[i]);
        char *text = server_log();
        fprintf(stderr, "---- nats.log ----\n%s\n", text ? text : "");
        free(text);
        fail_msg("the worker did something its documented permissions do not allow");
    }
}

static void test_documented_permissions_block(void **state)
{
    char worker_url[160], client_url[128], why[256];
    start_permission_server("<!-- worker-permissions:core", "WORKER_PERMISSIONS", 0);
    snprintf(worker_url, sizeof worker_url, "nats://worker:" PASSWORD "@127.0.0.1:%d", H.nats.port);
    snprintf(client_url, sizeof client_url, "nats://client:" PASSWORD "@127.0.0.1:%d", H.nats.port);
    char env_url[200];
    snprintf(env_url, sizeof env_url, "NATS_URL=%s", worker_url);
    const char *const env[] = {env_url, "CAF_ACK_ENABLED=true", NULL};
    worker_runs_a_job(env, &(bw_test_auth_t){.url = client_url}, "perm-echo-1");
    uses_every_subject(client_url, "perm-approval-1");
    /* heartbeats, acks, results, the approval's request and reply, a dead letter, a list reply: none refused
     */
    works_within_the_block(0, client_url);

    /* the worker's credential may not cancel jobs or decide approvals: the operator's to grant */
    natsConnection *nc = bw_test_auth_connect(&(bw_test_auth_t){.url = worker_url});
    assert_non_null(nc);
    assert_int_equal(bw_test_auth_publish_refused(nc, "caf.exec.cancel.v1", "{\"assignment_id\":\"x\"}"), 1);
    natsConnection_Destroy(nc);
    nc = bw_test_auth_connect(&(bw_test_auth_t){.url = worker_url});
    assert_non_null(nc);
    assert_int_equal(bw_test_auth_publish_refused(nc, "caf.human.decision.v1", "{}"), 1);
    natsConnection_Destroy(nc);
    nc = bw_test_auth_connect(&(bw_test_auth_t){.url = worker_url});
    assert_non_null(nc);
    assert_int_equal(bw_test_auth_publish_refused(nc, "caf.exec.result.v1", "{}"),
                     0); /* the check can pass */
    natsConnection_Destroy(nc);

    /* a worker whose results leave outside the block (its own queue group, so it gets the next job too) */
    const char *const env2[] = {env_url, "CAF_RESULT_SUBJECT=caf.exec.result.elsewhere",
                                "CAF_QUEUE_GROUP=other", "WORKER_ID=elsewhere", NULL};
    assert_int_equal(bw_harness_add_worker(&H, env2), 1);
    nc = bw_test_auth_connect(&(bw_test_auth_t){.url = client_url});
    assert_non_null(nc);
    json_t *r = bw_test_auth_echo(nc, "perm-echo-2", WAIT_MS); /* worker 0 still answers */
    natsConnection_Destroy(nc);
    assert_non_null(r);
    json_decref(r);
    assert_int_equal(bw_test_proc_wait_log(&H.workers[1], "nats permission violation", WAIT_MS), 0);
    assert_true(bw_test_proc_log_count(&H.workers[1], "caf.exec.result.elsewhere") > 0);
    assert_int_equal(readyz(1, why, sizeof why), 503);
    assert_string_equal(why, "PUBLISH_PERMISSION_DENIED");
    assert_true(server_log_count("Publish Violation") > 0);
    assert_true(server_log_count("\"caf.exec.result.elsewhere\"") > 0);
    assert_int_equal(bw_test_proc_log_count(&H.workers[0], "permission violation"), 0);
    assert_int_equal(bw_test_proc_log_count(&H.workers[0], PASSWORD), 0);
}

/* JetStream mode under the documented JetStream block: a first start as the client (CAF_JS_CREATE=true)
   makes the stream, the consumer and the buckets, as an operator would; then a worker with the worker's
   credential takes a job from the stream and answers it, and nothing it does is refused. */
static void test_documented_permissions_block_jetstream(void **state)
{
    char worker_url[160], client_url[128], env_url[200], env_admin[200];
    start_permission_server("<!-- worker-permissions:jetstream", "WORKER_JS_PERMISSIONS", 1);
    snprintf(worker_url, sizeof worker_url, "nats://worker:" PASSWORD "@127.0.0.1:%d", H.nats.port);
    snprintf(client_url, sizeof client_url, "nats://client:" PASSWORD "@127.0.0.1:%d", H.nats.port);
    snprintf(env_admin, sizeof env_admin, "NATS_URL=%s", client_url);
    const char *const admin[] = {env_admin, "CAF_CONSUMER=jetstream", "CAF_JS_CREATE=true",
                                 "CAF_JS_ACK_WAIT_MS=1000", NULL};
    assert_int_equal(bw_harness_add_worker(&H, admin), 0);
    int code = -1;
    assert_int_equal(bw_test_proc_signal(&H.workers[0], SIGTERM), 0);
    assert_int_equal(bw_test_proc_wait(&H.workers[0], 20000, &code), 0);
    assert_int_equal(code, 0);
    H.exit_checked[0] = 1;

    snprintf(env_url, sizeof env_url, "NATS_URL=%s", worker_url);
    const char *const env[] = {env_url, "CAF_CONSUMER=jetstream", "CAF_ACK_ENABLED=true",
                               "CAF_JS_ACK_WAIT_MS=1000", NULL};
    if (bw_harness_add_worker(&H, env) != 1) {
        char *text = server_log();
        fprintf(stderr, "---- nats.log ----\n%s\n", text ? text : "");
        free(text);
        fail_msg("the worker did not get ready under the documented JetStream permissions");
    }
    natsConnection *nc = bw_test_auth_connect(&(bw_test_auth_t){.url = client_url});
    assert_non_null(nc);
    json_t *r = bw_test_auth_echo(nc, "perm-js-echo-1", WAIT_MS);
    natsConnection_Destroy(nc);
    assert_non_null(r);
    assert_string_equal(json_string_value(json_object_get(r, "status")), "success");
    json_decref(r);
    uses_every_subject(client_url, "perm-js-approval-1");
    /* a job longer than the ack wait: in-progress acks on the delivery's reply subject, more than the one
       response allow_responses grants */
    nc = bw_test_auth_connect(&(bw_test_auth_t){.url = client_url});
    natsSubscription *res = NULL;
    assert_int_equal(natsConnection_SubscribeSync(&res, nc, "caf.exec.result.v1"), NATS_OK);
    assert_int_equal(natsConnection_Flush(nc), NATS_OK);
    assert_int_equal(bw_test_auth_submit(nc, "perm-js-sleep-1", "sleep", "{\"ms\":1600}"), 0);
    r = bw_test_auth_wait_result(res, "perm-js-sleep-1", WAIT_MS);
    assert_non_null(r);
    assert_string_equal(json_string_value(json_object_get(r, "status")), "success");
    json_decref(r);
    natsSubscription_Destroy(res);
    natsConnection_Destroy(nc);
    works_within_the_block(1, client_url);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_tls_server_verified, teardown),
        cmocka_unit_test_teardown(test_tls_wrong_ca_keeps_it_out, teardown),
        cmocka_unit_test_teardown(test_mutual_tls, teardown),
        cmocka_unit_test_teardown(test_mutual_tls_untrusted_client_keeps_it_out, teardown),
        cmocka_unit_test_teardown(test_user_password, teardown),
        cmocka_unit_test_teardown(test_wrong_password_keeps_it_out, teardown),
        cmocka_unit_test_teardown(test_token, teardown),
        cmocka_unit_test_teardown(test_wrong_token_keeps_it_out, teardown),
        cmocka_unit_test_teardown(test_nkey, teardown),
        cmocka_unit_test_teardown(test_unknown_nkey_keeps_it_out, teardown),
        cmocka_unit_test_teardown(test_credentials_file, teardown),
        cmocka_unit_test_teardown(test_unknown_user_keeps_it_out, teardown),
        cmocka_unit_test_teardown(test_documented_permissions_block, teardown),
        cmocka_unit_test_teardown(test_documented_permissions_block_jetstream, teardown),
    };
    const char *names[sizeof tests / sizeof tests[0]];
    for (size_t i = 0; i < sizeof tests / sizeof tests[0]; i++)
        names[i] = tests[i].name;
    bw_test_select(argc, argv, names, sizeof tests / sizeof tests[0]);
    int rc = cmocka_run_group_tests_name("secured nats", tests, setup_group, teardown_group);
    nats_CloseAndWait(2000);
    return bw_test_exit_status(rc);
}
