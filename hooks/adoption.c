/* Owners of objects the hooks meet without having seen them made: created before we were attached
 * (adopted as pre-attach owners), or used inside their own constructor (not bound yet). */
#include "shim.h"

/* SSL_get_SSL_CTX is called, never hooked: resolved on demand. */
static void *(*real_SSL_get_SSL_CTX)(const void *);

static void resolve_get_ssl_ctx(void)
{
    if (!real_SSL_get_SSL_CTX) real_SSL_get_SSL_CTX = interpose_lookup("SSL_get_SSL_CTX");
}

/* An object used inside its own constructor (SSL_new calls SSL_clear, SSL_CTX_new calls
 * SSL_CTX_ctrl) is not bound yet: it is the owner being created. */
static uint32_t adopt(void *ptr, uint8_t creating_kind)
{
    struct scope s = current();
    if (s.kind != creating_kind || !s.owner) return 0;
    struct owner *o = owner_at(s.owner);
    uintptr_t cur = __atomic_load_n(&o->ptr, __ATOMIC_RELAXED);
    if (cur && cur != (uintptr_t)ptr) return 0;
    __atomic_store_n(&o->ptr, (uintptr_t)ptr, __ATOMIC_RELAXED);
    return s.owner;
}

uint32_t ctx_owner(void *ctx)
{
    if (!ctx) return 0;
    uint32_t o = objects_find((uintptr_t)ctx);
    if (!o) o = adopt(ctx, SC_CTX_NEW);
    if (!o && tlsprof_active) {
        o = owner_new(OWNER_CTX, (uintptr_t)ctx, 0, 1);
        if (o) objects_bind((uintptr_t)ctx, o);
    }
    return o;
}

uint32_t ssl_owner(void *ssl)
{
    if (!ssl) return 0;
    uint32_t o = objects_find((uintptr_t)ssl);
    if (!o) o = adopt(ssl, SC_SSL_NEW);
    if (!o && tlsprof_active) {
        if (!real_SSL_get_SSL_CTX) resolve_get_ssl_ctx();
        uint32_t ctx = real_SSL_get_SSL_CTX ? ctx_owner(real_SSL_get_SSL_CTX(ssl)) : 0;
        o = owner_new(OWNER_SSL, (uintptr_t)ssl, ctx, 1);
        if (o) objects_bind((uintptr_t)ssl, o);
    }
    return o;
}
