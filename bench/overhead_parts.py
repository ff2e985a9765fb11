"""Where telemetry's time goes on the training thread: each part of an update, timed.

``bench/overhead.py`` gives one ratio, all of an update at NORMAL against all of it at
OFF. On a noisy shared machine that ratio swings by more than the 2 % it is judged
against; this script says instead what each part telemetry adds costs, in milliseconds,
so the ratio can be read against them. It wraps, for one run of the reference trainer,
the trainer's own steps (the rollout, the PPO epochs) and the three things telemetry adds
at NORMAL (the replay check of both LSTMs, the health check of both states, the emit of
the update's event with every backend's inline work) with a timer, alternating NORMAL
and OFF in blocks of updates as ``bench/overhead.py`` does, and prints each part's median
per update at each level.

    .venv/bin/python bench/overhead_parts.py                    # no backend, 120 updates
    .venv/bin/python bench/overhead_parts.py --backends local   # escalator, analytics, log
"""

from __future__ import annotations

import argparse
import functools
import gc
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from esper_telemetry import TelemetryHub, TelemetryLevel
from esper_telemetry.backends import (
    AnalyticsCollector,
    AnomalyEscalator,
    StructlogBackend,
    WandBBackend,
)
from esper_telemetry.training import ppo
from esper_telemetry.training.ppo import PPOConfig, UpdateInfo, train

#: The functions of ``esper_telemetry.training.ppo`` that are timed, with what they are.
PARTS = {
    "_rollout": "rollout (trainer)",
    "_ppo_epochs": "PPO epochs (trainer; holds the replay check)",
    "check_replay": "replay check, both LSTMs (telemetry)",
    "_health": "health check, both states (telemetry)",
    "emit_ppo_update_event": "emit, inline backends included (telemetry)",
}
#: Python's cyclic garbage collector, timed through ``gc.callbacks`` wherever it runs
#: (inside the parts above too: its pauses land in whatever code allocated last).
GC = "gc"


class _Timings:
    """Each timed call's seconds, by level and part, tagged with its update; the level
    alternates in blocks of updates, as in ``bench/overhead.py``."""

    def __init__(self, hub: TelemetryHub, block: int) -> None:
        self.hub, self.block = hub, block
        self.level = TelemetryLevel.NORMAL
        self.update = 0
        self.calls: dict[TelemetryLevel, dict[str, list[tuple[int, float]]]] = {
            TelemetryLevel.NORMAL: defaultdict(list),
            TelemetryLevel.OFF: defaultdict(list),
        }
        self.updates: dict[TelemetryLevel, dict[int, float]] = {
            TelemetryLevel.NORMAL: {},
            TelemetryLevel.OFF: {},
        }
        self._gc_began = 0.0

    def timed(self, name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(function)
        def wrapper(*a: Any, **k: Any) -> Any:
            began = time.perf_counter()
            try:
                return function(*a, **k)
            finally:
                self.add(name, time.perf_counter() - began)

        return wrapper

    def add(self, name: str, seconds: float) -> None:
        self.calls[self.level][name].append((self.update, seconds))

    def collected(self, phase: str, info: dict[str, int]) -> None:
        """A ``gc.callbacks`` hook: the collector's pauses."""
        if phase == "start":
            self._gc_began = time.perf_counter()
        else:
            self.add(GC, time.perf_counter() - self._gc_began)

    def record(self, info: UpdateInfo) -> None:
        """The trainer's ``on_update``: the whole update's time, then maybe a switch."""
        position = info.update % self.block
        if position != 0:  # as in bench/overhead.py: a block's first update is not timed
            self.updates[self.level][info.update] = info.seconds
        if position == self.block - 1:
            normal = self.level is TelemetryLevel.NORMAL
            self.level = TelemetryLevel.OFF if normal else TelemetryLevel.NORMAL
            self.hub.set_level(self.level, reason="overhead benchmark")
        self.update = info.update + 1


def _hub(backends: str, run_dir: Path) -> TelemetryHub:
    hub = TelemetryHub("overhead-parts")
    if backends in ("local", "all"):
        hub.subscribe(AnomalyEscalator(), mode="inline")
        hub.subscribe(AnalyticsCollector(run_dir))
        hub.subscribe(StructlogBackend(run_dir / "log.jsonl"))
    if backends == "all":
        hub.subscribe(WandBBackend("esper-bench", mode="offline", dir=run_dir))
    return hub


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--updates", type=int, default=120)
    parser.add_argument("--block", type=int, default=5, help="updates per level block")
    parser.add_argument("--backends", choices=("none", "local", "all"), default="none")
    args = parser.parse_args()
    torch.set_num_threads(1)
    originals = {name: getattr(ppo, name) for name in PARTS}
    with tempfile.TemporaryDirectory() as tmp:
        hub = _hub(args.backends, Path(tmp) / "parts")
        timings = _Timings(hub, args.block)
        gc.callbacks.append(timings.collected)
        try:
            for name, function in originals.items():
                setattr(ppo, name, timings.timed(name, function))
            train(PPOConfig(updates=args.updates), hub, on_update=timings.record)
        finally:
            gc.callbacks.remove(timings.collected)
            for name, function in originals.items():
                setattr(ppo, name, function)
        hub.close(timeout=120)
    print(f"backends: {args.backends}; {args.updates} updates in blocks of {args.block}")
    print("| part | NORMAL median ms/update | OFF median ms/update |")
    print("|---|---:|---:|")
    rows = {**PARTS, GC: "garbage collection, wherever it ran (mean, not median)"}
    for name, what in rows.items():
        cells = [
            _per_update(timings.calls[lv][name], timings.updates[lv], mean=name == GC)
            for lv in LEVELS
        ]
        print(f"| {what} | {cells[0]} | {cells[1]} |")
    on, off = (statistics.median(timings.updates[lv].values()) * 1e3 for lv in LEVELS)
    print(f"| whole update | {on:.2f} | {off:.2f} |")
    print(f"\nratio of the whole update's medians, NORMAL/OFF: {on / off:.3f}")


LEVELS = (TelemetryLevel.NORMAL, TelemetryLevel.OFF)


def _per_update(
    rows: list[tuple[int, float]], timed: dict[int, float], *, mean: bool = False
) -> str:
    """The median (or mean) over the timed updates of each one's summed calls (zero for
    an update without one). The mean for the collector: most updates have no long pause,
    so its median says nothing of the few that have."""
    per = dict.fromkeys(timed, 0.0)
    for update, seconds in rows:
        if update in per:
            per[update] += seconds
    if not any(per.values()):
        return "-"
    return f"{(statistics.mean if mean else statistics.median)(per.values()) * 1e3:.2f}"


if __name__ == "__main__":
    main()
