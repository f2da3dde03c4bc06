"""The console log: what a command prints, copied into its run directory (`<out_dir>/sft-<command>.log`).

Hydra makes that file for its own logging, which our commands do not use: they print. So rank 0 copies its
stdout and stderr there as they are written. Progress bars redraw a line with carriage returns; those redraws
stay on the terminal only, so the log holds the lines a reader wants (what was read, kept, trained, written,
the warnings, the error).
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, TextIO


class _Tee:
    """A text stream that writes to `stream` and, bar redraws left out, to `log`."""

    def __init__(self, stream: TextIO, log: TextIO) -> None:
        self._stream, self._log = stream, log

    def write(self, text: str) -> int:
        written = self._stream.write(text)
        if "\r" not in text and (text.strip() or text == "\n" and not self._after_bar):
            self._log.write(text)
            self._log.flush()
        self._after_bar = "\r" in text
        return written

    _after_bar = False

    def flush(self) -> None:
        self._stream.flush()

    def __getattr__(self, name: str) -> Any:  # isatty, fileno, encoding, ...: the terminal's
        return getattr(self._stream, name)


@contextmanager
def console_log(path: Path) -> Iterator[None]:
    """Copy stdout and stderr into `path` (appended: a resumed run keeps its earlier log) while the block runs;
    only on rank 0 of a torchrun job, and only where Hydra made the file (sft-merge has none)."""
    if int(os.environ.get("RANK", "0")) != 0 or not path.is_file():
        yield
        return
    with path.open("a", encoding="utf-8") as log:
        saved = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = _Tee(sys.stdout, log), _Tee(sys.stderr, log)  # type: ignore[assignment]
        try:
            yield
        finally:
            sys.stdout, sys.stderr = saved
