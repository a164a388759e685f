"""How numbers and names read in every view: bytes, ages, the parts of a process's memory.
Analysis writes sentences with them and every renderer shows them the same way."""


def human_bytes(n) -> str:
    """1023 B, 1.5 KiB, 12.3 MiB, 1.0 GiB (one decimal above 1 KiB)."""
    if n is None:
        return "-"
    n = float(n)
    sign = "-" if n < 0 else ""
    n = abs(n)
    if n < 1024:
        return f"{sign}{n:.0f} B"
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        n /= 1024
        if n < 1024 or unit == "PiB":
            return f"{sign}{n:.1f} {unit}"
    raise AssertionError("unreachable")


def human_age(seconds) -> str:
    if seconds is None:
        return "?"
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    if seconds < 86400:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


MEMORY_LABELS = {
    "openssl_heap": "OpenSSL heap",
    "python_connections": "Python, connections",
    "tlsprof_tracker": "tlsprof tracker",
    "other_heap": "other heap",
    "malloc_free": "free heap (malloc)",
    "thread_stacks": "thread stacks",
    "other_anonymous": "other anonymous",
    "file_backed": "code and files",
}
