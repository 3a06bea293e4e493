/*
 * The scheduler (core/sched.h). One binary heap per job type holds the queues of that type's waiting
 * jobs, one queue per tenant, ordered by (tenant's virtual time, age of the queue's oldest job). The next
 * job is the best of the heap tops of the types that may start one: O(T) to find, O(T log n) to update,
 * since a start moves its tenant's clock and with it the tenant's place in every heap it is in.
 *
 * Invariants:
 *  - a tenant queue is in its type's heap iff it holds a job and its tenant is below the tenant cap
 *    (tenant->eligible);
 *  - after bw_sched_next returned NULL, no waiting job may start: each is held by its type's cap, the
 *    shared slots (types without a pool of their own) or its tenant's cap;
 *  - virtual times only grow, so every update of a key is a sift down.
 */
#include "core/sched.h"

#include <stdlib.h>
#include <string.h>

#include "util/hmap.h"
#include "util/xalloc.h"

#define VSCALE (1ull << 24) /* virtual time of one start at weight 1 */
#define WEIGHT_MAX 1000

typedef struct tqueue {
    bw_list_t items;
    size_t n;
    long hidx; /* place in the type's heap, -1 when not in it */
    struct bw_sched_tenant *tenant;
    uint64_t vtime;  /* the tenant's clock in this type's own pool */
    uint64_t *clock; /* &vtime for a type with a pool of its own, else &tenant->vshared */
} tqueue_t;

typedef struct bw_sched_tenant {
    uint64_t vshared; /* the tenant's clock in the shared slots */
    uint64_t step;
    size_t waiting, running;
    size_t waiting_shared; /* of waiting, those of types that take a shared slot */
    bool eligible;         /* below the tenant cap: its queues are in the heaps */
    size_t klen;
    char *key;
    tqueue_t q[]; /* one per type */
} tenant_t;

/* A heap entry holds its queue's key, so that comparisons read the heap's own array only. */
typedef struct hent {
    uint64_t clock, seq; /* *q->clock and the seq of q's oldest job when last set */
    tqueue_t *q;
} hent_t;

typedef struct heap {
    hent_t *a;
    size_t n, cap;
} heap_t;

struct bw_sched {
    int shared_slots, ntypes, tenant_max;
    size_t queue_max, tenant_queue_max;
    int cap[BW_SCHED_MAX_TYPES];
    bool own[BW_SCHED_MAX_TYPES];
    heap_t heap[BW_SCHED_MAX_TYPES];
    bw_hmap_t *tenants; /* key -> tenant_t */
    bw_hmap_t *weights; /* key -> weight, as a pointer-sized integer */
    /* the clock of the last start, per own-pool type and for the shared slots */
    uint64_t vlast[BW_SCHED_MAX_TYPES], vlast_shared;
    uint64_t seq;
    size_t waiting, running, shared_running, tenants_waiting;
    size_t wait_by_type[BW_SCHED_MAX_TYPES], run_by_type[BW_SCHED_MAX_TYPES];
};

/* ---- the heaps ---- */

static uint64_t head_seq(const tqueue_t *q)
{
    return bw_list_entry(q->items.next, bw_sched_item_t, link)->seq;
}

/* a goes before b: less service for its weight in their pool, then the older job */
static bool before(const hent_t *a, const hent_t *b)
{
    return a->clock != b->clock ? a->clock < b->clock : a->seq < b->seq;
}

static void heap_set(heap_t *h, size_t i, hent_t e)
{
    h->a[i] = e;
    e.q->hidx = (long)i;
}

static void sift_up(heap_t *h, size_t i)
{
    hent_t e = h->a[i];
    while (i > 0 && before(&e, &h->a[(i - 1) / 2])) {
        heap_set(h, i, h->a[(i - 1) / 2]);
        i = (i - 1) / 2;
    }
    heap_set(h, i, e);
}

static void sift_down(heap_t *h, size_t i)
{
    hent_t e = h->a[i];
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= h->n)
            break;
        if (c + 1 < h->n && before(&h->a[c + 1], &h->a[c]))
            c++;
        if (!before(&h->a[c], &e))
            break;
        heap_set(h, i, h->a[c]);
        i = c;
    }
    heap_set(h, i, e);
}

static void heap_push(heap_t *h, tqueue_t *q)
{
    if (h->n == h->cap) {
        h->cap = h->cap ? 2 * h->cap : 16;
        h->a = bw_realloc(h->a, h->cap * sizeof *h->a);
    }
    heap_set(h, h->n++, (hent_t){*q->clock, head_seq(q), q});
    sift_up(h, h->n - 1);
}

/* The queue's key grew (its tenant's clock moved on, or its oldest job left): its place follows. */
static void heap_rekey(heap_t *h, tqueue_t *q)
{
    hent_t *e = &h->a[q->hidx];
    e->clock = *q->clock;
    e->seq = head_seq(q);
    sift_down(h, (size_t)q->hidx);
}

static void heap_remove(heap_t *h, tqueue_t *q)
{
    size_t i = (size_t)q->hidx;
    q->hidx = -1;
    hent_t last = h->a[--h->n];
    if (last.q == q)
        return;
    heap_set(h, i, last);
    if (i > 0 && before(&last, &h->a[(i - 1) / 2]))
        sift_up(h, i);
    else
        sift_down(h, i);
}

/* ---- tenants ---- */

static tenant_t *tenant_get(bw_sched_t *s, const char *key, size_t klen)
{
    tenant_t *t = bw_hmap_get(s->tenants, key, klen);
    if (t != NULL)
        return t;
    t = bw_calloc(1, sizeof *t + (size_t)s->ntypes * sizeof t->q[0]);
    intptr_t w = (intptr_t)bw_hmap_get(s->weights, key, klen);
    t->step = VSCALE / (uint64_t)(w > 0 ? w : 1);
    t->eligible = true;
    t->klen = klen;
    t->key = bw_strndup(key, klen);
    for (int k = 0; k < s->ntypes; k++) {
        bw_list_init(&t->q[k].items);
        t->q[k].hidx = -1;
        t->q[k].tenant = t;
        t->q[k].clock = s->own[k] ? &t->q[k].vtime : &t->vshared;
    }
    bw_hmap_put(s->tenants, t->key, klen, t);
    return t;
}

static void tenant_release_if_idle(bw_sched_t *s, tenant_t *t)
{
    if (t->waiting > 0 || t->running > 0)
        return;
    bw_hmap_del(s->tenants, t->key, t->klen);
    free(t->key);
    free(t);
}

/* The pool's current virtual time, for a tenant that starts competing in it (its first job waiting
   there, or back below its cap): the least of the clocks of the tenants waiting in the pool and of the
   last start's. It then goes ahead of the others' backlogs, gets no credit for the time it had nothing
   waiting, and a tenant that ran alone in the pool (its clock far ahead) takes nothing from the others. */
static uint64_t pool_now(const bw_sched_t *s, int k)
{
    if (s->own[k])
        return s->heap[k].n > 0 && s->heap[k].a[0].clock < s->vlast[k] ? s->heap[k].a[0].clock : s->vlast[k];
    uint64_t v = s->vlast_shared;
    for (int j = 0; j < s->ntypes; j++)
        if (!s->own[j] && s->heap[j].n > 0 && s->heap[j].a[0].clock < v)
            v = s->heap[j].a[0].clock;
    return v;
}

static void catch_up(uint64_t *clock, uint64_t now)
{
    if (*clock < now)
        *clock = now;
}

/* The tenant's clock in type k's pool moved on: the places of its queues in that pool follow. */
static void tenant_resift(bw_sched_t *s, tenant_t *t, int k)
{
    if (s->own[k]) {
        if (t->q[k].hidx >= 0)
            heap_rekey(&s->heap[k], &t->q[k]);
        return;
    }
    for (int j = 0; j < s->ntypes; j++)
        if (!s->own[j] && t->q[j].hidx >= 0)
            heap_rekey(&s->heap[j], &t->q[j]);
}

static void tenant_set_eligible(bw_sched_t *s, tenant_t *t, bool on)
{
    if (t->eligible == on)
        return;
    t->eligible = on;
    if (on) { /* held by its own cap, not waiting for its turn: no credit either */
        if (t->waiting_shared > 0) {
            int k = 0;
            while (s->own[k] || t->q[k].n == 0)
                k++;
            catch_up(&t->vshared, pool_now(s, k));
        }
        for (int k = 0; k < s->ntypes; k++)
            if (s->own[k] && t->q[k].n > 0)
                catch_up(&t->q[k].vtime, pool_now(s, k));
    }
    for (int k = 0; k < s->ntypes; k++) {
        tqueue_t *q = &t->q[k];
        if (on && q->n > 0)
            heap_push(&s->heap[k], q);
        else if (!on && q->hidx >= 0)
            heap_remove(&s->heap[k], q);
    }
}

static bool tenant_may_start(const bw_sched_t *s, const tenant_t *t)
{
    return s->tenant_max == 0 || t->running < (size_t)s->tenant_max;
}

/* ---- starting ---- */

static bool type_may_start(const bw_sched_t *s, int k)
{
    if (s->cap[k] > 0 && s->run_by_type[k] >= (size_t)s->cap[k])
        return false;
    return s->own[k] || s->shared_running < (size_t)s->shared_slots;
}

/* The queue whose oldest job goes next, or NULL: in each pool (the shared slots; each type with a pool of
   its own) the fairest queue of the types that may start, then the oldest job of those. The pools do not
   compete for slots, so their order matters only for a tenant near its cap: its oldest job goes first. */
static tqueue_t *best_queue(const bw_sched_t *s)
{
    const hent_t *best = NULL, *shared = NULL;
    for (int k = 0; k < s->ntypes; k++) {
        if (s->heap[k].n == 0 || !type_may_start(s, k))
            continue;
        const hent_t *top = &s->heap[k].a[0];
        if (!s->own[k]) {
            if (shared == NULL || before(top, shared))
                shared = top;
        } else if (best == NULL || top->seq < best->seq)
            best = top;
    }
    if (shared != NULL && (best == NULL || shared->seq < best->seq))
        best = shared;
    return best != NULL ? best->q : NULL;
}

/* Counts it running and charges its tenant one start in the job type's pool. */
static void start(bw_sched_t *s, tenant_t *t, bw_sched_item_t *it)
{
    int k = it->type;
    uint64_t *clock = t->q[k].clock;
    *(s->own[k] ? &s->vlast[k] : &s->vlast_shared) = *clock;
    *clock += t->step;
    it->state = BW_SCHED_RUNNING;
    it->tenant = t;
    t->running++;
    s->running++;
    s->run_by_type[it->type]++;
    if (!s->own[it->type])
        s->shared_running++;
    if (!tenant_may_start(s, t))
        tenant_set_eligible(s, t, false);
    else
        tenant_resift(s, t, k);
}

/* Whether the tenant has jobs waiting in type k's pool. */
static bool waits_in_pool(const bw_sched_t *s, const tenant_t *t, int k)
{
    return s->own[k] ? t->q[k].n > 0 : t->waiting_shared > 0;
}

bw_sched_admit_t bw_sched_admit(bw_sched_t *s, bw_sched_item_t *it, const char *tenant, size_t len, int type)
{
    if (type < 0 || type >= s->ntypes)
        type = s->ntypes - 1;
    tenant_t *t = tenant_get(s, tenant, len);
    it->type = type;
    it->seq = ++s->seq;
    bool arrives = !waits_in_pool(s, t, type); /* starts competing in the pool */
    if (type_may_start(s, type) && tenant_may_start(s, t) && best_queue(s) == NULL) {
        if (arrives)
            catch_up(t->q[type].clock, pool_now(s, type));
        start(s, t, it);
        return BW_SCHED_START;
    }
    bw_sched_admit_t refused = t->waiting >= s->tenant_queue_max ? BW_SCHED_FULL_TENANT
                               : s->waiting >= s->queue_max      ? BW_SCHED_FULL_GLOBAL
                                                                 : BW_SCHED_WAIT;
    if (refused != BW_SCHED_WAIT) {
        tenant_release_if_idle(s, t);
        return refused;
    }
    if (t->waiting++ == 0)
        s->tenants_waiting++;
    if (arrives && t->eligible)
        catch_up(t->q[type].clock, pool_now(s, type));
    if (!s->own[type])
        t->waiting_shared++;
    tqueue_t *q = &t->q[type];
    bw_list_push(&q->items, &it->link);
    if (q->n++ == 0 && t->eligible)
        heap_push(&s->heap[type], q);
    it->state = BW_SCHED_WAITING;
    it->tenant = t;
    s->waiting++;
    s->wait_by_type[type]++;
    return BW_SCHED_WAIT;
}

/* Takes a waiting item out of its queue and the counts; the queue's heap place is the caller's. */
static void unqueue(bw_sched_t *s, bw_sched_item_t *it)
{
    tenant_t *t = it->tenant;
    bw_list_remove(&it->link);
    t->q[it->type].n--;
    if (!s->own[it->type])
        t->waiting_shared--;
    s->waiting--;
    s->wait_by_type[it->type]--;
    if (--t->waiting == 0)
        s->tenants_waiting--;
}

bw_sched_item_t *bw_sched_next(bw_sched_t *s)
{
    tqueue_t *q = best_queue(s);
    if (q == NULL)
        return NULL;
    bw_sched_item_t *it = bw_list_entry(q->items.next, bw_sched_item_t, link);
    tenant_t *t = q->tenant;
    unqueue(s, it);
    if (q->n == 0)
        heap_remove(&s->heap[it->type], q);
    start(s, t, it); /* re-sifts q if it still waits */
    return it;
}

void bw_sched_remove(bw_sched_t *s, bw_sched_item_t *it)
{
    if (it->state != BW_SCHED_WAITING)
        return;
    tenant_t *t = it->tenant;
    tqueue_t *q = &t->q[it->type];
    bool was_head = q->items.next == &it->link;
    unqueue(s, it);
    if (q->hidx >= 0) {
        if (q->n == 0)
            heap_remove(&s->heap[it->type], q);
        else if (was_head) /* its key is the next job's, which is younger */
            heap_rekey(&s->heap[it->type], q);
    }
    it->state = BW_SCHED_NONE;
    it->tenant = NULL;
    tenant_release_if_idle(s, t);
}

void bw_sched_end(bw_sched_t *s, bw_sched_item_t *it)
{
    if (it->state != BW_SCHED_RUNNING)
        return;
    tenant_t *t = it->tenant;
    t->running--;
    s->running--;
    s->run_by_type[it->type]--;
    if (!s->own[it->type])
        s->shared_running--;
    if (!t->eligible && tenant_may_start(s, t))
        tenant_set_eligible(s, t, true);
    it->state = BW_SCHED_NONE;
    it->tenant = NULL;
    tenant_release_if_idle(s, t);
}

/* ---- life and figures ---- */

bw_sched_t *bw_sched_create(const bw_sched_opts_t *o)
{
    bw_sched_t *s = bw_calloc(1, sizeof *s);
    s->shared_slots = o->shared_slots > 0 ? o->shared_slots : 1;
    s->ntypes = o->ntypes < 1 ? 1 : o->ntypes > BW_SCHED_MAX_TYPES ? BW_SCHED_MAX_TYPES : o->ntypes;
    s->tenant_max = o->tenant_max_running > 0 ? o->tenant_max_running : 0;
    s->queue_max = o->queue_max;
    s->tenant_queue_max = o->tenant_queue_max;
    for (int k = 0; k < s->ntypes; k++) {
        s->cap[k] = o->type_cap != NULL && o->type_cap[k] > 0 ? o->type_cap[k] : 0;
        s->own[k] = o->own_pool != NULL && o->own_pool[k] && s->cap[k] > 0;
    }
    s->tenants = bw_hmap_create();
    s->weights = bw_hmap_create();
    return s;
}

static void free_tenant(void *ud, const char *key, void *value)
{
    (void)ud;
    (void)key;
    tenant_t *t = value;
    free(t->key);
    free(t);
}

void bw_sched_destroy(bw_sched_t *s)
{
    if (s == NULL)
        return;
    bw_hmap_foreach(s->tenants, free_tenant, NULL);
    bw_hmap_destroy(s->tenants);
    bw_hmap_destroy(s->weights);
    for (int k = 0; k < s->ntypes; k++)
        free(s->heap[k].a);
    free(s);
}

void bw_sched_set_weight(bw_sched_t *s, const char *tenant, size_t len, int weight)
{
    weight = weight < 1 ? 1 : weight > WEIGHT_MAX ? WEIGHT_MAX : weight;
    bw_hmap_put(s->weights, tenant, len, (void *)(intptr_t)weight); /* the map keeps a copy of the key */
    tenant_t *t = bw_hmap_get(s->tenants, tenant, len);
    if (t != NULL)
        t->step = VSCALE / (uint64_t)weight;
}

void bw_sched_stats(const bw_sched_t *s, bw_sched_stats_t *out)
{
    memset(out, 0, sizeof *out);
    out->waiting = s->waiting;
    out->running = s->running;
    out->shared_running = s->shared_running;
    out->tenants_waiting = s->tenants_waiting;
    out->tenants = bw_hmap_size(s->tenants);
    for (int k = 0; k < s->ntypes; k++) {
        out->waiting_by_type[k] = s->wait_by_type[k];
        out->running_by_type[k] = s->run_by_type[k];
    }
}

size_t bw_sched_waiting(const bw_sched_t *s)
{
    return s->waiting;
}

size_t bw_sched_shared_running(const bw_sched_t *s)
{
    return s->shared_running;
}

typedef struct each {
    void (*fn)(void *ud, const char *tenant, size_t len, size_t waiting, size_t running);
    void *ud;
} each_t;

static void each_tenant(void *ud, const char *key, void *value)
{
    (void)key;
    each_t *e = ud;
    const tenant_t *t = value;
    e->fn(e->ud, t->key, t->klen, t->waiting, t->running);
}

void bw_sched_foreach_tenant(const bw_sched_t *s,
                             void (*fn)(void *ud, const char *tenant, size_t len, size_t waiting,
                                        size_t running),
                             void *ud)
{
    each_t e = {fn, ud};
    bw_hmap_foreach(s->tenants, each_tenant, &e);
}
