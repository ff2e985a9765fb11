"""What the replay check costs: one PPO update with it against the same update without.

Two parts, both with ``torch.set_num_threads(1)``, medians over alternating runs:

* **esper ppo** (``training/ppo.py``, default settings: 8 envs x 32 steps, 20 epochs, one
  minibatch): the PPO epochs of one real rollout, run from the same weights and optimiser
  state each time, with the replay check of both LSTMs and without it: the check alone
  (every update at NORMAL: the first training pass compared with the rollout, which with
  one minibatch reuses the training pass itself), and the check with its drift (one more
  pass without gradient; at DEBUG or with ``--diagnostics``).
* **The SB3 callback** (sb3-contrib RecurrentPPO, RL Zoo's CartPoleNoVel settings: 8 envs
  x 32 steps, one minibatch of 256, 20 epochs, 64 LSTM units, a critic LSTM): the
  callback's replay of the rollout buffer (one ``evaluate_actions`` without gradient)
  against ``model.train()`` on the same buffer.

Run::

    .venv/bin/python bench/replay.py             # 30 pairs each
    .venv/bin/python bench/replay.py --pairs 5   # a quick look
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import torch


def _median_ms(times: list[float]) -> float:
    return statistics.median(times) * 1e3


def esper_ppo(pairs: int) -> tuple[float, float, float, float]:
    """Median ms of the PPO epochs with the replay check and its drift against without,
    then with the check alone (what NORMAL runs) against without."""
    from esper_telemetry.training import ppo

    config = ppo.PPOConfig(updates=2, seed=0)
    result = ppo.TrainResult(status="completed", updates=0, env_steps=0)
    runner = ppo._start(config, result, None)
    try:
        rollout = ppo._rollout(runner)
    finally:
        runner.envs.close()
    weights = copy.deepcopy(runner.model.state_dict())
    moments = copy.deepcopy(runner.optimizer.state_dict())

    def epochs(check: bool, drift: bool = True) -> float:
        runner.model.load_state_dict(weights)
        runner.optimizer.load_state_dict(moments)
        generator = torch.Generator().manual_seed(1)
        began = time.perf_counter()
        ppo._ppo_epochs(
            runner.model,
            runner.optimizer,
            config,
            config.clip,
            generator,
            rollout.tensors(),
            rollout.initial_state,
            outputs=rollout.outputs if check else None,
            drift=drift,
        )
        return time.perf_counter() - began

    with_drift, without = _pairs(pairs, lambda: epochs(True), lambda: epochs(False))
    check_only, without_too = _pairs(pairs, lambda: epochs(True, False), lambda: epochs(False))
    return with_drift, without, check_only, without_too


def sb3_callback(pairs: int) -> tuple[float, float]:
    """Median ms of the callback's replay of the buffer, and of ``model.train()``."""
    import gymnasium as gym
    from sb3_contrib import RecurrentPPO
    from stable_baselines3.common.env_util import make_vec_env
    from torch import nn

    from esper_telemetry.integrations.sb3 import _replay_check
    from esper_telemetry.training.envs import NoVelocityObservation

    model = RecurrentPPO(
        "MlpLstmPolicy",
        make_vec_env(lambda: NoVelocityObservation(gym.make("CartPole-v1")), 8, seed=0),
        n_steps=32,
        batch_size=256,
        n_epochs=20,
        gae_lambda=0.8,
        gamma=0.98,
        ent_coef=0.0,
        seed=0,
        device="cpu",
        policy_kwargs={
            "ortho_init": False,
            "activation_fn": nn.ReLU,
            "lstm_hidden_size": 64,
            "enable_critic_lstm": True,
            "net_arch": {"pi": [64], "vf": [64]},
        },
    )
    model.learn(256)  # one rollout and one update: the buffer is full and laid out
    weights = copy.deepcopy(model.policy.state_dict())
    moments = copy.deepcopy(model.policy.optimizer.state_dict())

    def check() -> float:
        began = time.perf_counter()
        _replay_check(model, None)
        return time.perf_counter() - began

    def train() -> float:
        model.policy.load_state_dict(weights)
        model.policy.optimizer.load_state_dict(moments)
        began = time.perf_counter()
        model.train()
        return time.perf_counter() - began

    return _pairs(pairs, check, train)


def _pairs(
    pairs: int, first: Callable[[], float], second: Callable[[], float]
) -> tuple[float, float]:
    a: list[float] = []
    b: list[float] = []
    first(), second()  # warm up
    for i in range(pairs):
        if i % 2:
            b.append(second())
            a.append(first())
        else:
            a.append(first())
            b.append(second())
    return _median_ms(a), _median_ms(b)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--pairs", type=int, default=30, help="alternating runs of each")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    with_drift, without, check_only, without_too = esper_ppo(args.pairs)
    print(
        f"esper ppo, PPO epochs of one update: {with_drift:.2f} ms with the replay check and "
        f"its drift, {without:.2f} ms without ({with_drift / without:.3f}x)"
    )
    print(
        f"esper ppo, PPO epochs of one update: {check_only:.2f} ms with the replay check "
        f"alone, {without_too:.2f} ms without ({check_only / without_too:.3f}x)"
    )
    replay, train = sb3_callback(args.pairs)
    print(
        f"SB3 callback: replay of the buffer {replay:.2f} ms against model.train() "
        f"{train:.2f} ms ({replay / train:.3f} of it)"
    )


if __name__ == "__main__":
    main()
