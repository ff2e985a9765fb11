"""The public surface: exactly these names, at the root and in every subpackage.

The layering checks (what each part may import) are in ``test_layers.py``.
"""

from __future__ import annotations

import importlib

import pytest

import esper_telemetry

EXPECTED = [
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

#: Every public subpackage's ``__all__``, pinned like the root's.
SUBPACKAGES: dict[str, list[str]] = {
    "esper_telemetry.contracts": [
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
    ],
    "esper_telemetry.hub": [
        "DEFAULT_QUEUE_SIZE",
        "REDACTED",
        "Backend",
        "HandlesEvents",
        "HandlesEventsOf",
        "Subscriber",
        "TelemetryHub",
        "redact_secrets",
    ],
    "esper_telemetry.backends": [
        "AnalyticsCollector",
        "AnomalyEscalator",
        "Backend",
        "StructlogBackend",
        "WandBBackend",
    ],
    "esper_telemetry.telemetry": [
        "AnomalyDetector",
        "Tracker",
        "check_replay",
        "compute_lstm_health",
        "compute_recurrent_health",
        "emit_ppo_update_event",
        "track",
    ],
    "esper_telemetry.analytics": [
        "MAX_LINE_BYTES",
        "QUERY_FORMATS",
        "TABLES",
        "BadLine",
        "EventBatch",
        "EventCursor",
        "OnBadLine",
        "QueryFormat",
        "connect",
        "events_file",
        "export_parquet",
        "find_event_files",
        "parse_line",
        "read_events",
        "render_result",
        "run_query",
        "tables_in",
    ],
    "esper_telemetry.training": [
        "FAULT_KINDS",
        "FaultKind",
        "PPOConfig",
        "TrainResult",
        "UpdateInfo",
        "parse_fault",
        "train",
    ],
    "esper_telemetry.tui": [
        "PANEL_QUEUE_SIZE",
        "Chunk",
        "HealthPanel",
        "LogFollower",
        "PanelBackend",
        "format_value",
        "run_panel",
        "subscribe_panel",
    ],
    "esper_telemetry.testing": [
        "Kind",
        "RecordingBackend",
        "capture_events",
    ],
    "esper_telemetry.plugins": [
        "BUILT_IN",
        "ENTRY_POINT_GROUP",
        "BackendSpec",
        "BuiltIn",
        "Plugin",
        "PluginError",
        "discover",
        "installed_names",
        "load",
    ],
    "esper_telemetry.report": [
        "CHECK_FIGURES",
        "FIGURE_DPI",
        "FIGURE_SIZE",
        "ReportData",
        "StateSeries",
        "build_figure",
        "collect",
        "write_report",
    ],
}


def test_all_is_exactly_the_public_api() -> None:
    """__all__ is the agreed list, sorted, so the API never grows by accident."""
    assert esper_telemetry.__all__ == EXPECTED
    assert sorted(EXPECTED) == EXPECTED


def test_every_public_name_is_importable() -> None:
    """Each name in __all__ resolves on the package."""
    missing = [n for n in esper_telemetry.__all__ if not hasattr(esper_telemetry, n)]
    assert missing == []


@pytest.mark.parametrize("name", sorted(SUBPACKAGES))
def test_subpackage_all_is_exactly_its_public_api(name: str) -> None:
    """Each subpackage's __all__ is its agreed list, and every name in it resolves."""
    module = importlib.import_module(name)
    missing = [n for n in module.__all__ if not hasattr(module, n)]
    assert (module.__all__, missing) == (SUBPACKAGES[name], [])


def test_the_root_is_lazy_and_complete() -> None:
    """dir() of the package lists exactly __all__; nothing outside it is an attribute."""
    assert sorted(dir(esper_telemetry)) == sorted(EXPECTED)
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        _ = esper_telemetry.nope


def test_hub_closed_error_is_an_esper_error_and_runtime_error() -> None:
    """HubClosedError belongs to the one exception family and is a RuntimeError."""
    assert issubclass(esper_telemetry.HubClosedError, esper_telemetry.EsperError)
    assert issubclass(esper_telemetry.HubClosedError, RuntimeError)
