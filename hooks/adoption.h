#pragma once
#include "common.h"
#include "owners.h"

/* ---- adoption.c: the owner of an object the hooks meet, made on first sight if need be ---- */
#define SSL_CTRL_MODE 33
#define SSL_CTRL_CLEAR_MODE 78

uint32_t ctx_owner(void *ctx);
uint32_t ssl_owner(void *ssl);

/* what the entry-point hooks note on an owner on the way out */
static inline void set_state(uint32_t owner, uint8_t state)
{
    if (owner) __atomic_store_n(&owner_at(owner)->state, state, __ATOMIC_RELAXED);
}

static inline void note_mode(uint32_t owner, int cmd, long larg)
{
    if (!owner || (cmd != SSL_CTRL_MODE && cmd != SSL_CTRL_CLEAR_MODE)) return;
    struct owner *o = owner_at(owner);
    if (cmd == SSL_CTRL_MODE) __atomic_or_fetch(&o->mode, (uint64_t)larg, __ATOMIC_RELAXED);
    else __atomic_and_fetch(&o->mode, ~(uint64_t)larg, __ATOMIC_RELAXED);
    __atomic_or_fetch(&o->flags, OWNER_F_MODE_KNOWN, __ATOMIC_RELAXED);
}

static inline void note_fd(uint32_t o, int fd)
{
    if (o) __atomic_store_n(&owner_at(o)->fd, fd, __ATOMIC_RELAXED);
}
