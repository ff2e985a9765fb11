"""Cost of measuring several named states at once, of a GRU state, and of ``track``'s hooks.

Three side-by-side comparisons, each timed interleaved (A, B, B, A, ...) in one process
with ``torch.set_num_threads(1)``, float32 states from a standard normal on CPU:

* **together / apart**: ``compute_recurrent_health({"policy": (h, c), "value": (h2, c2)})``
  (one transfer to the host for both) against two ``compute_lstm_health`` calls (one
  transfer each);
* **gru / lstm**: ``compute_lstm_health(h)`` of a GRU state against ``compute_lstm_health
  ((h, c))`` of an LSTM state of the same shape;
* **hooked / bare**: one step of ``nn.LSTM`` (the rollout's per-step call) with the forward
  hook that ``track`` installs against the same call without it.

Before timing, the script checks that together and apart give the same metrics.

Run::

    .venv/bin/python bench/recurrent_health.py            # full run (about 20 s)
    .venv/bin/python bench/recurrent_health.py --quick    # smoke run (a few seconds)
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial

import torch
from torch import nn

from esper_telemetry import compute_lstm_health, compute_recurrent_health, track

SHAPES = [(1, 8, 64), (1, 256, 512)]
CALLS = 2000
QUICK_DIVISOR = 20


def paired(a: Callable[[], object], b: Callable[[], object], calls: int) -> tuple[float, float]:
    """Median µs per call of a and of b, timed in ABBA order."""
    for _ in range(max(calls // 20, 5)):
        a(), b()
    times: dict[int, list[float]] = {0: [], 1: []}
    order = (0, 1, 1, 0)
    fns = (a, b)
    for i in range(calls * 2):
        which = order[i % 4]
        start = time.perf_counter_ns()
        fns[which]()
        times[which].append((time.perf_counter_ns() - start) / 1e3)
    return statistics.median(times[0]), statistics.median(times[1])


def state(shape: tuple[int, int, int], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g), torch.randn(shape, generator=g)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run")
    args = parser.parse_args()
    torch.set_num_threads(1)
    calls = CALLS // QUICK_DIVISOR if args.quick else CALLS
    print(f"# bench/recurrent_health.py  {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    print(f"# python {sys.version.split()[0]}, torch {torch.__version__}, {platform.machine()}")
    print(f"# {calls} timed calls per version per case; medians in µs; one torch thread\n")
    print("| case | shape [layers, batch, hidden] | A µs | B µs | A/B |")
    print("|---|---|---|---|---|")
    for shape in SHAPES:
        policy, value = state(shape, 0), state(shape, 1)
        states = {"policy": policy, "value": value}
        apart = {"policy": compute_lstm_health(policy), "value": compute_lstm_health(value)}
        assert compute_recurrent_health(states) == apart
        row(
            "together / apart (2 LSTM states)",
            shape,
            *paired(
                partial(compute_recurrent_health, states), partial(measure_apart, states), calls
            ),
        )
        row(
            "gru (h) / lstm (h, c)",
            shape,
            *paired(
                partial(compute_lstm_health, policy[0]), partial(compute_lstm_health, policy), calls
            ),
        )
    for batch, hidden in ((8, 64), (256, 512)):
        lstm = nn.LSTM(hidden, hidden)
        x = torch.randn(1, batch, hidden)
        hooked = nn.LSTM(hidden, hidden)
        hooked.load_state_dict(lstm.state_dict())
        tracker = track(hooked)
        with torch.no_grad():
            times = paired(partial(hooked, x), partial(lstm, x), calls // 4)
        tracker.remove()
        row("hooked / bare (one LSTM step)", (1, batch, hidden), *times)


def measure_apart(states: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> list[object]:
    return [compute_lstm_health(s) for s in states.values()]


def row(case: str, shape: tuple[int, int, int], a: float, b: float) -> None:
    print(f"| {case} | {list(shape)} | {a:.1f} | {b:.1f} | {a / b:.2f} |")


if __name__ == "__main__":
    main()
