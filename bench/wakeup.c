/*
 * bw-wakeup: the machine's own latency floor, with no NATS and no worker involved. Every job in the
 * echo benchmark needs several sleeping threads (generator, nats-server, target) to wake up in turn;
 * this measures how late one wake-up is here:
 *   - timer: a thread sleeps 200 us (clock_nanosleep) and records how much later than asked it runs;
 *   - handoff: one thread writes a byte into a pipe, another blocked in read(2) wakes up; the figure is
 *     half the round trip of a ping-pong between the two (one cross-thread wake-up).
 * Prints one JSON line with p50/p99/p99.9/max in microseconds. Usage: bw-wakeup [samples] (20000).
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static int ping[2], pong[2];

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static void print_pcts(const char *name, uint64_t *v, size_t n, const char *sep)
{
    qsort(v, n, sizeof *v, cmp_u64);
    printf("\"%s\":{\"p50\":%.1f,\"p99\":%.1f,\"p999\":%.1f,\"max\":%.1f}%s", name, v[n / 2] / 1e3,
           v[n * 99 / 100] / 1e3, v[n * 999 / 1000] / 1e3, v[n - 1] / 1e3, sep);
}

static void *echo_thread(void *arg)
{
    char c;
    while (read(ping[0], &c, 1) == 1 && c != 'q')
        if (write(pong[1], &c, 1) != 1)
            break;
    return NULL;
}

int main(int argc, char **argv)
{
    size_t n = argc > 1 ? (size_t)strtoul(argv[1], NULL, 10) : 20000;
    uint64_t *timer = calloc(n, sizeof *timer), *handoff = calloc(n, sizeof *handoff);
    pthread_t t;
    char c = 'x';
    if (n < 1000 || timer == NULL || handoff == NULL || pipe(ping) != 0 || pipe(pong) != 0)
        return 2;
    for (size_t i = 0; i < n; i++) {
        struct timespec d = {0, 200000};
        uint64_t t0 = now_ns();
        clock_nanosleep(CLOCK_MONOTONIC, 0, &d, NULL);
        timer[i] = now_ns() - t0 - 200000;
    }
    pthread_create(&t, NULL, echo_thread, NULL);
    for (size_t i = 0; i < n; i++) {
        uint64_t t0 = now_ns();
        if (write(ping[1], &c, 1) != 1 || read(pong[0], &c, 1) != 1)
            return 1;
        handoff[i] = (now_ns() - t0) / 2;
        usleep(100); /* let both threads go idle, as between jobs at a few thousand per second */
    }
    c = 'q';
    if (write(ping[1], &c, 1) != 1)
        return 1;
    pthread_join(t, NULL);
    printf("{\"samples\":%zu,\"unit\":\"us\",", n);
    print_pcts("timer_overshoot", timer, n, ",");
    print_pcts("thread_wakeup", handoff, n, "}\n");
    free(timer);
    free(handoff);
    return 0;
}
