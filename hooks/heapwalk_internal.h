/* The heap walk's private header: what its files share (docs/heap-walk.md). Only heapwalk*.c
 * include it; the rest of the shim knows the walk by heapwalk.h alone.
 *   heapwalk.c        the parent/child protocol: clone, fault guard, the walk's order, the answer
 *   heapwalk_probe.c  the OpenSSL copies to read and what a probe object teaches about each
 *   heapwalk_heap.c   glibc's heap: arenas, thread heaps, mmapped chunks, as a sorted chunk array
 *   heapwalk_reach.c  ownership by reachability: roots, sub-roots, barriers, the search, the lines */
#pragma once
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "shim.h"

#define HEAP_MAX (64ul << 20) /* glibc's HEAP_MAX_SIZE on 64-bit: thread heaps are aligned to it */
#define HEAP_INFO_SIZE 48     /* sizeof(heap_info), padded to MALLOC_ALIGNMENT */
#define MIN_CHUNK 32
#define PAGE 4096ul
#define SIG_WORDS 16            /* words of an SSL_METHOD compared */
#define EX_DATA_SLOTS 8         /* application ex_data slots treated as barriers */
#define RECORD_BUFFER_MIN 16384 /* a record buffer holds a whole TLS record (16 KiB + overhead) */
#define RECORD_BUFFER_MAX (128 * 1024)
#define MAX_OSSL_KEYS 64
#define MAX_THREADS 16384
#define TCB_SEARCH 16384 /* glibc puts struct pthread at the top of a thread's stack mapping */
#define STACK_SCAN_MAX (1u << 20)
#define KEYS_MAX 1024 /* PTHREAD_KEYS_MAX */

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
    size_t ctx_chunk, ssl_chunk; /* chunk size of each struct */
    int ctx_method_word, ssl_method_word;
    int n_sig[2];
    int sig_index[2][SIG_WORDS];
    uintptr_t sig_value[2][SIG_WORDS];
    int usable; /* probe learned; 0: skipped (its problem in `problem`) */
    const char *problem;
    char path[256]; /* "" for the shared libssl; else the object holding the copy */
};
extern struct copy_api apis[MAX_WALK_COPIES];
extern int n_apis;
extern struct copy_api *cur_api; /* whose functions read the object at hand */
#define api (*cur_api)

/* ---- what the probe taught us (once per process) ---- */
struct learned {
    int ready;
    uintptr_t tcache_key; /* the word glibc stores in a tcache-free chunk at mem+8 */
    long specific_off;    /* struct pthread: specific_1stblock[0], or -1 */
    int n_keys;
    uint32_t keys[MAX_OSSL_KEYS]; /* pthread keys that hold OpenSSL's per-thread state */
};
extern struct learned learned;

/* Threads blocked in a system call, read in the parent just before the clone: where each one's
 * stack pointer is (the child has no other thread to ask). */
extern uintptr_t thread_sp[MAX_THREADS];
extern int n_thread_sp;

struct out {
    int fd;
    char buf[8192];
    size_t len;
};

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
    uintptr_t *addr; /* in-use chunks, ascending */
    uint32_t *size;
    uint32_t *owner; /* OWN_* or OWN_FIRST_OBJECT + object index */
    uint8_t *cause;
    size_t n, cap;
    uint32_t *queue;
    size_t q_head, q_tail;
    uint64_t heap_bytes, free_bytes, tcache_chunks;
    int arenas, heaps, mmapped, arena_pieces, bad_regions;
};

static inline uintptr_t word(uintptr_t p) { return *(const uintptr_t *)p; }

extern uintptr_t lo_addr, hi_addr; /* the in-use chunks span these */

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

struct object {
    uint32_t chunk;
    uint8_t copy; /* index in apis[]: whose functions read it */
    uint8_t is_ssl;
    uint8_t ok; /* 0: rejected (an SSL whose SSL_CTX is no context found) or faulted */
    int64_t bytes[N_CAUSES], blocks[N_CAUSES];
};

typedef void (*object_fn)(struct walk *, struct object *, size_t, void *);

static inline void *object_ptr(const struct walk *w, const struct object *o)
{
    return (void *)(w->addr[o->chunk] + 16);
}

/* ---- heapwalk_probe.c ---- */
extern char unresolved[MAX_WALK_COPIES][256];
extern int n_unresolved;
int resolve_api(void);
void read_thread_sps(void);
const char *learn(void);
const char *allocator_problem(char *why, size_t n);

/* ---- heapwalk_heap.c ---- */
void out_flush(struct out *o);
void out_put(struct out *o, const char *fmt, ...);
void *region(size_t bytes);
/* given: the parent's maps text (a chroot without /proc), else the child reads /proc/self/maps;
 * -2: neither */
int read_maps(struct walk *w, const char *given);
char *maps_text(int fd); /* a maps file's text in memory of our own, or NULL */
void maps_text_free(char *text);
const struct mapping *mapping_of(const struct walk *w, uintptr_t p);
int collect_chunks(struct walk *w);

/* ---- heapwalk_reach.c ---- */
int is_method(const struct walk *w, uintptr_t m);
int claim(struct walk *w, uintptr_t p, uint32_t owner, uint8_t cause, int enqueue);
void spread(struct walk *w, const struct object *objects);
void barrier(struct walk *w, void *p);
void thread_roots(struct walk *w, const struct object *objects, size_t n_obj, int *seen, int *owned);
void validate(struct walk *w, struct object *objects, size_t k, void *arg);
void barriers_of(struct walk *w, struct object *objects, size_t k, void *arg);
void subroots_of(struct walk *w, struct object *objects, size_t k, void *arg);
void put_object(struct walk *w, struct object *objects, size_t k, void *arg);
const struct copy_api *first_usable(void);
