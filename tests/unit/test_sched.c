/*
 * Unit tests for core/sched.c (the fair scheduler), driven directly: no NATS, no clock. Jobs are small
 * structs of the test's own with the bw_sched_item_t embedded. Covered: shared slots and FIFO order for
 * one tenant; equal and weighted shares between backlogged tenants, a newcomer's next free slot and no
 * credit for idle time; the tenant cap; type caps, own-pool types and the shared slots; the queue limits
 * and their order; removal of waiting jobs; tenant records and foreach; a 100,000-job drain across 10,000
 * tenants with invariants; and a random-operation check against a reference model of counts and caps.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "core/sched.h"

/* The test's job types: echo (shared slot, no cap), js (shared slot and a cap), sleep (its own pool), sql
   (own_pool set; own pool only when it has a cap). */
enum { ECHO = 0, JS, SLEEP, SQL, NTYPES };

typedef struct job {
    bw_sched_item_t it;
    const char *tenant; /* tenant bytes, tlen of them */
    size_t tlen;
    int tix; /* the test's tenant index, where a test keeps one */
    int type;
    uint64_t seq;  /* the test's admission order */
    uint64_t tseq; /* admission order within (tenant, type) */
    int starts;
} job_t;

#define JOB(item) ((job_t *)((char *)(item)-offsetof(job_t, it)))

static bw_sched_t *make(int slots, const int *cap, const bool *own, int tmax, size_t qmax, size_t tqmax)
{
    bw_sched_opts_t o = {
        .shared_slots = slots,
        .ntypes = NTYPES,
        .type_cap = cap,
        .own_pool = own,
        .tenant_max_running = tmax,
        .queue_max = qmax,
        .tenant_queue_max = tqmax,
    };
    bw_sched_t *s = bw_sched_create(&o);
    assert_non_null(s);
    return s;
}

static bw_sched_admit_t admit_n(bw_sched_t *s, job_t *j, const char *tenant, size_t len, int type)
{
    j->tenant = tenant;
    j->tlen = len;
    j->type = type;
    bw_sched_admit_t r = bw_sched_admit(s, &j->it, tenant, len, type);
    if (r == BW_SCHED_START)
        j->starts++;
    return r;
}

static bw_sched_admit_t admit(bw_sched_t *s, job_t *j, const char *tenant, int type)
{
    return admit_n(s, j, tenant, strlen(tenant), type);
}

static job_t *next(bw_sched_t *s)
{
    bw_sched_item_t *it = bw_sched_next(s);
    if (it == NULL)
        return NULL;
    assert_int_equal(it->state, BW_SCHED_RUNNING);
    JOB(it)->starts++;
    return JOB(it);
}

static void end(bw_sched_t *s, job_t *j)
{
    assert_int_equal(j->it.state, BW_SCHED_RUNNING);
    bw_sched_end(s, &j->it);
    assert_int_equal(j->it.state, BW_SCHED_NONE);
}

static void unwait(bw_sched_t *s, job_t *j)
{
    assert_int_equal(j->it.state, BW_SCHED_WAITING);
    bw_sched_remove(s, &j->it);
    assert_int_equal(j->it.state, BW_SCHED_NONE);
}

#define expect_admit(s, j, tenant, type, want)                                                               \
    do {                                                                                                     \
        bw_sched_admit_t r_ = admit((s), (j), (tenant), (type));                                             \
        assert_int_equal(r_, (want));                                                                        \
        assert_int_equal((j)->it.state, r_ == BW_SCHED_START  ? BW_SCHED_RUNNING                             \
                                        : r_ == BW_SCHED_WAIT ? BW_SCHED_WAITING                             \
                                                              : BW_SCHED_NONE);                              \
    } while (0)

#define expect_next(s, j) assert_ptr_equal(next(s), (j))

/* Every count of the stats, and that the per-type counts add up to the totals. */
#define check_stats(s, w, r, sh, tw, t) check_stats_((s), (w), (r), (sh), (tw), (t), __FILE__, __LINE__)
static void check_stats_(const bw_sched_t *s, size_t w, size_t r, size_t sh, size_t tw, size_t t,
                         const char *file, int line)
{
    bw_sched_stats_t st;
    memset(&st, 0x5a, sizeof st);
    bw_sched_stats(s, &st);
    _assert_int_equal(st.waiting, w, file, line);
    _assert_int_equal(st.running, r, file, line);
    _assert_int_equal(st.shared_running, sh, file, line);
    _assert_int_equal(st.tenants_waiting, tw, file, line);
    _assert_int_equal(st.tenants, t, file, line);
    _assert_int_equal(bw_sched_waiting(s), w, file, line);
    _assert_int_equal(bw_sched_shared_running(s), sh, file, line);
    size_t sw = 0, sr = 0;
    for (int i = 0; i < NTYPES; i++) {
        sw += st.waiting_by_type[i];
        sr += st.running_by_type[i];
    }
    _assert_int_equal(sw, w, file, line);
    _assert_int_equal(sr, r, file, line);
}

#define check_type(s, type, w, r) check_type_((s), (type), (w), (r), __FILE__, __LINE__)
static void check_type_(const bw_sched_t *s, int type, size_t w, size_t r, const char *file, int line)
{
    bw_sched_stats_t st;
    bw_sched_stats(s, &st);
    _assert_int_equal(st.waiting_by_type[type], w, file, line);
    _assert_int_equal(st.running_by_type[type], r, file, line);
}

/* Ends every running job in jobs[0..n) and drains what follows (ending each as it starts). */
static void drain(bw_sched_t *s, job_t *jobs, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (jobs[i].it.state == BW_SCHED_RUNNING)
            end(s, &jobs[i]);
    job_t *j;
    while ((j = next(s)) != NULL)
        end(s, j);
    check_stats(s, 0, 0, 0, 0, 0);
}

static bool same_tenant(const job_t *j, const char *tenant)
{
    return j->tlen == strlen(tenant) && memcmp(j->tenant, tenant, j->tlen) == 0;
}

/* ---- one tenant ---- */

static void test_single_tenant_fifo(void **state)
{
    job_t j[6];
    memset(j, 0, sizeof j);
    bw_sched_t *s = make(2, NULL, NULL, 0, 100, 100);
    check_stats(s, 0, 0, 0, 0, 0);
    for (int i = 0; i < 6; i++)
        expect_admit(s, &j[i], "acme", ECHO, i < 2 ? BW_SCHED_START : BW_SCHED_WAIT);
    check_stats(s, 4, 2, 2, 1, 1);
    check_type(s, ECHO, 4, 2);
    assert_null(next(s)); /* nothing freed room */
    end(s, &j[1]);
    check_stats(s, 4, 1, 1, 1, 1);
    expect_next(s, &j[2]);
    assert_null(next(s));
    check_stats(s, 3, 2, 2, 1, 1);
    end(s, &j[0]);
    expect_next(s, &j[3]);
    assert_null(next(s));
    end(s, &j[2]);
    end(s, &j[3]);
    check_stats(s, 2, 0, 0, 1, 1);
    expect_next(s, &j[4]);
    expect_next(s, &j[5]);
    assert_null(next(s));
    check_stats(s, 0, 2, 2, 0, 1);
    end(s, &j[4]);
    end(s, &j[5]);
    check_stats(s, 0, 0, 0, 0, 0);

    /* Items are reused after NONE without zeroing. An admission between an end and the next() that
       follows does not overtake the waiting job that could take the freed slot. */
    expect_admit(s, &j[0], "acme", ECHO, BW_SCHED_START);
    expect_admit(s, &j[1], "acme", ECHO, BW_SCHED_START);
    expect_admit(s, &j[2], "acme", ECHO, BW_SCHED_WAIT);
    end(s, &j[0]);
    expect_admit(s, &j[3], "acme", ECHO, BW_SCHED_WAIT);
    check_stats(s, 2, 1, 1, 1, 1);
    expect_next(s, &j[2]);
    assert_null(next(s));
    end(s, &j[1]);
    expect_next(s, &j[3]);
    for (int i = 0; i < 6; i++)
        assert_int_equal(j[i].starts, i < 4 ? 2 : 1);
    drain(s, j, 6);
    bw_sched_destroy(s);
}

/* ---- fairness ---- */

/* With one shared slot held by cur: ends cur, starts the next job, n times; writes the tenants' initials
   to seq and returns the job running at the end. */
static job_t *run_slot(bw_sched_t *s, job_t *cur, int n, char *seq)
{
    for (int i = 0; i < n; i++) {
        end(s, cur);
        cur = next(s);
        assert_non_null(cur);
        assert_null(next(s));
        seq[i] = cur->tenant[0];
    }
    seq[n] = '\0';
    return cur;
}

static void expect_alternating(const char *seq, int n, char first, char second)
{
    for (int i = 0; i < n; i++)
        if (seq[i] != (i % 2 == 0 ? first : second))
            fail_msg("starts are not alternating from %c at %d: %s", first, i, seq);
}

/* Jobs of a tenant start in admission order (one type, no caps): checks that every job in jobs[0..n)
   that started started after all those admitted before it. Uses the start order in order[]. */
static void expect_fifo(job_t **order, int n)
{
    for (int i = 0; i < n; i++)
        for (int k = i + 1; k < n; k++)
            if (same_tenant(order[i], order[k]->tenant) && order[i]->seq > order[k]->seq)
                fail_msg("%.*s's job %llu started before its job %llu", (int)order[k]->tlen, order[k]->tenant,
                         (unsigned long long)order[k]->seq, (unsigned long long)order[i]->seq);
}

static void test_two_tenants_alternate(void **state)
{
    static const int cap[NTYPES] = {0, 0, 10, 0};
    static const bool own[NTYPES] = {false, false, true, false};
    enum { NA = 200, NB = 60 };
    job_t *a = calloc(NA, sizeof *a), *b = calloc(NB, sizeof *b), *order[NA + NB];
    char seq[NA + NB + 1];
    int ia = 0, ib = 0, no = 0;
    bw_sched_t *s = make(1, cap, own, 0, 10000, 10000);

    /* A alone gets the slot every time. */
    for (; ia < 60; ia++) {
        a[ia].seq = (uint64_t)ia;
        expect_admit(s, &a[ia], "A", ECHO, ia == 0 ? BW_SCHED_START : BW_SCHED_WAIT);
    }
    job_t *cur = &a[0];
    for (int i = 1; i <= 40; i++) {
        end(s, cur);
        cur = next(s);
        assert_ptr_equal(cur, &a[i]);
        assert_null(next(s));
    }
    /* B arrives behind A's backlog of 19: it takes the next free slot, then they alternate; B gets no
       credit for the 41 starts A had alone (no burst). */
    for (; ib < 20; ib++) {
        b[ib].seq = (uint64_t)(1000 + ib);
        expect_admit(s, &b[ib], "B", ECHO, BW_SCHED_WAIT);
    }
    check_stats(s, 39, 1, 1, 2, 2);
    for (int i = 0; i < 38; i++) {
        end(s, cur);
        cur = next(s);
        assert_non_null(cur);
        assert_null(next(s));
        seq[i] = cur->tenant[0];
        order[no++] = cur;
    }
    seq[38] = '\0';
    expect_alternating(seq, 38, 'B', 'A');
    expect_fifo(order, no);
    /* the last B */
    cur = run_slot(s, cur, 1, seq);
    assert_ptr_equal(cur, &b[19]);
    end(s, cur);
    assert_null(next(s));
    check_stats(s, 0, 0, 0, 0, 0);

    /* B idles (its record is gone) while A runs 20 alone; B comes back with 10: the next free slot,
       then alternation, no burst. */
    for (int i = 0; i < 30; i++, ia++)
        expect_admit(s, &a[ia], "A", ECHO, i == 0 ? BW_SCHED_START : BW_SCHED_WAIT);
    cur = run_slot(s, &a[ia - 30], 20, seq);
    for (int i = 0; i < 10; i++, ib++)
        expect_admit(s, &b[ib], "B", ECHO, BW_SCHED_WAIT);
    check_stats(s, 19, 1, 1, 2, 2);
    cur = run_slot(s, cur, 19, seq);
    expect_alternating(seq, 19, 'B', 'A');
    end(s, cur);
    assert_null(next(s));
    check_stats(s, 0, 0, 0, 0, 0);

    /* B idles with a job running in its own pool (its record lives, nothing waiting) while A runs 20
       starts: coming back with work, B gets the next slot and then its share, not a burst. */
    for (int i = 0; i < 30; i++, ia++)
        expect_admit(s, &a[ia], "A", ECHO, i == 0 ? BW_SCHED_START : BW_SCHED_WAIT);
    job_t *held = &b[ib++];
    expect_admit(s, held, "B", SLEEP, BW_SCHED_START);
    check_stats(s, 29, 2, 1, 1, 2);
    cur = run_slot(s, &a[ia - 30], 20, seq);
    for (int i = 0; i < 10; i++, ib++)
        expect_admit(s, &b[ib], "B", ECHO, BW_SCHED_WAIT);
    cur = run_slot(s, cur, 19, seq);
    expect_alternating(seq, 19, 'B', 'A');
    end(s, cur);
    end(s, held);
    assert_null(next(s));
    check_stats(s, 0, 0, 0, 0, 0);

    /* Three tenants at once, equal weights, from a standing start: round robin, each FIFO. */
    memset(a, 0, NA * sizeof *a);
    static const char *const names[3] = {"X", "Y", "Z"};
    for (int i = 0; i < 90; i++) {
        a[i].seq = (uint64_t)i;
        admit(s, &a[i], names[i % 3], ECHO);
    }
    cur = &a[0];
    assert_int_equal(cur->it.state, BW_SCHED_RUNNING);
    int count[3] = {0, 0, 0};
    count[0] = 1;
    for (int i = 0; i < 60; i++) {
        cur = run_slot(s, cur, 1, seq);
        count[cur->tenant[0] - 'X']++;
        int lo = count[0] < count[1] ? count[0] : count[1];
        lo = lo < count[2] ? lo : count[2];
        int hi = count[0] > count[1] ? count[0] : count[1];
        hi = hi > count[2] ? hi : count[2];
        if (hi - lo > 1)
            fail_msg("after %d starts X %d, Y %d, Z %d", i + 2, count[0], count[1], count[2]);
    }
    drain(s, a, NA);
    free(a);
    free(b);
    bw_sched_destroy(s);
}

/* Two tenants kept backlogged on one slot: each job that ends is admitted again at the back of its
   tenant's queue. Counts each tenant's starts over n starts; gap2 (may be NULL) gets the longest run of
   starts without one of t2's. */
static void run_backlogged(bw_sched_t *s, const char *t1, size_t l1, const char *t2, size_t l2, int n,
                           long *c1, long *c2, long *gap2)
{
    enum { PER = 8 };
    job_t j[2 * PER];
    memset(j, 0, sizeof j);
    for (int i = 0; i < PER; i++) {
        admit_n(s, &j[2 * i], t1, l1, ECHO);
        admit_n(s, &j[2 * i + 1], t2, l2, ECHO);
    }
    job_t *cur = NULL;
    for (int i = 0; i < 2 * PER; i++)
        if (j[i].it.state == BW_SCHED_RUNNING)
            cur = &j[i];
    assert_non_null(cur);
    *c1 = *c2 = 0;
    long since = 0, longest = 0;
    for (int i = 0; i < n; i++) {
        end(s, cur);
        job_t *nx = next(s);
        assert_non_null(nx);
        assert_null(next(s));
        assert_int_equal(admit_n(s, cur, cur->tenant, cur->tlen, ECHO), BW_SCHED_WAIT);
        cur = nx;
        if (cur->tenant == t1) {
            ++*c1;
            since++;
            longest = since > longest ? since : longest;
        } else {
            ++*c2;
            since = 0;
        }
    }
    if (gap2 != NULL)
        *gap2 = longest;
    drain(s, j, 2 * PER);
}

static void expect_ratio(long c1, long c2, double want, double tolerance)
{
    double r = c2 > 0 ? (double)c1 / (double)c2 : 1e300;
    print_message("starts %ld : %ld, ratio %.4f (want %.1f)\n", c1, c2, r, want);
    if (r < want * (1 - tolerance) || r > want * (1 + tolerance))
        fail_msg("ratio %ld / %ld = %.4f, not %.1f within %.1f%%", c1, c2, r, want, tolerance * 100);
}

static void test_weights(void **state)
{
    bw_sched_t *s = make(1, NULL, NULL, 0, 1000, 1000);
    long c1, c2, gap;
    bw_sched_set_weight(s, "acme", 4, 3);
    bw_sched_set_weight(s, "heavy", 5, 1000);
    bw_sched_set_weight(s, "light", 5, 1);
    /* acme=3 against beta (not named: weight 1) */
    run_backlogged(s, "acme", 4, "beta", 4, 4000, &c1, &c2, NULL);
    expect_ratio(c1, c2, 3.0, 0.01);
    check_stats(s, 0, 0, 0, 0, 0);
    /* Again after both records were freed: the weight outlives them. The tenant's bytes come from a
       longer buffer (length, not NUL, ends them). */
    static const char buf[] = "acmeXYZ";
    run_backlogged(s, buf, 4, "gamma", 5, 4000, &c1, &c2, NULL);
    expect_ratio(c1, c2, 3.0, 0.01);
    /* Two unnamed tenants: 1:1. */
    run_backlogged(s, "delta", 5, "epsilon", 7, 4000, &c1, &c2, NULL);
    expect_ratio(c1, c2, 1.0, 0.01);
    /* 1000:1, the light one never starved for more than about 1000 starts. */
    run_backlogged(s, "heavy", 5, "light", 5, 200200, &c1, &c2, &gap);
    expect_ratio(c1, c2, 1000.0, 0.01);
    if (gap > 1010)
        fail_msg("light waited through %ld starts of heavy", gap);
    bw_sched_destroy(s);
}

/* Weights hold while another tenant keeps a different pool busy: acme=3 and beta=1 backlogged on the
   contended type (one shared slot for echo; or js at its cap of 1 with slots to spare), gamma starting
   `others` jobs of another type (own-pool sleep at its cap of 1; or echo, all 8 of gamma's running)
   between two starts of the contended type. The contended type's starts are 3:1 whatever gamma does. */
static void weights_beside(int contended, int other, int slots, int others)
{
    static const int cap[NTYPES] = {0, 1, 1, 0};
    static const bool own[NTYPES] = {false, false, true, false};
    enum { PER = 8 };
    job_t j[3 * PER];
    memset(j, 0, sizeof j);
    bw_sched_t *s = make(slots, cap, own, 0, 1000, 1000);
    bw_sched_set_weight(s, "acme", 4, 3);
    job_t *cur = NULL, *oth[8] = {NULL};
    int noth = 0;
    for (int i = 0; i < PER; i++) {
        admit(s, &j[i], "acme", contended);
        admit(s, &j[PER + i], "beta", contended);
    }
    for (int i = 0; i < PER; i++)
        admit(s, &j[2 * PER + i], "gamma", other);
    for (int i = 0; i < 3 * PER; i++)
        if (j[i].it.state == BW_SCHED_RUNNING) {
            if (j[i].type == contended)
                cur = &j[i];
            else
                oth[noth++] = &j[i];
        }
    assert_non_null(cur);
    assert_true(noth > 0);
    long acme = 0, beta = 0;
    for (int round = 0; round < 4000; round++) {
        for (int k = 0; k < others; k++) { /* one of gamma's ends, the next starts */
            job_t *o = oth[k % noth], *n;
            end(s, o);
            if ((n = next(s)) != NULL) { /* gamma has more than its type may run */
                assert_int_equal(n->type, other);
                assert_null(next(s));
                assert_int_equal(admit(s, o, "gamma", other), BW_SCHED_WAIT);
                oth[k % noth] = n;
            } else { /* all of gamma's run: the one that ended comes back */
                assert_int_equal(admit(s, o, "gamma", other), BW_SCHED_START);
            }
        }
        end(s, cur);
        job_t *nx = next(s);
        assert_non_null(nx);
        assert_int_equal(nx->type, contended);
        assert_null(next(s));
        assert_int_equal(admit(s, cur, cur->tenant, contended), BW_SCHED_WAIT);
        cur = nx;
        if (same_tenant(cur, "acme"))
            acme++;
        else
            beta++;
    }
    print_message("type %d beside %d of type %d: ", contended, others, other);
    expect_ratio(acme, beta, 3.0, 0.01);
    drain(s, j, 3 * PER);
    bw_sched_destroy(s);
}

static void test_weights_beside_other_types(void **state)
{
    weights_beside(ECHO, SLEEP, 1, 0);
    weights_beside(ECHO, SLEEP, 1, 1);
    weights_beside(ECHO, SLEEP, 1, 3);
    weights_beside(JS, ECHO, 16, 0);
    weights_beside(JS, ECHO, 16, 1);
}

/* A newcomer gets a slot at once (the next or the one after: sched.c places it at the virtual time of the
   last start, which another pool's starts may have moved past the backlogged tenant's), also while
   another tenant keeps a pool of another type busy, and then no more than its share. */
static void test_newcomer_beside_other_types(void **state)
{
    static const int cap[NTYPES] = {0, 0, 1, 0};
    static const bool own[NTYPES] = {false, false, true, false};
    enum { NA = 100, NG = 4, NB = 10 };
    job_t a[NA], g[NG], b[NB];
    char seq[32];
    memset(a, 0, sizeof a);
    memset(g, 0, sizeof g);
    memset(b, 0, sizeof b);
    bw_sched_t *s = make(1, cap, own, 0, 1000, 1000);
    for (int i = 0; i < NA; i++)
        expect_admit(s, &a[i], "A", ECHO, i == 0 ? BW_SCHED_START : BW_SCHED_WAIT);
    for (int i = 0; i < NG; i++)
        expect_admit(s, &g[i], "G", SLEEP, i == 0 ? BW_SCHED_START : BW_SCHED_WAIT);
    job_t *cur = &a[0], *sl = &g[0];
    for (int round = 0; round < 40; round++) {
        cur = run_slot(s, cur, 1, seq);
        for (int k = 0; k < 5; k++) { /* G's sleeps run five times as often as A's echos */
            end(s, sl);
            job_t *n = next(s);
            assert_non_null(n);
            assert_int_equal(admit(s, sl, "G", SLEEP), BW_SCHED_WAIT);
            sl = n;
        }
    }
    for (int i = 0; i < NB; i++)
        expect_admit(s, &b[i], "B", ECHO, BW_SCHED_WAIT);
    cur = run_slot(s, cur, 20, seq);
    print_message("after B's arrival: %s\n", seq);
    /* B within the first two starts, then never twice in a row, 10 of 20 give or take one */
    if (seq[0] != 'B' && seq[1] != 'B')
        fail_msg("B is behind A's backlog: %s", seq);
    int nb = 0;
    for (int i = 0; i < 20; i++) {
        nb += seq[i] == 'B';
        if (i > 0 && seq[i] == 'B' && seq[i - 1] == 'B')
            fail_msg("B had a burst: %s", seq);
    }
    if (nb < 9 || nb > 11)
        fail_msg("B had %d of 20 starts: %s", nb, seq);
    end(s, sl);
    end(s, cur);
    while ((cur = next(s)) != NULL)
        end(s, cur);
    check_stats(s, 0, 0, 0, 0, 0);
    bw_sched_destroy(s);
}

/* ---- caps ---- */

static void test_tenant_cap(void **state)
{
    static const int cap[NTYPES] = {0, 0, 10, 0};
    static const bool own[NTYPES] = {false, false, true, false};
    job_t a[6], b[2], c[1];
    memset(a, 0, sizeof a);
    memset(b, 0, sizeof b);
    memset(c, 0, sizeof c);
    bw_sched_t *s = make(3, cap, own, 2, 100, 100);
    expect_admit(s, &a[0], "A", ECHO, BW_SCHED_START);
    expect_admit(s, &a[1], "A", ECHO, BW_SCHED_START);
    expect_admit(s, &a[2], "A", ECHO, BW_SCHED_WAIT); /* a slot is free, A is at its cap */
    expect_admit(s, &a[3], "A", ECHO, BW_SCHED_WAIT);
    check_stats(s, 2, 2, 2, 1, 1);
    expect_admit(s, &b[0], "B", ECHO, BW_SCHED_START); /* passes A's older waiting jobs */
    expect_admit(s, &b[1], "B", ECHO, BW_SCHED_WAIT);  /* no slot */
    check_stats(s, 3, 3, 3, 2, 2);
    end(s, &b[0]);
    expect_next(s, &b[1]); /* A is skipped */
    assert_null(next(s));
    end(s, &b[1]);
    assert_null(next(s)); /* a free slot, but only A waits and A is at its cap */
    check_stats(s, 2, 2, 2, 1, 1);
    end(s, &a[0]);
    expect_next(s, &a[2]);
    assert_null(next(s));
    expect_admit(s, &c[0], "C", ECHO, BW_SCHED_START);
    check_stats(s, 1, 3, 3, 1, 2);
    end(s, &a[1]);
    expect_next(s, &a[3]);
    assert_null(next(s));
    check_stats(s, 0, 3, 3, 0, 2);
    end(s, &a[2]);
    end(s, &a[3]);
    end(s, &c[0]);
    check_stats(s, 0, 0, 0, 0, 0);

    /* The cap counts all of a tenant's running jobs, own-pool ones too. */
    expect_admit(s, &a[0], "A", SLEEP, BW_SCHED_START);
    expect_admit(s, &a[1], "A", SLEEP, BW_SCHED_START);
    expect_admit(s, &a[2], "A", ECHO, BW_SCHED_WAIT);
    expect_admit(s, &a[3], "A", SLEEP, BW_SCHED_WAIT);
    check_stats(s, 2, 2, 0, 1, 1);
    end(s, &a[0]);
    expect_next(s, &a[2]); /* oldest first */
    assert_null(next(s));
    end(s, &a[1]);
    expect_next(s, &a[3]);
    check_stats(s, 0, 2, 1, 0, 1);
    drain(s, a, 6);
    bw_sched_destroy(s);
}

static void test_type_caps(void **state)
{
    int cap[NTYPES] = {0, 1, 3, 0};
    bool own[NTYPES] = {false, false, true, true};
    job_t j[8];
    memset(j, 0, sizeof j);

    /* js at its cap does not hold up echo behind it; js stays FIFO. */
    bw_sched_t *s = make(2, cap, own, 0, 100, 100);
    expect_admit(s, &j[0], "A", JS, BW_SCHED_START);
    expect_admit(s, &j[1], "A", ECHO, BW_SCHED_START);
    expect_admit(s, &j[2], "A", JS, BW_SCHED_WAIT);
    expect_admit(s, &j[3], "A", ECHO, BW_SCHED_WAIT);
    expect_admit(s, &j[4], "A", JS, BW_SCHED_WAIT);
    expect_admit(s, &j[5], "A", ECHO, BW_SCHED_WAIT);
    check_stats(s, 4, 2, 2, 1, 1);
    check_type(s, JS, 2, 1);
    check_type(s, ECHO, 2, 1);
    end(s, &j[1]);
    expect_next(s, &j[3]); /* j[2] is older but js is at its cap */
    assert_null(next(s));
    end(s, &j[0]);
    expect_next(s, &j[2]);
    assert_null(next(s));
    check_type(s, JS, 1, 1);
    end(s, &j[3]);
    expect_next(s, &j[5]); /* js at its cap again */
    end(s, &j[2]);
    expect_next(s, &j[4]);
    check_stats(s, 0, 2, 2, 0, 1);
    drain(s, j, 8);
    bw_sched_destroy(s);

    /* Own pool: one shared slot and a sleep cap of 3 run 3 sleeps and 1 echo at once. */
    memset(j, 0, sizeof j);
    s = make(1, cap, own, 0, 100, 100);
    for (int i = 0; i < 4; i++)
        expect_admit(s, &j[i], "A", SLEEP, i < 3 ? BW_SCHED_START : BW_SCHED_WAIT);
    expect_admit(s, &j[4], "A", ECHO, BW_SCHED_START);
    expect_admit(s, &j[5], "A", ECHO, BW_SCHED_WAIT);
    check_stats(s, 2, 4, 1, 1, 1);
    check_type(s, SLEEP, 1, 3);
    check_type(s, ECHO, 1, 1);
    end(s, &j[4]);
    expect_next(s, &j[5]);
    assert_null(next(s));
    end(s, &j[0]);
    expect_next(s, &j[3]);
    assert_null(next(s));
    check_stats(s, 0, 4, 1, 0, 1);
    drain(s, j, 8);
    /* own_pool without a cap (sql here): a shared slot and no cap of its own. */
    expect_admit(s, &j[0], "A", SQL, BW_SCHED_START);
    expect_admit(s, &j[1], "A", SQL, BW_SCHED_WAIT);
    expect_admit(s, &j[2], "A", ECHO, BW_SCHED_WAIT);
    expect_admit(s, &j[3], "A", SLEEP, BW_SCHED_START);
    check_stats(s, 2, 2, 1, 1, 1);
    end(s, &j[0]);
    expect_next(s, &j[1]);
    assert_null(next(s));
    drain(s, j, 8);
    bw_sched_destroy(s);

    /* A capped type that takes shared slots obeys both: js cap 3, 2 slots. */
    memset(j, 0, sizeof j);
    cap[JS] = 3;
    s = make(2, cap, own, 0, 100, 100);
    expect_admit(s, &j[0], "A", JS, BW_SCHED_START);
    expect_admit(s, &j[1], "A", JS, BW_SCHED_START);
    expect_admit(s, &j[2], "A", JS, BW_SCHED_WAIT); /* under its cap, no shared slot */
    expect_admit(s, &j[3], "A", ECHO, BW_SCHED_WAIT);
    check_stats(s, 2, 2, 2, 1, 1);
    end(s, &j[0]);
    expect_next(s, &j[2]);
    assert_null(next(s));
    drain(s, j, 8);
    bw_sched_destroy(s);
    /* js cap 2, 3 slots: the third js waits for the cap while echo takes the third slot. */
    memset(j, 0, sizeof j);
    cap[JS] = 2;
    s = make(3, cap, own, 0, 100, 100);
    expect_admit(s, &j[0], "A", JS, BW_SCHED_START);
    expect_admit(s, &j[1], "B", JS, BW_SCHED_START);
    expect_admit(s, &j[2], "A", JS, BW_SCHED_WAIT);
    expect_admit(s, &j[3], "B", ECHO, BW_SCHED_START);
    expect_admit(s, &j[4], "B", ECHO, BW_SCHED_WAIT);
    check_stats(s, 2, 3, 3, 2, 2);
    check_type(s, JS, 1, 2);
    end(s, &j[3]);
    expect_next(s, &j[4]);
    assert_null(next(s));
    end(s, &j[1]);
    expect_next(s, &j[2]);
    assert_null(next(s));
    check_stats(s, 0, 3, 3, 0, 2);
    drain(s, j, 8);
    bw_sched_destroy(s);
}

/* ---- queue limits ---- */

static void test_queue_limits(void **state)
{
    static const int cap[NTYPES] = {0, 0, 2, 0};
    static const bool own[NTYPES] = {false, false, true, false};
    job_t a[8], b[2], c[2];
    memset(a, 0, sizeof a);
    memset(b, 0, sizeof b);
    memset(c, 0, sizeof c);
    bw_sched_t *s = make(1, cap, own, 0, 3, 2);
    expect_admit(s, &a[0], "A", ECHO, BW_SCHED_START);
    expect_admit(s, &a[1], "A", ECHO, BW_SCHED_WAIT);
    expect_admit(s, &a[2], "A", ECHO, BW_SCHED_WAIT);
    expect_admit(s, &a[3], "A", ECHO, BW_SCHED_FULL_TENANT);
    check_stats(s, 2, 1, 1, 1, 1);
    expect_admit(s, &b[0], "B", ECHO, BW_SCHED_WAIT);
    expect_admit(s, &b[1], "B", ECHO, BW_SCHED_FULL_GLOBAL);
    check_stats(s, 3, 1, 1, 2, 2);
    expect_admit(s, &a[3], "A", ECHO, BW_SCHED_FULL_TENANT); /* both full: the tenant's cause first */
    expect_admit(s, &c[0], "C", ECHO, BW_SCHED_FULL_GLOBAL);
    check_stats(s, 3, 1, 1, 2, 2); /* no record left for C */
    /* A job that can start now is never refused. */
    expect_admit(s, &a[4], "A", SLEEP, BW_SCHED_START);
    expect_admit(s, &c[0], "C", SLEEP, BW_SCHED_START);
    check_stats(s, 3, 3, 1, 2, 3);
    expect_admit(s, &c[1], "C", SLEEP, BW_SCHED_FULL_GLOBAL); /* sleep is at its cap now */
    end(s, &c[0]);
    assert_null(next(s));
    check_stats(s, 3, 2, 1, 2, 2);
    /* Room in the tenant's queue again after a removal. */
    unwait(s, &a[1]);
    expect_admit(s, &a[3], "A", ECHO, BW_SCHED_WAIT);
    expect_admit(s, &a[5], "A", ECHO, BW_SCHED_FULL_TENANT);
    check_stats(s, 3, 2, 1, 2, 2);
    end(s, &a[0]);
    expect_next(s, &b[0]); /* A has had a start, B none */
    assert_null(next(s));
    expect_admit(s, &c[1], "C", ECHO, BW_SCHED_WAIT);
    check_stats(s, 3, 2, 1, 2, 3);
    /* destroyed with jobs waiting and running: the scheduler frees its own records (ASan checks) */
    bw_sched_destroy(s);

    /* queue_max 0: nothing may wait, but what can start still starts. */
    memset(a, 0, sizeof a);
    s = make(1, cap, own, 0, 0, 10);
    expect_admit(s, &a[0], "A", ECHO, BW_SCHED_START);
    expect_admit(s, &a[1], "A", ECHO, BW_SCHED_FULL_GLOBAL);
    expect_admit(s, &a[2], "B", ECHO, BW_SCHED_FULL_GLOBAL);
    expect_admit(s, &a[3], "B", SLEEP, BW_SCHED_START);
    check_stats(s, 0, 2, 1, 0, 2);
    end(s, &a[0]);
    assert_null(next(s));
    expect_admit(s, &a[1], "A", ECHO, BW_SCHED_START);
    drain(s, a, 8);
    bw_sched_destroy(s);
}

/* ---- removal ---- */

static void test_remove(void **state)
{
    job_t a[8], b[2];
    memset(a, 0, sizeof a);
    memset(b, 0, sizeof b);
    bw_sched_t *s = make(1, NULL, NULL, 0, 100, 100);
    expect_admit(s, &a[0], "A", ECHO, BW_SCHED_START);
    for (int i = 1; i <= 4; i++)
        expect_admit(s, &a[i], "A", ECHO, BW_SCHED_WAIT);
    expect_admit(s, &a[5], "A", JS, BW_SCHED_WAIT);
    expect_admit(s, &b[0], "B", ECHO, BW_SCHED_WAIT);
    check_stats(s, 6, 1, 1, 2, 2);
    unwait(s, &a[1]); /* head of A's echo queue */
    check_stats(s, 5, 1, 1, 2, 2);
    unwait(s, &a[3]); /* middle */
    check_stats(s, 4, 1, 1, 2, 2);
    check_type(s, ECHO, 3, 1);
    unwait(s, &b[0]); /* B's only job: B's record goes */
    check_stats(s, 3, 1, 1, 1, 1);
    assert_null(next(s));
    unwait(s, &a[5]); /* the only js */
    check_type(s, JS, 0, 0);
    check_stats(s, 2, 1, 1, 1, 1);
    end(s, &a[0]);
    expect_next(s, &a[2]);
    assert_null(next(s));
    check_stats(s, 1, 1, 1, 1, 1);
    /* a removed item comes back at the tail */
    expect_admit(s, &a[1], "A", ECHO, BW_SCHED_WAIT);
    unwait(s, &a[4]); /* now the head */
    end(s, &a[2]);
    expect_next(s, &a[1]);
    assert_null(next(s));
    check_stats(s, 0, 1, 1, 0, 1);
    /* removing the last waiting job of a tenant with a job running keeps its record */
    expect_admit(s, &a[3], "A", ECHO, BW_SCHED_WAIT);
    unwait(s, &a[3]);
    check_stats(s, 0, 1, 1, 0, 1);
    end(s, &a[1]);
    assert_null(next(s));
    check_stats(s, 0, 0, 0, 0, 0);

    /* Two tenants: removals at the head of the tenant picked next leave the right one next. */
    memset(a, 0, sizeof a);
    memset(b, 0, sizeof b);
    expect_admit(s, &a[0], "A", ECHO, BW_SCHED_START);
    expect_admit(s, &a[1], "A", ECHO, BW_SCHED_WAIT);
    expect_admit(s, &b[0], "B", ECHO, BW_SCHED_WAIT);
    expect_admit(s, &b[1], "B", ECHO, BW_SCHED_WAIT);
    expect_admit(s, &a[2], "A", ECHO, BW_SCHED_WAIT);
    unwait(s, &b[0]); /* B was next (newcomer) */
    end(s, &a[0]);
    expect_next(s, &b[1]);
    end(s, &b[1]);
    expect_next(s, &a[1]);
    end(s, &a[1]);
    expect_next(s, &a[2]);
    end(s, &a[2]);
    assert_null(next(s));
    check_stats(s, 0, 0, 0, 0, 0);
    bw_sched_destroy(s);
}

/* ---- tenant records ---- */

typedef struct seen {
    int n;
    struct {
        char name[16];
        size_t len, waiting, running;
    } t[8];
} seen_t;

static void collect(void *ud, const char *tenant, size_t len, size_t waiting, size_t running)
{
    seen_t *sn = ud;
    assert_true(sn->n < 8);
    assert_true(len < sizeof sn->t[0].name);
    memcpy(sn->t[sn->n].name, tenant, len);
    sn->t[sn->n].len = len;
    sn->t[sn->n].waiting = waiting;
    sn->t[sn->n].running = running;
    sn->n++;
}

static void expect_tenant(const seen_t *sn, const char *name, size_t len, size_t waiting, size_t running)
{
    int found = 0;
    for (int i = 0; i < sn->n; i++)
        if (sn->t[i].len == len && memcmp(sn->t[i].name, name, len) == 0) {
            found++;
            assert_int_equal(sn->t[i].waiting, waiting);
            assert_int_equal(sn->t[i].running, running);
        }
    assert_int_equal(found, 1);
}

static void test_tenant_records(void **state)
{
    job_t j[8];
    memset(j, 0, sizeof j);
    seen_t sn;
    bw_sched_t *s = make(2, NULL, NULL, 0, 1000, 100);
    bw_sched_set_weight(s, "never", 5, 7);
    /* "a", "a\0b" and "ab" are three tenants */
    expect_admit(s, &j[0], "a", ECHO, BW_SCHED_START);
    assert_int_equal(admit_n(s, &j[1], "ab", 2, ECHO), BW_SCHED_START);
    assert_int_equal(admit_n(s, &j[2], "a\0b", 3, ECHO), BW_SCHED_WAIT);
    expect_admit(s, &j[3], "a", ECHO, BW_SCHED_WAIT);
    check_stats(s, 2, 2, 2, 2, 3);
    memset(&sn, 0, sizeof sn);
    bw_sched_foreach_tenant(s, collect, &sn);
    assert_int_equal(sn.n, 3);
    expect_tenant(&sn, "a", 1, 1, 1);
    expect_tenant(&sn, "ab", 2, 0, 1);
    expect_tenant(&sn, "a\0b", 3, 1, 0);
    end(s, &j[1]);
    job_t *n1 = next(s);
    assert_true(n1 == &j[2] || n1 == &j[3]);
    assert_null(next(s));
    memset(&sn, 0, sizeof sn);
    bw_sched_foreach_tenant(s, collect, &sn);
    assert_int_equal(sn.n, 2);
    check_stats(s, 1, 2, 2, 1, 2);
    end(s, &j[0]);
    job_t *n2 = next(s);
    assert_true(n2 == &j[2] || n2 == &j[3]);
    assert_ptr_not_equal(n1, n2);
    memset(&sn, 0, sizeof sn);
    bw_sched_foreach_tenant(s, collect, &sn);
    assert_int_equal(sn.n, 2);
    expect_tenant(&sn, "a", 1, 0, 1);
    expect_tenant(&sn, "a\0b", 3, 0, 1);
    end(s, &j[2]);
    memset(&sn, 0, sizeof sn);
    bw_sched_foreach_tenant(s, collect, &sn);
    assert_int_equal(sn.n, 1);
    expect_tenant(&sn, "a", 1, 0, 1);
    check_stats(s, 0, 1, 1, 0, 1);
    end(s, &j[3]);
    check_stats(s, 0, 0, 0, 0, 0);
    memset(&sn, 0, sizeof sn);
    bw_sched_foreach_tenant(s, collect, &sn);
    assert_int_equal(sn.n, 0);
    /* many tenants come and go: the count follows */
    job_t *many = calloc(500, sizeof *many);
    char(*names)[16] = calloc(500, 16);
    for (int i = 0; i < 500; i++) {
        snprintf(names[i], 16, "t%d", i);
        assert_int_equal(admit(s, &many[i], names[i], ECHO), i < 2 ? BW_SCHED_START : BW_SCHED_WAIT);
    }
    check_stats(s, 498, 2, 2, 498, 500);
    for (int i = 0; i < 400; i++)
        if (many[i].it.state == BW_SCHED_WAITING)
            unwait(s, &many[i]);
    check_stats(s, 100, 2, 2, 100, 102);
    drain(s, many, 500);
    free(many);
    free(names);
    bw_sched_destroy(s);
}

/* ---- scale ---- */

static uint64_t rng_state;

static uint64_t rnd(void)
{
    /* xorshift64* */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 2685821657736338717ull;
}

static int rndn(int n)
{
    return (int)(rnd() % (uint64_t)n);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

typedef struct caps {
    int slots, tmax;
    const int *cap;
    const bool *own;
} caps_t;

static bool takes_shared(const caps_t *c, int type)
{
    return !(c->own != NULL && c->own[type] && c->cap != NULL && c->cap[type] > 0);
}

/* Whether a job of (tenant running tr, type) may start given the running counts. */
static bool may_start(const caps_t *c, int tr, int type, const int *run_type, int shared)
{
    if (c->cap != NULL && c->cap[type] > 0 && run_type[type] >= c->cap[type])
        return false;
    if (c->tmax > 0 && tr >= c->tmax)
        return false;
    return !takes_shared(c, type) || shared < c->slots;
}

enum { NTEN = 10000, PERT = 10, NJOBS = NTEN * PERT };

typedef struct scale {
    job_t *jobs;
    char (*names)[16];
    int *trun;                  /* [NTEN] running per tenant */
    int (*twait)[NTYPES];       /* waiting per tenant and type */
    uint64_t (*tnext)[NTYPES];  /* the tseq expected to start next per tenant and type */
    uint64_t (*tadmit)[NTYPES]; /* tseq counter */
    int run_type[NTYPES], shared, running, waiting;
    job_t **run; /* running jobs */
    caps_t c;
} scale_t;

static void scale_started(scale_t *x, job_t *j)
{
    assert_int_equal(j->starts, 1);
    if (j->tseq != x->tnext[j->tix][j->type])
        fail_msg("tenant %d type %d: job %llu started, %llu expected (FIFO within type)", j->tix, j->type,
                 (unsigned long long)j->tseq, (unsigned long long)x->tnext[j->tix][j->type]);
    x->tnext[j->tix][j->type]++;
    assert_true(may_start(&x->c, x->trun[j->tix], j->type, x->run_type, x->shared));
    x->trun[j->tix]++;
    x->run_type[j->type]++;
    x->shared += takes_shared(&x->c, j->type);
    x->run[x->running++] = j;
}

/* After next() gave NULL: no waiting job could start. */
static void scale_check_blocked(scale_t *x)
{
    for (int t = 0; t < NTEN; t++)
        for (int ty = 0; ty < NTYPES; ty++)
            if (x->twait[t][ty] > 0 && may_start(&x->c, x->trun[t], ty, x->run_type, x->shared))
                fail_msg("next() gave NULL but tenant %d has a job of type %d that may start", t, ty);
}

static void scale_check_stats(const scale_t *x, const bw_sched_t *s)
{
    size_t tw = 0, t = 0;
    for (int k = 0; k < NTEN; k++) {
        int w = 0;
        for (int ty = 0; ty < NTYPES; ty++)
            w += x->twait[k][ty];
        tw += w > 0;
        t += w > 0 || x->trun[k] > 0;
    }
    check_stats(s, (size_t)x->waiting, (size_t)x->running, (size_t)x->shared, tw, t);
}

static void test_scale(void **state)
{
    static const int cap[NTYPES] = {0, 4, 200, 16};
    static const bool own[NTYPES] = {false, false, true, true};
    scale_t x;
    memset(&x, 0, sizeof x);
    x.c = (caps_t){.slots = 64, .tmax = 3, .cap = cap, .own = own};
    x.jobs = calloc(NJOBS, sizeof *x.jobs);
    x.names = calloc(NTEN, sizeof *x.names);
    x.trun = calloc(NTEN, sizeof *x.trun);
    x.twait = calloc(NTEN, sizeof *x.twait);
    x.tnext = calloc(NTEN, sizeof *x.tnext);
    x.tadmit = calloc(NTEN, sizeof *x.tadmit);
    x.run = calloc(NJOBS, sizeof *x.run);
    int *perm = calloc(NJOBS, sizeof *perm);
    rng_state = 0x9e3779b97f4a7c15ull;

    bw_sched_t *s = make(x.c.slots, cap, own, x.c.tmax, 200000, 100);
    for (int t = 0; t < NTEN; t++) {
        snprintf(x.names[t], sizeof x.names[t], "tn%05d", t);
        if (t % 3 == 0)
            bw_sched_set_weight(s, x.names[t], strlen(x.names[t]), 1 + rndn(1000));
    }
    for (int i = 0; i < NJOBS; i++)
        perm[i] = i;
    for (int i = NJOBS - 1; i > 0; i--) {
        int k = rndn(i + 1), tmp = perm[i];
        perm[i] = perm[k];
        perm[k] = tmp;
    }
    double t0 = now_s();
    for (int i = 0; i < NJOBS; i++) {
        job_t *j = &x.jobs[perm[i]];
        j->tix = perm[i] / PERT;
        int type = (int)(rnd() % 100);
        type = type < 55 ? ECHO : type < 70 ? JS : type < 90 ? SLEEP : SQL;
        j->tseq = x.tadmit[j->tix][type]++;
        bw_sched_admit_t r = admit(s, j, x.names[j->tix], type);
        if (r == BW_SCHED_START) {
            scale_started(&x, j);
        } else {
            assert_int_equal(r, BW_SCHED_WAIT);
            x.twait[j->tix][type]++;
            x.waiting++;
        }
    }
    double t1 = now_s();
    check_stats(s, (size_t)x.waiting, (size_t)x.running, (size_t)x.shared, NTEN, NTEN);
    scale_check_stats(&x, s);
    assert_true(x.waiting >= NJOBS - 300);

    long nulls = 0, steps = 0, started = x.running;
    while (x.running > 0) {
        int k = rndn(x.running);
        job_t *j = x.run[k];
        x.run[k] = x.run[--x.running];
        end(s, j);
        x.trun[j->tix]--;
        x.run_type[j->type]--;
        x.shared -= takes_shared(&x.c, j->type);
        while ((j = next(s)) != NULL) {
            x.twait[j->tix][j->type]--;
            x.waiting--;
            scale_started(&x, j);
            started++;
        }
        if (++nulls % 997 == 0)
            scale_check_blocked(&x);
        if (++steps % 5000 == 0)
            scale_check_stats(&x, s);
    }
    double t2 = now_s();
    assert_int_equal(started, NJOBS);
    assert_int_equal(x.waiting, 0);
    for (int i = 0; i < NJOBS; i++)
        assert_int_equal(x.jobs[i].starts, 1);
    check_stats(s, 0, 0, 0, 0, 0);
    print_message("100,000 jobs of 10,000 tenants: admitted in %.3f s, drained in %.3f s\n", t1 - t0,
                  t2 - t1);
    bw_sched_destroy(s);
    free(perm);
    free(x.run);
    free(x.tadmit);
    free(x.tnext);
    free(x.twait);
    free(x.trun);
    free(x.names);
    free(x.jobs);
}

/* ---- random operations against a reference model ---- */

enum { MT = 6, MJ = 64 };

typedef struct model {
    caps_t c;
    size_t qmax, tqmax;
    job_t j[MJ];
    const char *names[MT];
    int run_type[NTYPES], shared, trun[MT], twait[MT];
    uint64_t seq;
    long starts, refusals[4];
} model_t;

static int m_waiting(const model_t *m)
{
    int n = 0;
    for (int i = 0; i < MJ; i++)
        n += m->j[i].it.state == BW_SCHED_WAITING;
    return n;
}

static void m_check_stats(const model_t *m, const bw_sched_t *s)
{
    size_t w = 0, r = 0, wt[NTYPES] = {0}, rt[NTYPES] = {0}, tw = 0, t = 0;
    for (int i = 0; i < MJ; i++) {
        const job_t *j = &m->j[i];
        if (j->it.state == BW_SCHED_WAITING) {
            w++;
            wt[j->type]++;
        } else if (j->it.state == BW_SCHED_RUNNING) {
            r++;
            rt[j->type]++;
        }
    }
    for (int k = 0; k < MT; k++) {
        tw += m->twait[k] > 0;
        t += m->twait[k] > 0 || m->trun[k] > 0;
    }
    check_stats(s, w, r, (size_t)m->shared, tw, t);
    for (int ty = 0; ty < NTYPES; ty++) {
        check_type(s, ty, wt[ty], rt[ty]);
        assert_int_equal(rt[ty], m->run_type[ty]);
        if (m->c.cap[ty] > 0)
            assert_true(rt[ty] <= (size_t)m->c.cap[ty]);
    }
    assert_true(m->shared <= m->c.slots);
    for (int k = 0; k < MT; k++)
        assert_true(m->c.tmax == 0 || m->trun[k] <= m->c.tmax);
}

static void m_foreach(void *ud, const char *tenant, size_t len, size_t waiting, size_t running)
{
    model_t *m = ud;
    int k = 0;
    while (k < MT && !(strlen(m->names[k]) == len && memcmp(m->names[k], tenant, len) == 0))
        k++;
    assert_true(k < MT);
    assert_int_equal(waiting, m->twait[k]);
    assert_int_equal(running, m->trun[k]);
    assert_true(waiting + running > 0);
    m->twait[k] = -m->twait[k] - 1; /* seen: restored by the caller */
}

static void m_check_foreach(model_t *m, const bw_sched_t *s)
{
    bw_sched_foreach_tenant(s, m_foreach, m);
    for (int k = 0; k < MT; k++) {
        bool live = m->twait[k] < 0 || m->trun[k] > 0;
        if (m->twait[k] < 0)
            m->twait[k] = -m->twait[k] - 1;
        else
            assert_false(live); /* live but not listed */
    }
}

static void m_run(model_t *m, job_t *j)
{
    m->trun[j->tix]++;
    m->run_type[j->type]++;
    m->shared += takes_shared(&m->c, j->type);
    m->starts++;
}

/* next() until NULL: each one may start, is the oldest of its tenant's waiting jobs in its pool (the
   shared slots, or its type's own pool) whose type may start; at NULL nothing waiting may start. */
static void m_pump(model_t *m, bw_sched_t *s)
{
    job_t *j;
    while ((j = next(s)) != NULL) {
        assert_true(j >= m->j && j < m->j + MJ);
        assert_true(may_start(&m->c, m->trun[j->tix], j->type, m->run_type, m->shared));
        for (int i = 0; i < MJ; i++) {
            job_t *o = &m->j[i];
            bool same_pool =
                o->type == j->type || (takes_shared(&m->c, o->type) && takes_shared(&m->c, j->type));
            if (o->it.state == BW_SCHED_WAITING && o->tix == j->tix && o->seq < j->seq && same_pool &&
                may_start(&m->c, m->trun[o->tix], o->type, m->run_type, m->shared))
                fail_msg(
                    "tenant %d: job %llu (type %d) started before older job %llu (type %d) that may start",
                    j->tix, (unsigned long long)j->seq, j->type, (unsigned long long)o->seq, o->type);
        }
        m->twait[j->tix]--;
        m_run(m, j);
    }
    for (int i = 0; i < MJ; i++) {
        job_t *o = &m->j[i];
        if (o->it.state == BW_SCHED_WAITING &&
            may_start(&m->c, m->trun[o->tix], o->type, m->run_type, m->shared))
            fail_msg("next() gave NULL but job %llu (tenant %d, type %d) may start",
                     (unsigned long long)o->seq, o->tix, o->type);
    }
}

static job_t *m_pick(model_t *m, int st)
{
    int n = 0;
    job_t *pick = NULL;
    for (int i = 0; i < MJ; i++)
        if (m->j[i].it.state == st && rndn(++n) == 0) /* reservoir sampling */
            pick = &m->j[i];
    return pick;
}

static void model_run(uint64_t seed, int ops, int slots, int tmax, size_t qmax, size_t tqmax, const int *cap,
                      const bool *own)
{
    static const char *const names[MT] = {"acme", "beta", "gamma", "d", "t=1", "acme2"};
    model_t *m = calloc(1, sizeof *m);
    m->c = (caps_t){.slots = slots, .tmax = tmax, .cap = cap, .own = own};
    m->qmax = qmax;
    m->tqmax = tqmax;
    memcpy(m->names, names, sizeof names);
    rng_state = seed;
    bw_sched_t *s = make(slots, cap, own, tmax, qmax, tqmax);
    for (int k = 0; k < MT; k++)
        if (rndn(2))
            bw_sched_set_weight(s, names[k], strlen(names[k]), 1 + rndn(5));
    for (int op = 0; op < ops; op++) {
        int what = rndn(100);
        job_t *j;
        if (what < 45 && (j = m_pick(m, BW_SCHED_NONE)) != NULL) {
            int tix = rndn(MT), type = rndn(NTYPES);
            bool can = may_start(&m->c, m->trun[tix], type, m->run_type, m->shared);
            bw_sched_admit_t want = can                                 ? BW_SCHED_START
                                    : (size_t)m->twait[tix] >= m->tqmax ? BW_SCHED_FULL_TENANT
                                    : (size_t)m_waiting(m) >= m->qmax   ? BW_SCHED_FULL_GLOBAL
                                                                        : BW_SCHED_WAIT;
            j->tix = tix;
            j->seq = ++m->seq;
            j->starts = 0;
            bw_sched_admit_t r = admit(s, j, names[tix], type);
            if (r != want)
                fail_msg("op %d: admit tenant %d type %d gave %d, model says %d", op, tix, type, r, want);
            m->refusals[r]++;
            if (r == BW_SCHED_START)
                m_run(m, j);
            else if (r == BW_SCHED_WAIT)
                m->twait[tix]++;
        } else if (what < 75 && (j = m_pick(m, BW_SCHED_RUNNING)) != NULL) {
            end(s, j);
            m->trun[j->tix]--;
            m->run_type[j->type]--;
            m->shared -= takes_shared(&m->c, j->type);
            m_pump(m, s);
        } else if (what < 90 && (j = m_pick(m, BW_SCHED_WAITING)) != NULL) {
            unwait(s, j);
            m->twait[j->tix]--;
            m_pump(m, s);
        } else {
            assert_null(next(s));
        }
        m_check_stats(m, s);
        if (op % 64 == 0)
            m_check_foreach(m, s);
    }
    print_message("seed %llx: %d ops, %ld starts, admitted %ld started / %ld waited / %ld refused (tenant) / "
                  "%ld refused (global)\n",
                  (unsigned long long)seed, ops, m->starts, m->refusals[0], m->refusals[1], m->refusals[2],
                  m->refusals[3]);
    drain(s, m->j, MJ);
    bw_sched_destroy(s);
    free(m);
}

static void test_model(void **state)
{
    static const int cap[NTYPES] = {0, 2, 3, 0};
    static const bool own[NTYPES] = {false, false, true, true};
    static const int cap2[NTYPES] = {1, 0, 1, 2};
    static const bool own2[NTYPES] = {false, true, false, true};
    model_run(0x1234567887654321ull, 20000, 3, 2, 12, 5, cap, own);
    model_run(0x0badc0ffee0ddf00ull, 15000, 2, 0, 20, 20, cap2, own2);
    model_run(0x5eed5eed5eed5eedull, 15000, 1, 1, 6, 3, cap, own);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_single_tenant_fifo),
        cmocka_unit_test(test_two_tenants_alternate),
        cmocka_unit_test(test_weights),
        cmocka_unit_test(test_weights_beside_other_types),
        cmocka_unit_test(test_newcomer_beside_other_types),
        cmocka_unit_test(test_tenant_cap),
        cmocka_unit_test(test_type_caps),
        cmocka_unit_test(test_queue_limits),
        cmocka_unit_test(test_remove),
        cmocka_unit_test(test_tenant_records),
        cmocka_unit_test(test_scale),
        cmocka_unit_test(test_model),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
