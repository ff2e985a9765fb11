"""Backfill a run's W&B run from its analytics log: what W&B lost, written again.

``events.jsonl`` survives a hard kill up to the last completed flush; W&B's run file
does not (``wandb-core`` buffers its writes, and a SIGKILL loses the buffer). After such
a kill, :func:`backfill_wandb` reads which history steps W&B's run files already hold,
and logs every PPO update, anomaly and level change of the other steps, and the final
summary if W&B lacks it, into the same W&B run (same id, ``resume="allow"``), through
the same :class:`~esper_telemetry.backends.wandb.WandBBackend` a live run uses, so the
rows are the ones the run would have written. A step W&B already holds is never
written twice, so backfilling again writes nothing.

Offline, W&B puts the resumed run in a new folder next to the first
(``wandb/offline-run-<time>-<id>``); ``wandb sync --id <id>`` on both folders uploads
them in order. Online, the resumed run starts at the step after the last one W&B's
servers hold; the updates below it are taken as held (W&B would drop them anyway).

No alert is raised for a backfilled anomaly: it is old news, and the count is logged.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from esper_telemetry.backends._wandb_file import read_run_file, run_folders
from esper_telemetry.backends.wandb import DEFAULT_FINISH_TIMEOUT_S, Mode, WandBBackend
from esper_telemetry.backends.wandb_keys import GROUPS, WandbKeys
from esper_telemetry.contracts import (
    AnomalyDetected,
    PPOUpdateCompleted,
    RunFinished,
    RunStarted,
    TelemetryEvent,
    TelemetryLevelChanged,
)

__all__ = ["Backfill", "WandbHolds", "backfill_wandb", "wandb_holds"]


@dataclass(frozen=True)
class WandbHolds:
    """What the local W&B run files of one run hold."""

    run_files: tuple[Path, ...]
    """Every ``run-<id>.wandb`` of the run under ``<run dir>/wandb``, oldest first."""
    steps: frozenset[int]
    """The step of every history row in them."""
    summary_keys: frozenset[str]
    project: str | None
    """The W&B project the run was created in (None if no file names one)."""
    mode: Mode | None
    """``offline`` if any file is an offline run's, ``online`` if all are online; None
    when there is no file."""
    keys: WandbKeys = field(default_factory=WandbKeys)
    """The key layout the run was logged with (its config's ``esper.layout``; the default
    layout for a run from before it was recorded)."""


@dataclass(frozen=True)
class Backfill:
    """What :func:`backfill_wandb` did."""

    run_id: str
    mode: Mode
    held_updates: int
    """PPO updates W&B already held (not written again)."""
    written_updates: int
    written_other: int
    """Anomalies and level changes written."""
    wrote_end: bool
    """The run's end (``RUN_FINISHED``: status, message, final summary) was written."""
    ended: bool
    """``events`` hold the run's end (a killed run has none)."""
    undelivered: int
    """Of what was written, events the new run file does not hold (offline)."""
    run_dir: Path | None = None
    """The W&B run folder written (None when nothing was missing)."""

    def describe(self) -> str:
        """One line for a person."""
        end = "" if self.ended else "; the run has no end in events.jsonl (it was killed)"
        if self.run_dir is None:
            return (
                f"run {self.run_id}: nothing to backfill, W&B holds all {self.held_updates} "
                f"updates{' and the run end' if self.ended else ''}{end}"
            )
        wrote = f"{_count(self.written_updates, 'missing update')}, " + _count(
            self.written_other, "anomaly or level change", "anomalies or level changes"
        )
        if self.wrote_end:
            wrote += " and the run end"
        line = (
            f"run {self.run_id}: wrote {wrote} into {self.run_dir} ({self.mode}); "
            f"{self.held_updates} updates were in W&B already{end}"
        )
        if self.undelivered:
            line += f"; but W&B's run file lacks {self.undelivered} of the events written"
        elif self.mode == "offline":
            line += "; `wandb sync` the run's folders to upload them"
        return line


def _count(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else (many or one + 's')}"


def wandb_holds(run_dir: str | os.PathLike[str], run_id: str) -> WandbHolds:
    """Read every local W&B run file of ``run_id`` under ``run_dir/wandb``."""
    folders = run_folders(Path(run_dir) / "wandb", run_id)
    files = tuple(p / f"run-{run_id}.wandb" for p in folders)
    steps: set[int] = set()
    summary: set[str] = set()
    project = None
    layout: dict[str, Any] | None = None
    for path in files:
        contents = read_run_file(path)
        steps |= contents.steps
        summary |= contents.summary_keys
        project = project or contents.project
        layout = layout or contents.layout
    mode: Mode | None = None
    if files:
        offline = any(p.parent.name.startswith("offline-run-") for p in files)
        mode = "offline" if offline else "online"
    return WandbHolds(files, frozenset(steps), frozenset(summary), project, mode, _keys_of(layout))


def _keys_of(layout: dict[str, Any] | None) -> WandbKeys:
    """The layout a run file recorded; the default one if none (or an unreadable one)."""
    if not layout:
        return WandbKeys()
    try:
        return WandbKeys(
            prefix=layout.get("prefix", ""),
            x_axis=layout.get("x_axis", "update"),
            groups=tuple(layout.get("log", GROUPS)),
        )
    except (TypeError, ValueError):
        return WandbKeys()


def backfill_wandb(
    run_dir: str | os.PathLike[str],
    events: Iterable[TelemetryEvent],
    *,
    mode: Mode | None = None,
    project: str | None = None,
    finish_timeout: float = DEFAULT_FINISH_TIMEOUT_S,
) -> Backfill:
    """Write into the W&B run of ``run_dir`` every event of ``events`` W&B lacks.

    Args:
        run_dir: The run's directory (its W&B files are under ``run_dir/wandb``).
        events: The run's events in file order, e.g.
            ``esper_telemetry.analytics.read_events(run_dir)``.
        mode: ``offline`` or ``online``; None: the mode of the run's W&B files.
        project: The W&B project; None: the one the run's W&B files name.
        finish_timeout: How long to wait for ``run.finish()``, in seconds.

    Raises:
        ValueError: ``events`` is empty or holds more than one run; there are no W&B
            files and no ``mode``; ``mode`` is ``disabled``.
        TimeoutError: W&B did not finish the run within ``finish_timeout``.
    """
    run_dir = Path(run_dir)
    events = list(events)
    run_id = _one_run(run_dir, events)
    holds = wandb_holds(run_dir, run_id)
    mode = mode or holds.mode
    if mode is None:
        raise ValueError(
            f"run {run_id} has no W&B run under {run_dir / 'wandb'} (was W&B off?); pass "
            "mode='offline' or 'online' (--mode) to create one"
        )
    if mode == "disabled":
        raise ValueError("mode='disabled' writes nothing; pass 'offline' or 'online'")
    ended = any(isinstance(e, RunFinished) for e in events)
    if not any(not _held(e, holds, 0) for e in events):
        updates = sum(1 for e in events if isinstance(e, PPOUpdateCompleted))
        return Backfill(run_id, mode, updates, 0, 0, False, ended, 0)

    backend = WandBBackend(
        project or holds.project,
        mode=mode,
        dir=run_dir,
        alert_on=(),
        resume=True,
        finish_timeout=finish_timeout,
        log=holds.keys.groups,
        prefix=holds.keys.prefix,
        x_axis=holds.keys.x_axis,
    )
    backend._open(run_id)
    floor = backend._last_step  # online: the resumed run's step; W&B drops lower ones
    try:
        written, other, wrote_end = _replay(backend, events, holds, floor)
    finally:
        backend.close()
    folder = backend._run_files[0].parent if backend._run_files else run_dir / "wandb"
    held_updates = sum(
        1 for e in events if isinstance(e, PPOUpdateCompleted) and _held(e, holds, floor)
    )
    return Backfill(
        run_id, mode, held_updates, written, other, wrote_end, ended, backend.undelivered(), folder
    )


def _one_run(run_dir: Path, events: list[TelemetryEvent]) -> str:
    """The run id of ``events``, which must be one run's."""
    if not events:
        raise ValueError(f"{run_dir} holds no events: nothing to backfill")
    run_id = events[0].run_id
    others = sorted({e.run_id for e in events} - {run_id})
    if others:
        raise ValueError(
            f"{run_dir} holds events of more than one run ({run_id}, {', '.join(others)}); "
            "backfill one run at a time"
        )
    return run_id


def _replay(
    backend: WandBBackend, events: list[TelemetryEvent], holds: WandbHolds, floor: int
) -> tuple[int, int, bool]:
    """Hand the backend every event W&B lacks; (updates, others, run end) written."""
    written = other = 0
    wrote_summary = False
    for event in events:
        held = _held(event, holds, floor)
        match event:
            case RunStarted():
                backend.handle(event)  # the config and notes, in every run folder
            case RunFinished() if not held:
                backend.handle(event)  # the run's end: its summary (and the anomaly table)
                wrote_summary = True
            case AnomalyDetected(payload=p) if held:
                backend._anomalies[p.anomaly.type.value] += 1  # the count goes on from there
            case PPOUpdateCompleted() if not held:
                backend.handle(event)
                written += 1
            case AnomalyDetected() | TelemetryLevelChanged() if not held:
                backend.handle(event)
                other += 1
            case _:
                pass
    return written, other, wrote_summary


def _held(event: TelemetryEvent, holds: WandbHolds, floor: int) -> bool:
    """W&B already holds this event (or would drop it: a step below ``floor``)."""
    if isinstance(event, RunFinished):
        return holds.keys.run("status") in holds.summary_keys
    if isinstance(event, RunStarted):
        return True  # config and notes are written again: the same values, no step
    return event.update in holds.steps or event.update < floor
