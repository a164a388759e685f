/* Owners: the process (index 0), every SSL_CTX and every SSL, each with live counters by cause.
 * Stored in fixed chunks that never move, so hooks update counters with relaxed atomics and the
 * snapshot thread reads them without locks. A dead owner's slot is recycled once its last block is
 * freed; the object map (SSL or SSL_CTX pointer -> owner) is a small locked open-addressing table. */
#define _GNU_SOURCE
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "shim.h"

uint64_t io_calls_of_dead;

#define CHUNK OWNER_CHUNK

struct owner *owner_chunks[OWNER_CHUNKS]; /* chunks never move once published */
static uint32_t n_slots_used = 1;         /* slot 0 is the process */
static uint32_t *free_list;
static uint32_t n_free, cap_free;
static uint64_t next_serial = 1;
static pthread_mutex_t owners_mutex = PTHREAD_MUTEX_INITIALIZER;
struct owner process_owner = {.kind = OWNER_PROCESS, .alive = 1, .flags = OWNER_F_IN_USE};

uint32_t owner_count_slots(void) { return __atomic_load_n(&n_slots_used, __ATOMIC_ACQUIRE); }

void owners_describe(struct remote_layout *l)
{
    l->owner_chunks = owner_chunks;
    l->process_owner = &process_owner;
    l->owner_slots = &n_slots_used;
    l->owner_size = sizeof(struct owner);
    l->owner_chunk = OWNER_CHUNK;
    l->owner_chunks_n = OWNER_CHUNKS;
    l->owner_slot_count = OWNER_SLOTS;
#define AT(f) (uint32_t) offsetof(struct owner, f)
    l->o_serial = AT(serial), l->o_ptr = AT(ptr), l->o_ctx = AT(ctx), l->o_kind = AT(kind), l->o_state = AT(state);
    l->o_alive = AT(alive), l->o_pre_attach = AT(pre_attach), l->o_fd = AT(fd), l->o_flags = AT(flags);
    l->o_mode = AT(mode), l->o_io_calls = AT(io_calls), l->o_created_ns = AT(created_ns);
    l->o_total_blocks = AT(total_blocks), l->o_slot_cause = AT(slot_cause), l->o_slot = AT(slot), l->o_wide = AT(wide);
#undef AT
    l->slot_size = sizeof(struct slot_counters);
    l->cause_counters_size = sizeof(struct cause_counters);
}

/* Dead owners with no live block left go back to the free list. Called with owners_mutex held. */
static void sweep_locked(void)
{
    for (uint32_t i = 1; i < n_slots_used; i++) {
        struct owner *o = owner_at(i);
        if (!(__atomic_load_n(&o->flags, __ATOMIC_ACQUIRE) & OWNER_F_IN_USE) ||
            __atomic_load_n(&o->alive, __ATOMIC_ACQUIRE))
            continue;
        if (__atomic_load_n(&o->total_blocks, __ATOMIC_ACQUIRE) != 0) continue;
        if (n_free == cap_free) {
            uint32_t cap = cap_free ? cap_free * 2 : 1024;
            uint32_t *n = realloc(free_list, cap * sizeof *n);
            if (!n) return;
            free_list = n;
            cap_free = cap;
        }
        __atomic_store_n(&o->flags, 0, __ATOMIC_RELEASE);
        free_list[n_free++] = i;
    }
}

void owners_sweep(void)
{
    pthread_mutex_lock(&owners_mutex);
    sweep_locked();
    pthread_mutex_unlock(&owners_mutex);
}

/* A recycled or reset record: its slots free, every counter zero (a wide array made for an
 * earlier owner of the record stays, zeroed: a hook may still hold its address). */
static void clear_counters(struct owner *o)
{
    for (int k = 0; k < OWNER_SLOTS; k++) {
        __atomic_store_n(&o->slot[k].bytes, 0, __ATOMIC_RELAXED);
        __atomic_store_n(&o->slot[k].over, 0, __ATOMIC_RELAXED);
        __atomic_store_n(&o->slot[k].blocks, 0, __ATOMIC_RELAXED);
        __atomic_store_n(&o->slot_cause[k], 0, __ATOMIC_RELEASE);
    }
    struct cause_counters *wide = __atomic_load_n(&o->wide, __ATOMIC_ACQUIRE);
    for (int k = 0; wide && k < N_CAUSES; k++) {
        __atomic_store_n(&wide[k].bytes, 0, __ATOMIC_RELAXED);
        __atomic_store_n(&wide[k].requested, 0, __ATOMIC_RELAXED);
        __atomic_store_n(&wide[k].blocks, 0, __ATOMIC_RELAXED);
    }
}

size_t owner_wide_bytes;
static struct cause_counters wide_lost[N_CAUSES]; /* an array could not be made: counted here */

struct cause_counters *owner_wide(struct owner *o, uint8_t cause)
{
    struct cause_counters *wide = __atomic_load_n(&o->wide, __ATOMIC_ACQUIRE);
    if (UNLIKELY(!wide)) {
        struct cause_counters *made = calloc(N_CAUSES, sizeof *made), *none = NULL;
        if (!made) return &wide_lost[cause];
        if (__atomic_compare_exchange_n(&o->wide, &none, made, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
            __atomic_add_fetch(&owner_wide_bytes, N_CAUSES * sizeof *made, __ATOMIC_RELAXED);
            wide = made;
        } else {
            free(made); /* another thread made it first */
            wide = none;
        }
    }
    return &wide[cause];
}

void owner_visit_causes(struct owner *o, cause_visit_fn fn, void *arg)
{
    for (int k = 0; k < OWNER_SLOTS; k++) {
        uint8_t c = __atomic_load_n(&o->slot_cause[k], __ATOMIC_ACQUIRE);
        if (!c) break;
        const struct slot_counters *s = &o->slot[k];
        int64_t bytes = __atomic_load_n(&s->bytes, __ATOMIC_RELAXED);
        fn((uint8_t)(c - 1), bytes, bytes - __atomic_load_n(&s->over, __ATOMIC_RELAXED),
           __atomic_load_n(&s->blocks, __ATOMIC_RELAXED), arg);
    }
    const struct cause_counters *wide = __atomic_load_n(&o->wide, __ATOMIC_ACQUIRE);
    for (int c = 0; wide && c < N_CAUSES; c++)
        fn((uint8_t)c, __atomic_load_n(&wide[c].bytes, __ATOMIC_RELAXED),
           __atomic_load_n(&wide[c].requested, __ATOMIC_RELAXED), __atomic_load_n(&wide[c].blocks, __ATOMIC_RELAXED),
           arg);
}

uint32_t owner_new(uint8_t kind, uintptr_t ptr, uint32_t ctx, int pre_attach)
{
    pthread_mutex_lock(&owners_mutex);
    if (!n_free && n_slots_used % CHUNK == 0) sweep_locked(); /* reuse before growing */
    uint32_t idx = 0;
    if (n_free) {
        idx = free_list[--n_free];
    } else if (n_slots_used < MAX_OWNERS) {
        uint32_t c = n_slots_used / CHUNK;
        if (!owner_chunks[c]) {
            struct owner *mem = calloc(CHUNK, sizeof *mem);
            if (mem) __atomic_store_n(&owner_chunks[c], mem, __ATOMIC_RELEASE);
        }
        if (owner_chunks[c]) {
            idx = n_slots_used;
            __atomic_store_n(&n_slots_used, idx + 1, __ATOMIC_RELEASE);
        }
    }
    if (idx) {
        /* The snapshot thread may still be reading this (recycled) slot: field by field, with
         * relaxed atomic stores, never a memset (a torn line is harmless, a data race is not). */
        struct owner *o = owner_at(idx);
#define WR(f, v) __atomic_store_n(&o->f, (v), __ATOMIC_RELAXED)
        WR(serial, next_serial++);
        WR(kind, kind);
        WR(ptr, ptr);
        WR(ctx, ctx);
        WR(state, STATE_HANDSHAKE);
        WR(fd, -1);
        WR(mode, 0);
        WR(io_calls, 0);
        WR(dead_ns, 0);
        WR(alive, 1);
        WR(pre_attach, (uint8_t)pre_attach);
        WR(created_ns, now_ns());
        WR(total_blocks, 0);
        clear_counters(o);
#undef WR
        __atomic_store_n(&o->flags, OWNER_F_IN_USE, __ATOMIC_RELEASE);
    }
    pthread_mutex_unlock(&owners_mutex);
    return idx; /* 0: no room; the bytes go to the process */
}

void owner_mark_dead(uint32_t idx)
{
    if (!idx) return;
    struct owner *o = owner_at(idx);
    __atomic_store_n(&o->dead_ns, now_ns(), __ATOMIC_RELAXED);
    if (__atomic_exchange_n(&o->alive, 0, __ATOMIC_ACQ_REL)) /* its traffic stays in the process total */
        __atomic_add_fetch(&io_calls_of_dead, __atomic_load_n(&o->io_calls, __ATOMIC_RELAXED), __ATOMIC_RELAXED);
}

static void owners_reset(void)
{
    pthread_mutex_lock(&owners_mutex);
    for (uint32_t i = 1; i < n_slots_used; i++) {
        struct owner *o = owner_at(i);
        struct cause_counters *wide = o->wide;
        clear_counters(o);
        memset(o, 0, sizeof *o);
        o->wide = wide;
    }
    n_slots_used = 1;
    n_free = 0;
    clear_counters(&process_owner);
    process_owner.total_blocks = 0;
    __atomic_store_n(&io_calls_of_dead, 0, __ATOMIC_RELAXED);
    pthread_mutex_unlock(&owners_mutex);
}

/* ---- object pointer -> owner ---- */
struct obj_slot {
    uintptr_t ptr;
    uint32_t owner;
};
static struct obj_slot *objs;
static size_t objs_cap, objs_count;
static pthread_mutex_t objs_mutex = PTHREAD_MUTEX_INITIALIZER;

static inline size_t obj_hash(uintptr_t p) { return (size_t)(((p >> 4) * 0x9E3779B97F4A7C15ull) >> 20); }

static size_t obj_probe(uintptr_t ptr)
{
    size_t mask = objs_cap - 1, i = obj_hash(ptr) & mask;
    while (objs[i].ptr && objs[i].ptr != ptr) i = (i + 1) & mask;
    return i;
}

uint32_t objects_find(uintptr_t ptr)
{
    uint32_t r = 0;
    pthread_mutex_lock(&objs_mutex);
    if (objs_cap) {
        size_t i = obj_probe(ptr);
        r = objs[i].ptr ? objs[i].owner : 0;
    }
    pthread_mutex_unlock(&objs_mutex);
    return r;
}

void objects_bind(uintptr_t ptr, uint32_t owner)
{
    pthread_mutex_lock(&objs_mutex);
    if ((objs_count + 1) * 2 > objs_cap) {
        size_t ncap = objs_cap ? objs_cap * 2 : 1024;
        struct obj_slot *n = calloc(ncap, sizeof *n);
        if (!n) goto out;
        struct obj_slot *old = objs;
        size_t ocap = objs_cap;
        objs = n;
        objs_cap = ncap;
        for (size_t i = 0; i < ocap; i++)
            if (old[i].ptr) objs[obj_probe(old[i].ptr)] = old[i];
        free(old);
    }
    size_t i = obj_probe(ptr);
    if (!objs[i].ptr) objs_count++;
    objs[i] = (struct obj_slot){ptr, owner};
out:
    pthread_mutex_unlock(&objs_mutex);
}

void objects_unbind(uintptr_t ptr, uint32_t owner)
{
    pthread_mutex_lock(&objs_mutex);
    if (objs_cap) {
        size_t mask = objs_cap - 1, i = obj_probe(ptr);
        if (objs[i].ptr && objs[i].owner == owner) {
            size_t hole = i, j = i;
            for (;;) {
                j = (j + 1) & mask;
                if (!objs[j].ptr) break;
                size_t home = obj_hash(objs[j].ptr) & mask;
                if (((j - home) & mask) >= ((j - hole) & mask)) {
                    objs[hole] = objs[j];
                    hole = j;
                }
            }
            objs[hole].ptr = 0;
            objs_count--;
        }
    }
    pthread_mutex_unlock(&objs_mutex);
}

static void objects_reset(void)
{
    pthread_mutex_lock(&objs_mutex);
    free(objs);
    objs = NULL;
    objs_cap = objs_count = 0;
    pthread_mutex_unlock(&objs_mutex);
}

void owners_lock_all(void)
{
    pthread_mutex_lock(&owners_mutex);
    pthread_mutex_lock(&objs_mutex);
}

void owners_unlock_all(void)
{
    pthread_mutex_unlock(&objs_mutex);
    pthread_mutex_unlock(&owners_mutex);
}

void owners_and_objects_reset(void)
{
    owners_reset();
    objects_reset();
}
