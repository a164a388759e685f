/* Call sites: the (file, line) OpenSSL passes to its allocator, plus the scope the thread was in,
 * interned into a 16-bit id. The cause of a site is decided once, when it is first seen. Lookups
 * are lock-free (entries are published with a release store and never move); inserts take a lock. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "shim.h"

#define SITE_MASK (MAX_SITES - 1)

/* id 0 = overflow: the table is full */
struct site_counts site_counts[MAX_SITES][SITE_STRIPES];

void site_totals(uint16_t id, int64_t *bytes, int64_t *requested, int64_t *blocks)
{
    int64_t b = 0, r = 0, n = 0;
    for (int k = 0; k < SITE_STRIPES; k++) {
        b += __atomic_load_n(&site_counts[id][k].bytes, __ATOMIC_RELAXED);
        r += __atomic_load_n(&site_counts[id][k].requested, __ATOMIC_RELAXED);
        n += __atomic_load_n(&site_counts[id][k].blocks, __ATOMIC_RELAXED);
    }
    *bytes = b;
    *requested = r;
    *blocks = n;
}

struct site site_table[MAX_SITES] = {[0] = {.cause = C_OTHER, .used = 1}};
static uint32_t n_sites = 1;
static pthread_mutex_t sites_mutex = PTHREAD_MUTEX_INITIALIZER;

static inline uint32_t site_hash(const char *file, int line, uint8_t scope)
{
    uint64_t h = ((uint64_t)(uintptr_t)file * 0x9E3779B97F4A7C15ull) ^ ((uint64_t)line << 8 | scope);
    h *= 0xff51afd7ed558ccdull;
    return (uint32_t)(h >> 40) & SITE_MASK;
}

/* The hash index: slot -> site id + 1 (0 = empty), 2 bytes a slot; the key is compared in
 * site_table, which an id's entry is filled in before the index publishes it. Ids are dense for cheap
 * snapshots. (A 16-byte index entry holding the key cost 256 KiB, every page touched by the hash.) */
static uint16_t index_[MAX_SITES];

static inline int site_is(uint16_t id, const char *file, int line, uint8_t scope)
{
    const struct site *s = &site_table[id];
    return s->file == file && s->line == line && s->scope == scope;
}

uint16_t site_intern(const char *file, int line, uint8_t scope, size_t size)
{
    uint32_t i = site_hash(file, line, scope);
    for (uint32_t n = 0; n < MAX_SITES; n++, i = (i + 1) & SITE_MASK) {
        uint16_t slot = __atomic_load_n(&index_[i], __ATOMIC_ACQUIRE);
        if (!slot) break;
        if (site_is(slot - 1, file, line, scope)) return slot - 1;
    }
    /* which object holds the file name says which OpenSSL copy allocated (asked before taking our
     * lock: dladdr takes the loader's) */
    const char *library = NULL;
    Dl_info info;
    if (file && dladdr(file, &info) && info.dli_fname) {
        const char *slash = strrchr(info.dli_fname, '/');
        library = slash ? slash + 1 : info.dli_fname;
    }
    pthread_mutex_lock(&sites_mutex);
    i = site_hash(file, line, scope);
    uint16_t id = 0;
    for (uint32_t n = 0; n < MAX_SITES; n++, i = (i + 1) & SITE_MASK) {
        uint16_t slot = index_[i];
        if (!slot) {
            /* keep the index at most half full, and id 0 reserved */
            if (n_sites >= MAX_SITES / 2) break;
            id = (uint16_t)n_sites;
            struct site *s = &site_table[id];
            s->file = file;
            s->name = file ? strndup(file, 200) : NULL;
            s->line = line;
            s->scope = scope;
            s->cause = classify_cause(file, scope, size);
            s->library = library && *library ? strndup(library, 64) : NULL;
            __atomic_store_n(&s->used, 1, __ATOMIC_RELEASE);
            /* published only once filled: the snapshot thread reads ids below n_sites unlocked */
            __atomic_store_n(&n_sites, (uint32_t)id + 1, __ATOMIC_RELEASE);
            __atomic_store_n(&index_[i], (uint16_t)(id + 1), __ATOMIC_RELEASE);
            break;
        }
        if (site_is(slot - 1, file, line, scope)) {
            id = slot - 1;
            break;
        }
    }
    pthread_mutex_unlock(&sites_mutex);
    return id;
}

uint32_t sites_used(void) { return __atomic_load_n(&n_sites, __ATOMIC_ACQUIRE); }

void sites_describe(struct remote_layout *l)
{
    l->site_table = site_table;
    l->site_counts = site_counts;
    l->site_slots = &n_sites;
    l->site_size = sizeof(struct site);
    l->s_name = offsetof(struct site, name), l->s_line = offsetof(struct site, line);
    l->s_scope = offsetof(struct site, scope), l->s_cause = offsetof(struct site, cause);
    l->s_used = offsetof(struct site, used), l->s_library = offsetof(struct site, library);
    l->max_sites = MAX_SITES;
    l->site_stripes = SITE_STRIPES;
    l->site_counts_size = sizeof(struct site_counts);
}

void sites_reset_counters(void)
{
    for (uint32_t i = 0; i < MAX_SITES; i++) {
        for (int k = 0; k < SITE_STRIPES; k++) {
            if (!__atomic_load_n(&site_counts[i][k].blocks, __ATOMIC_RELAXED) &&
                !__atomic_load_n(&site_counts[i][k].bytes, __ATOMIC_RELAXED))
                continue; /* never touched: leave its page alone */
            __atomic_store_n(&site_counts[i][k].bytes, 0, __ATOMIC_RELAXED);
            __atomic_store_n(&site_counts[i][k].requested, 0, __ATOMIC_RELAXED);
            __atomic_store_n(&site_counts[i][k].blocks, 0, __ATOMIC_RELAXED);
        }
    }
}

void sites_lock(void) { pthread_mutex_lock(&sites_mutex); }
void sites_unlock(void) { pthread_mutex_unlock(&sites_mutex); }
