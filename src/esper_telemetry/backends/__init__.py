"""Backends: subscribers that carry events to W&B, logs, analytics, the terminal.

Every backend implements :class:`Backend` (``handle(event)``, optional ``flush()``,
``close()``, ``on_subscribe(hub)`` and ``undelivered()``) and knows only the contracts,
the hub handle and its own library. Each is imported on first use, so
``import esper_telemetry.backends`` needs neither wandb, duckdb nor structlog.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from esper_telemetry._lazy import lazy_attributes

if TYPE_CHECKING:
    from esper_telemetry.backends.analytics import AnalyticsCollector
    from esper_telemetry.backends.escalator import AnomalyEscalator
    from esper_telemetry.backends.log import StructlogBackend
    from esper_telemetry.backends.wandb import WandBBackend
    from esper_telemetry.hub import Backend

_LAZY = {
    "AnalyticsCollector": "esper_telemetry.backends.analytics",
    "AnomalyEscalator": "esper_telemetry.backends.escalator",
    "Backend": "esper_telemetry.hub",
    "StructlogBackend": "esper_telemetry.backends.log",
    "WandBBackend": "esper_telemetry.backends.wandb",
}

__all__ = ["AnalyticsCollector", "AnomalyEscalator", "Backend", "StructlogBackend", "WandBBackend"]


__getattr__ = lazy_attributes(__name__, _LAZY)
