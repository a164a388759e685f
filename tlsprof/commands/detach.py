"""`tlsprof detach PID`: remove tlsprof's hooks from a process whose tlsprof session died.

Asks the shim over its socket (DETACH); if the socket does not answer, calls tlsprof_stop() in the
target through gdb. Errors are typed and printed as one line by the CLI.
"""

from tlsprof.errors import UsageError
from tlsprof.collect.inject import eject


def prepare_parser(parser):
    parser.add_argument("pid", type=int, help="process id of the target")
    parser.add_argument(
        "--timeout",
        type=float,
        default=20.0,
        help="seconds to wait for gdb when the socket does not answer (default 20)",
    )


def run(args) -> int:
    if args.pid <= 0:
        raise UsageError(f"invalid pid {args.pid}")
    how = eject(args.pid, timeout=args.timeout)
    if how == "inactive":
        print(f"tlsprof: pid {args.pid} holds tlsprof's shim, already stopped (a session detached it): nothing to do")
        return 0
    via = "its socket" if how == "socket" else "gdb (its socket did not answer)"
    print(f"tlsprof: detached from pid {args.pid} via {via}")
    return 0
