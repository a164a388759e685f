#pragma once
#include <malloc.h>

#include "common.h"
#include "table.h"

/* ---- measure.c: byte measures ----
 * What a block costs depends on who handed it out, and asking the wrong allocator about a pointer
 * reads memory outside the block:
 * - glibc's malloc: malloc_usable_size + its 8-byte chunk header (MEASURE_GLIBC, the footprint);
 * - another malloc for the whole process (jemalloc, tcmalloc preloaded or linked) that exports its
 *   own malloc_usable_size: the size class it rounded up to, headers are kept out of line
 *   (MEASURE_USABLE);
 * - an allocator the target gave OpenSSL (CRYPTO_set_mem_functions; its blocks are not malloc's
 *   chunk starts), or a malloc without a usable-size call: only the requested size is known
 *   (MEASURE_REQUESTED). It is kept in the block's 16-bit slack field (size_encode).
 * Each block records the measure it was counted with (in the top bits of its site id), so its free
 * subtracts exactly what its allocation added whatever was decided in between. */

/* Requested sizes in 16 bits: exact below 32 KiB (nearly every OpenSSL block), above that 11
 * significant bits and an exponent, rounded up (at most 0.1 % high, up to 2 GiB). */
static inline uint16_t size_encode(size_t n)
{
    if (n < 0x8000) return (uint16_t)n;
    unsigned shift = (unsigned)(64 - __builtin_clzll(n)) - 11;
    size_t m = (n + ((size_t)1 << shift) - 1) >> shift;
    if (m > 0x7ff) { /* rounding up carried into a 12th bit */
        shift++;
        m = (n + ((size_t)1 << shift) - 1) >> shift;
    }
    if (shift > 20) return 0xffff;
    return (uint16_t)(0x8000 | ((shift - 5) << 11) | m);
}

static inline size_t size_decode(uint16_t v) { return v < 0x8000 ? v : (size_t)(v & 0x7ff) << (((v >> 11) & 0xf) + 5); }

extern int malloc_measure;               /* the process's malloc, decided when tlsprof starts */
extern int crypto_measure;               /* blocks from the dynamic libcrypto; -1 = decide at the next one */
extern size_t (*usable_size_of)(void *); /* MEASURE_USABLE: the allocator's own malloc_usable_size */
void measure_reset(void);                /* decide the process's malloc again; libcrypto's at its next block */
int decide_crypto_measure(void);
int hooks_byte_measure(void); /* enum byte_measure of the process's OpenSSL blocks */
/* tlsprof's own allocator functions: a libcrypto given one of them still allocates with malloc */
void measure_own_allocators(const void *const *fns, int n);

static inline size_t usable_size(void *p, int measure)
{
    return measure == MEASURE_GLIBC ? malloc_usable_size(p) : usable_size_of(p);
}

/* glibc's chunk header says what malloc_usable_size says of a chunk in use (its size less 8, less
 * 16 if mmapped) without the call or the read of the next chunk's header: checked against it when
 * tlsprof starts (1 = they agree; memory tagging, for one, would not). */
extern int glibc_header_agrees;
/* 1: libcrypto's blocks are glibc's (crypto_measure) and their headers can be read (the above) */
extern int crypto_glibc_header;
static inline size_t glibc_header_usable(const void *p)
{
    size_t head = *(const size_t *)((uintptr_t)p - sizeof(size_t)); /* the header before the block */
    return (head & ~(size_t)7) - (head & 2 ? 16 : 8);
}

/* usable_size of a block just handed out, the cheapest way */
static inline size_t usable_size_fresh(void *p, int measure)
{
    return measure == MEASURE_GLIBC && glibc_header_agrees ? glibc_header_usable(p) : usable_size(p, measure);
}

static inline int libcrypto_measure(void)
{
    int m = __atomic_load_n(&crypto_measure, __ATOMIC_RELAXED);
    return LIKELY(m >= 0) ? m : decide_crypto_measure();
}
