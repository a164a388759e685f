/* What every module of the shim shares: the vocabularies (causes, scopes, owner kinds, states) and a
 * few helpers. No module above it is known here. */
#pragma once
#include <pthread.h>
#include <sched.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#define EXPORT __attribute__((visibility("default")))
#define LIKELY(x) __builtin_expect(!!(x), 1)
#define UNLIKELY(x) __builtin_expect(!!(x), 0)

/* One turn of a wait for another thread's step of a few instructions: pause, and after 64 turns
 * yield (that thread was preempted: let it run). */
static inline void spin_backoff(unsigned *spins)
{
    if (++*spins < 64) __builtin_ia32_pause();
    else sched_yield();
}

/* A test-and-test-and-set spinlock for locks held a few instructions (a table shard for one probe):
 * a mutex's call and futex bookkeeping cost more than the work it guards. */
static inline void spin_lock(int *l)
{
    for (unsigned spins = 0; __atomic_exchange_n(l, 1, __ATOMIC_ACQUIRE);)
        while (__atomic_load_n(l, __ATOMIC_RELAXED)) spin_backoff(&spins);
}

static inline void spin_unlock(int *l) { __atomic_store_n(l, 0, __ATOMIC_RELEASE); }

/* Fixed cause vocabulary; the order is the wire order (see tlsprof/causes.py). */
enum cause {
    C_CA_STORE,
    C_OWN_CERT,
    C_PEER_CERT,
    C_RECORD_BUFFERS,
    C_COMPRESSION,
    C_HANDSHAKE,
    C_SESSION,
    C_CIPHER_STATE,
    C_BIO,
    C_CONNECTION,
    C_CONTEXT,
    C_THREAD_STATE,
    C_LIBRARY,
    C_OTHER,
    N_CAUSES
};
/* Bytes of these causes belong to the process whatever scope allocated them: one-time library
 * state and per-thread state outlive any one context or connection. */
static inline int cause_is_process_wide(uint8_t cause) { return cause == C_LIBRARY || cause == C_THREAD_STATE; }

/* What the thread is doing inside OpenSSL when it allocates: decides the cause with the call site. */
enum scope_kind {
    SC_NONE,
    SC_CTX_NEW,
    SC_CTX,
    SC_CA,
    SC_OWN_CERT,
    SC_SSL_NEW,
    SC_HANDSHAKE,
    SC_IO,
    SC_SHUTDOWN,
    SC_SSL_CTRL,
    SC_SSL_FREE,
    SC_STATIC,  /* a statically linked copy: no entry point is seen, the source file alone decides */
    SC_LIBRARY, /* OpenSSL initialising itself or filling its method caches (init, fetch, providers) */
    SC_THREAD,  /* per-thread state being created (the DRBGs behind RAND_bytes) */
    N_SCOPES
};

enum owner_kind { OWNER_PROCESS = 0, OWNER_CTX = 1, OWNER_SSL = 2 };
enum conn_state { STATE_HANDSHAKE = 0, STATE_ESTABLISHED = 1, STATE_SHUTDOWN = 2 };

static inline uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}
