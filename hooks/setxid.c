/* A preloaded process that changes its credentials (setpriv, runuser, a daemon dropping root).
 *
 * glibc applies set*id/setgroups to every thread of the process by signalling each one, and aborts
 * the process if any thread fails. The channel's listener thread can fail where the caller does
 * not: setpriv sets PR_SET_KEEPCAPS (a per-thread flag), calls setresuid(nobody), raises its own
 * effective capabilities again, then setresgid(): the listener, without the flag, lost its
 * capabilities with the uid change, gets EPERM, and glibc kills setpriv with SIGABRT (seen here:
 * `setpriv --reuid=nobody --regid=nogroup --clear-groups` under `tlsprof run`).
 *
 * So, under LD_PRELOAD, these calls pause the listener (a process with one thread changes only its
 * own credentials) and start it again afterwards; when the channel directory is no longer ours,
 * it moves to the new user's private directory (main.c). Injected by attach, the shim is not an
 * interposer and these wrappers are never reached. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <grp.h>
#include <sys/types.h>
#include <unistd.h>

#include "shim.h"

#define REAL(name) ((__typeof__(&name))dlsym(RTLD_NEXT, #name))

#define PAUSING(name, params, args)           \
    EXPORT int name params                    \
    {                                         \
        static __typeof__(&name) real;        \
        if (!real) real = REAL(name);         \
        if (!real) return -1;                 \
        int paused = tlsprof_channel_pause(); \
        int result = real args;               \
        int saved = errno;                    \
        if (paused) tlsprof_channel_resume(); \
        errno = saved;                        \
        return result;                        \
    }

PAUSING(setuid, (uid_t u), (u))
PAUSING(setgid, (gid_t g), (g))
PAUSING(seteuid, (uid_t u), (u))
PAUSING(setegid, (gid_t g), (g))
PAUSING(setreuid, (uid_t r, uid_t e), (r, e))
PAUSING(setregid, (gid_t r, gid_t e), (r, e))
PAUSING(setresuid, (uid_t r, uid_t e, uid_t s), (r, e, s))
PAUSING(setresgid, (gid_t r, gid_t e, gid_t s), (r, e, s))
PAUSING(setgroups, (size_t n, const gid_t *list), (n, list))
PAUSING(initgroups, (const char *user, gid_t g), (user, g))
