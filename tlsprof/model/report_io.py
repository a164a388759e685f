"""Reading and writing report files. Whatever is wrong with a file becomes one BadReport line
that names the file; a report is only ever written whole (temp file in the same directory, fsync,
rename, fsync of the directory): a reader, or a crash at any point, sees the old file or the new one."""

import json
import os
import tempfile

from tlsprof.errors import BadReport, TlsprofError, UsageError
from tlsprof.model.schema import validate_report

# A report of 100k connections is a few tens of MB; anything far larger is not a report.
MAX_REPORT_BYTES = 512 * 1024 * 1024


def _reject_constant(name):
    raise ValueError(f"{name} is not valid JSON")


def dumps(doc) -> str:
    """The on-disk form: indented JSON, keys in model order, no NaN/Infinity, trailing newline."""
    return json.dumps(doc, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def _oserror(path, exc: OSError) -> BadReport:
    reason = exc.strerror or exc.__class__.__name__
    if isinstance(exc, FileNotFoundError):
        reason = "no such file"
    elif isinstance(exc, IsADirectoryError):
        reason = "is a directory, not a report file"
    elif isinstance(exc, PermissionError):
        reason = "permission denied"
    return BadReport(f"{path}: cannot read report: {reason}")


def parse_report(data: bytes, path="<report>") -> dict:
    """Decode, parse and validate the bytes of a report file."""
    if not data.strip():
        raise BadReport(f"{path}: empty file, not a tlsprof report")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BadReport(f"{path}: not a tlsprof report: not UTF-8 text (byte {exc.start})") from None
    try:
        doc = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        if exc.pos >= len(text.rstrip()):
            raise BadReport(
                f"{path}: truncated JSON: the file ends at line {exc.lineno} before the document does"
            ) from None
        raise BadReport(f"{path}: not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise BadReport(f"{path}: not a tlsprof report: JSON nested too deeply") from None
    except ValueError as exc:  # NaN/Infinity, huge integer literals
        raise BadReport(f"{path}: not valid JSON: {str(exc).splitlines()[0]}") from None
    try:
        validate_report(doc)
    except BadReport as exc:
        raise BadReport(f"{path}: {exc}") from None
    return doc


def load_report(path) -> dict:
    """Read and validate a saved report; raise BadReport with one line naming the file."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as fh:
            if os.fstat(fh.fileno()).st_size > MAX_REPORT_BYTES:
                raise BadReport(f"{path}: too large to be a tlsprof report")
            data = fh.read(MAX_REPORT_BYTES + 1)
    except OSError as exc:
        raise _oserror(path, exc) from None
    if len(data) > MAX_REPORT_BYTES:
        raise BadReport(f"{path}: too large to be a tlsprof report")
    return parse_report(data, path)


def write_atomically(path, data: bytes) -> None:
    """Write `data` to `path` through a temp file in the same directory, fsync and rename: a reader
    (a person, a collector watching the directory) sees the old file or the whole new one. The file
    gets the mode the umask allows; OSError on failure, and no temp file is left behind."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tlsprof-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def check_writable(path) -> None:
    """`-o FILE` of a profiling session, asked before anything touches the target: a report that
    could only fail to be written after an hour of profiling would be lost. Tries what save_report
    will do (a temp file in the same directory), and refuses a directory or a file it may not replace."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise UsageError(f"-o: {path} is a directory, not a report file")
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=".tlsprof-", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise UsageError(f"-o: cannot write {path}: {exc.strerror or exc}") from None
    os.close(fd)
    os.unlink(tmp)


def save_report_or_elsewhere(doc, path) -> None:
    """save_report, and when `path` cannot be written after all (its directory gone, a full disk),
    the report is kept in the temp directory: the error says where, and is still an error."""
    try:
        save_report(doc, path)
    except BadReport:
        raise
    except TlsprofError as exc:
        try:
            fd, spare = tempfile.mkstemp(prefix=f"tlsprof-report-{os.getpid()}-", suffix=".json")
            os.close(fd)
            save_report(doc, spare, validate=False)
        except (OSError, TlsprofError):
            raise exc from None
        raise TlsprofError(f"{exc}; the report is in {spare} instead") from None


def save_report(doc, path, validate: bool = True) -> None:
    """Write `doc` to `path` atomically: readers see the old file or the whole new one, never half.

    With validate=True (the default) an invalid document raises BadReport and nothing is written.
    """
    path = os.fspath(path)
    if validate:
        validate_report(doc)
    try:
        text = dumps(doc)
    except (TypeError, ValueError) as exc:
        raise TlsprofError(f"cannot write report {path}: {exc}") from None
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=".tlsprof-", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise TlsprofError(f"cannot write report {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException as exc:  # includes a KeyboardInterrupt: the temp file never stays behind
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise TlsprofError(f"cannot write report {path}: {exc.strerror or exc}") from None
        raise
    _sync_directory(directory)


def _sync_directory(directory):
    """The rename is durable only once the directory is on disk too (a power cut right after a
    supervisor's stop would otherwise lose the report). Best effort: not every file system can."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
