"""A full disk: every count matches what is on disk, and each failing backend says so in
one line.

How a full disk is made here:

* ``RLIMIT_FSIZE`` (any user): ``esper ppo`` runs with a small soft limit on the size of
  every file it writes, so a write past it fails with EFBIG (SIGXFSZ is ignored in the
  child, so it is not killed). The hard limit stays unlimited, so the parent can lift
  the limit mid-run with ``prlimit``: the disk "has room again".
* a small tmpfs (root only, else skipped): a real ``ENOSPC``, filled by the test with a
  filler file once the run is under way, and freed again (or not).
* W&B's service process (``wandb-core``) started under ``RLIMIT_FSIZE``: it cannot write
  the run file past the limit, logs that to its own debug log only and tells the SDK
  nothing; the backend finds the loss by reading the run file at close.

The structured log is limited like the analytics log (the limit applies to every file),
so "the other backends go on" means what does not write a file: training, the anomaly
escalator, the summary and the exit status.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import re
import resource
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from esper_telemetry import TelemetryHub, emit_ppo_update_event
from esper_telemetry.contracts import (
    RunFinished,
    RunFinishedPayload,
    RunLayout,
    RunStarted,
    RunStartedPayload,
)
from tests.reliability.children import (
    SMALL,
    esper_ppo,
    kinds,
    log_kinds,
    log_records,
    read_back,
    start,
    wait_for_updates,
)
from tests.wandb_offline import history, inspect_run, of_type, offline_wandb, run_dir_of

LIMIT = 5000  # bytes: the run's first ~4 updates fit
UPDATES = 8
#: RUN_STARTED, 8 updates, the injected NaN's anomaly and level change, RUN_FINISHED.
EMITTED = 1 + UPDATES + 2 + 1
EFBIG = "OSError: [Errno 27] File too large"
ENOSPC = "OSError: [Errno 28] No space left on device"
#: The one line a failing backend prints (the hub's first-failure record).
FAILED_LINE = re.compile(
    r"error: telemetry subscriber '(\w+)' raised handling \w+ seq=(\d+); "
    r"the other subscribers are unaffected \((OSError: \[Errno \d+\] [^)]+)\)"
)


def file_size_limit(limit: int) -> Callable[[], None]:
    """A ``preexec_fn``: files of at most ``limit`` bytes (soft limit), SIGXFSZ ignored."""

    def limit_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    return limit_files


def test_a_file_size_limit_is_reported_damages_nothing_written_and_training_goes_on(
    tmp_path: Path,
) -> None:
    """Exit 4 naming both logs, each failure count equal to the events missing from its
    file; one line per failing backend on stderr, no traceback; training completes and
    the escalator still catches the NaN injected after the logs died; every line written
    before the limit reads back, with only the cut-off line reported (torn)."""
    run_dir = tmp_path / "runs" / "full"
    argv = esper_ppo(tmp_path, "full", "--wandb", "disabled", "--episodes", str(UPDATES))
    # At the last update, so the NaN trips exactly one anomaly (injected earlier, whether
    # the next update still carries it depends on where the envs' episodes end).
    argv += ["--inject-fault", f"nan@{UPDATES - 1}", *SMALL]
    child = Child(start(argv, tmp_path, preexec_fn=file_size_limit(LIMIT)))
    out, err = child.finish(timeout=120)
    assert child.proc.returncode == 4, err

    events, bad = read_back(run_dir)
    written = len(events)
    assert 0 < written < EMITTED
    assert kinds(events) == [
        (0, "RUN_STARTED", 0),
        *[(k + 1, "PPO_UPDATE_COMPLETED", k) for k in range(written - 1)],
    ]
    assert [(b.line_number, b.torn) for b in bad] in ([], [(written + 1, True)])
    assert RunLayout(run_dir).events.stat().st_size <= LIMIT
    records, broken = log_records(run_dir)
    assert log_kinds(records) == kinds(events)[: len(records)]
    assert len(broken) <= 1

    lost = {"analytics": EMITTED - written, "structlog": EMITTED - len(records)}
    verdict = "esper ppo: backend failed to deliver everything: " + "; ".join(
        f"{name} (lost {n}: failed {n}, dropped 0, abandoned 0, undelivered 0, last error: {EFBIG})"
        for name, n in lost.items()
    )
    assert sorted(err.splitlines()) == sorted(
        [
            f"error: telemetry subscriber 'analytics' raised handling PPO_UPDATE_COMPLETED "
            f"seq={written}; the other subscribers are unaffected ({EFBIG})",
            f"error: telemetry subscriber 'structlog' raised handling PPO_UPDATE_COMPLETED "
            f"seq={len(records)}; the other subscribers are unaffected ({EFBIG})",
            f"critical: LSTM anomaly lstm_nan at update {UPDATES - 1}: "
            "policy: LSTM state holds NaN",
            verdict,
        ]
    )
    assert f"full: completed, {UPDATES} updates" in out
    assert "anomalies        lstm_nan x1" in out
    assert f"anomaly-escalator delivered {EMITTED}, failed 0, dropped 0" in out
    assert f"analytics        delivered {written}, failed {EMITTED - written}" in out
    assert f"structlog        delivered {len(records)}, failed {EMITTED - len(records)}" in out


def test_a_disk_that_has_room_again_mid_run_loses_exactly_the_events_counted_failed(
    tmp_path: Path,
) -> None:
    """The file size limit is lifted once both logs have failed: each log then holds every
    event but the ones its backend counted as failed (none of them written late), the
    cut-off line on a line of its own, and the events after the limit, RUN_FINISHED
    included; stderr has one line per failing backend and the verdict."""
    emitted = UPDATES + 2
    run_dir = tmp_path / "runs" / "room"
    argv = esper_ppo(tmp_path, "room", "--wandb", "disabled", "--episodes", str(UPDATES))
    # 2,500 bytes: RUN_STARTED and about one update fit, so both logs fail early.
    child = Child(start([*argv, *SMALL], tmp_path, preexec_fn=file_size_limit(2500)))
    try:
        child.wait_for_stderr(lambda lines: len(failed_lines(lines)) == 2, timeout=120)
        resource.prlimit(child.proc.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY,) * 2)
    finally:
        out, err = child.finish(timeout=120)
    assert child.proc.returncode == 4, err

    events, bad = read_back(run_dir)
    records, broken = log_records(run_dir)
    on_disk = {
        "analytics": [e.seq for e in events],
        "structlog": [r["seq"] for r in records],
    }
    failed = {name: int(n) for name, n in summary_counts(out, "failed").items()}
    first_failed = {name: int(seq) for name, seq, _ in failed_lines(err.splitlines())}
    for name, seqs in on_disk.items():
        # What failed is one block of events from the first failure on; all else is there.
        gap = range(first_failed[name], first_failed[name] + failed[name])
        assert seqs == [s for s in range(emitted) if s not in gap], name
    assert [(b.torn, b.line_number) for b in bad] in ([], [(False, first_failed["analytics"] + 1)])
    assert len(broken) <= 1
    assert [e.event_type.value for e in events[-1:]] == ["RUN_FINISHED"]
    assert [r["event"] for r in records[-1:]] == ["RUN_FINISHED"]
    assert "Traceback" not in err
    assert len(err.splitlines()) == 3


def test_rows_wandb_core_could_not_write_are_reported_undelivered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """wandb-core under a file size limit keeps only the first rows in the run file and
    tells the SDK nothing; the backend counts every event the file lacks as undelivered
    (hub stats: lost, not lossless) and logs one warning naming the file and W&B's error."""
    from esper_telemetry.backends.wandb import WandBBackend

    updates, limit = 40, 24_000
    # Large rows (~1.3 KiB each), so that the limit falls mid-run.
    metrics = {"policy_loss": 0.1, "value_loss": 0.2, "entropy": 0.3}
    metrics |= {f"extra_{i:03d}": i / 7 for i in range(60)}
    with offline_wandb(tmp_path, monkeypatch) as wandb_dir, TelemetryHub("wbfull") as hub:
        with wandb_core_file_size_limit(limit):  # wandb-core starts at subscribe
            hub.subscribe(WandBBackend("esper-tests", dir=wandb_dir))
        hub.emit(RunStarted(update=0, payload=RunStartedPayload(config={"lr": 0.1})))
        for update in range(updates):
            emit_ppo_update_event(hub, update=update, metrics=metrics)
        hub.emit(RunFinished(update=updates - 1, payload=RunFinishedPayload(status="completed")))
        stats = hub.close(timeout=60)

    run_dir = run_dir_of(wandb_dir, "wbfull")
    records = inspect_run(run_dir)
    held = [row["_step"] for row in history(records)]
    statuses = [u for s in of_type(records, "summary") for u in s["update"] if "run/status" in u]
    assert 0 < len(held) < updates
    assert (statuses, of_type(records, "exit")) == ([], [])
    assert held == list(range(len(held)))
    missing = updates - len(held) + 1  # the rows past the limit, and RUN_FINISHED's status
    (sub,) = stats.subscribers
    assert (sub.delivered, sub.failed, sub.undelivered, sub.lost, stats.lossless) == (
        updates + 2,
        0,
        missing,
        missing,
        False,
    )
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    run_file = run_dir / "run-wbfull.wandb"
    assert [w.split(" (wandb-core: ")[0] for w in warnings] == [
        f"WandBBackend: W&B's run file {run_file} holds {len(held)} of the {updates} rows it "
        f"was given and no exit record; {missing} events were not written"
    ]
    assert "file too large" in warnings[0]


@pytest.mark.soak
def test_a_full_disk_mid_run_at_random_moments_reports_what_is_on_disk(
    tmp_path: Path,
) -> None:
    """20 runs of `esper ppo --wandb offline` on a 4 MiB tmpfs filled at a random update
    and freed again after a random time (or only after the run): for each of W&B, the
    analytics log and the structured log, the events it reported lost are exactly the
    events its files lack; stderr holds one line per failing backend and the verdict."""
    trials = 20
    rng = random.Random(10)
    held, figures = 0, []
    for trial in range(trials):
        fill_at = rng.randint(1, 25)
        free_after = rng.choice([None, rng.uniform(0.5, 8.0)])
        with tmpfs(tmp_path / f"mnt{trial}", "4m") as mnt:
            figure = full_disk_trial(tmp_path, mnt, fill_at, free_after)
        figures.append(figure)
        held += figure["held"]
        with (tmp_path / "figures.txt").open("a") as kept:  # the figures, trial by trial
            kept.write(f"{figure}\n")
    assert (held, [f for f in figures if not f["held"]]) == (trials, [])


# --------------------------------------------------------------------------- helpers


class Child:
    """A running child whose stdout and stderr are read by threads as they arrive."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.out: list[str] = []
        self.err: list[str] = []
        self._changed = threading.Condition()
        self._readers = [
            threading.Thread(target=self._read, args=(proc.stdout, self.out), daemon=True),
            threading.Thread(target=self._read, args=(proc.stderr, self.err), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, stream: Any, into: list[str]) -> None:
        for line in stream:
            with self._changed:
                into.append(line)
                self._changed.notify_all()

    def wait_for_stderr(self, done: Callable[[list[str]], bool], timeout: float) -> None:
        """Wait until ``done(stderr lines so far)``; AssertionError if the child exits first."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not done([line.rstrip("\n") for line in self.err]):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"child exited or timed out: {''.join(self.err)}")
                self._changed.wait(0.1)

    def finish(self, timeout: float) -> tuple[str, str]:
        """Wait for the child (killing it if it overstays); its whole stdout and stderr."""
        try:
            self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            for reader in self._readers:
                reader.join(timeout=10)
            for stream in (self.proc.stdout, self.proc.stderr):
                if stream is not None:
                    stream.close()
        return "".join(self.out), "".join(self.err)


def failed_lines(lines: list[str]) -> list[tuple[str, str, str]]:
    """(backend, first failed seq, error) of each one-line failure report."""
    return [m.groups() for line in lines if (m := FAILED_LINE.fullmatch(line))]  # type: ignore[misc]


def summary_counts(out: str, field: str) -> dict[str, str]:
    """``field`` (delivered, failed, undelivered...) of each backend in the run summary."""
    found = re.findall(rf"^  (\S+) +delivered \d+.*?\b{field} (\d+)", out, re.MULTILINE)
    return dict(found)


@contextlib.contextmanager
def wandb_core_file_size_limit(limit: int) -> Iterator[None]:
    """While in the block, processes started here (wandb-core) inherit a file size limit
    of ``limit`` bytes and ignore SIGXFSZ; this process's own limit is restored after."""
    before = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, before[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, before)
        signal.signal(signal.SIGXFSZ, previous)


@contextlib.contextmanager
def tmpfs(mountpoint: Path, size: str) -> Iterator[Path]:
    """A fresh tmpfs of ``size`` at ``mountpoint``; skips the test where it cannot mount."""
    mountpoint.mkdir(parents=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mountpoint)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if mounted.returncode != 0:
        pytest.skip(f"a full disk needs a tmpfs mount (root): {mounted.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], timeout=30)


def fill(directory: Path) -> Path:
    """A file taking every free byte of the file system ``directory`` is on."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for chunk in (1 << 20, 4096, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * chunk)
    finally:
        os.close(fd)
    return filler


def full_disk_trial(
    tmp_path: Path, mnt: Path, fill_at: int, free_after: float | None
) -> dict[str, Any]:
    """One `esper ppo --episodes 30 --wandb offline` on ``mnt``, the disk filled once
    ``fill_at`` updates are in the analytics log and freed ``free_after`` s later (None:
    after the run). Returns the figures, with ``held``: every count matched the disk."""
    updates = 30
    emitted = updates + 2
    run_dir = mnt / "runs" / "full"
    argv = [*esper_ppo(mnt, "full", "--wandb", "offline", "--episodes", str(updates)), *SMALL]
    child = Child(start(argv, tmp_path))
    filler = None
    try:
        wait_for_updates(child.proc, RunLayout(run_dir).events, fill_at, timeout=300)
        filler = fill(mnt)
        if free_after is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.proc.wait(timeout=free_after)
            filler.unlink()
    finally:
        out, err = child.finish(timeout=300)
    if filler is not None:
        filler.unlink(missing_ok=True)

    events, _ = read_back(run_dir)
    records, _ = log_records(run_dir)
    (wandb_run,) = RunLayout(run_dir).wandb.glob("offline-run-*")
    wb = inspect_run(wandb_run)
    rows = {row["_step"] for row in history(wb)}
    status = any("run/status" in u for s in of_type(wb, "summary") for u in s["update"])
    config = bool(of_type(wb, "config"))
    # W&B: a PPO update is kept if its row is; RUN_FINISHED if its status is (its final
    # row, none here: no summary scalars in this run); RUN_STARTED if its config is.
    wandb_lost = sum(1 for u in range(updates) if u not in rows) + (not status) + (not config)
    on_disk = {
        "analytics": emitted - len(events),
        "structlog": emitted - len(records),
        "wandb": wandb_lost,
    }
    reported = {
        name: int(summary_counts(out, "failed").get(name, 0))
        + int(summary_counts(out, "undelivered").get(name, 0))
        for name in on_disk
    }
    failing = sorted(name for name, n in reported.items() if n)
    one_line_each = sorted(
        [name for name, _, _ in failed_lines(err.splitlines())]
        + (["wandb"] if "WandBBackend: W&B's run file" in err else [])
    )
    lines_ok = (
        "Traceback" not in err
        and all(error == ENOSPC for _, _, error in failed_lines(err.splitlines()))
        and one_line_each == failing
        and len(err.splitlines()) == len(failing) + (1 if failing else 0)
    )
    return {
        "fill_at": fill_at,
        "free_after": None if free_after is None else round(free_after, 1),
        "exit": child.proc.returncode,
        "on_disk_lost": on_disk,
        "reported_lost": reported,
        "wandb_rows": len(rows),
        "held": on_disk == reported and lines_ok and child.proc.returncode in (0, 4),
        "stderr": err if not lines_ok else "",
    }
