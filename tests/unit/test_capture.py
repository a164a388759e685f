"""The creation capture (agent/capture.py) keeps (code, offset) per frame and finds lines only when
a snapshot asks: the lines must be what f_lineno said when the object was made, and objects made
from one place must share one stack (a server's connections cost a reference each)."""

import ssl
import sys

from tlsprof.agent import capture


def _f_lineno_stack(frame):
    out = []
    while frame is not None and len(out) < capture.MAX_FRAMES:
        out.append((frame.f_code.co_filename, frame.f_lineno, frame.f_code.co_name))
        frame = frame.f_back
    return out


def _made_here(seen):
    frame = sys._getframe()
    seen.append((capture.frames(frame), _f_lineno_stack(frame)))
    # further on, inside a loop and a statement over several lines: offsets past the first line
    for _ in range(2):
        seen.append(
            (capture.frames(sys._getframe()), _f_lineno_stack(sys._getframe())),
        )


def test_lines_found_later_are_the_lines_the_frames_were_at():
    seen = []
    _made_here(seen)
    for stack, expected in seen:
        got = [(f["file"], f["line"], f["function"]) for f in capture.lines(stack)]
        assert got == expected


def test_objects_made_from_one_place_share_their_stack():
    stacks = []
    for _ in range(3):
        stacks.append(capture.frames(sys._getframe()))  # one line, one offset: the same place
    assert stacks[0] is stacks[1] is stacks[2]
    other = capture.frames(sys._getframe())  # another line: its own stack
    assert other is not stacks[0] and other[0][1] != stacks[0][0][1]


def test_captured_objects_report_their_lines():
    state = {}

    class NoPyOpenSSL:
        install = staticmethod(lambda state, remember: None)
        uninstall = staticmethod(lambda state: None)

    capture.install(state, NoPyOpenSSL)
    try:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        line = sys._getframe().f_lineno - 1
        frames, how = capture.created_by(ctx, False, True)
    finally:
        capture.uninstall(state, NoPyOpenSSL)
    assert how == "run"
    assert frames[0] == {"file": __file__, "line": line, "function": "test_captured_objects_report_their_lines"}


def _capture_here():
    return capture.frames(sys._getframe())  # one line: the same innermost place for every caller


def _caller_a():
    return _capture_here()


def _caller_b():
    return _capture_here()


def test_a_stack_that_differs_only_further_out_is_its_own():
    """The shared stack is returned only when every captured frame matches, not the innermost alone."""
    a1, a2 = [_caller_a() for _ in range(2)]  # one place: the same offset in every frame
    b = _caller_b()
    assert a1 is a2
    assert b is not a1 and b[0] == a1[0] and b[1][0] is not a1[1][0]
    assert [code.co_name for code, _ in b[:2]] == ["_capture_here", "_caller_b"]
