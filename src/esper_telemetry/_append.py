"""Appending whole lines to a file that a full disk or a killed writer may cut short.

``LineAppender`` hands each line to the operating system in one ``write`` on an
``O_APPEND`` descriptor, with no buffer in this process: when ``append`` returns the
line is in the file, and when it raises (``ENOSPC``, ``EFBIG``) the line is not, apart
from a fragment a short write may have left at the end. That fragment is never
rewritten; the next line written starts with a newline, so the fragment stands alone
as one bad line that readers skip and report, and every whole line before and after
it stays intact. A file whose last line a killed writer left torn is treated the same.

A line that failed is never retried later, so "lines whose ``append`` raised" is
exactly "lines missing from the file", which is what a backend reports as failed.
"""

from __future__ import annotations

import os
from pathlib import Path


class LineAppender:
    """An append-only file taking one whole line per :meth:`append`; not thread-safe.

    Args:
        path: The file; created (``0o644`` less the umask) when missing, never truncated.

    Raises:
        OSError: the file cannot be opened or read.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._fd: int | None = os.open(
            self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644
        )
        # A torn last line (a killed writer, a failed write) must not swallow our first one.
        self._needs_newline = not _ends_with_newline(self.path)

    def reread_end(self) -> None:
        """Look again at how the file ends (after another hand truncated a torn line)."""
        self._needs_newline = not _ends_with_newline(self.path)

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._fd is None

    def append(self, line: bytes) -> None:
        """Write ``line`` (which ends with a newline) to the end of the file.

        Raises:
            OSError: the write failed; the line is not in the file, except perhaps a
                fragment of it that the next line's leading newline will cut off.
            RuntimeError: the file was closed.
        """
        fd = self._fd
        if fd is None:
            raise RuntimeError(f"append to {str(self.path)!r} after close()")
        data = b"\n" + line if self._needs_newline else line
        view = memoryview(data)
        done = 0
        try:
            # One write per line; the loop only continues a short write (a signal, the
            # last free bytes of a disk), whose next attempt usually raises the error.
            while done < len(data):
                done += os.write(fd, view[done:])
        finally:
            if done == len(data):
                self._needs_newline = False
            elif done > 0:
                self._needs_newline = True  # a fragment is in the file: end it first

    def fsync(self) -> None:
        """Make every line appended so far durable (``os.fsync``); a no-op once closed."""
        if self._fd is not None:
            os.fsync(self._fd)

    def close(self) -> None:
        """Close the file. Idempotent."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


def _ends_with_newline(path: Path) -> bool:
    with path.open("rb") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() == 0:
            return True
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"
