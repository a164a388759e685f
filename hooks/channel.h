#pragma once
#include "common.h"

/* ---- channel.c: the commands ---- */
int channel_serve(int fd, const char *dir); /* dir: where it serves; 1: the listener must stop */
const int *channel_exiting_flag(void);      /* for remote_layout.c */

/* ---- listener.c: the socket and its thread ---- */
int channel_start(const char *dir);
void channel_stop(void);
int channel_pause(void);  /* 1: paused (setxid.c, through main.c) */
int channel_resume(void); /* 0: serving again on the socket kept open */
int channel_running(void);
int channel_after_fork_child(void);       /* -2: the directory is not the child's to serve in */
void channel_release_from_listener(void); /* the listener ends itself after DETACH */
/* What DETACH runs (main.c's stop): registered from above, so the channel never calls up. */
void channel_on_detach(int (*stop)(void));

/* ---- main.c: start, stop, fork safety ---- */
int tlsprof_channel_pause(void); /* setxid.c, around a change of credentials */
void tlsprof_channel_resume(void);
