/* sd_notify(3)'s protocol without libsystemd (see sdnotify.h). */
#include "obs/sdnotify.h"

#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

int bw_sd_notify(const char *state)
{
    const char *path = getenv("NOTIFY_SOCKET");
    if (path == NULL || path[0] == '\0')
        return 0;
    struct sockaddr_un sa;
    memset(&sa, 0, sizeof sa);
    sa.sun_family = AF_UNIX;
    size_t n = strlen(path);
    if ((path[0] != '/' && path[0] != '@') || n >= sizeof sa.sun_path) {
        errno = EINVAL;
        return -1;
    }
    memcpy(sa.sun_path, path, n);
    if (path[0] == '@')
        sa.sun_path[0] = '\0'; /* the abstract namespace */
    socklen_t salen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + (path[0] == '/'));
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    ssize_t w = sendto(fd, state, strlen(state), MSG_NOSIGNAL, (struct sockaddr *)&sa, salen);
    int saved = errno;
    close(fd);
    errno = saved;
    return w == (ssize_t)strlen(state) ? 1 : -1;
}

static int parse_u64(const char *s, unsigned long long *out)
{
    if (s == NULL || *s < '0' || *s > '9')
        return -1;
    char *end = NULL;
    errno = 0;
    *out = strtoull(s, &end, 10);
    return errno == 0 && end != NULL && *end == '\0' ? 0 : -1;
}

int64_t bw_sd_watchdog_ms(void)
{
    unsigned long long usec = 0, pid = 0;
    if (parse_u64(getenv("WATCHDOG_USEC"), &usec) < 0 || usec == 0)
        return 0;
    const char *p = getenv("WATCHDOG_PID");
    if (p != NULL && (parse_u64(p, &pid) < 0 || pid != (unsigned long long)getpid()))
        return 0;
    return usec / 1000 > 0 ? (int64_t)(usec / 1000) : 1;
}
