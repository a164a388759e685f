/* Entry points: the preload constructor (`tlsprof run`), tlsprof_start/tlsprof_stop (called by the
 * constructor, by an injector after dlopen, and by DETACH on the channel), and fork safety. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "shim.h"

static pthread_mutex_t start_lock = PTHREAD_MUTEX_INITIALIZER;
static int atfork_registered;
static int started_by_preload;
static int nursery_wanted; /* not TLSPROF_NURSERY=0, read at load */
static char preload_dir[96];

int tlsprof_stop_from_channel(void);
static int start_in_own_dir(int (*start)(const char *));

/* Lower layers never call up: what they need from above is handed down here. */
static void hand_down(void)
{
    static const void *const own_allocators[] = {(const void *)hook_CRYPTO_malloc, (const void *)tracked_libc_malloc};
    interpose_use(hook_defs, n_hook_defs);
    measure_own_allocators(own_allocators, (int)(sizeof own_allocators / sizeof *own_allocators));
    channel_on_detach(tlsprof_stop_from_channel);
}

static void before_fork(void)
{
    pytrace_lock();
    interpose_lock();
    sites_lock();
    owners_lock_all();
    blocks_lock_all();
}

static void after_fork_parent(void)
{
    blocks_unlock_all();
    owners_unlock_all();
    sites_unlock();
    interpose_unlock();
    pytrace_unlock();
}

/* The child inherits the parent's blocks, which are now also its own: it keeps counting them, and
 * serves its own channel (<dir>/<child pid>.sock). */
static void after_fork_child(void)
{
    blocks_unlock_all();
    owners_unlock_all();
    sites_unlock();
    interpose_unlock();
    pytrace_unlock();
    stripes_after_fork_child();
    pthread_mutex_init(&start_lock, NULL);
    if (tlsprof_active && channel_after_fork_child() == -2) start_in_own_dir(channel_start);
}

EXPORT int tlsprof_start(const char *channel_dir)
{
    pthread_mutex_lock(&start_lock);
    if (tlsprof_active) {
        pthread_mutex_unlock(&start_lock);
        return 1;
    }
    if (!atfork_registered) {
        pthread_atfork(before_fork, after_fork_parent, after_fork_child);
        atfork_registered = 1;
    }
    hand_down();
    /* the nursery under `run` only (TLSPROF_NURSERY=0 turns it off): under attach, attach/detach
     * cycles under load drove a site's live bytes negative (test_heap_walk's fifty cycles; cause
     * not found yet) and a 6-minute attach soak's RSS did not stay flat (issue 18) */
    tracking_use_nursery(started_by_preload && nursery_wanted);
    /* counts from an earlier attach are stale: their frees were not seen */
    blocks_reset();
    owners_and_objects_reset();
    sites_reset_counters();
    hooks_reset();
    remote_layout_fill();
    int rc = channel_start(channel_dir);
    if (rc < 0) {
        pthread_mutex_unlock(&start_lock);
        return rc;
    }
    tlsprof_active = 1;
    interpose_install();
    pthread_mutex_unlock(&start_lock);
    static_copies_scan(!started_by_preload);
    if (!started_by_preload) pyagent_start(channel_dir, 0);
    return 0;
}

/* 1: nothing to stop (an earlier detach did), which `tlsprof detach` then says */
static int stop_locked(int from_listener)
{
    if (!tlsprof_active) return 1;
    pyagent_stop();
    interpose_remove();
    tlsprof_active = 0;
    if (from_listener) channel_release_from_listener();
    else channel_stop();
    return 0;
}

EXPORT int tlsprof_stop(void)
{
    pthread_mutex_lock(&start_lock);
    int r = stop_locked(0);
    pthread_mutex_unlock(&start_lock);
    return r;
}

int tlsprof_stop_from_channel(void)
{
    pthread_mutex_lock(&start_lock);
    int r = stop_locked(1);
    pthread_mutex_unlock(&start_lock);
    return r;
}

EXPORT int tlsprof_is_active(void) { return tlsprof_active; }

/* TLSPROF_DIR is not ours when the command switched users before exec (setpriv, runuser): it cannot
 * enter the launcher's private directory. It serves in its own user's private one instead, where
 * the launcher looks for processes of its tree (channel_paths.py); channel_start refuses it unless
 * it is a 0700 directory owned by us. */
static char uid_dirs_base[64]; /* TLSPROF_UID_DIRS, read at start: nginx clears its workers' environ */

static int own_uid_dir(char *out, size_t n)
{
    const char *base = uid_dirs_base;
    if (*base != '/' || snprintf(out, n, "%s/tlsprof-%u", base, (unsigned)geteuid()) >= (int)n) return -1;
    if (mkdir(out, 0700) != 0 && errno != EEXIST) return -1;
    return 0;
}

/* A process that chrooted reaches neither TLSPROF_DIR nor /tmp: a daemon forked inside its jail
 * (stunnel with `chroot` and its default `foreground = no`) serves at the jail's root, where
 * tlsprof looks for its tree's jailed processes (tlsprof/collect/jail.py). Only where /proc is
 * missing, i.e. the process sees a root of its own. */
static int jail_root_dir(char *out, size_t n)
{
    if (access("/proc/self/maps", F_OK) == 0) return -1;
    if (snprintf(out, n, "/tlsprof-%u", (unsigned)geteuid()) >= (int)n) return -1;
    if (mkdir(out, 0700) != 0 && errno != EEXIST) return -1;
    return 0;
}

/* TLSPROF_DIR was not ours to serve in: the user's own directory, else the jail's root. */
static int start_in_own_dir(int (*start)(const char *))
{
    char own[96];
    if (own_uid_dir(own, sizeof own) == 0 && start(own) == 0) return 0;
    return jail_root_dir(own, sizeof own) == 0 ? start(own) : -1;
}

/* setxid.c: a preloaded process about to change its credentials stops the listener thread... */
int tlsprof_channel_pause(void)
{
    if (!started_by_preload) return 0;
    pthread_mutex_lock(&start_lock);
    int paused = tlsprof_active && channel_pause();
    pthread_mutex_unlock(&start_lock);
    return paused;
}

/* ...and starts it again once they changed: on the socket kept open (the process may have chrooted
 * since), else in TLSPROF_DIR if it is still ours, else in the new user's own directory. */
void tlsprof_channel_resume(void)
{
    pthread_mutex_lock(&start_lock);
    if (tlsprof_active && !channel_running() && channel_resume() != 0 && channel_start(preload_dir) == -2)
        start_in_own_dir(channel_start);
    pthread_mutex_unlock(&start_lock);
}

__attribute__((constructor)) static void preload_start(void)
{
    const char *dir = getenv("TLSPROF_DIR");
    if (dir && *dir) {
        started_by_preload = 1;
        const char *nursery = getenv("TLSPROF_NURSERY");
        nursery_wanted = !(nursery && nursery[0] == '0');
        snprintf(preload_dir, sizeof preload_dir, "%s", dir);
        const char *base = getenv("TLSPROF_UID_DIRS");
        if (base) snprintf(uid_dirs_base, sizeof uid_dirs_base, "%s", base);
        if (tlsprof_start(dir) != -2) return;
        start_in_own_dir(tlsprof_start);
    }
}
