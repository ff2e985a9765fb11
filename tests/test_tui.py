"""The live panel, driven headless with Textual's pilot: values, verdicts, keys, watch, --tui."""

from __future__ import annotations

import asyncio
import io
import math
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console
from rich.text import Span, Text
from textual.pilot import Pilot
from textual.widgets import DataTable, Static

from esper_telemetry import compute_recurrent_health, emit_ppo_update_event
from esper_telemetry.analytics import read_events
from esper_telemetry.backends import AnalyticsCollector, AnomalyEscalator
from esper_telemetry.cli import main
from esper_telemetry.contracts import (
    STATUS_COLOUR,
    Anomaly,
    AnomalyDetected,
    AnomalyDetectedPayload,
    AnomalyType,
    HealthStatus,
    HealthThresholds,
    LSTMHealthMetrics,
    PPOUpdateCompleted,
    PPOUpdatePayload,
    RecurrentDiagnostics,
    ReplayConsistency,
    RunFinished,
    RunFinishedPayload,
    RunLayout,
    Severity,
    TelemetryEvent,
    health_status,
)
from esper_telemetry.hub import TelemetryHub
from esper_telemetry.run import EXIT_INTERRUPTED, EXIT_OK, RunOptions, run_ppo
from esper_telemetry.training.ppo import PPOConfig
from esper_telemetry.tui import (
    HealthPanel,
    LogFollower,
    PanelBackend,
    format_value,
    subscribe_panel,
)
from esper_telemetry.tui._format import sparkline, status_text
from esper_telemetry.tui._state import PanelState
from tests.faulty_lstm import FaultyLSTM

SIZE = (140, 40)
HEALTHY = {
    "h_l2_total": 2.0,
    "c_l2_total": 4.0,
    "h_rms": 0.2134,
    "c_rms": 0.5,
    "h_env_rms_mean": 0.2,
    "h_env_rms_max": 0.31,
    "c_env_rms_mean": 0.45,
    "c_env_rms_max": 0.7,
    "h_max": 0.9,
    "c_max": 2.5,
    "has_nan": False,
    "has_inf": False,
}


#: A GRU state: h alone, every c figure None.
GRU = {**HEALTHY, **dict.fromkeys(LSTMHealthMetrics.CELL_FIGURES), "h_rms": 0.4, "h_max": 1.25}

PPO_STATS: dict[str, Any] = {
    "policy_loss": -0.0123,
    "value_loss": 0.5,
    "entropy": 0.69,
    "approx_kl": 1.5e-5,
}


def ppo_event(update: int, seq: int | None = None, **health: Any) -> PPOUpdateCompleted:
    """A PPO update with the HEALTHY state, changed by ``health``, and a declared return."""
    values = {**HEALTHY, **health}
    return PPOUpdateCompleted(
        run_id="t",
        seq=update if seq is None else seq,
        update=update,
        payload=PPOUpdatePayload(
            **PPO_STATS,
            env_steps=256 * (update + 1),
            episode_return_mean=21.5,
            episode_return_window=20,
            extra={"episodes": 7.0},
            **{f"lstm_{k}": v for k, v in values.items()},
        ),
    )


def states_event(
    update: int, states: dict[str, dict[str, Any]], primary: str = "policy"
) -> PPOUpdateCompleted:
    """A PPO update carrying the named states given (their figures by name)."""
    return PPOUpdateCompleted(
        run_id="t",
        seq=update,
        update=update,
        payload=PPOUpdatePayload(
            **PPO_STATS,
            recurrent_health={name: LSTMHealthMetrics(**v) for name, v in states.items()},
            primary_state=primary,
        ),
    )


def bold(status: HealthStatus) -> str:
    """The style a status word takes: its colour from STATUS_COLOUR, in bold."""
    return f"bold {STATUS_COLOUR[status]}"


def drive(
    app: HealthPanel, script: Callable[[Pilot[None]], Awaitable[None]], size: tuple[int, int] = SIZE
) -> None:
    """Run ``script`` against the panel, headless."""

    async def go() -> None:
        async with app.run_test(size=size) as pilot:
            await script(pilot)

    asyncio.run(go())


async def settle(pilot: Pilot[Any], condition: Callable[[], bool], timeout: float = 10) -> None:
    """Let the panel work until ``condition()`` holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the panel never reached the expected state"
        await pilot.pause(0.02)


async def show(pilot: Pilot[None], app: HealthPanel, *events: TelemetryEvent) -> None:
    """Post events as a backend would and wait until the panel has drawn them."""
    before = app.state.events_seen
    app.post_message(HealthPanel.Telemetry(events))
    await settle(pilot, lambda: app.state.events_seen == before + len(events) and app.shows_latest)


def cell(app: HealthPanel, table: str, row: str, column: str) -> Text:
    """A cell of one of the panel's tables, as Rich text."""
    value = app.query_one(f"#{table}", DataTable).get_cell(row, column)
    return value if isinstance(value, Text) else Text(str(value))


def static_text(app: HealthPanel, name: str) -> str:
    """The plain text of one of the panel's Static widgets."""
    return str(app.query_one(f"#{name}", Static).render())


def rows(app: HealthPanel, table: str) -> list[list[str]]:
    """Every row of a table, as plain strings."""
    t = app.query_one(f"#{table}", DataTable)
    return [[str(c) for c in t.get_row_at(i)] for i in range(t.row_count)]


AutoPilot = Callable[[Pilot[object]], Coroutine[Any, Any, None]]


def headless_with(monkeypatch: pytest.MonkeyPatch, pilot_script: AutoPilot) -> None:
    """Make HealthPanel.run headless, driven by ``pilot_script`` (no terminal in tests)."""
    original = HealthPanel.run

    def run(self: HealthPanel, **kwargs: Any) -> None:
        return original(self, headless=True, size=SIZE, auto_pilot=pilot_script)

    monkeypatch.setattr(HealthPanel, "run", run)


# -- formatting ---------------------------------------------------------------------------


def test_values_have_three_decimals_and_scientific_notation_when_tiny_or_huge() -> None:
    """0.2134 reads 0.213; 2.5e-7 and 3.2e6 read in scientific notation."""
    assert [format_value(v) for v in (0.2134, 7.0, 2.5e-7, 3.2e6, 0.0)] == [
        "0.213",
        "7.000",
        "2.500e-07",
        "3.200e+06",
        "0.000",
    ]


def test_non_finite_values_are_written_exactly() -> None:
    """NaN and infinities read "nan", "inf" and "-inf", never a number."""
    assert [format_value(v) for v in (math.nan, math.inf, -math.inf)] == ["nan", "inf", "-inf"]


def test_status_words_take_their_colour_from_status_colour() -> None:
    """Each verdict is its word, in bold, in the colour STATUS_COLOUR gives it."""
    assert [(t.plain, str(t.style)) for t in map(status_text, HealthStatus)] == [
        (s.value, f"bold {STATUS_COLOUR[s]}") for s in HealthStatus
    ]


SPARK_VALUES = st.one_of(
    st.floats(min_value=0.0, max_value=1e4),
    st.sampled_from([0.0, 1e-9, 5.0, 10.0, math.nan, math.inf, -math.inf]),
)


@given(st.lists(SPARK_VALUES, min_size=1, max_size=12))
def test_each_sparkline_bar_is_coloured_by_the_verdict_on_its_value(values: list[float]) -> None:
    """Bar k has the colour STATUS_COLOUR gives HealthThresholds.status(values[k])."""
    t = HealthThresholds()
    line = sparkline(values, t)
    expected = [
        Span(k, k + 1, ("bold " if not math.isfinite(v) else "") + STATUS_COLOUR[t.status(v)])
        for k, v in enumerate(values)
    ]
    assert line.spans == expected


HEALTH_VALUES = st.one_of(
    st.floats(min_value=0.0, max_value=100.0),
    st.sampled_from([0.0, 1e-9, 1e-6, 5.0, 10.0, math.nan, math.inf]),
)


@st.composite
def lstm_states(draw: st.DrawFn) -> LSTMHealthMetrics:
    """Any LSTM or GRU health (c figures all None), finite or not, around the default
    thresholds."""
    names = [n for n in LSTMHealthMetrics.FIGURES if n not in ("has_nan", "has_inf")]
    cell = draw(st.booleans())
    values = {n: draw(HEALTH_VALUES) if cell or n[0] == "h" else None for n in names}
    return LSTMHealthMetrics(has_nan=draw(st.booleans()), has_inf=draw(st.booleans()), **values)


@st.composite
def thresholds(draw: st.DrawFn) -> HealthThresholds:
    """Thresholds with vanishing < warning < critical."""
    vanishing = draw(st.sampled_from([1e-9, 1e-6, 1e-3]))
    warning = draw(st.floats(min_value=0.01, max_value=50.0))
    critical = warning * draw(st.floats(min_value=1.01, max_value=10.0))
    return HealthThresholds(vanishing_rms=vanishing, warning_rms=warning, critical_rms=critical)


@given(lstm_states(), lstm_states(), thresholds())
def test_the_panels_verdicts_are_the_one_health_rule(
    policy: LSTMHealthMetrics, value: LSTMHealthMetrics, t: HealthThresholds
) -> None:
    """The panel's verdicts on h, c and each named state are status_of("h"/"c") (None for c
    without a cell) and health_status; the overall verdict is the worst of them."""
    state = PanelState(t)
    payload = PPOUpdatePayload(
        policy_loss=0.0,
        value_loss=0.0,
        entropy=0.0,
        recurrent_health={"policy": policy, "value": value},
        primary_state="policy",
    )
    state.apply(PPOUpdateCompleted(update=0, payload=payload))
    assert state.health is not None
    view = state.health
    assert [(s.name, s.h_status, s.c_status, s.status) for s in view.states] == [
        (name, m.status_of("h", t), m.status_of("c", t), health_status(m, t))
        for name, m in (("policy", policy), ("value", value))
    ]
    assert view.status == max(
        (health_status(policy, t), health_status(value, t)), key=lambda s: s.rank
    )


# -- health panel -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "row", "status", "rms"),
    [
        ({}, "h", HealthStatus.HEALTHY, "0.213"),
        ({"c_rms": 6.25}, "c", HealthStatus.WARNING, "6.250"),
        ({"c_rms": 25.0, "c_env_rms_max": 40.0}, "c", HealthStatus.CRITICAL, "25.000"),
        (
            {"h_rms": math.nan, "h_max": math.nan, "has_nan": True},
            "h",
            HealthStatus.CRITICAL,
            "nan",
        ),
        ({"h_rms": 2e-9, "c_rms": 1e-8}, "h", HealthStatus.CRITICAL, "2.000e-09"),
    ],
    ids=["healthy", "warning", "exploded", "nan", "vanished"],
)
def test_each_state_shows_its_value_status_word_and_colour(
    change: dict[str, Any], row: str, status: HealthStatus, rms: str
) -> None:
    """The tensor's RMS and verdict appear as text in the verdict's STATUS_COLOUR, overall too."""
    app = HealthPanel()

    async def script(pilot: Pilot[None]) -> None:
        await show(pilot, app, ppo_event(0, **change))
        word = cell(app, "health", "status", row)
        value = cell(app, "health", "rms", row)
        assert [(word.plain, str(word.style)), (value.plain, str(value.style))] == [
            (status.value, bold(status)),
            (rms, STATUS_COLOUR[status]),
        ]
        assert f"state {status.value}" in static_text(app, "overall")

    drive(app, script)


def test_health_row_shows_env_rms_and_max_abs() -> None:
    """env-RMS mean and max and max |x| of h and c are on screen, to 3 decimals."""
    app = HealthPanel()

    async def script(pilot: Pilot[None]) -> None:
        await show(pilot, app, ppo_event(0))
        assert rows(app, "health") == [
            ["rms", "0.213", "0.500"],
            ["status", "HEALTHY", "HEALTHY"],
            ["env-RMS mean", "0.200", "0.450"],
            ["env-RMS max", "0.310", "0.700"],
            ["max |x|", "0.900", "2.500"],
            # No diagnostics measured: a dash, never a made-up number.
            ["saturated", "—", "—"],
            ["growth ratio", "—", "—"],
            ["dormant units", "—", "—"],
        ]
        assert static_text(app, "replay") == "replay check not measured"

    drive(app, script)


def test_every_named_state_has_a_row_the_primary_first() -> None:
    """policy (an LSTM, primary) and value (a GRU, h in the warning band): a row each, policy
    first; value's c reads "—"; the overall line names the worst state; policy in detail."""
    app = HealthPanel()

    async def script(pilot: Pilot[None]) -> None:
        await show(pilot, app, states_event(0, {"value": {**GRU, "h_rms": 6.0}, "policy": HEALTHY}))
        assert rows(app, "states") == [
            ["policy (primary)", "0.213", "0.500", "2.500", "HEALTHY"],
            ["value", "6.000", "—", "1.250", "WARNING"],
        ]
        h_rms, word = cell(app, "states", "value", "h rms"), cell(app, "states", "value", "status")
        assert [str(h_rms.style), str(word.style)] == [
            STATUS_COLOUR[HealthStatus.WARNING],
            bold(HealthStatus.WARNING),
        ]
        assert static_text(app, "overall").startswith("worst state WARNING: value   update 0")
        assert static_text(app, "detail-title") == "policy (primary)   s: next state"
        assert rows(app, "health")[0] == ["rms", "0.213", "0.500"]

    drive(app, script)


def test_s_shows_the_next_state_in_detail_with_its_own_history() -> None:
    """s: value in detail (a GRU: "—" for every c cell, no c sparkline, its history from
    the update it first appeared in), then policy again; an old log's state is "policy"."""
    app = HealthPanel()

    async def script(pilot: Pilot[None]) -> None:
        await show(pilot, app, ppo_event(0), states_event(1, {"policy": HEALTHY, "value": GRU}))
        await pilot.press("s")
        await settle(pilot, lambda: app.shows_latest)
        assert static_text(app, "detail-title") == "value   s: next state"
        assert rows(app, "health") == [
            ["rms", "0.400", "—"],
            ["status", "HEALTHY", "—"],
            ["env-RMS mean", "0.200", "—"],
            ["env-RMS max", "0.310", "—"],
            ["max |x|", "1.250", "—"],
            ["saturated", "—", "—"],
            ["growth ratio", "—", "—"],
            ["dormant units", "—", "—"],
        ]
        assert static_text(app, "sparklines").splitlines() == [
            "h_rms ▅  0.400",
            "updates 1–1, log scale",
        ]
        await pilot.press("s")
        await settle(pilot, lambda: app.shows_latest)
        assert static_text(app, "detail-title") == "policy (primary)   s: next state"
        assert static_text(app, "sparklines").splitlines()[-1] == "updates 0–1, log scale"

    drive(app, script)


def test_a_gru_state_alone_is_judged_on_h_and_shows_no_c() -> None:
    """A run whose one state is a GRU: no states table, c is "—" with no verdict, the state's
    verdict is h's (WARNING here), and there is no c sparkline."""
    app = HealthPanel()

    async def script(pilot: Pilot[None]) -> None:
        gru = [{**GRU, "h_rms": rms} for rms in (0.4, 7.0)]
        events = [states_event(k, {"encoder.gru": g}, "encoder.gru") for k, g in enumerate(gru)]
        await show(pilot, app, *events)
        assert not app.query_one("#states", DataTable).display
        assert static_text(app, "detail-title") == "encoder.gru (primary)"
        assert [cell(app, "health", key, "c").plain for key in ("rms", "status", "max")] == [
            "—",
            "—",
            "—",
        ]
        assert cell(app, "health", "status", "h").plain == "WARNING"
        assert static_text(app, "overall").startswith("state WARNING   update 1")
        assert static_text(app, "sparklines").splitlines() == [
            "h_rms ▁█  7.000",
            "updates 0–1, log scale",
        ]

    drive(app, script)


def test_nan_and_inf_flags_are_words() -> None:
    """An Inf in the state reads "Inf yes" (red) and "NaN no"."""
    app = HealthPanel()

    async def script(pilot: Pilot[None]) -> None:
        await show(pilot, app, ppo_event(0, c_max=math.inf, c_rms=math.inf, has_inf=True))
        overall = static_text(app, "overall")
        assert "NaN no" in overall
        assert "Inf yes" in overall
        assert [cell(app, "health", "max", tensor).plain for tensor in "hc"] == ["0.900", "inf"]

    drive(app, script)


def test_the_panel_applies_the_thresholds_it_is_given() -> None:
    """With warning_rms=0.4 (the detector's instance), c_rms 0.5 is a WARNING on the panel."""
    app = HealthPanel(thresholds=HealthThresholds(warning_rms=0.4, critical_rms=1.0))

    async def script(pilot: Pilot[None]) -> None:
        await show(pilot, app, ppo_event(0))
        assert [cell(app, "health", "status", tensor).plain for tensor in "hc"] == [
            "HEALTHY",
            "WARNING",
        ]
        assert "warning > 0.400, critical > 1.000" in static_text(app, "thresholds")

    drive(app, script)


def test_sparklines_cover_the_recent_updates_and_mark_nan() -> None:
    """One bar per update for h_rms and c_rms; a NaN update is drawn as "×"."""
    app = HealthPanel(history=4)

    async def script(pilot: Pilot[None]) -> None:
        events = [ppo_event(k, h_rms=0.1 * (k + 1)) for k in range(5)]
        events.append(ppo_event(5, h_rms=math.nan, h_max=math.nan, has_nan=True))
        await show(pilot, app, *events)
        assert static_text(app, "sparklines").splitlines() == [
            "h_rms ▁▅█×  nan",  # 0.3, 0.4, 0.5 on a log scale, then the NaN
            "c_rms ▅▅▅▅  0.500",  # a constant c_rms: mid-height bars
            "updates 2–5, log scale",
        ]

    drive(app, script)


def test_ppo_statistics_of_the_last_update_are_shown() -> None:
    """The last update's losses, KL, env steps and the trainer's extras are listed."""
    app = HealthPanel()

    async def script(pilot: Pilot[None]) -> None:
        await show(pilot, app, ppo_event(0), ppo_event(1))
        assert rows(app, "ppo") == [
            ["policy_loss", "-0.012"],
            ["value_loss", "0.500"],
            ["entropy", "0.690"],
            ["approx_kl", "1.500e-05"],
            ["env_steps", "512"],
            ["return (last 20)", "21.500"],
            ["episodes", "7.000"],
        ]
        assert app.query_one("#ppo").border_title == "PPO statistics — update 1"

    drive(app, script)


def test_an_injected_fault_adds_anomaly_rows_newest_first_and_raises_the_level() -> None:
    """NaN at update 2, explosion at 4: two anomaly rows, newest first; level DEBUG since 2."""
    app = HealthPanel()
    hub = TelemetryHub("fault")
    hub.subscribe(AnomalyEscalator(escalate_for=10), mode="inline")

    async def script(pilot: Pilot[None]) -> None:
        subscribe_panel(hub, app)
        lstm = FaultyLSTM(hub, {2: "nan", 4: "explode"})

        def train() -> None:
            for k in range(6):
                lstm.update(k)

        worker = threading.Thread(target=train)
        worker.start()
        await settle(pilot, lambda: not worker.is_alive())
        assert await asyncio.to_thread(hub.flush, 10)  # not on the panel's own thread
        await settle(pilot, lambda: app.state.ppo_update == 5 and app.shows_latest)
        (explosion,) = [a for a in app.state.anomalies if a.update == 4]
        observed = format_value(explosion.payload.anomaly.observed)
        assert rows(app, "anomalies") == [
            ["4", "policy", "lstm_c_explosion", "CRITICAL", observed, "10.000"],  # threshold
            ["2", "policy", "lstm_nan", "CRITICAL", "nan", "—"],
        ]
        level = static_text(app, "level")
        assert level.startswith("DEBUG  since update 2 (")
        assert "lstm_nan at update 2" in level

    try:
        drive(app, script)
    finally:
        hub.close(timeout=10)


def test_anomaly_rows_name_the_state_they_were_found_in() -> None:
    """A NaN in the value state (a real GRU) next to a healthy policy LSTM: the escalator's
    anomaly row names "value"; an anomaly of an old log, which names no state, reads "—"."""
    app = HealthPanel()
    hub = TelemetryHub("states")
    hub.subscribe(AnomalyEscalator(), mode="inline")
    torch.manual_seed(0)
    lstm, gru = torch.nn.LSTM(3, 8), torch.nn.GRU(3, 8)

    def publish(k: int) -> None:
        with torch.no_grad():
            _, policy = lstm(torch.randn(4, 6, 3))
            _, value = gru(torch.randn(4, 6, 3))
        if k == 1:
            value[0, 2, 0] = math.nan
        emit_ppo_update_event(
            hub,
            update=k,
            metrics=PPO_STATS,
            recurrent_health=compute_recurrent_health({"policy": policy, "value": value}),
        )

    old = AnomalyDetected(
        run_id="t",
        seq=99,
        update=0,
        schema_version=2,
        payload=AnomalyDetectedPayload(
            anomaly=Anomaly(
                type=AnomalyType.LSTM_INF,
                severity=Severity.CRITICAL,
                observed=math.inf,
                message="LSTM state holds Inf",
            )
        ),
    )

    async def script(pilot: Pilot[None]) -> None:
        subscribe_panel(hub, app)
        for k in range(2):
            await asyncio.to_thread(publish, k)
        assert await asyncio.to_thread(hub.flush, 10)
        await settle(pilot, lambda: app.state.ppo_update == 1 and app.shows_latest)
        await show(pilot, app, old)
        assert rows(app, "anomalies") == [
            ["0", "—", "lstm_inf", "CRITICAL", "inf", "—"],
            ["1", "value", "lstm_nan", "CRITICAL", "nan", "—"],
        ]
        assert [a.payload.anomaly.message for a in app.state.anomalies][1].startswith("value: ")
        assert cell(app, "states", "value", "status").plain == "CRITICAL"

    try:
        drive(app, script)
    finally:
        hub.close(timeout=10)


@pytest.mark.parametrize(
    ("payload", "schema_version", "expected"),
    [
        (
            {"episode_return_mean": 180.25, "episode_return_window": 100},
            3,
            [["return (last 100)", "180.250"]],
        ),
        (
            {"episode_return_mean": math.nan, "episode_return_window": 20},
            3,
            [["return (last 20)", "nan"]],
        ),
        (
            {"extra": {"return_mean": 9.0, "episodes": 2.0}},
            2,
            [["return", "9.000"], ["episodes", "2.000"]],
        ),
        (
            {"extra": {"return_mean": 9.0, "episodes": 2.0}},
            3,
            [["episodes", "2.000"], ["return_mean", "9.000"]],
        ),
    ],
    ids=["window-100", "no-episode-yet", "old-log", "just-an-extra"],
)
def test_the_return_row_says_over_how_many_episodes(
    payload: dict[str, Any], schema_version: int, expected: list[list[str]]
) -> None:
    """The declared return reads "return (last N)"; an old log's extra["return_mean"] reads
    "return" (its window was not recorded); in a newer event it is only an extra."""
    app = HealthPanel()
    event = PPOUpdateCompleted(
        update=0, schema_version=schema_version, payload=PPOUpdatePayload(**PPO_STATS, **payload)
    )

    async def script(pilot: Pilot[None]) -> None:
        await show(pilot, app, event)
        assert rows(app, "ppo")[len(PPO_STATS) :] == expected

    drive(app, script)


def test_the_subscriber_table_shows_the_hubs_live_counts() -> None:
    """Each subscriber's delivered, failed, dropped and queue depth, polled from hub.stats()."""
    hub = TelemetryHub("stats")
    app = HealthPanel(stats=hub.stats, stats_interval=0.05)

    async def script(pilot: Pilot[None]) -> None:
        hub.subscribe(lambda e: None, mode="inline", name="inline-fn")
        subscribe_panel(hub, app)
        for k in range(3):
            await asyncio.to_thread(hub.emit, ppo_event(k))
        await settle(
            pilot,
            lambda: (
                rows(app, "subscribers")
                == [["inline-fn", "3", "0", "0", "inline"], ["tui", "3", "0", "0", "0/256"]]
            ),
        )
        assert "live from the hub" in static_text(app, "subscribers-note")

    try:
        drive(app, script)
    finally:
        hub.close(timeout=10)


# -- keys ---------------------------------------------------------------------------------


def test_p_pauses_the_display_but_events_are_still_absorbed() -> None:
    """While paused the table keeps the old value; on resume it shows the newest."""
    app = HealthPanel()

    async def script(pilot: Pilot[None]) -> None:
        await show(pilot, app, ppo_event(0))
        await pilot.press("p")
        assert "PAUSED" in static_text(app, "status")
        app.post_message(HealthPanel.Telemetry([ppo_event(1, c_rms=7.0)]))
        await settle(pilot, lambda: app.state.events_seen == 2)
        await pilot.pause(0.15)
        assert cell(app, "health", "rms", "c").plain == "0.500"
        await pilot.press("p")
        await pilot.pause()
        assert cell(app, "health", "rms", "c").plain == "7.000"
        assert "PAUSED" not in static_text(app, "status")

    drive(app, script)


def test_question_mark_opens_the_help_and_escape_closes_it() -> None:
    """? shows the key legend over the panel; escape returns to the panel."""
    app = HealthPanel()

    async def script(pilot: Pilot[None]) -> None:
        await pilot.press("question_mark")
        await pilot.pause()
        assert "pause / resume the display" in str(app.screen.query_one("#help-text").render())
        await pilot.press("escape")
        await pilot.pause()
        assert not app.screen.query("#help-text")

    drive(app, script)


def test_q_quits_and_the_panel_stops_accepting_events() -> None:
    """After q the app is no longer running and refuses events."""
    app = HealthPanel()

    async def script(pilot: Pilot[None]) -> None:
        assert app.accepting_events
        await pilot.press("q")
        await pilot.pause()
        assert not app.accepting_events

    drive(app, script)
    assert app.return_code == 0


# -- the backend --------------------------------------------------------------------------


def test_the_panel_subscribes_on_its_own_thread_dropping_the_oldest_events() -> None:
    """subscribe_panel: mode thread, when_full drop_oldest, so training never waits for it."""
    with TelemetryHub("sub") as hub:
        name = subscribe_panel(hub, HealthPanel())
        (entry,) = hub.stats().subscribers
    assert (name, entry.mode, entry.when_full, entry.queue_size) == (
        "tui",
        "thread",
        "drop_oldest",
        256,
    )


class StuckPanel(HealthPanel):
    """A panel whose terminal hangs: it absorbs nothing until ``gate`` is opened."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()

    def on_health_panel_telemetry(self, message: HealthPanel.Telemetry) -> None:
        # Textual also runs HealthPanel's own handler after this one (it walks the MRO).
        # The timeout only keeps a broken hub (one that blocks emit) from hanging the suite.
        self.gate.wait(60)


def test_a_stuck_panel_drops_old_events_instead_of_holding_up_the_emitter() -> None:
    """200 emits all return while the panel absorbs nothing; the excess over the queue drops."""
    app = StuckPanel()
    hub = TelemetryHub("slow")
    absorbed_when_emitted: list[int] = []

    def emit_all() -> None:
        for k in range(200):
            hub.emit(ppo_event(k))
        absorbed_when_emitted.append(app.state.events_seen)
        app.gate.set()

    async def script(pilot: Pilot[None]) -> None:
        subscribe_panel(hub, app, queue_size=8)
        await asyncio.to_thread(emit_all)
        await asyncio.to_thread(hub.close, 10)

    drive(app, script)
    (entry,) = hub.stats().subscribers
    assert absorbed_when_emitted == [0]
    assert entry.dropped >= 200 - 8 - 1  # all but a full queue and the event in hand
    assert (entry.delivered + entry.dropped, entry.failed) == (200, 0)
    assert app.state.events_seen == entry.delivered


def test_the_backend_never_raises_once_the_panel_has_exited() -> None:
    """Events handled after the panel quit are counted as missed; the hub sees no failure."""
    app = HealthPanel()
    backend = PanelBackend(app)
    drive(app, lambda pilot: pilot.press("q"))
    with TelemetryHub("gone") as hub:
        hub.subscribe(backend, when_full="drop_oldest")
        for k in range(3):
            hub.emit(ppo_event(k))
    (entry,) = hub.stats().subscribers
    assert (entry.delivered, entry.failed, backend.missed) == (3, 0, 3)


# -- the log follower and esper watch ------------------------------------------------------


def line_of(event: TelemetryEvent) -> bytes:
    """One line of an events file, as the analytics collector writes it."""
    return event.model_dump_json().encode() + b"\n"


def test_the_follower_waits_for_the_rest_of_a_torn_last_line(tmp_path: Path) -> None:
    """A last line without its newline is neither read nor reported until it is complete."""
    path = RunLayout(tmp_path).events
    whole = line_of(ppo_event(1))
    path.write_bytes(line_of(ppo_event(0)) + whole[:30])
    follower = LogFollower(tmp_path)
    first = follower.poll()
    assert ([e.update for e in first.events], first.bad_lines) == ([0], ())
    assert follower.waiting_for is not None
    assert "waiting for the rest of line 2" in follower.waiting_for
    with path.open("ab") as f:
        f.write(whole[30:])
    second = follower.poll()
    assert ([e.update for e in second.events], second.bad_lines) == ([1], ())
    assert follower.waiting_for is None


def test_the_follower_reports_complete_bad_lines_by_number(tmp_path: Path) -> None:
    """A complete line that is not an event is skipped and reported with its line number."""
    path = RunLayout(tmp_path).events
    path.write_bytes(line_of(ppo_event(0)) + b'{"not": "an event"}\n' + line_of(ppo_event(1)))
    chunk = LogFollower(path).poll()
    assert [e.update for e in chunk.events] == [0, 1]
    assert [(b.line_number, b.torn) for b in chunk.bad_lines] == [(2, False)]


def test_the_follower_starts_over_when_the_file_shrinks(tmp_path: Path) -> None:
    """A replaced (shorter) file is read again from its start, flagged as a restart."""
    path = RunLayout(tmp_path).events
    path.write_bytes(line_of(ppo_event(0)) + line_of(ppo_event(1)))
    follower = LogFollower(path)
    follower.poll()
    path.write_bytes(line_of(ppo_event(7)))
    chunk = follower.poll()
    assert (chunk.restarted, [e.update for e in chunk.events]) == (True, [7])


def test_watch_follows_a_file_that_grows_while_the_app_runs(tmp_path: Path) -> None:
    """Lines appended while the panel runs show up, a torn line once complete, bad lines too."""
    path = RunLayout(tmp_path).events
    path.write_bytes(line_of(ppo_event(0)))
    app = HealthPanel(follow=LogFollower(tmp_path), poll_interval=0.02)

    async def script(pilot: Pilot[None]) -> None:
        await settle(pilot, lambda: app.state.ppo_update == 0)
        assert "n/a (watching a log)" in static_text(app, "subscribers-note")
        later = line_of(ppo_event(1, c_rms=6.0))
        with path.open("ab") as f:
            f.write(later[:25])
        await settle(pilot, lambda: "waiting for the rest of line 2" in static_text(app, "status"))
        assert app.state.ppo_update == 0
        with path.open("ab") as f:
            f.write(later[25:] + b"garbage\n")
        await settle(pilot, lambda: app.state.ppo_update == 1 and app.shows_latest)
        assert [cell(app, "health", "status", tensor).plain for tensor in "hc"] == [
            "HEALTHY",
            "WARNING",
        ]
        status = static_text(app, "status")
        assert f"1 bad line skipped; last: {path}:3: " in status

    drive(app, script)


def test_watch_shows_the_final_subscriber_counts_of_a_finished_run(tmp_path: Path) -> None:
    """For a finished run, the subscriber table comes from RUN_FINISHED's hub_stats."""
    with TelemetryHub("done") as hub:
        hub.subscribe(AnalyticsCollector(tmp_path))
        hub.emit(ppo_event(0))
        hub.flush()
        hub.emit(
            RunFinished(
                update=0, payload=RunFinishedPayload(status="completed", hub_stats=hub.stats())
            )
        )
    app = HealthPanel(follow=LogFollower(tmp_path))

    async def script(pilot: Pilot[None]) -> None:
        await settle(pilot, lambda: app.state.finished is not None and app.shows_latest)
        assert rows(app, "subscribers") == [["analytics", "1", "0", "0", "0/1024"]]
        assert "from RUN_FINISHED" in static_text(app, "subscribers-note")
        assert "finished: completed" in static_text(app, "status")

    drive(app, script)


def test_esper_watch_refuses_a_missing_run_directory(tmp_path: Path) -> None:
    """esper watch on a path that does not exist exits 2 naming it."""
    result = CliRunner().invoke(main, ["watch", str(tmp_path / "nope")])
    assert result.exit_code == 2
    assert "nope" in result.output


def test_esper_watch_shows_the_panel_for_a_run_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """esper watch RUN_DIR runs the panel on that run's events file until q."""
    RunLayout(tmp_path).events.write_bytes(line_of(ppo_event(3)))
    seen: list[int | None] = []

    async def pilot_script(pilot: Pilot[object]) -> None:
        app = pilot.app
        assert isinstance(app, HealthPanel)
        await settle(pilot, lambda: app.state.ppo_update == 3)
        seen.append(app.state.ppo_update)
        await pilot.press("q")

    headless_with(monkeypatch, pilot_script)
    result = CliRunner().invoke(main, ["watch", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert seen == [3]


# -- esper ppo --tui ----------------------------------------------------------------------


def tiny_options(tmp_path: Path, updates: int, **kwargs: Any) -> RunOptions:
    """esper ppo's options for a small, fast run without W&B or a progress bar."""
    config = PPOConfig(updates=updates, envs=2, steps=8, hidden=16, epochs=1)
    return RunOptions(config=config, run_root=tmp_path, wandb="disabled", progress=False, **kwargs)


@pytest.fixture
def console() -> Console:
    """A console whose output goes nowhere."""
    return Console(file=io.StringIO(), soft_wrap=True)


def test_quitting_the_panel_stops_training_cleanly_with_everything_flushed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, console: Console
) -> None:
    """q during --tui: training stops after the current update, every event is in the
    analytics log ending with RUN_FINISHED interrupted, exit status 130."""
    seen: list[int] = []

    async def pilot_script(pilot: Pilot[object]) -> None:
        app = pilot.app
        assert isinstance(app, HealthPanel)
        await settle(pilot, lambda: (app.state.ppo_update or 0) >= 2, timeout=60)
        seen.append(app.state.ppo_update or 0)
        await pilot.press("q")

    headless_with(monkeypatch, pilot_script)
    outcome = run_ppo(tiny_options(tmp_path, 10_000, run_id="quit", tui=True), console)
    assert outcome.exit_code == EXIT_INTERRUPTED
    assert outcome.result is not None
    assert outcome.result.status == "interrupted"
    assert [n >= 2 for n in seen] == [True]
    events = list(read_events(tmp_path / "quit"))
    updates = [e.update for e in events if isinstance(e, PPOUpdateCompleted)]
    assert updates == list(range(outcome.result.updates))
    finished = [e.payload.status for e in events if isinstance(e, RunFinished)]
    assert (finished, isinstance(events[-1], RunFinished)) == (["interrupted"], True)
    assert outcome.stats is not None
    tui = [(s.failed, s.abandoned, s.stuck) for s in outcome.stats.subscribers if s.name == "tui"]
    assert tui == [(0, 0, False)]


def test_a_run_that_ends_under_the_panel_waits_for_q_and_exits_0(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, console: Console
) -> None:
    """When training completes first, the panel says so and stays until q; exit status 0."""
    status: list[str] = []

    async def pilot_script(pilot: Pilot[object]) -> None:
        app = pilot.app
        assert isinstance(app, HealthPanel)
        await settle(pilot, lambda: app.work_status is not None, timeout=60)
        await settle(pilot, lambda: app.state.finished is not None and app.shows_latest)
        status.append(static_text(app, "status"))
        await pilot.press("q")

    headless_with(monkeypatch, pilot_script)
    outcome = run_ppo(tiny_options(tmp_path, 3, run_id="done", tui=True), console)
    assert (outcome.exit_code, outcome.message) == (EXIT_OK, "completed")
    assert [
        ("finished: completed" in s, "training finished: press q to leave" in s) for s in status
    ] == [(True, True)]


def test_ppo_help_lists_tui_and_report() -> None:
    """esper ppo --help documents --tui and --report."""
    result = CliRunner().invoke(main, ["ppo", "--help"])
    assert "--tui" in result.output
    assert "--report" in result.output


# -- the diagnostics and the replay check (issue 15) -------------------------------------------


def checked_event(update: int, replay: ReplayConsistency, **diagnostics: Any) -> PPOUpdateCompleted:
    """A PPO update whose policy state carries diagnostics and a replay check."""
    d = {
        "h_saturation_frac": 0.1,
        "c_saturation_frac": 0.2,
        "c_growth_ratio": 0.05,
        "dormant_frac": 0.0,
        **diagnostics,
    }
    health = LSTMHealthMetrics(**HEALTHY, diagnostics=RecurrentDiagnostics(**d))
    return PPOUpdateCompleted(
        run_id="t",
        seq=update,
        update=update,
        payload=PPOUpdatePayload(
            **PPO_STATS,
            recurrent_health={"policy": health},
            primary_state="policy",
            replay={"policy": replay},
        ),
    )


MATCHED = ReplayConsistency(max_abs_diff=0.0, dtype="float32", compared=256, mismatched=0)
MISMATCHED = ReplayConsistency(
    max_abs_diff=0.75,
    dtype="float32",
    compared=256,
    mismatched=12,
    first_env=3,
    first_step=7,
    drift=float("nan"),
)


def test_a_replay_mismatch_is_critical_in_words_and_makes_the_state_critical() -> None:
    """The state's verdict takes its replay check's: a mismatch is CRITICAL (as the
    detector's lstm_replay_mismatch), a drift above the threshold WARNING, a match
    leaves the health's verdict; the line says so in words, with the first step."""
    state = PanelState(HealthThresholds())
    state.apply(checked_event(0, MATCHED))
    assert state.health is not None
    shown = state.health.get("policy")
    assert (shown.status, shown.replay_status) == (HealthStatus.HEALTHY, HealthStatus.HEALTHY)
    state.apply(checked_event(1, MATCHED.model_copy(update={"drift": 3.0})))
    assert state.health.get("policy").status is HealthStatus.WARNING
    state.apply(checked_event(2, MISMATCHED))
    shown = state.health.get("policy")
    assert (shown.status, shown.replay_status) == (HealthStatus.CRITICAL, HealthStatus.CRITICAL)

    app = HealthPanel()

    async def script(pilot: Pilot[None]) -> None:
        await show(pilot, app, checked_event(0, MISMATCHED))
        assert static_text(app, "replay") == (
            "replay check CRITICAL mismatch: max |diff| 0.750 (tolerance 0.0001, float32)"
            "   12 of 256 steps differ, first env 3 step 7   drift nan"
        )
        assert static_text(app, "overall").startswith("state CRITICAL")

    drive(app, script)


def test_the_diagnostics_are_shown_and_a_saturated_state_is_a_warning() -> None:
    """Saturation, c growth and dormancy of the state in detail; over its threshold the
    h or c verdict is WARNING, in words."""
    app = HealthPanel()

    async def script(pilot: Pilot[None]) -> None:
        await show(pilot, app, checked_event(0, MATCHED, c_saturation_frac=0.8))
        table = rows(app, "health")
        assert table[1] == ["status", "HEALTHY", "WARNING"]
        assert table[5:] == [
            ["saturated", "0.100", "0.800"],
            ["growth ratio", "—", "0.050"],
            ["dormant units", "0.000", "—"],
        ]
        assert static_text(app, "replay").startswith("replay check HEALTHY matches:")

    drive(app, script)
