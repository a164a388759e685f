/* tlsprof shim: the umbrella header. The shim lives inside the profiled process: it must never
 * crash it, never re-enter itself, and never call into libpython or link against libssl.
 *
 * Layers, bottom to top. A file calls or names only what is defined in its own layer's files or
 * below; what a lower layer must reach above is handed down at start (interpose_use,
 * measure_own_allocators, channel_on_detach). tests/unit/test_shim_layout.py checks that no
 * circle runs between the .c files; docs/shim-layout.md draws the same picture.
 *
 *   main.c setxid.c          start, stop, fork safety; hands the tables and callbacks down
 *   listener.c               the socket and its thread (re-made when the target takes it)
 *   channel.c remote_layout.c   the commands: one line in, one text answer out; where the
 *                            counters are, for a reader outside the process
 *   heapwalk*.c pyagent.c    WALK (memory older than the hooks); the Python agent after attach
 *   hook_table.c             the patch table, from the one list of hooked functions
 *   hooks_*.c                thin hooks: push a scope, call the real function, hand blocks over
 *   adoption.c static_copies.c   owners met on first sight; statically linked OpenSSL copies
 *   tracking.c               scope stack, counting, stripes: what the hooks hand over
 *   measure.c pytrace.c      what a block costs; --tracemalloc
 *   interpose.c              GOT/relocation patching and symbol lookup, one engine for run and attach
 *   real.c owners.c table*.c sites.c causes.c   real-function pointers and the data the rest fills
 *   common.h remote_layout.h the vocabularies (causes, scopes, kinds, states); the remote layout record
 *
 * heapwalk_internal.h and table_internal.h are private to their own files and not included here.
 */
#pragma once
#include "common.h"
#include "remote_layout.h"
#include "causes.h"
#include "table.h"
#include "owners.h"
#include "sites.h"
#include "interpose.h"
#include "hooks.h"
#include "pytrace.h"
#include "measure.h"
#include "tracking.h"
#include "adoption.h"
#include "static_copies.h"
#include "pyagent.h"
#include "heapwalk.h"
#include "channel.h"
