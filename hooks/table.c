/* Live OpenSSL blocks: pointer -> (owner, site, slack), 16 bytes a slot. Sharded by pointer hash so
 * threads rarely share a lock; open addressing with linear probing and backward-shift deletion (no
 * tombstones, so churn never degrades probes). Shard arrays are allocated on first use: a process
 * that never touches OpenSSL pays nothing. When a shard cannot grow, the insert fails and the caller
 * counts the block as untracked instead of failing the target's allocation. */
#define _GNU_SOURCE
#include <sched.h>
#include <stdlib.h>
#include <string.h>

#include "shim.h"

#define N_SHARDS 64
#define MIN_CAP 256

/* A test-and-test-and-set spinlock: a shard is held for one probe (a grow is the rare long case),
 * and a mutex's call and futex bookkeeping cost more than the work it guards. */
static inline void spin_lock(int *l)
{
    for (unsigned spins = 0; __atomic_exchange_n(l, 1, __ATOMIC_ACQUIRE);) {
        while (__atomic_load_n(l, __ATOMIC_RELAXED)) {
            if (++spins < 64) __builtin_ia32_pause();
            else sched_yield(); /* the holder was preempted: let it run */
        }
    }
}

static inline void spin_unlock(int *l) { __atomic_store_n(l, 0, __ATOMIC_RELEASE); }

struct shard {
    int lock;
    struct block *slots;
    size_t cap, count;
} __attribute__((aligned(64)));

static struct shard shards[N_SHARDS];
static int shards_ready;
/* TLSPROF_MAX_BLOCKS caps the live blocks tracked (0 = no cap): bounds the shim's own memory and
 * lets tests prove the degraded mode. Past the cap inserts fail like a failed grow. */
static size_t max_blocks;
static size_t total_blocks; /* atomic */

static inline uint64_t hash_ptr(uintptr_t p)
{
    uint64_t h = (uint64_t)(p >> 4) * 0x9E3779B97F4A7C15ull;
    return h ^ (h >> 29);
}

static inline struct shard *shard_for(uint64_t h) { return &shards[h >> 58]; }

__attribute__((constructor)) static void shards_init(void)
{
    if (shards_ready) return;
    const char *cap = getenv("TLSPROF_MAX_BLOCKS");
    if (cap && *cap) max_blocks = strtoull(cap, NULL, 10);
    shards_ready = 1;
}

static int grow(struct shard *s)
{
    size_t ncap = s->cap ? s->cap * 2 : MIN_CAP;
    struct block *n = calloc(ncap, sizeof *n);
    if (!n) return -1;
    for (size_t i = 0; i < s->cap; i++) {
        if (!s->slots[i].key) continue;
        size_t j = hash_ptr(s->slots[i].key & ~BLOCK_F_OBJECT) & (ncap - 1);
        while (n[j].key) j = (j + 1) & (ncap - 1);
        n[j] = s->slots[i];
    }
    free(s->slots);
    s->slots = n;
    __atomic_store_n(&s->cap, ncap, __ATOMIC_RELAXED); /* blocks_memory reads it unlocked */
    return 0;
}

/* Index of ptr's slot, or of the empty slot that ends its probe run. */
static inline size_t probe(const struct shard *s, uintptr_t ptr, uint64_t h)
{
    size_t mask = s->cap - 1, i = h & mask;
    while (s->slots[i].key && (s->slots[i].key & ~BLOCK_F_OBJECT) != ptr) i = (i + 1) & mask;
    return i;
}

int blocks_insert(uintptr_t ptr, uint32_t owner, uint16_t site, uint16_t slack, struct block *replaced)
{
    uint64_t h = hash_ptr(ptr);
    struct shard *s = shard_for(h);
    spin_lock(&s->lock);
    if ((s->count + 1) * 4 > s->cap * 3 && grow(s) != 0) {
        spin_unlock(&s->lock);
        return -1;
    }
    size_t i = probe(s, ptr, h);
    int was = s->slots[i].key != 0;
    if (!was && max_blocks && __atomic_load_n(&total_blocks, __ATOMIC_RELAXED) >= max_blocks) {
        spin_unlock(&s->lock);
        return -1;
    }
    if (was) *replaced = s->slots[i];
    else {
        s->count++;
        if (max_blocks) __atomic_add_fetch(&total_blocks, 1, __ATOMIC_RELAXED); /* only for the cap */
    }
    s->slots[i] = (struct block){ptr, owner, site, slack};
    spin_unlock(&s->lock);
    return was;
}

int blocks_remove(uintptr_t ptr, struct block *out)
{
    uint64_t h = hash_ptr(ptr);
    struct shard *s = shard_for(h);
    spin_lock(&s->lock);
    if (!s->cap) {
        spin_unlock(&s->lock);
        return 0;
    }
    size_t mask = s->cap - 1, i = probe(s, ptr, h);
    if (!s->slots[i].key) {
        spin_unlock(&s->lock);
        return 0;
    }
    *out = s->slots[i];
    /* backward-shift: pull later members of the run into the hole */
    size_t hole = i, j = i;
    for (;;) {
        j = (j + 1) & mask;
        if (!s->slots[j].key) break;
        size_t home = hash_ptr(s->slots[j].key & ~BLOCK_F_OBJECT) & mask;
        if (((j - home) & mask) >= ((j - hole) & mask)) {
            s->slots[hole] = s->slots[j];
            hole = j;
        }
    }
    s->slots[hole].key = 0;
    s->count--;
    if (max_blocks) __atomic_sub_fetch(&total_blocks, 1, __ATOMIC_RELAXED);
    spin_unlock(&s->lock);
    return 1;
}

int blocks_mark_object(uintptr_t ptr)
{
    uint64_t h = hash_ptr(ptr);
    struct shard *s = shard_for(h);
    int found = 0;
    spin_lock(&s->lock);
    if (s->cap) {
        size_t i = probe(s, ptr, h);
        if (s->slots[i].key) {
            s->slots[i].key |= BLOCK_F_OBJECT;
            found = 1;
        }
    }
    spin_unlock(&s->lock);
    return found;
}

void blocks_reset(void)
{
    for (int k = 0; k < N_SHARDS; k++) {
        struct shard *s = &shards[k];
        spin_lock(&s->lock);
        free(s->slots);
        s->slots = NULL;
        __atomic_sub_fetch(&total_blocks, s->count, __ATOMIC_RELAXED);
        __atomic_store_n(&s->cap, 0, __ATOMIC_RELAXED);
        s->count = 0;
        spin_unlock(&s->lock);
    }
}

size_t blocks_memory(void)
{
    size_t m = sizeof shards;
    for (int k = 0; k < N_SHARDS; k++) m += __atomic_load_n(&shards[k].cap, __ATOMIC_RELAXED) * sizeof(struct block);
    return m;
}

/* Snapshot time only: sums the shards under their locks (no global counter on the hot path). */
size_t blocks_count(void)
{
    size_t n = 0;
    for (int k = 0; k < N_SHARDS; k++) {
        spin_lock(&shards[k].lock);
        n += shards[k].count;
        spin_unlock(&shards[k].lock);
    }
    return n;
}

void blocks_visit_owner(uint32_t owner, block_visit_fn fn, void *arg)
{
    for (int k = 0; k < N_SHARDS; k++) {
        struct shard *s = &shards[k];
        spin_lock(&s->lock);
        for (size_t i = 0; i < s->cap; i++)
            if (s->slots[i].key && s->slots[i].owner == owner) fn(&s->slots[i], arg);
        spin_unlock(&s->lock);
    }
}

void blocks_lock_all(void)
{
    for (int k = 0; k < N_SHARDS; k++) spin_lock(&shards[k].lock);
}

void blocks_unlock_all(void)
{
    for (int k = N_SHARDS - 1; k >= 0; k--) spin_unlock(&shards[k].lock);
}

void blocks_reinit_locks(void)
{
    for (int k = 0; k < N_SHARDS; k++) __atomic_store_n(&shards[k].lock, 0, __ATOMIC_RELEASE);
}

/* The heap walk's child only (hooks/heapwalk.c): the table as it was at the fork, read without the
 * shard's lock (the child has no other thread; a shard caught mid-change at worst misleads one
 * lookup, under the walk's fault guard). Bounded probe. 1 and *out when ptr is tracked. */
int blocks_peek_unlocked(uintptr_t ptr, struct block *out)
{
    uint64_t h = hash_ptr(ptr);
    const struct shard *s = shard_for(h);
    size_t cap = s->cap;
    if (!cap || !s->slots || (cap & (cap - 1))) return 0;
    size_t mask = cap - 1, i = h & mask;
    for (size_t n = 0; n < cap && s->slots[i].key; n++, i = (i + 1) & mask) {
        if ((s->slots[i].key & ~BLOCK_F_OBJECT) == ptr) {
            *out = s->slots[i];
            return 1;
        }
    }
    return 0;
}
