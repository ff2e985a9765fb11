"""Writing a file so that readers see the old one or the new one, never half of it."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary path beside ``target``, renamed onto it when the block ends without error.

    Write the whole file to the path yielded; on an exception the temporary file is
    removed and ``target`` is left as it was. Missing parent folders are created, and the
    file gets the permissions of any new file (``0o666`` less the umask), not the private
    ``0o600`` of a temporary file.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    os.chmod(tmp, 0o666 & ~_umask())
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(target: str | os.PathLike[str], content: bytes) -> None:
    """Write ``content`` to ``target`` atomically (see :func:`atomic_path`)."""
    with atomic_path(target) as tmp:
        tmp.write_bytes(content)


def remove_if_empty(path: Path) -> None:
    """Remove ``path`` if it is an empty file. A file already gone is fine: the ranks of
    one run share a folder, and another may have removed it first."""
    with contextlib.suppress(FileNotFoundError):
        if path.stat().st_size == 0:
            path.unlink()


def _umask() -> int:
    # Reading the umask with os.umask() means setting it, which races with other threads
    # creating files; Linux shows it in /proc. Elsewhere, assume the usual 022.
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022
