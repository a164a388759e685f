/* tlsprof shim: shared declarations. The shim lives inside the profiled process: it must never
 * crash it, never re-enter itself, and never call into libpython or link against libssl. */
#pragma once
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#define EXPORT __attribute__((visibility("default")))
#define LIKELY(x) __builtin_expect(!!(x), 1)
#define UNLIKELY(x) __builtin_expect(!!(x), 0)

/* Fixed cause vocabulary; the order is the wire order (see tlsprof/causes.py). */
enum cause {
    C_CA_STORE, C_OWN_CERT, C_PEER_CERT, C_RECORD_BUFFERS, C_COMPRESSION,
    C_HANDSHAKE, C_SESSION, C_CIPHER_STATE, C_BIO, C_CONNECTION, C_CONTEXT, C_THREAD_STATE,
    C_LIBRARY, C_OTHER, N_CAUSES
};
/* Bytes of these causes belong to the process whatever scope allocated them: one-time library
 * state and per-thread state outlive any one context or connection. */
static inline int cause_is_process_wide(uint8_t cause) { return cause == C_LIBRARY || cause == C_THREAD_STATE; }

/* What the thread is doing inside OpenSSL when it allocates: decides the cause with the call site. */
enum scope_kind {
    SC_NONE, SC_CTX_NEW, SC_CTX, SC_CA, SC_OWN_CERT, SC_SSL_NEW, SC_HANDSHAKE, SC_IO,
    SC_SHUTDOWN, SC_SSL_CTRL, SC_SSL_FREE,
    SC_STATIC, /* a statically linked copy: no entry point is seen, the source file alone decides */
    SC_LIBRARY, /* OpenSSL initialising itself or filling its method caches (init, fetch, providers) */
    SC_THREAD,  /* per-thread state being created (the DRBGs behind RAND_bytes) */
    N_SCOPES
};

enum owner_kind { OWNER_PROCESS = 0, OWNER_CTX = 1, OWNER_SSL = 2 };
enum conn_state { STATE_HANDSHAKE = 0, STATE_ESTABLISHED = 1, STATE_SHUTDOWN = 2 };

/* ---- causes.c ---- */
/* first_size: the requested size of the first block seen at the site (one site, one kind of block) */
uint8_t classify_cause(const char *file, uint8_t scope, size_t first_size);
extern const char *const cause_names[N_CAUSES];
extern const char *const scope_names[N_SCOPES];

/* ---- owners.c: contexts and connections, indexed by a small integer ---- */
struct cause_counters {
    int64_t bytes;      /* heap footprint: usable size + allocator header */
    int64_t requested;  /* what OpenSSL asked for */
    int64_t blocks;
};

struct owner {
    uint64_t serial;        /* unique for the process lifetime; the id in reports */
    uintptr_t ptr;          /* SSL* or SSL_CTX* */
    uint32_t ctx;           /* for a connection: owner index of its context (0 = unknown) */
    uint8_t kind, state, alive, pre_attach;
    int32_t fd;
    uint32_t flags;         /* OWNER_F_* */
    uint64_t mode;          /* SSL_MODE_* bits seen set through *_ctrl */
    uint64_t io_calls;      /* atomic: SSL_read/write/peek calls that moved data (traffic, idleness) */
    uint64_t created_ns, dead_ns;
    int64_t total_blocks;   /* atomic: recycling waits for zero */
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

/* ---- table.c: live blocks, sharded open addressing (packed 10-byte slots; struct block is the
 * unpacked form the interface hands out) ---- */
struct block {
    uintptr_t key;      /* pointer | BLOCK_F_OBJECT */
    uint32_t owner;
    uint16_t site;
    uint16_t slack;     /* usable - requested (< 64 KiB on glibc); MEASURE_REQUESTED: the requested
                           size itself, encoded (hooks.c size_encode) */
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

/* ---- sites.c: (file, line, scope) -> small id, with live counters ---- */
struct site {
    const char *file;   /* OpenSSL's pointer: the identity */
    char *name;         /* our copy: safe to read even if the library went away */
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
 * stripe (hooks.c: owned stripes take plain adds); a snapshot sums them. Only the pages of sites
 * in use are ever touched. */
#define SITE_STRIPES 8
struct site_counts {
    int64_t bytes, requested, blocks; /* atomics */
} __attribute__((aligned(64)));
extern struct site_counts site_counts[MAX_SITES][SITE_STRIPES];
void stripes_after_fork_child(void);
void site_totals(uint16_t id, int64_t *bytes, int64_t *requested, int64_t *blocks);
uint32_t sites_used(void);
void sites_reset_counters(void);
void sites_lock(void);
void sites_unlock(void);

/* ---- interpose.c: GOT/relocation patching, one engine for preload and attach ---- */
struct hook_def {
    const char *name;
    void *hook;
    void **real;
    int patch_definer;  /* also patch references inside the object that defines it */
};
extern struct hook_def hook_defs[];
extern const int n_hook_defs;
int interpose_install(void);   /* patch every loaded object; returns slots patched */
int interpose_refresh(void);   /* after dlopen: patch objects not seen yet */
int interpose_remove(void);    /* restore every slot; returns slots restored */
void *interpose_lookup(const char *name); /* definition in the loaded objects, or NULL */
int interpose_slots(void);
int interpose_foreign(void);
void interpose_lock(void);
void interpose_unlock(void);

/* ---- hooks.c ---- */
extern volatile int tlsprof_active;
extern int64_t untracked_bytes, untracked_blocks; /* atomics: table could not grow */
void hooks_reset(void);
int hooks_byte_measure(void); /* enum byte_measure of the process's OpenSSL blocks */
void hooks_resolve_helpers(void);

/* ---- static_copies.c: OpenSSL linked into another object (node, cryptography's _rust.abi3.so) ---- */
void static_copies_scan(int at_start);
int static_copies_count(void);
void static_copy_describe(int i, const char **kind, const char **status, const char **path);
int static_copy_resolve(int i, const char *const *names, int n, void **out);
int static_copy_is_static(int i);
int tlsprof_preloaded(void); /* started by the preload constructor, before main() */

/* ---- pytrace.c: --tracemalloc ---- */
void pytrace_lock(void);
int pytrace_allocator(const void *fn); /* --tracemalloc's own memory functions (glibc chunks) */
void pytrace_unlock(void);

/* ---- pyagent.c: the Python agent after an attach ---- */
void pyagent_start(const char *channel_dir);
void pyagent_stop(void);

/* ---- heapwalk.c: WALK, the memory that predates the hooks (docs/heap-walk.md) ---- */
char *heapwalk_run(int timeout_ms); /* malloc'd text answer; never NULL unless out of memory */

/* ---- channel.c ---- */
int channel_start(const char *dir);
void channel_stop(void);
int tlsprof_channel_pause(void);
int channel_running(void);
void tlsprof_channel_resume(void);
void channel_after_fork_child(void);

uint64_t now_ns(void);
