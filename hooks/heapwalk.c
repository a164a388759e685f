/* WALK: the OpenSSL memory that predates the hooks, measured by walking glibc's heap.
 *
 * Hooks see only what is allocated after they are installed; a server attached after days holds
 * contexts and idle connections that never call into OpenSSL again. The walk finds every live
 * SSL_CTX and SSL in the heap and gives each in-use chunk to the object that reaches it first.
 *
 * Never harm the target: the walk runs in a copy-on-write child made with a raw clone() (no atfork
 * handlers, no exit signal, so the target's own SIGCHLD handling and waitpid(-1) never see it). The
 * child sees a frozen heap, only reads it, uses only memory it mmaps itself, takes no lock, calls
 * only OpenSSL getters that read one field, runs with every signal blocked (a fault kills the
 * child, never a handler of the target), writes its answer into a pipe and exits. The parent only
 * forks (the pause, measured and reported as fork_us) and reads the pipe under a time bound.
 *
 * How objects are found (learned at run time, nothing hard-coded per OpenSSL build): a probe
 * SSL_CTX and SSL made with the real libssl give the chunk size of each struct and the word that
 * holds its SSL_METHOD pointer. An SSL_METHOD is recognised by the words TLS method tables of a
 * different version and role share (ssl_new, ssl_clear, ssl_free, read, write...: TLS_server_method
 * against TLSv1_2_client_method); three quarters of them must match, so the internal tables a
 * connection switches to after version negotiation (TLS 1.3, with its own enc table) match too.
 *
 * Ownership by reachability: a multi-source breadth-first search from every root at once (each
 * chunk goes to the root nearest to it), sub-roots that the public API names first (the context's
 * X509_STORE is ca_store, its certificate and key own_certificate, a connection's peer certificate
 * and chain peer_certificate, its session, its BIOs), then the objects themselves. Before that,
 * everything reachable from libssl's and libcrypto's own global variables without passing through
 * a context or connection is OpenSSL's library state (providers, algorithm caches, name maps): it
 * belongs to the process, not to whichever context the search happens to reach it from first.
 * Application data hung on an object (ex_data, a custom BIO's data) is a barrier: the search never
 * enters it, or a connection would own its server's whole connection structure. */
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

#include "shim.h"

#define HEAP_MAX (64ul << 20)   /* glibc's HEAP_MAX_SIZE on 64-bit: thread heaps are aligned to it */
#define HEAP_INFO_SIZE 48       /* sizeof(heap_info), padded to MALLOC_ALIGNMENT */
#define MIN_CHUNK 32
#define SIG_WORDS 16            /* words of an SSL_METHOD compared */
#define EX_DATA_SLOTS 8         /* application ex_data slots treated as barriers */
#define RECORD_BUFFER_MIN 16384 /* a record buffer holds a whole TLS record (16 KiB + overhead) */
#define RECORD_BUFFER_MAX (128 * 1024)
#define MAX_OSSL_KEYS 64
#define MAX_THREADS 16384
#define TCB_SEARCH 16384        /* glibc puts struct pthread at the top of a thread's stack mapping */
#define STACK_SCAN_MAX (1u << 20)
#define KEYS_MAX 1024           /* PTHREAD_KEYS_MAX */

enum { OWN_NONE = 0, OWN_LIBRARY = 1, OWN_BARRIER = 2, OWN_FIRST_OBJECT = 3 };

/* ---- the OpenSSL functions the walk uses, from the defining object ---- */
typedef const void *(*method_fn)(void);
#define MAX_WALK_COPIES 8
/* One set per OpenSSL of the process: the shared libssl (through the hooks) and every statically
 * linked copy (node's executable, pip's cryptography), each with its own getters, probe and learned
 * layout. A copy's objects are called only with that copy's functions. */
struct copy_api {
    method_fn tls_server, tls12_client, dtls_server, dtls12_client;
    method_fn tls_client, dtls_client; /* when the above were not linked in (pip's cryptography) */
    void *(*ctx_new)(const void *);
    void (*ctx_free)(void *);
    void *(*ssl_new)(void *);
    void (*ssl_free)(void *);
    void *(*ctx_cert_store)(const void *);
    void *(*ctx_cert)(const void *);
    void *(*ctx_key)(const void *);
    void *(*ctx_ex)(const void *, int);
    void *(*peer_cert)(const void *);
    void *(*peer_chain)(const void *);
    void *(*session)(const void *);
    void *(*rbio)(const void *);
    void *(*wbio)(const void *);
    void *(*ssl_ctx)(const void *);
    void *(*ssl_ex)(const void *, int);
    int (*ssl_fd)(const void *);
    int (*init_finished)(const void *);
    void *(*store_objects)(const void *);
    int (*sk_num)(const void *);
    void *(*sk_value)(const void *, int);
    void *(*object_x509)(const void *);
    int (*bio_type)(const void *);
    void *(*bio_data)(void *);
    /* learned from this copy's probe */
    size_t ctx_chunk, ssl_chunk;     /* chunk size of each struct */
    int ctx_method_word, ssl_method_word;
    int n_sig[2];
    int sig_index[2][SIG_WORDS];
    uintptr_t sig_value[2][SIG_WORDS];
    int usable;                      /* probe learned; 0: skipped (its problem in `problem`) */
    const char *problem;
    char path[256];                  /* "" for the shared libssl; else the object holding the copy */
};
static struct copy_api apis[MAX_WALK_COPIES];
static int n_apis;
static struct copy_api *cur_api = &apis[0];
#define api (*cur_api)

/* ---- what the probe taught us (once per process) ---- */
static struct {
    int ready;
    uintptr_t tcache_key;            /* the word glibc stores in a tcache-free chunk at mem+8 */
    long specific_off;               /* struct pthread: specific_1stblock[0], or -1 */
    int n_keys;
    uint32_t keys[MAX_OSSL_KEYS];    /* pthread keys that hold OpenSSL's per-thread state */
} learned;

/* Threads blocked in a system call, read in the parent just before the clone: where each one's
 * stack pointer is (the child has no other thread to ask). */
static uintptr_t thread_sp[MAX_THREADS];
static int n_thread_sp;

static pthread_mutex_t walk_lock = PTHREAD_MUTEX_INITIALIZER;


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
static char unresolved[MAX_WALK_COPIES][256];
static int n_unresolved;

/* Every OpenSSL the walk can read: the shared libssl first, then each statically linked copy. */
static int resolve_api(void)
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
static void read_thread_sps(void)
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
    int glibc_chunks = malloc_usable_size(ctx) + 8 == api.ctx_chunk &&
                       malloc_usable_size(ssl) + 8 == api.ssl_chunk;
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

static const char *learn(void)
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

static const char *allocator_problem(char *why, size_t n)
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

struct out {
    int fd;
    char buf[8192];
    size_t len;
};

static void out_flush(struct out *o)
{
    size_t off = 0;
    while (off < o->len) {
        ssize_t n = write(o->fd, o->buf + off, o->len - off);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) _exit(3);
        off += (size_t)n;
    }
    o->len = 0;
}

static void out_put(struct out *o, const char *fmt, ...)
{
    if (o->len > sizeof o->buf - 1024) out_flush(o);
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(o->buf + o->len, sizeof o->buf - o->len, fmt, ap);
    va_end(ap);
    if (n > 0) o->len += (size_t)n < sizeof o->buf - o->len ? (size_t)n : sizeof o->buf - o->len - 1;
}

static void *region(size_t bytes)
{
    void *p = mmap(NULL, bytes ? bytes : 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

struct mapping {
    uintptr_t lo, hi;
    char r, w;
    char anon;    /* no path: anonymous memory */
    char heap;    /* [heap] */
    char openssl; /* a file of libssl / libcrypto */
};

struct walk {
    struct mapping *maps;
    size_t n_maps;
    uintptr_t *addr;    /* in-use chunks, ascending */
    uint32_t *size;
    uint32_t *owner;    /* OWN_* or OWN_FIRST_OBJECT + object index */
    uint8_t *cause;
    size_t n, cap;
    uint32_t *queue;
    size_t q_head, q_tail;
    uint64_t heap_bytes, free_bytes, tcache_chunks;
    int arenas, heaps, mmapped, bad_regions;
};

static uintptr_t hex(const char **s)
{
    uintptr_t v = 0;
    for (;; (*s)++) {
        char c = **s;
        if (c >= '0' && c <= '9') v = v * 16 + (uintptr_t)(c - '0');
        else if (c >= 'a' && c <= 'f') v = v * 16 + (uintptr_t)(c - 'a' + 10);
        else return v;
    }
}

static int read_maps(struct walk *w)
{
    size_t cap = 64u << 20;
    char *text = region(cap);
    if (!text) return -1;
    int fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    size_t len = 0;
    for (;;) {
        ssize_t n = read(fd, text + len, cap - 1 - len);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        len += (size_t)n;
    }
    close(fd);
    text[len] = 0;
    size_t lines = 0;
    for (size_t i = 0; i < len; i++) lines += text[i] == '\n';
    w->maps = region((lines + 1) * sizeof *w->maps);
    if (!w->maps) return -1;
    const char *s = text;
    while (*s) {
        struct mapping m = {0};
        m.lo = hex(&s);
        if (*s == '-') s++;
        m.hi = hex(&s);
        while (*s == ' ') s++;
        m.r = s[0] == 'r';
        m.w = s[1] == 'w';
        /* perms, offset, dev, inode, then the path (or nothing) */
        for (int field = 0; field < 4 && *s && *s != '\n'; field++) {
            while (*s && *s != ' ' && *s != '\n') s++;
            while (*s == ' ') s++;
        }
        const char *path = s;
        while (*s && *s != '\n') s++;
        size_t plen = (size_t)(s - path);
        m.anon = plen == 0;
        m.heap = plen == 6 && !memcmp(path, "[heap]", 6);
        m.openssl = (memmem(path, plen, "libssl", 6) || memmem(path, plen, "libcrypto", 9)) ? 1 : 0;
        /* a static copy's library state lives in the writable data of the object holding it (for
         * node, the executable's .data/.bss: node's own globals too, which hold no SSL object's
         * memory but what node keeps for the process) */
        for (int c = 0; c < n_apis && !m.openssl; c++)
            m.openssl = apis[c].usable && apis[c].path[0] && strlen(apis[c].path) == plen &&
                        !memcmp(apis[c].path, path, plen);
        if (*s == '\n') s++;
        /* our own buffer for this text is in the list too: it is neither the target's nor kept */
        if (m.hi > m.lo && !(m.lo <= (uintptr_t)text && (uintptr_t)text < m.hi)) w->maps[w->n_maps++] = m;
    }
    munmap(text, cap);
    return 0;
}

static const struct mapping *mapping_of(const struct walk *w, uintptr_t p)
{
    size_t lo = 0, hi = w->n_maps;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (w->maps[mid].hi <= p) lo = mid + 1;
        else hi = mid;
    }
    return lo < w->n_maps && w->maps[lo].lo <= p && w->maps[lo].r ? &w->maps[lo] : NULL;
}

static inline uintptr_t word(uintptr_t p) { return *(const uintptr_t *)p; }

static void add_chunk(struct walk *w, uintptr_t p, size_t sz)
{
    if (w->n == w->cap) return;
    /* a tcache-free chunk looks in use to the heap; glibc marks it with the tcache key at mem+8 */
    if (learned.tcache_key && sz >= 32 && word(p + 24) == learned.tcache_key) {
        w->tcache_chunks++;
        w->free_bytes += sz;
        return;
    }
    w->addr[w->n] = p;
    w->size[w->n] = (uint32_t)(sz > UINT32_MAX ? UINT32_MAX : sz);
    w->n++;
}

/* Chunks of one arena heap from `first` to `end`; 0 when the chain reached the end cleanly. */
static int walk_chunks(struct walk *w, uintptr_t first, uintptr_t end, int dry_run)
{
    uintptr_t p = first;
    while (p + 16 <= end) {
        size_t sz = word(p + 8) & ~(size_t)7;
        if (sz == 0) return 0; /* the fencepost at the end of a thread heap */
        if (sz < 16 || (sz & 15) || sz > end - p) return -1;
        uintptr_t next = p + sz;
        if (next + 16 > end) return 0; /* the top chunk: free */
        if (!dry_run) {
            if (word(next + 8) & 1) add_chunk(w, p, sz);
            else w->free_bytes += sz;
        }
        p = next;
    }
    return p == end ? 0 : -1;
}

/* A thread arena's heap: heap_info at a HEAP_MAX-aligned address, chunks after it (after the arena
 * itself for the arena's first heap, whose size depends on the glibc build: found by the chain). */
static int walk_thread_heap(struct walk *w, const struct mapping *m)
{
    uintptr_t h = m->lo;
    uintptr_t ar_ptr = word(h), size = word(h + 16);
    if (size < 4096 || size > HEAP_MAX || size > m->hi - m->lo) return 0;
    uintptr_t end = h + size;
    if (ar_ptr != h + HEAP_INFO_SIZE) {
        if (walk_chunks(w, h + HEAP_INFO_SIZE, end, 1) != 0) return 0;
        walk_chunks(w, h + HEAP_INFO_SIZE, end, 0);
        w->heaps++;
        return 1;
    }
    for (uintptr_t first = h + HEAP_INFO_SIZE + 2176; first < h + 8192 && first < end; first += 16) {
        if (word(first + 8) & 1 && walk_chunks(w, first, end, 1) == 0) { /* PREV_INUSE is set on the first */
            walk_chunks(w, first, end, 0);
            w->heaps++;
            w->arenas++;
            return 1;
        }
    }
    return 0;
}

static void walk_mmapped(struct walk *w, const struct mapping *m)
{
    uintptr_t p = m->lo;
    while (p + 4096 <= m->hi) {
        size_t head = word(p + 8), sz = head & ~(size_t)7;
        if (word(p) != 0 || (head & 7) != 2 || sz < 4096 || (sz & 4095) || sz > m->hi - p) return;
        add_chunk(w, p, sz);
        w->mmapped++;
        p += sz;
    }
}

static int collect_chunks(struct walk *w)
{
    uint64_t total = 0;
    for (size_t i = 0; i < w->n_maps; i++)
        if (w->maps[i].anon || w->maps[i].heap) total += w->maps[i].hi - w->maps[i].lo;
    w->cap = total / MIN_CHUNK + 16;
    w->addr = region(w->cap * sizeof *w->addr);
    w->size = region(w->cap * sizeof *w->size);
    w->owner = region(w->cap * sizeof *w->owner);
    w->cause = region(w->cap);
    w->queue = region(2 * w->cap * sizeof *w->queue); /* library pass, then roots re-queued */
    if (!w->addr || !w->size || !w->owner || !w->cause || !w->queue) return -1;
    /* maps are in address order, and so is every region's chain: the array comes out sorted */
    for (size_t i = 0; i < w->n_maps; i++) {
        const struct mapping *m = &w->maps[i];
        if (!m->r || !m->w) continue;
        if (m->heap) {
            /* the brk heap may show as several adjacent VMAs (a forked nginx worker grew its own
             * part): one arena, one chain across them */
            uintptr_t hi = m->hi;
            while (i + 1 < w->n_maps && w->maps[i + 1].heap && w->maps[i + 1].lo == hi && w->maps[i + 1].r &&
                   w->maps[i + 1].w)
                hi = w->maps[++i].hi;
            w->heap_bytes += hi - m->lo;
            if (walk_chunks(w, m->lo, hi, 0) != 0) w->bad_regions++;
            w->arenas++;
        } else if (m->anon) {
            if (!(m->lo & (HEAP_MAX - 1)) && walk_thread_heap(w, m)) {
                w->heap_bytes += word(m->lo + 16);
                continue;
            }
            size_t before = w->n;
            walk_mmapped(w, m);
            for (size_t k = before; k < w->n; k++) w->heap_bytes += w->size[k];
        }
    }
    return 0;
}

static uintptr_t lo_addr, hi_addr;

/* The in-use chunk whose user memory starts at `p`, or -1. Only pointers to a chunk's start are
 * edges: OpenSSL points at the start of what it allocates, while stray words (a chunk's slack, a
 * stack's unused slots, TLS bytes) and the GC pre-header of Python's objects make interior
 * pointers; following those let one context take its neighbours' CA stores, or Python's heap. */
static inline long chunk_at(const struct walk *w, uintptr_t p)
{
    if (p < lo_addr || p >= hi_addr || (p & 15)) return -1;
    uintptr_t a = p - 16;
    size_t lo = 0, hi = w->n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (w->addr[mid] < a) lo = mid + 1;
        else hi = mid;
    }
    return lo < w->n && w->addr[lo] == a ? (long)lo : -1;
}

static int is_method(const struct walk *w, uintptr_t m)
{
    if (!m || (m & 7)) return 0;
    const struct mapping *map = mapping_of(w, m);
    if (!map || map->hi - m < SIG_WORDS * 8) return 0;
    for (int f = 0; f < 2; f++) {
        if (!api.n_sig[f]) continue;
        int same = 0;
        for (int k = 0; k < api.n_sig[f]; k++)
            same += word(m + 8 * (uintptr_t)api.sig_index[f][k]) == api.sig_value[f][k];
        if (same >= 6 && same * 4 >= api.n_sig[f] * 3) return 1;
    }
    return 0;
}

struct object {
    uint32_t chunk;
    uint8_t copy;       /* index in apis[]: whose functions read it */
    uint8_t is_ssl;
    uint8_t ok;         /* 0: rejected (an SSL whose SSL_CTX is no context found) or faulted */
    int64_t bytes[N_CAUSES], blocks[N_CAUSES];
};

static int claim(struct walk *w, uintptr_t p, uint32_t owner, uint8_t cause, int enqueue)
{
    if (!p) return 0;
    long c = chunk_at(w, p);
    if (c < 0 || w->owner[c] != OWN_NONE) return 0;
    w->owner[c] = owner;
    w->cause[c] = cause;
    if (enqueue) w->queue[w->q_tail++] = (uint32_t)c;
    return 1;
}

/* Breadth-first: every unclaimed chunk a queued chunk points into takes the queued chunk's owner
 * and cause. The record-buffer rule: a large buffer hanging directly off a connection's struct. */
static void spread(struct walk *w, const struct object *objects)
{
    while (w->q_head < w->q_tail) {
        uint32_t c = w->queue[w->q_head++];
        uint32_t owner = w->owner[c];
        uint8_t cause = w->cause[c];
        if (cause == C_RECORD_BUFFERS) continue; /* TLS bytes, not pointers: stale words lead astray */
        int from_object = owner >= OWN_FIRST_OBJECT && objects && objects[owner - OWN_FIRST_OBJECT].chunk == c;
        int from_ssl = from_object && objects[owner - OWN_FIRST_OBJECT].is_ssl;
        /* the object's own struct is `connection`/`context`; what it points to is unnamed unless a
         * sub-root named it (a guess is never presented as a measurement) */
        uint8_t inherited = from_object ? C_OTHER : cause;
        uintptr_t p = w->addr[c] + 16, end = w->addr[c] + w->size[c];
        for (; p + 8 <= end; p += 8) {
            uintptr_t v = word(p);
            long t = chunk_at(w, v);
            if (t < 0 || w->owner[t] != OWN_NONE) continue;
            if (from_ssl && w->size[t] > RECORD_BUFFER_MAX) {
                /* the application's buffer: SSL_write keeps the caller's pointer for a retry
                 * (rlayer.wpend_buf), and asyncio writes from a 256 KiB bytearray. OpenSSL hangs
                 * nothing this large off a connection's struct itself. */
                w->owner[t] = OWN_BARRIER;
                continue;
            }
            w->owner[t] = owner;
            w->cause[t] = (from_ssl && w->size[t] >= RECORD_BUFFER_MIN && w->size[t] <= RECORD_BUFFER_MAX)
                              ? C_RECORD_BUFFERS : inherited;
            w->queue[w->q_tail++] = (uint32_t)t;
        }
    }
}

static void barrier(struct walk *w, void *p)
{
    claim(w, (uintptr_t)p, OWN_BARRIER, C_OTHER, 0);
}

static void bio_roots(struct walk *w, void *bio, uint32_t owner)
{
    if (!bio) return;
    claim(w, (uintptr_t)bio, owner, C_BIO, 1);
    /* a BIO method the application registered (type >= BIO_TYPE_START) keeps application data */
    if (api.bio_type && api.bio_data && (api.bio_type(bio) & 0xff) >= 128) barrier(w, api.bio_data(bio));
}

/* The elements of an OPENSSL_STACK (and, for X509_OBJECTs, their certificates) as sub-roots. */
static void claim_stack(struct walk *w, void *sk, uint32_t owner, uint8_t cause)
{
    if (!sk || !api.sk_num || !api.sk_value || chunk_at(w, (uintptr_t)sk) < 0) return;
    int n = api.sk_num(sk);
    for (int i = 0; i < n && i < 1000000; i++) {
        void *item = api.sk_value(sk, i);
        claim(w, (uintptr_t)item, owner, cause, 1);
        if (cause == C_CA_STORE && item && api.object_x509) claim(w, (uintptr_t)api.object_x509(item), owner, cause, 1);
    }
}

static uintptr_t read_word(const struct walk *w, uintptr_t p)
{
    const struct mapping *m = mapping_of(w, p);
    return m && p + 8 <= m->hi && !(p & 7) ? word(p) : 0;
}

/* A thread's OpenSSL state (its pthread keys' values: the error queue, the thread's DRBGs and their
 * locks) belongs to the process, as the tracked bytes' `thread_state` does (hooks/causes.c): it
 * outlives any connection the thread serves. Searched after the objects, so it takes only what no
 * object reaches. */
static void thread_roots(struct walk *w, const struct object *objects, size_t n_obj, int *seen, int *owned)
{
    (void)n_obj;
    (void)owned;
    if (learned.specific_off < 0 || !learned.n_keys) return;
    for (int t = 0; t < n_thread_sp; t++) {
        const struct mapping *m = mapping_of(w, thread_sp[t]);
        if (!m || !m->anon || !m->w) continue;
        uintptr_t tcb = 0;
        uintptr_t from = m->hi - TCB_SEARCH > m->lo && m->hi > TCB_SEARCH ? m->hi - TCB_SEARCH : m->lo;
        for (uintptr_t a = (from + 63) & ~(uintptr_t)63; a + 24 <= m->hi; a += 64)
            if (word(a) == a && word(a + 16) == a) tcb = a; /* tcbhead_t: tcb and self point to itself */
        if (!tcb || tcb < thread_sp[t]) continue;
        (*seen)++;
        uint32_t owner = OWN_LIBRARY;
        uintptr_t specific = tcb + (uintptr_t)learned.specific_off;
        for (int i = 0; i < learned.n_keys; i++) {
            uint32_t key = learned.keys[i];
            uintptr_t value;
            if (key < 32) {
                value = read_word(w, specific + 16 * key + 8);
            } else {
                uintptr_t second = read_word(w, specific + 16 * 32 + 8 * (key / 32));
                value = second ? read_word(w, second + 16 * (key % 32) + 8) : 0;
            }
            claim(w, value, owner, C_THREAD_STATE, 1);
        }
        spread(w, objects);
    }
}

/* ---- the fault guard: OpenSSL's getters read the objects' fields, and a chunk that only looks like
 * an object (a freed SSL's memory reused with its old method word) could make them read a wild
 * pointer. In the child a fault skips that object; no handler of the target runs here. ---- */
static sigjmp_buf fault_jmp;
static volatile sig_atomic_t in_guard;
static int faults;

static int child_out_fd = -1;
static const char *volatile phase = "start";

/* Outside the guard a fault ends the walk; it says where, on its own line (the reader takes the
 * last status and reason: a partial answer before it is ignored). */
static void on_fault(int sig, siginfo_t *si, void *uc)
{
    if (in_guard) siglongjmp(fault_jmp, 1);
    char msg[160] = "\nstatus failed\nreason the walk faulted while ";
    size_t n = strlen(msg), pl = strlen(phase);
    memcpy(msg + n, phase, pl < 60 ? pl : 60);
    n += pl < 60 ? pl : 60;
    static const char at[] = " at 0x";
    memcpy(msg + n, at, sizeof at - 1);
    n += sizeof at - 1;
    uintptr_t a = (uintptr_t)si->si_addr;
    for (int shift = 44; shift >= 0; shift -= 4) msg[n++] = "0123456789abcdef"[(a >> shift) & 15];
    memcpy(msg + n, "\nEND\n", 5);
    n += 5;
    if (write(child_out_fd, msg, n) < 0) {
    }
    _exit(128 + sig);
}

static void guard_faults(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_fault;
    sa.sa_flags = SA_SIGINFO;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, NULL);
    sigaction(SIGBUS, &sa, NULL);
    sigset_t faults_only;
    sigemptyset(&faults_only);
    sigaddset(&faults_only, SIGSEGV);
    sigaddset(&faults_only, SIGBUS);
    sigprocmask(SIG_UNBLOCK, &faults_only, NULL);
}

typedef void (*object_fn)(struct walk *, struct object *, size_t, void *);

static void guarded(object_fn fn, struct walk *w, struct object *objects, size_t k, void *arg)
{
    cur_api = &apis[objects[k].copy];
    if (sigsetjmp(fault_jmp, 1)) {
        in_guard = 0;
        faults++;
        objects[k].ok = 0;
        return;
    }
    in_guard = 1;
    fn(w, objects, k, arg);
    in_guard = 0;
}

static void *object_ptr(const struct walk *w, const struct object *o) { return (void *)(w->addr[o->chunk] + 16); }

/* An SSL is one only when its SSL_CTX is a context found here (one field read). */
static void validate(struct walk *w, struct object *objects, size_t k, void *arg)
{
    if (!objects[k].is_ssl || !api.ssl_ctx) return;
    long c = chunk_at(w, (uintptr_t)api.ssl_ctx(object_ptr(w, &objects[k])));
    uint32_t own = c >= 0 ? w->owner[c] : 0;
    size_t i = own >= OWN_FIRST_OBJECT ? own - OWN_FIRST_OBJECT : SIZE_MAX;
    if (i == SIZE_MAX || objects[i].is_ssl || objects[i].chunk != (uint32_t)c) objects[k].ok = 0;
}

static void barriers_of(struct walk *w, struct object *objects, size_t k, void *arg)
{
    void *obj = object_ptr(w, &objects[k]);
    for (int slot = 0; slot < EX_DATA_SLOTS; slot++) {
        if (objects[k].is_ssl && api.ssl_ex) barrier(w, api.ssl_ex(obj, slot));
        if (!objects[k].is_ssl && api.ctx_ex) barrier(w, api.ctx_ex(obj, slot));
    }
}

/* A getter that reads through a pointer is called only when that pointer is a chunk's start. */
static int chunk_ptr(const struct walk *w, const void *p) { return p && chunk_at(w, (uintptr_t)p) >= 0; }

static void subroots_of(struct walk *w, struct object *objects, size_t k, void *arg)
{
    void *obj = object_ptr(w, &objects[k]);
    uint32_t owner = OWN_FIRST_OBJECT + (uint32_t)k;
    if (!objects[k].is_ssl) {
        void *store = api.ctx_cert_store ? api.ctx_cert_store(obj) : NULL;
        claim(w, (uintptr_t)store, owner, C_CA_STORE, 1);
        /* every certificate of the store is a sub-root of its own: a stray word elsewhere can then
         * take at most a piece of one certificate, never a whole store */
        void *objs = chunk_ptr(w, store) && api.store_objects ? api.store_objects(store) : NULL;
        claim_stack(w, objs, owner, C_CA_STORE);
        if (api.ctx_cert) claim(w, (uintptr_t)api.ctx_cert(obj), owner, C_OWN_CERT, 1);
        if (api.ctx_key) claim(w, (uintptr_t)api.ctx_key(obj), owner, C_OWN_CERT, 1);
    } else {
        void *session = api.session ? api.session(obj) : NULL;
        if (chunk_ptr(w, session)) {
            if (api.peer_cert) claim(w, (uintptr_t)api.peer_cert(obj), owner, C_PEER_CERT, 1);
            void *chain = api.peer_chain ? api.peer_chain(obj) : NULL;
            claim(w, (uintptr_t)chain, owner, C_PEER_CERT, 1);
            claim_stack(w, chain, owner, C_PEER_CERT);
        }
        claim(w, (uintptr_t)session, owner, C_SESSION, 1);
        void *rbio = api.rbio ? api.rbio(obj) : NULL, *wbio = api.wbio ? api.wbio(obj) : NULL;
        if (chunk_ptr(w, rbio)) bio_roots(w, rbio, owner);
        if (chunk_ptr(w, wbio)) bio_roots(w, wbio, owner);
    }
}

#define BIO_TYPE_SOCKET_ (5 | 0x0400 | 0x0100)
#define APP_SCAN_WORDS 512 /* words of an application object searched for the context it holds */

/* The found context at p (a chunk start), or NULL. */
static void *context_at(const struct walk *w, const struct object *objects, uintptr_t p)
{
    long c = chunk_at(w, p);
    if (c < 0 || w->owner[c] < OWN_FIRST_OBJECT) return NULL;
    const struct object *ob = &objects[w->owner[c] - OWN_FIRST_OBJECT];
    return ob->chunk == (uint32_t)c && !ob->is_ssl && ob->ok ? (void *)p : NULL;
}

/* The context the application holds for a connection when it is not the SSL's own: node answers
 * SNI by copying a SecureContext's certificate into the SSL (SSL_use_certificate) and keeps that
 * SecureContext on its TLSWrap, the SSL's app data, so SSL_get_SSL_CTX still names the server's
 * context. Searched: the ex_data objects, and the objects they point to, one level down; a single
 * context other than the SSL's own is the answer, several (or none) are none. */
static void *application_context(const struct walk *w, const struct object *objects, void *obj, void *own_ctx)
{
    void *found = NULL;
    for (int slot = 0; slot < EX_DATA_SLOTS && api.ssl_ex; slot++) {
        uintptr_t app = (uintptr_t)api.ssl_ex(obj, slot);
        long a = app ? chunk_at(w, app) : -1;
        if (a < 0) continue;
        uintptr_t end = w->addr[a] + w->size[a];
        for (uintptr_t p = app, n = 0; p + 8 <= end && n < APP_SCAN_WORDS; p += 8, n++) {
            uintptr_t v = word(p);
            void *ctx = context_at(w, objects, v);
            long b = ctx ? -1 : chunk_at(w, v);
            if (b >= 0 && w->owner[b] < OWN_FIRST_OBJECT) {
                uintptr_t end2 = w->addr[b] + w->size[b];
                for (uintptr_t q = v, m = 0; q + 8 <= end2 && m < 32 && !ctx; q += 8, m++)
                    ctx = context_at(w, objects, word(q));
            }
            if (!ctx || ctx == own_ctx || ctx == found) continue;
            if (found) return NULL;
            found = ctx;
        }
    }
    return found;
}

static void put_object(struct walk *w, struct object *objects, size_t k, void *arg)
{
    struct out *o = arg;
    struct object *ob = &objects[k];
    void *obj = object_ptr(w, ob);
    int64_t bytes = 0, blocks = 0;
    for (int c = 0; c < N_CAUSES; c++) {
        bytes += ob->bytes[c];
        blocks += ob->blocks[c];
    }
    char line[1024];
    size_t len = 0;
#define ADD(...) len += (size_t)snprintf(line + len, len < sizeof line ? sizeof line - len : 0, __VA_ARGS__)
    ADD("X kind=%s ptr=%lx bytes=%lld blocks=%lld copy=%d", ob->is_ssl ? "ssl" : "ctx", (unsigned long)obj,
        (long long)bytes, (long long)blocks, (int)ob->copy);
    if (ob->is_ssl) {
        void *own_ctx = api.ssl_ctx ? api.ssl_ctx(obj) : NULL;
        if (api.ssl_ctx) ADD(" ctx=%lx", (unsigned long)own_ctx);
        void *app_ctx = application_context(w, objects, obj, own_ctx);
        if (app_ctx) ADD(" app_ctx=%lx", (unsigned long)app_ctx);
        if (api.init_finished) ADD(" state=%s", api.init_finished(obj) ? "established" : "handshake");
        /* SSL_get_fd calls the BIO's ctrl: only for OpenSSL's own socket BIO */
        void *rbio = api.rbio ? api.rbio(obj) : NULL;
        int sfd = -1;
        if (chunk_ptr(w, rbio) && api.bio_type && api.bio_type(rbio) == BIO_TYPE_SOCKET_ && api.ssl_fd)
            sfd = api.ssl_fd(obj);
        if (sfd >= 0) ADD(" fd=%d", sfd);
        if (sfd >= 0) {
            struct sockaddr_storage ss;
            socklen_t slen = sizeof ss;
            char host[INET6_ADDRSTRLEN];
            if (getpeername(sfd, (struct sockaddr *)&ss, &slen) == 0) {
                if (ss.ss_family == AF_INET) {
                    struct sockaddr_in *a = (struct sockaddr_in *)&ss;
                    if (inet_ntop(AF_INET, &a->sin_addr, host, sizeof host)) ADD(" peer=%s:%u", host, ntohs(a->sin_port));
                } else if (ss.ss_family == AF_INET6) {
                    struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
                    if (inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof host))
                        ADD(" peer=[%s]:%u", host, ntohs(a->sin6_port));
                }
            }
        }
    }
    for (int c = 0; c < N_CAUSES; c++)
        if (ob->blocks[c]) ADD(" %s=%lld:%lld", cause_names[c], (long long)ob->bytes[c], (long long)ob->blocks[c]);
#undef ADD
    if (len < sizeof line) out_put(o, "%s\n", line); /* the whole line or nothing (a fault midway) */
}

/* Where the walk could name no cause (`other`: reached from a struct, no getter names it) but the
 * block was tracked (a static copy under `run` allocates through tlsprof's memory functions, so the
 * tracker knows each block's call site but not its owner), the call site's cause names it: the
 * owner comes from the walk, the cause from tracking. Process-wide causes (library, thread_state)
 * are left `other`: the owner the walk found holds the block. Under the fault guard: the table is
 * read without its locks. Returns how many chunks were named. */
static int name_from_tracking(struct walk *w)
{
    static volatile int named;
    static volatile size_t at;
    named = 0;
    at = 0;
    if (sigsetjmp(fault_jmp, 1)) {
        in_guard = 0;
        faults++;
        return named;
    }
    in_guard = 1;
    for (; at < w->n; at++) {
        size_t i = at;
        if (w->owner[i] < OWN_FIRST_OBJECT || w->cause[i] != C_OTHER) continue;
        struct block b;
        if (!blocks_peek_unlocked(w->addr[i] + 16, &b)) continue;
        uint16_t id = block_site(&b);
        if (id >= MAX_SITES) continue;
        uint8_t cause = site_at(id)->cause;
        if (cause >= N_CAUSES || cause == C_OTHER || cause_is_process_wide(cause)) continue;
        w->cause[i] = cause;
        named++;
    }
    in_guard = 0;
    return named;
}

static const struct copy_api *first_usable(void)
{
    for (int c = 0; c < n_apis; c++)
        if (apis[c].usable) return &apis[c];
    return &apis[0];
}

static void child_walk(int fd, uint64_t fork_ns)
{
    uint64_t t0 = now_ns();
    struct out o = {.fd = fd};
    struct walk w = {0};
    child_out_fd = fd;
    guard_faults();
    out_put(&o, "tlsprof-walk 1\n");
    out_flush(&o); /* a fault's own lines follow the header */
    phase = "reading the heap";
    if (read_maps(&w) != 0 || collect_chunks(&w) != 0) {
        out_put(&o, "status failed\nreason the walk could not map its own memory\nEND\n");
        out_flush(&o);
        return;
    }
    if (!w.n) {
        out_put(&o, "status unavailable\nreason no glibc heap chunk was found\nEND\n");
        out_flush(&o);
        return;
    }
    lo_addr = w.addr[0];
    hi_addr = w.addr[w.n - 1] + w.size[w.n - 1];

    /* the objects */
    phase = "finding the objects";
    struct object *objects = region(sizeof(struct object) * 65536);
    size_t n_obj = 0, cap_obj = 65536, n_ctx = 0, n_ssl = 0;
    for (size_t i = 0; i < w.n && objects; i++) {
        /* a chunk is the struct's size or 16 bytes more: glibc never splits off a remainder smaller
         * than its minimum chunk (32), so a recycled chunk may carry 16 extra bytes, and so may the
         * probe's own: 16 either way */
        int is_ssl = -1, copy;
        for (copy = 0; copy < n_apis && is_ssl < 0; copy++) {
            cur_api = &apis[copy];
            if (!api.usable) continue;
            int ssl;
            if (w.size[i] + 16 - api.ctx_chunk <= 32) ssl = 0;
            else if (w.size[i] + 16 - api.ssl_chunk <= 32) ssl = 1;
            else continue;
            uintptr_t mem = w.addr[i] + 16;
            uintptr_t m = word(mem + 8 * (uintptr_t)(ssl ? api.ssl_method_word : api.ctx_method_word));
            if (is_method(&w, m)) is_ssl = ssl;
        }
        if (is_ssl < 0) continue;
        copy--;
        if (n_obj == cap_obj) {
            struct object *grown = region(sizeof(struct object) * cap_obj * 2);
            if (!grown) break;
            memcpy(grown, objects, sizeof(struct object) * n_obj);
            objects = grown;
            cap_obj *= 2;
        }
        objects[n_obj].chunk = (uint32_t)i;
        objects[n_obj].copy = (uint8_t)copy;
        objects[n_obj].is_ssl = (uint8_t)is_ssl;
        objects[n_obj].ok = 1;
        w.owner[i] = OWN_FIRST_OBJECT + (uint32_t)n_obj;
        w.cause[i] = is_ssl ? C_CONNECTION : C_CONTEXT; /* the SSL or SSL_CTX struct itself */
        n_obj++;
        if (is_ssl) n_ssl++;
        else n_ctx++;
    }
    /* the objects are checked first, then their application data made barriers, then their
     * sub-roots queued before them so that they claim first; each step under the fault guard */
    phase = "checking the objects";
    for (size_t k = 0; k < n_obj; k++) guarded(validate, &w, objects, k, NULL);
    for (size_t k = 0; k < n_obj; k++) {
        if (objects[k].ok) continue;
        w.owner[objects[k].chunk] = OWN_NONE; /* not an object after all: an ordinary chunk */
        if (objects[k].is_ssl) n_ssl--;
        else n_ctx--;
    }
    for (size_t k = 0; k < n_obj; k++)
        if (objects[k].ok) guarded(barriers_of, &w, objects, k, NULL);
    for (size_t k = 0; k < n_obj; k++)
        if (objects[k].ok) guarded(subroots_of, &w, objects, k, NULL);
    size_t subroots = w.q_tail;
    /* OpenSSL's library state: reachable from its own globals, never through an object. It is
     * searched completely before the objects, with the sub-roots already claimed, queued aside. */
    size_t lib_start = w.q_tail;
    phase = "searching from OpenSSL's globals";
    for (size_t i = 0; i < w.n_maps; i++) {
        const struct mapping *m = &w.maps[i];
        int bss = i > 0 && m->anon && w.maps[i - 1].openssl && w.maps[i - 1].w && w.maps[i - 1].hi == m->lo;
        if (!m->r || !m->w || !(m->openssl || bss)) continue;
        for (uintptr_t p = m->lo; p + 8 <= m->hi; p += 8) claim(&w, word(p), OWN_LIBRARY, C_OTHER, 1);
    }
    w.q_head = lib_start;
    spread(&w, NULL);
    /* now the multi-source search: sub-roots first, then every object, queued again behind what
     * the library search used */
    size_t base = w.q_tail;
    for (size_t k = 0; k < subroots; k++) w.queue[w.q_tail++] = w.queue[k];
    for (size_t k = 0; k < n_obj; k++)
        if (objects[k].ok) w.queue[w.q_tail++] = objects[k].chunk;
    w.q_head = base;
    phase = "searching from the objects";
    spread(&w, objects);
    phase = "searching from the threads";
    int threads_seen = 0, threads_owned = 0;
    thread_roots(&w, objects, n_obj, &threads_seen, &threads_owned);

    phase = "naming causes from tracking";
    int named = name_from_tracking(&w);

    phase = "writing the answer";
    /* the totals */
    int64_t lib_bytes = 0, lib_blocks = 0, app_bytes = 0, app_blocks = 0, rest_bytes = 0, rest_blocks = 0, in_use = 0;
    for (size_t i = 0; i < w.n; i++) {
        uint32_t own = w.owner[i];
        in_use += w.size[i];
        if (own >= OWN_FIRST_OBJECT) {
            objects[own - OWN_FIRST_OBJECT].bytes[w.cause[i]] += w.size[i];
            objects[own - OWN_FIRST_OBJECT].blocks[w.cause[i]]++;
        } else if (own == OWN_LIBRARY) {
            lib_bytes += w.size[i];
            lib_blocks++;
        } else if (own == OWN_BARRIER) {
            app_bytes += w.size[i];
            app_blocks++;
        } else {
            rest_bytes += w.size[i];
            rest_blocks++;
        }
    }
    out_put(&o, "status ok\n");
    out_put(&o, "stat fork_us %llu\nstat walk_ms %llu\nstat chunks %zu\nstat heap_bytes %llu\n"
                "stat in_use_bytes %lld\nstat free_bytes %llu\nstat tcache_chunks %llu\nstat arenas %d\n"
                "stat thread_heaps %d\nstat mmapped_chunks %d\nstat bad_regions %d\nstat contexts %zu\n"
                "stat connections %zu\nstat ctx_chunk %zu\nstat ssl_chunk %zu\n",
            (unsigned long long)(fork_ns / 1000), (unsigned long long)((now_ns() - t0) / 1000000), w.n,
            (unsigned long long)w.heap_bytes, (long long)in_use, (unsigned long long)w.free_bytes,
            (unsigned long long)w.tcache_chunks, w.arenas, w.heaps, w.mmapped, w.bad_regions, n_ctx, n_ssl,
            first_usable()->ctx_chunk, first_usable()->ssl_chunk);
    /* which OpenSSL each object is from: "shared" (libssl) or the object holding a static copy */
    for (int c = 0; c < n_apis; c++) {
        if (!apis[c].usable) {
            out_put(&o, "skipped %s: %s\n", apis[c].path[0] ? apis[c].path : "shared",
                    apis[c].problem ? apis[c].problem : "?");
            continue;
        }
        size_t objs = 0;
        for (size_t k = 0; k < n_obj; k++) objs += objects[k].ok && objects[k].copy == c;
        out_put(&o, "C index=%d objects=%zu ctx_chunk=%zu ssl_chunk=%zu path=%s\n", c, objs, apis[c].ctx_chunk,
                apis[c].ssl_chunk, apis[c].path[0] ? apis[c].path : "shared");
    }
    for (size_t k = 0; k < n_obj; k++)
        if (objects[k].ok) guarded(put_object, &w, objects, k, &o);
    for (int c = 0; c < n_unresolved; c++)
        out_put(&o, "skipped %s: its SSL_CTX_new, SSL_new or method functions were not found in its symbols\n",
                unresolved[c]);
    out_put(&o, "stat threads %d\nstat threads_of_a_connection %d\nstat faults %d\nstat causes_from_tracking %d\n",
            threads_seen, threads_owned, faults, named);
    out_put(&o, "P what=openssl_library bytes=%lld blocks=%lld\n", (long long)lib_bytes, (long long)lib_blocks);
    out_put(&o, "P what=application_data bytes=%lld blocks=%lld\n", (long long)app_bytes, (long long)app_blocks);
    out_put(&o, "P what=unreached bytes=%lld blocks=%lld\n", (long long)rest_bytes, (long long)rest_blocks);
    out_put(&o, "stat walk_ms_total %llu\nEND\n", (unsigned long long)((now_ns() - t0) / 1000000));
    out_flush(&o);
}

/* ================= the parent: fork, read with a bound, reap ================= */

static void append(char **text, size_t *len, size_t *cap, const char *p, size_t n)
{
    if (!*text) return;
    if (*len + n + 1 > *cap) {
        size_t ncap = *cap * 2;
        while (ncap < *len + n + 1) ncap *= 2;
        char *g = realloc(*text, ncap);
        if (!g) {
            free(*text);
            *text = NULL;
            return;
        }
        *text = g;
        *cap = ncap;
    }
    memcpy(*text + *len, p, n);
    *len += n;
    (*text)[*len] = 0;
}

static char *unavailable(const char *reason)
{
    char *t = malloc(strlen(reason) + 64);
    if (t) sprintf(t, "tlsprof-walk 1\nstatus unavailable\nreason %s\nEND\n", reason);
    return t;
}

#define WALK_MAX_ANSWER (256u << 20)

char *heapwalk_run(int timeout_ms)
{
    pthread_mutex_lock(&walk_lock);
    char why[512];
    const char *problem = allocator_problem(why, sizeof why);
    if (!problem && !resolve_api())
        problem = "no libssl is loaded in this process, and no statically linked OpenSSL with symbols";
    if (!problem) problem = learn();
    if (problem) {
        pthread_mutex_unlock(&walk_lock);
        return unavailable(problem);
    }
    read_thread_sps();
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0) {
        pthread_mutex_unlock(&walk_lock);
        return unavailable("no pipe for the walk");
    }
    /* every signal blocked across the clone: the child inherits the mask, so no handler of the
     * target ever runs in it and a fault there ends it (the channel thread blocks them already) */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pid_t target = getpid();
    uint64_t t0 = now_ns();
    long pid = syscall(SYS_clone, 0ul /* no CLONE_* flags, no exit signal */, NULL, NULL, NULL, 0ul);
    if (pid == 0) {
        /* the child holds copies of the target's sockets: it must not outlive the target */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != target) syscall(SYS_exit_group, 0); /* it died before the line above */
        close(fds[0]);
        child_walk(fds[1], now_ns() - t0);
        syscall(SYS_exit_group, 0);
    }
    uint64_t fork_ns = now_ns() - t0;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    close(fds[1]);
    if (pid < 0) {
        close(fds[0]);
        pthread_mutex_unlock(&walk_lock);
        return unavailable("the walk process could not be made");
    }
    size_t len = 0, cap = 65536;
    char *text = malloc(cap);
    if (text) text[0] = 0;
    uint64_t deadline = now_ns() + (uint64_t)timeout_ms * 1000000ull;
    int timed_out = 0;
    char chunk[65536];
    for (;;) {
        uint64_t now = now_ns();
        if (now >= deadline) {
            timed_out = 1;
            break;
        }
        struct pollfd pfd = {fds[0], POLLIN, 0};
        int r = poll(&pfd, 1, (int)((deadline - now) / 1000000ull) + 1);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) continue;
        ssize_t n = read(fds[0], chunk, sizeof chunk);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        if (len + (size_t)n > WALK_MAX_ANSWER) {
            timed_out = 1;
            break;
        }
        append(&text, &len, &cap, chunk, (size_t)n);
    }
    close(fds[0]);
    if (timed_out) kill((pid_t)pid, SIGKILL);
    int status = 0;
    while (waitpid((pid_t)pid, &status, __WALL) < 0 && errno == EINTR) {
    }
    pthread_mutex_unlock(&walk_lock);
    char tail[256];
    int complete = text && len >= 4 && strstr(text, "\nEND\n");
    if (!complete) {
        free(text);
        if (timed_out) snprintf(tail, sizeof tail, "the walk did not finish within %d ms (stopped)", timeout_ms);
        else if (WIFSIGNALED(status))
            snprintf(tail, sizeof tail, "the walk process ended on signal %d (the heap changed under it?)", WTERMSIG(status));
        else snprintf(tail, sizeof tail, "the walk process ended without an answer");
        char *t = malloc(512);
        if (t) snprintf(t, 512, "tlsprof-walk 1\nstatus failed\nreason %s\nstat fork_us %llu\nEND\n", tail,
                        (unsigned long long)(fork_ns / 1000));
        return t;
    }
    /* the parent's own measure of its pause comes last: readers take the last value of a key */
    text[len - 4] = 0; /* drop END\n */
    len -= 4;
    snprintf(tail, sizeof tail, "stat pause_us %llu\nEND\n", (unsigned long long)(fork_ns / 1000));
    append(&text, &len, &cap, tail, strlen(tail));
    return text;
}
