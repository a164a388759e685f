#pragma once
#include "common.h"

/* ---- pyagent.c: the Python agent after an attach ---- */
/* 1: started; 0: not a Python process (yet), TLSPROF_AGENT=0, or an unusable path. `late`: under
 * `run`, the interpreter did not import tlsprof's sitecustomize (python -I/-E/-S, PYTHONPATH replaced) */
int pyagent_start(const char *channel_dir, int late);
void pyagent_stop(void);
