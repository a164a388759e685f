/* A TLS echo server that installs its own OpenSSL allocator, as several long-lived daemons do to
 * count or pool their memory: every block gets a 16-byte header in front (so the pointers OpenSSL
 * sees are not the chunk starts of the process's malloc), and the allocator counts the live bytes
 * OpenSSL requested. That count is the ground truth tlsprof is compared with: it is made without
 * tlsprof, by the allocator OpenSSL really uses.
 *
 *   own_alloc_server --cert C --key K --stats FILE [--port P] [--ready-file F] [--allocator own|system]
 *
 * Writes "<port>\n" to the ready file (and "PORT <port>" on stdout) once listening on 127.0.0.1,
 * greets each connection with "welcome!\n" (what examples/echo_client.py waits for) and echoes.
 * On SIGUSR1 it writes FILE (temp file + rename) with its counters; on SIGTERM/SIGINT it closes
 * every connection, writes FILE once more and exits 0.
 * `--allocator system` leaves OpenSSL's allocator alone: the counters the stats file then carries
 * are the process allocator's own (mallinfo2 for glibc, `stats.allocated` for a preloaded jemalloc,
 * `generic.current_allocated_bytes` for tcmalloc). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define HEADER 16 /* keeps the 16-byte alignment malloc promises */
#define MAGIC 0x6f776e616c6c6f63ull

static int64_t live_bytes, live_blocks, total_allocs; /* atomics */

static void *own_malloc(size_t n, const char *file, int line)
{
    (void)file, (void)line;
    if (n == 0) return NULL;
    unsigned char *b = malloc(HEADER + n);
    if (!b) return NULL;
    ((uint64_t *)b)[0] = n;
    ((uint64_t *)b)[1] = MAGIC;
    __atomic_add_fetch(&live_bytes, (int64_t)n, __ATOMIC_RELAXED);
    __atomic_add_fetch(&live_blocks, 1, __ATOMIC_RELAXED);
    __atomic_add_fetch(&total_allocs, 1, __ATOMIC_RELAXED);
    return b + HEADER;
}

static void own_free(void *p, const char *file, int line)
{
    (void)file, (void)line;
    if (!p) return;
    unsigned char *b = (unsigned char *)p - HEADER;
    if (((uint64_t *)b)[1] != MAGIC) abort(); /* a block that is not ours: a bug somewhere */
    ((uint64_t *)b)[1] = 0;
    __atomic_sub_fetch(&live_bytes, (int64_t)((uint64_t *)b)[0], __ATOMIC_RELAXED);
    __atomic_sub_fetch(&live_blocks, 1, __ATOMIC_RELAXED);
    free(b);
}

static void *own_realloc(void *p, size_t n, const char *file, int line)
{
    if (!p) return own_malloc(n, file, line);
    if (n == 0) {
        own_free(p, file, line);
        return NULL;
    }
    unsigned char *b = (unsigned char *)p - HEADER;
    if (((uint64_t *)b)[1] != MAGIC) abort();
    size_t old = ((uint64_t *)b)[0];
    unsigned char *nb = realloc(b, HEADER + n);
    if (!nb) return NULL;
    ((uint64_t *)nb)[0] = n;
    __atomic_add_fetch(&live_bytes, (int64_t)n - (int64_t)old, __ATOMIC_RELAXED);
    return nb + HEADER;
}

static volatile sig_atomic_t want_stats, want_stop;
static void on_usr1(int s) { (void)s; want_stats = 1; }
static void on_stop(int s) { (void)s; want_stop = 1; }

struct conn {
    SSL *ssl;
    int fd, established;
};

static struct conn **conns;
static int n_conns, cap_conns, n_established;

static void write_stats(const char *path)
{
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (!f) return;
    fprintf(f, "own_live_bytes %lld\nown_live_blocks %lld\nown_total_allocs %lld\n",
            (long long)__atomic_load_n(&live_bytes, __ATOMIC_RELAXED),
            (long long)__atomic_load_n(&live_blocks, __ATOMIC_RELAXED),
            (long long)__atomic_load_n(&total_allocs, __ATOMIC_RELAXED));
    fprintf(f, "connections %d\nestablished %d\n", n_conns, n_established);
    struct mallinfo2 mi = mallinfo2();
    fprintf(f, "mallinfo_uordblks %zu\n", mi.uordblks);
    /* jemalloc (preloaded or linked) answers mallctl; refresh its statistics first */
    int (*mallctl)(const char *, void *, size_t *, void *, size_t) = dlsym(RTLD_DEFAULT, "mallctl");
    if (mallctl) {
        uint64_t epoch = 1;
        size_t sz = sizeof epoch, allocated = 0, asz = sizeof allocated;
        mallctl("epoch", &epoch, &sz, &epoch, sz);
        if (mallctl("stats.allocated", &allocated, &asz, NULL, 0) == 0)
            fprintf(f, "jemalloc_allocated %zu\n", allocated);
    }
    /* tcmalloc (preloaded or linked) */
    int (*tc_property)(const char *, size_t *) = dlsym(RTLD_DEFAULT, "MallocExtension_GetNumericProperty");
    size_t tc_allocated = 0;
    if (tc_property && tc_property("generic.current_allocated_bytes", &tc_allocated))
        fprintf(f, "tcmalloc_allocated %zu\n", tc_allocated);
    fclose(f);
    rename(tmp, path);
}

static void drop(int ep, struct conn *c)
{
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    SSL_free(c->ssl);
    close(c->fd);
    if (c->established) n_established--;
    for (int i = 0; i < n_conns; i++)
        if (conns[i] == c) {
            conns[i] = conns[--n_conns];
            break;
        }
    free(c);
}

static void serve(int ep, struct conn *c)
{
    if (!c->established) {
        int r = SSL_accept(c->ssl);
        if (r == 1) {
            c->established = 1;
            n_established++;
            SSL_write(c->ssl, "welcome!\n", 9);
        } else {
            int e = SSL_get_error(c->ssl, r);
            if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) {
                ERR_clear_error();
                drop(ep, c);
            }
            return;
        }
    }
    char buf[4096];
    for (;;) {
        int r = SSL_read(c->ssl, buf, sizeof buf);
        if (r > 0) {
            SSL_write(c->ssl, buf, r); /* small echoes on loopback: a blocking-style write is enough */
            continue;
        }
        int e = SSL_get_error(c->ssl, r);
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) return;
        ERR_clear_error();
        drop(ep, c);
        return;
    }
}

int main(int argc, char **argv)
{
    const char *cert = NULL, *key = NULL, *stats = NULL, *allocator = "own", *ready = NULL;
    int port = 0;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--cert")) cert = argv[i + 1];
        else if (!strcmp(argv[i], "--key")) key = argv[i + 1];
        else if (!strcmp(argv[i], "--stats")) stats = argv[i + 1];
        else if (!strcmp(argv[i], "--port")) port = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--allocator")) allocator = argv[i + 1];
        else if (!strcmp(argv[i], "--ready-file")) ready = argv[i + 1];
    }
    if (!cert || !key || !stats) {
        fprintf(stderr, "usage: %s --cert C --key K --stats FILE [--port P] [--ready-file F] "
                        "[--allocator own|system]\n", argv[0]);
        return 2;
    }
    /* before OpenSSL's first allocation, or OpenSSL refuses */
    if (!strcmp(allocator, "own") && !CRYPTO_set_mem_functions(own_malloc, own_realloc, own_free)) {
        fprintf(stderr, "CRYPTO_set_mem_functions refused\n");
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa = {0};
    sa.sa_handler = on_usr1;
    sigaction(SIGUSR1, &sa, NULL);
    sa.sa_handler = on_stop;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx || SSL_CTX_use_certificate_chain_file(ctx, cert) != 1 ||
        SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) {
        fprintf(stderr, "cannot load %s / %s\n", cert, key);
        return 1;
    }
    int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0), one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t alen = sizeof a;
    if (bind(ls, (struct sockaddr *)&a, sizeof a) || listen(ls, 1024) || getsockname(ls, (struct sockaddr *)&a, &alen)) {
        perror("listen");
        return 1;
    }
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);
    printf("PORT %d\n", ntohs(a.sin_port));
    fflush(stdout);
    if (ready) {
        char tmp[4096];
        snprintf(tmp, sizeof tmp, "%s.tmp", ready);
        FILE *f = fopen(tmp, "w");
        if (f) {
            fprintf(f, "%d\n", ntohs(a.sin_port));
            fclose(f);
            rename(tmp, ready);
        }
    }

    struct epoll_event evs[64];
    while (!want_stop) {
        if (want_stats) {
            want_stats = 0;
            write_stats(stats);
        }
        int n = epoll_wait(ep, evs, 64, 100);
        for (int i = 0; i < n; i++) {
            if (evs[i].data.ptr == NULL) {
                int fd;
                while ((fd = accept4(ls, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
                    struct conn *c = calloc(1, sizeof *c);
                    c->fd = fd;
                    c->ssl = SSL_new(ctx);
                    SSL_set_fd(c->ssl, fd);
                    if (n_conns == cap_conns) {
                        cap_conns = cap_conns ? 2 * cap_conns : 256;
                        conns = realloc(conns, cap_conns * sizeof *conns);
                    }
                    conns[n_conns++] = c;
                    struct epoll_event cev = {.events = EPOLLIN | EPOLLRDHUP, .data.ptr = c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &cev);
                    serve(ep, c);
                }
            } else {
                serve(ep, evs[i].data.ptr);
            }
        }
    }
    while (n_conns) drop(ep, conns[n_conns - 1]);
    SSL_CTX_free(ctx);
    write_stats(stats);
    return 0;
}
