/* The hook functions. Allocator hooks count only the outermost call of a thread (CRYPTO_zalloc calls
 * CRYPTO_malloc through the PLT, CRYPTO_clear_free calls CRYPTO_free...), so each block is seen once.
 * Entry-point hooks push a scope (owner + what is being done) on a thread-local stack; allocations
 * take their owner and cause from the top of it. Frees of blocks we never saw pass straight through. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <malloc.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "shim.h"

#define GLIBC_HEADER 8 /* per-block header glibc keeps before every chunk */
#define MAX_DEPTH 32
#define SSL_CTRL_MODE 33
#define SSL_CTRL_CLEAR_MODE 78

volatile int tlsprof_active;
int64_t untracked_bytes, untracked_blocks;

struct scope {
    uint32_t owner;
    uint8_t kind;
};

struct tstate {
    int in_alloc;
    int depth;
    int stripe; /* 1 + this thread's site-counter stripe; 0 until first needed */
    int stripe_own; /* the stripe is this thread's alone: plain adds, no locked instructions */
    /* the last call site interned: OpenSSL allocates from one site many times in a row (a stack
     * being filled, a CA store's certificates), and a hit skips the shared index (issue 18) */
    const char *site_file;
    int site_line;
    uint8_t site_scope;
    uint16_t site_id;
    struct scope stack[MAX_DEPTH];
};

static __thread struct tstate tls;

/* ---- real functions, resolved by interpose.c from the defining object ---- */
#define REAL(ret, name, params) static ret(*real_##name) params
REAL(void *, CRYPTO_malloc, (size_t, const char *, int));
REAL(void *, CRYPTO_zalloc, (size_t, const char *, int));
REAL(void *, CRYPTO_realloc, (void *, size_t, const char *, int));
REAL(void *, CRYPTO_clear_realloc, (void *, size_t, size_t, const char *, int));
REAL(void, CRYPTO_free, (void *, const char *, int));
REAL(void, CRYPTO_clear_free, (void *, size_t, const char *, int));
REAL(void *, dlopen, (const char *, int));
REAL(void *, SSL_CTX_new, (const void *));
REAL(void *, SSL_CTX_new_ex, (void *, const char *, const void *));
REAL(void, SSL_CTX_free, (void *));
REAL(long, SSL_CTX_ctrl, (void *, int, long, void *));
REAL(void *, SSL_new, (void *));
REAL(void, SSL_free, (void *));
REAL(int, SSL_clear, (void *));
REAL(int, SSL_do_handshake, (void *));
REAL(int, SSL_accept, (void *));
REAL(int, SSL_connect, (void *));
REAL(int, SSL_read, (void *, void *, int));
REAL(int, SSL_peek, (void *, void *, int));
REAL(int, SSL_write, (void *, const void *, int));
REAL(int, SSL_read_ex, (void *, void *, size_t, size_t *));
REAL(int, SSL_peek_ex, (void *, void *, size_t, size_t *));
REAL(int, SSL_write_ex, (void *, const void *, size_t, size_t *));
REAL(int, SSL_shutdown, (void *));
REAL(long, SSL_ctrl, (void *, int, long, void *));
REAL(int, SSL_set_fd, (void *, int));
REAL(int, SSL_set_rfd, (void *, int));
REAL(int, SSL_set_wfd, (void *, int));
REAL(void, SSL_set_bio, (void *, void *, void *));
REAL(void *, SSL_set_SSL_CTX, (void *, void *));
REAL(int, SSL_set_session, (void *, void *));
REAL(void *, SSL_get_SSL_CTX, (const void *));
/* trust store */
REAL(int, SSL_CTX_load_verify_locations, (void *, const char *, const char *));
REAL(int, SSL_CTX_load_verify_file, (void *, const char *));
REAL(int, SSL_CTX_load_verify_dir, (void *, const char *));
REAL(int, SSL_CTX_load_verify_store, (void *, const char *));
REAL(int, SSL_CTX_set_default_verify_paths, (void *));
REAL(int, SSL_CTX_set_default_verify_file, (void *));
REAL(int, SSL_CTX_set_default_verify_dir, (void *));
REAL(int, SSL_CTX_set_default_verify_store, (void *));
REAL(int, X509_STORE_add_cert, (void *, void *));
REAL(int, X509_STORE_add_crl, (void *, void *));
REAL(int, X509_STORE_load_file, (void *, const char *));
REAL(int, X509_STORE_load_path, (void *, const char *));
REAL(int, X509_STORE_load_store, (void *, const char *));
REAL(int, X509_STORE_load_locations, (void *, const char *, const char *));
REAL(int, X509_STORE_set_default_paths, (void *));
/* own certificate and key */
REAL(int, SSL_CTX_use_certificate, (void *, void *));
REAL(int, SSL_CTX_use_certificate_file, (void *, const char *, int));
REAL(int, SSL_CTX_use_certificate_chain_file, (void *, const char *));
REAL(int, SSL_CTX_use_PrivateKey, (void *, void *));
REAL(int, SSL_CTX_use_PrivateKey_file, (void *, const char *, int));
REAL(int, SSL_CTX_check_private_key, (const void *));
REAL(int, SSL_CTX_use_cert_and_key, (void *, void *, void *, void *, int));
/* one-time library state */
REAL(int, OPENSSL_init_crypto, (uint64_t, const void *));
REAL(int, OPENSSL_init_ssl, (uint64_t, const void *));
REAL(void *, EVP_CIPHER_fetch, (void *, const char *, const char *));
REAL(void *, EVP_MD_fetch, (void *, const char *, const char *));
REAL(void *, EVP_KDF_fetch, (void *, const char *, const char *));
REAL(void *, EVP_MAC_fetch, (void *, const char *, const char *));
REAL(void *, EVP_KEYEXCH_fetch, (void *, const char *, const char *));
REAL(void *, EVP_KEYMGMT_fetch, (void *, const char *, const char *));
REAL(void *, EVP_SIGNATURE_fetch, (void *, const char *, const char *));
REAL(void *, EVP_KEM_fetch, (void *, const char *, const char *));
REAL(void *, EVP_ASYM_CIPHER_fetch, (void *, const char *, const char *));
REAL(void *, EVP_RAND_fetch, (void *, const char *, const char *));
REAL(void *, OSSL_DECODER_fetch, (void *, const char *, const char *));
REAL(void *, OSSL_ENCODER_fetch, (void *, const char *, const char *));
REAL(void *, OSSL_STORE_LOADER_fetch, (void *, const char *, const char *));
REAL(const void *, EVP_get_cipherbyname, (const char *));
REAL(const void *, EVP_get_digestbyname, (const char *));
REAL(void *, OSSL_PROVIDER_load, (void *, const char *));
REAL(int, RAND_bytes, (unsigned char *, int));
REAL(int, RAND_priv_bytes, (unsigned char *, int));
REAL(int, RAND_bytes_ex, (void *, unsigned char *, size_t, unsigned int));
REAL(int, RAND_priv_bytes_ex, (void *, unsigned char *, size_t, unsigned int));
REAL(int, RAND_status, (void));
REAL(void *, OSSL_PROVIDER_try_load, (void *, const char *, int));

/* ---- scope stack ---- */
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

/* ---- accounting ---- */
/* Site counters: the first SITE_STRIPES - 1 threads (at a time) each own a stripe and add to it
 * with plain loads and stores, no locked instructions (most of a single-threaded server's counting
 * cost); every other thread shares the last stripe with atomic adds. A thread gives its stripe back
 * when it exits (a key destructor), and counts on the shared stripe from then on (OpenSSL frees
 * its per-thread state in destructors that may run after ours). */
#define SHARED_STRIPE (SITE_STRIPES - 1)
static uint32_t stripes_owned; /* atomic bitmask */
static pthread_key_t stripe_key;
static pthread_once_t stripe_key_once = PTHREAD_ONCE_INIT;
static int stripe_key_ok;

static void stripe_release(void *unused)
{
    struct tstate *t = &tls;
    if (t->stripe_own) __atomic_and_fetch(&stripes_owned, ~(1u << (t->stripe - 1)), __ATOMIC_RELEASE);
    t->stripe_own = 0;
    t->stripe = 1 + SHARED_STRIPE;
}

static void stripe_key_create(void) { stripe_key_ok = pthread_key_create(&stripe_key, stripe_release) == 0; }

static void stripe_claim(struct tstate *t)
{
    t->stripe = 1 + SHARED_STRIPE;
    pthread_once(&stripe_key_once, stripe_key_create);
    if (!stripe_key_ok) return;
    uint32_t seen = __atomic_load_n(&stripes_owned, __ATOMIC_RELAXED);
    for (int k = 0; k < SHARED_STRIPE; k++) {
        if (seen & (1u << k)) continue;
        if (!(__atomic_fetch_or(&stripes_owned, 1u << k, __ATOMIC_ACQUIRE) & (1u << k))) {
            if (pthread_setspecific(stripe_key, (void *)1) != 0) { /* no release at exit: do not own */
                __atomic_and_fetch(&stripes_owned, ~(1u << k), __ATOMIC_RELEASE);
                return;
            }
            t->stripe = 1 + k;
            t->stripe_own = 1;
            return;
        }
    }
}

/* fork: only the calling thread lives on in the child; the other threads' stripes are free again */
void stripes_after_fork_child(void)
{
    struct tstate *t = &tls;
    __atomic_store_n(&stripes_owned, t->stripe_own ? 1u << (t->stripe - 1) : 0, __ATOMIC_RELAXED);
}

#define ADD_OWNED(field, v) __atomic_store_n(&(field), __atomic_load_n(&(field), __ATOMIC_RELAXED) + (v), __ATOMIC_RELAXED)

static inline void count(uint32_t owner, uint16_t site, int64_t bytes, int64_t req, int64_t blocks)
{
    site &= BLOCK_SITE_MASK; /* a block's site id carries its measure in the top bits */
    struct owner *o = owner_at(owner);
    struct site *s = site_at(site);
    struct cause_counters *c = &o->c[s->cause];
    __atomic_add_fetch(&c->bytes, bytes, __ATOMIC_RELAXED);
    __atomic_add_fetch(&c->requested, req, __ATOMIC_RELAXED);
    __atomic_add_fetch(&c->blocks, blocks, __ATOMIC_RELAXED);
    __atomic_add_fetch(&o->total_blocks, blocks, __ATOMIC_RELEASE);
    struct tstate *t = &tls;
    if (UNLIKELY(!t->stripe)) stripe_claim(t);
    struct site_counts *sc = &site_counts[site][t->stripe - 1];
    if (t->stripe_own) {
        ADD_OWNED(sc->bytes, bytes);
        ADD_OWNED(sc->requested, req);
        ADD_OWNED(sc->blocks, blocks);
    } else {
        __atomic_add_fetch(&sc->bytes, bytes, __ATOMIC_RELAXED);
        __atomic_add_fetch(&sc->requested, req, __ATOMIC_RELAXED);
        __atomic_add_fetch(&sc->blocks, blocks, __ATOMIC_RELAXED);
    }
}

/* ---- byte measures ----
 * What a block costs depends on who handed it out, and asking the wrong allocator about a pointer
 * reads memory outside the block:
 * - glibc's malloc: malloc_usable_size + its 8-byte chunk header (MEASURE_GLIBC, the footprint);
 * - another malloc for the whole process (jemalloc, tcmalloc preloaded or linked) that exports its
 *   own malloc_usable_size: the size class it rounded up to, headers are kept out of line
 *   (MEASURE_USABLE);
 * - an allocator the target gave OpenSSL (CRYPTO_set_mem_functions; its blocks are not malloc's
 *   chunk starts), or a malloc without a usable-size call: only the requested size is known
 *   (MEASURE_REQUESTED). It is kept in the block's 16-bit slack field (size_encode).
 * Each block records the measure it was counted with (in the top bits of its site id), so its free
 * subtracts exactly what its allocation added whatever was decided in between. */
static int malloc_measure;         /* the process's malloc, decided when tlsprof starts */
static int crypto_measure = -1;    /* blocks from the dynamic libcrypto; -1 = decide at the next one */
static size_t (*usable_size_of)(void *); /* MEASURE_USABLE: the allocator's own malloc_usable_size */
static void (*real_CRYPTO_get_mem_functions)(void **, void **, void **);

int hooks_byte_measure(void)
{
    int m = __atomic_load_n(&crypto_measure, __ATOMIC_RELAXED);
    return m < 0 ? malloc_measure : (m > malloc_measure ? m : malloc_measure);
}

/* Requested sizes in 16 bits: exact below 32 KiB (nearly every OpenSSL block), above that 11
 * significant bits and an exponent, rounded up (at most 0.1 % high, up to 2 GiB). */
static inline uint16_t size_encode(size_t n)
{
    if (n < 0x8000) return (uint16_t)n;
    unsigned shift = (unsigned)(64 - __builtin_clzll(n)) - 11;
    size_t m = (n + ((size_t)1 << shift) - 1) >> shift;
    if (m > 0x7ff) { /* rounding up carried into a 12th bit */
        shift++;
        m = (n + ((size_t)1 << shift) - 1) >> shift;
    }
    if (shift > 20) return 0xffff;
    return (uint16_t)(0x8000 | ((shift - 5) << 11) | m);
}

static inline size_t size_decode(uint16_t v)
{
    return v < 0x8000 ? v : (size_t)(v & 0x7ff) << (((v >> 11) & 0xf) + 5);
}

static inline size_t usable_size(void *p, int measure)
{
    return measure == MEASURE_GLIBC ? malloc_usable_size(p) : usable_size_of(p);
}

/* The object that defines a symbol, as the dynamic linker resolves it for everyone. */
static const void *definer_of(void *sym)
{
    Dl_info info;
    return sym && dladdr(sym, &info) ? info.dli_fbase : NULL;
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

static void *hook_CRYPTO_malloc(size_t n, const char *file, int line);
void *tracked_libc_malloc(size_t n, const char *file, int line);

/* After a block came back from libcrypto: OpenSSL refuses new memory functions after its first
 * allocation, so the answer seen once a default allocation returned stays true; a custom one seen
 * here made this very block. Called on the first allocation after each tlsprof_start (hooks_reset
 * forgets the answer), so an attach long after the target set its allocator decides right too.
 * No hook on CRYPTO_set_mem_functions is needed: it only succeeds before that first allocation. */
static int decide_crypto_measure(void)
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
        if (mf && mf != (void *)real_CRYPTO_malloc && mf != (void *)hook_CRYPTO_malloc &&
            mf != (void *)tracked_libc_malloc && !pytrace_allocator(mf))
            m = MEASURE_REQUESTED;
    }
    __atomic_store_n(&crypto_measure, m, __ATOMIC_RELAXED);
    return m;
}

static inline int libcrypto_measure(void)
{
    int m = __atomic_load_n(&crypto_measure, __ATOMIC_RELAXED);
    return LIKELY(m >= 0) ? m : decide_crypto_measure();
}

/* What the block costs (bytes) and what was asked for (req), by the measure it was counted with.
 * `usable` is the allocator's answer for p when the caller already has it, else 0. */
static inline void block_sizes(const struct block *b, void *p, size_t usable, int64_t *bytes, int64_t *req)
{
    int measure = b->site >> BLOCK_MEASURE_SHIFT;
    if (measure == MEASURE_REQUESTED) {
        *bytes = *req = (int64_t)size_decode(b->slack);
        return;
    }
    if (!usable) usable = usable_size(p, measure);
    *bytes = (int64_t)(usable + (measure == MEASURE_GLIBC ? GLIBC_HEADER : 0));
    *req = (int64_t)(usable - b->slack);
}

static void untrack(const struct block *b, void *p, size_t usable)
{
    int64_t bytes, req;
    block_sizes(b, p, usable, &bytes, &req);
    count(b->owner, b->site, -bytes, -req, -1);
}

static void track_as(void *p, size_t n, uint32_t owner, uint16_t site, int measure)
{
    if (cause_is_process_wide(site_at(site & BLOCK_SITE_MASK)->cause)) owner = 0;
    size_t usable = 0;
    uint16_t slack;
    if (measure == MEASURE_REQUESTED) {
        slack = size_encode(n);
    } else {
        usable = usable_size(p, measure);
        size_t over = usable >= n ? usable - n : 0;
        slack = (uint16_t)(over > 0xffff ? 0xffff : over);
    }
    uint16_t site_and_measure = (uint16_t)((site & BLOCK_SITE_MASK) | (measure << BLOCK_MEASURE_SHIFT));
    struct block stale, mine = {(uintptr_t)p, owner, site_and_measure, slack};
    int64_t bytes, req;
    block_sizes(&mine, p, usable, &bytes, &req);
    int r = blocks_insert((uintptr_t)p, owner, mine.site, slack, &stale);
    /* a stale entry: that block was freed behind our back (by a caller that bypassed the hooks); its
     * memory is gone, so a usable size is only known when it was counted like this one */
    if (r == 1) {
        size_t guess = (stale.site >> BLOCK_MEASURE_SHIFT) == measure && usable ? usable : n + stale.slack;
        untrack(&stale, p, guess ? guess : 1);
    }
    if (r < 0) {
        __atomic_add_fetch(&untracked_bytes, bytes, __ATOMIC_RELAXED);
        __atomic_add_fetch(&untracked_blocks, 1, __ATOMIC_RELAXED);
        return;
    }
    count(owner, mine.site, bytes, req, 1);
}

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

static inline void track(void *p, size_t n, const char *file, int line)
{
    struct scope s = current();
    track_as(p, n, s.owner, site_of(file, line, s.kind, n), libcrypto_measure());
}

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

/* ---- allocator hooks ---- */
static void *hook_CRYPTO_malloc(size_t n, const char *file, int line)
{
    struct tstate *t = &tls;
    if (t->in_alloc || !tlsprof_active) return real_CRYPTO_malloc(n, file, line);
    t->in_alloc = 1;
    void *p = real_CRYPTO_malloc(n, file, line);
    if (p) track(p, n, file, line);
    t->in_alloc = 0;
    return p;
}

static void *hook_CRYPTO_zalloc(size_t n, const char *file, int line)
{
    struct tstate *t = &tls;
    if (t->in_alloc || !tlsprof_active) return real_CRYPTO_zalloc(n, file, line);
    t->in_alloc = 1;
    void *p = real_CRYPTO_zalloc(n, file, line);
    if (p) track(p, n, file, line);
    t->in_alloc = 0;
    return p;
}

static void hook_CRYPTO_free(void *p, const char *file, int line)
{
    struct tstate *t = &tls;
    if (p && !t->in_alloc && tlsprof_active) {
        t->in_alloc = 1;
        forget(p);
        real_CRYPTO_free(p, file, line);
        t->in_alloc = 0;
        return;
    }
    real_CRYPTO_free(p, file, line);
}

static void hook_CRYPTO_clear_free(void *p, size_t num, const char *file, int line)
{
    struct tstate *t = &tls;
    if (p && !t->in_alloc && tlsprof_active) {
        t->in_alloc = 1;
        forget(p);
        real_CRYPTO_clear_free(p, num, file, line);
        t->in_alloc = 0;
        return;
    }
    real_CRYPTO_clear_free(p, num, file, line);
}

enum realloc_via { VIA_CRYPTO_REALLOC, VIA_CRYPTO_CLEAR_REALLOC, VIA_LIBC };

/* A grown block keeps its owner and site: it is the same object getting bigger. */
static void *realloc_common(void *old, size_t n, const char *file, int line, enum realloc_via via,
                            size_t old_num)
{
    struct block b;
    int had = 0;
    int64_t old_bytes = 0, old_req = 0;
    if (old && blocks_remove((uintptr_t)old, &b)) {
        had = 1;
        block_sizes(&b, old, 0, &old_bytes, &old_req);
        count(b.owner, b.site, -old_bytes, -old_req, -1);
    }
    void *p = via == VIA_LIBC                 ? realloc(old, n)
              : via == VIA_CRYPTO_CLEAR_REALLOC ? real_CRYPTO_clear_realloc(old, old_num, n, file, line)
                                                : real_CRYPTO_realloc(old, n, file, line);
    if (!p) {
        if (had && n) { /* failed: the old block is still there */
            struct block stale;
            if (blocks_insert((uintptr_t)old, b.owner, b.site, b.slack, &stale) >= 0)
                count(b.owner, b.site, old_bytes, old_req, 1);
            else {
                __atomic_add_fetch(&untracked_bytes, old_bytes, __ATOMIC_RELAXED);
                __atomic_add_fetch(&untracked_blocks, 1, __ATOMIC_RELAXED);
            }
        }
        return p;
    }
    int measure = via == VIA_LIBC ? malloc_measure : libcrypto_measure();
    if (had) track_as(p, n, b.owner, b.site, measure);
    else if (via == VIA_LIBC) track_static(p, n, file, line);
    else track(p, n, file, line);
    return p;
}

static void *hook_CRYPTO_realloc(void *old, size_t n, const char *file, int line)
{
    struct tstate *t = &tls;
    if (t->in_alloc || !tlsprof_active) return real_CRYPTO_realloc(old, n, file, line);
    t->in_alloc = 1;
    void *p = realloc_common(old, n, file, line, VIA_CRYPTO_REALLOC, 0);
    t->in_alloc = 0;
    return p;
}

static void *hook_CRYPTO_clear_realloc(void *old, size_t old_num, size_t n, const char *file, int line)
{
    struct tstate *t = &tls;
    if (t->in_alloc || !tlsprof_active) return real_CRYPTO_clear_realloc(old, old_num, n, file, line);
    t->in_alloc = 1;
    void *p = realloc_common(old, n, file, line, VIA_CRYPTO_CLEAR_REALLOC, old_num);
    t->in_alloc = 0;
    return p;
}

/* ---- memory functions given to statically linked copies (static_copies.c) ----
 * Such a copy calls these from its CRYPTO_malloc/realloc/free, once per block: no nesting to guard. */
void *tracked_libc_malloc(size_t n, const char *file, int line)
{
    void *p = malloc(n);
    if (p && tlsprof_active) track_static(p, n, file, line);
    return p;
}

void *tracked_libc_realloc(void *old, size_t n, const char *file, int line)
{
    if (!tlsprof_active) return realloc(old, n);
    if (old && n == 0) { /* OpenSSL's contract for realloc(p, 0): free it */
        forget(old);
        free(old);
        return NULL;
    }
    return realloc_common(old, n, file, line, VIA_LIBC, 0);
}

void tracked_libc_free(void *p, const char *file, int line)
{
    if (p && tlsprof_active) forget(p);
    free(p);
}

/* ---- owners of objects created before we were attached ---- */
/* An object used inside its own constructor (SSL_new calls SSL_clear, SSL_CTX_new calls
 * SSL_CTX_ctrl) is not bound yet: it is the owner being created. */
static uint32_t adopt(void *ptr, uint8_t creating_kind)
{
    struct scope s = current();
    if (s.kind != creating_kind || !s.owner) return 0;
    struct owner *o = owner_at(s.owner);
    uintptr_t cur = __atomic_load_n(&o->ptr, __ATOMIC_RELAXED);
    if (cur && cur != (uintptr_t)ptr) return 0;
    __atomic_store_n(&o->ptr, (uintptr_t)ptr, __ATOMIC_RELAXED);
    return s.owner;
}

static uint32_t ctx_owner(void *ctx)
{
    if (!ctx) return 0;
    uint32_t o = objects_find((uintptr_t)ctx);
    if (!o) o = adopt(ctx, SC_CTX_NEW);
    if (!o && tlsprof_active) {
        o = owner_new(OWNER_CTX, (uintptr_t)ctx, 0, 1);
        if (o) objects_bind((uintptr_t)ctx, o);
    }
    return o;
}

static uint32_t ssl_owner(void *ssl)
{
    if (!ssl) return 0;
    uint32_t o = objects_find((uintptr_t)ssl);
    if (!o) o = adopt(ssl, SC_SSL_NEW);
    if (!o && tlsprof_active) {
        if (!real_SSL_get_SSL_CTX) hooks_resolve_helpers();
        uint32_t ctx = real_SSL_get_SSL_CTX ? ctx_owner(real_SSL_get_SSL_CTX(ssl)) : 0;
        o = owner_new(OWNER_SSL, (uintptr_t)ssl, ctx, 1);
        if (o) objects_bind((uintptr_t)ssl, o);
    }
    return o;
}

void hooks_resolve_helpers(void);

static inline void set_state(uint32_t owner, uint8_t state)
{
    if (owner) __atomic_store_n(&owner_at(owner)->state, state, __ATOMIC_RELAXED);
}

/* ---- contexts ---- */
static void *new_ctx_common(void *a, const char *b, const void *c, int ex)
{
    if (!tlsprof_active || current().kind == SC_CTX_NEW) /* SSL_CTX_new calls SSL_CTX_new_ex */
        return ex ? real_SSL_CTX_new_ex(a, b, c) : real_SSL_CTX_new(c);
    uint32_t o = owner_new(OWNER_CTX, 0, 0, 0);
    push(o, SC_CTX_NEW);
    void *ctx = ex ? real_SSL_CTX_new_ex(a, b, c) : real_SSL_CTX_new(c);
    pop();
    if (!o) return ctx;
    if (!ctx) {
        owner_mark_dead(o);
        return ctx;
    }
    __atomic_store_n(&owner_at(o)->ptr, (uintptr_t)ctx, __ATOMIC_RELAXED);
    objects_bind((uintptr_t)ctx, o);
    blocks_mark_object((uintptr_t)ctx);
    return ctx;
}

static void *hook_SSL_CTX_new(const void *meth) { return new_ctx_common(NULL, NULL, meth, 0); }
static void *hook_SSL_CTX_new_ex(void *libctx, const char *propq, const void *meth)
{
    return new_ctx_common(libctx, propq, meth, 1);
}

static void hook_SSL_CTX_free(void *ctx)
{
    if (!ctx || !tlsprof_active) return real_SSL_CTX_free(ctx);
    uint32_t o = objects_find((uintptr_t)ctx);
    push(o, SC_CTX);
    real_SSL_CTX_free(ctx);
    pop();
}

static void note_mode(uint32_t owner, int cmd, long larg)
{
    if (!owner || (cmd != SSL_CTRL_MODE && cmd != SSL_CTRL_CLEAR_MODE)) return;
    struct owner *o = owner_at(owner);
    if (cmd == SSL_CTRL_MODE) __atomic_or_fetch(&o->mode, (uint64_t)larg, __ATOMIC_RELAXED);
    else __atomic_and_fetch(&o->mode, ~(uint64_t)larg, __ATOMIC_RELAXED);
    __atomic_or_fetch(&o->flags, OWNER_F_MODE_KNOWN, __ATOMIC_RELAXED);
}

static long hook_SSL_CTX_ctrl(void *ctx, int cmd, long larg, void *parg)
{
    if (!tlsprof_active) return real_SSL_CTX_ctrl(ctx, cmd, larg, parg);
    uint32_t o = ctx_owner(ctx);
    push(o, SC_CTX);
    long r = real_SSL_CTX_ctrl(ctx, cmd, larg, parg);
    pop();
    note_mode(o, cmd, larg);
    return r;
}

#define CTX_SCOPED(name, kind, params, args)                      \
    static int hook_##name params                                 \
    {                                                             \
        if (!tlsprof_active) return real_##name args;             \
        push(ctx_owner(ctx), kind);                               \
        int r = real_##name args;                                 \
        pop();                                                    \
        return r;                                                 \
    }

CTX_SCOPED(SSL_CTX_load_verify_locations, SC_CA, (void *ctx, const char *f, const char *d), (ctx, f, d))
CTX_SCOPED(SSL_CTX_load_verify_file, SC_CA, (void *ctx, const char *f), (ctx, f))
CTX_SCOPED(SSL_CTX_load_verify_dir, SC_CA, (void *ctx, const char *d), (ctx, d))
CTX_SCOPED(SSL_CTX_load_verify_store, SC_CA, (void *ctx, const char *s), (ctx, s))
CTX_SCOPED(SSL_CTX_set_default_verify_paths, SC_CA, (void *ctx), (ctx))
CTX_SCOPED(SSL_CTX_set_default_verify_file, SC_CA, (void *ctx), (ctx))
CTX_SCOPED(SSL_CTX_set_default_verify_dir, SC_CA, (void *ctx), (ctx))
CTX_SCOPED(SSL_CTX_set_default_verify_store, SC_CA, (void *ctx), (ctx))
CTX_SCOPED(SSL_CTX_use_certificate, SC_OWN_CERT, (void *ctx, void *x), (ctx, x))
CTX_SCOPED(SSL_CTX_use_certificate_file, SC_OWN_CERT, (void *ctx, const char *f, int t), (ctx, f, t))
CTX_SCOPED(SSL_CTX_use_certificate_chain_file, SC_OWN_CERT, (void *ctx, const char *f), (ctx, f))
CTX_SCOPED(SSL_CTX_use_PrivateKey, SC_OWN_CERT, (void *ctx, void *k), (ctx, k))
CTX_SCOPED(SSL_CTX_use_PrivateKey_file, SC_OWN_CERT, (void *ctx, const char *f, int t), (ctx, f, t))
CTX_SCOPED(SSL_CTX_use_cert_and_key, SC_OWN_CERT, (void *ctx, void *x, void *k, void *c, int o), (ctx, x, k, c, o))

static int hook_SSL_CTX_check_private_key(const void *ctx)
{
    if (!tlsprof_active) return real_SSL_CTX_check_private_key(ctx);
    push(ctx_owner((void *)ctx), SC_OWN_CERT);
    int r = real_SSL_CTX_check_private_key(ctx);
    pop();
    return r;
}

/* X509_STORE calls made outside a context's scope still build a trust store. */
#define STORE_SCOPED(name, params, args)                          \
    static int hook_##name params                                 \
    {                                                             \
        if (!tlsprof_active) return real_##name args;             \
        push(inherited_owner(), SC_CA);                           \
        int r = real_##name args;                                 \
        pop();                                                    \
        return r;                                                 \
    }

STORE_SCOPED(X509_STORE_add_cert, (void *st, void *x), (st, x))
STORE_SCOPED(X509_STORE_add_crl, (void *st, void *x), (st, x))
STORE_SCOPED(X509_STORE_load_file, (void *st, const char *f), (st, f))
STORE_SCOPED(X509_STORE_load_path, (void *st, const char *p), (st, p))
STORE_SCOPED(X509_STORE_load_store, (void *st, const char *u), (st, u))
STORE_SCOPED(X509_STORE_load_locations, (void *st, const char *f, const char *d), (st, f, d))
STORE_SCOPED(X509_STORE_set_default_paths, (void *st), (st))

/* ---- connections ---- */
static void *hook_SSL_new(void *ctx)
{
    if (!tlsprof_active) return real_SSL_new(ctx);
    uint32_t c = ctx_owner(ctx);
    uint32_t o = owner_new(OWNER_SSL, 0, c, 0);
    push(o, SC_SSL_NEW);
    void *ssl = real_SSL_new(ctx);
    pop();
    if (!o) return ssl;
    if (!ssl) {
        owner_mark_dead(o);
        return ssl;
    }
    __atomic_store_n(&owner_at(o)->ptr, (uintptr_t)ssl, __ATOMIC_RELAXED);
    objects_bind((uintptr_t)ssl, o);
    blocks_mark_object((uintptr_t)ssl);
    return ssl;
}

static void hook_SSL_free(void *ssl)
{
    if (!ssl || !tlsprof_active) return real_SSL_free(ssl);
    uint32_t o = objects_find((uintptr_t)ssl);
    int pre_attach = o && __atomic_load_n(&owner_at(o)->pre_attach, __ATOMIC_RELAXED);
    push(o, SC_SSL_FREE);
    real_SSL_free(ssl);
    pop();
    if (pre_attach) { /* its struct was allocated before us: we cannot see it freed */
        objects_unbind((uintptr_t)ssl, o);
        owner_mark_dead(o);
    }
}

#define SSL_SCOPED(ret, name, kind, params, args, after)          \
    static ret hook_##name params                                 \
    {                                                             \
        if (!tlsprof_active) return real_##name args;             \
        uint32_t o = ssl_owner(ssl);                              \
        push(o, kind);                                            \
        ret r = real_##name args;                                 \
        pop();                                                    \
        after;                                                    \
        return r;                                                 \
    }

#define ESTABLISHED_IF(cond) if (cond) set_state(o, STATE_ESTABLISHED)
/* a per-connection counter: one thread drives a connection at a time, so its line stays local */
#define MOVED_DATA_IF(cond)                                                              \
    if (cond) {                                                                          \
        set_state(o, STATE_ESTABLISHED);                                                 \
        if (o) __atomic_add_fetch(&owner_at(o)->io_calls, 1, __ATOMIC_RELAXED);          \
    }
#define NOTHING (void)o

SSL_SCOPED(int, SSL_do_handshake, SC_HANDSHAKE, (void *ssl), (ssl), ESTABLISHED_IF(r == 1))
SSL_SCOPED(int, SSL_accept, SC_HANDSHAKE, (void *ssl), (ssl), ESTABLISHED_IF(r == 1))
SSL_SCOPED(int, SSL_connect, SC_HANDSHAKE, (void *ssl), (ssl), ESTABLISHED_IF(r == 1))
SSL_SCOPED(int, SSL_read, SC_IO, (void *ssl, void *b, int n), (ssl, b, n), MOVED_DATA_IF(r > 0))
SSL_SCOPED(int, SSL_peek, SC_IO, (void *ssl, void *b, int n), (ssl, b, n), MOVED_DATA_IF(r > 0))
SSL_SCOPED(int, SSL_write, SC_IO, (void *ssl, const void *b, int n), (ssl, b, n), MOVED_DATA_IF(r > 0))
SSL_SCOPED(int, SSL_read_ex, SC_IO, (void *ssl, void *b, size_t n, size_t *g), (ssl, b, n, g), MOVED_DATA_IF(r == 1))
SSL_SCOPED(int, SSL_peek_ex, SC_IO, (void *ssl, void *b, size_t n, size_t *g), (ssl, b, n, g), MOVED_DATA_IF(r == 1))
SSL_SCOPED(int, SSL_write_ex, SC_IO, (void *ssl, const void *b, size_t n, size_t *g), (ssl, b, n, g), MOVED_DATA_IF(r == 1))
SSL_SCOPED(int, SSL_shutdown, SC_SHUTDOWN, (void *ssl), (ssl), set_state(o, STATE_SHUTDOWN))
SSL_SCOPED(int, SSL_clear, SC_SSL_CTRL, (void *ssl), (ssl), set_state(o, STATE_HANDSHAKE))
SSL_SCOPED(long, SSL_ctrl, SC_SSL_CTRL, (void *ssl, int cmd, long l, void *p), (ssl, cmd, l, p), note_mode(o, cmd, l))
SSL_SCOPED(int, SSL_set_session, SC_HANDSHAKE, (void *ssl, void *s), (ssl, s), NOTHING)

static inline void note_fd(uint32_t o, int fd)
{
    if (o) __atomic_store_n(&owner_at(o)->fd, fd, __ATOMIC_RELAXED);
}

SSL_SCOPED(int, SSL_set_fd, SC_SSL_CTRL, (void *ssl, int fd), (ssl, fd), note_fd(o, fd))
SSL_SCOPED(int, SSL_set_rfd, SC_SSL_CTRL, (void *ssl, int fd), (ssl, fd), note_fd(o, fd))
SSL_SCOPED(int, SSL_set_wfd, SC_SSL_CTRL, (void *ssl, int fd), (ssl, fd), NOTHING)

/* A socket BIO (openssl s_server, many C servers) carries the connection's fd: learn it here, on
 * the caller's thread, through two getters. Other BIO types are never asked anything. */
#define BIO_TYPE_SOCKET 0x0505
#define BIO_C_GET_FD 105
static int (*real_BIO_method_type)(const void *);
static long (*real_BIO_ctrl)(void *, int, long, void *);

static int socket_bio_fd(void *bio)
{
    if (!bio) return -1;
    int (*type)(const void *) = __atomic_load_n(&real_BIO_method_type, __ATOMIC_ACQUIRE);
    long (*ctrl)(void *, int, long, void *) = __atomic_load_n(&real_BIO_ctrl, __ATOMIC_ACQUIRE);
    if (!type) __atomic_store_n(&real_BIO_method_type, type = interpose_lookup("BIO_method_type"), __ATOMIC_RELEASE);
    if (!ctrl) __atomic_store_n(&real_BIO_ctrl, ctrl = interpose_lookup("BIO_ctrl"), __ATOMIC_RELEASE);
    if (!type || !ctrl || type(bio) != BIO_TYPE_SOCKET) return -1;
    int fd = -1;
    return ctrl(bio, BIO_C_GET_FD, 0, &fd) >= 0 ? fd : -1;
}

static void hook_SSL_set_bio(void *ssl, void *rbio, void *wbio)
{
    if (!tlsprof_active) return real_SSL_set_bio(ssl, rbio, wbio);
    uint32_t o = ssl_owner(ssl);
    push(o, SC_SSL_CTRL);
    real_SSL_set_bio(ssl, rbio, wbio);
    pop();
    int fd = socket_bio_fd(rbio);
    if (fd >= 0) note_fd(o, fd);
}

static void *hook_SSL_set_SSL_CTX(void *ssl, void *ctx)
{
    if (!tlsprof_active) return real_SSL_set_SSL_CTX(ssl, ctx);
    uint32_t o = ssl_owner(ssl);
    push(o, SC_SSL_CTRL);
    void *r = real_SSL_set_SSL_CTX(ssl, ctx);
    pop();
    if (r && o) __atomic_store_n(&owner_at(o)->ctx, ctx_owner(ctx), __ATOMIC_RELAXED);
    return r;
}

/* ---- OpenSSL filling its one-time state: initialisation, providers, method fetches ----
 * What a fetch allocates the first time (the method, its name map and store entries) is cached for
 * the process and handed to every later caller: charging it to the context or connection that
 * happened to ask first made that one an outlier. (Not OSSL_PROVIDER_do_all: its callbacks fill
 * per-context lists, such as a context's TLS groups.) */
#define PROCESS_SCOPED(kind, ret, name, params, args)             \
    static ret hook_##name params                                 \
    {                                                             \
        if (!tlsprof_active) return real_##name args;             \
        push(0, kind);                                            \
        ret r = real_##name args;                                 \
        pop();                                                    \
        return r;                                                 \
    }
#define LIBRARY_SCOPED(ret, name, params, args) PROCESS_SCOPED(SC_LIBRARY, ret, name, params, args)

LIBRARY_SCOPED(int, OPENSSL_init_crypto, (uint64_t opts, const void *settings), (opts, settings))
LIBRARY_SCOPED(int, OPENSSL_init_ssl, (uint64_t opts, const void *settings), (opts, settings))
LIBRARY_SCOPED(void *, EVP_CIPHER_fetch, (void *l, const char *a, const char *p), (l, a, p))
LIBRARY_SCOPED(void *, EVP_MD_fetch, (void *l, const char *a, const char *p), (l, a, p))
LIBRARY_SCOPED(void *, EVP_KDF_fetch, (void *l, const char *a, const char *p), (l, a, p))
LIBRARY_SCOPED(void *, EVP_MAC_fetch, (void *l, const char *a, const char *p), (l, a, p))
LIBRARY_SCOPED(void *, EVP_KEYEXCH_fetch, (void *l, const char *a, const char *p), (l, a, p))
LIBRARY_SCOPED(void *, EVP_KEYMGMT_fetch, (void *l, const char *a, const char *p), (l, a, p))
LIBRARY_SCOPED(void *, EVP_SIGNATURE_fetch, (void *l, const char *a, const char *p), (l, a, p))
LIBRARY_SCOPED(void *, EVP_KEM_fetch, (void *l, const char *a, const char *p), (l, a, p))
LIBRARY_SCOPED(void *, EVP_ASYM_CIPHER_fetch, (void *l, const char *a, const char *p), (l, a, p))
LIBRARY_SCOPED(void *, EVP_RAND_fetch, (void *l, const char *a, const char *p), (l, a, p))
LIBRARY_SCOPED(void *, OSSL_DECODER_fetch, (void *l, const char *a, const char *p), (l, a, p))
LIBRARY_SCOPED(void *, OSSL_ENCODER_fetch, (void *l, const char *a, const char *p), (l, a, p))
LIBRARY_SCOPED(void *, OSSL_STORE_LOADER_fetch, (void *l, const char *a, const char *p), (l, a, p))
LIBRARY_SCOPED(const void *, EVP_get_cipherbyname, (const char *n), (n))
LIBRARY_SCOPED(const void *, EVP_get_digestbyname, (const char *n), (n))
LIBRARY_SCOPED(void *, OSSL_PROVIDER_load, (void *l, const char *n), (l, n))
LIBRARY_SCOPED(void *, OSSL_PROVIDER_try_load, (void *l, const char *n, int retain), (l, n, retain))

/* Random bytes allocate only when a thread's first call creates its DRBGs (the primary one and the
 * thread's public and private ones): per-thread state, whichever context or connection asked. */
PROCESS_SCOPED(SC_THREAD, int, RAND_bytes, (unsigned char *b, int n), (b, n))
PROCESS_SCOPED(SC_THREAD, int, RAND_priv_bytes, (unsigned char *b, int n), (b, n))
PROCESS_SCOPED(SC_THREAD, int, RAND_bytes_ex, (void *l, unsigned char *b, size_t n, unsigned int s), (l, b, n, s))
PROCESS_SCOPED(SC_THREAD, int, RAND_priv_bytes_ex, (void *l, unsigned char *b, size_t n, unsigned int s), (l, b, n, s))
PROCESS_SCOPED(SC_THREAD, int, RAND_status, (void), ())

/* ---- libraries loaded later (Python's _ssl pulls in libssl with RTLD_LOCAL) ---- */
static void *hook_dlopen(const char *file, int flags)
{
    void *h = real_dlopen(file, flags);
    if (h && tlsprof_active) {
        interpose_refresh();
        static_copies_scan(0);
    }
    return h;
}

/* ---- the table interpose.c patches from ---- */
#define HOOK(name) {#name, (void *)hook_##name, (void **)&real_##name, 1}
struct hook_def hook_defs[] = {
    HOOK(CRYPTO_malloc), HOOK(CRYPTO_zalloc), HOOK(CRYPTO_realloc), HOOK(CRYPTO_clear_realloc),
    HOOK(CRYPTO_free), HOOK(CRYPTO_clear_free),
    {"dlopen", (void *)hook_dlopen, (void **)&real_dlopen, 0},
    HOOK(SSL_CTX_new), HOOK(SSL_CTX_new_ex), HOOK(SSL_CTX_free), HOOK(SSL_CTX_ctrl),
    HOOK(SSL_new), HOOK(SSL_free), HOOK(SSL_clear), HOOK(SSL_do_handshake), HOOK(SSL_accept),
    HOOK(SSL_connect), HOOK(SSL_read), HOOK(SSL_peek), HOOK(SSL_write), HOOK(SSL_read_ex),
    HOOK(SSL_peek_ex), HOOK(SSL_write_ex), HOOK(SSL_shutdown), HOOK(SSL_ctrl), HOOK(SSL_set_fd),
    HOOK(SSL_set_rfd), HOOK(SSL_set_wfd), HOOK(SSL_set_bio), HOOK(SSL_set_SSL_CTX),
    HOOK(SSL_set_session),
    HOOK(SSL_CTX_load_verify_locations), HOOK(SSL_CTX_load_verify_file), HOOK(SSL_CTX_load_verify_dir),
    HOOK(SSL_CTX_load_verify_store), HOOK(SSL_CTX_set_default_verify_paths),
    HOOK(SSL_CTX_set_default_verify_file), HOOK(SSL_CTX_set_default_verify_dir),
    HOOK(SSL_CTX_set_default_verify_store), HOOK(X509_STORE_add_cert), HOOK(X509_STORE_add_crl),
    HOOK(X509_STORE_load_file), HOOK(X509_STORE_load_path), HOOK(X509_STORE_load_store),
    HOOK(X509_STORE_load_locations), HOOK(X509_STORE_set_default_paths),
    HOOK(SSL_CTX_use_certificate), HOOK(SSL_CTX_use_certificate_file),
    HOOK(SSL_CTX_use_certificate_chain_file), HOOK(SSL_CTX_use_PrivateKey),
    HOOK(SSL_CTX_use_PrivateKey_file), HOOK(SSL_CTX_check_private_key), HOOK(SSL_CTX_use_cert_and_key),
    HOOK(OPENSSL_init_crypto), HOOK(OPENSSL_init_ssl), HOOK(EVP_CIPHER_fetch), HOOK(EVP_MD_fetch),
    HOOK(EVP_KDF_fetch), HOOK(EVP_MAC_fetch), HOOK(EVP_KEYEXCH_fetch), HOOK(EVP_KEYMGMT_fetch),
    HOOK(EVP_SIGNATURE_fetch), HOOK(EVP_KEM_fetch), HOOK(EVP_ASYM_CIPHER_fetch), HOOK(EVP_RAND_fetch),
    HOOK(OSSL_DECODER_fetch), HOOK(OSSL_ENCODER_fetch), HOOK(OSSL_STORE_LOADER_fetch),
    HOOK(EVP_get_cipherbyname), HOOK(EVP_get_digestbyname),
    HOOK(OSSL_PROVIDER_load), HOOK(OSSL_PROVIDER_try_load), HOOK(RAND_bytes), HOOK(RAND_priv_bytes),
    HOOK(RAND_bytes_ex), HOOK(RAND_priv_bytes_ex), HOOK(RAND_status),
};
const int n_hook_defs = sizeof hook_defs / sizeof hook_defs[0];

/* SSL_get_SSL_CTX is called, never hooked: resolve it on demand. */
void hooks_resolve_helpers(void)
{
    if (!real_SSL_get_SSL_CTX) real_SSL_get_SSL_CTX = interpose_lookup("SSL_get_SSL_CTX");
}

void hooks_reset(void)
{
    decide_malloc_measure();
    __atomic_store_n(&crypto_measure, -1, __ATOMIC_RELAXED);
    __atomic_store_n(&untracked_bytes, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&untracked_blocks, 0, __ATOMIC_RELAXED);
}
