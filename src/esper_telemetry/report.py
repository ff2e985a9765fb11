"""The report of one run: LSTM health against PPO update, and the episode return.

Needs the ``report`` extra: ``pip install 'esper-telemetry[report]'`` (matplotlib).

``esper report RUN_DIR`` (and ``esper ppo --report`` at the end of a run) reads the
run's ``events.jsonl`` and draws two panels sharing the PPO-update axis:

* h_rms, c_rms and the largest per-env RMS (of h or c) on a log scale, with the
  warning and critical thresholds as bands (the same ``HealthThresholds`` the detector
  uses), NaN/Inf updates marked along the top edge, each anomaly marked at its update
  and each telemetry-level change drawn as a dotted line;
* the episode return the trainer logs as ``extra["return_mean"]`` in each update.

Three steps, each usable alone: :func:`collect` turns events into :class:`ReportData`
(the numbers behind the figure), :func:`build_figure` draws it (a matplotlib
``Figure`` on the Agg canvas: no display, no pyplot, no global state), and
:func:`write_report` writes a PNG or a self-contained HTML page.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Final

from esper_telemetry._extras import missing_message

try:
    from matplotlib.axes import Axes
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
except ModuleNotFoundError as exc:
    raise ImportError(
        missing_message("esper_telemetry.report", "matplotlib"), name="matplotlib"
    ) from exc

from esper_telemetry._files import atomic_write
from esper_telemetry.analytics import BadLine, OnBadLine, read_events
from esper_telemetry.contracts import (
    AnomalyDetected,
    HealthThresholds,
    LSTMHealthMetrics,
    PPOUpdateCompleted,
    RunFinished,
    RunLayout,
    TelemetryEvent,
    TelemetryLevelChanged,
    format_value,
)

__all__ = [
    "FIGURE_DPI",
    "FIGURE_SIZE",
    "ReportData",
    "build_figure",
    "collect",
    "write_report",
]

#: Size of the figure in inches; at ``FIGURE_DPI`` the PNG is 1200 x 750 pixels.
FIGURE_SIZE: Final = (12.0, 7.5)
FIGURE_DPI: Final = 100

_FORMATS: Final = {".png": "png", ".html": "html"}
_MAX_LABELS: Final = 30  # anomalous updates named on the figure; the rest only marked
_COLOURS: Final = {"h_rms": "tab:blue", "c_rms": "tab:orange", "env_rms_max": "tab:purple"}
_LABELS: Final = {"h_rms": "h_rms", "c_rms": "c_rms", "env_rms_max": "env-RMS max (h or c)"}
_BOX: Final = {"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 1}


@dataclass(frozen=True)
class ReportData:
    """The numbers behind a report, one entry per PPO update (in file order).

    Attributes:
        run_ids: The runs whose events were read (usually one).
        updates: The PPO update of each point.
        h_rms: RMS of h (NaN where an update carried no LSTM health).
        c_rms: RMS of c.
        env_rms_max: The largest per-env RMS of h or c (NaN when either is NaN).
        returns: ``extra["return_mean"]`` (NaN before the first finished episode).
        anomalies: Every ``AnomalyDetected`` event, in file order.
        level_changes: Every ``TelemetryLevelChanged`` event, in file order.
        non_finite_updates: The updates whose LSTM state held NaN or Inf (or whose
            RMS overflowed): they have no point on a log scale and are marked instead.
        status: How the run ended (RUN_FINISHED), or None when it has not.
        thresholds: The thresholds drawn as bands.
        bad_lines: Lines of the events file that were skipped.
    """

    run_ids: tuple[str, ...]
    updates: tuple[int, ...]
    h_rms: tuple[float, ...]
    c_rms: tuple[float, ...]
    env_rms_max: tuple[float, ...]
    returns: tuple[float, ...]
    anomalies: tuple[AnomalyDetected, ...] = ()
    level_changes: tuple[TelemetryLevelChanged, ...] = ()
    non_finite_updates: tuple[int, ...] = ()
    status: str | None = None
    thresholds: HealthThresholds = field(default_factory=HealthThresholds)
    bad_lines: tuple[BadLine, ...] = ()


def collect(
    events: Iterable[TelemetryEvent],
    thresholds: HealthThresholds | None = None,
    *,
    bad_lines: Iterable[BadLine] = (),
) -> ReportData:
    """Gather the numbers of a report from a run's events.

    >>> from esper_telemetry.contracts import PPOUpdateCompleted, PPOUpdatePayload
    >>> e = PPOUpdateCompleted(update=0, payload=PPOUpdatePayload(policy_loss=0.1,
    ...     value_loss=0.2, entropy=0.6, extra={"return_mean": 21.5}))
    >>> data = collect([e])
    >>> data.updates, data.returns, data.h_rms
    ((0,), (21.5,), (nan,))
    """
    t = thresholds if thresholds is not None else HealthThresholds()
    if not isinstance(t, HealthThresholds):
        raise TypeError(f"thresholds must be HealthThresholds, got {type(t).__name__}")
    series = _Series()
    for event in events:
        series.add(event)
    return ReportData(
        run_ids=tuple(series.run_ids),
        updates=tuple(series.updates),
        h_rms=tuple(series.h_rms),
        c_rms=tuple(series.c_rms),
        env_rms_max=tuple(series.env_rms_max),
        returns=tuple(series.returns),
        anomalies=tuple(series.anomalies),
        level_changes=tuple(series.level_changes),
        non_finite_updates=tuple(series.non_finite),
        status=series.status,
        thresholds=t,
        bad_lines=tuple(bad_lines),
    )


def build_figure(data: ReportData) -> Figure:
    """Draw the report; headless (Agg canvas), touching no global matplotlib state.

    Artists carry a ``gid`` so that tests and tools can find them: ``"h_rms"``,
    ``"c_rms"``, ``"env_rms_max"``, ``"return"`` (lines), ``"warning-band"``,
    ``"critical-band"``, ``"vanishing-band"``, ``"anomaly"`` (one vertical line per
    anomalous update), ``"anomaly-label"`` (its types), ``"anomaly-points"`` (the value
    seen, when it can be drawn), ``"non-finite"`` and ``"level-change"``.
    """
    fig = Figure(figsize=FIGURE_SIZE, dpi=FIGURE_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    health_ax, return_ax = fig.subplots(
        2, 1, sharex=True, gridspec_kw={"height_ratios": (2.2, 1.0)}
    )
    runs = ", ".join(data.run_ids) or "(no events)"
    ending = f" — {data.status}" if data.status else " — not finished"
    fig.suptitle(f"esper run {runs}{ending}")
    _draw_health(health_ax, data)
    _draw_returns(return_ax, data)
    if data.bad_lines:
        s = "" if len(data.bad_lines) == 1 else "s"
        fig.text(
            0.01,
            0.005,
            f"{len(data.bad_lines)} bad line{s} of the events file skipped",
            color="tab:red",
            fontsize=8,
        )
    return fig


def write_report(
    run_dir: str | os.PathLike[str],
    output: str | os.PathLike[str] | None = None,
    *,
    thresholds: HealthThresholds | None = None,
    on_bad_line: OnBadLine | None = None,
) -> Path:
    """Read a run's events and write its report; return where it was written.

    Args:
        run_dir: A run directory (its ``events.jsonl``) or an events file.
        output: A ``.png`` file or a ``.html`` page (the figure embedded, with tables of
            the anomalies and level changes). Default: the run directory's
            ``REPORT_FILE`` (``report.png``). Replaced atomically if it exists.
        thresholds: The thresholds to draw; pass the run's own (default: the defaults).
        on_bad_line: Called with each skipped line of the events file (the figure
            notes how many were skipped).

    Raises:
        FileNotFoundError: no such run directory or events file, or no folder to hold
            ``output`` (none is created).
        ValueError: ``output`` is neither ``.png`` nor ``.html``.
        OSError: the report cannot be written.
    """
    source = Path(run_dir)
    target = Path(output) if output is not None else _default_output(source)
    kind = _FORMATS.get(target.suffix.lower())
    if kind is None:
        raise ValueError(
            f"output: {str(target)!r} must end in .png or .html (the format follows the suffix)"
        )
    if not target.parent.is_dir():  # atomic_write would create it
        raise FileNotFoundError(
            f"output: no folder {str(target.parent)!r} to write {str(target)!r} in; create it first"
        )
    bad: list[BadLine] = []

    def skipped(line: BadLine) -> None:
        bad.append(line)
        if on_bad_line is not None:
            on_bad_line(line)

    data = collect(read_events(source, on_bad_line=skipped), thresholds)
    data = replace(data, bad_lines=tuple(bad))  # known only once the events were read
    fig = build_figure(data)
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=FIGURE_DPI)
    content = png.getvalue() if kind == "png" else _html(data, png.getvalue()).encode("utf-8")
    atomic_write(target, content)
    return target


# -- drawing --------------------------------------------------------------------------


def _draw_health(ax: Axes, data: ReportData) -> None:
    low, high = _rms_limits(data)
    ax.set_yscale("log")
    _plot_rms(ax, data)
    _draw_bands(ax, data.thresholds, low, high)
    ax.set_ylim(low, high)
    _mark_non_finite(ax, data.non_finite_updates)
    _draw_anomalies(ax, data, low, high)
    _draw_level_changes(ax, data.level_changes)
    ax.set_ylabel("RMS (log scale)")
    ax.set_title("LSTM state health", loc="left", fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="upper left", fontsize=8, ncols=3, framealpha=0.85)


def _rms_series(data: ReportData) -> dict[str, tuple[float, ...]]:
    return {"h_rms": data.h_rms, "c_rms": data.c_rms, "env_rms_max": data.env_rms_max}


def _rms_limits(data: ReportData) -> tuple[float, float]:
    """The y range: every drawable RMS and the warning and critical thresholds, with room."""
    t = data.thresholds
    values = _rms_series(data).values()
    plotted = [v for series in values for v in series if math.isfinite(v) and v > 0]
    return min([*plotted, t.warning_rms]) / 3, max([*plotted, t.critical_rms]) * 3


def _plot_rms(ax: Axes, data: ReportData) -> None:
    x = list(data.updates)
    for name, values in _rms_series(data).items():
        dashed = name == "env_rms_max"
        ax.plot(
            x,
            [v if math.isfinite(v) and v > 0 else math.nan for v in values],
            marker="." if len(x) < 60 else None,
            linewidth=1.0 if dashed else 1.4,
            linestyle="--" if dashed else "-",
            color=_COLOURS[name],
            label=_LABELS[name],
            gid=name,
        )


def _draw_bands(ax: Axes, t: HealthThresholds, low: float, high: float) -> None:
    ax.axhspan(
        t.warning_rms,
        t.critical_rms,
        color="gold",
        alpha=0.25,
        label=f"warning (> {t.warning_rms:g})",
        gid="warning-band",
    )
    ax.axhspan(
        t.critical_rms,
        high,
        color="red",
        alpha=0.15,
        label=f"critical (> {t.critical_rms:g})",
        gid="critical-band",
    )
    if low < t.vanishing_rms:
        ax.axhspan(
            low,
            t.vanishing_rms,
            color="red",
            alpha=0.15,
            label=f"vanishing (< {t.vanishing_rms:g})",
            gid="vanishing-band",
        )


def _mark_non_finite(ax: Axes, updates: tuple[int, ...]) -> None:
    if not updates:
        return
    ax.scatter(
        updates,
        [0.97] * len(updates),
        transform=ax.get_xaxis_transform(),  # x in data, y in axes fraction
        marker="X",
        s=60,
        color="black",
        zorder=5,
        label="NaN / Inf",
        gid="non-finite",
        clip_on=False,
    )


def _draw_level_changes(ax: Axes, changes: tuple[TelemetryLevelChanged, ...]) -> None:
    top = ax.get_xaxis_transform()
    for i, change in enumerate(changes):
        ax.axvline(
            change.update,
            color="tab:gray",
            linestyle=":",
            linewidth=1.2,
            gid="level-change",
            label="level change" if i == 0 else None,
        )
        ax.text(
            change.update,
            0.02,
            f"→ {change.payload.level.name}",
            transform=top,
            rotation=90,
            fontsize=7,
            color="tab:gray",
            ha="right",
            va="bottom",
            bbox=_BOX,
        )


def _draw_anomalies(ax: Axes, data: ReportData, low: float, high: float) -> None:
    if not data.anomalies:
        return
    updates = sorted({a.update for a in data.anomalies})
    for i, update in enumerate(updates):
        ax.axvline(
            update,
            color="red",
            linewidth=1.0,
            alpha=0.7,
            gid="anomaly",
            label="anomaly" if i == 0 else None,
        )
    top = ax.get_xaxis_transform()
    for update in updates[:_MAX_LABELS]:
        kinds = dict.fromkeys(
            e.payload.anomaly.type.value for e in data.anomalies if e.update == update
        )
        ax.text(
            update,
            0.9,
            ", ".join(kinds),
            transform=top,
            rotation=90,
            fontsize=7,
            color="red",
            ha="left",
            va="top",
            gid="anomaly-label",
            bbox=_BOX,
        )
    _mark_anomaly_values(ax, data.anomalies, low, high)


def _mark_anomaly_values(
    ax: Axes, anomalies: tuple[AnomalyDetected, ...], low: float, high: float
) -> None:
    """A circle at each value the detector saw, when it has a height on the log scale."""
    points = [
        (e.update, min(max(observed, low), high))
        for e in anomalies
        if math.isfinite(observed := e.payload.anomaly.observed) and observed > 0
    ]
    if not points:
        return
    ax.scatter(
        [p[0] for p in points],
        [p[1] for p in points],
        marker="o",
        s=50,
        facecolors="none",
        edgecolors="red",
        linewidths=1.5,
        zorder=6,
        gid="anomaly-points",
    )


def _draw_returns(ax: Axes, data: ReportData) -> None:
    ax.plot(list(data.updates), list(data.returns), color="tab:green", gid="return")
    for update in sorted({a.update for a in data.anomalies}):
        ax.axvline(update, color="red", linewidth=1.0, alpha=0.4)
    ax.set_xlabel("PPO update")
    ax.set_ylabel("episode return")
    ax.set_title("episode return (mean of the last 20 episodes)", loc="left", fontsize=10)
    ax.grid(True, alpha=0.3)
    if not any(math.isfinite(r) for r in data.returns):
        ax.text(
            0.5,
            0.5,
            "no finished episode logged",
            transform=ax.transAxes,
            ha="center",
            va="center",
            color="tab:gray",
        )


# -- output ---------------------------------------------------------------------------


def _html(data: ReportData, png: bytes) -> str:
    esc = html.escape
    runs = esc(", ".join(data.run_ids) or "(no events)")
    image = base64.b64encode(png).decode("ascii")
    anomaly_rows = "".join(_anomaly_row(e) for e in data.anomalies)
    level_rows = "".join(
        _table_row(
            c.update, f"{c.payload.previous.name} → {c.payload.level.name}", c.payload.reason
        )
        for c in data.level_changes
    )
    bad = "".join(f"<li>{esc(str(b))}</li>" for b in data.bad_lines)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>esper report: {runs}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:2px 8px;text-align:left}}</style></head>
<body><h1>esper report: run {runs}</h1>
<p>status: {esc(data.status or "not finished")}; {len(data.updates)} PPO updates;
thresholds: warning &gt; {data.thresholds.warning_rms:g}, critical &gt;
{data.thresholds.critical_rms:g}, vanishing &lt; {data.thresholds.vanishing_rms:g}</p>
<img alt="LSTM health and episode return against PPO update"
 src="data:image/png;base64,{image}">
<h2>Anomalies ({len(data.anomalies)})</h2>
<table><tr><th>update</th><th>type</th><th>severity</th><th>value</th></tr>{anomaly_rows}</table>
<h2>Telemetry level changes ({len(data.level_changes)})</h2>
<table><tr><th>update</th><th>change</th><th>reason</th></tr>{level_rows}</table>
{f"<h2>Skipped lines ({len(data.bad_lines)})</h2><ul>{bad}</ul>" if bad else ""}
</body></html>
"""


def _table_row(*cells: object) -> str:
    """One HTML table row, each cell's text escaped."""
    return "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>"


def _anomaly_row(event: AnomalyDetected) -> str:
    a = event.payload.anomaly
    return _table_row(event.update, a.type.value, a.severity.value, format_value(a.observed))


class _Series:
    """The numbers of a report, gathered one event at a time."""

    def __init__(self) -> None:
        self.run_ids: dict[str, None] = {}  # insertion-ordered set
        self.updates: list[int] = []
        self.h_rms: list[float] = []
        self.c_rms: list[float] = []
        self.env_rms_max: list[float] = []
        self.returns: list[float] = []
        self.anomalies: list[AnomalyDetected] = []
        self.level_changes: list[TelemetryLevelChanged] = []
        self.non_finite: list[int] = []
        self.status: str | None = None

    def add(self, event: TelemetryEvent) -> None:
        self.run_ids.setdefault(event.run_id)
        match event:
            case PPOUpdateCompleted(update=update, payload=payload):
                self.updates.append(update)
                self._add_health(update, payload.health())
                self.returns.append(payload.extra.get("return_mean", math.nan))
            case AnomalyDetected():
                self.anomalies.append(event)
            case TelemetryLevelChanged():
                self.level_changes.append(event)
            case RunFinished(payload=payload):
                self.status = payload.status

    def _add_health(self, update: int, health: LSTMHealthMetrics | None) -> None:
        if health is None:
            self.h_rms.append(math.nan)
            self.c_rms.append(math.nan)
            self.env_rms_max.append(math.nan)
            return
        env_max = _max(health.h_env_rms_max, health.c_env_rms_max)
        self.h_rms.append(health.h_rms)
        self.c_rms.append(health.c_rms)
        self.env_rms_max.append(env_max)
        values = (health.h_rms, health.c_rms, env_max)
        if health.has_nan or health.has_inf or not all(map(math.isfinite, values)):
            self.non_finite.append(update)


def _max(a: float, b: float) -> float:
    # max() with a NaN argument depends on argument order; a NaN must win here.
    if math.isnan(a) or math.isnan(b):
        return math.nan
    return max(a, b)


def _default_output(source: Path) -> Path:
    return RunLayout(source if source.is_dir() else source.parent).report
