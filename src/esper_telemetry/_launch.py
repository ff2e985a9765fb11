"""The launcher of ``esper ppo --nproc N``: N ranks, one run directory, one verdict.

Each rank is a subprocess of esper's own module (``python -m esper_telemetry._rank``,
see there), on the CPU with gloo. Not ``torch.multiprocessing.spawn`` and not
``torchrun``, because a rank must behave as one ``esper ppo`` process does:

- its exit status is a verdict (0, 2, 3, 4, 5, 130, as for one process). ``spawn`` takes
  any non-zero exit for a crash and at once terminates the other ranks, which are then
  still flushing their logs after a halt (3) or an interrupt (130);
- it handles Ctrl-C and SIGTERM phase by phase on its own main thread, the way one
  process does (``esper_telemetry._signals``); torchrun adds its own signal handling
  and restarts, and is another program to install and call;
- it is started with a plain command line, so the launcher decides everything itself:
  it waits, forwards signals, stops what is left of a broken run and gives the verdict.

Signals: the ranks stay in the launcher's process group, so a terminal's Ctrl-C reaches
every rank directly. The launcher forwards each SIGTERM it receives, and each SIGINT
(as SIGTERM, which a rank treats the same way during training and which does not count
as a second Ctrl-C), to every rank still running: ``kill`` on the launcher alone stops
the run. Every rank then stops after the update under way, at the same update (the
ranks agree on it), flushes everything and exits 130.

Crashes and hangs: a rank that dies (a signal, an uncaught error, no outcome written)
gets the others a SIGTERM; those waiting for it in a collective get an error from gloo
when its connections close, or at the latest after ``RANK_TIMEOUT_S``. Once a first rank
has ended, the others have ``close_timeout + GRACE_S`` seconds to end; then they are
killed. Nothing waits forever.

Exit status: that of rank 0; when rank 0 ended 0 and another rank did not, that rank's;
when a rank crashed or had to be killed, 5 (training failed), with a line naming it.
The line printed for a non-zero status is rank 0's message (or the chosen rank's, named),
followed, for a halt or a failure, by the first differing message of another rank with
the same status: the rank where it began says why.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from pathlib import Path
from types import FrameType

import esper_telemetry
from esper_telemetry._rank import RankOutcome, write_spec
from esper_telemetry._signals import RunSignals
from esper_telemetry.hub import TelemetryHub
from esper_telemetry.run import (
    EXIT_BACKEND_FAILED,
    EXIT_FAILED,
    EXIT_HALTED,
    EXIT_INTERRUPTED,
    EXIT_NOT_STARTED,
    EXIT_OK,
    RunOptions,
    check_run_dir,
)

_VERDICTS = frozenset(
    {EXIT_OK, EXIT_NOT_STARTED, EXIT_HALTED, EXIT_BACKEND_FAILED, EXIT_FAILED, EXIT_INTERRUPTED}
)

#: Seconds the other ranks get, beyond the hub's close timeout, once a first rank ended.
GRACE_S = 30.0

#: How often the launcher looks at its ranks.
_POLL_S = 0.05


@dataclass(frozen=True)
class _End:
    """How one rank's process ended."""

    rank: int
    returncode: int
    """The process's exit status; negative: killed by that signal."""
    outcome: RankOutcome | None
    """What the rank wrote before exiting; None: it wrote nothing (it died first)."""
    killed: bool
    """The launcher killed it: it had not ended in time."""
    order: int
    """0 for the first rank seen to end, 1 for the next, ..."""

    @property
    def crashed(self) -> bool:
        """It did not end with a verdict of its own."""
        if self.killed or self.returncode < 0:
            return True
        if self.outcome is None:  # a rank that quit at once while starting says so itself
            return self.returncode != EXIT_INTERRUPTED
        return self.returncode != self.outcome.exit_code or self.returncode not in _VERDICTS

    def describe(self, grace: float) -> str:
        """What happened to a crashed rank, for the verdict line."""
        if self.killed:
            return f"rank {self.rank} had not ended {grace:g} s after another rank; killed"
        if self.returncode < 0:
            return f"rank {self.rank} was killed by {_signal_name(-self.returncode)}"
        return f"rank {self.rank} crashed with exit status {self.returncode} (its error is above)"


def launch(
    options: RunOptions, nproc: int, signals: RunSignals, *, fault_rank: int | None = None
) -> tuple[int, str]:
    """Run ``options`` on ``nproc`` ranks; return the exit status and the verdict line.

    Args:
        options: The run (no TUI, no own backends, not a resume).
        nproc: How many ranks, at least 2.
        signals: The handlers ``esper ppo`` installed while it loaded (start-up phase):
            a signal they already received ends the launch before any rank starts; the
            launcher's own handlers replace them until the ranks have ended.
        fault_rank: The one rank the demo fault (``options.config.fault``) hits;
            None: every rank.
    """
    with _forwarding() as ranks:
        if signals.interrupted:
            return EXIT_INTERRUPTED, (
                f"interrupted ({signals.describe()}) while starting; nothing was created"
            )
        return _launch(options, nproc, fault_rank, ranks)


def _launch(
    options: RunOptions,
    nproc: int,
    fault_rank: int | None,
    ranks: _Ranks,
) -> tuple[int, str]:
    try:  # the run id every rank's hub will use, checked as a hub checks it
        with TelemetryHub(options.run_id) as hub:
            run_id = hub.run_id
    except ValueError as exc:
        return EXIT_NOT_STARTED, f"--run-id: {exc}"
    run_dir = options.run_root / run_id
    refused = check_run_dir(run_dir, resume=options.resume)
    if refused is not None:
        return EXIT_NOT_STARTED, refused
    options = replace(options, run_id=run_id)
    work = Path(tempfile.mkdtemp(prefix="esper-ranks-"))
    try:
        spec = work / "spec.json"
        write_spec(
            spec,
            options,
            world_size=nproc,
            init_file=work / "rendezvous",
            out_dir=work,
            fault_rank=fault_rank,
        )
        grace = options.close_timeout + GRACE_S
        for rank in range(nproc):
            ranks.append(_start_rank(spec, rank))
        if ranks.signalled:  # a signal while they were being started reached only some
            _signal_all(ranks, signal.SIGTERM)
        ends = _wait(ranks, work, grace)
        code, message = _verdict(ends, grace)
        if not any(e.outcome is not None and e.outcome.trained for e in ends):
            message = _remove_untrained(run_dir, code, message)
        return code, message
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _start_rank(spec: Path, rank: int) -> subprocess.Popen[bytes]:
    """Start one rank, importing this very esper_telemetry (its folder first on the path)."""
    env = dict(os.environ)
    root = str(Path(esper_telemetry.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return subprocess.Popen(
        [sys.executable, "-m", "esper_telemetry._rank", str(spec), str(rank)], env=env
    )


class _Ranks(list[subprocess.Popen[bytes]]):
    """The ranks started so far, and whether the launcher has received a signal."""

    signalled = False


@contextmanager
def _forwarding() -> Iterator[_Ranks]:
    """SIGINT and SIGTERM to the launcher, forwarded as SIGTERM to the ranks yielded
    (fill the list); the launcher itself goes on waiting for them."""
    ranks = _Ranks()

    def forward(signum: int, frame: FrameType | None) -> None:
        ranks.signalled = True
        _signal_all(ranks, signal.SIGTERM)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield ranks
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _wait(ranks: list[subprocess.Popen[bytes]], work: Path, grace: float) -> list[_End]:
    """Wait for every rank; a crash stops the others, and a rank still running ``grace``
    seconds after the first one ended is killed."""
    ended: dict[int, _End] = {}
    killed: set[int] = set()
    first_end: float | None = None
    while len(ended) < len(ranks):
        for rank, proc in enumerate(ranks):
            if rank in ended or proc.poll() is None:
                continue
            end = _End(
                rank=rank,
                returncode=proc.returncode,
                outcome=RankOutcome.read(work / f"rank{rank}.json"),
                killed=rank in killed,
                order=len(ended),
            )
            ended[rank] = end
            if first_end is None:
                first_end = time.monotonic()
            if end.crashed:  # the others cannot go on without it
                _signal_all(ranks, signal.SIGTERM)
        if first_end is not None and time.monotonic() - first_end > grace and not killed:
            killed = {r for r, p in enumerate(ranks) if p.poll() is None}
            _signal_all(ranks, signal.SIGKILL)
        time.sleep(_POLL_S)
    return [ended[rank] for rank in range(len(ranks))]


def _verdict(ends: list[_End], grace: float) -> tuple[int, str]:
    """The launcher's exit status and line (see the module docstring)."""
    crashed = sorted((e for e in ends if e.crashed), key=lambda e: e.order)
    if crashed:
        rest = [
            f"rank {e.rank}: {e.outcome.message}"
            for e in ends
            if not e.crashed and e.outcome is not None
        ]
        return EXIT_FAILED, "; ".join([crashed[0].describe(grace), *rest])
    outcomes = [e.outcome for e in ends]
    if all(o is None for o in outcomes):  # every rank quit at once while starting
        return EXIT_INTERRUPTED, "interrupted while starting; nothing was trained"
    chosen = ends[0]
    if chosen.returncode == EXIT_OK:
        chosen = next((e for e in ends if e.returncode != EXIT_OK), chosen)
    if chosen.outcome is None:
        return chosen.returncode, f"rank {chosen.rank}: interrupted while starting"
    message = _named(chosen)
    if chosen.returncode in (EXIT_HALTED, EXIT_FAILED):
        others = sorted(
            (
                e
                for e in ends
                if e.rank != chosen.rank
                and e.returncode == chosen.returncode
                and e.outcome is not None
                and e.outcome.message != chosen.outcome.message
            ),
            key=lambda e: (e.outcome.ended_at or 0.0) if e.outcome else 0.0,
        )
        if others:
            message += f"; {_named(others[0])}"
    return chosen.returncode, message


def _named(end: _End) -> str:
    assert end.outcome is not None
    return end.outcome.message if end.rank == 0 else f"rank {end.rank}: {end.outcome.message}"


def _remove_untrained(run_dir: Path, code: int, message: str) -> str:
    """No rank trained: remove the run directory the ranks made (it was new: see
    ``check_run_dir``), so the run id stays free; say so where the ranks would have."""
    if run_dir.exists():
        shutil.rmtree(run_dir, ignore_errors=True)
    if code != EXIT_INTERRUPTED:
        return message
    left = f"{run_dir} could not be removed" if run_dir.exists() else "no run directory is left"
    return f"{message} and {left}"


def _signal_all(ranks: list[subprocess.Popen[bytes]], signum: signal.Signals) -> None:
    for proc in ranks:
        with suppress(ProcessLookupError):
            proc.send_signal(signum)  # a no-op for a rank already reaped


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"
