/* WALK: the OpenSSL memory that predates the hooks, measured by walking glibc's heap.
 *
 * Hooks see only what is allocated after they are installed; a server attached after days holds
 * contexts and idle connections that never call into OpenSSL again. The walk finds every live
 * SSL_CTX and SSL in the heap and gives each in-use chunk to the object that reaches it first.
 *
 * Never harm the target: the walk runs in a copy-on-write child made with a raw clone() (no atfork
 * handlers, no exit signal, so the target's own SIGCHLD handling and waitpid(-1) never see it). The
 * child sees a frozen heap, only reads it, uses only memory it mmaps itself, takes no lock, calls
 * only OpenSSL getters that read one field, runs with every signal blocked (a fault kills the
 * child, never a handler of the target), writes its answer into a pipe and exits. The parent only
 * forks (the pause, measured and reported as fork_us) and reads the pipe under a time bound.
 *
 * How objects are found (learned at run time, nothing hard-coded per OpenSSL build): a probe
 * SSL_CTX and SSL made with the real libssl give the chunk size of each struct and the word that
 * holds its SSL_METHOD pointer. An SSL_METHOD is recognised by the words TLS method tables of a
 * different version and role share (ssl_new, ssl_clear, ssl_free, read, write...: TLS_server_method
 * against TLSv1_2_client_method); three quarters of them must match, so the internal tables a
 * connection switches to after version negotiation (TLS 1.3, with its own enc table) match too.
 *
 * Ownership by reachability: a multi-source breadth-first search from every root at once (each
 * chunk goes to the root nearest to it), sub-roots that the public API names first (the context's
 * X509_STORE is ca_store, its certificate and key own_certificate, a connection's peer certificate
 * and chain peer_certificate, its session, its BIOs), then the objects themselves. Before that,
 * everything reachable from libssl's and libcrypto's own global variables without passing through
 * a context or connection is OpenSSL's library state (providers, algorithm caches, name maps): it
 * belongs to the process, not to whichever context the search happens to reach it from first.
 * Application data hung on an object (ex_data, a custom BIO's data) is a barrier: the search never
 * enters it, or a connection would own its server's whole connection structure. */
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

static pthread_mutex_t walk_lock = PTHREAD_MUTEX_INITIALIZER;

/* ---- the fault guard: OpenSSL's getters read the objects' fields, and a chunk that only looks like
 * an object (a freed SSL's memory reused with its old method word) could make them read a wild
 * pointer. In the child a fault skips that object; no handler of the target runs here. ---- */
static sigjmp_buf fault_jmp;
static volatile sig_atomic_t in_guard;
static int faults;

static int child_out_fd = -1;
static const char *volatile phase = "start";

/* Outside the guard a fault ends the walk; it says where, on its own line (the reader takes the
 * last status and reason: a partial answer before it is ignored). */
static void on_fault(int sig, siginfo_t *si, void *uc)
{
    if (in_guard) siglongjmp(fault_jmp, 1);
    char msg[160] = "\nstatus failed\nreason the walk faulted while ";
    size_t n = strlen(msg), pl = strlen(phase);
    memcpy(msg + n, phase, pl < 60 ? pl : 60);
    n += pl < 60 ? pl : 60;
    static const char at[] = " at 0x";
    memcpy(msg + n, at, sizeof at - 1);
    n += sizeof at - 1;
    uintptr_t a = (uintptr_t)si->si_addr;
    for (int shift = 44; shift >= 0; shift -= 4) msg[n++] = "0123456789abcdef"[(a >> shift) & 15];
    memcpy(msg + n, "\nEND\n", 5);
    n += 5;
    if (write(child_out_fd, msg, n) < 0) {
    }
    _exit(128 + sig);
}

static void guard_faults(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_fault;
    sa.sa_flags = SA_SIGINFO;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, NULL);
    sigaction(SIGBUS, &sa, NULL);
    sigset_t faults_only;
    sigemptyset(&faults_only);
    sigaddset(&faults_only, SIGSEGV);
    sigaddset(&faults_only, SIGBUS);
    sigprocmask(SIG_UNBLOCK, &faults_only, NULL);
}


static void guarded(object_fn fn, struct walk *w, struct object *objects, size_t k, void *arg)
{
    cur_api = &apis[objects[k].copy];
    if (sigsetjmp(fault_jmp, 1)) {
        in_guard = 0;
        faults++;
        objects[k].ok = 0;
        return;
    }
    in_guard = 1;
    fn(w, objects, k, arg);
    in_guard = 0;
}


/* Where the walk could name no cause (`other`: reached from a struct, no getter names it) but the
 * block was tracked (a static copy under `run` allocates through tlsprof's memory functions, so the
 * tracker knows each block's call site but not its owner), the call site's cause names it: the
 * owner comes from the walk, the cause from tracking. Process-wide causes (library, thread_state)
 * are left `other`: the owner the walk found holds the block. Under the fault guard: the table is
 * read without its locks. Returns how many chunks were named. */
static int name_from_tracking(struct walk *w)
{
    static volatile int named;
    static volatile size_t at;
    named = 0;
    at = 0;
    if (sigsetjmp(fault_jmp, 1)) {
        in_guard = 0;
        faults++;
        return named;
    }
    in_guard = 1;
    for (; at < w->n; at++) {
        size_t i = at;
        if (w->owner[i] < OWN_FIRST_OBJECT || w->cause[i] != C_OTHER) continue;
        struct block b;
        if (!blocks_peek_unlocked(w->addr[i] + 16, &b)) continue;
        uint16_t id = block_site(&b);
        if (id >= MAX_SITES) continue;
        uint8_t cause = site_at(id)->cause;
        if (cause >= N_CAUSES || cause == C_OTHER || cause_is_process_wide(cause)) continue;
        w->cause[i] = cause;
        named++;
    }
    in_guard = 0;
    return named;
}


static void child_walk(int fd, uint64_t fork_ns, const char *given_maps)
{
    uint64_t t0 = now_ns();
    struct out o = {.fd = fd};
    struct walk w = {0};
    child_out_fd = fd;
    guard_faults();
    out_put(&o, "tlsprof-walk 1\n");
    out_flush(&o); /* a fault's own lines follow the header */
    phase = "reading the heap";
    int maps = read_maps(&w, given_maps);
    if (maps == -2) {
        out_put(&o, "status failed\nreason /proc/self/maps cannot be opened (a chroot without /proc?) and tlsprof "
                    "passed no descriptor of it\nEND\n");
        out_flush(&o);
        return;
    }
    if (maps != 0 || collect_chunks(&w) != 0) {
        out_put(&o, "status failed\nreason the walk could not map its own memory\nEND\n");
        out_flush(&o);
        return;
    }
    if (!w.n) {
        out_put(&o, "status unavailable\nreason no glibc heap chunk was found\nEND\n");
        out_flush(&o);
        return;
    }
    lo_addr = w.addr[0];
    hi_addr = w.addr[w.n - 1] + w.size[w.n - 1];

    /* the objects */
    phase = "finding the objects";
    struct object *objects = region(sizeof(struct object) * 65536);
    size_t n_obj = 0, cap_obj = 65536, n_ctx = 0, n_ssl = 0;
    for (size_t i = 0; i < w.n && objects; i++) {
        /* a chunk is the struct's size or 16 bytes more: glibc never splits off a remainder smaller
         * than its minimum chunk (32), so a recycled chunk may carry 16 extra bytes, and so may the
         * probe's own: 16 either way */
        int is_ssl = -1, copy;
        for (copy = 0; copy < n_apis && is_ssl < 0; copy++) {
            cur_api = &apis[copy];
            if (!api.usable) continue;
            int ssl;
            if (w.size[i] + 16 - api.ctx_chunk <= 32) ssl = 0;
            else if (w.size[i] + 16 - api.ssl_chunk <= 32) ssl = 1;
            else continue;
            uintptr_t mem = w.addr[i] + 16;
            uintptr_t m = word(mem + 8 * (uintptr_t)(ssl ? api.ssl_method_word : api.ctx_method_word));
            if (is_method(&w, m)) is_ssl = ssl;
        }
        if (is_ssl < 0) continue;
        copy--;
        if (n_obj == cap_obj) {
            struct object *grown = region(sizeof(struct object) * cap_obj * 2);
            if (!grown) break;
            memcpy(grown, objects, sizeof(struct object) * n_obj);
            objects = grown;
            cap_obj *= 2;
        }
        objects[n_obj].chunk = (uint32_t)i;
        objects[n_obj].copy = (uint8_t)copy;
        objects[n_obj].is_ssl = (uint8_t)is_ssl;
        objects[n_obj].ok = 1;
        w.owner[i] = OWN_FIRST_OBJECT + (uint32_t)n_obj;
        w.cause[i] = is_ssl ? C_CONNECTION : C_CONTEXT; /* the SSL or SSL_CTX struct itself */
        n_obj++;
        if (is_ssl) n_ssl++;
        else n_ctx++;
    }
    /* the objects are checked first, then their application data made barriers, then their
     * sub-roots queued before them so that they claim first; each step under the fault guard */
    phase = "checking the objects";
    for (size_t k = 0; k < n_obj; k++) guarded(validate, &w, objects, k, NULL);
    for (size_t k = 0; k < n_obj; k++) {
        if (objects[k].ok) continue;
        w.owner[objects[k].chunk] = OWN_NONE; /* not an object after all: an ordinary chunk */
        if (objects[k].is_ssl) n_ssl--;
        else n_ctx--;
    }
    for (size_t k = 0; k < n_obj; k++)
        if (objects[k].ok) guarded(barriers_of, &w, objects, k, NULL);
    for (size_t k = 0; k < n_obj; k++)
        if (objects[k].ok) guarded(subroots_of, &w, objects, k, NULL);
    size_t subroots = w.q_tail;
    /* OpenSSL's library state: reachable from its own globals, never through an object. It is
     * searched completely before the objects, with the sub-roots already claimed, queued aside. */
    size_t lib_start = w.q_tail;
    phase = "searching from OpenSSL's globals";
    for (size_t i = 0; i < w.n_maps; i++) {
        const struct mapping *m = &w.maps[i];
        int bss = i > 0 && m->anon && w.maps[i - 1].openssl && w.maps[i - 1].w && w.maps[i - 1].hi == m->lo;
        if (!m->r || !m->w || !(m->openssl || bss)) continue;
        for (uintptr_t p = m->lo; p + 8 <= m->hi; p += 8) claim(&w, word(p), OWN_LIBRARY, C_OTHER, 1);
    }
    w.q_head = lib_start;
    spread(&w, NULL);
    /* now the multi-source search: sub-roots first, then every object, queued again behind what
     * the library search used */
    size_t base = w.q_tail;
    for (size_t k = 0; k < subroots; k++) w.queue[w.q_tail++] = w.queue[k];
    for (size_t k = 0; k < n_obj; k++)
        if (objects[k].ok) w.queue[w.q_tail++] = objects[k].chunk;
    w.q_head = base;
    phase = "searching from the objects";
    spread(&w, objects);
    phase = "searching from the threads";
    int threads_seen = 0, threads_owned = 0;
    thread_roots(&w, objects, n_obj, &threads_seen, &threads_owned);

    phase = "naming causes from tracking";
    int named = name_from_tracking(&w);

    phase = "writing the answer";
    /* the totals */
    int64_t lib_bytes = 0, lib_blocks = 0, app_bytes = 0, app_blocks = 0, rest_bytes = 0, rest_blocks = 0, in_use = 0;
    for (size_t i = 0; i < w.n; i++) {
        uint32_t own = w.owner[i];
        in_use += w.size[i];
        if (own >= OWN_FIRST_OBJECT) {
            objects[own - OWN_FIRST_OBJECT].bytes[w.cause[i]] += w.size[i];
            objects[own - OWN_FIRST_OBJECT].blocks[w.cause[i]]++;
        } else if (own == OWN_LIBRARY) {
            lib_bytes += w.size[i];
            lib_blocks++;
        } else if (own == OWN_BARRIER) {
            app_bytes += w.size[i];
            app_blocks++;
        } else {
            rest_bytes += w.size[i];
            rest_blocks++;
        }
    }
    out_put(&o, "status ok\n");
    out_put(&o,
            "stat fork_us %llu\nstat walk_ms %llu\nstat chunks %zu\nstat heap_bytes %llu\n"
            "stat in_use_bytes %lld\nstat free_bytes %llu\nstat tcache_chunks %llu\nstat arenas %d\n"
            "stat thread_heaps %d\nstat mmapped_chunks %d\nstat arena_pieces %d\nstat bad_regions %d\n"
            "stat contexts %zu\n"
            "stat connections %zu\nstat ctx_chunk %zu\nstat ssl_chunk %zu\n",
            (unsigned long long)(fork_ns / 1000), (unsigned long long)((now_ns() - t0) / 1000000), w.n,
            (unsigned long long)w.heap_bytes, (long long)in_use, (unsigned long long)w.free_bytes,
            (unsigned long long)w.tcache_chunks, w.arenas, w.heaps, w.mmapped, w.arena_pieces, w.bad_regions, n_ctx,
            n_ssl, first_usable()->ctx_chunk, first_usable()->ssl_chunk);
    /* which OpenSSL each object is from: "shared" (libssl) or the object holding a static copy */
    for (int c = 0; c < n_apis; c++) {
        if (!apis[c].usable) {
            out_put(&o, "skipped %s: %s\n", apis[c].path[0] ? apis[c].path : "shared",
                    apis[c].problem ? apis[c].problem : "?");
            continue;
        }
        size_t objs = 0;
        for (size_t k = 0; k < n_obj; k++) objs += objects[k].ok && objects[k].copy == c;
        out_put(&o, "C index=%d objects=%zu ctx_chunk=%zu ssl_chunk=%zu path=%s\n", c, objs, apis[c].ctx_chunk,
                apis[c].ssl_chunk, apis[c].path[0] ? apis[c].path : "shared");
    }
    for (size_t k = 0; k < n_obj; k++)
        if (objects[k].ok) guarded(put_object, &w, objects, k, &o);
    for (int c = 0; c < n_unresolved; c++)
        out_put(&o, "skipped %s: its SSL_CTX_new, SSL_new or method functions were not found in its symbols\n",
                unresolved[c]);
    out_put(&o, "stat threads %d\nstat threads_of_a_connection %d\nstat faults %d\nstat causes_from_tracking %d\n",
            threads_seen, threads_owned, faults, named);
    out_put(&o, "P what=openssl_library bytes=%lld blocks=%lld\n", (long long)lib_bytes, (long long)lib_blocks);
    out_put(&o, "P what=application_data bytes=%lld blocks=%lld\n", (long long)app_bytes, (long long)app_blocks);
    out_put(&o, "P what=unreached bytes=%lld blocks=%lld\n", (long long)rest_bytes, (long long)rest_blocks);
    out_put(&o, "stat walk_ms_total %llu\nEND\n", (unsigned long long)((now_ns() - t0) / 1000000));
    out_flush(&o);
}

/* ================= the parent: fork, read with a bound, reap ================= */

static void append(char **text, size_t *len, size_t *cap, const char *p, size_t n)
{
    if (!*text) return;
    if (*len + n + 1 > *cap) {
        size_t ncap = *cap * 2;
        while (ncap < *len + n + 1) ncap *= 2;
        char *g = realloc(*text, ncap);
        if (!g) {
            free(*text);
            *text = NULL;
            return;
        }
        *text = g;
        *cap = ncap;
    }
    memcpy(*text + *len, p, n);
    *len += n;
    (*text)[*len] = 0;
}

static char *unavailable(const char *reason)
{
    char *t = malloc(strlen(reason) + 64);
    if (t) sprintf(t, "tlsprof-walk 1\nstatus unavailable\nreason %s\nEND\n", reason);
    return t;
}

#define WALK_MAX_ANSWER (256u << 20)

/* A process chrooted without /proc cannot open its own maps; the collector passes a descriptor of
 * them with WALK (SCM_RIGHTS), read here right before the clone. */
static char *given_maps_text(int maps_fd)
{
    if (maps_fd < 0) return NULL;
    int own = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
    if (own >= 0) {
        close(own);
        return NULL; /* the child reads its own: exact, no race with the parent's mappings */
    }
    return maps_text(maps_fd);
}

char *heapwalk_run(int timeout_ms, int maps_fd)
{
    pthread_mutex_lock(&walk_lock);
    char why[512];
    const char *problem = allocator_problem(why, sizeof why);
    if (!problem && !resolve_api())
        problem = "no libssl is loaded in this process, and no statically linked OpenSSL with symbols";
    if (!problem) problem = learn();
    if (problem) {
        pthread_mutex_unlock(&walk_lock);
        return unavailable(problem);
    }
    read_thread_sps();
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0) {
        pthread_mutex_unlock(&walk_lock);
        return unavailable("no pipe for the walk");
    }
    /* every signal blocked across the clone: the child inherits the mask, so no handler of the
     * target ever runs in it and a fault there ends it (the channel thread blocks them already) */
    char *given_maps = given_maps_text(maps_fd);
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pid_t target = getpid();
    uint64_t t0 = now_ns();
    long pid = syscall(SYS_clone, 0ul /* no CLONE_* flags, no exit signal */, NULL, NULL, NULL, 0ul);
    if (pid == 0) {
        /* the child holds copies of the target's sockets: it must not outlive the target */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != target) syscall(SYS_exit_group, 0); /* it died before the line above */
        close(fds[0]);
        child_walk(fds[1], now_ns() - t0, given_maps);
        syscall(SYS_exit_group, 0);
    }
    int clone_err = pid < 0 ? errno : 0;
    uint64_t fork_ns = now_ns() - t0;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (given_maps) maps_text_free(given_maps);
    close(fds[1]);
    if (pid < 0) {
        close(fds[0]);
        pthread_mutex_unlock(&walk_lock);
        /* HAProxy's workers set RLIMIT_NPROC to 0, Dovecot's login processes to 1 */
        return unavailable(clone_err == EAGAIN ? "the walk process could not be made: the process may not create "
                                                 "another (RLIMIT_NPROC)"
                                               : "the walk process could not be made");
    }
    size_t len = 0, cap = 65536;
    char *text = malloc(cap);
    if (text) text[0] = 0;
    uint64_t deadline = now_ns() + (uint64_t)timeout_ms * 1000000ull;
    int timed_out = 0;
    char chunk[65536];
    for (;;) {
        uint64_t now = now_ns();
        if (now >= deadline) {
            timed_out = 1;
            break;
        }
        struct pollfd pfd = {fds[0], POLLIN, 0};
        int r = poll(&pfd, 1, (int)((deadline - now) / 1000000ull) + 1);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) continue;
        ssize_t n = read(fds[0], chunk, sizeof chunk);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        if (len + (size_t)n > WALK_MAX_ANSWER) {
            timed_out = 1;
            break;
        }
        append(&text, &len, &cap, chunk, (size_t)n);
    }
    close(fds[0]);
    if (timed_out) kill((pid_t)pid, SIGKILL);
    int status = 0;
    while (waitpid((pid_t)pid, &status, __WALL) < 0 && errno == EINTR) {
    }
    pthread_mutex_unlock(&walk_lock);
    char tail[256];
    int complete = text && len >= 4 && strstr(text, "\nEND\n");
    if (!complete) {
        free(text);
        if (timed_out) snprintf(tail, sizeof tail, "the walk did not finish within %d ms (stopped)", timeout_ms);
        else if (WIFSIGNALED(status))
            snprintf(tail, sizeof tail, "the walk process ended on signal %d (the heap changed under it?)",
                     WTERMSIG(status));
        else snprintf(tail, sizeof tail, "the walk process ended without an answer");
        char *t = malloc(512);
        if (t)
            snprintf(t, 512, "tlsprof-walk 1\nstatus failed\nreason %s\nstat fork_us %llu\nEND\n", tail,
                     (unsigned long long)(fork_ns / 1000));
        return t;
    }
    /* the parent's own measure of its pause comes last: readers take the last value of a key */
    text[len - 4] = 0; /* drop END\n */
    len -= 4;
    snprintf(tail, sizeof tail, "stat pause_us %llu\nEND\n", (unsigned long long)(fork_ns / 1000));
    append(&text, &len, &cap, tail, strlen(tail));
    return text;
}
