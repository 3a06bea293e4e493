/*
 * bw-jmespath-bench: per-case timing of src/jmespath on the compliance suite's benchmark file
 * (tests/fixtures/jmespath/benchmarks.json; every suite file with --all), for bench/run-jmespath.sh,
 * which compares it with Python's reference implementation (bench/jmespath_bench.py).
 *
 * Two figures per case, each the best of REPS repetitions of a loop that runs long enough
 * (MIN_REP_NS) for the clock to be irrelevant:
 * - eval: the compiled expression reused, as a worker with an expression cache does;
 * - full: compile, evaluate and destroy every time (a cache miss).
 * Cases that expect an error are skipped. Output: one JSON object per line,
 * {"file", "case", "expression" (first 80 characters), "bench", "ns_per_op_eval", "ns_per_op_full"};
 * "case" counts the file's cases in order, over all its groups, from 0.
 *
 * Usage: bw-jmespath-bench [--all] [suite_dir]
 */
#include <dirent.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "jmespath/jmespath.h"

#define REPS 5
#define MIN_REP_NS 50000000ull /* 50 ms */
#define EXPR_SHOWN 80          /* characters of the expression printed */

typedef struct {
    const char *expr;
    size_t len;
    json_t *data;
    const bw_jmespath_expr_t *compiled; /* for eval */
} bench_case_t;

typedef void (*op_fn)(const bench_case_t *bc);

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void op_eval(const bench_case_t *bc)
{
    json_t *r = NULL;
    if (bw_jmespath_eval(bc->compiled, bc->data, &r, NULL) != 0) {
        fprintf(stderr, "bw-jmespath-bench: %s: evaluation failed\n", bc->expr);
        exit(1);
    }
    json_decref(r);
}

static void op_full(const bench_case_t *bc)
{
    bw_jmespath_expr_t *e = NULL;
    json_t *r = NULL;
    if (bw_jmespath_compile(bc->expr, bc->len, &e, NULL) != 0 ||
        bw_jmespath_eval(e, bc->data, &r, NULL) != 0) {
        fprintf(stderr, "bw-jmespath-bench: %s: failed\n", bc->expr);
        exit(1);
    }
    json_decref(r);
    bw_jmespath_destroy(e);
}

/* Nanoseconds of one repetition of iters calls. */
static uint64_t rep_ns(op_fn op, const bench_case_t *bc, uint64_t iters)
{
    uint64_t t0 = now_ns();
    for (uint64_t i = 0; i < iters; i++)
        op(bc);
    return now_ns() - t0;
}

/* Best ns per call: iterations doubled until one repetition lasts MIN_REP_NS, then REPS more. */
static double best_ns_per_op(op_fn op, const bench_case_t *bc)
{
    uint64_t iters = 1, ns;
    while ((ns = rep_ns(op, bc, iters)) < MIN_REP_NS)
        iters *= 2;
    double best = (double)ns / (double)iters;
    for (int r = 0; r < REPS; r++) {
        double x = (double)rep_ns(op, bc, iters) / (double)iters;
        best = x < best ? x : best;
    }
    return best;
}

/* The first EXPR_SHOWN code points of s[0..n). */
static json_t *shown(const char *s, size_t n)
{
    size_t i = 0, chars = 0;
    while (i < n && chars < EXPR_SHOWN) {
        i++;
        while (i < n && ((unsigned char)s[i] & 0xC0) == 0x80)
            i++;
        chars++;
    }
    return json_stringn(s, i);
}

static int bench_one(const char *file, size_t index, const json_t *c, json_t *given)
{
    bench_case_t bc = {.data = given};
    bw_jmespath_expr_t *e = NULL;
    const json_t *x = json_object_get(c, "expression");
    bc.expr = json_string_value(x);
    bc.len = json_string_length(x);
    if (bw_jmespath_compile(bc.expr, bc.len, &e, NULL) != 0) {
        fprintf(stderr, "bw-jmespath-bench: %s case %zu does not compile\n", file, index);
        return -1;
    }
    bc.compiled = e;
    json_t *line = json_pack("{ss sI so ss? sf sf}", "file", file, "case", (json_int_t)index, "expression",
                             shown(bc.expr, bc.len), "bench", json_string_value(json_object_get(c, "bench")),
                             "ns_per_op_eval", best_ns_per_op(op_eval, &bc), "ns_per_op_full",
                             best_ns_per_op(op_full, &bc));
    char *text = json_dumps(line, JSON_COMPACT | JSON_REAL_PRECISION(6));
    printf("%s\n", text);
    fflush(stdout);
    free(text);
    json_decref(line);
    bw_jmespath_destroy(e);
    return 0;
}

static int bench_file(const char *dir, const char *file)
{
    char path[4096];
    json_error_t jerr;
    snprintf(path, sizeof path, "%s/%s", dir, file);
    json_t *groups = json_load_file(path, 0, &jerr), *group, *c;
    size_t gi, ci, index = 0;
    int rc = 0;
    if (!json_is_array(groups)) {
        fprintf(stderr, "bw-jmespath-bench: cannot load %s: %s\n", path, jerr.text);
        return -1;
    }
    json_array_foreach(groups, gi, group)
    {
        json_array_foreach(json_object_get(group, "cases"), ci, c)
        {
            if (json_object_get(c, "error") == NULL &&
                bench_one(file, index, c, json_object_get(group, "given")))
                rc = -1;
            index++;
        }
    }
    json_decref(groups);
    return rc;
}

static int by_name(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Every *.json of dir, in name order. */
static int bench_all(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *de;
    char **names = NULL;
    size_t n = 0;
    int rc = 0;
    if (d == NULL) {
        fprintf(stderr, "bw-jmespath-bench: cannot open %s\n", dir);
        return -1;
    }
    while ((de = readdir(d)) != NULL) {
        size_t len = strlen(de->d_name);
        if (len > 5 && strcmp(de->d_name + len - 5, ".json") == 0) {
            names = realloc(names, (n + 1) * sizeof *names);
            names[n++] = strdup(de->d_name);
        }
    }
    closedir(d);
    qsort(names, n, sizeof *names, by_name);
    for (size_t i = 0; i < n; i++) {
        rc |= bench_file(dir, names[i]);
        free(names[i]);
    }
    free(names);
    return rc;
}

int main(int argc, char **argv)
{
    bool all = false;
    const char *dir = BW_JMESPATH_SUITE_DIR;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--all") == 0)
            all = true;
        else
            dir = argv[i];
    }
    int rc = all ? bench_all(dir) : bench_file(dir, "benchmarks.json");
    return rc == 0 ? 0 : 1;
}
