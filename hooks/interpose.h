#pragma once
#include "common.h"

/* ---- interpose.c: GOT/relocation patching, one engine for preload and attach ---- */
struct hook_def {
    const char *name;
    void *hook;
    void **real;
    int patch_definer; /* also patch references inside the object that defines it */
};
/* The table to patch from (hook_table.c): handed down by main.c before the first install. */
void interpose_use(struct hook_def *defs, int n);
int interpose_install(void);              /* patch every loaded object; returns slots patched */
int interpose_refresh(void);              /* after dlopen: patch objects not seen yet */
int interpose_remove(void);               /* restore every slot; returns slots restored */
void *interpose_lookup(const char *name); /* definition in the loaded objects, or NULL */
int interpose_slots(void);
int interpose_foreign(void);
void interpose_lock(void);
void interpose_unlock(void);
const char *tlsprof_openssl_version(void); /* OpenSSL_version(0) of the loaded libcrypto, or NULL */
