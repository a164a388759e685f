/* Context hooks: SSL_CTX_* entry points and the trust-store (X509_STORE_*) calls push the owner and
 * what is being done; allocations inside take both from the top of the thread's scope stack. */
#include "shim.h"

/* ---- contexts ---- */
static void *new_ctx_common(void *a, const char *b, const void *c, int ex)
{
    if (!tlsprof_active || current().kind == SC_CTX_NEW) /* SSL_CTX_new calls SSL_CTX_new_ex */
        return ex ? real_SSL_CTX_new_ex(a, b, c) : real_SSL_CTX_new(c);
    uint32_t o = owner_new(OWNER_CTX, 0, 0, 0);
    push(o, SC_CTX_NEW);
    void *ctx = ex ? real_SSL_CTX_new_ex(a, b, c) : real_SSL_CTX_new(c);
    pop();
    if (!o) return ctx;
    if (!ctx) {
        owner_mark_dead(o);
        return ctx;
    }
    __atomic_store_n(&owner_at(o)->ptr, (uintptr_t)ctx, __ATOMIC_RELAXED);
    objects_bind((uintptr_t)ctx, o);
    mark_object((uintptr_t)ctx);
    return ctx;
}

void *hook_SSL_CTX_new(const void *meth) { return new_ctx_common(NULL, NULL, meth, 0); }
void *hook_SSL_CTX_new_ex(void *libctx, const char *propq, const void *meth)
{
    return new_ctx_common(libctx, propq, meth, 1);
}

void hook_SSL_CTX_free(void *ctx)
{
    if (!ctx || !tlsprof_active) return real_SSL_CTX_free(ctx);
    uint32_t o = objects_find((uintptr_t)ctx);
    push(o, SC_CTX);
    real_SSL_CTX_free(ctx);
    pop();
}

long hook_SSL_CTX_ctrl(void *ctx, int cmd, long larg, void *parg)
{
    if (!tlsprof_active) return real_SSL_CTX_ctrl(ctx, cmd, larg, parg);
    uint32_t o = ctx_owner(ctx);
    push(o, SC_CTX);
    long r = real_SSL_CTX_ctrl(ctx, cmd, larg, parg);
    pop();
    note_mode(o, cmd, larg);
    return r;
}

#define CTX_SCOPED(name, kind, params, args)          \
    int hook_##name params                            \
    {                                                 \
        if (!tlsprof_active) return real_##name args; \
        push(ctx_owner(ctx), kind);                   \
        int r = real_##name args;                     \
        pop();                                        \
        return r;                                     \
    }

CTX_SCOPED(SSL_CTX_load_verify_locations, SC_CA, (void *ctx, const char *f, const char *d), (ctx, f, d))
CTX_SCOPED(SSL_CTX_load_verify_file, SC_CA, (void *ctx, const char *f), (ctx, f))
CTX_SCOPED(SSL_CTX_load_verify_dir, SC_CA, (void *ctx, const char *d), (ctx, d))
CTX_SCOPED(SSL_CTX_load_verify_store, SC_CA, (void *ctx, const char *s), (ctx, s))
CTX_SCOPED(SSL_CTX_set_default_verify_paths, SC_CA, (void *ctx), (ctx))
CTX_SCOPED(SSL_CTX_set_default_verify_file, SC_CA, (void *ctx), (ctx))
CTX_SCOPED(SSL_CTX_set_default_verify_dir, SC_CA, (void *ctx), (ctx))
CTX_SCOPED(SSL_CTX_set_default_verify_store, SC_CA, (void *ctx), (ctx))
CTX_SCOPED(SSL_CTX_use_certificate, SC_OWN_CERT, (void *ctx, void *x), (ctx, x))
CTX_SCOPED(SSL_CTX_use_certificate_file, SC_OWN_CERT, (void *ctx, const char *f, int t), (ctx, f, t))
CTX_SCOPED(SSL_CTX_use_certificate_chain_file, SC_OWN_CERT, (void *ctx, const char *f), (ctx, f))
CTX_SCOPED(SSL_CTX_use_PrivateKey, SC_OWN_CERT, (void *ctx, void *k), (ctx, k))
CTX_SCOPED(SSL_CTX_use_PrivateKey_file, SC_OWN_CERT, (void *ctx, const char *f, int t), (ctx, f, t))
CTX_SCOPED(SSL_CTX_use_cert_and_key, SC_OWN_CERT, (void *ctx, void *x, void *k, void *c, int o), (ctx, x, k, c, o))

int hook_SSL_CTX_check_private_key(const void *ctx)
{
    if (!tlsprof_active) return real_SSL_CTX_check_private_key(ctx);
    push(ctx_owner((void *)ctx), SC_OWN_CERT);
    int r = real_SSL_CTX_check_private_key(ctx);
    pop();
    return r;
}

/* X509_STORE calls made outside a context's scope still build a trust store. */
#define STORE_SCOPED(name, params, args)              \
    int hook_##name params                            \
    {                                                 \
        if (!tlsprof_active) return real_##name args; \
        push(inherited_owner(), SC_CA);               \
        int r = real_##name args;                     \
        pop();                                        \
        return r;                                     \
    }

STORE_SCOPED(X509_STORE_add_cert, (void *st, void *x), (st, x))
STORE_SCOPED(X509_STORE_add_crl, (void *st, void *x), (st, x))
STORE_SCOPED(X509_STORE_load_file, (void *st, const char *f), (st, f))
STORE_SCOPED(X509_STORE_load_path, (void *st, const char *p), (st, p))
STORE_SCOPED(X509_STORE_load_store, (void *st, const char *u), (st, u))
STORE_SCOPED(X509_STORE_load_locations, (void *st, const char *f, const char *d), (st, f, d))
STORE_SCOPED(X509_STORE_set_default_paths, (void *st), (st))
