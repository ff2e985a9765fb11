"""Measuring the LSTM state, detecting anomalies, and emitting PPO-update events."""

from esper_telemetry.telemetry.anomaly_detector import AnomalyDetector
from esper_telemetry.telemetry.emitters import emit_ppo_update_event
from esper_telemetry.telemetry.lstm_health import compute_lstm_health

__all__ = ["AnomalyDetector", "compute_lstm_health", "emit_ppo_update_event"]
