#pragma once
#include "common.h"

/* ---- causes.c ---- */
/* first_size: the requested size of the first block seen at the site (one site, one kind of block) */
uint8_t classify_cause(const char *file, uint8_t scope, size_t first_size);
extern const char *const cause_names[N_CAUSES];
extern const char *const scope_names[N_SCOPES];
