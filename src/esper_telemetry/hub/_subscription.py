"""One subscriber on a hub: its callables, its counters and, in thread mode, its worker.

A subscription's ``receive`` is the receiver the hub connects (strongly) to its blinker
signals: called by ``Signal.send(hub, event=...)``, it never raises; an exception that got past
the subscriber's own isolation (KeyboardInterrupt) is *returned* as its result, so that
``send`` goes on to the other receivers and the hub re-raises it afterwards.

A threaded subscription owns a FIFO queue and one worker thread. The hub's dispatcher
is the only producer of events, so the queue order is the hub's ``seq`` order. Control
tokens (flush, stop) travel in the same queue, behind the events before them, and
never count toward the bound or get dropped. An idle worker is not woken by the
dispatcher directly but through the hub's wake-up chain (``_wake.WakeChain``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from traceback import format_exception
from typing import Literal, cast

from esper_telemetry.contracts import (
    EVENT_CLASSES,
    EventBase,
    EventType,
    SubscriberStats,
    TelemetryEvent,
)
from esper_telemetry.contracts._base import INT64_MAX
from esper_telemetry.hub._redact import redact_secrets, secret_shape_in
from esper_telemetry.hub._wake import WakeChain

logger = logging.getLogger("esper_telemetry.hub")

Mode = Literal["thread", "inline"]
WhenFull = Literal["block", "drop_oldest"]

#: After the first failure of a subscriber is logged, at most one line per this many seconds.
_FAILURE_LOG_INTERVAL_S = 60.0
_LATENCY_WINDOW = 1024

_local = threading.local()


def current_subscription() -> Subscription | None:
    """The threaded subscription whose worker is running this code, if any."""
    sub: Subscription | None = getattr(_local, "subscription", None)
    return sub


@dataclass(eq=False)
class Token:
    """A control item in a subscriber's queue; ``done`` is set once it has been acted on."""

    kind: Literal["flush", "stop", "close"]
    done: threading.Event = field(default_factory=threading.Event)
    ok: bool = True


class Subscription:
    """A subscriber as the hub sees it. Created by ``TelemetryHub.subscribe``."""

    def __init__(
        self,
        *,
        name: str,
        handle: Callable[[TelemetryEvent], object],
        flush: Callable[[], object] | None,
        close: Callable[[], object] | None,
        undelivered: Callable[[], object] | None,
        source: object,
        events: frozenset[EventType],
        mode: Mode,
        queue_size: int,
        when_full: WhenFull,
        block_timeout: float | None,
        wake_chain: WakeChain,
    ) -> None:
        self.name = name
        self.source = source
        self.events = events
        self.mode: Mode = mode
        self.when_full: WhenFull = when_full
        self.queue_size = queue_size if mode == "thread" else 0
        self.block_timeout = block_timeout
        self._handle = handle
        self._flush = flush
        self._close = close
        self._undelivered = undelivered
        self._undelivered_seen = 0
        self._wake_chain = wake_chain
        self.delivered = 0
        self.failed = 0
        self.dropped = 0
        self.abandoned = 0
        self.stuck = False
        self.last_error: str | None = None
        self._latencies: deque[int] = deque(maxlen=_LATENCY_WINDOW)
        self._latency_max_ns = 0
        self._last_failure_log = -float("inf")
        self._failures_unlogged = 0
        self._queue: deque[EventBase | Token] = deque()
        self._queued_events = 0
        self._lock = threading.Lock()
        self._not_empty = threading.Condition(self._lock)
        self._not_full = threading.Condition(self._lock)
        self._close_deadline: float | None = None
        self._in_hand = False
        self._waiting = False  # the worker is parked in _not_empty.wait()
        self._marked = False  # on the wake chain's list, not yet taken off by ring()
        self._worker: threading.Thread | None = None
        if mode == "thread":
            self._worker = threading.Thread(
                target=self._run, name=f"esper-subscriber-{name}", daemon=True
            )
            self._worker.start()

    def __repr__(self) -> str:
        return f"<Subscription {self.name!r} mode={self.mode} events={len(self.events)}>"

    # -- called by the hub's dispatcher -------------------------------------------------

    def receive(self, sender: object, /, *, event: EventBase) -> BaseException | None:
        """The blinker receiver (connected as this bound method): offer ``event``; never raises.

        A bound method rather than ``__call__``: blinker asks ``inspect`` whether each
        receiver is a coroutine function on every send, and for a method that costs
        about a third less than for a callable instance.

        Returns:
            None, or the exception (KeyboardInterrupt, SystemExit) that interrupted the
            offer; the hub re-raises it once every other receiver has had the event.
        """
        try:
            self.offer(event)
        except BaseException as exc:
            return exc
        return None

    def offer(self, event: EventBase) -> None:
        """Deliver inline, or queue for the worker under the full-queue policy."""
        if self.mode == "inline":
            self.handle(event)
            return
        chain_released = False
        while True:
            with self._lock:
                if self._queued_events < self.queue_size:
                    self._put(event)
                    return
                if self.when_full == "drop_oldest" or self.stuck:
                    # A subscriber already declared stuck does not get to stall the
                    # emitter again until it handles an event.
                    self._drop_oldest_event()
                    self._put(event)
                    return
                if current_subscription() is self:
                    # A subscriber emitting from its own worker must not wait on
                    # itself: it overflows the bound instead.
                    self._put(event)
                    return
                if chain_released:
                    # Lossless back-pressure: wait for room, for at most block_timeout.
                    try:
                        self._wait_for_room()
                    finally:
                        # Also on Ctrl-C while waiting: the event is queued anyway (one
                        # over the bound) so that the interrupt loses no event.
                        self._put(event)
                    return
            # The worker we are about to wait on, and those given this event before,
            # may still be waiting for their wake-up: hand them to the chain first,
            # with our lock released (ring() takes each worker's lock, ours included).
            self._wake_chain.release()
            chain_released = True

    def _put(self, event: EventBase) -> None:
        """Append ``event`` to the queue; mark a parked worker for a wake-up (lock held)."""
        self._queue.append(event)
        self._queued_events += 1
        if self._waiting and not self._marked:
            # In this order: interrupted in between, it is at worst listed twice
            # (harmless), never marked without being listed (it would never be woken).
            self._wake_chain.defer(self)
            self._marked = True

    def ring(self) -> bool:
        """Wake the worker if it is parked; True when it was (called by the wake chain)."""
        with self._lock:
            self._marked = False  # the chain has taken it off its list
            if not self._waiting:
                return False
            self._not_empty.notify()
            return True

    def set_close_deadline(self, deadline: float) -> None:
        """From now on a blocked put gives up at ``deadline`` (the hub is closing)."""
        with self._lock:
            self._close_deadline = deadline
            self._not_full.notify_all()

    def send_token(self, kind: Literal["flush", "stop", "close"]) -> Token:
        """Queue a control token behind everything queued so far (thread mode)."""
        token = Token(kind)
        if self.mode == "inline":
            self._act_on(token)
            return token
        with self._lock:
            self._queue.append(token)
            self._not_empty.notify()
        return token

    def flush_now(self) -> bool:
        """Call the subscriber's flush() on this thread; False when it raised."""
        return self._call_optional(self._flush, "flush")

    def close_now(self) -> bool:
        """Call the subscriber's flush() then close() on this thread; False when one raised."""
        flushed = self._call_optional(self._flush, "flush")
        return self._call_optional(self._close, "close") and flushed

    def abandon_queue(self) -> None:
        """Count every event not yet handled as abandoned (close gave up on this subscriber).

        The queued events are discarded, the one in its hands is counted too; control
        tokens stay, so a subscriber that wakes up later still flushes and closes.
        """
        with self._lock:
            self.abandoned += self._queued_events + (1 if self._in_hand else 0)
            self._queued_events = 0
            tokens = [item for item in self._queue if isinstance(item, Token)]
            self._queue.clear()
            self._queue.extend(tokens)
            self._not_full.notify_all()

    @property
    def parked(self) -> bool:
        """True while the worker waits for work (or has been woken and not yet run)."""
        return self._waiting

    @property
    def queue_depth(self) -> int:
        return self._queued_events

    @property
    def worker(self) -> threading.Thread | None:
        return self._worker

    def stats(self) -> SubscriberStats:
        """Its counters now; asks the subscriber for ``undelivered()`` (never under a hub lock)."""
        undelivered = self._read_undelivered()
        lat = sorted(self._latencies)
        return SubscriberStats(
            name=self.name,
            mode=self.mode,
            when_full=self.when_full,
            delivered=self.delivered,
            failed=self.failed,
            dropped=self.dropped,
            abandoned=self.abandoned,
            undelivered=undelivered,
            queue_depth=self._queued_events,
            queue_size=self.queue_size,
            latency_p50_ms=_percentile(lat, 0.50) / 1e6,
            latency_p99_ms=_percentile(lat, 0.99) / 1e6,
            latency_max_ms=self._latency_max_ns / 1e6,
            last_error=self.last_error,
            stuck=self.stuck,
        )

    # -- handling -------------------------------------------------------------------------

    def handle(self, event: EventBase) -> None:
        """Run the subscriber on one event; a raise is counted and logged, never propagated."""
        start = time.perf_counter_ns()
        try:
            # emit() accepts any EventBase; subscribers are typed with the union of the
            # event classes, which is what every event in practice is.
            self._handle(cast("TelemetryEvent", event))
        except Exception as exc:
            self.failed += 1
            self._record_failure(exc, f"handling {event.event_type.value} seq={event.seq}")
        else:
            self.delivered += 1
            self.stuck = False
        elapsed = time.perf_counter_ns() - start
        self._latencies.append(elapsed)
        if elapsed > self._latency_max_ns:
            self._latency_max_ns = elapsed

    def _read_undelivered(self) -> int:
        """The subscriber's own ``undelivered()`` count; its last good value if it raises.

        A raise, or anything but an int from 0 to 2**63 - 1 (what the stats can hold),
        counts as a failure (logged, kept in ``last_error``), each time: a backend that
        cannot say what it lost is not lossless.
        A stuck subscriber is not asked (it may hold the lock its count is behind); its
        last reported count stands.
        """
        fn = self._undelivered
        if fn is None or self.stuck:
            return self._undelivered_seen
        try:
            value = fn()
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= INT64_MAX:
                raise TypeError(
                    f"undelivered() must return an int from 0 to {INT64_MAX}, got {value!r:.40}"
                )
        except Exception as exc:
            self.failed += 1
            self._record_failure(exc, "in undelivered()")
            return self._undelivered_seen
        self._undelivered_seen = value
        return value

    def _call_optional(self, fn: Callable[[], object] | None, what: str) -> bool:
        if fn is None:
            return True
        try:
            fn()
        except Exception as exc:
            # Counted like a failed event: what a failed flush() or close() should have
            # made durable (the analytics log's last fsync) may be lost, and a failure
            # only logged would leave the run's exit status at "completed".
            self.failed += 1
            self._record_failure(exc, f"in {what}()")
            return False
        return True

    def _record_failure(self, exc: Exception, context: str) -> None:
        said: str = redact_secrets(str(exc))
        self.last_error = f"{type(exc).__name__}: {said}"
        now = time.monotonic()
        if now - self._last_failure_log >= _FAILURE_LOG_INTERVAL_S:
            suppressed = self._failures_unlogged
            note = f" ({suppressed} more failures since the last report)" if suppressed else ""
            first = self._last_failure_log == -float("inf")
            # A traceback would repeat a secret the exception holds: then the redacted
            # line only.
            leaky = first and secret_shape_in("".join(format_exception(exc))) is not None
            logger.error(
                "telemetry subscriber %r raised %s%s; the other subscribers are unaffected%s",
                self.name,
                context,
                note,
                f" ({self.last_error})" if leaky else "",
                exc_info=exc if first and not leaky else None,
            )
            self._last_failure_log = now
            self._failures_unlogged = 0
        else:
            self._failures_unlogged += 1

    # -- the worker -----------------------------------------------------------------------

    def _run(self) -> None:
        _local.subscription = self
        while True:
            item = self._next_item()
            if isinstance(item, Token):
                self._act_on(item)
                if item.kind in ("stop", "close"):
                    return
            else:
                self._in_hand = True
                self.handle(item)
                self._in_hand = False

    def _next_item(self) -> EventBase | Token:
        """The next queued item; parks the worker while the queue is empty."""
        while True:
            with self._lock:
                if self._queue:
                    item = self._queue.popleft()
                    if not isinstance(item, Token):
                        self._queued_events -= 1
                        self._not_full.notify()
                    return item
                self._waiting = True
                try:
                    self._not_empty.wait()
                finally:
                    self._waiting = False
            # Pass the wake-up chain on before handling anything (see _wake).
            self._wake_chain.woken(self)

    def _act_on(self, token: Token) -> None:
        if token.kind == "flush" or token.kind == "stop":
            token.ok = self.flush_now()
        else:
            token.ok = self.close_now()
        token.done.set()

    def _drop_oldest_event(self) -> None:
        for i, item in enumerate(self._queue):
            if not isinstance(item, Token):
                del self._queue[i]
                self._queued_events -= 1
                self.dropped += 1
                return

    def _wait_for_room(self) -> None:
        started = time.monotonic()
        while self._queued_events >= self.queue_size:
            limits = [self._close_deadline]
            if self.block_timeout is not None:
                limits.append(started + self.block_timeout)
            limit = min((x for x in limits if x is not None), default=None)
            remaining = None if limit is None else limit - time.monotonic()
            if remaining is not None and remaining <= 0:
                # It has made no room for too long: give up on its oldest event rather
                # than stall training, and say so.
                self.stuck = True
                self._drop_oldest_event()
                logger.error(
                    "telemetry subscriber %r took no event for %.1f s with a full queue "
                    "(%d); dropped its oldest event (dropped so far: %d)",
                    self.name,
                    time.monotonic() - started,
                    self.queue_size,
                    self.dropped,
                )
                return
            self._not_full.wait(remaining)


def _percentile(sorted_values: list[int], q: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, int(q * len(sorted_values)))
    return float(sorted_values[index])


#: What ``subscribe(events=...)`` takes: an event class, an EventType or its value.
EventSelector = type[EventBase] | EventType | str


def parse_events(
    events: EventSelector | Iterable[EventSelector] | None,
) -> frozenset[EventType]:
    """The event types a subscriber asked for (None: all of them).

    ``events`` is one selector or an iterable of them; a selector is an event class
    (``PPOUpdateCompleted``), an ``EventType`` or its value (``"PPO_UPDATE_COMPLETED"``).

    Raises:
        ValueError: a selector names no event type, or the selection is empty.
    """
    if events is None:
        return frozenset(EventType)
    selectors: Iterable[object]
    if isinstance(events, str | EventType | type) or not isinstance(events, Iterable):
        selectors = [events]
    else:
        selectors = events
    chosen = {_event_type_of(e) for e in selectors}
    if not chosen:
        raise ValueError("events: an empty selection would deliver nothing; pass None for all")
    return frozenset(chosen)


def _event_type_of(selector: object) -> EventType:
    if isinstance(selector, type) and selector in EVENT_CLASSES:
        return _EVENT_TYPE_OF_CLASS[selector]
    if isinstance(selector, str | EventType):
        try:
            return EventType(selector)
        except ValueError:
            pass
    classes = ", ".join(c.__name__ for c in EVENT_CLASSES)
    values = ", ".join(t.value for t in EventType)
    shown = selector.__name__ if isinstance(selector, type) else repr(selector)
    raise ValueError(
        f"events: {shown} is not an event type; use event classes ({classes}), "
        f"EventType members or their values ({values}), or None for all"
    )


#: The event type of each event class, from the class's fixed ``event_type``.
_EVENT_TYPE_OF_CLASS: dict[type[EventBase], EventType] = {
    cls: EventType(cls.model_fields["event_type"].default) for cls in EVENT_CLASSES
}
