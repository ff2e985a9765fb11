"""W&B unavailable: its service process (`wandb-core`) killed in the middle of a run.

Online mode without credentials is refused before training, with one clear line and
exit 2: ``tests/test_cli_ppo.py::test_wandb_online_without_credentials_fails_before_training``
(and ``tests/test_backend_wandb.py::test_online_mode_without_credentials_fails_at_subscribe``).
"""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

from esper_telemetry.contracts import RunFinished, RunLayout
from tests.reliability.children import (
    SMALL,
    children_of,
    esper_ppo,
    finish,
    kinds,
    log_kinds,
    log_records,
    read_back,
    start,
    wait_for_updates,
)

UPDATES = 12
EMITTED = UPDATES + 2
FAILURE = re.compile(
    r"esper ppo: backend failed to deliver everything: wandb \(lost (\d+): failed (\d+), "
    r"dropped 0, abandoned 0, undelivered 0, last error: (\w+): (.+)\)"
)


def test_killing_wandb_core_mid_run_is_a_reported_backend_failure_and_nothing_else(
    tmp_path: Path,
) -> None:
    """SIGKILL of wandb-core after update 3: training completes, the analytics and
    structured logs hold every event, and exit 4 names W&B with its connection error."""
    run_dir = tmp_path / "runs" / "wb"
    argv = esper_ppo(tmp_path, "wb", "--wandb", "offline", "--episodes", str(UPDATES), *SMALL)
    proc = start(argv, tmp_path)
    try:
        wait_for_updates(proc, RunLayout(run_dir).events, 3)
        (core,) = [pid for pid, exe in children_of(proc.pid) if exe.endswith("wandb-core")]
        os.kill(core, signal.SIGKILL)
        out, err = finish(proc, timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 4, err

    events, bad = read_back(run_dir)
    assert bad == []
    assert kinds(events) == [
        (0, "RUN_STARTED", 0),
        *[(k + 1, "PPO_UPDATE_COMPLETED", k) for k in range(UPDATES)],
        (UPDATES + 1, "RUN_FINISHED", UPDATES - 1),
    ]
    assert [e.payload.status for e in events if isinstance(e, RunFinished)] == ["completed"]
    records, broken = log_records(run_dir)
    assert (log_kinds(records), broken) == (kinds(events), [])

    (line,) = [x for x in err.splitlines() if x.startswith("esper ppo:")]
    match = FAILURE.fullmatch(line)
    assert match is not None, line
    lost, failed = int(match[1]), int(match[2])
    assert lost == failed
    assert match[3] in ("ConnectionResetError", "BrokenPipeError")
    # Every event after the kill failed, and so did close() (run.finish()): one more.
    delivered = EMITTED + 1 - failed
    assert 0 < delivered < EMITTED
    assert f"wandb            delivered {delivered}, failed {failed}, dropped 0" in out
    assert f"wb: completed, {UPDATES} updates" in out
