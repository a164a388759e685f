/* An independent count of live OpenSSL heap bytes, for bench_accuracy.py (issue 7, item 6b).
 *
 *   gcc -O2 -shared -fPIC -o count_preload.so bench/count_preload.c -ldl
 *   LD_PRELOAD=./count_preload.so python3 workload.py   # reads bench_count_live() via ctypes
 *
 * Symbol interposition of CRYPTO_malloc/zalloc/realloc/clear_realloc/free/clear_free: libcrypto and
 * libssl call them through their PLT/GOT, so the preloaded definitions win. Only the outermost call
 * of a thread counts (CRYPTO_zalloc calls CRYPTO_malloc...). A block counts its heap footprint,
 * malloc_usable_size + 8 (glibc's header), as tlsprof does; no table: allocated minus freed.
 * The real functions come from libcrypto itself, dlopen("libcrypto.so.3", RTLD_NOLOAD): Python
 * loads it RTLD_LOCAL, so dlsym(RTLD_NEXT) would find nothing. Completely separate code from hooks/. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <malloc.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#define HDR 8

static void *(*r_malloc)(size_t, const char *, int);
static void *(*r_zalloc)(size_t, const char *, int);
static void *(*r_realloc)(void *, size_t, const char *, int);
static void *(*r_clear_realloc)(void *, size_t, size_t, const char *, int);
static void (*r_free)(void *, const char *, int);
static void (*r_clear_free)(void *, size_t, const char *, int);

static pthread_once_t once = PTHREAD_ONCE_INIT;
static int64_t live_bytes, live_blocks, calls;
static __thread int depth;

static void resolve(void)
{
    void *h = dlopen("libcrypto.so.3", RTLD_NOW | RTLD_NOLOAD);
    if (!h) {
        fprintf(stderr, "count_preload: libcrypto.so.3 is not loaded yet\n");
        abort();
    }
    r_malloc = dlsym(h, "CRYPTO_malloc");
    r_zalloc = dlsym(h, "CRYPTO_zalloc");
    r_realloc = dlsym(h, "CRYPTO_realloc");
    r_clear_realloc = dlsym(h, "CRYPTO_clear_realloc");
    r_free = dlsym(h, "CRYPTO_free");
    r_clear_free = dlsym(h, "CRYPTO_clear_free");
    if (!r_malloc || !r_zalloc || !r_realloc || !r_clear_realloc || !r_free || !r_clear_free) abort();
}

static inline int64_t foot(void *p) { return p ? (int64_t)malloc_usable_size(p) + HDR : 0; }
static inline void add(int64_t bytes, int64_t blocks)
{
    __atomic_add_fetch(&live_bytes, bytes, __ATOMIC_RELAXED);
    __atomic_add_fetch(&live_blocks, blocks, __ATOMIC_RELAXED);
    __atomic_add_fetch(&calls, 1, __ATOMIC_RELAXED);
}

void *CRYPTO_malloc(size_t n, const char *file, int line)
{
    pthread_once(&once, resolve);
    if (depth) return r_malloc(n, file, line);
    depth++;
    void *p = r_malloc(n, file, line);
    if (p) add(foot(p), 1);
    depth--;
    return p;
}

void *CRYPTO_zalloc(size_t n, const char *file, int line)
{
    pthread_once(&once, resolve);
    if (depth) return r_zalloc(n, file, line);
    depth++;
    void *p = r_zalloc(n, file, line);
    if (p) add(foot(p), 1);
    depth--;
    return p;
}

static void *realloc_common(void *old, size_t old_num, size_t n, const char *file, int line, int clear)
{
    pthread_once(&once, resolve);
    if (depth) return clear ? r_clear_realloc(old, old_num, n, file, line) : r_realloc(old, n, file, line);
    depth++;
    int64_t before = foot(old);
    void *p = clear ? r_clear_realloc(old, old_num, n, file, line) : r_realloc(old, n, file, line);
    if (p) add(foot(p) - before, old ? 0 : 1);          /* moved or grown: one block still */
    else if (old && n == 0) add(-before, -1);           /* realloc(p, 0) freed it */
    depth--;
    return p;
}

void *CRYPTO_realloc(void *old, size_t n, const char *file, int line)
{
    return realloc_common(old, 0, n, file, line, 0);
}

void *CRYPTO_clear_realloc(void *old, size_t old_num, size_t n, const char *file, int line)
{
    return realloc_common(old, old_num, n, file, line, 1);
}

void CRYPTO_free(void *p, const char *file, int line)
{
    pthread_once(&once, resolve);
    if (depth || !p) return r_free(p, file, line);
    depth++;
    add(-foot(p), -1);
    r_free(p, file, line);
    depth--;
}

void CRYPTO_clear_free(void *p, size_t num, const char *file, int line)
{
    pthread_once(&once, resolve);
    if (depth || !p) return r_clear_free(p, num, file, line);
    depth++;
    add(-foot(p), -1);
    r_clear_free(p, num, file, line);
    depth--;
}

/* For the workload (ctypes.CDLL(None).bench_count_live). */
void bench_count_live(int64_t *bytes, int64_t *blocks, int64_t *ncalls)
{
    *bytes = __atomic_load_n(&live_bytes, __ATOMIC_RELAXED);
    *blocks = __atomic_load_n(&live_blocks, __ATOMIC_RELAXED);
    *ncalls = __atomic_load_n(&calls, __ATOMIC_RELAXED);
}
