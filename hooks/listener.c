/* The channel's listener: one thread blocked in accept() on <dir>/<pid>.sock (no polling: an
 * unwatched target pays no CPU), each connection handed to channel_serve (channel.c). Started,
 * paused around credential changes, stopped and restarted after fork from main.c. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "shim.h"

static int listen_fd = -1;
static pthread_t listener;
static int listener_running;
static char sock_path[108];
static char sock_dir[96];
static pid_t sock_pid;

/* The target may close or replace our descriptor: a daemon closes every inherited descriptor
 * (close_range) before it opens its own, and its listening socket may then get our number. That
 * number is the target's from then on: it is never accepted on, shut down or closed by us (a
 * shutdown at the next setuid's pause once took a real server's listening socket). Our socket is
 * known by its inode. */
static dev_t listen_dev;
static ino_t listen_ino;

static int listen_is_ours(int fd)
{
    struct stat st;
    return fd >= 0 && fstat(fd, &st) == 0 && S_ISSOCK(st.st_mode) && st.st_dev == listen_dev && st.st_ino == listen_ino;
}

/* The connection being served. A fork meanwhile gives the child a copy, and the collector reads to
 * the end of the answer: the child's copy held that back until the child exited (a pre-fork
 * server's workers, forked while a snapshot was served, kept `tlsprof run` waiting 30 s). The
 * child closes it, known by its inode: the parent may have closed the number and reused it. */
static int serving_fd = -1;
static dev_t serving_dev;
static ino_t serving_ino;

static void serving(int fd)
{
    struct stat st;
    if (fd >= 0 && fstat(fd, &st) == 0) {
        serving_dev = st.st_dev;
        serving_ino = st.st_ino;
    }
    __atomic_store_n(&serving_fd, fd, __ATOMIC_RELEASE);
}

static void close_inherited_connection(void)
{
    int fd = __atomic_exchange_n(&serving_fd, -1, __ATOMIC_ACQ_REL);
    struct stat st;
    if (fd >= 0 && fstat(fd, &st) == 0 && st.st_dev == serving_dev && st.st_ino == serving_ino) close(fd);
}

/* A pipe wakes the listener out of poll() to pause or stop it, and keeps the socket open across a
 * pause: a daemon that chroots before it drops privileges (stunnel's and HAProxy's Debian
 * configurations) can no longer reach the socket's path, so it must not have to bind it again. */
static int wake_rd = -1, wake_wr = -1;
static dev_t wake_dev;
static ino_t wake_ino;
static int kept; /* paused with the socket and the pipe open */

static int wake_is_ours(int fd)
{
    struct stat st;
    return fd >= 0 && fstat(fd, &st) == 0 && S_ISFIFO(st.st_mode) && st.st_dev == wake_dev && st.st_ino == wake_ino;
}

static int still_running(void) { return __atomic_load_n(&listener_running, __ATOMIC_ACQUIRE); }

/* Descriptors 0-2 that were closed stay the target's to reopen. */
static int above_stdio(int fd)
{
    if (fd < 0 || fd >= 3) return fd;
    int high = fcntl(fd, F_DUPFD_CLOEXEC, 3);
    close(fd);
    return high;
}

static int make_wake_pipe(void)
{
    int p[2];
    if (pipe2(p, O_CLOEXEC | O_NONBLOCK) != 0) return -1;
    p[0] = above_stdio(p[0]);
    p[1] = above_stdio(p[1]);
    struct stat st;
    if (p[0] < 0 || p[1] < 0 || fstat(p[0], &st) != 0) {
        if (p[0] >= 0) close(p[0]);
        if (p[1] >= 0) close(p[1]);
        return -1;
    }
    wake_dev = st.st_dev;
    wake_ino = st.st_ino;
    __atomic_store_n(&wake_rd, p[0], __ATOMIC_RELEASE);
    __atomic_store_n(&wake_wr, p[1], __ATOMIC_RELEASE);
    return 0;
}

static void close_wake_pipe(void)
{
    int rd = __atomic_exchange_n(&wake_rd, -1, __ATOMIC_ACQ_REL);
    int wr = __atomic_exchange_n(&wake_wr, -1, __ATOMIC_ACQ_REL);
    if (wake_is_ours(rd)) close(rd);
    if (wake_is_ours(wr)) close(wr);
}

/* A new listening socket on sock_path, its inode remembered; -1 on failure. */
static int listen_socket(void)
{
    /* non-blocking: poll() says when to accept, and a peer gone meanwhile must not hang us */
    int fd = above_stdio(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    if (fd < 0) return -1;
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    snprintf(addr.sun_path, sizeof addr.sun_path, "%s", sock_path);
    unlink(sock_path);
    struct stat st;
    if (bind(fd, (struct sockaddr *)&addr, sizeof addr) != 0 || chmod(sock_path, 0600) != 0 || listen(fd, 16) != 0 ||
        fstat(fd, &st) != 0) {
        close(fd);
        unlink(sock_path);
        return -1;
    }
    listen_dev = st.st_dev;
    listen_ino = st.st_ino;
    return fd;
}

/* Our descriptor was taken away: serve again on a new one, once a moment has passed and the target
 * has its standard descriptors back (a daemon that closed them all reopens them at once and
 * expects the lowest numbers), or after a few seconds without them. A few times at most: a target
 * that keeps closing it wins. */
#define RELISTEN_MAX 8
#define RELISTEN_DELAY_MS 500
#define RELISTEN_STD_WAIT_MS 5000
static int relisten(void)
{
    for (int waited = 0;; waited += 50) {
        if (!still_running()) return -1;
        int std_open = fcntl(0, F_GETFD) >= 0 && fcntl(1, F_GETFD) >= 0 && fcntl(2, F_GETFD) >= 0;
        if ((waited >= RELISTEN_DELAY_MS && std_open) || waited >= RELISTEN_STD_WAIT_MS) {
            int fd = listen_socket();
            if (fd >= 0) __atomic_store_n(&listen_fd, fd, __ATOMIC_RELEASE);
            if (fd >= 0 && !wake_is_ours(__atomic_load_n(&wake_rd, __ATOMIC_ACQUIRE))) make_wake_pipe();
            return fd;
        }
        struct timespec pause = {0, 50 * 1000000L};
        nanosleep(&pause, NULL);
    }
}

static void nap_ms(long ms)
{
    struct timespec pause = {0, ms * 1000000L};
    nanosleep(&pause, NULL);
}

static void *listen_loop(void *arg)
{
    int lfd = (int)(intptr_t)arg;
    for (int relistens = 0;;) {
        if (!still_running()) break;
        if (!listen_is_ours(lfd)) {
            if (relistens++ >= RELISTEN_MAX || (lfd = relisten()) < 0) break;
            continue;
        }
        int wake = __atomic_load_n(&wake_rd, __ATOMIC_ACQUIRE);
        struct pollfd watch[2] = {{lfd, POLLIN, 0}, {wake, POLLIN, 0}};
        int n = poll(watch, wake_is_ours(wake) ? 2 : 1, -1);
        if (!still_running()) break;
        if (n <= 0) {
            if (n < 0 && errno != EINTR) nap_ms(100);
            continue;
        }
        if (watch[1].revents) {
            char drain[16];
            if (wake_is_ours(wake)) (void)!read(wake, drain, sizeof drain);
            continue;
        }
        if (!(watch[0].revents & POLLIN) || !listen_is_ours(lfd)) continue;
        int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0) {
            int err = errno;
            /* the target out of descriptors or memory (what it may be profiled for): wait it out
             * rather than end the session */
            if (err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM) nap_ms(100);
            continue;
        }
        serving(fd);
        int stop = channel_serve(fd, sock_dir);
        close(fd);
        serving(-1);
        if (stop) break;
    }
    return NULL;
}

/* The listener thread on `fd`, signals blocked. */
static int start_thread(int fd)
{
    __atomic_store_n(&listener_running, 1, __ATOMIC_RELEASE);
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 256 * 1024);
    int rc = pthread_create(&listener, &attr, listen_loop, (void *)(intptr_t)fd);
    pthread_attr_destroy(&attr);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) __atomic_store_n(&listener_running, 0, __ATOMIC_RELEASE);
    return rc;
}

int channel_start(const char *dir)
{
    if (!dir || strlen(dir) + 24 > sizeof sock_path) return -1;
    struct stat st;
    /* the directory must be private: ours and nobody else's */
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode) || (st.st_mode & 077) || st.st_uid != geteuid()) return -2;
    snprintf(sock_dir, sizeof sock_dir, "%s", dir);
    snprintf(sock_path, sizeof sock_path, "%s/%d.sock", dir, (int)getpid());
    int fd = listen_socket();
    if (fd < 0) return -4;
    listen_fd = fd;
    kept = 0;
    make_wake_pipe(); /* without it a stop shuts the socket down, and a pause binds it again */
    if (start_thread(fd) != 0) {
        close(fd);
        listen_fd = -1;
        close_wake_pipe();
        unlink(sock_path);
        return -5;
    }
    sock_pid = getpid();
    return 0;
}

int channel_running(void) { return still_running(); }

/* Close our listening descriptor, if it still is ours. */
static void forget_listen_fd(void)
{
    int fd = __atomic_exchange_n(&listen_fd, -1, __ATOMIC_ACQ_REL);
    if (listen_is_ours(fd)) close(fd);
}

/* From any thread but the listener: end its loop and wait for it. 1: woken through the pipe, the
 * socket untouched; 0: the socket had to be shut down (or was not ours any more). */
static int end_thread(void)
{
    __atomic_store_n(&listener_running, 0, __ATOMIC_RELEASE);
    int wr = __atomic_load_n(&wake_wr, __ATOMIC_ACQUIRE);
    int woken = wake_is_ours(wr) && write(wr, "w", 1) == 1;
    int fd = __atomic_load_n(&listen_fd, __ATOMIC_ACQUIRE);
    if (!woken && listen_is_ours(fd)) {
        shutdown(fd, SHUT_RDWR);
    } else if (!woken) {
        /* its poll() may still wait on our socket under a number the target reused: a connection
         * wakes it (and then it sees it must stop) */
        int poke = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (poke >= 0) {
            struct sockaddr_un addr = {.sun_family = AF_UNIX};
            snprintf(addr.sun_path, sizeof addr.sun_path, "%s", sock_path);
            connect(poke, (struct sockaddr *)&addr, sizeof addr);
            close(poke);
        }
    }
    if (!pthread_equal(listener, pthread_self())) pthread_join(listener, NULL);
    else pthread_detach(listener);
    return woken;
}

/* Wake the listener, wait for it, close the socket, remove its file. */
void channel_stop(void)
{
    if (kept) { /* paused: no thread to end */
        kept = 0;
    } else {
        if (!still_running()) return;
        end_thread();
    }
    forget_listen_fd();
    close_wake_pipe();
    if (sock_pid == getpid()) unlink(sock_path);
}

/* Around a change of credentials (setxid.c): the thread ends, the socket stays open when it can.
 * 1: paused, to be resumed with channel_resume; 0: nothing was running. */
int channel_pause(void)
{
    if (!still_running()) return 0;
    if (end_thread() && listen_is_ours(__atomic_load_n(&listen_fd, __ATOMIC_ACQUIRE))) {
        kept = 1;
    } else { /* shut down: only a new socket serves again */
        forget_listen_fd();
        close_wake_pipe();
        if (sock_pid == getpid()) unlink(sock_path);
    }
    return 1;
}

/* 0: serving again on the socket kept open; -1: none kept (or no longer ours): channel_start. */
int channel_resume(void)
{
    if (!kept) return -1;
    kept = 0;
    int fd = __atomic_load_n(&listen_fd, __ATOMIC_ACQUIRE);
    if (listen_is_ours(fd) && start_thread(fd) == 0) return 0;
    forget_listen_fd();
    close_wake_pipe();
    return -1;
}

/* The listener ends itself after DETACH: only tidy up. */
void channel_release_from_listener(void)
{
    __atomic_store_n(&listener_running, 0, __ATOMIC_RELEASE);
    pthread_detach(listener);
    forget_listen_fd();
    close_wake_pipe();
    if (sock_pid == getpid()) unlink(sock_path);
}

/* In a forked child the listener thread does not exist; the socket file is the parent's.
 * -> channel_start's result (-2: the directory is not the child's to serve in), 0 when not serving. */
int channel_after_fork_child(void)
{
    close_inherited_connection();
    if (!still_running()) return 0;
    __atomic_store_n(&listener_running, 0, __ATOMIC_RELEASE);
    forget_listen_fd();
    close_wake_pipe();
    /* channel_start copies its argument into sock_dir: never pass sock_dir itself (an overlapping
     * snprintf emptied it, and the child bound "/<pid>.sock" outside the private directory) */
    char dir[sizeof sock_dir];
    memcpy(dir, sock_dir, sizeof dir);
    return channel_start(dir);
}

__attribute__((destructor)) static void channel_cleanup(void)
{
    if (still_running() && sock_pid == getpid()) unlink(sock_path);
}
