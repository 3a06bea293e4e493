/*
 * Integration: the binary's sub-commands run as a user would run them. `exec` (one job from stdin,
 * no NATS), `check-config` (defaults, redaction, a clear exit 2 for a bad variable), --version,
 * --help of every command (without reading the configuration), usage errors, and the documentation
 * agreeing with the binary (the man page and README name every command and every exit code; groff
 * renders the man page without a warning). Then, against a real nats-server and real workers:
 * `submit` (one job, the --count load check, --file), `watch` (--once as a table and as JSON, following
 * heartbeats, results and dead letters piped and on a pseudo-terminal, text from NATS escaped), and the
 * exit codes of the table: 1 a failed outcome, 2 usage, 3 NATS unreachable, 4 no answer in time.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pty.h>
#include <signal.h>
#include <sys/wait.h>
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
#include "nats_server.h"
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
    assert_non_null(strstr(r.out, "watch"));
    assert_non_null(strstr(r.out, "exit codes:"));
    bw_test_cli_dispose(&r);

    bw_test_cli_run(&r, bogus, NULL, NULL);
    assert_int_not_equal(r.rc, 0);
    assert_non_null(strstr(r.err, "frobnicate"));
    bw_test_cli_dispose(&r);
}

/* ---- --help of every command, usage errors ------------------------------------------------ */

static const char *const commands[] = {"run",       "exec",         "submit",     "watch", "dlq",
                                       "approvals", "check-config", "js-sandbox", NULL};

/* The exit-code lines of the top-level --help ("  N  text"), as the binary prints them: the one table
   the docs must repeat. Returns how many (codes[] filled). */
static int exit_codes_of_help(int *codes, int max)
{
    static const char *const help[] = {"--help", NULL};
    bw_test_cli_t r;
    bw_test_cli_run(&r, help, NULL, NULL);
    assert_int_equal(r.rc, 0);
    const char *p = strstr(r.out, "exit codes:\n");
    assert_non_null(p);
    int n = 0;
    for (p = strchr(p, '\n') + 1; n < max && strncmp(p, "  ", 2) == 0; p = strchr(p, '\n') + 1)
        codes[n++] = atoi(p + 2);
    bw_test_cli_dispose(&r);
    return n;
}

static void test_help_every_command(void **state)
{
    /* An invalid variable too: --help must not need a usable configuration. */
    static const char *const env[] = {"WORKER_MAX_CONCURRENCY=0", NULL};
    int codes[16], n = exit_codes_of_help(codes, 16);
    assert_int_equal(n, 5);
    for (int i = 0; i < n; i++)
        assert_int_equal(codes[i], i);
    for (int i = 0; commands[i] != NULL; i++) {
        const char *const a1[] = {commands[i], "--help", NULL}, *const a2[] = {"help", commands[i], NULL},
                          *const a3[] = {commands[i], "list", "-h", NULL};
        const char *const *const forms[] = {a1, a2, a3};
        for (int f = 0; f < 3; f++) {
            bw_test_cli_t r;
            char want[64];
            bw_test_cli_run(&r, forms[f], env, NULL);
            snprintf(want, sizeof want, "usage: beamline-worker %s",
                     strcmp(commands[i], "run") ? commands[i] : "[run]");
            if (r.rc != 0 || strncmp(r.out, want, strlen(want)) != 0)
                bw_test_cli_dump(&r);
            assert_int_equal(r.rc, 0);
            assert_true(strncmp(r.out, want, strlen(want)) == 0);
            assert_string_equal(r.err, "");
            if (strcmp(commands[i], "js-sandbox") != 0) /* internal: no exit codes to speak of */
                assert_non_null(strstr(r.out, "exit codes:\n  0  success\n"));
            bw_test_cli_dispose(&r);
        }
    }
    static const char *const bogus[] = {"frobnicate", "--help", NULL};
    bw_test_cli_t r;
    bw_test_cli_run(&r, bogus, NULL, NULL);
    assert_int_equal(r.rc, 2);
    assert_non_null(strstr(r.err, "frobnicate"));
    bw_test_cli_dispose(&r);
}

/* A usage error: exit 2, the command's usage (with the exit codes) on stderr, nothing on stdout; checked
   before anything is sent (NATS_URL points at a closed port, which would be exit 3). */
static void test_usage_errors(void **state)
{
    static const char
        *const c0[] = {"submit", "--count", "0", "echo", NULL},
               *const c1[] = {"submit", "--concurrency", "x", "--count", "2", "echo", NULL},
               *const c2[] = {"submit", "echo", "{}", "extra", NULL},
               *const c3[] = {"submit", "--file", "/dev/null", "echo", NULL},
               *const c4[] = {"submit", "--bogus", "echo", NULL}, *const c5[] = {"submit", "-", "{}", NULL},
               *const c6[] = {"watch", "--bogus", NULL}, *const c7[] = {"watch", "--interval-ms", "0", NULL},
               *const c8[] = {"watch", "extra", NULL}, *const c9[] = {"dlq", "frobnicate", NULL},
               *const c10[] = {"dlq", NULL}, *const c11[] = {"approvals", "list", "--approver", "a", NULL};
    static const char *const *const cases[] = {c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11};
    char url[64];
    int port = bw_test_closed_port();
    assert_true(port > 0);
    snprintf(url, sizeof url, "NATS_URL=nats://127.0.0.1:%d", port);
    const char *const env[] = {url, NULL};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        bw_test_cli_t r;
        char want[64];
        bw_test_cli_run(&r, cases[i], env, NULL);
        snprintf(want, sizeof want, "usage: beamline-worker %s", cases[i][0]);
        if (r.rc != 2 || strstr(r.err, want) == NULL)
            bw_test_cli_dump(&r);
        assert_int_equal(r.rc, 2);
        assert_string_equal(r.out, "");
        assert_non_null(strstr(r.err, want));
        assert_non_null(strstr(r.err, "exit codes:"));
        bw_test_cli_dispose(&r);
    }
}

/* ---- the documentation agrees with the binary ----------------------------------------------- */

/* The source tree, from this file's path (CMake compiles it by its absolute path). */
static char *source_path(const char *rel)
{
    static const char self[] = "tests/integration/test_cli.c";
    size_t n = strlen(__FILE__);
    assert_true(n > strlen(self) && strcmp(__FILE__ + n - strlen(self), self) == 0);
    char *p = malloc(n + strlen(rel) + 1);
    memcpy(p, __FILE__, n - strlen(self));
    strcpy(p + n - strlen(self), rel);
    return p;
}

static char *read_source(const char *rel)
{
    char *path = source_path(rel);
    char *text = bw_test_read_file(path, NULL);
    if (text == NULL)
        fail_msg("cannot read %s", path);
    free(path);
    return text;
}

static void test_docs_agree(void **state)
{
    char *man = read_source("docs/beamline-worker.1.in"), *readme = read_source("README.md");
    int codes[16], n = exit_codes_of_help(codes, 16);
    /* Every command has an entry of its own in COMMANDS (".B name" or ".RB [ run ]"). */
    const char *cmds = strstr(man, "\n.SH COMMANDS\n"), *exits = strstr(man, "\n.SH EXIT STATUS\n");
    assert_non_null(cmds);
    assert_non_null(exits);
    for (int i = 0; commands[i] != NULL; i++) {
        char entry[128], roff_name[64];
        size_t k = 0;
        for (const char *c = commands[i]; *c && k + 3 < sizeof roff_name; c++) { /* roff writes - as \- */
            if (*c == '-')
                roff_name[k++] = '\\';
            roff_name[k++] = *c;
        }
        roff_name[k] = '\0';
        snprintf(entry, sizeof entry, ".TP\n.B %s", roff_name);
        const char *at = strstr(cmds, entry);
        if (strcmp(commands[i], "run") == 0)
            at = strstr(cmds, ".TP\n.RB [ run ]");
        if (at == NULL || at > exits)
            fail_msg("the man page has no COMMANDS entry for %s", commands[i]);
        snprintf(entry, sizeof entry, "beamline-worker %s", commands[i]);
        if (strcmp(commands[i], "run") != 0 && strcmp(commands[i], "js-sandbox") != 0 &&
            strstr(readme, entry) == NULL)
            fail_msg("README.md does not show %s", entry);
    }
    /* Every code of the binary's table, in the man page's EXIT STATUS and the README's table. */
    const char *table = strstr(readme, "### Exit codes");
    assert_non_null(table);
    for (int i = 0; i < n; i++) {
        char entry[32];
        snprintf(entry, sizeof entry, ".TP\n.B %d\n", codes[i]);
        if (strstr(exits, entry) == NULL)
            fail_msg("the man page's EXIT STATUS lacks %d", codes[i]);
        snprintf(entry, sizeof entry, "\n| %d |", codes[i]);
        if (strstr(table, entry) == NULL)
            fail_msg("README.md's exit code table lacks %d", codes[i]);
    }
    free(man);
    free(readme);
}

/* groff renders the man page (the build's own substitutions applied by docs/manpage.cmake) without a
   single warning: a roff mistake shows up here, not in a user's terminal or in lintian. */
static void test_man_page_renders(void **state)
{
    char *in = source_path("docs/beamline-worker.1.in"), *script = source_path("docs/manpage.cmake");
    char dir[] = "/tmp/bw-man-XXXXXX", cmd[2048];
    assert_non_null(mkdtemp(dir));
    snprintf(
        cmd, sizeof cmd,
        "cmake -DIN=%s -DOUT=%s/beamline-worker.1 -DBW_VERSION=9.9.9 -DBW_DOCDIR=/usr/share/doc/bw -P %s "
        "&& LC_ALL=C.UTF-8 groff -man -ww -z -Tutf8 %s/beamline-worker.1 > %s/groff.err 2>&1 "
        "&& gzip -t %s/beamline-worker.1.gz",
        in, dir, script, dir, dir, dir);
    int rc = system(cmd);
    snprintf(cmd, sizeof cmd, "%s/groff.err", dir);
    char *warnings = bw_test_read_file(cmd, NULL);
    snprintf(cmd, sizeof cmd, "%s/beamline-worker.1", dir);
    char *page = bw_test_read_file(cmd, NULL);
    if (rc != 0 || warnings == NULL || *warnings != '\0')
        fail_msg("man page build or groff failed (%d): %s", rc, warnings ? warnings : "(no output)");
    assert_non_null(strstr(page, "\"beamline-worker 9.9.9\""));
    assert_null(strstr(page, "@BW_"));
    free(warnings);
    free(page);
    free(in);
    free(script);
    bw_test_rm_rf(dir);
}

/* ---- submit (real nats-server + worker) --------------------------------------------------- */

static bw_harness_t H;
static json_t *worker_ids(void);
static char url_env[128];

static int submit_setup(void **state)
{
    /* Two workers, so that watch has a table to show; the client also collects the assignments. */
    if (bw_harness_start(&H, NULL) != 0 || bw_harness_add_worker(&H, NULL) < 0 ||
        bw_test_client_collect(H.client, BW_H_ASSIGN) != 0)
        return -1;
    snprintf(url_env, sizeof url_env, "NATS_URL=%s", H.nats.url);
    /* Both workers heard from (heartbeats every 200 ms): watch --once must then see both. */
    for (int64_t end = bw_test_now_ms() + 10000; bw_test_now_ms() < end;) {
        json_t *ids = worker_ids();
        size_t n = json_object_size(ids);
        json_decref(ids);
        if (n == 2)
            return 0;
        bw_test_client_wait_count(H.client, BW_H_HEARTBEAT,
                                  bw_test_client_count(H.client, BW_H_HEARTBEAT) + 1, 500);
    }
    return -1;
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

/* ---- submit --count / --file ------------------------------------------------------------------ */

static json_t *summary_of(const bw_test_cli_t *r)
{
    json_t *j = parse_stdout(r);
    json_t *lat = json_object_get(j, "latency_ms");
    double p50 = json_number_value(json_object_get(lat, "p50")),
           p90 = json_number_value(json_object_get(lat, "p90")),
           p99 = json_number_value(json_object_get(lat, "p99")),
           max = json_number_value(json_object_get(lat, "max")),
           min = json_number_value(json_object_get(lat, "min"));
    /* Percentiles of real measurements: ordered, and not all zero when something was answered. */
    assert_true(min <= p50 && p50 <= p90 && p90 <= p99 && p99 <= max);
    if (json_integer_value(json_object_get(j, "success")) + json_integer_value(json_object_get(j, "failed")) >
        0)
        assert_true(max > 0);
    return j;
}

static long long jint_of(json_t *o, const char *k)
{
    return (long long)json_integer_value(json_object_get(o, k));
}

/* The n results the harness saw after the first `before`, each with this status. */
static void expect_results_since(int before, int n, const char *status)
{
    assert_true(bw_test_client_wait_count(H.client, BW_H_RESULTS, before + n, 10000) >= before + n);
    for (int i = before; i < before + n; i++) {
        bw_test_msg_t *m = bw_test_client_get(H.client, BW_H_RESULTS, i);
        assert_string_equal(str(m->json, "status"), status);
        bw_test_msg_destroy(m);
    }
}

static void test_submit_count(void **state)
{
    static const char *const text[] = {"submit", "--count", "200",       "--concurrency",
                                       "16",     "echo",    "{\"a\":1}", NULL},
                             *const js[] = {"submit", "--json", "--count",    "100", "--concurrency",
                                            "4",      "sleep",  "{\"ms\":5}", NULL};
    const char *const env[] = {url_env, NULL};
    bw_test_cli_t r;
    int before = bw_test_client_count(H.client, BW_H_RESULTS);
    bw_test_cli_run(&r, text, env, NULL);
    if (r.rc != 0)
        bw_test_cli_dump(&r);
    assert_int_equal(r.rc, 0);
    assert_non_null(strstr(r.out, "200 jobs, concurrency 16: 200 success, 0 failed, 0 without result"));
    assert_non_null(strstr(r.out, "jobs/s"));
    assert_non_null(strstr(r.out, "p50 "));
    assert_non_null(strstr(r.out, "p99 "));
    bw_test_cli_dispose(&r);
    expect_results_since(before, 200, "success");

    /* --json: one object; sleeps of 5 ms are never answered faster than that. */
    before = bw_test_client_count(H.client, BW_H_RESULTS);
    bw_test_cli_run(&r, js, env, NULL);
    if (r.rc != 0)
        bw_test_cli_dump(&r);
    assert_int_equal(r.rc, 0);
    json_t *j = summary_of(&r);
    assert_int_equal(jint_of(j, "submitted"), 100);
    assert_int_equal(jint_of(j, "success"), 100);
    assert_int_equal(jint_of(j, "failed"), 0);
    assert_int_equal(jint_of(j, "no_result"), 0);
    assert_int_equal(jint_of(j, "concurrency"), 4);
    /* (libuv's timers fire on the loop's cached clock, up to a millisecond early in real time) */
    assert_true(json_number_value(json_object_get(json_object_get(j, "latency_ms"), "min")) >= 4.0);
    assert_true(json_number_value(json_object_get(j, "throughput_per_s")) > 0);
    /* at most 4 at a time, each >= 4 ms: 100 jobs take at least 100 ms */
    assert_true(json_number_value(json_object_get(j, "elapsed_s")) >= 0.1);
    json_decref(j);
    bw_test_cli_dispose(&r);
    expect_results_since(before, 100, "success");
}

/* Jobs that fail: exit 1, counted by error code. Jobs nobody answers: exit 4 once their wait is over. */
static void test_submit_count_failures(void **state)
{
    static const char *const bad[] = {"submit",        "--json", "--count",  "5",
                                      "--concurrency", "2",      "teleport", NULL},
                             *const lost[] = {"submit", "--json",    "--count", "3",    "--concurrency",
                                              "3",      "--wait-ms", "300",     "echo", NULL};
    const char *const env[] = {url_env, NULL}, *const nobody[] = {
                                                   url_env, "CAF_ASSIGN_SUBJECT=caf.nobody.listens", NULL};
    bw_test_cli_t r;
    bw_test_cli_run(&r, bad, env, NULL);
    if (r.rc != 1)
        bw_test_cli_dump(&r);
    assert_int_equal(r.rc, 1);
    json_t *j = summary_of(&r);
    assert_int_equal(jint_of(j, "failed"), 5);
    assert_int_equal(jint_of(j, "success"), 0);
    assert_int_equal(jint_of(json_object_get(j, "errors"), "UNKNOWN_JOB_TYPE"), 5);
    json_decref(j);
    bw_test_cli_dispose(&r);

    bw_test_cli_run(&r, lost, nobody, NULL);
    if (r.rc != 4)
        bw_test_cli_dump(&r);
    assert_int_equal(r.rc, 4);
    j = summary_of(&r);
    assert_int_equal(jint_of(j, "no_result"), 3);
    assert_int_equal(jint_of(j, "submitted"), 3);
    assert_true(r.ms >= 2300 && r.ms < 15000); /* the wait plus the 2 s grace, then it gives up */
    json_decref(j);
    bw_test_cli_dispose(&r);

    /* One job nobody answers: 4 as well, with nothing on stdout. */
    static const char *const one[] = {"submit", "--wait-ms", "100", "echo", NULL};
    bw_test_cli_run(&r, one, nobody, NULL);
    if (r.rc != 4)
        bw_test_cli_dump(&r);
    assert_int_equal(r.rc, 4);
    assert_string_equal(r.out, "");
    assert_non_null(strstr(r.err, "no result"));
    assert_true(r.ms >= 2100);
    bw_test_cli_dispose(&r);
}

/* How many assignments went out since the first `before` (the harness's client collects them), not
   counting a marker this publishes now: the commands that ran before it have exited, so whatever they
   sent reached the server ahead of the marker. */
static int assignments_since(int before)
{
    assert_int_equal(bw_harness_submit(&H, "cli-marker", "echo", "{}", 5000), 0);
    for (int64_t end = bw_test_now_ms() + 10000; bw_test_now_ms() < end;) {
        int n = bw_test_client_count(H.client, BW_H_ASSIGN);
        bw_test_msg_t *last = n > before ? bw_test_client_get(H.client, BW_H_ASSIGN, n - 1) : NULL;
        bool marker = last != NULL && strcmp(str(last->json, "assignment_id"), "cli-marker") == 0;
        bw_test_msg_destroy(last);
        if (marker)
            return n - before - 1;
        bw_test_client_wait_count(H.client, BW_H_ASSIGN, n + 1, 100);
    }
    fail_msg("the marker assignment never arrived");
    return -1;
}

static char *write_temp(const char *text)
{
    char *path = strdup("/tmp/bw-submit-XXXXXX");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    return path;
}

static void test_submit_file(void **state)
{
    /* Three jobs in three forms, JSON lines: a load check of three. */
    char *several =
        write_temp("{\"type\":\"echo\",\"payload\":{\"k\":1}}\n"
                   "{\"version\":\"1\",\"assignment_id\":\"file-bare\",\"tenant_id\":\"acme\",\"job\":{"
                   "\"type\":\"echo\",\"payload\":{}}}\n"
                   "{\"version\":\"v1\",\"kind\":\"exec_assign\",\"data\":{\"version\":\"1\",\"assignment_"
                   "id\":\"file-env\","
                   "\"tenant_id\":\"acme\",\"job\":{\"type\":\"sleep\",\"payload\":{\"ms\":1}}}}\n");
    char *one = write_temp("{\"version\":\"1\",\"assignment_id\":\"file-one\",\"tenant_id\":\"globex\","
                           "\"job\":{\"type\":\"echo\",\"payload\":{\"z\":26}}}");
    char *bad = write_temp("{\"type\":\"echo\"}\n{not json\n");
    const char *const a_several[] = {"submit", "--json", "--file", several, NULL},
                      *const a_one[] = {"submit", "--file", one, NULL},
                      *const a_count[] = {"submit", "--json", "--count", "7", "--concurrency",
                                          "3",      "--file", several,   NULL},
                      *const a_bad[] = {"submit", "--file", bad, NULL},
                      *const a_missing[] = {"submit", "--file", "/nonexistent/jobs.json", NULL},
                      *const a_stdin[] = {"submit", "-", NULL};
    const char *const env[] = {url_env, NULL};
    bw_test_cli_t r;
    bw_test_cli_run(&r, a_several, env, NULL);
    if (r.rc != 0)
        bw_test_cli_dump(&r);
    assert_int_equal(r.rc, 0);
    json_t *j = summary_of(&r);
    assert_int_equal(jint_of(j, "success"), 3);
    json_decref(j);
    bw_test_cli_dispose(&r);

    /* The jobs are used in turn up to --count, each under a fresh id. */
    int before = bw_test_client_count(H.client, BW_H_RESULTS);
    bw_test_cli_run(&r, a_count, env, NULL);
    assert_int_equal(r.rc, 0);
    j = summary_of(&r);
    assert_int_equal(jint_of(j, "success"), 7);
    json_decref(j);
    bw_test_cli_dispose(&r);
    expect_results_since(before, 7, "success");

    /* One job: its result, printed as published, under the assignment's own id. */
    bw_test_cli_run(&r, a_one, env, NULL);
    if (r.rc != 0)
        bw_test_cli_dump(&r);
    assert_int_equal(r.rc, 0);
    j = parse_stdout(&r);
    assert_string_equal(str(j, "assignment_id"), "file-one");
    assert_string_equal(str(j, "tenant_id"), "globex");
    assert_int_equal(json_integer_value(json_object_get(json_object_get(j, "output"), "z")), 26);
    json_decref(j);
    bw_test_cli_dispose(&r);

    /* stdin, short form */
    bw_test_cli_run(&r, a_stdin, env, "{\"type\":\"echo\",\"payload\":{\"s\":\"in\"}}");
    assert_int_equal(r.rc, 0);
    j = parse_stdout(&r);
    assert_string_equal(str(json_object_get(j, "output"), "s"), "in");
    json_decref(j);
    bw_test_cli_dispose(&r);

    /* Unusable files: exit 2 before anything is sent. */
    before = bw_test_client_count(H.client, BW_H_ASSIGN);
    bw_test_cli_run(&r, a_bad, env, NULL);
    assert_int_equal(r.rc, 2);
    assert_non_null(strstr(r.err, bad));
    bw_test_cli_dispose(&r);
    bw_test_cli_run(&r, a_missing, env, NULL);
    assert_int_equal(r.rc, 2);
    assert_non_null(strstr(r.err, "/nonexistent/jobs.json"));
    bw_test_cli_dispose(&r);
    assert_int_equal(assignments_since(before), 0);
    unlink(several);
    unlink(one);
    unlink(bad);
    free(several);
    free(one);
    free(bad);
}

/* ---- watch -------------------------------------------------------------------------------------- */

/* The worker ids of the harness's workers, from their heartbeats. */
static json_t *worker_ids(void)
{
    json_t *ids = json_object();
    int n = bw_test_client_count(H.client, BW_H_HEARTBEAT);
    for (int i = 0; i < n; i++) {
        bw_test_msg_t *m = bw_test_client_get(H.client, BW_H_HEARTBEAT, i);
        const char *id = json_string_value(json_object_get(m->json, "worker_id"));
        if (id != NULL && strncmp(id, "forged", 6) != 0)
            json_object_set_new(ids, id, json_true());
        bw_test_msg_destroy(m);
    }
    return ids;
}

static void test_watch_once_table(void **state)
{
    static const char *const args[] = {"watch", "--once", NULL};
    const char *const env[] = {url_env, "CAF_HEARTBEAT_INTERVAL_MS=200", NULL};
    bw_test_cli_t r;
    bw_test_cli_run(&r, args, env, NULL);
    if (r.rc != 0)
        bw_test_cli_dump(&r);
    assert_int_equal(r.rc, 0);
    assert_true(r.ms >= 200); /* it listened for a whole interval */
    assert_true(strncmp(r.out, "WORKER ", 7) == 0);
    assert_non_null(strstr(r.out, "STATUS"));
    assert_non_null(strstr(r.out, "IN FLIGHT"));
    assert_non_null(strstr(r.out, "LAST SEEN"));
    assert_null(strchr(r.out, '\033')); /* not a terminal: no escape sequences */
    json_t *ids = worker_ids();
    const char *id;
    json_t *v;
    assert_int_equal(json_object_size(ids), 2);
    int lines = 0;
    for (const char *p = r.out; (p = strchr(p, '\n')) != NULL; p++)
        lines++;
    assert_int_equal(lines, 3); /* the header and one row per worker */
    json_object_foreach(ids, id, v)
    {
        const char *row = strstr(r.out, id);
        assert_non_null(row);
        assert_non_null(strstr(row, "idle"));
        assert_non_null(strstr(row, "/8 ")); /* in flight out of WORKER_MAX_CONCURRENCY */
    }
    json_decref(ids);
    bw_test_cli_dispose(&r);
}

static void test_watch_once_json(void **state)
{
    static const char *const args[] = {"watch", "--once", "--json", NULL};
    const char *const env[] = {url_env, "CAF_HEARTBEAT_INTERVAL_MS=200", NULL};
    bw_test_cli_t r;
    bw_test_cli_run(&r, args, env, NULL);
    if (r.rc != 0)
        bw_test_cli_dump(&r);
    assert_int_equal(r.rc, 0);
    json_t *ids = worker_ids();
    int n = 0;
    for (char *line = r.out, *nl; (nl = strchr(line, '\n')) != NULL; line = nl + 1, n++) {
        json_t *j = json_loadb(line, (size_t)(nl - line), 0, NULL);
        assert_true(json_is_object(j));
        assert_string_equal(str(j, "event"), "worker");
        assert_non_null(json_object_get(ids, str(j, "worker_id")));
        assert_string_equal(str(j, "status"), "idle");
        assert_int_equal(json_integer_value(json_object_get(j, "max_concurrency")), 8);
        assert_true(json_is_integer(json_object_get(j, "jobs_in_flight")));
        assert_true(json_is_integer(json_object_get(j, "jobs_queued")));
        assert_true(json_is_integer(json_object_get(j, "uptime_s")));
        assert_true(json_is_number(json_object_get(j, "load")));
        assert_true(strlen(str(j, "last_seen")) == 24);
        assert_true(json_integer_value(json_object_get(j, "last_seen_ms_ago")) < 2000);
        json_decref(j);
    }
    assert_int_equal(n, 2);
    json_decref(ids);
    bw_test_cli_dispose(&r);
}

/* Nobody heartbeats on that subject: exit 4 after the interval, and nothing on stdout. */
static void test_watch_once_no_heartbeat(void **state)
{
    static const char *const args[] = {"watch", "--once", "--interval-ms", "300", NULL};
    const char *const env[] = {url_env, "CAF_HEARTBEAT_SUBJECT=caf.nobody.beats", NULL};
    bw_test_cli_t r;
    bw_test_cli_run(&r, args, env, NULL);
    if (r.rc != 4)
        bw_test_cli_dump(&r);
    assert_int_equal(r.rc, 4);
    assert_string_equal(r.out, "");
    assert_non_null(strstr(r.err, "no heartbeat"));
    assert_true(r.ms >= 300);
    bw_test_cli_dispose(&r);
}

/* A heartbeat from a third party on NATS, whose text would act on a terminal: a title change (OSC),
   a colour, a bell, a right-to-left override and a C1 CSI. */
static const char forged[] =
    "{\"worker_id\":\"forged\\u001b]0;pwned\\u0007\\u202e-1\",\"status\":\"idle\\u001b[31m\\u009b2J\","
    "\"load\":0.5,\"jobs_in_flight\":1,\"jobs_queued\":0,\"max_concurrency\":2,\"uptime_s\":3661,"
    "\"build\":\"x\\r\\ny\"}";

static void assert_no_raw_controls(const char *text, bool allow_csi)
{
    for (const unsigned char *p = (const unsigned char *)text; *p; p++) {
        if (*p == '\033' && allow_csi)
            continue;
        if ((*p < 0x20 && *p != '\n') || *p == 0x7f)
            fail_msg("raw control byte 0x%02x at offset %ld", *p, (long)((const char *)p - text));
        if (p[0] == 0xe2 && p[1] == 0x80 && p[2] == 0xae)
            fail_msg("raw U+202E at offset %ld", (long)((const char *)p - text));
        if (p[0] == 0xc2 && p[1] == 0x9b)
            fail_msg("raw U+009B at offset %ld", (long)((const char *)p - text));
    }
}

/* Piped, following heartbeats, results and dead letters: one plain line per message, until SIGINT
   (exit 0). */
static void test_watch_follow_piped(void **state)
{
    static const char *const args[] = {"watch", "--results", "--dlq", NULL};
    const char *const env[] = {url_env, NULL};
    bw_test_proc_t p;
    assert_int_equal(bw_test_proc_start(&p, args, env), 0);
    /* Subscribed once a real worker's heartbeat shows. */
    if (bw_test_proc_wait_log(&p, "  worker  worker-", 10000) != 0) {
        bw_test_proc_dump_log(&p);
        fail_msg("no heartbeat line");
    }
    assert_int_equal(bw_harness_submit(&H, "watch-res-1", "echo", "{}", 5000), 0);
    assert_int_equal(bw_harness_publish_raw(&H, "this is not an assignment", NULL), 0);
    assert_int_equal(bw_test_client_publish(H.client, BW_H_HEARTBEAT, forged, NULL), 0);
    int ok =
        bw_test_proc_wait_log(&p, "result  watch-res-1  success  echo  worker-", 10000) == 0 &&
        bw_test_proc_wait_log(&p, "dead letter  ", 10000) == 0 &&
        bw_test_proc_wait_log(
            &p,
            "worker  forged\\x1b]0;pwned\\x07\\u202e-1  idle\\x1b[31m\\u009b2J  50%  1/2  0  1h01m  x\\r\\ny",
            10000) == 0;
    int code = -1;
    assert_int_equal(bw_test_proc_signal(&p, SIGINT), 0);
    int waited = bw_test_proc_wait(&p, 10000, &code);
    char *log = bw_test_read_file(p.log_path, NULL);
    if (!ok || waited != 0 || code != 0)
        bw_test_proc_dump_log(&p);
    assert_true(ok);
    assert_int_equal(waited, 0);
    assert_int_equal(code, 0);
    assert_non_null(strstr(log, "# TIME  worker  ID  STATUS"));
    assert_null(strchr(log, '\033'));
    assert_no_raw_controls(log, false);
    free(log);
    bw_test_proc_stop(&p);
}

/* --json, following: every line one JSON object, events of each kind, the forged text kept exact (JSON
   escapes) yet with no raw control character on the way. */
static void test_watch_follow_json(void **state)
{
    static const char *const args[] = {"watch", "--json", "--results", NULL};
    const char *const env[] = {url_env, NULL};
    bw_test_proc_t p;
    assert_int_equal(bw_test_proc_start(&p, args, env), 0);
    if (bw_test_proc_wait_log(&p, "{\"event\":\"worker\",\"worker_id\":\"worker-", 10000) != 0) {
        bw_test_proc_dump_log(&p);
        fail_msg("no heartbeat line");
    }
    assert_int_equal(bw_harness_submit(&H, "watch-json-1", "teleport", "{}", 5000), 0);
    assert_int_equal(bw_test_client_publish(H.client, BW_H_HEARTBEAT, forged, NULL), 0);
    int ok = bw_test_proc_wait_log(&p, "\"assignment_id\":\"watch-json-1\"", 10000) == 0 &&
             bw_test_proc_wait_log(&p, "\"worker_id\":\"forged", 10000) == 0;
    int code = -1;
    assert_int_equal(bw_test_proc_signal(&p, SIGTERM), 0);
    assert_int_equal(bw_test_proc_wait(&p, 10000, &code), 0);
    char *log = bw_test_read_file(p.log_path, NULL);
    if (!ok || code != 0)
        bw_test_proc_dump_log(&p);
    assert_true(ok);
    assert_int_equal(code, 0);
    assert_no_raw_controls(log, false);
    int results = 0, forged_seen = 0;
    for (char *line = log, *nl; (nl = strchr(line, '\n')) != NULL; line = nl + 1) {
        json_t *j = json_loadb(line, (size_t)(nl - line), 0, NULL);
        if (!json_is_object(j))
            fail_msg("not a JSON line: %.*s", (int)(nl - line), line);
        if (strcmp(str(j, "event"), "result") == 0 && strcmp(str(j, "assignment_id"), "watch-json-1") == 0) {
            results++;
            assert_string_equal(str(j, "error_code"), "UNKNOWN_JOB_TYPE");
        }
        if (strncmp(str(j, "worker_id"), "forged", 6) == 0) {
            forged_seen++;
            assert_string_equal(str(j, "worker_id"), "forged\033]0;pwned\a\u202e-1");
            assert_string_equal(str(j, "status"), "idle\033[31m\xc2\x9b"
                                                  "2J");
        }
        json_decref(j);
    }
    assert_int_equal(results, 1);
    assert_int_equal(forged_seen, 1);
    free(log);
    bw_test_proc_stop(&p);
}

/* What the pseudo-terminal showed so far: static, so a failed assertion (a longjmp) leaks nothing. When
   full, the oldest three quarters go (the table is redrawn every second anyway). */
static char pty_out[256 * 1024];
static size_t pty_len;

/* Reads the pty master until needle shows in what came so far, or the time is up. */
static int pty_wait(int fd, const char *needle, int timeout_ms)
{
    int64_t end = bw_test_now_ms() + timeout_ms;
    while (memmem(pty_out, pty_len, needle, strlen(needle)) == NULL) {
        int64_t left = end - bw_test_now_ms();
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        if (left <= 0 || poll(&pfd, 1, (int)left) <= 0)
            return -1;
        if (pty_len + 4096 + 1 > sizeof pty_out) {
            memmove(pty_out, pty_out + pty_len - sizeof pty_out / 4, sizeof pty_out / 4);
            pty_len = sizeof pty_out / 4;
        }
        ssize_t n = read(fd, pty_out + pty_len, 4096);
        if (n <= 0)
            return -1;
        pty_len += (size_t)n;
        pty_out[pty_len] = '\0';
    }
    return 0;
}

/* On a terminal: the alternate screen, the table redrawn in place (cursor home, lines cleared), the
   forged worker's text escaped, and the screen restored on Ctrl-C (SIGINT, exit 0). */
static void test_watch_tty(void **state)
{
    extern char **environ;
    int master = -1, n = 0;
    while (environ[n] != NULL)
        n++;
    char **envp = calloc((size_t)n + 2, sizeof *envp); /* made before the fork: the child only execs */
    for (int i = 0, k = 0; i < n; i++)
        if (strncmp(environ[i], "NATS_URL=", 9) != 0)
            envp[k++] = environ[i];
    for (n = 0; envp[n] != NULL; n++)
        ;
    envp[n] = url_env;
    char bin[] = BW_WORKER_BIN, watch[] = "watch", results[] = "--results";
    char *const argv[] = {bin, watch, results, NULL};
    pid_t pid = forkpty(&master, NULL, NULL, NULL);
    assert_true(pid >= 0);
    if (pid == 0) {
        execve(bin, argv, envp);
        _exit(127);
    }
    free(envp);
    pty_len = 0;
    pty_out[0] = '\0';
    int ok = pty_wait(master, "\033[?1049h", 10000) == 0 && pty_wait(master, "IN FLIGHT", 10000) == 0 &&
             pty_wait(master, "  idle  ", 10000) == 0;
    if (ok) {
        assert_int_equal(bw_test_client_publish(H.client, BW_H_HEARTBEAT, forged, NULL), 0);
        assert_int_equal(bw_harness_submit(&H, "watch-tty-1", "echo", "{}", 5000), 0);
        ok = pty_wait(master, "forged\\x1b]0;pwned\\x07\\u202e-1", 10000) == 0 &&
             pty_wait(master, "result  watch-tty-1  success", 10000) == 0;
    }
    kill(pid, SIGINT);
    int restored = pty_wait(master, "\033[?25h\033[?1049l", 10000);
    int status = 0;
    waitpid(pid, &status, 0);
    close(master);
    if (!ok || restored != 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
        fprintf(stderr, "pty output (%zu bytes):\n%s\n", pty_len, pty_out);
    assert_true(ok);
    assert_int_equal(restored, 0);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    assert_non_null(strstr(pty_out, "\033[H")); /* redrawn from the top, not scrolled */
    assert_non_null(strstr(pty_out, "\033[K"));
    /* The only escape sequences are the tool's own: no OSC title, no colour, no bell from NATS. */
    assert_null(strstr(pty_out, "\033]0;"));
    assert_null(strstr(pty_out, "\033[31m"));
    assert_null(strchr(pty_out, '\a'));
}

/* Its NATS server goes away: watch does not wait for ever on a dead connection (the tools do not
   reconnect), it exits 3 and says why. A server of its own, so the others' stays up. */
static void test_watch_connection_lost(void **state)
{
    static const char *const args[] = {"watch", NULL};
    bw_test_nats_t own = {0};
    char url[96];
    assert_int_equal(bw_test_nats_start(&own), 0);
    snprintf(url, sizeof url, "NATS_URL=%s", own.url);
    const char *const env[] = {url, NULL};
    bw_test_proc_t p;
    assert_int_equal(bw_test_proc_start(&p, args, env), 0);
    int ready = bw_test_proc_wait_log(&p, "# TIME  worker", 10000); /* printed once subscribed */
    bw_test_nats_stop(&own, 0);
    int code = -1, waited = bw_test_proc_wait(&p, 10000, &code);
    if (ready != 0 || waited != 0 || code != 3)
        bw_test_proc_dump_log(&p);
    bw_test_proc_stop(&p);
    assert_int_equal(ready, 0);
    assert_int_equal(waited, 0);
    assert_int_equal(code, 3);
}

/* ---- exit 3: NATS unreachable, for every command that needs it --------------------------------- */

static void test_nats_unreachable(void **state)
{
    static const char *const watch[] = {"watch", "--once", NULL},
                             *const count[] = {"submit", "--count", "3", "echo", NULL},
                             *const approvals[] = {"approvals", "list", NULL},
                             *const replay[] = {"dlq", "replay", NULL};
    static const char *const *const cases[] = {watch, count, approvals, replay};
    char url[64], dlq[96];
    int port = bw_test_closed_port();
    assert_true(port > 0);
    snprintf(url, sizeof url, "NATS_URL=nats://127.0.0.1:%d", port);
    snprintf(dlq, sizeof dlq, "DLQ_PATH=%s", bw_harness_dlq_path(&H, 0));
    const char *const env[] = {url, dlq, NULL};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        bw_test_cli_t r;
        bw_test_cli_run(&r, cases[i], env, NULL);
        if (r.rc != 3 || r.ms >= 5000)
            bw_test_cli_dump(&r);
        assert_int_equal(r.rc, 3);
        assert_string_equal(r.out, "");
        assert_non_null(strstr(r.err, "NATS"));
        assert_true(r.ms < 5000);
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
        cmocka_unit_test_teardown(test_help_every_command, bw_test_cli_free_live),
        cmocka_unit_test_teardown(test_usage_errors, bw_test_cli_free_live),
        cmocka_unit_test(test_docs_agree),
        cmocka_unit_test(test_man_page_renders),
    };
    const struct CMUnitTest submit[] = {
        cmocka_unit_test_teardown(test_submit_echo, bw_test_cli_free_live),
        cmocka_unit_test_teardown(test_submit_timeout, bw_test_cli_free_live),
        cmocka_unit_test_teardown(test_submit_no_server, bw_test_cli_free_live),
        cmocka_unit_test_teardown(test_submit_bad_arguments, bw_test_cli_free_live),
        cmocka_unit_test_teardown(test_submit_count, bw_test_cli_free_live),
        cmocka_unit_test_teardown(test_submit_count_failures, bw_test_cli_free_live),
        cmocka_unit_test_teardown(test_submit_file, bw_test_cli_free_live),
        cmocka_unit_test_teardown(test_watch_once_table, bw_test_cli_free_live),
        cmocka_unit_test_teardown(test_watch_once_json, bw_test_cli_free_live),
        cmocka_unit_test_teardown(test_watch_once_no_heartbeat, bw_test_cli_free_live),
        cmocka_unit_test_teardown(test_watch_follow_piped, bw_test_cli_free_live),
        cmocka_unit_test_teardown(test_watch_follow_json, bw_test_cli_free_live),
        cmocka_unit_test(test_watch_tty),
        cmocka_unit_test(test_watch_connection_lost),
        cmocka_unit_test_teardown(test_nats_unreachable, bw_test_cli_free_live),
    };
    int rc = cmocka_run_group_tests_name("cli", local, NULL, NULL);
    rc |= cmocka_run_group_tests_name("submit", submit, submit_setup, submit_teardown);
    nats_CloseAndWait(2000);
    return rc;
}
