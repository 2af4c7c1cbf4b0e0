"""Publishing a finished output: flushed to disk, moved into place by rename, never half-done.

Every output (labels, probabilities, model files) is written under a hidden temporary sibling name
and published here. The temporary names say which run made them (host and process), so the next run
on the same output can tell the leftovers of a killed run from those of a run still going, remove or
restore the first and report the second. The renames themselves run with Ctrl-C and SIGTERM held
back: an interruption can come before or after them, never between the old result going and the new
one arriving.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import socket
import threading
import uuid
import warnings
from contextlib import contextmanager
from pathlib import Path

from .io import _suffix

__all__ = ["PendingOutput", "atomic_path", "publish", "uninterruptible", "clean_stale", "resolve_link",
           "InterruptedAfterCommit", "StaleOutputWarning", "temporary_name"]

_HOST = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:6]


class InterruptedAfterCommit(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) arrived while outputs were being moved into place: they were all written.

    Attributes
    ----------
    paths : list of Path
        The outputs that were published.
    """

    def __init__(self, paths):
        super().__init__(f"interrupted after writing {', '.join(map(str, paths))}")
        self.paths = list(paths)


class StaleOutputWarning(UserWarning):
    """A temporary file left by an interrupted run next to an output: removed, restored or reported."""


def _stem(path: Path) -> tuple[str, str]:
    ext = _suffix(path)
    return (path.name[: len(path.name) - len(ext)] if ext else path.name), ext


def temporary_name(path, tag: str = "partial") -> Path:
    """A hidden sibling of ``path`` that keeps its extension and names the run writing it."""
    path = Path(path)
    stem, ext = _stem(path)
    return path.with_name(f".{stem}.{tag}-{_HOST}-{os.getpid()}-{uuid.uuid4().hex[:6]}{ext}")


def resolve_link(path) -> Path:
    """Where an output named through a symlink really goes: its target (the link itself is kept)."""
    path = Path(path)
    return Path(os.path.realpath(path)) if path.is_symlink() else path


def _owner_alive(host: str | None, pid: int | None) -> bool | None:
    """True/False when the run that made a temporary file is known to be alive/dead, else None."""
    if host != _HOST or pid is None:
        return None  # another machine (a shared file system) or an older name: cannot tell
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _remove(path: Path):
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            path.unlink()
        except FileNotFoundError:
            pass


def clean_stale(path) -> list[str]:
    """Deal with the temporary files that interrupted runs left next to the output ``path``.

    Those of a run that is gone (same machine, process no longer alive) are removed; a previous
    result that a killed run had moved aside and not yet replaced is put back when ``path`` is
    missing; those that may belong to a run still going (or on another machine) are left alone and
    reported with their size. Each action is reported as a `StaleOutputWarning`; the messages are
    also returned.
    """
    path = Path(path)
    stem, ext = _stem(path)
    pattern = re.compile(rf"^\.{re.escape(stem)}\.(partial|old)-(?:([0-9a-f]{{6}})-(\d+)-)?[0-9a-f]{{6,8}}"
                         rf"{re.escape(ext)}(\.npy)?$")
    try:
        siblings = sorted(path.parent.iterdir()) if path.parent.is_dir() else []
    except OSError:
        return []
    messages = []
    for entry in siblings:
        match = pattern.match(entry.name)
        if match is None:
            continue
        kind, host, pid = match.group(1), match.group(2), match.group(3)
        alive = _owner_alive(host, int(pid) if pid else None)
        size = _size(entry) / 2**20
        if alive is False and kind == "old" and not (path.exists() or path.is_symlink()):
            os.replace(entry, path)
            messages.append(f"restored {str(path)!r}, which a killed run had moved aside ({entry.name})")
        elif alive is False:
            _remove(entry)
            messages.append(f"removed {entry.name} ({size:.1f} MiB), left by an interrupted run")
        elif alive is None:
            messages.append(f"{entry.name} ({size:.1f} MiB) next to {path.name} was left by an interrupted "
                            "run (or one still going elsewhere): delete it if no run is writing there")
    for message in messages:
        warnings.warn(message, StaleOutputWarning, stacklevel=2)
    return messages


def _fsync(path: Path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot sync a folder: the data itself was synced
        pass
    finally:
        os.close(fd)


def _flush_to_disk(path: Path):
    """Make a finished file (or every file of a folder) durable before the rename that publishes it."""
    if path.is_dir():
        for folder, _, files in os.walk(path):
            for name in files:
                _fsync(Path(folder) / name)
            _fsync(Path(folder))
    elif path.exists():
        _fsync(path)


@contextmanager
def uninterruptible(paths=()):
    """Hold back Ctrl-C and SIGTERM for a few renames (their handlers run in the main thread).

    A signal that arrives meanwhile is handled at the end, as it would have been: when the block
    completed and ``paths`` are given, a Ctrl-C comes as `InterruptedAfterCommit` naming them, so the
    caller never reports "nothing was written". Elsewhere than in the main thread signals never
    interrupt anyway. (Training also holds Ctrl-C back for each optimizer update.)
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    heard = []
    previous = {s: signal.signal(s, lambda signum, frame: heard.append(signum)) for s in (signal.SIGINT, signal.SIGTERM)}
    completed = False
    try:
        yield
        completed = True
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if completed:  # after a failure its own error goes on; the interruption wanted that anyway
            for signum in dict.fromkeys(heard):
                try:
                    _handle(signum, previous[signum])
                except KeyboardInterrupt as exc:
                    if not paths or isinstance(exc, InterruptedAfterCommit):
                        raise
                    raise InterruptedAfterCommit(paths) from None


def _handle(signum, handler):
    """Do what the handler in place would have done with a signal that was held back."""
    if callable(handler):
        handler(signum, None)
    elif handler == signal.SIG_DFL:
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        signal.raise_signal(signum)


def publish(tmp, dest):
    """Flush ``tmp`` to disk and move it onto ``dest``; an existing folder (zarr) is swapped out.

    The renames run uninterruptible; a killed process can leave the previous folder under a hidden
    ``.old`` name, which `clean_stale` puts back. The previous folder is removed last (finishing that
    removal even when interrupted, so no half-deleted hidden folder is left).
    """
    tmp, dest = Path(tmp), Path(dest)
    _flush_to_disk(tmp)
    old = None
    with uninterruptible([dest]):
        if dest.is_dir() and not dest.is_symlink():
            if not tmp.is_dir():
                raise ValueError(f"{str(dest)!r} is a folder: choose a file name for the output")
            old = temporary_name(dest, "old")
            os.replace(dest, old)
            try:
                os.replace(tmp, dest)
            except BaseException:
                os.replace(old, dest)
                raise
        else:
            os.replace(tmp, dest)
        _fsync(dest.parent)
    if old is not None:
        try:
            _remove(old)
        except BaseException:
            _remove(old)  # an interrupted removal is finished, then the interruption goes on
            raise


class PendingOutput:
    """An output being written, as a context manager: leaving the block normally ``commit()``s it,
    an exception (Ctrl-C included) or a failed commit ``abort()``s it. Subclasses define both."""

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            try:
                self.commit()
            except BaseException:  # a failed commit (disk full, Ctrl-C) leaves no temporary files either
                self.abort()
                raise
        else:
            self.abort()
        return False


@contextmanager
def atomic_path(path):
    """A temporary sibling path to write; moved onto ``path`` only if the block ends without an error.

    Readers never see a half-written file and an existing file is kept until the new one is complete;
    on an error or an interruption (KeyboardInterrupt included) the temporary file or folder is removed.
    Leftovers of earlier interrupted runs on the same path are cleaned first (`clean_stale`).

    Examples
    --------
    >>> with atomic_path("model.pt") as tmp:  # doctest: +SKIP
    ...     torch.save(payload, tmp)
    """
    path = resolve_link(path)
    if path.is_dir() and _suffix(path) != ".zarr":
        raise ValueError(f"{str(path)!r} is a folder: choose a file name for the output")
    clean_stale(path)
    tmp = temporary_name(path)
    try:
        yield tmp
        publish(tmp, path)
    finally:
        if tmp.exists() or tmp.is_symlink():
            _remove(tmp)
