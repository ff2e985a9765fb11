"""One ``esper ppo`` run: a hub, every backend, the reference trainer, and a verdict.

``run_ppo`` is what the command line calls. It wires the anomaly escalator (inline),
W&B, the analytics log, the structured log and the backend plugins
(:mod:`esper_telemetry.plugins`), each on its own thread, to one hub, trains, closes
the hub, and turns what happened into an exit status. With ``tui`` the live panel runs
on the main thread, subscribed like any backend, and training runs on a worker thread;
quitting the panel stops training after the current update. With ``report`` the run
ends by writing ``report.png`` into its directory. With ``parallel`` each rank of
``esper ppo --nproc`` runs this itself (``esper_telemetry._rank``): the ranks learn
each other's start-up before any trains, so all train or none does.

====  ==========================================================================
0     the run completed and every backend delivered every event
2     the run could not start (bad option, a backend refused, e.g. W&B online
      without credentials); nothing was trained
3     a critical anomaly halted the run (``--halt-on critical``)
4     a backend lost events or got stuck (``hub.stats()`` says which)
5     training failed: an error inside training ended the run; RUN_FINISHED says
      ``failed`` with the error, and everything emitted before it was flushed
130   interrupted by Ctrl-C, SIGTERM or quitting the panel; everything emitted so
      far was flushed (a signal during start-up: nothing was trained and no run
      directory is left; during the shutdown: the shutdown finished first, unless a
      second Ctrl-C stopped the wait, and then the message says what was lost)

"Lost" has one definition, ``SubscriberStats.lost``: failed, abandoned and
undelivered events (rows a backend reported it could not write), and the drops of a
``block`` subscriber; a ``drop_oldest`` view's drops are not losses.
====  ==========================================================================
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Literal

from rich.console import Console
from rich.markup import escape
from rich.progress import MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from esper_telemetry._console import first_line, install_one_line_errors
from esper_telemetry._extras import is_installed, missing_message
from esper_telemetry._signals import RunSignals
from esper_telemetry.backends.analytics import AnalyticsCollector
from esper_telemetry.backends.escalator import AnomalyEscalator
from esper_telemetry.backends.log import StructlogBackend
from esper_telemetry.backends.wandb_keys import Group, XAxis
from esper_telemetry.contracts import (
    STATUS_COLOUR,
    AnomalyDetected,
    HealthThresholds,
    HubStats,
    RunFinished,
    RunFinishedPayload,
    RunLayout,
    TelemetryEvent,
    TelemetryLevel,
    WandbMode,
    format_value,
    health_status,
)
from esper_telemetry.contracts.layout import per_rank_name
from esper_telemetry.hub import Subscriber, TelemetryHub
from esper_telemetry.plugins import BackendSpec, PluginError, installed_names, load
from esper_telemetry.telemetry.anomaly_detector import AnomalyDetector
from esper_telemetry.training import PPOConfig, TrainResult, UpdateInfo, train
from esper_telemetry.training.parallel import DataParallel

if TYPE_CHECKING:
    from esper_telemetry.backends.wandb import WandBBackend

_OnUpdate = Callable[[UpdateInfo], None]

EXIT_OK, EXIT_NOT_STARTED, EXIT_HALTED, EXIT_BACKEND_FAILED, EXIT_INTERRUPTED = 0, 2, 3, 4, 130
EXIT_FAILED = 5


@dataclass(frozen=True)
class WandbSettings:
    """How the W&B run of ``esper ppo`` is set up (its ``--wandb-*`` flags; see
    :class:`~esper_telemetry.backends.WandBBackend` for each)."""

    entity: str | None = None
    group: str | None = None
    tags: tuple[str, ...] = ()
    job_type: str | None = None
    log: tuple[Group, ...] | None = None
    """The groups logged; None: all of them (esper creates the run)."""
    prefix: str = ""
    x_axis: XAxis = "update"


@dataclass(frozen=True)
class RunOptions:
    """Everything ``esper ppo`` decides besides the training settings."""

    config: PPOConfig
    run_root: Path = Path("runs")
    run_id: str | None = None
    level: TelemetryLevel = TelemetryLevel.NORMAL
    wandb: WandbMode = "offline"
    wandb_project: str = "esper"
    wandb_settings: WandbSettings = field(default_factory=WandbSettings)
    halt_on: Literal["critical"] | None = None
    escalate_for: int = 5
    thresholds: HealthThresholds = field(default_factory=HealthThresholds)
    progress: bool = True
    close_timeout: float = 30.0
    backends: tuple[Subscriber, ...] = ()
    """Your own subscribers, added after the built-in ones (each on its own thread)."""
    plugins: tuple[BackendSpec, ...] = ()
    """Backend plugins asked for by name (``esper ppo --backend``), subscribed after
    ``backends``: each must load and start, or the run does not start (exit 2)."""
    autoload_plugins: bool = False
    """Also subscribe every other installed plugin, with no options (``esper ppo`` does
    unless ``--no-plugins``); one that fails to load or start is reported in one line
    and left out."""
    tui: bool = False
    report: bool = False
    resume: bool = False
    """Continue the run already in ``run_root / run_id`` (see ``esper ppo --resume``)."""
    publish_ranks: Literal["zero", "all"] = "zero"
    """In a run of several processes, which ranks write the logs and W&B (see
    ``TelemetryHub``): rank 0, or every rank into files of its own."""
    parallel: DataParallel | None = None
    """Train as one rank of several (``esper ppo --nproc``; torch.distributed initialised).
    The launcher of the ranks then owns the run directory: it checked that it was free
    before they started, and removes it when no rank trained."""


@dataclass
class RunOutcome:
    """What a run produced and how it ended."""

    exit_code: int
    message: str
    run_dir: Path | None = None
    result: TrainResult | None = None
    stats: HubStats | None = None
    anomalies: Counter[str] = field(default_factory=Counter)
    report: Path | None = None
    report_error: str | None = None
    ended_at: float | None = None
    """``time.time()`` when training ended, before the shutdown (None: it never began)."""


@dataclass(frozen=True)
class _Ending:
    """How the shutdown went, as far as the verdict needs."""

    signals: RunSignals
    abandoned: bool = False
    """A second Ctrl-C stopped the wait for the hub's close."""
    not_flushed: str = ""
    """What an abandoned shutdown lost, in words."""
    wandb_stopped: str | None = None
    """What was done to a hung W&B (its service process stopped), in words."""


def run_ppo(
    options: RunOptions, console: Console, *, signals: RunSignals | None = None
) -> RunOutcome:
    """Train with every backend subscribed; print progress and a summary on ``console``.

    Ctrl-C and SIGTERM are handled phase by phase (see ``esper_telemetry._signals``):
    during start-up they end the run before training (exit 130, no run directory
    left); during training Ctrl-C interrupts it and SIGTERM stops it after the current
    update; during the shutdown they wait for it to finish (exit 130), and a second
    Ctrl-C stops waiting, saying what was lost. ``signals``: handlers installed earlier
    (``esper ppo`` installs them before torch loads); by default run_ppo installs its
    own (on the main thread) and restores the previous ones when it returns.
    """
    if signals is not None:
        return _run_ppo(options, console, signals)
    signals = RunSignals.install(options.close_timeout)
    try:
        return _run_ppo(options, console, signals)
    finally:
        signals.restore()


def _run_ppo(options: RunOptions, console: Console, signals: RunSignals) -> RunOutcome:
    install_one_line_errors()  # a failing backend: one line on stderr, not a traceback
    missing = _missing_extra(options)
    if missing is not None:
        return RunOutcome(EXIT_NOT_STARTED, missing)
    try:
        hub = TelemetryHub(options.run_id, level=options.level, publish_ranks=options.publish_ranks)
    except ValueError as exc:
        return RunOutcome(EXIT_NOT_STARTED, f"--run-id: {exc}")
    run_dir = options.run_root / hub.run_id
    if options.parallel is None:  # (a launcher of ranks checks before they start)
        refused = check_run_dir(run_dir, resume=options.resume)
        if refused is not None:
            return RunOutcome(EXIT_NOT_STARTED, refused)
        # Quitting at once during start-up (a second Ctrl-C) removes what it made so
        # far; a resumed run's directory is never removed.
        signals.on_quit(lambda: _tidy_start(run_dir, options))
    anomalies: Counter[str] = Counter()
    started = _start(hub, options, run_dir, anomalies, signals, console)
    if isinstance(started, RunOutcome):
        return started
    wandb_backend = started

    signals.training()
    ended_at = None
    if options.tui:
        result, stats = _train_in_panel(hub, options, console)
        ending = _Ending(signals)
    else:
        try:
            result = _train(hub, options, console, signals)
        finally:  # flushed even when training raised
            ended_at = time.time()
            signals.shutting_down()
            stats, ending = _close(hub, options, console, signals)
    ending = _release_wandb(wandb_backend, _stop_hung_wandb(wandb_backend, stats, ending))
    outcome = RunOutcome(
        *_verdict(result, stats, ending),
        run_dir=run_dir,
        result=result,
        stats=stats,
        anomalies=anomalies,
        ended_at=ended_at,
    )
    if options.report:
        _write_report(outcome, options)
    console.print(_summary(outcome, options))
    return outcome


def check_run_dir(run_dir: Path, *, resume: bool) -> str | None:
    """Why a run may not start in ``run_dir`` (one line), or None: a new run needs a
    directory that does not exist yet; a resumed one, a directory holding a run."""
    if resume and not RunLayout(run_dir).events.is_file():
        return f"--resume: {run_dir} holds no run to continue"
    if run_dir.exists() and not resume:
        return (
            f"run directory {run_dir} already exists; pick another --run-id or --run-dir, "
            f"or continue that run with --resume {run_dir}"
        )
    return None


def _start(
    hub: TelemetryHub,
    options: RunOptions,
    run_dir: Path,
    anomalies: Counter[str],
    signals: RunSignals,
    console: Console,
) -> WandBBackend | RunOutcome | None:
    """Subscribe every backend; return the W&B backend, or the outcome of a run that
    ends before training (a backend refused; a signal came during start-up).

    With ranks, every rank learns what happened on the others first, so that they all
    train or none does.
    """
    refused: str | None = None
    wandb_backend = None
    try:
        wandb_backend = _subscribe_all(hub, options, run_dir, anomalies, signals, console)
    except Exception as exc:  # a backend refused to start: say why in one line
        refused = str(exc)
    interrupted = signals.interrupted
    if options.parallel is not None:
        refused, interrupted = _agree_to_start(options.parallel, refused, interrupted)
    if refused is not None:
        stats = hub.close(timeout=options.close_timeout)
        _release_wandb(wandb_backend, _stop_hung_wandb(wandb_backend, stats, _Ending(signals)))
        # Nothing was trained: leave no half-made run behind, so the run id stays free.
        # (The directory did not exist before this call; see check_run_dir. With ranks,
        # their launcher removes it once every rank has ended.)
        if not options.resume and options.parallel is None:
            shutil.rmtree(run_dir, ignore_errors=True)
        return RunOutcome(EXIT_NOT_STARTED, refused, run_dir=run_dir)
    if interrupted:  # during start-up: end before training, leave nothing behind
        return _end_before_training(hub, options, run_dir, signals, wandb_backend)
    return wandb_backend


def _agree_to_start(
    parallel: DataParallel, refused: str | None, interrupted: bool
) -> tuple[str | None, bool]:
    """What every rank's start-up came to: the first refusal (naming its rank), and
    whether any rank was interrupted. One collective, on every rank."""
    try:
        views = parallel.gather((refused, interrupted))
    except RuntimeError as exc:  # a rank died while starting
        return f"could not reach the other ranks while starting: {first_line(exc)}", True
    for rank, (why, _) in enumerate(views):
        if why is not None:
            named = why if rank == parallel.rank else f"rank {rank} could not start: {why}"
            return named, interrupted
    return None, any(seen for _, seen in views)


def _missing_extra(options: RunOptions) -> str | None:
    """Refuse, before anything starts, an option whose optional dependency is missing."""
    if options.tui and not is_installed("textual"):
        return missing_message("--tui", "textual")
    if options.report and not is_installed("matplotlib"):
        return missing_message("--report", "matplotlib")
    return None


def _train(
    hub: TelemetryHub, options: RunOptions, console: Console, signals: RunSignals
) -> TrainResult:
    """Train with a progress bar; SIGTERM (``signals.stop``) stops before the next update."""
    last: list[UpdateInfo] = []
    try:
        with _progress(options, console, hub.first_update) as on_update:

            def progress(info: UpdateInfo) -> None:
                last[:] = [info]
                on_update(info)

            return train(
                options.config,
                hub,
                on_update=progress,
                should_stop=signals.stop.is_set,
                thresholds=options.thresholds,
                parallel=options.parallel,
            )
    except KeyboardInterrupt:
        # The one Ctrl-C of training landed outside the trainer's own handling (before
        # RUN_STARTED was out, or inside the progress bar): end the run on the record.
        first = hub.first_update
        updates = last[0].update + 1 - first if last else 0
        result = TrainResult(
            status="interrupted",
            updates=updates,
            env_steps=last[0].env_steps if last else 0,
            message="interrupted by the user",
        )
        if signals.phase != "shutdown":  # no RUN_FINISHED went out (see _subscribe_all)
            hub.emit(
                RunFinished(
                    update=last[0].update if last else first,
                    payload=RunFinishedPayload(
                        status="interrupted", message=result.message, hub_stats=hub.stats()
                    ),
                )
            )
        return result


#: How often the main thread looks up from waiting for the hub's close (signals are
#: handled at once either way; this paces the hint and the second Ctrl-C).
_CLOSE_POLL_S = 0.1


def _close(
    hub: TelemetryHub, options: RunOptions, console: Console, signals: RunSignals
) -> tuple[HubStats, _Ending]:
    """Close the hub on a helper thread while this (main) thread handles signals.

    A signal here waits for the close to finish (on the first Ctrl-C a line says so); a
    second Ctrl-C stops waiting: the stats are then the hub's live ones, and the ending
    says what was not flushed.
    """
    closed: list[HubStats] = []
    raised: list[BaseException] = []

    def close() -> None:
        try:
            closed.append(hub.close(timeout=options.close_timeout))
        except BaseException as exc:  # raised again below, on the caller's thread
            raised.append(exc)

    closer = threading.Thread(
        target=close,
        name="esper-close",
        daemon=True,  # an abandoned close must not hold the process
    )
    closer.start()
    hinted = False
    while True:
        closer.join(_CLOSE_POLL_S)
        if not closer.is_alive():
            break
        if signals.give_up.is_set():
            return hub.stats(), _Ending(signals, abandoned=True)
        if signals.interrupts and not hinted:
            console.print(
                "stopping: flushing every backend first; Ctrl-C again to stop waiting "
                "(what is not flushed yet is then lost)"
            )
            hinted = True
    if raised:
        raise raised[0]
    return closed[0], _Ending(signals)


def _not_flushed(stats: HubStats, wandb: WandBBackend | None, stopped: str | None) -> str:
    """What an abandoned shutdown lost, in words (stats: the hub's live ones)."""
    lost = [
        f"{s.queue_depth} queued event{'s' if s.queue_depth != 1 else ''} of {s.name}"
        for s in stats.subscribers
        if s.queue_depth
    ]
    if wandb is not None and not wandb.finished:
        lost.append(
            "the W&B run's unwritten rows (it was not finished"
            + (f"; {stopped})" if stopped else ")")
        )
    lost.append("the last flush of any backend still closing")
    return ", ".join(lost)


def _stop_hung_wandb(backend: WandBBackend | None, stats: HubStats, ending: _Ending) -> _Ending:
    """Stop W&B's service process when the hub gave up on W&B, or the wait was abandoned
    before W&B finished: else W&B's exit hook waits for it when Python exits, forever
    if it hangs."""
    if ending.abandoned:
        stopped = None if backend is None or backend.finished else backend.abort()
        return replace(ending, not_flushed=_not_flushed(stats, backend, stopped))
    if backend is None or backend.finished:
        return ending
    stuck = any(s.name == backend.name and s.stuck for s in stats.subscribers)
    return replace(ending, wandb_stopped=backend.abort()) if stuck else ending


def _release_wandb(backend: WandBBackend | None, ending: _Ending) -> _Ending:
    """End W&B's service now, while signals are still held: at interpreter exit W&B's own
    hook would wait for it, and a Ctrl-C there is a traceback (``release_service``)."""
    if backend is None or backend.aborted:
        return ending
    from esper_telemetry.backends.wandb import release_service

    stopped = release_service()
    return ending if stopped is None else replace(ending, wandb_stopped=stopped)


def _end_before_training(
    hub: TelemetryHub,
    options: RunOptions,
    run_dir: Path,
    signals: RunSignals,
    wandb_backend: WandBBackend | None,
) -> RunOutcome:
    """A signal arrived during start-up: close what started, remove the run directory
    (with ranks, their launcher does, once every rank has ended)."""
    stats = hub.close(timeout=options.close_timeout)
    _release_wandb(wandb_backend, _stop_hung_wandb(wandb_backend, stats, _Ending(signals)))
    how = signals.describe() or "on another rank"
    message = f"interrupted ({how}) before training started; nothing was trained"
    if options.parallel is None:
        message += f" and {_tidy_start(run_dir, options)}"
    return RunOutcome(EXIT_INTERRUPTED, message)


def _tidy_start(run_dir: Path, options: RunOptions) -> str:
    """Undo a start-up that trained nothing: remove a new run's directory; leave a
    resumed run's as it is (what a resumed start adds is W&B's, a new offline folder)."""
    if options.resume:
        return f"{run_dir} was left as it was"
    return _remove_half_made_run(run_dir)


def _remove_half_made_run(run_dir: Path) -> str:
    """Remove the run directory of a run that never trained (it did not exist before:
    ``run_ppo`` refuses an existing one); stop W&B's service first, which writes in it."""
    if "esper_telemetry.backends.wandb" in sys.modules:
        try:
            from esper_telemetry.backends.wandb import stop_service

            stop_service(teardown=False)
        except Exception:  # e.g. cut in the middle of importing: remove what we can
            pass
    shutil.rmtree(run_dir, ignore_errors=True)
    return f"{run_dir} could not be removed" if run_dir.exists() else "no run directory is left"


def _train_in_panel(
    hub: TelemetryHub, options: RunOptions, console: Console
) -> tuple[TrainResult, HubStats]:
    """The panel on this (main) thread, training and the hub's close on a worker thread."""
    from esper_telemetry.tui import HealthPanel, run_panel, subscribe_panel

    with _stop_on_sigterm() as stop:
        app = HealthPanel(
            thresholds=options.thresholds,  # the detector's own instance: one rule
            stats=hub.stats,
            source=f"esper ppo: run {hub.run_id}",
            exit_when=stop.is_set,
        )
        subscribe_panel(hub, app)

        def work() -> tuple[TrainResult, HubStats]:
            try:
                result = train(
                    options.config, hub, should_stop=stop.is_set, thresholds=options.thresholds
                )
            finally:  # flushed even when training raised
                stats = hub.close(timeout=options.close_timeout)
            return result, stats

        def on_exit() -> None:
            console.print("stopping: finishing the current update, then flushing every backend")

        return run_panel(app, work, stop=stop, on_exit=on_exit)


def _write_report(outcome: RunOutcome, options: RunOptions) -> None:
    from esper_telemetry.report import write_report

    assert outcome.run_dir is not None
    try:
        outcome.report = write_report(
            outcome.run_dir, RunLayout(outcome.run_dir).report, thresholds=options.thresholds
        )
    except (OSError, ValueError) as exc:
        outcome.report_error = str(exc)


def _subscribe_all(
    hub: TelemetryHub,
    options: RunOptions,
    run_dir: Path,
    anomalies: Counter[str],
    signals: RunSignals,
    console: Console,
) -> WandBBackend | None:
    """Subscribe every backend; return the W&B backend (None with ``--wandb disabled``).

    A resumed run first gives W&B what it lost (``esper wandb backfill``), then resumes
    the same W&B run; the analytics log and the structured log continue the run's
    ``seq`` and update index.
    """
    detector = AnomalyDetector(options.thresholds)
    hub.subscribe(
        AnomalyEscalator(detector, escalate_for=options.escalate_for, halt_on=options.halt_on),
        mode="inline",
    )

    def summary(event: TelemetryEvent) -> None:
        match event:
            case AnomalyDetected(payload=p):
                anomalies[p.anomaly.type.value] += 1
            case RunFinished():
                # Inline, so on the emitting thread as RUN_FINISHED goes out: from here on
                # a signal waits for the shutdown instead of cutting into it.
                signals.shutting_down()

    hub.subscribe(summary, mode="inline", events=[AnomalyDetected, RunFinished], name="summary")
    if not hub.publishes:  # a rank whose threaded backends would get nothing: none built
        return None
    # Built before W&B starts: a plugin asked for that cannot load ends the run at once.
    plugins = _load_plugins(options)
    try:
        wandb_backend = _subscribe_own(hub, options, run_dir, console)
    except BaseException:
        for plugin in plugins:  # built but never subscribed: the hub will not close them
            _close_quietly(plugin.backend)
        raise
    _subscribe_plugins(hub, plugins)
    return wandb_backend


def _subscribe_own(
    hub: TelemetryHub, options: RunOptions, run_dir: Path, console: Console
) -> WandBBackend | None:
    """The threaded built-in backends and the caller's own; the W&B backend if any."""
    wandb_backend = None
    if options.wandb != "disabled":
        os.environ.setdefault("WANDB_SILENT", "true")  # our summary says where the run is
        # First of the threaded backends: W&B online without credentials fails here,
        # before anything is written or trained.
        from esper_telemetry.backends.wandb import WandBBackend

        run_dir.mkdir(parents=True, exist_ok=options.resume or options.parallel is not None)
        if options.resume:
            console.print(_backfill(run_dir, options.wandb))
        settings = options.wandb_settings
        wandb_backend = WandBBackend(
            options.wandb_project,
            mode=options.wandb,
            dir=run_dir,
            resume=options.resume,
            entity=settings.entity,
            group=settings.group,
            tags=settings.tags,
            job_type=settings.job_type,
            log=settings.log,
            prefix=settings.prefix,
            x_axis=settings.x_axis,
            thresholds=options.thresholds,
            level_policy={
                "initial": options.level.name,
                "escalate_to": TelemetryLevel.DEBUG.name,  # on an anomaly (AnomalyEscalator)
                "escalate_for": options.escalate_for,
                "halt_on": options.halt_on,
            },
        )
        hub.subscribe(wandb_backend)
    hub.subscribe(AnalyticsCollector(run_dir, fsync="flush", resume=options.resume))
    hub.subscribe(
        StructlogBackend(
            RunLayout(run_dir).log, resume=options.resume, thresholds=options.thresholds
        )
    )
    for backend in options.backends:
        try:
            hub.subscribe(backend)
        except Exception as exc:
            name = getattr(backend, "name", None) or type(backend).__name__
            raise RuntimeError(f"backend {name!r} refused to start: {exc}") from exc
    return wandb_backend


#: Where a plugin left out of a run is reported (one line on stderr in ``esper ppo``).
_plugin_log = logging.getLogger("esper_telemetry.plugins")


@dataclass(frozen=True)
class _Loaded:
    """A plugin built for this run."""

    name: str
    """Its subscription name: the plugin's, numbered from the second of the same name."""
    backend: Subscriber
    asked: bool
    """Asked for with ``--backend`` (a failure to start ends the run)."""


def _load_plugins(options: RunOptions) -> list[_Loaded]:
    """Build the plugins asked for (a failure raises) and, with ``autoload_plugins``,
    every other one installed (a failure is logged and the plugin left out)."""
    loaded: list[_Loaded] = []
    names: Counter[str] = Counter()

    def add(spec: BackendSpec, backend: Subscriber, *, asked: bool) -> None:
        names[spec.name] += 1
        count = names[spec.name]
        loaded.append(_Loaded(spec.name if count == 1 else f"{spec.name}-{count}", backend, asked))

    for spec in options.plugins:
        try:
            add(spec, load(spec), asked=True)
        except PluginError as exc:
            for built in loaded:  # never subscribed, so the hub will not close them
                _close_quietly(built.backend)
            # The name only: an option's value may be a secret (a webhook's URL).
            raise RuntimeError(f"--backend {spec.name}: {exc.reason}") from exc
    if options.autoload_plugins:
        asked = {spec.name for spec in options.plugins}
        for name in installed_names():
            if name in asked:
                continue
            try:
                add(BackendSpec(name), load(BackendSpec(name)), asked=False)
            except PluginError as exc:
                _plugin_log.warning("%s; the run goes on without it (--no-plugins: load none)", exc)
    return loaded


def _subscribe_plugins(hub: TelemetryHub, plugins: list[_Loaded]) -> None:
    """Subscribe the plugins built, each on its own thread."""
    for i, plugin in enumerate(plugins):
        try:
            hub.subscribe(plugin.backend, name=plugin.name)
        except Exception as exc:
            if plugin.asked:
                for left in plugins[i:]:  # this one and those not subscribed yet
                    _close_quietly(left.backend)
                raise RuntimeError(f"--backend {plugin.name}: refused to start: {exc}") from exc
            _plugin_log.warning(
                "backend %r refused to start (%s); the run goes on without it",
                plugin.name,
                first_line(exc),
            )
            _close_quietly(plugin.backend)


def _close_quietly(backend: Subscriber) -> None:
    """Close a plugin that was built but is not subscribed; its error is its own."""
    close = getattr(backend, "close", None)
    if callable(close):
        with suppress(Exception):  # the run is already reporting why it left the plugin out
            close()


def _backfill(run_dir: Path, mode: WandbMode) -> str:
    """W&B gets what it lost of the run being resumed, before the run goes on."""
    from esper_telemetry.analytics import read_events
    from esper_telemetry.backends.wandb_backfill import backfill_wandb

    assert mode != "disabled"
    done = backfill_wandb(run_dir, read_events(run_dir), mode=mode)
    return f"W&B backfill: {escape(done.describe())}"


def _verdict(result: TrainResult, stats: HubStats, ending: _Ending) -> tuple[int, str]:
    if result.status == "failed":  # the run's own failure first: it is why anything else broke
        return EXIT_FAILED, f"training failed: {result.message}"
    if result.status == "halted":
        return EXIT_HALTED, f"halted: {result.message}"
    if ending.abandoned:
        return EXIT_INTERRUPTED, (
            f"interrupted ({ending.signals.describe()}); stopped waiting for the shutdown, "
            f"so this was not flushed: {ending.not_flushed}"
        )
    broken = [s for s in stats.subscribers if s.lost or s.stuck]
    if broken:
        parts = [
            f"{s.name} ({'stuck, ' if s.stuck else ''}lost {s.lost}: failed {s.failed}, "
            f"dropped {s.dropped}, abandoned {s.abandoned}, undelivered {s.undelivered}"
            + (f", last error: {s.last_error}" if s.last_error else "")
            + ")"
            for s in broken
        ]
        if ending.wandb_stopped:
            parts.append(f"W&B did not respond: {ending.wandb_stopped}")
        return EXIT_BACKEND_FAILED, "backend failed to deliver everything: " + "; ".join(parts)
    if result.status == "interrupted":
        return EXIT_INTERRUPTED, "interrupted; every event emitted so far was flushed"
    if ending.signals.interrupted:  # the signal came once RUN_FINISHED was out
        return EXIT_INTERRUPTED, (
            f"interrupted ({ending.signals.describe()}) during the shutdown, which finished "
            "first: every event emitted was flushed"
        )
    return EXIT_OK, "completed"


@contextmanager
def _stop_on_sigterm() -> Iterator[threading.Event]:
    """SIGTERM sets an event the training loop checks between updates (main thread only)."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def _progress(options: RunOptions, console: Console, first: int) -> Iterator[_OnUpdate]:
    thresholds = options.thresholds
    if not options.progress:
        yield lambda info: None
        return
    columns = (
        TextColumn("update"),
        MofNCompleteColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("", total=options.config.updates)

        def on_update(info: UpdateInfo) -> None:
            done = info.update + 1 - first
            bar.update(task, completed=done, description=_line(info, thresholds))

        yield on_update


def _line(info: UpdateInfo, thresholds: HealthThresholds) -> str:
    ret = "—" if math.isnan(info.mean_return) else f"{info.mean_return:6.1f}"
    parts = [f"steps {info.env_steps:>7}", f"return {ret}"]
    if info.health is not None:
        status = health_status(info.health, thresholds)
        colour = STATUS_COLOUR[status]
        parts.append(
            f"h_rms [{colour}]{format_value(info.health.h_rms)}[/] c_rms [{colour}]"
            f"{format_value(info.health.c_rms)}[/] [{colour}]{status.value}[/]"
        )
    parts.append(f"level {info.level.name}")
    return "  ".join(parts)


def _summary(outcome: RunOutcome, options: RunOptions) -> str:
    run_dir = outcome.run_dir
    result, stats = outcome.result, outcome.stats
    assert run_dir is not None
    assert result is not None
    assert stats is not None
    layout = RunLayout(run_dir)
    events, log = layout.events, layout.log
    ranks = options.parallel.world_size if options.parallel is not None else 1
    per_rank = ranks > 1 and options.publish_ranks == "all"
    if per_rank:  # one file per rank; rank 0's shown
        events, log = layout.events_of_rank(0), log.with_name(per_rank_name(log.name, 0))
    lines = [
        "",
        f"[bold]run {stats.run_id}[/]: {result.status}, {result.updates} updates, "
        f"{result.env_steps} env steps"
        + (" on rank 0" if ranks > 1 else "")
        + f", mean return (last 20 episodes) {result.mean_return:.1f}",
        f"  run directory    {run_dir}",
    ]
    if ranks > 1:
        who = "every rank publishes, into files of its own" if per_rank else "rank 0 publishes"
        lines.append(f"  ranks            {ranks} ({who})")
    lines += [
        f"  analytics log    {events}",
        f"  structured log   {log}",
        "  W&B              "
        + (f"{layout.wandb} ({options.wandb})" if options.wandb != "disabled" else "off"),
    ]
    if options.report:
        if outcome.report is not None:
            lines.append(f"  report           {outcome.report}")
        else:
            lines.append(
                f"  report           [red]not written: {escape(outcome.report_error or '')}[/]"
            )
    if outcome.anomalies:
        seen = ", ".join(f"{k} x{v}" for k, v in sorted(outcome.anomalies.items()))
        lines.append(f"  anomalies        [red]{seen}[/]")
    else:
        lines.append("  anomalies        none")
    for s in stats.subscribers:
        lines.append(
            f"  {s.name:<16} delivered {s.delivered}, failed {s.failed}, dropped {s.dropped}"
            + (f", abandoned {s.abandoned}" if s.abandoned else "")
            + (", stuck" if s.stuck else "")
            + (f", undelivered {s.undelivered}" if s.undelivered else "")
        )
    lines.append(
        f'  query it         esper query {run_dir} "SELECT update, lstm_h_rms, lstm_c_rms '
        'FROM ppo_updates ORDER BY update"'
    )
    return "\n".join(lines)
