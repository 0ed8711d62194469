"""Pure, incremental stream parsers: Server-Sent Events framing and inline `<think>` splitting. No I/O."""

from __future__ import annotations

import codecs
import re
from typing import NamedTuple


class SSEEvent(NamedTuple):  # a tuple: made once per streamed event, at half a frozen dataclass's cost
    event: str  # "" when the server sent no `event:` line (the OpenAI dialect)
    data: str


_LINE_BREAK = re.compile(r"\r\n|\r|\n")


class SSEParser:
    """Incremental Server-Sent Events parser: bytes in any split, CRLF/CR/LF line ends, comments, UTF-8 across reads."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._buffer = ""
        self._event = ""
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        self._buffer += self._decoder.decode(chunk)
        # A CR at the end may be the first half of a CRLF split across reads: wait for the next byte.
        hold = self._buffer.endswith("\r")
        text = self._buffer[:-1] if hold else self._buffer
        # Servers end lines with LF alone: str.split is several times faster than the regex over a large read.
        *lines, rest = _LINE_BREAK.split(text) if "\r" in text else text.split("\n")
        self._buffer = rest + ("\r" if hold else "")
        return [event for line in lines if (event := self._line(line))]

    def close(self) -> list[SSEEvent]:
        """Flush at end of stream; a final event without its blank line is still delivered."""
        self._buffer += self._decoder.decode(b"", final=True)
        events = self.feed(b"\n") if self._buffer else []
        if last := self._line(""):
            events.append(last)
        return events

    def _line(self, line: str) -> SSEEvent | None:
        if not line:
            event = SSEEvent(self._event, "\n".join(self._data)) if self._data else None
            self._event, self._data = "", []
            return event
        if line.startswith(":"):
            return None  # keep-alive comment
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        return None


class ThinkSplitter:
    """Splits streamed text with inline `<think>...</think>` into (is_reasoning, text) pieces; tags may be split."""

    OPEN, CLOSE = "<think>", "</think>"

    def __init__(self) -> None:
        self._pending = ""
        self._in_reasoning = False
        self._strip = False  # drop the blank lines models put right after a tag

    def feed(self, text: str) -> list[tuple[bool, str]]:
        if not self._pending and not self._strip and "<" not in text:
            return [(self._in_reasoning, text)] if text else []  # the common case, per streamed chunk: no tag here
        self._pending += text
        pieces: list[tuple[bool, str]] = []
        while True:
            tag = self.CLOSE if self._in_reasoning else self.OPEN
            index = self._pending.find(tag)
            if index < 0:
                break
            pieces += self._emit(self._pending[:index])
            self._pending = self._pending[index + len(tag) :]
            self._in_reasoning = not self._in_reasoning
            self._strip = True
        split = len(self._pending) - _partial_suffix(self._pending, tag)
        ready, self._pending = self._pending[:split], self._pending[split:]
        return pieces + self._emit(ready)

    def close(self) -> list[tuple[bool, str]]:
        ready, self._pending = self._pending, ""
        return self._emit(ready)

    def _emit(self, text: str) -> list[tuple[bool, str]]:
        if self._strip:
            text = text.lstrip()
            self._strip = not text
        return [(self._in_reasoning, text)] if text else []


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest end of `text` that is a start of `tag` (a tag split across chunks)."""
    if tag[0] not in text[-(len(tag) - 1):]:
        return 0  # the common case, per streamed chunk: no tag can start in the last few characters
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:size]):
            return size
    return 0
