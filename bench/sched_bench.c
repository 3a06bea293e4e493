/*
 * bw-sched-bench: the CPU cost per job of the fair scheduler (core/sched.c) against the FIFO it replaced
 * (commit 76fc78e: one intrusive bw_list of waiting jobs and a running counter, core/worker.c's waitq and
 * pump), in-process on the real code, both in the same run.
 *
 * Set-up per case: `waiting` jobs admitted while every slot is busy, spread uniformly at random over
 * `tenants` tenants (every 4th tenant has weight 3), either all echo or a mix of the 13 job types with the
 * worker's default caps (sleep 1000, http 256, graphql 256 and sql 64 in their own pools; javascript and
 * jmespath at the CPU count and in the shared slots). Then the steady state, `iters` times: the oldest
 * running job ends, bw_sched_next is called until it returns NULL, and a new job of the ended job's type
 * (a random tenant) is admitted. The ended job's type is kept so that the type mix, and the number
 * waiting, stay what the set-up made. One iteration = one job through admit + next + end: its wall time
 * (CLOCK_MONOTONIC), best of `repeat` rounds, each round on a fresh scheduler with the same random
 * sequence. The FIFO does the same with push/shift and counters.
 *
 * Prints one JSON line per case. sched_heap_bytes_per_waiting is the scheduler's own heap (glibc
 * mallinfo2 delta: tenant records and their heap, not the items, which the caller embeds in its jobs)
 * divided by the jobs waiting; item_bytes is what every job embeds (sizeof(bw_sched_item_t)).
 *
 * Usage: bw-sched-bench [--waiting N] [--iters M] [--repeat R] [--slots S] [--tenants "1 100 10000"]
 *                       [--mix echo|mix|both]
 */
#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "core/sched.h"
#include "util/list.h"

/* The worker's 13 job types, their share of the mix (percent) and their default caps. */
typedef struct {
    const char *name;
    int share;
    int cap; /* -1: the CPU count */
    bool own_pool;
} type_def_t;

static const type_def_t types[] = {
    {"echo", 40, 0, false},          {"sleep", 15, 1000, true},     {"http", 10, 256, true},
    {"graphql", 5, 256, true},       {"sql", 5, 64, true},          {"javascript", 5, -1, false},
    {"jmespath", 5, -1, false},      {"fs_blob_put", 3, 0, false},  {"fs_blob_get", 3, 0, false},
    {"fs_blob_stat", 3, 0, false},   {"fs_blob_list", 2, 0, false}, {"fs_blob_delete", 2, 0, false},
    {"human_approval", 2, 0, false},
};
#define NTYPES ((int)(sizeof types / sizeof types[0]))

typedef struct {
    bw_sched_item_t it;
    bw_list_t run; /* in the bench's list of running jobs, oldest first */
} sjob_t;

typedef struct {
    bw_list_t link; /* in the FIFO while waiting, in the running list while running */
} fjob_t;

typedef struct {
    int tenants;
    size_t waiting;
    long iters;
    int repeat;
    int slots;
    bool mix;
} bcase_t;

static uint64_t rng_state;

static uint64_t rnd(void)
{
    uint64_t x = rng_state; /* xorshift64 */
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return rng_state = x;
}

static char (*tenant_names)[24];
static size_t *tenant_lens;
static int type_pick[100]; /* percent -> type */

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static size_t heap_bytes(void)
{
    struct mallinfo2 mi = mallinfo2();
    return mi.uordblks + mi.hblkhd;
}

static int random_type(const bcase_t *c)
{
    return c->mix ? type_pick[rnd() % 100] : 0;
}

static bw_sched_t *new_sched(const bcase_t *c, int *caps, bool *own)
{
    bw_sched_opts_t o = {
        .shared_slots = c->slots,
        .ntypes = NTYPES,
        .type_cap = caps,
        .own_pool = own,
        .tenant_max_running = 0,
        .queue_max = c->waiting + 1,
        .tenant_queue_max = c->waiting + 1,
    };
    bw_sched_t *s = bw_sched_create(&o);
    for (int t = 0; t < c->tenants; t += 4)
        bw_sched_set_weight(s, tenant_names[t], tenant_lens[t], 3);
    return s;
}

static void die(const char *what)
{
    fprintf(stderr, "bw-sched-bench: %s\n", what);
    exit(1);
}

/* Admits job j for a random tenant with type `type`; a job that starts joins the running list. */
static void sched_admit(bw_sched_t *s, const bcase_t *c, sjob_t *j, int type, bw_list_t *running)
{
    int t = (int)(rnd() % (uint64_t)c->tenants);
    memset(&j->it, 0, sizeof j->it);
    bw_sched_admit_t r = bw_sched_admit(s, &j->it, tenant_names[t], tenant_lens[t], type);
    if (r == BW_SCHED_START)
        bw_list_push(running, &j->run);
    else if (r != BW_SCHED_WAIT)
        die("admission refused");
}

typedef struct {
    double fill_ns, loop_ns;
    size_t heap, waiting_before, waiting_after;
} result_t;

/* One round of the scheduler: fill, then the steady-state loop. */
static result_t sched_round(const bcase_t *c, sjob_t *jobs, size_t njobs, int *caps, bool *own)
{
    result_t r = {0};
    bw_list_t running;
    bw_list_init(&running);
    rng_state = 0x9e3779b97f4a7c15ULL;
    size_t h0 = heap_bytes();
    bw_sched_t *s = new_sched(c, caps, own);
    double t0 = now_ns();
    for (size_t i = 0; i < njobs; i++)
        sched_admit(s, c, &jobs[i], random_type(c), &running);
    r.fill_ns = (now_ns() - t0) / (double)njobs;
    r.heap = heap_bytes() - h0;
    r.waiting_before = bw_sched_waiting(s);
    t0 = now_ns();
    for (long i = 0; i < c->iters; i++) {
        bw_list_t *n = bw_list_shift(&running);
        if (n == NULL)
            die("nothing running");
        sjob_t *j = bw_list_entry(n, sjob_t, run);
        int type = j->it.type;
        bw_sched_end(s, &j->it);
        bw_sched_item_t *it;
        while ((it = bw_sched_next(s)) != NULL)
            bw_list_push(&running, &bw_list_entry(it, sjob_t, it)->run);
        sched_admit(s, c, j, type, &running);
    }
    r.loop_ns = (now_ns() - t0) / (double)c->iters;
    r.waiting_after = bw_sched_waiting(s);
    bw_sched_destroy(s);
    return r;
}

/* The FIFO of commit 76fc78e: admit = (start if a slot is free, else) push; end = running-- and pump. */
typedef struct {
    bw_list_t waitq, running;
    size_t queued, nrunning, max, queue_max;
} fifo_t;

static void fifo_pump(fifo_t *f)
{
    while (f->nrunning < f->max && !bw_list_empty(&f->waitq)) {
        bw_list_t *n = bw_list_shift(&f->waitq);
        f->queued--;
        f->nrunning++;
        bw_list_push(&f->running, n);
    }
}

static void fifo_admit(fifo_t *f, const bcase_t *c, fjob_t *j)
{
    /* The same draws as the scheduler's admission, so both consume the generator alike. */
    volatile int t = (int)(rnd() % (uint64_t)c->tenants);
    (void)t;
    if (f->nrunning >= f->max && f->queued >= f->queue_max)
        die("fifo full");
    bw_list_push(&f->waitq, &j->link);
    f->queued++;
    fifo_pump(f);
}

static result_t fifo_round(const bcase_t *c, fjob_t *jobs, size_t njobs)
{
    result_t r = {0};
    fifo_t f = {.max = (size_t)c->slots, .queue_max = njobs};
    bw_list_init(&f.waitq);
    bw_list_init(&f.running);
    rng_state = 0x9e3779b97f4a7c15ULL;
    double t0 = now_ns();
    for (size_t i = 0; i < njobs; i++) {
        (void)random_type(c);
        fifo_admit(&f, c, &jobs[i]);
    }
    r.fill_ns = (now_ns() - t0) / (double)njobs;
    r.waiting_before = f.queued;
    t0 = now_ns();
    for (long i = 0; i < c->iters; i++) {
        bw_list_t *n = bw_list_shift(&f.running);
        if (n == NULL)
            die("fifo: nothing running");
        f.nrunning--;
        fifo_pump(&f);
        fifo_admit(&f, c, bw_list_entry(n, fjob_t, link));
    }
    r.loop_ns = (now_ns() - t0) / (double)c->iters;
    r.waiting_after = f.queued;
    return r;
}

static double peak_rss_mb(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_maxrss / 1024.0;
}

/* Jobs admitted in the set-up: `waiting` wait, plus those that start at once (the slots and the pools). */
static size_t jobs_needed(const bcase_t *c, const int *caps, const bool *own)
{
    size_t n = c->waiting + (size_t)c->slots;
    if (c->mix)
        for (int t = 0; t < NTYPES; t++)
            if (own[t])
                n += (size_t)caps[t];
    return n;
}

static void run_case(const bcase_t *c, int *caps, bool *own)
{
    size_t njobs = jobs_needed(c, caps, own);
    sjob_t *sj = calloc(njobs, sizeof *sj);
    fjob_t *fj = calloc(njobs, sizeof *fj);
    if (sj == NULL || fj == NULL)
        die("out of memory");
    result_t best_s = {.loop_ns = 1e30, .fill_ns = 1e30}, best_f = best_s;
    /* Alternate the two, so that a burst of load on the machine hits both alike. */
    for (int r = 0; r < c->repeat; r++) {
        result_t s = sched_round(c, sj, njobs, caps, own);
        result_t f = fifo_round(c, fj, njobs);
        if (s.loop_ns < best_s.loop_ns)
            best_s.loop_ns = s.loop_ns;
        if (s.fill_ns < best_s.fill_ns)
            best_s.fill_ns = s.fill_ns;
        if (f.loop_ns < best_f.loop_ns)
            best_f.loop_ns = f.loop_ns;
        if (f.fill_ns < best_f.fill_ns)
            best_f.fill_ns = f.fill_ns;
        best_s.heap = s.heap, best_s.waiting_before = s.waiting_before,
        best_s.waiting_after = s.waiting_after;
        best_f.waiting_after = f.waiting_after;
    }
    printf("{\"tenants\":%d,\"waiting\":%zu,\"types\":\"%s\",\"shared_slots\":%d,\"iters\":%ld,\"repeat\":%d,"
           "\"sched_ns_per_job\":%.1f,\"fifo_ns_per_job\":%.1f,\"ratio\":%.1f,"
           "\"sched_fill_ns_per_admit\":%.1f,\"fifo_fill_ns_per_admit\":%.1f,"
           "\"sched_waiting_after\":%zu,\"fifo_waiting_after\":%zu,"
           "\"sched_heap_bytes_per_waiting\":%.1f,\"sched_heap_bytes_per_tenant\":%.0f,\"item_bytes\":%zu,"
           "\"peak_rss_mb\":%.1f}\n",
           c->tenants, best_s.waiting_before, c->mix ? "mix" : "echo", c->slots, c->iters, c->repeat,
           best_s.loop_ns, best_f.loop_ns, best_s.loop_ns / best_f.loop_ns, best_s.fill_ns, best_f.fill_ns,
           best_s.waiting_after, best_f.waiting_after,
           (double)best_s.heap / (double)(best_s.waiting_before ? best_s.waiting_before : 1),
           (double)best_s.heap / (double)c->tenants, sizeof(bw_sched_item_t), peak_rss_mb());
    fflush(stdout);
    free(sj);
    free(fj);
}

static void usage(void)
{
    fprintf(stderr, "usage: bw-sched-bench [--waiting N] [--iters M] [--repeat R] [--slots S] "
                    "[--tenants \"1 100 10000\"] [--mix echo|mix|both]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    bcase_t c = {.waiting = 100000, .iters = 200000, .repeat = 5, .slots = 8};
    const char *tenants = "1 100 10000", *mix = "both";
    for (int i = 1; i < argc; i += 2) { /* every option takes a value */
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (v == NULL)
            usage();
        if (strcmp(a, "--waiting") == 0)
            c.waiting = strtoull(v, NULL, 10);
        else if (strcmp(a, "--iters") == 0)
            c.iters = strtol(v, NULL, 10);
        else if (strcmp(a, "--repeat") == 0)
            c.repeat = atoi(v);
        else if (strcmp(a, "--slots") == 0)
            c.slots = atoi(v);
        else if (strcmp(a, "--tenants") == 0)
            tenants = v;
        else if (strcmp(a, "--mix") == 0)
            mix = v;
        else
            usage();
    }
    if (c.waiting == 0 || c.iters <= 0 || c.repeat <= 0 || c.slots <= 0)
        usage();

    int caps[NTYPES], p = 0;
    bool own[NTYPES];
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    for (int t = 0; t < NTYPES; t++) {
        caps[t] = types[t].cap < 0 ? (int)(cpus > 0 ? cpus : 1) : types[t].cap;
        own[t] = types[t].own_pool;
        for (int k = 0; k < types[t].share; k++)
            type_pick[p++] = t;
    }
    if (p != 100)
        die("type shares do not add up to 100");

    char *list = strdup(tenants), *save = NULL;
    for (char *tok = strtok_r(list, " ,", &save); tok != NULL; tok = strtok_r(NULL, " ,", &save)) {
        c.tenants = atoi(tok);
        if (c.tenants <= 0)
            usage();
        tenant_names = calloc((size_t)c.tenants, sizeof *tenant_names);
        tenant_lens = calloc((size_t)c.tenants, sizeof *tenant_lens);
        if (tenant_names == NULL || tenant_lens == NULL)
            die("out of memory");
        for (int t = 0; t < c.tenants; t++)
            tenant_lens[t] = (size_t)snprintf(tenant_names[t], sizeof tenant_names[t], "tenant-%05d", t);
        if (strcmp(mix, "echo") != 0 && strcmp(mix, "mix") != 0 && strcmp(mix, "both") != 0)
            usage();
        if (strcmp(mix, "mix") != 0) {
            c.mix = false;
            run_case(&c, caps, own);
        }
        if (strcmp(mix, "echo") != 0) {
            c.mix = true;
            run_case(&c, caps, own);
        }
        free(tenant_names);
        free(tenant_lens);
    }
    free(list);
    return 0;
}
