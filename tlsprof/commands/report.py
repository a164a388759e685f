"""`tlsprof report FILE [--format text|json]`: render a saved report."""
import sys

from tlsprof.render import render_text
from tlsprof.report_io import dumps, load_report


def prepare_parser(parser) -> None:
    parser.add_argument("file", metavar="FILE", help="a report saved by `tlsprof run` or `tlsprof attach`")
    parser.add_argument("--format", choices=("text", "json"), default="text",
                        help="text for people (default) or the validated JSON document, indented")


def run(args) -> int:
    report = load_report(args.file)
    if args.format == "json":
        sys.stdout.write(dumps(report))
    else:
        render_text(report, file=sys.stdout)
    sys.stdout.flush()
    return 0
