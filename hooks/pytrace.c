/* tracemalloc-ext (`tlsprof run --tracemalloc`): OpenSSL blocks shown to tracemalloc.
 *
 * Installed by the in-target Python agent (tlsprof/agent/agent.py) with CRYPTO_set_mem_functions,
 * before OpenSSL's first allocation: our malloc/realloc/free wrappers sit under CRYPTO_malloc (the
 * shim's own hooks, one level up, still count everything as before) and register each block with
 * PyTraceMalloc_Track(TLSPROF_TM_DOMAIN, ptr, footprint) so `tracemalloc.take_snapshot()` shows
 * OpenSSL bytes against the Python lines that caused them. Footprint = malloc_usable_size + 8, the
 * same bytes the report counts.
 *
 * No libpython link: the C API is resolved with dlsym(RTLD_DEFAULT) at install time, so the shim
 * still loads into any process. GIL: CPython 3.11's PyTraceMalloc_Track takes the GIL itself
 * (PyGILState_Ensure). Waiting for the GIL inside an OpenSSL allocation can deadlock (this thread
 * may hold an OpenSSL lock that the GIL holder is about to take), so blocks allocated by a thread
 * that does not hold the GIL (e.g. inside _ssl's Py_BEGIN_ALLOW_THREADS: CA loading, handshakes)
 * are parked in a pending table and registered by that same thread once it holds the GIL again:
 * at its next GIL-holding OpenSSL allocation, or when the agent's wrappers around the _ssl calls
 * that release the GIL call tlsprof_pytrace_flush(). Then the traceback is that thread's Python
 * stack, i.e. the line that made the call. PyTraceMalloc_Untrack takes no GIL (only tracemalloc's
 * table lock, never held across OpenSSL calls): frees untrack directly. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <malloc.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/syscall.h>

#include "shim.h"

#define TM_HEADER 8
#define PENDING_CAP (1u << 20) /* power of two */

typedef int (*track_fn)(unsigned int, uintptr_t, size_t);
typedef int (*untrack_fn)(unsigned int, uintptr_t);
typedef int (*gilcheck_fn)(void);
typedef int (*setmem_fn)(void *(*)(size_t, const char *, int), void *(*)(void *, size_t, const char *, int),
                         void (*)(void *, const char *, int));

static track_fn py_track;
static untrack_fn py_untrack;
static gilcheck_fn py_gil_check;
static unsigned int tm_domain;
static volatile int tm_active;

struct pending {
    uintptr_t ptr;
    size_t size;
    int tid;
};
static struct pending *pend; /* open addressing, ptr 0 = empty, 1 = tombstone */
static pthread_mutex_t pend_lock = PTHREAD_MUTEX_INITIALIZER;
static int64_t pend_count, pend_dropped, tracked_calls;
static __thread int my_pending; /* how many of the table's entries are this thread's */
static __thread int my_tid;
static __thread uintptr_t *my_list; /* this thread's parked pointers (some may be freed since) */
static __thread size_t my_len, my_cap;

static int tid(void)
{
    if (!my_tid) my_tid = (int)syscall(SYS_gettid);
    return my_tid;
}

static size_t slot_of(uintptr_t p) { return (size_t)((p >> 4) * 0x9E3779B97F4A7C15ull) & (PENDING_CAP - 1); }

static void pending_add(uintptr_t p, size_t size)
{
    pthread_mutex_lock(&pend_lock);
    if (!pend || pend_count >= (int64_t)(PENDING_CAP / 2)) {
        pend_dropped++;
        pthread_mutex_unlock(&pend_lock);
        return;
    }
    size_t i = slot_of(p);
    while (pend[i].ptr > 1 && pend[i].ptr != p) i = (i + 1) & (PENDING_CAP - 1);
    if (my_len == my_cap) {
        size_t cap = my_cap ? my_cap * 2 : 1024;
        uintptr_t *grown = realloc(my_list, cap * sizeof *grown);
        if (!grown) {
            pend_dropped++;
            pthread_mutex_unlock(&pend_lock);
            return;
        }
        my_list = grown;
        my_cap = cap;
    }
    if (pend[i].ptr != p) pend_count++;
    pend[i] = (struct pending){p, size, tid()};
    my_list[my_len++] = p;
    my_pending++;
    pthread_mutex_unlock(&pend_lock);
}

/* 1 if p was pending (and is no more) */
static int pending_remove(uintptr_t p)
{
    if (!pend_count) return 0;
    int found = 0;
    pthread_mutex_lock(&pend_lock);
    size_t i = slot_of(p);
    for (size_t n = 0; n < PENDING_CAP && pend[i].ptr; n++, i = (i + 1) & (PENDING_CAP - 1)) {
        if (pend[i].ptr == p) {
            if (pend[i].tid == tid() && my_pending > 0) my_pending--;
            pend[i].ptr = 1;
            pend_count--;
            found = 1;
            break;
        }
    }
    pthread_mutex_unlock(&pend_lock);
    return found;
}

/* Register this thread's parked blocks; the caller holds the GIL. Returns how many. */
EXPORT int tlsprof_pytrace_flush(void)
{
    if (!tm_active || !my_len || !pend) return 0;
    int me = tid(), done = 0;
    pthread_mutex_lock(&pend_lock);
    for (size_t k = 0; k < my_len; k++) {
        uintptr_t p = my_list[k];
        size_t i = slot_of(p);
        for (size_t n = 0; n < PENDING_CAP && pend[i].ptr; n++, i = (i + 1) & (PENDING_CAP - 1)) {
            if (pend[i].ptr == p) {
                if (pend[i].tid == me) {
                    py_track(tm_domain, p, pend[i].size);
                    pend[i].ptr = 1;
                    pend_count--;
                    done++;
                }
                break;
            }
        }
    }
    my_len = 0;
    my_pending = 0;
    pthread_mutex_unlock(&pend_lock);
    __atomic_add_fetch(&tracked_calls, done, __ATOMIC_RELAXED);
    return done;
}

static void tm_track(void *p)
{
    size_t size = malloc_usable_size(p) + TM_HEADER;
    if (py_gil_check()) {
        if (UNLIKELY(my_len)) tlsprof_pytrace_flush();
        py_track(tm_domain, (uintptr_t)p, size);
        __atomic_add_fetch(&tracked_calls, 1, __ATOMIC_RELAXED);
    } else {
        pending_add((uintptr_t)p, size);
    }
}

static void tm_untrack(void *p)
{
    if (!pending_remove((uintptr_t)p)) py_untrack(tm_domain, (uintptr_t)p);
}

static void *tm_malloc(size_t n, const char *file, int line)
{
    void *p = malloc(n);
    if (p && tm_active) tm_track(p);
    return p;
}

static void *tm_realloc(void *old, size_t n, const char *file, int line)
{
    if (old && tm_active) tm_untrack(old);
    void *p = realloc(old, n);
    if (tm_active) {
        if (p) tm_track(p);
        else if (old && n) tm_track(old); /* failed: the old block lives on */
    }
    return p;
}

static void tm_free(void *p, const char *file, int line)
{
    if (p && tm_active) tm_untrack(p);
    free(p);
}

/* The allocator this file gives OpenSSL serves glibc's malloc chunks: footprints stay measurable. */
int pytrace_allocator(const void *fn) { return fn == (const void *)tm_malloc; }

/* 0 = installed; -1 = no CPython tracemalloc C API in this process; -2 = no libcrypto found;
 * -3 = too late: OpenSSL has allocated already (CRYPTO_set_mem_functions refused); -4 = no memory. */
EXPORT int tlsprof_pytrace_install(unsigned int domain)
{
    py_track = (track_fn)dlsym(RTLD_DEFAULT, "PyTraceMalloc_Track");
    py_untrack = (untrack_fn)dlsym(RTLD_DEFAULT, "PyTraceMalloc_Untrack");
    py_gil_check = (gilcheck_fn)dlsym(RTLD_DEFAULT, "PyGILState_Check");
    if (!py_track || !py_untrack || !py_gil_check) return -1;
    setmem_fn setmem = (setmem_fn)interpose_lookup("CRYPTO_set_mem_functions");
    if (!setmem) {
        void *h = dlopen("libcrypto.so.3", RTLD_NOW | RTLD_NOLOAD);
        if (!h) h = dlopen("libcrypto.so.3", RTLD_NOW);
        if (h) setmem = (setmem_fn)dlsym(h, "CRYPTO_set_mem_functions");
    }
    if (!setmem) return -2;
    if (!pend) {
        pend = calloc(PENDING_CAP, sizeof *pend);
        if (!pend) return -4;
    }
    tm_domain = domain;
    if (setmem(tm_malloc, tm_realloc, tm_free) != 1) return -3;
    tm_active = 1;
    return 0;
}

/* Stop registering (e.g. at interpreter exit); the wrappers stay installed and just allocate. */
EXPORT void tlsprof_pytrace_disable(void) { tm_active = 0; }

EXPORT int tlsprof_pytrace_stats(int64_t *out3)
{
    out3[0] = __atomic_load_n(&tracked_calls, __ATOMIC_RELAXED);
    out3[1] = pend_count;
    out3[2] = pend_dropped;
    return tm_active;
}

/* fork: taken before, released after in both processes (main.c), so no child inherits it held */
void pytrace_lock(void) { pthread_mutex_lock(&pend_lock); }
void pytrace_unlock(void) { pthread_mutex_unlock(&pend_lock); }
