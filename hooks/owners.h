#pragma once
#include "common.h"

/* ---- owners.c: contexts and connections, indexed by a small integer ---- */
struct cause_counters {
    int64_t bytes;     /* heap footprint: usable size + allocator header */
    int64_t requested; /* what OpenSSL asked for */
    int64_t blocks;
};

struct owner {
    uint64_t serial; /* unique for the process lifetime; the id in reports */
    uintptr_t ptr;   /* SSL* or SSL_CTX* */
    uint32_t ctx;    /* for a connection: owner index of its context (0 = unknown) */
    uint8_t kind, state, alive, pre_attach;
    int32_t fd;
    uint32_t flags;    /* OWNER_F_* */
    uint64_t mode;     /* SSL_MODE_* bits seen set through *_ctrl */
    uint64_t io_calls; /* atomic: SSL_read/write/peek calls that moved data (traffic, idleness) */
    uint64_t created_ns, dead_ns;
    int64_t total_blocks;              /* atomic: recycling waits for zero */
    struct cause_counters c[N_CAUSES]; /* atomics */
};
#define OWNER_F_IN_USE 1u
#define OWNER_F_MODE_KNOWN 2u
#define MAX_OWNERS (1u << 20)

void owners_and_objects_reset(void);
uint32_t owner_new(uint8_t kind, uintptr_t ptr, uint32_t ctx, int pre_attach);
#define OWNER_CHUNK 256
#define OWNER_CHUNKS (MAX_OWNERS / OWNER_CHUNK)
extern struct owner *owner_chunks[OWNER_CHUNKS];
extern struct owner process_owner;

/* Every allocation looks its owner up: inline, one load of a chunk that never moves. */
static inline struct owner *owner_at(uint32_t idx)
{
    if (idx == 0) return &process_owner;
    struct owner *c = __atomic_load_n(&owner_chunks[idx / OWNER_CHUNK], __ATOMIC_ACQUIRE);
    return c ? &c[idx % OWNER_CHUNK] : &process_owner;
}
uint32_t owner_count_slots(void);
void owner_mark_dead(uint32_t idx);
extern uint64_t io_calls_of_dead; /* atomic: io_calls of connections already freed */
void owners_sweep(void);
void owners_lock_all(void);
void owners_unlock_all(void);

/* object pointer (SSL, SSL_CTX) -> owner index */
uint32_t objects_find(uintptr_t ptr);
void objects_bind(uintptr_t ptr, uint32_t owner);
void objects_unbind(uintptr_t ptr, uint32_t owner);
