"""The kernel's view of a process's memory, read from /proc at snapshot time: RSS, anonymous and
file-backed pages, thread stacks. tlsprof/analysis/memory.py explains the RSS with it."""

import os

KIB = 1024
GUARD_MAX = 64 * KIB  # a pthread stack's guard page(s) sit right below it: small and PROT_NONE
ARENA_ALIGN = 64 * 1024 * KIB  # glibc's thread-arena heaps are 64 MiB aligned: never a stack


def _kib_field(line: str) -> int:
    return int(line.split()[1]) * KIB


def read_process(pid: int) -> dict | None:
    """{rss, anonymous, file_backed, thread_stacks, stacks_found, threads} in bytes, or None when
    /proc cannot be read (the process is gone, or another user's without permission)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            rollup = {line.split(":")[0]: _kib_field(line) for line in f if line.endswith("kB\n")}
        stacks, found = _thread_stacks(pid)
        threads = len(os.listdir(f"/proc/{pid}/task"))
    except (OSError, ValueError, IndexError):
        return None
    rss, anon = rollup.get("Rss", 0), rollup.get("Anonymous", 0)
    return {
        "rss": rss,
        "anonymous": anon,
        "file_backed": max(0, rss - anon),
        "thread_stacks": stacks,
        "stacks_found": found,
        "threads": threads,
    }


def _thread_stacks(pid: int):
    """Resident bytes of the main stack and of every pthread stack: an anonymous rw-p mapping
    right above a small ---p guard mapping (glibc's allocate_stack). -> (bytes, stacks found)"""
    total = found = 0
    prev = None  # (end, perms, size, anonymous) of the previous mapping
    current = None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head = line.split()
            if "-" in head[0] and len(head) >= 5 and ":" not in head[0]:
                lo, hi = (int(x, 16) for x in head[0].split("-"))
                path = head[5] if len(head) > 5 else ""
                is_stack = path == "[stack]" or (
                    not path
                    and head[1] == "rw-p"
                    and prev is not None
                    and prev[0] == lo
                    and prev[1] == "---p"
                    and prev[3]
                    and prev[2] <= GUARD_MAX
                    and lo % ARENA_ALIGN
                )
                current = is_stack
                prev = (hi, head[1], hi - lo, not path)
                if is_stack:
                    found += 1
            elif current and head[0] == "Rss:":
                total += _kib_field(line)
    return total, found
