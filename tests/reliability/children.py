"""Real child processes for the fault-injection suite: `esper ppo` runs, their files, /proc.

Every child gets a private HOME and W&B folders under the test's tmp directory, one
torch thread, and no ``WANDB_*`` variable of the parent (see ``child_env``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from esper_telemetry.analytics import BadLine, read_events
from esper_telemetry.contracts import RunLayout, TelemetryEvent

#: The smallest `esper ppo` that still trains a real LSTM policy.
SMALL = ("--envs", "2", "--episode-length", "8", "--hidden", "16", "--no-progress")

#: The 12 LSTM health fields every PPO update of the reference trainer carries.
LSTM_FIELDS = (
    "lstm_h_l2_total",
    "lstm_c_l2_total",
    "lstm_h_rms",
    "lstm_c_rms",
    "lstm_h_env_rms_mean",
    "lstm_h_env_rms_max",
    "lstm_c_env_rms_mean",
    "lstm_c_env_rms_max",
    "lstm_h_max",
    "lstm_c_max",
    "lstm_has_nan",
    "lstm_has_inf",
)


def child_env(tmp: Path, **extra: str) -> dict[str, str]:
    """The parent's environment without W&B settings, with a private home and W&B dirs."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(
        HOME=str(tmp / "home"),
        WANDB_CACHE_DIR=str(tmp / "wb-cache"),
        WANDB_CONFIG_DIR=str(tmp / "wb-config"),
        WANDB_DATA_DIR=str(tmp / "wb-data"),
        OMP_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def esper_ppo(root: Path, run_id: str, *args: str) -> list[str]:
    """The argv of ``esper ppo`` writing ``root/runs/run_id``."""
    return [
        sys.executable,
        "-m",
        "esper_telemetry.cli",
        "ppo",
        "--run-dir",
        str(root / "runs"),
        "--run-id",
        run_id,
        *args,
    ]


def start(
    argv: Sequence[str],
    tmp: Path,
    *,
    env: dict[str, str] | None = None,
    new_session: bool = False,
    preexec_fn: Callable[[], None] | None = None,
) -> subprocess.Popen[str]:
    """Start a child with captured text output, in ``tmp``, Ctrl-C enabled."""
    with sigint_not_ignored():
        return subprocess.Popen(
            list(argv),
            env=env if env is not None else child_env(tmp),
            cwd=tmp,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=new_session,
            preexec_fn=preexec_fn,
        )


@contextmanager
def sigint_not_ignored() -> Iterator[None]:
    """Ctrl-C raises KeyboardInterrupt here, and a child started inside gets Python's own
    SIGINT handler, even when this process was started with SIGINT ignored (as ``cmd &``
    in a script or ``nohup`` does; an ignored signal stays ignored across exec)."""
    previous = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def wait_for_updates(
    proc: subprocess.Popen[str], events_file: Path, count: int, timeout: float = 120
) -> int:
    """Wait until ``events_file`` holds at least ``count`` PPO updates; return how many.

    Raises:
        AssertionError: the child exited first, or the time ran out.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if events_file.exists():
            seen = events_file.read_bytes().count(b'"PPO_UPDATE_COMPLETED"')
            if seen >= count:
                return seen
        if proc.poll() is not None:
            _, err = proc.communicate()
            raise AssertionError(f"child exited {proc.returncode} early: {err[-2000:]}")
        time.sleep(0.02)
    raise AssertionError(f"no {count} PPO updates in {events_file} within {timeout} s")


def finish(proc: subprocess.Popen[str], timeout: float = 120) -> tuple[str, str]:
    """Wait for the child (killing it if it overstays) and return its stdout and stderr."""
    try:
        return proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def read_back(run_dir: Path) -> tuple[list[TelemetryEvent], list[BadLine]]:
    """Every valid event of the run's analytics log, and every line skipped."""
    bad: list[BadLine] = []
    events = list(read_events(run_dir, on_bad_line=bad.append))
    return events, bad


def kinds(events: Sequence[TelemetryEvent]) -> list[tuple[int, str, int]]:
    """(seq, event type, update) of each event."""
    return [(e.seq, e.event_type.value, e.update) for e in events]


def log_records(run_dir: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """The structured log's JSON records, and the lines that are not JSON."""
    records: list[dict[str, Any]] = []
    broken: list[str] = []
    for line in RunLayout(run_dir).log.read_text(errors="replace").splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            broken.append(line)
    return records, broken


def log_kinds(records: Sequence[dict[str, Any]]) -> list[tuple[int, str, int]]:
    """(seq, event, update) of each structured log record."""
    return [(r["seq"], r["event"], r["update"]) for r in records]


def children_of(pid: int) -> list[tuple[int, str]]:
    """(pid, executable) of every live process whose parent is ``pid`` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            argv0 = (entry / "cmdline").read_bytes().split(b"\0")[0].decode()
        except OSError:
            continue  # it exited while we looked
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == pid:
            found.append((int(entry.name), argv0))
    return found
