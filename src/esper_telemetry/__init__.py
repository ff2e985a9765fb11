"""esper: health telemetry for the recurrent state of PPO policies.

Create a :class:`TelemetryHub`, subscribe backends (or any callable), and after each
PPO update call :func:`compute_lstm_health` on the final LSTM state (or
:func:`track` the policy once) and :func:`emit_ppo_update_event`. Every subscriber
receives one typed, validated event.

Importing this package is cheap: the names that need torch (``compute_lstm_health``,
``emit_ppo_update_event``, ``AnomalyDetector``) and the hub load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from esper_telemetry._lazy import lazy_attributes

if TYPE_CHECKING:
    from esper_telemetry.contracts import (
        Anomaly,
        AnomalyDetected,
        AnomalyReport,
        AnomalyType,
        EventType,
        HealthStatus,
        HealthThresholds,
        HubStats,
        LSTMHealthDetail,
        LSTMHealthMetrics,
        PPOUpdateCompleted,
        PPOUpdatePayload,
        RunFinished,
        RunStarted,
        Severity,
        TelemetryEvent,
        TelemetryLevel,
        TelemetryLevelChanged,
        health_status,
        parse_event,
    )
    from esper_telemetry.errors import EsperError, HubClosedError, TrainingHalted
    from esper_telemetry.hub import Backend, TelemetryHub
    from esper_telemetry.telemetry import (
        AnomalyDetector,
        Tracker,
        compute_lstm_health,
        compute_recurrent_health,
        emit_ppo_update_event,
        track,
    )

    __version__: str

#: Where each public name lives; every one is imported on first use, so that
#: ``import esper_telemetry.contracts`` (or the command line) pays only for what it uses.
_LAZY = {
    **dict.fromkeys(
        (
            "Anomaly",
            "AnomalyDetected",
            "AnomalyReport",
            "AnomalyType",
            "EventType",
            "HealthStatus",
            "HealthThresholds",
            "HubStats",
            "LSTMHealthDetail",
            "LSTMHealthMetrics",
            "PPOUpdateCompleted",
            "PPOUpdatePayload",
            "RunFinished",
            "RunStarted",
            "Severity",
            "TelemetryEvent",
            "TelemetryLevel",
            "TelemetryLevelChanged",
            "health_status",
            "parse_event",
        ),
        "esper_telemetry.contracts",
    ),
    **dict.fromkeys(("EsperError", "HubClosedError", "TrainingHalted"), "esper_telemetry.errors"),
    **dict.fromkeys(("Backend", "TelemetryHub"), "esper_telemetry.hub"),
    **dict.fromkeys(
        (
            "AnomalyDetector",
            "Tracker",
            "compute_lstm_health",
            "compute_recurrent_health",
            "emit_ppo_update_event",
            "track",
        ),
        "esper_telemetry.telemetry",
    ),
}

__all__ = [
    "Anomaly",
    "AnomalyDetected",
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
    "PPOUpdateCompleted",
    "PPOUpdatePayload",
    "RunFinished",
    "RunStarted",
    "Severity",
    "TelemetryEvent",
    "TelemetryHub",
    "TelemetryLevel",
    "TelemetryLevelChanged",
    "Tracker",
    "TrainingHalted",
    "__version__",
    "compute_lstm_health",
    "compute_recurrent_health",
    "emit_ppo_update_event",
    "health_status",
    "parse_event",
    "track",
]


_attribute = lazy_attributes(__name__, _LAZY)


def __getattr__(name: str) -> object:
    if name == "__version__":
        value: object = _version()
        globals()[name] = value
        return value
    return _attribute(name)


def __dir__() -> list[str]:
    return sorted(__all__)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("esper-telemetry")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0+unknown"
