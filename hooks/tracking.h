#pragma once
#include "common.h"
#include "measure.h"
#include "owners.h"
#include "sites.h"
#include "table.h"

/* ---- tracking.c: what the hooks hand over (memray's tracking_api, heaptrack's libheaptrack.h) ---- */
#define GLIBC_HEADER 8 /* per-block header glibc keeps before every chunk */
#define MAX_DEPTH 32

extern volatile int tlsprof_active;
extern int64_t untracked_bytes, untracked_blocks; /* atomics: table could not grow */
void hooks_reset(void);

struct scope {
    uint32_t owner;
    uint8_t kind;
};

struct tstate {
    int in_alloc;
    int depth;
    int stripe;     /* 1 + this thread's site-counter stripe; 0 until first needed */
    int stripe_own; /* the stripe is this thread's alone: plain adds, no locked instructions */
    /* the last call site interned: OpenSSL allocates from one site many times in a row (a stack
     * being filled, a CA store's certificates), and a hit skips the shared index (issue 18) */
    const char *site_file;
    int site_line;
    uint8_t site_scope;
    uint16_t site_id;
    struct scope stack[MAX_DEPTH];
};

/* hidden: one TLS block of this library, no lookup through the GOT */
extern __thread struct tstate tls __attribute__((visibility("hidden")));

/* ---- the scope stack: what the thread is doing inside OpenSSL, for whom ---- */
static inline void push(uint32_t owner, uint8_t kind)
{
    struct tstate *t = &tls;
    if (t->depth < MAX_DEPTH) t->stack[t->depth] = (struct scope){owner, kind};
    t->depth++;
}

static inline void pop(void) { tls.depth--; }

static inline struct scope current(void)
{
    struct tstate *t = &tls;
    if (t->depth <= 0) return (struct scope){0, SC_NONE};
    int top = t->depth <= MAX_DEPTH ? t->depth - 1 : MAX_DEPTH - 1;
    return t->stack[top];
}

/* Scopes nested in a scope of another owner (X509_STORE_load_file inside a context's trust-store
 * load) keep the outer owner. */
static inline uint32_t inherited_owner(void) { return current().owner; }

/* Count a block to an owner and site (measure: enum byte_measure), and take it back. */
void track_as(void *p, size_t n, uint32_t owner, uint16_t site, int measure);
void untrack(const struct block *b, void *p, size_t usable);

/* Inline, as they were before the split: the hook and these share one look-up of the thread's state
 * on every allocation (a call here cost ~15 instructions per block, callgrind). */
static inline uint16_t site_of(const char *file, int line, uint8_t scope, size_t n)
{
    struct tstate *t = &tls;
    if (t->site_file == file && t->site_line == line && t->site_scope == scope && file) return t->site_id;
    uint16_t id = site_intern(file, line, scope, n);
    if (id) { /* 0 = the index is full: ask again next time */
        t->site_file = file;
        t->site_line = line;
        t->site_scope = scope;
        t->site_id = id;
    }
    return id;
}

/* A new block: owner and cause from the top of the scope stack. */
static inline void track(void *p, size_t n, const char *file, int line)
{
    struct scope s = current();
    track_as(p, n, s.owner, site_of(file, line, s.kind, n), libcrypto_measure());
}

/* A block of a statically linked copy: outside any scope, its source file alone decides. */
static inline void track_static(void *p, size_t n, const char *file, int line)
{
    struct scope s = current();
    track_as(p, n, s.owner, site_of(file, line, s.kind == SC_NONE ? SC_STATIC : s.kind, n), malloc_measure);
}

/* Before the block goes back to the allocator (another thread may get the address at once). */
static inline void forget(void *p)
{
    struct block b;
    if (!blocks_remove((uintptr_t)p, &b)) return;
    untrack(&b, p, 0);
    if (b.key & BLOCK_F_OBJECT) {
        /* the SSL/SSL_CTX struct itself: the object is really gone (refcounts reached zero) */
        struct owner *o = owner_at(b.owner);
        objects_unbind((uintptr_t)p, b.owner);
        if (__atomic_load_n(&o->ptr, __ATOMIC_RELAXED) == (uintptr_t)p) owner_mark_dead(b.owner);
    }
}

enum realloc_via { VIA_CRYPTO_REALLOC, VIA_CRYPTO_CLEAR_REALLOC, VIA_LIBC };
void *realloc_common(void *old, size_t n, const char *file, int line, enum realloc_via via, size_t old_num);
void stripes_after_fork_child(void);
