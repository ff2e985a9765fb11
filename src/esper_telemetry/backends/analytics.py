"""AnalyticsCollector: every event, one strict-JSON line each, appended to ``events.jsonl``.

The file is the run's source of truth; :mod:`esper_telemetry.analytics` reads it back
(``read_events``) and queries it with DuckDB (``connect``). This module needs no
third-party library beyond the contracts.

Durability, per ``fsync`` policy:

* every ``handle(event)`` hands its line to the operating system in one ``write`` on
  an ``O_APPEND`` descriptor (no buffer in this process), so a crash of the process,
  ``kill -9`` included, loses no event that ``handle`` returned from;
* ``"flush"`` (default): ``flush()`` and ``close()`` call ``os.fsync``, so what they
  cover also survives a crash of the machine;
* ``"every_event"``: ``os.fsync`` after every line as well;
* ``"never"``: no ``fsync``; the OS writes the data back when it likes.

A write that fails part-way (disk full, file size limit) raises from ``handle`` and
can leave a fragment of its line at the end of the file. The collector never rewrites
bytes it already wrote: the next line it writes starts with a newline, so the fragment
stands alone as one bad line that readers skip and report, and every whole line before
and after it stays intact. The same applies to a file whose last line a killed
process left torn.

>>> import tempfile
>>> from esper_telemetry.contracts import PPOUpdateCompleted, PPOUpdatePayload
>>> with tempfile.TemporaryDirectory() as run_dir:
...     with AnalyticsCollector(run_dir) as collector:
...         collector.handle(PPOUpdateCompleted(update=0, payload=PPOUpdatePayload(
...             policy_loss=0.1, value_loss=float("nan"), entropy=0.7)))
...     text = collector.path.read_text(encoding="utf-8")
>>> '"value_loss":"NaN"' in text, text.count("\\n")
(True, 1)
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Final, Literal, Self, get_args

from esper_telemetry._append import LineAppender
from esper_telemetry._files import remove_if_empty
from esper_telemetry._tail import claim
from esper_telemetry.contracts import EventBase, RunLayout, TelemetryEvent
from esper_telemetry.hub import Backend

if TYPE_CHECKING:
    from esper_telemetry.hub import TelemetryHub

__all__ = ["AnalyticsCollector", "FsyncPolicy"]

#: When the collector calls ``os.fsync``: at ``flush()``, after every event, or never.
FsyncPolicy = Literal["flush", "every_event", "never"]

_POLICIES: Final[tuple[str, ...]] = get_args(FsyncPolicy)


class AnalyticsCollector(Backend):
    """A backend appending every event to ``run_dir/events.jsonl`` as one JSON line.

    Each line is ``event.model_dump_json()`` plus ``"\\n"``: strict JSON, with NaN and
    ±Inf written as "NaN", "Infinity", "-Infinity", so every float reads back exactly.
    Thread-safe.

    A run directory belongs to one run: subscribed to a hub, the collector refuses a
    file that already holds events (another run's, or an earlier run with the same id),
    unless ``resume`` is set and the file holds the hub's run; the hub then continues
    that run's ``seq`` and update index (:meth:`TelemetryHub.resume_after`) after a torn
    last line, if any, is dropped. Nothing written is otherwise ever modified. (Used
    without a hub, ``handle`` appends to whatever is there.)

    Args:
        run_dir: The run's directory; created (with its parents) when missing.
        fsync: ``"flush"`` (default): ``flush()`` makes every event handled so far
            durable with ``os.fsync``; ``"every_event"``: each ``handle`` does;
            ``"never"``: nothing calls ``os.fsync``.
        resume: Continue the run already in ``run_dir`` (it must be the hub's run id).

    Raises:
        TypeError: ``run_dir`` is not a path.
        ValueError: ``fsync`` is not one of the three policies, or ``run_dir`` exists
            and is not a directory.
        OSError: the directory or the file cannot be created or opened.
    """

    name = "analytics"

    def __init__(
        self, run_dir: str | os.PathLike[str], *, fsync: FsyncPolicy = "flush", resume: bool = False
    ) -> None:
        if not isinstance(resume, bool):
            raise ValueError(f"resume must be True or False, got {resume!r}")
        if fsync not in _POLICIES:
            raise ValueError(
                f"fsync must be one of {', '.join(map(repr, _POLICIES))}, got {fsync!r}"
            )
        if not isinstance(run_dir, str | os.PathLike):
            raise TypeError(f"run_dir must be a path, got {type(run_dir).__name__}")
        if os.fspath(run_dir) == "":
            raise ValueError("run_dir must not be empty")
        directory = Path(run_dir)
        if directory.exists() and not directory.is_dir():
            raise ValueError(f"run_dir: {str(directory)!r} exists and is not a directory")
        directory.mkdir(parents=True, exist_ok=True)
        self._dir = directory
        self._path = RunLayout(directory).events
        self._fsync: FsyncPolicy = fsync
        self._lock = threading.Lock()
        self._new_file = not self._path.exists()
        # One write per line; a torn last line stays a line apart (see LineAppender).
        self._file: LineAppender | None = LineAppender(self._path)
        self._dir_synced = False
        self._written = 0
        self._resume = resume

    # -- properties ---------------------------------------------------------------------

    @property
    def path(self) -> Path:
        """The events file: ``run_dir / "events.jsonl"``."""
        return self._path

    @property
    def fsync(self) -> FsyncPolicy:
        """The fsync policy."""
        return self._fsync

    @property
    def events_written(self) -> int:
        """How many events this collector wrote whole (failed writes not counted)."""
        return self._written

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._file is None

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"AnalyticsCollector({str(self._path)!r}, fsync={self._fsync!r}, {state})"

    # -- Backend ------------------------------------------------------------------------

    def on_subscribe(self, hub: TelemetryHub) -> None:
        """Refuse a file of another run (or of an earlier run with this id) unless
        resuming; when resuming, continue the hub where the file ends.

        Raises:
            ValueError: the file holds events this hub may not append to (the message
                names the directory, the run found there and the ways out).
        """
        with self._lock:
            if hub.per_rank_files:
                self._reopen(RunLayout(self._dir).events_of_rank(hub.rank))
            position = claim(
                self._path, hub.run_id, resume=self._resume, live=hub.stats().emitted > 0
            )
            if self._file is not None:
                self._file.reread_end()  # a resumed run's torn tail may be gone
        if position is not None:
            hub.resume_after(position.seq, position.update)

    def handle(self, event: TelemetryEvent) -> None:
        """Append one event as one line; with ``fsync="every_event"``, fsync it too.

        Raises:
            TypeError: ``event`` is not a ``TelemetryEvent``.
            RuntimeError: the collector is closed.
            OSError: the write or the fsync failed (the hub counts the failure). Lines
                already in the file are untouched; a fragment of this one may remain and
                is isolated by the next write.
        """
        if not isinstance(event, EventBase):
            raise TypeError(f"event must be a TelemetryEvent, got {type(event).__name__}")
        line = event.model_dump_json().encode("utf-8") + b"\n"
        with self._lock:
            file = self._open_file("handle")
            file.append(line)
            self._written += 1
            if self._fsync == "every_event":
                self._sync(file)

    def flush(self) -> None:
        """Make every event handled so far durable (``os.fsync``), unless ``fsync="never"``.

        Every line is already in the operating system when ``handle`` returns; with
        ``"never"`` there is nothing more to do. A no-op once closed.

        Raises:
            OSError: the fsync failed; what it should have covered may not be durable.
        """
        with self._lock:
            if self._file is not None and self._fsync != "never":
                self._sync(self._file)

    def close(self) -> None:
        """Flush (per the policy) and close the file. Idempotent.

        Raises:
            OSError: the final fsync failed; the file is closed all the same.
        """
        with self._lock:
            file, self._file = self._file, None
            if file is None:
                return
            try:
                if self._fsync != "never":
                    self._sync(file)
            finally:
                file.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- internals ----------------------------------------------------------------------

    def _reopen(self, path: Path) -> None:
        """Write to ``path`` instead (a rank's own file), before any event was written;
        an ``events.jsonl`` this collector created, still empty, is removed."""
        if path == self._path or self._file is None or self._written:
            return
        self._file.close()
        self._file = None
        if self._new_file:
            remove_if_empty(self._path)
        self._path = path
        self._new_file = not path.exists()
        self._file = LineAppender(path)

    def _open_file(self, what: str) -> LineAppender:
        if self._file is None:
            raise RuntimeError(
                f"{what}() on a closed AnalyticsCollector ({str(self._path)!r}); "
                "create a new collector to append more events"
            )
        return self._file

    def _sync(self, file: LineAppender) -> None:
        file.fsync()
        if self._new_file and not self._dir_synced:
            # A new file is durable only once its directory entry is.
            _fsync_directory(self._dir)
            self._dir_synced = True


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
