/*
 * Unit tests for store/blobs.c on a temp dir, each behaviour with openat2 and with the openat walk used
 * where the kernel lacks it: path rules, round trips, overwrite and if_absent, links planted on the way
 * (to a file and to a directory outside the root), a directory swapped for a link while puts run, a
 * FIFO planted in the store (no thread may hang on it), listing (only the limit smallest paths kept while
 * walking: at the limit and past it), deleting, tenants kept apart.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <openssl/sha.h>

#include "store/blobs.h"
#include "testutil.h"

static char root[64], outside[64];
static bw_blobs_t *S;

static int setup(void **state)
{
    snprintf(root, sizeof root, "/tmp/bw-blobs.XXXXXX");
    snprintf(outside, sizeof outside, "/tmp/bw-outside.XXXXXX");
    if (mkdtemp(root) == NULL || mkdtemp(outside) == NULL)
        return -1;
    char err[200], sub[128];
    snprintf(sub, sizeof sub, "%s/store/deeper", root); /* created with its parents */
    S = bw_blobs_open(sub, true, err, sizeof err);
    return S != NULL ? 0 : -1;
}

static int teardown(void **state)
{
    bw_blobs_close(S);
    bw_test_rm_rf(root);
    bw_test_rm_rf(outside);
    return 0;
}

static int walk_mode(void **state)
{
    bw_blobs_force_walk(S, true);
    return 0;
}

static int openat2_mode(void **state)
{
    bw_blobs_force_walk(S, false);
    return 0;
}

static char *host_path(const char *tenant, const char *rel)
{
    static char p[512];
    snprintf(p, sizeof p, "%s/store/deeper/%s/%s", root, tenant, rel);
    return p;
}

static void put_ok(const char *tenant, const char *path, const char *text)
{
    bw_blob_info_t info;
    bw_blob_err_t e = {0};
    if (bw_blob_put(S, tenant, path, text, strlen(text), false, &info, &e) != 0)
        fail_msg("put %s: %s %s", path, e.code, e.message);
    assert_int_equal(info.size, strlen(text));
}

static void expect_text(const char *tenant, const char *path, const char *text)
{
    void *data = NULL;
    bw_blob_info_t info;
    bw_blob_err_t e = {0};
    if (bw_blob_get(S, tenant, path, UINT64_MAX, "", &data, &info, &e) != 0)
        fail_msg("get %s: %s %s", path, e.code, e.message);
    assert_int_equal(info.size, strlen(text));
    assert_memory_equal(data, text, strlen(text));
    free(data);
}

static void expect_code(int rc, const bw_blob_err_t *e, const char *code)
{
    assert_int_equal(rc, -1);
    if (e->code == NULL || strcmp(e->code, code) != 0)
        fail_msg("want %s, got %s: %s", code, e->code ? e->code : "(none)", e->message);
    assert_null(strstr(e->message, root)); /* never the host's path */
}

static void test_path_rules(void **state)
{
    static const char *const bad[] = {"",   "/etc/passwd", "a/../b",    "./a",         "a/./b",  "..", "a//b",
                                      "a/", "/a",          ".bw-tmp.x", "a/.bw-tmp.1", "a\x01z", NULL};
    for (int i = 0; bad[i] != NULL; i++)
        if (bw_blob_path_refusal(bad[i], strlen(bad[i])) == NULL)
            fail_msg("'%s' was accepted", bad[i]);
    assert_non_null(bw_blob_path_refusal("a\0b", 3));
    char longp[1100], comp[300], deep[200] = "";
    memset(longp, 'x', 1025);
    longp[1025] = '\0';
    assert_non_null(bw_blob_path_refusal(longp, 1025));
    memset(comp, 'y', 256);
    comp[256] = '\0';
    assert_non_null(bw_blob_path_refusal(comp, 256));
    for (int i = 0; i < 65; i++)
        strcat(deep, i ? "/d" : "d");
    assert_non_null(bw_blob_path_refusal(deep, strlen(deep)));
    static const char *const good[] = {"a",   "a/b/c.txt", "%2e%2e/x", "...",      "..a",
                                       "a..", ".hidden",   "é/ü",      "a b/c\\d", NULL};
    for (int i = 0; good[i] != NULL; i++)
        if (bw_blob_path_refusal(good[i], strlen(good[i])) != NULL)
            fail_msg("'%s' was refused: %s", good[i], bw_blob_path_refusal(good[i], strlen(good[i])));
}

static void test_round_trip(void **state)
{
    bw_blob_info_t info;
    bw_blob_err_t e = {0};
    put_ok("acme", "docs/2024/report.txt", "first");
    expect_text("acme", "docs/2024/report.txt", "first");
    put_ok("acme", "docs/2024/report.txt", "second, longer");
    expect_text("acme", "docs/2024/report.txt", "second, longer");
    expect_code(bw_blob_put(S, "acme", "docs/2024/report.txt", "x", 1, true, &info, &e), &e,
                "ALREADY_EXISTS");
    expect_text("acme", "docs/2024/report.txt", "second, longer");
    assert_int_equal(bw_blob_stat(S, "acme", "docs/2024/report.txt", &info, &e), 0);
    unsigned char md[32];
    char want[65];
    SHA256((const unsigned char *)"second, longer", 14, md);
    for (int i = 0; i < 32; i++)
        snprintf(want + 2 * i, 3, "%02x", md[i]);
    assert_string_equal(info.sha256, want);
    assert_int_equal(info.size, 14);
    /* binary, every byte value */
    unsigned char bin[256];
    for (int i = 0; i < 256; i++)
        bin[i] = (unsigned char)i;
    assert_int_equal(bw_blob_put(S, "acme", "bin", bin, sizeof bin, false, &info, &e), 0);
    void *data = NULL;
    assert_int_equal(bw_blob_get(S, "acme", "bin", UINT64_MAX, "", &data, &info, &e), 0);
    assert_memory_equal(data, bin, sizeof bin);
    free(data);
    /* the limit */
    expect_code(bw_blob_get(S, "acme", "bin", 100, "the limit is 100", &data, &info, &e), &e,
                "BLOB_TOO_LARGE");
    assert_non_null(strstr(e.message, "the limit is 100"));
    /* a blob where a directory is, and the other way round */
    expect_code(bw_blob_put(S, "acme", "docs", "x", 1, false, &info, &e), &e, "INVALID_PATH");
    expect_code(bw_blob_put(S, "acme", "bin/under", "x", 1, false, &info, &e), &e, "INVALID_PATH");
    expect_code(bw_blob_get(S, "acme", "docs", UINT64_MAX, "", &data, &info, &e), &e, "NOT_FOUND");
    expect_code(bw_blob_get(S, "acme", "nothing/here", UINT64_MAX, "", &data, &info, &e), &e, "NOT_FOUND");
    expect_code(bw_blob_get(S, "nobody", "x", UINT64_MAX, "", &data, &info, &e), &e, "NOT_FOUND");
    /* delete */
    bool deleted = false;
    assert_int_equal(bw_blob_delete(S, "acme", "bin", &deleted, &e), 0);
    assert_true(deleted);
    assert_int_equal(bw_blob_delete(S, "acme", "bin", &deleted, &e), 0);
    assert_false(deleted);
    assert_int_equal(bw_blob_delete(S, "nobody", "bin", &deleted, &e), 0);
    assert_false(deleted);
    expect_code(bw_blob_delete(S, "acme", "docs", &deleted, &e), &e, "INVALID_PATH");
}

static void test_links_are_never_followed(void **state)
{
    bw_blob_info_t info;
    bw_blob_err_t e = {0};
    void *data = NULL;
    bool deleted = false;
    char target[128], dir_target[128];
    put_ok("links", "real/file.txt", "inside");
    snprintf(target, sizeof target, "%s/secret.txt", outside);
    FILE *f = fopen(target, "w");
    fputs("outside secret", f);
    fclose(f);
    snprintf(dir_target, sizeof dir_target, "%s/dir", outside);
    mkdir(dir_target, 0755);
    unlink(host_path("links", "to-file"));
    unlink(host_path("links", "real/to-dir"));
    assert_int_equal(symlink(target, host_path("links", "to-file")), 0);
    assert_int_equal(symlink(dir_target, host_path("links", "real/to-dir")), 0);
    expect_code(bw_blob_get(S, "links", "to-file", UINT64_MAX, "", &data, &info, &e), &e, "INVALID_PATH");
    expect_code(bw_blob_stat(S, "links", "to-file", &info, &e), &e, "INVALID_PATH");
    expect_code(bw_blob_get(S, "links", "real/to-dir/x", UINT64_MAX, "", &data, &info, &e), &e,
                "INVALID_PATH");
    expect_code(bw_blob_put(S, "links", "real/to-dir/new.txt", "x", 1, false, &info, &e), &e, "INVALID_PATH");
    expect_code(bw_blob_put(S, "links", "real/to-dir/a/b.txt", "x", 1, false, &info, &e), &e, "INVALID_PATH");
    expect_code(bw_blob_delete(S, "links", "real/to-dir/x", &deleted, &e), &e, "INVALID_PATH");
    assert_int_equal(access(target, F_OK), 0);
    char probe[160];
    snprintf(probe, sizeof probe, "%s/new.txt", dir_target);
    assert_int_not_equal(access(probe, F_OK), 0);
    snprintf(probe, sizeof probe, "%s/a", dir_target);
    assert_int_not_equal(access(probe, F_OK), 0);
    /* deleting the link itself: refused, the target stays */
    expect_code(bw_blob_delete(S, "links", "to-file", &deleted, &e), &e, "INVALID_PATH");
    assert_int_equal(access(target, F_OK), 0);
    /* a put onto the link: refused (plain and if_absent), the link left as it is, nothing written through */
    expect_code(bw_blob_put(S, "links", "to-file", "mine", 4, false, &info, &e), &e, "INVALID_PATH");
    expect_code(bw_blob_put(S, "links", "to-file", "mine", 4, true, &info, &e), &e, "INVALID_PATH");
    struct stat lst;
    assert_int_equal(lstat(host_path("links", "to-file"), &lst), 0);
    assert_true(S_ISLNK(lst.st_mode));
    f = fopen(target, "r");
    char buf[64] = "";
    assert_non_null(fgets(buf, sizeof buf, f));
    fclose(f);
    assert_string_equal(buf, "outside secret");
    /* a FIFO planted in the store: refused without blocking */
    assert_int_equal(mkfifo(host_path("links", "fifo"), 0644), 0);
    expect_code(bw_blob_get(S, "links", "fifo", UINT64_MAX, "", &data, &info, &e), &e, "NOT_FOUND");
    /* and a put onto it does not replace it (nor opens it), plainly or with if_absent */
    expect_code(bw_blob_put(S, "links", "fifo", "x", 1, false, &info, &e), &e, "INVALID_PATH");
    assert_non_null(strstr(e.message, "a FIFO"));
    expect_code(bw_blob_put(S, "links", "fifo", "x", 1, true, &info, &e), &e, "INVALID_PATH");
    assert_int_equal(lstat(host_path("links", "fifo"), &lst), 0);
    assert_true(S_ISFIFO(lst.st_mode));
    /* the listing shows neither links nor the FIFO, and does not follow the directory link */
    json_t *entries = NULL;
    bool truncated = true;
    assert_int_equal(bw_blob_list(S, "links", "", 100, &entries, &truncated, &e), 0);
    char *s = json_dumps(entries, JSON_COMPACT);
    assert_null(strstr(s, "to-dir"));
    assert_null(strstr(s, "fifo"));
    assert_non_null(strstr(s, "\"real/file.txt\""));
    assert_null(strstr(s, "to-file"));
    free(s);
    json_decref(entries);
    unlink(host_path("links", "fifo"));
    unlink(host_path("links", "real/to-dir"));
}

/* Another thread keeps swapping a directory of the path for a link to a directory outside while puts
   run: no put ever writes outside. */
static atomic_int stop_swapping, pause_swapping, swapper_paused;

static void *swapper(void *arg)
{
    char dir[512], side[512], link_to[160];
    snprintf(dir, sizeof dir, "%s", host_path("race", "d"));
    snprintf(side, sizeof side, "%s", host_path("race", "d-real"));
    snprintf(link_to, sizeof link_to, "%s/escape", outside);
    mkdir(link_to, 0755);
    while (!atomic_load(&stop_swapping)) {
        if (atomic_load(&pause_swapping)) { /* the directory is itself here: the test puts for sure */
            atomic_store(&swapper_paused, 1);
            while (atomic_load(&pause_swapping) && !atomic_load(&stop_swapping))
                sched_yield();
            atomic_store(&swapper_paused, 0);
            continue;
        }
        rename(dir, side);
        symlink(link_to, dir);
        unlink(dir);
        rename(side, dir);
    }
    return NULL;
}

static void test_directory_swapped_for_a_link(void **state)
{
    bw_blob_info_t info;
    bw_blob_err_t e = {0};
    put_ok("race", "d/seed", "x");
    pthread_t t;
    atomic_store(&stop_swapping, 0);
    pthread_create(&t, NULL, swapper, NULL);
    int ok = 0, refused = 0, paused_ok = 0;
    for (int i = 0; i < 3000; i++) {
        char name[32];
        snprintf(name, sizeof name, "d/f%d", i % 50);
        if (bw_blob_put(S, "race", name, "payload", 7, false, &info, &e) == 0)
            ok++;
        else
            refused++;
        if (i % 300 == 299) { /* a put between swaps always lands, however the threads are scheduled */
            atomic_store(&pause_swapping, 1);
            while (!atomic_load(&swapper_paused))
                sched_yield();
            paused_ok += bw_blob_put(S, "race", "d/between", "payload", 7, false, &info, &e) == 0;
            atomic_store(&pause_swapping, 0);
            while (atomic_load(&swapper_paused))
                sched_yield();
        }
    }
    atomic_store(&stop_swapping, 1);
    pthread_join(t, NULL);
    char esc[160];
    snprintf(esc, sizeof esc, "%s/escape", outside);
    DIR *d = opendir(esc);
    assert_non_null(d);
    int n = 0;
    for (struct dirent *de; (de = readdir(d)) != NULL;)
        n += strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0;
    closedir(d);
    assert_int_equal(n, 0); /* nothing ever landed outside */
    assert_int_equal(ok + refused, 3000);
    assert_int_equal(paused_ok, 10);
}

static void test_list_and_tenants(void **state)
{
    bw_blob_err_t e = {0};
    put_ok("lister", "reports/2024-01.csv", "a");
    put_ok("lister", "reports/2024-02.csv", "bb");
    put_ok("lister", "reports/2023.csv", "ccc");
    put_ok("lister", "reports/old/2022.csv", "dddd");
    put_ok("lister", "zeta", "e");
    put_ok("other/../tenant", "mine", "f");
    json_t *entries = NULL;
    bool truncated = false;
    assert_int_equal(bw_blob_list(S, "lister", "reports/2024-", 100, &entries, &truncated, &e), 0);
    assert_int_equal(json_array_size(entries), 2);
    assert_string_equal(json_string_value(json_object_get(json_array_get(entries, 0), "path")),
                        "reports/2024-01.csv");
    assert_false(truncated);
    json_decref(entries);
    assert_int_equal(bw_blob_list(S, "lister", "reports/", 100, &entries, &truncated, &e), 0);
    assert_int_equal(json_array_size(entries), 4);
    assert_string_equal(json_string_value(json_object_get(json_array_get(entries, 3), "path")),
                        "reports/old/2022.csv");
    json_decref(entries);
    assert_int_equal(bw_blob_list(S, "lister", "", 2, &entries, &truncated, &e), 0);
    assert_int_equal(json_array_size(entries), 2);
    assert_true(truncated);
    json_decref(entries);
    assert_int_equal(bw_blob_list(S, "lister", "missing/dir/x", 10, &entries, &truncated, &e), 0);
    assert_int_equal(json_array_size(entries), 0);
    json_decref(entries);
    /* tenants apart: the odd tenant id is one safe directory of its own, nothing outside the root */
    void *data = NULL;
    bw_blob_info_t info;
    expect_code(bw_blob_get(S, "lister", "mine", UINT64_MAX, "", &data, &info, &e), &e, "NOT_FOUND");
    expect_text("other/../tenant", "mine", "f");
    assert_int_equal(access(host_path("other%2F..%2Ftenant", "mine"), F_OK), 0);
    assert_int_equal(bw_blob_list(S, "other", "", 10, &entries, &truncated, &e), 0);
    assert_int_equal(json_array_size(entries), 0);
    json_decref(entries);
}

static int by_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* A listing keeps only the limit smallest paths while it walks (never every match): the entries are
   the first limit paths in order, whatever order the directory gives them in; at the limit (as many
   matches as the limit) nothing is cut, one past it is truncated. */
static void test_list_keeps_the_smallest(void **state)
{
    enum { N = 3000 };
    char *want[N];
    put_ok("many", "seed", "x"); /* creates the tenant's directory */
    for (int k = 0; k < N; k++) {
        int i = (int)((unsigned)k * 1103u % N); /* every i once, not in order (1103 is prime to 3000) */
        char rel[64];
        snprintf(rel, sizeof rel, "m/d%d/f%05d", i % 7, (i * 7919) % 100003);
        want[k] = strdup(rel);
        char full[512];
        mkdir(host_path("many", "m"), 0700);
        snprintf(full, sizeof full, "%s", host_path("many", rel));
        char *slash = strrchr(full, '/');
        *slash = '\0';
        mkdir(full, 0700);
        *slash = '/';
        FILE *f = fopen(full, "w");
        assert_non_null(f);
        fclose(f);
    }
    qsort(want, N, sizeof *want, by_str);
    const size_t limits[] = {1, 10, N - 1, N, N + 1, 10000};
    for (size_t t = 0; t < sizeof limits / sizeof *limits; t++) {
        json_t *entries = NULL;
        bool truncated = false;
        bw_blob_err_t e = {0};
        assert_int_equal(bw_blob_list(S, "many", "m/", limits[t], &entries, &truncated, &e), 0);
        size_t n = limits[t] < N ? limits[t] : N;
        assert_int_equal(json_array_size(entries), n);
        assert_int_equal(truncated, limits[t] < N);
        for (size_t i = 0; i < n; i++)
            assert_string_equal(json_string_value(json_object_get(json_array_get(entries, i), "path")),
                                want[i]);
        json_decref(entries);
    }
    for (int k = 0; k < N; k++)
        free(want[k]);
}

/* What a crash left: temporary files older than the age are removed, younger ones (a put running in
   another worker sharing the store) are kept. */
static void test_sweep(void **state)
{
    put_ok("sweep", "dir/blob", "kept");
    char old[512], young[512];
    snprintf(old, sizeof old, "%s", host_path("sweep", "dir/.bw-tmp.0123456789abcdef"));
    snprintf(young, sizeof young, "%s", host_path("sweep", ".bw-tmp.fedcba9876543210"));
    FILE *f = fopen(old, "w");
    fputs("partial", f);
    fclose(f);
    f = fopen(young, "w");
    fputs("partial", f);
    fclose(f);
    struct timespec t[2] = {{.tv_sec = time(NULL) - 3600}, {.tv_sec = time(NULL) - 3600}};
    assert_int_equal(utimensat(AT_FDCWD, old, t, 0), 0);
    assert_int_equal(bw_blobs_sweep(S, 600), 1);
    assert_int_not_equal(access(old, F_OK), 0);
    assert_int_equal(access(young, F_OK), 0);
    expect_text("sweep", "dir/blob", "kept");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_path_rules),
        cmocka_unit_test_setup(test_round_trip, openat2_mode),
        cmocka_unit_test_setup(test_links_are_never_followed, openat2_mode),
        cmocka_unit_test_setup(test_directory_swapped_for_a_link, openat2_mode),
        cmocka_unit_test_setup(test_list_and_tenants, openat2_mode),
        cmocka_unit_test_setup(test_list_keeps_the_smallest, openat2_mode),
        cmocka_unit_test(test_sweep),
        cmocka_unit_test_setup(test_round_trip, walk_mode),
        cmocka_unit_test_setup(test_links_are_never_followed, walk_mode),
        cmocka_unit_test_setup(test_directory_swapped_for_a_link, walk_mode),
    };
    return cmocka_run_group_tests_name("blobs", tests, setup, teardown);
}
