"""PPO with an LSTM policy in one file, CleanRL style, with esper watching the LSTM.

The task is CartPole-v1 without its two velocities, which a policy can only solve by
remembering: the recurrent state carries the motion. The trainer is the usual
single-file recurrent PPO: a rollout of ``--num-steps`` per env that carries the LSTM
state across steps (zeroed where an episode starts), GAE, then ``--update-epochs``
passes over minibatches of whole env sequences, replayed from the state the rollout
started with.

esper takes the lines that end in ``# esper`` (nine): a hub, two backends, ``track``
on the agent (forward hooks: no state is passed around by hand), the run block, and
one emit per update. Run it::

    python examples/cleanrl_ppo_lstm.py --num-updates 40 --run-dir runs/cleanrl
    esper report runs/cleanrl

A NaN or an exploding LSTM state makes the escalator halt the run cleanly: the ``with
hub.run()`` block ends with status ``halted`` and the process exits 0.
"""

from __future__ import annotations

import argparse
import time
from collections import deque
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn
from torch.distributions import Categorical

from esper_telemetry import TelemetryHub, emit_ppo_update_event, track  # esper
from esper_telemetry.backends import AnalyticsCollector, AnomalyEscalator  # esper


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run-dir", default="runs/cleanrl", help="where esper writes the run")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--num-envs", type=int, default=4)
    p.add_argument("--num-steps", type=int, default=64, help="rollout length per env")
    p.add_argument("--num-updates", type=int, default=40)
    p.add_argument("--learning-rate", type=float, default=2.5e-3)
    p.add_argument("--gamma", type=float, default=0.99)
    p.add_argument("--gae-lambda", type=float, default=0.95)
    p.add_argument("--num-minibatches", type=int, default=2)
    p.add_argument("--update-epochs", type=int, default=4)
    p.add_argument("--clip-coef", type=float, default=0.2)
    p.add_argument("--ent-coef", type=float, default=0.01)
    p.add_argument("--vf-coef", type=float, default=0.5)
    p.add_argument("--max-grad-norm", type=float, default=0.5)
    return p.parse_args()


class NoVelocity(gym.ObservationWrapper[np.ndarray, Any, np.ndarray]):
    """CartPole's cart position and pole angle only."""

    def __init__(self, env: gym.Env[np.ndarray, Any]) -> None:
        super().__init__(env)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        return np.asarray(observation[[0, 2]], dtype=np.float32)


def layer_init(layer: nn.Linear, std: float = np.sqrt(2)) -> nn.Linear:
    nn.init.orthogonal_(layer.weight, std)
    nn.init.constant_(layer.bias, 0.0)
    return layer


class Agent(nn.Module):
    def __init__(self, obs_size: int, n_actions: int, hidden: int = 64) -> None:
        super().__init__()
        self.encoder = nn.Sequential(layer_init(nn.Linear(obs_size, hidden)), nn.Tanh())
        self.lstm = nn.LSTM(hidden, hidden)
        self.actor = layer_init(nn.Linear(hidden, n_actions), std=0.01)
        self.critic = layer_init(nn.Linear(hidden, 1), std=1.0)

    def unroll(
        self, obs: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor], done: torch.Tensor
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Run the LSTM step by step over time-major ``obs``, zeroing the state at resets."""
        batch = state[0].shape[1]
        x = self.encoder(obs).reshape(-1, batch, self.lstm.input_size)
        outputs = []
        for x_t, done_t in zip(x, done.reshape(-1, batch), strict=True):
            keep = (1.0 - done_t).view(1, -1, 1)
            out, state = self.lstm(x_t.unsqueeze(0), (keep * state[0], keep * state[1]))
            outputs.append(out)
        return torch.cat(outputs).flatten(0, 1), state

    def value(self, obs: torch.Tensor, state: Any, done: torch.Tensor) -> torch.Tensor:
        return self.critic(self.unroll(obs, state, done)[0])

    def act(
        self, obs: torch.Tensor, state: Any, done: torch.Tensor, action: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, Any]:
        hidden, state = self.unroll(obs, state, done)
        dist = Categorical(logits=self.actor(hidden))
        if action is None:
            action = dist.sample()
        return action, dist.log_prob(action), dist.entropy(), self.critic(hidden), state


class Rollout:
    """The buffers of one rollout: ``[num_steps, num_envs]`` each, time first."""

    def __init__(self, t_len: int, n: int, obs_size: int) -> None:
        self.obs = torch.zeros(t_len, n, obs_size)
        self.actions, self.logprobs = torch.zeros(t_len, n), torch.zeros(t_len, n)
        self.rewards, self.dones = torch.zeros(t_len, n), torch.zeros(t_len, n)
        self.values = torch.zeros(t_len, n)
        self.advantages = self.returns = torch.zeros(t_len, n)


def collect(agent: Agent, envs: Any, buf: Rollout, carry: dict[str, Any]) -> None:
    """One rollout of every env; ``carry`` holds what crosses rollouts (obs, state, returns)."""
    for step in range(buf.obs.shape[0]):
        buf.obs[step], buf.dones[step] = carry["obs"], carry["done"]
        with torch.no_grad():
            action, logprob, _, value, carry["state"] = agent.act(
                carry["obs"], carry["state"], carry["done"]
            )
        buf.values[step], buf.actions[step], buf.logprobs[step] = value.flatten(), action, logprob
        obs, reward, term, trunc, _ = envs.step(action.numpy())
        buf.rewards[step] = torch.as_tensor(reward, dtype=torch.float32)
        carry["obs"] = torch.as_tensor(obs)
        carry["done"] = torch.as_tensor(term | trunc, dtype=torch.float32)
        carry["running"] += reward
        for i in np.flatnonzero(term | trunc):
            carry["finished"].append(carry["running"][i])
            carry["running"][i] = 0.0
        carry["steps"] += len(reward)


def compute_gae(agent: Agent, buf: Rollout, carry: dict[str, Any], args: Any) -> None:
    """Advantages and returns by GAE, bootstrapped from the value of the next obs."""
    t_len = buf.obs.shape[0]
    with torch.no_grad():
        next_value = agent.value(carry["obs"], carry["state"], carry["done"]).flatten()
        advantages, last = torch.zeros_like(buf.rewards), torch.zeros_like(next_value)
        for t in reversed(range(t_len)):
            final = t == t_len - 1
            nonterminal = 1.0 - (carry["done"] if final else buf.dones[t + 1])
            following = next_value if final else buf.values[t + 1]
            delta = buf.rewards[t] + args.gamma * following * nonterminal - buf.values[t]
            last = delta + args.gamma * args.gae_lambda * nonterminal * last
            advantages[t] = last
    buf.advantages, buf.returns = advantages, advantages + buf.values


def minibatch_loss(
    agent: Agent, buf: Rollout, initial: Any, chosen: torch.Tensor, args: Any
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The PPO loss of the envs ``chosen``, replayed from the rollout's initial state."""
    _, logprob, entropy, value, _ = agent.act(
        buf.obs[:, chosen].flatten(0, 1),
        (initial[0][:, chosen], initial[1][:, chosen]),
        buf.dones[:, chosen].flatten(),
        buf.actions[:, chosen].flatten(),
    )
    log_ratio = logprob - buf.logprobs[:, chosen].flatten()
    ratio = log_ratio.exp()
    adv = buf.advantages[:, chosen].flatten()
    adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    clipped = ratio.clamp(1 - args.clip_coef, 1 + args.clip_coef)
    pg_loss = torch.max(-adv * ratio, -adv * clipped).mean()
    v_loss = 0.5 * ((value.flatten() - buf.returns[:, chosen].flatten()) ** 2).mean()
    loss = pg_loss - args.ent_coef * entropy.mean() + args.vf_coef * v_loss
    with torch.no_grad():
        parts = {
            "policy_loss": pg_loss,
            "value_loss": v_loss,
            "entropy": entropy.mean(),
            "approx_kl": ((ratio - 1) - log_ratio).mean(),
            "clip_fraction": ((ratio - 1.0).abs() > args.clip_coef).float().mean(),
        }
    return loss, parts


def update_policy(
    agent: Agent, optimizer: torch.optim.Optimizer, buf: Rollout, initial: Any, args: Any
) -> dict[str, float]:
    """``update_epochs`` passes over minibatches of whole env sequences; the statistics."""
    n = buf.obs.shape[1]
    clip_fractions = []
    for _ in range(args.update_epochs):
        for chosen in torch.randperm(n).split(n // args.num_minibatches):
            loss, parts = minibatch_loss(agent, buf, initial, chosen, args)
            optimizer.zero_grad()
            loss.backward()
            grad_norm = nn.utils.clip_grad_norm_(agent.parameters(), args.max_grad_norm)
            optimizer.step()
            clip_fractions.append(parts["clip_fraction"])
    y, pred = buf.returns.flatten(), buf.values.flatten()
    explained = 1.0 - (y - pred).var() / y.var()
    # The last minibatch's losses, as CleanRL logs them; one transfer for all of them.
    values = torch.stack(
        [
            *(parts[k] for k in ("policy_loss", "value_loss", "entropy", "approx_kl")),
            torch.stack(clip_fractions).mean(),
            explained,
            grad_norm,
        ]
    ).tolist()
    keys = ("policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction")
    stats = dict(zip((*keys, "explained_variance", "grad_norm"), values, strict=True))
    return {**stats, "learning_rate": optimizer.param_groups[0]["lr"]}


def main() -> None:
    args = parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)
    envs = gym.vector.SyncVectorEnv(
        [lambda: NoVelocity(gym.make("CartPole-v1")) for _ in range(args.num_envs)],
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,  # done -> next obs starts anew
    )
    n = args.num_envs
    agent = Agent(2, 2)
    optimizer = torch.optim.Adam(agent.parameters(), lr=args.learning_rate, eps=1e-5)
    buf = Rollout(args.num_steps, n, 2)
    obs, _ = envs.reset(seed=args.seed)
    zeros = torch.zeros(1, n, agent.lstm.hidden_size)
    carry: dict[str, Any] = {"obs": torch.as_tensor(obs), "done": torch.zeros(n), "steps": 0}
    carry.update(state=(zeros, zeros.clone()), running=np.zeros(n), finished=deque(maxlen=20))
    start = time.time()

    with TelemetryHub() as hub, track(agent, names={"lstm": "policy"}) as tracker:  # esper
        hub.subscribe(AnomalyEscalator(halt_on="critical"), mode="inline")  # esper
        hub.subscribe(AnalyticsCollector(args.run_dir))  # esper
        with hub.run(config=vars(args)):  # esper
            for update in range(args.num_updates):
                initial = (carry["state"][0].clone(), carry["state"][1].clone())
                for group in optimizer.param_groups:
                    group["lr"] = (1.0 - update / args.num_updates) * args.learning_rate
                collect(agent, envs, buf, carry)
                compute_gae(agent, buf, carry, args)
                stats = update_policy(agent, optimizer, buf, initial, args)
                finished = carry["finished"]
                mean_return = float(np.mean(finished)) if finished else float("nan")
                # fmt: off
                emit_ppo_update_event(hub, update=update, metrics=stats, tracker=tracker,  # esper
                                      env_steps=carry["steps"], episode_return_window=20,  # esper
                                      episode_return_mean=mean_return)  # esper
                # fmt: on
                sps = int(carry["steps"] / (time.time() - start))
                print(f"update {update}: return {mean_return:.1f}, steps/s {sps}", flush=True)
    envs.close()


if __name__ == "__main__":
    main()
