"""`tlsprof report FILE [--at steady|peak|last] [--format text|json|prometheus] [--html OUT.html]`:
render a saved report, at the moment it was saved with or at another one it keeps."""
import sys

from tlsprof.errors import UsageError
from tlsprof.moments import MOMENTS, select
from tlsprof.render import render_text
from tlsprof.report_io import dumps, load_report


def prepare_parser(parser) -> None:
    parser.add_argument("file", metavar="FILE", help="a report saved by `tlsprof run` or `tlsprof attach`")
    parser.add_argument("--format", choices=("text", "json", "prometheus"), default=None,
                        help="text for people (default), the validated JSON document indented, or the "
                             "Prometheus text exposition (for node_exporter's textfile collector)")
    parser.add_argument("--at", choices=MOMENTS, default=None,
                        help="re-render the report at another moment it keeps: steady, peak or last "
                             "(default: the moment it was saved with)")
    parser.add_argument("--html", metavar="OUT.html",
                        help="write a self-contained HTML page with charts (nothing on stdout unless "
                             "--format is given too)")


def run(args) -> int:
    report = load_report(args.file)
    if args.at is not None:
        report = select(report, args.at)
    if args.html:
        from tlsprof.html import write_html
        try:
            write_html(report, args.html)
        except OSError as exc:
            raise UsageError(f"--html: cannot write {args.html}: {exc.strerror or exc}") from None
        print(f"tlsprof: HTML report written to {args.html}", file=sys.stderr)
        if args.format is None:
            return 0
    fmt = args.format or "text"
    if fmt == "json":
        sys.stdout.write(dumps(report))
    elif fmt == "prometheus":
        from tlsprof.metrics import exposition
        sys.stdout.write(exposition(report))
    else:
        render_text(report, file=sys.stdout)
    sys.stdout.flush()
    return 0
