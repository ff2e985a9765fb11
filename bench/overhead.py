"""Telemetry overhead on training: wall time per PPO update, all backends on vs level OFF.

One training run with everything ``esper ppo`` wires subscribed (the anomaly escalator
inline, W&B offline, the analytics log with fsync at flush, the structured log). The hub's
level alternates in blocks of updates: NORMAL (health check, one event to every backend)
and OFF (no health check, no event: the trainer alone). Both kinds of update run in the
same process, on the same model and machine state, one block after the other, so noise
from other jobs on this shared machine falls on both alike. The first update of each block
is left out, so work a backend carries over from the previous block counts against
neither. The figure is the ratio of the median seconds per update. Target: <= 1.02.

    .venv/bin/python bench/overhead.py            # 200 updates in blocks of 5
    .venv/bin/python bench/overhead.py --quick    # 40 updates
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

import torch

from esper_telemetry import TelemetryHub, TelemetryLevel
from esper_telemetry.backends import (
    AnalyticsCollector,
    AnomalyEscalator,
    StructlogBackend,
    WandBBackend,
)
from esper_telemetry.training.ppo import PPOConfig, UpdateInfo, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--updates", type=int, default=200, help="updates in the run")
    parser.add_argument("--block", type=int, default=5, help="updates per level block")
    parser.add_argument("--quick", action="store_true", help="40 updates")
    parser.add_argument(
        "--backends",
        choices=("all", "local", "wandb", "none"),
        default="all",
        help="which backends to subscribe (local: escalator, analytics, structured log)",
    )
    args = parser.parse_args()
    updates = 40 if args.quick else args.updates
    torch.set_num_threads(1)
    os.environ.setdefault("WANDB_SILENT", "true")
    on: list[float] = []
    off: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "overhead"
        hub = TelemetryHub("overhead")
        if args.backends in ("all", "local"):
            hub.subscribe(AnomalyEscalator(), mode="inline")
            hub.subscribe(AnalyticsCollector(run_dir))
            hub.subscribe(StructlogBackend(run_dir / "log.jsonl"))
        if args.backends in ("all", "wandb"):
            hub.subscribe(WandBBackend("esper-bench", mode="offline", dir=run_dir))

        def record(info: UpdateInfo) -> None:
            position = info.update % args.block
            if position != 0:  # the first update of a block may carry the last one's work
                (on if info.level is TelemetryLevel.NORMAL else off).append(info.seconds)
            if position == args.block - 1:  # switch for the next block
                nxt = "off" if info.level is TelemetryLevel.NORMAL else "normal"
                hub.set_level(nxt, reason="overhead benchmark")

        train(PPOConfig(updates=updates), hub, on_update=record)
        stats = hub.close(timeout=120)
    ratio = statistics.median(on) / statistics.median(off)
    print("| telemetry | updates timed | median ms/update | p90 ms/update |")
    print("|---|---:|---:|---:|")
    for name, xs in (("NORMAL, all backends (W&B offline)", on), ("OFF (trainer alone)", off)):
        p90 = statistics.quantiles(xs, n=10)[-1]
        print(f"| {name} | {len(xs)} | {statistics.median(xs) * 1e3:.1f} | {p90 * 1e3:.1f} |")
    print(f"\nevents: {stats.emitted}, lossless: {stats.lossless}")
    verdict = "PASS" if ratio <= 1.02 else "FAIL"
    print(f"ratio NORMAL/OFF (medians): {ratio:.4f}  target <= 1.02: {verdict}")


if __name__ == "__main__":
    main()
