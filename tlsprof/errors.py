"""Typed errors. Each carries the exit code the CLI returns and a one-line message for the user."""


class TlsprofError(Exception):
    exit_code = 1


class UsageError(TlsprofError):
    exit_code = 2


class BadReport(TlsprofError):
    """A report file that is missing, corrupt, truncated or not a tlsprof report."""

    exit_code = 2


class LaunchError(TlsprofError):
    """The command to profile could not be started."""

    exit_code = 127


class NoSuchProcess(TlsprofError):
    exit_code = 3

    def __init__(self, pid, msg=None):
        self.pid = pid
        super().__init__(msg or f"no process with pid {pid}")


class AccessDenied(TlsprofError):
    exit_code = 4

    def __init__(self, pid, msg):
        self.pid = pid
        super().__init__(msg)


class NoOpenSSL(TlsprofError):
    exit_code = 5


class ChannelError(TlsprofError):
    """The shim in the target could not be reached or answered something unreadable."""

    exit_code = 6


class AttachError(TlsprofError):
    exit_code = 7


class ToolMissing(TlsprofError):
    exit_code = 8


class ShimNotLoadable(TlsprofError):
    """The target cannot be given a copy of the shim (or of the Python agent) it can open: another
    mount namespace, a read-only or hostile /tmp."""

    exit_code = 9


class UnsafeChannelDir(ChannelError):
    """The private channel directory exists but is not owned by the expected user or is open to others."""
