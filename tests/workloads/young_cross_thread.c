/* Blocks allocated inside an OpenSSL call that are freed by another thread while the call is still
 * running (issue 18's nursery keeps such blocks per thread until the call returns; it is used in
 * calls that never wait on the network, such as loading a key).
 *
 * One thread loads an encrypted private key LOADS times with SSL_CTX_use_PrivateKey_file. Every
 * time OpenSSL asks the password callback, the callback allocates a block and hands it to the
 * freeing thread, which frees it and answers before the callback goes on; then it allocates
 * another block that it keeps. Printed when done: "ready handed=N kept=N". Then it waits for
 * stdin to close.
 * Build: cc -O1 -o young_cross_thread young_cross_thread.c -lssl -lcrypto -lpthread
 * Usage: young_cross_thread KEY PASSWORD (KEY: PEM, encrypted with PASSWORD) */
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

static const char *password;

static int password_cb(char *buf, int size, int rwflag, void *unused)
{
    void *p = OPENSSL_malloc(1000); /* HANDED: freed by the other thread */
    if (p) {
        pthread_mutex_lock(&mu);
        handed = p;
        state = HANDED;
        n_handed++;
        pthread_cond_broadcast(&cv);
        while (state != FREED) pthread_cond_wait(&cv, &mu);
        state = IDLE;
        pthread_mutex_unlock(&mu);
    }
    if (n_kept < MAX_KEPT) kept[n_kept++] = OPENSSL_malloc(2000); /* KEPT: lives on */
    int n = (int)strlen(password);
    if (n > size) n = size;
    memcpy(buf, password, (size_t)n);
    return n;
}

#define LOADS 20

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s KEY PASSWORD\n", argv[0]);
        return 2;
    }
    pthread_t t;
    pthread_create(&t, NULL, freer, NULL);
    password = argv[2];
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    SSL_CTX_set_default_passwd_cb(ctx, password_cb);
    for (int i = 0; i < LOADS; i++) {
        if (SSL_CTX_use_PrivateKey_file(ctx, argv[1], SSL_FILETYPE_PEM) != 1) {
            ERR_print_errors_fp(stderr);
            return 1;
        }
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
