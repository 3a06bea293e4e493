/*
 * sleep {ms}: completes after ms milliseconds on a loop timer, output {slept_ms}. Cancellation stops the
 * timer; the timer handle is closed asynchronously and frees itself, so it never outlives its memory.
 */
#include <stdlib.h>

#include "core/handler.h"
#include "util/clock.h"
#include "util/xalloc.h"

#define SLEEP_MAX_MS (24LL * 3600 * 1000)

typedef struct sleep_state {
    uv_timer_t timer;
    bw_job_t *job;
    uint64_t started_ms;
} sleep_state_t;

static void on_timer(uv_timer_t *t)
{
    sleep_state_t *s = t->data;
    json_t *out = json_pack("{sI}", "slept_ms", (json_int_t)(uv_now(t->loop) - s->started_ms));
    bw_job_succeed(s->job, out);
}

static void sleep_start(bw_job_t *job)
{
    json_t *ms = json_object_get(job->a.payload, "ms");
    if (ms == NULL)
        ms = json_object_get(job->a.payload, "duration_ms");
    if (!json_is_integer(ms) || json_integer_value(ms) < 0 || json_integer_value(ms) > SLEEP_MAX_MS) {
        bw_job_fail(job, BW_ST_ERROR, "INVALID_PAYLOAD",
                    "sleep needs payload.ms: an integer number of milliseconds in 0..86400000");
        return;
    }
    sleep_state_t *s = bw_calloc(1, sizeof *s);
    s->job = job;
    s->started_ms = uv_now(job->loop);
    uv_timer_init(job->loop, &s->timer);
    s->timer.data = s;
    job->hdata = s;
    uv_timer_start(&s->timer, on_timer, (uint64_t)json_integer_value(ms), 0);
}

static void sleep_cancel(bw_job_t *job)
{
    sleep_state_t *s = job->hdata;
    if (s != NULL)
        uv_timer_stop(&s->timer);
}

static void on_closed(uv_handle_t *h)
{
    free(h->data);
}

static void sleep_dispose(bw_job_t *job)
{
    sleep_state_t *s = job->hdata;
    job->hdata = NULL;
    if (s != NULL)
        uv_close((uv_handle_t *)&s->timer, on_closed);
}

const bw_handler_t bw_handler_sleep = {
    .name = "sleep",
    .start = sleep_start,
    .cancel = sleep_cancel,
    .dispose = sleep_dispose,
    .concurrency = 1000, /* a timer each: cheap */
    .waits = true,
};
