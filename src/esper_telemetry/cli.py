"""The ``esper`` command: wires a hub, its subscribers and a workload together."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from esper_telemetry._console import first_line
from esper_telemetry._extras import is_installed, missing_message
from esper_telemetry._signals import RunSignals
from esper_telemetry.analytics import QUERY_FORMATS, TABLES, QueryFormat
from esper_telemetry.backends.wandb_keys import GROUPS, X_AXES, WandbKeys, checked_prefix
from esper_telemetry.contracts import WANDB_MODES, HealthThresholds, TelemetryLevel, WandbMode
from esper_telemetry.plugins import BackendSpec
from esper_telemetry.training.faults import FAULT_KINDS, FaultKind, parse_fault

if TYPE_CHECKING:
    from types import ModuleType

    from esper_telemetry.analytics import BadLine

_T = TypeVar("_T")


class _NonEmptyPath(click.Path):
    """A click.Path that refuses an empty string, which pathlib reads as the current folder."""

    def __init__(self, example: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.example = example

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and not value.strip():
            self.fail(
                f"{value!r} is an empty path; give one, e.g. {self.example} (or . for the "
                "current folder)",
                param,
                ctx,
            )
        return super().convert(value, param, ctx)


def _non_blank(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """Refuse an empty RUN_DIR_OR_GLOB, which would mean the current folder."""
    if not value.strip():
        raise click.BadParameter(
            f"{value!r} is empty; give a run directory, an events file or a quoted glob "
            "(e.g. 'runs/*')",
            ctx=ctx,
            param=param,
        )
    return value


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="esper-telemetry", prog_name="esper")
def main() -> None:
    """esper: health telemetry for the recurrent state of PPO policies."""


@main.command()
@click.option(
    "--episodes",
    default=10,
    show_default=True,
    help="PPO updates to run (one round of --episode-length steps in every env, then one update).",
)
@click.option("--envs", default=8, show_default=True, help="Parallel environments.")
@click.option(
    "--episode-length", default=32, show_default=True, help="Steps every env plays per round."
)
@click.option("--hidden", default=64, show_default=True, help="LSTM hidden size.")
@click.option("--layers", default=1, show_default=True, help="LSTM layers.")
@click.option("--proj-size", default=0, show_default=True, help="LSTM projection size (0: none).")
@click.option(
    "--lr", default=1e-3, show_default=True, help="Learning rate (annealed linearly to 0)."
)
@click.option("--seed", default=0, show_default=True, help="Seed of torch and the environments.")
@click.option(
    "--preset",
    type=click.Choice(["esper", "rl-zoo"]),
    default="esper",
    show_default=True,
    help="The trainer's settings: esper's defaults (RL Zoo's ppo_lstm for CartPoleNoVel "
    "with value clipping), or rl-zoo, RL Zoo's exactly (as sb3-contrib runs it).",
)
@click.option(
    "--diagnostics",
    is_flag=True,
    help="Measure the states' saturation, cell growth, dormancy and replay drift at every "
    "update (without it: only at DEBUG level).",
)
@click.option(
    "--device",
    default="cpu",
    show_default=True,
    help="Where the model and the rollout live: cpu, or cuda (cuda:N) on a machine with a GPU.",
)
@click.option(
    "--run-dir",
    default="runs",
    show_default=True,
    type=_NonEmptyPath("runs", file_okay=False, path_type=Path),
    help="Root folder; the run writes to RUN_DIR/RUN_ID/.",
)
@click.option(
    "--run-id",
    default=None,
    help="Name of the run (letters, digits, '.', '_', '-'); default: timestamped.",
)
@click.option(
    "--resume",
    "resume_dir",
    default=None,
    type=_NonEmptyPath("runs/RUN_ID", file_okay=False, path_type=Path),
    help="Continue the run in this directory: seq and update carry on, W&B first gets "
    "what it lost (esper wandb backfill), then the same W&B run goes on. The policy "
    "starts afresh (no checkpoints). Not with --run-dir or --run-id.",
)
@click.option(
    "--telemetry-level",
    type=click.Choice([lvl.name.lower() for lvl in TelemetryLevel]),
    default="normal",
    show_default=True,
    help="Detail of the published events (off publishes nothing).",
)
@click.option(
    "--wandb",
    "wandb_mode",
    type=click.Choice(WANDB_MODES),
    default="offline",
    show_default=True,
    help="Weights & Biases mode; online needs `wandb login`. Offline unless asked: "
    "WANDB_MODE does not change it (WandBBackend(mode=None) follows wandb.init instead).",
)
@click.option(
    "--wandb-project", default="esper", show_default=True, help="The W&B project of the run."
)
@click.option("--wandb-entity", default=None, help="The W&B entity (user or team); W&B's default.")
@click.option("--wandb-group", default=None, help="The W&B group of the run (a sweep, a job).")
@click.option("--wandb-tag", "wandb_tags", multiple=True, help="A W&B tag (repeatable).")
@click.option("--wandb-job-type", default=None, help="W&B's job type of the run, e.g. train.")
@click.option(
    "--wandb-log",
    default=",".join(GROUPS),
    show_default=True,
    metavar="GROUP,...",
    help=f"The groups of keys logged to W&B, some of {', '.join(GROUPS)} (see docs/wandb.md).",
)
@click.option(
    "--wandb-prefix",
    default="",
    help="Put before every W&B key with a '/', e.g. esper (default: none).",
)
@click.option(
    "--wandb-x-axis",
    type=click.Choice(X_AXES),
    default="update",
    show_default=True,
    help="What every W&B chart is drawn against; both are logged in every row.",
)
@click.option(
    "--halt-on",
    type=click.Choice(["critical"]),
    default=None,
    help="Stop training at the first critical anomaly.",
)
@click.option(
    "--inject-fault",
    metavar="KIND@UPDATE",
    default=None,
    help=f"Demo tool: corrupt the LSTM state ({', '.join(FAULT_KINDS)}) at one update.",
)
@click.option("--no-progress", is_flag=True, help="No progress bar (for logs and CI).")
@click.option(
    "--tui",
    is_flag=True,
    help="Show the live health panel while training (q stops training cleanly, p pauses "
    "the display, ? help). Needs the tui extra.",
)
@click.option(
    "--report",
    "write_report",
    is_flag=True,
    help="Write RUN_DIR/RUN_ID/report.png at the end of the run. Needs the report extra.",
)
@click.option(
    "--nproc",
    default=1,
    show_default=True,
    metavar="N",
    help="Train in N processes on the CPU (torch.distributed, gloo): each plays --envs "
    "environments of its own with a replica of the model, gradients averaged, all in one "
    "run directory. The ranks are plain subprocesses of esper (python -m "
    "esper_telemetry._rank), not torchrun or torch.multiprocessing: each exits with its "
    "own verdict and handles signals as one process does; SIGTERM to this process is "
    "forwarded to every rank. Not with --tui or --resume.",
)
@click.option(
    "--publish-ranks",
    type=click.Choice(["zero", "all"]),
    default="zero",
    show_default=True,
    help="With --nproc: which ranks write the logs and W&B. zero: rank 0 (one "
    "events.jsonl, one log, one W&B run); all: every rank, into events.rank<N>.jsonl "
    "and log.rank<N>.jsonl, with one W&B run per rank, grouped by run id.",
)
@click.option(
    "--backend",
    "backend_specs",
    multiple=True,
    metavar="NAME[:KEY=VALUE,...]",
    help="Subscribe an installed backend plugin with these options (repeatable; esper "
    "backends lists them). One that cannot load or start stops the run before training.",
)
@click.option(
    "--no-plugins",
    is_flag=True,
    help="Do not load the installed plugins not named by --backend (by default each is "
    "loaded with no options, and one that fails is reported and left out).",
)
@click.option(
    "--fault-rank",
    type=int,
    default=None,
    metavar="RANK",
    help="With --inject-fault and --nproc: corrupt the state of this rank only "
    "(default: of every rank).",
)
def ppo(
    episodes: int,
    envs: int,
    episode_length: int,
    hidden: int,
    layers: int,
    proj_size: int,
    lr: float,
    seed: int,
    preset: str,
    diagnostics: bool,
    device: str,
    run_dir: Path,
    run_id: str | None,
    resume_dir: Path | None,
    telemetry_level: str,
    wandb_mode: str,
    halt_on: str | None,
    inject_fault: str | None,
    no_progress: bool,
    tui: bool,
    write_report: bool,
    nproc: int,
    publish_ranks: str,
    fault_rank: int | None,
    backend_specs: tuple[str, ...],
    no_plugins: bool,
    **wandb_flags: Any,
) -> None:
    """Train a recurrent PPO agent on CartPole without velocities, with full telemetry.

    After every update the LSTM state's health goes, as one event, to the anomaly
    escalator, W&B (offline by default), the analytics log (RUN_DIR/RUN_ID/events.jsonl)
    and the structured log (log.jsonl), then to the backend plugins (--backend, and every
    one installed unless --no-plugins; esper backends lists them); with --tui, to the
    live panel as well. Exit status: 0 done, 2 not started (a bad option: nothing is
    created), 3 halted by an anomaly, 4 a backend lost events, 5 training failed
    (RUN_FINISHED says why), 130 interrupted (Ctrl-C, SIGTERM, or q in the panel before
    the run ended). With --nproc, the status of rank 0 (or of the rank that failed), and
    5 when a rank crashed.
    """
    fault = _parse_fault(inject_fault)  # a bad option is refused before torch loads
    plugins = _parse_backends(backend_specs)
    wandb_settings = _wandb_settings(**wandb_flags)
    _check_ranks(nproc, tui=tui, resume=resume_dir is not None, fault=fault, rank=fault_rank)
    if resume_dir is not None:
        run_dir, run_id = _resumed(resume_dir, run_dir, run_id)
    signals = _hold_signals()  # before torch loads: a signal must not cut an import
    import torch
    from rich.console import Console

    from esper_telemetry.run import EXIT_INTERRUPTED, RunOptions, WandbSettings, run_ppo
    from esper_telemetry.training import PPOConfig
    from esper_telemetry.training.ppo import PRESETS, ConfigError, check_memory

    torch.set_num_threads(1)
    if signals.interrupted:  # while loading: nothing exists yet
        click.echo(
            f"esper ppo: interrupted ({signals.describe()}) while starting; nothing was created",
            err=True,
        )
        sys.exit(EXIT_INTERRUPTED)
    try:
        config = PPOConfig(
            **PRESETS[preset],
            updates=episodes,
            envs=envs,
            steps=episode_length,
            hidden=hidden,
            layers=layers,
            proj_size=proj_size,
            lr=lr,
            seed=seed,
            fault=fault,
            diagnostics=diagnostics,
            device=device,
        )
        check_memory(config, processes=nproc)  # before the run directory exists
    except ConfigError as exc:
        named = " / ".join(_PPO_OPTION.get(f, f) for f in exc.fields)
        raise click.BadParameter(exc.reason, param_hint=named) from None
    options = RunOptions(
        config=config,
        run_root=run_dir,
        run_id=run_id,
        level=TelemetryLevel.parse(telemetry_level),
        wandb=wandb_mode,  # type: ignore[arg-type]
        wandb_project=wandb_settings[0],
        wandb_settings=WandbSettings(**wandb_settings[1]),
        halt_on="critical" if halt_on else None,
        progress=not no_progress and not tui,
        tui=tui,
        report=write_report,
        resume=resume_dir is not None,
        publish_ranks="all" if publish_ranks == "all" else "zero",
        plugins=plugins,
        autoload_plugins=not no_plugins,
    )
    if nproc > 1:
        from esper_telemetry._launch import launch

        code, message = launch(options, nproc, signals, fault_rank=fault_rank)
        if code:
            click.echo(f"esper ppo: {message}", err=True)
            sys.exit(code)
        return
    outcome = run_ppo(options, Console(soft_wrap=True), signals=signals)
    if outcome.report_error is not None:
        click.echo(f"esper ppo: report not written: {outcome.report_error}", err=True)
    if outcome.exit_code:
        click.echo(f"esper ppo: {outcome.message}", err=True)
        sys.exit(outcome.exit_code)


def _parse_backends(given: tuple[str, ...]) -> tuple[BackendSpec, ...]:
    """Each ``--backend`` read, or one line saying what is wrong with it."""
    try:
        return tuple(BackendSpec.parse(text) for text in given)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


@main.command("backends")
def backends_command() -> None:
    """List the backends: the built-in ones and the installed plugins, one line each.

    A plugin is a package that registers a factory under the entry-point group
    esper_telemetry.backends; esper ppo --backend NAME[:KEY=VALUE,...] subscribes one
    with options, and every plugin installed is loaded with none unless --no-plugins.
    A plugin that cannot be imported is listed with its error.
    """
    from esper_telemetry.plugins import BUILT_IN, discover

    rows = [(b.name, "built-in", b.description) for b in BUILT_IN]
    for plugin in discover():
        what = plugin.description if plugin.error is None else f"cannot load: {plugin.error}"
        rows.append((plugin.name, f"plugin ({plugin.distribution})", what))
    name_width = max(len(name) for name, _, _ in rows)
    kind_width = max(len(kind) for _, kind, _ in rows)
    for name, kind, what in rows:
        click.echo(f"{name:<{name_width}}  {kind:<{kind_width}}  {what}".rstrip())


@main.group()
def contracts() -> None:
    """The typed event contracts."""


@contracts.command("export")
@click.argument("directory", type=_NonEmptyPath("contracts", file_okay=False, path_type=Path))
def contracts_export(directory: Path) -> None:
    """Write the JSON Schema of every contract into DIRECTORY."""
    try:
        from esper_telemetry.contracts.schema import export_schemas

        written = export_schemas(directory)
    except (OSError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    for path in written:
        click.echo(str(path))


def _wandb_settings(
    *,
    wandb_project: str,
    wandb_entity: str | None,
    wandb_group: str | None,
    wandb_tags: tuple[str, ...],
    wandb_job_type: str | None,
    wandb_log: str,
    wandb_prefix: str,
    wandb_x_axis: str,
) -> tuple[str, dict[str, Any]]:
    """The ``--wandb-*`` flags checked (one line naming the flag), as the W&B project and
    the fields of the run's ``WandbSettings`` (built once torch is loaded: the run module
    imports it, and a signal must not cut that import)."""
    from esper_telemetry.backends.wandb_keys import (
        checked_groups,
        checked_prefix,
        checked_project,
        checked_tags,
        checked_text,
        checked_x_axis,
    )

    def checked(flag: str, check: Callable[[], Any]) -> Any:
        try:
            return check()
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint=flag) from None

    project = checked("--wandb-project", lambda: checked_project(wandb_project))
    groups = [g.strip() for g in wandb_log.split(",") if g.strip()]
    settings = {
        "entity": checked("--wandb-entity", lambda: checked_text("entity", wandb_entity)),
        "group": checked("--wandb-group", lambda: checked_text("group", wandb_group, limit=128)),
        "tags": checked("--wandb-tag", lambda: checked_tags(wandb_tags)),
        "job_type": checked(
            "--wandb-job-type", lambda: checked_text("job_type", wandb_job_type, limit=64)
        ),
        "log": checked("--wandb-log", lambda: checked_groups(groups)),
        "prefix": checked("--wandb-prefix", lambda: checked_prefix(wandb_prefix)),
        "x_axis": checked_x_axis(wandb_x_axis),
    }
    return project, settings


#: The ``esper ppo`` option of each PPOConfig field it sets, for error messages.
_PPO_OPTION = {
    "updates": "--episodes",
    "envs": "--envs",
    "steps": "--episode-length",
    "hidden": "--hidden",
    "layers": "--layers",
    "proj_size": "--proj-size",
    "lr": "--lr",
    "seed": "--seed",
    "device": "--device",
    "fault": "--inject-fault",
    "processes": "--nproc",
}

#: Ranks per CPU core that ``--nproc`` accepts at most: past it a machine only thrashes.
_RANKS_PER_CORE = 8


def _check_ranks(
    nproc: int, *, tui: bool, resume: bool, fault: tuple[FaultKind, int] | None, rank: int | None
) -> None:
    """Refuse, in one line each, a --nproc this machine cannot run or options it cannot
    go with, and a --fault-rank that names no rank."""
    cores = os.cpu_count() or 1
    most = cores * _RANKS_PER_CORE
    if nproc < 1:
        raise click.BadParameter(f"must be an int >= 1, got {nproc}", param_hint="--nproc")
    if nproc > most:
        raise click.BadParameter(
            f"{nproc} processes are more than this machine can run: at most {most} "
            f"({_RANKS_PER_CORE} per CPU core, {cores} cores)",
            param_hint="--nproc",
        )
    if nproc > 1 and tui:
        raise click.BadParameter(
            "the panel shows one process; with --nproc above 1 watch the run from another "
            "terminal instead: esper watch RUN_DIR/RUN_ID",
            param_hint="--tui",
        )
    if nproc > 1 and resume:
        raise click.BadParameter(
            "continues a run of one process; it cannot be combined with --nproc above 1",
            param_hint="--resume",
        )
    if rank is not None:
        if fault is None:
            raise click.BadParameter(
                "names the rank --inject-fault corrupts; give --inject-fault too",
                param_hint="--fault-rank",
            )
        if not 0 <= rank < nproc:
            raise click.BadParameter(
                f"rank {rank} is not one of the {nproc} ranks; pick one in [0, {nproc - 1}]",
                param_hint="--fault-rank",
            )


def _hold_signals() -> RunSignals:
    """The run's Ctrl-C and SIGTERM handlers (``esper_telemetry._signals``); once the
    command ends they hold signals while Python exits, or give way if it goes on."""
    signals = RunSignals.install()
    click.get_current_context().call_on_close(signals.exiting)
    return signals


def _resumed(resume_dir: Path, run_dir: Path, run_id: str | None) -> tuple[Path, str]:
    """The run root and run id of ``--resume RUN_DIR/RUN_ID``."""
    ctx = click.get_current_context()
    given = [
        name
        for name, param in (("--run-dir", "run_dir"), ("--run-id", "run_id"))
        if ctx.get_parameter_source(param) is not click.core.ParameterSource.DEFAULT
    ]
    if given:
        raise click.BadParameter(
            f"{' and '.join(given)} cannot be combined with --resume, which names the run "
            "directory itself",
            param_hint="--resume",
        )
    if not (resume_dir / "events.jsonl").is_file():
        raise click.BadParameter(
            f"{str(resume_dir)!r} holds no events.jsonl: there is no run to continue "
            "(start a new one without --resume)",
            param_hint="--resume",
        )
    resolved = resume_dir.resolve()
    return resolved.parent, resolved.name


def _parse_fault(text: str | None) -> tuple[FaultKind, int] | None:
    if text is None:
        return None
    try:
        return parse_fault(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--inject-fault") from None


@main.command()
@click.argument("runs", metavar="RUN_DIR_OR_GLOB", callback=_non_blank)
@click.argument("sql")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(QUERY_FORMATS),
    default="table",
    show_default=True,
    help="table: aligned text; csv: with a header row; json: one JSON object per line.",
)
def query(runs: str, sql: str, fmt: QueryFormat) -> None:
    """Run SQL over the events of a run, or of many runs (quote a glob: 'runs/*').

    Tables: events, ppo_updates, anomalies, level_changes (one row per event, with
    run_id) and recurrent_health (one row per named recurrent state of each update:
    filter on name). The database lives in memory, loaded from the events files,
    which are only read; the SQL cannot read or write any file. NaN and infinities
    print as NaN, Infinity and -Infinity, as in the logs.

    \b
    Example:
      esper query 'runs/*' "SELECT run_id, max(lstm_h_rms) FROM ppo_updates GROUP BY run_id"
    """
    if not is_installed("duckdb"):
        raise click.ClickException(missing_message("esper query", "duckdb"))
    from esper_telemetry.analytics import run_query

    bad: list[BadLine] = []
    try:
        for text in run_query(runs, sql, fmt=fmt, on_bad_line=bad.append):
            click.echo(text, nl=False)
    except (ImportError, OSError, ValueError) as exc:
        raise click.ClickException(first_line(exc)) from None
    _report_bad_lines(bad)


@main.command("export")
@click.argument("runs", metavar="RUN_DIR_OR_GLOB", callback=_non_blank)
@click.option(
    "--parquet",
    "destination",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The Parquet file to write (replaced if it exists; never a file a run owns: "
    "its events.jsonl, log.jsonl, report.png or W&B files).",
)
@click.option(
    "--table",
    "--view",
    "table",
    type=click.Choice(TABLES),
    default="ppo_updates",
    show_default=True,
    help="The table to export.",
)
def export_command(runs: str, destination: Path, table: str) -> None:
    """Write one table of a run (or of a glob of runs) to a Parquet file.

    Rows are ordered by run_id and seq; the file appears only once complete.
    """
    from esper_telemetry.analytics import export_parquet

    bad: list[BadLine] = []
    try:
        rows = export_parquet(runs, destination, table=table, on_bad_line=bad.append)
    except (ImportError, OSError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    _report_bad_lines(bad)
    click.echo(f"wrote {rows} rows of {table} to {destination}")


@main.command()
@click.argument("run_dir", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--poll",
    default=0.25,
    show_default=True,
    type=click.FloatRange(min=0.01),
    help="Seconds between looks at the events file.",
)
def watch(run_dir: Path, poll: float) -> None:
    """Show the live health panel of a run another process is writing, or has written.

    RUN_DIR is a run directory (RUN_DIR/events.jsonl, which may not exist yet) or an
    events file. New lines are picked up as they land; a last line still being written
    is waited for, and lines that cannot be read are reported in the panel. Keys: q quit,
    p pause the display, s next recurrent state in detail, ? help.
    """
    try:
        from esper_telemetry.tui import HealthPanel, LogFollower
    except ImportError:
        raise click.ClickException(
            "esper watch needs textual: pip install 'esper-telemetry[tui]'"
        ) from None
    try:
        follower = LogFollower(run_dir)
    except FileNotFoundError as exc:
        raise click.BadParameter(str(exc), param_hint="RUN_DIR") from None
    stop = threading.Event()  # SIGTERM closes the panel cleanly, restoring the terminal
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    try:
        HealthPanel(
            follow=follower,
            source=f"watching {follower.path}",
            poll_interval=poll,
            exit_when=stop.is_set,
        ).run()
    finally:
        signal.signal(signal.SIGTERM, previous)


@main.command("report")
@click.argument("run_dir", type=_NonEmptyPath("runs/RUN_ID", exists=True, path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The file to write: .png, or .html (the figure and tables of the recurrent "
    "states, anomalies and level changes). Default: RUN_DIR/report.png.",
)
def report_command(run_dir: Path, output: Path | None) -> None:
    """Draw a run's LSTM health and episode return against PPO update.

    h_rms, c_rms and the largest per-env RMS on a log scale, with the warning and
    critical thresholds as bands (the default HealthThresholds), anomalies and
    telemetry-level changes marked; below, the episode return.
    """
    if output is not None and output.suffix.lower() not in (".png", ".html"):
        raise click.BadParameter(
            f"{str(output)!r} must end in .png or .html", param_hint="-o/--output"
        )
    if output is not None and not output.parent.is_dir():
        raise click.BadParameter(
            f"{str(output)!r}: no folder {str(output.parent)!r}; create it first",
            param_hint="-o/--output",
        )
    try:
        from esper_telemetry.report import write_report
    except ImportError:
        raise click.ClickException(
            "esper report needs matplotlib: pip install 'esper-telemetry[report]'"
        ) from None
    bad: list[BadLine] = []
    try:
        written = write_report(run_dir, output, on_bad_line=bad.append)
    except (OSError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    _report_bad_lines(bad)
    click.echo(f"wrote {written}")


@main.group("wandb")
def wandb_group() -> None:
    """The run's Weights & Biases run."""


@wandb_group.command("backfill")
@click.argument("run_dir", type=_NonEmptyPath("runs/RUN_ID", exists=True, path_type=Path))
@click.option(
    "--mode",
    type=click.Choice(["offline", "online"]),
    default=None,
    help="Where to write; default: the mode of the run's W&B files.",
)
@click.option(
    "--project", default=None, help="The W&B project; default: the one the run's files name."
)
def wandb_backfill(run_dir: Path, mode: WandbMode | None, project: str | None) -> None:
    """Write into a run's W&B run what W&B lost and RUN_DIR/events.jsonl holds.

    After a hard kill W&B's run file can miss the last updates (wandb-core buffers its
    writes); the analytics log holds every update a completed flush covered. This logs
    the missing updates, anomalies and the run's end into the same W&B run (resumed),
    never writing a step W&B already holds; running it again writes nothing.
    """
    if not is_installed("wandb"):
        raise click.ClickException(missing_message("esper wandb backfill", "wandb"))

    from esper_telemetry.analytics import read_events
    from esper_telemetry.backends.wandb_backfill import backfill_wandb

    os.environ.setdefault("WANDB_SILENT", "true")
    bad: list[BadLine] = []
    try:
        done = backfill_wandb(
            run_dir, read_events(run_dir, on_bad_line=bad.append), mode=mode, project=project
        )
    except (OSError, ValueError, TimeoutError, RuntimeError) as exc:
        raise click.ClickException(first_line(exc)) from None
    _report_bad_lines(bad)
    click.echo(done.describe())
    if done.undelivered:
        sys.exit(4)


def _valid_prefix(ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        return checked_prefix(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None


def _dashboard_options(command: Callable[..., None]) -> Callable[..., None]:
    """The options ``esper wandb workspace`` and ``esper wandb report`` share."""
    defaults = HealthThresholds()
    options = [
        click.option("--entity", required=True, help="The W&B user or team owning the project."),
        click.option("--project", required=True, help="The W&B project of the runs."),
        click.option(
            "--state",
            "states",
            multiple=True,
            metavar="NAME",
            help="A named recurrent state to draw (repeat for more); default: policy and "
            "value, what esper ppo and RecurrentPPO report.",
        ),
        click.option(
            "--x-axis",
            type=click.Choice(X_AXES),
            default="update",
            show_default=True,
            help="What every chart is drawn against: the PPO update or env steps.",
        ),
        click.option(
            "--prefix",
            default="",
            callback=_valid_prefix,
            help="The key prefix the runs were logged with (WandBBackend's), e.g. esper.",
        ),
        *(
            click.option(
                f"--{name.replace('_', '-')}",
                name,
                type=float,
                default=getattr(defaults, name),
                show_default=True,
                help=f"The {name.removesuffix('_rms')} threshold drawn on the RMS charts.",
            )
            for name in ("vanishing_rms", "warning_rms", "critical_rms")
        ),
        click.option(
            "--print-spec",
            is_flag=True,
            help="Write the JSON spec to standard output instead of saving it; contacts nothing.",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@wandb_group.command("workspace")
@_dashboard_options
@click.option(
    "--run-group", default=None, help="Show only the runs of this W&B group; default: all."
)
@click.option(
    "--name", default=None, help="The workspace's name in W&B; default: esper: LSTM health."
)
def wandb_workspace(
    entity: str,
    project: str,
    states: tuple[str, ...],
    x_axis: str,
    prefix: str,
    vanishing_rms: float,
    warning_rms: float,
    critical_rms: float,
    print_spec: bool,
    run_group: str | None,
    name: str | None,
) -> None:
    """Save a W&B workspace of the LSTM health of a project's esper runs.

    Sections: LSTM health (h and c RMS of every state with the thresholds drawn, the
    per-env RMS, max |h| and |c|, NaN/Inf), Anomalies (the table and counts by type),
    PPO and Telemetry. Saving needs `wandb login`; --print-spec writes the spec instead.
    """
    dash = _dashboard_module("workspace")
    workspace = dash.health_workspace(
        _valid("entity", dash.checked_name, "entity", entity),
        _valid("project", dash.checked_name, "project", project),
        name=_valid(
            "name",
            dash.checked_workspace_name,
            dash.DEFAULT_WORKSPACE_NAME if name is None else name,
        ),
        run_group=None if run_group is None else _valid("run_group", dash.checked_group, run_group),
        states=_valid("states", dash.checked_states, states or dash.DEFAULT_STATES),
        thresholds=_thresholds(vanishing_rms, warning_rms, critical_rms),
        keys=WandbKeys(prefix=prefix, x_axis=x_axis),  # type: ignore[arg-type]  # a Choice
    )
    _save_or_print(dash, workspace, print_spec, "workspace")


@wandb_group.command("report")
@_dashboard_options
@click.option("--run", "run_id", required=True, help="The W&B run id of the run.")
@click.option(
    "--run-dir",
    type=_NonEmptyPath("runs/RUN_ID", exists=True, path_type=Path),
    default=None,
    help="esper's run directory of that run: its anomalies are listed in the report. "
    "Without it the report lists none.",
)
def wandb_report(
    entity: str,
    project: str,
    states: tuple[str, ...],
    x_axis: str,
    prefix: str,
    vanishing_rms: float,
    warning_rms: float,
    critical_rms: float,
    print_spec: bool,
    run_id: str,
    run_dir: Path | None,
) -> None:
    """Save a W&B report of one run: the workspace's panels for it, and its anomalies.

    Saving needs `wandb login`; --print-spec writes the spec instead.
    """
    dash = _dashboard_module("report")
    report = dash.run_report(
        _valid("entity", dash.checked_name, "entity", entity),
        _valid("project", dash.checked_name, "project", project),
        _valid("run_id", dash.checked_run_id, run_id),
        anomalies=_anomalies_of(dash, run_dir),
        states=_valid("states", dash.checked_states, states or dash.DEFAULT_STATES),
        thresholds=_thresholds(vanishing_rms, warning_rms, critical_rms),
        keys=WandbKeys(prefix=prefix, x_axis=x_axis),  # type: ignore[arg-type]  # a Choice
    )
    _save_or_print(dash, report, print_spec, "report")


def _dashboard_module(command: str) -> ModuleType:
    """esper_telemetry.backends.wandb_dashboard, or one line naming the extra to install."""
    if not is_installed("wandb_workspaces"):
        raise click.ClickException(missing_message(f"esper wandb {command}", "wandb_workspaces"))
    from esper_telemetry.backends import wandb_dashboard

    return wandb_dashboard


def _valid(param: str, check: Callable[..., _T], *args: Any) -> _T:
    """``check(*args)``, a ValueError from it refused as a bad value of option ``param``."""
    try:
        return check(*args)
    except ValueError as exc:
        ctx = click.get_current_context()
        option = next(p for p in ctx.command.params if p.name == param)
        raise click.BadParameter(first_line(exc), ctx=ctx, param=option) from None


def _thresholds(vanishing_rms: float, warning_rms: float, critical_rms: float) -> HealthThresholds:
    from pydantic import ValidationError

    try:
        return HealthThresholds(
            vanishing_rms=vanishing_rms, warning_rms=warning_rms, critical_rms=critical_rms
        )
    except ValidationError as exc:
        message = str(exc.errors()[0]["msg"]).removeprefix("Value error, ")
        raise click.BadParameter(
            message, param_hint="--vanishing-rms / --warning-rms / --critical-rms"
        ) from None


def _anomalies_of(dash: ModuleType, run_dir: Path | None) -> list[str]:
    """The anomaly lines of a run directory's events (none without one)."""
    if run_dir is None:
        return []
    from esper_telemetry.analytics import read_events

    bad: list[BadLine] = []
    try:
        lines: list[str] = dash.anomaly_lines(read_events(run_dir, on_bad_line=bad.append))
    except (OSError, ValueError) as exc:
        raise click.BadParameter(first_line(exc), param_hint="--run-dir") from None
    _report_bad_lines(bad)
    return lines


def _save_or_print(dash: ModuleType, dashboard: Any, print_spec: bool, what: str) -> None:
    """Write the spec to stdout, or save the dashboard to W&B and print its URL."""
    if print_spec:
        click.echo(json.dumps(dash.spec(dashboard), indent=2, allow_nan=False))
        return
    os.environ.setdefault("WANDB_SILENT", "true")
    try:
        dashboard.save()
        url = dashboard.url
    # wandb-workspaces raises a bare Exception when nobody is logged in, and wandb its
    # own errors, requests' or ValueError for the rest: each is reported in one line.
    except Exception as exc:
        raise click.ClickException(
            f"could not save the {what} to W&B ({type(exc).__name__}: {first_line(exc)}); "
            "it needs `wandb login` (or WANDB_API_KEY) and a connection, or use --print-spec"
        ) from None
    click.echo(f"saved the {what}: {url}")


def _report_bad_lines(bad: list[BadLine]) -> None:
    if bad:
        s = "" if len(bad) == 1 else "s"
        click.echo(f"warning: skipped {len(bad)} bad line{s}; the first: {bad[0]}", err=True)


if __name__ == "__main__":
    main()
