/* The channel's commands: each connection (accepted by listener.c) sends one command line and gets
 * one text answer, then is closed.
 * Only the same uid (or root) is served; answers carry sizes, sites, addresses and counts only,
 * never payload or key material. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <fcntl.h>
#include <malloc.h>
#include <time.h>
#include <unistd.h>

#include "shim.h"


static int (*detach_stop)(void); /* main.c's stop, handed down: the channel never calls up */
static int exiting;

/* Called by the Python agent from its atexit hook: what the process frees from then on is its
 * teardown, not its working state, and each snapshot says so (the session keeps the one before). */
EXPORT void tlsprof_mark_exiting(void) { __atomic_store_n(&exiting, 1, __ATOMIC_RELAXED); }
const int *channel_exiting_flag(void) { return &exiting; }

void channel_on_detach(int (*stop)(void)) { detach_stop = stop; }

/* ---- a growing text buffer (libc malloc: never OpenSSL's) ---- */
struct buf {
    char *p;
    size_t len, cap;
    int failed;
};

static void put(struct buf *b, const char *fmt, ...)
{
    if (b->failed) return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->p ? b->p + b->len : NULL, b->p ? b->cap - b->len : 0, fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->failed = 1;
            return;
        }
        if (b->p && b->len + (size_t)n < b->cap) {
            b->len += (size_t)n;
            return;
        }
        size_t ncap = b->cap ? b->cap * 2 : 65536;
        while (ncap < b->len + (size_t)n + 1) ncap *= 2;
        char *np = realloc(b->p, ncap);
        if (!np) {
            b->failed = 1;
            return;
        }
        b->p = np;
        b->cap = ncap;
    }
}

/* A value on the wire has no space, no comma (lists use it), no '=' and no control byte: those and
 * '%' itself are written as %XX (docs/snapshot-format.md), so a reader splits a line on spaces. */
static void put_escaped(struct buf *b, const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    char chunk[256];
    size_t n = 0;
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch <= ' ' || ch == '%' || ch == ',' || ch == '=' || ch == 0x7f) {
            chunk[n++] = '%';
            chunk[n++] = hex[ch >> 4];
            chunk[n++] = hex[ch & 15];
        } else {
            chunk[n++] = (char)ch;
        }
        if (n > sizeof chunk - 4) {
            chunk[n] = 0;
            put(b, "%s", chunk);
            n = 0;
        }
    }
    chunk[n] = 0;
    if (n) put(b, "%s", chunk);
}

static void format_peer(int fd, char *out, size_t n)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    snprintf(out, n, "-");
    if (fd < 0 || getpeername(fd, (struct sockaddr *)&ss, &len) != 0) return;
    char host[INET6_ADDRSTRLEN];
    if (ss.ss_family == AF_INET) {
        struct sockaddr_in *a = (struct sockaddr_in *)&ss;
        if (inet_ntop(AF_INET, &a->sin_addr, host, sizeof host)) snprintf(out, n, "%s:%u", host, ntohs(a->sin_port));
    } else if (ss.ss_family == AF_INET6) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
        if (inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof host))
            snprintf(out, n, "[%s]:%u", host, ntohs(a->sin6_port));
    }
}

/* what a snapshot's owner lines add up to, to hold its site lines against */
struct sums {
    int64_t bytes, blocks;
};

struct cause_list {
    struct buf *b;
    const char *sep;
    struct sums *sums;
};

static void put_cause(uint8_t cause, int64_t bytes, int64_t requested, int64_t blocks, void *arg)
{
    struct cause_list *list = arg;
    if (!blocks && !bytes) return;
    put(list->b, "%s%d:%lld:%lld:%lld", list->sep, cause, (long long)bytes, (long long)requested, (long long)blocks);
    list->sep = ",";
    list->sums->bytes += bytes;
    list->sums->blocks += blocks;
}

static void put_owner(struct buf *b, uint32_t idx, uint64_t now, struct sums *sums)
{
    struct owner *o = owner_at(idx);
    uint32_t flags = __atomic_load_n(&o->flags, __ATOMIC_ACQUIRE);
    if (!(flags & OWNER_F_IN_USE)) return;
    int alive = __atomic_load_n(&o->alive, __ATOMIC_ACQUIRE);
    if (idx && !alive && __atomic_load_n(&o->total_blocks, __ATOMIC_ACQUIRE) <= 0) return;
        /* hooks update these fields while we read them: relaxed atomic loads, never torn */
#define RD(f) __atomic_load_n(&o->f, __ATOMIC_RELAXED)
    uint8_t kind = RD(kind);
    int32_t fd = RD(fd);
    uint32_t ctx = RD(ctx);
    uint64_t created = RD(created_ns);
    char peer[80] = "-";
    if (kind == OWNER_SSL && alive) format_peer(fd, peer, sizeof peer);
    uint64_t ctx_serial = ctx ? __atomic_load_n(&owner_at(ctx)->serial, __ATOMIC_RELAXED) : 0;
    put(b,
        "O idx=%u serial=%llu kind=%u ptr=%lx ctx=%llu state=%u fd=%d alive=%d pre_attach=%u age_ns=%llu "
        "mode=%llx mode_known=%d peer=",
        idx, (unsigned long long)RD(serial), kind, (unsigned long)RD(ptr), (unsigned long long)ctx_serial, RD(state),
        fd, alive, RD(pre_attach), (unsigned long long)(created && now > created ? now - created : 0),
        (unsigned long long)RD(mode), (flags & OWNER_F_MODE_KNOWN) ? 1 : 0);
    put_escaped(b, peer);
#undef RD
    put(b, " causes=");
    struct cause_list list = {b, "", sums};
    owner_visit_causes(o, put_cause, &list);
    put(b, "\n");
}

/* `F idx=<owner idx> key=value ...`: facts about a live connection read at snapshot time, from the
 * shim's own counters and the kernel (never from OpenSSL's structures: the channel thread cannot
 * pin an object another thread may be freeing). io=<SSL_read/write/peek calls that moved data>, so
 * the reader can tell traffic and idleness apart. With a socket fd: fd_open=0|1 (fcntl F_GETFD),
 * and when open fd_ino=<inode> and fd_sock=0|1, so the reader can tell an fd that was closed or
 * reused by a different file from one that still belongs to the connection. Readers ignore
 * unknown keys. */
static void put_facts(struct buf *b, uint32_t idx)
{
    struct owner *o = owner_at(idx);
    uint32_t flags = __atomic_load_n(&o->flags, __ATOMIC_ACQUIRE);
    if (!(flags & OWNER_F_IN_USE) || __atomic_load_n(&o->kind, __ATOMIC_RELAXED) != OWNER_SSL ||
        !__atomic_load_n(&o->alive, __ATOMIC_ACQUIRE))
        return;
    put(b, "F idx=%u io=%llu", idx, (unsigned long long)__atomic_load_n(&o->io_calls, __ATOMIC_RELAXED));
    int fd = __atomic_load_n(&o->fd, __ATOMIC_RELAXED);
    if (fd >= 0) {
        struct stat st;
        if (fcntl(fd, F_GETFD) < 0) put(b, " fd_open=0");
        else if (fstat(fd, &st) == 0)
            put(b, " fd_open=1 fd_ino=%llu fd_sock=%d", (unsigned long long)st.st_ino, S_ISSOCK(st.st_mode) ? 1 : 0);
    }
    put(b, "\n");
}

/* The names of the enums the O lines and stat byte_measure carry as numbers, by enum value. */
static const char *const kind_names[] = {
    [OWNER_PROCESS] = "process", [OWNER_CTX] = "context", [OWNER_SSL] = "connection"};
static const char *const state_names[] = {
    [STATE_HANDSHAKE] = "handshake", [STATE_ESTABLISHED] = "established", [STATE_SHUTDOWN] = "shutdown"};
static const char *const measure_names[] = {
    [MEASURE_GLIBC] = "glibc_footprint", [MEASURE_USABLE] = "usable_size", [MEASURE_REQUESTED] = "requested"};

/* ` <what>=<name>,<name>...` of the vocab line */
static void put_names(struct buf *b, const char *what, const char *const *names, size_t n)
{
    put(b, " %s=", what);
    for (size_t i = 0; i < n; i++) put(b, i ? ",%s" : "%s", names[i]);
}

static void put_header(struct buf *b)
{
    const char *v = tlsprof_openssl_version();
    put(b, "tlsprof-snapshot 2\nheader pid=%d mono_ns=%llu openssl=", (int)getpid(), (unsigned long long)now_ns());
    put_escaped(b, v ? v : "-");
    /* the numbers in O and S lines and in stat byte_measure index these lists: the reader needs no
     * copy of the enums */
    put(b, "\nvocab");
    put_names(b, "causes", cause_names, N_CAUSES);
    put_names(b, "scopes", scope_names, N_SCOPES);
    put_names(b, "kinds", kind_names, sizeof kind_names / sizeof *kind_names);
    put_names(b, "states", state_names, sizeof state_names / sizeof *state_names);
    put_names(b, "measures", measure_names, sizeof measure_names / sizeof *measure_names);
    put(b, "\n");
    put(b, "stat untracked_bytes=%lld untracked_blocks=%lld io_calls_of_dead=%llu\n",
        (long long)__atomic_load_n(&untracked_bytes, __ATOMIC_RELAXED),
        (long long)__atomic_load_n(&untracked_blocks, __ATOMIC_RELAXED),
        (unsigned long long)__atomic_load_n(&io_calls_of_dead, __ATOMIC_RELAXED));
    size_t owners =
        (size_t)owner_count_slots() * sizeof(struct owner) + __atomic_load_n(&owner_wide_bytes, __ATOMIC_RELAXED);
    size_t table = blocks_memory() + owners + (size_t)sites_used() * (sizeof(struct site) + sizeof(site_counts[0])) +
                   (size_t)MAX_SITES * 2 /* the site index */;
    put(b, "stat tracker_bytes=%zu blocks=%zu slots_patched=%d slots_foreign=%d\n", table, blocks_count(),
        interpose_slots(), interpose_foreign());
    put(b, "stat byte_measure=%d exiting=%d nursery_passed=%llu\n", hooks_byte_measure(),
        __atomic_load_n(&exiting, __ATOMIC_RELAXED), (unsigned long long)nursery_passed());
    /* the per-block part of tracker_bytes and the per-owner part, apart from the sites' (issue 18) */
    put(b, "stat tracker_table_bytes=%zu blocks_wide=%zu tracker_owner_bytes=%zu\n", blocks_memory(),
        blocks_count_wide(), owners);
    /* glibc's own view of its heap, so the front end can explain RSS: what is in use (arenas and
     * mmapped chunks, tlsprof's table included) and what sits free inside the arenas */
    struct mallinfo2 mi = mallinfo2();
    put(b, "stat malloc_in_use=%zu malloc_mmapped=%zu malloc_free=%zu\n", mi.uordblks + mi.hblkhd, mi.hblkhd,
        mi.fordblks);
}

/* Owners and sites count the same blocks one after the other, so a thread that counts or frees a
 * burst (a connection's buffers at SSL_free, a handshake's survivors) between the two passes makes
 * the report's totals disagree with its sites. Such a read is done again, a few times at most: a
 * burst is over in well under a millisecond, and a target that never pauses still gets its answer. */
#define READ_TRIES 4
#define READ_PAUSE_NS 2000000

static int sums_agree(const struct sums *owners, const struct sums *sites)
{
    int64_t bytes = owners->bytes - sites->bytes, blocks = owners->blocks - sites->blocks;
    int64_t bytes_room = owners->bytes / 50 > 65536 ? owners->bytes / 50 : 65536;
    int64_t blocks_room = owners->blocks / 50 > 1024 ? owners->blocks / 50 : 1024;
    return llabs(bytes) <= bytes_room && llabs(blocks) <= blocks_room;
}

/* One pass over owners and sites; *owners and *sites get what each pass added up to. */
static void put_owners_and_sites(struct buf *b, uint32_t n, struct sums *owners, struct sums *sites)
{
    uint64_t now = now_ns();
    for (uint32_t i = 0; i < n; i++) put_owner(b, i, now, owners);
    /* the sites right after the owners: every syscall between the two reads widens how far a busy
     * target's totals drift apart (the facts below make three per connection) */
    uint32_t ns = sites_used();
    for (uint32_t i = 0; i < ns; i++) {
        struct site *s = site_at((uint16_t)i);
        if (!__atomic_load_n(&s->used, __ATOMIC_ACQUIRE)) continue;
        int64_t bytes, requested, blocks;
        site_totals((uint16_t)i, &bytes, &requested, &blocks);
        if (blocks <= 0) continue;
        sites->bytes += bytes;
        sites->blocks += blocks;
        put(b, "S id=%u cause=%u scope=%u line=%d bytes=%lld requested=%lld blocks=%lld library=", i, s->cause,
            s->scope, s->line, (long long)bytes, (long long)requested, (long long)blocks);
        put_escaped(b, s->library ? s->library : "-");
        put(b, " file=");
        put_escaped(b, s->name ? s->name : "?");
        put(b, "\n");
    }
}

static void snapshot(struct buf *b)
{
    owners_sweep();
    put_header(b);
    uint32_t n = owner_count_slots();
    size_t start = b->len;
    for (int tries = 1;; tries++) {
        struct sums owners = {0, 0}, sites = {0, 0};
        put_owners_and_sites(b, n, &owners, &sites);
        if (b->failed || tries == READ_TRIES || sums_agree(&owners, &sites)) break;
        b->len = start;
        struct timespec pause = {0, READ_PAUSE_NS};
        nanosleep(&pause, NULL);
    }
    for (uint32_t i = 0; i < n; i++) put_facts(b, i);
    for (int i = 0; i < static_copies_count(); i++) {
        const char *kind, *status, *path;
        static_copy_describe(i, &kind, &status, &path);
        put(b, "C kind=%s tracking=%s path=", kind, status);
        put_escaped(b, path);
        put(b, "\n");
    }
    put(b, "END\n");
}

/* Drill-down: one owner's live blocks per call site, counted from the block table on demand. Block
 * sizes are not kept per block (16-byte slots), and reading a block's memory from this thread is not
 * safe, so the answer is counts; the front end labels any byte figure built from them an estimate. */
struct owner_sites {
    uint32_t *blocks; /* by site id */
};

static void count_owner_block(const struct block *b, void *arg)
{
    struct owner_sites *o = arg;
    o->blocks[block_site(b)]++;
}

static void owner_sites(struct buf *b, const char *arg)
{
    char *end;
    unsigned long serial = strtoul(arg, &end, 10);
    if (end == arg) {
        put(b, "ERR usage: OWNER <serial>\n");
        return;
    }
    uint32_t n = owner_count_slots(), idx = UINT32_MAX;
    for (uint32_t i = 0; i < n && idx == UINT32_MAX; i++) {
        struct owner *o = owner_at(i);
        if ((__atomic_load_n(&o->flags, __ATOMIC_ACQUIRE) & OWNER_F_IN_USE) &&
            __atomic_load_n(&o->serial, __ATOMIC_RELAXED) == serial)
            idx = i;
    }
    if (idx == UINT32_MAX) {
        put(b, "ERR no such owner\n");
        return;
    }
    struct owner_sites acc = {calloc(MAX_SITES, sizeof(uint32_t))};
    if (!acc.blocks) {
        b->failed = 1;
        return;
    }
    blocks_visit_owner(idx, count_owner_block, &acc);
    put(b, "tlsprof-owner 2\n");
    for (uint32_t i = 0; i < MAX_SITES; i++)
        if (acc.blocks[i]) put(b, "W site=%u blocks=%u\n", i, acc.blocks[i]);
    put(b, "END\n");
    free(acc.blocks);
}

static void send_all(int fd, const char *p, size_t len)
{
    while (len) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return; /* peer gone or too slow (SO_SNDTIMEO): drop it, never stall */
        p += n;
        len -= (size_t)n;
    }
}

static int peer_allowed(int fd)
{
    struct ucred cred;
    socklen_t len = sizeof cred;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) return 0;
    return cred.uid == geteuid() || cred.uid == 0;
}

/* One command line (up to cap - 1 bytes, through its newline) and at most one descriptor passed
 * with it (the target's maps for WALK, from a collector outside a chroot without /proc); any other
 * descriptor is closed at once. */
static size_t recv_command(int fd, char *cmd, size_t cap, int *passed_fd)
{
    size_t got = 0;
    while (got < cap - 1) {
        union {
            struct cmsghdr h;
            char space[CMSG_SPACE(4 * sizeof(int))];
        } control;
        struct iovec iov = {cmd + got, cap - 1 - got};
        struct msghdr msg = {
            .msg_iov = &iov, .msg_iovlen = 1, .msg_control = &control, .msg_controllen = sizeof control};
        ssize_t n = recvmsg(fd, &msg, MSG_CMSG_CLOEXEC);
        if (n < 0 && errno == EINTR) continue;
        for (struct cmsghdr *c = n >= 0 ? CMSG_FIRSTHDR(&msg) : NULL; c; c = CMSG_NXTHDR(&msg, c)) {
            if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
            size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
            for (size_t i = 0; i < count; i++) {
                int passed;
                memcpy(&passed, CMSG_DATA(c) + i * sizeof(int), sizeof passed);
                if (*passed_fd < 0) *passed_fd = passed;
                else close(passed);
            }
        }
        if (n <= 0) break;
        got += (size_t)n;
        if (memchr(cmd, '\n', got)) break;
    }
    return got;
}

/* The target may close a descriptor we hold and get its number back for its own file (close_range
 * in another thread): ours is closed only while it is still the file we were passed. */
static void close_passed(int fd, const struct stat *was)
{
    struct stat now;
    if (fd >= 0 && fstat(fd, &now) == 0 && now.st_dev == was->st_dev && now.st_ino == was->st_ino) close(fd);
}

/* One connection of the listener's (listener.c): one command in, one answer out. Returns 1 when
 * the listener must stop. */
int channel_serve(int fd, const char *dir)
{
    struct timeval tv = {2, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    if (!peer_allowed(fd)) return 0;
    char cmd[64];
    int passed_fd = -1;
    size_t got = recv_command(fd, cmd, sizeof cmd, &passed_fd);
    cmd[got] = 0;
    char *nl = strchr(cmd, '\n');
    if (!nl) { /* no complete command: ignore the peer */
        if (passed_fd >= 0) close(passed_fd);
        return 0;
    }
    *nl = 0;
    struct stat passed_was = {0};
    if (passed_fd >= 0 && fstat(passed_fd, &passed_was) != 0) passed_fd = -1;
    struct buf b = {0};
    int stop = 0;
    if (!strcmp(cmd, "PING")) {
        put(&b, "PONG %d\n", (int)getpid());
    } else if (!strncmp(cmd, "OWNER ", 6)) {
        owner_sites(&b, cmd + 6);
    } else if (!strcmp(cmd, "SNAPSHOT")) {
        snapshot(&b);
    } else if (!strcmp(cmd, "WALK") || !strncmp(cmd, "WALK ", 5)) {
        /* WALK [timeout_ms]: the heap walk runs in a child; this thread waits for it */
        long ms = cmd[4] ? strtol(cmd + 5, NULL, 10) : 0;
        char *text = heapwalk_run(ms > 0 && ms <= 600000 ? (int)ms : 60000, passed_fd);
        if (text) put(&b, "%s", text);
        else b.failed = 1;
        free(text);
        struct timeval slow = {30, 0}; /* a large answer: give the reader time */
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &slow, sizeof slow);
    } else if (!strcmp(cmd, "AGENT")) { /* under `run`: an interpreter that skipped sitecustomize */
        put(&b, pyagent_start(dir, 1) ? "AGENT started\n" : "AGENT none\n");
    } else if (!strcmp(cmd, "DETACH")) {
        if (detach_stop) detach_stop();
        put(&b, "OK\n");
        stop = 1;
    } else {
        put(&b, "ERR unknown command\n");
    }
    close_passed(passed_fd, &passed_was);
    if (!b.failed && b.p) send_all(fd, b.p, b.len);
    else if (b.failed) send_all(fd, "ERR out of memory\n", 18);
    free(b.p);
    return stop;
}
