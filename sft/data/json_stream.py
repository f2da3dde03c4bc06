"""A .json file holding a list of records, read one record at a time: memory holds a window of the text around the
record being decoded, never the whole file.

The window is decoded with the standard library's own decoder (json.JSONDecoder.raw_decode, the C scanner that
json.loads runs), so every value comes out exactly as json.loads gave it before (floats, big integers, duplicate
keys), at its speed, and a malformed file is named by line and column as before. ijson, the streaming JSON library,
would give Decimals for floats unless told otherwise and reports errors without a line; a window needs no
dependency. A record that does not fit the window yet is decoded again once the window has grown to twice its
size, so a record of n characters costs O(n) however long it is.
"""

from __future__ import annotations

import codecs
import itertools
import json
from pathlib import Path
from typing import Any, BinaryIO, Iterator

from sft.errors import DataError

CHUNK = 1 << 20  # characters read at a time (the window's usual size)
# an error this far from the window's end cannot come from the window cutting a value short ('1.' of '1.5', 'tru')
MARGIN = 64
KINDS = {"{": "dict", '"': "str", "t": "bool", "f": "bool", "n": "NoneType", "": "an empty file"}
_DECODER = json.JSONDecoder()


def json_list_rows(p: Path, path: str) -> Iterator[tuple[str, Any]]:
    """(location, record) pairs of a JSON list; a malformed list is a DataError naming its line and column."""
    with p.open("rb") as f:
        window = _Window(f, path)
        first = window.next_char()
        if first != "[":
            kind = KINDS.get(first, "a number" if first in "-0123456789" else repr(first))
            raise DataError(f"{path}: expected a JSON list of records, got {kind}")
        window.pos += 1
        if window.next_char() == "]":
            window.pos += 1
            return window.end()
        for i in itertools.count():
            yield f"{path}: record {i}", window.value()
            c = window.next_char()
            window.pos += 1
            if c == "]":
                return window.end()
            if c != ",":
                raise window.malformed(window.pos - 1, "Expecting ',' delimiter")


class _Window:
    """The text of a UTF-8 file from `pos` on, a chunk at a time, with what was dropped before it counted in lines
    and columns."""

    def __init__(self, f: BinaryIO, path: str) -> None:
        self.f, self.path = f, path
        self.decoder = codecs.getincrementaldecoder("utf-8-sig")("strict")
        self.buf, self.pos, self.eof = "", 0, False
        self.bytes_read = 0
        self.lines_dropped, self.column_dropped = 0, 0  # newlines before buf, characters after the last of them

    def more(self, chars: int = CHUNK) -> None:
        raw = self.f.read(max(chars, CHUNK))
        pending = len(self.decoder.getstate()[0])  # bytes of a character cut by the last read
        try:
            text = self.decoder.decode(raw, final=not raw)
        except UnicodeDecodeError as e:
            raise _utf8_error(self.f, self.path, self.bytes_read - pending + e.start) from None
        self.bytes_read += len(raw)
        self.eof = not raw
        self.buf += text

    def next_char(self) -> str:
        """The next non-whitespace character ('' at the end of the file), left at `pos`."""
        while True:
            while self.pos < len(self.buf) and self.buf[self.pos] in " \t\n\r":
                self.pos += 1
            if self.pos < len(self.buf) or self.eof:
                return self.buf[self.pos] if self.pos < len(self.buf) else ""
            self.more()

    def value(self) -> Any:
        while True:
            self.next_char()
            try:
                value, end = _DECODER.raw_decode(self.buf, self.pos)
                if end < len(self.buf) or self.eof:  # a number at the window's end may go on after it
                    self.pos = end
                    self._drop()
                    return value
            except json.JSONDecodeError as e:
                cut_short = e.pos >= len(self.buf) - MARGIN or e.msg.startswith("Unterminated string")
                if self.eof or not cut_short:
                    raise self.malformed(e.pos, e.msg) from None
            self.more(len(self.buf) - self.pos)  # the window doubles: a long record is decoded O(1) times

    def end(self) -> None:
        if self.next_char():
            raise self.malformed(self.pos, "Extra data after the list")

    def malformed(self, pos: int, msg: str) -> DataError:
        last = self.buf.rfind("\n", 0, pos)
        line = self.lines_dropped + self.buf.count("\n", 0, pos) + 1
        column = pos - last if last >= 0 else self.column_dropped + pos + 1
        return DataError(f"{self.path}:{line}: malformed JSON ({msg.removesuffix(' at')} at column {column})")

    def _drop(self) -> None:
        if self.pos < CHUNK:  # drop in large pieces: slicing the window costs its length
            return
        gone = self.buf[: self.pos]
        newlines = gone.count("\n")
        self.lines_dropped += newlines
        self.column_dropped = len(gone) - gone.rfind("\n") - 1 if newlines else self.column_dropped + len(gone)
        self.buf, self.pos = self.buf[self.pos:], 0


def _utf8_error(f: BinaryIO, path: str, offset: int) -> DataError:
    """The error for the byte at `offset` (not UTF-8), by line and byte column, as the other file types name it."""
    f.seek(0)
    line, line_start, at = 1, 0, 0
    while at < offset:  # counted a chunk at a time: the error may be far into a large file
        chunk = f.read(min(CHUNK, offset - at))
        line += chunk.count(b"\n")
        if b"\n" in chunk:
            line_start = at + chunk.rfind(b"\n") + 1
        at += len(chunk)
    byte, column = f.read(1), offset - line_start + 1
    return DataError(f"{path}:{line}: not UTF-8 text (byte 0x{byte[0]:02x} at column {column}); save the file as UTF-8")
