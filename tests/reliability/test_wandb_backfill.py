"""``esper wandb backfill``: a W&B run cut short by a hard kill, made whole from events.jsonl.

A SIGKILL of the run's process group (the run and its ``wandb-core`` at once, as the
OOM killer or ``kill -9`` of a job does) loses what ``wandb-core`` had buffered, while
``events.jsonl`` keeps every update a completed flush covered. After the backfill, the
W&B history read back with wandb's own reader (``wandb leet inspect --json``) holds
every PPO update of the analytics log, each exactly once, with the values it has there.
"""

from __future__ import annotations

import math
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from esper_telemetry import TelemetryHub
from esper_telemetry import emit_ppo_update_event as emit_update
from esper_telemetry.backends import AnalyticsCollector
from esper_telemetry.backends.wandb import WandBBackend
from esper_telemetry.cli import main
from esper_telemetry.contracts import (
    AnomalyDetected,
    PPOUpdateCompleted,
    RunLayout,
    TelemetryLevelChanged,
)
from tests.reliability.children import (
    SMALL,
    child_env,
    esper_ppo,
    finish,
    read_back,
    start,
    wait_for_updates,
)
from tests.wandb_offline import inspect_run


def backfill(tmp_path: Path, run_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "esper_telemetry.cli", "wandb", "backfill", str(run_dir)],
        env=child_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def history_by_step(run_dir: Path) -> tuple[list[int], dict[int, dict[str, Any]]]:
    """Every history row of every W&B folder of the run: the steps in order, and rows."""
    steps: list[int] = []
    rows: dict[int, dict[str, Any]] = {}
    for folder in sorted((run_dir / "wandb").glob("offline-run-*")):
        for record in inspect_run(folder):
            if record["type"] == "history":
                row = record["history"]["item"]
                steps.append(int(row["_step"]))
                rows[int(row["_step"])] = row
    return steps, rows


def same(logged: Any, value: Any) -> bool:
    if isinstance(value, float) and math.isnan(value):
        return bool(logged == "NaN")
    if isinstance(value, float) and math.isinf(value):
        return bool(logged == ("Infinity" if value > 0 else "-Infinity"))
    return bool(logged == value)


def kill_mid_run(tmp_path: Path, trial: int) -> Path:
    """SIGKILL an ``esper ppo`` run with offline W&B and its wandb-core, mid-run."""
    run_dir = tmp_path / "runs" / "killed"
    argv = esper_ppo(
        tmp_path, "killed", "--wandb", "offline", "--episodes", "400",
        "--inject-fault", "explode@4", *SMALL,
    )  # fmt: skip
    proc = start(argv, tmp_path, new_session=True)
    try:
        wait_for_updates(proc, RunLayout(run_dir).events, 12 if trial == 0 else 5 + trial * 4)
        time.sleep(random.Random(trial).random() * 0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        finish(proc)
    return run_dir


#: One kill in the default run; with --soak, nine more after 9 to 41 updates.
TRIALS = [0, *(pytest.param(t, marks=pytest.mark.soak) for t in range(1, 10))]


@pytest.mark.parametrize("trial", TRIALS)
def test_after_a_sigkill_backfill_gives_wandb_every_update_of_the_analytics_log(
    tmp_path: Path, trial: int
) -> None:
    run_dir = kill_mid_run(tmp_path, trial)
    events, bad = read_back(run_dir)
    assert bad in ([], bad[-1:])  # at most a torn last line
    updates = {e.update: e for e in events if isinstance(e, PPOUpdateCompleted)}
    assert sorted(updates) == list(range(len(updates)))
    held_before, _ = history_by_step(run_dir)
    assert len(set(held_before)) < len(updates), "W&B lost nothing: the test shows nothing"

    done = backfill(tmp_path, run_dir)
    assert done.returncode == 0, done.stderr
    missing = len(updates) - len(set(held_before) & set(updates))
    assert f"wrote {missing} missing update" in done.stdout
    steps, rows = history_by_step(run_dir)
    assert sorted(steps) == sorted(set(steps)), "a step was written twice"
    assert set(updates) <= set(rows)
    anomalies: Counter[str] = Counter()
    for event in events:
        if isinstance(event, AnomalyDetected):
            kind = event.payload.anomaly.type.value
            anomalies[kind] += 1
            assert rows[event.update][f"anomaly/{kind}"] == anomalies[kind]
        if isinstance(event, TelemetryLevelChanged):  # logged after its update's row
            assert rows[event.update]["telemetry/level"] == int(event.payload.level)
    assert anomalies, "the fault raised no anomaly: the counts were not checked"
    changed = {e.update for e in events if isinstance(e, TelemetryLevelChanged)}
    # The keys of one update, as the backend builds them (a backend without a hub: no
    # telemetry/lost, dropped or latency, which a backfilled row cannot know either).
    keys_of = WandBBackend(mode="disabled")._ppo_row
    for update, event in updates.items():
        expected = {"update": update, **keys_of(event, event.payload)}
        if event.payload.env_steps is not None:
            expected["env_steps"] = event.payload.env_steps
        if update in changed:
            del expected["telemetry/level"]
        wrong = {k: (rows[update].get(k), v) for k, v in expected.items()}
        assert {k: gv for k, gv in wrong.items() if not same(*gv)} == {}, update

    again = backfill(tmp_path, run_dir)
    assert (again.returncode, again.stderr) == (0, "")
    assert again.stdout.startswith(f"run killed: nothing to backfill, W&B holds all {len(updates)}")
    assert history_by_step(run_dir)[0] == steps


def test_a_completed_run_has_nothing_to_backfill_and_gets_no_new_wandb_folder(
    tmp_path: Path,
) -> None:
    argv = esper_ppo(tmp_path, "whole", "--wandb", "offline", "--episodes", "3", *SMALL)
    proc = start(argv, tmp_path)
    _, err = finish(proc)
    assert proc.returncode == 0, err
    run_dir = tmp_path / "runs" / "whole"
    done = backfill(tmp_path, run_dir)
    assert (done.returncode, done.stderr) == (0, "")
    assert (
        done.stdout == "run whole: nothing to backfill, W&B holds all 3 updates and the run end\n"
    )
    assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 1


def test_backfill_of_a_run_without_wandb_asks_for_a_mode_in_one_line(tmp_path: Path) -> None:
    run_dir = tmp_path / "nowandb"
    with TelemetryHub("nowandb") as hub:
        hub.subscribe(AnalyticsCollector(run_dir))
        emit_update(hub, update=0, metrics={"policy_loss": 0.1, "value_loss": 0.5, "entropy": 0.7})
    before = sorted(p.name for p in run_dir.iterdir())
    result = CliRunner().invoke(main, ["wandb", "backfill", str(run_dir)])
    assert result.exit_code == 1
    assert result.output.splitlines() == [
        f"Error: run nowandb has no W&B run under {run_dir / 'wandb'} (was W&B off?); pass "
        "mode='offline' or 'online' (--mode) to create one"
    ]
    assert sorted(p.name for p in run_dir.iterdir()) == before
