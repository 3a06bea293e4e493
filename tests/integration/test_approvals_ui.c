/*
 * Integration: the approvals web page (src/net/approvals_ui.html, served at /approvals/ui by the worker's
 * health server) driven in a real headless Chromium (Debian's /usr/bin/chromium, from node through
 * playwright-core: tests/browser/approvals.mjs) against the real worker binary on a real nats-server.
 *  - a person pastes the token and their name, sees the pending `human_approval` job, comments and
 *    clicks "Approve"; the page says accepted and drops the job from its list without a reload, and the
 *    job's result arrives on NATS: success, decision "Approve", that approver and comment;
 *  - a hostile prompt (and context) is shown as those characters: no <img>, no dialog, no CSP violation.
 * The script also checks the page's security headers and that the token is kept in sessionStorage only.
 * Screenshots go to <build dir>/screenshots/ (approvals-ui-pending.png is the README's
 * docs/approvals-ui.png). Without chromium, node or tests/browser/node_modules (scripts/install-deps.sh
 * installs them) the program skips (exit 77), except under CI, where it fails. Waits are events (the page's
 * elements, the result on NATS, the script's exit), never fixed sleeps.
 */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "harness.h"
#include "http_client.h"
#include "testutil.h"

#define CHROMIUM "/usr/bin/chromium"
#define TOKEN "ui-test-token-0123456789abcdefgh" /* 32 characters */
#define APPROVER "Ada Lovelace"
#define HOSTILE "<img src=x onerror=alert(1)>"
#define SCRIPT_WAIT_MS 150000 /* the script's own watchdog ends it first; a slow machine needs ~10 s */

static bw_harness_t H;
static int port;
static char node_bin[PATH_MAX];
static char browser_dir[PATH_MAX]; /* tests/browser in the source tree */
static char shot_dir[PATH_MAX];    /* <build dir>/screenshots */

/* ---- what the test needs from the machine -------------------------------------------------- */

static int find_node(void)
{
    const char *path = getenv("PATH");
    char *dirs = strdup(path != NULL ? path : "/usr/local/bin:/usr/bin:/bin"), *save = NULL;
    int found = -1;
    for (char *d = strtok_r(dirs, ":", &save); d != NULL && found != 0; d = strtok_r(NULL, ":", &save)) {
        snprintf(node_bin, sizeof node_bin, "%s/node", d);
        found = access(node_bin, X_OK);
    }
    free(dirs);
    return found;
}

/* NULL when the browser test can run, else what is missing. */
static const char *missing_tools(void)
{
    char lib[PATH_MAX + 64];
    snprintf(browser_dir, sizeof browser_dir, "%s/../browser", BW_FIXTURES_DIR);
    snprintf(lib, sizeof lib, "%s/node_modules/playwright-core/package.json", browser_dir);
    if (access(CHROMIUM, X_OK) != 0)
        return CHROMIUM " (Debian package chromium)";
    if (find_node() != 0)
        return "node";
    if (access(lib, R_OK) != 0)
        return "tests/browser/node_modules/playwright-core (npm ci in tests/browser)";
    return NULL;
}

/* ---- fixture ------------------------------------------------------------------------------- */

static int setup(void **state)
{
    static const char *const env[] = {"WORKER_ID=ui-worker", "APPROVAL_TOKEN=" TOKEN, NULL};
    char bin[PATH_MAX];
    snprintf(bin, sizeof bin, "%s", BW_WORKER_BIN);
    snprintf(shot_dir, sizeof shot_dir, "%s/screenshots", dirname(bin));
    port = bw_harness_start_http(&H, env);
    return port > 0 ? 0 : -1;
}

static int teardown(void **state)
{
    return bw_harness_finish(&H, 0);
}

static void fail_with_logs(const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    bw_test_proc_dump_log(&H.workers[0]);
    fail_msg("%s", msg);
}

/* ---- the browser --------------------------------------------------------------------------- */

/* Runs tests/browser/approvals.mjs with the common arguments plus extra (NULL-terminated) and waits for
   it to exit; fails the test, with the script's output and the worker's log, unless it exits 0. */
static void run_page(const char *const *extra)
{
    char script[PATH_MAX + 32], url[64], out_path[] = "/tmp/bw-ui-XXXXXX.log";
    snprintf(script, sizeof script, "%s/approvals.mjs", browser_dir);
    snprintf(url, sizeof url, "http://127.0.0.1:%d", port);
    const char *argv[24] = {node_bin, script, "--url", url, "--token", TOKEN, "--approver", APPROVER};
    size_t n = 8;
    for (size_t i = 0; extra[i] != NULL && n < sizeof argv / sizeof argv[0] - 1; i++)
        argv[n++] = extra[i];
    argv[n] = NULL;

    int fd = mkostemps(out_path, 4, O_CLOEXEC);
    assert_true(fd >= 0);
    const int fds[3] = {-1, fd, fd};
    pid_t pid = bw_test_spawn(node_bin, (char *const *)argv, NULL, fds);
    close(fd);
    assert_true(pid > 0);

    int status = 0, done = 0;
    int64_t deadline = bw_test_now_ms() + SCRIPT_WAIT_MS;
    while ((done = bw_test_reap(pid, &status)) == 0 && bw_test_now_ms() < deadline)
        bw_test_sleep_ms(50); /* waiting for the script's exit, the event itself */
    if (done == 0)
        bw_test_terminate(pid, 2000);
    char *out = bw_test_read_file(out_path, NULL);
    unlink(out_path);
    int code = done == 1 ? bw_test_exit_code(status) : -1;
    if (code != 0) {
        fprintf(stderr, "---- approvals.mjs (exit %d) ----\n%s\n----\n", code, out != NULL ? out : "");
        free(out);
        fail_with_logs("the page test failed (exit %d%s)", code, done == 0 ? ", still running: killed" : "");
    }
    free(out);
}

/* The file is a PNG of some size: the screenshot was taken. */
static void assert_screenshot(const char *path)
{
    size_t len = 0;
    char *png = bw_test_read_file(path, &len);
    if (png == NULL)
        fail_msg("no screenshot at %s", path);
    int ok = len > 1000 && memcmp(png, "\x89PNG\r\n\x1a\n", 8) == 0;
    free(png);
    if (!ok)
        fail_msg("%s is not a PNG screenshot (%zu bytes)", path, len);
    fprintf(stderr, "screenshot: %s\n", path);
}

static const char *jstr(json_t *o, const char *k)
{
    const char *s = json_string_value(json_object_get(o, k));
    return s != NULL ? s : "(missing)";
}

/* ---- tests --------------------------------------------------------------------------------- */

static void test_approve_in_the_page(void **state)
{
    char shot[PATH_MAX + 32], shot_pending[PATH_MAX + 32];
    snprintf(shot, sizeof shot, "%s/approvals-ui.png", shot_dir);
    snprintf(shot_pending, sizeof shot_pending, "%s/approvals-ui-pending.png", shot_dir);
    unlink(shot);
    unlink(shot_pending);
    assert_int_equal(bw_harness_submit(&H, "ui-1", "human_approval",
                                       "{\"prompt\":\"Ship it?\",\"context\":{\"release\":\"1.2.3\"}}",
                                       120000),
                     0);

    const char *const args[] = {
        "--mode",  "approve",   "--assignment",           "ui-1",         "--decision",
        "Approve", "--comment", "Release notes checked.", "--screenshot", shot,
        NULL};
    run_page(args);

    json_t *r = bw_harness_result(&H, "ui-1", 30000);
    if (r == NULL)
        fail_with_logs("no result for ui-1 on NATS after the page's decision");
    json_t *out = json_object_get(r, "output");
    assert_string_equal(jstr(r, "status"), "success");
    assert_string_equal(jstr(out, "decision"), "Approve");
    assert_string_equal(jstr(out, "approver"), APPROVER);
    assert_string_equal(jstr(out, "comment"), "Release notes checked.");
    assert_string_equal(jstr(out, "prompt"), "Ship it?");
    json_t *votes = json_object_get(out, "votes");
    assert_int_equal(json_array_size(votes), 1);
    assert_string_equal(jstr(json_array_get(votes, 0), "approver"), APPROVER);
    json_decref(r);
    assert_int_equal(bw_harness_result_count(&H, "ui-1"), 1);
    assert_screenshot(shot_pending);
    assert_screenshot(shot);
}

static void test_hostile_prompt_is_text(void **state)
{
    char shot[PATH_MAX + 32];
    snprintf(shot, sizeof shot, "%s/approvals-ui-xss.png", shot_dir);
    unlink(shot);
    /* markup in the options and the context too (shown pretty-printed in a <pre>, as text), and a long
       unbroken line, which must not make the page scroll sideways at a phone's width */
    char payload[1024], line[301];
    memset(line, 'x', 300);
    line[300] = '\0';
    snprintf(payload, sizeof payload,
             "{\"prompt\":\"" HOSTILE "\",\"options\":[\"<b>Yes</b>\",\"No\"],"
             "\"context\":{\"note\":\"</pre><script>alert(2)</script>\",\"line\":\"%s\"}}",
             line);
    assert_int_equal(bw_harness_submit(&H, "ui-xss", "human_approval", payload, 120000), 0);

    const char *const args[] = {"--mode", "xss",          "--assignment", "ui-xss", "--prompt",
                                HOSTILE,  "--screenshot", shot,           NULL};
    run_page(args);
    assert_screenshot(shot);

    /* the page changed nothing: the job still waits, and ends when cancelled */
    assert_int_equal(bw_harness_result_count(&H, "ui-xss"), 0);
    assert_int_equal(bw_harness_cancel(&H, "ui-xss", "test over"), 0);
    json_t *r = bw_harness_result(&H, "ui-xss", 30000);
    if (r == NULL)
        fail_with_logs("no result for the cancelled ui-xss");
    assert_string_equal(jstr(r, "status"), "cancelled");
    json_decref(r);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_approve_in_the_page),
        cmocka_unit_test(test_hostile_prompt_is_text),
    };
    const char *names[sizeof tests / sizeof tests[0]];
    for (size_t i = 0; i < sizeof tests / sizeof tests[0]; i++)
        names[i] = tests[i].name;
    bw_test_select(argc, argv, names, sizeof tests / sizeof tests[0]);

    const char *missing = missing_tools();
    if (missing != NULL) {
        const char *ci = getenv("CI");
        if (ci != NULL && *ci != '\0' && strcmp(ci, "false") != 0 && strcmp(ci, "0") != 0) {
            fprintf(stderr,
                    "test_approvals_ui: %s is missing, and CI=%s: failing (scripts/install-deps.sh "
                    "installs it)\n",
                    missing, ci);
            return 1;
        }
        fprintf(stderr, "SKIPPED test_approvals_ui: %s is missing (scripts/install-deps.sh installs it)\n",
                missing);
        return 77;
    }
    return bw_test_exit_status(cmocka_run_group_tests_name("approvals_ui", tests, setup, teardown));
}
