#pragma once
#include "common.h"

/* ---- static_copies.c: OpenSSL linked into another object (node, cryptography's _rust.abi3.so) ---- */
/* attaching: the scan at the start of an attach (copies found then have long been in use) */
void static_copies_scan(int attaching);
int static_copies_count(void);
void static_copy_describe(int i, const char **kind, const char **status, const char **path);
int static_copy_resolve(int i, const char *const *names, int n, void **out);
int static_copy_is_static(int i);
/* the memory functions given to such a copy (tracking.c) */
void *tracked_libc_malloc(size_t n, const char *file, int line);
void *tracked_libc_realloc(void *old, size_t n, const char *file, int line);
void tracked_libc_free(void *p, const char *file, int line);
