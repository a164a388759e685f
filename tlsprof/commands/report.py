"""`tlsprof report FILE [--at steady|peak|last] [--format text|json|prometheus] [--html OUT.html]`:
render a saved report, at the moment it was saved with or at another one it keeps."""

import sys

from tlsprof.errors import UsageError
from tlsprof.analysis.moments import MOMENTS, select
from tlsprof.render.text import render_text
from tlsprof.model.report_io import dumps, load_report


def prepare_parser(parser) -> None:
    parser.add_argument("file", metavar="FILE", help="a report saved by `tlsprof run` or `tlsprof attach`")
    parser.add_argument(
        "--format",
        choices=("text", "json", "prometheus", "pprof"),
        default=None,
        help="text for people (default), the validated JSON document indented, or the "
        "Prometheus text exposition (for node_exporter's textfile collector)",
    )
    parser.add_argument(
        "--at",
        choices=MOMENTS,
        default=None,
        help="re-render the report at another moment it keeps: steady, peak or last "
        "(default: the moment it was saved with)",
    )
    parser.add_argument(
        "--html",
        metavar="OUT.html",
        help="write a self-contained HTML page with charts (nothing on stdout unless --format is given too)",
    )
    parser.add_argument(
        "-o",
        "--output",
        metavar="OUT",
        help="write the rendering to OUT instead of stdout; needed by --format pprof, a gzipped "
        "pprof profile.proto for go tool pprof, Pyroscope or Parca (docs/exports.md)",
    )


def run(args) -> int:
    report = load_report(args.file)
    if args.at is not None:
        report = select(report, args.at)
    if args.html:
        from tlsprof.render.html import write_html

        try:
            write_html(report, args.html)
        except OSError as exc:
            raise UsageError(f"--html: cannot write {args.html}: {exc.strerror or exc}") from None
        print(f"tlsprof: HTML report written to {args.html}", file=sys.stderr)
        if args.format is None:
            return 0
    fmt = args.format or "text"
    if fmt == "pprof":
        if not args.output:
            raise UsageError("--format pprof writes a binary file: give -o OUT.pb.gz")
        from tlsprof.render.pprof import write_profile

        try:
            write_profile(report, args.output)
        except OSError as exc:
            raise UsageError(f"-o: cannot write {args.output}: {exc.strerror or exc}") from None
        print(f"tlsprof: pprof profile written to {args.output}", file=sys.stderr)
        return 0
    if args.output:
        return _write_text(report, fmt, args.output)
    if fmt == "json":
        sys.stdout.write(dumps(report))
    elif fmt == "prometheus":
        from tlsprof.render.metrics import exposition

        sys.stdout.write(exposition(report))
    else:
        render_text(report, file=sys.stdout)
    sys.stdout.flush()
    return 0


def _write_text(report, fmt, path) -> int:
    import io
    from tlsprof.model.report_io import write_atomically

    out = io.StringIO()
    if fmt == "json":
        out.write(dumps(report))
    elif fmt == "prometheus":
        from tlsprof.render.metrics import exposition

        out.write(exposition(report))
    else:
        render_text(report, file=out)
    try:
        write_atomically(path, out.getvalue().encode("utf-8"))
    except OSError as exc:
        raise UsageError(f"-o: cannot write {path}: {exc.strerror or exc}") from None
    return 0
