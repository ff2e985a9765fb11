"""esper: health telemetry for the recurrent state of PPO policies.

Create a :class:`TelemetryHub`, subscribe backends (or any callable), and after each
PPO update call :func:`compute_lstm_health` on the final LSTM state and
:func:`emit_ppo_update_event`. Every subscriber receives one typed, validated event.
"""

from importlib.metadata import PackageNotFoundError, version

from esper_telemetry.backends import Backend
from esper_telemetry.contracts import (
    Anomaly,
    AnomalyReport,
    AnomalyType,
    EventType,
    HealthStatus,
    HealthThresholds,
    HubStats,
    LSTMHealthDetail,
    LSTMHealthMetrics,
    PPOUpdatePayload,
    Severity,
    TelemetryEvent,
    TelemetryLevel,
    health_status,
)
from esper_telemetry.errors import EsperError, HubClosedError, TrainingHalted
from esper_telemetry.hub import TelemetryHub
from esper_telemetry.telemetry import AnomalyDetector, compute_lstm_health, emit_ppo_update_event

try:
    __version__ = version("esper-telemetry")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "Anomaly",
    "AnomalyDetector",
    "AnomalyReport",
    "AnomalyType",
    "Backend",
    "EsperError",
    "EventType",
    "HealthStatus",
    "HealthThresholds",
    "HubClosedError",
    "HubStats",
    "LSTMHealthDetail",
    "LSTMHealthMetrics",
    "PPOUpdatePayload",
    "Severity",
    "TelemetryEvent",
    "TelemetryHub",
    "TelemetryLevel",
    "TrainingHalted",
    "__version__",
    "compute_lstm_health",
    "emit_ppo_update_event",
    "health_status",
]
