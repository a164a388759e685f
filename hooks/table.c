/* Live OpenSSL blocks: pointer -> (owner, site, measure, slack).
 *
 * The table is what tlsprof adds per live block, so it is packed (issue 18: a CA store alone is
 * 11.3k blocks of ~74 B). Nearly every block goes to the packed table, 10 bytes a slot:
 *   bits  0..36  the pointer's bits 10..46 (user space ends at 2^47; glibc aligns to 16, and the
 *                pointer's bits 4..9 are given back by the shard it lives in, see shard_of)
 *   bits 37..56  owner index (MAX_OWNERS = 2^20)
 *   bits 57..69  site id (sites.c hands out fewer than 2^13 ids)
 *   bit  70      measure: 0 glibc, 1 the process allocator's usable size
 *   bit  71      BLOCK_F_OBJECT
 *   bits 72..79  slack, usable - requested (glibc's normal chunks: below 24)
 * Anything that does not fit (a pointer not 16-aligned or above 2^47, a MEASURE_REQUESTED block
 * whose slack field is its encoded size, slack of 256 and more from an mmapped chunk) goes to the
 * wide table (table_wide.c), 16-byte slots, which a glibc process seldom uses.
 *
 * Both tables are sharded so threads rarely share a lock; open addressing with linear probing and
 * backward-shift deletion (no tombstones, so churn never degrades probes). The packed shards fill to
 * 90 % and grow by a quarter (capacity need not be a power of two: the home slot is a multiply-shift
 * of the hash), so the table costs 11.1-13.9 B per live block whatever the phase of growth; the
 * doubling 16-byte table before it cost 21-43 B. 90 % rather than 80 %: since the nursery
 * (tracking.h) only blocks that outlive their OpenSSL call come here, so the longer probes cost
 * less than the memory (context builds ran no slower, bench/overhead_goals.py --only ctx). Shard
 * arrays are allocated on first use: a process that never touches OpenSSL pays nothing. When a shard cannot grow, the insert fails and the caller
 * counts the block as untracked instead of failing the target's allocation. */
#define _GNU_SOURCE
#include <stdlib.h>
#include <string.h>

#include "table_internal.h"

#define N_SHARDS 64
#define SHARD_BITS 6
#define PACKED_MIN_CAP 64
#ifndef PACKED_LOAD_NUM /* the packed shards' highest load: 9/10 */
#define PACKED_LOAD_NUM 9
#define PACKED_LOAD_DEN 10
#endif

/* ================= packed table ================= */

struct pslot {
    uint64_t lo;
    uint16_t hi;
} __attribute__((packed));

#define P_ADDR_BITS 37
#define P_ADDR_MASK ((1ull << P_ADDR_BITS) - 1)
#define P_OWNER_SHIFT 37
#define P_SITE_SHIFT 57 /* 13 bits: 7 in lo, 6 in hi */
#define P_SITE_LIMIT (1u << 13)
#define P_USER_LIMIT (1ull << 47)

struct pshard {
    int lock;
    struct pslot *slots;
    size_t cap, count;
} __attribute__((aligned(64)));

static struct pshard pshards[N_SHARDS];

/* The shard mixes the pointer's bits 4..9 with a hash of its higher bits: threads spread over the
 * shards whatever the block sizes, and the slot need not keep bits 4..9 (shard ^ mix(high)). */
static inline unsigned mix_high(uint64_t high)
{
    return (unsigned)((high * 0x9E3779B97F4A7C15ull) >> (64 - SHARD_BITS));
}
static inline unsigned shard_of(uintptr_t p) { return (((unsigned)(p >> 4)) ^ mix_high(p >> 10)) & (N_SHARDS - 1); }

static inline int packable(uintptr_t p, uint16_t site, uint16_t slack)
{
    unsigned measure = site >> BLOCK_MEASURE_SHIFT;
    return !(p & 15) && p < P_USER_LIMIT && (site & BLOCK_SITE_MASK) < P_SITE_LIMIT && measure <= MEASURE_USABLE &&
           slack < 256;
}

static inline uint64_t p_high(const struct pslot *s) { return s->lo & P_ADDR_MASK; }
static inline int p_used(const struct pslot *s) { return p_high(s) != 0; } /* pointers >= 1024 */

static inline uintptr_t p_ptr(const struct pslot *s, unsigned shard)
{
    uint64_t high = p_high(s);
    return (uintptr_t)(high << 10) | (uintptr_t)(((shard ^ mix_high(high)) & (N_SHARDS - 1)) << 4);
}

static inline struct pslot p_encode(uintptr_t ptr, int object, uint32_t owner, uint16_t site, uint16_t slack)
{
    uint64_t id = site & BLOCK_SITE_MASK, measure = site >> BLOCK_MEASURE_SHIFT;
    struct pslot s;
    s.lo = ((uint64_t)ptr >> 10) | ((uint64_t)owner << P_OWNER_SHIFT) | (id << P_SITE_SHIFT);
    s.hi = (uint16_t)((id >> 7) | (measure << 6) | ((uint64_t)(object != 0) << 7) | ((uint64_t)slack << 8));
    return s;
}

static inline struct block p_decode(const struct pslot *s, unsigned shard)
{
    uint16_t id = (uint16_t)((s->lo >> P_SITE_SHIFT) | ((uint64_t)(s->hi & 0x3f) << 7));
    uint16_t measure = (s->hi >> 6) & 1;
    struct block b = {p_ptr(s, shard) | ((s->hi >> 7) & 1 ? BLOCK_F_OBJECT : 0),
                      (uint32_t)((s->lo >> P_OWNER_SHIFT) & ((1u << 20) - 1)),
                      (uint16_t)(id | (measure << BLOCK_MEASURE_SHIFT)), (uint16_t)(s->hi >> 8)};
    return b;
}

/* Home slot from the pointer's bits 10..46 alone (within a shard they identify the block), so moving
 * a slot needs no decoding: a multiply-shift onto [0, cap), any cap. */
static inline size_t p_home(uint64_t high, size_t cap)
{
    uint64_t h = high * 0xC2B2AE3D27D4EB4Full;
    return (size_t)(((h >> 32) * cap) >> 32);
}

static int p_grow(struct pshard *s)
{
    size_t ncap = s->cap ? s->cap + s->cap / 4 : PACKED_MIN_CAP;
    struct pslot *n = calloc(ncap, sizeof *n);
    if (!n) return -1;
    for (size_t i = 0; i < s->cap; i++) {
        if (!p_used(&s->slots[i])) continue;
        size_t j = p_home(p_high(&s->slots[i]), ncap);
        while (p_used(&n[j])) j = j + 1 == ncap ? 0 : j + 1;
        n[j] = s->slots[i];
    }
    free(s->slots);
    s->slots = n;
    __atomic_store_n(&s->cap, ncap, __ATOMIC_RELAXED); /* blocks_memory reads it unlocked */
    return 0;
}

/* Index of ptr's slot, or of the empty slot that ends its probe run (cap > 0). */
static inline size_t p_probe(const struct pshard *s, uintptr_t ptr)
{
    uint64_t want = (uint64_t)ptr >> 10;
    size_t i = p_home(want, s->cap);
    for (;;) {
        uint64_t high = p_high(&s->slots[i]);
        if (!high || high == want) return i; /* bits 4..9 are the shard's: high alone identifies */
        i = i + 1 == s->cap ? 0 : i + 1;
    }
}

static void p_delete_at(struct pshard *s, size_t i)
{
    size_t cap = s->cap, hole = i, j = i;
    for (;;) {
        j = j + 1 == cap ? 0 : j + 1;
        if (!p_used(&s->slots[j])) break;
        size_t home = p_home(p_high(&s->slots[j]), cap);
        /* move j back into the hole unless its home lies cyclically in (hole, j] */
        size_t d_home = j >= home ? j - home : j + cap - home, d_hole = j >= hole ? j - hole : j + cap - hole;
        if (d_home >= d_hole) {
            s->slots[hole] = s->slots[j];
            hole = j;
        }
    }
    memset(&s->slots[hole], 0, sizeof s->slots[hole]);
    s->count--;
}

/* ================= the interface ================= */

/* 1 and *out if ptr was in the packed table (removed). */
static int p_remove(uintptr_t ptr, struct block *out)
{
    if ((ptr & 15) || ptr >= P_USER_LIMIT) return 0;
    unsigned k = shard_of(ptr);
    struct pshard *s = &pshards[k];
    spin_lock(&s->lock);
    if (!s->cap) {
        spin_unlock(&s->lock);
        return 0;
    }
    size_t i = p_probe(s, ptr);
    if (!p_used(&s->slots[i])) {
        spin_unlock(&s->lock);
        return 0;
    }
    *out = p_decode(&s->slots[i], k);
    p_delete_at(s, i);
    cap_count(-1);
    spin_unlock(&s->lock);
    return 1;
}

int blocks_insert(uintptr_t ptr, uint32_t owner, uint16_t site, uint16_t slack, struct block *replaced)
{
    if (!packable(ptr, site, slack)) {
        /* a stale packed entry for this address (its block was freed behind our back) goes first */
        struct block stale;
        int was_packed = p_remove(ptr, &stale);
        int r = wide_insert(ptr, owner, site, slack, replaced);
        if (r == 0 && was_packed) {
            *replaced = stale;
            r = 1;
        }
        return r;
    }
    struct block stale;
    int was_wide = wide_has_blocks() && wide_remove(ptr, &stale);
    unsigned k = shard_of(ptr);
    struct pshard *s = &pshards[k];
    spin_lock(&s->lock);
    /* fill to PACKED_LOAD, then grow by a quarter */
    if ((s->count + 1) * PACKED_LOAD_DEN > s->cap * PACKED_LOAD_NUM && p_grow(s) != 0) {
        spin_unlock(&s->lock);
        if (was_wide) *replaced = stale;
        return -1;
    }
    size_t i = p_probe(s, ptr);
    int was = p_used(&s->slots[i]);
    if (!was && over_cap()) {
        spin_unlock(&s->lock);
        if (was_wide) *replaced = stale;
        return -1;
    }
    if (was) *replaced = p_decode(&s->slots[i], k);
    else {
        s->count++;
        cap_count(1);
    }
    s->slots[i] = p_encode(ptr, 0, owner, site, slack);
    spin_unlock(&s->lock);
    if (!was && was_wide) {
        *replaced = stale;
        was = 1;
    }
    return was;
}

int blocks_remove(uintptr_t ptr, struct block *out)
{
    return p_remove(ptr, out) || (wide_has_blocks() && wide_remove(ptr, out));
}

int blocks_mark_object(uintptr_t ptr)
{
    int found = 0;
    if (!(ptr & 15) && ptr < P_USER_LIMIT) {
        struct pshard *s = &pshards[shard_of(ptr)];
        spin_lock(&s->lock);
        if (s->cap) {
            size_t i = p_probe(s, ptr);
            if (p_used(&s->slots[i])) {
                s->slots[i].hi |= 1u << 7;
                found = 1;
            }
        }
        spin_unlock(&s->lock);
        if (found) return 1;
    }
    return wide_has_blocks() && wide_mark_object(ptr);
}

void blocks_reset(void)
{
    for (int k = 0; k < N_SHARDS; k++) {
        struct pshard *s = &pshards[k];
        spin_lock(&s->lock);
        free(s->slots);
        s->slots = NULL;
        if (max_blocks) __atomic_sub_fetch(&total_blocks, s->count, __ATOMIC_RELAXED);
        __atomic_store_n(&s->cap, 0, __ATOMIC_RELAXED);
        s->count = 0;
        spin_unlock(&s->lock);
    }
    wide_reset();
}

/* What the block table holds, shard headers included (the per-block part of tracker_bytes). */
size_t blocks_memory(void)
{
    size_t m = sizeof pshards + wide_memory();
    for (int k = 0; k < N_SHARDS; k++) m += __atomic_load_n(&pshards[k].cap, __ATOMIC_RELAXED) * sizeof(struct pslot);
    return m;
}

/* Snapshot time only: sums the shards under their locks (no global counter on the hot path). */
size_t blocks_count(void)
{
    size_t n = 0;
    for (int k = 0; k < N_SHARDS; k++) {
        spin_lock(&pshards[k].lock);
        n += pshards[k].count;
        spin_unlock(&pshards[k].lock);
    }
    return n + wide_blocks();
}

size_t blocks_count_wide(void) { return wide_blocks(); }

void blocks_visit_owner(uint32_t owner, block_visit_fn fn, void *arg)
{
    for (unsigned k = 0; k < N_SHARDS; k++) {
        struct pshard *s = &pshards[k];
        spin_lock(&s->lock);
        for (size_t i = 0; i < s->cap; i++) {
            const struct pslot *p = &s->slots[i];
            if (p_used(p) && ((p->lo >> P_OWNER_SHIFT) & ((1u << 20) - 1)) == owner) {
                struct block b = p_decode(p, k);
                fn(&b, arg);
            }
        }
        spin_unlock(&s->lock);
    }
    if (wide_has_blocks()) wide_visit_owner(owner, fn, arg);
}

void blocks_lock_all(void)
{
    for (int k = 0; k < N_SHARDS; k++) spin_lock(&pshards[k].lock);
    wide_lock_all();
}

void blocks_unlock_all(void)
{
    wide_unlock_all();
    for (int k = N_SHARDS - 1; k >= 0; k--) spin_unlock(&pshards[k].lock);
}

/* The heap walk's child only (hooks/heapwalk.c): the table as it was at the fork, read without the
 * shard's lock (the child has no other thread; a shard caught mid-change at worst misleads one
 * lookup, under the walk's fault guard). Bounded probe. 1 and *out when ptr is tracked. */
int blocks_peek_unlocked(uintptr_t ptr, struct block *out)
{
    if (!(ptr & 15) && ptr < P_USER_LIMIT) {
        unsigned k = shard_of(ptr);
        const struct pshard *s = &pshards[k];
        size_t cap = s->cap;
        if (cap && s->slots) {
            uint64_t want = (uint64_t)ptr >> 10;
            size_t i = p_home(want, cap);
            for (size_t n = 0; n < cap && p_used(&s->slots[i]); n++, i = i + 1 == cap ? 0 : i + 1) {
                if (p_high(&s->slots[i]) == want) {
                    *out = p_decode(&s->slots[i], k);
                    return 1;
                }
            }
        }
    }
    return wide_has_blocks() && wide_peek_unlocked(ptr, out);
}
