/* The real functions the hooks call on to, one pointer per hooked function (hook_list.h). interpose.c
 * fills them from the defining object (never dlsym(RTLD_NEXT): Python loads libssl RTLD_LOCAL). */
#include "shim.h"

#define HOOKED(ret, name, params, patch_definer) ret(*real_##name) params;
#include "hook_list.h"
#undef HOOKED
