/* Counted work on the thread pool (see poolwork.h). */
#include "core/poolwork.h"

static void run_teardown(bw_poolgroup_t *g)
{
    g->closing = false;
    if (g->teardown != NULL)
        g->teardown();
}

static void on_work(uv_work_t *req)
{
    bw_poolwork_t *pw = req->data;
    pw->work(pw);
}

static void on_after_work(uv_work_t *req, int status)
{
    bw_poolwork_t *pw = req->data;
    bw_poolgroup_t *g = pw->group; /* read first: done may free pw */
    (void)status;                  /* UV_ECANCELED only for detached work, whose completion only frees */
    pw->on_pool = false;
    pw->done(pw, pw->detached);
    if (--g->outstanding == 0 && g->closing)
        run_teardown(g);
}

void bw_poolwork_queue(uv_loop_t *loop, bw_poolgroup_t *g, bw_poolwork_t *pw, bw_poolwork_fn work,
                       bw_poolwork_done_fn done)
{
    pw->req.data = pw;
    pw->group = g;
    pw->work = work;
    pw->done = done;
    pw->detached = false;
    pw->on_pool = true;
    g->outstanding++;
    uv_queue_work(loop, &pw->req, on_work, on_after_work); /* fails only for a NULL callback */
}

bool bw_poolwork_detach(bw_poolwork_t *pw)
{
    if (!pw->on_pool)
        return false;
    if (!pw->detached) {
        pw->detached = true;
        (void)uv_cancel((uv_req_t *)&pw->req); /* EBUSY once running: it then finishes on its own */
    }
    return true;
}

bool bw_poolwork_busy(const bw_poolwork_t *pw)
{
    return pw->on_pool;
}

void bw_poolgroup_close(bw_poolgroup_t *g)
{
    g->closing = true;
    if (g->outstanding == 0)
        run_teardown(g);
}
