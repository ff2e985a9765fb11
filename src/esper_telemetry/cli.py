"""The ``esper`` command: wires a hub, its subscribers and a workload together."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable
from datetime import date, datetime, time
from decimal import Decimal
from pathlib import Path
from typing import Any

import click

from esper_telemetry import __version__
from esper_telemetry.analytics import TABLES as ANALYTICS_TABLES
from esper_telemetry.analytics import BadLine, connect, export_parquet
from esper_telemetry.contracts import (
    EventType,
    HealthStatus,
    HubStats,
    PPOUpdatePayload,
    TelemetryEvent,
    TelemetryLevel,
    health_status,
)
from esper_telemetry.contracts.schema import export_schemas
from esper_telemetry.hub import TelemetryHub
from esper_telemetry.telemetry import AnomalyDetector
from esper_telemetry.training.demo import FAULT_KINDS, FaultKind

_STATUS_COLOUR = {
    HealthStatus.HEALTHY: "green",
    HealthStatus.WARNING: "yellow",
    HealthStatus.CRITICAL: "red",
}


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="esper")
def main() -> None:
    """esper: health telemetry for the recurrent state of PPO policies."""


@main.command()
@click.option("--updates", default=40, show_default=True, help="Number of updates to run.")
@click.option("--envs", default=64, show_default=True, help="Episodes per update (batch).")
@click.option("--hidden", default=32, show_default=True, help="LSTM hidden size.")
@click.option("--layers", default=1, show_default=True, help="LSTM layers.")
@click.option("--seed", default=0, show_default=True, help="Random seed.")
@click.option(
    "--telemetry-level",
    type=click.Choice([lvl.name.lower() for lvl in TelemetryLevel]),
    default="normal",
    show_default=True,
    help="Detail of the published events.",
)
@click.option(
    "--inject-fault",
    metavar="KIND@UPDATE",
    default=None,
    help="Corrupt the measured LSTM state (nan, inf, explode, vanish) at one update.",
)
def demo(
    updates: int,
    envs: int,
    hidden: int,
    layers: int,
    seed: int,
    telemetry_level: str,
    inject_fault: str | None,
) -> None:
    """Train a small LSTM actor-critic on a memory task and show its state's health.

    Every update publishes one PPO_UPDATE_COMPLETED event on a TelemetryHub; a
    subscriber prints it with the verdict of the shared health rule and any anomaly.
    """
    import torch

    from esper_telemetry.training.demo import DemoConfig, run_demo  # torch loads here

    torch.set_num_threads(1)
    try:
        config = DemoConfig(
            updates=updates,
            envs=envs,
            hidden=hidden,
            layers=layers,
            seed=seed,
            fault=_parse_fault(inject_fault),
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    printer = _HealthPrinter()
    with TelemetryHub(level=telemetry_level) as hub:
        hub.subscribe(printer, mode="inline", events=[EventType.PPO_UPDATE_COMPLETED])
        click.echo(f"run {hub.run_id}: cue-memory LSTM, {updates} updates x {envs} episodes")
        click.echo(printer.header())
        rewards = run_demo(config, hub)
    stats = hub.stats()
    click.echo(_summary(stats, rewards))


@main.group()
def contracts() -> None:
    """The typed event contracts."""


@contracts.command("export")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
def contracts_export(directory: Path) -> None:
    """Write the JSON Schema of every contract into DIRECTORY."""
    try:
        written = export_schemas(directory)
    except (OSError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    for path in written:
        click.echo(str(path))


class _HealthPrinter:
    """An inline subscriber printing one line per PPO update."""

    name = "terminal"

    def __init__(self) -> None:
        self._detector = AnomalyDetector()

    def header(self) -> str:
        return (
            f"{'update':>6} {'reward':>7} {'loss_pi':>8} {'h_rms':>10} {'c_rms':>10} "
            f"{'c_env_max':>10}  status"
        )

    def handle(self, event: TelemetryEvent) -> None:
        payload = event.payload
        if not isinstance(payload, PPOUpdatePayload):
            return
        metrics = payload.health()
        reward = payload.extra.get("mean_reward", math.nan)
        line = f"{event.update:>6} {reward:>7.3f} {payload.policy_loss:>8.3f} "
        if metrics is None:
            click.echo(line + "(no LSTM)")
            return
        status = health_status(metrics, self._detector.thresholds)
        word = click.style(f"{status.value:<8}", fg=_STATUS_COLOUR[status], bold=True)
        line += (
            f"{_fmt(metrics.h_rms):>10} {_fmt(metrics.c_rms):>10} "
            f"{_fmt(metrics.c_env_rms_max):>10}  {word}"
        )
        report = self._detector.check_lstm_health(metrics)
        if report.has_anomaly:
            line += "  " + "; ".join(f"{a.type.value}: {a.message}" for a in report.anomalies)
        click.echo(line)


def _fmt(x: float) -> str:
    if math.isnan(x) or math.isinf(x):
        return str(x)
    if x != 0 and (abs(x) < 1e-3 or abs(x) >= 1e4):
        return f"{x:.3e}"
    return f"{x:.3f}"


def _parse_fault(text: str | None) -> tuple[FaultKind, int] | None:
    if text is None:
        return None
    kind, sep, at = text.partition("@")
    for known in FAULT_KINDS:
        if kind == known and sep and at.isdigit():
            return known, int(at)
    raise click.BadParameter(
        f"expected KIND@UPDATE with KIND one of {', '.join(FAULT_KINDS)} and UPDATE an "
        f"int >= 0 (e.g. nan@3), got {text!r}",
        param_hint="--inject-fault",
    )


def _summary(stats: HubStats, rewards: list[float]) -> str:
    lines = [
        f"mean reward: first update {rewards[0]:.3f}, last update {rewards[-1]:.3f}",
        f"hub {stats.run_id}: {stats.emitted} events emitted",
    ]
    for s in stats.subscribers:
        lines.append(f"  {s.name}: delivered {s.delivered}, failed {s.failed}, dropped {s.dropped}")
    return "\n".join(lines)


# -- analytics: esper query, esper export -------------------------------------------------


@main.command()
@click.argument("runs", metavar="RUN_DIR_OR_GLOB")
@click.argument("sql")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "csv", "json"]),
    default="table",
    show_default=True,
    help="table: aligned text; csv: with a header row; json: one JSON object per line.",
)
def query(runs: str, sql: str, fmt: str) -> None:
    """Run SQL over the events of a run, or of many runs (quote a glob: 'runs/*').

    Tables: events, ppo_updates, anomalies, level_changes (one row per event, with
    run_id). The database lives in memory, loaded from the events files, which are
    only read; the SQL cannot read or write any file. NaN and infinities print as
    NaN, Infinity and -Infinity, as in the logs.

    \b
    Example:
      esper query 'runs/*' "SELECT run_id, max(lstm_h_rms) FROM ppo_updates GROUP BY run_id"
    """
    try:
        import duckdb
    except ImportError:
        raise click.ClickException(
            "esper query needs duckdb: pip install 'esper-telemetry[analytics]'"
        ) from None
    bad: list[BadLine] = []
    try:
        con = connect(runs, tables=_tables_in(sql), on_bad_line=bad.append)
    except (ImportError, OSError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    try:
        result = con.execute(sql)
        if result.description is not None:
            names = [str(d[0]) for d in result.description]
            is_json = [str(d[1]) == "JSON" for d in result.description]
            if fmt == "table":
                click.echo(_table_text(names, result.fetchall()))
            else:
                _stream_rows(result.fetchmany, names, is_json, fmt)
    except duckdb.Error as exc:
        raise click.ClickException(_first_line(exc)) from None
    finally:
        con.close()
    _report_bad_lines(bad)


@main.command("export")
@click.argument("runs", metavar="RUN_DIR_OR_GLOB")
@click.option(
    "--parquet",
    "destination",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The Parquet file to write (replaced if it exists).",
)
@click.option(
    "--table",
    "--view",
    "table",
    type=click.Choice(list(ANALYTICS_TABLES)),
    default="ppo_updates",
    show_default=True,
    help="The table to export.",
)
def export_command(runs: str, destination: Path, table: str) -> None:
    """Write one table of a run (or of a glob of runs) to a Parquet file.

    Rows are ordered by run_id and seq; the file appears only once complete.
    """
    bad: list[BadLine] = []
    try:
        rows = export_parquet(runs, destination, table=table, on_bad_line=bad.append)
    except (ImportError, OSError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    _report_bad_lines(bad)
    click.echo(f"wrote {rows} rows of {table} to {destination}")


def _tables_in(sql: str) -> list[str] | None:
    """The analytics tables ``sql`` reads, so that only those are loaded; None: all.

    All are loaded when it names none of them (``SHOW TABLES``, a catalog query) or
    cannot be analysed alone (several statements, an error the real run will report).
    """
    import duckdb

    try:
        with duckdb.connect() as scratch:
            names = {name.lower() for name in scratch.get_table_names(sql)}
    except duckdb.Error:
        return None
    return [t for t in ANALYTICS_TABLES if t in names] or None


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[0] if lines else type(exc).__name__


def _report_bad_lines(bad: list[BadLine]) -> None:
    if bad:
        s = "" if len(bad) == 1 else "s"
        click.echo(f"warning: skipped {len(bad)} bad line{s}; the first: {bad[0]}", err=True)


def _stream_rows(
    fetchmany: Callable[[int], list[tuple[Any, ...]]],
    names: list[str],
    is_json: list[bool],
    fmt: str,
) -> None:
    header = fmt == "csv"
    while (rows := fetchmany(1024)) or header:
        buffer = io.StringIO()
        if fmt == "csv":
            writer = csv.writer(buffer, lineterminator="\n")
            if header:
                writer.writerow(names)
                header = False
            writer.writerows([_text(v, csv_null=True) for v in row] for row in rows)
        else:
            for row in rows:
                record = {
                    name: json.loads(v) if (j and isinstance(v, str)) else _jsonable(v)
                    for name, v, j in zip(names, row, is_json, strict=True)
                }
                buffer.write(json.dumps(record, allow_nan=False, separators=(",", ":")) + "\n")
        click.echo(buffer.getvalue(), nl=False)


def _table_text(names: list[str], rows: list[tuple[Any, ...]]) -> str:
    cells = [[_text(v).replace("\n", "\\n").replace("\t", "\\t") for v in row] for row in rows]
    widths = [max([len(n), *(len(r[i]) for r in cells)]) for i, n in enumerate(names)]
    numeric = [
        bool(rows)
        and all(_is_number(row[i]) or row[i] is None for row in rows)
        and any(_is_number(row[i]) for row in rows)
        for i in range(len(names))
    ]

    def line(values: list[str]) -> str:
        return "  ".join(
            v.rjust(w) if num else v.ljust(w)
            for v, w, num in zip(values, widths, numeric, strict=True)
        ).rstrip()

    out = [line(names), "  ".join("-" * w for w in widths)]
    out.extend(line(r) for r in cells)
    out.append(f"({len(rows)} row{'' if len(rows) == 1 else 's'})")
    return "\n".join(out)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float | Decimal) and not isinstance(value, bool)


def _text(value: object, *, csv_null: bool = False) -> str:
    if value is None:
        return "" if csv_null else "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return _float_text(value)
    if isinstance(value, str):
        return value
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, dict | list | tuple):
        return json.dumps(_jsonable(value), allow_nan=False, separators=(",", ":"))
    return str(value)


def _float_text(x: float) -> str:
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "Infinity" if x > 0 else "-Infinity"
    return repr(x)


def _jsonable(value: object) -> object:
    """A value as strict JSON can hold it: non-finite floats as their strict-JSON strings."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else _float_text(value)
    if isinstance(value, Decimal):
        return _jsonable(float(value))
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    return str(value)
