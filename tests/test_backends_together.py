"""All four backends on one hub, driven by a real LSTM pushed into every kind of fault.

The escalator (inline), W&B (offline), the analytics log and the structured log each
consume the same events independently; a backend that raises on every event changes
nothing in what the others wrote.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from esper_telemetry import EventType, HubStats, TelemetryEvent, TelemetryHub
from esper_telemetry.analytics import connect
from esper_telemetry.backends import (
    AnalyticsCollector,
    AnomalyEscalator,
    StructlogBackend,
    WandBBackend,
)
from tests.faulty_lstm import FaultyLSTM
from tests.wandb_offline import history, inspect_run, of_type, offline_wandb, run_dir_of

FAULTS = {2: "nan", 4: "inf", 6: "explode", 8: "vanish"}
UPDATES = 10
RUN_ID = "together"
EXPECTED_ANOMALIES = [
    (2, "lstm_nan"),
    (4, "lstm_inf"),
    (4, "lstm_c_explosion"),
    (6, "lstm_c_explosion"),
    (8, "lstm_h_vanishing"),
    (8, "lstm_c_vanishing"),
]
EXPECTED_LEVELS = [(u, lvl) for k in (2, 4, 6, 8) for u, lvl in ((k, "DEBUG"), (k + 1, "NORMAL"))]


class AlwaysRaises:
    """A backend that fails on every event."""

    name = "broken"

    def handle(self, event: TelemetryEvent) -> None:
        raise RuntimeError("this backend is broken")


@dataclass
class Outputs:
    run_dir: Path
    stats: HubStats
    wandb_records: list[dict[str, Any]]
    log_lines: list[dict[str, Any]]


def drive(root: Path, mp: pytest.MonkeyPatch, *, with_broken: bool) -> Outputs:
    run_dir = root / RUN_ID
    with offline_wandb(root, mp) as wandb_dir:
        hub = TelemetryHub(RUN_ID)
        hub.subscribe(AnomalyEscalator(escalate_for=1), mode="inline")
        if with_broken:
            hub.subscribe(AlwaysRaises())
        hub.subscribe(WandBBackend("esper-test", mode="offline"))
        hub.subscribe(AnalyticsCollector(run_dir))
        hub.subscribe(StructlogBackend(run_dir / "log.jsonl"))
        model = FaultyLSTM(hub, FAULTS)
        for k in range(UPDATES):
            model.update(k)
        stats = hub.close(timeout=60)
        records = inspect_run(run_dir_of(wandb_dir, RUN_ID))
    lines = [json.loads(x) for x in (run_dir / "log.jsonl").read_text().splitlines()]
    return Outputs(run_dir, stats, records, lines)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Outputs, Outputs]:
    mp = pytest.MonkeyPatch()
    try:
        clean = drive(tmp_path_factory.mktemp("clean"), mp, with_broken=False)
        broken = drive(tmp_path_factory.mktemp("broken"), mp, with_broken=True)
    finally:
        mp.undo()
    return clean, broken


def test_analytics_holds_every_update_anomaly_and_level_change(
    runs: tuple[Outputs, Outputs],
) -> None:
    """The analytics log answers in SQL: one row per update, NaN kept, every anomaly and level."""
    clean, _ = runs
    con = connect(clean.run_dir)
    updates = con.execute(
        "SELECT update, lstm_has_nan, lstm_has_inf, isnan(lstm_h_rms) FROM ppo_updates ORDER BY seq"
    ).fetchall()
    assert updates == [(k, k == 2, k == 4, k == 2) for k in range(UPDATES)]
    anomalies = con.execute("SELECT update, anomaly_type FROM anomalies ORDER BY seq").fetchall()
    assert anomalies == EXPECTED_ANOMALIES
    levels = con.execute("SELECT update, level FROM level_changes ORDER BY seq").fetchall()
    assert levels == EXPECTED_LEVELS


def test_the_structured_log_warns_on_each_anomaly(runs: tuple[Outputs, Outputs]) -> None:
    """Each anomaly is an error line (critical) naming its type at its update."""
    clean, _ = runs
    errors = [(r["update"], r["anomaly_type"]) for r in clean.log_lines if r["level"] == "error"]
    assert errors == EXPECTED_ANOMALIES
    events = [r["event"] for r in clean.log_lines]
    assert events.count("PPO_UPDATE_COMPLETED") == UPDATES
    assert events.count("TELEMETRY_LEVEL_CHANGED") == len(EXPECTED_LEVELS)


def test_wandb_has_every_update_and_an_alert_per_anomaly(runs: tuple[Outputs, Outputs]) -> None:
    """W&B's history has one row per update (NaN flagged at 2) and an alert per anomaly."""
    clean, _ = runs
    rows = history(clean.wandb_records)
    assert [r["_step"] for r in rows] == list(range(UPDATES))
    assert [r["lstm/has_nan"] for r in rows] == [int(k == 2) for k in range(UPDATES)]
    assert rows[2]["lstm/h_rms"] == "NaN"
    alerts = [a["title"] for a in of_type(clean.wandb_records, "alert")]
    # The escalator names the state it found each anomaly in: the trainer's only one.
    assert alerts == [f"esper: {kind} in policy" for _, kind in EXPECTED_ANOMALIES]


def test_a_backend_that_always_raises_changes_nothing_for_the_others(
    runs: tuple[Outputs, Outputs],
) -> None:
    """With a broken backend on the hub, every other output is the same, and the failure is
    counted against it alone."""
    clean, broken = runs
    by_name = {s.name: s for s in broken.stats.subscribers}
    emitted = broken.stats.emitted
    assert (by_name["broken"].failed, by_name["broken"].delivered) == (emitted, 0)
    others = {n: (s.delivered, s.failed, s.dropped) for n, s in by_name.items() if n != "broken"}
    assert others == {s.name: (s.delivered, s.failed, s.dropped) for s in clean.stats.subscribers}

    def without_clock(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{k: v for k, v in r.items() if k != "timestamp"} for r in lines]

    assert without_clock(broken.log_lines) == without_clock(clean.log_lines)
    # W&B is the same but for what shows the broken backend: the hub's losses (counted
    # and shown), and the measured latency, which differs from run to run anyway.
    shown = ("telemetry/lost", "telemetry/latency_p99_ms", "anomaly/table.")

    def without_losses(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{k: v for k, v in r.items() if not k.startswith(shown)} for r in history(records)]

    assert without_losses(broken.wandb_records) == without_losses(clean.wandb_records)
    assert {r["telemetry/lost"] for r in history(clean.wandb_records)} == {0}
    lost = [r["telemetry/lost"] for r in history(broken.wandb_records)]
    assert lost == sorted(lost)
    assert lost[-1] > 0
    query = "SELECT * EXCLUDE (timestamp) FROM {} ORDER BY seq"
    for table in ("ppo_updates", "recurrent_health", "anomalies", "level_changes"):
        a = connect(clean.run_dir).execute(query.format(table)).fetchall()
        b = connect(broken.run_dir).execute(query.format(table)).fetchall()
        assert repr(a) == repr(b), table  # repr: NaN == NaN


def test_every_event_reached_every_healthy_backend(runs: tuple[Outputs, Outputs]) -> None:
    """Nothing lost: each healthy backend delivered exactly what the hub emitted to it."""
    clean, _ = runs
    emitted = clean.stats.emitted
    delivered = {s.name: s.delivered for s in clean.stats.subscribers}
    assert delivered == {
        "anomaly-escalator": emitted,
        "wandb": emitted,
        "analytics": emitted,
        "structlog": emitted,
    }
    assert EventType.PPO_UPDATE_COMPLETED.value in {r["event"] for r in clean.log_lines}
