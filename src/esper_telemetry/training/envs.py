"""The reference task: CartPole without velocities, a problem that needs memory.

CartPole-v1 observes cart position, cart velocity, pole angle and pole angular
velocity. Dropping the two velocities leaves a partially observed task ("CartPoleNoVel",
the usual benchmark for recurrent PPO): a policy must infer motion from the history of
positions and angles, i.e. keep it in its recurrent state.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode, SyncVectorEnv

#: Indices kept from CartPole's observation: cart position and pole angle.
KEPT = (0, 2)


class NoVelocityObservation(gym.ObservationWrapper[np.ndarray, Any, np.ndarray]):
    """Keeps only the position components of a CartPole observation."""

    def __init__(self, env: gym.Env[np.ndarray, Any]) -> None:
        super().__init__(env)
        space = env.observation_space
        assert isinstance(space, gym.spaces.Box)
        self.observation_space = gym.spaces.Box(
            low=space.low[list(KEPT)], high=space.high[list(KEPT)], dtype=np.float32
        )

    def observation(self, observation: np.ndarray) -> np.ndarray:
        return np.asarray(observation[list(KEPT)], dtype=np.float32)


def make_cartpole_novel(num_envs: int) -> SyncVectorEnv:
    """``num_envs`` masked CartPole-v1 envs that reset in the same step they end.

    Same-step autoreset: when an episode ends, ``step`` already returns the first
    observation of the next one and the last observation under ``info["final_obs"]``,
    so every transition the trainer stores is a real one.
    """
    if not isinstance(num_envs, int) or num_envs < 1:
        raise ValueError(f"num_envs must be an int >= 1, got {num_envs!r}")
    return SyncVectorEnv(
        [lambda: NoVelocityObservation(gym.make("CartPole-v1")) for _ in range(num_envs)],
        autoreset_mode=AutoresetMode.SAME_STEP,
    )
