"""Learning speed of our recurrent PPO on CartPoleNoVel-v1 (CartPole without velocities).

Measured, per seed, for ``esper_telemetry.training.ppo.train`` with its default settings
(RL Zoo ``ppo_lstm``: 8 envs × 32 steps = 256 env steps per update) and the hub at level
NORMAL with one inline subscriber that keeps what the diagnosis of a collapse needs (so
the telemetry's cost is in the times), ``torch.set_num_threads(1)``:

* the learning curve: after every update, the env steps so far and the mean return of
  the last 20 finished episodes (raw, undiscounted; NaN before any episode ended);
* the env steps and wall-clock seconds at the end of the first update whose mean-of-20
  is >= 475. Seconds run from just before ``train`` is called (env and model creation
  included) to the end of that update;
* the final mean-of-20 and the run's total seconds;
* per update, from the published event: approx_kl, clip_fraction, value_loss,
  explained_variance, entropy, the learning rate, the h and c RMS and max |c| of both
  LSTM states (``policy``, ``value``), for reading what happened around a collapse, and
  each state's replay check (``replay_max_abs_diff``, ``replay_drift``).

Target: mean-of-20 >= 475 within 1e5 env steps. ``bench/sb3_reference.py`` measures
sb3-contrib's RecurrentPPO the same way; ``bench/results/learning.md`` compares them.

Run::

    .venv/bin/python bench/learning.py                # seeds 0 1 2, 1e5 steps (~3 min/seed)
    .venv/bin/python bench/learning.py --quick        # seed 0, 20 updates (smoke run)
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch

from esper_telemetry import TelemetryHub
from esper_telemetry.contracts import PPOUpdateCompleted, TelemetryEvent
from esper_telemetry.training.ppo import PRESETS, PPOConfig, UpdateInfo, train

THRESHOLD = 475.0
STEPS_PER_UPDATE = PPOConfig().envs * PPOConfig().steps
RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class SeedResult:
    """One seed's learning curve and the moments that matter."""

    seed: int
    curve: list[tuple[int, float]] = field(default_factory=list)
    steps_to_threshold: int | None = None
    seconds_to_threshold: float | None = None
    final_mean20: float = math.nan
    total_seconds: float = 0.0
    episodes: int = 0
    updates: list[dict[str, float]] = field(default_factory=list)
    """Per update: the statistics and LSTM figures the diagnosis reads (see the docstring)."""


_STATS = (
    "approx_kl",
    "clip_fraction",
    "value_loss",
    "explained_variance",
    "entropy",
    "learning_rate",
)
_FIGURES = ("h_rms", "c_rms", "c_max")


class Keep:
    """An inline subscriber keeping each update's statistics and LSTM figures."""

    def __init__(self, into: list[dict[str, float]]) -> None:
        self.into = into

    def handle(self, event: TelemetryEvent) -> None:
        if not isinstance(event, PPOUpdateCompleted):
            return
        p = event.payload
        row = {k: getattr(p, k) for k in _STATS if getattr(p, k) is not None}
        for name, health in p.named_health().items():
            row.update({f"{name}/{f}": getattr(health, f) for f in _FIGURES})
        for name, replay in p.replay.items():
            row[f"{name}/replay_max_abs_diff"] = replay.max_abs_diff
            if replay.drift is not None:
                row[f"{name}/replay_drift"] = replay.drift
        self.into.append(row)


def run_seed(seed: int, updates: int, overrides: dict[str, Any] | None = None) -> SeedResult:
    """Trains one seed for ``updates`` updates and records its curve; ``overrides`` are
    PPOConfig fields to change (a variant under test)."""
    result = SeedResult(seed=seed)
    began = time.perf_counter()

    def on_update(info: UpdateInfo) -> None:
        now = time.perf_counter() - began
        result.curve.append((info.env_steps, info.mean_return))
        if result.steps_to_threshold is None and info.mean_return >= THRESHOLD:
            result.steps_to_threshold, result.seconds_to_threshold = info.env_steps, now

    with TelemetryHub(level="normal") as hub:
        hub.subscribe(Keep(result.updates), mode="inline")
        config = PPOConfig(updates=updates, seed=seed, **(overrides or {}))
        trained = train(config, hub, on_update=on_update)
    result.total_seconds = time.perf_counter() - began
    if trained.status != "completed":
        raise RuntimeError(f"seed {seed}: run {trained.status}: {trained.message}")
    result.final_mean20 = trained.mean_return
    result.episodes = len(trained.episode_returns)
    return result


def fmt(value: float | None, digits: int = 0) -> str:
    """A number for the table, or 'not reached'."""
    if value is None:
        return "not reached"
    return f"{value:,.{digits}f}"


def median_reached(values: list[int | None] | list[float | None]) -> float | None:
    """Median with 'not reached' ranked above every number; None if the median is one."""
    median = statistics.median(math.inf if v is None else float(v) for v in values)
    return None if math.isinf(median) else median


def table(results: list[SeedResult]) -> str:
    """Markdown table: one row per seed, then medians."""
    lines = [
        "| seed | env steps to ≥475 | seconds to ≥475 | final mean-of-20 | total s | episodes |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.seed} | {fmt(r.steps_to_threshold)} | {fmt(r.seconds_to_threshold, 1)} "
            f"| {r.final_mean20:.1f} | {r.total_seconds:.1f} | {r.episodes} |"
        )
    med_steps = fmt(median_reached([r.steps_to_threshold for r in results]))
    med_secs = fmt(median_reached([r.seconds_to_threshold for r in results]), 1)
    med_final = statistics.median(r.final_mean20 for r in results)
    med_total = statistics.median(r.total_seconds for r in results)
    lines.append(f"| median | {med_steps} | {med_secs} | {med_final:.1f} | {med_total:.1f} | |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=100_000, help="env steps per seed")
    parser.add_argument(
        "--quick", action="store_true", help="seed 0, 20 updates, no JSON unless --out"
    )
    parser.add_argument("--out", type=Path, default=None, help="JSON file to write")
    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="esper",
        help="the trainer's settings: its defaults, or RL Zoo's exactly (rl-zoo)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="a PPOConfig field to change, VALUE read as JSON (e.g. lr=5e-4); repeatable",
    )
    args = parser.parse_args()
    overrides = {**PRESETS[args.preset], **dict(_override(text) for text in args.overrides)}
    seeds: list[int] = [0] if args.quick else args.seeds
    updates = 20 if args.quick else math.ceil(args.steps / STEPS_PER_UPDATE)
    # --quick writes no JSON unless --out is given, so it never clobbers a full run.
    out: Path | None = args.out or (None if args.quick else RESULTS / "learning_ours.json")

    torch.set_num_threads(1)
    print(
        f"ours: {updates} updates × {STEPS_PER_UPDATE} = {updates * STEPS_PER_UPDATE} env steps, "
        f"seeds {seeds}; python {platform.python_version()}, torch {torch.__version__}, "
        f"gymnasium {version('gymnasium')}, threads {torch.get_num_threads()}",
        flush=True,
    )
    results = []
    for seed in seeds:
        r = run_seed(seed, updates, overrides)
        print(
            f"seed {seed}: to 475 {fmt(r.steps_to_threshold)} steps / "
            f"{fmt(r.seconds_to_threshold, 1)} s, final {r.final_mean20:.1f}, "
            f"{r.total_seconds:.1f} s",
            flush=True,
        )
        results.append(r)
    payload = {
        "trainer": "esper_telemetry.training.ppo",
        "threshold": THRESHOLD,
        "updates": updates,
        "env_steps_per_update": STEPS_PER_UPDATE,
        "overrides": overrides,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "gymnasium": version("gymnasium"),
        },
        "seeds": [asdict(r) for r in results],
    }
    # NaN (mean-of-20 before any episode ended) is written as null: strict JSON.
    text = json.dumps(_finite(payload), indent=1, allow_nan=False)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
        print(f"wrote {out}")
    print()
    print(table(results))


def _override(text: str) -> tuple[str, Any]:
    """``FIELD=VALUE`` as (field, value), VALUE read as JSON (a bare word as a string)."""
    name, sep, raw = text.partition("=")
    if not sep or name not in PPOConfig.__dataclass_fields__:
        raise SystemExit(f"--set: {text!r} is not FIELD=VALUE with a PPOConfig field")
    try:
        return name, json.loads(raw)
    except json.JSONDecodeError:
        return name, raw


def _finite(value: object) -> object:
    """The same structure with non-finite floats replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


if __name__ == "__main__":
    main()
