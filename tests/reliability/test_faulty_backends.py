"""A backend that raises on every event, at start, at close, is slow or hangs forever.

Each runs beside the built-in backends in a real ``run_ppo`` (the function behind
``esper ppo``), in-process: training finishes, the analytics log and the structured log
still hold every event, ``close`` returns within its timeout naming the culprit, and the
exit status (4) and the summary say which backend failed.
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

from esper_telemetry import EventType, TelemetryEvent
from esper_telemetry.hub import Subscriber
from esper_telemetry.run import RunOptions, RunOutcome, run_ppo
from esper_telemetry.training.ppo import PPOConfig
from tests.reliability.children import kinds, log_kinds, log_records, read_back

CLOSE_TIMEOUT = 2.0
SMALL = PPOConfig(updates=5, envs=2, steps=8, hidden=16, epochs=2)
#: Events of a run: RUN_STARTED, one per update, RUN_FINISHED.
EVENTS = SMALL.updates + 2
SLEEP_S = 0.1


class RaisesOnEveryEvent:
    name = "faulty"

    def handle(self, event: TelemetryEvent) -> None:
        raise RuntimeError(f"faulty backend refuses {event.event_type.value}")


class RaisesAtStart:
    name = "faulty"

    def handle(self, event: TelemetryEvent) -> None:
        if event.event_type is EventType.RUN_STARTED:
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


class SleepsOnEveryEvent:
    name = "faulty"

    def handle(self, event: TelemetryEvent) -> None:
        time.sleep(SLEEP_S)


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


def run_with(root: Path, backend: Subscriber, config: PPOConfig = SMALL) -> Run:
    out = io.StringIO()
    options = RunOptions(
        config=config,
        run_root=root,
        run_id="faulty",
        wandb="disabled",
        backends=(backend,),
        progress=False,
        close_timeout=CLOSE_TIMEOUT,
    )
    outcome = run_ppo(options, Console(file=out, width=200))
    returned = datetime.now(UTC)
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
        f"backend failed to deliver everything: faulty (failed {failed}, dropped 0, "
        f"abandoned 0, last error: {faulty.last_error})"
    )
    assert f"faulty           delivered {delivered}, failed {failed}, dropped 0\n" in run.console
    assert run.close_s < CLOSE_TIMEOUT


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
        f"backend failed to deliver everything: faulty (failed 0, dropped 0, abandoned {EVENTS})"
    )
    assert f"faulty           delivered 0, failed 0, dropped 0, abandoned {EVENTS}" in run.console
    assert CLOSE_TIMEOUT <= run.close_s < CLOSE_TIMEOUT + 1.0


def test_a_slow_backend_that_keeps_up_delays_nothing_and_loses_nothing(tmp_path: Path) -> None:
    """100 ms per event on a short run: it finishes within the close timeout; exit 0."""
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
    assert (run.outcome.exit_code, run.outcome.message) == (0, "completed")


def test_a_slow_backend_that_falls_behind_never_slows_training_and_is_named_at_close(
    tmp_path: Path,
) -> None:
    """100 ms per event over 60 updates (6.2 s of work): training does not wait for it,
    close() gives up after its timeout, names it and counts what it abandoned; exit 4."""
    config = PPOConfig(updates=60, envs=2, steps=8, hidden=16, epochs=2)
    events = config.updates + 2
    started = time.monotonic()
    run = run_with(tmp_path, SleepsOnEveryEvent(), config)
    elapsed = time.monotonic() - started
    assert elapsed < events * SLEEP_S  # the run did not wait for the slow backend
    outcome = run.outcome
    assert outcome.stats is not None
    assert outcome.result is not None
    assert (outcome.result.status, outcome.result.updates) == ("completed", 60)
    assert outcome.stats.stuck == ("faulty",)
    (faulty,) = [s for s in outcome.stats.subscribers if s.name == "faulty"]
    assert faulty.abandoned > 0
    assert faulty.delivered + faulty.abandoned == events
    assert outcome.exit_code == 4
    assert outcome.message == (
        "backend failed to deliver everything: faulty (failed 0, dropped 0, "
        f"abandoned {faulty.abandoned})"
    )
    assert CLOSE_TIMEOUT <= run.close_s < CLOSE_TIMEOUT + 1.0
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
