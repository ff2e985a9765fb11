"""Run the panel on the main thread while work (training) runs on another.

Textual owns the terminal and wants the main thread; training moves to a worker
thread that starts once the panel is on screen, and talks to the panel only through
its hub subscriber (``post_message``). Quitting the panel asks the work to stop and
waits for it, so the caller gets the work's result after every backend was flushed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

from esper_telemetry.tui._app import HealthPanel

T = TypeVar("T")


def run_panel(
    app: HealthPanel,
    work: Callable[[], T],
    *,
    stop: threading.Event,
    on_exit: Callable[[], None] | None = None,
) -> T:
    """Show ``app`` until the user quits, with ``work()`` running on a worker thread.

    ``work`` starts once the panel is mounted. When the panel exits (``q``, or
    ``stop`` was set, e.g. by SIGTERM), ``stop`` is set and this waits for ``work`` to
    return; ``work`` must watch ``stop`` (the trainer's ``should_stop``). When it ends
    first, the panel says so and stays up until the user quits.

    Args:
        app: The panel; it must not be running yet.
        work: What to run beside it; its result is returned.
        stop: Set when the panel exits; ``work`` must return soon after.
        on_exit: Called once the panel has left the terminal while ``work`` still
            runs (to say what the wait is for).

    Returns:
        What ``work`` returned.

    Raises:
        BaseException: whatever ``work`` raised, once the panel has exited.
    """
    outcome: list[T] = []
    failure: list[BaseException] = []

    def target() -> None:
        try:
            outcome.append(work())
        except BaseException as exc:  # handed to the caller's thread below
            failure.append(exc)
        finally:
            app.work_finished(f"{type(failure[0]).__name__}: {failure[0]}" if failure else None)

    thread = threading.Thread(target=target, name="esper-training", daemon=True)
    app.call_when_mounted(thread.start)
    try:
        app.run()
    finally:
        stop.set()
        if not thread.is_alive() and not outcome and not failure:
            thread.start()  # the panel never came up: run the work, which stops at once
        elif thread.is_alive() and on_exit is not None:
            on_exit()
        thread.join()
    if failure:
        raise failure[0]
    return outcome[0]
