"""sb3-contrib's RecurrentPPO with esper: one callback, one event per PPO update.

Needs the ``sb3`` extra (``pip install 'esper-telemetry[sb3]'``). Run it::

    python examples/sb3_recurrent_ppo.py --updates 50 --run-dir runs/sb3
    esper report runs/sb3

The task is CartPole without its velocities (esper's ``NoVelocityObservation``
wrapper), which needs the LSTM's memory. ``EsperCallback`` turns every ``train()`` of
``learn()`` into a ``PPO_UPDATE_COMPLETED`` event carrying SB3's statistics and the
health of the actor's and the critic's LSTM states; the escalator halts ``learn()``
cleanly on a critical anomaly (NaN, Inf, an exploding cell state).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import gymnasium as gym
from sb3_contrib import RecurrentPPO
from stable_baselines3.common.env_util import make_vec_env

from esper_telemetry import PPOUpdateCompleted, TelemetryHub
from esper_telemetry.backends import AnalyticsCollector, AnomalyEscalator
from esper_telemetry.integrations.sb3 import EsperCallback
from esper_telemetry.training.envs import NoVelocityObservation


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--updates", type=int, default=50, help="PPO updates (train() calls)")
    p.add_argument("--n-envs", type=int, default=4)
    p.add_argument("--n-steps", type=int, default=64, help="rollout length per env")
    p.add_argument("--run-dir", type=Path, default=Path("runs/sb3"), help="where the run goes")
    args = p.parse_args()
    if args.run_dir.is_dir() and any(args.run_dir.iterdir()):
        p.error(f"--run-dir: {args.run_dir} is not empty; give a new directory")
    return args


def show(event: PPOUpdateCompleted) -> None:
    """One line per update: what SB3 did and how the actor's LSTM state looks."""
    p = event.payload
    policy = p.recurrent_health["policy"]
    print(
        f"update {event.update}: {p.env_steps} env steps, policy loss {p.policy_loss:+.4f}, "
        f"LSTM h rms {policy.h_rms:.3f}, c max {policy.c_max:.3f}"
    )


def main() -> None:
    args = parse_args()
    env = make_vec_env(lambda: NoVelocityObservation(gym.make("CartPole-v1")), args.n_envs, seed=0)
    model = RecurrentPPO(
        "MlpLstmPolicy",
        env,
        n_steps=args.n_steps,
        batch_size=args.n_envs * args.n_steps,  # one minibatch of whole sequences
        n_epochs=4,
        seed=0,
        device="cpu",
        policy_kwargs={"lstm_hidden_size": 32},  # the actor and the critic each get one
    )
    with TelemetryHub(args.run_dir.name) as hub:
        hub.subscribe(AnomalyEscalator(halt_on="critical"), mode="inline")
        hub.subscribe(AnalyticsCollector(args.run_dir))  # events.jsonl: esper report, query
        hub.subscribe(show, events=PPOUpdateCompleted, mode="inline")
        # One update per n_envs * n_steps env steps: ask for exactly --updates of them.
        model.learn(args.updates * args.n_envs * args.n_steps, callback=EsperCallback(hub))


if __name__ == "__main__":
    main()
