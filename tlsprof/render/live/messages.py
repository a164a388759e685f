"""What the collector thread tells the UI (Textual messages: thread-safe, never waiting)."""

from textual.message import Message

from tlsprof.render.live.rows import ViewData


class NewData(Message):
    def __init__(self, data: ViewData):
        super().__init__()
        self.data = data


class TargetExited(Message):
    def __init__(self, returncode):
        super().__init__()
        self.returncode = returncode


class PollError(Message):
    def __init__(self, text: str):
        super().__init__()
        self.text = text
