/* Connection hooks: SSL_* entry points push the connection and what it is doing (handshake, I/O,
 * shutdown...), and note its state, fd and traffic on the way out. */
#include <fcntl.h>

#include "shim.h"

/* ---- connections ---- */
void *hook_SSL_new(void *ctx)
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
    mark_object((uintptr_t)ssl);
    return ssl;
}

void hook_SSL_free(void *ssl)
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

/* A handshake, I/O or shutdown over a blocking socket may wait on the peer; over memory BIOs
 * (asyncio's SSLObject) or a socket that does not block (nginx, Mosquitto, Python's sockets with a
 * timeout) it returns at once, so its blocks may wait in the nursery (tracking.h) like a context
 * build's. */
static inline int call_may_wait(uint32_t o, uint8_t kind)
{
    if (kind != SC_HANDSHAKE && kind != SC_IO && kind != SC_SHUTDOWN) return 0;
    return !o ||
           !(__atomic_load_n(&owner_at(o)->flags, __ATOMIC_RELAXED) & (OWNER_F_MEMORY_BIOS | OWNER_F_NONBLOCKING));
}

static inline void set_flag(uint32_t o, uint32_t flag, int on)
{
    if (on) __atomic_or_fetch(&owner_at(o)->flags, flag, __ATOMIC_RELAXED);
    else __atomic_and_fetch(&owner_at(o)->flags, ~flag, __ATOMIC_RELAXED);
}

static int fd_blocks(int fd)
{
    int fl = fd >= 0 ? fcntl(fd, F_GETFL) : -1;
    return fl < 0 || !(fl & O_NONBLOCK);
}

/* The BIOs the connection reads and writes through: memory BIOs, or socket BIOs on one fd (-1:
 * neither; then a call may wait). A socket's mode is asked now and again at every handshake call:
 * a server that switches it does so before the handshake, if at all. A socket made blocking after
 * its handshake would hide a blocked read's buffer from snapshots until the read returns. */
static void note_bios(uint32_t o, int memory, int socket_fd)
{
    if (!o) return;
    set_flag(o, OWNER_F_MEMORY_BIOS, memory);
    set_flag(o, OWNER_F_SOCKET_BIOS, socket_fd >= 0);
    set_flag(o, OWNER_F_NONBLOCKING, socket_fd >= 0 && !fd_blocks(socket_fd));
}

static inline void before_call(uint32_t o, uint8_t kind)
{
    if (kind != SC_HANDSHAKE || !o) return;
    struct owner *w = owner_at(o);
    if (__atomic_load_n(&w->flags, __ATOMIC_RELAXED) & OWNER_F_SOCKET_BIOS)
        set_flag(o, OWNER_F_NONBLOCKING, !fd_blocks(__atomic_load_n(&w->fd, __ATOMIC_RELAXED)));
}

#define SSL_SCOPED(ret, name, kind, params, args, after) \
    ret hook_##name params                               \
    {                                                    \
        if (!tlsprof_active) return real_##name args;    \
        uint32_t o = ssl_owner(ssl);                     \
        before_call(o, kind);                            \
        push_call(o, kind, call_may_wait(o, kind));      \
        ret r = real_##name args;                        \
        pop();                                           \
        after;                                           \
        return r;                                        \
    }

#define ESTABLISHED_IF(cond) \
    if (cond) set_state(o, STATE_ESTABLISHED)
/* a per-connection counter: one thread drives a connection at a time, so its line stays local */
#define MOVED_DATA_IF(cond)                                                     \
    if (cond) {                                                                 \
        set_state(o, STATE_ESTABLISHED);                                        \
        if (o) __atomic_add_fetch(&owner_at(o)->io_calls, 1, __ATOMIC_RELAXED); \
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
SSL_SCOPED(int, SSL_write_ex, SC_IO, (void *ssl, const void *b, size_t n, size_t *g), (ssl, b, n, g),
           MOVED_DATA_IF(r == 1))
SSL_SCOPED(int, SSL_shutdown, SC_SHUTDOWN, (void *ssl), (ssl), set_state(o, STATE_SHUTDOWN))
SSL_SCOPED(int, SSL_clear, SC_SSL_CTRL, (void *ssl), (ssl), set_state(o, STATE_HANDSHAKE))
SSL_SCOPED(long, SSL_ctrl, SC_SSL_CTRL, (void *ssl, int cmd, long l, void *p), (ssl, cmd, l, p), note_mode(o, cmd, l))
SSL_SCOPED(int, SSL_set_session, SC_HANDSHAKE, (void *ssl, void *s), (ssl, s), NOTHING)

/* SSL_set_fd puts socket BIOs on fd for both ways; after SSL_set_rfd or SSL_set_wfd alone the other
 * way's BIO is whatever it was: a call may wait */
#define NOTE_FD(fd, both) \
    note_fd(o, fd);       \
    note_bios(o, 0, both ? fd : -1)
SSL_SCOPED(int, SSL_set_fd, SC_SSL_CTRL, (void *ssl, int fd), (ssl, fd), NOTE_FD(fd, r == 1))
SSL_SCOPED(int, SSL_set_rfd, SC_SSL_CTRL, (void *ssl, int fd), (ssl, fd), NOTE_FD(fd, 0))
SSL_SCOPED(int, SSL_set_wfd, SC_SSL_CTRL, (void *ssl, int fd), (ssl, fd), note_bios(o, 0, -1))

/* A socket BIO (openssl s_server, many C servers) carries the connection's fd: learn it here, on
 * the caller's thread, through two getters. Other BIO types are never asked anything. */
#define BIO_TYPE_SOCKET 0x0505
#define BIO_C_GET_FD 105
static int (*real_BIO_method_type)(const void *);
static long (*real_BIO_ctrl)(void *, int, long, void *);

#define BIO_TYPE_MEM 0x0401

static int bio_type(void *bio)
{
    if (!bio) return 0;
    int (*type)(const void *) = __atomic_load_n(&real_BIO_method_type, __ATOMIC_ACQUIRE);
    if (!type) __atomic_store_n(&real_BIO_method_type, type = interpose_lookup("BIO_method_type"), __ATOMIC_RELEASE);
    return type ? type(bio) : 0;
}

/* the fd a socket BIO carries */
static int socket_bio_fd(void *bio)
{
    long (*ctrl)(void *, int, long, void *) = __atomic_load_n(&real_BIO_ctrl, __ATOMIC_ACQUIRE);
    if (!ctrl) __atomic_store_n(&real_BIO_ctrl, ctrl = interpose_lookup("BIO_ctrl"), __ATOMIC_RELEASE);
    int fd = -1;
    return ctrl && ctrl(bio, BIO_C_GET_FD, 0, &fd) >= 0 ? fd : -1;
}

void hook_SSL_set_bio(void *ssl, void *rbio, void *wbio)
{
    if (!tlsprof_active) return real_SSL_set_bio(ssl, rbio, wbio);
    uint32_t o = ssl_owner(ssl);
    push(o, SC_SSL_CTRL);
    real_SSL_set_bio(ssl, rbio, wbio);
    pop();
    int rtype = bio_type(rbio);
    int fd = rtype == BIO_TYPE_SOCKET ? socket_bio_fd(rbio) : -1;
    if (fd >= 0) note_fd(o, fd);
    if (!o) return;
    int wtype = wbio == rbio ? rtype : bio_type(wbio);
    int wfd = wbio == rbio ? fd : wtype == BIO_TYPE_SOCKET ? socket_bio_fd(wbio) : -1;
    note_bios(o, rtype == BIO_TYPE_MEM && wtype == BIO_TYPE_MEM, fd >= 0 && wfd == fd ? fd : -1);
}

void *hook_SSL_set_SSL_CTX(void *ssl, void *ctx)
{
    if (!tlsprof_active) return real_SSL_set_SSL_CTX(ssl, ctx);
    uint32_t o = ssl_owner(ssl);
    push(o, SC_SSL_CTRL);
    void *r = real_SSL_set_SSL_CTX(ssl, ctx);
    pop();
    if (r && o) __atomic_store_n(&owner_at(o)->ctx, ctx_owner(ctx), __ATOMIC_RELAXED);
    return r;
}
