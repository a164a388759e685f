/* A block OpenSSL handed out, freed with free() instead of OPENSSL_free (a common bug, harmless
 * while OpenSSL uses malloc: `free(X509_NAME_oneline(...))` in a verify callback), inside an
 * OpenSSL call, and its memory written over before the call returns. The profiler must not read
 * that memory as the block's malloc header when the call returns.
 *
 * From the password callback of SSL_CTX_use_PrivateKey_file (a call that never waits on the
 * network, so the shim's nursery is used): X = malloc, A = OPENSSL_malloc right after it, a guard
 * so neither merges into the heap's top; free(A) behind the hooks, free(X) (X and A merge), then
 * one malloc that takes both and is filled with 0x41: A's old chunk header now reads 0x4141...
 * Prints "adjacent=1" when A followed X in the heap (the case that overwrites A's header), then
 * "done" once the key is loaded, and exits 0.
 * Build: cc -O1 -o young_freed_behind young_freed_behind.c -lssl -lcrypto
 * Usage: young_freed_behind KEY PASSWORD (KEY: PEM, encrypted with PASSWORD) */
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BLOCK 20000 /* above tcache's sizes: a freed chunk merges with its free neighbour */
#define CHUNK(n) (((n) + 8 + 15) & ~(size_t)15)

static const char *password;
static int adjacent = -1;
static void *cover, *guard;

static int password_cb(char *buf, int size, int rwflag, void *unused)
{
    if (adjacent < 0) {
        char *x = malloc(BLOCK);
        char *a = OPENSSL_malloc(BLOCK); /* FREED_BEHIND */
        guard = malloc(32);
        adjacent = a == x + CHUNK(BLOCK);
        free(a); /* the bug: not OPENSSL_free */
        free(x);
        cover = malloc(2 * CHUNK(BLOCK) - 16);
        if (cover) memset(cover, 0x41, 2 * CHUNK(BLOCK) - 16);
    }
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
    password = argv[2];
    SSL_CTX *ctx = SSL_CTX_new(TLS_method());
    SSL_CTX_set_default_passwd_cb(ctx, password_cb);
    if (SSL_CTX_use_PrivateKey_file(ctx, argv[1], SSL_FILETYPE_PEM) != 1) {
        ERR_print_errors_fp(stderr);
        return 1;
    }
    printf("adjacent=%d\n", adjacent);
    SSL_CTX_free(ctx);
    free(cover);
    free(guard);
    printf("done\n");
    return 0;
}
