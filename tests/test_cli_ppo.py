"""`esper ppo` end to end, in a subprocess: outputs, faults, halts, signals, refusals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from esper_telemetry.analytics import read_events
from esper_telemetry.contracts import (
    AnomalyDetected,
    AnomalyType,
    PPOUpdateCompleted,
    RunFinished,
    RunLayout,
    RunStarted,
    Severity,
    TelemetryEvent,
)
from tests.reliability.children import finish, wait_for_updates
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
    return [json.loads(x) for x in RunLayout(run_dir).log.read_text().splitlines()]


def wandb_run(run_dir: Path) -> Path:
    (found,) = RunLayout(run_dir).wandb.glob("offline-run-*")
    return found


def finished_status(events: list[TelemetryEvent]) -> list[str]:
    """The status of every RunFinished event."""
    return [e.payload.status for e in events if isinstance(e, RunFinished)]


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
    healths = [e.payload.health() for e in events if isinstance(e, PPOUpdateCompleted)]
    assert [len(h.to_dict()) if h is not None else None for h in healths] == [12] * 5
    assert finished_status(events) == ["completed"]
    logged = [r["update"] for r in log_lines(run_dir) if r["event"] == "PPO_UPDATE_COMPLETED"]
    assert logged == [0, 1, 2, 3, 4]
    rows = history(inspect_run(wandb_run(run_dir)))
    assert [r["_step"] for r in rows] == [0, 1, 2, 3, 4]
    assert "analytics log" in result.stdout
    assert "esper query" in result.stdout


def test_an_injected_nan_is_detected_escalated_alerted_and_logged(tmp_path: Path) -> None:
    """nan@3: one lstm_nan anomaly at update 3 naming env 0, DEBUG afterwards, one W&B alert
    naming the state, one error line in the structured log with the anomaly's fields flat."""
    result = esper(
        tmp_path, "--episodes", "6", "--run-id", "nan", "--inject-fault", "nan@3", *SMALL
    )
    assert result.returncode == 0, result.stderr
    run_dir = tmp_path / "runs" / "nan"
    events = events_of(run_dir)
    anomalies = [
        (
            e.update,
            e.payload.anomaly.state,
            e.payload.anomaly.type,
            e.payload.anomaly.severity,
            e.payload.outlier_envs,
        )
        for e in events
        if isinstance(e, AnomalyDetected)
    ]
    assert anomalies == [(3, "policy", AnomalyType.LSTM_NAN, Severity.CRITICAL, (0,))]
    levels = [(e.update, e.level.name) for e in events if isinstance(e, PPOUpdateCompleted)]
    assert levels == [(k, "NORMAL") for k in range(4)] + [(k, "DEBUG") for k in (4, 5)]
    alerts = of_type(inspect_run(wandb_run(run_dir)), "alert")
    assert [(a["title"], a["level"]) for a in alerts] == [("esper: lstm_nan in policy", "ERROR")]
    errors = [
        {k: r[k] for k in ("update", "state", "anomaly_type", "severity", "observed", "message")}
        | {"outlier_envs": r["outlier_envs"]}
        for r in log_lines(run_dir)
        if r["level"] == "error"
    ]
    assert errors == [
        {
            "update": 3,
            "state": "policy",
            "anomaly_type": "lstm_nan",
            "severity": "critical",
            "observed": "NaN",
            "message": "policy: LSTM state holds NaN",
            "outlier_envs": [0],
        }
    ]


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
    assert finished_status(events) == ["halted"]


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
        wait_for_updates(proc, RunLayout(run_dir).events, 3)
        proc.send_signal(signal.SIGTERM)
        _, stderr = finish(proc, timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    events = events_of(run_dir)
    updates = [e.update for e in events if isinstance(e, PPOUpdateCompleted)]
    assert len(updates) >= 3
    assert kinds(events) == [
        (0, "RUN_STARTED"),
        *[(k, "PPO_UPDATE_COMPLETED") for k in updates],
        (updates[-1], "RUN_FINISHED"),
    ]
    assert updates == list(range(len(updates)))
    assert finished_status(events) == ["interrupted"]
    logged = [r["update"] for r in log_lines(run_dir) if r["event"] == "PPO_UPDATE_COMPLETED"]
    assert logged == updates


def test_wandb_online_without_credentials_fails_before_training(tmp_path: Path) -> None:
    """--wandb online with no API key: exit 2 with one clear line; nothing was trained."""
    result = esper(tmp_path, "--episodes", "3", "--run-id", "online", "--wandb", "online", *SMALL)
    assert result.returncode == 2
    assert "wandb login" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "runs" / "online").exists()


MEMORY = "Invalid value for --envs / --episode-length / --hidden / --layers: the run would need"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--run-id", "../escape"], "run_id must be"),
        (["--inject-fault", "melt@2"], "KIND@UPDATE"),
        (["--episodes", "0"], "Invalid value for --episodes: must be an int in [1, 2**63 - 1]"),
        (["--envs", str(10**12)], MEMORY),  # hung building 10**12 environments
        (["--layers", str(10**9)], MEMORY),  # hung building 10**9 LSTM layers
        (["--wandb-log", "health,charts"], "--wandb-log: log: 'charts' is not a group"),
        (["--wandb-prefix", "my esper"], "--wandb-prefix: prefix must be letters"),
        (["--wandb-tag", "x" * 65], "--wandb-tag: tags must be a non-empty string"),
        (["--wandb-project", "a/b"], "--wandb-project: project: W&B names cannot contain /"),
    ],
)
def test_bad_options_are_refused_before_training(
    tmp_path: Path, args: list[str], message: str
) -> None:
    """A bad option exits 2 with one error line naming it (no traceback), and leaves no run
    behind; sizes that cannot fit are refused at once (they used to hang). The other bad
    values are driven in-process in tests/test_cli.py."""
    result = esper(tmp_path, "--wandb", "disabled", *SMALL, *args, timeout=60)
    assert result.returncode == 2, result.stderr
    assert len([line for line in result.stderr.splitlines() if message in line]) == 1
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists()


#: Runs `esper` with torch's gradient clipping raising during update 1 (20 epochs of one
#: minibatch per update), as a device error would.
FAILING_TORCH = """
import sys, torch
real, calls = torch.nn.utils.clip_grad_norm_, iter(range(10**9))
def clip(*args, **kwargs):
    if next(calls) == 25:
        raise RuntimeError("CUDA error: an illegal memory access was encountered")
    return real(*args, **kwargs)
torch.nn.utils.clip_grad_norm_ = clip
from esper_telemetry.cli import main
main(sys.argv[1:], prog_name="esper")
"""


def test_a_failure_inside_training_exits_5_with_run_finished_failed(tmp_path: Path) -> None:
    """An error raised inside update 1: exit 5 and one stderr line naming it; the analytics
    and structured logs end with RUN_FINISHED failed carrying the same line; no traceback."""
    argv = [sys.executable, "-c", FAILING_TORCH, "ppo", "--run-dir", str(tmp_path / "runs")]
    argv += ["--run-id", "fails", "--episodes", "5", "--wandb", "disabled", *SMALL]
    result = subprocess.run(
        argv, capture_output=True, text=True, env=env_for(tmp_path), cwd=tmp_path, timeout=180
    )
    assert result.returncode == 5, result.stderr
    error = (
        "RuntimeError after 1 update: CUDA error: an illegal memory access was encountered "
        "(<string>:6 in clip)"
    )
    assert result.stderr.splitlines() == [f"esper ppo: training failed: {error}"]
    assert "run fails: failed, 1 updates" in result.stdout
    run_dir = tmp_path / "runs" / "fails"
    events = events_of(run_dir)
    assert kinds(events) == [(0, "RUN_STARTED"), (0, "PPO_UPDATE_COMPLETED"), (0, "RUN_FINISHED")]
    finished = [(e.payload.status, e.payload.message) for e in events if isinstance(e, RunFinished)]
    assert finished == [("failed", error)]
    logged = [(r["event"], r.get("status")) for r in log_lines(run_dir)]
    assert logged[-1] == ("RUN_FINISHED", "failed")


def test_wandb_flags_set_the_run_the_groups_the_prefix_and_the_axis(tmp_path: Path) -> None:
    """--wandb-* flags reach the offline run: its group, tags and job type, only the
    health group's keys, every key under the prefix, charts against env steps."""
    result = esper(
        tmp_path,
        *("--episodes", "2", "--run-id", "flags", *SMALL),
        *("--wandb-project", "lstm-study", "--wandb-group", "sweep-1", "--wandb-job-type", "train"),
        *("--wandb-tag", "gru", "--wandb-tag", "cartpole", "--wandb-log", "health"),
        *("--wandb-prefix", "esper", "--wandb-x-axis", "env_steps"),
    )
    assert result.returncode == 0, result.stderr
    records = inspect_run(wandb_run(tmp_path / "runs" / "flags"))
    run = of_type(records, "run")[0]  # the first run record; later ones update its config
    assert (run["project"], run["run_group"], run["job_type"], run["tags"]) == (
        "lstm-study",
        "sweep-1",
        "train",
        ["gru", "cartpole"],
    )
    rows = history(records)
    assert [(r["esper/update"], r["esper/env_steps"]) for r in rows] == [(0, 16), (1, 32)]
    keys = {k for r in rows for k in r if k != "_step"}
    assert {k.split("/")[1] for k in keys} == {"update", "env_steps", "lstm"}
    assert {"esper/lstm/policy/h_rms", "esper/lstm/value/c_rms"} <= keys
    steps = {
        r.get("name") or r.get("glob_name"): r.get("step_metric")
        for r in of_type(records, "metric")
    }
    assert steps["esper/lstm/policy/h_rms"] == steps["esper/ppo/*"] == "esper/env_steps"


@pytest.mark.parametrize(("preset", "clip_vf"), [("esper", 0.2), ("rl-zoo", None)])
def test_the_preset_chooses_the_trainer_settings_on_the_record(
    tmp_path: Path, preset: str, clip_vf: float | None
) -> None:
    """--preset rl-zoo trains with RL Zoo's exact settings (no value clipping), the
    default with esper's; RUN_STARTED's config says which."""
    result = esper(
        tmp_path,
        "--episodes",
        "1",
        "--run-id",
        preset,
        "--preset",
        preset,
        "--wandb",
        "disabled",
        *SMALL,
    )
    assert result.returncode == 0, result.stderr
    (started,) = [e for e in events_of(tmp_path / "runs" / preset) if isinstance(e, RunStarted)]
    assert started.payload.config["clip_vf"] == clip_vf
    assert started.payload.config["epochs"] == 20  # the rest is RL Zoo's either way
