"""esper_telemetry.testing: the recording backend and capture_events."""

from __future__ import annotations

from esper_telemetry import EventType, TelemetryHub
from esper_telemetry.contracts import (
    PPOUpdateCompleted,
    PPOUpdatePayload,
    RunStarted,
    RunStartedPayload,
)
from esper_telemetry.testing import RecordingBackend, capture_events


def ppo(update: int) -> PPOUpdateCompleted:
    payload = PPOUpdatePayload(policy_loss=0.0, value_loss=0.0, entropy=0.0)
    return PPOUpdateCompleted(update=update, payload=payload)


def started() -> RunStarted:
    payload = RunStartedPayload(config={"lr": 0.01})
    return RunStarted(update=0, payload=payload)


def test_recording_backend_filters_by_type() -> None:
    """of_type and payloads pick events of the given types, in order."""
    rec = RecordingBackend()
    with TelemetryHub("rec") as hub:
        hub.subscribe(rec)
        a, b, c = hub.emit(started()), hub.emit(ppo(1)), hub.emit(ppo(2))
    assert rec.events == [a, b, c]
    assert rec.of_type(EventType.PPO_UPDATE_COMPLETED) == [b, c]
    assert rec.of_type("RUN_STARTED", "PPO_UPDATE_COMPLETED") == [a, b, c]
    assert rec.of_type(RunStarted) == [a]
    assert rec.payloads(EventType.RUN_STARTED) == [a.payload]
    assert (rec.flushes, rec.closed) == (1, True)
    rec.clear()
    assert rec.events == []


def test_capture_events_sees_only_the_block_and_unsubscribes() -> None:
    """capture_events records what is emitted inside the block, then leaves the hub."""
    with TelemetryHub("cap") as hub:
        hub.emit(ppo(0))
        with capture_events(hub) as rec:
            inside = hub.emit(ppo(1))
            assert rec.events == [inside]  # inline: there as soon as emit returns
        hub.emit(ppo(2))
        assert hub.stats().subscribers == ()
    assert rec.events == [inside]


def test_capture_events_can_nest_and_filter() -> None:
    """Two captures at once get distinct names; an events filter is honoured."""
    with TelemetryHub("nest") as hub, capture_events(hub) as everything:
        with capture_events(hub, events=[RunStarted]) as starts:
            s = hub.emit(started())
            p = hub.emit(ppo(1))
        assert starts.events == [s]
        assert everything.events == [s, p]
