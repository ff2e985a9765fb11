"""One run is one run: a run directory's logs hold one run, and a run that resumes carries on.

A second run (another run id, or the same id from a fresh hub) subscribing to a directory
that holds a run is refused, naming the directory, the run found and the ways out, with
every byte already written left as it was. ``resume=True`` continues the run on disk:
``seq`` and the update index carry on after its last event (a torn last line is dropped
first), so readers see one run with no duplicate.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from esper_telemetry import TelemetryHub
from esper_telemetry import emit_ppo_update_event as emit_update
from esper_telemetry.analytics import BadLine, read_events
from esper_telemetry.backends import AnalyticsCollector, StructlogBackend, WandBBackend
from esper_telemetry.contracts import PPOUpdateCompleted, RunLayout
from esper_telemetry.hub import Backend
from tests.reliability.children import SMALL, child_env, log_records, read_back
from tests.wandb_offline import offline_wandb

STATS = {"policy_loss": 0.1, "value_loss": 0.5, "entropy": 0.7}

#: The two backends that own a log file in a run directory, built on that directory.
LOGS: dict[str, Callable[[Path, bool], Backend]] = {
    "analytics": lambda d, resume: AnalyticsCollector(d, resume=resume),
    "structlog": lambda d, resume: StructlogBackend(RunLayout(d).log, resume=resume),
}
FILES = {"analytics": "events.jsonl", "structlog": "log.jsonl"}


def write_run(run_dir: Path, run_id: str, updates: int, first: int = 0) -> None:
    with TelemetryHub(run_id) as hub:
        hub.subscribe(AnalyticsCollector(run_dir))
        hub.subscribe(StructlogBackend(RunLayout(run_dir).log))
        for update in range(first, first + updates):
            emit_update(hub, update=update, metrics=STATS)


def digest(run_dir: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(run_dir.iterdir())
        if p.is_file()
    }


@pytest.mark.parametrize("log", sorted(LOGS))
@pytest.mark.parametrize("second", ["other-run", "first-run"])
def test_a_second_run_in_a_run_directory_is_refused_and_nothing_changes(
    tmp_path: Path, log: str, second: str
) -> None:
    write_run(tmp_path, "first-run", 3)
    before = digest(tmp_path)
    hub = TelemetryHub(second)
    with pytest.raises(ValueError, match="already holds run") as info:
        hub.subscribe(LOGS[log](tmp_path, False))
    hub.close()
    message = str(info.value)
    assert f"{tmp_path} already holds run 'first-run' ({FILES[log]}" in message
    assert "give this run a new run_id or directory, or continue run 'first-run' with " in message
    assert f"resume=True (esper ppo --resume {tmp_path})" in message
    assert "\n" not in message
    assert hub.stats().subscribers == ()
    assert digest(tmp_path) == before


@pytest.mark.parametrize("log", sorted(LOGS))
def test_resume_continues_seq_and_update_after_dropping_a_torn_last_line(
    tmp_path: Path, log: str
) -> None:
    write_run(tmp_path, "run", 3)
    path = tmp_path / FILES[log]
    whole = path.read_bytes()
    path.write_bytes(whole + b'{"run_id":"run","seq":99,"upd')  # a writer killed mid-line
    hub = TelemetryHub("run")
    hub.subscribe(LOGS[log](tmp_path, True))
    assert hub.first_update == 3
    emit_update(hub, update=hub.first_update, metrics=STATS)
    hub.close()
    assert path.read_bytes().startswith(whole)
    if log == "analytics":
        bad: list[BadLine] = []
        events = list(read_events(tmp_path, on_bad_line=bad.append))
        assert bad == []
        assert [(e.seq, e.update) for e in events] == [(k, k) for k in range(4)]
    else:
        records, broken = log_records(tmp_path)
        assert broken == []
        assert [(r["seq"], r["update"]) for r in records] == [(k, k) for k in range(4)]


def test_resume_refuses_a_directory_of_another_run(tmp_path: Path) -> None:
    write_run(tmp_path, "first-run", 2)
    before = digest(tmp_path)
    hub = TelemetryHub("other-run")
    with pytest.raises(ValueError, match=r"and run_id='first-run'$"):
        hub.subscribe(AnalyticsCollector(tmp_path, resume=True))
    hub.close()
    assert digest(tmp_path) == before


def test_a_second_collector_on_the_live_run_appends_without_a_resume(tmp_path: Path) -> None:
    """The same hub, going on, is the same run: a collector made again may append."""
    with TelemetryHub("live") as hub:
        first = AnalyticsCollector(tmp_path)
        hub.subscribe(first, name="first")
        emit_update(hub, update=0, metrics=STATS)
        hub.unsubscribe("first")
        hub.subscribe(AnalyticsCollector(tmp_path), name="again")
        emit_update(hub, update=1, metrics=STATS)
    events, bad = read_back(tmp_path)
    assert (bad, [e.seq for e in events]) == ([], [0, 1])


def test_a_garbage_file_is_not_taken_for_a_run(tmp_path: Path) -> None:
    (tmp_path / "events.jsonl").write_bytes(b"not an event\n")
    with pytest.raises(ValueError, match="holds 13 bytes but no line esper can read as an event"):
        TelemetryHub("g").subscribe(AnalyticsCollector(tmp_path))
    assert (tmp_path / "events.jsonl").read_bytes() == b"not an event\n"


def test_resume_after_must_come_before_the_first_event_and_takes_the_furthest() -> None:
    hub = TelemetryHub("r")
    hub.resume_after(4, 2)
    hub.resume_after(9, 5)
    hub.resume_after(3, 1)  # another log that lost its tail: the furthest position wins
    assert hub.first_update == 6
    event = emit_update(hub, update=6, metrics=STATS)
    assert event is not None
    assert event.seq == 10
    with pytest.raises(RuntimeError, match="already emitted 1 events; resume a run before"):
        hub.resume_after(20, 8)
    for bad in (-1, 2**63 - 1, True, 1.0):
        with pytest.raises(ValueError, match=r"^seq must be an int from 0 to"):
            TelemetryHub("x").resume_after(bad, 0)  # type: ignore[arg-type]
    assert hub.stats().emitted == 1
    hub.close()


def test_a_second_wandb_run_with_one_id_is_refused_and_resume_continues_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with offline_wandb(tmp_path, monkeypatch):
        with TelemetryHub("wb") as hub:
            hub.subscribe(WandBBackend("esper-tests", mode="offline", dir=tmp_path))
            emit_update(hub, update=0, metrics=STATS)
        hub = TelemetryHub("wb")
        with pytest.raises(ValueError, match=r"already holds a W&B run with id 'wb' \("):
            hub.subscribe(WandBBackend("esper-tests", mode="offline", dir=tmp_path))
        hub.subscribe(WandBBackend("esper-tests", mode="offline", dir=tmp_path, resume=True))
        emit_update(hub, update=1, metrics=STATS)
        stats = hub.close()
    assert [s.lost for s in stats.subscribers] == [0]
    folders = sorted((tmp_path / "wandb").glob("*run-*"))
    assert len(folders) == 2  # W&B names the second "...-wb-1" if it starts in the same second
    assert all((f / "run-wb.wandb").is_file() for f in folders)


def test_esper_ppo_resume_carries_on_the_run_with_no_duplicate(tmp_path: Path) -> None:
    """Run, resume: one analytics log, one structured log, seq and update gapless and
    unique; every W&B folder is the one W&B run id; W&B got what it held already skipped."""

    def ppo(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "esper_telemetry.cli", "ppo", "--wandb", "offline", *args],
            env=child_env(tmp_path),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )

    run_dir = tmp_path / "runs" / "res"
    first = ppo("--run-dir", str(tmp_path / "runs"), "--run-id", "res", "--episodes", "3", *SMALL)
    assert first.returncode == 0, first.stderr
    again = ppo("--run-dir", str(tmp_path / "runs"), "--run-id", "res", "--episodes", "3", *SMALL)
    assert again.returncode == 2
    assert again.stderr.endswith(f"or continue that run with --resume {run_dir}\n")
    resumed = ppo("--resume", str(run_dir), "--episodes", "2", *SMALL)
    assert resumed.returncode == 0, resumed.stderr
    assert "W&B backfill: run res: nothing to backfill, W&B holds all 3 updates" in resumed.stdout

    events, bad = read_back(run_dir)
    assert bad == []
    assert [e.seq for e in events] == list(range(len(events)))
    updates = [e.update for e in events if isinstance(e, PPOUpdateCompleted)]
    assert updates == list(range(5))
    records, broken = log_records(run_dir)
    assert (broken, [r["seq"] for r in records]) == ([], [e.seq for e in events])
    folders = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(folders) == 2
    assert all((f / "run-res.wandb").is_file() for f in folders)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--run-id", "x"], "--run-id cannot be combined with --resume"),
        (["--run-dir", "r"], "--run-dir cannot be combined with --resume"),
    ],
)
def test_esper_ppo_resume_refuses_clashing_options_in_one_line(
    tmp_path: Path, args: list[str], message: str
) -> None:
    write_run(tmp_path / "runs" / "r1", "r1", 1)
    before = digest(tmp_path / "runs" / "r1")
    out = subprocess.run(
        [sys.executable, "-m", "esper_telemetry.cli", "ppo", "--resume", "runs/r1", *args],
        env=child_env(tmp_path),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 2
    assert re.search(rf"Error: Invalid value for --resume: {message}", out.stderr), out.stderr
    assert "Traceback" not in out.stderr
    assert digest(tmp_path / "runs" / "r1") == before


def test_esper_ppo_resume_of_a_directory_without_a_run_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    out = subprocess.run(
        [sys.executable, "-m", "esper_telemetry.cli", "ppo", "--resume", "empty"],
        env=child_env(tmp_path),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 2
    assert "'empty' holds no events.jsonl: there is no run to continue" in out.stderr
    assert list((tmp_path / "empty").iterdir()) == []
