"""pprof export of a report: a gzipped `profile.proto` (the heap convention) for the continuous-
profiling back ends fleets already run (Pyroscope, Parca, `go tool pprof`). `tlsprof report FILE
--format pprof -o OUT.pb.gz` writes one; `--pprof DIR` (run/attach) writes one per snapshot.

Reads only a report dict (tlsprof.report/1), like every other export. What a sample is:

- One sample per (owner, cause, call site). Owners are the report's contexts, live connections and
  the process; its bytes of a cause are the owner's `by_cause`, exact. The report's call sites are
  process-wide (the shim counts per site, not per owner and site), so an owner's bytes of a cause
  are spread over that cause's sites in proportion to the sites' bytes, in whole bytes: each
  owner's samples add up to its `by_cause` exactly, so the profile's total is `totals.live_bytes`
  and `-tagfocus cause=X` gives `totals.by_cause[X]`; each site's samples add up to its
  `live_bytes` (when the snapshot's owner and site counters agree). Which owner a site's bytes
  belong to is the apportioned part; docs/exports.md says so.
- `inuse_objects`: each site's `live_blocks`, spread over the owners in proportion to the bytes they
  got there (exact per site and in total).
- Stack: the OpenSSL call site (leaf), then the Python stack that created the owner, innermost
  first, where the report has one (`python.created_by`).
- Labels: cause, owner_kind (context/connection/process), connection, context, peer, pid; context
  samples also carry the number `connections` (live connections sharing it).
"""

import datetime
import gzip
import os
import threading
from collections import deque

from tlsprof.model.causes import CAUSES
from tlsprof.errors import UsageError
from tlsprof.render.profile_proto import Label, Profile
from tlsprof.model.report_io import write_atomically

SAMPLE_TYPES = (("inuse_objects", "count"), ("inuse_space", "bytes"))
# Every call site gets its own location unless the owners are so many that the profile would pass
# SAMPLE_BUDGET samples (~10 us each to build): then a cause's largest sites keep theirs and the
# rest share one, so that a 10k-connection report stays near a second.
SAMPLE_BUDGET = 100_000
DEFAULT_KEEP = 10


def apportion(total: int, weights) -> list:
    """`total` split in proportion to `weights` (non-negative ints, positive sum) into whole units
    that add up to `total` exactly: floors first, the rest one each to the largest remainders."""
    weights = list(weights)
    whole = sum(weights)
    shares = [total * w // whole for w in weights]
    left = total - sum(shares)
    if left:
        order = sorted(range(len(weights)), key=lambda i: (-(total * weights[i] % whole), i))
        for i in order[:left]:
            shares[i] += 1
    return shares


def split(row_totals, column_totals) -> list:
    """A table of whole non-negative units, cell (i, j) ~ row_i * column_j / total, whose rows add up
    to `row_totals` and whose columns add up to `column_totals` scaled to the same total (exactly
    `column_totals` when both totals agree, as owners and sites of one snapshot do at rest).
    Columns are filled in turn, each split over what the rows have left in proportion: a share never
    exceeds what its row has left, so the last column takes exactly the rest of every row."""
    total = sum(row_totals)
    if not total:
        return [[0] * len(column_totals) for _ in row_totals]
    columns = apportion(total, column_totals)
    left = list(row_totals)
    remaining = total
    cells = [[0] * len(columns) for _ in row_totals]
    for j, column in enumerate(columns):
        if not column:
            continue
        shares = list(left) if column == remaining else apportion(column, left)
        for i, share in enumerate(shares):
            cells[i][j] = share
            left[i] -= share
        remaining -= column
    return cells


def _site_name(file, line):
    """The function name a site is shown under: OpenSSL passes CRYPTO_malloc its `file:line`, not a
    function, so the site itself names it ("crypto/x509/x_name.c:100")."""
    while file.startswith("../"):
        file = file[3:]
    return f"{file}:{line}" if line is not None else file


class _Builder:
    """Interns strings, functions, locations and mappings as profile.proto wants them (ids >= 1,
    string 0 is "")."""

    def __init__(self):
        self.profile = Profile()
        self._strings = {"": 0}
        self.profile.string_table.append("")
        self._functions = {}
        self._locations = {}
        self._mappings = {}

    def s(self, text) -> int:
        text = "" if text is None else str(text)
        i = self._strings.get(text)
        if i is None:
            i = self._strings[text] = len(self._strings)
            self.profile.string_table.append(text)
        return i

    def _function(self, name, filename):
        key = (name, filename)
        fid = self._functions.get(key)
        if fid is None:
            fid = self._functions[key] = len(self._functions) + 1
            self.profile.function.add(id=fid, name=self.s(name), system_name=self.s(name), filename=self.s(filename))
        return fid

    def mapping(self, library):
        if not library:
            return 0
        mid = self._mappings.get(library)
        if mid is None:
            mid = self._mappings[library] = len(self._mappings) + 1
            # symbolized already: a reader must not look for the library's binary to symbolize it
            self.profile.mapping.add(
                id=mid,
                filename=self.s(library),
                has_functions=True,
                has_filenames=True,
                has_line_numbers=True,
                has_inline_frames=True,
            )
        return mid

    def location(self, key, name, filename, line, library=None) -> int:
        lid = self._locations.get(key)
        if lid is None:
            lid = self._locations[key] = len(self._locations) + 1
            loc = self.profile.location.add(id=lid, mapping_id=self.mapping(library))
            loc.line.add(function_id=self._function(name, filename), line=line or 0)
        return lid


class _Owner:
    __slots__ = ("labels", "num_labels", "stack", "by_cause", "pid", "messages")

    def __init__(self, labels, by_cause, frames, num_labels=()):
        self.pid = dict(labels).get("pid")
        self.labels = [(k, v) for k, v in labels if v is not None]
        self.num_labels = list(num_labels)
        self.by_cause = by_cause or {}
        self.stack = frames
        self.messages = []  # its labels as Label messages, built once and copied into each sample


def _frames(obj, builder):
    """Location ids of the Python stack that created the object, innermost first."""
    created = ((obj or {}).get("python") or {}).get("created_by") or []
    out = []
    for frame in created:
        if not isinstance(frame, dict):
            continue
        file, line, function = frame.get("file"), frame.get("line"), frame.get("function") or "?"
        # pprof drops "<...>" from names as C++ template arguments: "<module>" would show as nothing
        name = str(function).replace("<", "[").replace(">", "]")
        line = line if isinstance(line, int) else 0
        out.append(builder.location(("py", file, line, function), name, file, line))
    return out


def _owners(report, builder):
    target_pid = str((report.get("target") or {}).get("pid", ""))

    def pid_of(obj):  # a report of a process tree says whose each context and connection is
        return str(obj["pid"]) if obj.get("pid") is not None else target_pid

    owners = []
    for ctx in report.get("contexts") or []:
        owners.append(
            _Owner(
                [("owner_kind", "context"), ("context", ctx.get("id")), ("pid", pid_of(ctx))],
                ctx.get("by_cause"),
                _frames(ctx, builder),
                num_labels=[("connections", int(ctx.get("connections") or 0), "connections")],
            )
        )
    for conn in report.get("connections") or []:
        owners.append(
            _Owner(
                [
                    ("owner_kind", "connection"),
                    ("connection", conn.get("id")),
                    ("context", conn.get("context")),
                    ("peer", conn.get("peer")),
                    ("pid", pid_of(conn)),
                ],
                conn.get("by_cause"),
                _frames(conn, builder),
            )
        )
    process = dict((report.get("process") or {}).get("by_cause") or {})
    # bytes in the totals that no listed owner accounts for (none with today's model) stay in the
    # profile under the process, so that its total is the report's, always
    listed = {}
    for o in owners:
        for c, v in o.by_cause.items():
            listed[c] = listed.get(c, 0) + v
    for c, v in process.items():
        listed[c] = listed.get(c, 0) + v
    for c, v in ((report.get("totals") or {}).get("by_cause") or {}).items():
        if v > listed.get(c, 0):
            process[c] = process.get(c, 0) + v - listed.get(c, 0)
    owners += _process_owners(report, owners, process, target_pid)
    return owners


def _process_owners(report, owners, process, target_pid):
    """The `process` owner: one per process when the report has a section per process with its
    bytes by cause (a process tree) that its own contexts and connections leave a part of, and those
    parts add up to `process`; else one, labelled with the target's pid."""
    sections = [
        p
        for p in report.get("processes") or []
        if isinstance(p, dict) and p.get("pid") is not None and isinstance(p.get("by_cause"), dict)
    ]
    if len(sections) > 1:
        rest = {}
        for section in sections:
            left = dict(section["by_cause"])
            for o in owners:
                if o.pid == str(section["pid"]):
                    for c, v in o.by_cause.items():
                        left[c] = left.get(c, 0) - v
            rest[str(section["pid"])] = left
        summed = {}
        for left in rest.values():
            for c, v in left.items():
                summed[c] = summed.get(c, 0) + v
        if all(v >= 0 for left in rest.values() for v in left.values()) and {c: v for c, v in summed.items() if v} == {
            c: v for c, v in process.items() if v
        }:
            return [_Owner([("owner_kind", "process"), ("pid", pid)], left, []) for pid, left in rest.items()]
    return [_Owner([("owner_kind", "process"), ("pid", target_pid)], process, [])]


def _sites_per_cause(owners) -> int:
    """How many sites of a cause get a location of their own: each (owner, cause) spreads over at
    most this many + 1."""
    rows = sum(1 for o in owners for v in o.by_cause.values() if v > 0)
    return max(1, SAMPLE_BUDGET // max(rows, 1) - 1)


def _columns(report, builder, keep):
    """cause -> [(location id, bytes, blocks)]: its `keep` largest sites, then one for the rest."""
    by_cause = {}
    for site in report.get("sites") or []:
        if (site.get("live_bytes") or 0) > 0:
            by_cause.setdefault(site.get("cause") or "other", []).append(site)
    columns = {}
    for cause, sites in by_cause.items():
        sites.sort(key=lambda s: -s["live_bytes"])
        cols = []
        for site in sites[:keep]:
            file, line, library = site.get("file"), site.get("line"), site.get("library")
            if file:
                name = site.get("function") or _site_name(file, line)
            else:
                name = f"{library or 'OpenSSL'}: unknown call site"
            lid = builder.location(("site", library, file, line), name, file, line, library)
            cols.append((lid, site["live_bytes"], site.get("live_blocks") or 0))
        rest = sites[keep:]
        if rest:
            lid = builder.location(("rest", cause), f"{len(rest)} smaller call sites of cause {cause}", "", 0)
            cols.append((lid, sum(s["live_bytes"] for s in rest), sum(s.get("live_blocks") or 0 for s in rest)))
        columns[cause] = cols
    return columns


def _comments(report):
    target = report.get("target") or {}
    peak = report.get("peak") or {}
    out = [
        f"tlsprof {(report.get('tool') or {}).get('version', '?')}: live OpenSSL heap of pid "
        f"{target.get('pid')} ({target.get('mode')}), {peak.get('chosen', 'peak')} snapshot of "
        f"{peak.get('snapshots', '?')}, captured {report.get('captured_at')}",
        "bytes are heap footprint (malloc_usable_size + 8); a site's bytes are split over the owners "
        "of its cause in proportion (docs/exports.md)",
    ]
    if report.get("partial"):
        out.append("partial: collection did not finish")
    for f in report.get("findings") or []:
        out.append(f"finding [{f.get('severity')}] {f.get('id')}: {f.get('title')}")
    return out


def build_profile(report):
    """The profile.proto message (perftools.profiles.Profile) of a report dict."""
    b = _Builder()
    prof = b.profile
    for kind, unit in SAMPLE_TYPES:
        prof.sample_type.add(type=b.s(kind), unit=b.s(unit))
    prof.default_sample_type = b.s("inuse_space")
    prof.period_type.type = b.s("space")
    prof.period_type.unit = b.s("bytes")
    prof.period = 1  # every live block is counted: nothing is sampled
    try:
        captured = datetime.datetime.fromisoformat(report.get("captured_at"))
        prof.time_nanos = int(captured.timestamp()) * 1_000_000_000
    except (TypeError, ValueError):
        pass
    for text in _comments(report):
        prof.comment.append(b.s(text))

    target = report.get("target") or {}
    command = target.get("command") or []
    # mapping 1 is what pprof calls the main binary ("File:" in its headers): the profiled program
    b.mapping(os.path.basename(command[0]) if command else f"pid {target.get('pid')}")
    owners = _owners(report, b)
    columns = _columns(report, b, _sites_per_cause(owners))
    for o in owners:
        o.messages = [Label(key=b.s(k), str=b.s(v)) for k, v in o.labels] + [
            Label(key=b.s(k), num=n, num_unit=b.s(u)) for k, n, u in o.num_labels
        ]
    cause_keys = {c: Label(key=b.s("cause"), str=b.s(c)) for c in CAUSES}
    for cause in sorted(
        {c for o in owners for c, v in o.by_cause.items() if v > 0},
        key=lambda c: CAUSES.index(c) if c in CAUSES else len(CAUSES),
    ):
        rows = [o for o in owners if (o.by_cause.get(cause) or 0) > 0]
        cols = columns.get(cause)
        if not cols:  # bytes of a cause with no site listed: one location says so
            lid = b.location(("nosite", cause), f"no call site recorded for cause {cause}", "", 0)
            cols = [(lid, 1, 0)]
        cells = split([int(o.by_cause[cause]) for o in rows], [w for _, w, _ in cols])
        blocks = [[0] * len(cols) for _ in rows]
        for j, (_, _, site_blocks) in enumerate(cols):
            got = [cells[i][j] for i in range(len(rows))]
            if site_blocks and sum(got):
                for i, n in enumerate(apportion(site_blocks, got)):
                    blocks[i][j] = n
        cause_label = cause_keys.get(cause) or Label(key=b.s("cause"), str=b.s(cause))
        for i, o in enumerate(rows):
            labels = [cause_label, *o.messages]
            for j, (lid, _, _) in enumerate(cols):
                if cells[i][j] or blocks[i][j]:
                    prof.sample.add(location_id=[lid, *o.stack], value=[blocks[i][j], cells[i][j]], label=labels)
    return prof


def encode(report) -> bytes:
    """The gzipped profile.proto bytes of a report (what pprof, Pyroscope and Parca read)."""
    return gzip.compress(build_profile(report).SerializeToString(), compresslevel=6, mtime=0)


def write_profile(report, path) -> None:
    """Write the profile of a report to `path` atomically (temp file in the same directory, rename):
    a collector watching the directory never reads half a file. OSError on failure."""
    write_atomically(path, encode(report))


def check_directory(directory, keep):
    """`--pprof DIR`: made if missing; refused (usage error) before anything is started when it
    cannot be written or `keep` is not positive."""
    if keep < 1:
        raise UsageError(f"--pprof-keep must be at least 1, got {keep}")
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--pprof: cannot create {directory}: {exc.strerror or exc}") from None
    if not os.path.isdir(directory) or not os.access(directory, os.W_OK | os.X_OK):
        raise UsageError(f"--pprof: {directory} is not a writable directory")


class ProfileDirWriter:
    """Writes one profile per snapshot the session takes (read through its report source,
    tlsprof/analysis/reports.py) into a directory for a collector to pick
    up, named `tlsprof-PID-YYYYmmddTHHMMSSZ-SEQ.pb.gz`, and keeps the `keep` newest it wrote (files
    it did not write are never touched). The work runs on its own thread: the session's poller only
    signals it, so a slow disk never delays a snapshot; when snapshots come faster than profiles are
    written, the newest wins."""

    def __init__(self, source, directory, keep=DEFAULT_KEEP, err=None):
        self.source = source
        self.directory = directory
        self.keep = keep
        self.written = deque()
        self.failures = 0
        self._err = err
        self._seq = 0
        self._last_report = None
        self._wake = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="tlsprof-pprof", daemon=True)

    def start(self):
        self.source.on_snapshot.append(self._on_snapshot)
        self._thread.start()
        return self

    def _on_snapshot(self, snap):
        self._wake.set()

    def _loop(self):
        while not self._stopping:
            self._wake.wait()
            self._wake.clear()
            self.write_latest()

    def write_latest(self):
        """Write the profile of the session's newest report, unless it is written already."""
        try:
            report = self.source.latest_report()
        except Exception:  # noqa: BLE001  e.g. built while the poller changed the session: the next will do
            return None
        if report is None or report is self._last_report:
            return None
        self._last_report = report
        self._seq += 1
        pid = (report.get("target") or {}).get("pid", 0)
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        path = os.path.join(self.directory, f"tlsprof-{pid}-{stamp}-{self._seq:06d}.pb.gz")
        try:
            write_profile(report, path)
        except Exception as exc:  # noqa: BLE001  a profile that fails must never cost the session its report
            self.failures += 1
            if self.failures == 1 and self._err is not None:  # once: a full disk must not flood stderr
                why = exc.strerror if isinstance(exc, OSError) and exc.strerror else repr(exc)
                print(f"tlsprof: --pprof: cannot write {path}: {why}", file=self._err)
            return None
        self.written.append(path)
        while len(self.written) > self.keep:
            old = self.written.popleft()
            try:
                os.unlink(old)
            except OSError:
                pass
        return path

    def stop(self):
        """Stop the thread, then write the newest report if it was not written yet."""
        if self._on_snapshot in self.source.on_snapshot:
            self.source.on_snapshot.remove(self._on_snapshot)
        self._stopping = True
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(30.0)
        self.write_latest()


def start_profile_writer(source, directory, keep=DEFAULT_KEEP, err=None) -> ProfileDirWriter:
    check_directory(directory, keep)
    return ProfileDirWriter(source, directory, keep, err=err).start()
