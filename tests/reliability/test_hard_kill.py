"""Hard kill: SIGKILL a child that trains or emits, at random moments, and read the log back.

5 trials of each run normally; 50 with ``--soak``. The emit-level trials of the
collector alone are in ``tests/test_backend_analytics.py``; these go through the hub
(``hub.flush()``) and through a whole ``esper ppo`` run.
"""

from __future__ import annotations

import math
import random
import signal
import sys
import textwrap
import time
from pathlib import Path

import pytest

from esper_telemetry.contracts import PPOUpdateCompleted, RunLayout, RunStarted
from tests.reliability.children import (
    LSTM_FIELDS,
    SMALL,
    esper_ppo,
    finish,
    log_kinds,
    log_records,
    read_back,
    start,
    wait_for_updates,
)
from tests.test_backend_analytics import CHILD_PRELUDE

NORMAL_TRIALS = 5
SOAK_TRIALS = 50
TRIALS = [
    pytest.param(i, marks=pytest.mark.soak) if i >= NORMAL_TRIALS else i for i in range(SOAK_TRIALS)
]

HUB_CHILD = CHILD_PRELUDE + textwrap.dedent(
    """
    from esper_telemetry.hub import TelemetryHub

    hub = TelemetryHub("kill")
    hub.subscribe(AnalyticsCollector(sys.argv[1], fsync="flush"))
    k = 0
    while True:
        for _ in range(int(sys.argv[2])):
            payload = PPOUpdatePayload(
                policy_loss=k * 0.1, value_loss=float("nan"), entropy=-0.0,
                lstm_h_rms=float("inf"), extra={"k": float(k)})
            hub.emit(PPOUpdateCompleted(update=k, payload=payload))
            k += 1
        print(f"flushed {k}" if hub.flush(timeout=30) else "flush failed", flush=True)
    """
)


@pytest.mark.parametrize("trial", TRIALS)
def test_kill_9_of_an_emitting_hub_loses_nothing_a_completed_flush_covered(
    tmp_path: Path, trial: int
) -> None:
    """SIGKILL while a hub emits: every event a returned hub.flush() covered reads back
    intact and in seq order; at most a torn last line is reported."""
    rng = random.Random(1000 + trial)
    proc = start(
        [sys.executable, "-c", HUB_CHILD, str(tmp_path), str(rng.choice([1, 7, 50, 300]))],
        tmp_path,
    )
    assert proc.stdout is not None
    flushed = 0
    try:
        for _ in range(rng.randint(1, 40)):
            flushed = int(proc.stdout.readline().split()[1])
        time.sleep(rng.random() * 0.02)  # land anywhere in the next batch
        proc.send_signal(signal.SIGKILL)
        out, _ = finish(proc, timeout=30)
    finally:
        proc.kill()
    for line in out.splitlines():  # flushes that completed between our read and the kill
        flushed = int(line.split()[1])
    assert proc.returncode == -signal.SIGKILL

    events, bad = read_back(tmp_path)
    assert len(events) >= flushed > 0
    assert [(e.seq, e.update) for e in events] == [(k, k) for k in range(len(events))]
    assert [(b.line_number, b.torn) for b in bad] in ([], [(len(events) + 1, True)])
    assert [
        (
            type(e),
            e.payload.policy_loss,
            math.isnan(e.payload.value_loss),
            math.copysign(1.0, e.payload.entropy),
            e.payload.lstm_h_rms,
            dict(e.payload.extra),
        )
        for e in events
        if isinstance(e, PPOUpdateCompleted)
    ] == [
        (PPOUpdateCompleted, k * 0.1, True, -1.0, math.inf, {"k": float(k)})
        for k in range(len(events))
    ]


@pytest.mark.parametrize("trial", TRIALS)
def test_kill_9_of_esper_ppo_leaves_a_readable_log_of_every_update_written(
    tmp_path: Path, trial: int
) -> None:
    """SIGKILL of `esper ppo` after a random number of updates: RUN_STARTED, then updates
    0..k in seq order with all 12 LSTM fields; at most a torn tail; the structured log too."""
    rng = random.Random(trial)
    run_id = f"kill-{trial}"
    run_dir = tmp_path / "runs" / run_id
    args = ("--wandb", "disabled", "--episodes", "10000", *SMALL)
    proc = start(esper_ppo(tmp_path, run_id, *args), tmp_path)
    try:
        seen = wait_for_updates(proc, RunLayout(run_dir).events, rng.randint(1, 4))
        time.sleep(rng.random() * 0.3)  # anywhere inside the next update
        proc.send_signal(signal.SIGKILL)
        finish(proc, timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGKILL

    events, bad = read_back(run_dir)
    n = len(events) - 1
    assert n >= seen
    assert [(e.seq, type(e), e.update) for e in events] == [
        (0, RunStarted, 0),
        *[(k + 1, PPOUpdateCompleted, k) for k in range(n)],
    ]
    missing = [[f for f in LSTM_FIELDS if getattr(e.payload, f) is None] for e in events[1:]]
    assert missing == [[]] * n
    assert [(b.line_number, b.torn) for b in bad] in ([], [(len(events) + 1, True)])

    records, broken = log_records(run_dir)
    assert len(broken) <= 1
    assert log_kinds(records) == [
        (0, "RUN_STARTED", 0),
        *[(k + 1, "PPO_UPDATE_COMPLETED", k) for k in range(len(records) - 1)],
    ]
