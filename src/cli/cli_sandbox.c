/*
 * `beamline-worker js-sandbox`: one script sandbox child of the worker's pool (js/sandbox.c), running
 * the jobs the pool hands it through js/jsengine.c.
 *
 * Protocol on fd 0 (requests) and fd 1 (answers): frames of a 4-byte little-endian length and that many
 * bytes of UTF-8 JSON, one request at a time, answered in order (fields in js/jsengine.h). Nothing else
 * is written to stdout; diagnostics go to stderr, one line each, prefixed "js-sandbox:".
 * Exit status: 0 on EOF on stdin, 1 when the child cannot start or its pipe fails, 3 on a frame over
 * 64 MiB, 4 after answering a job that left the resident set above BW_SANDBOX_MAX_RSS_MB (env, MB; when
 * it is read: check_memory), 5 after answering SCRIPT_TIMEOUT for a job still running
 * BACKSTOP_GRACE_MS past its time limit (a wall-clock alarm for native code that never checks the
 * engine's limit). After 4 and 5 the pool starts a new child.
 *
 * Confinement, in this order: die with the worker (PDEATHSIG), close inherited fds, create the engine
 * and run one warm-up job (JavaScriptCore starts its threads and opens what it keeps open), lower
 * RLIMIT_NOFILE to what is open, NO_NEW_PRIVS, then a seccomp filter on every thread (TSYNC): system
 * calls seen in use are allowed, a few seen but needless fail with EPERM, those only an escape would
 * make kill the process, and any other fails with EPERM and is reported once on stderr. Once the
 * filter is in place the process ends with _exit: exit-time handlers (LeakSanitizer's) would need
 * calls the filter refuses.
 */
#include "cli/cli.h"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <seccomp.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <ucontext.h>
#include <unistd.h>

#include "js/jsengine.h"
#include "util/buf.h"
#include "util/clock.h"
#include "util/xalloc.h"

#define FRAME_MAX (64u * 1024 * 1024)
#define READ_CHUNK (64 * 1024)
#define BACKSTOP_GRACE_MS 250
#define NOFILE_SLACK 4
#define RSS_CHECK_MS 1
#define RSS_CHECK_EVERY 16

enum { EXIT_EOF = 0, EXIT_FAILURE_ = 1, EXIT_OVERSIZE = 3, EXIT_RSS = 4, EXIT_BACKSTOP = 5 };

/* ---- seccomp ---- */

/* What JavaScriptCore, glibc and this loop were seen to call once confined (strace -f over JIT-heavy
   loops, GC-heavy allocation, promises, timeouts, huge strings, idle periods; then stress runs). */
/* clang-format off */
static const int allowed_syscalls[] = {
    /* frames, the RSS probe, diagnostics */
    SCMP_SYS(read), SCMP_SYS(write), SCMP_SYS(pread64),
    /* memory: the GC heap, the JIT's executable pool, malloc */
    SCMP_SYS(mmap), SCMP_SYS(munmap), SCMP_SYS(mprotect), SCMP_SYS(madvise), SCMP_SYS(mremap), SCMP_SYS(brk),
    /* threads (GC helpers, JIT compilers, the watchdog's GLib queue, the heap scavenger): they start, wait,
       and exit when idle for a while (and start again later) */
    SCMP_SYS(futex), SCMP_SYS(poll), SCMP_SYS(sched_yield), SCMP_SYS(set_robust_list), SCMP_SYS(rseq),
    SCMP_SYS(sched_getaffinity), SCMP_SYS(gettid), SCMP_SYS(getpid), SCMP_SYS(exit), SCMP_SYS(exit_group),
    SCMP_SYS(sysinfo), /* the heap sizes itself from the machine's RAM (found by the SIGSYS report below) */
    /* the collector suspends the JS thread to scan its stack: a signal (tgkill, below) whose handler
       waits in sigsuspend; without it the scan reads registers of a running thread and crashes */
    SCMP_SYS(rt_sigsuspend), SCMP_SYS(rt_sigreturn), SCMP_SYS(rt_sigprocmask),
    /* time: the watchdog reads thread CPU time; the backstop alarm */
    SCMP_SYS(clock_gettime), SCMP_SYS(setitimer), SCMP_SYS(pause), SCMP_SYS(getrandom),
    SCMP_SYS(sigaltstack), /* sanitizer runtimes give each new thread one */
#if defined(__SANITIZE_THREAD__)
    /* ThreadSanitizer's background thread sleeps and reads the time with raw system calls, with every
       signal blocked: the trap below would kill the process instead of answering EPERM */
    SCMP_SYS(nanosleep), SCMP_SYS(clock_nanosleep), SCMP_SYS(gettimeofday),
#endif
};

/* Seen and harmless to refuse: ICU looking for the local time zone (scripts get UTC), thread
   priorities. They fail with EPERM, silently. */
static const int refused_syscalls[] = {
    SCMP_SYS(open), SCMP_SYS(openat), SCMP_SYS(readlink), SCMP_SYS(newfstatat), SCMP_SYS(stat),
    SCMP_SYS(access), SCMP_SYS(sched_setscheduler), SCMP_SYS(sched_setattr), SCMP_SYS(setpriority),
};

/* Calls that only an escape attempt would make: the process dies instead of getting EPERM. */
static const int killed_syscalls[] = {
    SCMP_SYS(execve), SCMP_SYS(execveat), SCMP_SYS(fork), SCMP_SYS(vfork), SCMP_SYS(socket),
    SCMP_SYS(socketpair), SCMP_SYS(connect), SCMP_SYS(bind), SCMP_SYS(listen), SCMP_SYS(accept),
    SCMP_SYS(accept4), SCMP_SYS(sendto), SCMP_SYS(sendmsg), SCMP_SYS(recvfrom), SCMP_SYS(recvmsg),
    SCMP_SYS(ptrace), SCMP_SYS(process_vm_readv), SCMP_SYS(process_vm_writev), SCMP_SYS(unshare),
    SCMP_SYS(setns), SCMP_SYS(mount), SCMP_SYS(umount2), SCMP_SYS(pivot_root), SCMP_SYS(chroot),
    SCMP_SYS(bpf), SCMP_SYS(perf_event_open), SCMP_SYS(userfaultfd), SCMP_SYS(io_uring_setup),
    SCMP_SYS(io_uring_enter), SCMP_SYS(io_uring_register), SCMP_SYS(keyctl), SCMP_SYS(add_key),
    SCMP_SYS(request_key), SCMP_SYS(init_module), SCMP_SYS(finit_module), SCMP_SYS(kexec_load),
    SCMP_SYS(open_by_handle_at), SCMP_SYS(name_to_handle_at), SCMP_SYS(setuid), SCMP_SYS(setgid),
    SCMP_SYS(seccomp), SCMP_SYS(pidfd_open), SCMP_SYS(pidfd_getfd), SCMP_SYS(pidfd_send_signal),
};
/* clang-format on */

/* Anything else traps here (SIGSYS): the call fails with EPERM as if refused, and its number is
   reported once on stderr, so that a call missing from the lists shows up in the worker's log
   instead of only as an odd failure. Async-signal-safe: no allocation, no stdio. */
#if defined(__x86_64__)
#define SYSCALL_RESULT(uc) ((uc)->uc_mcontext.gregs[REG_RAX])
#elif defined(__aarch64__)
#define SYSCALL_RESULT(uc) ((uc)->uc_mcontext.regs[0])
#endif

#ifdef SYSCALL_RESULT
static atomic_bool reported[1024];

static void on_sigsys(int sig, siginfo_t *si, void *ctx)
{
    char line[64] = "js-sandbox: refused system call ";
    size_t n = strlen(line);
    int nr = si->si_syscall;
    SYSCALL_RESULT((ucontext_t *)ctx) = -EPERM;
    if (nr < 0 || nr >= 1024 || atomic_exchange(&reported[nr], true))
        return;
    char digits[12];
    int d = 0;
    do
        digits[d++] = (char)('0' + nr % 10);
    while ((nr /= 10) > 0);
    while (d > 0)
        line[n++] = digits[--d];
    line[n++] = '\n';
    ssize_t w = write(2, line, n);
    (void)w;
}
#define DEFAULT_ACTION SCMP_ACT_TRAP
#else
#define DEFAULT_ACTION SCMP_ACT_ERRNO(EPERM)
#endif

static int add_rules(scmp_filter_ctx f, uint32_t action, const int *sys, size_t n)
{
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++)
        rc = seccomp_rule_add(f, action, sys[i], 0);
    return rc;
}

/* Rules that look at arguments: threads but no processes, signals only to ourselves, thread names. */
static int add_arg_rules(scmp_filter_ctx f)
{
    const scmp_datum_t pid = (scmp_datum_t)getpid();
    int rc = seccomp_rule_add(f, SCMP_ACT_ALLOW, SCMP_SYS(clone), 1,
                              SCMP_A0(SCMP_CMP_MASKED_EQ, CLONE_THREAD, CLONE_THREAD));
    if (rc == 0)
        rc = seccomp_rule_add(f, SCMP_ACT_KILL_PROCESS, SCMP_SYS(clone), 1,
                              SCMP_A0(SCMP_CMP_MASKED_EQ, CLONE_THREAD, 0));
    if (rc == 0) /* clone3's flags sit behind a pointer: glibc falls back to clone on ENOSYS */
        rc = seccomp_rule_add(f, SCMP_ACT_ERRNO(ENOSYS), SCMP_SYS(clone3), 0);
    if (rc == 0)
        rc = seccomp_rule_add(f, SCMP_ACT_ALLOW, SCMP_SYS(tgkill), 1, SCMP_A0(SCMP_CMP_EQ, pid));
    if (rc == 0)
        rc = seccomp_rule_add(f, SCMP_ACT_KILL_PROCESS, SCMP_SYS(kill), 1, SCMP_A0(SCMP_CMP_NE, pid));
    if (rc == 0)
        rc = seccomp_rule_add(f, SCMP_ACT_ALLOW, SCMP_SYS(prctl), 1, SCMP_A0(SCMP_CMP_EQ, PR_SET_NAME));
    if (rc == 0)
        rc = seccomp_rule_add(f, SCMP_ACT_ALLOW, SCMP_SYS(prctl), 1, SCMP_A0(SCMP_CMP_EQ, PR_GET_NAME));
    return rc;
}

#define COUNT(a) (sizeof a / sizeof a[0])

/* Installs the filter on every thread of the process. Returns 0 or a negative errno. */
static int install_seccomp(void)
{
    int rc = -ENOMEM;
#ifdef SYSCALL_RESULT
    struct sigaction sa = {.sa_sigaction = on_sigsys, .sa_flags = SA_SIGINFO};
    sigaction(SIGSYS, &sa, NULL);
#endif
    scmp_filter_ctx f = seccomp_init(DEFAULT_ACTION);
    if (f == NULL)
        goto out;
    rc = seccomp_attr_set(f, SCMP_FLTATR_CTL_TSYNC, 1);
    if (rc == 0)
        rc = seccomp_attr_set(f, SCMP_FLTATR_ACT_BADARCH, SCMP_ACT_KILL_PROCESS);
    if (rc == 0)
        rc = add_rules(f, SCMP_ACT_ALLOW, allowed_syscalls, COUNT(allowed_syscalls));
    if (rc == 0)
        rc = add_rules(f, SCMP_ACT_ERRNO(EPERM), refused_syscalls, COUNT(refused_syscalls));
    if (rc == 0)
        rc = add_rules(f, SCMP_ACT_KILL_PROCESS, killed_syscalls, COUNT(killed_syscalls));
    if (rc == 0)
        rc = add_arg_rules(f);
    if (rc == 0)
        rc = seccomp_load(f);
out:
    seccomp_release(f);
    return rc;
}

/* ---- start-up ---- */

/* The resident-set probe: /proc/self/statm, opened before the filter forbids opening anything. */
static int statm_fd = -1;
static long page_size;
static uint64_t max_rss_bytes;
static uint64_t start_rss_bytes; /* after start-up: the engine and its first realm */

static void open_rss_probe(void)
{
    const char *env = getenv("BW_SANDBOX_MAX_RSS_MB");
    long long mb = env != NULL ? atoll(env) : 0;
    if (mb <= 0)
        return;
    max_rss_bytes = (uint64_t)mb * 1024 * 1024;
    page_size = sysconf(_SC_PAGESIZE);
    statm_fd = open("/proc/self/statm", O_RDONLY | O_CLOEXEC);
    if (statm_fd < 0)
        fprintf(stderr, "js-sandbox: cannot open /proc/self/statm (%s); no RSS self-limit\n",
                strerror(errno));
}

/* The resident set in bytes, or 0 when it is not read this time. Reading statm costs ~4 us (1.5% of a
   small job), so it is read after every job that ran RSS_CHECK_MS or more and after every
   RSS_CHECK_EVERY-th job otherwise: a shorter job can fault in a few tens of MB at most, and the pool
   watches the RSS of busy children. */
static uint64_t resident_bytes(uint64_t job_ns)
{
    static unsigned jobs;
    char buf[128];
    unsigned long long size = 0, resident = 0;
    if (statm_fd < 0 || (job_ns < RSS_CHECK_MS * 1000000u && ++jobs % RSS_CHECK_EVERY != 0))
        return 0;
    ssize_t n = pread(statm_fd, buf, sizeof buf - 1, 0);
    if (n <= 0)
        return 0;
    buf[n] = '\0';
    if (sscanf(buf, "%llu %llu", &size, &resident) != 2)
        return 0;
    return resident * (uint64_t)page_size;
}

/* The highest open fd (JavaScriptCore keeps a few), or 2. */
static int highest_fd(void)
{
    int top = 2;
    for (int fd = 3; fd < 1024; fd++)
        if (fcntl(fd, F_GETFD) >= 0)
            top = fd;
    return top;
}

/* Everything before the first request: see the top of the file. Returns the engine or NULL. */
static bw_jsengine_t *start(void)
{
    bw_jsengine_t *eng = NULL;
    static const char warm[] =
        "{\"id\":0,\"code\":\"Promise.resolve([1].map(x => x + 1))\",\"timeout_ms\":5000}";
    bw_buf_t out;
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || close_range(3, ~0u, 0) != 0) {
        fprintf(stderr, "js-sandbox: cannot set up the process: %s\n", strerror(errno));
        return NULL;
    }
    signal(SIGPIPE, SIG_IGN);
    open_rss_probe();
    eng = bw_jsengine_create();
    if (eng == NULL)
        return NULL;
    bw_buf_init(&out, 256);
    bw_jsengine_run_frame(eng, warm, sizeof warm - 1, &out, NULL, NULL);
    bw_buf_dispose(&out);
    bw_jsengine_prepare(eng);
    start_rss_bytes = resident_bytes(UINT64_MAX);
    struct rlimit nofile = {.rlim_cur = (rlim_t)highest_fd() + 1 + NOFILE_SLACK};
    nofile.rlim_max = nofile.rlim_cur;
    int rc = setrlimit(RLIMIT_NOFILE, &nofile);
    if (rc == 0)
        rc = prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
    if (rc == 0)
        rc = install_seccomp();
    if (rc != 0) {
        fprintf(stderr, "js-sandbox: cannot confine the process: %s\n", strerror(rc < 0 ? -rc : errno));
        bw_jsengine_destroy(eng);
        return NULL;
    }
    return eng;
}

/* ---- the backstop ---- */

/* A job that ignores the engine's time limit (a long native operation that never checks it) gets its
   SCRIPT_TIMEOUT answer from a SIGALRM handler, which then ends the process. Whoever moves the state
   away from RUNNING first answers; the frame is built before the job starts (no allocation in the
   handler). */
enum { JOB_IDLE, JOB_RUNNING, JOB_DONE };
static atomic_int job_state;
static bw_buf_t backstop_frame;

static void put_le32(char *p, uint32_t n)
{
    p[0] = (char)(n & 0xFF);
    p[1] = (char)(n >> 8 & 0xFF);
    p[2] = (char)(n >> 16 & 0xFF);
    p[3] = (char)(n >> 24 & 0xFF);
}

static void on_alarm(int sig)
{
    int expected = JOB_RUNNING;
    if (!atomic_compare_exchange_strong(&job_state, &expected, JOB_DONE))
        return;
    for (size_t off = 0; off < backstop_frame.len;) {
        ssize_t n = write(1, backstop_frame.p + off, backstop_frame.len - off);
        if (n <= 0 && errno != EINTR)
            break;
        off += n > 0 ? (size_t)n : 0;
    }
    _exit(EXIT_BACKSTOP);
}

static void set_alarm(int64_t ms)
{
    struct itimerval it = {.it_value = {.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000}};
    setitimer(ITIMER_REAL, &it, NULL);
}

/* The engine's start hook: the request is valid and its script about to run. */
static void arm_backstop(void *ud, const char *id, size_t id_len, int64_t timeout_ms)
{
    backstop_frame.len = 4;
    bw_buf_puts(&backstop_frame, "{\"id\":");
    bw_buf_append(&backstop_frame, id, id_len);
    bw_buf_printf(
        &backstop_frame,
        ",\"ok\":false,\"code\":\"SCRIPT_TIMEOUT\",\"message\":\"the script exceeded its time limit of %lld "
        "ms and did not stop within %d ms more; its sandbox was replaced\",\"logs\":[],"
        "\"logs_truncated\":true,\"elapsed_us\":%lld}",
        (long long)timeout_ms, BACKSTOP_GRACE_MS, (long long)(timeout_ms + BACKSTOP_GRACE_MS) * 1000);
    put_le32(backstop_frame.p, (uint32_t)(backstop_frame.len - 4));
    atomic_store(&job_state, JOB_RUNNING);
    set_alarm(timeout_ms + BACKSTOP_GRACE_MS);
}

/* Returns false when the alarm already answered: the handler is ending the process. */
static bool disarm_backstop(void)
{
    int expected = JOB_RUNNING;
    if (atomic_load(&job_state) == JOB_IDLE)
        return true; /* never armed: the request was invalid */
    set_alarm(0);
    return atomic_compare_exchange_strong(&job_state, &expected, JOB_IDLE);
}

/* ---- frames ---- */

/* Reads from fd 0 until `in` holds at least `want` bytes: 1, or 0 on EOF, -1 on error. */
static int fill(bw_buf_t *in, size_t want)
{
    while (in->len < want) {
        size_t room = want - in->len > READ_CHUNK ? want - in->len : READ_CHUNK;
        char *at = bw_buf_reserve(in, room);
        ssize_t n = read(0, at, in->cap - in->len - 1);
        if (n > 0)
            in->len += (size_t)n;
        else if (n == 0)
            return 0;
        else if (errno != EINTR)
            return -1;
    }
    return 1;
}

static void consume(bw_buf_t *in, size_t n)
{
    memmove(in->p, in->p + n, in->len - n);
    in->len -= n;
    if (in->cap > 4 * READ_CHUNK && in->len < READ_CHUNK) { /* give back a huge request's buffer */
        in->cap = READ_CHUNK + 1;
        in->p = bw_realloc(in->p, in->cap);
    }
}

/* Writes the answer in out (its first 4 bytes are the header's room) as one frame. Returns false when
   the pipe is gone. */
static bool write_frame(bw_buf_t *out)
{
    put_le32(out->p, (uint32_t)(out->len - 4));
    for (size_t off = 0; off < out->len;) {
        ssize_t n = write(1, out->p + off, out->len - off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return false;
        off += (size_t)n;
    }
    return true;
}

static uint32_t get_le32(const char *s)
{
    const unsigned char *u = (const unsigned char *)s;
    return (uint32_t)u[0] | (uint32_t)u[1] << 8 | (uint32_t)u[2] << 16 | (uint32_t)u[3] << 24;
}

#define RETIRE_EVERY 64

/* After a job: EXIT_RSS past the memory limit, else -1. Past half of it, the garbage of earlier jobs is
   collected now rather than counted against the next one, and the realm is replaced (at most every
   RETIRE_EVERY such times): it may hold memory a job attached where no later job can reach it (private
   fields on frozen built-ins); past three quarters even then, the process ends (EXIT_RSS). */
static int check_memory(bw_jsengine_t *eng, uint64_t job_ns)
{
    static unsigned since_retired = RETIRE_EVERY;
    uint64_t rss = resident_bytes(job_ns);
    if (rss > max_rss_bytes)
        return EXIT_RSS;
    if (rss <= max_rss_bytes / 2)
        return -1;
    if (++since_retired >= RETIRE_EVERY) {
        since_retired = 0;
        bw_jsengine_retire_realm(eng);
        bw_jsengine_prepare(eng);
    }
    bw_jsengine_collect(eng);
    /* still past three quarters of the limit, and well above what a fresh process takes: a fresh process
       serves the next job better than this one, which would stop it after a small allocation (the pool
       queues what this one held again) */
    rss = resident_bytes(UINT64_MAX);
    if (rss > max_rss_bytes / 4 * 3 && rss > start_rss_bytes + max_rss_bytes / 4)
        return EXIT_RSS;
    return -1;
}

/* Runs one request and answers it. Returns the exit status when the child must end, or -1. */
static int serve_one(bw_jsengine_t *eng, bw_buf_t *in, uint32_t n, bw_buf_t *out)
{
    uint64_t t0 = bw_mono_ns();
    out->len = 4;
    bw_jsengine_run_frame(eng, in->p + 4, n, out, arm_backstop, NULL);
    consume(in, 4 + (size_t)n);
    if (!disarm_backstop())
        for (;;)
            pause(); /* the alarm handler answered and is ending the process */
    if (!write_frame(out)) {
        fprintf(stderr, "js-sandbox: cannot write an answer: %s\n", strerror(errno));
        return EXIT_FAILURE_;
    }
    int status = check_memory(eng, bw_mono_ns() - t0);
    if (status >= 0)
        return status;
    bw_jsengine_prepare(eng);
    return -1;
}

/* The request loop; never returns. */
static void serve(bw_jsengine_t *eng)
{
    bw_buf_t in, out;
    int status = -1, rc;
    bw_buf_init(&in, READ_CHUNK + 1);
    bw_buf_init(&out, 4096);
    while (status < 0) {
        rc = fill(&in, 4);
        if (rc > 0 && get_le32(in.p) > FRAME_MAX) {
            fprintf(stderr, "js-sandbox: request frame of %u bytes is over the 64 MiB limit\n",
                    get_le32(in.p));
            status = EXIT_OVERSIZE;
        } else if (rc > 0 && (rc = fill(&in, 4 + (size_t)get_le32(in.p))) > 0) {
            status = serve_one(eng, &in, get_le32(in.p), &out);
        }
        if (rc < 0)
            fprintf(stderr, "js-sandbox: cannot read a request: %s\n", strerror(errno));
        if (rc <= 0)
            status = rc == 0 ? EXIT_EOF : EXIT_FAILURE_;
    }
    _exit(status);
}

int bw_cli_sandbox(void)
{
    struct sigaction sa = {.sa_handler = on_alarm, .sa_flags = SA_RESTART};
    bw_buf_init(&backstop_frame, 512);
    sigaction(SIGALRM, &sa, NULL);
    bw_jsengine_t *eng = start();
    if (eng == NULL) {
        bw_buf_dispose(&backstop_frame);
        return EXIT_FAILURE_;
    }
    serve(eng);
    return EXIT_FAILURE_; /* not reached */
}
