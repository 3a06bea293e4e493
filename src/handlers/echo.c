/* echo: the output is the job's payload (an empty object when the job has none). Completes in start. */
#include "core/handler.h"

static void echo_start(bw_job_t *job)
{
    json_t *out = job->a.payload != NULL ? json_incref(job->a.payload) : json_object();
    bw_job_succeed(job, out);
}

const bw_handler_t bw_handler_echo = {
    .name = "echo",
    .start = echo_start,
    .accepts_nul = true, /* the payload goes back as it came: the result writer keeps string lengths */
};
