/* The table interpose.c patches from, made from the one list of hooked functions (hook_list.h).
 * It sits above every hook file (it names each hook): main.c hands it to interpose.c, so the
 * patching engine below never names a hook itself. */
#include "shim.h"

struct hook_def hook_defs[] = {
#define HOOKED(ret, name, params, patch_definer) {#name, (void *)hook_##name, (void **)&real_##name, patch_definer},
#include "hook_list.h"
#undef HOOKED
};
const int n_hook_defs = sizeof hook_defs / sizeof hook_defs[0];
