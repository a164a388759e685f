/* The block table's private header: what the packed table (table.c) and the wide one
 * (table_wide.c) share. Only these two include it. */
#pragma once
#include "shim.h"

/* TLSPROF_MAX_BLOCKS caps the live blocks tracked (0 = no cap): bounds the shim's own memory and
 * lets tests prove the degraded mode. Past the cap inserts fail like a failed grow. */
extern size_t max_blocks;
extern size_t total_blocks; /* atomic, kept only when there is a cap */

static inline int over_cap(void)
{
    return max_blocks && __atomic_load_n(&total_blocks, __ATOMIC_RELAXED) >= max_blocks;
}

static inline void cap_count(int delta)
{
    if (max_blocks) __atomic_add_fetch(&total_blocks, (size_t)(long)delta, __ATOMIC_RELAXED);
}

static inline uint64_t hash_ptr(uintptr_t p)
{
    uint64_t h = (uint64_t)(p >> 4) * 0x9E3779B97F4A7C15ull;
    return h ^ (h >> 29);
}

/* ---- table_wide.c: the blocks the packed table cannot hold ---- */
extern size_t wide_count; /* atomic */
static inline size_t wide_blocks(void) { return __atomic_load_n(&wide_count, __ATOMIC_RELAXED); }
/* the common case (no wide block at all) decided inline, without a call */
static inline int wide_has_blocks(void) { return wide_blocks() != 0; }
int wide_insert(uintptr_t ptr, uint32_t owner, uint16_t site, uint16_t slack, struct block *replaced);
int wide_remove(uintptr_t ptr, struct block *out);
int wide_mark_object(uintptr_t ptr);
void wide_reset(void);
size_t wide_memory(void);
void wide_visit_owner(uint32_t owner, block_visit_fn fn, void *arg);
void wide_lock_all(void);
void wide_unlock_all(void);
int wide_peek_unlocked(uintptr_t ptr, struct block *out);
