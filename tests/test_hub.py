"""TelemetryHub: ordering, isolation, back-pressure, drops, re-entrancy, flush and close,
dispatch through blinker, the Backend base class and the one-wake-up-per-emit chain."""

from __future__ import annotations

import gc
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from importlib.metadata import version
from typing import Any, cast
from unittest import mock

import blinker
import pytest

from esper_telemetry import (
    EventType,
    HubClosedError,
    TelemetryEvent,
    TelemetryHub,
    TelemetryLevel,
    TrainingHalted,
)
from esper_telemetry.contracts import (
    EventBase,
    PPOUpdateCompleted,
    PPOUpdatePayload,
    RunFinished,
    RunFinishedPayload,
    RunStarted,
    RunStartedPayload,
    TelemetryLevelChanged,
)
from esper_telemetry.hub import Backend
from esper_telemetry.testing import RecordingBackend, capture_events


def ppo(update: int, **extra: float) -> PPOUpdateCompleted:
    payload = PPOUpdatePayload(policy_loss=0.1, value_loss=0.2, entropy=0.3, extra=extra)
    return PPOUpdateCompleted(update=update, payload=payload)


def started() -> RunStarted:
    return RunStarted(update=0, payload=RunStartedPayload(config={"a": 1}))


def finished() -> RunFinished:
    return RunFinished(update=0, payload=RunFinishedPayload(status="completed"))


def appender(calls: list[str], name: str) -> Callable[[TelemetryEvent], None]:
    """A subscriber that appends ``name`` to ``calls`` on each event."""

    def subscriber(event: TelemetryEvent) -> None:
        calls.append(name)

    return subscriber


def seqs(events: Sequence[EventBase]) -> list[int]:
    return [e.seq for e in events]


def kinds(events: Sequence[EventBase]) -> list[tuple[int, str]]:
    return [(e.seq, type(e).__name__) for e in events]


def all_have(recs: Sequence[RecordingBackend], n: int) -> bool:
    """True when every recorder has received ``n`` events."""
    return all(len(r.events) == n for r in recs)


def wait_until(condition: Callable[[], bool], what: str) -> None:
    """Poll ``condition`` until true; a liveness guard (fails only if it never happens)."""
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.001)


class Gate:
    """A subscriber that blocks on a gate until released (forever if never released)."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.entered = threading.Event()
        self.seen: list[int] = []

    def __call__(self, event: TelemetryEvent) -> None:
        self.entered.set()
        self.open.wait()
        self.seen.append(event.seq)


@pytest.fixture
def hub() -> Iterator[TelemetryHub]:
    h = TelemetryHub("test-run")
    yield h
    h.close(timeout=2.0)


# -- delivery and ordering ---------------------------------------------------------------


def test_emit_stamps_run_id_seq_rank_and_level(hub: TelemetryHub) -> None:
    """The hub stamps run_id, a strictly increasing seq, rank and the current level."""
    with capture_events(hub) as rec:
        returned = [hub.emit(ppo(k)) for k in range(3)]
    assert rec.events == returned
    assert [(e.run_id, e.seq, e.rank, e.level, e.update) for e in rec.events] == [
        ("test-run", 0, 0, TelemetryLevel.NORMAL, 0),
        ("test-run", 1, 0, TelemetryLevel.NORMAL, 1),
        ("test-run", 2, 0, TelemetryLevel.NORMAL, 2),
    ]


def test_inline_subscribers_run_in_subscription_order(hub: TelemetryHub) -> None:
    """Inline subscribers are called in the order they subscribed, before emit returns."""
    calls: list[str] = []
    for name in ["z", "a", "m", "b", "y"]:
        hub.subscribe(appender(calls, name), mode="inline", name=name)
    hub.emit(ppo(0))
    hub.emit(ppo(1))
    assert calls == ["z", "a", "m", "b", "y"] * 2


def test_subscribers_are_held_strongly(hub: TelemetryHub) -> None:
    """A lambda subscriber keeps receiving after garbage collection (blinker is weak by default)."""
    got: list[int] = []
    hub.subscribe(lambda e: got.append(e.seq), mode="inline")
    gc.collect()
    hub.emit(ppo(0))
    assert got == [0]


def test_hub_uses_a_private_blinker_namespace(hub: TelemetryHub) -> None:
    """Subscribing connects nothing to blinker's global signals."""
    hub.subscribe(lambda e: None, mode="inline")
    assert [bool(blinker.signal(t.value).receivers) for t in EventType] == [False] * 5


def test_events_filter_delivers_only_chosen_types(hub: TelemetryHub) -> None:
    """A subscriber that asked for RUN_STARTED receives nothing else."""
    rec = RecordingBackend()
    hub.subscribe(rec, events=[EventType.RUN_STARTED], mode="inline")
    hub.emit(ppo(0))
    first = hub.emit(started())
    hub.emit(ppo(1))
    assert rec.events == [first]


def test_events_filter_takes_event_classes_alone_or_mixed(hub: TelemetryHub) -> None:
    """events= takes an event class alone, or classes, EventType members and values mixed."""
    only_ppo, mixed = RecordingBackend("only-ppo"), RecordingBackend("mixed")
    hub.subscribe(only_ppo, events=PPOUpdateCompleted, mode="inline")
    hub.subscribe(
        mixed, events=(RunStarted, EventType.RUN_FINISHED, "TELEMETRY_LEVEL_CHANGED"), mode="inline"
    )
    first, _ = hub.emit(started()), hub.emit(ppo(0))
    change = hub.set_level("debug")
    last = hub.emit(finished())
    assert kinds(only_ppo.events) == [(1, "PPOUpdateCompleted")]
    assert kinds(mixed.events) == [
        (0, "RunStarted"),
        (2, "TelemetryLevelChanged"),
        (3, "RunFinished"),
    ]
    assert mixed.events == [first, change, last]


@pytest.mark.parametrize("bad", [EventBase, dict, 42, [PPOUpdateCompleted, "RUN"]])
def test_events_filter_names_the_valid_choices(hub: TelemetryHub, bad: object) -> None:
    """A selector that names no event type raises ValueError listing classes and values."""
    with pytest.raises(ValueError, match="is not an event type") as info:
        hub.subscribe(lambda e: None, events=bad)  # type: ignore[call-overload]
    assert str(info.value).split("; use ")[1] == (
        "event classes (RunStarted, PPOUpdateCompleted, AnomalyDetected, "
        "TelemetryLevelChanged, RunFinished), EventType members or their values "
        "(RUN_STARTED, PPO_UPDATE_COMPLETED, ANOMALY_DETECTED, TELEMETRY_LEVEL_CHANGED, "
        "RUN_FINISHED), or None for all"
    )
    assert hub.stats().subscribers == ()


# -- dispatch through blinker --------------------------------------------------------------


def test_delivery_order_is_subscription_order_for_the_installed_blinker() -> None:
    """Delivery order is subscription order, with 40 subscribers added and removed in turn."""
    hub = TelemetryHub("order")
    calls: list[str] = []

    def add(name: str) -> None:
        hub.subscribe(appender(calls, name), mode="inline", name=name)

    expected: list[str] = []
    for i in range(40):
        add(f"s{i:02d}")
        expected.append(f"s{i:02d}")
        if i % 3 == 2:  # drop an earlier one, add it back at the end later
            gone = expected.pop(i // 2)
            hub.unsubscribe(gone)
            if i % 2 == 0:
                add(gone)
                expected.append(gone)
    hub.emit(ppo(0))
    hub.emit(started())
    assert calls == expected * 2, f"blinker {version('blinker')}"
    assert [s.name for s in hub.stats().subscribers] == expected
    hub.close()


def test_dispatch_goes_through_signal_send(hub: TelemetryHub) -> None:
    """Every event is delivered by Signal.send(hub, event=...) on the hub's own signal."""
    rec = RecordingBackend()
    hub.subscribe(rec, mode="inline")
    sent: list[tuple[str, object, EventBase]] = []
    real_send = blinker.Signal.send

    def spy(signal: blinker.Signal, sender: object, /, **kwargs: Any) -> object:
        sent.append((getattr(signal, "name", "?"), sender, kwargs["event"]))
        return real_send(signal, sender, **kwargs)

    with mock.patch.object(blinker.Signal, "send", spy):
        events = [hub.emit(ppo(0)), hub.emit(started())]
    assert sent == [
        ("PPO_UPDATE_COMPLETED", hub, events[0]),
        ("RUN_STARTED", hub, events[1]),
    ]
    assert rec.events == events


def test_a_muted_hub_signal_delivers_nothing(hub: TelemetryHub) -> None:
    """blinker's muted() on the hub's PPO signal stops PPO delivery, and only that."""
    rec = RecordingBackend()
    hub.subscribe(rec, mode="inline")
    with hub._signals[EventType.PPO_UPDATE_COMPLETED].muted():
        hub.emit(ppo(0))
        first = hub.emit(started())
    last = hub.emit(ppo(1))
    assert rec.events == [first, last]


def test_a_receiver_connected_to_the_hub_signal_gets_the_stamped_event(hub: TelemetryHub) -> None:
    """A receiver connected_to the hub's signal gets (hub, event=stamped) after the others."""
    calls: list[tuple[str, object]] = []
    hub.subscribe(lambda e: calls.append(("subscriber", e)), mode="inline")

    def probe(sender: object, *, event: EventBase) -> None:
        calls.append(("probe", (sender, event)))

    with hub._signals[EventType.PPO_UPDATE_COMPLETED].connected_to(probe):
        event = hub.emit(ppo(0))
    assert calls == [("subscriber", event), ("probe", (hub, event))]


def test_keyboard_interrupt_in_a_subscriber_reaches_the_others_then_propagates(
    hub: TelemetryHub,
) -> None:
    """Ctrl-C in one subscriber: the others still get the event, then emit raises it."""
    before, after, threaded = RecordingBackend("b"), RecordingBackend("a"), RecordingBackend("t")

    def interrupted(event: TelemetryEvent) -> None:
        if event.update == 1:
            raise KeyboardInterrupt

    hub.subscribe(before, mode="inline")
    hub.subscribe(interrupted, mode="inline")
    hub.subscribe(after, mode="inline")
    hub.subscribe(threaded)
    hub.emit(ppo(0))
    with pytest.raises(KeyboardInterrupt):
        hub.emit(ppo(1))
    hub.emit(ppo(2))
    assert hub.flush(timeout=10)
    for rec in (before, after, threaded):
        assert [(e.seq, e.update) for e in rec.events] == [(0, 0), (1, 1), (2, 2)]


def test_threaded_subscriber_receives_everything_in_order(hub: TelemetryHub) -> None:
    """A threaded subscriber sees every event, in seq order, once flush returns."""
    rec = RecordingBackend()
    hub.subscribe(rec)
    sent = [hub.emit(ppo(k)) for k in range(200)]
    assert hub.flush(timeout=10)
    assert rec.events == sent


def test_concurrent_emitters_every_subscriber_sees_every_event_once() -> None:
    """8 threads emitting at once: each subscriber gets each event exactly once, in seq order,
    with every thread's own order kept."""
    hub = TelemetryHub("concurrent")
    inline, threaded, tiny = RecordingBackend("inline"), RecordingBackend("t"), RecordingBackend()
    hub.subscribe(inline, mode="inline")
    hub.subscribe(threaded)
    hub.subscribe(tiny, queue_size=2, name="tiny-queue")  # constant back-pressure
    per_thread = 300

    def worker(t: int) -> None:
        for i in range(per_thread):
            hub.emit(ppo(i, thread=t))

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    hub.close(timeout=30)
    for rec in (inline, threaded, tiny):
        events = rec.events
        assert seqs(events) == list(range(8 * per_thread))
        for t in range(8):
            mine = [
                e.update
                for e in events
                if isinstance(e, PPOUpdateCompleted) and e.payload.extra["thread"] == t
            ]
            assert mine == list(range(per_thread))
    assert hub.stats().lossless


# -- isolation ---------------------------------------------------------------------------


def test_raising_subscriber_does_not_stop_the_others(
    hub: TelemetryHub, caplog: pytest.LogCaptureFixture
) -> None:
    """A subscriber that always raises is counted and logged once; the others get everything."""

    def broken(event: TelemetryEvent) -> None:
        raise RuntimeError("backend down")

    before, after = RecordingBackend("before"), RecordingBackend("after")
    hub.subscribe(before, mode="inline")
    hub.subscribe(broken, mode="inline")
    hub.subscribe(after, mode="inline")
    with caplog.at_level(logging.ERROR, logger="esper_telemetry.hub"):
        sent = [hub.emit(ppo(k)) for k in range(5)]
    assert before.events == sent
    assert after.events == sent
    stats = {s.name: s for s in hub.stats().subscribers}
    assert (stats["broken"].failed, stats["broken"].delivered) == (5, 0)
    assert stats["broken"].last_error == "RuntimeError: backend down"
    assert [r.getMessage().split(" raised")[0] for r in caplog.records] == [
        "telemetry subscriber 'broken'"
    ]


def test_threaded_raising_subscriber_is_isolated(hub: TelemetryHub) -> None:
    """A threaded subscriber that raises keeps its worker alive and its failures counted."""
    calls: list[int] = []

    def flaky(event: TelemetryEvent) -> None:
        calls.append(event.seq)
        if event.seq % 2 == 0:
            raise ValueError("odd one out")

    hub.subscribe(flaky, name="flaky")
    for k in range(6):
        hub.emit(ppo(k))
    assert hub.flush(timeout=5)
    (s,) = hub.stats().subscribers
    assert (calls, s.delivered, s.failed) == ([0, 1, 2, 3, 4, 5], 3, 3)


def test_blocked_subscriber_does_not_hold_up_emit_or_the_others(hub: TelemetryHub) -> None:
    """A blocked threaded subscriber holds up neither emit nor the others; it catches up."""
    gate = Gate()
    fast, inline = RecordingBackend("fast"), RecordingBackend("inline")
    hub.subscribe(gate, name="blocked")
    hub.subscribe(fast)
    hub.subscribe(inline, mode="inline")
    sent = [hub.emit(ppo(k)) for k in range(5)]
    assert gate.entered.wait(10)
    wait_until(lambda: len(fast.events) == 5, "the threaded subscriber got all five")
    assert (fast.events, inline.events, gate.seen) == (sent, sent, [])
    gate.open.set()
    assert hub.flush(timeout=10)
    assert gate.seen == seqs(sent)


def test_stuck_subscriber_close_returns_and_names_it() -> None:
    """A subscriber blocked forever: close returns within its timeout, names it, counts
    what it never handled; the others received everything."""
    hub = TelemetryHub("stuck")
    gate = Gate()
    rec = RecordingBackend("healthy")
    hub.subscribe(gate, name="blocked")
    hub.subscribe(rec)
    sent = [hub.emit(ppo(k)) for k in range(4)]
    assert gate.entered.wait(5)
    stats = hub.close(timeout=0.5)  # returns although the gate is still shut
    assert not gate.open.is_set()
    assert stats.stuck == ("blocked",)
    by_name = {s.name: s for s in stats.subscribers}
    assert by_name["blocked"].abandoned == 4  # one in its hands, three still queued
    assert rec.events == sent
    assert rec.closed
    assert stats.state == "closed"
    gate.open.set()  # once it wakes up it still flushes and closes, late
    (worker,) = [t for t in threading.enumerate() if t.name == "esper-subscriber-blocked"]
    worker.join(timeout=5)
    assert not worker.is_alive()


def test_flush_times_out_on_a_stuck_subscriber_and_marks_it(hub: TelemetryHub) -> None:
    """flush returns False after its timeout when a subscriber is stuck, and stats say so."""
    gate = Gate()
    hub.subscribe(gate, name="blocked")
    hub.emit(ppo(0))
    assert hub.flush(timeout=0.2) is False
    assert hub.stats().stuck == ("blocked",)
    gate.open.set()
    assert hub.flush(timeout=5) is True
    assert gate.seen == [0]


# -- back-pressure and drops -------------------------------------------------------------


def test_block_policy_is_lossless_under_back_pressure(hub: TelemetryHub) -> None:
    """With when_full='block' and a queue of 2, a slow subscriber still gets all 50 events."""
    got: list[int] = []

    def slowish(event: TelemetryEvent) -> None:
        time.sleep(0.001)
        got.append(event.seq)

    hub.subscribe(slowish, queue_size=2)
    for k in range(50):
        hub.emit(ppo(k))
    assert hub.flush(timeout=10)
    (s,) = hub.stats().subscribers
    assert got == list(range(50))
    assert (s.delivered, s.dropped) == (50, 0)


def test_drop_oldest_counts_every_drop_and_keeps_the_newest(hub: TelemetryHub) -> None:
    """drop_oldest discards the oldest queued events, counts them, and keeps the latest."""
    gate = Gate()
    hub.subscribe(gate, queue_size=4, when_full="drop_oldest", name="view")
    hub.emit(ppo(0))
    assert gate.entered.wait(5)  # event 0 is in its hands; the queue is empty
    for k in range(1, 10):
        hub.emit(ppo(k))
    gate.open.set()
    assert hub.flush(timeout=5)
    (s,) = hub.stats().subscribers
    assert gate.seen == [0, 6, 7, 8, 9]
    assert (s.delivered, s.dropped) == (5, 5)


def test_block_timeout_gives_up_on_a_subscriber_that_takes_nothing(hub: TelemetryHub) -> None:
    """With 'block', a subscriber that makes no room for block_timeout is declared stuck and
    its oldest event dropped (counted) instead of stalling the emitter forever."""
    gate = Gate()
    hub.subscribe(gate, queue_size=1, block_timeout=0.1, name="wedged")
    hub.emit(ppo(0))
    assert gate.entered.wait(5)
    for k in range(1, 5):
        hub.emit(ppo(k))
    (s,) = hub.stats().subscribers
    assert s.stuck
    assert (s.dropped, s.queue_depth) == (3, 1)
    gate.open.set()
    assert hub.flush(timeout=5)
    assert gate.seen == [0, 4]


# -- re-entrancy -------------------------------------------------------------------------


def test_reentrant_emit_from_inline_subscriber_keeps_seq_order(hub: TelemetryHub) -> None:
    """An inline subscriber that emits while handling: every subscriber still sees strictly
    increasing seq, and the new event right after the one that caused it."""

    def escalate(event: TelemetryEvent) -> None:
        if event.event_type is EventType.PPO_UPDATE_COMPLETED and event.update == 1:
            hub.emit(started())

    first, last = RecordingBackend("first"), RecordingBackend("last")
    threaded = RecordingBackend("threaded")
    hub.subscribe(first, mode="inline")
    hub.subscribe(escalate, mode="inline")
    hub.subscribe(last, mode="inline")
    hub.subscribe(threaded)
    for k in range(3):
        hub.emit(ppo(k))
    assert hub.flush(timeout=5)
    expected = [
        (0, "PPO_UPDATE_COMPLETED"),
        (1, "PPO_UPDATE_COMPLETED"),
        (2, "RUN_STARTED"),
        (3, "PPO_UPDATE_COMPLETED"),
    ]
    for rec in (first, last, threaded):
        assert [(e.seq, e.event_type.value) for e in rec.events] == expected


def test_reentrant_emit_from_threaded_subscriber_with_full_queue_does_not_deadlock() -> None:
    """A threaded subscriber with a queue of 1 that emits from its own worker finishes."""
    hub = TelemetryHub("reentrant")
    got: list[int] = []

    def echo(event: TelemetryEvent) -> None:
        got.append(event.seq)
        if event.event_type is EventType.PPO_UPDATE_COMPLETED:
            hub.emit(started())

    hub.subscribe(echo, queue_size=1)
    done = threading.Event()

    def drive() -> None:
        for k in range(20):
            hub.emit(ppo(k))
        hub.flush(timeout=10)
        done.set()

    threading.Thread(target=drive, daemon=True).start()
    assert done.wait(60), "emit/flush deadlocked"  # a liveness guard, not a speed bound
    stats = hub.close(timeout=5)
    assert got == list(range(40))  # 20 updates, each echoed once, all in seq order
    assert stats.lossless


def test_flush_and_close_from_inside_a_subscriber_are_refused(hub: TelemetryHub) -> None:
    """flush()/close() from inside a subscriber raise instead of waiting on themselves."""
    errors: list[str] = []

    def misbehave(event: TelemetryEvent) -> None:
        for call in (hub.flush, hub.close):
            try:
                call()
            except RuntimeError as exc:
                errors.append(str(exc))

    hub.subscribe(misbehave, mode="inline")
    hub.emit(ppo(0))
    assert errors == [
        f"{what}() was called from inside a subscriber; it would wait for that "
        "subscriber itself. Call it from the training code instead."
        for what in ("flush", "close")
    ]
    assert not hub.closed


# -- levels ------------------------------------------------------------------------------


def test_set_level_emits_level_changed_and_stamps_later_events(hub: TelemetryHub) -> None:
    """set_level emits TELEMETRY_LEVEL_CHANGED and later events carry the new level."""
    with capture_events(hub) as rec:
        hub.emit(ppo(4))
        change = hub.set_level("debug", reason="anomaly")
        assert hub.set_level(TelemetryLevel.DEBUG) is None  # unchanged: no event
        hub.emit(ppo(5))
    assert isinstance(change, TelemetryLevelChanged)
    assert rec.events[1] == change
    assert [(e.event_type.value, e.level, e.update) for e in rec.events] == [
        ("PPO_UPDATE_COMPLETED", TelemetryLevel.NORMAL, 4),
        ("TELEMETRY_LEVEL_CHANGED", TelemetryLevel.DEBUG, 4),
        ("PPO_UPDATE_COMPLETED", TelemetryLevel.DEBUG, 5),
    ]
    assert rec.events[1].payload.model_dump() == {
        "previous": TelemetryLevel.NORMAL,
        "level": TelemetryLevel.DEBUG,
        "reason": "anomaly",
    }


def test_set_level_rejects_unknown_level(hub: TelemetryHub) -> None:
    """An unknown level name raises ValueError listing the valid ones."""
    with pytest.raises(ValueError, match="not a telemetry level; use one of off, minimal"):
        hub.set_level("verbose")


# -- lifecycle ---------------------------------------------------------------------------


def test_emit_after_close_raises_and_nothing_is_delivered() -> None:
    """After close, emit raises HubClosedError naming the event; no subscriber sees it."""
    rec = RecordingBackend()
    with TelemetryHub("closing") as hub:
        hub.subscribe(rec)
        hub.emit(ppo(0))
    with pytest.raises(HubClosedError, match=r"'closing' is closed.*update 7"):
        hub.emit(ppo(7))
    with pytest.raises(HubClosedError):
        hub.set_level("debug")
    with pytest.raises(HubClosedError):
        hub.subscribe(RecordingBackend())
    assert seqs(rec.events) == [0]


def test_close_flushes_and_closes_each_subscriber_once_and_is_idempotent() -> None:
    """close() flushes and closes every backend, and a second close returns the same stats."""
    a, b = RecordingBackend("a"), RecordingBackend("b")
    hub = TelemetryHub("twice")
    hub.subscribe(a)
    hub.subscribe(b, mode="inline")
    hub.emit(ppo(0))
    first = hub.close()
    second = hub.close()
    assert first == second
    assert (a.closed, b.closed, a.flushes, b.flushes) == (True, True, 1, 1)
    assert first.state == "closed"
    assert first.stuck == ()


def test_close_survives_a_backend_whose_close_raises() -> None:
    """A backend raising in close() is counted in last_error; the others still close."""

    class BadClose(RecordingBackend):
        def close(self) -> None:
            raise OSError("disk gone")

    bad, good = BadClose("bad"), RecordingBackend("good")
    hub = TelemetryHub("badclose")
    hub.subscribe(bad)
    hub.subscribe(good)
    hub.emit(ppo(0))
    stats = hub.close(timeout=5)
    assert good.closed
    assert {s.name: s.last_error for s in stats.subscribers} == {
        "bad": "OSError: disk gone",
        "good": None,
    }


def test_unsubscribe_delivers_what_was_emitted_before_then_stops() -> None:
    """unsubscribe lets a subscriber finish earlier events, flushes it, does not close it."""
    hub = TelemetryHub("unsub")
    rec = RecordingBackend()
    name = hub.subscribe(rec)
    first = [hub.emit(ppo(k)) for k in range(3)]
    assert hub.unsubscribe(name, timeout=5)
    hub.emit(ppo(3))
    hub.close()
    assert rec.events == first
    assert (rec.flushes, rec.closed) == (1, False)
    with pytest.raises(ValueError, match="is not subscribed"):
        hub.unsubscribe("nobody")


# -- arguments ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "async"}, "mode must be 'thread' or 'inline', got 'async'"),
        ({"when_full": "drop"}, "when_full must be 'block' or 'drop_oldest', got 'drop'"),
        ({"queue_size": 0}, "queue_size must be an int >= 1, got 0"),
        ({"events": ["PPO_DONE"]}, "events: 'PPO_DONE' is not an event type"),
        ({"events": []}, "events: an empty selection"),
        ({"block_timeout": -1}, r"block_timeout must be a number of seconds, 0 < s <= .*; got -1"),
        ({"name": ""}, "name must be a non-empty string"),
    ],
)
def test_subscribe_rejects_bad_arguments(
    hub: TelemetryHub, kwargs: dict[str, Any], message: str
) -> None:
    """Each bad subscribe argument raises ValueError naming it; nothing is subscribed."""
    with pytest.raises(ValueError, match=message):
        hub.subscribe(lambda e: None, **kwargs)
    assert hub.stats().subscribers == ()


def test_subscribe_rejects_non_callable(hub: TelemetryHub) -> None:
    """Something neither callable nor a Backend raises TypeError naming subscriber."""
    with pytest.raises(TypeError, match=r"subscriber must be a callable.*got int"):
        hub.subscribe(42)  # type: ignore[call-overload]


def test_subscriber_names_default_and_stay_unique(hub: TelemetryHub) -> None:
    """Default names come from name attribute or function; duplicates get a suffix."""

    def on_event(event: TelemetryEvent) -> None:
        pass

    names = [
        hub.subscribe(on_event, mode="inline"),
        hub.subscribe(on_event, mode="inline"),
        hub.subscribe(RecordingBackend("wandb"), mode="inline"),
    ]
    assert names == [
        "on_event",
        "on_event#2",
        "wandb",
    ]
    with pytest.raises(ValueError, match="'wandb' is already subscribed"):
        hub.subscribe(RecordingBackend(), name="wandb")


def test_emit_rejects_non_events(hub: TelemetryHub) -> None:
    """emit of something that is not an EventBase instance raises TypeError naming event."""
    with pytest.raises(
        TypeError,
        match=r"event must be an event \(an EventBase instance such as PPOUpdateCompleted\), "
        "got dict",
    ):
        hub.emit({"update": 1})  # type: ignore[type-var]
    assert hub.stats().emitted == 0


TIMEOUT_MAX = f"{threading.TIMEOUT_MAX:.0f}"
I64 = 2**63 - 1


@pytest.mark.parametrize(
    ("block_timeout", "shown"),
    [
        (True, "True"),
        (False, "False"),
        (math.nan, "nan"),
        (math.inf, "inf"),
        (0, "0"),
        (1e10, "10000000000.0"),
    ],
)
def test_subscribe_refuses_a_bool_nan_or_endless_block_timeout(
    hub: TelemetryHub, block_timeout: object, shown: str
) -> None:
    """block_timeout is seconds, 0 < s <= TIMEOUT_MAX; None, not inf, waits forever."""
    with pytest.raises(ValueError, match="block_timeout") as info:
        hub.subscribe(lambda e: None, block_timeout=block_timeout)  # type: ignore[call-overload]
    assert str(info.value) == (
        f"block_timeout must be a number of seconds, 0 < s <= {TIMEOUT_MAX} "
        f"(threading.TIMEOUT_MAX), or None to wait without a limit; got {shown}"
    )
    assert hub.stats().subscribers == ()


BAD_TIMEOUTS = [
    (True, "True"),
    (math.nan, "nan"),
    (-math.inf, "-inf"),
    (math.inf, "inf"),
    (-1, "-1"),
    (1e10, "10000000000.0"),
    ("5", "'5'"),
    (10**5000, "an int of 16610 bits"),
]


@pytest.mark.parametrize(("timeout", "shown"), BAD_TIMEOUTS, ids=[s for _, s in BAD_TIMEOUTS])
def test_flush_unsubscribe_and_close_refuse_a_bad_timeout_and_change_nothing(
    timeout: object, shown: str
) -> None:
    """A bool, NaN, ±inf, negative, huge or non-number timeout is one ValueError naming
    timeout; the hub stays open and subscribed, and goes on delivering."""
    hub = TelemetryHub("timeouts")
    rec = RecordingBackend()
    hub.subscribe(rec)
    messages = []
    for call in (hub.flush, partial(hub.unsubscribe, rec), hub.close):
        with pytest.raises(ValueError, match="timeout") as info:
            call(timeout=timeout)  # type: ignore[arg-type]
        messages.append(str(info.value))
    hub.emit(ppo(0))
    stats = hub.close(timeout=10)
    limit = f"timeout must be a number of seconds, 0 <= s <= {TIMEOUT_MAX} (threading.TIMEOUT_MAX)"
    forever = ", or None to wait without a limit"
    assert messages == [
        f"{limit}{forever}; got {shown}",
        f"{limit}{forever}; got {shown}",
        f"{limit}; got {shown}",
    ]
    assert ([e.update for e in rec.events], [s.delivered for s in stats.subscribers]) == ([0], [1])


@pytest.mark.parametrize("rank", [2**63, -1, True, 1.0])
def test_rank_must_fit_in_int64(rank: object) -> None:
    """A rank outside 0..2**63-1 (or not an int) is refused naming rank."""
    with pytest.raises(ValueError, match=r"rank must be an int from 0 to 9223372036854775807"):
        TelemetryHub("r", rank=rank)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("update", "shown"),
    [(2**63, str(2**63)), (-1, "-1"), (True, "True"), (10**50, "an int of 167 bits")],
)
def test_emit_refuses_an_unvalidated_update_outside_int64(
    hub: TelemetryHub, update: int, shown: str
) -> None:
    """An event built without validation (model_copy, model_construct) cannot carry an
    update no log reader could store: refused naming event.update, nothing delivered."""
    rec = RecordingBackend()
    hub.subscribe(rec, mode="inline")
    for event in (
        ppo(0).model_copy(update={"update": update}),
        PPOUpdateCompleted.model_construct(update=update, payload=ppo(0).payload),
    ):
        with pytest.raises(ValueError, match=r"event\.update") as info:
            hub.emit(event)
        assert str(info.value).startswith(
            f"event.update must be an int from 0 to 9223372036854775807 (int64), got {shown}; "
        )
    assert (rec.events, hub.stats().emitted) == ([], 0)


@pytest.mark.parametrize("bad", ["", "../escape", "/abs", "a/b", "nul\x00", ".hidden", 7])
def test_run_id_must_be_a_safe_directory_name(bad: object) -> None:
    """run_ids that could escape a run directory, or are not strings, are refused."""
    with pytest.raises(ValueError, match="run_id must be"):
        TelemetryHub(bad)  # type: ignore[arg-type]


def test_default_run_id_is_a_safe_unique_name() -> None:
    """Without a run_id the hub makes a timestamped, unique, safe one."""
    a, b = TelemetryHub(), TelemetryHub()
    assert a.run_id != b.run_id
    assert a.run_id.replace("-", "").isalnum()
    a.close()
    b.close()


def test_stats_report_latency_and_queue(hub: TelemetryHub) -> None:
    """stats() gives per-subscriber delivered counts, queue settings and latencies."""
    hub.subscribe(lambda e: time.sleep(0.002), name="sleeper")
    for k in range(3):
        hub.emit(ppo(k))
    assert hub.flush(timeout=5)
    stats = hub.stats()
    (s,) = stats.subscribers
    assert (stats.emitted, stats.state, s.delivered, s.queue_depth, s.queue_size) == (
        3,
        "open",
        3,
        0,
        1024,
    )
    assert 2.0 <= s.latency_p50_ms <= s.latency_max_ms


# -- hooks and halting -------------------------------------------------------------------


def test_on_subscribe_hook_sees_the_hub_before_any_event(hub: TelemetryHub) -> None:
    """A backend's on_subscribe(hub) runs once, at subscribe time, before any event."""

    class Hooked(RecordingBackend):
        def __init__(self) -> None:
            super().__init__("hooked")
            self.hubs: list[tuple[str, int]] = []

        def on_subscribe(self, h: TelemetryHub) -> None:
            self.hubs.append((h.run_id, len(self.events)))

    backend = Hooked()
    hub.subscribe(backend, mode="inline")
    hub.emit(ppo(0))
    assert backend.hubs == [("test-run", 0)]


def test_on_subscribe_that_raises_leaves_nothing_subscribed(hub: TelemetryHub) -> None:
    """If on_subscribe raises (e.g. missing credentials) the error propagates, unsubscribed."""

    class NoCredentials:
        def handle(self, event: TelemetryEvent) -> None:
            raise AssertionError("never called")

        def on_subscribe(self, h: TelemetryHub) -> None:
            raise PermissionError("no API key")

    with pytest.raises(PermissionError, match="no API key"):
        hub.subscribe(NoCredentials())
    hub.emit(ppo(0))
    assert hub.stats().subscribers == ()


def test_request_halt_is_raised_at_the_next_check(hub: TelemetryHub) -> None:
    """request_halt from a subscriber: raise_if_halted raises TrainingHalted; first one wins."""

    def halter(event: TelemetryEvent) -> None:
        hub.request_halt(f"stop at {event.update}", update=event.update)

    hub.subscribe(halter, mode="inline")
    hub.raise_if_halted()  # nothing requested yet
    hub.emit(ppo(3))
    hub.emit(ppo(4))
    with pytest.raises(TrainingHalted, match=r"training halted \(update 3\): stop at 3") as info:
        hub.raise_if_halted()
    assert (info.value.reason, info.value.update) == ("stop at 3", 3)
    assert hub.halted is not None


def test_secrets_in_run_config_are_redacted_before_any_subscriber(
    hub: TelemetryHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Secret-looking config keys, API-key-shaped strings and the W&B key's value never
    reach a subscriber; everything else arrives unchanged."""
    monkeypatch.setenv("WANDB_API_KEY", "local-0123456789-planted")
    config = {
        "lr": 0.001,
        "wandb_api_key": "anything",
        "nested": {"HF_TOKEN": "hf_x", "db": {"password": "hunter2"}},
        "note": "uses local-0123456789-planted here",
        "commit_like": "0123456789abcdef0123456789abcdef01234567",
        "layers": [1, 2],
    }
    event = RunStarted(
        update=0,
        payload=RunStartedPayload(config=config, description="key local-0123456789-planted"),
    )
    with capture_events(hub) as rec:
        hub.emit(event)
    (got,) = rec.events
    assert got.payload.model_dump() == {
        "config": {
            "lr": 0.001,
            "wandb_api_key": "[REDACTED]",
            "nested": {"HF_TOKEN": "[REDACTED]", "db": {"password": "[REDACTED]"}},
            "note": "[REDACTED]",
            "commit_like": "[REDACTED]",
            "layers": [1, 2],
        },
        "description": "[REDACTED]",
    }
    assert event.payload.config["wandb_api_key"] == "anything"  # the caller's copy is untouched


def test_every_secret_marked_field_is_redacted(
    hub: TelemetryHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A level change's reason and a finish message carrying the W&B key arrive redacted."""
    monkeypatch.setenv("WANDB_API_KEY", "local-0123456789-planted")
    leak = "because local-0123456789-planted"
    with capture_events(hub) as rec:
        hub.set_level("debug", reason=leak)
        hub.emit(RunFinished(update=0, payload=RunFinishedPayload(status="failed", message=leak)))
    assert [
        (type(e).__name__, e.payload.model_dump(include={"reason", "message"})) for e in rec.events
    ] == [
        ("TelemetryLevelChanged", {"reason": "[REDACTED]"}),
        ("RunFinished", {"message": "[REDACTED]"}),
    ]


# -- the Backend base class ------------------------------------------------------------------


def test_backend_base_class_defaults() -> None:
    """Backend's optional methods do nothing, undelivered() is 0, handle must be overridden."""

    class Bare(Backend):
        pass

    backend = Bare()
    with TelemetryHub("base") as hub:
        backend.flush()
        backend.close()
        backend.on_subscribe(hub)
        assert backend.undelivered() == 0
        with pytest.raises(NotImplementedError, match=r"^Bare must override handle\(event\)$"):
            backend.handle(ppo(0))


def test_backend_subclass_and_duck_typed_objects_both_subscribe() -> None:
    """A Backend subclass, a duck-typed object and a function all get every event."""

    class Minimal(Backend):
        def __init__(self) -> None:
            self.seen: list[int] = []

        def handle(self, event: TelemetryEvent) -> None:
            self.seen.append(event.seq)

    class DuckTyped:
        def __init__(self) -> None:
            self.seen: list[int] = []

        def handle(self, event: TelemetryEvent) -> None:
            self.seen.append(event.seq)

    minimal, duck, seen = Minimal(), DuckTyped(), []

    def function(event: TelemetryEvent) -> None:
        seen.append(event.seq)

    hub = TelemetryHub("shapes")
    hub.subscribe(minimal)
    hub.subscribe(duck, mode="inline")
    hub.subscribe(function)
    for k in range(3):
        hub.emit(ppo(k))
    stats = hub.close()
    assert (minimal.seen, duck.seen, seen) == ([0, 1, 2], [0, 1, 2], [0, 1, 2])
    assert [isinstance(x, Backend) for x in (minimal, duck, function)] == [True, False, False]
    assert stats.lossless


def test_a_backend_that_forgot_handle_fails_every_event_and_is_counted() -> None:
    """Subscribing a Backend that does not override handle: each event is a counted failure."""

    class Forgetful(Backend):
        pass

    hub = TelemetryHub("forgetful")
    hub.subscribe(Forgetful(), mode="inline")
    hub.emit(ppo(0))
    hub.emit(ppo(1))
    (s,) = hub.close().subscribers
    assert (s.delivered, s.failed, s.last_error) == (
        0,
        2,
        "NotImplementedError: Forgetful must override handle(event)",
    )


# -- undelivered -------------------------------------------------------------------------------


class Lossy(Backend):
    """Handles every event and reports every odd update as undelivered."""

    def __init__(self) -> None:
        self.skipped = 0

    def handle(self, event: TelemetryEvent) -> None:
        self.skipped += event.update % 2

    def undelivered(self) -> int:
        return self.skipped


def test_undelivered_is_reported_in_stats_and_counted_as_lost() -> None:
    """A backend's undelivered() count appears in its stats and in lost, live and at close."""
    hub = TelemetryHub("lossy")
    hub.subscribe(Lossy(), name="lossy")
    hub.subscribe(RecordingBackend("fine"))
    for k in range(5):
        hub.emit(ppo(k))
    assert hub.flush(timeout=10)
    live = hub.stats()
    final = hub.close()
    for stats in (live, final):
        assert [(s.name, s.delivered, s.undelivered, s.lost) for s in stats.subscribers] == [
            ("lossy", 5, 2, 2),
            ("fine", 5, 0, 0),
        ]
        assert (stats.lost, stats.lossless) == (2, False)


@pytest.mark.parametrize(
    ("report", "error"),
    [
        (lambda: 1 // 0, "ZeroDivisionError: integer division or modulo by zero"),
        (lambda: "3", f"TypeError: undelivered() must return an int from 0 to {I64}, got '3'"),
        (lambda: -1, f"TypeError: undelivered() must return an int from 0 to {I64}, got -1"),
        (
            lambda: 2**70,
            f"TypeError: undelivered() must return an int from 0 to {I64}, got {2**70}",
        ),
    ],
    ids=["raises", "str", "negative", "past-int64"],
)
def test_an_undelivered_that_raises_is_counted_never_raised(
    report: Callable[[], object], error: str
) -> None:
    """A failing undelivered() is counted as a failure, never raised; the last count stands."""
    answers: list[Callable[[], object]] = [lambda: 4, report]

    class Flaky(RecordingBackend):
        def undelivered(self) -> int:
            return cast(int, answers[0]())  # some answers are deliberately not ints

    hub = TelemetryHub("flaky-count")
    hub.subscribe(Flaky("flaky"), mode="inline")
    hub.emit(ppo(0))
    first = hub.stats().subscribers[0]
    answers.pop(0)
    second = hub.stats().subscribers[0]
    hub.close()
    assert [(s.delivered, s.undelivered, s.failed, s.last_error) for s in (first, second)] == [
        (1, 4, 0, None),
        (1, 4, 1, error),
    ]


# -- one wake-up per emit ----------------------------------------------------------------------


def test_an_emit_wakes_at_most_one_worker_however_many_are_idle() -> None:
    """With eight idle threaded subscribers, each emit wakes exactly one from its own thread."""
    hub = TelemetryHub("one-wake")
    recs = [RecordingBackend(f"r{i}") for i in range(8)]
    for rec in recs:
        hub.subscribe(rec)
    chain = hub._wake_chain
    subs = list(hub._subscriptions)
    deltas: list[int] = []
    sent = []
    for k in range(20):
        wait_until(lambda: chain.idle and all(s.parked for s in subs), "every worker idle")
        before = chain.dispatcher_wakeups
        sent.append(hub.emit(ppo(k)))
        deltas.append(chain.dispatcher_wakeups - before)
        wait_until(partial(all_have, recs, k + 1), f"event {k} everywhere")
    assert deltas == [1] * 20
    assert [r.events for r in recs] == [sent] * 8
    assert hub.close().lossless


def test_a_burst_costs_at_most_one_wake_up_per_emit_and_loses_nothing() -> None:
    """A burst to six threaded subscribers wakes at most one per emit and loses nothing."""
    hub = TelemetryHub("burst")
    gate = Gate()
    recs = [RecordingBackend(f"r{i}") for i in range(5)]
    hub.subscribe(gate, name="blocked")
    for rec in recs:
        hub.subscribe(rec)
    chain = hub._wake_chain
    deltas: list[int] = []
    sent = []
    for k in range(300):
        before = chain.dispatcher_wakeups
        sent.append(hub.emit(ppo(k)))
        deltas.append(chain.dispatcher_wakeups - before)
    gate.open.set()
    assert hub.flush(timeout=30)
    assert set(deltas) <= {0, 1}
    assert sum(deltas) <= len(sent)
    assert ([r.events for r in recs], gate.seen) == ([sent] * 5, seqs(sent))
    assert hub.close().lossless


def test_a_full_block_queue_wakes_the_worker_it_waits_on() -> None:
    """With queues of one, the workers emit waits on are woken (no deadlock, nothing lost)."""
    hub = TelemetryHub("full")
    recs = [RecordingBackend(f"r{i}") for i in range(4)]
    for rec in recs:
        hub.subscribe(rec, queue_size=1)
    sent = [hub.emit(ppo(k)) for k in range(200)]
    assert hub.flush(timeout=30)
    assert [r.events for r in recs] == [sent] * 4
    stats = hub.close()
    assert [s.dropped for s in stats.subscribers] == [0] * 4


# -- redaction: the shapes of issue 10 -------------------------------------------------------


def test_config_keys_naming_secrets_and_token_shaped_values_are_redacted(
    hub: TelemetryHub,
) -> None:
    """authorization, passwd, pwd, credentials, cookie... hide their values; token-shaped
    strings and keys (wandb_v1_, hf_, ghp_, AKIA, eyJ) become the marker; the rest stays."""
    config = {
        "lr": 0.001,
        "authorization": "x",
        "passwd": "x",
        "pwd": "x",
        "credentials": {"user": "u"},
        "session_cookie": "x",
        "author": "ada",
        "tokens": ["wandb_v1_abcdefghijkl0123", "hf_abcdefghijklmnopqrstuv", "plain"],
        "ghp_abcdefghijklmnopqrstuvwxyz0123": 1,
        "aws": "AKIAABCDEFGHIJKLMNOP",
        "jwt": "eyJhbGciOiJIUzI1NiJ9.e30.x",
    }
    with capture_events(hub) as rec:
        hub.emit(RunStarted(update=0, payload=RunStartedPayload(config=config)))
    assert [e.payload.model_dump(mode="json")["config"] for e in rec.events] == [
        {
            "lr": 0.001,
            "authorization": "[REDACTED]",
            "passwd": "[REDACTED]",
            "pwd": "[REDACTED]",
            "credentials": "[REDACTED]",
            "session_cookie": "[REDACTED]",
            "author": "ada",
            "tokens": "[REDACTED]",  # the key names a secret ("token")
            "[REDACTED]": "[REDACTED]",
            "aws": "[REDACTED]",
            "jwt": "[REDACTED]",
        }
    ]


@pytest.mark.parametrize(
    "run_id",
    ["0123456789abcdef0123456789abcdef01234567", "wandb_v1_abcdefghijkl0123", "hf_" + "a" * 30],
)
def test_a_secret_shaped_run_id_is_refused_in_one_line_that_hides_it(run_id: str) -> None:
    """TelemetryHub refuses a run id shaped like a token, naming the shape, not the id."""
    with pytest.raises(ValueError, match=r"^run_id was refused: it holds ") as info:
        TelemetryHub(run_id)
    assert run_id not in str(info.value)


def test_a_subscribers_exception_text_is_redacted_in_stats_and_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """last_error and the logged line hide a token the exception carried; no traceback
    (which would repeat it) is logged then."""
    token = "ghp_abcdefghijklmnopqrstuvwxyz0123"

    def leaky(event: TelemetryEvent) -> None:
        raise RuntimeError(f"refused {token}")

    hub = TelemetryHub("leaky")
    hub.subscribe(leaky, mode="inline")
    with caplog.at_level(logging.ERROR, logger="esper_telemetry.hub"):
        hub.emit(ppo(0))
    stats = hub.close()
    assert [s.last_error for s in stats.subscribers] == ["RuntimeError: [REDACTED]"]
    assert [
        (r.getMessage().endswith("(RuntimeError: [REDACTED])"), r.exc_info) for r in caplog.records
    ] == [(True, None)]
    assert token not in caplog.text
