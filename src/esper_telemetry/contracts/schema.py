"""JSON Schemas of the contracts, as committed under the repository's top-level ``contracts/``."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import TypeAdapter

from esper_telemetry.contracts.anomaly import AnomalyReport
from esper_telemetry.contracts.events import EVENT_ADAPTER
from esper_telemetry.contracts.health import HealthThresholds, LSTMHealthDetail, LSTMHealthMetrics
from esper_telemetry.contracts.stats import HubStats

#: File stem -> the type whose schema it holds. TelemetryEvent's holds every event class.
SCHEMA_MODELS: dict[str, TypeAdapter[object]] = {
    "telemetry_event": EVENT_ADAPTER,  # type: ignore[dict-item]  # an adapter of the union
    "lstm_health_metrics": TypeAdapter(LSTMHealthMetrics),
    "lstm_health_detail": TypeAdapter(LSTMHealthDetail),
    "health_thresholds": TypeAdapter(HealthThresholds),
    "anomaly_report": TypeAdapter(AnomalyReport),
    "hub_stats": TypeAdapter(HubStats),
}


def schema_texts() -> dict[str, str]:
    """File name -> JSON Schema text (sorted keys, two-space indent, final newline)."""
    return {
        f"{stem}.schema.json": json.dumps(model.json_schema(), indent=2, sort_keys=True) + "\n"
        for stem, model in SCHEMA_MODELS.items()
    }


def export_schemas(directory: str | Path) -> list[Path]:
    """Write every contract's JSON Schema into ``directory``; return the paths written."""
    out = Path(directory)
    if out.exists() and not out.is_dir():
        raise ValueError(f"directory: {str(out)!r} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in schema_texts().items():
        path = out / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written
