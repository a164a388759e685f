/* The record that lets the collector read counters out of this process (remote_layout.h). */
#define _GNU_SOURCE
#include <string.h>

#include "shim.h"

EXPORT struct remote_layout tlsprof_remote_layout;

/* Filled at every start (before the hooks count anything), from the modules that own each table. */
void remote_layout_fill(void)
{
    struct remote_layout l = {.version = REMOTE_LAYOUT_VERSION, .size = sizeof l};
    owners_describe(&l);
    sites_describe(&l);
    l.untracked_bytes = &untracked_bytes;
    l.untracked_blocks = &untracked_blocks;
    l.io_calls_of_dead = &io_calls_of_dead;
    l.exiting = channel_exiting_flag();
    l.n_causes = N_CAUSES;
    tlsprof_remote_layout = l;
    /* the magic last: a reader that finds it finds the rest filled */
    __atomic_thread_fence(__ATOMIC_RELEASE);
    memcpy(tlsprof_remote_layout.magic, REMOTE_LAYOUT_MAGIC, sizeof tlsprof_remote_layout.magic);
}
