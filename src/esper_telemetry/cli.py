"""The ``esper`` command: wires a hub, its subscribers and a workload together."""

from __future__ import annotations

import math
from pathlib import Path

import click

from esper_telemetry import __version__
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
