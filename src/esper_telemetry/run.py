"""One ``esper ppo`` run: a hub, every backend, the reference trainer, and a verdict.

``run_ppo`` is what the command line calls. It wires the anomaly escalator (inline),
W&B, the analytics log and the structured log (each on its own thread) to one hub,
trains, closes the hub, and turns what happened into an exit status. With ``tui`` the
live panel runs on the main thread, subscribed like any backend, and training runs on
a worker thread; quitting the panel stops training after the current update. With
``report`` the run ends by writing ``report.png`` into its directory.

====  ==========================================================================
0     the run completed and every backend delivered every event
2     the run could not start (bad option, a backend refused, e.g. W&B online
      without credentials); nothing was trained
3     a critical anomaly halted the run (``--halt-on critical``)
4     a backend lost events or got stuck (``hub.stats()`` says which)
130   interrupted by Ctrl-C, SIGTERM or quitting the panel; everything emitted so
      far was flushed

"Lost" has one definition, ``SubscriberStats.lost``: failed, abandoned and
undelivered events (rows a backend reported it could not write), and the drops of a
``block`` subscriber; a ``drop_oldest`` view's drops are not losses.
====  ==========================================================================
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Literal

from rich.console import Console
from rich.markup import escape
from rich.progress import MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from esper_telemetry._extras import is_installed, missing_message
from esper_telemetry.backends.analytics import AnalyticsCollector
from esper_telemetry.backends.escalator import AnomalyEscalator
from esper_telemetry.backends.log import StructlogBackend
from esper_telemetry.contracts import (
    STATUS_COLOUR,
    AnomalyDetected,
    HealthThresholds,
    HubStats,
    RunLayout,
    TelemetryEvent,
    TelemetryLevel,
    WandbMode,
    format_value,
    health_status,
)
from esper_telemetry.hub import Subscriber, TelemetryHub
from esper_telemetry.telemetry.anomaly_detector import AnomalyDetector
from esper_telemetry.training import PPOConfig, TrainResult, UpdateInfo, train

_OnUpdate = Callable[[UpdateInfo], None]

EXIT_OK, EXIT_NOT_STARTED, EXIT_HALTED, EXIT_BACKEND_FAILED, EXIT_INTERRUPTED = 0, 2, 3, 4, 130


@dataclass(frozen=True)
class RunOptions:
    """Everything ``esper ppo`` decides besides the training settings."""

    config: PPOConfig
    run_root: Path = Path("runs")
    run_id: str | None = None
    level: TelemetryLevel = TelemetryLevel.NORMAL
    wandb: WandbMode = "offline"
    wandb_project: str = "esper"
    halt_on: Literal["critical"] | None = None
    escalate_for: int = 5
    thresholds: HealthThresholds = field(default_factory=HealthThresholds)
    progress: bool = True
    close_timeout: float = 30.0
    backends: tuple[Subscriber, ...] = ()
    """Your own subscribers, added after the built-in ones (each on its own thread)."""
    tui: bool = False
    report: bool = False


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


def run_ppo(options: RunOptions, console: Console) -> RunOutcome:
    """Train with every backend subscribed; print progress and a summary on ``console``."""
    missing = _missing_extra(options)
    if missing is not None:
        return RunOutcome(EXIT_NOT_STARTED, missing)
    try:
        hub = TelemetryHub(options.run_id, level=options.level)
    except ValueError as exc:
        return RunOutcome(EXIT_NOT_STARTED, f"--run-id: {exc}")
    run_dir = options.run_root / hub.run_id
    if run_dir.exists():
        return RunOutcome(
            EXIT_NOT_STARTED,
            f"run directory {run_dir} already exists; pick another --run-id or --run-dir",
        )
    anomalies: Counter[str] = Counter()
    try:
        _subscribe_all(hub, options, run_dir, anomalies)
    except Exception as exc:  # a backend refused to start: say why in one line
        hub.close(timeout=options.close_timeout)
        # Nothing was trained: leave no half-made run behind, so the run id stays free.
        # (The directory did not exist before this call; see the check above.)
        shutil.rmtree(run_dir, ignore_errors=True)
        return RunOutcome(EXIT_NOT_STARTED, str(exc), run_dir=run_dir)

    if options.tui:
        result, stats = _train_in_panel(hub, options, console)
    else:
        try:
            with _stop_on_sigterm() as stop, _progress(options, console) as on_update:
                result = train(
                    options.config,
                    hub,
                    on_update=on_update,
                    should_stop=stop.is_set,
                    thresholds=options.thresholds,
                )
        finally:  # flushed even when training raised
            stats = hub.close(timeout=options.close_timeout)
    outcome = RunOutcome(
        *_verdict(result, stats), run_dir=run_dir, result=result, stats=stats, anomalies=anomalies
    )
    if options.report:
        _write_report(outcome, options)
    console.print(_summary(outcome, options))
    return outcome


def _missing_extra(options: RunOptions) -> str | None:
    """Refuse, before anything starts, an option whose optional dependency is missing."""
    if options.tui and not is_installed("textual"):
        return missing_message("--tui", "textual")
    if options.report and not is_installed("matplotlib"):
        return missing_message("--report", "matplotlib")
    return None


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
    hub: TelemetryHub, options: RunOptions, run_dir: Path, anomalies: Counter[str]
) -> None:
    detector = AnomalyDetector(options.thresholds)
    hub.subscribe(
        AnomalyEscalator(detector, escalate_for=options.escalate_for, halt_on=options.halt_on),
        mode="inline",
    )

    def count_anomalies(event: TelemetryEvent) -> None:
        if isinstance(event, AnomalyDetected):
            anomalies[event.payload.anomaly.type.value] += 1

    hub.subscribe(count_anomalies, mode="inline", events=[AnomalyDetected], name="summary")
    if options.wandb != "disabled":
        os.environ.setdefault("WANDB_SILENT", "true")  # our summary says where the run is
        # First of the threaded backends: W&B online without credentials fails here,
        # before anything is written or trained.
        from esper_telemetry.backends.wandb import WandBBackend

        run_dir.mkdir(parents=True)
        hub.subscribe(WandBBackend(options.wandb_project, mode=options.wandb, dir=run_dir))
    hub.subscribe(AnalyticsCollector(run_dir, fsync="flush"))
    hub.subscribe(StructlogBackend(RunLayout(run_dir).log))
    for backend in options.backends:
        try:
            hub.subscribe(backend)
        except Exception as exc:
            name = getattr(backend, "name", None) or type(backend).__name__
            raise RuntimeError(f"backend {name!r} refused to start: {exc}") from exc


def _verdict(result: TrainResult, stats: HubStats) -> tuple[int, str]:
    if result.status == "halted":
        return EXIT_HALTED, f"halted: {result.message}"
    broken = [s for s in stats.subscribers if s.lost or s.stuck]
    if broken:
        parts = [
            f"{s.name} ({'stuck, ' if s.stuck else ''}lost {s.lost}: failed {s.failed}, "
            f"dropped {s.dropped}, abandoned {s.abandoned}, undelivered {s.undelivered}"
            + (f", last error: {s.last_error}" if s.last_error else "")
            + ")"
            for s in broken
        ]
        return EXIT_BACKEND_FAILED, "backend failed to deliver everything: " + "; ".join(parts)
    if result.status == "interrupted":
        return EXIT_INTERRUPTED, "interrupted; every event emitted so far was flushed"
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
def _progress(options: RunOptions, console: Console) -> Iterator[_OnUpdate]:
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
            bar.update(task, completed=info.update + 1, description=_line(info, thresholds))

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
    lines = [
        "",
        f"[bold]run {stats.run_id}[/]: {result.status}, {result.updates} updates, "
        f"{result.env_steps} env steps, mean return (last 20 episodes) "
        f"{result.mean_return:.1f}",
        f"  run directory    {run_dir}",
        f"  analytics log    {layout.events}",
        f"  structured log   {layout.log}",
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
        )
    lines.append(
        f'  query it         esper query {run_dir} "SELECT update, lstm_h_rms, lstm_c_rms '
        'FROM ppo_updates ORDER BY update"'
    )
    return "\n".join(lines)
