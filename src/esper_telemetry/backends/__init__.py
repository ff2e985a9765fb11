"""Backends: subscribers that carry events to W&B, logs, analytics, the terminal.

Every backend implements :class:`Backend` (``handle(event)``, optional ``flush()``,
``close()`` and ``on_subscribe(hub)``) and knows only the contracts and its own library.
Backends whose library is an optional extra are imported on first use, so
``import esper_telemetry.backends`` never needs wandb or duckdb.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

from esper_telemetry.backends.escalator import AnomalyEscalator
from esper_telemetry.backends.log import StructlogBackend
from esper_telemetry.hub import Backend

if TYPE_CHECKING:
    from esper_telemetry.backends.analytics import AnalyticsCollector
    from esper_telemetry.backends.wandb import WandBBackend

_LAZY = {
    "AnalyticsCollector": "esper_telemetry.backends.analytics",
    "WandBBackend": "esper_telemetry.backends.wandb",
}

__all__ = ["AnalyticsCollector", "AnomalyEscalator", "Backend", "StructlogBackend", "WandBBackend"]


def __getattr__(name: str) -> object:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
