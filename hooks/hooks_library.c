/* Hooks outside any context or connection: OpenSSL filling its one-time and per-thread state, and
 * dlopen (objects loaded later get patched too). */
#include "shim.h"

/* ---- OpenSSL filling its one-time state: initialisation, providers, method fetches ----
 * What a fetch allocates the first time (the method, its name map and store entries) is cached for
 * the process and handed to every later caller: charging it to the context or connection that
 * happened to ask first made that one an outlier. (Not OSSL_PROVIDER_do_all: its callbacks fill
 * per-context lists, such as a context's TLS groups.) */
#define PROCESS_SCOPED(kind, ret, name, params, args) \
    ret hook_##name params                            \
    {                                                 \
        if (!tlsprof_active) return real_##name args; \
        push(0, kind);                                \
        ret r = real_##name args;                     \
        pop();                                        \
        return r;                                     \
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
void *hook_dlopen(const char *file, int flags)
{
    void *h = real_dlopen(file, flags);
    if (h && tlsprof_active) {
        interpose_refresh();
        static_copies_scan(0); /* a library just loaded: its copy is unused yet */
    }
    return h;
}
