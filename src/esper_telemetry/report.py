"""The report of one run: LSTM health against PPO update, and the episode return.

Needs the ``report`` extra: ``pip install 'esper-telemetry[report]'`` (matplotlib).

``esper report RUN_DIR`` (and ``esper ppo --report`` at the end of a run) reads the
run's ``events.jsonl`` and draws panels sharing the PPO-update axis:

* for each named recurrent state (``PPOUpdatePayload.named_health``: the primary one
  first, ``"policy"`` for logs written before states had names), one panel of its
  h_rms, c_rms and largest per-env RMS on a log scale (no c line for a state without a
  cell: a GRU or RNN), with the warning and critical thresholds as bands (the same
  ``HealthThresholds`` the detector uses), NaN/Inf updates marked along the top edge,
  each anomaly marked at its update in the panel of the state it was found in, and each
  telemetry-level change drawn as a dotted line;
* when any update measured them (``esper ppo --diagnostics``, or at DEBUG), one panel of
  the recurrent diagnostics of every state (saturated fractions of h and c, cell growth
  ratio, dormant fraction, replay drift) with each one's threshold as a dashed line of its
  colour, and each update whose replay check did not reproduce the rollout marked along
  its bottom edge;
* the mean episode return the trainer declares (``episode_return_mean``), titled with
  the number of episodes it averages (``episode_return_window``); for a log written
  before those fields existed, ``extra["return_mean"]``, whose window was not recorded.

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
from collections.abc import Iterable, Mapping, Sequence
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
from esper_telemetry._returns import LEGACY_RETURN_KEY, episode_return
from esper_telemetry.analytics import BadLine, OnBadLine, read_events
from esper_telemetry.contracts import (
    AnomalyDetected,
    HealthThresholds,
    LSTMHealthMetrics,
    PPOUpdateCompleted,
    ReplayConsistency,
    RunFinished,
    RunLayout,
    TelemetryEvent,
    TelemetryLevelChanged,
    format_value,
)

__all__ = [
    "CHECK_FIGURES",
    "FIGURE_DPI",
    "FIGURE_SIZE",
    "ReportData",
    "StateSeries",
    "build_figure",
    "collect",
    "write_report",
]

#: Size of the figure in inches for one or two recurrent states; at ``FIGURE_DPI`` the
#: PNG is 1200 x 750 pixels. Each further state makes it 2 inches (200 pixels) taller.
FIGURE_SIZE: Final = (12.0, 7.5)
FIGURE_DPI: Final = 100
_STATE_HEIGHT: Final = 2.0  # inches added for each state beyond two

_FORMATS: Final = {".png": "png", ".html": "html"}
_MAX_LABELS: Final = 30  # anomalous updates named on the figure; the rest only marked
_COLOURS: Final = {"h_rms": "tab:blue", "c_rms": "tab:orange", "env_rms_max": "tab:purple"}
_LABELS: Final = {"h_rms": "h_rms", "c_rms": "c_rms", "env_rms_max": "env-RMS max (h or c)"}
_NO_STATE: Final = "(none)"  # the panel drawn when no update carried a recurrent state
_BOX: Final = {"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 1}

#: The figures of the diagnostics panel: name -> (colour, the ``HealthThresholds`` field
#: that bounds it). All are ratios near [0, 1], so they share one linear axis.
CHECK_FIGURES: Final = {
    "h_saturation_frac": ("tab:blue", "h_saturation_frac"),
    "c_saturation_frac": ("tab:orange", "c_saturation_frac"),
    "c_growth_ratio": ("tab:brown", "c_runaway_ratio"),
    "dormant_frac": ("tab:gray", "dormant_frac"),
    "replay_drift": ("tab:purple", "replay_drift"),
}
_STATE_STYLES: Final = ("-", "--", ":", "-.")  # the line style of each state, in order


@dataclass(frozen=True)
class StateSeries:
    """The figures of one named recurrent state, one entry per update that carried it.

    Attributes:
        name: The state's name (``"policy"`` in logs written before states had names).
        updates: The PPO updates that carried this state, in file order.
        h_rms: RMS of h at each of those updates.
        c_rms: RMS of c; None for a state without a cell (GRU, RNN).
        env_rms_max: The largest per-env RMS of h or c (of h alone without a cell; NaN
            when either is NaN).
        non_finite_updates: The updates whose state held NaN or Inf (or whose RMS
            overflowed): they have no point on a log scale and are marked instead.
        worst: Over the run, the largest of each diagnostic and replay figure measured
            (``saturated``: of h's and c's fractions; ``growth``, ``dormant``,
            ``replay_diff``, ``drift``; a NaN counts only where nothing else was
            measured), and ``mismatched``: how many updates' replay check differed by
            more than the tolerance. A figure never measured is absent.
        checks: Each diagnostic and replay figure over the run, one value per entry of
            ``updates`` (NaN where that update did not measure it), keyed by the names in
            ``CHECK_FIGURES``; a figure no update measured is absent.
        mismatch_updates: The updates whose replay check differed by more than the
            tolerance of its dtype (``HealthThresholds.is_replay_mismatch``).
    """

    name: str
    updates: tuple[int, ...]
    h_rms: tuple[float, ...]
    c_rms: tuple[float, ...] | None
    env_rms_max: tuple[float, ...]
    non_finite_updates: tuple[int, ...] = ()
    worst: Mapping[str, float] = field(default_factory=dict)
    checks: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    mismatch_updates: tuple[int, ...] = ()

    @property
    def has_cell(self) -> bool:
        """True for an LSTM state (h and c), False for a GRU or RNN state."""
        return self.c_rms is not None


@dataclass(frozen=True)
class ReportData:
    """The numbers behind a report, one entry per PPO update (in file order).

    Attributes:
        run_ids: The runs whose events were read (usually one).
        updates: The PPO update of each point.
        states: Every named recurrent state, the primary one first, then in the order
            they first appear; empty when no update carried one.
        returns: The mean episode return of each update (NaN where it reports none, and
            before the first finished episode).
        return_windows: How many episodes those means average, each window once in
            order of appearance; None for ``extra["return_mean"]`` of a log written
            before the declared fields (its window was not recorded). Empty when no
            update reports a return.
        anomalies: Every ``AnomalyDetected`` event, in file order.
        level_changes: Every ``TelemetryLevelChanged`` event, in file order.
        status: How the run ended (RUN_FINISHED), or None when it has not.
        thresholds: The thresholds drawn as bands.
        bad_lines: Lines of the events file that were skipped.
    """

    run_ids: tuple[str, ...]
    updates: tuple[int, ...]
    states: tuple[StateSeries, ...]
    returns: tuple[float, ...]
    return_windows: tuple[int | None, ...] = ()
    anomalies: tuple[AnomalyDetected, ...] = ()
    level_changes: tuple[TelemetryLevelChanged, ...] = ()
    status: str | None = None
    thresholds: HealthThresholds = field(default_factory=HealthThresholds)
    bad_lines: tuple[BadLine, ...] = ()

    def state(self, name: str) -> StateSeries:
        """The series of the state called ``name``.

        Raises:
            KeyError: no update carried a state of that name.
        """
        for series in self.states:
            if series.name == name:
                return series
        raise KeyError(f"no state {name!r} in the report; it has {[s.name for s in self.states]}")

    @property
    def non_finite_updates(self) -> tuple[int, ...]:
        """The updates at which any state held NaN or Inf, in order."""
        return tuple(sorted({u for s in self.states for u in s.non_finite_updates}))


def collect(
    events: Iterable[TelemetryEvent],
    thresholds: HealthThresholds | None = None,
    *,
    bad_lines: Iterable[BadLine] = (),
) -> ReportData:
    """Gather the numbers of a report from a run's events.

    >>> from esper_telemetry.contracts import PPOUpdateCompleted, PPOUpdatePayload
    >>> e = PPOUpdateCompleted(update=0, payload=PPOUpdatePayload(policy_loss=0.1,
    ...     value_loss=0.2, entropy=0.6, episode_return_mean=21.5, episode_return_window=20))
    >>> data = collect([e])
    >>> data.updates, data.returns, data.return_windows, data.states
    ((0,), (21.5,), (20,), ())
    """
    t = thresholds if thresholds is not None else HealthThresholds()
    if not isinstance(t, HealthThresholds):
        raise TypeError(f"thresholds must be HealthThresholds, got {type(t).__name__}")
    series = _Series(t)
    for event in events:
        series.add(event)
    return ReportData(
        run_ids=tuple(series.run_ids),
        updates=tuple(series.updates),
        states=series.states(),
        returns=tuple(series.returns),
        return_windows=tuple(series.windows),
        anomalies=tuple(series.anomalies),
        level_changes=tuple(series.level_changes),
        status=series.status,
        thresholds=t,
        bad_lines=tuple(bad_lines),
    )


def build_figure(data: ReportData) -> Figure:
    """Draw the report; headless (Agg canvas), touching no global matplotlib state.

    One panel per recurrent state (the primary one on top; each state's axes have the
    gid ``"health:<name>"``), all on the same log scale, then the return panel. Artists carry
    a ``gid`` so that tests and tools can find them: in a state's panel ``"h_rms"``,
    ``"c_rms"`` (not for a state without a cell), ``"env_rms_max"`` (lines),
    ``"warning-band"``, ``"critical-band"``, ``"vanishing-band"``, ``"anomaly"`` (one
    vertical line per update with an anomaly in that state), ``"anomaly-label"`` (its
    types), ``"anomaly-points"`` (the value seen, when it can be drawn), ``"non-finite"``
    and ``"level-change"``; in the diagnostics panel (axes gid ``"checks"``, drawn only
    when some update measured a figure of ``CHECK_FIGURES``) ``"check:<state>:<figure>"``
    (lines), ``"threshold:<figure>"`` and ``"replay-mismatch"``; in the return panel
    ``"return"``.
    """
    names = [s.name for s in data.states] or [_NO_STATE]
    extra = max(len(names) - 2, 0) * _STATE_HEIGHT
    fig = Figure(
        figsize=(FIGURE_SIZE[0], FIGURE_SIZE[1] + extra), dpi=FIGURE_DPI, layout="constrained"
    )
    FigureCanvasAgg(fig)
    checked = any(s.checks or s.mismatch_updates for s in data.states)
    ratios = (2.2,) if len(names) == 1 else (1.6,) * len(names)
    ratios = (*ratios, *((1.3,) if checked else ()), 1.0)
    *health_axes, return_ax = fig.subplots(
        len(ratios), 1, sharex=True, gridspec_kw={"height_ratios": ratios}
    )
    if checked:
        _draw_checks(health_axes.pop(), data)
    runs = ", ".join(data.run_ids) or "(no events)"
    ending = f" — {data.status}" if data.status else " — not finished"
    fig.suptitle(f"esper run {runs}{ending}")
    limits = _rms_limits(data)
    anomalies = _anomalies_by_state(data)
    for i, ax in enumerate(health_axes):
        series = data.states[i] if data.states else None
        _draw_health(ax, data, series, anomalies.get(names[i], ()), limits, top=i == 0)
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
            the recurrent states, the anomalies and the level changes). Default: the run directory's
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


def _draw_health(
    ax: Axes,
    data: ReportData,
    series: StateSeries | None,
    anomalies: tuple[AnomalyDetected, ...],
    limits: tuple[float, float],
    *,
    top: bool,
) -> None:
    """One state's panel (``series`` None: the empty panel of a run without a state).

    Every panel has the bands and the level changes; the top one names them in its
    legend and writes the new level beside each change.
    """
    low, high = limits
    ax.set_yscale("log")
    if series is not None:
        ax.set_gid(f"health:{series.name}")
        _plot_rms(ax, series)
        _mark_non_finite(ax, series.non_finite_updates)
    _draw_bands(ax, data.thresholds, low, high, top)
    ax.set_ylim(low, high)
    _draw_anomalies(ax, anomalies, low, high)
    _draw_level_changes(ax, data.level_changes, top)
    ax.set_ylabel("RMS (log scale)")
    ax.set_title(_health_title(data, series), loc="left", fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    if series is None:
        ax.text(
            0.5,
            0.5,
            "no recurrent state logged",
            transform=ax.transAxes,
            ha="center",
            va="center",
            color="tab:gray",
        )
    if ax.get_legend_handles_labels()[1]:
        ax.legend(loc="upper left", fontsize=8, ncols=3, framealpha=0.85)


def _health_title(data: ReportData, series: StateSeries | None) -> str:
    if series is None:
        return "recurrent state health"
    primary = " (primary)" if len(data.states) > 1 and series is data.states[0] else ""
    kind = "h and c" if series.has_cell else "h only (no cell: a GRU or RNN)"
    return f"state {series.name}{primary} — {kind}"


def _anomalies_by_state(data: ReportData) -> dict[str, tuple[AnomalyDetected, ...]]:
    """The anomalies of each state's panel: those naming no state, or a state no update
    carried, go to the primary (top) one."""
    names = {s.name for s in data.states}
    first = data.states[0].name if data.states else _NO_STATE
    by_state: dict[str, list[AnomalyDetected]] = {}
    for e in data.anomalies:
        state = e.payload.anomaly.state
        by_state.setdefault(state if state in names else first, []).append(e)
    return {name: tuple(events) for name, events in by_state.items()}


def _rms_series(s: StateSeries) -> dict[str, tuple[float, ...]]:
    rms = {"h_rms": s.h_rms, "c_rms": s.c_rms, "env_rms_max": s.env_rms_max}
    return {name: values for name, values in rms.items() if values is not None}


def _rms_limits(data: ReportData) -> tuple[float, float]:
    """The y range of every state's panel: every drawable RMS of every state and the
    warning and critical thresholds, with room."""
    t = data.thresholds
    plotted = [
        v
        for s in data.states
        for values in _rms_series(s).values()
        for v in values
        if math.isfinite(v) and v > 0
    ]
    return min([*plotted, t.warning_rms]) / 3, max([*plotted, t.critical_rms]) * 3


def _plot_rms(ax: Axes, s: StateSeries) -> None:
    x = list(s.updates)
    for name, values in _rms_series(s).items():
        dashed = name == "env_rms_max"
        label = _LABELS[name] if s.has_cell else _LABELS[name].replace("h or c", "h")
        ax.plot(
            x,
            [v if math.isfinite(v) and v > 0 else math.nan for v in values],
            marker="." if len(x) < 60 else None,
            linewidth=1.0 if dashed else 1.4,
            linestyle="--" if dashed else "-",
            color=_COLOURS[name],
            label=f"{s.name} {label}",
            gid=name,
        )


def _draw_bands(ax: Axes, t: HealthThresholds, low: float, high: float, legend: bool) -> None:
    ax.axhspan(
        t.warning_rms,
        t.critical_rms,
        color="gold",
        alpha=0.25,
        label=f"warning (> {t.warning_rms:g})" if legend else None,
        gid="warning-band",
    )
    ax.axhspan(
        t.critical_rms,
        high,
        color="red",
        alpha=0.15,
        label=f"critical (> {t.critical_rms:g})" if legend else None,
        gid="critical-band",
    )
    if low < t.vanishing_rms:
        ax.axhspan(
            low,
            t.vanishing_rms,
            color="red",
            alpha=0.15,
            label=f"vanishing (< {t.vanishing_rms:g})" if legend else None,
            gid="vanishing-band",
        )


def _mark_non_finite(ax: Axes, updates: tuple[int, ...]) -> None:
    _mark_updates(ax, updates, 0.97, "X", "black", label="NaN / Inf", gid="non-finite")


def _mark_updates(
    ax: Axes,
    updates: Sequence[int],
    height: float,
    marker: str,
    color: str,
    *,
    label: str,
    gid: str,
) -> None:
    """One marker per update at ``height`` (a fraction of the axes, whatever the scale)."""
    if not updates:
        return
    ax.scatter(
        updates,
        [height] * len(updates),
        transform=ax.get_xaxis_transform(),  # x in data, y in axes fraction
        marker=marker,
        s=55,
        color=color,
        zorder=5,
        label=label,
        gid=gid,
        clip_on=False,
    )


def _draw_level_changes(
    ax: Axes, changes: tuple[TelemetryLevelChanged, ...], labelled: bool
) -> None:
    """A dotted line at each level change; the new level written beside it when ``labelled``."""
    top = ax.get_xaxis_transform()
    for i, change in enumerate(changes):
        ax.axvline(
            change.update,
            color="tab:gray",
            linestyle=":",
            linewidth=1.2,
            gid="level-change",
            label="level change" if i == 0 and labelled else None,
        )
        if not labelled:
            continue
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


def _draw_anomalies(
    ax: Axes, anomalies: tuple[AnomalyDetected, ...], low: float, high: float
) -> None:
    if not anomalies:
        return
    updates = sorted({a.update for a in anomalies})
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
        kinds = dict.fromkeys(e.payload.anomaly.type.value for e in anomalies if e.update == update)
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
    _mark_anomaly_values(ax, anomalies, low, high)


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


def _draw_checks(ax: Axes, data: ReportData) -> None:
    """The diagnostics panel: every measured figure of every state, each threshold once."""
    ax.set_gid("checks")
    drawn: dict[str, None] = {}  # the figures drawn, in order
    highest = 1.0
    for i, s in enumerate(data.states):
        style = _STATE_STYLES[i % len(_STATE_STYLES)]
        for name, values in s.checks.items():
            drawn.setdefault(name)
            finite = [v for v in values if math.isfinite(v)]
            highest = max([highest, *finite])
            ax.plot(
                list(s.updates),
                list(values),
                linestyle=style,
                linewidth=1.2,
                marker="." if len(values) < 60 else None,
                color=CHECK_FIGURES[name][0],
                label=f"{s.name} {name}",
                gid=f"check:{s.name}:{name}",
            )
    for name in drawn:
        colour, field_name = CHECK_FIGURES[name]
        bound = getattr(data.thresholds, field_name)
        ax.axhline(
            bound,
            color=colour,
            linestyle=(0, (4, 4)),
            linewidth=0.9,
            alpha=0.8,
            gid=f"threshold:{name}",
        )
        highest = max(highest, bound)
    mismatched = sorted({u for s in data.states for u in s.mismatch_updates})
    _mark_updates(ax, mismatched, 0.03, "^", "red", label="replay mismatch", gid="replay-mismatch")
    ax.set_ylim(0.0, highest * 1.1)
    ax.set_ylabel("fraction / ratio")
    ax.set_title("recurrent diagnostics (dashed: thresholds)", loc="left", fontsize=10)
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[1]:
        # Beside the panel: inside, ten lines' names would hide the lines.
        ax.legend(loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=7, framealpha=0.85)


def _draw_returns(ax: Axes, data: ReportData) -> None:
    ax.plot(list(data.updates), list(data.returns), color="tab:green", gid="return")
    for update in sorted({a.update for a in data.anomalies}):
        ax.axvline(update, color="red", linewidth=1.0, alpha=0.4)
    ax.set_xlabel("PPO update")
    ax.set_ylabel("episode return")
    ax.set_title(f"episode return ({_return_words(data)})", loc="left", fontsize=10)
    ax.grid(True, alpha=0.3)
    if not any(math.isfinite(r) for r in data.returns):
        ax.text(
            0.5,
            0.5,
            "no finished episode logged" if data.return_windows else "no episode return logged",
            transform=ax.transAxes,
            ha="center",
            va="center",
            color="tab:gray",
        )


def _return_words(data: ReportData) -> str:
    """What the returns are: "mean of the last 20 episodes", or where they come from."""
    windows = [w for w in data.return_windows if w is not None]
    parts = []
    if windows:
        parts.append(f"mean of the last {' or '.join(map(str, windows))} episodes")
    if None in data.return_windows:
        parts.append(f'extra["{LEGACY_RETURN_KEY}"] of an old log: window not recorded')
    return "; ".join(parts) or "none logged"


# -- output ---------------------------------------------------------------------------


def _html(data: ReportData, png: bytes) -> str:
    esc = html.escape
    runs = esc(", ".join(data.run_ids) or "(no events)")
    image = base64.b64encode(png).decode("ascii")
    anomaly_rows = "".join(_anomaly_row(e) for e in data.anomalies)
    state_rows = "".join(_state_row(s, data) for s in data.states)
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
{data.thresholds.critical_rms:g}, vanishing &lt; {data.thresholds.vanishing_rms:g};
episode return: {esc(_return_words(data))}</p>
<img alt="LSTM health and episode return against PPO update"
 src="data:image/png;base64,{image}">
<h2>Recurrent states ({len(data.states)})</h2>
<table><tr><th>state</th><th>kind</th><th>updates</th><th>last h_rms</th><th>last c_rms</th>
<th>largest h_rms</th><th>largest c_rms</th><th>NaN/Inf updates</th><th>anomalies</th>
<th>largest saturated fraction</th><th>largest c growth ratio</th>
<th>largest dormant fraction</th><th>largest replay |diff|</th>
<th>updates whose replay differs</th><th>largest replay drift</th></tr>
{state_rows}</table>
<h2>Anomalies ({len(data.anomalies)})</h2>
<table><tr><th>update</th><th>state</th><th>type</th><th>severity</th><th>value</th></tr>
{anomaly_rows}</table>
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
    state = format_value(None) if a.state is None else a.state  # "—": no state named
    return _table_row(event.update, state, a.type.value, a.severity.value, format_value(a.observed))


def _state_row(s: StateSeries, data: ReportData) -> str:
    """One state's row: its kind, how often it was measured, its last and largest RMS."""
    primary = " (primary)" if len(data.states) > 1 and s is data.states[0] else ""
    c = s.c_rms or ()
    found = len(_anomalies_by_state(data).get(s.name, ()))
    return _table_row(
        f"{s.name}{primary}",
        "LSTM (h, c)" if s.has_cell else "h only (GRU, RNN)",
        len(s.updates),
        format_value(s.h_rms[-1] if s.h_rms else None),
        format_value(c[-1] if c else None),
        format_value(_largest(s.h_rms)),
        format_value(_largest(c)),
        len(s.non_finite_updates),
        found,
        *(format_value(s.worst.get(key)) for key in ("saturated", "growth", "dormant")),
        format_value(s.worst.get("replay_diff")),
        format_value(None if "mismatched" not in s.worst else int(s.worst["mismatched"])),
        format_value(s.worst.get("drift")),
    )


def _largest(values: Iterable[float]) -> float | None:
    """The largest value that is not NaN (inf counts); None when there is none."""
    return max((v for v in values if not math.isnan(v)), default=None)


class _Series:
    """The numbers of a report, gathered one event at a time."""

    def __init__(self, thresholds: HealthThresholds) -> None:
        self.thresholds = thresholds
        self.run_ids: dict[str, None] = {}  # insertion-ordered set
        self.updates: list[int] = []
        self.by_state: dict[str, _StatePoints] = {}  # primary first: see _add_states
        self.returns: list[float] = []
        self.windows: dict[int | None, None] = {}  # insertion-ordered set
        self.anomalies: list[AnomalyDetected] = []
        self.level_changes: list[TelemetryLevelChanged] = []
        self.status: str | None = None

    def add(self, event: TelemetryEvent) -> None:
        self.run_ids.setdefault(event.run_id)
        match event:
            case PPOUpdateCompleted(update=update, payload=payload):
                self.updates.append(update)
                for name, health in payload.named_health().items():
                    points = self.by_state.setdefault(name, _StatePoints(self.thresholds))
                    points.add(update, health, payload.replay.get(name))
                r = episode_return(event)
                self.returns.append(math.nan if r is None else r.mean)
                if r is not None:
                    self.windows.setdefault(r.window)
            case AnomalyDetected():
                self.anomalies.append(event)
            case TelemetryLevelChanged():
                self.level_changes.append(event)
            case RunFinished(payload=payload):
                self.status = payload.status

    def states(self) -> tuple[StateSeries, ...]:
        return tuple(points.series(name) for name, points in self.by_state.items())


class _StatePoints:
    """One state's figures, gathered one update at a time."""

    def __init__(self, thresholds: HealthThresholds) -> None:
        self.thresholds = thresholds
        self.worst: dict[str, float] = {}
        self.updates: list[int] = []
        self.h_rms: list[float] = []
        self.c_rms: list[float] = []
        self.has_cell = False
        self.env_rms_max: list[float] = []
        self.non_finite: list[int] = []
        self.checks: dict[str, list[float]] = {}
        self.mismatches: list[int] = []

    def add(self, update: int, health: LSTMHealthMetrics, replay: ReplayConsistency | None) -> None:
        if replay is not None and self.thresholds.is_replay_mismatch(replay):
            self.mismatches.append(update)
        self._add_checks(health, replay)
        self._add_figures(len(self.updates), health, replay)
        c_rms, c_env = health.c_rms, health.c_env_rms_max
        self.has_cell |= c_rms is not None
        env_max = health.h_env_rms_max if c_env is None else _max(health.h_env_rms_max, c_env)
        self.updates.append(update)
        self.h_rms.append(health.h_rms)
        self.c_rms.append(math.nan if c_rms is None else c_rms)
        self.env_rms_max.append(env_max)
        values = (health.h_rms, env_max) if c_rms is None else (health.h_rms, c_rms, env_max)
        if health.has_nan or health.has_inf or not all(map(math.isfinite, values)):
            self.non_finite.append(update)

    def _add_checks(self, health: LSTMHealthMetrics, replay: ReplayConsistency | None) -> None:
        d = health.diagnostics
        found: dict[str, float | None] = {}
        if d is not None:
            found["saturated"] = _larger(d.h_saturation_frac, d.c_saturation_frac)
            found["growth"] = d.c_growth_ratio
            found["dormant"] = d.dormant_frac
        if replay is not None:
            found["replay_diff"] = replay.max_abs_diff
            found["drift"] = replay.drift
            self.worst["mismatched"] = float(len(self.mismatches))  # updates that differed
        for key, value in found.items():
            if value is not None:
                self.worst[key] = _larger(self.worst.get(key), value)

    def _add_figures(
        self, index: int, health: LSTMHealthMetrics, replay: ReplayConsistency | None
    ) -> None:
        """Extend each figure's series by this update's value (NaN: not measured)."""
        d = health.diagnostics
        values: dict[str, float | None] = {"replay_drift": replay.drift if replay else None}
        if d is not None:
            values |= {
                "h_saturation_frac": d.h_saturation_frac,
                "c_saturation_frac": d.c_saturation_frac,
                "c_growth_ratio": d.c_growth_ratio,
                "dormant_frac": d.dormant_frac,
            }
        for name in CHECK_FIGURES:
            value = values.get(name)
            if value is None and name not in self.checks:
                continue
            series = self.checks.setdefault(name, [math.nan] * index)
            series.append(math.nan if value is None else value)

    def series(self, name: str) -> StateSeries:
        return StateSeries(
            name=name,
            updates=tuple(self.updates),
            h_rms=tuple(self.h_rms),
            c_rms=tuple(self.c_rms) if self.has_cell else None,
            env_rms_max=tuple(self.env_rms_max),
            non_finite_updates=tuple(self.non_finite),
            worst=dict(self.worst),
            checks={k: tuple(v) for k, v in self.checks.items()},
            mismatch_updates=tuple(self.mismatches),
        )


def _larger(a: float | None, b: float | None) -> float:
    """The larger of two figures, either possibly missing (None) or NaN: a number wins
    over NaN, which is kept only when nothing else was measured."""
    numbers = [v for v in (a, b) if v is not None and not math.isnan(v)]
    return max(numbers) if numbers else math.nan


def _max(a: float, b: float) -> float:
    # max() with a NaN argument depends on argument order; a NaN must win here.
    if math.isnan(a) or math.isnan(b):
        return math.nan
    return max(a, b)


def _default_output(source: Path) -> Path:
    return RunLayout(source if source.is_dir() else source.parent).report
