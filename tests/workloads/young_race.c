/* Many blocks allocated inside one OpenSSL call and freed by two other threads while the call goes
 * on allocating (issue 18's lock-free nursery: the freeing threads claim young blocks with a
 * compare-and-swap while the allocating thread spills the oldest ones into the table).
 *
 * Inside the password callback of SSL_CTX_use_PrivateKey_file (a call that never waits on the
 * network, so the nursery is used), the loading thread allocates HANDED blocks and queues them to
 * two freeing threads without waiting for the frees, and keeps one block in every KEEP_EVERY.
 * It waits for the queue to drain before the callback returns. Printed when done:
 * "ready handed=N kept=N". Then it waits for stdin to close.
 * Build: cc -O1 -o young_race young_race.c -lssl -lcrypto -lpthread
 * Usage: young_race KEY PASSWORD (KEY: PEM, encrypted with PASSWORD) */
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LOADS 4
#define PER_CALL 20000
#define KEEP_EVERY 64
#define QUEUE 8192
#define FREERS 2
#define MAX_KEPT (LOADS * PER_CALL / KEEP_EVERY + 16)

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static void *queue[QUEUE];
static unsigned q_head, q_tail;
static int done;
static int n_handed, n_kept;
static void *kept[MAX_KEPT];

static void *freer(void *unused)
{
    pthread_mutex_lock(&mu);
    for (;;) {
        while (q_head == q_tail && !done) pthread_cond_wait(&cv, &mu);
        if (q_head == q_tail && done) break;
        void *p = queue[q_head++ % QUEUE];
        pthread_cond_broadcast(&cv);
        pthread_mutex_unlock(&mu);
        OPENSSL_free(p); /* HANDED: freed here, maybe while still young in the loader's nursery */
        pthread_mutex_lock(&mu);
    }
    pthread_mutex_unlock(&mu);
    return NULL;
}

static void hand(void *p)
{
    pthread_mutex_lock(&mu);
    while (q_tail - q_head == QUEUE) pthread_cond_wait(&cv, &mu);
    queue[q_tail++ % QUEUE] = p;
    n_handed++;
    pthread_cond_broadcast(&cv);
    pthread_mutex_unlock(&mu);
}

static const char *password;

static int password_cb(char *buf, int size, int rwflag, void *unused)
{
    for (int i = 0; i < PER_CALL; i++) {
        void *p = OPENSSL_malloc(48 + (size_t)(i % 7) * 16); /* HANDED */
        if (p) hand(p);
        if (i % KEEP_EVERY == 0 && n_kept < MAX_KEPT) kept[n_kept++] = OPENSSL_malloc(2000); /* KEPT */
    }
    pthread_mutex_lock(&mu); /* every handed block freed before the call returns */
    while (q_head != q_tail) pthread_cond_wait(&cv, &mu);
    pthread_mutex_unlock(&mu);
    int n = (int)strlen(password);
    if (n > size) n = size;
    memcpy(buf, password, (size_t)n);
    return n;
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s KEY PASSWORD\n", argv[0]);
        return 2;
    }
    pthread_t t[FREERS];
    for (int k = 0; k < FREERS; k++) pthread_create(&t[k], NULL, freer, NULL);
    password = argv[2];
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    SSL_CTX_set_default_passwd_cb(ctx, password_cb);
    for (int i = 0; i < LOADS; i++) {
        if (SSL_CTX_use_PrivateKey_file(ctx, argv[1], SSL_FILETYPE_PEM) != 1) {
            ERR_print_errors_fp(stderr);
            return 1;
        }
    }
    pthread_mutex_lock(&mu);
    done = 1;
    pthread_cond_broadcast(&cv);
    pthread_mutex_unlock(&mu);
    for (int k = 0; k < FREERS; k++) pthread_join(t[k], NULL);
    printf("ready handed=%d kept=%d\n", n_handed, n_kept);
    fflush(stdout);
    char line[64];
    while (fgets(line, sizeof line, stdin)) {
    }
    for (int i = 0; i < n_kept; i++) OPENSSL_free(kept[i]);
    SSL_CTX_free(ctx);
    return 0;
}
