/* The allocator hooks. They count only the outermost call of a thread (CRYPTO_zalloc calls
 * CRYPTO_malloc through the PLT, CRYPTO_clear_free calls CRYPTO_free...), so each block is seen
 * once, and hand the block to tracking.c. Frees of blocks we never saw pass straight through. */
#include "shim.h"

/* ---- allocator hooks ---- */
void *hook_CRYPTO_malloc(size_t n, const char *file, int line)
{
    struct tstate *t = this_thread();
    if (t->in_alloc || !tlsprof_active) return real_CRYPTO_malloc(n, file, line);
    t->in_alloc = 1;
    void *p = real_CRYPTO_malloc(n, file, line);
    if (p) track_in(t, p, n, file, line);
    t->in_alloc = 0;
    return p;
}

void *hook_CRYPTO_zalloc(size_t n, const char *file, int line)
{
    struct tstate *t = this_thread();
    if (t->in_alloc || !tlsprof_active) return real_CRYPTO_zalloc(n, file, line);
    t->in_alloc = 1;
    void *p = real_CRYPTO_zalloc(n, file, line);
    if (p) track_in(t, p, n, file, line);
    t->in_alloc = 0;
    return p;
}

void hook_CRYPTO_free(void *p, const char *file, int line)
{
    struct tstate *t = this_thread();
    if (p && !t->in_alloc && tlsprof_active) {
        t->in_alloc = 1;
        forget_in(t, p);
        real_CRYPTO_free(p, file, line);
        t->in_alloc = 0;
        return;
    }
    real_CRYPTO_free(p, file, line);
}

void hook_CRYPTO_clear_free(void *p, size_t num, const char *file, int line)
{
    struct tstate *t = this_thread();
    if (p && !t->in_alloc && tlsprof_active) {
        t->in_alloc = 1;
        forget_in(t, p);
        real_CRYPTO_clear_free(p, num, file, line);
        t->in_alloc = 0;
        return;
    }
    real_CRYPTO_clear_free(p, num, file, line);
}

void *hook_CRYPTO_realloc(void *old, size_t n, const char *file, int line)
{
    struct tstate *t = this_thread();
    if (t->in_alloc || !tlsprof_active) return real_CRYPTO_realloc(old, n, file, line);
    t->in_alloc = 1;
    void *p = realloc_common(old, n, file, line, VIA_CRYPTO_REALLOC, 0);
    t->in_alloc = 0;
    return p;
}

void *hook_CRYPTO_clear_realloc(void *old, size_t old_num, size_t n, const char *file, int line)
{
    struct tstate *t = this_thread();
    if (t->in_alloc || !tlsprof_active) return real_CRYPTO_clear_realloc(old, old_num, n, file, line);
    t->in_alloc = 1;
    void *p = realloc_common(old, n, file, line, VIA_CRYPTO_CLEAR_REALLOC, old_num);
    t->in_alloc = 0;
    return p;
}
