"""Ctrl-C (SIGINT) and SIGTERM during one ``esper ppo`` run, phase by phase.

A run goes through four phases, and a signal means something different in each:

==========  ===========================================================================
phase       what a signal does
==========  ===========================================================================
start       Held: start-up (imports, W&B's start, the run directory) is not cut in
            the middle (a Ctrl-C inside ``import torch`` once left numpy half
            imported). The run then ends before training, with exit 130 and no run
            directory. A second Ctrl-C, or start-up still unfinished ``quit_after``
            seconds after the signal, quits at once (see :meth:`RunSignals.on_quit`).
train       Ctrl-C raises ``KeyboardInterrupt`` once, and the trainer ends the run
            ``interrupted``; SIGTERM stops it after the current update.
shutdown    Held: ``RUN_FINISHED`` is out and the backends are being flushed and
            closed; the shutdown completes, then exit 130. A second Ctrl-C sets
            :attr:`RunSignals.give_up`: the caller stops waiting and says what was lost.
exit        After :meth:`RunSignals.exiting` (the command is over): while Python runs
            its exit hooks (torch's, W&B's), signals are held, and a second Ctrl-C
            ends the process at once; then, for the seconds Python takes to tear
            itself down (where it puts back the default handlers, which kill), they
            are ignored. A signal there used to print a traceback from inside an
            exit hook, or kill the process. If Python is not exiting (the command ran
            in-process, under click's CliRunner), the first signal puts the previous
            handlers back and is handled by them.
==========  ===========================================================================

Every signal also sets :attr:`RunSignals.stop`, which the trainer polls between updates
(a ``KeyboardInterrupt`` swallowed by some library still stops the run).

In one rank of a run of several processes (``ctrl_c_raises=False``), Ctrl-C during
training only sets :attr:`RunSignals.stop`, as SIGTERM does: the ranks agree on the stop
after the update under way and end together. A ``KeyboardInterrupt`` at an arbitrary
point of one rank would leave the others waiting in a collective it never joins.

The handlers only take effect on the main thread (Python runs signal handlers there);
from another thread :meth:`RunSignals.install` installs nothing, and the run behaves as
if no signal ever came.
"""

from __future__ import annotations

import atexit
import os
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Literal, NoReturn

Phase = Literal["start", "train", "shutdown", "exit"]

#: The signals a run handles.
HANDLED = (signal.SIGINT, signal.SIGTERM)


class RunSignals:
    """The signal handlers of one run; see the module docstring for what they do."""

    def __init__(self, quit_after: float = 30.0, *, ctrl_c_raises: bool = True) -> None:
        self.received: list[signal.Signals] = []
        """Every signal received, in order."""
        self.stop = threading.Event()
        """Set by any signal: the trainer stops before its next update."""
        self.give_up = threading.Event()
        """Set by a second Ctrl-C after start-up: stop waiting for the shutdown."""
        self._quit_after = quit_after
        self._ctrl_c_raises = ctrl_c_raises
        self._phase: Phase = "start"
        self._raised = False
        self._previous: dict[signal.Signals, object] = {}
        self._on_quit: Callable[[], str] | None = None
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self._python_exiting = False

    @classmethod
    def install(cls, quit_after: float = 30.0, *, ctrl_c_raises: bool = True) -> RunSignals:
        """Handle SIGINT and SIGTERM from now on (main thread only; else a no-op).

        ``ctrl_c_raises=False``: Ctrl-C during training stops it after the current update
        instead of raising ``KeyboardInterrupt`` (one rank of several; see above).
        """
        handlers = cls(quit_after, ctrl_c_raises=ctrl_c_raises)
        if threading.current_thread() is threading.main_thread():
            for signum in HANDLED:
                handlers._previous[signum] = signal.signal(signum, handlers._on_signal)
            # Registered first, so it runs last of the exit hooks (last-in first-out).
            atexit.register(handlers._ignore_from_now_on)
        return handlers

    def restore(self) -> None:
        """Put back the handlers that were there before :meth:`install`."""
        atexit.unregister(self._ignore_from_now_on)
        atexit.unregister(self._mark_python_exiting)
        self._cancel_timer()
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)  # type: ignore[arg-type]  # what getsignal gave
        self._previous.clear()

    # -- state ------------------------------------------------------------------------------

    @property
    def phase(self) -> Phase:
        """The run's phase now."""
        return self._phase

    @property
    def interrupted(self) -> bool:
        """True once any handled signal arrived."""
        return bool(self.received)

    @property
    def interrupts(self) -> int:
        """How many Ctrl-C (SIGINT) arrived."""
        return self.received.count(signal.SIGINT)

    def describe(self) -> str:
        """The signals received, for a message: ``"Ctrl-C"``, ``"SIGTERM"``, ``"Ctrl-C x2"``."""
        names = ["Ctrl-C" if s is signal.SIGINT else s.name for s in self.received]
        seen = dict.fromkeys(names)
        return ", ".join(n if names.count(n) == 1 else f"{n} x{names.count(n)}" for n in seen)

    # -- phases -----------------------------------------------------------------------------

    def on_quit(self, cleanup: Callable[[], str]) -> None:
        """What quitting at once during start-up does first; it returns what it left behind
        (e.g. ``"no run directory is left"``), for the one line printed."""
        self._on_quit = cleanup

    def training(self) -> None:
        """Start-up is over: from now on Ctrl-C raises KeyboardInterrupt (once)."""
        with self._lock:
            self._phase = "train"
            self._on_quit = None
        self._cancel_timer()

    def shutting_down(self) -> None:
        """RUN_FINISHED is out: from now on signals are held until the shutdown completes."""
        with self._lock:
            self._phase = "shutdown"
            self._on_quit = None
        self._cancel_timer()

    def exiting(self) -> None:
        """The command is over: hold signals while Python exits (see the module docstring).

        For a command line, instead of :meth:`restore`: the handlers stay until the
        process ends, and give way to the previous ones if Python goes on instead.
        """
        with self._lock:
            self._phase = "exit"
            self._on_quit = None
        self._cancel_timer()
        # Registered last, so it runs first of the exit hooks (they run last-in first-out).
        atexit.register(self._mark_python_exiting)

    def _mark_python_exiting(self) -> None:
        self._python_exiting = True

    def _ignore_from_now_on(self) -> None:
        """The last exit hook: Python's teardown, which follows, puts back the default
        handlers of the signals it handles (they kill), but leaves ignored ones alone."""
        if self._phase == "exit" and self._previous:
            for signum in HANDLED:
                signal.signal(signum, signal.SIG_IGN)

    # -- the handler --------------------------------------------------------------------------

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        sig = signal.Signals(signum)
        self.received.append(sig)
        self.stop.set()
        phase = self._phase
        if phase == "exit":
            self._at_exit(sig, frame)
        elif phase == "start":
            if sig is signal.SIGINT and self.interrupts >= 2:
                self._quit("Ctrl-C twice")
            self._start_timer()
        elif sig is signal.SIGINT:
            if phase == "train" and not self._raised and self._ctrl_c_raises:
                self._raised = True
                raise KeyboardInterrupt
            if self.interrupts >= 2:
                self.give_up.set()

    def _at_exit(self, sig: signal.Signals, frame: FrameType | None) -> None:
        if not self._python_exiting:  # in-process, and life goes on: as before install()
            previous = self._previous.get(sig)
            self.restore()
            if callable(previous):
                previous(sig, frame)
            elif previous == signal.SIG_DFL:
                signal.raise_signal(sig)
            return
        if sig is signal.SIGINT and self.interrupts >= 2:
            os.write(2, b"esper ppo: interrupted again while exiting; quit at once\n")
            os._exit(130)

    def _start_timer(self) -> None:
        with self._lock:
            if self._timer is not None or self._phase != "start":
                return
            self._timer = threading.Timer(
                self._quit_after,
                self._quit_if_starting,
                args=(f"start-up still unfinished {self._quit_after:g} s after the signal",),
            )
            self._timer.daemon = True
            self._timer.start()

    def _cancel_timer(self) -> None:
        with self._lock:
            timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()

    def _quit_if_starting(self, why: str) -> None:
        if self._phase == "start":
            self._quit(why)

    def _quit(self, why: str) -> NoReturn:
        """End the process now, from the handler or the timer: clean up, one line, 130."""
        with self._lock:
            cleanup = self._on_quit
        left = "nothing was trained"
        if cleanup is not None:
            try:
                left += "; " + cleanup()
            except Exception as exc:  # quitting must not fail: say what was left instead
                left += f"; cleaning up failed ({type(exc).__name__}: {exc})"
        line = f"esper ppo: interrupted while starting ({why}); quit at once: {left}\n"
        # os.write, not print: the signal may have landed inside a write to sys.stderr.
        os.write(2, line.encode(errors="replace"))
        # Not sys.exit: start-up was cut at an unknown point (an import, W&B's start), and
        # neither its half-made state nor W&B's exit hook should get a say in leaving.
        os._exit(130)
