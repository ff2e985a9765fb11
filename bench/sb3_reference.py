"""Reference point for bench/learning.py: sb3-contrib's RecurrentPPO on CartPoleNoVel-v1.

``sb3_contrib.RecurrentPPO`` with RL Zoo's ``ppo_lstm`` hyper-parameters for
CartPoleNoVel-v1 (8 envs, n_steps 32, batch_size 256, gae_lambda 0.8, gamma 0.98, n_epochs
20, ent_coef 0, learning rate 1e-3 and clip 0.2 both linear to 0, VecNormalize of obs and
reward with gamma 0.98, MlpLstmPolicy with ortho_init=False, ReLU, lstm_hidden_size=64,
enable_critic_lstm=True, net_arch=dict(pi=[64], vf=[64])); device cpu, one torch thread.
CartPole-v1 loses its velocities (keeps obs 0 and 2) by a wrapper written here, so this
script needs no ``esper_telemetry`` in its separate venv; sb3's ``Monitor`` (from
``make_vec_env``, under VecNormalize) gives the raw episode returns.

Metric as in ``bench/learning.py``: after every update (rollout + training) the env steps
and the mean of the last 20 finished episodes; steps and seconds (from before the env and
model are built) at the end of the first update whose mean-of-20 is >= 475; the final
mean-of-20. ``total_timesteps`` = updates × 256: both trainers run the same updates.

Run in the sb3 venv (see bench/results/learning.md)::

    /tmp/sb3venv/bin/python bench/sb3_reference.py            # seeds 0 1 2, 1e5 steps
    /tmp/sb3venv/bin/python bench/sb3_reference.py --quick    # seed 0, 20 updates
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from collections import deque
from importlib.metadata import version
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from sb3_contrib import RecurrentPPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import VecNormalize
from torch import nn

THRESHOLD = 475.0
N_ENVS, N_STEPS = 8, 32
STEPS_PER_UPDATE = N_ENVS * N_STEPS
RESULTS = Path(__file__).resolve().parent / "results"


class NoVelocity(gym.ObservationWrapper[np.ndarray, Any, np.ndarray]):
    """CartPole observation reduced to cart position and pole angle (indices 0 and 2)."""

    KEEP = (0, 2)

    def __init__(self, env: gym.Env[np.ndarray, Any]) -> None:
        super().__init__(env)
        box = env.observation_space
        assert isinstance(box, gym.spaces.Box)
        keep = list(self.KEEP)
        self.observation_space = gym.spaces.Box(box.low[keep], box.high[keep], dtype=np.float32)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        return np.asarray(observation[list(self.KEEP)], dtype=np.float32)


def linear(start: float) -> Any:
    """RL Zoo's ``lin_<start>``: the value times sb3's progress_remaining (1 → 0)."""
    return lambda progress_remaining: progress_remaining * start


class Recorder(BaseCallback):
    """Mean of the last 20 Monitor episode returns after every update, and when ≥ 475."""

    def __init__(self, began: float) -> None:
        super().__init__()
        self.began = began
        self.window: deque[float] = deque(maxlen=20)
        self.episodes = 0
        self.curve: list[tuple[int, float]] = []
        self.pending: tuple[int, float] | None = None
        self.steps_to_threshold: int | None = None
        self.seconds_to_threshold: float | None = None

    def _on_step(self) -> bool:
        for info in self.locals["infos"]:
            if "episode" in info:
                self.window.append(float(info["episode"]["r"]))
                self.episodes += 1
        return True

    def _on_rollout_end(self) -> None:
        mean = sum(self.window) / len(self.window) if self.window else math.nan
        self.pending = (self.num_timesteps, mean)

    def _finish_update(self) -> None:
        """The update's training is done (next rollout starts, or learning ends)."""
        if self.pending is None:
            return
        steps, mean = self.pending
        self.pending = None
        self.curve.append((steps, mean))
        if self.steps_to_threshold is None and mean >= THRESHOLD:
            self.steps_to_threshold = steps
            self.seconds_to_threshold = time.perf_counter() - self.began

    _on_rollout_start = _on_training_end = _finish_update


def run_seed(seed: int, updates: int) -> dict[str, Any]:
    """Trains one seed for ``updates`` updates; its curve and the moments that matter."""
    began = time.perf_counter()
    venv = make_vec_env(lambda: NoVelocity(gym.make("CartPole-v1")), n_envs=N_ENVS, seed=seed)
    venv = VecNormalize(venv, norm_obs=True, norm_reward=True, gamma=0.98)
    model = RecurrentPPO(
        "MlpLstmPolicy",
        venv,
        n_steps=N_STEPS,
        batch_size=256,
        gae_lambda=0.8,
        gamma=0.98,
        n_epochs=20,
        ent_coef=0.0,
        learning_rate=linear(1e-3),
        clip_range=linear(0.2),
        policy_kwargs={
            "ortho_init": False,
            "activation_fn": nn.ReLU,
            "lstm_hidden_size": 64,
            "enable_critic_lstm": True,
            "net_arch": {"pi": [64], "vf": [64]},
        },
        seed=seed,
        device="cpu",
        verbose=0,
    )
    recorder = Recorder(began)
    model.learn(total_timesteps=updates * STEPS_PER_UPDATE, callback=recorder)
    total = time.perf_counter() - began
    venv.close()
    last = list(recorder.window)
    return {
        "seed": seed,
        "curve": recorder.curve,
        "steps_to_threshold": recorder.steps_to_threshold,
        "seconds_to_threshold": recorder.seconds_to_threshold,
        "final_mean20": sum(last) / len(last) if last else math.nan,
        "total_seconds": total,
        "episodes": recorder.episodes,
    }


def fmt(value: float | None, digits: int = 0) -> str:
    """A number for the table, or 'not reached'."""
    return "not reached" if value is None else f"{value:,.{digits}f}"


def median_reached(values: list[Any]) -> float | None:
    """Median with 'not reached' (None) ranked above every number; None if the median is one."""
    median = statistics.median(math.inf if v is None else float(v) for v in values)
    return None if math.isinf(median) else median


def table(results: list[dict[str, Any]]) -> str:
    """Markdown table: one row per seed, then medians."""
    lines = [
        "| seed | env steps to ≥475 | seconds to ≥475 | final mean-of-20 | total s | episodes |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['seed']} | {fmt(r['steps_to_threshold'])} | {fmt(r['seconds_to_threshold'], 1)}"
            f" | {r['final_mean20']:.1f} | {r['total_seconds']:.1f} | {r['episodes']} |"
        )
    med_steps = fmt(median_reached([r["steps_to_threshold"] for r in results]))
    med_secs = fmt(median_reached([r["seconds_to_threshold"] for r in results]), 1)
    med_final = statistics.median(r["final_mean20"] for r in results)
    med_total = statistics.median(r["total_seconds"] for r in results)
    lines.append(f"| median | {med_steps} | {med_secs} | {med_final:.1f} | {med_total:.1f} | |")
    return "\n".join(lines)


def _finite(value: object) -> object:
    """The same structure with non-finite floats replaced by None (strict JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=100_000, help="env steps per seed")
    parser.add_argument(
        "--quick", action="store_true", help="seed 0, 20 updates, no JSON unless --out"
    )
    parser.add_argument("--out", type=Path, default=None, help="JSON file to write")
    args = parser.parse_args()
    seeds: list[int] = [0] if args.quick else args.seeds
    updates = 20 if args.quick else math.ceil(args.steps / STEPS_PER_UPDATE)
    # --quick writes no JSON unless --out is given, so it never clobbers a full run.
    out: Path | None = args.out or (None if args.quick else RESULTS / "learning_sb3.json")

    torch.set_num_threads(1)
    versions = {
        name: version(name)
        for name in ("sb3-contrib", "stable-baselines3", "torch", "gymnasium", "numpy")
    }
    versions["python"] = platform.python_version()
    print(f"sb3: {updates} updates × {STEPS_PER_UPDATE} env steps, seeds {seeds}; {versions}")
    results = []
    for seed in seeds:
        r = run_seed(seed, updates)
        print(
            f"seed {seed}: to 475 {fmt(r['steps_to_threshold'])} steps / "
            f"{fmt(r['seconds_to_threshold'], 1)} s, final {r['final_mean20']:.1f}, "
            f"{r['total_seconds']:.1f} s",
            flush=True,
        )
        results.append(r)
    payload = {
        "trainer": "sb3_contrib.RecurrentPPO (RL Zoo ppo_lstm, CartPoleNoVel-v1)",
        "threshold": THRESHOLD,
        "updates": updates,
        "env_steps_per_update": STEPS_PER_UPDATE,
        "versions": versions,
        "seeds": results,
    }
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(_finite(payload), indent=1, allow_nan=False) + "\n")
        print(f"wrote {out}")
    print()
    print(table(results))


if __name__ == "__main__":
    main()
