/* An independent count of a process's heap in use, made without tlsprof: preloaded, a thread writes
 * glibc's own mallinfo2() (uordblks: in-use bytes of every arena; hblkhd: mmapped chunks) to
 * $HEAP_IN_USE_FILE every 100 ms, replaced atomically. tests/test_static_openssl.py holds node's
 * heap growth per TLS connection (minus a plain-TCP twin's) against what the heap walk reports.
 * Build: cc -shared -fPIC -O2 -o heap_in_use.so heap_in_use.c -lpthread */
#define _GNU_SOURCE
#include <malloc.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static void *report(void *path)
{
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", (const char *)path);
    for (;;) {
        struct mallinfo2 mi = mallinfo2();
        FILE *f = fopen(tmp, "w");
        if (f) {
            fprintf(f, "%zu %zu\n", mi.uordblks, mi.hblkhd);
            fclose(f);
            rename(tmp, path);
        }
        usleep(100000);
    }
    return NULL;
}

__attribute__((constructor)) static void start(void)
{
    const char *path = getenv("HEAP_IN_USE_FILE");
    pthread_t t;
    if (path && *path && pthread_create(&t, NULL, report, (void *)path) == 0) pthread_detach(t);
}
