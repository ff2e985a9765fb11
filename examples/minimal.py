"""The README's recipe as a script: a hub, two subscribers, one event per PPO update.

Run it::

    python examples/minimal.py --updates 5 --run-dir runs/minimal
    esper report runs/minimal

``ppo_update`` below stands in for your PPO update: it runs a small LSTM over random
observations and returns the statistics and the final LSTM state, as yours would. At
``--explode-at`` (update 2 by default) the cell state is multiplied by 10⁴, so the
alarm has something to say. The lines between the two ``---`` banners are the README's.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from esper_telemetry import (
    PPOUpdateCompleted,
    TelemetryHub,
    compute_lstm_health,
    emit_ppo_update_event,
    health_status,
)
from esper_telemetry.backends import AnalyticsCollector

Stats = dict[str, float]
State = tuple[torch.Tensor, torch.Tensor]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--updates", type=int, default=5, help="PPO updates to run")
    p.add_argument("--explode-at", type=int, default=2, help="the update whose state explodes")
    p.add_argument("--run-dir", type=Path, default=None, help="also write the run here")
    args = p.parse_args()
    if args.run_dir is not None and args.run_dir.is_dir() and any(args.run_dir.iterdir()):
        p.error(f"--run-dir: {args.run_dir} is not empty; give a new directory")
    return args


class HealthAlarm:  # any object with handle(event) is a backend
    def handle(self, event: PPOUpdateCompleted) -> None:  # subscribed to this class only
        health = event.payload.health()  # None for an update without a recurrent state
        status = "HEALTHY" if health is None else health_status(health)
        if status != "HEALTHY":
            print(f"update {event.update}: LSTM state {status}")


def main() -> None:
    args = parse_args()
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(input_size=3, hidden_size=16)

    def ppo_update(update: int) -> tuple[Stats, State]:
        """Your PPO update: here only a forward pass over 32 steps of 4 environments."""
        with torch.no_grad():
            _, (h, c) = lstm(torch.randn(32, 4, 3))
        if update == args.explode_at:
            c = c * 1e4  # a broken cell state, for the demo
        return {"policy_loss": 0.1, "value_loss": 0.5, "entropy": 0.69}, (h, c)

    # --- the README's recipe ---
    with TelemetryHub() as hub:  # a fresh run id: a timestamp and a random suffix
        hub.subscribe(HealthAlarm(), events=[PPOUpdateCompleted])
        hub.subscribe(print, mode="inline")  # a plain function works too
        if args.run_dir is not None:  # not in the README: keep the run for `esper report`
            hub.subscribe(AnalyticsCollector(args.run_dir))
        with hub.run(config={"lr": 3e-4}):  # RUN_STARTED now, RUN_FINISHED at the end
            for update in range(args.updates):
                stats, (h, c) = ppo_update(update)  # host floats, final LSTM state
                emit_ppo_update_event(
                    hub, update=update, metrics=stats, lstm_health=compute_lstm_health((h, c))
                )
    # --- end of the recipe: leaving the hub flushed and closed every subscriber ---


if __name__ == "__main__":
    main()
