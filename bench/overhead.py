"""Telemetry overhead on training: wall time per PPO update, all backends on vs level OFF.

"On" is what ``esper ppo`` wires: the anomaly escalator (inline), W&B (offline), the
analytics log (fsync at flush) and the structured log, at level NORMAL. "Off" is the
same trainer on a hub at level OFF with no backend: no health check, no event. The two
alternate run by run (on, off, off, on, ...) so machine noise falls on both; the figure
is the ratio of median seconds per update. Target: <= 1.02.

    .venv/bin/python bench/overhead.py            # 3 pairs of 40-update runs
    .venv/bin/python bench/overhead.py --quick    # 1 pair of 8-update runs
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

import torch

from esper_telemetry import TelemetryHub
from esper_telemetry.backends import (
    AnalyticsCollector,
    AnomalyEscalator,
    StructlogBackend,
    WandBBackend,
)
from esper_telemetry.training.ppo import PPOConfig, UpdateInfo, train


def one_run(config: PPOConfig, *, telemetry: bool, root: Path, tag: str) -> list[float]:
    """Seconds per update of one run (the first update, with its warm-up, is dropped)."""
    seconds: list[float] = []

    def record(info: UpdateInfo) -> None:
        seconds.append(info.seconds)

    run_id = f"overhead-{tag}"
    if telemetry:
        with TelemetryHub(run_id) as hub:
            hub.subscribe(AnomalyEscalator(), mode="inline")
            hub.subscribe(WandBBackend("esper-bench", mode="offline", dir=root / run_id))
            hub.subscribe(AnalyticsCollector(root / run_id))
            hub.subscribe(StructlogBackend(root / run_id / "log.jsonl"))
            train(config, hub, on_update=record)
    else:
        with TelemetryHub(run_id, level="off") as hub:
            train(config, hub, on_update=record)
    return seconds[1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--pairs", type=int, default=3, help="on/off run pairs")
    parser.add_argument("--updates", type=int, default=40, help="updates per run")
    parser.add_argument("--quick", action="store_true", help="1 pair of 8 updates")
    args = parser.parse_args()
    pairs, updates = (1, 8) if args.quick else (args.pairs, args.updates)
    torch.set_num_threads(1)
    os.environ.setdefault("WANDB_SILENT", "true")
    on: list[float] = []
    off: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.environ.setdefault("WANDB_DIR", str(root))
        for i in range(pairs):
            order = (True, False) if i % 2 == 0 else (False, True)
            for telemetry in order:
                config = PPOConfig(updates=updates, seed=i)
                per_update = one_run(config, telemetry=telemetry, root=root, tag=f"{i}-{telemetry}")
                (on if telemetry else off).extend(per_update)
                print(
                    f"pair {i} telemetry={'on ' if telemetry else 'off'} "
                    f"median {statistics.median(per_update) * 1e3:.1f} ms/update",
                    flush=True,
                )
    ratio = statistics.median(on) / statistics.median(off)
    print()
    print("| telemetry | updates timed | median ms/update | p90 ms/update |")
    print("|---|---:|---:|---:|")
    for name, xs in (("all backends on (W&B offline)", on), ("level OFF, no backends", off)):
        p90 = statistics.quantiles(xs, n=10)[-1]
        print(f"| {name} | {len(xs)} | {statistics.median(xs) * 1e3:.1f} | {p90 * 1e3:.1f} |")
    verdict = "PASS" if ratio <= 1.02 else "FAIL"
    print(f"\nratio on/off (medians): {ratio:.4f}  target <= 1.02: {verdict}")


if __name__ == "__main__":
    main()
