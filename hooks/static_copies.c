/* OpenSSL copies linked into another ELF object: node exports its copy's symbols; pip's
 * `cryptography` wheel keeps them local (in .symtab only). Symbol interposition and GOT patching see
 * neither, because such a copy calls its allocator directly. What works is the copy's own
 * CRYPTO_set_mem_functions, before its first allocation: `run` calls it from the preload constructor
 * (for the executable) and from the dlopen hook (for libraries loaded later). After that point (attach)
 * OpenSSL refuses, and the copy is reported as not tracked. */
#define _GNU_SOURCE
#include <elf.h>
#include <fcntl.h>
#include <link.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "shim.h"

#define MAX_COPIES 16
#define MAX_SEEN 2048

struct copy {
    uintptr_t base;
    char path[256];
    uint8_t kind;   /* COPY_* */
    uint8_t status; /* STATUS_* */
};

static const char *const kind_names[] = {"static-exported", "static-symtab", "shared-symbolic"};
static const char *const status_names[] = {"mem-functions", "too-late", "not-tracked"};
enum { COPY_EXPORTED, COPY_SYMTAB, COPY_SYMBOLIC };
enum { STATUS_TRACKED, STATUS_TOO_LATE, STATUS_NOT_TRACKED };

static struct copy copies[MAX_COPIES];
static int n_copies;
static uintptr_t seen[MAX_SEEN];
static int n_seen;
static pthread_mutex_t copies_lock = PTHREAD_MUTEX_INITIALIZER;

/* Objects that are never a static copy: skip reading their files. */
static int uninteresting(const char *path)
{
    const char *b = strrchr(path, '/');
    b = b ? b + 1 : path;
    static const char *const skip[] = {
        "libc.so", "libm.so",  "ld-linux",   "libpthread",  "libdl.so",   "librt.so",   "libssl.so",
        "libz.so", "libgcc_s", "libstdc++",  "libffi",      "libexpat",   "liblzma",    "libbz2",
        "libuuid", "libtinfo", "libncurses", "libreadline", "libsqlite3", "libutil.so", "_shim"};
    for (size_t i = 0; i < sizeof skip / sizeof skip[0]; i++)
        if (strstr(b, skip[i])) return 1;
    return 0;
}

/* The addresses of the defined functions `names[k]` in the ELF file at path (in .dynsym when
 * exported_only, else in .symtab), relocated by base, into out[k] (left alone when absent). One read
 * of the file for every name: .symtab is not mapped, and node's executable is ~100 MB. Returns how
 * many were found. */
static int file_resolve(const char *path, uintptr_t base, const char *const *names, int n, uintptr_t *out,
                        int exported_only)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    struct stat st;
    int found = 0;
    if (fstat(fd, &st) != 0 || st.st_size < (off_t)sizeof(ElfW(Ehdr))) {
        close(fd);
        return 0;
    }
    size_t size = (size_t)st.st_size;
    const unsigned char *m = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (m == MAP_FAILED) return 0;
    const ElfW(Ehdr) *eh = (const ElfW(Ehdr) *)m;
    if (memcmp(eh->e_ident, ELFMAG, SELFMAG) != 0 || eh->e_ident[EI_CLASS] != ELFCLASS64 || eh->e_shoff == 0 ||
        eh->e_shoff + (size_t)eh->e_shnum * sizeof(ElfW(Shdr)) > size)
        goto out;
    const ElfW(Shdr) *sh = (const ElfW(Shdr) *)(m + eh->e_shoff);
    for (int i = 0; i < eh->e_shnum; i++) {
        unsigned want = exported_only ? SHT_DYNSYM : SHT_SYMTAB;
        if (sh[i].sh_type != want || sh[i].sh_link >= eh->e_shnum) continue;
        const ElfW(Shdr) *strs = &sh[sh[i].sh_link];
        if (sh[i].sh_offset + sh[i].sh_size > size || strs->sh_offset + strs->sh_size > size) continue;
        const ElfW(Sym) *syms = (const ElfW(Sym) *)(m + sh[i].sh_offset);
        const char *strtab = (const char *)(m + strs->sh_offset);
        size_t count = sh[i].sh_size / sizeof(ElfW(Sym));
        for (size_t k = 0; k < count; k++) {
            if (syms[k].st_name >= strs->sh_size || syms[k].st_shndx == SHN_UNDEF || !syms[k].st_value) continue;
            int type = ELF64_ST_TYPE(syms[k].st_info);
            if (type != STT_FUNC && type != STT_GNU_IFUNC) continue;
            const char *sym = strtab + syms[k].st_name;
            size_t left = strs->sh_size - syms[k].st_name;
            for (int j = 0; j < n; j++) {
                if (out[j] || sym[0] != names[j][0] || strncmp(sym, names[j], left) != 0) continue;
                out[j] = base + syms[k].st_value;
                found++;
                break;
            }
        }
    }
out:
    munmap((void *)m, size);
    return found;
}

static uintptr_t file_defines(const char *path, uintptr_t base, const char *name, int exported_only)
{
    uintptr_t a = 0;
    file_resolve(path, base, &name, 1, &a, exported_only);
    return a;
}

struct candidate {
    uintptr_t base;
    char path[256];
};

static int collect(struct dl_phdr_info *info, size_t size, void *data)
{
    (void)size;
    struct candidate *list = data;
    int *n = (int *)&list[MAX_SEEN];
    if (*n >= MAX_SEEN) return 1;
    const char *name = info->dlpi_name;
    if (name && strstr(name, "linux-vdso")) return 0;
    list[*n].base = info->dlpi_addr;
    if (!name || !*name) {
        ssize_t len = readlink("/proc/self/exe", list[*n].path, sizeof list[*n].path - 1);
        list[*n].path[len > 0 ? len : 0] = 0;
    } else {
        strncpy(list[*n].path, name, sizeof list[*n].path - 1);
        list[*n].path[sizeof list[*n].path - 1] = 0;
    }
    (*n)++;
    return 0;
}

/* DT_SYMBOLIC, or DF_SYMBOLIC in DT_FLAGS, in the object's (mapped) dynamic section. */
static int binds_symbolically(const struct dl_phdr_info *unused, uintptr_t base, const char *path)
{
    (void)unused;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    struct stat st;
    int symbolic = 0;
    if (fstat(fd, &st) == 0 && st.st_size >= (off_t)sizeof(ElfW(Ehdr))) {
        size_t size = (size_t)st.st_size;
        const unsigned char *m = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (m != MAP_FAILED) {
            const ElfW(Ehdr) *eh = (const ElfW(Ehdr) *)m;
            if (!memcmp(eh->e_ident, ELFMAG, SELFMAG) &&
                eh->e_phoff + (size_t)eh->e_phnum * sizeof(ElfW(Phdr)) <= size) {
                const ElfW(Phdr) *ph = (const ElfW(Phdr) *)(m + eh->e_phoff);
                for (int i = 0; i < eh->e_phnum; i++) {
                    if (ph[i].p_type != PT_DYNAMIC || ph[i].p_offset + ph[i].p_filesz > size) continue;
                    for (const ElfW(Dyn) *d = (const ElfW(Dyn) *)(m + ph[i].p_offset);
                         (const unsigned char *)(d + 1) <= m + ph[i].p_offset + ph[i].p_filesz && d->d_tag != DT_NULL;
                         d++)
                        if (d->d_tag == DT_SYMBOLIC || (d->d_tag == DT_FLAGS && (d->d_un.d_val & DF_SYMBOLIC)))
                            symbolic = 1;
                }
            }
            munmap((void *)m, size);
        }
    }
    close(fd);
    (void)base;
    return symbolic;
}

static void consider(const struct candidate *c, int attaching)
{
    int kind = COPY_EXPORTED;
    const char *b = strrchr(c->path, '/');
    if (strstr(b ? b + 1 : c->path, "libcrypto.so")) {
        /* a shared libcrypto is hooked through its relocation slots, unless it binds its own calls
         * at link time (-Bsymbolic): then, like a static copy, through its memory functions */
        if (!binds_symbolically(NULL, c->base, c->path)) return;
        kind = COPY_SYMBOLIC;
    }
    uintptr_t setter = file_defines(c->path, c->base, "CRYPTO_set_mem_functions", 1);
    if (!setter && kind != COPY_SYMBOLIC) {
        kind = COPY_SYMTAB;
        setter = file_defines(c->path, c->base, "CRYPTO_set_mem_functions", 0);
    }
    if (!setter || n_copies >= MAX_COPIES) return;
    struct copy *cp = &copies[n_copies];
    cp->base = c->base;
    strncpy(cp->path, c->path, sizeof cp->path - 1);
    cp->kind = (uint8_t)kind;
    int (*set)(void *, void *, void *) = (int (*)(void *, void *, void *))setter;
    /* an executable's copy is still unused in the preload constructor; a library's right after its
     * dlopen; anything found when attaching has long been in use */
    if (attaching) cp->status = STATUS_NOT_TRACKED;
    else if (set((void *)tracked_libc_malloc, (void *)tracked_libc_realloc, (void *)tracked_libc_free))
        cp->status = STATUS_TRACKED;
    else cp->status = STATUS_TOO_LATE;
    __atomic_store_n(&n_copies, n_copies + 1, __ATOMIC_RELEASE);
}

/* Look at objects not seen before. Called at start and after every dlopen, never with a lock of
 * the loader or of ours held (it opens files and may call into the copy). */
void static_copies_scan(int attaching)
{
    struct candidate *list = calloc(MAX_SEEN + 1, sizeof *list);
    if (!list) return;
    dl_iterate_phdr(collect, list);
    int n = *(int *)&list[MAX_SEEN];
    pthread_mutex_lock(&copies_lock);
    for (int i = 0; i < n; i++) {
        int known = 0;
        for (int j = 0; j < n_seen && !known; j++) known = seen[j] == list[i].base;
        if (known) continue;
        if (n_seen < MAX_SEEN) seen[n_seen++] = list[i].base;
        if (!list[i].path[0] || uninteresting(list[i].path)) continue;
        consider(&list[i], attaching);
    }
    pthread_mutex_unlock(&copies_lock);
    free(list);
}

int static_copies_count(void) { return __atomic_load_n(&n_copies, __ATOMIC_ACQUIRE); }

void static_copy_describe(int i, const char **kind, const char **status, const char **path)
{
    *kind = kind_names[copies[i].kind];
    *status = status_names[copies[i].status];
    *path = copies[i].path;
}

/* The functions `names` of copy i, from its .dynsym first (node exports its copy's API), then its
 * .symtab for what is missing (pip's cryptography keeps every symbol local). The heap walk uses this
 * to call a static copy's own getters and probe (docs/openssl-copies.md). Returns how many were
 * found; out[k] is NULL for a name not found. */
int static_copy_resolve(int i, const char *const *names, int n, void **out)
{
    if (i < 0 || i >= static_copies_count()) return 0;
    uintptr_t *found = calloc((size_t)n, sizeof *found);
    if (!found) return 0;
    const struct copy *c = &copies[i];
    int got = c->kind != COPY_SYMTAB ? file_resolve(c->path, c->base, names, n, found, 1) : 0;
    if (got < n) got += file_resolve(c->path, c->base, names, n, found, 0);
    for (int k = 0; k < n; k++) out[k] = (void *)found[k];
    free(found);
    return got;
}

/* Which copies the walk may use: a statically linked one (a -Bsymbolic libcrypto is no libssl). */
int static_copy_is_static(int i) { return i >= 0 && i < static_copies_count() && copies[i].kind != COPY_SYMBOLIC; }
