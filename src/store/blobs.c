/*
 * The blob store (see blobs.h). Directory descriptors are O_RDONLY|O_DIRECTORY (fsync needs a real
 * descriptor); every open is O_CLOEXEC and O_NOFOLLOW, files also O_NONBLOCK (a FIFO planted in the root
 * must not hang a thread) and checked to be regular files.
 */
#include "store/blobs.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "util/clock.h"
#include "util/digest.h"
#include "util/xalloc.h"

#define TMP_PREFIX ".bw-tmp."
#define RESOLVE_FLAGS (RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)

struct bw_blobs {
    int base; /* FS_BASE_DIR */
    bool isolate, walk;
};

static int fail(bw_blob_err_t *e, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int fail(bw_blob_err_t *e, const char *code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof e->message, fmt, ap);
    va_end(ap);
    e->code = code;
    return -1;
}

/* ---- paths ---- */

const char *bw_blob_path_refusal(const char *path, size_t len)
{
    if (len == 0)
        return "the path is empty";
    if (memchr(path, '\0', len) != NULL)
        return "the path contains a NUL byte";
    if (len > BW_BLOB_PATH_MAX)
        return "the path is longer than 1024 bytes";
    if (path[0] == '/')
        return "the path is absolute: paths are relative to the store";
    int depth = 0;
    for (const char *p = path, *end = path + len; p <= end; depth++) {
        const char *slash = memchr(p, '/', (size_t)(end - p));
        size_t n = slash != NULL ? (size_t)(slash - p) : (size_t)(end - p);
        if (n == 0)
            return "the path has an empty component (a leading, trailing or doubled '/')";
        if ((n == 1 && p[0] == '.') || (n == 2 && p[0] == '.' && p[1] == '.'))
            return "the path has a '.' or '..' component";
        if (n > 255)
            return "a component of the path is longer than 255 bytes";
        if (n >= sizeof TMP_PREFIX - 1 && memcmp(p, TMP_PREFIX, sizeof TMP_PREFIX - 1) == 0)
            return "names starting with .bw-tmp. are the store's own";
        for (size_t i = 0; i < n; i++)
            if ((unsigned char)p[i] < 0x20 || p[i] == 0x7f)
                return "the path contains a control character";
        if (slash == NULL)
            break;
        p = slash + 1;
    }
    if (depth + 1 > BW_BLOB_DEPTH_MAX)
        return "the path has more than 64 components";
    return NULL;
}

/* ---- opening, beneath a directory and never through a link ---- */

static bool have_openat2 = true;

/* openat2(dir, name, flags, RESOLVE_FLAGS); -1 with errno ENOSYS where the kernel lacks it. */
static int open_beneath(int dir, const char *name, int flags, mode_t mode)
{
    struct open_how how = {.flags = (uint64_t)(flags | O_CLOEXEC | O_NOFOLLOW),
                           .mode = (flags & O_CREAT) ? mode : 0,
                           .resolve = RESOLVE_FLAGS};
    return (int)syscall(SYS_openat2, dir, name, &how, sizeof how);
}

/* Opens one component (no '/' in name) below dir. */
static int open_component(const bw_blobs_t *s, int dir, const char *name, int flags, mode_t mode)
{
    if (!s->walk && have_openat2) {
        int fd = open_beneath(dir, name, flags, mode);
        if (fd >= 0 || errno != ENOSYS)
            return fd;
        have_openat2 = false;
    }
    return openat(dir, name, flags | O_CLOEXEC | O_NOFOLLOW, mode);
}

/* Why a component could not be opened as asked, in the job's terms. */
static int open_error(bw_blob_err_t *e, int dir, const char *name, const char *path, int err, bool writing)
{
    struct stat st;
    if (err == ELOOP || err == EXDEV ||
        ((err == ENOTDIR || err == EMLINK) && fstatat(dir, name, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
         S_ISLNK(st.st_mode)))
        return fail(e, "INVALID_PATH", "'%s': a symbolic link is on the way, and links are not followed",
                    path);
    if (err == ENOENT)
        return fail(e, "NOT_FOUND", "no blob at '%s'", path);
    if (err == ENXIO || err == ENODEV) /* a socket (or a device without a driver): not a blob */
        return fail(e, writing ? "INVALID_PATH" : "NOT_FOUND", "no blob at '%s' (not a file)", path);
    if (err == ENOTDIR)
        return fail(e, writing ? "INVALID_PATH" : "NOT_FOUND",
                    "'%s': a component on the way is a blob, not a directory", path);
    if (err == ENAMETOOLONG)
        return fail(e, "INVALID_PATH", "'%s': a name is too long", path);
    return fail(e, writing ? "FILE_WRITE_ERROR" : "FILE_READ_ERROR", "'%s': %s", path, strerror(err));
}

static void fsync_dir(int dir)
{
    (void)fsync(
        dir); /* a directory descriptor; errors here would be the disk's, reported by the next write */
}

/* A descriptor of its own for the directory dir is open on: a dup would share dir's read position, and
   one listing reading it to the end would leave every later one empty. */
static int reopen_dir(int dir)
{
    return openat(dir, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
}

/* The directory of a tenant (created when create), or -1 (NOT_FOUND when it does not exist yet). */
static int tenant_dir(const bw_blobs_t *s, const char *tenant, bool create, bw_blob_err_t *e)
{
    if (!s->isolate) {
        int fd = reopen_dir(s->base);
        return fd >= 0 ? fd : (fail(e, "FILE_READ_ERROR", "cannot open the store: %s", strerror(errno)), -1);
    }
    /* the tenant id as a single safe name: [A-Za-z0-9_-] and inner dots kept, every other byte %XX; a
       name that would pass 200 bytes is cut at 130 and followed by '~' and the id's SHA-256 ('~' is never
       kept as is, so a cut name cannot meet a whole one) */
    char name[3 * 256 + 80];
    size_t n = 0;
    const unsigned char *t = (const unsigned char *)tenant;
    for (; *t && n + 4 < sizeof name; t++) {
        bool keep = (*t >= 'a' && *t <= 'z') || (*t >= 'A' && *t <= 'Z') || (*t >= '0' && *t <= '9') ||
                    *t == '_' || *t == '-' || (*t == '.' && n > 0);
        n += keep ? (size_t)snprintf(name + n, 2, "%c", *t) : (size_t)snprintf(name + n, 4, "%%%02X", *t);
    }
    if (n == 0)
        n = (size_t)snprintf(name, sizeof name, "%%");
    if (n > 200 || *t != '\0') {
        char digest[65];
        size_t cut = 130;
        while (cut > 0 && (name[cut - 1] == '%' || (cut > 1 && name[cut - 2] == '%')))
            cut--; /* not inside a %XX */
        bw_sha256_hex(tenant, strlen(tenant), digest);
        snprintf(name + cut, sizeof name - cut, "~%s", digest);
    }
    if (create && mkdirat(s->base, name, 0750) != 0 && errno != EEXIST)
        return fail(e, "FILE_WRITE_ERROR", "cannot create the tenant's directory: %s", strerror(errno)), -1;
    int fd = open_component(s, s->base, name, O_RDONLY | O_DIRECTORY, 0);
    if (fd < 0 && errno == ENOENT && !create)
        return fail(e, "NOT_FOUND", "nothing stored for this tenant yet"), -1;
    if (fd < 0)
        return fail(e, "FILE_READ_ERROR", "cannot open the tenant's directory: %s", strerror(errno)), -1;
    return fd;
}

/* Walks to the directory holding path's last component, creating directories when create; returns its
   descriptor (the root's own for a one-component path) and the last component in *leaf, or -1. */
static int open_parent(const bw_blobs_t *s, int root, const char *path, bool create, const char **leaf,
                       bw_blob_err_t *e)
{
    char comp[256];
    int dir = reopen_dir(root);
    const char *p = path;
    if (dir < 0)
        return fail(e, "FILE_READ_ERROR", "'%s': %s", path, strerror(errno)), -1;
    for (const char *slash; (slash = strchr(p, '/')) != NULL; p = slash + 1) {
        size_t n = (size_t)(slash - p);
        memcpy(comp, p, n);
        comp[n] = '\0';
        bool made = create && mkdirat(dir, comp, 0750) == 0;
        int next = open_component(s, dir, comp, O_RDONLY | O_DIRECTORY, 0);
        if (next < 0) {
            int err = errno;
            open_error(e, dir, comp, path, err, create);
            close(dir);
            return -1;
        }
        if (made)
            fsync_dir(dir);
        close(dir);
        dir = next;
    }
    *leaf = p;
    return dir;
}

/* Opens the blob at path for reading: a regular file, or -1. */
static int open_blob(const bw_blobs_t *s, int root, const char *path, bw_blob_err_t *e)
{
    int fd = -1;
    if (!s->walk && have_openat2) {
        fd = open_beneath(root, path, O_RDONLY | O_NONBLOCK, 0);
        if (fd < 0 && errno == ENOSYS)
            have_openat2 = false;
        else if (fd < 0) {
            int err = errno;
            return open_error(e, root, path, path, err, false);
        }
    }
    if (fd < 0) { /* the walk: asked for, or openat2 is missing */
        const char *leaf;
        int dir = open_parent(s, root, path, false, &leaf, e);
        if (dir < 0)
            return -1;
        fd = openat(dir, leaf, O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOFOLLOW);
        if (fd < 0) {
            int err = errno;
            open_error(e, dir, leaf, path, err, false);
            close(dir);
            return -1;
        }
        close(dir);
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int err = errno;
        close(fd);
        return fail(e, "FILE_READ_ERROR", "'%s': %s", path, strerror(err));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return fail(e, "NOT_FOUND", "no blob at '%s' (%s)", path,
                    S_ISDIR(st.st_mode) ? "a directory" : "not a file");
    }
    return fd;
}

/* ---- content ---- */

static void fill_times(bw_blob_info_t *info, const struct stat *st)
{
    info->size = (uint64_t)st->st_size;
    info->modified_ms = (int64_t)st->st_mtim.tv_sec * 1000 + st->st_mtim.tv_nsec / 1000000;
}

/* Reads the whole file (its size as fstat said, at most max) into *data, hashing it. */
static int read_all(int fd, const char *path, uint64_t max, const char *max_why, void **data,
                    bw_blob_info_t *info, bw_blob_err_t *e)
{
    struct stat st;
    if (fstat(fd, &st) != 0)
        return fail(e, "FILE_READ_ERROR", "'%s': %s", path, strerror(errno));
    if ((uint64_t)st.st_size > max)
        return fail(e, "BLOB_TOO_LARGE", "'%s' is %lld bytes; %s", path, (long long)st.st_size, max_why);
    char *buf = bw_malloc((size_t)st.st_size + 1);
    size_t got = 0;
    while (got < (size_t)st.st_size) {
        ssize_t r = pread(fd, buf + got, (size_t)st.st_size - got, (off_t)got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) { /* shorter than it was: a put replaced it; ours is the inode we opened, so an error */
            int err = r < 0 ? errno : EIO;
            free(buf);
            return fail(e, "FILE_READ_ERROR", "'%s': %s", path, strerror(err));
        }
        got += (size_t)r;
    }
    fill_times(info, &st);
    bw_sha256_hex(buf, got, info->sha256);
    if (data != NULL)
        *data = buf;
    else
        free(buf);
    return 0;
}

/* ---- operations ---- */

bw_blobs_t *bw_blobs_open(const char *base_dir, bool tenant_isolation, char *err, size_t errlen)
{
    if (base_dir == NULL || base_dir[0] == '\0') {
        snprintf(err, errlen, "FS_BASE_DIR is empty");
        return NULL;
    }
    char *path = bw_strdup(base_dir); /* mkdir -p, the operator's path: links there are the operator's */
    for (char *p = path + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        (void)mkdir(path, 0750);
        *p = '/';
    }
    (void)mkdir(path, 0750);
    free(path);
    int fd = open(base_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, errlen, "cannot create or open FS_BASE_DIR: %s", strerror(errno));
        return NULL;
    }
    bw_blobs_t *s = bw_calloc(1, sizeof *s);
    s->base = fd;
    s->isolate = tenant_isolation;
    return s;
}

void bw_blobs_close(bw_blobs_t *s)
{
    if (s == NULL)
        return;
    close(s->base);
    free(s);
}

void bw_blobs_force_walk(bw_blobs_t *s, bool walk)
{
    s->walk = walk;
}

static int write_all(int fd, const void *data, size_t len)
{
    for (size_t done = 0; done < len;) {
        ssize_t w = write(fd, (const char *)data + done, len - done);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            return -1;
        done += (size_t)w;
    }
    return 0;
}

int bw_blob_put(bw_blobs_t *s, const char *tenant, const char *path, const void *data, size_t len,
                bool if_absent, bw_blob_info_t *info, bw_blob_err_t *e)
{
    int root = tenant_dir(s, tenant, true, e);
    if (root < 0)
        return -1;
    const char *leaf;
    int dir = open_parent(s, root, path, true, &leaf, e);
    close(root);
    if (dir < 0)
        return -1;
    unsigned char rnd[8];
    char tmp[sizeof TMP_PREFIX + 16];
    if (getrandom(rnd, sizeof rnd, 0) != (ssize_t)sizeof rnd)
        memset(rnd, 0, sizeof rnd);
    snprintf(tmp, sizeof tmp, TMP_PREFIX "%02x%02x%02x%02x%02x%02x%02x%02x", rnd[0], rnd[1], rnd[2], rnd[3],
             rnd[4], rnd[5], rnd[6], rnd[7]);
    int fd = openat(dir, tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0640);
    int rc = -1;
    if (fd < 0) {
        fail(e, "FILE_WRITE_ERROR", "'%s': %s", path, strerror(errno));
        goto out;
    }
    if (write_all(fd, data, len) != 0 || fsync(fd) != 0) {
        fail(e, "FILE_WRITE_ERROR", "'%s': %s", path, strerror(errno));
        close(fd);
        unlinkat(dir, tmp, 0);
        goto out;
    }
    struct stat st, there;
    fstat(fd, &st);
    close(fd);
    /* Only a blob is replaced: a link planted where the blob goes is refused like one on the way, and so
       is a FIFO, a socket or a device node (a directory makes the rename fail, below). Looked at with
       fstatat and AT_SYMLINK_NOFOLLOW, which opens nothing: no link is followed, no FIFO is opened. What
       is there may change between this look and the rename; what could slip through that window is only
       a replacement of the name (a rename never follows a link nor opens what it replaces, and fails on a
       directory), which is what happens to any blob anyway. renameat2's RENAME_EXCHANGE could close it,
       but an exchange that must be undone shows the new blob to readers and then takes it back. */
    if (fstatat(dir, leaf, &there, AT_SYMLINK_NOFOLLOW) == 0 && !S_ISREG(there.st_mode)) {
        unlinkat(dir, tmp, 0);
        if (S_ISLNK(there.st_mode))
            fail(e, "INVALID_PATH", "'%s': a symbolic link is on the way, and links are not followed", path);
        else if (S_ISDIR(there.st_mode))
            fail(e, "INVALID_PATH", "'%s' is a directory", path);
        else
            fail(e, "INVALID_PATH", "'%s' is not a blob (%s): only blobs are replaced", path,
                 S_ISFIFO(there.st_mode)   ? "a FIFO"
                 : S_ISSOCK(there.st_mode) ? "a socket"
                                           : "a device node");
        goto out;
    }
    int r = if_absent ? renameat2(dir, tmp, dir, leaf, RENAME_NOREPLACE) : renameat(dir, tmp, dir, leaf);
    if (r != 0 && if_absent && errno == EINVAL) { /* a file system without RENAME_NOREPLACE */
        r = linkat(dir, tmp, dir, leaf, 0);
        if (r == 0)
            unlinkat(dir, tmp, 0);
    }
    if (r != 0) {
        int err = errno;
        unlinkat(dir, tmp, 0);
        if (err == EEXIST && if_absent)
            fail(e, "ALREADY_EXISTS", "a blob exists at '%s' (if_absent)", path);
        else if (err == EISDIR || err == ENOTEMPTY || err == EEXIST)
            fail(e, "INVALID_PATH", "'%s' is a directory", path);
        else
            fail(e, "FILE_WRITE_ERROR", "'%s': %s", path, strerror(err));
        goto out;
    }
    fsync_dir(dir);
    fill_times(info, &st);
    info->size = len;
    bw_sha256_hex(data, len, info->sha256);
    rc = 0;
out:
    close(dir);
    return rc;
}

int bw_blob_get(bw_blobs_t *s, const char *tenant, const char *path, uint64_t max, const char *max_why,
                void **data, bw_blob_info_t *info, bw_blob_err_t *e)
{
    int root = tenant_dir(s, tenant, false, e);
    if (root < 0) {
        if (e->code != NULL && strcmp(e->code, "NOT_FOUND") == 0)
            fail(e, "NOT_FOUND", "no blob at '%s'", path);
        return -1;
    }
    int fd = open_blob(s, root, path, e);
    close(root);
    if (fd < 0)
        return -1;
    int rc = read_all(fd, path, max, max_why, data, info, e);
    close(fd);
    return rc;
}

int bw_blob_stat(bw_blobs_t *s, const char *tenant, const char *path, bw_blob_info_t *info, bw_blob_err_t *e)
{
    return bw_blob_get(s, tenant, path, UINT64_MAX, "", NULL, info, e);
}

/* For deletes and listings, a missing directory is nothing to do: 0 (the error cleared) when e says
   NOT_FOUND, else -1. */
static int nothing_there(bw_blob_err_t *e)
{
    if (e->code != NULL && strcmp(e->code, "NOT_FOUND") == 0) {
        e->code = NULL;
        return 0;
    }
    return -1;
}

int bw_blob_delete(bw_blobs_t *s, const char *tenant, const char *path, bool *deleted, bw_blob_err_t *e)
{
    *deleted = false;
    int root = tenant_dir(s, tenant, false, e);
    if (root < 0)
        return nothing_there(e);
    const char *leaf;
    int dir = open_parent(s, root, path, false, &leaf, e);
    close(root);
    if (dir < 0)
        return nothing_there(e);
    struct stat st;
    int rc = 0;
    if (fstatat(dir, leaf, &st, AT_SYMLINK_NOFOLLOW) != 0) {
        if (errno != ENOENT)
            rc = fail(e, "FILE_WRITE_ERROR", "'%s': %s", path, strerror(errno));
    } else if (S_ISDIR(st.st_mode)) {
        rc = fail(e, "INVALID_PATH", "'%s' is a directory", path);
    } else if (!S_ISREG(st.st_mode)) {
        rc = fail(e, "INVALID_PATH", "'%s' is not a blob (a link or a special file)", path);
    } else if (unlinkat(dir, leaf, 0) != 0) {
        if (errno != ENOENT)
            rc = fail(e, "FILE_WRITE_ERROR", "'%s': %s", path, strerror(errno));
    } else {
        *deleted = true;
        fsync_dir(dir);
    }
    close(dir);
    return rc;
}

/* ---- leftovers ---- */

/* A directory stream of dir's own (see reopen_dir), or NULL. */
static DIR *open_listing(int dir)
{
    int fd = reopen_dir(dir);
    DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
    if (d == NULL && fd >= 0)
        close(fd);
    return d;
}

/* Removes the temporary files older than max_age_s below dir (a put cut short by a crash), at most
 *budget entries visited. */
static void sweep_dir(int dir, time_t max_age_s, size_t *budget, size_t *removed)
{
    DIR *d = open_listing(dir);
    if (d == NULL)
        return;
    time_t now = time(NULL);
    for (struct dirent *de; (de = readdir(d)) != NULL && *budget > 0; (*budget)--) {
        struct stat st;
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0 ||
            fstatat(dir, de->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0)
            continue;
        if (S_ISDIR(st.st_mode)) {
            int sub = openat(dir, de->d_name, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
            if (sub >= 0) {
                sweep_dir(sub, max_age_s, budget, removed);
                close(sub);
            }
        } else if (S_ISREG(st.st_mode) && strncmp(de->d_name, TMP_PREFIX, sizeof TMP_PREFIX - 1) == 0 &&
                   now - st.st_mtime > max_age_s && unlinkat(dir, de->d_name, 0) == 0) {
            (*removed)++;
        }
    }
    closedir(d);
}

size_t bw_blobs_sweep(bw_blobs_t *s, int64_t max_age_s)
{
    size_t budget = BW_BLOB_LIST_VISIT_MAX, removed = 0;
    sweep_dir(s->base, (time_t)max_age_s, &budget, &removed);
    return removed;
}

/* ---- listing ---- */

/* A listing keeps only the limit smallest paths seen so far (a max-heap on the path), so that its memory
   is bounded by the limit, not by how many blobs the walk meets (up to BW_BLOB_LIST_VISIT_MAX). */
typedef struct found {
    char *path;
    uint64_t size;
    int64_t modified_ms;
} found_t;

typedef struct lister {
    found_t *heap; /* at most limit, the largest path first */
    size_t n, limit, matched, visited;
    bool cut;
} lister_t;

static void heap_swap(found_t *a, found_t *b)
{
    found_t t = *a;
    *a = *b;
    *b = t;
}

static void sift_up(found_t *h, size_t i)
{
    for (; i > 0 && strcmp(h[(i - 1) / 2].path, h[i].path) < 0; i = (i - 1) / 2)
        heap_swap(&h[(i - 1) / 2], &h[i]);
}

static void sift_down(found_t *h, size_t n, size_t i)
{
    for (;;) {
        size_t big = i, l = 2 * i + 1, r = l + 1;
        if (l < n && strcmp(h[l].path, h[big].path) > 0)
            big = l;
        if (r < n && strcmp(h[r].path, h[big].path) > 0)
            big = r;
        if (big == i)
            return;
        heap_swap(&h[i], &h[big]);
        i = big;
    }
}

/* Offers one blob: kept when among the limit smallest paths so far. */
static void offer(lister_t *l, const char *path, const struct stat *st)
{
    l->matched++;
    if (l->n == l->limit && (l->n == 0 || strcmp(path, l->heap[0].path) >= 0))
        return;
    found_t f = {bw_strdup(path), (uint64_t)st->st_size,
                 (int64_t)st->st_mtim.tv_sec * 1000 + st->st_mtim.tv_nsec / 1000000};
    if (l->n < l->limit) {
        l->heap[l->n] = f;
        sift_up(l->heap, l->n++);
    } else {
        free(l->heap[0].path);
        l->heap[0] = f;
        sift_down(l->heap, l->n, 0);
    }
}

/* Adds what is below dir (whose path is rel, "" for the root) and starts with want (a name prefix
   applying to this level only when first). */
static void walk(lister_t *l, int dir, const char *rel, const char *want)
{
    DIR *d = open_listing(dir);
    if (d == NULL)
        return;
    for (struct dirent *de; (de = readdir(d)) != NULL && !l->cut;) {
        const char *name = de->d_name;
        if (strcmp(name, ".") == 0 || strcmp(name, "..") == 0 ||
            strncmp(name, TMP_PREFIX, sizeof TMP_PREFIX - 1) == 0)
            continue;
        if (want != NULL && strncmp(name, want, strlen(want)) != 0)
            continue;
        if (++l->visited > BW_BLOB_LIST_VISIT_MAX) {
            l->cut = true;
            break;
        }
        struct stat st;
        if (fstatat(dir, name, &st, AT_SYMLINK_NOFOLLOW) != 0 || S_ISLNK(st.st_mode))
            continue; /* links are not the store's: never listed, never followed */
        char *child = rel[0] ? bw_asprintf("%s/%s", rel, name) : bw_strdup(name);
        if (S_ISDIR(st.st_mode)) {
            int sub = openat(dir, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
            if (sub >= 0) {
                walk(l, sub, child, NULL);
                close(sub);
            }
        } else if (S_ISREG(st.st_mode)) {
            offer(l, child, &st);
        }
        free(child);
    }
    closedir(d);
}

static int by_path(const void *a, const void *b)
{
    return strcmp(((const found_t *)a)->path, ((const found_t *)b)->path);
}

int bw_blob_list(bw_blobs_t *s, const char *tenant, const char *prefix, size_t limit, json_t **entries,
                 bool *truncated, bw_blob_err_t *e)
{
    *entries = json_array();
    *truncated = false;
    const char *slash = strrchr(prefix, '/');
    char *dirpath = slash != NULL ? bw_strndup(prefix, (size_t)(slash - prefix)) : bw_strdup("");
    const char *want = slash != NULL ? slash + 1 : prefix;
    if (dirpath[0] != '\0' && bw_blob_path_refusal(dirpath, strlen(dirpath)) != NULL) {
        fail(e, "INVALID_PATH", "prefix '%s': %s", prefix, bw_blob_path_refusal(dirpath, strlen(dirpath)));
        free(dirpath);
        return -1;
    }
    int root = tenant_dir(s, tenant, false, e);
    if (root < 0) {
        free(dirpath);
        return nothing_there(e);
    }
    int dir = root;
    if (dirpath[0] != '\0') { /* the directory part of the prefix, opened as the rest of the store is */
        char *probe = bw_asprintf("%s/x", dirpath);
        const char *leaf;
        dir = open_parent(s, root, probe, false, &leaf, e);
        free(probe);
        close(root);
        if (dir < 0) {
            free(dirpath);
            return nothing_there(e);
        }
    }
    lister_t l = {.heap = bw_malloc((limit + 1) * sizeof *l.heap), .limit = limit};
    walk(&l, dir, dirpath, want);
    close(dir);
    free(dirpath);
    qsort(l.heap, l.n, sizeof *l.heap, by_path);
    char when[40];
    for (size_t i = 0; i < l.n; i++) {
        json_array_append_new(*entries, json_pack("{s:s,s:I,s:s}", "path", l.heap[i].path, "size",
                                                  (json_int_t)l.heap[i].size, "modified",
                                                  bw_rfc3339_ms(l.heap[i].modified_ms, when, sizeof when)));
        free(l.heap[i].path);
    }
    *truncated = l.matched > limit || l.cut;
    free(l.heap);
    return 0;
}
