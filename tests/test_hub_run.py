"""hub.run(): a run as a block, RUN_STARTED on entry and RUN_FINISHED with how it ended."""

from __future__ import annotations

import pydantic
import pytest

from esper_telemetry import TelemetryHub
from esper_telemetry.backends import AnomalyEscalator
from esper_telemetry.contracts import RunFinished, RunStarted, TelemetryEvent
from tests.faulty_lstm import FaultyLSTM


def recorded(hub: TelemetryHub) -> list[TelemetryEvent]:
    seen: list[TelemetryEvent] = []
    hub.subscribe(seen.append, mode="inline")
    return seen


def ending(seen: list[TelemetryEvent]) -> RunFinished:
    finished = [e for e in seen if isinstance(e, RunFinished)]
    assert len(finished) == 1
    return finished[0]


def test_a_completed_block_starts_and_finishes_the_run_with_a_summary() -> None:
    with TelemetryHub("ok") as hub:
        seen = recorded(hub)
        with hub.run(config={"lr": 0.001}, description="demo", summary={"return": 9.5}):
            lstm = FaultyLSTM(hub)
            for k in range(3):
                lstm.update(k)
    assert [e.event_type.value for e in seen] == [
        "RUN_STARTED",
        *["PPO_UPDATE_COMPLETED"] * 3,
        "RUN_FINISHED",
    ]
    started = seen[0]
    assert isinstance(started, RunStarted)
    assert (started.payload.config.to_dict(), started.payload.description) == (
        {"lr": 0.001},
        "demo",
    )
    end = ending(seen)
    assert (end.update, end.payload.status, end.payload.message) == (2, "completed", "")
    assert end.payload.summary.to_dict() == {"updates": 3.0, "return": 9.5}
    assert end.payload.hub_stats is not None


def test_a_halt_ends_the_block_without_raising_and_the_run_says_halted() -> None:
    with TelemetryHub("halt") as hub:
        seen = recorded(hub)
        hub.subscribe(AnomalyEscalator(halt_on="critical"), mode="inline")
        lstm = FaultyLSTM(hub, {1: "nan"})
        with hub.run():
            for k in range(5):
                hub.raise_if_halted()
                lstm.update(k)
    end = ending(seen)
    assert (end.update, end.payload.status) == (1, "halted")
    assert "lstm_nan" in end.payload.message
    assert end.payload.summary.to_dict() == {"updates": 2.0}


@pytest.mark.parametrize(
    ("error", "status", "message"),
    [
        (ValueError("boom\nsecond line"), "failed", "ValueError: boom"),
        (KeyboardInterrupt(), "interrupted", "interrupted by the user"),
    ],
)
def test_an_exception_ends_the_run_on_the_record_and_is_raised_again(
    error: BaseException, status: str, message: str
) -> None:
    def train(hub: TelemetryHub) -> None:
        with hub.run():
            FaultyLSTM(hub).update(0)
            raise error

    with TelemetryHub("boom") as hub:
        seen = recorded(hub)
        with pytest.raises(type(error)):
            train(hub)
    end = ending(seen)
    assert (end.payload.status, end.payload.message) == (status, message)


def test_a_bad_summary_is_refused_before_anything_is_emitted() -> None:
    with TelemetryHub("bad") as hub:
        seen = recorded(hub)
        with pytest.raises(pydantic.ValidationError), hub.run(summary={"x": "high"}):  # type: ignore[dict-item]
            pass
    assert seen == []


def test_a_resumed_run_starts_its_block_at_the_first_update() -> None:
    with TelemetryHub("res") as hub:
        hub.resume_after(7, 3)
        seen = recorded(hub)
        with hub.run():
            pass
    assert [(e.seq, e.update) for e in seen] == [(8, 4), (9, 4)]
