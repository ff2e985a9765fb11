"""Cost of ``compute_lstm_health(..., group=...)`` across gloo ranks, against its parts.

Measured, per call, on every rank of a real gloo process group on CPU (one torch thread
per rank, ``time.perf_counter_ns``):

* **local**: ``compute_lstm_health((h, c))``, the single-process check of this rank's state;
* **group**: ``compute_lstm_health((h, c), group=torch.distributed.group.WORLD)``, the
  health of every rank's state together (one all-gather inside);
* **bare all-gather**: ``all_gather_single`` (``all_gather_into_tensor`` on older torch)
  of a float64 tensor of the same length as the one the group call gathers, alone;
* **local + bare**: the local check, then that bare all-gather: what a trainer would pay
  to measure its own rank and then share a few numbers. This is the fair baseline: gloo
  runs a collective on a worker thread, which sleeps while the caller computes, and a
  collective called right after other work pays for waking it (on this 2-core machine,
  hundreds of µs), while one called right after another (the bare row) does not.

The four alternate call by call in the same order on every rank (a collective needs all
ranks), after a warm-up, each after an untimed ``barrier()`` so that the ranks start it
together: what a call measures is then its own work and its wait for the slowest rank's
share of it, not the drift left by earlier calls. The report is rank 0's medians and
p90s; "extra" is group minus local, the cost of measuring all ranks instead of one, to
be read against the bare all-gather. One rank is a group too: there the collective waits
for no one, and the extra is the group path's own work. Before timing, each rank checks
that the group call says ``all_ranks`` and that every rank got the same metrics.

Run::

    .venv/bin/python bench/distributed_health.py            # 1, 2 and 4 ranks (a few min)
    .venv/bin/python bench/distributed_health.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist

Shape = tuple[int, int, int]

# (per-rank state [layers, batch, hidden], timed calls of each kind in a full run)
CASES: list[tuple[Shape, int]] = [((1, 32, 128), 2000), ((1, 256, 512), 600)]
WORLDS = (1, 2, 4)  # 1: the group path with no one to wait for, its own cost alone
QUICK_DIVISOR = 10


def _gather(out: torch.Tensor, row: torch.Tensor) -> None:
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    gather(out, row)


def _local_then_gather(
    h: torch.Tensor, c: torch.Tensor, gathered: torch.Tensor, row: torch.Tensor
) -> None:
    from esper_telemetry import compute_lstm_health

    compute_lstm_health((h, c))
    _gather(gathered, row)


def _row_length(layers: int) -> int:
    """How many float64 values the group call gathers from each rank."""
    from esper_telemetry.contracts.health import WORST_ENVS_PER_RANK
    from esper_telemetry.telemetry._health_group import _COLUMNS

    return len(_COLUMNS) + 2 * layers + 3 * WORST_ENVS_PER_RANK


def _percentile(samples: list[int], q: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(q * len(s)))] / 1e3


def rank_main(rank: int, world: int, rendezvous: Path, calls_divisor: int) -> dict[str, object]:
    """One rank: time the four kinds of call at every shape; return its figures."""
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=rendezvous.as_uri(),
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=120),
    )
    out: dict[str, object] = {}
    for shape, full_calls in CASES:
        gen = torch.Generator().manual_seed(rank)
        h, c = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen) * 2.0
        out[json.dumps(shape)] = time_case(h, c, world, max(20, full_calls // calls_divisor))
    dist.destroy_process_group()
    return out


def time_case(h: torch.Tensor, c: torch.Tensor, world: int, calls: int) -> dict[str, float]:
    """Medians and p90s (µs) of the four kinds of call on this rank's state ``(h, c)``."""
    from esper_telemetry import compute_lstm_health

    group_metrics = compute_lstm_health((h, c), group=dist.group.WORLD)
    assert group_metrics is not None
    assert (group_metrics.scope, group_metrics.ranks) == ("all_ranks", world)
    everyone: list[object] = [None] * world
    dist.all_gather_object(everyone, group_metrics.model_dump_json())
    assert len(set(map(str, everyone))) == 1, "ranks disagree"
    width = _row_length(h.shape[0])
    row = torch.randn(width, dtype=torch.float64)
    gathered = torch.empty(world * width, dtype=torch.float64)
    kinds: list[tuple[str, Callable[[], object]]] = [
        ("local", lambda: compute_lstm_health((h, c))),
        ("group", lambda: compute_lstm_health((h, c), group=dist.group.WORLD)),
        ("bare", lambda: _gather(gathered, row)),
        ("local+bare", lambda: _local_then_gather(h, c, gathered, row)),
    ]
    samples: dict[str, list[int]] = {name: [] for name, _ in kinds}
    clock = time.perf_counter_ns
    warmup = max(5, calls // 10)
    for i in range(warmup + calls):
        for name, fn in kinds if i % 2 == 0 else kinds[::-1]:
            dist.barrier()  # untimed: every rank starts the call together
            t0 = clock()
            fn()
            dt = clock() - t0
            if i >= warmup:
                samples[name].append(dt)
    return {
        "calls": calls,
        "width": width,
        **{f"{n}_median": _percentile(s, 0.5) for n, s in samples.items()},
        **{f"{n}_p90": _percentile(s, 0.9) for n, s in samples.items()},
    }


def run_world(world: int, quick: bool) -> dict[str, dict[str, float]]:
    """Start ``world`` ranks of this script; return rank 0's figures per shape."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
        argv = [sys.executable, __file__, "--child", str(world), str(Path(tmp) / "rdv"), tmp]
        procs = [
            subprocess.Popen([*argv, str(r), "--quick" if quick else "--full"], env=env)
            for r in range(world)
        ]
        for proc in procs:
            if proc.wait(timeout=900) != 0:
                raise SystemExit(f"a rank of {world} failed (exit {proc.returncode})")
        result: dict[str, dict[str, float]] = json.loads((Path(tmp) / "rank0.json").read_text())
        return result


def fmt(us: float) -> str:
    return f"{us / 1e3:,.2f} ms" if us >= 1e3 else f"{us:,.1f} µs"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few calls: a smoke run")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    now = datetime.datetime.now(datetime.UTC)
    print(
        f"{now:%Y-%m-%d %H:%M} UTC  {platform.processor() or platform.machine()}"
        f"  cores {os.cpu_count()}  load {load:.2f}  torch {torch.__version__}  "
        f"python {platform.python_version()}  one torch thread per rank  "
        f"{'quick' if args.quick else 'full'}\n"
    )
    print(
        "| ranks | state per rank | calls each | local | group | bare all-gather | "
        "local + bare | group − local | group / (local + bare) | group p90 | local + bare p90 |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for world in WORLDS:
        figures = run_world(world, args.quick)
        for shape, _ in CASES:
            f = figures[json.dumps(shape)]
            extra = f["group_median"] - f["local_median"]
            print(
                f"| {world} | {shape[0]}, {shape[1]}, {shape[2]} | {int(f['calls'])} | "
                f"{fmt(f['local_median'])} | {fmt(f['group_median'])} | "
                f"{fmt(f['bare_median'])} | {fmt(f['local+bare_median'])} | {fmt(extra)} | "
                f"{f['group_median'] / f['local+bare_median']:.2f} | "
                f"{fmt(f['group_p90'])} | {fmt(f['local+bare_p90'])} |"
            )
    print(f"\nthe gathered row is {_row_length(1)} float64 values per rank (one layer).")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        world_arg, rendezvous_arg, out_dir, rank_arg, mode = sys.argv[2:7]
        figures = rank_main(
            int(rank_arg),
            int(world_arg),
            Path(rendezvous_arg),
            QUICK_DIVISOR if mode == "--quick" else 1,
        )
        if rank_arg == "0":
            Path(out_dir, "rank0.json").write_text(json.dumps(figures))
    else:
        main()
