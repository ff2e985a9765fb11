"""AnomalyEscalator: anomaly events, escalation to DEBUG and back, halts."""

from __future__ import annotations

import logging
import math
from typing import Any

import pytest
import torch

from esper_telemetry import (
    AnomalyType,
    HealthThresholds,
    TelemetryHub,
    TrainingHalted,
    compute_lstm_health,
    emit_ppo_update_event,
)
from esper_telemetry.backends.escalator import AnomalyEscalator
from esper_telemetry.contracts import (
    AnomalyDetected,
    PPOUpdateCompleted,
    Severity,
    TelemetryLevelChanged,
)
from esper_telemetry.telemetry import AnomalyDetector
from esper_telemetry.testing import RecordingBackend
from tests.faulty_lstm import PPO_STATS, FaultyLSTM

PPO = PPO_STATS


def run(
    faults: dict[int, str], updates: int, **kwargs: object
) -> tuple[RecordingBackend, TelemetryHub]:
    hub = TelemetryHub("esc")
    rec = RecordingBackend()
    escalator = AnomalyEscalator(**kwargs)  # type: ignore[arg-type]
    hub.subscribe(escalator, mode="inline")
    hub.subscribe(rec, mode="inline")
    trainer = FaultyLSTM(hub, faults)
    for k in range(updates):
        trainer.update(k)
    hub.close()
    return rec, hub


def timeline(rec: RecordingBackend) -> list[tuple[int, str, str]]:
    out = []
    for e in rec.events:
        match e:
            case AnomalyDetected(payload=p):
                what = p.anomaly.type.value
            case TelemetryLevelChanged(payload=p):
                what = p.level.name
            case _:
                what = e.level.name
        out.append((e.update, e.event_type.value, what))
    return out


def anomalies(rec: RecordingBackend) -> list[AnomalyDetected]:
    return [e for e in rec.events if isinstance(e, AnomalyDetected)]


def test_nan_escalates_for_n_updates_then_restores() -> None:
    """A NaN at update 2 emits lstm_nan, raises the level to DEBUG for 3 updates, restores."""
    rec, _ = run({2: "nan"}, updates=8, escalate_for=3)
    assert timeline(rec) == [
        (0, "PPO_UPDATE_COMPLETED", "NORMAL"),
        (1, "PPO_UPDATE_COMPLETED", "NORMAL"),
        (2, "PPO_UPDATE_COMPLETED", "NORMAL"),
        (2, "ANOMALY_DETECTED", "lstm_nan"),
        (2, "TELEMETRY_LEVEL_CHANGED", "DEBUG"),
        (3, "PPO_UPDATE_COMPLETED", "DEBUG"),
        (4, "PPO_UPDATE_COMPLETED", "DEBUG"),
        (5, "PPO_UPDATE_COMPLETED", "DEBUG"),
        (5, "TELEMETRY_LEVEL_CHANGED", "NORMAL"),
        (6, "PPO_UPDATE_COMPLETED", "NORMAL"),
        (7, "PPO_UPDATE_COMPLETED", "NORMAL"),
    ]


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        ("nan", [AnomalyType.LSTM_NAN]),
        ("inf", [AnomalyType.LSTM_INF, AnomalyType.LSTM_C_EXPLOSION]),
        ("explode", [AnomalyType.LSTM_C_EXPLOSION]),
        ("vanish", [AnomalyType.LSTM_H_VANISHING, AnomalyType.LSTM_C_VANISHING]),
    ],
)
def test_each_fault_gives_its_anomaly_events(fault: str, expected: list[AnomalyType]) -> None:
    """Each injected fault yields exactly its anomaly types, typed and critical."""
    rec, _ = run({1: fault}, updates=3)
    assert [
        (e.update, e.payload.anomaly.type, e.payload.anomaly.severity) for e in anomalies(rec)
    ] == [(1, kind, Severity.CRITICAL) for kind in expected]


def test_anomaly_during_escalation_extends_it_without_new_level_events() -> None:
    """A second anomaly while at DEBUG keeps DEBUG, counted from the last anomaly."""
    rec, _ = run({1: "nan", 3: "explode"}, updates=8, escalate_for=2)
    changes = [
        (e.update, e.payload.level.name) for e in rec.events if isinstance(e, TelemetryLevelChanged)
    ]
    assert changes == [(1, "DEBUG"), (5, "NORMAL")]


def test_every_anomaly_carries_its_outlier_envs() -> None:
    """The first anomaly (found at NORMAL level) names its outlier envs, and so do later ones."""
    rec, _ = run({1: "nan", 2: "explode"}, updates=3)
    assert [(e.payload.anomaly.type, e.payload.outlier_envs) for e in anomalies(rec)] == [
        (AnomalyType.LSTM_NAN, (2,)),
        (AnomalyType.LSTM_C_EXPLOSION, (0, 1, 2, 3, 4, 5)),
    ]


def test_the_update_that_trips_an_anomaly_carries_its_own_detail() -> None:
    """The anomalous update has per-layer detail although the level rises only after it."""
    rec, _ = run({2: "explode"}, updates=4, escalate_for=5)
    updates = [e for e in rec.events if isinstance(e, PPOUpdateCompleted)]
    detail = [(e.update, e.level.name, e.payload.lstm_detail is not None) for e in updates]
    spike = updates[2].payload
    assert spike.lstm_detail is not None
    assert spike.lstm_c_rms is not None
    assert (detail, spike.lstm_detail.c_layer_rms) == (
        [(0, "NORMAL", False), (1, "NORMAL", False), (2, "NORMAL", True), (3, "DEBUG", True)],
        (spike.lstm_c_rms,),
    )


def test_halt_on_critical_stops_the_next_emit_after_delivering_everything() -> None:
    """halt_on='critical': the next emit raises TrainingHalted naming the anomaly and update;
    the anomaly itself and what came before were delivered."""
    hub = TelemetryHub("halt")
    rec = RecordingBackend()
    hub.subscribe(AnomalyEscalator(halt_on="critical"), mode="inline")
    hub.subscribe(rec)
    trainer = FaultyLSTM(hub, {2: "nan"})
    trainer.update(0)
    trainer.update(1)
    trainer.update(2)
    with pytest.raises(
        TrainingHalted, match=r"\(update 2\): lstm_nan: policy: LSTM state holds NaN"
    ):
        trainer.update(3)
    hub.close()
    assert [(e.update, e.event_type.value) for e in rec.events] == [
        (0, "PPO_UPDATE_COMPLETED"),
        (1, "PPO_UPDATE_COMPLETED"),
        (2, "PPO_UPDATE_COMPLETED"),
        (2, "ANOMALY_DETECTED"),
        (2, "TELEMETRY_LEVEL_CHANGED"),
    ]


def test_custom_thresholds_apply() -> None:
    """The detector's thresholds decide: a lower critical_rms flags a normal state."""
    detector = AnomalyDetector(
        HealthThresholds(vanishing_rms=1e-9, warning_rms=1e-4, critical_rms=1e-3)
    )
    rec, _ = run({}, updates=1, detector=detector)
    assert [e.payload.anomaly.type for e in anomalies(rec)] == [
        AnomalyType.LSTM_H_EXPLOSION,
        AnomalyType.LSTM_C_EXPLOSION,
    ]


def test_updates_without_lstm_are_skipped() -> None:
    """A PPO update without lstm_* fields produces no anomaly."""
    with TelemetryHub("nolstm") as hub:
        rec = RecordingBackend()
        hub.subscribe(AnomalyEscalator(), mode="inline")
        hub.subscribe(rec, mode="inline")
        emit_ppo_update_event(hub, update=0, metrics=PPO)
    assert [e.event_type.value for e in rec.events] == ["PPO_UPDATE_COMPLETED"]


def test_every_anomaly_is_logged_at_the_level_of_its_severity(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Each anomaly also goes to the hub's logger naming type and update: a warning as a
    warning, a critical anomaly (here a vanishing state) as critical."""
    with caplog.at_level(logging.WARNING, logger="esper_telemetry.hub"):
        run({1: "vanish"}, updates=2)
    logged = [(r.levelno, r.getMessage().split(" = ")[0]) for r in caplog.records]
    assert logged == [
        (logging.CRITICAL, "LSTM anomaly lstm_h_vanishing at update 1: policy: h_rms"),
        (logging.CRITICAL, "LSTM anomaly lstm_c_vanishing at update 1: policy: c_rms"),
    ]


def test_a_warning_anomaly_is_logged_as_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    """A warning-severity anomaly (saturation) stays at WARNING in the log."""
    hub = TelemetryHub("saturated")
    hub.subscribe(AnomalyEscalator(), mode="inline")
    h = torch.full((1, 4, 8), 0.999)
    c = torch.full((1, 4, 8), 0.5)
    health = compute_lstm_health((h, c), diagnostics=True)
    with caplog.at_level(logging.WARNING, logger="esper_telemetry.hub"):
        emit_ppo_update_event(hub, update=0, metrics=PPO, lstm_health=health)
    hub.close()
    logged = [(r.levelno, r.getMessage().split(":")[0]) for r in caplog.records]
    assert (logging.WARNING, "LSTM anomaly lstm_h_saturation at update 0") in logged
    assert all(level == logging.WARNING for level, _ in logged)


def test_the_hidden_state_is_never_touched() -> None:
    """The escalator sees only events: the measured tensors are unchanged after an anomaly."""
    hub = TelemetryHub("untouched")
    hub.subscribe(AnomalyEscalator(halt_on="critical"), mode="inline")
    h = torch.full((1, 2, 3), math.nan)
    c = torch.ones(1, 2, 3)
    before = (h.clone(), c.clone())
    emit_ppo_update_event(hub, update=0, metrics=PPO, lstm_health=compute_lstm_health((h, c)))
    hub.close()
    assert torch.equal(c, before[1])
    assert torch.isnan(h).all()


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"escalate_for": 0}, ValueError, "escalate_for must be an int >= 1, got 0"),
        ({"halt_on": "warning"}, ValueError, "halt_on must be None or 'critical'"),
        ({"detector": "strict"}, TypeError, "detector must be an AnomalyDetector, got str"),
    ],
)
def test_bad_arguments_are_refused(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    """Each bad argument raises, naming it."""
    with pytest.raises(error, match=message):
        AnomalyEscalator(**kwargs)


def test_one_escalator_serves_one_hub() -> None:
    """Subscribing the same escalator to a second hub is refused."""
    esc = AnomalyEscalator()
    with TelemetryHub("one") as a, TelemetryHub("two") as b:
        a.subscribe(esc, mode="inline")
        with pytest.raises(ValueError, match="already subscribed to another hub"):
            b.subscribe(esc, mode="inline")
