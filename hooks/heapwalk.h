#pragma once
#include "common.h"

/* ---- heapwalk.c: WALK, the memory that predates the hooks (docs/heap-walk.md) ---- */
/* malloc'd text answer; never NULL unless out of memory. maps_fd: a descriptor of this process's
 * maps the collector passed (a chroot without /proc), or -1 */
char *heapwalk_run(int timeout_ms, int maps_fd);
