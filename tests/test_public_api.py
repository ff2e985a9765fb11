"""The public surface: exactly these names, every one importable from esper_telemetry."""

from __future__ import annotations

import subprocess
import sys

import pytest

import esper_telemetry
from esper_telemetry import backends, contracts, hub, telemetry, testing

EXPECTED = [
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


def test_all_is_exactly_the_public_api() -> None:
    """__all__ is the agreed list, sorted, so the API never grows by accident."""
    assert esper_telemetry.__all__ == EXPECTED
    assert sorted(EXPECTED) == EXPECTED


def test_every_public_name_is_importable() -> None:
    """Each name in __all__ resolves on the package."""
    missing = [n for n in esper_telemetry.__all__ if not hasattr(esper_telemetry, n)]
    assert missing == []


def test_subpackages_export_what_they_declare() -> None:
    """Every subpackage's __all__ names real attributes."""
    for module in (backends, contracts, hub, telemetry):
        assert [n for n in module.__all__ if not hasattr(module, n)] == []
    assert hasattr(testing, "RecordingBackend")
    assert hasattr(testing, "capture_events")


def test_hub_closed_error_is_an_esper_error_and_runtime_error() -> None:
    """HubClosedError belongs to the one exception family and is a RuntimeError."""
    assert issubclass(esper_telemetry.HubClosedError, esper_telemetry.EsperError)
    assert issubclass(esper_telemetry.HubClosedError, RuntimeError)


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("esper_telemetry.contracts", ("torch", "blinker", "wandb", "duckdb", "textual")),
        ("esper_telemetry.hub", ("torch", "wandb", "duckdb", "textual")),
    ],
)
def test_layers_import_only_what_the_architecture_allows(
    package: str, forbidden: tuple[str, ...]
) -> None:
    """contracts imports pydantic only; the hub never imports torch or a backend library.

    Checked in a fresh interpreter, loading the subpackage without the top-level
    ``esper_telemetry/__init__`` (which wires everything together).
    """
    code = f"""
import pathlib, sys, types, importlib.util
spec = importlib.util.find_spec("esper_telemetry")
pkg = types.ModuleType("esper_telemetry")
pkg.__path__ = [str(pathlib.Path(spec.origin).parent)]
sys.modules["esper_telemetry"] = pkg
import {package}
print(",".join(m for m in {forbidden!r} if m in sys.modules))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
