"""A child process for the load tests: N events from T threads through a hub with every
backend, then one JSON line on stdout with the hub's stats, timings and peak memory.

Run as ``python tests/reliability/load_child.py RUN_ROOT EVENTS THREADS [--wandb]``. The
analytics log it leaves (``RUN_ROOT/load/events.jsonl``) is checked by the parent.
"""

from __future__ import annotations

import json
import resource
import sys
import threading
import time
from pathlib import Path

RUN_ID = "load"


def rss_mib() -> float:
    """This process's resident memory now, in MiB (from /proc)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / 2**20


def peak_rss_mib() -> float:
    """This process's peak resident memory, in MiB.

    VmHWM, not getrusage's ru_maxrss: Linux keeps ru_maxrss across execve, so a child
    forked from a big parent (pytest) would report the parent's peak.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def main(root: Path, events: int, threads: int, with_wandb: bool) -> dict[str, object]:
    from esper_telemetry import LSTMHealthMetrics, TelemetryHub, emit_ppo_update_event
    from esper_telemetry.backends import AnalyticsCollector, AnomalyEscalator, StructlogBackend
    from esper_telemetry.contracts import RunLayout

    run_dir = root / RUN_ID
    health = LSTMHealthMetrics(
        h_l2_total=1.0,
        c_l2_total=2.0,
        h_rms=0.1,
        c_rms=0.2,
        h_env_rms_mean=0.1,
        h_env_rms_max=0.15,
        c_env_rms_mean=0.2,
        c_env_rms_max=0.25,
        h_max=0.5,
        c_max=0.9,
        has_nan=False,
        has_inf=False,
    )
    hub = TelemetryHub(RUN_ID)
    hub.subscribe(AnomalyEscalator(), mode="inline")
    if with_wandb:
        from esper_telemetry.backends import WandBBackend

        hub.subscribe(WandBBackend("esper-load", mode="offline", dir=run_dir))
    hub.subscribe(AnalyticsCollector(run_dir))
    hub.subscribe(StructlogBackend(RunLayout(run_dir).log))
    per_thread = events // threads
    samples: list[float] = []
    start = time.perf_counter()

    def emitter(t: int) -> None:
        for i in range(per_thread):
            # One update for every event: W&B drops a step lower than its current one,
            # and the threads interleave; the (thread, i) pair rides in extra.
            emit_ppo_update_event(
                hub,
                update=0,
                metrics={
                    "policy_loss": 0.0,
                    "value_loss": 1.0,
                    "entropy": 0.5,
                    "thread": t,
                    "i": i,
                },
                lstm_health=health,
            )
            if t == 0 and i % 1000 == 0:
                samples.append(rss_mib())

    workers = [threading.Thread(target=emitter, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    emitted_s = time.perf_counter() - start
    stats = hub.close(timeout=600)
    total_s = time.perf_counter() - start
    return {
        "emitted": stats.emitted,
        "subscribers": {
            s.name: [s.delivered, s.failed, s.dropped, s.abandoned, s.undelivered, s.stuck]
            for s in stats.subscribers
        },
        "lost": stats.lost,
        "emit_s": emitted_s,
        "total_s": total_s,
        "rss_samples_mib": samples,
        "peak_rss_mib": peak_rss_mib(),
    }


if __name__ == "__main__":
    root, n, t = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    print(json.dumps(main(root, n, t, "--wandb" in sys.argv[4:])))
