/*
 * The scheduler: which waiting job starts next. Pure bookkeeping (no I/O, no clock, one thread), so the
 * unit tests and bench/sched_bench.c drive it directly.
 *
 * - Slots come in pools: the shared slots (`shared_slots`), and one pool per type with a pool of its own.
 * - Tenants share each pool fairly: every tenant has its own wait queue, and a free slot goes to the
 *   waiting tenant that has had the least service in that pool for its weight (virtual time: each start
 *   advances the tenant's clock in the pool by 1/weight). Over any stretch in which tenants stay
 *   backlogged their starts are in the ratio of their weights, as with deficit round robin and a quantum
 *   of `weight` jobs, but interleaved smoothly. A tenant that starts competing (its first job waiting in
 *   the pool, or back below its cap) is placed at the pool's current virtual time: it gets the next free
 *   slot, not a place behind another tenant's backlog, and no credit for the time it had nothing waiting.
 * - Within a tenant jobs start oldest first, per job type: a job whose type is at its cap does not hold
 *   up the tenant's jobs of other types. Between pools (which do not compete for slots) the oldest job
 *   goes first.
 * - A job starts when its type is below its cap (0: no cap), its tenant is below the tenant cap (0: no
 *   cap) and, for a type that takes a shared slot, fewer than `shared_slots` shared-slot jobs run. A type
 *   with its own pool (`own_pool`, for types that wait on the outside world) does not take a shared slot.
 * - Cost: O(T log n) per admission, start and end, where T is the number of job types (a constant, 13)
 *   and n the number of tenants with work waiting; memory is one record per tenant with work waiting or
 *   running (freed when it has neither), plus the weights.
 */
#ifndef BW_CORE_SCHED_H
#define BW_CORE_SCHED_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util/list.h"

#define BW_SCHED_MAX_TYPES 32

typedef struct bw_sched bw_sched_t;
struct bw_sched_tenant;

/* Embedded in what is scheduled (a job). Zero it before the first admission. */
typedef struct bw_sched_item {
    bw_list_t link;                 /* in its tenant's queue for its type, while waiting */
    struct bw_sched_tenant *tenant; /* set while waiting or running */
    uint64_t seq;                   /* admission order */
    int type;
    int state; /* BW_SCHED_NONE, _WAITING, _RUNNING */
} bw_sched_item_t;

enum { BW_SCHED_NONE = 0, BW_SCHED_WAITING, BW_SCHED_RUNNING };

typedef struct bw_sched_opts {
    int shared_slots;        /* WORKER_MAX_CONCURRENCY, >= 1 */
    int ntypes;              /* job types 0..ntypes-1, at most BW_SCHED_MAX_TYPES */
    const int *type_cap;     /* [ntypes], running jobs of the type at most (0: no cap); NULL: none */
    const bool *own_pool;    /* [ntypes], runs beside the shared slots (only with a cap); NULL: none */
    int tenant_max_running;  /* TENANT_MAX_CONCURRENCY (0: no cap) */
    size_t queue_max;        /* WORKER_QUEUE_MAX: waiting jobs at most, all tenants */
    size_t tenant_queue_max; /* TENANT_QUEUE_MAX: waiting jobs of one tenant at most */
} bw_sched_opts_t;

typedef enum {
    BW_SCHED_START = 0,   /* it may run now: counted running */
    BW_SCHED_WAIT,        /* it waits (bw_sched_next gives it when it may run) */
    BW_SCHED_FULL_TENANT, /* refused: its tenant has tenant_queue_max waiting */
    BW_SCHED_FULL_GLOBAL, /* refused: queue_max are waiting */
} bw_sched_admit_t;

bw_sched_t *bw_sched_create(const bw_sched_opts_t *o);
void bw_sched_destroy(bw_sched_t *s); /* items still in it are left alone */
/* A tenant's weight (1..1000; tenants not named have 1). Before the first admission. */
void bw_sched_set_weight(bw_sched_t *s, const char *tenant, size_t len, int weight);

/* A new item of tenant (len bytes) and type (0..ntypes-1; out of range counts as ntypes-1): starts now
   when it may and nothing it would overtake could, else waits unless a queue is full. */
bw_sched_admit_t bw_sched_admit(bw_sched_t *s, bw_sched_item_t *it, const char *tenant, size_t len, int type);
/* The next waiting item that may run now, counted running; NULL when none may. Call until NULL after
   anything that frees room (bw_sched_end, bw_sched_remove). */
bw_sched_item_t *bw_sched_next(bw_sched_t *s);
/* A running item ended or gave its slot back (a parked approval); the item's state becomes NONE. */
void bw_sched_end(bw_sched_t *s, bw_sched_item_t *it);
/* A waiting item leaves without running (its deadline, a cancel, a drain); state NONE. */
void bw_sched_remove(bw_sched_t *s, bw_sched_item_t *it);

typedef struct bw_sched_stats {
    size_t waiting, running; /* all items */
    size_t shared_running;   /* running items that hold a shared slot */
    size_t tenants_waiting;  /* tenants with at least one waiting item */
    size_t tenants;          /* tenants with items waiting or running */
    size_t waiting_by_type[BW_SCHED_MAX_TYPES], running_by_type[BW_SCHED_MAX_TYPES];
} bw_sched_stats_t;

void bw_sched_stats(const bw_sched_t *s, bw_sched_stats_t *out);
size_t bw_sched_waiting(const bw_sched_t *s);
size_t bw_sched_shared_running(const bw_sched_t *s);
/* Calls fn for every tenant with items waiting or running (any order). */
void bw_sched_foreach_tenant(const bw_sched_t *s,
                             void (*fn)(void *ud, const char *tenant, size_t len, size_t waiting,
                                        size_t running),
                             void *ud);

#endif
