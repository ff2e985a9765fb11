"""Measuring the LSTM state, detecting anomalies, and emitting PPO-update events.

``compute_lstm_health``, ``check_replay`` and ``emit_ppo_update_event`` need torch; they
load it on first use, so the anomaly detector (pure Python) imports without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from esper_telemetry._lazy import lazy_attributes

if TYPE_CHECKING:
    from esper_telemetry.telemetry.anomaly_detector import AnomalyDetector
    from esper_telemetry.telemetry.emitters import emit_ppo_update_event
    from esper_telemetry.telemetry.lstm_health import compute_lstm_health, compute_recurrent_health
    from esper_telemetry.telemetry.replay import check_replay
    from esper_telemetry.telemetry.tracking import Tracker, track

_LAZY = {
    "AnomalyDetector": "esper_telemetry.telemetry.anomaly_detector",
    "check_replay": "esper_telemetry.telemetry.replay",
    "compute_lstm_health": "esper_telemetry.telemetry.lstm_health",
    "emit_ppo_update_event": "esper_telemetry.telemetry.emitters",
    "compute_recurrent_health": "esper_telemetry.telemetry.lstm_health",
    "Tracker": "esper_telemetry.telemetry.tracking",
    "track": "esper_telemetry.telemetry.tracking",
}

__all__ = [
    "AnomalyDetector",
    "Tracker",
    "check_replay",
    "compute_lstm_health",
    "compute_recurrent_health",
    "emit_ppo_update_event",
    "track",
]


__getattr__ = lazy_attributes(__name__, _LAZY)
