"""Signals at the edges of a run: during start-up and during the shutdown.

Start-up (torch loading, W&B starting, the run directory) and the shutdown
(``RUN_FINISHED`` out, every backend flushing and closing) hold a signal until they are
done; then the run exits 130. Start-up leaves no run directory (the run id stays free);
the shutdown leaves a complete run, W&B included. A second Ctrl-C does not wait: during
start-up it quits at once, during the shutdown it stops waiting and says what was lost.

Each default test aims its signal with a gate of ``edge_children`` (the child stops at
that exact moment, the test signals it, then opens the gate); the soak tests aim at
random moments of a plain ``esper ppo``, without gates, and check the same promises.
"""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from esper_telemetry.contracts import RunFinished, RunLayout
from tests.reliability.children import (
    SMALL,
    esper_ppo,
    kinds,
    log_kinds,
    log_records,
    read_back,
)
from tests.reliability.edge_children import (
    Child,
    esper_child,
    finish_child,
    gate_env,
    open_gate,
    reap,
    start_child,
    wait_for_gate,
    wandb_core_of,
)
from tests.wandb_offline import history, inspect_run, of_type

#: How long a child may take to exit once it should: a bound on a hang, not a measure.
EXIT_BOUND_S = 120.0
SIGNALS = [signal.SIGINT, signal.SIGTERM]
NAME = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}
UPDATES = 3


def esper_lines(err: str) -> list[str]:
    """The lines of stderr that esper ppo wrote itself."""
    return [line for line in err.splitlines() if line.startswith("esper ppo:")]


def assert_complete_run(run_dir: Path, updates: int, status: str) -> None:
    """The analytics log and the structured log hold the same whole run."""
    events, bad = read_back(run_dir)
    assert bad == []
    assert kinds(events) == [
        (0, "RUN_STARTED", 0),
        *[(k + 1, "PPO_UPDATE_COMPLETED", k) for k in range(updates)],
        (updates + 1, "RUN_FINISHED", max(updates - 1, 0)),
    ]
    assert [e.payload.status for e in events if isinstance(e, RunFinished)] == [status]
    records, broken = log_records(run_dir)
    assert (log_kinds(records), broken) == (kinds(events), [])


def assert_wandb_complete(run_dir: Path, updates: int) -> None:
    """The offline W&B run holds every update and W&B's exit record."""
    (wandb_run,) = RunLayout(run_dir).wandb.glob("offline-run-*")
    records = inspect_run(wandb_run)
    assert [row["_step"] for row in history(records)] == list(range(updates))
    assert len(of_type(records, "exit")) == 1


# -- start-up ---------------------------------------------------------------------------------


@pytest.mark.parametrize("signum", SIGNALS, ids=lambda s: s.name)
def test_a_signal_while_torch_loads_ends_the_run_with_one_line_and_creates_nothing(
    tmp_path: Path, signum: signal.Signals
) -> None:
    """The signal lands inside `import torch`: the import completes (nothing half
    imported), then exit 130 with one line on stderr, and no run directory."""
    gates = tmp_path / "gates"
    gates.mkdir()
    argv = esper_child(tmp_path, "imp", "--wandb", "disabled", *SMALL)
    child = start_child(argv, tmp_path, gate_env(gates, "torch-import"))
    try:
        wait_for_gate(gates, "torch-import", child.proc.poll)
        child.send(signum)
        time.sleep(0.2)  # let the handler run while the child is still in the import
        open_gate(gates, "torch-import")
        status = finish_child(child, EXIT_BOUND_S)
    finally:
        reap(child)
    assert (status, child.err.splitlines(), child.out) == (
        130,
        [f"esper ppo: interrupted ({NAME[signum]}) while starting; nothing was created"],
        "",
    )
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("gate", "signum"),
    [("wandb-init", signal.SIGTERM), ("wandb-started", signal.SIGINT)],
    ids=["SIGTERM-as-wandb-init-begins", "SIGINT-once-wandb-started"],
)
def test_a_signal_while_wandb_starts_ends_the_run_before_training_and_leaves_no_run_dir(
    tmp_path: Path, gate: str, signum: signal.Signals
) -> None:
    """The signal lands while W&B starts (the run directory exists): start-up completes,
    the run ends before training, exit 130 with one line, no run directory is left (the
    run id stays free) and no W&B service outlives the run."""
    gates = tmp_path / "gates"
    gates.mkdir()
    argv = esper_child(tmp_path, "wbs", "--wandb", "offline", *SMALL)
    child = start_child(argv, tmp_path, gate_env(gates, gate))
    try:
        wait_for_gate(gates, gate, child.proc.poll)
        assert (tmp_path / "runs" / "wbs").is_dir()  # the half-made run directory
        child.send(signum)
        time.sleep(0.2)
        open_gate(gates, gate)
        status = finish_child(child, EXIT_BOUND_S)
        left = wandb_core_of(child.proc.pid)
    finally:
        reap(child)
    assert (status, child.err.splitlines(), child.out) == (
        130,
        [
            f"esper ppo: interrupted ({NAME[signum]}) before training started; nothing was "
            "trained and no run directory is left"
        ],
        "",
    )
    assert list((tmp_path / "runs").iterdir()) == []
    assert left == []


def test_ctrl_c_twice_while_wandb_starts_quits_at_once_and_removes_the_run_dir(
    tmp_path: Path,
) -> None:
    """A second Ctrl-C during start-up does not wait for it (the gate is never opened):
    exit 130 at once with one line, the half-made run directory removed, W&B's service
    process stopped."""
    gates = tmp_path / "gates"
    gates.mkdir()
    argv = esper_child(tmp_path, "twice", "--wandb", "offline", *SMALL)
    child = start_child(argv, tmp_path, gate_env(gates, "wandb-started"))
    try:
        wait_for_gate(gates, "wandb-started", child.proc.poll)
        (core,) = wandb_core_of(child.proc.pid)
        child.send(signal.SIGINT)
        time.sleep(0.2)
        child.send(signal.SIGINT)
        status = finish_child(child, EXIT_BOUND_S)  # the gate would hold it far longer
        left = wandb_core_of(child.proc.pid)
    finally:
        reap(child)
    assert (status, child.err.splitlines()) == (
        130,
        [
            "esper ppo: interrupted while starting (Ctrl-C twice); quit at once: nothing was "
            "trained; no run directory is left"
        ],
    )
    assert list((tmp_path / "runs").iterdir()) == []
    assert core not in left
    assert left == []


# -- the shutdown -----------------------------------------------------------------------------


@pytest.mark.parametrize("signum", SIGNALS, ids=lambda s: s.name)
def test_a_signal_during_the_shutdown_waits_for_it_then_exits_130_with_wandb_complete(
    tmp_path: Path, signum: signal.Signals
) -> None:
    """The signal lands while the hub closes (a backend's close() is held): the shutdown
    completes, exit 130 with one verdict line; both logs and the W&B run are complete
    (every update, W&B's exit record) and no W&B service is left."""
    gates = tmp_path / "gates"
    gates.mkdir()
    run_dir = tmp_path / "runs" / "down"
    argv = esper_child(tmp_path, "down", "--wandb", "offline", "--episodes", str(UPDATES), *SMALL)
    child = start_child(argv, tmp_path, gate_env(gates, "closing"))
    try:
        wait_for_gate(gates, "closing", child.proc.poll)
        child.send(signum)
        time.sleep(0.5)
        open_gate(gates, "closing")
        status = finish_child(child, EXIT_BOUND_S)
        left = wandb_core_of(child.proc.pid)
    finally:
        reap(child)
    assert status == 130, child.err
    assert esper_lines(child.err) == [
        f"esper ppo: interrupted ({NAME[signum]}) during the shutdown, which finished first: "
        "every event emitted was flushed"
    ]
    assert "Traceback" not in child.err
    hint = "stopping: flushing every backend first; Ctrl-C again to stop waiting"
    assert (hint in child.out) == (signum is signal.SIGINT)
    assert f"down: completed, {UPDATES} updates" in child.out
    assert_complete_run(run_dir, UPDATES, "completed")
    assert_wandb_complete(run_dir, UPDATES)
    assert left == []


def test_ctrl_c_twice_during_the_shutdown_stops_waiting_and_says_what_was_lost(
    tmp_path: Path,
) -> None:
    """A backend's close() never returns (its gate stays shut): the first Ctrl-C says the
    shutdown is being waited for, the second stops waiting: exit 130 at once, naming
    what was not flushed; the analytics log, closed already, is complete."""
    gates = tmp_path / "gates"
    gates.mkdir()
    run_dir = tmp_path / "runs" / "give-up"
    argv = esper_child(
        tmp_path, "give-up", "--wandb", "disabled", "--episodes", str(UPDATES), *SMALL
    )
    child = start_child(argv, tmp_path, gate_env(gates, "closing"))
    try:
        wait_for_gate(gates, "closing", child.proc.poll)
        child.send(signal.SIGINT)
        wait_for_output(child, "Ctrl-C again to stop waiting")
        child.send(signal.SIGINT)
        status = finish_child(child, EXIT_BOUND_S)  # the gate would hold it far longer
    finally:
        reap(child)
    assert status == 130, child.err
    assert esper_lines(child.err) == [
        "esper ppo: interrupted (Ctrl-C x2); stopped waiting for the shutdown, so this was not "
        "flushed: the last flush of any backend still closing"
    ]
    assert "Traceback" not in child.err
    events, bad = read_back(run_dir)
    assert (bad, [e.event_type.value for e in events][-1]) == ([], "RUN_FINISHED")
    assert len(events) == UPDATES + 2


@pytest.mark.parametrize("signum", SIGNALS, ids=lambda s: s.name)
def test_a_signal_while_python_exits_after_the_verdict_is_held_until_the_process_ends(
    tmp_path: Path, signum: signal.Signals
) -> None:
    """The run is over and Python runs its exit hooks (torch's, W&B's): the signal neither
    kills the process nor raises inside a hook; it exits with the run's own status."""
    gates = tmp_path / "gates"
    gates.mkdir()
    argv = esper_child(tmp_path, "bye", "--wandb", "offline", "--episodes", "1", *SMALL)
    child = start_child(argv, tmp_path, gate_env(gates, "exiting"))
    try:
        wait_for_gate(gates, "exiting", child.proc.poll)
        child.send(signum)
        time.sleep(0.2)
        open_gate(gates, "exiting")
        status = finish_child(child, EXIT_BOUND_S)
    finally:
        reap(child)
    assert (status, child.err) == (0, "")
    assert "bye: completed, 1 updates" in child.out


def wait_for_output(child: Child, text: str) -> None:
    """Wait until the child printed ``text`` on stdout (a gate on what it did)."""
    deadline = time.monotonic() + EXIT_BOUND_S
    while text not in child.out:
        assert child.proc.poll() is None, f"the child exited first: {child.err[-2000:]}"
        assert time.monotonic() < deadline, f"no {text!r} on the child's stdout"
        time.sleep(0.02)


# -- random moments (soak) --------------------------------------------------------------------

#: Where a start-up trial aims: a moment of `esper ppo`'s start, seen from outside.
START_UP_MOMENTS = ("loading", "run-dir", "wandb-core", "wandb-core+")


@pytest.mark.soak
@pytest.mark.parametrize("trial", range(24))
def test_a_signal_at_a_random_moment_of_start_up_exits_130_leaving_no_half_made_run(
    tmp_path: Path, trial: int, record_property: Callable[[str, object], None]
) -> None:
    """SIGINT or SIGTERM while torch loads, as the run directory appears, as W&B's service
    starts, or a moment later: exit 130, one verdict line, no traceback; the run
    directory is gone, or (the signal came as training began) holds a whole run marked
    interrupted; no W&B service is left."""
    rng = random.Random(trial)
    signum = SIGNALS[trial % 2]
    moment = START_UP_MOMENTS[(trial // 2) % len(START_UP_MOMENTS)]
    run_dir = tmp_path / "runs" / "start"
    argv = esper_ppo(tmp_path, "start", "--wandb", "offline", "--episodes", "2", *SMALL)
    child = start_child(argv, tmp_path)
    try:
        aim_at_start_up(child, run_dir, moment, rng)
        child.send(signum)
        status = finish_child(child, EXIT_BOUND_S)
        left = wandb_core_of(child.proc.pid)
    finally:
        reap(child)
    record_property("aimed_at", f"{signum.name} at {moment}")
    record_property("outcome", f"exit {status}, run dir {'kept' if run_dir.exists() else 'none'}")
    assert status == 130, child.err
    assert len(esper_lines(child.err)) == 1, child.err
    assert "Traceback" not in child.err
    assert left == []
    if run_dir.exists():
        events, bad = read_back(run_dir)
        n = len(events) - 2
        assert (bad, n >= 0) == ([], True)
        assert_complete_run(run_dir, n, "interrupted")


def aim_at_start_up(child: Child, run_dir: Path, moment: str, rng: random.Random) -> None:
    """Return at ``moment`` of the child's start-up (see START_UP_MOMENTS)."""
    deadline = time.monotonic() + EXIT_BOUND_S
    while time.monotonic() < deadline:
        assert child.proc.poll() is None, child.err[-2000:]
        if moment == "loading" and b"libtorch" in maps_of(child.proc.pid):
            time.sleep(rng.random() * 0.5)  # torch takes seconds to load: inside it
            return
        if moment == "run-dir" and run_dir.exists():
            return
        if moment.startswith("wandb-core") and wandb_core_of(child.proc.pid):
            if moment.endswith("+"):
                time.sleep(rng.random() * 1.0)
            return
        time.sleep(0.005)
    raise AssertionError(f"the child never reached {moment!r}")


def maps_of(pid: int) -> bytes:
    """What process ``pid`` has mapped (its loaded libraries), empty once it is gone."""
    try:
        return Path(f"/proc/{pid}/maps").read_bytes()
    except OSError:
        return b""


@pytest.mark.soak
@pytest.mark.parametrize("trial", range(24))
def test_a_signal_at_a_random_moment_of_the_shutdown_finishes_it_first(
    tmp_path: Path, trial: int, record_property: Callable[[str, object], None]
) -> None:
    """SIGINT or SIGTERM 0-60 ms after RUN_FINISHED reaches the analytics log (the hub's
    close takes about that long; trials 16-23: 0-400 ms, into Python's exit): the run
    is complete in both logs and in W&B, no traceback, no W&B service left; exit 130
    with the interrupted verdict, or 0 when the signal came once the verdict was out
    (Python exiting: the signal is held until the process ends)."""
    rng = random.Random(1000 + trial)
    signum = SIGNALS[trial % 2]
    run_dir = tmp_path / "runs" / "end"
    argv = esper_ppo(tmp_path, "end", "--wandb", "offline", "--episodes", str(UPDATES), *SMALL)
    child = start_child(argv, tmp_path)
    try:
        wait_for_bytes(child, RunLayout(run_dir).events, b'"RUN_FINISHED"')
        time.sleep(rng.random() * (0.06 if trial < 16 else 0.4))
        child.send(signum)
        status = finish_child(child, EXIT_BOUND_S)
        left = wandb_core_of(child.proc.pid)
    finally:
        reap(child)
    verdict = esper_lines(child.err)
    record_property("outcome", f"{signum.name}: exit {status}")
    interrupted = [
        f"esper ppo: interrupted ({NAME[signum]}) during the shutdown, which finished first: "
        "every event emitted was flushed"
    ]
    assert (status, verdict) in ((130, interrupted), (0, [])), child.err
    assert "Traceback" not in child.err
    assert_complete_run(run_dir, UPDATES, "completed")
    assert_wandb_complete(run_dir, UPDATES)
    assert left == []


def wait_for_bytes(child: Child, path: Path, marker: bytes) -> None:
    """Wait until ``path`` holds ``marker``."""
    deadline = time.monotonic() + EXIT_BOUND_S
    while not (path.exists() and marker in path.read_bytes()):
        assert child.proc.poll() is None, f"the child exited first: {child.err[-2000:]}"
        assert time.monotonic() < deadline, f"no {marker!r} in {path}"
        time.sleep(0.002)
