/*
 * bw-obs-cost: the CPU cost per echo job of what observability adds, measured in-process on the real
 * code (obs/log.c, obs/metrics.c): the "job finished" info line (written unbatched, and batched as the
 * daemon's loop does, to /dev/null or a pipe drained by another thread) and the metric updates of one
 * job. Thread CPU time, median of 5 rounds; prints one JSON line. Compare with the worker's CPU per echo
 * job from run-echo.sh.
 */
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "obs/log.h"
#include "obs/metrics.h"

#define N 200000
#define ROUNDS 5

static double thread_cpu_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static void one_log_line(int i)
{
    bw_log(BW_LOG_INFO, "job finished", BW_LS("assignment_id", "lg-5f1c2a9e-000123"),
           BW_LS("trace_id", "0af7651916cd43dd8448eb211c80319c"), BW_LS("tenant_id", "acme"),
           BW_LS("job_type", "echo"), BW_LS("status", "success"), BW_LI("latency_ms", i & 7));
}

static void one_job_metrics(int i)
{
    int t = bw_metrics_type("echo");
    bw_metrics_job_received(t);
    bw_metrics_set(BW_G_IN_FLIGHT, i & 3);
    bw_metrics_set(BW_G_QUEUED, 0);
    bw_metrics_job_finished(bw_metrics_type("echo"), 0, 150 + (uint64_t)(i & 63));
    bw_metrics_set(BW_G_IN_FLIGHT, 0);
    bw_metrics_set(BW_G_QUEUED, 0);
}

typedef enum { LOG_UNBATCHED, LOG_BATCHED, METRICS } what_t;

static double round_ns(what_t w)
{
    double t0 = thread_cpu_ns();
    for (int i = 0; i < N; i++) {
        if (w == METRICS) {
            one_job_metrics(i);
            continue;
        }
        one_log_line(i);
        if (w == LOG_BATCHED && (i & 15) == 15)
            bw_log_flush(); /* the loop flushes once per iteration; 16 jobs per iteration here */
    }
    bw_log_flush();
    return (thread_cpu_ns() - t0) / N;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median_ns(what_t w)
{
    double r[ROUNDS];
    bw_log_batch_thread(w == LOG_BATCHED);
    for (int i = 0; i < ROUNDS; i++)
        r[i] = round_ns(w);
    bw_log_batch_thread(false);
    qsort(r, ROUNDS, sizeof r[0], cmp);
    return r[ROUNDS / 2];
}

static void *drain_pipe(void *arg)
{
    char buf[65536];
    while (read(*(int *)arg, buf, sizeof buf) > 0)
        ;
    return NULL;
}

int main(void)
{
    static const char *const types[] = {"echo", "sleep", NULL};
    int fds[2];
    pthread_t th;
    bw_metrics_init(types);
    bw_log_setup(BW_LOG_INFO, true, "worker-6f1c2a9e-3b4d-4e5f-9a0b-1c2d3e4f5a6b");
    bw_log_set_fd(open("/dev/null", O_WRONLY));
    double null_unbatched = median_ns(LOG_UNBATCHED), null_batched = median_ns(LOG_BATCHED);
    if (pipe(fds) != 0 || pthread_create(&th, NULL, drain_pipe, &fds[0]) != 0)
        return 1;
    bw_log_set_fd(fds[1]);
    double pipe_unbatched = median_ns(LOG_UNBATCHED), pipe_batched = median_ns(LOG_BATCHED);
    close(fds[1]);
    pthread_join(th, NULL);
    printf("{\"log_line_ns\":{\"devnull_unbatched\":%.0f,\"devnull_batched\":%.0f,\"pipe_unbatched\":%.0f,"
           "\"pipe_batched\":%.0f},\"metrics_per_job_ns\":%.0f,\"jobs\":%d,\"rounds\":%d}\n",
           null_unbatched, null_batched, pipe_unbatched, pipe_batched, median_ns(METRICS), N, ROUNDS);
    return 0;
}
