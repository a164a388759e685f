/* The allocator hooks. They count only the outermost call of a thread (CRYPTO_zalloc calls
 * CRYPTO_malloc through the PLT, CRYPTO_clear_free calls CRYPTO_free...), so each block is seen
 * once, and hand the block to tracking.c. Frees of blocks we never saw pass straight through. */
#include <string.h>

#include "shim.h"

/* ---- allocator hooks ---- */
/* The thread's state is looked up again after the real call rather than kept in a register
 * across it (tracking.h: stage_block). */
void *hook_CRYPTO_malloc(size_t n, const char *file, int line)
{
    struct tstate *t = this_thread();
    if (UNLIKELY(t->in_alloc) || UNLIKELY(!tlsprof_active)) return real_CRYPTO_malloc(n, file, line);
    t->in_alloc = 1;
    stage_block(t, n, file, line);
    void *p = real_CRYPTO_malloc(n, file, line);
    t = this_thread();
    if (p) commit_block(t, p);
    t->in_alloc = 0;
    return p;
}

void *hook_CRYPTO_zalloc(size_t n, const char *file, int line)
{
    struct tstate *t = this_thread();
    if (t->in_alloc || !tlsprof_active) return real_CRYPTO_zalloc(n, file, line);
    t->in_alloc = 1;
    stage_block(t, n, file, line);
    /* CRYPTO_zalloc is CRYPTO_malloc and memset in every OpenSSL from 1.1.0 to 3.5; called here, the
     * malloc skips a second pass through its hook (~20 instructions, 500 times a handshake) */
    void *p = real_CRYPTO_malloc(n, file, line);
    if (p) memset(p, 0, n);
    t = this_thread();
    if (p) commit_block(t, p);
    t->in_alloc = 0;
    return p;
}

/* A free of anything but a young block of this thread's nursery found at its home slot. home:
 * what nursery_free_home said (-1: look further in its run), 0 when there is nothing to look in. */
static __attribute__((noinline)) void free_not_home(struct tstate *t, void *p, const char *file, int line, int home)
{
    if (home == 0 || !nursery_take_own(t->nursery, (uintptr_t)p, NULL)) forget_not_own_young(t, p);
    real_CRYPTO_free(p, file, line);
    t->in_alloc = 0;
}

/* As the allocation hooks, nothing but the thread's state is needed after the real free, and it is
 * looked up again. */
void hook_CRYPTO_free(void *p, const char *file, int line)
{
    /* CRYPTO_free(NULL) does nothing and OpenSSL makes ~600 of them a handshake: they stop here */
    if (!p) return;
    struct tstate *t = this_thread();
    if (t->in_alloc || !tlsprof_active) return real_CRYPTO_free(p, file, line);
    t->in_alloc = 1;
    int home = nursery_waiting(t->nursery) ? nursery_free_home(t, (uintptr_t)p) : 0;
    if (home <= 0) return free_not_home(t, p, file, line, home);
    real_CRYPTO_free(p, file, line);
    t = this_thread();
    if (t->hole) nursery_close_hole(t);
    t->in_alloc = 0;
}

void hook_CRYPTO_clear_free(void *p, size_t num, const char *file, int line)
{
    if (!p) return; /* as CRYPTO_clear_free itself */
    struct tstate *t = this_thread();
    if (!t->in_alloc && tlsprof_active) {
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
