/*
 * Integration: the fs_blob_put/get/stat/list/delete job types through a real nats-server and the worker
 * binary, with FS_BASE_DIR a fresh temporary directory that the test also inspects on disk.
 *
 * Round trips of text (UTF-8) and binary blobs with the SHA-256 computed here, empty blobs, stat's RFC 3339
 * time, overwrite and if_absent, delete (twice) and what is left on disk. Listing: nested directories,
 * prefixes (of names and of directories), order, limit and truncated, missing directories. Refusals: every
 * path rule (INVALID_PATH) with its accepted boundary (1024 bytes, 255-byte names, 64 components), "%2e%2e"
 * taken literally, a NUL ("\u0000": INVALID_PATH, and bytes a put may store; INVALID_PAYLOAD for a job type
 * that does not take it), the payload
 * codes and BLOB_TOO_LARGE; no error message names the host's path. Symbolic links planted in the store
 * (to a file and a directory outside, relative, dangling, looping, as a tenant's directory) and a FIFO:
 * nothing is read, written, deleted or listed through them, and a put onto a link neither follows nor
 * replaces it. Tenants: isolation, hostile tenant ids ("../", "/",
 * absolute, "%2F") each in a directory of its own under the root, long ids. Concurrency: 20 puts of
 * 256 KiB to one path with gets in between (a reader sees one blob whole, never a mix), racing if_absent
 * puts (exactly one wins). A worker SIGKILLed around a large put (before, during or after the write):
 * the target is absent or whole, leftovers are only hidden temporary files that a new worker does not list.
 * Special files where a put's blob goes (a FIFO, a unix socket, a device node when mknod is allowed, a
 * directory): refused, left as they were. Shutdown (SHUTDOWN_TIMEOUT_MS=0) while puts and jmespath
 * evaluations still run on the thread pool, ten rounds: the worker exits 0, clean under ASan (the store used
 * to be closed under the running puts: heap-use-after-free).
 * With FS_TENANT_ISOLATION=false and FS_MAX_BLOB_BYTES=1KiB: the shared root and the size limit.
 */
#include <dirent.h>
#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <openssl/evp.h>

#include "harness.h"
#include "testutil.h"

#define T "acme" /* the tenant of most jobs */

static bw_harness_t H, K;  /* K: the harness of a worker that gets killed */
static char tmp[64];       /* the test's directory: FS_BASE_DIR and "outside" below it */
static char root[128];     /* FS_BASE_DIR; the worker creates it on first use */
static char outside[128];  /* files and directories that no job may reach */
static char root_env[160]; /* "FS_BASE_DIR=..." */
static int seq;

/* ---- set-up ---- */

static int make_dirs(void)
{
    snprintf(tmp, sizeof tmp, "/tmp/bw-fsblob.XXXXXX");
    if (mkdtemp(tmp) == NULL)
        return -1;
    snprintf(root, sizeof root, "%s/store/blobs", tmp); /* two levels the worker must create */
    snprintf(outside, sizeof outside, "%s/outside", tmp);
    snprintf(root_env, sizeof root_env, "FS_BASE_DIR=%s", root);
    return mkdir(outside, 0700);
}

static int setup(void **state)
{
    const char *const env[] = {root_env, "WORKER_MAX_CONCURRENCY=16", NULL};
    return make_dirs() != 0 ? -1 : bw_harness_start(&H, env);
}

static int setup_small(void **state)
{
    const char *const env[] = {root_env, "FS_MAX_BLOB_BYTES=1KiB", "FS_TENANT_ISOLATION=false", NULL};
    return make_dirs() != 0 ? -1 : bw_harness_start(&H, env);
}

static int setup_dirs_only(void **state)
{
    return make_dirs();
}

static int teardown(void **state)
{
    int rc = bw_harness_finish(&H, 0);
    bw_test_rm_rf(tmp);
    return rc;
}

/* After the kill test, which starts its harnesses itself (and leaves none running unless it failed). */
static int teardown_kill(void **state)
{
    if (K.client != NULL)
        bw_harness_stop(&K, 1);
    int rc = H.client != NULL ? bw_harness_finish(&H, 0) : 0;
    return bw_test_rm_rf(tmp) != 0 ? -1 : rc;
}

/* ---- bytes ---- */

static void sha256_hex(const void *data, size_t len, char out[65])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned n = 0;
    assert_int_equal(EVP_Digest(data, len, md, &n, EVP_sha256(), NULL), 1);
    assert_int_equal(n, 32);
    for (unsigned i = 0; i < n; i++)
        snprintf(out + 2 * i, 3, "%02x", md[i]);
}

static char *b64_encode(const void *data, size_t len)
{
    char *out = malloc((len + 2) / 3 * 4 + 1);
    assert_non_null(out);
    EVP_EncodeBlock((unsigned char *)out, data, (int)len);
    return out;
}

/* Decodes padded base64 (malloc'd, *len bytes); fails the test on bad input. */
static unsigned char *b64_decode(const char *s, size_t *len)
{
    size_t n = strlen(s);
    unsigned char *out = malloc(n / 4 * 3 + 1);
    assert_non_null(out);
    int got = EVP_DecodeBlock(out, (const unsigned char *)s, (int)n);
    assert_true(got >= 0 && n % 4 == 0);
    size_t pad = n >= 1 && s[n - 1] == '=' ? (n >= 2 && s[n - 2] == '=' ? 2 : 1) : 0;
    *len = (size_t)got - pad;
    return out;
}

/* n bytes all equal to v (malloc'd). */
static unsigned char *filled(unsigned char v, size_t n)
{
    unsigned char *p = malloc(n + 1);
    assert_non_null(p);
    memset(p, v, n);
    return p;
}

static bool all_equal(const unsigned char *p, size_t n, unsigned char v)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] != v)
            return false;
    return true;
}

/* ---- jobs ---- */

/* Publishes one job as tenant (in the body and the header, as the router sends it). */
static void submit_on(bw_harness_t *h, const char *id, const char *tenant, const char *type, json_t *payload)
{
    json_t *a = json_pack("{s:s,s:s,s:s,s:s,s:s,s:{s:s,s:o},s:{s:s},s:{s:i}}", "version", "1",
                          "assignment_id", id, "request_id", id, "tenant_id", tenant, "trace_id",
                          "0af7651916cd43dd8448eb211c80319c", "job", "type", type, "payload", payload,
                          "executor", "provider_id", "test-provider", "options", "deadline_ms", 60000);
    assert_non_null(a);
    char *s = json_dumps(a, JSON_COMPACT);
    assert_non_null(s);
    const char *const hdrs[] = {"tenant_id", tenant, "version", "1", NULL};
    assert_int_equal(bw_harness_publish_raw(h, s, hdrs), 0);
    free(s);
    json_decref(a);
}

/* Runs one job (payload stolen) and returns its result (caller decrefs). */
static json_t *run_on(bw_harness_t *h, const char *tenant, const char *type, json_t *payload)
{
    char id[48];
    snprintf(id, sizeof id, "fs-%d", ++seq);
    submit_on(h, id, tenant, type, payload);
    json_t *r = bw_harness_result(h, id, 60000);
    if (r == NULL)
        fail_msg("no result for %s (%s as %s)", id, type, tenant);
    return r;
}

static json_t *run(const char *tenant, const char *type, json_t *payload)
{
    return run_on(&H, tenant, type, payload);
}

static const char *str(json_t *o, const char *key)
{
    const char *s = json_string_value(json_object_get(o, key));
    return s != NULL ? s : "";
}

static bool is_success(json_t *r)
{
    return strcmp(str(r, "status"), "success") == 0;
}

/* The output of r (borrowed), which must be a success. */
static json_t *output(json_t *r, const char *what)
{
    if (!is_success(r) || !json_is_object(json_object_get(r, "output"))) {
        char *s = json_dumps(r, JSON_COMPACT);
        fail_msg("%s: want success, got %s", what, s);
    }
    return json_object_get(r, "output");
}

/* r is an error with code, and a message that does not name the host's directories. Decrefs r. */
static void expect_code(json_t *r, const char *code, const char *what)
{
    const char *msg = str(r, "error_message");
    if (strcmp(str(r, "status"), "error") != 0 || strcmp(str(r, "error_code"), code) != 0 || msg[0] == '\0' ||
        strstr(msg, tmp) != NULL) {
        char *s = json_dumps(r, JSON_COMPACT);
        fail_msg("%s: want error %s (without the host path), got %s", what, code, s);
    }
    json_decref(r);
}

static json_t *p_path(const char *path)
{
    return json_pack("{s:s}", "path", path);
}

static json_t *p_put(const char *path, const void *data, size_t len, bool if_absent)
{
    char *b = b64_encode(data, len);
    json_t *p = json_pack("{s:s,s:s,s:b}", "path", path, "bytes", b, "if_absent", if_absent);
    free(b);
    return p;
}

static json_t *p_text(const char *path, const char *content)
{
    return json_pack("{s:s,s:s}", "path", path, "content", content);
}

/* A put's output must be {path, size, sha256} of data. */
static void check_put_output(json_t *r, const char *path, const void *data, size_t len)
{
    char want[65];
    sha256_hex(data, len, want);
    json_t *o = output(r, path);
    assert_string_equal(str(o, "path"), path);
    assert_int_equal(json_integer_value(json_object_get(o, "size")), len);
    assert_string_equal(str(o, "sha256"), want);
}

static void put_ok(const char *tenant, const char *path, const void *data, size_t len)
{
    json_t *r = run(tenant, "fs_blob_put", p_put(path, data, len, false));
    check_put_output(r, path, data, len);
    json_decref(r);
}

static void put_text_ok(const char *tenant, const char *path, const char *content)
{
    json_t *r = run(tenant, "fs_blob_put", p_text(path, content));
    check_put_output(r, path, content, strlen(content));
    json_decref(r);
}

/* The bytes of a get's output (malloc'd), after checking its path, size and sha256 against them. */
static unsigned char *get_output_bytes(json_t *r, const char *path, size_t *len)
{
    json_t *o = output(r, path);
    assert_string_equal(str(o, "path"), path);
    unsigned char *data = b64_decode(str(o, "bytes"), len);
    char sha[65];
    sha256_hex(data, *len, sha);
    assert_int_equal(json_integer_value(json_object_get(o, "size")), *len);
    assert_string_equal(str(o, "sha256"), sha);
    return data;
}

/* The blob at path as tenant, which must exist (malloc'd, *len bytes). */
static unsigned char *get_ok(const char *tenant, const char *path, size_t *len)
{
    json_t *r = run(tenant, "fs_blob_get", p_path(path));
    unsigned char *data = get_output_bytes(r, path, len);
    json_decref(r);
    return data;
}

static void get_is(const char *tenant, const char *path, const void *want, size_t want_len)
{
    size_t len;
    unsigned char *got = get_ok(tenant, path, &len);
    if (len != want_len || memcmp(got, want, len) != 0)
        fail_msg("get %s as %s: %zu bytes, not the %zu expected", path, tenant, len, want_len);
    free(got);
}

static void get_text_is(const char *tenant, const char *path, const char *want)
{
    get_is(tenant, path, want, strlen(want));
}

/* Lists as tenant; returns the paths joined by ',' (malloc'd) and sets *truncated. */
static char *list_paths(const char *tenant, json_t *payload, bool *truncated)
{
    json_t *r = run(tenant, "fs_blob_list", payload);
    json_t *o = output(r, "list"), *entries = json_object_get(o, "entries"), *e;
    assert_true(json_is_array(entries));
    assert_true(json_is_boolean(json_object_get(o, "truncated")));
    if (truncated != NULL)
        *truncated = json_is_true(json_object_get(o, "truncated"));
    size_t i, cap = 1;
    json_array_foreach(entries, i, e) cap += strlen(str(e, "path")) + 1;
    char *out = calloc(1, cap);
    assert_non_null(out);
    json_array_foreach(entries, i, e)
    {
        assert_true(json_is_integer(json_object_get(e, "size")));
        assert_true(json_is_string(json_object_get(e, "modified")));
        if (i > 0)
            strcat(out, ",");
        strcat(out, str(e, "path"));
    }
    json_decref(r);
    return out;
}

static void list_is(const char *tenant, json_t *payload, const char *want, bool want_truncated)
{
    bool truncated;
    char *got = list_paths(tenant, payload, &truncated);
    if (strcmp(got, want) != 0 || truncated != want_truncated)
        fail_msg("list as %s: [%s] truncated=%d, want [%s] truncated=%d", tenant, got, truncated, want,
                 want_truncated);
    free(got);
}

/* ---- disk ---- */

/* printf into one of a few rotating buffers. */
static const char *fmt(const char *f, ...) __attribute__((format(printf, 1, 2)));
static const char *fmt(const char *f, ...)
{
    static char bufs[8][4200];
    static int next;
    char *b = bufs[next++ % 8];
    va_list ap;
    va_start(ap, f);
    vsnprintf(b, sizeof bufs[0], f, ap);
    va_end(ap);
    return b;
}

static bool exists(const char *path)
{
    struct stat st;
    return lstat(path, &st) == 0;
}

static void write_file(const char *path, const void *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, len, f), len);
    assert_int_equal(fclose(f), 0);
}

static void file_is(const char *path, const char *want)
{
    size_t len = 0;
    char *got = bw_test_read_file(path, &len);
    if (got == NULL || len != strlen(want) || memcmp(got, want, len) != 0)
        fail_msg("%s: '%s', want '%s'", path, got ? got : "(unreadable)", want);
    free(got);
}

/* Names (and kinds) below dir, recursively, sorted, as "a,d/,d/b,l@" (links not followed); the
   directories in skip (full paths, NULL-terminated; may be NULL) are listed but not entered. */
static void tree_into(const char *dir, const char *rel, const char *const *skip, char ***names, size_t *n)
{
    DIR *d = opendir(dir);
    if (d == NULL)
        return;
    for (struct dirent *de; (de = readdir(d)) != NULL;) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        char full[4200], name[4200], sub[sizeof name + 1]; /* name and its "/" */
        struct stat st;
        snprintf(full, sizeof full, "%s/%s", dir, de->d_name);
        snprintf(name, sizeof name, "%s%s", rel, de->d_name);
        assert_int_equal(lstat(full, &st), 0);
        const char *kind = S_ISDIR(st.st_mode) ? "/" : S_ISLNK(st.st_mode) ? "@" : "";
        *names = realloc(*names, (*n + 1) * sizeof **names);
        assert_non_null(*names);
        (*names)[*n] = malloc(strlen(name) + 2);
        assert_non_null((*names)[*n]);
        sprintf((*names)[(*n)++], "%s%s", name, kind);
        bool enter = S_ISDIR(st.st_mode);
        for (size_t i = 0; enter && skip != NULL && skip[i] != NULL; i++)
            enter = strcmp(skip[i], full) != 0;
        snprintf(sub, sizeof sub, "%s/", name);
        if (enter)
            tree_into(full, sub, skip, names, n);
    }
    closedir(d);
}

static int by_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The names below dir as tree_into gives them, joined by ',' (malloc'd; "" when dir is missing). */
static char *tree_skipping(const char *dir, const char *const *skip)
{
    char **names = NULL;
    size_t n = 0, cap = 1;
    tree_into(dir, "", skip, &names, &n);
    if (n > 0)
        qsort(names, n, sizeof *names, by_str);
    for (size_t i = 0; i < n; i++)
        cap += strlen(names[i]) + 1;
    char *out = calloc(1, cap);
    assert_non_null(out);
    for (size_t i = 0; i < n; i++) {
        if (i > 0)
            strcat(out, ",");
        strcat(out, names[i]);
        free(names[i]);
    }
    free(names);
    return out;
}

static char *tree(const char *dir)
{
    return tree_skipping(dir, NULL);
}

static void tree_is(const char *dir, const char *want)
{
    char *got = tree(dir);
    if (strcmp(got, want) != 0)
        fail_msg("%s holds [%s], want [%s]", dir, got, want);
    free(got);
}

/* The test's directory holds the store and "outside" and nothing else (neither is entered). */
static void nothing_beside_root(void)
{
    const char *const skip[] = {root, outside, NULL};
    char *got = tree_skipping(tmp, skip);
    if (strcmp(got, "outside/,store/,store/blobs/") != 0)
        fail_msg("%s holds [%s] besides the store and outside", tmp, got);
    free(got);
}

/* Entries below dir (recursively) whose name starts with ".bw-tmp.". */
static int count_tmp(const char *dir)
{
    char *t = tree(dir);
    int n = 0;
    for (const char *p = t; (p = strstr(p, ".bw-tmp.")) != NULL; p++)
        n++;
    free(t);
    return n;
}

/* Parses an RFC 3339 time (fraction and offset optional) into Unix milliseconds; -1 when invalid. */
static int64_t rfc3339_ms(const char *s)
{
    struct tm tm = {0};
    const char *p = strptime(s, "%Y-%m-%dT%H:%M:%S", &tm);
    if (p == NULL)
        return -1;
    int64_t ms = 0, scale = 100;
    if (*p == '.') {
        if (!(p[1] >= '0' && p[1] <= '9'))
            return -1;
        for (p++; *p >= '0' && *p <= '9'; p++, scale /= 10)
            ms += (*p - '0') * scale;
    }
    int64_t offset_s = 0;
    if (*p == '+' || *p == '-') {
        int hh, mm;
        if (sscanf(p + 1, "%2d:%2d", &hh, &mm) != 2 || strlen(p) != 6)
            return -1;
        offset_s = (*p == '+' ? 1 : -1) * (hh * 3600 + mm * 60);
    } else if (strcmp(p, "Z") != 0) {
        return -1;
    }
    return ((int64_t)timegm(&tm) - offset_s) * 1000 + ms;
}

/* ---- the tests ---- */

static void test_round_trips(void **state)
{
    const char *text = "Grüße, 世界! 🌍 ünïcödé — \"quoted\" \\ back\nline two\ttab\n";
    put_text_ok(T, "docs/hello.txt", text);
    get_text_is(T, "docs/hello.txt", text);
    /* FS_BASE_DIR was created (two levels), the tenant's directory below it, the blob on disk as sent */
    file_is(fmt("%s/%s/docs/hello.txt", root, T), text);

    unsigned char all[256];
    for (int i = 0; i < 256; i++)
        all[i] = (unsigned char)i;
    put_ok(T, "bin/all-bytes.bin", all, sizeof all);
    get_is(T, "bin/all-bytes.bin", all, sizeof all);
    size_t disk_len = 0;
    char *disk = bw_test_read_file(fmt("%s/%s/bin/all-bytes.bin", root, T), &disk_len);
    assert_non_null(disk);
    assert_int_equal(disk_len, sizeof all);
    assert_memory_equal(disk, all, sizeof all);
    free(disk);

    /* empty blobs, by content and by bytes */
    put_text_ok(T, "empty.txt", "");
    get_text_is(T, "empty.txt", "");
    put_ok(T, "empty.bin", "", 0);
    get_is(T, "empty.bin", "", 0);

    /* stat: size, sha256, and a modification time that is RFC 3339, recent, and the file's */
    char want_sha[65];
    sha256_hex(all, sizeof all, want_sha);
    json_t *r = run(T, "fs_blob_stat", p_path("bin/all-bytes.bin"));
    json_t *o = output(r, "stat");
    assert_string_equal(str(o, "path"), "bin/all-bytes.bin");
    assert_int_equal(json_integer_value(json_object_get(o, "size")), 256);
    assert_string_equal(str(o, "sha256"), want_sha);
    assert_null(json_object_get(o, "bytes"));
    int64_t modified = rfc3339_ms(str(o, "modified"));
    if (modified < 0)
        fail_msg("stat.modified '%s' is not RFC 3339", str(o, "modified"));
    struct stat st;
    assert_int_equal(stat(fmt("%s/%s/bin/all-bytes.bin", root, T), &st), 0);
    int64_t mtime_ms = (int64_t)st.st_mtim.tv_sec * 1000 + st.st_mtim.tv_nsec / 1000000;
    assert_true(llabs(modified - mtime_ms) <= 1000);
    assert_true(llabs(modified - (int64_t)time(NULL) * 1000) < 600 * 1000);
    json_decref(r);

    /* overwrite replaces; if_absent keeps the old content and says so; if_absent on a new path writes */
    put_text_ok(T, "docs/hello.txt", "v2");
    get_text_is(T, "docs/hello.txt", "v2");
    r = run(T, "fs_blob_put", p_put("docs/hello.txt", "v3", 2, true));
    expect_code(r, "ALREADY_EXISTS", "if_absent over a blob");
    get_text_is(T, "docs/hello.txt", "v2");
    r = run(T, "fs_blob_put", p_put("docs/new.txt", "first", 5, true));
    check_put_output(r, "docs/new.txt", "first", 5);
    json_decref(r);
    get_text_is(T, "docs/new.txt", "first");

    /* a directory is not a blob; a blob is not a directory */
    expect_code(run(T, "fs_blob_get", p_path("docs")), "NOT_FOUND", "get of a directory");
    expect_code(run(T, "fs_blob_put", p_text("docs", "x")), "INVALID_PATH", "put over a directory");
    expect_code(run(T, "fs_blob_put", p_text("docs/hello.txt/x", "x")), "INVALID_PATH", "put below a blob");
    expect_code(run(T, "fs_blob_get", p_path("docs/hello.txt/x")), "NOT_FOUND", "get below a blob");
    get_text_is(T, "docs/hello.txt", "v2");

    /* delete: true, then the blob is gone (get, stat, disk); again: false; nowhere near: false */
    r = run(T, "fs_blob_delete", p_path("docs/hello.txt"));
    o = output(r, "delete");
    assert_string_equal(str(o, "path"), "docs/hello.txt");
    assert_true(json_is_true(json_object_get(o, "deleted")));
    json_decref(r);
    expect_code(run(T, "fs_blob_get", p_path("docs/hello.txt")), "NOT_FOUND", "get after delete");
    expect_code(run(T, "fs_blob_stat", p_path("docs/hello.txt")), "NOT_FOUND", "stat after delete");
    assert_false(exists(fmt("%s/%s/docs/hello.txt", root, T)));
    r = run(T, "fs_blob_delete", p_path("docs/hello.txt"));
    assert_true(json_is_false(json_object_get(output(r, "delete again"), "deleted")));
    json_decref(r);
    r = run(T, "fs_blob_delete", p_path("no/such/dir/x"));
    assert_true(json_is_false(json_object_get(output(r, "delete in a missing dir"), "deleted")));
    json_decref(r);
    expect_code(run(T, "fs_blob_get", p_path("never/was.txt")), "NOT_FOUND", "get of nothing");
    get_text_is(T, "docs/new.txt", "first"); /* the neighbour is untouched */
    assert_int_equal(count_tmp(root), 0);
}

static void test_list(void **state)
{
    const char *tn = "lister";
    /* a tenant that never stored anything lists nothing */
    list_is(tn, json_object(), "", false);
    const char *paths[] = {"reports/2024-01.csv", "reports/2023.csv",    "notes.txt",
                           "reports/2024-02.csv", "a/b/c/d.txt",         "reports/archive/2024-old.csv",
                           "reports-summary.txt", "reports/x/y/deep.csv"};
    for (size_t i = 0; i < sizeof paths / sizeof *paths; i++)
        put_text_ok(tn, paths[i], fmt("content of %s", paths[i]));
    /* a temporary file of a put (as a crash leaves one) is never listed */
    write_file(fmt("%s/%s/reports/.bw-tmp.00112233aabbccdd", root, tn), "partial", 7);

    const char *all = "a/b/c/d.txt,notes.txt,reports-summary.txt,reports/2023.csv,reports/2024-01.csv,"
                      "reports/2024-02.csv,reports/archive/2024-old.csv,reports/x/y/deep.csv";
    list_is(tn, json_object(), all, false);
    list_is(tn, json_pack("{s:s}", "prefix", ""), all, false);
    list_is(tn, json_pack("{s:s}", "prefix", "reports/2024-"), "reports/2024-01.csv,reports/2024-02.csv",
            false);
    list_is(tn, json_pack("{s:s}", "prefix", "reports/"),
            "reports/2023.csv,reports/2024-01.csv,reports/2024-02.csv,reports/archive/2024-old.csv,"
            "reports/x/y/deep.csv",
            false);
    /* a prefix is a prefix of the path, not of a directory only */
    list_is(tn, json_pack("{s:s}", "prefix", "reports"),
            "reports-summary.txt,reports/2023.csv,reports/2024-01.csv,reports/2024-02.csv,"
            "reports/archive/2024-old.csv,reports/x/y/deep.csv",
            false);
    list_is(tn, json_pack("{s:s}", "prefix", "reports/ar"), "reports/archive/2024-old.csv", false);
    list_is(tn, json_pack("{s:s}", "prefix", "a/b/c/d.txt"), "a/b/c/d.txt", false);
    list_is(tn, json_pack("{s:s}", "prefix", "n"), "notes.txt", false);
    /* limit: the first ones in order, truncated when more matched */
    list_is(tn, json_pack("{s:i}", "limit", 2), "a/b/c/d.txt,notes.txt", true);
    list_is(tn, json_pack("{s:s,s:i}", "prefix", "reports/", "limit", 3),
            "reports/2023.csv,reports/2024-01.csv,reports/2024-02.csv", true);
    list_is(tn, json_pack("{s:i}", "limit", 8), all, false);
    list_is(tn, json_pack("{s:i}", "limit", 1), "a/b/c/d.txt", true);
    /* missing directories and non-matching prefixes: empty, not an error */
    list_is(tn, json_pack("{s:s}", "prefix", "missing/dir/"), "", false);
    list_is(tn, json_pack("{s:s}", "prefix", "reports/missing/"), "", false);
    list_is(tn, json_pack("{s:s}", "prefix", "zzz"), "", false);
    list_is(tn, json_pack("{s:s}", "prefix", "notes.txt/"), "", false);
    /* a prefix that would leave the store */
    expect_code(run(tn, "fs_blob_list", json_pack("{s:s}", "prefix", "../")), "INVALID_PATH", "prefix ../");
    expect_code(run(tn, "fs_blob_list", json_pack("{s:s}", "prefix", "../" T "/")), "INVALID_PATH",
                "prefix ../acme/");
    expect_code(run(tn, "fs_blob_list", json_pack("{s:s}", "prefix", "/etc/")), "INVALID_PATH",
                "prefix /etc/");
    expect_code(run(tn, "fs_blob_list", json_pack("{s:i}", "prefix", 5)), "INVALID_PATH", "prefix 5");
    /* entries carry the size and an RFC 3339 time */
    json_t *r = run(tn, "fs_blob_list", json_pack("{s:s}", "prefix", "notes.txt"));
    json_t *e = json_array_get(json_object_get(output(r, "list"), "entries"), 0);
    assert_int_equal(json_integer_value(json_object_get(e, "size")), strlen("content of notes.txt"));
    int64_t modified = rfc3339_ms(str(e, "modified"));
    assert_true(modified > 0 && llabs(modified - (int64_t)time(NULL) * 1000) < 600 * 1000);
    json_decref(r);
    /* after a delete the list no longer has it */
    json_decref(run(tn, "fs_blob_delete", p_path("reports/2023.csv")));
    list_is(tn, json_pack("{s:s}", "prefix", "reports/2"), "reports/2024-01.csv,reports/2024-02.csv", false);
}

static void refused_everywhere(const char *tenant, const char *path, const char *why)
{
    char what[200];
    snprintf(what, sizeof what, "put %s", why);
    expect_code(run(tenant, "fs_blob_put", p_text(path, "refused")), "INVALID_PATH", what);
    snprintf(what, sizeof what, "get %s", why);
    expect_code(run(tenant, "fs_blob_get", p_path(path)), "INVALID_PATH", what);
    snprintf(what, sizeof what, "stat %s", why);
    expect_code(run(tenant, "fs_blob_stat", p_path(path)), "INVALID_PATH", what);
    snprintf(what, sizeof what, "delete %s", why);
    expect_code(run(tenant, "fs_blob_delete", p_path(path)), "INVALID_PATH", what);
}

/* path of total bytes in components of at most comp bytes ('a'..), joined by '/'. */
static char *long_path(size_t total, size_t comp)
{
    char *p = malloc(total + 1);
    assert_non_null(p);
    for (size_t i = 0, k = 0; i < total; i++, k++) {
        if (k == comp && i + 1 < total) {
            p[i] = '/';
            k = (size_t)-1;
        } else {
            p[i] = (char)('a' + i % 26);
        }
    }
    p[total] = '\0';
    return p;
}

static void test_refusals(void **state)
{
    const char *tn = "refusals";
    write_file(fmt("%s/victim.txt", outside), "victim", 6);
    char *long1025 = long_path(1025, 200), *comp256 = long_path(256, 300), deep65[200] = "";
    for (int i = 0; i < 65; i++)
        strcat(deep65, i ? "/d" : "d");
    char victim[300];
    snprintf(victim, sizeof victim, "%s/victim.txt", outside);
    const struct {
        const char *path, *why;
    } bad[] = {
        {"a/../b", "a '..' inside"},
        {"..", "'..'"},
        {"../../../outside/victim.txt", "'..' out of the store"},
        {"./a", "a leading '.'"},
        {"a/.", "a trailing '.'"},
        {victim, "an absolute path to a file outside"},
        {"a//b", "a doubled '/'"},
        {"a/", "a trailing '/'"},
        {"/", "'/'"},
        {"a\x01"
         "b",
         "a control character"},
        {"a\nb", "a newline"},
        {"a\x7f"
         "b",
         "DEL"},
        {long1025, "a 1025-byte path"},
        {comp256, "a 256-byte name"},
        {deep65, "65 components"},
        {".bw-tmp.x", "a temporary file's name"},
        {"dir/.bw-tmp.0011223344556677", "a temporary file's name in a directory"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        refused_everywhere(tn, bad[i].path, bad[i].why);
    /* (only read: a write there would be the host's, were the rule ever broken) */
    expect_code(run(tn, "fs_blob_get", p_path("/etc/passwd")), "INVALID_PATH", "get /etc/passwd");
    expect_code(run(tn, "fs_blob_stat", p_path("/etc/passwd")), "INVALID_PATH", "stat /etc/passwd");
    /* a NUL byte ("\u0000", valid JSON): refused with INVALID_PATH, for every type, never dead-lettered */
    int dead = bw_test_client_count(H.client, BW_H_DLQ);
    const char *nul_types[] = {"fs_blob_put", "fs_blob_get", "fs_blob_stat", "fs_blob_delete"};
    for (int i = 0; i < 4; i++) {
        json_t *nul = json_object();
        json_object_set_new(nul, "path", json_stringn("a\0b", 3));
        json_object_set_new(nul, "content", json_string("x"));
        expect_code(run(tn, nul_types[i], nul), "INVALID_PATH", "a NUL byte");
    }
    json_t *nulprefix = json_object();
    json_object_set_new(nulprefix, "prefix", json_stringn("a\0", 2));
    expect_code(run(tn, "fs_blob_list", nulprefix), "INVALID_PATH", "a NUL byte in a prefix");
    /* content may hold NULs: it is bytes */
    json_t *nulcontent = json_object();
    json_object_set_new(nulcontent, "path", json_string("nul-inside.bin"));
    json_object_set_new(nulcontent, "content", json_stringn("x\0y", 3));
    json_t *put = run("nul-tenant", "fs_blob_put", nulcontent);
    output(put, "a put of content with a NUL");
    json_decref(put);
    get_is("nul-tenant", "nul-inside.bin", "x\0y", 3);
    /* a type that reads its strings as C strings fails the job instead (INVALID_PAYLOAD) */
    json_t *jp = json_pack("{s:s,s:{s:s%}}", "expression", "a", "data", "a", "x\0y", (size_t)3);
    expect_code(run(tn, "jmespath", jp), "INVALID_PAYLOAD", "jmespath with a NUL");
    assert_int_equal(bw_test_client_count(H.client, BW_H_DLQ), dead);
    /* nothing was created: not even the tenant's directory; the file outside is untouched */
    assert_false(exists(fmt("%s/%s", root, tn)));
    file_is(victim, "victim");
    tree_is(outside, "victim.txt");
    nothing_beside_root();

    /* missing paths */
    const char *types[] = {"fs_blob_put", "fs_blob_get", "fs_blob_stat", "fs_blob_delete"};
    for (size_t i = 0; i < 4; i++) {
        expect_code(run(tn, types[i], json_pack("{s:s}", "content", "x")), "MISSING_PATH", "no path");
        expect_code(run(tn, types[i], json_pack("{s:s,s:s}", "path", "", "content", "x")), "MISSING_PATH",
                    "empty path");
        expect_code(run(tn, types[i], json_pack("{s:i,s:s}", "path", 7, "content", "x")), "MISSING_PATH",
                    "numeric path");
        expect_code(run(tn, types[i], json_pack("{s:n,s:s}", "path", "content", "x")), "MISSING_PATH",
                    "null path");
        expect_code(run(tn, types[i], json_pack("{s:[s],s:s}", "path", "a", "content", "x")), "MISSING_PATH",
                    "array path");
    }
    /* content: missing, not a string, bad base64 */
    expect_code(run(tn, "fs_blob_put", p_path("c.txt")), "MISSING_CONTENT", "no content");
    expect_code(run(tn, "fs_blob_put", json_pack("{s:s,s:i}", "path", "c.txt", "content", 5)),
                "MISSING_CONTENT", "numeric content");
    expect_code(run(tn, "fs_blob_put", json_pack("{s:s,s:n}", "path", "c.txt", "bytes")), "MISSING_CONTENT",
                "null bytes");
    const char *bad64[] = {"not base64!", "YWJj\n", "YW Jj", "YQ", "YQ=", "Y===", "@@@@", "YWJj===="};
    for (size_t i = 0; i < sizeof bad64 / sizeof *bad64; i++)
        expect_code(run(tn, "fs_blob_put", json_pack("{s:s,s:s}", "path", "c.txt", "bytes", bad64[i])),
                    "BASE64_DECODE_ERROR", bad64[i]);
    assert_false(exists(fmt("%s/%s", root, tn)));

    /* the boundaries are accepted: 1024 bytes, a 255-byte name, 64 components */
    char *path1024 = long_path(1024, 204), *comp255 = long_path(255, 300), deep64[200] = "";
    for (int i = 0; i < 64; i++)
        strcat(deep64, i ? "/d" : "d");
    const char *good[] = {path1024, comp255, deep64};
    for (size_t i = 0; i < 3; i++) {
        put_text_ok(tn, good[i], good[i]);
        get_text_is(tn, good[i], good[i]);
        file_is(fmt("%s/%s/%s", root, tn, good[i]), good[i]);
    }
    /* nothing is decoded: "%2e%2e" is a directory of that name, "%2F" a byte sequence; dot-names that are
       not "." or ".." are names */
    const char *literal[] = {"%2e%2e/x", "%2E%2E/%2e%2e/y", "a%2Fb", "...", ".hidden", "..x/y.", "sp ace/é"};
    for (size_t i = 0; i < sizeof literal / sizeof *literal; i++) {
        put_text_ok(tn, literal[i], literal[i]);
        get_text_is(tn, literal[i], literal[i]);
        file_is(fmt("%s/%s/%s", root, tn, literal[i]), literal[i]);
    }
    assert_false(exists(fmt("%s/x", root)));
    assert_false(exists(fmt("%s/x", tmp)));
    assert_false(exists(fmt("%s/%s/a", root, tn)));
    list_is(tn, json_pack("{s:s}", "prefix", "%2e%2e/"), "%2e%2e/x", false);
    tree_is(outside, "victim.txt");
    file_is(victim, "victim");
    nothing_beside_root();
    free(long1025);
    free(comp256);
    free(path1024);
    free(comp255);
}

static void test_symlinks(void **state)
{
    const char *tn = "links";
    put_text_ok(tn, "real.txt", "real");
    put_text_ok(tn, "sub/ok.txt", "ok");
    /* outside the store: a file and a directory with a file */
    char secret[300], tdir[300];
    snprintf(secret, sizeof secret, "%s/secret.txt", outside);
    snprintf(tdir, sizeof tdir, "%s/%s", root, tn);
    write_file(secret, "outside secret", 14);
    assert_int_equal(mkdir(fmt("%s/dir", outside), 0700), 0);
    write_file(fmt("%s/dir/inner.txt", outside), "inner", 5);
    const char *want_outside = "dir/,dir/inner.txt,secret.txt,victim.txt"; /* victim.txt: test_refusals */
    /* planted in the tenant's directory */
    assert_int_equal(symlink(secret, fmt("%s/file-link", tdir)), 0);
    assert_int_equal(symlink(fmt("%s/dir", outside), fmt("%s/dir-link", tdir)), 0);
    assert_int_equal(symlink(fmt("%s/dir", outside), fmt("%s/sub/dlink", tdir)), 0);
    assert_int_equal(symlink("real.txt", fmt("%s/rel-link", tdir)), 0);
    assert_int_equal(symlink("../" T, fmt("%s/peer-link", tdir)), 0);
    assert_int_equal(symlink("loop", fmt("%s/loop", tdir)), 0);
    assert_int_equal(symlink("nowhere", fmt("%s/dangling", tdir)), 0);
    assert_int_equal(mkfifo(fmt("%s/fifo", tdir), 0600), 0);
    put_text_ok(T, "peer.txt", "the other tenant's");

    const char *through[] = {"file-link",         "rel-link",           "loop",
                             "dangling",          "dir-link/inner.txt", "sub/dlink/inner.txt",
                             "peer-link/peer.txt"};
    for (size_t i = 0; i < sizeof through / sizeof *through; i++) {
        expect_code(run(tn, "fs_blob_get", p_path(through[i])), "INVALID_PATH", fmt("get %s", through[i]));
        expect_code(run(tn, "fs_blob_stat", p_path(through[i])), "INVALID_PATH", fmt("stat %s", through[i]));
    }
    /* writes through a linked directory (onto a link: test_put_onto_link) */
    const char *puts[] = {"dir-link/new.txt", "dir-link/deeper/new.txt", "sub/dlink/new.txt",
                          "peer-link/peer.txt"};
    for (size_t i = 0; i < sizeof puts / sizeof *puts; i++) {
        expect_code(run(tn, "fs_blob_put", p_text(puts[i], "written")), "INVALID_PATH",
                    fmt("put %s", puts[i]));
        expect_code(run(tn, "fs_blob_put",
                        json_pack("{s:s,s:s,s:b}", "path", puts[i], "content", "written", "if_absent", 1)),
                    "INVALID_PATH", fmt("put if_absent %s", puts[i]));
    }
    /* deletes through them and of them: nothing outside goes */
    const char *dels[] = {"file-link", "dir-link/inner.txt", "sub/dlink/inner.txt", "peer-link/peer.txt"};
    for (size_t i = 0; i < sizeof dels / sizeof *dels; i++)
        expect_code(run(tn, "fs_blob_delete", p_path(dels[i])), "INVALID_PATH", fmt("delete %s", dels[i]));
    /* a FIFO is not a blob, and reading it does not hang */
    expect_code(run(tn, "fs_blob_get", p_path("fifo")), "NOT_FOUND", "get fifo");
    /* the list shows the blobs only, and does not walk into linked directories */
    list_is(tn, json_object(), "real.txt,sub/ok.txt", false);
    list_is(tn, json_pack("{s:s}", "prefix", "sub/"), "sub/ok.txt", false);
    json_t *r = run(tn, "fs_blob_list", json_pack("{s:s}", "prefix", "dir-link/"));
    if (is_success(r))
        assert_int_equal(json_array_size(json_object_get(json_object_get(r, "output"), "entries")), 0);
    else
        assert_string_equal(str(r, "error_code"), "INVALID_PATH");
    json_decref(r);

    /* a tenant whose directory is a link to a directory outside: never read, written or listed */
    assert_int_equal(symlink(fmt("%s/dir", outside), fmt("%s/evil", root)), 0);
    r = run("evil", "fs_blob_get", p_path("inner.txt"));
    assert_false(is_success(r));
    json_decref(r);
    r = run("evil", "fs_blob_put", p_text("planted.txt", "planted"));
    assert_false(is_success(r));
    json_decref(r);
    r = run("evil", "fs_blob_delete", p_path("inner.txt"));
    assert_false(is_success(r) && json_is_true(json_object_get(json_object_get(r, "output"), "deleted")));
    json_decref(r);
    r = run("evil", "fs_blob_list", json_object());
    if (is_success(r))
        assert_int_equal(json_array_size(json_object_get(json_object_get(r, "output"), "entries")), 0);
    json_decref(r);
    assert_int_equal(unlink(fmt("%s/evil", root)), 0);

    /* outside is exactly as it was; the links are still links; the store's own blobs are intact */
    tree_is(outside, want_outside);
    file_is(secret, "outside secret");
    file_is(fmt("%s/dir/inner.txt", outside), "inner");
    tree_is(
        tdir,
        "dangling@,dir-link@,fifo,file-link@,loop@,peer-link@,real.txt,rel-link@,sub/,sub/dlink@,sub/ok.txt");
    get_text_is(tn, "real.txt", "real");
    get_text_is(T, "peer.txt", "the other tenant's");
    nothing_beside_root();
}

/* A put whose last component is a link planted in the store is refused like a link anywhere on the way:
   the link is neither followed nor replaced. */
static void test_put_onto_link(void **state)
{
    const char *tn = "leaf-links";
    put_text_ok(tn, "real.txt", "real");
    char target[300], tdir[300];
    snprintf(target, sizeof target, "%s/leaf-target.txt", outside);
    snprintf(tdir, sizeof tdir, "%s/%s", root, tn);
    write_file(target, "leaf target", 11);
    assert_int_equal(symlink(target, fmt("%s/file-link", tdir)), 0);
    assert_int_equal(symlink("nowhere", fmt("%s/dangling", tdir)), 0);
    assert_int_equal(symlink("real.txt", fmt("%s/rel-link", tdir)), 0);
    const char *links[] = {"file-link", "dangling", "rel-link"};
    json_t *plain[3], *absent[3];
    for (size_t i = 0; i < 3; i++) {
        plain[i] = run(tn, "fs_blob_put", p_text(links[i], "written"));
        absent[i] = run(tn, "fs_blob_put",
                        json_pack("{s:s,s:s,s:b}", "path", links[i], "content", "written", "if_absent", 1));
    }
    /* whatever the answers: nothing outside or at a link's target was written */
    file_is(target, "leaf target");
    tree_is(outside, "dir/,dir/inner.txt,leaf-target.txt,secret.txt,victim.txt");
    assert_false(exists(fmt("%s/nowhere", tdir)));
    get_text_is(tn, "real.txt", "real");
    /* and each was refused, the links left as they were */
    for (size_t i = 0; i < 3; i++) {
        expect_code(plain[i], "INVALID_PATH", fmt("put onto link %s", links[i]));
        expect_code(absent[i], "INVALID_PATH", fmt("put if_absent onto link %s", links[i]));
    }
    tree_is(tdir, "dangling@,file-link@,real.txt,rel-link@");
}

/* A unix socket bound at path (its descriptor, kept open while the test looks at it). */
static int bind_socket_at(const char *path)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    assert_true(strlen(path) < sizeof sa.sun_path);
    strcpy(sa.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    return fd;
}

/* A put onto anything that is not a blob (a FIFO, a unix socket, a device node, a directory) planted where
   the blob goes is refused (INVALID_PATH), plainly and with if_absent, and leaves it as it was: a rename
   would have replaced it, and nothing may open it (a FIFO's open would block a pool thread). */
static void test_put_onto_special_files(void **state)
{
    const char *tn = "specials";
    put_text_ok(tn, "real.txt", "real");
    char tdir[300];
    snprintf(tdir, sizeof tdir, "%s/%s", root, tn);
    assert_int_equal(mkfifo(fmt("%s/fifo", tdir), 0600), 0);
    int sock = bind_socket_at(fmt("%s/sock", tdir));
    assert_int_equal(mkdir(fmt("%s/dir", tdir), 0700), 0);
    /* a character device (the null device's numbers): needs CAP_MKNOD, which a container may lack */
    bool dev = mknod(fmt("%s/dev", tdir), S_IFCHR | 0600, makedev(1, 3)) == 0;
    if (!dev)
        print_message("no device node case: mknod: %s\n", strerror(errno));
    const char *what[] = {"fifo", "sock", "dir", "dev"},
               *why[] = {"a FIFO", "a socket", "a directory", "a device node"};
    for (size_t i = 0; i < 4; i++) {
        if (i == 3 && !dev)
            continue;
        json_t *plain = run(tn, "fs_blob_put", p_text(what[i], "written")),
               *absent =
                   run(tn, "fs_blob_put",
                       json_pack("{s:s,s:s,s:b}", "path", what[i], "content", "written", "if_absent", 1));
        const char *msg = str(plain, "error_message");
        if (strstr(msg, why[i] + 2) == NULL) /* the message names what is there */
            fail_msg("put onto %s: message '%s' does not say '%s'", what[i], msg, why[i] + 2);
        expect_code(plain, "INVALID_PATH", fmt("put onto %s", why[i]));
        expect_code(absent, "INVALID_PATH", fmt("put if_absent onto %s", why[i]));
        if (i != 2) /* nor can a put go below one (below a directory is where blobs go) */
            expect_code(run(tn, "fs_blob_put", p_text(fmt("%s/x", what[i]), "below")), "INVALID_PATH",
                        fmt("put below %s", why[i]));
    }
    /* each is as it was; no temporary file is left behind */
    struct stat st;
    assert_int_equal(lstat(fmt("%s/fifo", tdir), &st), 0);
    assert_true(S_ISFIFO(st.st_mode));
    assert_int_equal(lstat(fmt("%s/sock", tdir), &st), 0);
    assert_true(S_ISSOCK(st.st_mode));
    if (dev) {
        assert_int_equal(lstat(fmt("%s/dev", tdir), &st), 0);
        assert_true(S_ISCHR(st.st_mode));
    }
    assert_int_equal(count_tmp(tdir), 0);
    /* and none of them is a blob to get, stat or delete */
    for (size_t i = 0; i < 4; i++) {
        if (i == 3 && !dev)
            continue;
        expect_code(run(tn, "fs_blob_get", p_path(what[i])), "NOT_FOUND", fmt("get %s", why[i]));
        expect_code(run(tn, "fs_blob_delete", p_path(what[i])), "INVALID_PATH", fmt("delete %s", why[i]));
    }
    list_is(tn, json_object(), "real.txt", false);
    close(sock);
}

/* The directory directly below the root that holds "who.txt" with content id; fails unless exactly one. */
static void tenant_dir_holds(const char *id)
{
    DIR *d = opendir(root);
    assert_non_null(d);
    int found = 0;
    for (struct dirent *de; (de = readdir(d)) != NULL;) {
        if (de->d_name[0] == '.' && (de->d_name[1] == '\0' || strcmp(de->d_name, "..") == 0))
            continue;
        size_t len = 0;
        char *got = bw_test_read_file(fmt("%s/%s/who.txt", root, de->d_name), &len);
        if (got != NULL && len == strlen(id) && memcmp(got, id, len) == 0)
            found++;
        free(got);
    }
    closedir(d);
    if (found != 1)
        fail_msg("%d tenant directories below the root hold the blob of tenant '%s'", found, id);
}

static void test_tenant_isolation(void **state)
{
    put_text_ok("tenant-a", "secret.txt", "A's secret");
    expect_code(run("tenant-b", "fs_blob_get", p_path("secret.txt")), "NOT_FOUND", "B gets A's");
    expect_code(run("tenant-b", "fs_blob_stat", p_path("secret.txt")), "NOT_FOUND", "B stats A's");
    list_is("tenant-b", json_object(), "", false);
    json_t *r = run("tenant-b", "fs_blob_delete", p_path("secret.txt"));
    assert_true(json_is_false(json_object_get(output(r, "B deletes A's"), "deleted")));
    json_decref(r);
    put_text_ok("tenant-b", "secret.txt", "B's secret");
    get_text_is("tenant-a", "secret.txt", "A's secret");
    get_text_is("tenant-b", "secret.txt", "B's secret");
    list_is("tenant-a", json_object(), "secret.txt", false);
    r = run("tenant-b", "fs_blob_put", p_put("secret.txt", "x", 1, true));
    expect_code(r, "ALREADY_EXISTS", "B's own if_absent");
    get_text_is("tenant-a", "secret.txt", "A's secret");

    /* hostile tenant ids: each gets a directory of its own directly below the root */
    char esc1[64], esc2[64], esc3[64];
    snprintf(esc1, sizeof esc1, "../bwfs-esc-%d", (int)getpid());
    snprintf(esc2, sizeof esc2, "../../../bwfs-esc-%d", (int)getpid());
    snprintf(esc3, sizeof esc3, "/tmp/bwfs-esc-abs-%d", (int)getpid());
    const char *hostile[] = {esc1,    esc2,          esc3,           "/", ".",   "..",  "...",  "a/b",
                             "a%2Fb", "a%252Fb",     "%2E",          "%", "x y", "ünï", "a\\b", ".hidden",
                             "-dash", "tenant-a/..", "tenant-a%2F.."};
    size_t n = sizeof hostile / sizeof *hostile;
    for (size_t i = 0; i < n; i++)
        put_text_ok(hostile[i], "who.txt", hostile[i]);
    for (size_t i = 0; i < n; i++) {
        get_text_is(hostile[i], "who.txt", hostile[i]);
        list_is(hostile[i], json_object(), "who.txt", false);
        tenant_dir_holds(hostile[i]);
    }
    expect_code(run("tenant-a", "fs_blob_get", p_path("who.txt")), "NOT_FOUND", "tenant-a gets who.txt");
    /* nothing escaped the root */
    assert_false(exists(fmt("/tmp/bwfs-esc-%d", (int)getpid())));
    assert_false(exists(esc3));
    assert_false(exists(fmt("%s/bwfs-esc-%d", tmp, (int)getpid())));
    assert_false(exists(fmt("%s/store/bwfs-esc-%d", tmp, (int)getpid())));
    assert_false(exists(fmt("%s/who.txt", root)));
    nothing_beside_root();
    DIR *d = opendir(root);
    assert_non_null(d);
    for (struct dirent *de; (de = readdir(d)) != NULL;) {
        struct stat st;
        assert_int_equal(lstat(fmt("%s/%s", root, de->d_name), &st), 0);
        assert_true(S_ISDIR(st.st_mode)); /* only tenant directories at the root */
    }
    closedir(d);

    /* long tenant ids (up to 256 bytes are valid) that share a long prefix: the store serves each, and
       never lets one see the other's blob */
    char long1[260], long2[260];
    memset(long1, '/', 200);
    memcpy(long2, long1, 200);
    snprintf(long1 + 200, 60, "tenant-one");
    snprintf(long2 + 200, 60, "tenant-two");
    json_t *r1 = run(long1, "fs_blob_put", p_text("who.txt", "one"));
    json_t *r2 = run(long2, "fs_blob_put", p_text("who.txt", "two"));
    bool ok1 = is_success(r1), ok2 = is_success(r2);
    json_decref(r1);
    json_decref(r2);
    r1 = run(long1, "fs_blob_get", p_path("who.txt"));
    r2 = run(long2, "fs_blob_get", p_path("who.txt"));
    size_t len;
    if (is_success(r1)) {
        unsigned char *got = get_output_bytes(r1, "who.txt", &len);
        assert_true(ok1 && len == 3 && memcmp(got, "one", 3) == 0);
        free(got);
    }
    if (is_success(r2)) {
        unsigned char *got = get_output_bytes(r2, "who.txt", &len);
        assert_true(ok2 && len == 3 && memcmp(got, "two", 3) == 0);
        free(got);
    }
    assert_true(ok1 && ok2); /* long names end in the id's SHA-256: both served, apart */
    json_decref(r1);
    json_decref(r2);
    nothing_beside_root();
}

#define RACE_N 20
#define RACE_BYTES (256 * 1024)

static void test_concurrent_puts(void **state)
{
    unsigned char *contents[RACE_N];
    char shas[RACE_N][65];
    for (int i = 0; i < RACE_N; i++) {
        contents[i] = filled((unsigned char)(0x10 + 11 * i), RACE_BYTES);
        sha256_hex(contents[i], RACE_BYTES, shas[i]);
    }
    /* 20 puts of 256 KiB to one path, each followed by a get: everything runs at once */
    char id[64];
    for (int i = 0; i < RACE_N; i++) {
        snprintf(id, sizeof id, "race-put-%d", i);
        submit_on(&H, id, T, "fs_blob_put", p_put("race/blob.bin", contents[i], RACE_BYTES, false));
        snprintf(id, sizeof id, "race-get-%d", i);
        submit_on(&H, id, T, "fs_blob_get", p_path("race/blob.bin"));
    }
    int found = 0;
    for (int i = 0; i < RACE_N; i++) {
        snprintf(id, sizeof id, "race-put-%d", i);
        json_t *r = bw_harness_result(&H, id, 60000);
        assert_non_null(r);
        json_t *o = output(r, id);
        assert_int_equal(json_integer_value(json_object_get(o, "size")), RACE_BYTES);
        assert_string_equal(str(o, "sha256"), shas[i]);
        json_decref(r);
        /* a get in the middle sees nothing yet (only the first may) or one blob whole */
        snprintf(id, sizeof id, "race-get-%d", i);
        r = bw_harness_result(&H, id, 60000);
        assert_non_null(r);
        if (!is_success(r)) {
            assert_string_equal(str(r, "error_code"), "NOT_FOUND");
            json_decref(r);
            continue;
        }
        size_t len;
        unsigned char *got = get_output_bytes(r, "race/blob.bin", &len);
        assert_int_equal(len, RACE_BYTES);
        int which = (got[0] - 0x10) / 11;
        assert_true(which >= 0 && which < RACE_N && got[0] == contents[which][0]);
        if (!all_equal(got, len, got[0]))
            fail_msg("%s saw a mix of puts", id);
        found++;
        free(got);
        json_decref(r);
    }
    assert_true(found > 0);
    size_t len;
    unsigned char *last = get_ok(T, "race/blob.bin", &len);
    assert_int_equal(len, RACE_BYTES);
    assert_true(all_equal(last, len, last[0]));
    int which = (last[0] - 0x10) / 11;
    assert_true(which >= 0 && which < RACE_N && last[0] == contents[which][0]);
    free(last);

    /* if_absent puts racing for a new path: exactly one wins, and its blob is the one stored */
    int winners = 0, winner = -1;
    for (int i = 0; i < 10; i++) {
        snprintf(id, sizeof id, "once-%d", i);
        submit_on(&H, id, T, "fs_blob_put", p_put("race/once.bin", contents[i], 64 * 1024, true));
    }
    for (int i = 0; i < 10; i++) {
        snprintf(id, sizeof id, "once-%d", i);
        json_t *r = bw_harness_result(&H, id, 60000);
        assert_non_null(r);
        if (is_success(r)) {
            winners++;
            winner = i;
            json_decref(r);
        } else {
            expect_code(r, "ALREADY_EXISTS", id);
        }
    }
    assert_int_equal(winners, 1);
    get_is(T, "race/once.bin", contents[winner], 64 * 1024);

    assert_int_equal(count_tmp(fmt("%s/%s/race", root, T)), 0);
    tree_is(fmt("%s/%s/race", root, T), "blob.bin,once.bin");
    for (int i = 0; i < RACE_N; i++)
        free(contents[i]);
}

/* ---- a worker killed around a put ---- */

#define KILL_ROUNDS 8
#define KILL_BYTES (600 * 1000)

static unsigned char *kill_content(int round)
{
    unsigned char *p = malloc(KILL_BYTES);
    assert_non_null(p);
    for (size_t i = 0; i < KILL_BYTES; i++)
        p[i] = (unsigned char)((i * 131 + (size_t)round * 17 + i / 977) & 0xff);
    return p;
}

/* Entries of dir whose name starts with ".bw-tmp.". */
static int tmp_files_in(const char *dir)
{
    DIR *d = opendir(dir);
    if (d == NULL)
        return 0;
    int n = 0;
    for (struct dirent *de; (de = readdir(d)) != NULL;)
        n += strncmp(de->d_name, ".bw-tmp.", 8) == 0;
    closedir(d);
    return n;
}

/* The directory of round's put: the target absent or whole; anything else a temporary file. Returns
   whether the target is there. */
static bool check_kill_dir(int round, const unsigned char *want)
{
    char dir[300], leaf[32];
    snprintf(dir, sizeof dir, "%s/%s/kill", root, T);
    snprintf(leaf, sizeof leaf, "round-%d.bin", round);
    bool landed = false;
    DIR *d = opendir(dir);
    if (d == NULL) {
        assert_int_equal(errno, ENOENT); /* killed before the directory was made */
        return false;
    }
    for (struct dirent *de; (de = readdir(d)) != NULL;) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0 ||
            strncmp(de->d_name, "round-", 6) == 0) {
            if (strcmp(de->d_name, leaf) == 0) {
                size_t len = 0;
                char *got = bw_test_read_file(fmt("%s/%s", dir, leaf), &len);
                assert_non_null(got);
                if (len != KILL_BYTES || memcmp(got, want, len) != 0)
                    fail_msg("round %d: %s has %zu bytes, not the whole %d of the put", round, leaf, len,
                             KILL_BYTES);
                free(got);
                landed = true;
            }
            continue;
        }
        if (strncmp(de->d_name, ".bw-tmp.", 8) != 0)
            fail_msg("round %d: unexpected '%s' in the directory", round, de->d_name);
    }
    closedir(d);
    return landed;
}

static void test_kill_during_put(void **state)
{
    const char *const env[] = {root_env, NULL};
    unsigned char *contents[KILL_ROUNDS];
    bool landed[KILL_ROUNDS];
    char outcome[KILL_ROUNDS * 8] = "";
    int64_t put_us = 0; /* how long a whole put took, submit to result */
    for (int round = 0; round < KILL_ROUNDS; round++) {
        assert_int_equal(bw_harness_start(&K, env), 0);
        contents[round] = kill_content(round);
        char id[32], path[32];
        snprintf(id, sizeof id, "kill-%d", round);
        snprintf(path, sizeof path, "kill/round-%d.bin", round);
        int64_t t0 = bw_test_now_ms();
        submit_on(&K, id, T, "fs_blob_put", p_put(path, contents[round], KILL_BYTES, false));
        /* when to kill: after the result (first, to time a whole put), at once, as soon as the temporary
           file shows (or just after), and at fractions of the time a whole put took; which of before,
           during or after it hits is not asserted */
        char dir[300], target[300];
        snprintf(dir, sizeof dir, "%s/%s/kill", root, T);
        snprintf(target, sizeof target, "%s/%s/%s", root, T, path);
        int tmp_before = tmp_files_in(dir);
        if (round == 0) {
            json_t *r = bw_harness_result(&K, id, 60000);
            assert_non_null(r);
            check_put_output(r, path, contents[round], KILL_BYTES);
            json_decref(r);
            put_us = (bw_test_now_ms() - t0) * 1000;
        } else if (round == 2 || round == 3) {
            int64_t end = bw_test_now_ms() + 10000;
            while (tmp_files_in(dir) == tmp_before && !exists(target) && bw_test_now_ms() < end)
                ;
            if (round == 3)
                usleep(200);
        } else if (round >= 4) {
            usleep((useconds_t)(put_us * (round - 3) / 5));
        }
        assert_int_equal(bw_test_proc_signal(&K.workers[0], SIGKILL), 0);
        int code = -1;
        assert_int_equal(bw_test_proc_wait(&K.workers[0], 10000, &code), 0);
        assert_int_equal(code, 128 + SIGKILL);
        K.exit_checked[0] = 1;
        landed[round] = check_kill_dir(round, contents[round]);
        if (round == 0)
            assert_true(landed[round]);
        /* for the log: the kill came after the rename, during the write, or before the file was made */
        strcat(outcome, landed[round] ? " after" : tmp_files_in(dir) > tmp_before ? " during" : " before");
        assert_int_equal(bw_harness_finish(&K, 0), 0);
    }
    print_message("kill rounds (a whole put took %lld ms):%s\n", (long long)put_us / 1000, outcome);

    /* a temporary file as a crash leaves one, whether or not a kill above left any */
    write_file(fmt("%s/%s/kill/.bw-tmp.0123456789abcdef", root, T), "partial", 7);

    /* a new worker: lists exactly the puts that landed, never a temporary file; gets them whole */
    assert_int_equal(bw_harness_start(&H, env), 0);
    char want[400] = "";
    for (int round = 0; round < KILL_ROUNDS; round++)
        if (landed[round])
            snprintf(want + strlen(want), sizeof want - strlen(want), "%skill/round-%d.bin",
                     want[0] ? "," : "", round);
    list_is(T, json_pack("{s:s}", "prefix", "kill/"), want, false);
    list_is(T, json_object(), want, false);
    expect_code(run(T, "fs_blob_get", p_path("kill/.bw-tmp.0123456789abcdef")), "INVALID_PATH",
                "get of a temporary file");
    for (int round = 0; round < KILL_ROUNDS; round++) {
        char path[32];
        snprintf(path, sizeof path, "kill/round-%d.bin", round);
        if (landed[round])
            get_is(T, path, contents[round], KILL_BYTES);
        else
            expect_code(run(T, "fs_blob_get", p_path(path)), "NOT_FOUND", path);
        /* the path works as ever after the crash */
        unsigned char *again = filled((unsigned char)round, 1000);
        put_ok(T, path, again, 1000);
        get_is(T, path, again, 1000);
        free(again);
        free(contents[round]);
    }
    assert_int_equal(bw_harness_finish(&H, 0), 0);
}

/* ---- shutdown with work still on the thread pool ---- */

#define SHUT_ROUNDS 10
#define SHUT_PUTS 12
#define SHUT_BYTES (128 * 1024)
#define SHUT_DEPTH 16 /* directories each put creates (and fsyncs) on its way: work that uses the store */
#define SHUT_JMESPATH 4

/* An assignment of a jmespath job whose data (30,000 numbers) takes it to the thread pool. */
static json_t *p_big_jmespath(void)
{
    json_t *data = json_array();
    for (int i = 0; i < 30000; i++)
        json_array_append_new(data, json_integer(i * 7919 % 100003));
    return json_pack("{s:s,s:o}", "expression", "length(sort([*].to_string([@,@,@,@,@,@,@,@])))", "data",
                     data);
}

/* SHUTDOWN_TIMEOUT_MS=0 and SIGTERM while puts (and jmespath evaluations) run on the thread pool: the jobs
   are cancelled at once, and the worker must neither touch the store it shuts down while that work still
   uses it (ASan: heap-use-after-free in the store, a closed descriptor) nor hang; it exits 0, clean under
   the sanitizers. A race, so several rounds. */
static void test_shutdown_with_work_on_pool(void **state)
{
    const char *const env[] = {root_env, "SHUTDOWN_TIMEOUT_MS=0", "WORKER_MAX_CONCURRENCY=32", NULL};
    unsigned char *content = filled('s', SHUT_BYTES);
    char *b64 = b64_encode(content, SHUT_BYTES);
    json_t *jp = p_big_jmespath();
    int64_t slowest = 0;
    char deep[SHUT_DEPTH * 4 + 1] = "";
    for (int d = 0; d < SHUT_DEPTH; d++)
        snprintf(deep + strlen(deep), sizeof deep - strlen(deep), "d%d/", d % 10);
    for (int round = 0; round < SHUT_ROUNDS; round++) {
        assert_int_equal(bw_harness_start(&K, env), 0);
        char id[48], path[400], first[400];
        for (int i = 0; i < SHUT_PUTS; i++) {
            snprintf(id, sizeof id, "shut-%d-%d", round, i);
            snprintf(path, sizeof path, "shut/r%d/j%d/%sblob.bin", round, i, deep);
            submit_on(&K, id, T, "fs_blob_put", json_pack("{s:s,s:s}", "path", path, "bytes", b64));
            if (i % (SHUT_PUTS / SHUT_JMESPATH) == 0) {
                snprintf(id, sizeof id, "shut-jp-%d-%d", round, i);
                submit_on(&K, id, T, "jmespath", json_incref(jp));
            }
        }
        /* as soon as the first put's work has started on the pool (its first directory shows) */
        snprintf(first, sizeof first, "%s/%s/shut/r%d", root, T, round);
        int64_t end = bw_test_now_ms() + 20000;
        while (!exists(first) && bw_test_now_ms() < end)
            usleep(200);
        assert_true(exists(first));
        int64_t t0 = bw_test_now_ms();
        assert_int_equal(bw_test_proc_signal(&K.workers[0], SIGTERM), 0);
        int code = -1;
        int waited = bw_test_proc_wait(&K.workers[0], 30000, &code);
        if (waited != 0 || code != 0) {
            bw_test_proc_dump_log(&K.workers[0]);
            fail_msg("round %d: the worker did not exit 0 after SIGTERM with work on the pool (exit %d)",
                     round, code);
        }
        K.exit_checked[0] = 1;
        int64_t took = bw_test_now_ms() - t0;
        slowest = took > slowest ? took : slowest;
        assert_int_equal(bw_harness_finish(&K, 0), 0);
    }
    print_message("%d rounds: SIGTERM to exit 0 took at most %lld ms\n", SHUT_ROUNDS, (long long)slowest);
    json_decref(jp);
    free(b64);
    free(content);
}

/* ---- FS_TENANT_ISOLATION=false, FS_MAX_BLOB_BYTES=1KiB ---- */

static void test_size_limit(void **state)
{
    unsigned char *big = filled('b', 1025), *fits = filled('f', 1024);
    /* too large: refused before anything touches the disk */
    json_t *r = run(T, "fs_blob_put", p_put("big.bin", big, 1025, false));
    assert_non_null(strstr(str(r, "error_message"), "FS_MAX_BLOB_BYTES"));
    expect_code(r, "BLOB_TOO_LARGE", "1025 bytes");
    expect_code(run(T, "fs_blob_put", p_text("big.txt", fmt("%.*s", 1025, (const char *)big))),
                "BLOB_TOO_LARGE", "1025 bytes of content");
    expect_code(run(T, "fs_blob_put",
                    json_pack("{s:s,s:s,s:b}", "path", "big.txt", "content",
                              fmt("%.*s", 1025, (const char *)big), "if_absent", 1)),
                "BLOB_TOO_LARGE", "1025 bytes, if_absent");
    tree_is(root, ""); /* absent or empty */
    /* the limit itself fits */
    put_ok(T, "fits.bin", fits, 1024);
    get_is(T, "fits.bin", fits, 1024);
    /* a larger file that got there by other means: get refuses it, stat shows it */
    write_file(fmt("%s/planted.bin", root), big, 1025);
    r = run(T, "fs_blob_get", p_path("planted.bin"));
    assert_non_null(strstr(str(r, "error_message"), "FS_MAX_BLOB_BYTES"));
    expect_code(r, "BLOB_TOO_LARGE", "get of 1025 bytes");
    r = run(T, "fs_blob_stat", p_path("planted.bin"));
    assert_int_equal(json_integer_value(json_object_get(output(r, "stat planted"), "size")), 1025);
    json_decref(r);
    free(big);
    free(fits);
}

/* Without isolation every tenant's paths are the root's. */
static void test_shared_root(void **state)
{
    put_text_ok(T, "shared/a.txt", "from acme");
    file_is(fmt("%s/shared/a.txt", root), "from acme");
    get_text_is("globex", "shared/a.txt", "from acme");
    /* every list sees the same, however often it is asked */
    list_is("globex", json_pack("{s:s}", "prefix", "shared/"), "shared/a.txt", false);
    for (int i = 0; i < 3; i++) {
        list_is(T, json_object(), "fits.bin,planted.bin,shared/a.txt", false);
        list_is("globex", json_object(), "fits.bin,planted.bin,shared/a.txt", false);
    }
    json_t *r = run("globex", "fs_blob_delete", p_path("shared/a.txt"));
    assert_true(json_is_true(json_object_get(output(r, "globex deletes acme's"), "deleted")));
    json_decref(r);
    expect_code(run(T, "fs_blob_get", p_path("shared/a.txt")), "NOT_FOUND", "acme's after globex's delete");
    /* still no way out of the root */
    expect_code(run(T, "fs_blob_put", p_text("../escape.txt", "x")), "INVALID_PATH", "../ without isolation");
    tree_is(tmp,
            "outside/,store/,store/blobs/,store/blobs/fits.bin,store/blobs/planted.bin,store/blobs/shared/");
}

/* A listing as long as a NATS message can carry: more matches than fit come back cut (truncated), never
   as a result too large to send. */
static void test_list_fits_in_a_message(void **state)
{
    char dir[1200], name[300], path[1500];
    memset(name, 'n', 240);
    name[240] = '\0';
    snprintf(dir, sizeof dir, "%s/%s/big", root, T);
    mkdir(dir, 0755);
    for (int d = 0; d < 3; d++) { /* three levels of 240-byte names: paths of ~1 KB */
        size_t n = strlen(dir);
        snprintf(dir + n, sizeof dir - n, "/%.*s%d", 240 - 1, name, d);
        mkdir(dir, 0755);
    }
    for (int i = 0; i < 1200; i++) {
        snprintf(path, sizeof path, "%s/%.*s%04d", dir, 200, name, i);
        write_file(path, "x", 1);
    }
    json_t *r = run(T, "fs_blob_list", json_pack("{s:s,s:i}", "prefix", "big/", "limit", 10000));
    json_t *out = output(r, "a listing of 1,200 paths of ~1 KB");
    assert_true(json_is_true(json_object_get(out, "truncated")));
    size_t n = json_array_size(json_object_get(out, "entries"));
    assert_true(n > 100 && n < 1200);
    char *all = json_dumps(out, JSON_COMPACT);
    assert_true(strlen(all) < 1024 * 1024); /* nats-server's default max_payload */
    free(all);
    json_decref(r);
}

int main(int argc, char **argv)
{
    static const char *const names[] = {"test_round_trips",
                                        "test_list",
                                        "test_refusals",
                                        "test_symlinks",
                                        "test_put_onto_link",
                                        "test_put_onto_special_files",
                                        "test_tenant_isolation",
                                        "test_concurrent_puts",
                                        "test_list_fits_in_a_message",
                                        "test_kill_during_put",
                                        "test_shutdown_with_work_on_pool",
                                        "test_size_limit",
                                        "test_shared_root"};
    bw_test_select(argc, argv, names, sizeof names / sizeof names[0]);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trips),
        cmocka_unit_test(test_list),
        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_symlinks),
        cmocka_unit_test(test_put_onto_link),
        cmocka_unit_test(test_put_onto_special_files),
        cmocka_unit_test(test_tenant_isolation),
        cmocka_unit_test(test_concurrent_puts),
        cmocka_unit_test(test_list_fits_in_a_message),
    };
    const struct CMUnitTest kill[] = {
        cmocka_unit_test(test_kill_during_put),
    };
    const struct CMUnitTest shutdown[] = {
        cmocka_unit_test(test_shutdown_with_work_on_pool),
    };
    const struct CMUnitTest small[] = {
        cmocka_unit_test(test_size_limit),
        cmocka_unit_test(test_shared_root),
    };
    int rc = cmocka_run_group_tests_name("fs_blob", tests, setup, teardown);
    rc |= cmocka_run_group_tests_name("fs_blob kill during put", kill, setup_dirs_only, teardown_kill);
    rc |= cmocka_run_group_tests_name("fs_blob shutdown with work on the pool", shutdown, setup_dirs_only,
                                      teardown_kill);
    rc |= cmocka_run_group_tests_name("fs_blob small limit, shared root", small, setup_small, teardown);
    return rc;
}
