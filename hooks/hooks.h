#pragma once
#include "common.h"
#include "interpose.h"

/* ---- real.c, hooks_*.c, hook_table.c: one declaration each, from the one list (hook_list.h) ---- */
#define HOOKED(ret, name, params, patch_definer) \
    extern ret(*real_##name) params;             \
    ret hook_##name params;
#include "hook_list.h"
#undef HOOKED

extern struct hook_def hook_defs[]; /* hook_table.c */
extern const int n_hook_defs;
