"""Standard streams for the command line whose reader may go away."""
from __future__ import annotations

import os

__all__ = ["ReaderMayLeave"]


class ReaderMayLeave:
    """stdout/stderr whose reader may go away (``napari-unet predict ... 2>&1 | head``): a closed pipe
    silences the messages, never the run (it ended in an abort, with no output)."""

    def __init__(self, stream):
        self._stream = stream

    def _closed_pipe(self):
        try:  # later writes, and the flush at exit, go nowhere instead of failing again
            os.dup2(os.open(os.devnull, os.O_WRONLY), self._stream.fileno())
        except (OSError, ValueError, AttributeError):
            pass

    def write(self, text):
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._closed_pipe()
            return len(text)

    def flush(self):
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._closed_pipe()

    def __getattr__(self, name):
        return getattr(self._stream, name)
