"""esper in a data-parallel trainer: one health picture, one run, every rank in step.

Run it on CPU with two processes (gloo)::

    torchrun --standalone --nproc-per-node 2 examples/ddp.py --run-dir runs/ddp-demo

Each rank owns a batch of environments and its own LSTM state. Every update:

1. ``compute_lstm_health(state, group=...)``: one small collective, and every rank gets the
   health of all ranks' states together (rank 1's explosion is seen on rank 0 too);
2. ``emit_ppo_update_event``: the inline anomaly escalator runs on every rank, and only
   rank 0 delivers to the threaded backends (one ``events.jsonl``, one W&B run);
3. ``sync_ranks``: every rank takes the highest telemetry level and any halt, so all of
   them collect DEBUG detail, or stop, at the same update.

A stand-in for a real PPO update keeps the example short: the point is the wiring.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
import torch.distributed as dist

from esper_telemetry import TelemetryHub, compute_lstm_health, emit_ppo_update_event
from esper_telemetry.backends import AnalyticsCollector, AnomalyEscalator
from esper_telemetry.errors import TrainingHalted
from esper_telemetry.telemetry.distributed import sync_ranks


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--updates", type=int, default=6)
    parser.add_argument("--explode-on-rank", type=int, default=None, help="a fault, for the demo")
    args = parser.parse_args()

    torch.set_num_threads(1)
    dist.init_process_group("gloo")  # torchrun sets RANK, WORLD_SIZE, MASTER_ADDR/PORT
    rank = dist.get_rank()
    torch.manual_seed(0)  # the same initial weights on every rank
    lstm = torch.nn.LSTM(input_size=4, hidden_size=16)
    generator = torch.Generator().manual_seed(rank)  # but each rank its own data

    # Every rank names the same run; the hub learns rank and world size itself.
    run_id = os.environ.get("ESPER_RUN_ID", args.run_dir.name)
    with TelemetryHub(run_id) as hub:
        hub.subscribe(AnomalyEscalator(halt_on="critical"), mode="inline")  # every rank
        hub.subscribe(AnalyticsCollector(args.run_dir))  # delivered on rank 0 only
        for update in range(hub.first_update, hub.first_update + args.updates):
            try:
                hub.raise_if_halted()
            except TrainingHalted as halt:
                print(f"rank {rank}: halted at update {update}: {halt.reason}")
                break
            with torch.no_grad():
                _, (h, c) = lstm(torch.randn(8, 3, 4, generator=generator))
            if rank == args.explode_on_rank and update >= 3:
                c.mul_(1e4)  # only this rank's state goes bad
            loss = torch.tensor(0.0)  # your PPO update and its gradient all-reduce here
            dist.all_reduce(loss)
            health = compute_lstm_health((h, c), detail=True, group=dist.group.WORLD)
            stats = {"policy_loss": loss.item(), "value_loss": 0.5, "entropy": 0.7}
            emit_ppo_update_event(hub, update=update, metrics=stats, lstm_health=health)
            sync_ranks(hub)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
