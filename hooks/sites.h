#pragma once
#include "common.h"
#include "remote_layout.h"

/* ---- sites.c: (file, line, scope) -> small id, with live counters ---- */
struct site {
    const char *file; /* OpenSSL's pointer: the identity */
    char *name;       /* our copy: safe to read even if the library went away */
    int32_t line;
    uint8_t scope, cause;
    volatile uint8_t used;
    const char *library; /* basename of the object holding `file`: which OpenSSL copy */
};
#define MAX_SITES 16384 /* ids must stay below 1 << BLOCK_MEASURE_SHIFT */
uint16_t site_intern(const char *file, int line, uint8_t scope, size_t size);
extern struct site site_table[MAX_SITES];
static inline struct site *site_at(uint16_t id) { return &site_table[id]; }

/* A site's live counters, striped: threads on different cores allocating at the same call site
 * (every handshake does) would otherwise fight over one cache line. Each thread adds to its own
 * stripe (tracking.c: owned stripes take plain adds); a snapshot sums them. Only the pages of sites
 * in use are ever touched. */
#define SITE_STRIPES 8
struct site_counts {
    int64_t bytes, requested, blocks; /* atomics */
} __attribute__((aligned(64)));
extern struct site_counts site_counts[MAX_SITES][SITE_STRIPES];
void site_totals(uint16_t id, int64_t *bytes, int64_t *requested, int64_t *blocks);
uint32_t sites_used(void);
void sites_describe(struct remote_layout *l);
void sites_reset_counters(void);
void sites_lock(void);
void sites_unlock(void);
