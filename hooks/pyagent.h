#pragma once
#include "common.h"

/* ---- pyagent.c: the Python agent after an attach ---- */
void pyagent_start(const char *channel_dir); /* not in a preloaded process: main.c decides */
void pyagent_stop(void);
