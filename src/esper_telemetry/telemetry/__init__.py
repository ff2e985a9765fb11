"""Measuring the LSTM state, detecting anomalies, and emitting PPO-update events.

``compute_lstm_health`` and ``emit_ppo_update_event`` need torch; they load it on first
use, so the anomaly detector (pure Python) imports without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from esper_telemetry._lazy import lazy_attributes

if TYPE_CHECKING:
    from esper_telemetry.telemetry.anomaly_detector import AnomalyDetector
    from esper_telemetry.telemetry.emitters import emit_ppo_update_event
    from esper_telemetry.telemetry.lstm_health import compute_lstm_health

_LAZY = {
    "AnomalyDetector": "esper_telemetry.telemetry.anomaly_detector",
    "compute_lstm_health": "esper_telemetry.telemetry.lstm_health",
    "emit_ppo_update_event": "esper_telemetry.telemetry.emitters",
}

__all__ = ["AnomalyDetector", "compute_lstm_health", "emit_ppo_update_event"]


__getattr__ = lazy_attributes(__name__, _LAZY)
