"""Contracts: the typed, frozen, validated shapes every part of esper agrees on.

Pydantic only: nothing here imports torch, blinker or a backend. The events are one
class per kind (:class:`PPOUpdateCompleted`, :class:`AnomalyDetected`, ...) sharing the
envelope :class:`EventBase`; :data:`TelemetryEvent` is their union and
:func:`parse_event` reads one back from JSON.

The package is lazy: each name is imported from its module on first use, so a part that
needs only the levels or the run layout (the command line's ``--help``) loads no pydantic.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from esper_telemetry._lazy import lazy_attributes

if TYPE_CHECKING:
    from esper_telemetry.contracts._base import (
        FrozenDict,
        Redact,
        SecretText,
        json_safe,
        redact_marked,
    )
    from esper_telemetry.contracts.anomaly import Anomaly, AnomalyReport, AnomalyType, Severity
    from esper_telemetry.contracts.events import (
        EVENT_CLASSES,
        PPO_REQUIRED,
        PPO_STATISTICS,
        SCHEMA_VERSION,
        AnomalyDetected,
        AnomalyDetectedPayload,
        EventBase,
        EventPayload,
        EventType,
        PPOUpdateCompleted,
        PPOUpdatePayload,
        RunFinished,
        RunFinishedPayload,
        RunStarted,
        RunStartedPayload,
        TelemetryEvent,
        TelemetryLevelChanged,
        TelemetryLevelChangedPayload,
        event_class,
        parse_event,
        validate_event,
    )
    from esper_telemetry.contracts.format import format_value, json_float_text
    from esper_telemetry.contracts.health import (
        STATUS_COLOUR,
        EnvRMS,
        HealthStatus,
        HealthThresholds,
        LSTMHealthDetail,
        LSTMHealthMetrics,
        RecurrentDiagnostics,
        health_status,
    )
    from esper_telemetry.contracts.layout import (
        EVENTS_FILE,
        LOG_FILE,
        REPORT_FILE,
        WANDB_DIR,
        RunLayout,
    )
    from esper_telemetry.contracts.levels import TelemetryLevel
    from esper_telemetry.contracts.modes import WANDB_MODES, WandbMode
    from esper_telemetry.contracts.replay import ReplayConsistency
    from esper_telemetry.contracts.stats import HubStats, SubscriberStats

_LAZY = {
    **dict.fromkeys(
        (
            "FrozenDict",
            "Redact",
            "SecretText",
            "json_safe",
            "redact_marked",
        ),
        "esper_telemetry.contracts._base",
    ),
    **dict.fromkeys(
        (
            "Anomaly",
            "AnomalyReport",
            "AnomalyType",
            "Severity",
        ),
        "esper_telemetry.contracts.anomaly",
    ),
    **dict.fromkeys(
        (
            "EVENT_CLASSES",
            "PPO_REQUIRED",
            "PPO_STATISTICS",
            "SCHEMA_VERSION",
            "AnomalyDetected",
            "AnomalyDetectedPayload",
            "EventBase",
            "EventPayload",
            "EventType",
            "PPOUpdateCompleted",
            "PPOUpdatePayload",
            "RunFinished",
            "RunFinishedPayload",
            "RunStarted",
            "RunStartedPayload",
            "TelemetryEvent",
            "TelemetryLevelChanged",
            "TelemetryLevelChangedPayload",
            "event_class",
            "parse_event",
            "validate_event",
        ),
        "esper_telemetry.contracts.events",
    ),
    **dict.fromkeys(
        (
            "format_value",
            "json_float_text",
        ),
        "esper_telemetry.contracts.format",
    ),
    **dict.fromkeys(
        (
            "STATUS_COLOUR",
            "EnvRMS",
            "HealthStatus",
            "HealthThresholds",
            "LSTMHealthDetail",
            "LSTMHealthMetrics",
            "RecurrentDiagnostics",
            "health_status",
        ),
        "esper_telemetry.contracts.health",
    ),
    **dict.fromkeys(
        (
            "EVENTS_FILE",
            "LOG_FILE",
            "REPORT_FILE",
            "WANDB_DIR",
            "RunLayout",
        ),
        "esper_telemetry.contracts.layout",
    ),
    **dict.fromkeys(
        ("TelemetryLevel",),
        "esper_telemetry.contracts.levels",
    ),
    **dict.fromkeys(
        (
            "WANDB_MODES",
            "WandbMode",
        ),
        "esper_telemetry.contracts.modes",
    ),
    **dict.fromkeys(("ReplayConsistency",), "esper_telemetry.contracts.replay"),
    **dict.fromkeys(
        (
            "HubStats",
            "SubscriberStats",
        ),
        "esper_telemetry.contracts.stats",
    ),
}

__all__ = [
    "EVENTS_FILE",
    "EVENT_CLASSES",
    "LOG_FILE",
    "PPO_REQUIRED",
    "PPO_STATISTICS",
    "REPORT_FILE",
    "SCHEMA_VERSION",
    "STATUS_COLOUR",
    "WANDB_DIR",
    "WANDB_MODES",
    "Anomaly",
    "AnomalyDetected",
    "AnomalyDetectedPayload",
    "AnomalyReport",
    "AnomalyType",
    "EnvRMS",
    "EventBase",
    "EventPayload",
    "EventType",
    "FrozenDict",
    "HealthStatus",
    "HealthThresholds",
    "HubStats",
    "LSTMHealthDetail",
    "LSTMHealthMetrics",
    "PPOUpdateCompleted",
    "PPOUpdatePayload",
    "RecurrentDiagnostics",
    "Redact",
    "ReplayConsistency",
    "RunFinished",
    "RunFinishedPayload",
    "RunLayout",
    "RunStarted",
    "RunStartedPayload",
    "SecretText",
    "Severity",
    "SubscriberStats",
    "TelemetryEvent",
    "TelemetryLevel",
    "TelemetryLevelChanged",
    "TelemetryLevelChangedPayload",
    "WandbMode",
    "event_class",
    "format_value",
    "health_status",
    "json_float_text",
    "json_safe",
    "parse_event",
    "redact_marked",
    "validate_event",
]

__getattr__ = lazy_attributes(__name__, _LAZY)
