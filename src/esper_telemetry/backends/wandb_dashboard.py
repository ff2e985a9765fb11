"""The W&B dashboards as code: a workspace for a project's esper runs, a report for one run.

Both are built with W&B's own ``wandb-workspaces`` library (extra ``esper-telemetry[wandb]``)
and draw every chart from :class:`~esper_telemetry.backends.wandb_keys.WandbKeys`, the
layout :class:`~esper_telemetry.backends.WandBBackend` logs with, so a panel cannot name a
key the backend does not write. What they hold, in order:

==============  =============================================================================
section         panels (one set per named state, e.g. ``policy`` and ``value``)
==============  =============================================================================
LSTM health     h RMS and c RMS (log scale) with the vanishing, warning and critical
                thresholds drawn as constant lines and written in the title; the largest
                per-env RMS of h and c (with the critical line); the mean per-env RMS;
                max |h| and max |c|; the L2 norms; the NaN and Inf flags
Anomalies       the ``anomaly/table`` of every anomaly (a query panel reading the table in
                each run's summary), and the count of each :class:`AnomalyType` so far
                (over time, and the latest as bars)
PPO             one chart per ``ppo/`` statistic and the episode return
Telemetry       the telemetry level over time, the events the hub lost and dropped, its
                p99 delivery latency
==============  =============================================================================

A section whose group the layout does not log (``WandbKeys(groups=...)``) is left out.
Every line plot is drawn against ``keys.x_key`` (the update, or env steps).

W&B's line plot has no setting for a reference line, so each threshold goes in as one of
the plot's expressions, a plain number, meant to be evaluated at every x as a flat line
(W&B documents expressions over metrics, not constants: this could not be checked against
the W&B app from here, which has no network). The title names the same numbers, so the
thresholds are on the chart either way.

>>> keys = WandbKeys(prefix="esper")
>>> workspace = health_workspace("my-team", "cartpole", keys=keys)
>>> [section.name for section in workspace.sections]
['LSTM health', 'Anomalies', 'PPO', 'Telemetry']
>>> drawn = panel_keys(spec(workspace))
>>> "esper/lstm/value/c_rms" in drawn, "esper/anomaly/table" in drawn
(True, True)
"""

from __future__ import annotations

import copy
import unicodedata
import warnings
from collections.abc import Iterable, Iterator, Sequence
from decimal import Decimal
from typing import Any, Final

from esper_telemetry._extras import missing_message
from esper_telemetry.backends.wandb_keys import BAD_NAME_CHARS, PPO_KEYS, WandbKeys
from esper_telemetry.contracts import AnomalyDetected, AnomalyType, HealthThresholds
from esper_telemetry.contracts.format import format_value
from esper_telemetry.contracts.health import check_state_name

try:
    with warnings.catch_warnings():
        # wandb-workspaces 0.4 still declares pydantic-1 style validators, which pydantic
        # warns about at import: nothing an esper user can act on.
        warnings.simplefilter("ignore", DeprecationWarning)
        import wandb_workspaces.reports.v2.interface as wr  # where the classes are defined
        import wandb_workspaces.workspaces as ws
except ImportError as err:  # pragma: no cover - exercised in a test that hides the library
    raise ImportError(
        missing_message("esper_telemetry.backends.wandb_dashboard", "wandb_workspaces"),
        name="wandb_workspaces",
    ) from err

__all__ = [
    "DEFAULT_STATES",
    "DEFAULT_WORKSPACE_NAME",
    "MAX_ANOMALY_LINES",
    "anomaly_lines",
    "checked_group",
    "checked_name",
    "checked_run_id",
    "checked_states",
    "checked_workspace_name",
    "health_workspace",
    "panel_keys",
    "run_report",
    "spec",
]

#: The states drawn unless told: what ``esper ppo`` and RecurrentPPO (with its critic
#: LSTM, SB3's default) report.
DEFAULT_STATES: Final[tuple[str, ...]] = ("policy", "value")
#: The workspace's name unless told.
DEFAULT_WORKSPACE_NAME: Final = "esper: LSTM health"
#: At most this many anomalies are listed in a report's text, the first ones.
MAX_ANOMALY_LINES: Final = 50

# The health panels of one state: title, figures, which thresholds are drawn. Together they
# cover every figure of LSTMHealthMetrics (a test checks it).
_RMS_LINES = ("vanishing_rms", "warning_rms", "critical_rms")
_HEALTH_PANELS: Final = (
    ("h RMS", ("h_rms",), _RMS_LINES),
    ("c RMS", ("c_rms",), _RMS_LINES),
    ("env RMS max", ("h_env_rms_max", "c_env_rms_max"), ("critical_rms",)),
    ("env RMS mean", ("h_env_rms_mean", "c_env_rms_mean"), ()),
    ("max |h|, max |c|", ("h_max", "c_max"), ()),
    ("L2 norm of h, c", ("h_l2_total", "c_l2_total"), ()),
    ("NaN, Inf (1: present)", ("has_nan", "has_inf"), ()),
    # The diagnostics and the replay check (issue 15), where the trainer measures them.
    ("saturated fraction of h, c", ("h_saturation_frac", "c_saturation_frac"), ()),
    ("c growth ratio", ("c_growth_ratio",), ("c_runaway_ratio",)),
    ("dormant fraction of units", ("dormant_frac",), ("dormant_frac",)),
    ("replay max |diff|", ("replay_max_abs_diff",), ("replay_tolerance",)),
    ("replay mismatched steps", ("replay_mismatched",), ()),
    ("replay drift", ("replay_drift",), ("replay_drift",)),
)
_TELEMETRY_PANELS: Final = (
    ("telemetry level", ("level",)),
    ("events lost and dropped by the hub", ("lost", "dropped")),
    ("hub delivery latency p99 (ms)", ("latency_p99_ms",)),
)
# Characters W&B refuses in a run id.
_BAD_RUN_ID_CHARS = frozenset(":;,#?/'")
_TITLE_LIMIT = 128


def health_workspace(
    entity: str,
    project: str,
    *,
    name: str = DEFAULT_WORKSPACE_NAME,
    run_group: str | None = None,
    states: Sequence[str] = DEFAULT_STATES,
    thresholds: HealthThresholds | None = None,
    keys: WandbKeys | None = None,
) -> ws.Workspace:
    """The health workspace of a project's esper runs, ready to ``save()`` or to edit.

    Nothing is sent to W&B until you call ``.save()`` on it (which needs ``wandb login``);
    :func:`spec` gives its JSON without contacting W&B.

    A state without a cell (GRU, ``nn.RNN``) logs only its h figures, but a workspace
    cannot know which states have one: the c charts of such a state stay empty.

    Args:
        entity: The W&B user or team that owns the project.
        project: The W&B project the runs are in.
        name: The workspace's name in W&B.
        run_group: Show only the runs of this W&B group (``WandBBackend(group=...)``);
            None: every run of the project.
        states: The named recurrent states to draw, in order.
        thresholds: The thresholds drawn on the RMS charts; default
            ``HealthThresholds()``, the ones esper judges by unless told otherwise.
        keys: The key layout the runs were logged with (prefix, x-axis, groups);
            default ``WandbKeys()``.

    Raises:
        ValueError: an argument W&B would refuse or that names no state.
        TypeError: ``thresholds`` or ``keys`` of the wrong type.
    """
    entity, project = checked_name("entity", entity), checked_name("project", project)
    keys, thresholds, states = _checked_layout(keys, thresholds, states)
    name = checked_workspace_name(name)
    filters = "" if run_group is None else _equals("Group", checked_group(run_group))
    return ws.Workspace(
        entity=entity,
        project=project,
        name=name,
        sections=[
            ws.Section(name=title, panels=panels, is_open=title != "Telemetry")
            for title, panels in _sections(keys, thresholds, states)
        ],
        settings=ws.WorkspaceSettings(x_axis=keys.x_key),
        runset_settings=ws.RunsetSettings(filters=filters),
    )


def run_report(
    entity: str,
    project: str,
    run_id: str,
    *,
    anomalies: Sequence[str] = (),
    states: Sequence[str] = DEFAULT_STATES,
    thresholds: HealthThresholds | None = None,
    keys: WandbKeys | None = None,
) -> wr.Report:
    """A W&B report of one run: the workspace's panels, filtered to it, and its anomalies.

    Nothing is sent to W&B until you call ``.save()`` on it; :func:`spec` gives its JSON
    without contacting W&B.

    Args:
        entity: The W&B user or team that owns the project.
        project: The W&B project the run is in.
        run_id: The W&B run id (``esper ppo`` uses its own run id).
        anomalies: One short line per anomaly, for the report's text (e.g. from
            :func:`anomaly_lines`; a line break becomes a space); empty: the text says
            none were recorded.
        states, thresholds, keys: As for :func:`health_workspace`.

    Raises:
        ValueError: an argument W&B would refuse, or an anomaly that is not a string.
        TypeError: ``thresholds`` or ``keys`` of the wrong type.
    """
    entity, project = checked_name("entity", entity), checked_name("project", project)
    run_id = checked_run_id(run_id)
    keys, thresholds, states = _checked_layout(keys, thresholds, states)
    lines = _checked_lines(anomalies)
    blocks: list[Any] = [
        wr.P(
            text=f"The recurrent state of run {run_id} ({entity}/{project}) as esper logged "
            f"it, every chart against {keys.x_key}. Thresholds: {_limits(thresholds)}."
        ),
        wr.H2(text="Anomalies"),
        wr.UnorderedList(items=list(lines))
        if lines
        else wr.P(text="No anomalies were recorded in this run."),
    ]
    for title, panels in _sections(keys, thresholds, states):
        if title != "Anomalies":
            blocks.append(wr.H2(text=title))
        blocks.append(
            wr.PanelGrid(
                runsets=[
                    wr.Runset(
                        entity=entity,
                        project=project,
                        name=f"run {run_id}",
                        filters=_equals("ID", run_id),
                    )
                ],
                panels=panels,
            )
        )
    return wr.Report(
        entity=entity,
        project=project,
        title=f"esper: run {run_id}"[:_TITLE_LIMIT],
        description="LSTM health, anomalies, PPO statistics and telemetry of one run.",
        blocks=blocks,
    )


def spec(dashboard: ws.Workspace | wr.Report) -> dict[str, Any]:
    """The JSON spec of a workspace or report, as W&B would store it, without contacting W&B.

    A report's run sets name their project by entity and name only: W&B's own
    serialiser looks up the project's internal id online, which ``.save()`` still does.

    Raises:
        TypeError: ``dashboard`` is neither a Workspace nor a Report.
    """
    model: Any  # wandb-workspaces' models carry no type annotations
    if isinstance(dashboard, ws.Workspace):
        model = dashboard._to_model()
        return _dumped(model)
    if isinstance(dashboard, wr.Report):
        return _offline_report_spec(dashboard)
    raise TypeError(
        f"spec() takes a wandb_workspaces Workspace or Report, got {type(dashboard).__name__}"
    )


def panel_keys(spec_dict: Any) -> set[str]:
    """Every metric key the panels of a spec reference: their y metrics, x-axis and tables.

    Works on the spec of a workspace or a report (from :func:`spec`, or one W&B stored),
    panels found wherever they are nested. Expressions and metric regexes name no key
    and are not read.
    """
    found: set[str] = set()
    for panel in _panels(spec_dict):
        config = panel.get("config")
        if not isinstance(config, dict):
            continue
        for field in ("metrics", "yAxis"):
            value = config.get(field)
            if isinstance(value, list):
                found.update(v for v in value if isinstance(v, str))
            elif isinstance(value, str):
                found.add(value)
        if isinstance(config.get("xAxis"), str):
            found.add(config["xAxis"])
        found.update(_picked_keys(config))
    return found


def anomaly_lines(events: Iterable[object], *, limit: int = MAX_ANOMALY_LINES) -> list[str]:
    """One line per ``ANOMALY_DETECTED`` event, for :func:`run_report`'s text.

    ``events`` are a run's events (e.g. ``esper_telemetry.analytics.read_events(run_dir)``);
    others are skipped. After ``limit`` lines, one more says how many were left out.

    >>> anomaly_lines([])
    []
    """
    lines: list[str] = []
    left_out = 0
    for event in events:
        if not isinstance(event, AnomalyDetected):
            continue
        if len(lines) == limit:
            left_out += 1
            continue
        a = event.payload.anomaly
        crossed = "" if a.threshold is None else f" (threshold {format_value(a.threshold)})"
        where = f" in {a.state}" if a.state else ""
        lines.append(
            f"update {event.update}: {a.type.value}{where} ({a.severity.value}), observed "
            f"{format_value(a.observed)}{crossed} — {a.message}"
        )
    if left_out:
        lines.append(f"... and {left_out} more (esper query RUN_DIR 'SELECT * FROM anomalies')")
    return lines


# -- the panels --------------------------------------------------------------------------------


def _sections(
    keys: WandbKeys, thresholds: HealthThresholds, states: tuple[str, ...]
) -> Iterator[tuple[str, list[Any]]]:
    """The sections the layout logs, each with fresh panels (a panel has one home)."""
    if keys.logs("health"):
        yield "LSTM health", [p for s in states for p in _health_panels(keys, thresholds, s)]
    if keys.logs("anomalies"):
        yield "Anomalies", _anomaly_panels(keys)
    if keys.logs("ppo"):
        yield "PPO", [_line(keys, stat, [keys.ppo(stat)]) for stat in PPO_KEYS]
    if keys.logs("telemetry"):
        yield (
            "Telemetry",
            [
                _line(keys, title, [keys.telemetry(f) for f in figures])
                for title, figures in _TELEMETRY_PANELS
            ],
        )


def _health_panels(keys: WandbKeys, thresholds: HealthThresholds, state: str) -> list[Any]:
    panels = []
    for title, figures, lines in _HEALTH_PANELS:
        drawn = {name: _threshold(thresholds, name) for name in lines}
        named = ", ".join(f"{_short(n)} {v:g}" for n, v in drawn.items())
        panels.append(
            _line(
                keys,
                f"{state} {title}" + (f" ({named})" if named else ""),
                [keys.health(f, state=state) for f in figures],
                constants=list(drawn.values()),
                log_y="RMS" in title or "replay max" in title or None,  # spans decades
            )
        )
    return panels


def _threshold(thresholds: HealthThresholds, name: str) -> float:
    """A threshold drawn as a line; ``replay_tolerance``: float32's (the trainers')."""
    if name == "replay_tolerance":
        return thresholds.replay_tolerance("float32")
    value: float = getattr(thresholds, name)
    return value


#: How a threshold is named in a panel title, where its field's name would not read well.
_TITLE_NAMES: Final = {
    "replay_tolerance": "float32 tolerance",
    "c_runaway_ratio": "runaway",
    "dormant_frac": "threshold",
    "replay_drift": "threshold",
}


def _short(threshold: str) -> str:
    """A threshold's name in a panel title: ``critical`` for ``critical_rms``."""
    return _TITLE_NAMES.get(threshold, threshold.removesuffix("_rms"))


def _anomaly_panels(keys: WandbKeys) -> list[Any]:
    counts = [keys.anomaly_count(kind) for kind in AnomalyType]
    return [
        wr.WeavePanelSummaryTable(table_name=keys.anomaly_table, layout=wr.Layout(w=24, h=8)),
        _line(keys, "anomalies so far, by type", counts),
        wr.BarPlot(title="anomalies by type (latest count)", metrics=list(counts)),
    ]


def _line(
    keys: WandbKeys,
    title: str,
    metrics: list[str],
    *,
    constants: Sequence[float] = (),
    log_y: bool | None = None,
) -> Any:
    """A line plot of ``metrics`` on the layout's x-axis; each constant drawn as a line."""
    return wr.LinePlot(
        title=title,
        x=keys.x_key,
        y=list(metrics),
        custom_expressions=[_number_text(c) for c in constants] or None,
        log_y=log_y,
    )


def _number_text(x: float) -> str:
    """``x`` in plain decimal digits (``0.000001``, not ``1e-06``), exactly: W&B's
    expressions are not documented to read exponents."""
    return format(Decimal(repr(x)), "f")


def _limits(thresholds: HealthThresholds) -> str:
    return ", ".join(f"{n.removesuffix('_rms')} {getattr(thresholds, n):g}" for n in _RMS_LINES)


def _equals(field: str, value: str) -> str:
    """A run-set filter ``field == value``, in the filter language wandb-workspaces parses
    (Python syntax: ``repr`` quotes any value safely)."""
    return f"Metric({field!r}) == {value!r}"


# -- the spec ----------------------------------------------------------------------------------


def _dumped(model: Any) -> dict[str, Any]:
    dumped: dict[str, Any] = model.model_dump(mode="json", by_alias=True, exclude_none=True)
    return dumped


def _offline_report_spec(report: wr.Report) -> dict[str, Any]:
    """The report's spec with each run set's project named, not looked up: wandb-workspaces
    asks W&B for a project's internal id whenever a run set names its entity and project,
    so the copy serialised here names none, and the names go back in afterwards."""
    offline = copy.deepcopy(report)
    projects: dict[str, dict[str, str]] = {}
    for grid in _panel_grids(offline.blocks):
        for runset in grid.runsets:
            projects[runset._id] = {"entityName": runset.entity, "name": runset.project}
            runset.entity, runset.project = "", ""
    model: Any = offline
    dumped = _dumped(model._to_model())
    for node in _walk(dumped):
        if isinstance(node.get("runSets"), list):
            for runset_spec in node["runSets"]:
                named = projects.get(runset_spec.get("id"))
                if named and named["name"]:
                    runset_spec["project"] = dict(named)
    return dumped


def _panel_grids(blocks: Iterable[Any]) -> Iterator[Any]:
    for block in blocks:
        if isinstance(block, wr.PanelGrid):
            yield block
        yield from _panel_grids(getattr(block, "collapsed_blocks", None) or ())


def _walk(node: Any) -> Iterator[dict[str, Any]]:
    """Every dict in a JSON tree, parents first."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for item in node:
            yield from _walk(item)


def _panels(spec_dict: Any) -> Iterator[dict[str, Any]]:
    # A panel is a dict with a viewType; a Weave panel's query is searched within its config.
    return (node for node in _walk(spec_dict) if isinstance(node.get("viewType"), str))


def _picked_keys(config: dict[str, Any]) -> Iterator[str]:
    """The keys a query panel picks from a run's summary (``runs.summary['key']``)."""
    for node in _walk(config):
        if node.get("name") != "pick" or not isinstance(node.get("inputs"), dict):
            continue
        key = node["inputs"].get("key")
        if isinstance(key, dict) and isinstance(key.get("val"), str):
            yield key["val"]


# -- checks ------------------------------------------------------------------------------------


def _checked_layout(
    keys: object, thresholds: object, states: object
) -> tuple[WandbKeys, HealthThresholds, tuple[str, ...]]:
    if keys is None:
        keys = WandbKeys()
    if not isinstance(keys, WandbKeys):
        raise TypeError(f"keys must be a WandbKeys or None, got {type(keys).__name__}")
    if thresholds is None:
        thresholds = HealthThresholds()
    if not isinstance(thresholds, HealthThresholds):
        raise TypeError(
            f"thresholds must be a HealthThresholds or None, got {type(thresholds).__name__}"
        )
    return keys, thresholds, checked_states(states)


def checked_states(states: object) -> tuple[str, ...]:
    """``states`` as a tuple of distinct state names, in order; ValueError naming the bad one."""
    if isinstance(states, str) or not isinstance(states, Iterable):
        raise ValueError(
            f"states must be a list of state names such as ('policy', 'value'), got {states!r:.80}"
        )
    names: dict[str, None] = {}
    for state in states:
        try:
            names[check_state_name(state)] = None
        except ValueError as exc:
            raise ValueError(f"states: {exc}") from None
    if not names:
        raise ValueError("states must name at least one state, e.g. ('policy', 'value')")
    return tuple(names)


def checked_name(arg: str, value: object) -> str:
    """An entity or project name W&B can take; ValueError naming ``arg`` otherwise."""
    if not isinstance(value, str) or not value.strip() or value != value.strip():
        raise ValueError(
            f"{arg} must be a W&B {_ROLE[arg]} name without surrounding spaces, got {value!r:.80}"
        )
    if bad := sorted(BAD_NAME_CHARS.intersection(value)) + _controls(value):
        raise ValueError(f"{arg}: W&B names cannot contain {' '.join(bad)}, got {value!r:.80}")
    return value


_ROLE = {"entity": "user or team", "project": "project"}


def checked_workspace_name(name: object) -> str:
    """``name`` if W&B can take it as a workspace's name; ValueError saying what is wrong."""
    if not isinstance(name, str) or not name.strip() or len(name) > _TITLE_LIMIT:
        raise ValueError(
            f"name must be a non-empty string of at most {_TITLE_LIMIT} characters, "
            f"got {name!r:.80}"
        )
    # W&B refuses symbols in a workspace's name (emoji, but also '+', '|', '$', '^').
    if symbols := [ch for ch in dict.fromkeys(name) if unicodedata.category(ch)[0] == "S"]:
        raise ValueError(
            f"name: W&B workspace names cannot hold symbols (emoji, '+', '|', '$'...), got "
            f"{' '.join(symbols)!s:.40} in {name!r:.80}"
        )
    if controls := _controls(name):
        raise ValueError(f"name cannot contain {' '.join(controls)}, got {name!r:.80}")
    return name


def checked_run_id(run_id: object) -> str:
    """``run_id`` if W&B can take it as a run id; ValueError saying what is wrong otherwise."""
    if not isinstance(run_id, str) or not run_id.strip() or run_id != run_id.strip():
        raise ValueError(
            f"run_id must be a W&B run id (the last part of the run's URL) without "
            f"surrounding spaces, got {run_id!r:.80}"
        )
    if bad := sorted(_BAD_RUN_ID_CHARS.intersection(run_id)) + _controls(run_id):
        raise ValueError(f"run_id: W&B run ids cannot contain {' '.join(bad)}, got {run_id!r:.80}")
    return run_id


def checked_group(group: object) -> str:
    """``group`` if W&B can take it as a run group; ValueError saying what is wrong otherwise."""
    if not isinstance(group, str) or not group.strip() or len(group) > 128 or _controls(group):
        raise ValueError(
            "run_group must be a W&B group name of 1 to 128 characters without control "
            f"characters, or None, got {group!r:.80}"
        )
    return group


def _checked_lines(anomalies: object) -> list[str]:
    if isinstance(anomalies, str) or not isinstance(anomalies, Iterable):
        raise ValueError(
            f"anomalies must be a list of lines (one per anomaly), got {anomalies!r:.80}"
        )
    lines = list(anomalies)
    for line in lines:
        if not isinstance(line, str):
            raise ValueError(
                f"anomalies must hold strings, got {type(line).__name__}: {line!r:.80}"
            )
    # One line each: a newline would start a paragraph of its own in W&B's text.
    return [" ".join(line.split()) for line in lines]


def _controls(text: str) -> list[str]:
    return [repr(ch) for ch in dict.fromkeys(text) if ch < " " or ch == "\x7f"]
