/* The heap walk, part 1: which OpenSSL copies the walk can read (the shared libssl and every
 * statically linked copy), and what a probe SSL_CTX and SSL of each teach about its layout. Runs in
 * the target, before the clone. */
#define _GNU_SOURCE
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "heapwalk_internal.h"

struct copy_api apis[MAX_WALK_COPIES];
int n_apis;
struct copy_api *cur_api = &apis[0];

struct learned learned;

uintptr_t thread_sp[MAX_THREADS];
int n_thread_sp;


/* The probe is made and freed through the hooks when they are installed: libssl calls some of its
 * own entry points through the PLT (SSL_new calls SSL_clear, SSL_free calls SSL_CTX_free), and the
 * hooks must see the whole life of the probe, or it stays behind in the report as a live owner. */
static void *lookup(const char *name) { return interpose_lookup(name); }

static void *hooked(const char *name)
{
    for (int i = 0; i < n_hook_defs; i++)
        if (!strcmp(hook_defs[i].name, name) && hook_defs[i].real && *hook_defs[i].real) return hook_defs[i].hook;
    return lookup(name);
}

/* one name pair per X, as many per line as fit (clang-format would move them back and forth) */
// clang-format off
#define API_NAMES(X)                                                                                  \
    X(tls_server, "TLS_server_method") X(tls12_client, "TLSv1_2_client_method")                      \
    X(dtls_server, "DTLS_server_method") X(dtls12_client, "DTLSv1_2_client_method")                  \
    X(tls_client, "TLS_client_method") X(dtls_client, "DTLS_client_method")                          \
    X(ctx_new, "SSL_CTX_new") X(ctx_free, "SSL_CTX_free") X(ssl_new, "SSL_new") X(ssl_free, "SSL_free") \
    X(ctx_cert_store, "SSL_CTX_get_cert_store") X(ctx_cert, "SSL_CTX_get0_certificate")              \
    X(ctx_key, "SSL_CTX_get0_privatekey") X(ctx_ex, "SSL_CTX_get_ex_data")                           \
    X(peer_cert, "SSL_get0_peer_certificate") X(peer_chain, "SSL_get_peer_cert_chain")               \
    X(session, "SSL_get_session") X(rbio, "SSL_get_rbio") X(wbio, "SSL_get_wbio")                    \
    X(ssl_ctx, "SSL_get_SSL_CTX") X(ssl_ex, "SSL_get_ex_data") X(ssl_fd, "SSL_get_fd")               \
    X(init_finished, "SSL_is_init_finished") X(store_objects, "X509_STORE_get0_objects")            \
    X(sk_num, "OPENSSL_sk_num") X(sk_value, "OPENSSL_sk_value")                                      \
    X(object_x509, "X509_OBJECT_get0_X509") X(bio_type, "BIO_method_type") X(bio_data, "BIO_get_data")
// clang-format on

static int api_complete(const struct copy_api *a)
{
    return a->tls_server && (a->tls12_client || a->tls_client) && a->ctx_new && a->ctx_free && a->ssl_new &&
           a->ssl_free;
}

/* The shared libssl's functions count only when they are libssl's: node exports its static copy's
 * names too, and that copy is walked as a static one (with its own data as library roots). */
static int from_shared_libssl(void *fn)
{
    Dl_info info;
    return fn && dladdr(fn, &info) && info.dli_fname &&
           (strstr(info.dli_fname, "libssl") || strstr(info.dli_fname, "libcrypto"));
}

/* Static copies whose probe functions (SSL_CTX_new, SSL_new, TLS_server_method...) were not found */
char unresolved[MAX_WALK_COPIES][256];
int n_unresolved;

/* Every OpenSSL the walk can read: the shared libssl first, then each statically linked copy. */
int resolve_api(void)
{
    n_apis = 0;
    n_unresolved = 0;
    struct copy_api *a = &apis[0];
    memset(a, 0, sizeof *a);
#define L(field, name) a->field = (__typeof__(a->field))lookup(name);
    API_NAMES(L)
#undef L
    /* the probe of the shared copy goes through the hooks (see hooked()) */
    a->ctx_new = (__typeof__(a->ctx_new))hooked("SSL_CTX_new");
    a->ctx_free = (__typeof__(a->ctx_free))hooked("SSL_CTX_free");
    a->ssl_new = (__typeof__(a->ssl_new))hooked("SSL_new");
    a->ssl_free = (__typeof__(a->ssl_free))hooked("SSL_free");
    if (api_complete(a) && from_shared_libssl((void *)a->tls_server)) n_apis++;
    static const char *const names[] = {
#define N(field, name) name,
        API_NAMES(N)
#undef N
    };
    enum { N_NAMES = sizeof names / sizeof names[0] };
    for (int i = 0; i < static_copies_count() && n_apis < MAX_WALK_COPIES; i++) {
        if (!static_copy_is_static(i)) continue;
        a = &apis[n_apis];
        memset(a, 0, sizeof *a);
        void *found[N_NAMES];
        static_copy_resolve(i, names, N_NAMES, found);
        int k = 0;
        /* a static copy's probe uses its own SSL_CTX_new/SSL_free: nothing hooks them */
#define S(field, name) a->field = (__typeof__(a->field))found[k++];
        API_NAMES(S)
#undef S
        const char *kind, *status, *path;
        static_copy_describe(i, &kind, &status, &path);
        snprintf(a->path, sizeof a->path, "%s", path);
        if (api_complete(a)) n_apis++;
        else if (n_unresolved < MAX_WALK_COPIES) snprintf(unresolved[n_unresolved++], sizeof unresolved[0], "%s", path);
    }
    return n_apis;
}

static size_t chunk_size_of(const void *mem) { return ((const size_t *)mem)[-1] & ~(size_t)7; }

static int method_word(const void *obj, size_t chunk, const void *method)
{
    const uintptr_t *w = obj;
    for (size_t i = 0; i < (chunk - 16) / 8 && i < 64; i++)
        if (w[i] == (uintptr_t)method) return (int)i;
    return -1;
}

/* The words two method tables of one family share are its implementation: tls1_new, tls1_free... */
static void learn_signature(int family, const uintptr_t *a, const uintptr_t *b)
{
    int n = 0;
    for (int i = 2; i < SIG_WORDS && a && b; i++) {
        if (a[i] && a[i] == b[i]) {
            api.sig_index[family][n] = i;
            api.sig_value[family][n++] = a[i];
        }
    }
    api.n_sig[family] = n;
}

/* Per-thread OpenSSL state (the error queue, the thread's DRBGs and their locks) hangs off
 * pthread keys, not off any connection. Where struct pthread keeps key values is learned from this
 * thread with a key of our own; which keys are OpenSSL's, from this thread too: the probe made it
 * use OpenSSL, so the keys holding a value here now are OpenSSL's (this thread runs no other code
 * that sets keys). */
static void learn_threads(void)
{
    learned.specific_off = -1;
    pthread_key_t k;
    static char sentinel;
    if (pthread_key_create(&k, NULL) != 0) return;
    if (k < 32 && pthread_setspecific(k, &sentinel) == 0) {
        const uintptr_t *self = (const uintptr_t *)pthread_self();
        for (long i = 0; i < 4096 / 8; i++) {
            if (self[i] == (uintptr_t)&sentinel) {
                learned.specific_off = i * 8 - 8 - 16 * (long)k;
                break;
            }
        }
    }
    pthread_setspecific(k, NULL);
    pthread_key_delete(k);
    for (uint32_t key = 0; key < KEYS_MAX && learned.n_keys < MAX_OSSL_KEYS; key++)
        if (key != k && pthread_getspecific(key)) learned.keys[learned.n_keys++] = key;
}

/* Before the clone: each thread's stack pointer, from /proc (threads running on a CPU have none). */
void read_thread_sps(void)
{
    n_thread_sp = 0;
    DIR *d = opendir("/proc/self/task");
    if (!d) return;
    pid_t me = (pid_t)syscall(SYS_gettid);
    struct dirent *e;
    while ((e = readdir(d)) && n_thread_sp < MAX_THREADS) {
        int tid = atoi(e->d_name);
        if (tid <= 0 || tid == me) continue;
        char path[64], text[256];
        snprintf(path, sizeof path, "/proc/self/task/%d/syscall", tid);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) continue;
        ssize_t n = read(fd, text, sizeof text - 1);
        close(fd);
        if (n <= 0) continue;
        text[n] = 0;
        /* "nr arg1 ... arg6 sp pc": the second last field */
        char *fields[10], *save = NULL;
        int nf = 0;
        for (char *t = strtok_r(text, " \n", &save); t && nf < 10; t = strtok_r(NULL, " \n", &save)) fields[nf++] = t;
        if (nf == 9) thread_sp[n_thread_sp++] = (uintptr_t)strtoull(fields[7], NULL, 16);
    }
    closedir(d);
}

/* One copy's layout, from a probe SSL_CTX and SSL made with that copy's own functions and freed
 * right away (before any clone: the walk never sees them). */
static const char *learn_copy(void)
{
    const void *method = api.tls_server();
    void *ctx = api.ctx_new(method);
    if (!ctx) return "a probe SSL_CTX could not be made";
    void *ssl = api.ssl_new(ctx);
    if (!ssl) {
        api.ctx_free(ctx);
        return "a probe SSL could not be made";
    }
    api.ctx_chunk = chunk_size_of(ctx);
    api.ssl_chunk = chunk_size_of(ssl);
    api.ctx_method_word = method_word(ctx, api.ctx_chunk, method);
    api.ssl_method_word = method_word(ssl, api.ssl_chunk, method);
    /* malloc_usable_size must agree with the header we read: else OpenSSL's memory functions were
     * replaced (a proxy's own allocator) and pointers are not glibc chunk starts */
    int glibc_chunks = malloc_usable_size(ctx) + 8 == api.ctx_chunk && malloc_usable_size(ssl) + 8 == api.ssl_chunk;
    api.ssl_free(ssl);
    api.ctx_free(ctx);
    if (!glibc_chunks) return "OpenSSL's blocks are not glibc chunks (CRYPTO_set_mem_functions with another allocator)";
    if (api.ctx_method_word < 0 || api.ssl_method_word < 0)
        return "the SSL_METHOD pointer was not found in a probe SSL_CTX/SSL";
    if (api.ctx_chunk + 32 >= api.ssl_chunk && api.ssl_chunk + 32 >= api.ctx_chunk)
        return "SSL_CTX and SSL have about the same chunk size here";
    /* a table of another version and role shares only the family's implementation; a static copy
     * linked with --gc-sections may keep only TLS_client_method: the same role split, and the
     * version-specific words are too few to reach a quarter of the signature */
    learn_signature(0, api.tls_server(), api.tls12_client ? api.tls12_client() : api.tls_client());
    method_fn dtls_other = api.dtls12_client ? api.dtls12_client : api.dtls_client;
    if (api.dtls_server && dtls_other) learn_signature(1, api.dtls_server(), dtls_other());
    if (api.n_sig[0] < 6) return "no SSL_METHOD signature could be learned";
    return NULL;
}

/* Copies learned by earlier walks keep what they learned (the shared copy's probe shows in the
 * report as a freed context: once per process, not once per walk). */
static struct copy_api known[MAX_WALK_COPIES];
static int n_known;

const char *learn(void)
{
    const char *first_problem = NULL;
    int usable = 0;
    for (int i = 0; i < n_apis; i++) {
        cur_api = &apis[i];
        int j;
        for (j = 0; j < n_known && known[j].tls_server != api.tls_server; j++) {
        }
        if (j < n_known) {
            apis[i] = known[j];
        } else {
            api.problem = learn_copy();
            api.usable = !api.problem;
            if (n_known < MAX_WALK_COPIES) known[n_known++] = api;
        }
        if (api.usable) usable++;
        else if (!first_problem) first_problem = api.problem;
    }
    cur_api = &apis[0];
    if (!usable) return first_problem ? first_problem : "no OpenSSL to walk";
    if (learned.ready) return NULL;
    /* A freed small chunk goes to this thread's tcache, which writes glibc's random tcache_key at
     * mem+8. Unless that tcache bin is full: then the chunk goes to a fastbin and mem+8 keeps
     * whatever it held (once, right after the probe, a method pointer: every context then looked
     * free). So: three chunks of different bins must agree on a word that is no pointer we know. */
    uintptr_t keys[3] = {0, 0, 0};
    static const size_t sizes[3] = {200, 376, 552};
    void *volatile blocks[3];
    for (int i = 0; i < 3; i++) blocks[i] = malloc(sizes[i]);
    for (int i = 0; i < 3; i++) {
        if (!blocks[i]) continue;
        free(blocks[i]);
        keys[i] = ((volatile uintptr_t *)blocks[i])[1];
    }
    Dl_info info;
    if (keys[0] && keys[0] == keys[1] && keys[1] == keys[2] && !dladdr((void *)keys[0], &info))
        learned.tcache_key = keys[0];
    learn_threads();
    learned.ready = 1;
    return NULL;
}

const char *allocator_problem(char *why, size_t n)
{
    void *libc = dlopen("libc.so.6", RTLD_NOLOAD | RTLD_LAZY);
    void *glibc_malloc = libc ? dlsym(libc, "malloc") : NULL;
    /* the first definition in load order is what calls resolve to (an LD_PRELOADed jemalloc);
     * dlsym(RTLD_DEFAULT) is no good: a non-PIE executable (Debian's python3) that takes malloc's
     * address makes its own PLT entry malloc's canonical address */
    void *used = lookup("malloc");
    if (libc) dlclose(libc);
    if (glibc_malloc && used == glibc_malloc) return NULL;
    Dl_info info;
    const char *from = used && dladdr(used, &info) && info.dli_fname ? info.dli_fname : "?";
    snprintf(why, n, "malloc is not glibc's (it comes from %s): the heap walk reads glibc's heap only", from);
    return why;
}

/* ================= the child: everything below runs in the copy only ================= */
