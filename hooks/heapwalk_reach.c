/* The heap walk, part 3 (in the child only): ownership by reachability. Roots and sub-roots claim
 * chunks, barriers keep application data out, a breadth-first search spreads owners; then one line
 * per object. */
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

uintptr_t lo_addr, hi_addr;

int is_method(const struct walk *w, uintptr_t m)
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

int claim(struct walk *w, uintptr_t p, uint32_t owner, uint8_t cause, int enqueue)
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
void spread(struct walk *w, const struct object *objects)
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
                              ? C_RECORD_BUFFERS
                              : inherited;
            w->queue[w->q_tail++] = (uint32_t)t;
        }
    }
}

void barrier(struct walk *w, void *p) { claim(w, (uintptr_t)p, OWN_BARRIER, C_OTHER, 0); }

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
void thread_roots(struct walk *w, const struct object *objects, size_t n_obj, int *seen, int *owned)
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


/* An SSL is one only when its SSL_CTX is a context found here (one field read). */
void validate(struct walk *w, struct object *objects, size_t k, void *arg)
{
    if (!objects[k].is_ssl || !api.ssl_ctx) return;
    long c = chunk_at(w, (uintptr_t)api.ssl_ctx(object_ptr(w, &objects[k])));
    uint32_t own = c >= 0 ? w->owner[c] : 0;
    size_t i = own >= OWN_FIRST_OBJECT ? own - OWN_FIRST_OBJECT : SIZE_MAX;
    if (i == SIZE_MAX || objects[i].is_ssl || objects[i].chunk != (uint32_t)c) objects[k].ok = 0;
}

void barriers_of(struct walk *w, struct object *objects, size_t k, void *arg)
{
    void *obj = object_ptr(w, &objects[k]);
    for (int slot = 0; slot < EX_DATA_SLOTS; slot++) {
        if (objects[k].is_ssl && api.ssl_ex) barrier(w, api.ssl_ex(obj, slot));
        if (!objects[k].is_ssl && api.ctx_ex) barrier(w, api.ctx_ex(obj, slot));
    }
}

/* A getter that reads through a pointer is called only when that pointer is a chunk's start. */
static int chunk_ptr(const struct walk *w, const void *p) { return p && chunk_at(w, (uintptr_t)p) >= 0; }

void subroots_of(struct walk *w, struct object *objects, size_t k, void *arg)
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

void put_object(struct walk *w, struct object *objects, size_t k, void *arg)
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
                    if (inet_ntop(AF_INET, &a->sin_addr, host, sizeof host))
                        ADD(" peer=%s:%u", host, ntohs(a->sin_port));
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

const struct copy_api *first_usable(void)
{
    for (int c = 0; c < n_apis; c++)
        if (apis[c].usable) return &apis[c];
    return &apis[0];
}
