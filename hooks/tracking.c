/* Tracking: what the hooks hand over. A block is counted to the owner and cause on top of the
 * thread's scope stack (tracking.h), in the live-block table, the owner's cause counters and its
 * site's striped counters; forgetting it subtracts exactly what was added. The hooks stay thin:
 * they only decide when to call in here (as memray's hooks.cpp calls its tracking_api). */
#define _GNU_SOURCE
#include <malloc.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "shim.h"

volatile int tlsprof_active;
/* Bumped at every (re)start: a block still waiting in a nursery from an earlier attach may have
 * been freed unseen since, like the table's entries that the start resets. */
uint32_t tracking_epoch;
int64_t untracked_bytes, untracked_blocks;

__thread struct tstate tls;

/* ---- accounting ---- */
/* Site counters: the first SITE_STRIPES - 1 threads (at a time) each own a stripe and add to it
 * with plain loads and stores, no locked instructions (most of a single-threaded server's counting
 * cost); every other thread shares the last stripe with atomic adds. A thread gives its stripe back
 * when it exits (a key destructor), and counts on the shared stripe from then on (OpenSSL frees
 * its per-thread state in destructors that may run after ours). */
#define SHARED_STRIPE (SITE_STRIPES - 1)
static uint32_t stripes_owned;                  /* atomic bitmask */
static struct nursery nurseries[SHARED_STRIPE]; /* one per owned stripe */
/* Set at start, before any thread claims a stripe: with it off no thread gets a nursery, and a free
 * the table does not know has nowhere else to look. */
static int nursery_on;

void tracking_use_nursery(int on) { __atomic_store_n(&nursery_on, on, __ATOMIC_RELAXED); }
static pthread_key_t stripe_key;
static pthread_once_t stripe_key_once = PTHREAD_ONCE_INIT;
static int stripe_key_ok;

static void stripe_release(void *unused)
{
    struct tstate *t = &tls;
    if (t->nursery) {
        nursery_flush(t->nursery);
        t->nursery = t->young = NULL;
    }
    if (t->stripe_own) __atomic_and_fetch(&stripes_owned, ~(1u << (t->stripe - 1)), __ATOMIC_RELEASE);
    t->stripe_own = 0;
    t->stripe = 1 + SHARED_STRIPE;
}

static void stripe_key_create(void) { stripe_key_ok = pthread_key_create(&stripe_key, stripe_release) == 0; }

static void stripe_claim(struct tstate *t)
{
    t->stripe = 1 + SHARED_STRIPE;
    pthread_once(&stripe_key_once, stripe_key_create);
    if (!stripe_key_ok) return;
    uint32_t seen = __atomic_load_n(&stripes_owned, __ATOMIC_RELAXED);
    for (int k = 0; k < SHARED_STRIPE; k++) {
        if (seen & (1u << k)) continue;
        if (!(__atomic_fetch_or(&stripes_owned, 1u << k, __ATOMIC_ACQUIRE) & (1u << k))) {
            if (pthread_setspecific(stripe_key, (void *)1) != 0) { /* no release at exit: do not own */
                __atomic_and_fetch(&stripes_owned, ~(1u << k), __ATOMIC_RELEASE);
                return;
            }
            t->stripe = 1 + k;
            t->stripe_own = 1;
            t->nursery = __atomic_load_n(&nursery_on, __ATOMIC_RELAXED) ? &nurseries[k] : NULL;
            if (t->depth > 0 && !t->stack[0].waits) t->young = t->nursery; /* claimed inside a call */
            return;
        }
    }
}

/* other threads read head and tail (take_slow) */
static inline void ring_empty(struct nursery *ns)
{
    __atomic_store_n(&ns->tail, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&ns->head, 0, __ATOMIC_RELAXED);
}

/* fork: only the calling thread lives on in the child; the other threads' stripes are free again */
void stripes_after_fork_child(void)
{
    struct tstate *t = &tls;
    __atomic_store_n(&stripes_owned, t->stripe_own ? 1u << (t->stripe - 1) : 0, __ATOMIC_RELAXED);
    /* the other threads' nurseries: their blocks stay untracked in the child (a lock may have
     * been mid-change at the fork) */
    for (int k = 0; k < SHARED_STRIPE; k++) {
        if (&nurseries[k] == t->nursery) continue;
        memset(nurseries[k].index, 0, sizeof nurseries[k].index);
        memset(nurseries[k].claims, 0, sizeof nurseries[k].claims);
        ring_empty(&nurseries[k]);
    }
}

#define ADD_OWNED(field, v) \
    __atomic_store_n(&(field), __atomic_load_n(&(field), __ATOMIC_RELAXED) + (v), __ATOMIC_RELAXED)

static inline void count(uint32_t owner, uint16_t site, int64_t bytes, int64_t req, int64_t blocks)
{
    site &= BLOCK_SITE_MASK; /* a block's site id carries its measure in the top bits */
    struct owner *o = owner_at(owner);
    struct site *s = site_at(site);
    owner_add(o, s->cause, bytes, req, blocks);
    struct tstate *t = &tls;
    if (UNLIKELY(!t->stripe)) stripe_claim(t);
    struct site_counts *sc = &site_counts[site][t->stripe - 1];
    if (t->stripe_own) {
        ADD_OWNED(sc->bytes, bytes);
        ADD_OWNED(sc->requested, req);
        ADD_OWNED(sc->blocks, blocks);
    } else {
        __atomic_add_fetch(&sc->bytes, bytes, __ATOMIC_RELAXED);
        __atomic_add_fetch(&sc->requested, req, __ATOMIC_RELAXED);
        __atomic_add_fetch(&sc->blocks, blocks, __ATOMIC_RELAXED);
    }
}

/* ---- blocks in, blocks out ---- */
/* What the block costs (bytes) and what was asked for (req), by the measure it was counted with.
 * `usable` is the allocator's answer for p when the caller already has it, else 0. */
static inline void block_sizes(const struct block *b, void *p, size_t usable, int64_t *bytes, int64_t *req)
{
    int measure = b->site >> BLOCK_MEASURE_SHIFT;
    if (measure == MEASURE_REQUESTED) {
        *bytes = *req = (int64_t)size_decode(b->slack);
        return;
    }
    if (!usable) usable = usable_size(p, measure);
    *bytes = (int64_t)(usable + (measure == MEASURE_GLIBC ? GLIBC_HEADER : 0));
    *req = (int64_t)(usable - b->slack);
}

void untrack(const struct block *b, void *p, size_t usable)
{
    int64_t bytes, req;
    block_sizes(b, p, usable, &bytes, &req);
    count(b->owner, b->site, -bytes, -req, -1);
}

/* usable: the allocator's answer for p if known, else 0 (then p must be alive: it is asked now) */
static void track_now(void *p, size_t n, uint32_t owner, uint16_t site, int measure, size_t usable)
{
    if (cause_is_process_wide(site_at(site & BLOCK_SITE_MASK)->cause)) owner = 0;
    uint16_t slack;
    if (measure == MEASURE_REQUESTED) {
        slack = size_encode(n);
    } else {
        if (!usable) usable = usable_size(p, measure);
        size_t over = usable >= n ? usable - n : 0;
        slack = (uint16_t)(over > 0xffff ? 0xffff : over);
    }
    uint16_t site_and_measure = (uint16_t)((site & BLOCK_SITE_MASK) | (measure << BLOCK_MEASURE_SHIFT));
    struct block stale, mine = {(uintptr_t)p, owner, site_and_measure, slack};
    int64_t bytes, req;
    block_sizes(&mine, p, usable, &bytes, &req);
    int r = blocks_insert((uintptr_t)p, owner, mine.site, slack, &stale);
    /* a stale entry: that block was freed behind our back (by a caller that bypassed the hooks); its
     * memory is gone, so a usable size is only known when it was counted like this one */
    if (r == 1) {
        size_t guess = (stale.site >> BLOCK_MEASURE_SHIFT) == measure && usable ? usable : n + stale.slack;
        untrack(&stale, p, guess ? guess : 1);
    }
    if (r < 0) {
        __atomic_add_fetch(&untracked_bytes, bytes, __ATOMIC_RELAXED);
        __atomic_add_fetch(&untracked_blocks, 1, __ATOMIC_RELAXED);
        return;
    }
    count(owner, mine.site, bytes, req, 1);
}

/* ---- the nursery (tracking.h) ---- */
static inline uintptr_t claim_load(struct nursery *ns, uint32_t i)
{
    return __atomic_load_n(&ns->claims[i], __ATOMIC_ACQUIRE);
}

static inline void claim_store(struct nursery *ns, uint32_t i, uintptr_t v)
{
    __atomic_store_n(&ns->claims[i], v, __ATOMIC_RELEASE);
}

static inline int claim_swap(struct nursery *ns, uint32_t i, uintptr_t *expected, uintptr_t v)
{
    return __atomic_compare_exchange_n(&ns->claims[i], expected, v, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
}

/* Until slot i no longer reads `v`: the other side's step is a few instructions. */
static void claim_wait_past(struct nursery *ns, uint32_t i, uintptr_t v)
{
    for (unsigned spins = 0; claim_load(ns, i) == v;) spin_backoff(&spins);
}

/* A young block counted now, its site interned now. usable: as track_now's. */
static void count_young(const struct young *y, size_t usable)
{
    int measure = y->measure & ~YOUNG_SITE_KNOWN;
    uint16_t site = y->measure & YOUNG_SITE_KNOWN ? y->site : site_of(y->file, y->line, y->scope, y->n);
    track_now((void *)y->p, y->n, y->owner, site, measure, usable);
}

/* Empty index slot `hole`; backward shift keeps every probe run unbroken (no tombstones). Entries
 * another thread claimed stay indexed until the ring's head passes them: their `p` is still the
 * home they were filed under. */
void index_remove(struct nursery *ns, unsigned hole)
{
    ns->index[hole] = 0;
    for (unsigned j = (hole + 1) & (NURSERY_INDEX - 1); ns->index[j]; j = (j + 1) & (NURSERY_INDEX - 1)) {
        struct young *y = &ns->e[ns->index[j] - 1];
        unsigned home = nursery_home(y->p);
        /* j's entry may move back to the hole unless its home lies cyclically in (hole, j] */
        if (((j - home) & (NURSERY_INDEX - 1)) < ((j - hole) & (NURSERY_INDEX - 1))) continue;
        ns->index[hole] = ns->index[j];
        y->at = (uint16_t)hole;
        ns->index[j] = 0;
        hole = j;
    }
}

/* Count the blocks of the ring's oldest k positions that are still alive. A thread that frees one
 * of them meanwhile either claims it first (then it is counted nowhere) or, seeing CLAIM_COUNTING,
 * waits and finds it in the table. */
static void nursery_spill(struct nursery *ns, uint32_t k, int clear_index)
{
    int stale = ns->epoch != __atomic_load_n(&tracking_epoch, __ATOMIC_RELAXED);
    /* head moves on only once its block is in the table: see struct nursery */
    for (uint32_t head = ns->head, end = head + k; head != end; __atomic_store_n(&ns->head, ++head, __ATOMIC_RELEASE)) {
        uint32_t i = ring_slot(head);
        struct young *y = &ns->e[i];
        if (y->at == YOUNG_NOT_INDEXED) continue; /* freed by this thread */
        uintptr_t mine = y->p;
        if (claim_swap(ns, i, &mine, y->p | CLAIM_COUNTING)) {
            /* with the usable size it had when it came: it may have been freed behind the hooks
             * since, its memory reused or unmapped */
            if (!stale) count_young(y, y->n + y->slack);
        } else if (mine == (y->p | CLAIM_TAKING)) {
            claim_wait_past(ns, i, mine); /* another thread is copying it out: let it finish */
        }
        claim_store(ns, i, 0);
        if (clear_index) ns->index[y->at] = 0; /* the whole ring goes: no run needs keeping */
        else index_remove(ns, y->at);
        y->at = YOUNG_NOT_INDEXED;
    }
    __atomic_store_n(&ns->passed, ns->passed + k, __ATOMIC_RELAXED);
}

/* This thread's own nursery, from outside the allocator hooks (pop, mark_object, thread exit): an
 * OpenSSL allocation from a signal handler meanwhile must pass through, not see a ring half moved. */
void nursery_flush(struct nursery *ns)
{
    struct tstate *t = this_thread();
    int was_in_alloc = t->in_alloc;
    t->in_alloc = 1;
    nursery_spill(ns, ns->tail - ns->head, 1);
    ring_empty(ns);
    t->in_alloc = was_in_alloc;
}

/* 0: not taken (its slack does not fit an entry): the caller counts it at once. */
static inline __attribute__((always_inline)) int nursery_add(struct nursery *ns, const struct young *y)
{
    int measure = y->measure & ~YOUNG_SITE_KNOWN;
    size_t slack = measure == MEASURE_REQUESTED ? 0 : usable_size_fresh((void *)y->p, measure) - y->n;
    if (UNLIKELY(slack > 0xffff)) return 0; /* also a usable size below n */
    uint32_t epoch = __atomic_load_n(&tracking_epoch, __ATOMIC_RELAXED);
    if (UNLIKELY(ns->epoch != epoch)) {
        nursery_spill(ns, ns->tail - ns->head, 1); /* drops them: they are from before */
        ring_empty(ns);
        ns->epoch = epoch;
    }
    if (ns->tail - ns->head == NURSERY_SIZE) nursery_spill(ns, NURSERY_SPILL, 0);
    nursery_put(ns, y, (uint16_t)slack);
    return 1;
}

uint64_t nursery_passed(void)
{
    uint64_t n = 0;
    for (int k = 0; k < SHARED_STRIPE; k++) {
        struct nursery *ns = &nurseries[k];
        uint32_t tail = __atomic_load_n(&ns->tail, __ATOMIC_RELAXED);
        n += __atomic_load_n(&ns->passed, __ATOMIC_RELAXED) + (tail - __atomic_load_n(&ns->head, __ATOMIC_RELAXED));
    }
    return n;
}

/* A block this thread allocated, freed by this thread: no other thread can be freeing it too, so
 * a plain store ends its claim. *out (if not NULL) gets its entry. */
int nursery_take_own(struct nursery *ns, uintptr_t p, struct young *out)
{
    for (unsigned j = nursery_home(p); ns->index[j]; j = (j + 1) & (NURSERY_INDEX - 1)) {
        uint32_t i = ns->index[j] - 1u;
        struct young *y = &ns->e[i];
        if (y->p != p || __atomic_load_n(&ns->claims[i], __ATOMIC_RELAXED) != p) continue;
        if (out) *out = *y;
        __atomic_store_n(&ns->claims[i], 0, __ATOMIC_RELAXED);
        index_remove(ns, j);
        nursery_gone(ns, i);
        return 1;
    }
    return 0;
}

/* A block another thread may hold young: found by its claim word (that thread's index is its
 * own), taken with a compare-and-swap. 1: taken, *out filled; 0: not there, or its thread was
 * counting it (it is in the table once we return). */
static int nursery_take_other(struct nursery *ns, uintptr_t p, struct young *out)
{
    for (uint32_t i = 0; i < NURSERY_SIZE; i++) {
        uintptr_t seen = __atomic_load_n(&ns->claims[i], __ATOMIC_RELAXED);
        if ((seen & ~(uintptr_t)(CLAIM_COUNTING | CLAIM_TAKING)) != p) continue;
        if (seen == p && claim_swap(ns, i, &seen, p | CLAIM_TAKING)) {
            /* field by field: its thread may be rewriting `at` meanwhile, nothing else */
            const struct young *y = &ns->e[i];
            *out = (struct young){y->p, y->n, y->file, y->line, y->owner, y->site, y->scope, y->measure, 0, y->slack};
            claim_store(ns, i, 0);
            return 1;
        }
        if (seen == (p | CLAIM_COUNTING)) claim_wait_past(ns, i, seen);
        return 0;
    }
    return 0;
}

/* Not in the table: a block another thread allocated in an OpenSSL call it is still inside, or one
 * that thread was counting just now (look in the table again once its nursery is seen), or a block
 * never tracked. */
int take_slow(uintptr_t p, struct block *out, struct young *young)
{
    if (!__atomic_load_n(&nursery_on, __ATOMIC_RELAXED)) return 0;
    for (int k = 0; k < SHARED_STRIPE; k++) {
        struct nursery *ns = &nurseries[k];
        if (ns == tls.nursery) continue;
        uint32_t tail = __atomic_load_n(&ns->tail, __ATOMIC_ACQUIRE);
        if (tail == __atomic_load_n(&ns->head, __ATOMIC_ACQUIRE) || !nursery_take_other(ns, p, young)) continue;
        /* found young: counted nowhere, so nothing to subtract; the caller learns it from *counted */
        return -1;
    }
    return blocks_remove(p, out);
}

static inline struct nursery *nursery_for_this_call(struct tstate *t)
{
    if (t->depth <= 0) return NULL;
    /* not inside a call that may wait on the network (a blocking SSL_read holds the connection's
     * read buffer for as long as the peer is quiet): what it allocates must show in snapshots now */
    if (t->stack[0].waits) return NULL;
    if (UNLIKELY(!t->stripe)) stripe_claim(t);
    return t->nursery;
}

void track_at(struct tstate *t, void *p, size_t n, uint32_t owner, const char *file, int line, uint8_t scope,
              int measure)
{
    struct nursery *ns = nursery_for_this_call(t);
    if (ns) {
        struct young y = {(uintptr_t)p, n, file, line, owner, 0, scope, (uint8_t)measure, 0, 0};
        if (nursery_add(ns, &y)) return;
    }
    track_now(p, n, owner, site_of_in(t, file, line, scope, n), measure, 0);
}

void track_as(void *p, size_t n, uint32_t owner, uint16_t site, int measure)
{
    struct nursery *ns = nursery_for_this_call(&tls);
    if (ns) {
        struct young y = {
            (uintptr_t)p, n, NULL, 0, owner, site & BLOCK_SITE_MASK, 0, (uint8_t)(measure | YOUNG_SITE_KNOWN), 0, 0};
        if (nursery_add(ns, &y)) return;
    }
    track_now(p, n, owner, site, measure, 0);
}

void mark_object(uintptr_t p)
{
    struct tstate *t = this_thread();
    if (!t->in_alloc && nursery_waiting(t->nursery)) nursery_flush(t->nursery);
    blocks_mark_object(p);
}

/* A young block taken out for a realloc goes back, as it was or moved: to this thread's nursery
 * inside a call, else counted now. */
static void track_young(const struct young *y)
{
    struct nursery *ns = nursery_for_this_call(&tls);
    if (ns && nursery_add(ns, y)) return;
    count_young(y, 0); /* alive now: its size is asked afresh */
}

/* A grown block keeps its owner and site: it is the same object getting bigger. */
void *realloc_common(void *old, size_t n, const char *file, int line, enum realloc_via via, size_t old_num)
{
    struct block b;
    struct young young;
    int had = 0, counted = 0;
    int64_t old_bytes = 0, old_req = 0;
    if (old && take(&tls, (uintptr_t)old, &b, &counted, &young)) {
        had = 1;
        if (counted) {
            block_sizes(&b, old, 0, &old_bytes, &old_req);
            count(b.owner, b.site, -old_bytes, -old_req, -1);
        }
    }
    void *p = via == VIA_LIBC                   ? realloc(old, n)
              : via == VIA_CRYPTO_CLEAR_REALLOC ? real_CRYPTO_clear_realloc(old, old_num, n, file, line)
                                                : real_CRYPTO_realloc(old, n, file, line);
    if (!p) {
        if (had && n && !counted) { /* failed: the old block is still there, young as it was */
            track_young(&young);
        } else if (had && n) {
            struct block stale;
            if (blocks_insert((uintptr_t)old, b.owner, b.site, b.slack, &stale) >= 0)
                count(b.owner, b.site, old_bytes, old_req, 1);
            else {
                __atomic_add_fetch(&untracked_bytes, old_bytes, __ATOMIC_RELAXED);
                __atomic_add_fetch(&untracked_blocks, 1, __ATOMIC_RELAXED);
            }
        }
        return p;
    }
    int measure = via == VIA_LIBC ? malloc_measure : libcrypto_measure();
    if (had && !counted) {
        young.p = (uintptr_t)p;
        young.n = n;
        young.measure = (uint8_t)(measure | (young.measure & YOUNG_SITE_KNOWN));
        track_young(&young);
    } else if (had) {
        track_as(p, n, b.owner, b.site, measure);
    } else if (via == VIA_LIBC) {
        track_static(p, n, file, line);
    } else {
        track(p, n, file, line);
    }
    return p;
}

/* ---- memory functions given to statically linked copies (static_copies.c) ----
 * Such a copy calls these from its CRYPTO_malloc/realloc/free, once per block: no nesting to guard. */
void *tracked_libc_malloc(size_t n, const char *file, int line)
{
    void *p = malloc(n);
    if (p && tlsprof_active) track_static(p, n, file, line);
    return p;
}

void *tracked_libc_realloc(void *old, size_t n, const char *file, int line)
{
    if (!tlsprof_active) return realloc(old, n);
    if (old && n == 0) { /* OpenSSL's contract for realloc(p, 0): free it */
        forget(old);
        free(old);
        return NULL;
    }
    return realloc_common(old, n, file, line, VIA_LIBC, 0);
}

void tracked_libc_free(void *p, const char *file, int line)
{
    if (p && tlsprof_active) forget(p);
    free(p);
}

void hooks_reset(void)
{
    __atomic_add_fetch(&tracking_epoch, 1, __ATOMIC_RELAXED);
    measure_reset();
    __atomic_store_n(&untracked_bytes, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&untracked_blocks, 0, __ATOMIC_RELAXED);
}
