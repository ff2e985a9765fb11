"""W&B unavailable: its service process (`wandb-core`) killed, or hung, in the middle of a run.

Online mode without credentials is refused before training, with one clear line and
exit 2: ``tests/test_cli_ppo.py::test_wandb_online_without_credentials_fails_before_training``
(and ``tests/test_backend_wandb.py::test_online_mode_without_credentials_fails_at_subscribe``).
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

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
from tests.reliability.edge_children import (
    Child,
    alive,
    esper_child,
    finish_child,
    reap,
    start_child,
    wandb_core_of,
)

UPDATES = 12
EMITTED = UPDATES + 2
FAILURE = re.compile(
    r"esper ppo: backend failed to deliver everything: wandb \(lost (\d+): failed (\d+), "
    r"dropped 0, abandoned 0, undelivered (\d+), last error: (\w+): (.+)\)"
)
#: The verdict when the hub gave up on a hung W&B and esper stopped its service process.
STUCK = re.compile(
    r"esper ppo: backend failed to deliver everything: wandb \(stuck, lost \d+: .*\); "
    r"W&B did not respond: (stopped|killed) W&B's service process \(wandb-core, pid (\d+)\)"
)
#: How long a hung W&B may keep a run from exiting past its close timeout: a bound on a
#: hang (the exit used to wait for wandb-core for ever), not a measure of speed.
HANG_BOUND_S = 60.0


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
    lost, failed, undelivered = int(match[1]), int(match[2]), int(match[3])
    # Undelivered: rows W&B had taken before the kill that its run file does not hold.
    assert lost == failed + undelivered
    assert match[4] in ("ConnectionResetError", "BrokenPipeError")
    # Every event after the kill failed, and so did close() (run.finish()): one more.
    delivered = EMITTED + 1 - failed
    assert 0 < delivered < EMITTED
    assert f"wandb            delivered {delivered}, failed {failed}, dropped 0" in out
    assert f"wb: completed, {UPDATES} updates" in out


#: (close timeout, when wandb-core is stopped: after that many updates, 0 as RUN_FINISHED
#: reaches the analytics log). 30 s is esper ppo's own timeout; the default run takes 3.
HANG_TRIALS = [
    pytest.param(3.0, 2, id="close-3s-after-update-2"),
    *[
        pytest.param(3.0, k, id=f"close-3s-trial-{t}", marks=pytest.mark.soak)
        for t, k in enumerate([1, 3, 4, 0, 1, 2, 3, 4, 0])
    ],
    *[
        pytest.param(30.0, k, id=f"close-30s-trial-{t}", marks=pytest.mark.soak)
        for t, k in enumerate([2, 4, 0])
    ],
]


@pytest.mark.parametrize(("close_timeout", "stop_after"), HANG_TRIALS)
def test_a_hung_wandb_core_costs_the_close_timeout_then_exit_4_naming_wandb_stuck(
    tmp_path: Path,
    close_timeout: float,
    stop_after: int,
    record_property: Callable[[str, object], None],
) -> None:
    """wandb-core stopped (SIGSTOP) mid-run or as the run finishes: training completes, the
    close gives up on W&B after its timeout, esper stops W&B's service (no process left
    behind) and exits 4, the verdict and the summary naming W&B as stuck; both logs are
    complete. (Stopped as the run finishes, W&B may have finished first: exit 0.) The
    time from RUN_FINISHED to the exit is recorded (``--junitxml``), not asserted."""
    run_dir = tmp_path / "runs" / "hung"
    argv = esper_child(tmp_path, "hung", "--wandb", "offline", "--episodes", "6", *SMALL)
    child = start_child(argv, tmp_path, {"EDGE_CLOSE_TIMEOUT": str(close_timeout)})
    try:
        if stop_after:
            wait_for_updates_of(child, RunLayout(run_dir).events, stop_after)
        else:
            wait_for_run_finished(child, RunLayout(run_dir).events)
        (core,) = wandb_core_of(child.proc.pid)
        os.kill(core, signal.SIGSTOP)
        wait_for_run_finished(child, RunLayout(run_dir).events)
        finished = time.monotonic()
        status = finish_child(child, close_timeout + HANG_BOUND_S)
        exited_after = time.monotonic() - finished
    finally:
        reap(child)
    record_property("exit_status", status)
    record_property("exited_after_run_finished_s", round(exited_after, 2))
    if stop_after == 0 and status == 0:  # W&B had finished before it was stopped
        assert "stuck" not in child.out
        return
    assert status == 4, child.err
    (line,) = [x for x in child.err.splitlines() if x.startswith("esper ppo:")]
    match = STUCK.fullmatch(line)
    assert match is not None, line
    assert (int(match[2]), alive(core)) == (core, False)
    assert re.search(r"^  wandb +delivered \d+, .*, stuck$", child.out, re.MULTILINE), child.out
    events, bad = read_back(run_dir)
    assert bad == []
    assert kinds(events) == [
        (0, "RUN_STARTED", 0),
        *[(k + 1, "PPO_UPDATE_COMPLETED", k) for k in range(6)],
        (7, "RUN_FINISHED", 5),
    ]
    records, broken = log_records(run_dir)
    assert (log_kinds(records), broken) == (kinds(events), [])


def test_a_wandb_core_hung_while_wandb_starts_fails_the_start_with_exit_2(
    tmp_path: Path,
) -> None:
    """wandb-core stopped as soon as it appears: wandb.init would wait for it for ever;
    past the backend's init_timeout W&B's service is stopped and the run does not start:
    exit 2 with one line naming W&B, no run directory, no process left behind."""
    argv = esper_child(tmp_path, "init-hung", "--wandb", "offline", *SMALL)
    child = start_child(argv, tmp_path, {"EDGE_WANDB_INIT_TIMEOUT": "3"})
    try:
        deadline = time.monotonic() + HANG_BOUND_S * 2
        while not (cores := wandb_core_of(child.proc.pid)):
            assert child.proc.poll() is None, f"the child exited first: {child.err[-2000:]}"
            assert time.monotonic() < deadline, "W&B never started its service process"
            time.sleep(0.002)
        (core,) = cores
        os.kill(core, signal.SIGSTOP)
        status = finish_child(child, HANG_BOUND_S)
    finally:
        reap(child)
    assert (status, alive(core)) == (2, False), child.err
    (line,) = [x for x in child.err.splitlines() if x.startswith("esper ppo:")]
    assert line.startswith("esper ppo: W&B did not start its run within 3 s"), line
    assert f"W&B's service process (wandb-core, pid {core})" in line
    assert "Traceback" not in child.err
    assert list((tmp_path / "runs").iterdir()) == []


def wait_for_updates_of(child: Child, events_file: Path, count: int) -> None:
    """Wait until the child's analytics log holds ``count`` PPO updates."""
    deadline = time.monotonic() + HANG_BOUND_S * 2
    while not (
        events_file.exists() and events_file.read_bytes().count(b'"PPO_UPDATE_COMPLETED"') >= count
    ):
        assert child.proc.poll() is None, f"the child exited first: {child.err[-2000:]}"
        assert time.monotonic() < deadline, f"no {count} updates in {events_file}"
        time.sleep(0.02)


def wait_for_run_finished(child: Child, events_file: Path) -> None:
    """Wait until RUN_FINISHED reaches the analytics log (the close is under way)."""
    deadline = time.monotonic() + HANG_BOUND_S * 2
    while not (events_file.exists() and b'"RUN_FINISHED"' in events_file.read_bytes()):
        assert child.proc.poll() is None, f"the child exited first: {child.err[-2000:]}"
        assert time.monotonic() < deadline, f"no RUN_FINISHED in {events_file}"
        time.sleep(0.01)
