/* UUID v4 from the kernel's CSPRNG and validators for the id formats the router accepts. */
#include "util/ids.h"

#include <string.h>
#include <sys/random.h>

static const char hexdig[] = "0123456789abcdef";

static bool is_hex(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

static bool all_hex(const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if (!is_hex(s[i]))
            return false;
    return true;
}

void bw_uuid_v4(char out[BW_UUID_STRLEN + 1])
{
    unsigned char b[16];
    size_t got = 0;
    while (got < sizeof b) {
        ssize_t n = getrandom(b + got, sizeof b - got, 0);
        if (n > 0)
            got += (size_t)n;
    }
    b[6] = (unsigned char)((b[6] & 0x0f) | 0x40);
    b[8] = (unsigned char)((b[8] & 0x3f) | 0x80);
    size_t o = 0;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            out[o++] = '-';
        out[o++] = hexdig[b[i] >> 4];
        out[o++] = hexdig[b[i] & 15];
    }
    out[o] = '\0';
}

bool bw_is_hex32(const char *s, size_t len)
{
    return len == 32 && all_hex(s, len);
}

bool bw_is_uuid_v4(const char *s, size_t len)
{
    if (len != 36 || s[8] != '-' || s[13] != '-' || s[18] != '-' || s[23] != '-')
        return false;
    if (!all_hex(s, 8) || !all_hex(s + 9, 4) || !all_hex(s + 14, 4) || !all_hex(s + 19, 4) ||
        !all_hex(s + 24, 12))
        return false;
    char variant = s[19];
    return s[14] == '4' && strchr("89abAB", variant) != NULL;
}

bool bw_is_ulid_upper(const char *s, size_t len)
{
    static const char alphabet[] = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    if (len != 26 || s[0] < '0' || s[0] > '7')
        return false;
    for (size_t i = 0; i < len; i++)
        if (s[i] == '\0' || strchr(alphabet, s[i]) == NULL)
            return false;
    return true;
}

bool bw_is_valid_trace_id(const char *s, size_t len)
{
    return bw_is_hex32(s, len) || bw_is_uuid_v4(s, len);
}

bool bw_is_valid_run_id(const char *s, size_t len)
{
    return bw_is_uuid_v4(s, len) || bw_is_ulid_upper(s, len);
}

bool bw_traceparent_trace_id(const char *tp, char out[33])
{
    /* version(2) '-' trace-id(32) '-' parent-id(16) '-' flags(2) */
    if (tp == NULL || strlen(tp) < 55 || tp[2] != '-' || tp[35] != '-' || tp[52] != '-')
        return false;
    if (!all_hex(tp, 2) || !all_hex(tp + 3, 32) || !all_hex(tp + 36, 16) || !all_hex(tp + 53, 2))
        return false;
    if (strspn(tp + 3, "0") >= 32)
        return false;
    memcpy(out, tp + 3, 32);
    out[32] = '\0';
    return true;
}
