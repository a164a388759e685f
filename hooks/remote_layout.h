#pragma once
#include "common.h"

/* ---- remote_layout.c: where the counters are, for a reader outside the process ----
 * The collector can read a snapshot's owners and sites straight out of the target's memory
 * (process_vm_readv), as py-spy reads an interpreter: no thread of ours has to answer. This record,
 * exported as `tlsprof_remote_layout`, says where each table lives and how its records are laid
 * out, so the reader (tlsprof/collect/remote.py) hard-codes no offset. docs/snapshot-format.md,
 * "Remote reads". Only appended to; a change of meaning bumps version. */
#define REMOTE_LAYOUT_MAGIC "tlsprofL"
#define REMOTE_LAYOUT_VERSION 1
struct remote_layout {
    char magic[8];
    uint32_t version, size; /* size: sizeof(struct remote_layout) as built */
    /* where: addresses in this process */
    const void *owner_chunks;  /* struct owner *[owner_chunks_n], NULL where not made yet */
    const void *process_owner; /* owner index 0 */
    const void *owner_slots;   /* uint32_t: owner indexes in use are below it */
    const void *site_table;    /* struct site [max_sites] */
    const void *site_counts;   /* struct site_counts [max_sites][site_stripes] */
    const void *site_slots;    /* uint32_t: site ids in use are below it */
    const void *untracked_bytes, *untracked_blocks, *io_calls_of_dead; /* int64_t, int64_t, uint64_t */
    const void *exiting;                                               /* int */
    /* shapes */
    uint32_t owner_size, owner_chunk, owner_chunks_n, owner_slot_count, n_causes;
    uint32_t o_serial, o_ptr, o_ctx, o_kind, o_state, o_alive, o_pre_attach, o_fd, o_flags, o_mode, o_io_calls;
    uint32_t o_created_ns, o_total_blocks, o_slot_cause, o_slot, o_wide;
    uint32_t slot_size, cause_counters_size;
    uint32_t site_size, s_name, s_line, s_scope, s_cause, s_used, s_library;
    uint32_t max_sites, site_stripes, site_counts_size;
};

void remote_layout_fill(void); /* main.c, at every start */
