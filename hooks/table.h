#pragma once
#include "common.h"

/* ---- table.c: live blocks, sharded open addressing (packed 10-byte slots; struct block is the
 * unpacked form the interface hands out) ---- */
struct block {
    uintptr_t key; /* pointer | BLOCK_F_OBJECT */
    uint32_t owner;
    uint16_t site;
    uint16_t slack; /* usable - requested (< 64 KiB on glibc); MEASURE_REQUESTED: the requested
                           size itself, encoded (measure.h size_encode) */
};
#define BLOCK_F_OBJECT ((uintptr_t)1) /* the block is the SSL/SSL_CTX struct itself */
/* Site ids fit in 14 bits (MAX_SITES): a block's top two site bits say how it was measured. */
enum byte_measure { MEASURE_GLIBC = 0, MEASURE_USABLE = 1, MEASURE_REQUESTED = 2 };
#define BLOCK_MEASURE_SHIFT 14
#define BLOCK_SITE_MASK ((uint16_t)((1u << BLOCK_MEASURE_SHIFT) - 1))
static inline uint16_t block_site(const struct block *b) { return b->site & BLOCK_SITE_MASK; }
int blocks_insert(uintptr_t ptr, uint32_t owner, uint16_t site, uint16_t slack, struct block *replaced);
int blocks_remove(uintptr_t ptr, struct block *out);
int blocks_mark_object(uintptr_t ptr);
int blocks_peek_unlocked(uintptr_t ptr, struct block *out); /* the walk child only */
void blocks_reset(void);
size_t blocks_memory(void);
size_t blocks_count(void);
size_t blocks_count_wide(void); /* blocks the packed table could not hold */
void blocks_lock_all(void);
void blocks_unlock_all(void);
typedef void (*block_visit_fn)(const struct block *, void *);
void blocks_visit_owner(uint32_t owner, block_visit_fn fn, void *arg);
