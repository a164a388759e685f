/* Blocks allocated inside an OpenSSL call that are freed by another thread while the call is still
 * running (issue 18's nursery keeps such blocks per thread until the call returns).
 *
 * One thread drives a client and a server SSL over a BIO pair. Every time the handshake calls the
 * info callback, the callback allocates a block and hands it to the freeing thread, which frees it
 * and answers before the callback goes on; then it allocates another block that it keeps.
 * Printed once both handshakes are done: "ready handed=N kept=N". Then it waits for stdin to close.
 * Build: cc -O1 -o young_cross_thread young_cross_thread.c -lssl -lcrypto -lpthread
 * Usage: young_cross_thread CERT KEY */
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#define MAX_KEPT 4096
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static enum { IDLE, HANDED, FREED, DONE } state;
static void *handed;
static int n_handed, n_kept;
static void *kept[MAX_KEPT];

static void *freer(void *unused)
{
    pthread_mutex_lock(&mu);
    for (;;) {
        while (state != HANDED && state != DONE) pthread_cond_wait(&cv, &mu);
        if (state == DONE) break;
        OPENSSL_free(handed);
        state = FREED;
        pthread_cond_broadcast(&cv);
    }
    pthread_mutex_unlock(&mu);
    return NULL;
}

static void info_cb(const SSL *ssl, int where, int ret)
{
    void *p = OPENSSL_malloc(1000); /* HANDED: freed by the other thread */
    if (!p) return;
    pthread_mutex_lock(&mu);
    handed = p;
    state = HANDED;
    n_handed++;
    pthread_cond_broadcast(&cv);
    while (state != FREED) pthread_cond_wait(&cv, &mu);
    state = IDLE;
    pthread_mutex_unlock(&mu);
    if (n_kept < MAX_KEPT) kept[n_kept++] = OPENSSL_malloc(2000); /* KEPT: lives on */
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s CERT KEY\n", argv[0]);
        return 2;
    }
    pthread_t t;
    pthread_create(&t, NULL, freer, NULL);
    SSL_CTX *sctx = SSL_CTX_new(TLS_server_method()), *cctx = SSL_CTX_new(TLS_client_method());
    if (!SSL_CTX_use_certificate_chain_file(sctx, argv[1]) ||
        !SSL_CTX_use_PrivateKey_file(sctx, argv[2], SSL_FILETYPE_PEM)) {
        fprintf(stderr, "cannot load %s / %s\n", argv[1], argv[2]);
        return 1;
    }
    SSL_CTX_set_info_callback(sctx, info_cb);
    SSL_CTX_set_info_callback(cctx, info_cb);
    SSL *server = SSL_new(sctx), *client = SSL_new(cctx);
    BIO *a, *b;
    BIO_new_bio_pair(&a, 0, &b, 0);
    SSL_set_bio(server, a, a);
    SSL_set_bio(client, b, b);
    SSL_set_accept_state(server);
    SSL_set_connect_state(client);
    int done = 0;
    for (int i = 0; i < 100 && done != 3; i++) {
        if (!(done & 1) && SSL_do_handshake(client) == 1) done |= 1;
        if (!(done & 2) && SSL_do_handshake(server) == 1) done |= 2;
    }
    if (done != 3) {
        ERR_print_errors_fp(stderr);
        return 1;
    }
    printf("ready handed=%d kept=%d\n", n_handed, n_kept);
    fflush(stdout);
    while (getchar() != EOF) continue;
    pthread_mutex_lock(&mu);
    state = DONE;
    pthread_cond_broadcast(&cv);
    pthread_mutex_unlock(&mu);
    pthread_join(t, NULL);
    return 0;
}
