/*
 * A job's work on libuv's thread pool, for handlers whose jobs share state with that work (fs_blob's
 * store, jmespath's compiled expressions).
 *
 * The pattern both handlers had written out: the work runs on the pool; a job cancelled or out of time
 * meanwhile is answered at once and the work is detached (it finishes on its own, and its completion only
 * frees it); a job that finishes normally gets its output built back on the loop. What was missing is the
 * count: a handler's shared state was torn down at worker shutdown while detached work still ran on the
 * pool and used it (a closed directory descriptor, a freed store). Here every piece of work belongs to a
 * group, the group counts what is outstanding, and the group's teardown runs on the loop only once that
 * count is zero: at once when nothing is outstanding, else from the last completion. The daemon keeps
 * running the loop after it destroys the worker until no request is left, so that completion does come.
 *
 * Work that has not started yet when it is detached is taken off the pool's queue (uv_cancel): nobody
 * waits for its result, and a shutdown does not wait for it either.
 *
 * Loop thread only, except the work callback.
 */
#ifndef BW_CORE_POOLWORK_H
#define BW_CORE_POOLWORK_H

#include <stdbool.h>
#include <uv.h>

typedef struct bw_poolgroup {
    unsigned outstanding; /* queued or running on the pool, completion not yet run */
    bool closing;         /* the teardown runs when outstanding reaches 0 */
    void (*teardown)(void);
} bw_poolgroup_t;

typedef struct bw_poolwork bw_poolwork_t;
/* The work, on a pool thread. */
typedef void (*bw_poolwork_fn)(bw_poolwork_t *pw);
/* The completion, on the loop: detached when the job let go of the work (free it, nothing else), else
   finish the job. May free the memory pw lives in. */
typedef void (*bw_poolwork_done_fn)(bw_poolwork_t *pw, bool detached);

struct bw_poolwork {
    uv_work_t req;
    bw_poolgroup_t *group;
    bw_poolwork_fn work;
    bw_poolwork_done_fn done;
    bool on_pool, detached;
};

/* Queues work for pw (embedded in the handler's per-job state) in group g. */
void bw_poolwork_queue(uv_loop_t *loop, bw_poolgroup_t *g, bw_poolwork_t *pw, bw_poolwork_fn work,
                       bw_poolwork_done_fn done);
/* Lets go of the work: true when it is still on the pool (its completion will run with detached set
   and must free it), false when it is not (the caller frees what pw lives in). */
bool bw_poolwork_detach(bw_poolwork_t *pw);
/* Whether pw's work is on the pool (queued or running, completion not yet run). */
bool bw_poolwork_busy(const bw_poolwork_t *pw);
/* Runs g's teardown once nothing of g is on the pool: now, or from the last completion. Work queued
   after this delays the teardown until it is done too. */
void bw_poolgroup_close(bw_poolgroup_t *g);

#endif
