"""The command line: parses arguments, runs one subcommand, turns typed errors into one line."""

import argparse
import importlib
import sys

from tlsprof import __version__
from tlsprof.errors import TlsprofError

# name -> (module under tlsprof.commands, one-line help)
COMMANDS = {
    "run": ("run", "start a command under the profiler and report its TLS memory"),
    "attach": ("attach", "profile a running process, then detach"),
    "detach": ("detach", "remove tlsprof's hooks from a process whose tlsprof session died"),
    "report": ("report", "render a saved report"),
    "diff": ("diff", "compare two reports: what grew, by cause and per connection"),
    "demo": ("demo", "profile the built-in echo server: shared context vs a context per connection"),
}


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.print_usage(sys.stderr)
        print(f"tlsprof: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def build_parser():
    parser = _Parser(prog="tlsprof", description="Memory of TLS connections inside OpenSSL, by cause.")
    parser.add_argument("--version", action="version", version=f"tlsprof {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, (module, help_text) in COMMANDS.items():
        try:
            mod = importlib.import_module(f"tlsprof.commands.{module}")
        except ImportError:
            continue  # a subcommand not built yet
        p = sub.add_parser(name, help=help_text, description=help_text)
        mod.prepare_parser(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_usage(sys.stderr)
        print("tlsprof: error: a command is required", file=sys.stderr)
        return 2
    try:
        return int(args._run(args) or 0)
    except TlsprofError as exc:
        print(f"tlsprof: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 1
