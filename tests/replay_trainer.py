"""A small recurrent PPO trainer, CleanRL ppo_lstm style, for the replay-check tests.

A tanh encoder, an ``nn.LSTM`` and linear policy and value heads play CartPole-v1 in
several vector envs. The rollout runs the LSTM one step at a time, resetting the state
of an env at its episode starts, and stores the obs, the episode starts, the actions,
their log-probs, the values and the LSTM output of every step, plus the (h, c) the
window began with. The training pass re-runs the LSTM over the stored window the way
padded-batch trainers do (esper's reference trainer among them): the window is cut into
episode segments, the segments are padded into one batch, and the LSTM runs once over
it. Its output before the first optimiser step must be the rollout's, up to rounding
(the batched encoder and LSTM round a little differently from the step-by-step ones);
``check_replay`` compares them and the update is published with
``replay={"policy": ...}``.

``bug`` plants exactly one mistake in the training pass (the rollout is always right):

* ``"no_reset"``: the window is not cut at episode starts, so the state of one episode
  runs on into the next one.
* ``"late_reset"``: the reset mask is applied to the state after the step instead of
  before it, so the state is zeroed one step after the episode start: the step at the
  start sees the old episode's state and the step after it sees a zero state.
* ``"padding_as_steps"``: segments are padded at the front (left padding, the habit of
  sequence code for attention models) and the padded batch goes through a plain
  ``nn.LSTM`` call, so every segment shorter than the longest first runs its state
  through zero observations before its real steps.
* ``"zero_initial_state"``: every segment starts from zeros, including the first
  segment of an env, which should start from the stored (h, c) of the window. The
  first window starts from zeros anyway, so this shows from the second update on.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Literal, get_args

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode, SyncVectorEnv
from torch import nn

from esper_telemetry import TelemetryHub, compute_lstm_health, emit_ppo_update_event
from esper_telemetry.contracts import ReplayConsistency
from esper_telemetry.telemetry import check_replay

Bug = Literal["no_reset", "late_reset", "padding_as_steps", "zero_initial_state"]
BUGS: tuple[Bug, ...] = get_args(Bug)

State = tuple[torch.Tensor, torch.Tensor]


@dataclass
class Rollout:
    """One window of ``steps`` steps in every env; ``[steps, envs, ...]`` tensors."""

    obs: torch.Tensor
    starts: torch.Tensor
    """True where the step's observation is the first of an episode."""
    actions: torch.Tensor
    logp: torch.Tensor
    values: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor
    outputs: torch.Tensor
    """The LSTM output of every step, ``[steps, envs, hidden]``."""
    initial: State
    """The (h, c) carried into the window, before any reset at step 0."""


@dataclass
class UpdateRecord:
    """What one update did, for the tests to compare with what was published."""

    update: int
    starts: torch.Tensor
    replay: ReplayConsistency


class Agent(nn.Module):
    """A linear+tanh encoder of the observation, an LSTM over it, and linear policy and
    value heads on the LSTM output."""

    def __init__(self, obs_size: int, actions: int, hidden: int) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(obs_size, hidden), nn.Tanh())
        self.lstm = nn.LSTM(hidden, hidden)
        self.actor = nn.Linear(hidden, actions)
        self.critic = nn.Linear(hidden, 1)


class ReplayTrainer:
    """Recurrent PPO on CartPole-v1 that checks its replay every update.

    Args:
        hub: Where each update is published (subscribe an ``AnomalyEscalator`` to it).
        bug: The one mistake planted in the training pass, or None for a correct one.
        seed: Seeds the weights, the action samples and the envs.
        envs: Parallel envs; with 8, episodes of an untrained policy (about 20 steps)
            end inside every 32-step window.
    """

    def __init__(
        self,
        hub: TelemetryHub,
        *,
        bug: Bug | None = None,
        seed: int = 0,
        envs: int = 8,
        steps: int = 32,
        hidden: int = 16,
        epochs: int = 4,
        lr: float = 1e-3,
    ) -> None:
        if bug is not None and bug not in BUGS:
            raise ValueError(f"bug must be one of {BUGS} or None, got {bug!r}")
        self.hub, self.bug, self.steps, self.epochs = hub, bug, steps, epochs
        torch.manual_seed(seed)
        self.generator = torch.Generator().manual_seed(seed)
        self.envs = SyncVectorEnv(
            [lambda: gym.make("CartPole-v1") for _ in range(envs)],
            autoreset_mode=AutoresetMode.SAME_STEP,
        )
        obs, _ = self.envs.reset(seed=seed)
        self.obs = torch.as_tensor(obs, dtype=torch.float32)
        self.starts = torch.ones(envs, dtype=torch.bool)  # every env begins an episode
        self.agent = Agent(self.obs.shape[1], 2, hidden)
        self.optimizer = torch.optim.Adam(self.agent.parameters(), lr=lr, eps=1e-5)
        zeros = torch.zeros(1, envs, hidden)
        self.state: State = (zeros, zeros.clone())
        self.gamma, self.gae_lambda, self.clip = 0.99, 0.95, 0.2

    def close(self) -> None:
        self.envs.close()

    def rollout(self) -> Rollout:
        """Play ``steps`` steps in every env, one LSTM step at a time."""
        T, B = self.steps, self.starts.shape[0]
        obs_buf = torch.zeros(T, B, self.obs.shape[1])
        starts_buf = torch.zeros(T, B, dtype=torch.bool)
        actions = torch.zeros(T, B, dtype=torch.long)
        logp = torch.zeros(T, B)
        values = torch.zeros(T, B)
        rewards = torch.zeros(T, B)
        dones = torch.zeros(T, B, dtype=torch.bool)
        outputs = torch.zeros(T, B, self.agent.lstm.hidden_size)
        initial = (self.state[0].clone(), self.state[1].clone())
        h, c = self.state
        with torch.no_grad():
            for t in range(T):
                obs_buf[t], starts_buf[t] = self.obs, self.starts
                keep = (~self.starts).float().view(1, B, 1)  # zero the state at a start
                out, (h, c) = self.agent.lstm(
                    self.agent.encoder(self.obs[None]), (keep * h, keep * c)
                )
                outputs[t] = out[0]
                logits = self.agent.actor(out[0])
                action = torch.multinomial(logits.softmax(-1), 1, generator=self.generator)[:, 0]
                actions[t] = action
                logp[t] = logits.log_softmax(-1).gather(1, action[:, None])[:, 0]
                values[t] = self.agent.critic(out[0])[:, 0]
                obs, reward, terminated, truncated, _ = self.envs.step(action.numpy())
                done = np.logical_or(terminated, truncated)
                rewards[t] = torch.as_tensor(reward, dtype=torch.float32)
                dones[t] = torch.as_tensor(done)
                # Same-step autoreset: obs is already the next episode's first one.
                self.obs = torch.as_tensor(obs, dtype=torch.float32)
                self.starts = torch.as_tensor(done)
            keep = (~self.starts).float().view(1, B, 1)
            out, _ = self.agent.lstm(self.agent.encoder(self.obs[None]), (keep * h, keep * c))
            last_value = self.agent.critic(out[0])[:, 0]
        self.state = (h, c)
        advantages = torch.zeros(T, B)
        running = torch.zeros(B)
        next_value = last_value
        for t in reversed(range(T)):
            alive = (~dones[t]).float()
            delta = rewards[t] + self.gamma * next_value * alive - values[t]
            running = delta + self.gamma * self.gae_lambda * alive * running
            advantages[t], next_value = running, values[t]
        return Rollout(
            obs=obs_buf,
            starts=starts_buf,
            actions=actions,
            logp=logp,
            values=values,
            advantages=advantages,
            returns=advantages + values,
            outputs=outputs,
            initial=initial,
        )

    def training_unroll(
        self, obs: torch.Tensor, starts: torch.Tensor, initial: State
    ) -> torch.Tensor:
        """The LSTM output ``[steps, envs, hidden]`` of every stored step, by one LSTM call
        over the window cut into padded episode segments (where the bug lives)."""
        T, B = starts.shape
        resets = starts  # where a segment begins from the zero state
        if self.bug == "no_reset":
            resets = torch.zeros_like(starts)
        elif self.bug == "late_reset":
            # Masking the state after the step, not before it: each reset one step late.
            resets = torch.zeros_like(starts)
            resets[1:] = starts[:-1]
        # (env, first step, length) of every segment, env by env
        segments: list[tuple[int, int, int]] = []
        for b in range(B):
            cuts = [0, *(t for t in range(1, T) if bool(resets[t, b])), T]
            segments += [(b, s, e - s) for s, e in itertools.pairwise(cuts)]
        longest = max(n for _, _, n in segments)
        hidden = self.agent.lstm.hidden_size
        x = torch.zeros(longest, len(segments), obs.shape[2])
        h0 = torch.zeros(1, len(segments), hidden)
        c0 = torch.zeros(1, len(segments), hidden)
        offsets = []
        for i, (b, s, n) in enumerate(segments):
            # Correct: padding after the real steps, which the LSTM reaches only after
            # them. The bug: padding before them.
            pad = longest - n if self.bug == "padding_as_steps" else 0
            x[pad : pad + n, i] = obs[s : s + n, b]
            offsets.append(pad)
            continues = not bool(resets[s, b])  # only at step 0: the previous window's episode
            if continues and self.bug != "zero_initial_state":
                h0[0, i], c0[0, i] = initial[0][0, b], initial[1][0, b]
        out, _ = self.agent.lstm(self.agent.encoder(x), (h0, c0))
        per_env: list[list[torch.Tensor]] = [[] for _ in range(B)]
        for i, (b, _, n) in enumerate(segments):
            per_env[b].append(out[offsets[i] : offsets[i] + n, i])
        return torch.stack([torch.cat(parts) for parts in per_env], dim=1)

    def update(self, k: int) -> UpdateRecord:
        """One rollout, the replay check, ``epochs`` PPO steps, and the update's event."""
        r = self.rollout()
        replayed: torch.Tensor | None = None
        sums = torch.zeros(3)
        for _ in range(self.epochs):
            out = self.training_unroll(r.obs, r.starts, r.initial)
            if replayed is None:  # the first pass, under the rollout's weights
                replayed = out.detach().clone()
            logits, values = self.agent.actor(out), self.agent.critic(out)[..., 0]
            logp_all = logits.log_softmax(-1)
            logp = logp_all.gather(2, r.actions[..., None])[..., 0]
            entropy = -(logp_all.exp() * logp_all).sum(-1).mean()
            adv = (r.advantages - r.advantages.mean()) / (r.advantages.std() + 1e-8)
            ratio = (logp - r.logp).exp()
            policy_loss = torch.max(-adv * ratio, -adv * ratio.clamp(1 - self.clip, 1 + self.clip))
            value_loss = 0.5 * (r.returns - values).square().mean()
            loss = policy_loss.mean() + 0.5 * value_loss - 0.01 * entropy
            self.optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(self.agent.parameters(), 0.5)
            self.optimizer.step()
            sums += torch.stack([policy_loss.mean(), value_loss, entropy]).detach()
        assert replayed is not None
        with torch.no_grad():
            after = self.training_unroll(r.obs, r.starts, r.initial)
        replay = check_replay(r.outputs, replayed, after=after)
        policy_loss_mean, value_loss_mean, entropy_mean = (sums / self.epochs).tolist()
        emit_ppo_update_event(
            self.hub,
            update=k,
            metrics={
                "policy_loss": policy_loss_mean,
                "value_loss": value_loss_mean,
                "entropy": entropy_mean,
            },
            lstm_health=compute_lstm_health(self.state, detail=True),
            replay={"policy": replay},
        )
        return UpdateRecord(update=k, starts=r.starts, replay=replay)
