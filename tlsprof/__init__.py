"""tlsprof: where the memory of a process's TLS connections goes, by connection and by cause."""

__version__ = "0.1.0"
