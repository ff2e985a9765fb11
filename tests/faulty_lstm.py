"""A real nn.LSTM whose final state can be pushed to NaN, Inf, explosion or vanishing."""

from __future__ import annotations

import math

import torch

from esper_telemetry import TelemetryHub, compute_lstm_health, emit_ppo_update_event

PPO_STATS = {"policy_loss": 0.0, "value_loss": 0.1, "entropy": 0.6}


class FaultyLSTM:
    """Publishes one PPO update per call, with ``faults[update]`` applied to the state.

    Like the reference trainer, it always computes the detail and leaves it to the emitter
    to publish it (at DEBUG, and on an update whose state is CRITICAL).
    """

    def __init__(self, hub: TelemetryHub, faults: dict[int, str] | None = None) -> None:
        torch.manual_seed(0)
        self.hub = hub
        self.lstm = torch.nn.LSTM(input_size=3, hidden_size=8)
        self.faults = faults or {}

    def update(self, k: int) -> None:
        with torch.no_grad():
            _, (h, c) = self.lstm(torch.randn(4, 6, 3))
        fault = self.faults.get(k)
        if fault == "nan":
            h[0, 2, 0] = math.nan
        elif fault == "inf":
            c[0, 1, 1] = math.inf
        elif fault == "explode":
            c.mul_(1e3)
        elif fault == "vanish":
            h.mul_(1e-9)
            c.mul_(1e-9)
        elif fault is not None:
            raise ValueError(f"unknown fault {fault!r}")
        # Detail always: the emitter publishes it at DEBUG and on an unhealthy update.
        emit_ppo_update_event(
            self.hub,
            update=k,
            metrics=PPO_STATS,
            lstm_health=compute_lstm_health((h, c), detail=True),
        )
