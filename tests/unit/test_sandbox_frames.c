/* Unit tests for js/sandbox.c's reading of answers from a child that does not play by the rules (a
   compromised sandbox): an answer frame is bounded by its request's limits (bw_sandbox_answer_max), checked
   on the 4-byte header before any of the frame is buffered. The child here is this test program itself,
   started by the pool as "<exe> js-sandbox": it answers each request as the request's "fake" member says
   (a valid answer of an exact length, or a header that announces a length and nothing after it). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>
#include <unistd.h>
#include <uv.h>

#include "core/config.h"
#include "js/sandbox.h"
#include "obs/metrics.h"
#include "testutil.h"
#include "util/clock.h"

/* ---- the fake child ---- */

static int read_full(int fd, void *p, size_t n)
{
    for (size_t got = 0; got < n;) {
        ssize_t r = read(fd, (char *)p + got, n - got);
        if (r <= 0)
            return -1;
        got += (size_t)r;
    }
    return 0;
}

static void write_full(int fd, const void *p, size_t n)
{
    for (size_t done = 0; done < n;) {
        ssize_t w = write(fd, (const char *)p + done, n - done);
        if (w <= 0)
            _exit(1);
        done += (size_t)w;
    }
}

static void put_le32(unsigned char *h, uint32_t n)
{
    h[0] = (unsigned char)n, h[1] = (unsigned char)(n >> 8), h[2] = (unsigned char)(n >> 16),
    h[3] = (unsigned char)(n >> 24);
}

/* {"fake": {"mode": "valid" | "announce", "len": N}}: "valid" answers {"id":..,"ok":true,"output":"x..."}
   of exactly N bytes; "announce" sends a header of N and a few bytes, then waits to be killed. */
static int fake_child(void)
{
    for (;;) {
        unsigned char h[4];
        if (read_full(0, h, 4) != 0)
            return 0;
        uint32_t n = (uint32_t)h[0] | (uint32_t)h[1] << 8 | (uint32_t)h[2] << 16 | (uint32_t)h[3] << 24;
        char *body = malloc(n);
        if (body == NULL || read_full(0, body, n) != 0)
            return 1;
        json_t *req = json_loadb(body, n, 0, NULL);
        free(body);
        json_t *fake = json_object_get(req, "fake");
        uint32_t len = (uint32_t)json_integer_value(json_object_get(fake, "len"));
        long long id = (long long)json_integer_value(json_object_get(req, "id"));
        if (strcmp(json_string_value(json_object_get(fake, "mode")), "announce") == 0) {
            put_le32(h, len);
            write_full(1, h, 4);
            write_full(1, "{\"id\":", 6);
            sleep(60); /* the pool kills us */
            return 0;
        }
        char head[64];
        int hl = snprintf(head, sizeof head, "{\"id\":%lld,\"ok\":true,\"output\":\"", id);
        char *frame = malloc(4 + len);
        put_le32((unsigned char *)frame, len);
        memcpy(frame + 4, head, (size_t)hl);
        memset(frame + 4 + hl, 'x', len - (size_t)hl - 2);
        memcpy(frame + 4 + len - 2, "\"}", 2);
        write_full(1, frame, 4 + (size_t)len);
        free(frame);
        json_decref(req);
    }
}

/* ---- the pool ---- */

static uv_loop_t loop;
static bw_config_t cfg;
static bw_sandbox_pool_t *pool;
static char exe[4096];

typedef struct outcome {
    int calls;
    bw_sandbox_outcome_t how;
    size_t output_len;
} outcome_t;

static void on_done(void *ud, bw_sandbox_outcome_t how, json_t *resp, const char *message)
{
    outcome_t *o = ud;
    o->calls++;
    o->how = how;
    o->output_len = json_string_length(json_object_get(resp, "output"));
}

/* A request with small limits (4 KiB of output, 5 log entries of 4 KiB in all) and what the child does. */
static json_t *request(const char *mode, uint32_t len)
{
    return json_pack("{s:s,s:{},s:i,s:i,s:i,s:i,s:{s:s,s:I}}", "code", "1", "args", "timeout_ms", 10000,
                     "max_output_bytes", 4096, "max_logs", 5, "max_log_bytes", 4096, "fake", "mode", mode,
                     "len", (json_int_t)len);
}

static bool run_until(const int *calls, int ms)
{
    uint64_t end = bw_mono_ms() + (uint64_t)ms;
    while (*calls < 1 && bw_mono_ms() < end)
        uv_run(&loop, UV_RUN_NOWAIT), uv_sleep(1);
    return *calls >= 1;
}

static outcome_t submit(const char *mode, uint32_t len)
{
    outcome_t o = {0};
    bw_sandbox_submit(pool, request(mode, len), on_done, &o);
    if (!run_until(&o.calls, 20000))
        fail_msg("%s %u: no outcome within 20 s (the pool waits for a frame it should have refused)", mode,
                 len);
    return o;
}

static int setup(void **state)
{
    static const char *const types[] = {"javascript", NULL};
    bw_metrics_init(types);
    uv_loop_init(&loop);
    cfg.script_pool_size = 1;
    cfg.script_max_memory_mb = 300;
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0)
        return -1;
    exe[n] = '\0';
    pool = bw_sandbox_pool_create(&loop, &cfg, exe);
    return 0;
}

static int teardown(void **state)
{
    bw_sandbox_pool_destroy(pool);
    uv_run(&loop, UV_RUN_DEFAULT);
    return uv_loop_close(&loop) == 0 ? 0 : -1;
}

/* The bound follows the request's limits: output twice, log bytes six times (escaping), 48 bytes per entry,
   and room for an error; defaults when the request names none; never past 64 MiB. */
static void test_answer_max(void **state)
{
    json_t *r = request("valid", 0);
    assert_int_equal(bw_sandbox_answer_max(r), 2 * 4096 + 6 * 4096 + 48 * 5 + 6 * 4096 + 1024);
    json_decref(r);
    r = json_object();
    assert_int_equal(bw_sandbox_answer_max(r), 2 * 1048576 + 6 * 65536 + 48 * 100 + 6 * 4096 + 1024);
    json_decref(r);
    r = json_pack("{s:I}", "max_output_bytes", (json_int_t)1 << 40);
    assert_int_equal(bw_sandbox_answer_max(r), 64u * 1024 * 1024);
    json_decref(r);
}

/* An answer exactly as long as the limits allow is taken; one byte more is refused and the child replaced
   (SANDBOX_CRASHED for the request), and the next request is served by a new child. */
static void test_frame_at_and_past_the_limit(void **state)
{
    json_t *r = request("valid", 0);
    uint32_t max = bw_sandbox_answer_max(r);
    json_decref(r);
    outcome_t o = submit("valid", max);
    assert_int_equal(o.how, BW_SANDBOX_OK);
    assert_true(o.output_len > 4096); /* more than max_output_bytes: the child lied, but within the bound */
    o = submit("valid", max + 1);
    assert_int_equal(o.how, BW_SANDBOX_CRASHED);
    o = submit("valid", 100);
    assert_int_equal(o.how, BW_SANDBOX_OK);
}

/* A header that announces more than the bound (up to 4 GiB) with nothing after it: refused on the header at
   once, not waited for (nor buffered as it comes). */
static void test_announced_length_is_refused_on_the_header(void **state)
{
    json_t *r = request("valid", 0);
    uint32_t max = bw_sandbox_answer_max(r);
    json_decref(r);
    const uint32_t lens[] = {max + 1, 64u * 1024 * 1024, UINT32_MAX};
    for (size_t i = 0; i < sizeof lens / sizeof *lens; i++) {
        uint64_t t0 = bw_mono_ms();
        outcome_t o = submit("announce", lens[i]);
        assert_int_equal(o.how, BW_SANDBOX_CRASHED);
        assert_true(bw_mono_ms() - t0 < 15000); /* at once; the child itself would wait 60 s */
    }
    outcome_t o = submit("valid", 100);
    assert_int_equal(o.how, BW_SANDBOX_OK);
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "js-sandbox") == 0)
        return fake_child();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_answer_max),
        cmocka_unit_test(test_frame_at_and_past_the_limit),
        cmocka_unit_test(test_announced_length_is_refused_on_the_header),
    };
    return cmocka_run_group_tests_name("sandbox_frames", tests, setup, teardown);
}
