"""TelemetryHub: one typed event in, every subscriber served independently.

Routing is blinker: the hub owns a private ``Namespace`` with one signal per event
type, and a subscription is connected (strongly) to the signals of the events it
asked for. Blinker's ``send`` calls receivers in set order and stops at the first
exception, so the hub walks each signal's receivers itself, in connection order, and
isolates every subscriber.

Ordering: ``emit`` stamps ``seq`` under a lock and appends the event to one pending
queue; a single dispatcher at a time delivers that queue in order. An event emitted
from inside a subscriber joins the queue behind the event being handled, so every
subscriber sees strictly increasing ``seq`` without re-entrant deadlock.
"""

from __future__ import annotations

import logging
import re
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from types import TracebackType
from typing import Literal, Self

import blinker

from esper_telemetry.contracts import (
    AnomalyDetectedPayload,
    EventType,
    HubStats,
    RunFinishedPayload,
    RunStartedPayload,
    TelemetryEvent,
    TelemetryLevel,
    TelemetryLevelChangedPayload,
)
from esper_telemetry.errors import HubClosedError, TrainingHalted
from esper_telemetry.hub._protocol import Subscriber
from esper_telemetry.hub._redact import redact_secrets
from esper_telemetry.hub._subscription import (
    Mode,
    Subscription,
    Token,
    WhenFull,
    current_subscription,
    parse_events,
)

logger = logging.getLogger("esper_telemetry.hub")

_Handle = Callable[[TelemetryEvent], object]
_Hook = Callable[[], object]

_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
DEFAULT_QUEUE_SIZE = 1024
DEFAULT_BLOCK_TIMEOUT_S = 30.0


class _State(Enum):
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


@dataclass(eq=False)
class _Barrier:
    """A control step in the pending queue, run by the dispatcher in order."""

    kind: Literal["flush", "unsubscribe", "marker"]
    target: Subscription | None = None
    subs: list[Subscription] = field(default_factory=list)
    tokens: list[Token] = field(default_factory=list)
    dispatched: threading.Event = field(default_factory=threading.Event)


class TelemetryHub:
    """Publishes telemetry events to subscribers, each isolated from the others.

    Args:
        run_id: Names the run in every event; letters, digits, ``.``, ``_``, ``-``
            (it becomes a directory name). Default: a timestamp plus random suffix.
        level: The starting telemetry level.
        rank: The process rank stamped on every event.

    >>> from esper_telemetry.contracts import PPOUpdatePayload, TelemetryEvent
    >>> seen = []
    >>> with TelemetryHub("demo") as hub:
    ...     _ = hub.subscribe(seen.append, mode="inline")
    ...     _ = hub.emit(TelemetryEvent(update=0, payload=PPOUpdatePayload(
    ...         policy_loss=0.1, value_loss=0.5, entropy=0.69)))
    >>> [(e.run_id, e.seq, e.event_type.value) for e in seen]
    [('demo', 0, 'PPO_UPDATE_COMPLETED')]
    """

    def __init__(
        self,
        run_id: str | None = None,
        *,
        level: TelemetryLevel | str = TelemetryLevel.NORMAL,
        rank: int = 0,
    ) -> None:
        self._run_id = _checked_run_id(run_id)
        self._level = TelemetryLevel.parse(level)
        if not isinstance(rank, int) or isinstance(rank, bool) or rank < 0:
            raise ValueError(f"rank must be an int >= 0, got {rank!r}")
        self._rank = rank
        self._namespace = blinker.Namespace()
        self._signals = {et: self._namespace.signal(et.value) for et in EventType}
        self._routes: dict[EventType, tuple[Subscription, ...]] = dict.fromkeys(EventType, ())
        self._subscriptions: list[Subscription] = []
        self._lock = threading.Lock()
        self._delivered_cv = threading.Condition(self._lock)
        self._pending: deque[TelemetryEvent | _Barrier] = deque()
        self._dispatcher: int | None = None
        self._next_seq = 0
        self._delivered_seq = -1
        self._last_update = 0
        self._state = _State.OPEN
        self._final_stats: HubStats | None = None
        self._halt: TrainingHalted | None = None

    # -- properties ---------------------------------------------------------------------

    @property
    def run_id(self) -> str:
        """The run id stamped on every event."""
        return self._run_id

    @property
    def rank(self) -> int:
        """The process rank stamped on every event."""
        return self._rank

    @property
    def level(self) -> TelemetryLevel:
        """The current telemetry level; change it with :meth:`set_level`."""
        return self._level

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has begun; emit() then raises ``HubClosedError``."""
        return self._state is not _State.OPEN

    def __repr__(self) -> str:
        return (
            f"TelemetryHub(run_id={self._run_id!r}, state={self._state.value}, "
            f"level={self._level.name}, subscribers={len(self._subscriptions)})"
        )

    # -- subscribing --------------------------------------------------------------------

    def subscribe(
        self,
        subscriber: Subscriber,
        *,
        events: Iterable[EventType | str] | EventType | None = None,
        mode: Mode = "thread",
        queue_size: int = DEFAULT_QUEUE_SIZE,
        when_full: WhenFull = "block",
        name: str | None = None,
        block_timeout: float | None = DEFAULT_BLOCK_TIMEOUT_S,
    ) -> str:
        """Deliver events to ``subscriber`` from now on.

        Args:
            subscriber: A callable taking one ``TelemetryEvent``, or an object with
                ``handle(event)`` and optional ``flush()`` / ``close()`` (``Backend``).
            events: The event types to receive; None for all.
            mode: ``"thread"`` (default): a worker thread and a bounded FIFO queue of its
                own, so a slow subscriber never delays the emitter. ``"inline"``: called
                on the emitting thread before ``emit`` returns; for cheap, deterministic
                subscribers such as the anomaly escalator.
            queue_size: Capacity of the queue in thread mode.
            when_full: ``"block"`` (default): ``emit`` waits for room, so nothing is
                lost; ``"drop_oldest"``: the oldest queued event is dropped and counted,
                for views that only need recent events.
            name: Unique name in stats and logs; default: the subscriber's ``name``
                attribute, class or function name.
            block_timeout: With ``"block"``, how long ``emit`` waits for a subscriber
                that takes nothing before declaring it stuck and dropping its oldest
                event (counted and logged); None waits forever.

        Returns:
            The subscription's name, for :meth:`unsubscribe` and :meth:`stats`.

        Raises:
            TypeError: ``subscriber`` is neither callable nor has ``handle``.
            ValueError: a bad ``events``, ``mode``, ``queue_size``, ``when_full``,
                ``block_timeout`` or a ``name`` already taken.
            HubClosedError: the hub is closing or closed.
        """
        handle, flush, close = _callables_of(subscriber)
        chosen = parse_events(events)
        hook = getattr(subscriber, "on_subscribe", None)
        if mode not in ("thread", "inline"):
            raise ValueError(f"mode must be 'thread' or 'inline', got {mode!r}")
        if when_full not in ("block", "drop_oldest"):
            raise ValueError(f"when_full must be 'block' or 'drop_oldest', got {when_full!r}")
        if not isinstance(queue_size, int) or isinstance(queue_size, bool) or queue_size < 1:
            raise ValueError(f"queue_size must be an int >= 1, got {queue_size!r}")
        if block_timeout is not None and not (
            isinstance(block_timeout, int | float) and block_timeout > 0
        ):
            raise ValueError(f"block_timeout must be a number > 0 or None, got {block_timeout!r}")
        if name is not None and (not isinstance(name, str) or not name.strip()):
            raise ValueError(f"name must be a non-empty string, got {name!r}")
        with self._lock:
            self._check_open("subscribe")
            taken = {s.name for s in self._subscriptions}
            if name is not None and name in taken:
                raise ValueError(f"name: a subscriber named {name!r} is already subscribed")
        if callable(hook):
            # Lets a backend learn the hub (run_id, level, emit) or fail before any event,
            # e.g. W&B without credentials. If it raises, nothing is subscribed.
            hook(self)
        with self._lock:
            self._check_open("subscribe")
            taken = {s.name for s in self._subscriptions}
            if name is not None and name in taken:
                raise ValueError(f"name: a subscriber named {name!r} is already subscribed")
            unique = name if name is not None else _unique(_default_name(subscriber), taken)
            sub = Subscription(
                name=unique,
                handle=handle,
                flush=flush,
                close=close,
                source=subscriber,
                events=chosen,
                mode=mode,
                queue_size=queue_size,
                when_full=when_full,
                block_timeout=block_timeout,
            )
            self._subscriptions.append(sub)
            for et in chosen:
                self._signals[et].connect(sub, weak=False)
            self._rebuild_routes()
        return unique

    def unsubscribe(self, subscriber: object, *, timeout: float | None = 10.0) -> bool:
        """Stop delivering to a subscriber, after it has handled what was emitted before.

        ``subscriber`` is the name :meth:`subscribe` returned or the object subscribed.
        Its ``flush()`` is called; its ``close()`` is not: it is yours again.

        Returns:
            True when it finished its queue and flush within ``timeout`` seconds.

        Raises:
            ValueError: no such subscriber on this hub.
        """
        with self._lock:
            sub = self._find(subscriber)
            barrier = _Barrier("unsubscribe", target=sub)
            self._pending.append(barrier)
        self._run_pending_until(barrier)
        return _wait_tokens(barrier.tokens, _deadline(timeout))

    def _find(self, subscriber: object) -> Subscription:
        for sub in self._subscriptions:
            if sub.name == subscriber or sub.source is subscriber:
                return sub
        raise ValueError(f"subscriber: {subscriber!r} is not subscribed to this hub")

    def _rebuild_routes(self) -> None:
        # Blinker keeps receivers in a dict in connection order; snapshot it per event
        # type so dispatch reads an immutable tuple while subscribe() may run elsewhere.
        self._routes = {
            et: tuple(r for r in signal.receivers.values() if isinstance(r, Subscription))
            for et, signal in self._signals.items()
        }

    # -- emitting -----------------------------------------------------------------------

    def emit(self, event: TelemetryEvent) -> TelemetryEvent:
        """Publish ``event`` to every subscriber of its type; return it as published.

        The hub stamps ``run_id``, ``seq`` (strictly increasing), ``rank`` and
        ``level``. Inline subscribers have run when this returns (events emitted by a
        subscriber are delivered right after the one it is handling). A subscriber
        that raises is counted and logged; it never makes ``emit`` raise.

        Raises:
            TypeError: ``event`` is not a ``TelemetryEvent``.
            HubClosedError: the hub is closing or closed; nobody received the event.
        """
        if not isinstance(event, TelemetryEvent):
            raise TypeError(f"event must be a TelemetryEvent, got {type(event).__name__}")
        with self._lock:
            stamped, reentrant = self._enqueue(event, "emit")
        if not reentrant:
            self._run_pending_until(stamped)
        return stamped

    def _enqueue(self, event: TelemetryEvent, what: str) -> tuple[TelemetryEvent, bool]:
        """Stamp and queue ``event`` (lock held); True when the running dispatcher is us."""
        me = threading.get_ident()
        inside = current_subscription() is not None or self._dispatcher == me
        if self._state is not _State.OPEN and not (self._state is _State.CLOSING and inside):
            raise HubClosedError(
                f"TelemetryHub {self._run_id!r} is {self._state.value}: {what}() refused, "
                f"{event.event_type.value} (update {event.update}) was not published. "
                "Emit before close(), or create a new TelemetryHub."
            )
        stamped = _without_secrets(event).model_copy(
            update={
                "run_id": self._run_id,
                "seq": self._next_seq,
                "rank": self._rank,
                "level": self._level,
            }
        )
        self._next_seq += 1
        self._last_update = max(self._last_update, event.update)
        self._pending.append(stamped)
        # Emitted from inside a subscriber while a dispatcher runs: it delivers this
        # event after the current one; waiting here could wait on ourselves.
        return stamped, self._dispatcher is not None and inside

    def set_level(self, level: TelemetryLevel | str, *, reason: str = "") -> TelemetryEvent | None:
        """Change the telemetry level and emit ``TELEMETRY_LEVEL_CHANGED``.

        Returns:
            The level-change event, or None when ``level`` is already the level.

        Raises:
            ValueError: ``level`` names no level.
            HubClosedError: the hub is closing or closed.
        """
        new = TelemetryLevel.parse(level)
        if not isinstance(reason, str):
            raise TypeError(f"reason must be a str, got {type(reason).__name__}")
        with self._lock:
            previous = self._level
            if new == previous:
                return None
            payload = TelemetryLevelChangedPayload(previous=previous, level=new, reason=reason)
            change = TelemetryEvent(
                event_type=payload.event_type, update=self._last_update, payload=payload
            )
            self._level = new  # stamped on the change event and everything after it
            try:
                stamped, reentrant = self._enqueue(change, "set_level")
            except HubClosedError:
                self._level = previous
                raise
        if not reentrant:
            self._run_pending_until(stamped)
        return stamped

    # -- halting ------------------------------------------------------------------------

    def request_halt(self, reason: str, *, update: int | None = None) -> None:
        """Ask the trainer to stop at its next halt check; the first request wins.

        Nothing stops by itself: the trainer's next ``emit_ppo_update_event`` or
        ``raise_if_halted()`` raises ``TrainingHalted``. Safe to call from a subscriber.
        """
        if not isinstance(reason, str) or not reason:
            raise ValueError(f"reason must be a non-empty string, got {reason!r}")
        with self._lock:
            if self._halt is None:
                self._halt = TrainingHalted(reason, update=update)

    @property
    def halted(self) -> TrainingHalted | None:
        """The pending halt request, if a subscriber asked for one."""
        return self._halt

    def raise_if_halted(self) -> None:
        """Raise ``TrainingHalted`` if a halt was requested; call it from the training loop.

        Raises:
            TrainingHalted: naming what asked for the halt and the update.
        """
        halt = self._halt
        if halt is not None:
            raise TrainingHalted(halt.reason, update=halt.update)

    # -- dispatch -----------------------------------------------------------------------

    def _run_pending_until(self, item: TelemetryEvent | _Barrier) -> None:
        """Return once ``item`` has been dispatched, dispatching ourselves if nobody is."""
        me = threading.get_ident()
        with self._lock:
            while not self._dispatched(item):
                if self._dispatcher is None:
                    self._dispatcher = me
                    break
                self._delivered_cv.wait()
            else:
                return
        self._drain()

    def _dispatched(self, item: TelemetryEvent | _Barrier) -> bool:
        if isinstance(item, _Barrier):
            return item.dispatched.is_set()
        return self._delivered_seq >= item.seq

    def _drain(self) -> None:
        """Deliver the pending queue in order until it is empty (we are the dispatcher)."""
        try:
            while True:
                with self._lock:
                    if not self._pending:
                        self._dispatcher = None
                        self._delivered_cv.notify_all()
                        return
                    item = self._pending.popleft()
                    routes = self._routes
                if isinstance(item, _Barrier):
                    self._run_barrier(item)
                    with self._lock:
                        self._delivered_cv.notify_all()
                    continue
                interrupted: BaseException | None = None
                for sub in routes[item.event_type]:
                    try:
                        sub.offer(item)
                    except BaseException as exc:
                        # Ctrl-C (KeyboardInterrupt) landing in one subscriber must not
                        # keep the event from the ones after it: offer it to all, then
                        # let the interrupt go on. An event is never partly delivered.
                        if interrupted is None:
                            interrupted = exc
                with self._lock:
                    self._delivered_seq = item.seq
                    self._delivered_cv.notify_all()
                if interrupted is not None:
                    raise interrupted
        except BaseException:
            # E.g. KeyboardInterrupt while waiting for queue room: hand the dispatcher
            # role back so the events still pending go out with the next emit.
            with self._lock:
                self._dispatcher = None
                self._delivered_cv.notify_all()
            raise

    def _run_barrier(self, barrier: _Barrier) -> None:
        if barrier.kind == "flush":
            barrier.subs = list(self._subscriptions)
            barrier.tokens = [sub.send_token("flush") for sub in barrier.subs]
        elif barrier.target is not None:
            sub = barrier.target
            with self._lock:
                if sub in self._subscriptions:
                    self._subscriptions.remove(sub)
                    for signal in self._signals.values():
                        signal.disconnect(sub)
                    self._rebuild_routes()
            barrier.subs = [sub]
            barrier.tokens = [sub.send_token("stop")]
        barrier.dispatched.set()

    # -- flush and close ----------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every subscriber has handled every event emitted before this call
        and has flushed itself.

        Args:
            timeout: Seconds to wait at most; None waits as long as it takes.

        Returns:
            True when everyone finished in time; False otherwise (the laggards are
            marked ``stuck`` in :meth:`stats`).

        Raises:
            RuntimeError: called from inside a subscriber (it would wait on itself).
        """
        self._refuse_inside("flush")
        deadline = _deadline(timeout)
        with self._lock:
            if self._state is _State.CLOSED:
                return True
            barrier = _Barrier("flush")
            self._pending.append(barrier)
        self._run_pending_until(barrier)
        ok = _wait_tokens(barrier.tokens, deadline)
        if not ok:
            self._mark_stuck(barrier.tokens, barrier.subs)
        return ok and all(t.ok for t in barrier.tokens)

    def close(self, timeout: float = 10.0) -> HubStats:
        """Deliver what is pending, flush and close every subscriber, stop accepting events.

        Returns within about ``timeout`` seconds even when a subscriber is stuck; a
        stuck subscriber is named in a logged warning and in the returned stats
        (``stats.stuck``), and the events it never handled are counted as
        ``abandoned``. Closing twice returns the same stats.

        Raises:
            RuntimeError: called from inside a subscriber.
        """
        self._refuse_inside("close")
        deadline = time.monotonic() + max(0.0, float(timeout))
        with self._lock:
            if self._state is not _State.OPEN:
                final = self._final_stats
                if final is not None:
                    return final
                return self._stats_locked()
            self._state = _State.CLOSING
            barrier = _Barrier("marker")  # everything emitted before close() is ahead of it
            self._pending.append(barrier)
            subs = list(self._subscriptions)
        for sub in subs:
            sub.set_close_deadline(deadline)  # a full queue must not outwait close()
        self._run_pending_until(barrier)
        subs = list(self._subscriptions)
        tokens = [self._close_one(sub) for sub in subs]
        _wait_tokens(tokens, deadline)
        with self._lock:
            self._state = _State.CLOSED
        stuck = self._mark_stuck(tokens, subs)
        for sub in stuck:
            sub.abandon_queue()
        for sub in subs:
            for signal in self._signals.values():
                signal.disconnect(sub)
        if stuck:
            logger.warning(
                "TelemetryHub %r closed without waiting for stuck subscriber(s): %s",
                self._run_id,
                ", ".join(repr(s.name) for s in stuck),
            )
        with self._lock:
            self._final_stats = self._stats_locked()
            return self._final_stats

    def _close_one(self, sub: Subscription) -> Token:
        if sub.mode == "thread":
            return sub.send_token("close")
        # An inline subscriber's close runs on a helper thread so a hang cannot hold us.
        token = Token("close")

        def run() -> None:
            token.ok = sub.close_now()
            token.done.set()

        threading.Thread(target=run, name=f"esper-close-{sub.name}", daemon=True).start()
        return token

    def _mark_stuck(self, tokens: list[Token], subs: list[Subscription]) -> list[Subscription]:
        stuck = [s for t, s in zip(tokens, subs, strict=False) if not t.done.is_set()]
        for s in stuck:
            s.stuck = True
        return stuck

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- stats --------------------------------------------------------------------------

    def stats(self) -> HubStats:
        """A snapshot of the hub's and every subscriber's counters."""
        with self._lock:
            return self._stats_locked()

    def _stats_locked(self) -> HubStats:
        return HubStats(
            run_id=self._run_id,
            state=self._state.value,
            level=self._level,
            emitted=self._next_seq,
            subscribers=tuple(s.stats() for s in self._subscriptions),
        )

    # -- helpers ------------------------------------------------------------------------

    def _check_open(self, what: str) -> None:
        if self._state is not _State.OPEN:
            raise HubClosedError(
                f"TelemetryHub {self._run_id!r} is {self._state.value}; cannot {what}(). "
                "Create a new TelemetryHub."
            )

    def _refuse_inside(self, what: str) -> None:
        if current_subscription() is not None or self._dispatcher == threading.get_ident():
            raise RuntimeError(
                f"{what}() was called from inside a subscriber; it would wait for that "
                "subscriber itself. Call it from the training code instead."
            )


def _without_secrets(event: TelemetryEvent) -> TelemetryEvent:
    """The event with secrets in its free-text fields redacted (see ``redact_secrets``).

    Every payload field a person or a subscriber can fill with text is covered: the run's
    config and description, the finish message, an anomaly's message and a level
    change's reason. PPO updates carry numbers only and pass untouched (no cost).
    """
    payload = event.payload
    changes: dict[str, object]
    if isinstance(payload, RunStartedPayload):
        changes = {
            "config": redact_secrets(payload.config),
            "description": redact_secrets(payload.description),
        }
    elif isinstance(payload, RunFinishedPayload | AnomalyDetectedPayload):
        changes = {"message": redact_secrets(payload.message)}
    elif isinstance(payload, TelemetryLevelChangedPayload):
        changes = {"reason": redact_secrets(payload.reason)}
    else:
        return event
    return event.model_copy(update={"payload": payload.model_copy(update=changes)})


def _checked_run_id(run_id: str | None) -> str:
    if run_id is None:
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        return f"{stamp}-{secrets.token_hex(3)}"
    if not isinstance(run_id, str) or not _RUN_ID.fullmatch(run_id):
        raise ValueError(
            f"run_id must be 1-128 letters, digits, '.', '_' or '-', starting with a letter "
            f"or digit (it names a directory), got {run_id!r}"
        )
    return run_id


def _callables_of(
    subscriber: object,
) -> tuple[
    _Handle,
    _Hook | None,
    _Hook | None,
]:
    handle = getattr(subscriber, "handle", None)
    if callable(handle):
        flush = getattr(subscriber, "flush", None)
        close = getattr(subscriber, "close", None)
        return handle, flush if callable(flush) else None, close if callable(close) else None
    if callable(subscriber):
        return subscriber, None, None
    raise TypeError(
        "subscriber must be a callable taking one TelemetryEvent, or an object with a "
        f"handle(event) method; got {type(subscriber).__name__}"
    )


def _default_name(subscriber: object) -> str:
    name = getattr(subscriber, "name", None)
    if isinstance(name, str) and name:
        return name
    if hasattr(subscriber, "handle") or not hasattr(subscriber, "__name__"):
        return type(subscriber).__name__
    return str(subscriber.__name__)


def _unique(base: str, taken: set[str]) -> str:
    if base not in taken:
        return base
    n = 2
    while f"{base}#{n}" in taken:
        n += 1
    return f"{base}#{n}"


def _deadline(timeout: float | None) -> float | None:
    if timeout is None:
        return None
    if not isinstance(timeout, int | float) or isinstance(timeout, bool) or timeout < 0:
        raise ValueError(f"timeout must be a number >= 0 or None, got {timeout!r}")
    return time.monotonic() + timeout


def _wait_tokens(tokens: list[Token], deadline: float | None) -> bool:
    for token in tokens:
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        if not token.done.wait(remaining):
            return False
    return True
