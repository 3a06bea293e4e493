/*
 * Job state machine: QUEUED -> RUNNING -> DONE, or QUEUED -> DONE (cancelled or expired while waiting).
 * Exactly one transition into DONE happens; it stops the deadline, disposes the handler state and calls
 * the worker's on_done, which publishes the one result.
 */
#include "core/job.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/clock.h"
#include "util/xalloc.h"

static void on_deadline(uv_timer_t *t)
{
    bw_job_t *job = t->data;
    char msg[96];
    const char *code = job->handler != NULL && job->started && job->handler->timeout_code != NULL
                           ? job->handler->timeout_code
                           : "TIMEOUT";
    snprintf(msg, sizeof msg, "job exceeded its deadline of %lld ms", (long long)job->a.timeout_ms);
    bw_job_abort(job, BW_ST_TIMEOUT, code, msg);
}

bw_job_t *bw_job_create(uv_loop_t *loop, bw_assignment_t *a, uint64_t received_ns, bw_job_done_cb on_done,
                        void *owner)
{
    bw_job_t *job = bw_calloc(1, sizeof *job);
    bw_list_init(&job->sched.link);
    bw_list_init(&job->same_id);
    job->a = *a;
    memset(a, 0, sizeof *a);
    job->loop = loop;
    job->received_ns = received_ns;
    job->on_done = on_done;
    job->owner = owner;
    job->state = BW_JOB_QUEUED;
    uv_timer_init(loop, &job->deadline);
    job->deadline.data = job;
    return job;
}

static void arm_in(bw_job_t *job, int64_t left)
{
    if (left < 0)
        left = 0;
    job->deadline_at_ms = (int64_t)uv_now(job->loop) + left;
    uv_timer_start(&job->deadline, on_deadline, (uint64_t)left, 0);
}

void bw_job_arm_deadline(bw_job_t *job)
{
    uint64_t waited_ms = (bw_mono_ns() - job->received_ns) / 1000000u;
    arm_in(job, job->a.timeout_ms - (int64_t)waited_ms);
}

static void finish(bw_job_t *job)
{
    bool was_started = job->started;
    job->state = BW_JOB_DONE;
    uv_timer_stop(&job->deadline);
    if (was_started && job->handler->dispose != NULL)
        job->handler->dispose(job);
    job->on_done(job);
}

void bw_job_start(bw_job_t *job, const bw_handler_t *h)
{
    job->handler = h;
    job->state = BW_JOB_RUNNING;
    job->started = true;
    job->started_ns = bw_mono_ns();
    job->attempts = 1;
    if (job->a.payload_has_nul && !h->accepts_nul) {
        bw_job_fail(job, BW_ST_ERROR, "INVALID_PAYLOAD",
                    "a string of the payload contains U+0000 (NUL), which %s jobs do not accept", h->name);
        return;
    }
    h->start(job);
}

void bw_job_succeed(bw_job_t *job, json_t *output)
{
    if (job->state != BW_JOB_RUNNING) {
        json_decref(output);
        return;
    }
    job->status = BW_ST_SUCCESS;
    job->output = output;
    finish(job);
}

static void set_failure(bw_job_t *job, bw_status_t status, const char *code, const char *message)
{
    job->status = status;
    job->error_code = bw_strdup(code);
    job->error_message = bw_strdup(message ? message : "");
}

void bw_job_fail(bw_job_t *job, bw_status_t status, const char *code, const char *fmt, ...)
{
    if (job->state == BW_JOB_DONE)
        return;
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    set_failure(job, status, code, msg);
    finish(job);
}

void bw_job_abort(bw_job_t *job, bw_status_t status, const char *code, const char *message)
{
    if (job->state == BW_JOB_DONE)
        return;
    if (job->state == BW_JOB_RUNNING && job->handler->cancel != NULL)
        job->handler->cancel(job);
    set_failure(job, status, code, message);
    finish(job);
}

void bw_job_park(bw_job_t *job)
{
    if (job->state != BW_JOB_RUNNING || job->parked)
        return;
    job->parked = true;
    if (job->on_park != NULL)
        job->on_park(job);
}

void bw_job_resume(bw_job_t *job, const bw_handler_t *h, void *hdata, int64_t left_ms)
{
    job->handler = h;
    job->hdata = hdata;
    job->state = BW_JOB_RUNNING;
    job->started = true;
    job->parked = true;
    job->started_ns = bw_mono_ns();
    job->attempts = 1;
    arm_in(job, left_ms);
}

void bw_job_detach(bw_job_t *job)
{
    if (job->state == BW_JOB_DONE)
        return;
    bool was_started = job->started;
    job->state = BW_JOB_DONE;
    uv_timer_stop(&job->deadline);
    if (was_started && job->handler->dispose != NULL)
        job->handler->dispose(job);
}

int64_t bw_job_remaining_ms(const bw_job_t *job)
{
    int64_t left = job->deadline_at_ms - (int64_t)uv_now(job->loop);
    return left > 0 ? left : 0;
}

static void on_closed(uv_handle_t *h)
{
    bw_job_t *job = h->data;
    bw_assignment_dispose(&job->a);
    json_decref(job->output);
    json_decref(job->logs);
    free(job->error_code);
    free(job->error_message);
    free(job);
}

void bw_job_release(bw_job_t *job)
{
    if (job != NULL)
        uv_close((uv_handle_t *)&job->deadline, on_closed);
}
