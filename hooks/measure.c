/* Byte measures: what a block costs depends on who handed it out (measure.h). Decided once per
 * start for the process's malloc, and at the first allocation after it for the hooked libcrypto. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <malloc.h>

#include "shim.h"

int malloc_measure;               /* the process's malloc, decided when tlsprof starts */
int crypto_measure = -1;          /* blocks from the dynamic libcrypto; -1 = decide at the next one */
size_t (*usable_size_of)(void *); /* MEASURE_USABLE: the allocator's own malloc_usable_size */
int glibc_header_agrees;
int crypto_glibc_header;
static void (*real_CRYPTO_get_mem_functions)(void **, void **, void **);
/* tlsprof's own allocator functions (the CRYPTO_malloc hook, the one static copies get): a libcrypto
 * handed one of them allocates with the process's malloc. Registered by main.c, from above. */
static const void *own_allocators[4];
static int n_own_allocators;

void measure_own_allocators(const void *const *fns, int n)
{
    n_own_allocators = 0;
    for (int i = 0; i < n && i < (int)(sizeof own_allocators / sizeof *own_allocators); i++)
        own_allocators[n_own_allocators++] = fns[i];
}

static int is_own_allocator(const void *fn)
{
    for (int i = 0; i < n_own_allocators; i++)
        if (own_allocators[i] == fn) return 1;
    return 0;
}

int hooks_byte_measure(void)
{
    int m = __atomic_load_n(&crypto_measure, __ATOMIC_RELAXED);
    return m < 0 ? malloc_measure : (m > malloc_measure ? m : malloc_measure);
}

/* The object that defines a symbol, as the dynamic linker resolves it for everyone. */
static const void *definer_of(void *sym)
{
    Dl_info info;
    return sym && dladdr(sym, &info) ? info.dli_fbase : NULL;
}

/* a small chunk and an mmapped one: 64 MiB is above the largest mmap threshold glibc picks by
 * itself (32 MiB), so freeing it leaves the target's threshold as it was */
static void decide_glibc_header(void)
{
    int agrees = 1;
    static const size_t sizes[] = {100, 64 << 20};
    for (unsigned i = 0; i < sizeof sizes / sizeof *sizes; i++) {
        void *p = malloc(sizes[i]);
        if (p) agrees &= glibc_header_usable(p) == malloc_usable_size(p);
        free(p);
    }
    __atomic_store_n(&glibc_header_agrees, agrees, __ATOMIC_RELAXED);
}

static void decide_malloc_measure(void)
{
    void *libc = dlopen("libc.so.6", RTLD_NOLOAD | RTLD_LAZY);
    void *libc_malloc = libc ? dlsym(libc, "malloc") : NULL;
    /* the first definition in load order, not dlsym(RTLD_DEFAULT): a non-PIE executable that takes
     * malloc's address (node, Debian's python3) makes its own PLT entry malloc's canonical address */
    void *process_malloc = interpose_lookup("malloc");
    if (libc) dlclose(libc);
    if (!process_malloc || process_malloc == libc_malloc) {
        malloc_measure = MEASURE_GLIBC;
        decide_glibc_header();
        return;
    }
    /* trust a usable-size call only from the object whose malloc the process uses */
    void *usable = interpose_lookup("malloc_usable_size");
    if (usable && definer_of(usable) == definer_of(process_malloc)) {
        usable_size_of = (size_t(*)(void *))usable;
        malloc_measure = MEASURE_USABLE;
    } else {
        malloc_measure = MEASURE_REQUESTED;
    }
}

/* After a block came back from libcrypto: OpenSSL refuses new memory functions after its first
 * allocation, so the answer seen once a default allocation returned stays true; a custom one seen
 * here made this very block. Called on the first allocation after each tlsprof_start (hooks_reset
 * forgets the answer), so an attach long after the target set its allocator decides right too.
 * No hook on CRYPTO_set_mem_functions is needed: it only succeeds before that first allocation. */
int decide_crypto_measure(void)
{
    void (*get)(void **, void **, void **) = __atomic_load_n(&real_CRYPTO_get_mem_functions, __ATOMIC_ACQUIRE);
    if (!get) {
        get = (void (*)(void **, void **, void **))interpose_lookup("CRYPTO_get_mem_functions");
        __atomic_store_n(&real_CRYPTO_get_mem_functions, get, __ATOMIC_RELEASE);
    }
    int m = malloc_measure;
    /* only the hooked libcrypto's own setting counts: node exports its static copy's getter too,
     * whose default CRYPTO_malloc is no hooked one (and whose blocks these hooks never see) */
    if (get && (!real_CRYPTO_malloc || definer_of((void *)get) != definer_of((void *)real_CRYPTO_malloc))) get = NULL;
    if (get) {
        void *mf = NULL, *rf = NULL, *ff = NULL;
        get(&mf, &rf, &ff);
        if (mf && mf != (void *)real_CRYPTO_malloc && !is_own_allocator(mf) && !pytrace_allocator(mf))
            m = MEASURE_REQUESTED;
    }
    __atomic_store_n(&crypto_glibc_header, m == MEASURE_GLIBC && glibc_header_agrees, __ATOMIC_RELAXED);
    __atomic_store_n(&crypto_measure, m, __ATOMIC_RELAXED);
    return m;
}

void measure_reset(void)
{
    __atomic_store_n(&crypto_glibc_header, 0, __ATOMIC_RELAXED);
    decide_malloc_measure();
    __atomic_store_n(&crypto_measure, -1, __ATOMIC_RELAXED);
}
