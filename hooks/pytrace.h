#pragma once
#include "common.h"

/* ---- pytrace.c: --tracemalloc ---- */
void pytrace_lock(void);
int pytrace_allocator(const void *fn); /* --tracemalloc's own memory functions (glibc chunks) */
void pytrace_unlock(void);
