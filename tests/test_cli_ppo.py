"""`esper ppo` end to end, in a subprocess: outputs, faults, halts, signals, refusals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from esper_telemetry import TelemetryEvent
from esper_telemetry.analytics import read_events
from tests.wandb_offline import history, inspect_run, of_type

SMALL = ["--envs", "2", "--episode-length", "8", "--hidden", "16", "--no-progress"]


def env_for(tmp: Path) -> dict[str, str]:
    """A private, offline W&B home and one torch thread."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(
        HOME=str(tmp / "home"),
        WANDB_CACHE_DIR=str(tmp / "wb-cache"),
        WANDB_CONFIG_DIR=str(tmp / "wb-config"),
        WANDB_DATA_DIR=str(tmp / "wb-data"),
        OMP_NUM_THREADS="1",
    )
    return env


def esper(tmp: Path, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "esper_telemetry.cli", "ppo", "--run-dir", str(tmp / "runs"), *args],
        capture_output=True,
        text=True,
        env=env_for(tmp),
        cwd=tmp,
        timeout=timeout,
    )


def events_of(run_dir: Path) -> list[TelemetryEvent]:
    return list(read_events(run_dir))


def kinds(events: list[TelemetryEvent]) -> list[tuple[int, str]]:
    return [(e.update, e.event_type.value) for e in events]


def log_lines(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (run_dir / "log.jsonl").read_text().splitlines()]


def wandb_run(run_dir: Path) -> Path:
    (found,) = (run_dir / "wandb").glob("offline-run-*")
    return found


def test_a_run_writes_every_output_with_the_same_updates(tmp_path: Path) -> None:
    """Exit 0; the analytics log frames 5 updates with all 12 lstm fields; the structured log
    and the offline W&B run hold the same updates."""
    result = esper(tmp_path, "--episodes", "5", "--run-id", "plain", *SMALL)
    assert result.returncode == 0, result.stderr
    run_dir = tmp_path / "runs" / "plain"
    events = events_of(run_dir)
    assert kinds(events) == [
        (0, "RUN_STARTED"),
        *[(k, "PPO_UPDATE_COMPLETED") for k in range(5)],
        (4, "RUN_FINISHED"),
    ]
    for e in events[1:-1]:
        health = e.payload.health()  # type: ignore[union-attr]
        assert health is not None
        assert len(health.to_dict()) == 12
    assert events[-1].payload.status == "completed"  # type: ignore[union-attr]
    logged = [r["update"] for r in log_lines(run_dir) if r["event"] == "PPO_UPDATE_COMPLETED"]
    assert logged == [0, 1, 2, 3, 4]
    rows = history(inspect_run(wandb_run(run_dir)))
    assert [r["_step"] for r in rows] == [0, 1, 2, 3, 4]
    assert "analytics log" in result.stdout
    assert "esper query" in result.stdout


def test_an_injected_nan_is_detected_escalated_alerted_and_logged(tmp_path: Path) -> None:
    """nan@3: an lstm_nan anomaly at update 3, DEBUG afterwards, a W&B alert, an error line."""
    result = esper(
        tmp_path, "--episodes", "6", "--run-id", "nan", "--inject-fault", "nan@3", *SMALL
    )
    assert result.returncode == 0, result.stderr
    run_dir = tmp_path / "runs" / "nan"
    events = events_of(run_dir)
    anomalies = [
        (e.update, e.payload.anomaly_type.value)
        for e in events
        if e.event_type.value == "ANOMALY_DETECTED"
    ]  # type: ignore[union-attr]
    assert anomalies[0] == (3, "lstm_nan")
    levels = {
        e.update: e.level.name for e in events if e.event_type.value == "PPO_UPDATE_COMPLETED"
    }
    assert [levels[k] for k in range(6)] == ["NORMAL"] * 4 + ["DEBUG"] * 2
    alerts = of_type(inspect_run(wandb_run(run_dir)), "alert")
    assert alerts[0]["title"] == "esper: lstm_nan"
    errors = [(r["update"], r["anomaly_type"]) for r in log_lines(run_dir) if r["level"] == "error"]
    assert errors[0] == (3, "lstm_nan")


def test_halt_on_critical_exits_non_zero_naming_the_anomaly_with_everything_flushed(
    tmp_path: Path,
) -> None:
    """--halt-on critical: exit 3, one line naming the anomaly and update; the log holds every
    event up to the halt and RUN_FINISHED says halted."""
    result = esper(
        tmp_path,
        *("--episodes", "8", "--run-id", "halt", "--halt-on", "critical"),
        *("--inject-fault", "explode@2", "--wandb", "disabled"),
        *SMALL,
    )
    assert result.returncode == 3
    assert "esper ppo: halted: training halted (update 2): lstm_c_explosion" in result.stderr
    events = events_of(tmp_path / "runs" / "halt")
    assert kinds(events) == [
        (0, "RUN_STARTED"),
        (0, "PPO_UPDATE_COMPLETED"),
        (1, "PPO_UPDATE_COMPLETED"),
        (2, "PPO_UPDATE_COMPLETED"),
        (2, "ANOMALY_DETECTED"),
        (2, "TELEMETRY_LEVEL_CHANGED"),
        (2, "RUN_FINISHED"),
    ]
    assert events[-1].payload.status == "halted"  # type: ignore[union-attr]


def test_sigterm_stops_cleanly_and_marks_the_run_interrupted(tmp_path: Path) -> None:
    """SIGTERM mid-run: exit 130, RUN_FINISHED interrupted, every PPO update in both logs."""
    run_dir = tmp_path / "runs" / "term"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "esper_telemetry.cli",
            "ppo",
            "--run-dir",
            str(tmp_path / "runs"),
            "--run-id",
            "term",
            "--episodes",
            "10000",
            "--wandb",
            "disabled",
            *SMALL,
        ],
        env=env_for(tmp_path),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        events_file = run_dir / "events.jsonl"
        while time.monotonic() < deadline:
            if events_file.exists() and events_file.read_text().count("PPO_UPDATE_COMPLETED") >= 3:
                break
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    events = events_of(run_dir)
    assert events[-1].event_type.value == "RUN_FINISHED"
    assert events[-1].payload.status == "interrupted"  # type: ignore[union-attr]
    updates = [e.update for e in events if e.event_type.value == "PPO_UPDATE_COMPLETED"]
    assert updates == list(range(len(updates)))
    assert len(updates) >= 3
    logged = [r["update"] for r in log_lines(run_dir) if r["event"] == "PPO_UPDATE_COMPLETED"]
    assert logged == updates


def test_wandb_online_without_credentials_fails_before_training(tmp_path: Path) -> None:
    """--wandb online with no API key: exit 2 with one clear line; nothing was trained."""
    result = esper(tmp_path, "--episodes", "3", "--run-id", "online", "--wandb", "online", *SMALL)
    assert result.returncode == 2
    assert "wandb login" in result.stderr
    assert not (tmp_path / "runs" / "online" / "events.jsonl").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--run-id", "../escape"], "run_id must be"),
        (["--inject-fault", "melt@2"], "KIND@UPDATE"),
        (["--episodes", "0"], "updates must be an int >= 1"),
    ],
)
def test_bad_options_are_refused_before_training(
    tmp_path: Path, args: list[str], message: str
) -> None:
    """A bad option exits 2 with a message naming it, and leaves no run behind."""
    result = esper(tmp_path, *args, "--wandb", "disabled", *SMALL, timeout=60)
    assert result.returncode == 2
    assert message in result.stderr
    assert not list((tmp_path / "runs").glob("*/events.jsonl"))
