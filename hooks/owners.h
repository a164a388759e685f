#pragma once
#include "common.h"
#include "remote_layout.h"

/* ---- owners.c: contexts and connections, indexed by a small integer ---- */
/* An owner's live counters for one cause. A context's or the process's may pass 2 GiB (a session
 * cache, a process-wide cause): 64 bits, in an array by cause made on first use (owner_wide). */
struct cause_counters {
    int64_t bytes;     /* heap footprint: usable size + allocator header */
    int64_t requested; /* what OpenSSL asked for */
    int64_t blocks;
};
/* A connection's stay far below 2 GiB, and it uses ~7 of the 14 causes over its life (an idle one
 * keeps connection, handshake, session, cipher state, BIO and peer certificate; record buffers come
 * and go): OWNER_SLOTS narrow counters sit in its record, each claimed by a cause on first use, and
 * a connection that needs more uses the array too. Issue 18: the record was 408 B with wide counters
 * for every cause, 8.5 B per live block on 10k connections. */
struct slot_counters {
    int32_t bytes;
    int32_t over; /* bytes - requested: the allocator's rounding and header */
    int32_t blocks;
};
#define OWNER_SLOTS 8

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
    int64_t total_blocks;                   /* atomic: recycling waits for zero */
    uint8_t slot_cause[OWNER_SLOTS];        /* atomic: cause + 1 of each slot, 0 free (connections) */
    struct slot_counters slot[OWNER_SLOTS]; /* atomics */
    struct cause_counters *wide;            /* atomic: N_CAUSES counters, made on first use */
};
#define OWNER_F_IN_USE 1u
#define OWNER_F_MODE_KNOWN 2u
#define OWNER_F_MEMORY_BIOS 4u  /* both BIOs are memory BIOs (asyncio's SSLObject): no call ever waits */
#define OWNER_F_SOCKET_BIOS 8u  /* both BIOs are socket BIOs on one fd (SSL_set_fd, or SSL_set_bio) */
#define OWNER_F_NONBLOCKING 16u /* ... and that fd did not block when last looked at: no call waits */
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
void owners_describe(struct remote_layout *l); /* where and how owners are laid out */
struct cause_counters *owner_wide(struct owner *o, uint8_t cause);
extern size_t owner_wide_bytes; /* atomic: what the owner_wide arrays hold */

/* A connection's slot for `cause`, claimed now if the cause is new to it; NULL once every slot is
 * another cause's. Each cause lives in one place: its slot while one is free, the wide array only
 * once all are taken (slots are never given back while the owner lives). */
static inline struct slot_counters *owner_slot(struct owner *o, uint8_t cause)
{
    uint8_t want = (uint8_t)(cause + 1);
    for (;;) {
        int k = 0;
        for (; k < OWNER_SLOTS; k++) {
            uint8_t c = __atomic_load_n(&o->slot_cause[k], __ATOMIC_ACQUIRE);
            if (c == want) return &o->slot[k];
            if (!c) break;
        }
        if (k == OWNER_SLOTS) return NULL;
        uint8_t seen = 0;
        if (__atomic_compare_exchange_n(&o->slot_cause[k], &seen, want, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE) ||
            seen == want)
            return &o->slot[k];
        /* another thread took that slot for another cause: look again */
    }
}

/* Add (or, negative, take back) blocks of one cause to an owner's counters. */
static inline void owner_add(struct owner *o, uint8_t cause, int64_t bytes, int64_t requested, int64_t blocks)
{
    struct slot_counters *s = __atomic_load_n(&o->kind, __ATOMIC_RELAXED) == OWNER_SSL ? owner_slot(o, cause) : NULL;
    if (s) {
        __atomic_add_fetch(&s->bytes, (int32_t)bytes, __ATOMIC_RELAXED);
        __atomic_add_fetch(&s->over, (int32_t)(bytes - requested), __ATOMIC_RELAXED);
        __atomic_add_fetch(&s->blocks, (int32_t)blocks, __ATOMIC_RELAXED);
    } else {
        struct cause_counters *c = owner_wide(o, cause);
        __atomic_add_fetch(&c->bytes, bytes, __ATOMIC_RELAXED);
        __atomic_add_fetch(&c->requested, requested, __ATOMIC_RELAXED);
        __atomic_add_fetch(&c->blocks, blocks, __ATOMIC_RELAXED);
    }
    __atomic_add_fetch(&o->total_blocks, blocks, __ATOMIC_RELEASE);
}

/* Read side (snapshots): fn for each cause this owner has counters for (slots first). */
typedef void (*cause_visit_fn)(uint8_t cause, int64_t bytes, int64_t requested, int64_t blocks, void *arg);
void owner_visit_causes(struct owner *o, cause_visit_fn fn, void *arg);
void owner_mark_dead(uint32_t idx);
extern uint64_t io_calls_of_dead; /* atomic: io_calls of connections already freed */
void owners_sweep(void);
void owners_lock_all(void);
void owners_unlock_all(void);

/* object pointer (SSL, SSL_CTX) -> owner index */
uint32_t objects_find(uintptr_t ptr);
void objects_bind(uintptr_t ptr, uint32_t owner);
void objects_unbind(uintptr_t ptr, uint32_t owner);
