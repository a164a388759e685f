/* Redirects OpenSSL's entry points to our hooks by rewriting relocation slots (GOT, and plain data
 * references such as libcrypto's `malloc_impl = CRYPTO_malloc`) in every loaded object. The same
 * code serves `run` (called from the preload constructor) and `attach` (called after injection),
 * and runs again after each dlopen, so libraries loaded later with RTLD_LOCAL are covered.
 *
 * Why every relocation and not only JUMP_SLOT: Debian's libcrypto compares its `malloc_impl`
 * (an R_X86_64_64 in .data) with its own GOT entry for CRYPTO_malloc and calls malloc_impl when
 * they differ; patching only one of them makes CRYPTO_malloc call itself forever. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <elf.h>
#include <link.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "shim.h"

#define MAX_OBJECTS 2048

struct object {
    uintptr_t base, lo, hi;       /* load bias, mapped extent */
    uintptr_t relro_lo, relro_hi; /* pages the loader made read-only */
    const ElfW(Sym) * symtab;
    const char *strtab;
    const uint32_t *gnu_hash, *sysv_hash;
    const ElfW(Rela) * rela, *jmprel;
    size_t rela_size, jmprel_size;
    int is_self;
    int symbolic; /* linked -Bsymbolic: its own calls never go through a slot we could patch */
    char name[256];
};

struct patched_slot {
    uintptr_t *slot;
    uintptr_t orig, written;
    uintptr_t obj_base;
    int relro;
};

static pthread_mutex_t patch_lock = PTHREAD_MUTEX_INITIALIZER;

/* The hooked functions (hook_table.c), handed down by main.c: this engine names no hook itself. */
static struct hook_def *hooks_used;
static int n_hooks_used;

void interpose_use(struct hook_def *defs, int n)
{
    pthread_mutex_lock(&patch_lock);
    hooks_used = defs;
    n_hooks_used = n;
    pthread_mutex_unlock(&patch_lock);
}
static struct object objects[MAX_OBJECTS];
static int n_objects;
static uintptr_t scanned[MAX_OBJECTS]; /* bases of objects already patched */
static int n_scanned;
static struct patched_slot *slots;
static int n_slots, cap_slots;
static int n_foreign;       /* slots bound to another copy of the symbol: left alone */
static uintptr_t self_base; /* our own mapping: never patched */

static uintptr_t adjust(uintptr_t base, uintptr_t v) { return v < base ? v + base : v; }

static int collect_one(struct dl_phdr_info *info, size_t size, void *data)
{
    (void)size;
    (void)data;
    if (n_objects >= MAX_OBJECTS) return 1;
    if (info->dlpi_name && strstr(info->dlpi_name, "linux-vdso")) return 0;
    struct object *o = &objects[n_objects];
    memset(o, 0, sizeof *o);
    o->base = info->dlpi_addr;
    o->lo = UINTPTR_MAX;
    const ElfW(Dyn) *dyn = NULL;
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        if (ph->p_type == PT_LOAD) {
            uintptr_t a = o->base + ph->p_vaddr;
            if (a < o->lo) o->lo = a;
            if (a + ph->p_memsz > o->hi) o->hi = a + ph->p_memsz;
        } else if (ph->p_type == PT_DYNAMIC) {
            dyn = (const ElfW(Dyn) *)(o->base + ph->p_vaddr);
        } else if (ph->p_type == PT_GNU_RELRO) {
            long page = sysconf(_SC_PAGESIZE);
            uintptr_t start = o->base + ph->p_vaddr;
            o->relro_lo = start & ~(uintptr_t)(page - 1);
            o->relro_hi = (start + ph->p_memsz) & ~(uintptr_t)(page - 1);
        }
    }
    if (!dyn) return 0;
    int pltrel_is_rela = 1;
    for (; dyn->d_tag != DT_NULL; dyn++) {
        uintptr_t v = dyn->d_un.d_ptr;
        switch (dyn->d_tag) {
        case DT_SYMTAB: o->symtab = (const ElfW(Sym) *)adjust(o->base, v); break;
        case DT_STRTAB: o->strtab = (const char *)adjust(o->base, v); break;
        case DT_GNU_HASH: o->gnu_hash = (const uint32_t *)adjust(o->base, v); break;
        case DT_HASH: o->sysv_hash = (const uint32_t *)adjust(o->base, v); break;
        case DT_RELA: o->rela = (const ElfW(Rela) *)adjust(o->base, v); break;
        case DT_RELASZ: o->rela_size = dyn->d_un.d_val; break;
        case DT_JMPREL: o->jmprel = (const ElfW(Rela) *)adjust(o->base, v); break;
        case DT_PLTRELSZ: o->jmprel_size = dyn->d_un.d_val; break;
        case DT_PLTREL: pltrel_is_rela = dyn->d_un.d_val == DT_RELA; break;
        case DT_SYMBOLIC: o->symbolic = 1; break;
        case DT_FLAGS: o->symbolic |= (dyn->d_un.d_val & DF_SYMBOLIC) != 0; break;
        }
    }
    if (!pltrel_is_rela) o->jmprel = NULL;
    if (!o->symtab || !o->strtab) return 0;
    o->is_self = o->lo == self_base;
    strncpy(o->name, info->dlpi_name ? info->dlpi_name : "", sizeof o->name - 1);
    n_objects++;
    return 0;
}

/* Where this library is mapped. Asked with dladdr here, never inside a dl_iterate_phdr callback:
 * that callback runs under the loader's write lock and dladdr takes its main lock, the order a
 * concurrent dlopen takes them in reverse (seen here: a snapshot deadlocked Python's import of _lzma). */
static void find_self(void)
{
    if (self_base) return;
    Dl_info self;
    if (dladdr((void *)find_self, &self)) self_base = (uintptr_t)self.dli_fbase;
}

static void collect_objects(void)
{
    find_self();
    n_objects = 0;
    dl_iterate_phdr(collect_one, NULL);
}

static uint32_t gnu_hash_of(const char *s)
{
    uint32_t h = 5381;
    for (; *s; s++) h = h * 33 + (unsigned char)*s;
    return h;
}

static uint32_t sysv_hash_of(const char *s)
{
    uint32_t h = 0, g;
    for (; *s; s++) {
        h = (h << 4) + (unsigned char)*s;
        if ((g = h & 0xf0000000u)) h ^= g >> 24;
        h &= ~g;
    }
    return h;
}

static int defines(const ElfW(Sym) * s)
{
    int type = ELF64_ST_TYPE(s->st_info);
    return s->st_shndx != SHN_UNDEF && s->st_value != 0 && (type == STT_FUNC || type == STT_GNU_IFUNC);
}

/* The address an object defines for name, via its own hash table (no dlopen/dlsym: those take the
 * loader lock and would resolve through the caller's scope, which RTLD_LOCAL libraries are not in). */
static uintptr_t object_defines(const struct object *o, const char *name)
{
    if (o->gnu_hash) {
        const uint32_t *ht = o->gnu_hash;
        uint32_t nbuckets = ht[0], symoffset = ht[1], bloom_size = ht[2], bloom_shift = ht[3];
        const ElfW(Addr) *bloom = (const ElfW(Addr) *)&ht[4];
        const uint32_t *buckets = (const uint32_t *)&bloom[bloom_size];
        const uint32_t *chain = &buckets[nbuckets];
        uint32_t h = gnu_hash_of(name);
        const unsigned bits = sizeof(ElfW(Addr)) * 8;
        ElfW(Addr) word = bloom[(h / bits) % bloom_size];
        ElfW(Addr) mask = ((ElfW(Addr))1 << (h % bits)) | ((ElfW(Addr))1 << ((h >> bloom_shift) % bits));
        if ((word & mask) != mask) return 0;
        uint32_t i = buckets[h % nbuckets];
        if (i < symoffset) return 0;
        for (;; i++) {
            const ElfW(Sym) *s = &o->symtab[i];
            uint32_t h2 = chain[i - symoffset];
            if ((h | 1) == (h2 | 1) && strcmp(name, o->strtab + s->st_name) == 0 && defines(s))
                return o->base + s->st_value;
            if (h2 & 1) return 0;
        }
    }
    if (o->sysv_hash) {
        uint32_t nbucket = o->sysv_hash[0];
        const uint32_t *bucket = &o->sysv_hash[2], *chain = &bucket[nbucket];
        for (uint32_t i = bucket[sysv_hash_of(name) % nbucket]; i; i = chain[i]) {
            const ElfW(Sym) *s = &o->symtab[i];
            if (strcmp(name, o->strtab + s->st_name) == 0 && defines(s)) return o->base + s->st_value;
        }
    }
    return 0;
}

static uintptr_t lookup_collected(const char *name, const struct object **definer)
{
    for (int i = 0; i < n_objects; i++) {
        if (objects[i].is_self) continue;
        uintptr_t a = object_defines(&objects[i], name);
        if (a) {
            if (definer) *definer = &objects[i];
            return a;
        }
    }
    return 0;
}

void *interpose_lookup(const char *name)
{
    pthread_mutex_lock(&patch_lock);
    collect_objects();
    void *p = (void *)lookup_collected(name, NULL);
    pthread_mutex_unlock(&patch_lock);
    return p;
}

static int write_slot(uintptr_t *slot, uintptr_t value, int relro)
{
    if (relro) {
        long page = sysconf(_SC_PAGESIZE);
        void *pg = (void *)((uintptr_t)slot & ~(uintptr_t)(page - 1));
        if (mprotect(pg, page, PROT_READ | PROT_WRITE) != 0) return -1;
        __atomic_store_n(slot, value, __ATOMIC_RELEASE);
        mprotect(pg, page, PROT_READ);
    } else {
        __atomic_store_n(slot, value, __ATOMIC_RELEASE);
    }
    return 0;
}

static int remember(uintptr_t *slot, uintptr_t orig, uintptr_t written, uintptr_t base, int relro)
{
    if (n_slots == cap_slots) {
        int cap = cap_slots ? cap_slots * 2 : 1024;
        struct patched_slot *n = realloc(slots, cap * sizeof *n);
        if (!n) return -1;
        slots = n;
        cap_slots = cap;
    }
    slots[n_slots++] = (struct patched_slot){slot, orig, written, base, relro};
    return 0;
}

static int hook_index(const char *name)
{
    /* cheap filter first: every hooked name starts with one of these letters */
    if (name[0] != 'C' && name[0] != 'S' && name[0] != 'X' && name[0] != 'd' && name[0] != 'E' && name[0] != 'O' &&
        name[0] != 'R')
        return -1;
    for (int i = 0; i < n_hooks_used; i++)
        if (strcmp(hooks_used[i].name, name) == 0) return i;
    return -1;
}

static int patch_relocs(const struct object *o, const ElfW(Rela) * r, size_t size)
{
    int count = 0;
    if (!r) return 0;
    for (size_t k = 0; k < size / sizeof *r; k++, r++) {
        unsigned type = ELF64_R_TYPE(r->r_info), symi = ELF64_R_SYM(r->r_info);
        if (!symi || (type != R_X86_64_JUMP_SLOT && type != R_X86_64_GLOB_DAT && type != R_X86_64_64)) continue;
        if (type == R_X86_64_64 && r->r_addend != 0) continue;
        int h = hook_index(o->strtab + o->symtab[symi].st_name);
        if (h < 0) continue;
        struct hook_def *d = &hooks_used[h];
        uintptr_t real = (uintptr_t)*d->real;
        if (!real) continue;
        const struct object *definer = NULL;
        lookup_collected(d->name, &definer);
        if (definer == o && !d->patch_definer) continue;
        /* an allocator defined by a statically linked copy (node) is handled through that copy's
         * CRYPTO_set_mem_functions (static_copies.c), never by patching */
        if (!strncmp(d->name, "CRYPTO_", 7) && definer && (!strstr(definer->name, "libcrypto") || definer->symbolic))
            continue; /* -Bsymbolic libcrypto (upstream's default build): likewise, see static_copies.c */
        uintptr_t *slot = (uintptr_t *)(o->base + r->r_offset);
        uintptr_t cur = __atomic_load_n(slot, __ATOMIC_ACQUIRE);
        if (cur == (uintptr_t)d->hook) continue; /* already ours */
        /* bound to this copy, or still a lazy PLT stub inside the importer: ours to take */
        int lazy_stub = cur >= o->lo && cur < o->hi && type == R_X86_64_JUMP_SLOT;
        if (cur != real && !lazy_stub) {
            n_foreign++;
            continue;
        }
        int relro = (uintptr_t)slot >= o->relro_lo && (uintptr_t)slot < o->relro_hi;
        if (remember(slot, cur, (uintptr_t)d->hook, o->base, relro) != 0) continue;
        if (write_slot(slot, (uintptr_t)d->hook, relro) != 0) {
            n_slots--;
            continue;
        }
        count++;
    }
    return count;
}

static int interpose_core_resolved(void)
{
    int crypto = 0, ssl = 0;
    for (int i = 0; i < n_hooks_used; i++) {
        if (!strcmp(hooks_used[i].name, "CRYPTO_malloc")) crypto = *hooks_used[i].real != NULL;
        if (!strcmp(hooks_used[i].name, "SSL_new")) ssl = *hooks_used[i].real != NULL;
    }
    return crypto && ssl;
}

static void resolve_reals(void)
{
    for (int i = 0; i < n_hooks_used; i++) {
        if (*hooks_used[i].real) continue;
        uintptr_t a = lookup_collected(hooks_used[i].name, NULL);
        if (a) __atomic_store_n((uintptr_t *)hooks_used[i].real, a, __ATOMIC_RELEASE);
    }
}

static int was_scanned(uintptr_t base)
{
    for (int i = 0; i < n_scanned; i++)
        if (scanned[i] == base) return 1;
    return 0;
}

/* Patch objects not patched yet. An object whose needed symbols are not resolvable yet (libssl
 * not loaded) is re-scanned next time: only objects that patched something or import nothing of
 * ours are marked done. */
static int patch_new_objects(int rescan_all)
{
    int count = 0;
    collect_objects();
    resolve_reals();
    /* libcrypto and libssl both loaded: every hook that exists anywhere is resolved now */
    int have_all = interpose_core_resolved();
    for (int i = 0; i < n_objects; i++) {
        struct object *o = &objects[i];
        if (o->is_self) continue;
        if (!rescan_all && was_scanned(o->base)) continue;
        count += patch_relocs(o, o->rela, o->rela_size);
        count += patch_relocs(o, o->jmprel, o->jmprel_size);
        if (have_all && !was_scanned(o->base) && n_scanned < MAX_OBJECTS) scanned[n_scanned++] = o->base;
    }
    return count;
}

int interpose_install(void)
{
    pthread_mutex_lock(&patch_lock);
    n_scanned = 0;
    n_foreign = 0;
    int c = patch_new_objects(1);
    pthread_mutex_unlock(&patch_lock);
    return c;
}

int interpose_refresh(void)
{
    pthread_mutex_lock(&patch_lock);
    /* objects seen before may have been unloaded and their base reused: forget stale ones */
    collect_objects();
    int kept = 0;
    for (int i = 0; i < n_scanned; i++) {
        for (int j = 0; j < n_objects; j++)
            if (objects[j].base == scanned[i]) {
                scanned[kept++] = scanned[i];
                break;
            }
    }
    n_scanned = kept;
    int c = patch_new_objects(0);
    pthread_mutex_unlock(&patch_lock);
    return c;
}

int interpose_remove(void)
{
    pthread_mutex_lock(&patch_lock);
    collect_objects();
    int restored = 0;
    for (int i = n_slots - 1; i >= 0; i--) {
        struct patched_slot *s = &slots[i];
        int loaded = 0;
        for (int j = 0; j < n_objects; j++)
            if (objects[j].base == s->obj_base && (uintptr_t)s->slot >= objects[j].lo &&
                (uintptr_t)s->slot < objects[j].hi)
                loaded = 1;
        if (!loaded) continue; /* unloaded since: nothing to restore, and writing would fault */
        if (__atomic_load_n(s->slot, __ATOMIC_ACQUIRE) != s->written) continue;
        if (write_slot(s->slot, s->orig, s->relro) == 0) restored++;
    }
    n_slots = 0;
    n_scanned = 0;
    pthread_mutex_unlock(&patch_lock);
    return restored;
}

int interpose_slots(void) { return __atomic_load_n(&n_slots, __ATOMIC_RELAXED); }
int interpose_foreign(void) { return __atomic_load_n(&n_foreign, __ATOMIC_RELAXED); }
void interpose_lock(void) { pthread_mutex_lock(&patch_lock); }
void interpose_unlock(void) { pthread_mutex_unlock(&patch_lock); }

static const char *(*real_OpenSSL_version)(int);

const char *tlsprof_openssl_version(void)
{
    if (!real_OpenSSL_version) real_OpenSSL_version = (const char *(*)(int))interpose_lookup("OpenSSL_version");
    return real_OpenSSL_version ? real_OpenSSL_version(0) : NULL;
}
