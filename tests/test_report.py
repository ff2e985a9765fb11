"""The run report: the numbers behind the figure, its artists, the PNG/HTML files, the CLI."""

from __future__ import annotations

import io
import math
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from matplotlib.axes import Axes
from matplotlib.collections import Collection, PathCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from rich.console import Console

from esper_telemetry import compute_recurrent_health, emit_ppo_update_event
from esper_telemetry.analytics import read_events
from esper_telemetry.backends import AnalyticsCollector, AnomalyEscalator
from esper_telemetry.cli import main
from esper_telemetry.contracts import (
    EVENTS_FILE,
    REPORT_FILE,
    Anomaly,
    AnomalyDetected,
    AnomalyDetectedPayload,
    AnomalyType,
    HealthThresholds,
    PPOUpdateCompleted,
    PPOUpdatePayload,
    ReplayConsistency,
    RunLayout,
    Severity,
    TelemetryEvent,
    TelemetryLevel,
    format_value,
)
from esper_telemetry.hub import TelemetryHub
from esper_telemetry.report import (
    FIGURE_DPI,
    FIGURE_SIZE,
    ReportData,
    StateSeries,
    build_figure,
    collect,
    write_report,
)
from esper_telemetry.run import EXIT_OK, RunOptions, run_ppo
from esper_telemetry.testing import capture_events
from esper_telemetry.training.ppo import PPOConfig, train
from tests.faulty_lstm import PPO_STATS, FaultyLSTM

WIDTH, HEIGHT = int(FIGURE_SIZE[0] * FIGURE_DPI), int(FIGURE_SIZE[1] * FIGURE_DPI)
RMS = ("h_rms", "c_rms", "env_rms_max")


def record_run(run_dir: Path, updates: int, faults: dict[int, str] | None = None) -> Path:
    """A run's events.jsonl: a real LSTM, the escalator, faults at the given updates, and a
    mean return of the last 20 episodes of 10 × update in each PPO payload, declared as the
    trainer declares it."""
    with TelemetryHub("r") as hub, capture_events(hub) as recorder:
        hub.subscribe(AnomalyEscalator(escalate_for=3), mode="inline")
        lstm = FaultyLSTM(hub, faults)
        for k in range(updates):
            lstm.update(k)
    return write_run(run_dir, recorder.events, lambda k: {"episode_return_mean": 10.0 * k})


def write_run(
    run_dir: Path,
    events: list[TelemetryEvent],
    returns: Callable[[int], dict[str, Any]],
    window: int = 20,
) -> Path:
    """Write ``events`` to run_dir/events.jsonl, each PPO payload given ``returns(update)``
    (with ``episode_return_window=window`` when it declares a mean)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with AnalyticsCollector(run_dir) as collector:
        for event in events:
            if isinstance(event, PPOUpdateCompleted):
                fields = returns(event.update)
                if "episode_return_mean" in fields:
                    fields["episode_return_window"] = window
                payload = event.payload.model_dump() | fields
                event = event.model_copy(
                    update={"payload": PPOUpdatePayload.model_validate(payload)}
                )
            collector.handle(event)
    return run_dir


def record_states_run(run_dir: Path, updates: int, nan_at: int | None = None) -> Path:
    """A run with two named states: policy, a real LSTM (primary), and value, a real GRU,
    NaN at ``nan_at``; the escalator; a mean return of the last 100 episodes of update."""
    torch.manual_seed(0)
    lstm, gru = torch.nn.LSTM(3, 8), torch.nn.GRU(3, 8)
    with TelemetryHub("s") as hub, capture_events(hub) as recorder:
        hub.subscribe(AnomalyEscalator(escalate_for=3), mode="inline")
        for k in range(updates):
            with torch.no_grad():
                _, policy = lstm(torch.randn(4, 6, 3))
                _, value = gru(torch.randn(4, 6, 3))
            if k == nan_at:
                value[0, 2, 0] = math.nan
            emit_ppo_update_event(
                hub,
                update=k,
                metrics=PPO_STATS,
                recurrent_health=compute_recurrent_health({"policy": policy, "value": value}),
            )
    return write_run(run_dir, recorder.events, lambda k: {"episode_return_mean": k}, 100)


def png_size(png: Path | bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk (of a file, or of its bytes)."""
    header = (png if isinstance(png, bytes) else png.read_bytes())[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", header[16:24])
    return width, height


def health_axes(fig: Figure) -> Axes:
    """The top panel: RMS of the primary state against update."""
    return fig.axes[0]


def state_series(name: str, h: tuple[float, ...], c: tuple[float, ...] | None) -> StateSeries:
    """A state's series over updates 0, 1, ..., its env-RMS max 1.2 × the larger RMS."""
    env = tuple(1.2 * max(v) for v in zip(h, c or h, strict=True))
    return StateSeries(name=name, updates=tuple(range(len(h))), h_rms=h, c_rms=c, env_rms_max=env)


def lines_with(ax: Axes, gid: str) -> list[Line2D]:
    """The lines of ``ax`` carrying ``gid``."""
    return [line for line in ax.get_lines() if line.get_gid() == gid]


def floats(values: object) -> list[float]:
    """Matplotlib's array-like data (a line's x or y, a column of offsets) as floats."""
    return [float(v) for v in np.asarray(values, dtype=float).ravel()]


def xs(lines: list[Line2D]) -> list[float]:
    """The x position of each (vertical) line."""
    return [floats(line.get_xdata())[0] for line in lines]


def offsets_x(collection: Collection) -> list[float]:
    """The x position of each marker of a scatter."""
    return floats(np.asarray(collection.get_offsets(), dtype=float)[:, 0])


def test_collect_gathers_the_numbers_behind_the_figure(tmp_path: Path) -> None:
    """Per update the state's h_rms, c_rms and env-RMS max and the declared return with its
    window; anomalies and level changes."""
    events = list(read_events(record_run(tmp_path, 6, {2: "explode"})))
    data = collect(events)
    assert data.updates == (0, 1, 2, 3, 4, 5)
    assert (data.returns, data.return_windows) == ((0.0, 10.0, 20.0, 30.0, 40.0, 50.0), (20,))
    assert [(s.name, s.updates, s.has_cell) for s in data.states] == [
        ("policy", (0, 1, 2, 3, 4, 5), True)
    ]
    policy = data.state("policy")
    assert policy.c_rms is not None
    assert [rms > 10 for rms in policy.c_rms] == [False, False, True, False, False, False]
    assert [m >= c for m, c in zip(policy.env_rms_max, policy.c_rms, strict=True)] == [True] * 6
    assert data.anomalies == tuple(e for e in events if isinstance(e, AnomalyDetected))
    assert [(a.update, a.payload.anomaly.type) for a in data.anomalies] == [
        (2, AnomalyType.LSTM_C_EXPLOSION)
    ]
    assert [(c.update, c.payload.level) for c in data.level_changes] == [
        (2, TelemetryLevel.DEBUG),
        (5, TelemetryLevel.NORMAL),
    ]
    assert data.non_finite_updates == ()


def test_a_healthy_run_renders_a_png_of_the_expected_size_without_anomalies(
    tmp_path: Path,
) -> None:
    """A healthy run: the PNG is 1200×750 and the figure has no anomaly marker."""
    run_dir = record_run(tmp_path, 5)
    written = write_report(run_dir)
    assert written == RunLayout(run_dir).report
    assert png_size(written) == (WIDTH, HEIGHT)
    fig = build_figure(collect(read_events(run_dir)))
    assert lines_with(health_axes(fig), "anomaly") == []
    assert [len(line.get_xdata()) for line in lines_with(health_axes(fig), "h_rms")] == [5]  # type: ignore[arg-type]


def test_anomaly_markers_sit_at_the_anomalous_updates(tmp_path: Path) -> None:
    """Faults at updates 2 (explode) and 6 (nan): one red line at each, level changes marked."""
    run_dir = record_run(tmp_path, 8, {2: "explode", 6: "nan"})
    write_report(run_dir)
    assert png_size(RunLayout(run_dir).report) == (WIDTH, HEIGHT)
    data = collect(read_events(run_dir))
    ax = health_axes(build_figure(data))
    assert xs(lines_with(ax, "anomaly")) == [2.0, 6.0]
    assert xs(lines_with(ax, "level-change")) == [2.0, 5.0, 6.0]
    (points,) = [c for c in ax.collections if c.get_gid() == "anomaly-points"]
    assert isinstance(points, PathCollection)
    assert offsets_x(points) == [2.0]  # NaN has no height to mark


def test_nan_updates_are_marked_along_the_top_edge(tmp_path: Path) -> None:
    """A NaN state has no point on a log scale; an X marks its update instead."""
    data = collect(read_events(record_run(tmp_path, 4, {1: "nan"})))
    assert (data.non_finite_updates, data.state("policy").non_finite_updates) == ((1,), (1,))
    assert [math.isnan(v) for v in data.state("policy").h_rms] == [False, True, False, False]
    ax = health_axes(build_figure(data))
    (marks,) = [c for c in ax.collections if c.get_gid() == "non-finite"]
    assert offsets_x(marks) == [1.0]


def test_thresholds_are_drawn_as_bands_from_the_thresholds_given() -> None:
    """The warning band spans warning_rms..critical_rms of the thresholds passed in."""
    t = HealthThresholds(warning_rms=2.0, critical_rms=3.0)
    data = ReportData(
        run_ids=("x",),
        updates=(0, 1),
        states=(state_series("policy", (0.5, 0.6), (1.0, 1.1)),),
        returns=(math.nan, 5.0),
        return_windows=(20,),
        thresholds=t,
    )
    ax = health_axes(build_figure(data))
    bands = {p.get_gid(): p for p in ax.patches if isinstance(p, Rectangle)}
    warning = bands["warning-band"]
    assert (warning.get_y(), warning.get_y() + warning.get_height()) == (2.0, 3.0)
    assert bands["critical-band"].get_y() == 3.0
    assert ax.get_yscale() == "log"


def test_the_second_panel_plots_the_episode_return() -> None:
    """The return panel's line is the declared mean return against update, titled with the
    number of episodes it averages."""
    data = ReportData(
        run_ids=("x",),
        updates=(0, 1, 2),
        states=(state_series("policy", (0.5,) * 3, (0.5,) * 3),),
        returns=(math.nan, 12.0, 30.5),
        return_windows=(20,),
        anomalies=(
            AnomalyDetected(
                update=1,
                payload=AnomalyDetectedPayload(
                    anomaly=Anomaly(
                        type=AnomalyType.LSTM_NAN,
                        severity=Severity.CRITICAL,
                        observed=math.nan,
                        message="NaN in the LSTM state",
                    )
                ),
            ),
        ),
    )
    fig = build_figure(data)
    (line,) = lines_with(fig.axes[1], "return")
    assert floats(line.get_xdata()) == [0.0, 1.0, 2.0]
    np.testing.assert_array_equal(floats(line.get_ydata()), [math.nan, 12.0, 30.5])
    assert fig.axes[1].get_title("left") == "episode return (mean of the last 20 episodes)"


@pytest.mark.parametrize(
    ("schema_version", "fields", "returns", "windows", "title"),
    [
        (
            3,
            {"episode_return_mean": 7.5, "episode_return_window": 100},
            (7.5,),
            (100,),
            "episode return (mean of the last 100 episodes)",
        ),
        (
            2,
            {"extra": {"return_mean": 9.0}},
            (9.0,),
            (None,),
            'episode return (extra["return_mean"] of an old log: window not recorded)',
        ),
        (3, {"extra": {"return_mean": 9.0}}, (math.nan,), (), "episode return (none logged)"),
    ],
    ids=["declared", "old-log", "just-an-extra"],
)
def test_the_return_comes_from_the_declared_field_or_an_old_logs_extra(
    schema_version: int,
    fields: dict[str, Any],
    returns: tuple[float, ...],
    windows: tuple[int | None, ...],
    title: str,
) -> None:
    """The declared episode_return_mean, titled with its window; for a log written before it
    existed, extra["return_mean"], titled as such; in a newer event that extra is no return."""
    event = PPOUpdateCompleted(
        update=0,
        schema_version=schema_version,
        payload=PPOUpdatePayload(policy_loss=0.0, value_loss=0.0, entropy=0.0, **fields),
    )
    data = collect([event])
    np.testing.assert_array_equal(data.returns, returns)
    assert data.return_windows == windows
    assert build_figure(data).axes[1].get_title("left") == title


def test_an_html_report_embeds_the_figure_and_lists_the_anomalies(tmp_path: Path) -> None:
    """-o report.html: one page with the PNG inline and a table row per anomaly."""
    run_dir = record_run(tmp_path / "run", 4, {1: "inf"})
    page = write_report(run_dir, tmp_path / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert "data:image/png;base64," in page
    assert "<td>1</td><td>policy</td><td>lstm_inf</td><td>critical</td><td>inf</td>" in page
    assert "<td>policy</td><td>LSTM (h, c)</td><td>4</td>" in page
    assert "episode return: mean of the last 20 episodes" in page


def test_every_named_state_gets_its_panel_and_a_gru_no_c_line(tmp_path: Path) -> None:
    """policy (an LSTM, primary) on top, value (a GRU) below, with no c line; the NaN in value
    at update 2 is marked in value's panel only, and the HTML names the state."""
    run_dir = record_states_run(tmp_path / "run", 5, nan_at=2)
    data = collect(read_events(run_dir))
    assert [(s.name, s.has_cell, s.non_finite_updates) for s in data.states] == [
        ("policy", True, ()),
        ("value", False, (2,)),
    ]
    assert [(a.update, a.payload.anomaly.state) for a in data.anomalies] == [(2, "value")]
    fig = build_figure(data)
    policy, value, _ = fig.axes
    assert [policy.get_gid(), value.get_gid()] == ["health:policy", "health:value"]
    assert [
        [line.get_gid() for line in ax.get_lines() if line.get_gid() in RMS]
        for ax in (policy, value)
    ] == [
        ["h_rms", "c_rms", "env_rms_max"],
        ["h_rms", "env_rms_max"],
    ]
    assert value.get_legend_handles_labels()[1][:2] == ["value h_rms", "value env-RMS max (h)"]
    assert policy.get_legend_handles_labels()[1][:3] == [
        "policy h_rms",
        "policy c_rms",
        "policy env-RMS max (h or c)",
    ]
    assert [xs(lines_with(ax, "anomaly")) for ax in (policy, value)] == [[], [2.0]]
    assert [
        [offsets_x(c) for c in ax.collections if c.get_gid() == "non-finite"]
        for ax in (policy, value)
    ] == [[], [[2.0]]]
    assert [ax.get_title("left") for ax in fig.axes] == [
        "state policy (primary) — h and c",
        "state value — h only (no cell: a GRU or RNN)",
        "episode return (mean of the last 100 episodes)",
    ]
    assert png_size(write_report(run_dir)) == (WIDTH, HEIGHT)
    page = write_report(run_dir, tmp_path / "report.html").read_text()
    assert "<td>2</td><td>value</td><td>lstm_nan</td><td>critical</td><td>nan</td>" in page
    assert "<td>value</td><td>h only (GRU, RNN)</td><td>5</td>" in page


def test_a_run_without_a_recurrent_state_gets_an_empty_health_panel_that_says_so() -> None:
    """No update carried a state: no series, and one health panel saying none was logged."""
    event = PPOUpdateCompleted(
        update=0, payload=PPOUpdatePayload(policy_loss=0.0, value_loss=0.0, entropy=0.0)
    )
    data = collect([event])
    assert (data.states, data.non_finite_updates) == ((), ())
    health, _ = build_figure(data).axes
    assert (health.get_title("left"), [t.get_text() for t in health.texts]) == (
        "recurrent state health",
        ["no recurrent state logged"],
    )


def test_each_state_beyond_two_makes_the_figure_200_pixels_taller() -> None:
    """Three states: three health panels over the return panel, in a 1200 × 950 figure."""
    states = tuple(state_series(n, (0.5, 0.6), None) for n in ("a", "b", "c"))
    data = ReportData(run_ids=("x",), updates=(0, 1), states=states, returns=(1.0, 2.0))
    fig = build_figure(data)
    assert [ax.get_gid() for ax in fig.axes] == ["health:a", "health:b", "health:c", None]
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=FIGURE_DPI)
    assert png_size(png.getvalue()) == (WIDTH, HEIGHT + 200)


def test_the_report_replaces_an_old_one_and_is_readable_by_others(tmp_path: Path) -> None:
    """A second report replaces the first whole, and, like any file, others may read it."""
    run_dir = record_run(tmp_path, 2)
    target = RunLayout(run_dir).report
    target.write_bytes(b"an old report")
    write_report(run_dir)
    assert (png_size(target), target.stat().st_mode & 0o777) == ((WIDTH, HEIGHT), 0o644)
    assert sorted(p.name for p in run_dir.iterdir()) == [EVENTS_FILE, REPORT_FILE]


def test_an_output_that_is_neither_png_nor_html_is_refused(tmp_path: Path) -> None:
    """write_report(..., "x.pdf") raises ValueError naming the suffixes."""
    run_dir = record_run(tmp_path, 1)
    with pytest.raises(ValueError, match=r"must end in \.png or \.html"):
        write_report(run_dir, tmp_path / "x.pdf")


def test_esper_report_writes_the_png_into_the_run_directory(tmp_path: Path) -> None:
    """esper report RUN_DIR writes RUN_DIR/report.png and says where."""
    run_dir = record_run(tmp_path, 3)
    result = CliRunner().invoke(main, ["report", str(run_dir)])
    assert result.exit_code == 0, result.output
    assert result.output == f"wrote {RunLayout(run_dir).report}\n"
    assert png_size(RunLayout(run_dir).report) == (WIDTH, HEIGHT)


def test_esper_report_warns_about_skipped_lines(tmp_path: Path) -> None:
    """A bad line in the events file is skipped, with one warning line naming it."""
    run_dir = record_run(tmp_path, 2)
    with RunLayout(run_dir).events.open("a") as f:
        f.write("not json\n")
    result = CliRunner().invoke(main, ["report", str(run_dir), "-o", str(tmp_path / "r.png")])
    assert result.exit_code == 0, result.output
    assert "warning: skipped 1 bad line; the first: " in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{run}", "-o", "{run}/r.svg"], "must end in .png or .html"),
        (["{missing}"], "does not exist"),
    ],
)
def test_esper_report_refuses_bad_arguments(tmp_path: Path, args: list[str], message: str) -> None:
    """A wrong suffix or a missing run directory exits 2 with a message naming it."""
    run_dir = record_run(tmp_path / "run", 1)
    argv = [a.format(run=run_dir, missing=tmp_path / "missing") for a in args]
    result = CliRunner().invoke(main, ["report", *argv])
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())


def test_esper_ppo_report_writes_report_png_at_the_end_of_the_run(tmp_path: Path) -> None:
    """run_ppo with report=True leaves report.png next to events.jsonl and names it."""
    out = io.StringIO()
    options = RunOptions(
        config=PPOConfig(updates=3, envs=2, steps=8, hidden=16, epochs=1),
        run_root=tmp_path,
        run_id="rep",
        wandb="disabled",
        progress=False,
        report=True,
    )
    outcome = run_ppo(options, Console(file=out, soft_wrap=True))
    report = RunLayout(tmp_path / "rep").report
    assert (outcome.exit_code, outcome.report) == (EXIT_OK, report)
    assert png_size(report) == (WIDTH, HEIGHT)
    assert f"report           {report}" in out.getvalue()


# -- the diagnostics and the replay check (issue 15) -------------------------------------------


def test_the_state_table_holds_the_worst_diagnostics_and_replay_of_the_run(
    tmp_path: Path,
) -> None:
    """A real esper ppo run with --diagnostics: each state's row gives the largest
    saturated fraction, c growth ratio, dormant fraction, replay |diff| and drift the
    run measured, and how many updates' replay differed (none, for a correct trainer)."""
    config = PPOConfig(updates=3, envs=2, steps=8, hidden=8, epochs=2, diagnostics=True)
    with TelemetryHub("diag") as hub, capture_events(hub) as recorder:
        train(config, hub)
    run_dir = write_run(tmp_path / "run", recorder.events, lambda k: {})
    data = collect(read_events(run_dir))
    payloads = [e.payload for e in recorder.events if isinstance(e, PPOUpdateCompleted)]
    for series in data.states:
        drifts = [p.replay[series.name].drift for p in payloads]
        checked = [p.recurrent_health[series.name].diagnostics for p in payloads]
        growths = [d.c_growth_ratio for d in checked if d is not None]
        assert series.worst["drift"] == max(d for d in drifts if d is not None)
        assert series.worst["growth"] == max(g for g in growths if g is not None)
        assert series.worst["mismatched"] == 0
    page = write_report(run_dir, tmp_path / "report.html").read_text()
    assert "largest replay drift" in page
    assert format_value(data.state("value").worst["drift"]) in page


def test_a_run_without_diagnostics_shows_dashes_and_a_mismatch_is_counted(
    tmp_path: Path,
) -> None:
    """A state never checked shows "—" for every diagnostic; a replay over the
    tolerance counts as a differing update, and a NaN drift is written as nan."""
    health = compute_recurrent_health({"policy": (torch.zeros(1, 2, 4), torch.zeros(1, 2, 4))})
    mismatch = ReplayConsistency(
        max_abs_diff=0.5,
        dtype="float32",
        compared=16,
        mismatched=2,
        first_env=1,
        first_step=3,
        drift=math.nan,
    )
    events = [
        PPOUpdateCompleted(
            update=k,
            payload=PPOUpdatePayload(
                **PPO_STATS,
                recurrent_health=health,
                primary_state="policy",
                replay={"policy": mismatch} if k == 1 else {},
            ),
        )
        for k in range(3)
    ]
    (series,) = collect(events).states
    assert series.worst["mismatched"] == 1
    assert series.worst["replay_diff"] == 0.5
    assert math.isnan(series.worst["drift"])
    assert "saturated" not in series.worst
    unchecked = collect(events[:1]).states[0]
    assert unchecked.worst == {}
    run_dir = write_run(tmp_path / "run", list[TelemetryEvent](events[:1]), lambda k: {})
    page = write_report(run_dir, tmp_path / "report.html").read_text()
    row = next(line for line in page.splitlines() if line.startswith("<tr><td>policy"))
    assert row.count("<td>—</td>") >= 6


def test_the_diagnostics_panel_draws_each_figure_over_updates_with_its_threshold(
    tmp_path: Path,
) -> None:
    """A real --diagnostics run: one panel holds each state's diagnostics and replay drift
    over the updates (the values the events carried), each figure's threshold from the
    HealthThresholds given, and no mismatch mark for a correct trainer."""
    config = PPOConfig(updates=3, envs=2, steps=8, hidden=8, epochs=2, diagnostics=True)
    with TelemetryHub("panel") as hub, capture_events(hub) as recorder:
        train(config, hub)
    payloads = [e.payload for e in recorder.events if isinstance(e, PPOUpdateCompleted)]
    thresholds = HealthThresholds(c_runaway_ratio=0.7, dormant_frac=0.3)
    data = collect(recorder.events, thresholds)
    fig = build_figure(data)
    (ax,) = [a for a in fig.axes if a.get_gid() == "checks"]
    lines = {line.get_gid(): line for line in ax.get_lines()}
    for name in ("policy", "value"):
        growth = [p.recurrent_health[name].diagnostics for p in payloads]
        drawn = floats(lines[f"check:{name}:c_growth_ratio"].get_ydata())
        assert drawn == pytest.approx([d.c_growth_ratio if d else None for d in growth])
        drawn = floats(lines[f"check:{name}:replay_drift"].get_ydata())
        assert drawn == pytest.approx([p.replay[name].drift for p in payloads])
    assert floats(lines["threshold:c_growth_ratio"].get_ydata())[0] == 0.7
    assert floats(lines["threshold:dormant_frac"].get_ydata())[0] == 0.3
    assert floats(lines["threshold:replay_drift"].get_ydata())[0] == thresholds.replay_drift
    assert not [c for c in ax.collections if c.get_gid() == "replay-mismatch"]
    assert len(fig.axes) == 4  # two states, the diagnostics, the return


def test_a_replay_mismatch_is_marked_and_unmeasured_updates_leave_gaps() -> None:
    """Updates that measured nothing are NaN in the series (a gap, not a zero); the update
    whose replay exceeded the tolerance is marked; a run without any check has no panel."""
    health = compute_recurrent_health({"policy": (torch.zeros(1, 2, 4), torch.zeros(1, 2, 4))})
    checked = compute_recurrent_health(
        {"policy": (torch.zeros(1, 2, 4), torch.zeros(1, 2, 4))}, diagnostics=True
    )
    mismatch = ReplayConsistency(
        max_abs_diff=0.5, dtype="float32", compared=16, mismatched=2, first_env=1, first_step=3
    )
    events = [
        PPOUpdateCompleted(
            update=k,
            payload=PPOUpdatePayload(
                **PPO_STATS,
                recurrent_health=checked if k == 2 else health,
                primary_state="policy",
                replay={"policy": mismatch} if k == 1 else {},
            ),
        )
        for k in range(4)
    ]
    (series,) = collect(events).states
    assert series.mismatch_updates == (1,)
    dormant = series.checks["dormant_frac"]
    assert [math.isnan(v) for v in dormant] == [True, True, False, True]
    assert "replay_drift" not in series.checks  # the mismatch carried no drift
    fig = build_figure(collect(events))
    (ax,) = [a for a in fig.axes if a.get_gid() == "checks"]
    (marks,) = [c for c in ax.collections if c.get_gid() == "replay-mismatch"]
    assert np.asarray(marks.get_offsets())[:, 0].tolist() == [1]
    plain = build_figure(collect(events[:1]))
    assert not [a for a in plain.axes if a.get_gid() == "checks"]
