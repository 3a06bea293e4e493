/* The registry of job types: one table, one line per handler (h2o's lib/handler layout). */
#ifndef BW_CORE_HANDLER_H
#define BW_CORE_HANDLER_H

#include "core/job.h"

/* The handler for a job type, or NULL when the type is unknown. */
const bw_handler_t *bw_handler_find(const char *type);
/* Names of all registered types, NULL-terminated (for --help and errors). */
const char *const *bw_handler_names(void);
/* How many types are registered, and a type's place among them (its names' order); -1 when unknown. */
int bw_handler_count(void);
int bw_handler_index(const char *type);
/* The handler at index i (0..bw_handler_count()-1), NULL otherwise. */
const bw_handler_t *bw_handler_at(int i);

/* Lets each handler release what it keeps across jobs (loop thread, when the worker is destroyed). A
   handler whose jobs left work on the thread pool (cancelled by the shutdown, core/poolwork.h) releases it
   once that work has returned, from its completion: the caller keeps running the loop until no request is
   left (as the daemon does) before it closes the loop. */
void bw_handlers_shutdown(void);

extern const bw_handler_t bw_handler_echo;
extern const bw_handler_t bw_handler_fs_blob_delete;
extern const bw_handler_t bw_handler_fs_blob_get;
extern const bw_handler_t bw_handler_fs_blob_list;
extern const bw_handler_t bw_handler_fs_blob_put;
extern const bw_handler_t bw_handler_fs_blob_stat;
extern const bw_handler_t bw_handler_graphql;
extern const bw_handler_t bw_handler_http;
extern const bw_handler_t bw_handler_human_approval;
extern const bw_handler_t bw_handler_javascript;
extern const bw_handler_t bw_handler_jmespath;
extern const bw_handler_t bw_handler_sleep;
extern const bw_handler_t bw_handler_sql;

#endif
