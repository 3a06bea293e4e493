/*
 * Runs a throwaway PostgreSQL cluster for tests. The postmaster is started directly (not through
 * pg_ctl) so that it is our child: its pid is known, a hung shutdown can be ended with SIGKILL
 * (kill_tree), and PR_SET_PDEATHSIG kills it when the test dies; its children (backends, which
 * run in sessions of their own) notice the postmaster's death and exit on their own. Readiness
 * is a PQping over the Unix socket in our dir (which only our postmaster can have created, and
 * only after it bound the TCP port), then over TCP.
 */
#include "pg_server.h"

#include "testutil.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <libpq-fe.h>
#include <limits.h>
#include <netinet/in.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

/* Generous: two shared cores may be busy with parallel test programs. */
#define INITDB_TIMEOUT_MS 120000
#define READY_TIMEOUT_MS 30000
#define FAST_STOP_MS 30000
#define IMMEDIATE_STOP_MS 10000
#define PORT_ATTEMPTS 5
#define POLL_MS 25
#define LOG_TAIL_BYTES 4000

/* A fixed, small environment: English messages, a known time zone (initdb writes it into the
   configuration instead of probing the system's), nothing of the test's (PG*, LD_PRELOAD...). */
static char *const child_env[] = {(char *)"PATH=/usr/bin:/bin", (char *)"LC_ALL=C", (char *)"TZ=UTC", NULL};

/* "15" < "16", and "9.6" < "10": compare major then minor as numbers. */
static long version_rank(const char *path)
{
    const char *v = strstr(path, "/postgresql/");
    int major = 0, minor = 0;

    if (v == NULL || sscanf(v + strlen("/postgresql/"), "%d.%d", &major, &minor) < 1)
        return -1;
    return (long)major * 1000 + minor;
}

static int has_server_binaries(const char *dir)
{
    char path[PATH_MAX];

    snprintf(path, sizeof path, "%s/initdb", dir);
    if (access(path, X_OK) != 0)
        return 0;
    snprintf(path, sizeof path, "%s/postgres", dir);
    return access(path, X_OK) == 0;
}

/* The bin dir holding initdb and postgres: $BW_TEST_PG_BIN, the newest Debian
   /usr/lib/postgresql/<v>/bin, or pg_config --bindir. Found once per process. */
static const char *bindir(void)
{
    static char dir[PATH_MAX];
    const char *env = getenv("BW_TEST_PG_BIN");
    glob_t g;
    long best = -1;

    if (dir[0] != '\0')
        return dir;
    if (env != NULL && env[0] != '\0') {
        if (!has_server_binaries(env)) {
            fprintf(stderr, "pg_server: BW_TEST_PG_BIN=%s has no executable initdb and postgres\n", env);
            return NULL;
        }
        snprintf(dir, sizeof dir, "%s", env);
        return dir;
    }
    if (glob("/usr/lib/postgresql/*/bin/initdb", 0, NULL, &g) == 0) {
        for (size_t i = 0; i < g.gl_pathc; i++) {
            long rank = version_rank(g.gl_pathv[i]);
            char *slash = strrchr(g.gl_pathv[i], '/');
            *slash = '\0'; /* the bin dir */
            if (rank > best && has_server_binaries(g.gl_pathv[i])) {
                best = rank;
                snprintf(dir, sizeof dir, "%s", g.gl_pathv[i]);
            }
        }
        globfree(&g);
    }
    if (dir[0] == '\0') {
        FILE *p = popen("pg_config --bindir 2>/dev/null", "r");
        if (p != NULL) {
            if (fgets(dir, sizeof dir, p) == NULL)
                dir[0] = '\0';
            dir[strcspn(dir, "\n")] = '\0';
            pclose(p);
        }
        if (dir[0] != '\0' && !has_server_binaries(dir))
            dir[0] = '\0';
    }
    if (dir[0] == '\0') {
        fprintf(stderr, "pg_server: no PostgreSQL server binaries (initdb, postgres) in "
                        "/usr/lib/postgresql/*/bin or pg_config --bindir; apt-get install postgresql, "
                        "or set BW_TEST_PG_BIN to their directory\n");
        return NULL;
    }
    return dir;
}

/* initdb and postgres refuse to run as root: a root test runs them as the postgres user. */
static int server_identity(bw_test_spawn_opts_t *opts)
{
    struct passwd *pw;

    opts->new_pgrp = 1;
    if (geteuid() != 0)
        return 0;
    pw = getpwnam("postgres");
    if (pw == NULL) {
        fprintf(stderr, "pg_server: running as root, and there is no \"postgres\" user to run initdb "
                        "and postgres as (they refuse root); apt-get install postgresql creates it, "
                        "or: useradd --system postgres\n");
        return -1;
    }
    opts->set_ids = 1;
    opts->uid = pw->pw_uid;
    opts->gid = pw->pw_gid;
    return 0;
}

/* Copies the end of <dir>/<name> from offset on (what this run wrote) to stderr. */
static void print_log(const bw_test_pg_t *pg, const char *name, size_t offset)
{
    char path[512];
    size_t len = 0;
    char *text;

    snprintf(path, sizeof path, "%s/%s", pg->dir, name);
    text = bw_test_read_file(path, &len);
    if (text == NULL)
        return;
    if (len > offset + LOG_TAIL_BYTES)
        offset = len - LOG_TAIL_BYTES;
    if (offset < len)
        fprintf(stderr, "---- %s ----\n%s---- end of %s ----\n", path, text + offset, name);
    free(text);
}

static int log_contains(const bw_test_pg_t *pg, size_t offset, const char *needle)
{
    char path[512];
    size_t len = 0;
    char *text;
    int found;

    snprintf(path, sizeof path, "%s/postgres.log", pg->dir);
    text = bw_test_read_file(path, &len);
    found = text != NULL && offset <= len && strstr(text + offset, needle) != NULL;
    free(text);
    return found;
}

/* Opens <dir>/<name> for appending, as the child's stdout and stderr; *offset = its size now. */
static int open_log(const bw_test_pg_t *pg, const char *name, size_t *offset)
{
    char path[512];
    struct stat st;
    int fd;

    snprintf(path, sizeof path, "%s/%s", pg->dir, name);
    fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (fd < 0) {
        fprintf(stderr, "pg_server: cannot open %s: %s\n", path, strerror(errno));
        return -1;
    }
    *offset = fstat(fd, &st) == 0 ? (size_t)st.st_size : 0;
    return fd;
}

/* Waits for pid until deadline; 1 and *status once it has exited, 0 if still running. */
static int wait_exit(pid_t pid, int64_t deadline, int *status)
{
    for (;;) {
        int r = bw_test_reap(pid, status);
        if (r != 0)
            return 1; /* exited, or not our child any more: nothing left to wait for */
        if (bw_test_now_ms() >= deadline)
            return 0;
        bw_test_sleep_ms(POLL_MS);
    }
}

/* SIGKILL for pid's children (pid still unreaped, so they are still its children). */
static void kill_children(pid_t pid)
{
    DIR *d = opendir("/proc");
    struct dirent *e;

    while (d != NULL && (e = readdir(d)) != NULL) {
        char state;
        int ppid;
        int child = atoi(e->d_name);
        if (child > 0 && bw_test_proc_stat(child, &state, &ppid) == 0 && ppid == pid)
            kill(child, SIGKILL);
    }
    if (d != NULL)
        closedir(d);
}

/* The last resort for a hung initdb or postmaster. Postgres's children each call setsid(), so
   the group alone (enough for initdb's helpers) misses them: the leader is stopped first (no new
   children), its children are killed, then the group, then it is reaped. */
static void kill_tree(pid_t pid)
{
    kill(pid, SIGSTOP);
    kill_children(pid);
    kill(-pid, SIGKILL);
    kill(pid, SIGKILL);
    while (bw_test_reap(pid, NULL) == 0)
        bw_test_sleep_ms(POLL_MS);
}

static int run_initdb(bw_test_pg_t *pg, const bw_test_spawn_opts_t *opts)
{
    char initdb[PATH_MAX], data[300], pwfile[300], pwarg[320];
    /* argv[0] a full path: initdb looks for postgres next to it */
    const char *argv[] = {initdb,
                          "-D",
                          data,
                          "-U",
                          "postgres",
                          "--auth-local=trust",
                          "--auth-host=scram-sha-256",
                          "-E",
                          "UTF8",
                          "--no-locale",
                          "--no-sync",
                          "--no-instructions",
                          pwarg,
                          NULL};
    int fds[3] = {-1, -1, -1}, status = 0, rc = -1;
    size_t offset = 0;
    pid_t pid;
    FILE *f;

    snprintf(initdb, sizeof initdb, "%s/initdb", bindir());
    snprintf(data, sizeof data, "%s/data", pg->dir);
    snprintf(pwfile, sizeof pwfile, "%s/pwfile", pg->dir);
    snprintf(pwarg, sizeof pwarg, "--pwfile=%s", pwfile);
    /* The superuser's password, so that superuser_url can use scram over TCP like everyone. */
    f = fopen(pwfile, "w");
    if (f != NULL && fputs(BW_TEST_PG_SUPERUSER_PASSWORD "\n", f) < 0) {
        fclose(f);
        f = NULL;
    }
    if (f == NULL || fclose(f) != 0 || (opts->set_ids && chown(pwfile, opts->uid, opts->gid) != 0)) {
        fprintf(stderr, "pg_server: cannot write %s: %s\n", pwfile, strerror(errno));
        return -1;
    }
    fds[1] = fds[2] = open_log(pg, "initdb.log", &offset);
    if (fds[1] < 0)
        goto out;
    pid = bw_test_spawn_ex(initdb, (char *const *)argv, child_env, fds, opts);
    if (pid < 0) {
        fprintf(stderr, "pg_server: fork for initdb: %s\n", strerror(errno));
        goto out;
    }
    if (!wait_exit(pid, bw_test_now_ms() + INITDB_TIMEOUT_MS, &status)) {
        fprintf(stderr, "pg_server: initdb still running after %d s; killed\n", INITDB_TIMEOUT_MS / 1000);
        kill_tree(pid);
        print_log(pg, "initdb.log", offset);
        goto out;
    }
    if (bw_test_exit_code(status) != 0) {
        fprintf(stderr, "pg_server: %s failed (exit %d; 127 = could not exec or change user)\n", initdb,
                bw_test_exit_code(status));
        print_log(pg, "initdb.log", offset);
        goto out;
    }
    rc = 0;
out:
    if (fds[1] >= 0)
        close(fds[1]);
    unlink(pwfile);
    return rc;
}

/* A port nobody listens on right now (the kernel's pick for port 0). It can be taken again before
   the postmaster binds it: launch() retries on that. */
static int free_port(void)
{
    struct sockaddr_in sa = {.sin_family = AF_INET};
    socklen_t len = sizeof sa;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int port = -1;

    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd >= 0 && bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0 &&
        getsockname(fd, (struct sockaddr *)&sa, &len) == 0)
        port = ntohs(sa.sin_port);
    if (fd >= 0)
        close(fd);
    if (port < 0)
        fprintf(stderr, "pg_server: cannot find a free loopback port: %s\n", strerror(errno));
    return port;
}

static void set_urls(bw_test_pg_t *pg)
{
    snprintf(pg->url, sizeof pg->url, "postgresql://%s:%s@127.0.0.1:%d/%s", BW_TEST_PG_USER,
             BW_TEST_PG_PASSWORD, pg->port, BW_TEST_PG_DB);
    snprintf(pg->superuser_url, sizeof pg->superuser_url, "postgresql://postgres:%s@127.0.0.1:%d/%s",
             BW_TEST_PG_SUPERUSER_PASSWORD, pg->port, BW_TEST_PG_DB);
}

static pid_t spawn_postmaster(const bw_test_pg_t *pg, const bw_test_spawn_opts_t *opts, size_t *offset)
{
    char postgres[PATH_MAX], data[300], port[16];
    /* argv[0] a full path: postgres finds its share dir from it */
    const char *argv[] = {postgres,
                          "-D",
                          data,
                          "-p",
                          port,
                          "-k",
                          pg->dir,
                          "-c",
                          "listen_addresses=127.0.0.1",
                          "-c",
                          "fsync=off",
                          "-c",
                          "synchronous_commit=off",
                          "-c",
                          "full_page_writes=off",
                          "-c",
                          "shared_buffers=32MB",
                          "-c",
                          "max_connections=200",
                          NULL};
    int fds[3] = {-1, -1, -1};
    pid_t pid;

    snprintf(postgres, sizeof postgres, "%s/postgres", bindir());
    snprintf(data, sizeof data, "%s/data", pg->dir);
    snprintf(port, sizeof port, "%d", pg->port);
    fds[1] = fds[2] = open_log(pg, "postgres.log", offset);
    if (fds[1] < 0)
        return -1;
    pid = bw_test_spawn_ex(postgres, (char *const *)argv, child_env, fds, opts);
    if (pid < 0)
        fprintf(stderr, "pg_server: fork for postgres: %s\n", strerror(errno));
    close(fds[1]);
    return pid;
}

/* Polls until the postmaster answers on its Unix socket and on TCP. -1 when it exited (*port_busy
   set if it was because the port was taken) or did not get ready in time (then killed). */
static int wait_ready(bw_test_pg_t *pg, size_t offset, int *port_busy)
{
    char port[16];
    const char *keys[] = {"host", "port", "user", "dbname", "connect_timeout", NULL};
    const char *values[] = {pg->dir, port, "postgres", "postgres", "5", NULL};
    int64_t deadline = bw_test_now_ms() + READY_TIMEOUT_MS;
    int status = 0;

    *port_busy = 0;
    snprintf(port, sizeof port, "%d", pg->port);
    while (bw_test_now_ms() < deadline) {
        if (bw_test_reap(pg->pid, &status) != 0) {
            pg->pid = 0;
            *port_busy = log_contains(pg, offset, "Address already in use");
            if (!*port_busy) {
                fprintf(stderr, "pg_server: postgres exited during start-up (exit %d)\n",
                        bw_test_exit_code(status));
                print_log(pg, "postgres.log", offset);
            }
            return -1;
        }
        if (PQpingParams(keys, values, 0) == PQPING_OK && PQping(pg->superuser_url) == PQPING_OK)
            return 0;
        bw_test_sleep_ms(POLL_MS);
    }
    fprintf(stderr, "pg_server: postgres on port %d not accepting connections after %d s; killed\n", pg->port,
            READY_TIMEOUT_MS / 1000);
    kill_tree(pg->pid);
    pg->pid = 0;
    print_log(pg, "postgres.log", offset);
    return -1;
}

/* Starts the postmaster on pg->port (same_port) or on a free one, retrying when another process
   has the port: a new free port each time, or the same one a little later. */
static int launch(bw_test_pg_t *pg, int same_port)
{
    bw_test_spawn_opts_t opts = {0};
    size_t offset = 0;
    int busy = 0;

    if (server_identity(&opts) != 0)
        return -1;
    for (int attempt = 1; attempt <= PORT_ATTEMPTS; attempt++) {
        if (!same_port && (pg->port = free_port()) < 0)
            return -1;
        set_urls(pg);
        pg->pid = spawn_postmaster(pg, &opts, &offset);
        if (pg->pid < 0) {
            pg->pid = 0;
            return -1;
        }
        if (wait_ready(pg, offset, &busy) == 0)
            return 0;
        if (!busy)
            return -1;
        fprintf(stderr, "pg_server: port %d is taken (attempt %d of %d)%s\n", pg->port, attempt,
                PORT_ATTEMPTS, same_port ? ", waiting for it" : ", trying another");
        if (same_port)
            bw_test_sleep_ms(1000);
    }
    fprintf(stderr, "pg_server: could not bind a port after %d attempts\n", PORT_ATTEMPTS);
    print_log(pg, "postgres.log", offset);
    return -1;
}

/* Only WARNING and worse from setup SQL reach stderr ("table does not exist, skipping" does not). */
static void notice_receiver(void *arg, const PGresult *res)
{
    const char *severity = PQresultErrorField(res, PG_DIAG_SEVERITY_NONLOCALIZED);

    (void)arg;
    if (severity == NULL || strcmp(severity, "WARNING") == 0)
        fprintf(stderr, "pg_server: %s", PQresultErrorMessage(res));
}

/* Runs sql as the superuser in database db (NULL = the one in superuser_url). */
static int exec_in(const bw_test_pg_t *pg, const char *db, const char *sql)
{
    /* Keywords after an expanded URL override it: the database and a connect timeout. */
    const char *keys[] = {"dbname", "connect_timeout", db != NULL ? "dbname" : NULL, NULL};
    const char *values[] = {pg->superuser_url, "10", db, NULL};
    PGconn *conn = PQconnectdbParams(keys, values, 1);
    PGresult *res = NULL;
    int rc = -1;

    if (conn == NULL || PQstatus(conn) != CONNECTION_OK) {
        fprintf(stderr, "pg_server: connect as superuser to port %d: %s", pg->port,
                conn != NULL ? PQerrorMessage(conn) : "out of memory\n");
        goto out;
    }
    PQsetNoticeReceiver(conn, notice_receiver, NULL);
    /* PQexec stops at the first failing statement and returns its error; else the last result. */
    res = PQexec(conn, sql);
    switch (PQresultStatus(res)) {
    case PGRES_COMMAND_OK:
    case PGRES_TUPLES_OK:
    case PGRES_EMPTY_QUERY:
        rc = 0;
        break;
    default:
        fprintf(stderr, "pg_server: SQL failed (%s): %s", PQresStatus(PQresultStatus(res)),
                res != NULL ? PQresultErrorMessage(res) : PQerrorMessage(conn));
        break;
    }
out:
    PQclear(res);
    PQfinish(conn);
    return rc;
}

/* The bw role and its database; CREATE DATABASE cannot share a transaction, hence three calls.
   Default privileges make what setup SQL creates as the superuser usable by bw. */
static int create_objects(const bw_test_pg_t *pg)
{
    if (exec_in(pg, "postgres", "CREATE ROLE " BW_TEST_PG_USER " LOGIN PASSWORD '" BW_TEST_PG_PASSWORD "'") !=
            0 ||
        exec_in(pg, "postgres", "CREATE DATABASE " BW_TEST_PG_DB " OWNER " BW_TEST_PG_USER) != 0)
        return -1;
    return exec_in(pg, BW_TEST_PG_DB,
                   "ALTER DEFAULT PRIVILEGES FOR ROLE postgres IN SCHEMA public"
                   " GRANT ALL ON TABLES TO " BW_TEST_PG_USER ";"
                   "ALTER DEFAULT PRIVILEGES FOR ROLE postgres IN SCHEMA public"
                   " GRANT ALL ON SEQUENCES TO " BW_TEST_PG_USER ";"
                   "ALTER DEFAULT PRIVILEGES FOR ROLE postgres IN SCHEMA public"
                   " GRANT ALL ON FUNCTIONS TO " BW_TEST_PG_USER);
}

/* Signals the postmaster and reaps it. sig is SIGINT (fast: clients disconnected, checkpoint) or
   SIGQUIT (immediate: no checkpoint, crash recovery at the next start); a fast stop that hangs
   becomes immediate, and an immediate one that hangs ends with SIGKILL (kill_tree). */
static void stop_postmaster(bw_test_pg_t *pg, int sig)
{
    pid_t pid = pg->pid;

    if (pid <= 0)
        return;
    pg->pid = 0;
    if (sig == SIGINT) {
        kill(pid, SIGINT);
        if (wait_exit(pid, bw_test_now_ms() + FAST_STOP_MS, NULL))
            return;
        fprintf(stderr, "pg_server: fast shutdown of postgres %d took over %d s, trying immediate\n",
                (int)pid, FAST_STOP_MS / 1000);
    }
    kill(pid, SIGQUIT);
    if (wait_exit(pid, bw_test_now_ms() + IMMEDIATE_STOP_MS, NULL))
        return;
    fprintf(stderr, "pg_server: postgres %d still running %d s after SIGQUIT, killing it and its children\n",
            (int)pid, IMMEDIATE_STOP_MS / 1000);
    kill_tree(pid);
}

int bw_test_pg_start(bw_test_pg_t *pg)
{
    bw_test_spawn_opts_t opts = {0};
    int64_t t0 = bw_test_now_ms();

    memset(pg, 0, sizeof *pg);
    if (bindir() == NULL || server_identity(&opts) != 0)
        return -1;
    snprintf(pg->dir, sizeof pg->dir, "/tmp/bw-pg-XXXXXX");
    if (mkdtemp(pg->dir) == NULL) {
        fprintf(stderr, "pg_server: mkdtemp %s: %s\n", pg->dir, strerror(errno));
        pg->dir[0] = '\0';
        return -1;
    }
    /* mkdtemp made it 0700; the server's user must own it (data dir, socket and lock files). */
    if (opts.set_ids && chown(pg->dir, opts.uid, opts.gid) != 0) {
        fprintf(stderr, "pg_server: chown %s to postgres: %s\n", pg->dir, strerror(errno));
        goto fail;
    }
    if (run_initdb(pg, &opts) != 0 || launch(pg, 0) != 0 || create_objects(pg) != 0)
        goto fail;
    if (getenv("BW_TEST_PG_VERBOSE") != NULL)
        fprintf(stderr, "pg_server: postgres %d ready on port %d in %s after %d ms\n", (int)pg->pid, pg->port,
                pg->dir, (int)(bw_test_now_ms() - t0));
    return 0;
fail:
    bw_test_pg_stop(pg);
    return -1;
}

void bw_test_pg_halt(bw_test_pg_t *pg)
{
    stop_postmaster(pg, SIGINT);
}

/* sig to the postmaster's children (backends make process groups of their own: setsid). */
static void signal_children(pid_t parent, int sig)
{
    DIR *d = opendir("/proc");
    for (struct dirent *e; d != NULL && (e = readdir(d)) != NULL;) {
        int pid = atoi(e->d_name), ppid = 0;
        char state;
        if (pid > 0 && bw_test_proc_stat(pid, &state, &ppid) == 0 && ppid == parent)
            kill(pid, sig);
    }
    if (d != NULL)
        closedir(d);
}

void bw_test_pg_freeze(bw_test_pg_t *pg)
{
    if (pg->pid <= 0)
        return;
    kill(-pg->pid, SIGSTOP); /* first: it starts no new backend meanwhile */
    signal_children(pg->pid, SIGSTOP);
}

void bw_test_pg_thaw(bw_test_pg_t *pg)
{
    if (pg->pid <= 0)
        return;
    signal_children(pg->pid, SIGCONT);
    kill(-pg->pid, SIGCONT);
}

int bw_test_pg_resume(bw_test_pg_t *pg)
{
    if (pg->dir[0] == '\0' || pg->port <= 0) {
        fprintf(stderr, "pg_server: resume: no cluster (start it first)\n");
        return -1;
    }
    if (pg->pid > 0)
        return 0;
    return launch(pg, 1);
}

int bw_test_pg_restart(bw_test_pg_t *pg)
{
    if (pg->dir[0] == '\0') {
        fprintf(stderr, "pg_server: restart: no cluster (start it first)\n");
        return -1;
    }
    bw_test_pg_halt(pg);
    return bw_test_pg_resume(pg);
}

void bw_test_pg_stop(bw_test_pg_t *pg)
{
    stop_postmaster(pg, SIGQUIT);
    if (pg->dir[0] != '\0') {
        if (getenv("BW_TEST_KEEP_LOGS") != NULL)
            fprintf(stderr, "pg_server: kept %s (BW_TEST_KEEP_LOGS)\n", pg->dir);
        else if (bw_test_rm_rf(pg->dir) != 0)
            fprintf(stderr, "pg_server: cannot remove %s: %s\n", pg->dir, strerror(errno));
        pg->dir[0] = '\0';
    }
}

int bw_test_pg_exec(const bw_test_pg_t *pg, const char *sql)
{
    if (pg->pid <= 0) {
        fprintf(stderr, "pg_server: exec: the server is not running\n");
        return -1;
    }
    return exec_in(pg, NULL, sql);
}
