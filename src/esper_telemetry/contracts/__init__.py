"""Contracts: the typed, frozen, validated shapes every part of esper agrees on.

Pydantic only: nothing here imports torch, blinker or a backend.
"""

from esper_telemetry.contracts._base import json_safe
from esper_telemetry.contracts.anomaly import Anomaly, AnomalyReport, AnomalyType, Severity
from esper_telemetry.contracts.events import (
    PAYLOAD_MODELS,
    PPO_REQUIRED,
    PPO_STATISTICS,
    SCHEMA_VERSION,
    AnomalyDetectedPayload,
    EventPayload,
    EventType,
    PPOUpdatePayload,
    RunFinishedPayload,
    RunStartedPayload,
    TelemetryEvent,
    TelemetryLevelChangedPayload,
)
from esper_telemetry.contracts.health import (
    HealthStatus,
    HealthThresholds,
    LSTMHealthDetail,
    LSTMHealthMetrics,
    health_status,
)
from esper_telemetry.contracts.levels import TelemetryLevel
from esper_telemetry.contracts.stats import HubStats, SubscriberStats

__all__ = [
    "PAYLOAD_MODELS",
    "PPO_REQUIRED",
    "PPO_STATISTICS",
    "SCHEMA_VERSION",
    "Anomaly",
    "AnomalyDetectedPayload",
    "AnomalyReport",
    "AnomalyType",
    "EventPayload",
    "EventType",
    "HealthStatus",
    "HealthThresholds",
    "HubStats",
    "LSTMHealthDetail",
    "LSTMHealthMetrics",
    "PPOUpdatePayload",
    "RunFinishedPayload",
    "RunStartedPayload",
    "Severity",
    "SubscriberStats",
    "TelemetryEvent",
    "TelemetryLevel",
    "TelemetryLevelChangedPayload",
    "health_status",
    "json_safe",
]
