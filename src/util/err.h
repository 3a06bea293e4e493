/*
 * One error vocabulary for low-level functions (libuv's UV_ERRNO_MAP habit): they return 0 or a
 * negative bw_err_t. Wire-level job failures use stable error_code strings instead (see core/job.h).
 */
#ifndef BW_UTIL_ERR_H
#define BW_UTIL_ERR_H

#define BW_ERR_MAP(X)                                                   \
    X(INVAL, "invalid argument")                                        \
    X(NOMEM, "out of memory")                                           \
    X(RANGE, "value out of range")                                      \
    X(PARSE, "cannot parse input")                                      \
    X(NOTFOUND, "not found")                                            \
    X(EXISTS, "already exists")                                         \
    X(FULL, "capacity exhausted")                                       \
    X(IO, "input/output error")                                         \
    X(NATS, "NATS client error")                                        \
    X(STATE, "operation not valid in the current state")

typedef enum {
    BW_OK = 0,
#define BW_ERR_ENUM(name, msg) BW_E##name,
    BW__ERR_FIRST = -100,
    BW_ERR_MAP(BW_ERR_ENUM)
#undef BW_ERR_ENUM
} bw_err_t;

/* Human-readable text for a bw_err_t; never NULL. */
const char *bw_strerror(int err);

#endif
