#pragma once
#include "common.h"
#include "measure.h"
#include "owners.h"
#include "sites.h"
#include "table.h"

/* ---- tracking.c: what the hooks hand over (memray's tracking_api, heaptrack's libheaptrack.h) ---- */
#define GLIBC_HEADER 8 /* per-block header glibc keeps before every chunk */
#define MAX_DEPTH 32

extern volatile int tlsprof_active;
extern int64_t untracked_bytes, untracked_blocks; /* atomics: table could not grow */
void hooks_reset(void);

struct scope {
    uint32_t owner;
    uint8_t kind;
    uint8_t waits; /* a call that may wait on the network: what it allocates must show at once */
};

/* The nursery: blocks allocated inside an OpenSSL call wait here, per thread, until that call
 * returns. Most die young (a CA store load makes ~250k blocks and keeps ~11k; a handshake frees
 * most of what it allocates before it returns), and a block freed while still here never touches
 * the shared table or any counter (issue 18). The survivors are counted when the outermost call
 * returns, or, oldest first, when the ring is full. A snapshot taken meanwhile misses at most
 * NURSERY_SIZE blocks per thread. Another thread that frees a block still waiting here claims it
 * (take_slow). Only threads that own a site stripe have one.
 * Entries sit in a ring in the order they came (dead ones keep their place until the ring's head
 * passes them) and an open-addressing index finds them by pointer. */
#define NURSERY_SIZE 1024 /* a power of two; 64 let 39 % of a CA store load's blocks through, 1024 5 % */
#define NURSERY_SPILL (NURSERY_SIZE / 4)
#define NURSERY_INDEX (2 * NURSERY_SIZE)
struct young {
    uintptr_t p; /* 0: freed while young */
    size_t n;
    const char *file; /* the call site, interned only if the block survives (most never do) */
    int line;
    uint32_t owner;
    uint16_t site;   /* YOUNG_SITE_KNOWN: an interned site id (a moved block keeps its own) */
    uint8_t scope;   /* enum scope_kind at the allocation */
    uint8_t measure; /* enum byte_measure | YOUNG_SITE_KNOWN */
    uint16_t at;     /* its slot in the index */
    /* usable - n, asked of the allocator when the block came: a block freed behind the hooks
     * (free() on an OPENSSL_malloc block) may be reused or unmapped by the time it is counted, and
     * its malloc header must not be read then */
    uint16_t slack;
};
#define YOUNG_SITE_KNOWN 0x80
#define YOUNG_NOT_INDEXED 0xffff /* `at` of an entry its own thread took out of the index */
/* A nursery has no lock: its own thread alone writes the ring and the index. Another thread that
 * frees a young block finds it by scanning `claims` and takes it with one compare-and-swap; the own
 * thread needs a locked instruction only to count a survivor (a few % of the blocks), never to add
 * or free one (two locked instructions per block before, most of what the nursery cost). */
#define CLAIM_COUNTING 1u /* its own thread is counting the block: it will be in the table */
#define CLAIM_TAKING 2u   /* another thread is copying the entry out: the slot is not reused yet */
struct nursery {
    /* ring positions, counting up; written by its own thread only. Another thread that reads
     * tail, then head, and finds them equal knows that no block it may free waits here */
    uint32_t head, tail;
    uint32_t epoch; /* tracking_epoch of its entries: older ones are dropped, never counted */
    /* blocks that waited here and left the ring (the head passed them, or their places were given
     * back); with tail - head, all that ever waited here. Written by its own thread only */
    uint64_t passed;
    struct young e[NURSERY_SIZE];
    uint16_t index[NURSERY_INDEX]; /* ring position + 1, 0 empty */
    /* claims[i]: e[i].p while that block is young and alive, 0 once it is freed or counted, or
     * e[i].p | CLAIM_COUNTING / CLAIM_TAKING in passing; the one word other threads touch */
    uintptr_t claims[NURSERY_SIZE];
} __attribute__((aligned(64)));

struct tstate {
    int in_alloc;
    int depth;
    int stripe;     /* 1 + this thread's site-counter stripe; 0 until first needed */
    int stripe_own; /* the stripe is this thread's alone: plain adds, no locked instructions */
    /* the last call site interned: OpenSSL allocates from one site many times in a row (a stack
     * being filled, a CA store's certificates), and a hit skips the shared index (issue 18) */
    const char *site_file;
    int site_line;
    uint8_t site_scope;
    uint16_t site_id;
    struct nursery *nursery; /* NULL: this thread counts every block at once */
    /* kept by push and pop, so that an allocation reads two fields instead of working them out:
     * the top of the stack, and the nursery this call's blocks wait in (NULL: outside any call, in
     * one that may wait on the network, or before the thread has a nursery) */
    struct scope top;
    struct nursery *young;
    /* a new block's entry while the real allocator runs (stage_block, commit_block): a slot of the
     * nursery, or `pending` */
    struct young *staged;
    struct young pending;
    /* 1 + a slot of the nursery's index emptied by a free whose run is still to be shifted back
     * into it, else 0 (nursery_free_home): for the length of the real free, when nothing else
     * looks there */
    unsigned hole;
    struct scope stack[MAX_DEPTH];
};

/* ---- the nursery's common cases, inline in the allocator hooks ----
 * A block allocated and freed young cost ~300 instructions of tracking against ~250 for glibc's
 * malloc and free themselves; the calls into tracking.c and the registers they saved were ~65 of
 * them (callgrind, a context build: 325 -> 308 M instructions once inline, bench/README.md). The
 * rest of the nursery is in tracking.c. */
extern uint32_t tracking_epoch __attribute__((visibility("hidden"))); /* bumped at every (re)start */

static inline unsigned nursery_home(uintptr_t p)
{
    return (unsigned)(((uint64_t)(p >> 4) * 0x9E3779B97F4A7C15ull) >> 32) & (NURSERY_INDEX - 1);
}

static inline uint32_t ring_slot(uint32_t pos) { return pos & (NURSERY_SIZE - 1); }

/* The ring's next slot (ring with room, current epoch), filled but for its place in the index,
 * becomes young block p. */
static inline __attribute__((always_inline)) void nursery_publish(struct nursery *ns, struct young *slot, uintptr_t p,
                                                                  uint16_t slack)
{
    unsigned j = nursery_home(p);
    while (ns->index[j]) j = (j + 1) & (NURSERY_INDEX - 1);
    uint32_t tail = ns->tail;
    slot->at = (uint16_t)j;
    slot->slack = slack;
    ns->index[j] = (uint16_t)(ring_slot(tail) + 1);
    /* after the entry: a thread that claims it reads it whole */
    __atomic_store_n(&ns->claims[ring_slot(tail)], p, __ATOMIC_RELEASE);
    __atomic_store_n(&ns->tail, tail + 1, __ATOMIC_RELEASE);
}

/* File a young block in a ring with room and of the current epoch. */
static inline __attribute__((always_inline)) void nursery_put(struct nursery *ns, const struct young *y, uint16_t slack)
{
    struct young *slot = &ns->e[ring_slot(ns->tail)];
    *slot = *y;
    nursery_publish(ns, slot, y->p, slack);
}

void index_remove(struct nursery *ns, unsigned hole);

/* Entry y, out of the index, is dead. The newest entries, once dead, give their places back:
 * nearly half the frees are of the block allocated last, so the ring then moves on half as fast
 * (fewer spills and survivors, and the same few cache lines reused). Since they do, the newest
 * entry is alive whenever this thread is not in here: only y's death can free places. */
static inline void nursery_gone(struct nursery *ns, uint32_t i)
{
    ns->e[i].at = YOUNG_NOT_INDEXED;
    uint32_t tail = ns->tail, was = tail;
    if (i != ring_slot(tail - 1)) return;
    do tail--;
    while (tail != ns->head && ns->e[ring_slot(tail - 1)].at == YOUNG_NOT_INDEXED);
    __atomic_store_n(&ns->tail, tail, __ATOMIC_RELAXED);
    __atomic_store_n(&ns->passed, ns->passed + (was - tail), __ATOMIC_RELAXED);
}

/* hidden: one TLS block of this library, no lookup through the GOT */
extern __thread struct tstate tls __attribute__((visibility("hidden")));

/* The thread's state, looked up once: in the build `attach` injects (TLS descriptors, setup.py)
 * each lookup is a call, and the compiler would rather repeat it after every call than keep the
 * address (the empty asm makes it opaque). The build `run` preloads reads it at a fixed offset. */
static inline struct tstate *this_thread(void)
{
    struct tstate *t = &tls;
    __asm__("" : "+r"(t));
    return t;
}

/* ---- the scope stack: what the thread is doing inside OpenSSL, for whom ---- */
static inline void push_call(uint32_t owner, uint8_t kind, int waits)
{
    struct tstate *t = &tls;
    int depth = t->depth;
    struct scope s = {owner, kind, (uint8_t)waits};
    if (depth < MAX_DEPTH) t->stack[depth] = s;
    t->depth = depth + 1;
    if (depth < MAX_DEPTH) t->top = s;
    if (depth == 0) t->young = waits ? NULL : t->nursery;
}

static inline void push(uint32_t owner, uint8_t kind) { push_call(owner, kind, 0); }

void nursery_flush(struct nursery *ns);
void tracking_use_nursery(int on);
uint64_t nursery_passed(void); /* blocks that waited in any nursery since the process started */
/* its own thread's question: are there entries, alive or dead, in the ring? */
static inline int nursery_waiting(struct nursery *ns) { return ns && ns->tail != ns->head; }

/* Leaving the outermost OpenSSL call: what survived it is counted now. */
static inline void pop(void)
{
    struct tstate *t = &tls;
    /* not from a signal handler that interrupted this thread's own flush or allocator hook (it holds
     * the nursery's lock): the next return counts them */
    int depth = --t->depth;
    if (depth > 0) {
        t->top = t->stack[depth <= MAX_DEPTH ? depth - 1 : MAX_DEPTH - 1];
        return;
    }
    t->top = (struct scope){0, SC_NONE, 0};
    t->young = NULL;
    if (depth == 0 && !t->in_alloc && nursery_waiting(t->nursery)) nursery_flush(t->nursery);
}

static inline struct scope current_of(const struct tstate *t) { return t->top; }

static inline struct scope current(void) { return current_of(&tls); }

/* Scopes nested in a scope of another owner (X509_STORE_load_file inside a context's trust-store
 * load) keep the outer owner. */
static inline uint32_t inherited_owner(void) { return current().owner; }

/* Count a block to an owner and site (measure: enum byte_measure), and take it back. */
void track_as(void *p, size_t n, uint32_t owner, uint16_t site, int measure);
/* The same from the call site: inside an OpenSSL call the block waits in the nursery uninterned. */
/* Every thread-state access through a TLS descriptor is a call (the injected build): the hooks
 * look it up once and hand it down. */
void track_at(struct tstate *t, void *p, size_t n, uint32_t owner, const char *file, int line, uint8_t scope,
              int measure);
void untrack(const struct block *b, void *p, size_t usable);

/* Inline, as they were before the split: the hook and these share one look-up of the thread's state
 * on every allocation (a call here cost ~15 instructions per block, callgrind). */
static inline uint16_t site_of_in(struct tstate *t, const char *file, int line, uint8_t scope, size_t n)
{
    if (t->site_file == file && t->site_line == line && t->site_scope == scope && file) return t->site_id;
    uint16_t id = site_intern(file, line, scope, n);
    if (id) { /* 0 = the index is full: ask again next time */
        t->site_file = file;
        t->site_line = line;
        t->site_scope = scope;
        t->site_id = id;
    }
    return id;
}

static inline uint16_t site_of(const char *file, int line, uint8_t scope, size_t n)
{
    return site_of_in(&tls, file, line, scope, n);
}

/* A new block: owner and cause from the top of the scope stack. */
static inline void track_in(struct tstate *t, void *p, size_t n, const char *file, int line)
{
    struct scope s = current_of(t);
    track_at(t, p, n, s.owner, file, line, s.kind, libcrypto_measure());
}

/* ---- a new block from the allocator hooks, in two steps around the real allocator ----
 * What is known before the call (size, call site, scope) goes straight where the block's entry
 * will be: the nursery's next slot when a glibc block inside a call that does not wait may wait
 * there, else the thread's `pending`. Fewer values then live in saved registers across the
 * allocator's call (half the pushes and pops; with the rest of that step, 301.0 -> 299.2 M
 * instructions a context build, callgrind). Between the two steps the thread is inside its hook
 * (in_alloc): nothing else touches its nursery. */
static inline __attribute__((always_inline)) void stage_block(struct tstate *t, size_t n, const char *file, int line)
{
    struct nursery *ns = t->young;
    struct young *y = &t->pending;
    if (ns && __atomic_load_n(&crypto_glibc_header, __ATOMIC_RELAXED) &&
        LIKELY(ns->epoch == __atomic_load_n(&tracking_epoch, __ATOMIC_RELAXED)) &&
        LIKELY(ns->tail - ns->head != NURSERY_SIZE))
        y = &ns->e[ring_slot(ns->tail)]; /* free: the ring's positions end before it */
    y->n = n;
    y->file = file;
    y->line = line;
    y->owner = t->top.owner;
    y->scope = t->top.kind;
    t->staged = y;
}

/* p: what the allocator returned for the staged block. */
static inline __attribute__((always_inline)) void commit_block(struct tstate *t, void *p)
{
    struct young *y = t->staged;
    if (y != &t->pending) {
        size_t slack = glibc_header_usable(p) - y->n;
        if (LIKELY(slack <= 0xffff)) { /* above: also a usable size below n */
            y->p = (uintptr_t)p;
            y->site = 0;
            y->measure = MEASURE_GLIBC;
            nursery_publish(t->young, y, (uintptr_t)p, (uint16_t)slack);
            return;
        }
    }
    track_at(t, p, y->n, y->owner, y->file, y->line, y->scope, libcrypto_measure());
}

static inline void track(void *p, size_t n, const char *file, int line) { track_in(&tls, p, n, file, line); }

/* A block of a statically linked copy: outside any scope, its source file alone decides. */
static inline void track_static(void *p, size_t n, const char *file, int line)
{
    struct tstate *t = &tls;
    struct scope s = current_of(t);
    track_at(t, p, n, s.owner, file, line, s.kind == SC_NONE ? SC_STATIC : s.kind, malloc_measure);
}

int nursery_take_own(struct nursery *ns, uintptr_t p, struct young *out);

/* nursery_take_own's common case for a free: 1 taken from its home slot, 0 not in this thread's
 * nursery (its home slot is empty), -1 elsewhere in the run: look there. The run after its slot,
 * if any, is left to nursery_close_hole (t->hole): the free hook shifts it back after the real
 * free, so that nothing it needs after that call has to outlive a call before it. */
static inline __attribute__((always_inline)) int nursery_free_home(struct tstate *t, uintptr_t p)
{
    struct nursery *ns = t->nursery;
    unsigned j = nursery_home(p);
    uint32_t at = ns->index[j];
    if (!at) return 0;
    struct young *y = &ns->e[at - 1];
    if (y->p != p || __atomic_load_n(&ns->claims[at - 1], __ATOMIC_RELAXED) != p) return -1;
    /* its own thread's block: no other thread can be freeing it too, so a plain store ends its claim */
    __atomic_store_n(&ns->claims[at - 1], 0, __ATOMIC_RELAXED);
    ns->index[j] = 0;
    if (ns->index[(j + 1) & (NURSERY_INDEX - 1)]) t->hole = j + 1;
    nursery_gone(ns, at - 1);
    return 1;
}

static inline void nursery_close_hole(struct tstate *t)
{
    unsigned hole = t->hole - 1;
    t->hole = 0;
    index_remove(t->nursery, hole);
}

static inline __attribute__((always_inline)) int nursery_take_home(struct tstate *t, uintptr_t p)
{
    int r = nursery_free_home(t, p);
    if (r > 0 && t->hole) nursery_close_hole(t);
    return r;
}

/* 1: counted, in the table after all; -1: young in another thread's nursery; 0: never tracked */
int take_slow(uintptr_t p, struct block *out, struct young *young);

/* take()'s look in this thread's own nursery: 1 taken (*young filled unless NULL) */
static inline __attribute__((always_inline)) int take_own_young(struct tstate *t, uintptr_t p, struct young *young)
{
    struct nursery *ns = t->nursery;
    if (!nursery_waiting(ns)) return 0;
    int r = young ? -1 : nursery_take_home(t, p); /* a realloc needs the entry: the full look */
    if (r < 0) r = nursery_take_own(ns, p, young);
    return r;
}

/* take() once this thread's nursery was looked in: the table, then the other threads' nurseries */
static inline int take_not_own_young(uintptr_t p, struct block *out, int *counted, struct young *young)
{
    if (blocks_remove(p, out)) {
        *counted = 1;
        return 1;
    }
    struct young unused;
    int r = take_slow(p, out, young ? young : &unused);
    *counted = r > 0;
    return r != 0;
}

/* Take p out of tracking: 1 if it was tracked, with *counted set and *out filled if it was counted
 * (the table), else *young filled unless it is NULL (a block still in a nursery was counted
 * nowhere; a free does not need its entry). */
static inline __attribute__((always_inline)) int take(struct tstate *t, uintptr_t p, struct block *out, int *counted,
                                                      struct young *young)
{
    *counted = 0;
    return take_own_young(t, p, young) || take_not_own_young(p, out, counted, young);
}

/* forget_in() once this thread's nursery was looked in. */
static inline void forget_not_own_young(struct tstate *t, void *p)
{
    struct block b;
    int counted;
    if (!take_not_own_young((uintptr_t)p, &b, &counted, NULL) || !counted) return;
    untrack(&b, p, 0);
    if (b.key & BLOCK_F_OBJECT) {
        /* the SSL/SSL_CTX struct itself: the object is really gone (refcounts reached zero); what
         * this thread's nursery holds for it is counted first, while the owner is still its own */
        struct owner *o = owner_at(b.owner);
        if (nursery_waiting(t->nursery)) nursery_flush(t->nursery);
        objects_unbind((uintptr_t)p, b.owner);
        if (__atomic_load_n(&o->ptr, __ATOMIC_RELAXED) == (uintptr_t)p) owner_mark_dead(b.owner);
    }
}

/* Before the block goes back to the allocator (another thread may get the address at once). */
static inline __attribute__((always_inline)) void forget_in(struct tstate *t, void *p)
{
    if (!take_own_young(t, (uintptr_t)p, NULL)) forget_not_own_young(t, p);
}

static inline void forget(void *p) { forget_in(&tls, p); }

/* The SSL/SSL_CTX struct itself, once its constructor returned (it may still wait in the nursery). */
void mark_object(uintptr_t p);

enum realloc_via { VIA_CRYPTO_REALLOC, VIA_CRYPTO_CLEAR_REALLOC, VIA_LIBC };
void *realloc_common(void *old, size_t n, const char *file, int line, enum realloc_via via, size_t old_num);
void stripes_after_fork_child(void);
