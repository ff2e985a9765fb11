"""TelemetryHub: one typed event in, every subscriber served independently.

Dispatch is blinker: the hub owns a private ``Namespace`` with one signal per event
type, and each subscription is connected (``weak=False``) to the signals of the events
it asked for; every event is delivered by ``Signal.send(hub, event=event)``. Two
things make ``send`` fit a hub that must isolate its subscribers:

- order: blinker calls receivers in the order of its ``set_class``; the hub's signals
  use an insertion-ordered set, so delivery order is subscription order (pinned by a
  test for the installed blinker);
- isolation: ``send`` stops at the first exception, so a subscription never raises out
  of it. A subscriber's ``Exception`` is counted and logged inside the subscription;
  a ``BaseException`` (Ctrl-C landing in a subscriber) is *returned* as the receiver's
  result, and the hub re-raises the first one once ``send`` has reached everyone.

Threaded subscribers are woken through a chain (``_wake``): an emit costs the emitting
thread at most one thread wake-up, however many threaded subscribers there are.

Ordering: ``emit`` stamps ``seq`` under a lock and appends the event to one pending
queue; a single dispatcher at a time delivers that queue in order. An event emitted
from inside a subscriber joins the queue behind the event being handled, so every
subscriber sees strictly increasing ``seq`` without re-entrant deadlock.
"""

from __future__ import annotations

import logging
import re
import secrets
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableSet
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from types import TracebackType
from typing import Any, Literal, Self, TypeVar, overload

import blinker

from esper_telemetry.contracts import (
    EventBase,
    EventType,
    HubStats,
    PPOUpdateCompleted,
    RunFinished,
    RunFinishedPayload,
    RunStarted,
    RunStartedPayload,
    TelemetryEvent,
    TelemetryLevel,
    TelemetryLevelChanged,
    TelemetryLevelChangedPayload,
    redact_marked,
)
from esper_telemetry.contracts._base import INT64_MAX
from esper_telemetry.errors import HubClosedError, TrainingHalted
from esper_telemetry.hub._protocol import HandlesEventsOf, Subscriber
from esper_telemetry.hub._redact import redact_secrets, secret_key_problem, secret_shape_in
from esper_telemetry.hub._subscription import (
    EventSelector,
    Mode,
    Subscription,
    Token,
    WhenFull,
    current_subscription,
    parse_events,
)
from esper_telemetry.hub._wake import WakeChain

logger = logging.getLogger("esper_telemetry.hub")

_Handle = Callable[[TelemetryEvent], object]
_Hook = Callable[[], object]
_E = TypeVar("_E", bound=EventBase)

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
        rank: The process rank stamped on every event. Default: the global rank of an
            initialised ``torch.distributed`` run, else 0.
        world_size: How many processes train together. Default: the world size of an
            initialised ``torch.distributed`` run, else 1.
        publish_ranks: Which ranks deliver to threaded subscribers (W&B, the logs, the
            analytics log): ``"zero"`` (default), global rank 0 only, so a run has one
            W&B run and one log; ``"all"``, every rank (for per-rank debugging: the
            analytics log and the structured log then write one file per rank, and W&B
            one run per rank, grouped). Inline subscribers (the anomaly escalator) run on
            every rank either way.

    In a run of several processes every rank must name the same run: pass ``run_id``.
    On a rank that does not publish, a threaded subscription is accepted and ignored:
    its ``on_subscribe`` is not called and it gets no event. A rank other than 0 whose
    hub has no subscriber at all warns once, at its first event: its events go
    nowhere, so an anomaly only that rank sees would be missed.

    >>> from esper_telemetry.contracts import PPOUpdateCompleted, PPOUpdatePayload
    >>> seen = []
    >>> with TelemetryHub("demo") as hub:
    ...     _ = hub.subscribe(seen.append, mode="inline")
    ...     _ = hub.emit(PPOUpdateCompleted(update=0, payload=PPOUpdatePayload(
    ...         policy_loss=0.1, value_loss=0.5, entropy=0.69)))
    >>> [(e.run_id, e.seq, e.event_type.value) for e in seen]
    [('demo', 0, 'PPO_UPDATE_COMPLETED')]
    """

    def __init__(
        self,
        run_id: str | None = None,
        *,
        level: TelemetryLevel | str = TelemetryLevel.NORMAL,
        rank: int | None = None,
        world_size: int | None = None,
        publish_ranks: Literal["zero", "all"] = "zero",
    ) -> None:
        self._level = TelemetryLevel.parse(level)
        self._rank, self._world_size = _checked_ranks(rank, world_size)
        if publish_ranks not in ("zero", "all"):
            raise ValueError(f"publish_ranks must be 'zero' or 'all', got {publish_ranks!r}")
        self._publish_ranks: Literal["zero", "all"] = publish_ranks
        if run_id is None and self._world_size > 1:
            raise ValueError(
                f"run_id: in a run of {self._world_size} processes every rank must name the "
                "same run; pass the same run_id on every rank (e.g. chosen on rank 0 and "
                "sent with torch.distributed.broadcast_object_list)"
            )
        self._run_id = _checked_run_id(run_id)
        self._idle: list[str] = []  # threaded subscriptions of a rank that does not publish
        self._warned_alone = False
        self._ppo_updates = 0  # emitted by this hub, for hub.run()'s summary
        self._namespace = _OrderedNamespace()
        self._signals = {et: self._namespace.signal(et.value) for et in EventType}
        self._wake_chain = WakeChain()
        self._subscriptions: list[Subscription] = []
        self._lock = threading.Lock()
        self._delivered_cv = threading.Condition(self._lock)
        self._delivered_waiters = 0  # threads in _delivered_cv.wait(); skips idle notifies
        self._pending: deque[EventBase | _Barrier] = deque()
        self._dispatcher: int | None = None
        self._next_seq = 0
        self._resumed_seq = 0  # the first seq of this process's events
        self._first_update = 0
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
    def world_size(self) -> int:
        """How many processes train together (1 outside a distributed run)."""
        return self._world_size

    @property
    def publish_ranks(self) -> Literal["zero", "all"]:
        """Which ranks deliver to threaded subscribers: ``"zero"`` or ``"all"``."""
        return self._publish_ranks

    @property
    def publishes(self) -> bool:
        """True when this rank delivers to threaded subscribers."""
        return self._publish_ranks == "all" or self._rank == 0

    @property
    def per_rank_files(self) -> bool:
        """True when each rank writes its own log files (``publish_ranks="all"`` in a run
        of several processes): ``events.rank<N>.jsonl``, ``log.rank<N>.jsonl``."""
        return self._publish_ranks == "all" and self._world_size > 1

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

    @property
    def first_update(self) -> int:
        """The PPO update a trainer starts counting at: 0, or for a run that resumes
        (:meth:`resume_after`), the update after the last one on disk."""
        return self._first_update

    def resume_after(self, seq: int, update: int) -> None:
        """Continue a run whose events up to ``seq`` and PPO ``update`` are already on
        disk: the next event gets ``seq + 1`` and :attr:`first_update` becomes
        ``update + 1``. Backends that resume a run (``AnalyticsCollector(resume=True)``)
        call it when subscribed; when several do, the furthest position wins.

        Raises:
            ValueError: ``seq`` or ``update`` is not an int from 0 to 2**63 - 2.
            RuntimeError: this hub already emitted events (a resume comes first).
        """
        for name, value in (("seq", seq), ("update", update)):
            if type(value) is not int or not 0 <= value < INT64_MAX:
                raise ValueError(
                    f"{name} must be an int from 0 to {INT64_MAX - 1}, got {_shown(value)}"
                )
        with self._lock:
            if self._next_seq > self._resumed_seq:
                raise RuntimeError(
                    f"hub {self._run_id!r} already emitted {self._next_seq - self._resumed_seq} "
                    "events; resume a run before its first event (subscribe the backends "
                    "that resume first)"
                )
            self._next_seq = self._resumed_seq = max(self._next_seq, seq + 1)
            self._first_update = max(self._first_update, update + 1)
            self._last_update = max(self._last_update, update)

    def _warn_if_alone(self) -> None:
        self._warned_alone = True
        if self._rank != 0 and not self._subscriptions and not self._idle:
            logger.warning(
                "TelemetryHub %r on rank %d has no subscriber: this rank's events go "
                "nowhere, so an anomaly only this rank sees is missed. Subscribe the same "
                "backends on every rank (threaded ones deliver on rank 0 only; inline ones, "
                "such as the anomaly escalator, run everywhere)",
                self._run_id,
                self._rank,
            )

    # -- subscribing --------------------------------------------------------------------

    @overload
    def subscribe(
        self,
        subscriber: Callable[[_E], object] | HandlesEventsOf[_E],
        *,
        events: type[_E] | Iterable[type[_E]],
        mode: Mode = ...,
        queue_size: int = ...,
        when_full: WhenFull = ...,
        name: str | None = ...,
        block_timeout: float | None = ...,
    ) -> str: ...

    @overload
    def subscribe(
        self,
        subscriber: Subscriber,
        *,
        events: EventSelector | Iterable[EventSelector] | None = None,
        mode: Mode = ...,
        queue_size: int = ...,
        when_full: WhenFull = ...,
        name: str | None = ...,
        block_timeout: float | None = ...,
    ) -> str: ...

    def subscribe(
        self,
        subscriber: Subscriber | Callable[[_E], object] | HandlesEventsOf[_E],
        *,
        events: EventSelector | Iterable[EventSelector] | None = None,
        mode: Mode = "thread",
        queue_size: int = DEFAULT_QUEUE_SIZE,
        when_full: WhenFull = "block",
        name: str | None = None,
        block_timeout: float | None = DEFAULT_BLOCK_TIMEOUT_S,
    ) -> str:
        """Deliver events to ``subscriber`` from now on.

        Each event reaches the subscribers in the order they subscribed (threaded ones
        get it queued in that order, then handle it on their own threads).

        A subscriber that asks for event classes only may be typed for them: ``def
        on_update(e: PPOUpdateCompleted)`` subscribed with ``events=PPOUpdateCompleted``
        type-checks.

        Args:
            subscriber: A :class:`Backend`, any object with ``handle(event)`` (its
                ``flush()``, ``close()``, ``on_subscribe(hub)`` and ``undelivered()``
                are used when present), or a callable taking one event.
            events: What to receive: event classes (``PPOUpdateCompleted``),
                ``EventType`` members or their values, one or an iterable; None for all.
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
                event (counted and logged): seconds, above 0 (not a bool, NaN or
                infinite); None waits forever.

        Returns:
            The subscription's name, for :meth:`unsubscribe` and :meth:`stats`.

        Raises:
            TypeError: ``subscriber`` is neither callable nor has ``handle``.
            ValueError: a bad ``events``, ``mode``, ``queue_size``, ``when_full``,
                ``block_timeout`` or a ``name`` already taken.
            HubClosedError: the hub is closing or closed.
        """
        handle, flush, close, undelivered = _callables_of(subscriber)
        chosen = parse_events(events)
        _check_options(mode, when_full, queue_size, block_timeout, name)
        taken = self._free_name(name)
        if mode == "thread" and not self.publishes:
            unique = name if name is not None else _unique(_default_name(subscriber), taken)
            with self._lock:
                self._idle.append(unique)
            return unique
        hook = getattr(subscriber, "on_subscribe", None)
        if callable(hook):
            # Lets a backend learn the hub (run_id, level, emit) or fail before any event,
            # e.g. W&B without credentials. If it raises, nothing is subscribed.
            hook(self)
        with self._lock:
            taken = self._free_name(name, locked=True)
            unique = name if name is not None else _unique(_default_name(subscriber), taken)
            sub = Subscription(
                name=unique,
                handle=handle,
                flush=flush,
                close=close,
                undelivered=undelivered,
                source=subscriber,
                events=chosen,
                mode=mode,
                queue_size=queue_size,
                when_full=when_full,
                block_timeout=block_timeout,
                wake_chain=self._wake_chain,
            )
            self._subscriptions.append(sub)
            for et in chosen:
                self._signals[et].connect(sub.receive, weak=False)
        return unique

    def _free_name(self, name: str | None, *, locked: bool = False) -> set[str]:
        """The names taken; raises when the hub is closed or ``name`` is one of them."""
        if not locked:
            with self._lock:
                return self._free_name(name, locked=True)
        self._check_open("subscribe")
        taken = {s.name for s in self._subscriptions} | set(self._idle)
        if name is not None and name in taken:
            raise ValueError(f"name: a subscriber named {name!r} is already subscribed")
        return taken

    def unsubscribe(self, subscriber: object, *, timeout: float | None = 10.0) -> bool:
        """Stop delivering to a subscriber, after it has handled what was emitted before.

        ``subscriber`` is the name :meth:`subscribe` returned or the object subscribed.
        Its ``flush()`` is called; its ``close()`` is not: it is yours again.

        Returns:
            True when it finished its queue and flush within ``timeout`` seconds.

        Raises:
            ValueError: no such subscriber on this hub, or a bad ``timeout`` (a bool,
                NaN, negative or infinite: None waits without a limit).
        """
        deadline = _deadline(timeout)  # a bad timeout is refused before anything is done
        with self._lock:
            if isinstance(subscriber, str) and subscriber in self._idle:
                self._idle.remove(subscriber)  # it never got anything
                return True
            sub = self._find(subscriber)
            barrier = _Barrier("unsubscribe", target=sub)
            self._pending.append(barrier)
        self._run_pending_until(barrier)
        return _wait_tokens(barrier.tokens, deadline)

    def _find(self, subscriber: object) -> Subscription:
        for sub in self._subscriptions:
            if sub.name == subscriber or sub.source is subscriber:
                return sub
        raise ValueError(f"subscriber: {subscriber!r} is not subscribed to this hub")

    # -- emitting -----------------------------------------------------------------------

    def emit(self, event: _E) -> _E:
        """Publish ``event`` to every subscriber of its type; return it as published.

        The published event is a copy: its secret-marked text redacted (see
        ``redact_secrets``), stamped with ``run_id``, ``seq`` (strictly increasing),
        ``rank`` and ``level``. Inline subscribers have run when this returns (events
        emitted by a subscriber are delivered right after the one it is handling);
        threaded ones have it queued. A subscriber that raises is counted and logged;
        it never makes ``emit`` raise.

        Raises:
            TypeError: ``event`` is not an event (an ``EventBase`` instance such as
                ``PPOUpdateCompleted``).
            ValueError: ``event.update`` is not an int from 0 to 2**63 - 1 (only an
                event built without validation, by ``model_construct`` or
                ``model_copy(update=...)``, can hold one).
            HubClosedError: the hub is closing or closed; nobody received the event.
        """
        if not isinstance(event, EventBase):
            raise TypeError(
                "event must be an event (an EventBase instance such as PPOUpdateCompleted), "
                f"got {type(event).__name__}"
            )
        # Redacting before the lock keeps it short; an event without marked text (every
        # PPO update) is returned as it is, at the cost of one cached lookup.
        _check_update(event)
        if not self._warned_alone:
            self._warn_if_alone()
        _check_metric_names(self, event)
        clean = redact_marked(event, redact_secrets)
        with self._lock:
            stamped, reentrant = self._enqueue(clean, "emit")
            # The common case: nobody is dispatching, so we do, without a second lock.
            claimed = not reentrant and self._dispatcher is None
            if claimed:
                self._dispatcher = threading.get_ident()
        if claimed:
            self._drain()
        elif not reentrant:
            self._run_pending_until(stamped)
        return stamped

    def _enqueue(self, event: _E, what: str) -> tuple[_E, bool]:
        """Stamp and queue ``event`` (lock held, secrets already redacted); True when the
        running dispatcher is us."""
        me = threading.get_ident()
        inside = current_subscription() is not None or self._dispatcher == me
        if self._state is not _State.OPEN and not (self._state is _State.CLOSING and inside):
            raise HubClosedError(
                f"TelemetryHub {self._run_id!r} is {self._state.value}: {what}() refused, "
                f"{event.event_type.value} (update {event.update}) was not published. "
                "Emit before close(), or create a new TelemetryHub."
            )
        stamped = event.model_copy(
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

    def set_level(
        self, level: TelemetryLevel | str, *, reason: str = ""
    ) -> TelemetryLevelChanged | None:
        """Change the telemetry level and emit a ``TelemetryLevelChanged`` event.

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
            change = redact_marked(
                TelemetryLevelChanged(update=self._last_update, payload=payload), redact_secrets
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

    # -- a run ----------------------------------------------------------------------------

    @contextmanager
    def run(
        self,
        *,
        config: Mapping[str, Any] | None = None,
        description: str = "",
        summary: Mapping[str, float] | None = None,
    ) -> Iterator[Self]:
        """One run as a block: ``RUN_STARTED`` on entry, ``RUN_FINISHED`` on exit.

        The status says how the block ended: ``completed``; ``halted`` by a
        ``TrainingHalted`` (a halt the escalator asked for), which the block then ends
        on without raising; ``interrupted`` by Ctrl-C (``KeyboardInterrupt``, raised
        again); ``failed`` by any other exception, named with its type and first line in
        the message (raised again). The summary holds ``updates`` (the PPO updates
        emitted in the block) and your own ``summary`` scalars; ``hub_stats`` the hub's
        counters. The hub is not closed.

        >>> seen = []
        >>> with TelemetryHub("run-demo") as hub:
        ...     _ = hub.subscribe(seen.append, mode="inline")
        ...     with hub.run(config={"lr": 0.001}):
        ...         pass
        >>> [e.event_type.value for e in seen], seen[-1].payload.status
        (['RUN_STARTED', 'RUN_FINISHED'], 'completed')
        """
        started = RunStarted(
            update=self._first_update,
            payload=RunStartedPayload(config=dict(config or {}), description=description),
        )
        extra = dict(summary or {})
        RunFinishedPayload(status="completed", summary=extra)  # a bad summary fails here
        self.emit(started)
        first = self._ppo_updates
        status: Literal["completed", "interrupted", "halted", "failed"] = "completed"
        message = ""
        try:
            yield self
        except TrainingHalted as halt:
            status, message = "halted", str(halt)
        except KeyboardInterrupt:
            status, message = "interrupted", "interrupted by the user"
            raise
        except Exception as exc:
            status, message = "failed", _one_line(exc)
            raise
        finally:
            if not self.closed:  # closed inside the block: nothing more can go out
                totals = {"updates": float(self._ppo_updates - first), **extra}
                finished = RunFinishedPayload(
                    status=status, message=message, summary=totals, hub_stats=self.stats()
                )
                self.emit(RunFinished(update=self._last_update, payload=finished))

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

    def _run_pending_until(self, item: EventBase | _Barrier) -> None:
        """Return once ``item`` has been dispatched, dispatching ourselves if nobody is."""
        me = threading.get_ident()
        with self._lock:
            while not self._dispatched(item):
                if self._dispatcher is None:
                    self._dispatcher = me
                    break
                self._delivered_waiters += 1
                try:
                    self._delivered_cv.wait()
                finally:
                    self._delivered_waiters -= 1
            else:
                return
        self._drain()

    def _dispatched(self, item: EventBase | _Barrier) -> bool:
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
                        self._notify_delivered()
                        return
                    item = self._pending.popleft()
                if isinstance(item, _Barrier):
                    self._run_barrier(item)
                    with self._lock:
                        self._notify_delivered()
                    continue
                try:
                    results = self._signals[item.event_type].send(self, event=item)
                finally:
                    # Wake the workers this event gave work to: one wake-up at most.
                    self._wake_chain.release()
                # Ctrl-C (KeyboardInterrupt) landing in one subscriber must not keep
                # the event from the ones after it: each receiver returns what
                # interrupted it instead of raising (see Subscription.receive); the
                # first goes on once everyone had the event. Never partly delivered.
                interrupted: BaseException | None = None
                for _, result in results:
                    if interrupted is None and isinstance(result, BaseException):
                        interrupted = result
                with self._lock:
                    self._delivered_seq = item.seq
                    self._notify_delivered()
                if interrupted is not None:
                    raise interrupted
        except BaseException:
            # E.g. KeyboardInterrupt while waiting for queue room: hand the dispatcher
            # role back so the events still pending go out with the next emit.
            with self._lock:
                self._dispatcher = None
                self._notify_delivered()
            raise

    def _notify_delivered(self) -> None:
        """Wake the threads waiting for something to be dispatched (lock held)."""
        if self._delivered_waiters:  # Condition.notify_all costs ~1 µs even with no waiter
            self._delivered_cv.notify_all()

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
                        signal.disconnect(sub.receive)
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
            ValueError: a bad ``timeout`` (a bool, NaN, negative or infinite: None
                waits without a limit).
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
            ValueError: ``timeout`` is not a number of seconds from 0 to
                ``threading.TIMEOUT_MAX`` (a bool, NaN, a negative or infinite one).
            RuntimeError: called from inside a subscriber.
        """
        self._refuse_inside("close")
        deadline = time.monotonic() + _checked_timeout(timeout, "timeout", none=False)
        with self._lock:
            closing = self._state is not _State.OPEN
            final = self._final_stats
            if not closing:
                self._state = _State.CLOSING
                barrier = _Barrier("marker")  # all emitted before close() is ahead of it
                self._pending.append(barrier)
                subs = list(self._subscriptions)
        if closing:
            # Closed, or another thread is closing: its stats (the latter: live ones).
            return final if final is not None else self.stats()
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
                signal.disconnect(sub.receive)
        if stuck:
            logger.warning(
                "TelemetryHub %r closed without waiting for stuck subscriber(s): %s",
                self._run_id,
                ", ".join(repr(s.name) for s in stuck),
            )
        final = self.stats()  # each backend's final undelivered() count, after its close()
        with self._lock:
            self._final_stats = final
        return final

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
        """A snapshot of the hub's and every subscriber's counters.

        Each subscriber's ``undelivered`` is its own ``undelivered()`` count, asked for
        here, outside the hub's lock; a raise there is counted as a failure, never raised.
        """
        with self._lock:
            subs = list(self._subscriptions)
            state, level, emitted = (
                self._state,
                self._level,
                self._next_seq - self._resumed_seq,
            )
        return HubStats(
            run_id=self._run_id,
            state=state.value,
            level=level,
            emitted=emitted,
            subscribers=tuple(s.stats() for s in subs),
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


def _check_options(
    mode: object, when_full: object, queue_size: object, block_timeout: object, name: object
) -> None:
    """Refuse a bad ``subscribe`` option with one line naming it."""
    if mode not in ("thread", "inline"):
        raise ValueError(f"mode must be 'thread' or 'inline', got {mode!r}")
    if when_full not in ("block", "drop_oldest"):
        raise ValueError(f"when_full must be 'block' or 'drop_oldest', got {when_full!r}")
    if not isinstance(queue_size, int) or isinstance(queue_size, bool) or queue_size < 1:
        raise ValueError(f"queue_size must be an int >= 1, got {queue_size!r}")
    if block_timeout is not None:
        _checked_timeout(block_timeout, "block_timeout", none=True, positive=True)
    if name is not None and (not isinstance(name, str) or not name.strip()):
        raise ValueError(f"name must be a non-empty string, got {name!r}")


def _checked_ranks(rank: object, world_size: object) -> tuple[int, int]:
    """``rank`` and ``world_size``, each defaulting to torch.distributed's when it is
    initialised (read from an already imported torch: the hub never imports it)."""
    dist_rank, dist_world = 0, 1
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist_rank, dist_world = int(dist.get_rank()), int(dist.get_world_size())
    rank = dist_rank if rank is None else rank
    world_size = dist_world if world_size is None else world_size
    if type(rank) is not int or not 0 <= rank <= INT64_MAX:
        raise ValueError(f"rank must be an int from 0 to {INT64_MAX} (int64), got {_shown(rank)}")
    if type(world_size) is not int or not 1 <= world_size <= INT64_MAX:
        raise ValueError(f"world_size must be an int >= 1, got {_shown(world_size)}")
    if rank >= world_size:
        raise ValueError(
            f"rank must be below world_size: got rank {rank} of world_size {world_size}"
        )
    return rank, world_size


def _checked_run_id(run_id: str | None) -> str:
    if run_id is None:
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        return f"{stamp}-{secrets.token_hex(3)}"
    # A secret must not become a directory name and the run_id of every event; nor may
    # this message repeat it.
    shape = secret_shape_in(run_id) if isinstance(run_id, str) else None
    if shape is not None:
        raise ValueError(
            f"run_id was refused: it holds {shape}, and a run id names the run's "
            "directory and appears in every event and log; choose another name"
        )
    if not isinstance(run_id, str) or not _RUN_ID.fullmatch(run_id):
        suggestion = ""
        if isinstance(run_id, str):
            clean = re.sub(r"[^A-Za-z0-9._-]+", "-", run_id).lstrip("._-")[:128]
            if _RUN_ID.fullmatch(clean):
                suggestion = f"; use {redact_secrets(repr(clean))} instead"
        raise ValueError(
            f"run_id must be 1-128 letters, digits, '.', '_' or '-', starting with a letter "
            f"or digit (it names a directory), got {redact_secrets(repr(run_id))}" + suggestion
        )
    return run_id


def _callables_of(
    subscriber: object,
) -> tuple[_Handle, _Hook | None, _Hook | None, Callable[[], object] | None]:
    """``handle``, and ``flush``, ``close``, ``undelivered`` where the subscriber has them."""
    handle = getattr(subscriber, "handle", None)
    if callable(handle):
        optional = [getattr(subscriber, n, None) for n in ("flush", "close", "undelivered")]
        flush, close, undelivered = (fn if callable(fn) else None for fn in optional)
        return handle, flush, close, undelivered
    if callable(subscriber):
        return subscriber, None, None, None
    raise TypeError(
        "subscriber must be a callable taking one event, a Backend, or an object with a "
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
    return time.monotonic() + _checked_timeout(timeout, "timeout", none=True)


def _checked_timeout(value: object, name: str, *, none: bool, positive: bool = False) -> float:
    """``value`` as seconds to wait: a real number from 0 (or above 0, with ``positive``)
    to ``threading.TIMEOUT_MAX``.

    A bool, NaN (every comparison with it is false, so it would read as "no time") and
    ±Inf or anything past ``TIMEOUT_MAX`` (``Event.wait`` raises OverflowError on them)
    are refused with one line naming ``name``; ``none`` says None is allowed too.
    """
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not 0 <= value <= threading.TIMEOUT_MAX  # False for NaN
        or (positive and value == 0)
    ):
        low = "0 <" if positive else "0 <="
        forever = ", or None to wait without a limit" if none else ""
        raise ValueError(
            f"{name} must be a number of seconds, {low} s <= {threading.TIMEOUT_MAX:.0f} "
            f"(threading.TIMEOUT_MAX){forever}; got {_shown(value)}"
        )
    return float(value)


def _check_update(event: EventBase) -> None:
    # An event's class validates update, but model_construct() and model_copy(update=)
    # do not: an update no log reader could store (outside int64) stops here.
    update = event.update
    if type(update) is not int or not 0 <= update <= INT64_MAX:
        raise ValueError(
            f"event.update must be an int from 0 to {INT64_MAX} (int64), got "
            f"{_shown(update)}; build events with their class, e.g. "
            "PPOUpdateCompleted(update=...), which validates every field"
        )


def _check_metric_names(hub: TelemetryHub, event: EventBase) -> None:
    # The emitter refuses a metric name that looks like a secret; an event built by hand
    # is held to the same rule here, before any subscriber sees it.
    match event:
        case PPOUpdateCompleted(payload=p):
            hub._ppo_updates += 1
            names, field = p.extra, "extra"
        case RunFinished(payload=p):
            names, field = p.summary, "summary"
        case _:
            return
    for name in names:
        refused = secret_key_problem(name, field)
        if refused is not None:
            raise ValueError(refused)


def _one_line(exc: BaseException) -> str:
    text = next((t.strip() for t in str(exc).splitlines() if t.strip()), "")
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _shown(value: object) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**40:
        return f"an int of {value.bit_length()} bits"  # repr may refuse past 4300 digits
    return f"{value!r:.40}"


def _wait_tokens(tokens: list[Token], deadline: float | None) -> bool:
    for token in tokens:
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        if not token.done.wait(remaining):
            return False
    return True


# -- blinker, ordered ----------------------------------------------------------------------


class _OrderedSet(MutableSet[Any]):
    """A set that iterates in insertion order (a dict's keys): blinker's ``set_class``.

    Blinker calls receivers in the iteration order of this set, copied (``copy()``) or
    merged (``|``) per ``send``; both keep the order.
    """

    __slots__ = ("_items",)

    def __init__(self, items: Iterable[Any] = ()) -> None:
        self._items: dict[Any, None] = dict.fromkeys(items)

    def __contains__(self, item: object) -> bool:
        return item in self._items

    def __iter__(self) -> Iterator[Any]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def add(self, value: Any) -> None:
        self._items[value] = None

    def discard(self, value: Any) -> None:
        self._items.pop(value, None)

    def copy(self) -> _OrderedSet:
        # dict.copy is one C call: atomic under the GIL while subscribe() adds elsewhere.
        new = _OrderedSet()
        new._items = self._items.copy()
        return new

    def __repr__(self) -> str:
        return f"_OrderedSet({list(self._items)!r})"


class _OrderedSignal(blinker.NamedSignal):
    """A blinker signal that calls its receivers in the order they were connected."""

    # blinker types set_class as type[set]; it only needs add, discard, copy, | and
    # ordered iteration, which _OrderedSet provides (MutableSet gives |).
    set_class = _OrderedSet  # type: ignore[assignment]


class _OrderedNamespace(blinker.Namespace):
    """The hub's own namespace of ordered signals (never blinker's global one)."""

    def signal(self, name: str, doc: str | None = None) -> blinker.NamedSignal:
        if name not in self:
            self[name] = _OrderedSignal(name, doc)
        return self[name]
