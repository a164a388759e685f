#pragma once
#include "common.h"

/* ---- heapwalk.c: WALK, the memory that predates the hooks (docs/heap-walk.md) ---- */
char *heapwalk_run(int timeout_ms); /* malloc'd text answer; never NULL unless out of memory */
