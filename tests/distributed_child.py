"""One rank of a real gloo run, started as its own process by ``tests/test_distributed_hub.py``.

``python -m tests.distributed_child SCENARIO RANK WORLD INIT_FILE OUT`` joins the process
group (``file://INIT_FILE``), plays the scenario and writes what it saw to
``OUT/rank<RANK>.json``. Every scenario ends with a barrier, so a rank that left early
or hangs shows up as a timeout in the parent.
"""

from __future__ import annotations

import json
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from esper_telemetry import TelemetryHub
from esper_telemetry.backends import AnalyticsCollector, AnomalyEscalator, StructlogBackend
from esper_telemetry.contracts import PPOUpdateCompleted, RunLayout, TelemetryEvent
from esper_telemetry.errors import TrainingHalted
from esper_telemetry.telemetry.distributed import sync_ranks
from tests.faulty_lstm import FaultyLSTM


def publish(rank: int, out: Path, publish_ranks: str) -> dict[str, Any]:
    """Three updates through a hub that learns rank and world size from torch.distributed."""
    run_dir = out / "run"
    seen: list[TelemetryEvent] = []
    hub = TelemetryHub("dist-run", publish_ranks=publish_ranks)  # type: ignore[arg-type]
    hub.subscribe(seen.append, mode="inline", name="inline")
    hub.subscribe(AnalyticsCollector(run_dir))
    hub.subscribe(StructlogBackend(RunLayout(run_dir).log))
    lstm = FaultyLSTM(hub)
    for k in range(3):
        lstm.update(k)
    stats = hub.close()
    return {
        "rank": hub.rank,
        "world_size": hub.world_size,
        "publishes": hub.publishes,
        "inline": [(e.seq, e.rank) for e in seen],
        "subscribers": [s.name for s in stats.subscribers],
    }


def agree(rank: int, out: Path, fault: str, halt: bool) -> dict[str, Any]:
    """Ten updates; rank 1 alone sees ``fault`` at update 3 (its own health, no group).
    Each update ends with an all-reduce standing for the gradients, then sync_ranks."""
    hub = TelemetryHub("agree")
    levels: dict[int, str] = {}
    hub.subscribe(
        lambda e: levels.__setitem__(e.update, e.level.name),
        mode="inline",
        events=[PPOUpdateCompleted],
        name="levels",
    )
    hub.subscribe(AnomalyEscalator(halt_on="critical" if halt else None), mode="inline")
    lstm = FaultyLSTM(hub, {3: fault} if rank == 1 else {})
    stopped_at = None
    for k in range(10):
        try:
            hub.raise_if_halted()
        except TrainingHalted:
            stopped_at = k
            break
        lstm.update(k)
        grads = torch.ones(4)
        dist.all_reduce(grads)  # a rank that left would leave the others waiting here
        sync_ranks(hub)
    hub.close()
    return {"levels": levels, "stopped_at": stopped_at}


def main() -> None:
    scenario, rank, world, init_file, out = sys.argv[1:6]
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=int(rank),
        world_size=int(world),
        timeout=timedelta(seconds=60),
    )
    out_dir = Path(out)
    if scenario in ("zero", "all"):
        result = publish(int(rank), out_dir, scenario)
    else:
        fault, mode = scenario.split("-")
        result = agree(int(rank), out_dir, fault, halt=mode == "halt")
    dist.barrier()
    (out_dir / f"rank{rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
