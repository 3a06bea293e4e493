/*
 * bw-js-cost: what isolating a javascript job costs, layer by layer, on the project's own code
 * (docs/benchmarks.md, "JavaScript"). One script, the small transform; each figure is the
 * median of ROUNDS rounds:
 *   engine       bw_jsengine_run_frame in this process: the hardened realm, request text in, answer
 *                text out (parse, args, eval, output, the realm's clean-up): CPU µs per job
 *   fresh realm  what a new global context per job costs instead: create, set args, evaluate, release,
 *                straight on the JavaScriptCore API: CPU µs per job
 *   hardening    creating an engine and its hardened realm: ms (once per sandbox, and per 10,000 jobs)
 *   process      the same requests through a `beamline-worker js-sandbox` child over its pipes, with 1
 *                and with 2 requests in the child's pipe (the pool holds a second one behind a young
 *                job): wall µs per job, and CPU µs per job of each side
 *
 * Usage: bw-js-cost [path to beamline-worker] (default: ./beamline-worker next to this binary).
 */
#include <JavaScriptCore/JavaScript.h>
#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "js/jsengine.h"
#include "util/buf.h"

#define ROUNDS 5
#define JOBS 5000
#define CODE "args.items.map(i => i.p * i.q).reduce((a, b) => a + b, 0)"
#define ARGS "{\"items\":[{\"p\":2,\"q\":3},{\"p\":4,\"q\":5}],\"n\":1}"

static const char request[] = "{\"id\":1,\"code\":\"" CODE "\",\"args\":" ARGS
                              ",\"timeout_ms\":5000,\"max_output_bytes\":1048576,\"max_logs\":100,"
                              "\"max_log_bytes\":65536}";

static double cpu_us(int who)
{
    struct rusage u;
    getrusage(who, &u);
    return (double)(u.ru_utime.tv_sec + u.ru_stime.tv_sec) * 1e6 +
           (double)(u.ru_utime.tv_usec + u.ru_stime.tv_usec);
}

static double wall_us(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e6 + (double)t.tv_nsec / 1e3;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp);
    return v[n / 2];
}

static void check_answer(const char *text, size_t len)
{
    if (len == 0 || memmem(text, len, "\"output\":26", 11) == NULL) {
        fprintf(stderr, "bw-js-cost: unexpected answer: %.*s\n", (int)len, text);
        exit(1);
    }
}

static double engine_round(bw_jsengine_t *e)
{
    bw_buf_t out;
    bw_buf_init(&out, 512);
    double c0 = cpu_us(RUSAGE_SELF);
    for (int i = 0; i < JOBS; i++) {
        out.len = 0;
        bw_jsengine_run_frame(e, request, sizeof request - 1, &out, NULL, NULL);
    }
    double c1 = cpu_us(RUSAGE_SELF);
    check_answer(out.p, out.len);
    bw_buf_dispose(&out);
    return (c1 - c0) / JOBS;
}

static double fresh_round(JSContextGroupRef g)
{
    JSStringRef code = JSStringCreateWithUTF8CString(CODE), args = JSStringCreateWithUTF8CString(ARGS),
                name = JSStringCreateWithUTF8CString("args");
    double c0 = cpu_us(RUSAGE_SELF);
    for (int i = 0; i < JOBS; i++) {
        JSGlobalContextRef ctx = JSGlobalContextCreateInGroup(g, NULL);
        JSObjectSetProperty(ctx, JSContextGetGlobalObject(ctx), name, JSValueMakeFromJSONString(ctx, args),
                            kJSPropertyAttributeNone, NULL);
        JSValueRef v = JSEvaluateScript(ctx, code, NULL, NULL, 1, NULL);
        if (v == NULL || JSValueToNumber(ctx, v, NULL) != 26) {
            fprintf(stderr, "bw-js-cost: the fresh-realm run went wrong\n");
            exit(1);
        }
        JSGlobalContextRelease(ctx);
    }
    double c1 = cpu_us(RUSAGE_SELF);
    JSStringRelease(code);
    JSStringRelease(args);
    JSStringRelease(name);
    return (c1 - c0) / JOBS;
}

static int read_full(int fd, char *p, size_t n)
{
    while (n > 0) {
        ssize_t r = read(fd, p, n);
        if (r <= 0) {
            if (r < 0 && errno == EINTR)
                continue;
            return -1;
        }
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

static int write_full(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t r = write(fd, p, n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return -1;
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

/* CPU µs of a live child so far (utime + stime from /proc). */
static double child_cpu_us(pid_t pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return 0;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *p = strrchr(buf, ')');
    unsigned long ut = 0, st = 0;
    if (p == NULL || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2)
        return 0;
    return (double)(ut + st) * 1e6 / (double)sysconf(_SC_CLK_TCK);
}

/* Runs the process rounds with depth requests in the child's pipe; fills wall, parent and child (µs per
   job, medians). */
static void process_rounds(const char *exe, int depth, double *wall, double *parent, double *child)
{
    int to[2], from[2];
    if (pipe(to) != 0 || pipe(from) != 0) {
        perror("pipe");
        exit(1);
    }
    pid_t pid = fork();
    if (pid == 0) {
        dup2(to[0], 0);
        dup2(from[1], 1);
        close(to[1]);
        close(from[0]);
        setenv("BW_SANDBOX_MAX_RSS_MB", "256", 1);
        execl(exe, exe, "js-sandbox", (char *)NULL);
        perror("exec");
        _exit(127);
    }
    close(to[0]);
    close(from[1]);
    unsigned char hdr[4];
    size_t n = sizeof request - 1;
    for (int i = 0; i < 4; i++)
        hdr[i] = (unsigned char)(n >> (8 * i));
    char *frame = malloc(4 + n), answer[4096];
    memcpy(frame, hdr, 4);
    memcpy(frame + 4, request, n);
    double w[ROUNDS], p[ROUNDS], c[ROUNDS];
    for (int r = -1; r < ROUNDS; r++) { /* round -1 warms up */
        double w0 = wall_us(), p0 = cpu_us(RUSAGE_SELF), c0 = child_cpu_us(pid);
        for (int k = 1; k < depth; k++)
            if (write_full(to[1], frame, 4 + n) != 0)
                exit(1);
        for (int i = 0; i < JOBS; i++) {
            uint32_t len;
            /* keeps depth requests sent ahead until the round's last ones */
            bool send = i + depth - 1 < JOBS;
            if ((send && write_full(to[1], frame, 4 + n) != 0) || read_full(from[0], (char *)hdr, 4) != 0) {
                fprintf(stderr, "bw-js-cost: the sandbox went away\n");
                exit(1);
            }
            len = (uint32_t)hdr[0] | (uint32_t)hdr[1] << 8 | (uint32_t)hdr[2] << 16 | (uint32_t)hdr[3] << 24;
            if (len >= sizeof answer || read_full(from[0], answer, len) != 0) {
                fprintf(stderr, "bw-js-cost: bad answer frame\n");
                exit(1);
            }
            if (i == JOBS - 1)
                check_answer(answer, len);
        }
        if (r >= 0) {
            w[r] = (wall_us() - w0) / JOBS;
            p[r] = (cpu_us(RUSAGE_SELF) - p0) / JOBS;
            c[r] = (child_cpu_us(pid) - c0) / JOBS;
        }
    }
    close(to[1]);
    close(from[0]);
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    free(frame);
    *wall = median(w, ROUNDS);
    *parent = median(p, ROUNDS);
    *child = median(c, ROUNDS);
}

int main(int argc, char **argv)
{
    char exe[4096];
    if (argc > 1) {
        snprintf(exe, sizeof exe, "%s", argv[1]);
    } else {
        ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 32);
        char *slash = n > 0 ? memrchr(exe, '/', (size_t)n) : NULL;
        if (slash == NULL) {
            fprintf(stderr, "bw-js-cost: give the path of beamline-worker\n");
            return 2;
        }
        strcpy(slash + 1, "beamline-worker");
    }
    double eng[ROUNDS], fresh[ROUNDS], hard[ROUNDS * 2];
    for (int i = 0; i < ROUNDS * 2; i++) {
        double w0 = wall_us();
        bw_jsengine_t *e = bw_jsengine_create();
        hard[i] = (wall_us() - w0) / 1000;
        if (e == NULL)
            return 1;
        bw_jsengine_destroy(e);
    }
    bw_jsengine_t *e = bw_jsengine_create();
    engine_round(e); /* warm-up */
    for (int r = 0; r < ROUNDS; r++)
        eng[r] = engine_round(e);
    bw_jsengine_destroy(e);
    JSContextGroupRef g = JSContextGroupCreate();
    fresh_round(g);
    for (int r = 0; r < ROUNDS; r++)
        fresh[r] = fresh_round(g);
    JSContextGroupRelease(g);
    double wall[2], parent[2], child[2];
    for (int d = 0; d < 2; d++)
        process_rounds(exe, d + 1, &wall[d], &parent[d], &child[d]);
    printf("{\"jobs_per_round\":%d,\"rounds\":%d,\"engine_cpu_us\":%.1f,\"fresh_realm_cpu_us\":%.1f,"
           "\"hardening_ms\":%.1f,\"process_wall_us\":[%.1f,%.1f],\"process_parent_cpu_us\":[%.1f,%.1f],"
           "\"process_child_cpu_us\":[%.1f,%.1f]}\n",
           JOBS, ROUNDS, median(eng, ROUNDS), median(fresh, ROUNDS), median(hard, ROUNDS * 2), wall[0],
           wall[1], parent[0], parent[1], child[0], child[1]);
    return 0;
}
