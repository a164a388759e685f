/* The wide block table: 16-byte slots for the blocks the packed table (table.c) cannot hold (a
 * pointer not 16-aligned or above 2^47, a MEASURE_REQUESTED block, slack of 256 and more). A glibc
 * process seldom uses it; wide_count lets the common case skip it without a call. Same scheme as
 * the packed table: sharded, open addressing, linear probing, backward-shift deletion. */
#define _GNU_SOURCE
#include <stdlib.h>
#include <string.h>

#include "table_internal.h"

#define WIDE_N_SHARDS 8
#define WIDE_MIN_CAP 64

/* TLSPROF_MAX_BLOCKS (table_internal.h): defined here, the lower of the two table files */
size_t max_blocks;
size_t total_blocks;
static int tables_ready;

__attribute__((constructor)) static void tables_init(void)
{
    if (tables_ready) return;
    const char *cap = getenv("TLSPROF_MAX_BLOCKS");
    if (cap && *cap) max_blocks = strtoull(cap, NULL, 10);
    tables_ready = 1;
}

struct wshard {
    int lock;
    struct block *slots;
    size_t cap, count;
} __attribute__((aligned(64)));

static struct wshard wshards[WIDE_N_SHARDS];
size_t wide_count; /* atomic: lets the common case skip the wide table */

static inline struct wshard *w_shard_for(uint64_t h) { return &wshards[h >> 61]; }

static int w_grow(struct wshard *s)
{
    size_t ncap = s->cap ? s->cap * 2 : WIDE_MIN_CAP;
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
    __atomic_store_n(&s->cap, ncap, __ATOMIC_RELAXED);
    return 0;
}

static inline size_t w_probe(const struct wshard *s, uintptr_t ptr, uint64_t h)
{
    size_t mask = s->cap - 1, i = h & mask;
    while (s->slots[i].key && (s->slots[i].key & ~BLOCK_F_OBJECT) != ptr) i = (i + 1) & mask;
    return i;
}

/* Removes ptr from the wide table; 1 and *out if it was there. */
int wide_remove(uintptr_t ptr, struct block *out)
{
    if (!__atomic_load_n(&wide_count, __ATOMIC_RELAXED)) return 0;
    uint64_t h = hash_ptr(ptr);
    struct wshard *s = w_shard_for(h);
    spin_lock(&s->lock);
    if (!s->cap) {
        spin_unlock(&s->lock);
        return 0;
    }
    size_t mask = s->cap - 1, i = w_probe(s, ptr, h);
    if (!s->slots[i].key) {
        spin_unlock(&s->lock);
        return 0;
    }
    *out = s->slots[i];
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
    __atomic_sub_fetch(&wide_count, 1, __ATOMIC_RELAXED);
    cap_count(-1);
    spin_unlock(&s->lock);
    return 1;
}

int wide_insert(uintptr_t ptr, uint32_t owner, uint16_t site, uint16_t slack, struct block *replaced)
{
    uint64_t h = hash_ptr(ptr);
    struct wshard *s = w_shard_for(h);
    spin_lock(&s->lock);
    if ((s->count + 1) * 4 > s->cap * 3 && w_grow(s) != 0) {
        spin_unlock(&s->lock);
        return -1;
    }
    size_t i = w_probe(s, ptr, h);
    int was = s->slots[i].key != 0;
    if (!was && over_cap()) {
        spin_unlock(&s->lock);
        return -1;
    }
    if (was) *replaced = s->slots[i];
    else {
        s->count++;
        __atomic_add_fetch(&wide_count, 1, __ATOMIC_RELAXED);
        cap_count(1);
    }
    s->slots[i] = (struct block){ptr, owner, site, slack};
    spin_unlock(&s->lock);
    return was;
}

int wide_mark_object(uintptr_t ptr)
{
    int found = 0;
    uint64_t h = hash_ptr(ptr);
    struct wshard *w = w_shard_for(h);
    spin_lock(&w->lock);
    if (w->cap) {
        size_t i = w_probe(w, ptr, h);
        if (w->slots[i].key) {
            w->slots[i].key |= BLOCK_F_OBJECT;
            found = 1;
        }
    }
    spin_unlock(&w->lock);
    return found;
}

void wide_reset(void)
{
    for (int k = 0; k < WIDE_N_SHARDS; k++) {
        struct wshard *s = &wshards[k];
        spin_lock(&s->lock);
        free(s->slots);
        s->slots = NULL;
        if (max_blocks) __atomic_sub_fetch(&total_blocks, s->count, __ATOMIC_RELAXED);
        __atomic_sub_fetch(&wide_count, s->count, __ATOMIC_RELAXED);
        __atomic_store_n(&s->cap, 0, __ATOMIC_RELAXED);
        s->count = 0;
        spin_unlock(&s->lock);
    }
}

size_t wide_memory(void)
{
    size_t m = sizeof wshards;
    for (int k = 0; k < WIDE_N_SHARDS; k++)
        m += __atomic_load_n(&wshards[k].cap, __ATOMIC_RELAXED) * sizeof(struct block);
    return m;
}

void wide_visit_owner(uint32_t owner, block_visit_fn fn, void *arg)
{
    for (int k = 0; k < WIDE_N_SHARDS; k++) {
        struct wshard *s = &wshards[k];
        spin_lock(&s->lock);
        for (size_t i = 0; i < s->cap; i++)
            if (s->slots[i].key && s->slots[i].owner == owner) fn(&s->slots[i], arg);
        spin_unlock(&s->lock);
    }
}

void wide_lock_all(void)
{
    for (int k = 0; k < WIDE_N_SHARDS; k++) spin_lock(&wshards[k].lock);
}

void wide_unlock_all(void)
{
    for (int k = WIDE_N_SHARDS - 1; k >= 0; k--) spin_unlock(&wshards[k].lock);
}

/* blocks_peek_unlocked's wide half: the heap walk's child only, no lock, bounded probe. */
int wide_peek_unlocked(uintptr_t ptr, struct block *out)
{
    uint64_t h = hash_ptr(ptr);
    const struct wshard *w = &wshards[h >> 61];
    size_t cap = w->cap;
    if (!cap || !w->slots || (cap & (cap - 1))) return 0;
    size_t mask = cap - 1, i = h & mask;
    for (size_t n = 0; n < cap && w->slots[i].key; n++, i = (i + 1) & mask) {
        if ((w->slots[i].key & ~BLOCK_F_OBJECT) == ptr) {
            *out = w->slots[i];
            return 1;
        }
    }
    return 0;
}
