/* Messages for the bw_err_t codes, generated from the one table in err.h. */
#include "util/err.h"

const char *bw_strerror(int err)
{
    switch (err) {
    case BW_OK:
        return "ok";
#define BW_ERR_CASE(name, msg) \
    case BW_E##name:           \
        return msg;
        BW_ERR_MAP(BW_ERR_CASE)
#undef BW_ERR_CASE
    default:
        return "unknown error";
    }
}
