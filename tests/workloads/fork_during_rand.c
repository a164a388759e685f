/* OpenSSL 3.0 and fork, without tlsprof: a thread draws random bytes in a loop while the main thread
 * forks children that draw some too. A child forked while that thread held the random generator's
 * lock waits on it forever (OpenSSL takes no lock before a fork). Prints how many children hung.
 *
 *     gcc -O2 fork_during_rand.c -o fork_during_rand -lcrypto -lpthread && ./fork_during_rand 300
 *
 * 2026-12-02, Debian 12's OpenSSL 3.0: forks=300 hung=22. The pre-fork harness
 * (tests/shim_harness/prefork_server.py --busy --forks) meets the same lock now and then. */
#include <openssl/rand.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static void *draw_forever(void *unused)
{
    unsigned char b[32];
    for (;;) RAND_bytes(b, sizeof b);
    return unused;
}

int main(int argc, char **argv)
{
    int forks = argc > 1 ? atoi(argv[1]) : 300, hung = 0;
    unsigned char b[32];
    RAND_bytes(b, sizeof b);
    pthread_t t;
    pthread_create(&t, NULL, draw_forever, NULL);
    usleep(10000);
    for (int i = 0; i < forks; i++) {
        pid_t p = fork();
        if (p == 0) {
            RAND_bytes(b, sizeof b);
            _exit(0);
        }
        int status, done = 0;
        for (int k = 0; k < 200 && !done; k++) { /* 200 ms: a child that draws once takes < 1 ms */
            if (waitpid(p, &status, WNOHANG) == p) done = 1;
            else usleep(1000);
        }
        if (!done) {
            hung++;
            kill(p, SIGKILL);
            waitpid(p, &status, 0);
        }
    }
    printf("forks=%d hung=%d\n", forks, hung);
    return 0;
}
