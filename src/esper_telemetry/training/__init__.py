"""The reference recurrent PPO: ``train(config, hub) -> TrainResult``.

Importing the package is cheap; ``train`` and ``PPOConfig`` load torch and gymnasium on
first use. :mod:`esper_telemetry.training.faults` needs neither.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from esper_telemetry._lazy import lazy_attributes

if TYPE_CHECKING:
    from esper_telemetry.training.faults import FAULT_KINDS, FaultKind, parse_fault
    from esper_telemetry.training.ppo import PPOConfig, TrainResult, UpdateInfo, train

_LAZY = {
    **dict.fromkeys(("FAULT_KINDS", "FaultKind", "parse_fault"), "esper_telemetry.training.faults"),
    **dict.fromkeys(
        ("PPOConfig", "TrainResult", "UpdateInfo", "train"), "esper_telemetry.training.ppo"
    ),
}

__all__ = [
    "FAULT_KINDS",
    "FaultKind",
    "PPOConfig",
    "TrainResult",
    "UpdateInfo",
    "parse_fault",
    "train",
]

__getattr__ = lazy_attributes(__name__, _LAZY)
