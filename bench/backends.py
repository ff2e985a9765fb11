"""Events per second through one hub with all four backends (W&B offline).

Emits N PPO-update events carrying all 12 LSTM health fields (a healthy state, so the
escalator checks every one and emits nothing), then closes the hub, which waits until
every backend has handled and flushed everything. Reports the emit-side rate (how fast
the trainer's thread gets through ``emit``) and the end-to-end rate (until ``close``
returns), with each backend's counters to show that nothing was lost.

    .venv/bin/python bench/backends.py            # 20,000 events
    .venv/bin/python bench/backends.py --quick    # 2,000 events
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from esper_telemetry import TelemetryHub, compute_lstm_health, emit_ppo_update_event
from esper_telemetry.backends import (
    AnalyticsCollector,
    AnomalyEscalator,
    StructlogBackend,
    WandBBackend,
)

STATS = {"policy_loss": -0.01, "value_loss": 0.4, "entropy": 0.6, "approx_kl": 0.01}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    n = 2_000 if args.quick else args.events
    torch.set_num_threads(1)
    os.environ.setdefault("WANDB_SILENT", "true")
    torch.manual_seed(0)
    _, state = torch.nn.LSTM(2, 64)(torch.randn(8, 8, 2))
    health = compute_lstm_health((state[0].detach(), state[1].detach()))
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "bench-backends"
        hub = TelemetryHub("bench-backends")
        hub.subscribe(AnomalyEscalator(), mode="inline")
        hub.subscribe(WandBBackend("esper-bench", mode="offline", dir=run_dir))
        hub.subscribe(AnalyticsCollector(run_dir, fsync="flush"))
        hub.subscribe(StructlogBackend(run_dir / "log.jsonl"))
        start = time.perf_counter()
        for k in range(n):
            emit_ppo_update_event(hub, update=k, metrics=STATS, lstm_health=health)
        emitted = time.perf_counter() - start
        stats = hub.close(timeout=600)
        total = time.perf_counter() - start
    print(f"events: {n}, hub emitted {stats.emitted}")
    print("| measure | seconds | events/s |")
    print("|---|---:|---:|")
    print(f"| emit (trainer's thread) | {emitted:.2f} | {n / emitted:,.0f} |")
    print(f"| end to end (close returned) | {total:.2f} | {n / total:,.0f} |")
    print()
    print("| backend | delivered | failed | dropped | p50 ms | p99 ms |")
    print("|---|---:|---:|---:|---:|---:|")
    for s in stats.subscribers:
        print(
            f"| {s.name} | {s.delivered} | {s.failed} | {s.dropped} | "
            f"{s.latency_p50_ms:.3f} | {s.latency_p99_ms:.3f} |"
        )
    print(f"\nlossless: {stats.lossless}")


if __name__ == "__main__":
    main()
