"""Ctrl-C (SIGINT) and SIGTERM during training: every event emitted before the signal
reaches every backend, and the run ends marked interrupted.

The SIGTERM run without W&B is in ``tests/test_cli_ppo.py``; here both signals hit a
run with every backend (W&B offline), and Ctrl-C also lands inside the hub itself. The
run's handlers, phase by phase, are pinned at the end; signals at the edges of a run
(start-up, shutdown, Python's exit) are in ``test_edges.py``.
"""

from __future__ import annotations

import io
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console

import esper_telemetry.run
from esper_telemetry import TelemetryHub
from esper_telemetry import emit_ppo_update_event as emit_update
from esper_telemetry._signals import RunSignals
from esper_telemetry.contracts import RunFinished, RunFinishedPayload, RunLayout, TelemetryEvent
from esper_telemetry.run import RunOptions, run_ppo
from esper_telemetry.testing import RecordingBackend
from esper_telemetry.training import PPOConfig
from tests.reliability.children import (
    SMALL,
    esper_ppo,
    finish,
    kinds,
    log_kinds,
    log_records,
    read_back,
    sigint_not_ignored,
    start,
    wait_for_updates,
)
from tests.wandb_offline import history, inspect_run

STATS = {"policy_loss": 0.0, "value_loss": 0.1, "entropy": 0.6}
#: How long a gate may wait for what it waits on: a bound on a hang, not a measure of speed.
GATE_BOUND_S = 60.0


@pytest.fixture
def ctrl_c() -> Iterator[None]:
    """SIGINT raises KeyboardInterrupt in this process during the test."""
    with sigint_not_ignored():
        yield


def send_like_a_terminal(pid: int, signum: signal.Signals) -> None:
    """Ctrl-C reaches the terminal's whole foreground process group; `kill` one process."""
    if signum is signal.SIGINT:
        os.killpg(pid, signum)
    else:
        os.kill(pid, signum)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=lambda s: s.name)
def test_a_signal_mid_run_reaches_every_backend_and_marks_the_run_interrupted(
    tmp_path: Path, signum: signal.Signals
) -> None:
    """Exit 130; the analytics log, the structured log and the offline W&B run hold the
    same PPO updates, and RUN_FINISHED says interrupted."""
    run_dir = tmp_path / "runs" / "sig"
    argv = esper_ppo(tmp_path, "sig", "--wandb", "offline", "--episodes", "10000", *SMALL)
    proc = start(argv, tmp_path, new_session=True)  # its own group, as under a shell
    try:
        wait_for_updates(proc, RunLayout(run_dir).events, 3)
        send_like_a_terminal(proc.pid, signum)
        out, err = finish(proc, timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert [line for line in err.splitlines() if line.startswith("esper ppo:")] == [
        "esper ppo: interrupted; every event emitted so far was flushed"
    ]
    assert ": interrupted, " in out

    events, bad = read_back(run_dir)
    n = len(events) - 2
    assert bad == []
    assert kinds(events) == [
        (0, "RUN_STARTED", 0),
        *[(k + 1, "PPO_UPDATE_COMPLETED", k) for k in range(n)],
        (n + 1, "RUN_FINISHED", n - 1),
    ]
    assert [e.payload.status for e in events if isinstance(e, RunFinished)] == ["interrupted"]
    records, broken = log_records(run_dir)
    assert (log_kinds(records), broken) == (kinds(events), [])
    (wandb_run,) = RunLayout(run_dir).wandb.glob("offline-run-*")
    assert [row["_step"] for row in history(inspect_run(wandb_run))] == list(range(n))


@pytest.mark.soak
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=lambda s: s.name)
@pytest.mark.parametrize("trial", range(20))
def test_a_signal_at_a_random_moment_leaves_every_backend_agreeing_and_the_run_interrupted(
    tmp_path: Path, trial: int, signum: signal.Signals
) -> None:
    """Ctrl-C (to the process group, as a terminal sends it) or SIGTERM (to the process)
    after a random number of updates and a random delay, so that it lands anywhere in an
    update, telemetry included: exit 130; the analytics log, the structured log and the
    offline W&B run hold the same complete run."""
    rng = random.Random(trial * 2 + (signum is signal.SIGTERM))
    run_dir = tmp_path / "runs" / "int"
    argv = esper_ppo(tmp_path, "int", "--wandb", "offline", "--episodes", "10000", *SMALL)
    proc = start(argv, tmp_path, new_session=True)
    try:
        wait_for_updates(proc, RunLayout(run_dir).events, rng.randint(1, 4))
        time.sleep(rng.random() * 0.3)
        send_like_a_terminal(proc.pid, signum)
        _, err = finish(proc, timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    events, bad = read_back(run_dir)
    n = len(events) - 2
    assert bad == []
    assert kinds(events) == [
        (0, "RUN_STARTED", 0),
        *[(k + 1, "PPO_UPDATE_COMPLETED", k) for k in range(n)],
        (n + 1, "RUN_FINISHED", max(n - 1, 0)),
    ]
    assert [e.payload.status for e in events if isinstance(e, RunFinished)] == ["interrupted"]
    records, broken = log_records(run_dir)
    assert (log_kinds(records), broken) == (kinds(events), [])
    (wandb_run,) = RunLayout(run_dir).wandb.glob("offline-run-*")
    assert [row["_step"] for row in history(inspect_run(wandb_run))] == list(range(n))


@pytest.mark.usefixtures("ctrl_c")
def test_ctrl_c_inside_an_inline_subscriber_still_reaches_every_other_subscriber() -> None:
    """SIGINT while an inline subscriber handles update 2: emit raises KeyboardInterrupt
    only after update 2 was offered to everyone, so no subscriber misses it."""
    hub = TelemetryHub("ctrl-c-inline")

    def press_ctrl_c(event: TelemetryEvent) -> None:
        if event.update == 2:
            os.kill(os.getpid(), signal.SIGINT)  # the default handler raises right here

    hub.subscribe(press_ctrl_c, mode="inline")
    threaded, inline = RecordingBackend("threaded"), RecordingBackend("inline")
    hub.subscribe(threaded)
    hub.subscribe(inline, mode="inline")
    emit_update(hub, update=0, metrics=STATS)
    emit_update(hub, update=1, metrics=STATS)
    with pytest.raises(KeyboardInterrupt):
        emit_update(hub, update=2, metrics=STATS)
    emit_update(hub, update=3, metrics=STATS)  # the trainer's RUN_FINISHED, say
    stats = hub.close(timeout=10)
    expected = [(k, k) for k in range(4)]
    assert [(e.seq, e.update) for e in threaded.events] == expected
    assert [(e.seq, e.update) for e in inline.events] == expected
    # The subscriber the interrupt landed in did not finish update 2: neither delivered
    # nor failed (the user interrupted it; nothing went wrong in it).
    assert {s.name: (s.delivered, s.failed) for s in stats.subscribers} == {
        "press_ctrl_c": (3, 0),
        "threaded": (4, 0),
        "inline": (4, 0),
    }


@pytest.mark.usefixtures("ctrl_c")
def test_ctrl_c_while_emit_waits_for_a_full_queue_loses_nothing() -> None:
    """SIGINT while emit waits for room in a full queue (block policy): the event it was
    placing is still queued, and the subscriber receives every event once it wakes."""
    hub = TelemetryHub("ctrl-c-full")
    release = threading.Event()
    seen: list[int] = []

    def slow(event: TelemetryEvent) -> None:
        release.wait(30)
        seen.append(event.seq)

    hub.subscribe(slow, queue_size=1)
    emit_update(hub, update=0, metrics=STATS)  # in its hands
    emit_update(hub, update=1, metrics=STATS)  # fills its queue
    pressed: list[bool] = []
    emitted = threading.Event()
    ctrl_c = threading.Thread(
        target=lambda: pressed.append(press_ctrl_c_once_waiting(threading.main_thread(), emitted))
    )
    ctrl_c.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            emit_update(hub, update=2, metrics=STATS)  # waits for room; Ctrl-C lands here
    finally:
        emitted.set()
        ctrl_c.join()
    release.set()
    hub.emit(RunFinished(update=3, payload=RunFinishedPayload(status="interrupted")))
    stats = hub.close(timeout=10)
    assert pressed == [True]
    assert seen == [0, 1, 2, 3]
    assert [(s.name, s.delivered, s.dropped, s.abandoned, s.lost) for s in stats.subscribers] == [
        ("slow", 4, 0, 0, 0)
    ]


def press_ctrl_c_once_waiting(thread: threading.Thread, emitted: threading.Event) -> bool:
    """Send SIGINT to this process once ``thread`` is blocked in a wait inside the hub (a
    gate on what the thread is doing, not a delay); False if it never got there, or if
    ``emitted`` says the emit ended first."""
    deadline = time.monotonic() + GATE_BOUND_S
    while not emitted.is_set():
        if blocked_in_hub(thread):
            os.kill(os.getpid(), signal.SIGINT)
            return True
        if time.monotonic() > deadline:
            os.kill(os.getpid(), signal.SIGINT)  # free an emit stuck elsewhere, and fail
            return False
        time.sleep(0.001)
    return False


def blocked_in_hub(thread: threading.Thread) -> bool:
    """Whether ``thread``'s innermost Python frame is a ``wait`` (Condition, Event) that
    code of the hub called."""
    assert thread.ident is not None
    frame = sys._current_frames().get(thread.ident)
    stack = []
    while frame is not None:
        stack.append(frame)
        frame = frame.f_back
    in_hub = any(f"esper_telemetry{os.sep}hub{os.sep}" in f.f_code.co_filename for f in stack)
    return bool(stack) and stack[0].f_code.co_name == "wait" and in_hub


@pytest.mark.usefixtures("ctrl_c")
def test_in_training_ctrl_c_raises_once_and_a_second_one_gives_up_waiting() -> None:
    """The first Ctrl-C of training raises KeyboardInterrupt (the trainer ends the run
    interrupted); a second only sets give_up, so it cannot cut the run's RUN_FINISHED."""
    signals = RunSignals.install()
    try:
        signals.training()
        with pytest.raises(KeyboardInterrupt):
            press(signal.SIGINT)
        press(signal.SIGINT)
        assert (signals.received, signals.stop.is_set(), signals.give_up.is_set()) == (
            [signal.SIGINT, signal.SIGINT],
            True,
            True,
        )
    finally:
        signals.restore()


@pytest.mark.usefixtures("ctrl_c")
def test_once_the_command_is_over_and_python_goes_on_a_signal_gives_way() -> None:
    """After exiting() in a process that does not exit (a command run in-process, as under
    click's CliRunner), Ctrl-C raises KeyboardInterrupt as before, and the handlers that
    were there before install() are back."""
    before = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
    signals = RunSignals.install()
    signals.shutting_down()
    signals.exiting()
    with pytest.raises(KeyboardInterrupt):
        press(signal.SIGINT)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_a_ctrl_c_that_escapes_the_trainer_still_ends_the_run_on_the_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A KeyboardInterrupt out of train() before any RUN_FINISHED (it landed before the
    trainer's own handling began): run_ppo emits RUN_FINISHED interrupted itself and
    exits 130; both logs agree."""

    def interrupted_at_once(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(esper_telemetry.run, "train", interrupted_at_once)
    config = PPOConfig(updates=2, envs=2, steps=8, hidden=16)
    options = RunOptions(config, run_root=tmp_path, run_id="escaped", wandb="disabled")
    outcome = run_ppo(options, Console(file=io.StringIO()))
    assert (outcome.exit_code, outcome.message) == (
        130,
        "interrupted; every event emitted so far was flushed",
    )
    events, bad = read_back(tmp_path / "escaped")
    assert (bad, kinds(events)) == ([], [(0, "RUN_FINISHED", 0)])
    assert [e.payload.status for e in events if isinstance(e, RunFinished)] == ["interrupted"]
    records, broken = log_records(tmp_path / "escaped")
    assert (log_kinds(records), broken) == (kinds(events), [])


def press(signum: signal.Signals) -> None:
    """Send ``signum`` to this process; its Python handler runs before this returns."""
    os.kill(os.getpid(), signum)
    for _ in range(100):  # the handler runs at the next bytecode; a few are enough
        time.sleep(0.001)
