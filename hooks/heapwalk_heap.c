/* The heap walk, part 2 (in the child only): glibc's heap as one sorted array of in-use chunks, from
 * the brk arena, the thread arenas' heaps and the mmapped chunks; and the child's own output buffer
 * and memory (mmap only). */
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

void out_flush(struct out *o)
{
    size_t off = 0;
    while (off < o->len) {
        ssize_t n = write(o->fd, o->buf + off, o->len - off);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) _exit(3);
        off += (size_t)n;
    }
    o->len = 0;
}

void out_put(struct out *o, const char *fmt, ...)
{
    if (o->len > sizeof o->buf - 1024) out_flush(o);
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(o->buf + o->len, sizeof o->buf - o->len, fmt, ap);
    va_end(ap);
    if (n > 0) o->len += (size_t)n < sizeof o->buf - o->len ? (size_t)n : sizeof o->buf - o->len - 1;
}

void *region(size_t bytes)
{
    void *p =
        mmap(NULL, bytes ? bytes : 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

static uintptr_t hex(const char **s)
{
    uintptr_t v = 0;
    for (;; (*s)++) {
        char c = **s;
        if (c >= '0' && c <= '9') v = v * 16 + (uintptr_t)(c - '0');
        else if (c >= 'a' && c <= 'f') v = v * 16 + (uintptr_t)(c - 'a' + 10);
        else return v;
    }
}

#define MAPS_CAP (64u << 20)

/* The whole text of a maps file, in memory of our own (MAPS_CAP bytes, unmapped by the caller). */
char *maps_text(int fd)
{
    char *text = region(MAPS_CAP);
    if (!text) return NULL;
    size_t len = 0;
    for (;;) {
        ssize_t n = pread(fd, text + len, MAPS_CAP - 1 - len, (off_t)len);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        len += (size_t)n;
    }
    text[len] = 0;
    return text;
}

void maps_text_free(char *text) { munmap(text, MAPS_CAP); }

/* A mapping the parent listed may be gone from the child (unmapped or shrunk between the parent's
 * read and the clone): msync answers ENOMEM for a range not wholly mapped, and reads nothing. */
static int still_mapped(const struct mapping *m) { return msync((void *)m->lo, m->hi - m->lo, MS_ASYNC) == 0; }

int read_maps(struct walk *w, const char *given)
{
    char *text = (char *)given;
    if (!given) {
        int fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
        if (fd < 0) return -2; /* a chroot without /proc (a daemon's jail), and no text given */
        text = maps_text(fd);
        close(fd);
        if (!text) return -1;
    }
    size_t len = strlen(text);
    size_t lines = 0;
    for (size_t i = 0; i < len; i++) lines += text[i] == '\n';
    w->maps = region((lines + 2) * sizeof *w->maps); /* one line may become two (below) */
    if (!w->maps) return -1;
    const char *s = text;
    while (*s) {
        struct mapping m = {0};
        m.lo = hex(&s);
        if (*s == '-') s++;
        m.hi = hex(&s);
        while (*s == ' ') s++;
        m.r = s[0] == 'r';
        m.w = s[1] == 'w';
        /* perms, offset, dev, inode, then the path (or nothing) */
        for (int field = 0; field < 4 && *s && *s != '\n'; field++) {
            while (*s && *s != ' ' && *s != '\n') s++;
            while (*s == ' ') s++;
        }
        const char *path = s;
        while (*s && *s != '\n') s++;
        size_t plen = (size_t)(s - path);
        m.anon = plen == 0;
        m.heap = plen == 6 && !memcmp(path, "[heap]", 6);
        m.openssl = (memmem(path, plen, "libssl", 6) || memmem(path, plen, "libcrypto", 9)) ? 1 : 0;
        /* a static copy's library state lives in the writable data of the object holding it (for
         * node, the executable's .data/.bss: node's own globals too, which hold no SSL object's
         * memory but what node keeps for the process) */
        for (int c = 0; c < n_apis && !m.openssl; c++)
            m.openssl =
                apis[c].usable && apis[c].path[0] && strlen(apis[c].path) == plen && !memcmp(apis[c].path, path, plen);
        if (*s == '\n') s++;
        if (m.hi <= m.lo || (given && !still_mapped(&m))) continue;
        /* our own buffer for this text is in the list too: it is neither the target's nor kept.
         * The kernel may have merged it with a neighbour of the same flags (a thread arena's heap is
         * anonymous and MAP_NORESERVE too): only the buffer's own range is left out */
        uintptr_t own_lo = (uintptr_t)text, own_hi = own_lo + MAPS_CAP;
        if (own_hi <= m.lo || own_lo >= m.hi) {
            w->maps[w->n_maps++] = m;
            continue;
        }
        struct mapping below = m, above = m;
        below.hi = own_lo;
        above.lo = own_hi;
        if (below.hi > below.lo) w->maps[w->n_maps++] = below;
        if (above.hi > above.lo) w->maps[w->n_maps++] = above;
    }
    if (!given) maps_text_free(text);
    return 0;
}

const struct mapping *mapping_of(const struct walk *w, uintptr_t p)
{
    size_t lo = 0, hi = w->n_maps;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (w->maps[mid].hi <= p) lo = mid + 1;
        else hi = mid;
    }
    return lo < w->n_maps && w->maps[lo].lo <= p && w->maps[lo].r ? &w->maps[lo] : NULL;
}

static void add_chunk(struct walk *w, uintptr_t p, size_t sz)
{
    if (w->n == w->cap) return;
    /* a tcache-free chunk looks in use to the heap; glibc marks it with the tcache key at mem+8 */
    if (learned.tcache_key && sz >= 32 && word(p + 24) == learned.tcache_key) {
        w->tcache_chunks++;
        w->free_bytes += sz;
        return;
    }
    w->addr[w->n] = p;
    w->size[w->n] = (uint32_t)(sz > UINT32_MAX ? UINT32_MAX : sz);
    w->n++;
}

/* Chunks of one arena heap from `first` to `end`; 0 when the chain reached the end cleanly. */
static int walk_chunks(struct walk *w, uintptr_t first, uintptr_t end, int dry_run)
{
    uintptr_t p = first;
    while (p + 16 <= end) {
        size_t sz = word(p + 8) & ~(size_t)7;
        if (sz == 0) return 0; /* the fencepost at the end of a thread heap */
        if (sz < 16 || (sz & 15) || sz > end - p) return -1;
        uintptr_t next = p + sz;
        if (next + 16 > end) return 0; /* the top chunk: free */
        if (!dry_run) {
            if (word(next + 8) & 1) add_chunk(w, p, sz);
            else w->free_bytes += sz;
        }
        p = next;
    }
    return p == end ? 0 : -1;
}

/* A thread arena's heap: heap_info at a HEAP_MAX-aligned address, chunks after it (after the arena
 * itself for the arena's first heap, whose size depends on the glibc build: found by the chain). */
static int walk_thread_heap(struct walk *w, const struct mapping *m)
{
    uintptr_t h = m->lo;
    uintptr_t ar_ptr = word(h), prev = word(h + 8), size = word(h + 16), mprotected = word(h + 24);
    /* heap_info as glibc writes it: its arena's malloc_state follows the header of the arena's first
     * heap, prev is another heap's (aligned) or none, and the heap's size was made writable. A
     * main-arena piece or an application's mapping that happens to start at an aligned address
     * (prev_size 0 there) is no thread heap, and taking it for one skipped it and its neighbours */
    if ((ar_ptr & (HEAP_MAX - 1)) != HEAP_INFO_SIZE || (prev & (HEAP_MAX - 1)) || mprotected < size) return 0;
    if (size < 4096 || size > HEAP_MAX || size > m->hi - m->lo) return 0;
    uintptr_t end = h + size;
    if (ar_ptr != h + HEAP_INFO_SIZE) {
        if (walk_chunks(w, h + HEAP_INFO_SIZE, end, 1) != 0) return 0;
        walk_chunks(w, h + HEAP_INFO_SIZE, end, 0);
        w->heaps++;
        return 1;
    }
    for (uintptr_t first = h + HEAP_INFO_SIZE + 2176; first < h + 8192 && first < end; first += 16) {
        if (word(first + 8) & 1 && walk_chunks(w, first, end, 1) == 0) { /* PREV_INUSE is set on the first */
            walk_chunks(w, first, end, 0);
            w->heaps++;
            w->arenas++;
            return 1;
        }
    }
    return 0;
}

/* Where the chain of chunks from p stops: `end` when it reaches it exactly, else the last page
 * boundary it reached cleanly (glibc maps the main arena's pieces and mmapped chunks in whole
 * pages), before an mmapped chunk there; p itself when nothing from p is a chain. */
static uintptr_t piece_end(uintptr_t p, uintptr_t end)
{
    uintptr_t first = p, last_page = p;
    while (p + 16 <= end) {
        if (p != first && !(p & (PAGE - 1))) {
            last_page = p;
            if (word(p) == 0 && (word(p + 8) & 7) == 2) return p; /* an mmapped chunk begins */
        }
        size_t sz = word(p + 8) & ~(size_t)7;
        if (sz < 16 || (sz & 15) || sz > end - p) break;
        p += sz;
    }
    return p == end ? end : last_page;
}

/* An anonymous mapping that is no thread heap: mmapped chunks (IS_MMAPPED, whole pages), and the
 * pieces a main arena that could not grow with brk continues in (mapped by glibc, PREV_INUSE on
 * their first chunk; node's heap meets a mapping of V8's in about one run in ten). The kernel
 * merges neighbours of both kinds, and the application's own anonymous memory (Python's arenas),
 * into one mapping: each page that does not continue a chain is looked at as the start of one.
 * Both kinds start with a zero word (no chunk before them). */
static void walk_anonymous(struct walk *w, const struct mapping *m)
{
    for (uintptr_t p = m->lo; p + 32 <= m->hi;) {
        size_t head = word(p + 8), sz = head & ~(size_t)7;
        uintptr_t end = p;
        if (word(p) == 0 && (head & 7) == 2 && sz >= PAGE && !(sz & (PAGE - 1)) && sz <= m->hi - p) {
            add_chunk(w, p, sz);
            w->mmapped++;
            end = p + sz;
        } else if (word(p) == 0 && (head & 7) == 1 && sz >= MIN_CHUNK && (end = piece_end(p, m->hi)) > p) {
            walk_chunks(w, p, end, 0);
            w->arena_pieces++;
        }
        if (end > p) w->heap_bytes += end - p;
        p = end > p ? end : p + PAGE;
    }
}

int collect_chunks(struct walk *w)
{
    uint64_t total = 0;
    for (size_t i = 0; i < w->n_maps; i++)
        if (w->maps[i].anon || w->maps[i].heap) total += w->maps[i].hi - w->maps[i].lo;
    w->cap = total / MIN_CHUNK + 16;
    w->addr = region(w->cap * sizeof *w->addr);
    w->size = region(w->cap * sizeof *w->size);
    w->owner = region(w->cap * sizeof *w->owner);
    w->cause = region(w->cap);
    w->queue = region(2 * w->cap * sizeof *w->queue); /* library pass, then roots re-queued */
    if (!w->addr || !w->size || !w->owner || !w->cause || !w->queue) return -1;
    /* maps are in address order, and so is every region's chain: the array comes out sorted */
    for (size_t i = 0; i < w->n_maps; i++) {
        const struct mapping *m = &w->maps[i];
        if (!m->r || !m->w) continue;
        if (m->heap) {
            /* the brk heap may show as several adjacent VMAs (a forked nginx worker grew its own
             * part): one arena, one chain across them */
            uintptr_t hi = m->hi;
            while (i + 1 < w->n_maps && w->maps[i + 1].heap && w->maps[i + 1].lo == hi && w->maps[i + 1].r &&
                   w->maps[i + 1].w)
                hi = w->maps[++i].hi;
            w->heap_bytes += hi - m->lo;
            if (walk_chunks(w, m->lo, hi, 0) != 0) w->bad_regions++;
            w->arenas++;
        } else if (m->anon) {
            if (!(m->lo & (HEAP_MAX - 1))) {
                /* a thread heap shows as several adjacent VMAs too when a process forked after the
                 * arena was made (HAProxy's master-worker mode): its part and the child's own */
                struct mapping joined = *m;
                size_t last = i;
                while (last + 1 < w->n_maps && w->maps[last + 1].anon && w->maps[last + 1].lo == joined.hi &&
                       w->maps[last + 1].r && w->maps[last + 1].w && joined.hi - joined.lo < HEAP_MAX)
                    joined.hi = w->maps[++last].hi;
                if (walk_thread_heap(w, &joined)) {
                    w->heap_bytes += word(m->lo + 16);
                    i = last;
                    continue;
                }
            }
            walk_anonymous(w, m);
        }
    }
    return 0;
}
