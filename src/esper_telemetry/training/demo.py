"""A short, real workload for the demo: an LSTM actor-critic learning to remember a cue.

Each round, every env shows one of two cues, then ``delay`` blank steps, then asks for
an action; matching the cue pays 1. Solving it needs memory, so the LSTM state matters.
After each update (an advantage actor-critic step, not the full PPO of ``esper ppo``)
the final LSTM state is measured with ``compute_lstm_health`` and published with
``emit_ppo_update_event``, exactly as a recurrent PPO trainer would.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from esper_telemetry.contracts import TelemetryLevel
from esper_telemetry.hub import TelemetryHub
from esper_telemetry.telemetry import compute_lstm_health, emit_ppo_update_event

FaultKind = Literal["nan", "inf", "explode", "vanish"]
FAULT_KINDS: tuple[FaultKind, ...] = ("nan", "inf", "explode", "vanish")


@dataclass(frozen=True)
class DemoConfig:
    """Settings of the cue-memory demo."""

    updates: int = 40
    """Number of updates (one batch of episodes each)."""
    envs: int = 64
    """Episodes per update (the LSTM batch)."""
    delay: int = 6
    """Blank steps between the cue and the decision."""
    hidden: int = 32
    """LSTM hidden size."""
    layers: int = 1
    """LSTM layers."""
    lr: float = 0.02
    """Adam learning rate."""
    seed: int = 0
    """Seed of torch's generator."""
    fault: tuple[FaultKind, int] | None = None
    """Corrupt the measured LSTM state at this update (a demo of detection)."""

    def __post_init__(self) -> None:
        for name in ("updates", "envs", "delay", "hidden", "layers"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if self.fault is not None and self.fault[0] not in FAULT_KINDS:
            raise ValueError(f"fault kind must be one of {', '.join(FAULT_KINDS)}")


class _Policy(nn.Module):
    def __init__(self, hidden: int, layers: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(input_size=3, hidden_size=hidden, num_layers=layers)
        self.pi = nn.Linear(hidden, 2)
        self.v = nn.Linear(hidden, 1)


def run_demo(config: DemoConfig, hub: TelemetryHub) -> list[float]:
    """Train for ``config.updates`` updates, publishing one event each; return mean rewards."""
    gen = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    policy = _Policy(config.hidden, config.layers)
    optim = torch.optim.Adam(policy.parameters(), lr=config.lr)
    steps = config.delay + 2
    rewards = []
    for update in range(config.updates):
        cue = torch.randint(0, 2, (config.envs,), generator=gen)
        obs = torch.zeros(steps, config.envs, 3)
        obs[0, torch.arange(config.envs), cue] = 1.0
        obs[-1, :, 2] = 1.0  # "decide now"
        out, (h, c) = policy.lstm(obs)
        logp = torch.log_softmax(policy.pi(out[-1]), dim=-1)  # [envs, 2]
        value = policy.v(out[-1]).squeeze(-1)
        action = torch.multinomial(logp.exp().detach(), 1, generator=gen).squeeze(-1)
        reward = (action == cue).float()
        advantage = reward - value.detach()
        policy_loss = -(logp.gather(1, action[:, None]).squeeze(1) * advantage).mean()
        value_loss = (reward - value).pow(2).mean()
        entropy = -(logp.exp() * logp).sum(dim=-1).mean()
        optim.zero_grad()
        (policy_loss + 0.5 * value_loss - 0.01 * entropy).backward()
        grad_norm = nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        optim.step()

        state = _corrupted(h, c, config.fault, update)
        health = compute_lstm_health(state, detail=hub.level >= TelemetryLevel.DEBUG)
        stats = torch.stack([policy_loss, value_loss, entropy, grad_norm, reward.mean()])
        pl, vl, ent, gn, mean_reward = stats.tolist()  # one transfer for every statistic
        rewards.append(mean_reward)
        emit_ppo_update_event(
            hub,
            update=update,
            metrics={
                "policy_loss": pl,
                "value_loss": vl,
                "entropy": ent,
                "grad_norm": gn,
                "learning_rate": config.lr,
                "mean_reward": mean_reward,
            },
            lstm_health=health,
            env_steps=(update + 1) * config.envs * steps,
        )
    return rewards


def _corrupted(
    h: torch.Tensor, c: torch.Tensor, fault: tuple[FaultKind, int] | None, update: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The state to measure: untouched, unless a demo fault is due at this update."""
    if fault is None or fault[1] != update:
        return h, c
    kind = fault[0]
    h, c = h.detach().clone(), c.detach().clone()
    if kind == "nan":
        h[..., 0] = float("nan")
    elif kind == "inf":
        c[..., 0] = float("inf")
    elif kind == "explode":
        c.mul_(1e3)
    else:
        h.mul_(1e-9)
        c.mul_(1e-9)
    return h, c
