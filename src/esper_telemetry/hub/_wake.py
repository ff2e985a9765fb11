"""Waking idle subscriber workers so that one emit costs at most one wake-up.

Waking a parked thread is a system call of several µs (tens on a small VM). If the
dispatcher woke every idle worker an event gave work to, an emit would cost one such
call per threaded subscriber. Instead the workers wake each other along a chain::

    dispatcher  ──wake──▶ worker A ──wake──▶ worker B ──wake──▶ worker C
    (one per emit)        (before it handles anything)

While it offers an event, the dispatcher only marks the idle workers that got work
(:meth:`WakeChain.defer`); once the event is offered to everyone it calls
:meth:`WakeChain.release`, which wakes the first marked worker, and only when no
wake-up is already travelling down the chain. A worker that wakes up holding the
chain (it is ``in_flight``) wakes the next marked one before it handles its own
event. So a worker busy for 20 ms never delays another: it is not idle, is never
marked, and passes the chain on before it starts a slow event.

Invariant (under ``_lock``): while ``_in_flight`` is a worker, either the thread that
set it is still walking the list, or that worker was parked when it was rung and will
call :meth:`WakeChain.woken` when its wait returns (every return from the wait calls
it, whatever woke the worker). Whoever set ``_in_flight`` last therefore always has a
successor that walks on, so a listed worker is never forgotten. Two walks can overlap
for a moment (a worker woken by a flush token while it holds the chain); each takes
workers off the list under the lock, so the worst outcome is a wake-up too many.
A worker that is listed but no longer parked is simply skipped: it checks its queue
before it parks again.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Protocol


class Ringable(Protocol):
    """A worker the chain can wake."""

    def ring(self) -> bool:
        """Wake the worker if it is waiting; True when it was (it will call ``woken``)."""


class WakeChain:
    """The wake-up chain of one hub's threaded subscribers (see the module docstring).

    Attributes:
        dispatcher_wakeups: Wake-ups made by :meth:`release`, i.e. on the emitting
            thread; a test hook: it grows by at most one per dispatched event (more only
            when a full ``block`` queue makes ``emit`` wait).
        worker_wakeups: Wake-ups the workers made for each other.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._batch: list[Ringable] = []  # touched by the dispatcher only
        self._pending: deque[Ringable] = deque()
        self._in_flight: Ringable | None = None
        self.dispatcher_wakeups = 0
        self.worker_wakeups = 0

    @property
    def idle(self) -> bool:
        """True when no wake-up is travelling and none is waiting to (a test hook)."""
        with self._lock:
            return self._in_flight is None and not self._pending and not self._batch

    def defer(self, worker: Ringable) -> None:
        """Mark ``worker`` as needing a wake-up once the current event is offered (dispatcher)."""
        self._batch.append(worker)

    def release(self) -> None:
        """Hand the marked workers to the chain; wake the first unless a wake-up is travelling.

        Called by the dispatcher after it offered an event to everyone, and before it waits
        for room in a full queue (the worker it waits on may be among the marked ones).
        """
        if not (self._batch or self._pending):
            return
        with self._lock:
            self._pending.extend(self._batch)
            self._batch.clear()
            if self._in_flight is not None:
                return
        self._walk(by_dispatcher=True)

    def woken(self, worker: Ringable) -> None:
        """Called by a worker each time it returns from its wait; passes the chain on."""
        with self._lock:
            if self._in_flight is not worker:
                return
        self._walk(by_dispatcher=False)

    def _walk(self, *, by_dispatcher: bool) -> None:
        """Wake the next listed worker that is waiting, if any, and let it hold the chain."""
        worker: Ringable | None = None
        try:
            while True:
                with self._lock:
                    if not self._pending:
                        self._in_flight = None
                        return
                    worker = self._pending.popleft()
                    self._in_flight = worker
                if worker.ring():
                    with self._lock:
                        if by_dispatcher:
                            self.dispatcher_wakeups += 1
                        else:
                            self.worker_wakeups += 1
                    return
                # Not waiting: busy (it will see its queue before it parks) or gone.
                worker = None
        except BaseException:
            # Ctrl-C on the dispatching (main) thread mid-walk: we may have taken a worker
            # off the list without waking it. Put it back and free the chain, so that the
            # next release() walks again; at worst that worker is woken twice.
            with self._lock:
                if worker is not None:
                    self._pending.appendleft(worker)
                    if self._in_flight is worker:
                        self._in_flight = None
            raise
