"""A backend that raises on every event, at start, at close, reports rows it could not
write, is slow or hangs forever.

Each runs beside the built-in backends in a real ``run_ppo`` (the function behind
``esper ppo``), in-process: training finishes, the analytics log and the structured log
still hold every event, ``close`` gives up on a stuck one after its timeout naming the
culprit, and the exit status (4) and the summary say which backend lost what.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from rich.console import Console

from esper_telemetry.contracts import RunFinished, RunStarted, TelemetryEvent
from esper_telemetry.hub import Backend, Subscriber
from esper_telemetry.run import RunOptions, RunOutcome, run_ppo
from esper_telemetry.training import PPOConfig
from tests.reliability.children import kinds, log_kinds, log_records, read_back

CLOSE_TIMEOUT = 2.0
#: How long run_ppo may take before the test calls it hung: a bound on a hang (close()
#: waiting forever on a stuck backend), not a measure of speed.
HANG_BOUND_S = 300.0
SMALL = PPOConfig(updates=5, envs=2, steps=8, hidden=16, epochs=2)
#: Events of a run: RunStarted, one per update, RunFinished.
EVENTS = SMALL.updates + 2
SLEEP_S = 0.1


class RaisesOnEveryEvent:
    name = "faulty"

    def handle(self, event: TelemetryEvent) -> None:
        raise RuntimeError(f"faulty backend refuses {event.event_type.value}")


class RaisesAtStart:
    name = "faulty"

    def handle(self, event: TelemetryEvent) -> None:
        if isinstance(event, RunStarted):
            raise RuntimeError("faulty backend cannot start")


class RaisesAtClose:
    name = "faulty"

    def handle(self, event: TelemetryEvent) -> None:
        pass

    def close(self) -> None:
        raise OSError("faulty backend lost its disk at close")


class RefusesToSubscribe:
    name = "faulty"

    def on_subscribe(self, hub: object) -> None:
        raise RuntimeError("no licence for this machine")

    def handle(self, event: TelemetryEvent) -> None:
        pass


class WritesOnlyTheFirstTwo(Backend):
    """Handles every event without raising, but says it could not write all but two (as W&B
    does for a row whose step went backwards)."""

    name = "faulty"

    def __init__(self) -> None:
        self.handled = 0

    def handle(self, event: TelemetryEvent) -> None:
        self.handled += 1

    def undelivered(self) -> int:
        return max(self.handled - 2, 0)


class SleepsOnEveryEvent:
    name = "faulty"

    def handle(self, event: TelemetryEvent) -> None:
        time.sleep(SLEEP_S)


class SleepsOnceTrainingEnded:
    """Holds its first event until the run's RunFinished reached another backend (a gate:
    training has ended), then takes SLEEP_S per event."""

    name = "faulty"

    def __init__(self) -> None:
        self.training_ended = threading.Event()

    def handle(self, event: TelemetryEvent) -> None:
        self.training_ended.wait()
        time.sleep(SLEEP_S)


class OpensTheGateAtRunFinished:
    name = "gate"

    def __init__(self, gate: threading.Event) -> None:
        self.gate = gate

    def handle(self, event: TelemetryEvent) -> None:
        if isinstance(event, RunFinished):
            self.gate.set()


class BlocksForever:
    name = "faulty"

    def __init__(self) -> None:
        self.release = threading.Event()

    def handle(self, event: TelemetryEvent) -> None:
        self.release.wait()


@dataclass
class Run:
    outcome: RunOutcome
    console: str
    close_s: float
    """From RUN_FINISHED (built right before the hub's close) to run_ppo's return."""


def run_with(root: Path, *backends: Subscriber, config: PPOConfig = SMALL) -> Run:
    """run_ppo with ``backends`` added, on a worker thread that must end within the hang bound."""
    out = io.StringIO()
    options = RunOptions(
        config=config,
        run_root=root,
        run_id="faulty",
        wandb="disabled",
        backends=backends,
        progress=False,
        close_timeout=CLOSE_TIMEOUT,
    )
    outcomes: list[tuple[RunOutcome, datetime]] = []

    def work() -> None:
        outcomes.append((run_ppo(options, Console(file=out, width=200)), datetime.now(UTC)))

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    worker.join(HANG_BOUND_S)
    assert not worker.is_alive(), "run_ppo hung: close() waited on a stuck backend"
    ((outcome, returned),) = outcomes
    assert outcome.run_dir is not None
    events, _ = read_back(outcome.run_dir)
    close_s = (returned - events[-1].timestamp).total_seconds()
    return Run(outcome, out.getvalue(), close_s)


@pytest.fixture
def blocked() -> Iterator[BlocksForever]:
    backend = BlocksForever()
    yield backend
    backend.release.set()  # let its thread end


def assert_the_others_got_everything(run: Run) -> None:
    """The analytics log and the structured log hold every event the hub emitted."""
    outcome = run.outcome
    assert outcome.run_dir is not None
    assert outcome.stats is not None
    assert outcome.result is not None
    assert (outcome.result.status, outcome.result.updates) == ("completed", 5)
    events, bad = read_back(outcome.run_dir)
    records, broken = log_records(outcome.run_dir)
    n = SMALL.updates
    assert (bad, broken) == ([], [])
    assert kinds(events) == [
        (0, "RUN_STARTED", 0),
        *[(k + 1, "PPO_UPDATE_COMPLETED", k) for k in range(n)],
        (n + 1, "RUN_FINISHED", n - 1),
    ]
    assert log_kinds(records) == kinds(events)
    others = {
        s.name: (s.delivered, s.failed, s.dropped, s.abandoned, s.stuck)
        for s in outcome.stats.subscribers
        if s.name not in ("faulty", "summary")
    }
    assert others == dict.fromkeys(
        ("anomaly-escalator", "analytics", "structlog"), (EVENTS, 0, 0, 0, False)
    )


@pytest.mark.parametrize(
    ("make", "expected", "error"),
    [
        (RaisesOnEveryEvent, (0, EVENTS, 0, False), "RuntimeError: faulty backend refuses"),
        (RaisesAtStart, (EVENTS - 1, 1, 0, False), "RuntimeError: faulty backend cannot start"),
        (RaisesAtClose, (EVENTS, 1, 0, False), "OSError: faulty backend lost its disk at close"),
    ],
    ids=["raises-on-every-event", "raises-at-start", "raises-at-close"],
)
def test_a_raising_backend_is_named_in_the_exit_status_and_the_others_get_everything(
    tmp_path: Path,
    make: Callable[[], Subscriber],
    expected: tuple[int, int, int, bool],
    error: str,
) -> None:
    """Exit 4 naming the backend and its last error; the others hold every event."""
    run = run_with(tmp_path, make())
    assert_the_others_got_everything(run)
    stats = run.outcome.stats
    assert stats is not None
    (faulty,) = [s for s in stats.subscribers if s.name == "faulty"]
    delivered, failed = expected[:2]
    assert (faulty.delivered, faulty.failed, faulty.abandoned, faulty.stuck) == expected
    assert faulty.last_error is not None
    assert faulty.last_error.startswith(error)
    assert run.outcome.exit_code == 4
    assert run.outcome.message == (
        f"backend failed to deliver everything: faulty (lost {failed}: failed {failed}, "
        f"dropped 0, abandoned 0, undelivered 0, last error: {faulty.last_error})"
    )
    assert f"faulty           delivered {delivered}, failed {failed}, dropped 0\n" in run.console


def test_a_backend_that_reports_rows_it_could_not_write_is_a_loss_named_in_the_exit_status(
    tmp_path: Path,
) -> None:
    """A backend that raised nothing but reports undelivered rows: exit 4 naming it with its
    count; the others hold every event."""
    run = run_with(tmp_path, WritesOnlyTheFirstTwo())
    assert_the_others_got_everything(run)
    stats = run.outcome.stats
    assert stats is not None
    (faulty,) = [s for s in stats.subscribers if s.name == "faulty"]
    lost = EVENTS - 2
    assert (faulty.delivered, faulty.failed, faulty.undelivered, faulty.lost, faulty.stuck) == (
        EVENTS,
        0,
        lost,
        lost,
        False,
    )
    assert not stats.lossless
    assert (run.outcome.exit_code, run.outcome.message) == (
        4,
        f"backend failed to deliver everything: faulty (lost {lost}: failed 0, dropped 0, "
        f"abandoned 0, undelivered {lost})",
    )


def test_a_backend_that_blocks_forever_is_named_stuck_within_the_close_timeout(
    tmp_path: Path, blocked: BlocksForever
) -> None:
    """close() gives up after its timeout, names it stuck with every event abandoned;
    exit 4; the others hold every event."""
    run = run_with(tmp_path, blocked)
    assert_the_others_got_everything(run)
    stats = run.outcome.stats
    assert stats is not None
    assert stats.stuck == ("faulty",)
    (faulty,) = [s for s in stats.subscribers if s.name == "faulty"]
    assert (faulty.delivered, faulty.failed, faulty.abandoned, faulty.last_error) == (
        0,
        0,
        EVENTS,
        None,
    )
    assert run.outcome.exit_code == 4
    assert run.outcome.message == (
        f"backend failed to deliver everything: faulty (stuck, lost {EVENTS}: failed 0, "
        f"dropped 0, abandoned {EVENTS}, undelivered 0)"
    )
    assert f"faulty           delivered 0, failed 0, dropped 0, abandoned {EVENTS}" in run.console
    assert run.close_s >= CLOSE_TIMEOUT  # it waited its timeout for the backend, then gave up


def test_a_slow_backend_that_keeps_up_delays_nothing_and_loses_nothing(tmp_path: Path) -> None:
    """100 ms per event on a short run (0.7 s): it catches up within the close timeout;
    exit 0."""
    run = run_with(tmp_path, SleepsOnEveryEvent())
    assert_the_others_got_everything(run)
    stats = run.outcome.stats
    assert stats is not None
    (faulty,) = [s for s in stats.subscribers if s.name == "faulty"]
    assert (faulty.delivered, faulty.failed, faulty.abandoned, faulty.stuck) == (
        EVENTS,
        0,
        0,
        False,
    )
    assert stats.lossless
    assert (run.outcome.exit_code, run.outcome.message) == (0, "completed")


def test_a_slow_backend_that_falls_behind_never_slows_training_and_is_named_at_close(
    tmp_path: Path,
) -> None:
    """A backend held until training has ended (the run's RunFinished reached another
    backend), then 100 ms per event over 60 updates (6.2 s of work): training completes
    without it, close() gives up after its timeout, names it stuck and counts what it
    abandoned; exit 4."""
    config = PPOConfig(updates=60, envs=2, steps=8, hidden=16, epochs=2)
    events = config.updates + 2
    slow = SleepsOnceTrainingEnded()
    run = run_with(tmp_path, slow, OpensTheGateAtRunFinished(slow.training_ended), config=config)
    outcome = run.outcome
    assert outcome.stats is not None
    assert outcome.result is not None
    assert (outcome.result.status, outcome.result.updates) == ("completed", 60)
    assert outcome.stats.stuck == ("faulty",)
    subscribers = {s.name: s for s in outcome.stats.subscribers}
    faulty, gate = subscribers["faulty"], subscribers["gate"]
    assert (gate.delivered, gate.lost) == (events, 0)
    assert faulty.abandoned > 0
    assert faulty.delivered + faulty.abandoned == events
    assert outcome.exit_code == 4
    assert outcome.message == (
        f"backend failed to deliver everything: faulty (stuck, lost {faulty.abandoned}: "
        f"failed 0, dropped 0, abandoned {faulty.abandoned}, undelivered 0)"
    )
    assert run.close_s >= CLOSE_TIMEOUT
    assert outcome.run_dir is not None
    logged, bad = read_back(outcome.run_dir)
    assert (len(logged), bad) == (events, [])


def test_a_backend_that_refuses_to_subscribe_is_named_and_leaves_no_run_behind(
    tmp_path: Path,
) -> None:
    """Exit 2 before training, naming the backend; the run id stays free for a retry."""
    outcome = run_ppo(
        RunOptions(
            config=SMALL,
            run_root=tmp_path,
            run_id="refused",
            wandb="disabled",
            backends=(RefusesToSubscribe(),),
            progress=False,
        ),
        Console(file=io.StringIO()),
    )
    assert (outcome.exit_code, outcome.result) == (2, None)
    assert "faulty" in outcome.message
    assert not (tmp_path / "refused").exists()
