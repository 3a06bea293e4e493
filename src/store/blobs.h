/*
 * The blob store of the fs_blob_* job types: files under one root directory (FS_BASE_DIR), one
 * subdirectory per tenant when isolated, that no path can lead out of.
 *
 * Paths are relative, '/'-separated, at most BW_BLOB_PATH_MAX bytes and BW_BLOB_DEPTH_MAX components
 * of at most 255 bytes each; empty components, "." and "..", NUL and other control characters, and
 * names starting with ".bw-tmp." (the store's temporary files) are refused. Nothing is decoded: "%2e%2e"
 * is a file named so. Resolution is the kernel's: openat2 with RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
 * RESOLVE_NO_MAGICLINKS from the tenant's directory, or, where openat2 is missing, a walk of openat calls
 * with O_NOFOLLOW component by component; a symbolic link anywhere on the way is refused, whoever planted
 * it and whenever (a directory swapped for a link during a put is caught by the same calls).
 *
 * A put writes a temporary file in the target directory, fsyncs it, renames it over the target (with
 * RENAME_NOREPLACE for if_absent) and fsyncs the directory: a reader sees the old blob or the new one,
 * never part of one, and a crash leaves at most a hidden temporary file.
 *
 * Every function blocks on file I/O: call them off the event loop (the handler uses the thread pool).
 */
#ifndef BW_STORE_BLOBS_H
#define BW_STORE_BLOBS_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define BW_BLOB_PATH_MAX 1024
#define BW_BLOB_DEPTH_MAX 64

typedef struct bw_blobs bw_blobs_t;

/* The outcome of an operation: code NULL on success, else a stable error code (INVALID_PATH,
   NOT_FOUND, ALREADY_EXISTS, BLOB_TOO_LARGE, FILE_READ_ERROR, FILE_WRITE_ERROR) and a message that
   names the job's path, never the host's. */
typedef struct bw_blob_err {
    const char *code;
    char message[320];
} bw_blob_err_t;

typedef struct bw_blob_info {
    uint64_t size;
    char sha256[65];     /* lowercase hex */
    int64_t modified_ms; /* wall clock */
} bw_blob_info_t;

/* Opens (creating it and its parents when missing) the root. NULL with the reason in err. */
bw_blobs_t *bw_blobs_open(const char *base_dir, bool tenant_isolation, char *err, size_t errlen);
void bw_blobs_close(bw_blobs_t *s);
/* Removes temporary files older than max_age_s anywhere in the store (puts a crash cut short); returns
   how many. Visits at most BW_BLOB_LIST_VISIT_MAX entries. */
size_t bw_blobs_sweep(bw_blobs_t *s, int64_t max_age_s);
/* Test hook: walk with openat instead of using openat2 (as where the kernel lacks it). */
void bw_blobs_force_walk(bw_blobs_t *s, bool walk);

/* NULL when path is acceptable; else why not. */
const char *bw_blob_path_refusal(const char *path, size_t len);

int bw_blob_put(bw_blobs_t *s, const char *tenant, const char *path, const void *data, size_t len,
                bool if_absent, bw_blob_info_t *info, bw_blob_err_t *e);
/* Reads a blob of at most max bytes (BLOB_TOO_LARGE beyond, with max_why saying what sets the limit);
 *data is malloc'd. */
int bw_blob_get(bw_blobs_t *s, const char *tenant, const char *path, uint64_t max, const char *max_why,
                void **data, bw_blob_info_t *info, bw_blob_err_t *e);
int bw_blob_stat(bw_blobs_t *s, const char *tenant, const char *path, bw_blob_info_t *info, bw_blob_err_t *e);
/* Blobs whose path starts with prefix, in path order, at most limit: *entries is an array of {path,
   size, modified}; *truncated when more matched (or the walk met BW_BLOB_LIST_VISIT_MAX entries, where it
   stops reading). The walk holds only the limit smallest paths met so far, never every match. */
#define BW_BLOB_LIST_VISIT_MAX 200000
int bw_blob_list(bw_blobs_t *s, const char *tenant, const char *prefix, size_t limit, json_t **entries,
                 bool *truncated, bw_blob_err_t *e);
/* *deleted: whether there was a blob to delete. */
int bw_blob_delete(bw_blobs_t *s, const char *tenant, const char *path, bool *deleted, bw_blob_err_t *e);

#endif
