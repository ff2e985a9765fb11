"""A compact recurrent PPO in plain PyTorch that publishes LSTM health after every update.

Read it top to bottom: the configuration, the LSTM actor-critic, GAE, then ``train``,
whose loop is (1) a rollout of ``steps`` steps in every env with the LSTM state carried
from step to step and zeroed where an episode begins, (2) ``epochs`` passes of clipped-
surrogate PPO over minibatches of whole env sequences, unrolled again from the state
each sequence started with (truncated BPTT): each env's steps are cut into segments at
its episode starts and padded into one batch, so each LSTM runs once per minibatch
(:class:`Segments`; the same outputs and gradients as a step-by-step unroll, a test
checks it to 1e-6, at a fraction of the time), (3) ``compute_recurrent_health`` on the
two LSTM states the update ends with (the actor's, named ``policy`` and primary, and the
critic's, ``value``), and ``emit_ppo_update_event``. ``PPOConfig.device`` puts the model
and the rollout on a GPU when asked; the environments stay on the CPU.

The defaults follow RL Zoo's ``ppo_lstm`` settings for CartPoleNoVel-v1 (8 envs, 32
steps, one minibatch of 256, 20 epochs, gamma 0.98, lambda 0.8, learning rate 1e-3 and
clip 0.2 both annealed linearly to 0, 64 LSTM units, 64-unit heads with ReLU, observations
normalised and rewards scaled by running statistics), with one change: the value
prediction is clipped to 0.2 of the rollout's (``clip_vf``; RL Zoo has none). On seeds 0-5
it reached 475 sooner and ended higher (``bench/results/learning.md``). RL Zoo's exact
settings are ``PRESETS["rl-zoo"]`` (``esper ppo --preset rl-zoo``).

The state is never reset because it looks unhealthy; only an episode boundary zeroes
it. A demo fault (``fault``) corrupts the carried state at one update, so detection,
escalation and alerts can be watched on a real run.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any, Final, Literal

import numpy as np
import torch
from torch import nn

from esper_telemetry.contracts import (
    HealthThresholds,
    LSTMHealthDetail,
    LSTMHealthMetrics,
    ReplayConsistency,
    RunFinished,
    RunFinishedPayload,
    RunStarted,
    RunStartedPayload,
    TelemetryLevel,
)
from esper_telemetry.errors import TrainingHalted
from esper_telemetry.hub import TelemetryHub
from esper_telemetry.telemetry import (
    check_replay,
    compute_recurrent_health,
    emit_ppo_update_event,
)
from esper_telemetry.training.envs import KEPT, make_cartpole_novel
from esper_telemetry.training.faults import FAULT_KINDS, FaultKind
from esper_telemetry.training.parallel import DataParallel, weights_checksum

if TYPE_CHECKING:
    import torch.distributed as dist

LSTMState = tuple[torch.Tensor, torch.Tensor]
#: (actor (h, c), critic (h, c)).
RecurrentState = tuple[LSTMState, LSTMState]

#: How many of the latest finished episodes the published mean return covers at most.
_RETURN_WINDOW: Final = 20


# ---------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class PPOConfig:
    """Settings of a recurrent PPO run (defaults: RL Zoo ppo_lstm, CartPoleNoVel-v1)."""

    updates: int = 10
    """PPO updates to run (``esper ppo --episodes``): one rollout round and one update each."""
    envs: int = 8
    """Parallel environments."""
    steps: int = 32
    """Steps every env plays per rollout (``--episode-length``)."""
    hidden: int = 64
    """LSTM hidden size."""
    layers: int = 1
    """LSTM layers."""
    proj_size: int = 0
    """LSTM projection size (0: none)."""
    lr: float = 1e-3
    """Adam learning rate at the first update."""
    anneal: bool = True
    """Anneal the learning rate and clip range linearly over the run (to ``anneal_to``)."""
    anneal_to: float = 0.0
    """The fraction of ``lr`` and ``clip`` the annealing ends at (0: RL Zoo's, to 0)."""
    gamma: float = 0.98
    """Discount factor."""
    gae_lambda: float = 0.8
    """GAE lambda."""
    clip: float = 0.2
    """PPO clip range at the first update."""
    epochs: int = 20
    """Passes over each rollout."""
    minibatches: int = 1
    """Minibatches per pass; each holds envs // minibatches whole sequences."""
    ent_coef: float = 0.0
    """Entropy bonus coefficient."""
    vf_coef: float = 0.5
    """Value loss coefficient."""
    clip_vf: float | None = 0.2
    """Clip the value prediction to within this distance of the rollout's (PPO2's value
    clipping, sb3's ``clip_range_vf``, CleanRL's ``clip_vloss``); None: no clipping, as
    RL Zoo (``PRESETS["rl-zoo"]``). The one default that is not RL Zoo's: see
    ``bench/results/learning.md`` for what it changed on seeds 0-5."""
    max_grad_norm: float = 0.5
    """Gradient clipping norm."""
    normalize: bool = True
    """Normalise observations and scale rewards by running statistics (like VecNormalize)."""
    seed: int = 0
    """Seed of torch, the action sampler and the environments."""
    fault: tuple[FaultKind, int] | None = None
    """Demo only: corrupt the carried LSTM state at this update (kind, update)."""
    diagnostics: bool = False
    """Measure the diagnostics of both states (saturation, c growth, dormancy) and the
    replay drift at every update; without it, only at DEBUG level (an anomaly raises it).
    The replay check itself (``lstm_replay_mismatch``) runs at every update either way:
    with one minibatch it costs nothing. ``esper ppo --diagnostics``."""
    device: str = "cpu"
    """Where the model, the rollout and the LSTM health live: ``"cpu"``, or ``"cuda"``
    (``"cuda:N"``) when asked. The environments always run on the CPU; on a GPU each
    step moves the observations in and the actions out, and the health of both states
    comes back in one transfer per update."""

    def __post_init__(self) -> None:
        self._check_sizes()
        _check_device(self.device)
        _check_int("seed", self.seed, low=0)
        for name in ("lr", "clip", "max_grad_norm"):
            _check_real(name, getattr(self, name), "> 0", lambda x: x > 0)
        for name in ("ent_coef", "vf_coef"):
            _check_real(name, getattr(self, name), ">= 0", lambda x: x >= 0)
        _check_real("anneal_to", self.anneal_to, "in [0, 1)", lambda x: 0 <= x < 1)
        if self.clip_vf is not None:
            _check_real("clip_vf", self.clip_vf, "> 0 (or None: no clipping)", lambda x: x > 0)
        for name in ("gamma", "gae_lambda"):
            _check_real(name, getattr(self, name), "in [0, 1]", lambda x: 0 <= x <= 1)
        for name in ("anneal", "normalize", "diagnostics"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(name, f"must be True or False, got {getattr(self, name)!r}")
        if self.fault is not None:
            self._check_fault(self.fault)

    def _check_sizes(self) -> None:
        for name in ("updates", "envs", "steps", "hidden", "layers", "epochs", "minibatches"):
            _check_int(name, getattr(self, name), low=1)
        _check_int("proj_size", self.proj_size, low=0)
        if self.proj_size >= self.hidden:
            raise ConfigError(
                "proj_size",
                f"must be 0 (none) or less than hidden ({self.hidden}), got {self.proj_size!r}",
            )
        if self.envs % self.minibatches:
            raise ConfigError(
                "minibatches",
                f"must divide envs, got envs={self.envs} minibatches={self.minibatches}",
            )
        if self.updates * self.envs * self.steps > _INT64_MAX:
            raise ConfigError(
                ("updates", "envs", "steps"),
                f"together make {self.updates * self.envs * self.steps:.3g} env steps, more "
                f"than an event can count (2**63 - 1)",
            )

    def _check_fault(self, fault: object) -> None:
        if not (
            isinstance(fault, tuple)
            and len(fault) == 2
            and fault[0] in FAULT_KINDS
            and isinstance(fault[1], int)
            and not isinstance(fault[1], bool)
        ):
            raise ConfigError(
                "fault", f"must be (kind, update) with kind one of {FAULT_KINDS}, got {fault!r}"
            )
        if not 0 <= fault[1] < self.updates:
            raise ConfigError(
                "fault",
                f"update {fault[1]} is not one of the run's updates; pick one in "
                f"[0, {self.updates - 1}]",
            )

    def memory_estimate(self) -> MemoryEstimate:
        """A lower bound of the memory a run with these settings needs (see MemoryEstimate)."""
        return MemoryEstimate.of(self)


#: Named sets of settings over the defaults: ``esper`` (the defaults) and ``rl-zoo``
#: (RL Zoo's ``ppo_lstm`` for CartPoleNoVel-v1 exactly, as sb3-contrib runs it: no value
#: clipping), for side-by-side comparisons (``esper ppo --preset rl-zoo``).
PRESETS: Final[dict[str, dict[str, Any]]] = {"esper": {}, "rl-zoo": {"clip_vf": None}}


class ConfigError(ValueError):
    """A setting of :class:`PPOConfig` is out of range, or the settings cannot run together.

    ``str(error)`` names the settings by field (``"updates: must be an int in [1,
    2**63 - 1], got 0"``); a front end that spells them otherwise (``esper ppo
    --episodes``) builds its own message from ``fields`` and ``reason``.

    Attributes:
        fields: The settings at fault, by ``PPOConfig`` field name.
        reason: What is wrong and what is allowed, without the names.
    """

    def __init__(self, fields: str | tuple[str, ...], reason: str) -> None:
        self.fields: tuple[str, ...] = (fields,) if isinstance(fields, str) else fields
        self.reason = reason
        super().__init__(f"{', '.join(self.fields)}: {reason}")


@dataclass(frozen=True)
class MemoryEstimate:
    """A lower bound of the bytes a run needs, by what holds them.

    Rough on purpose, and low rather than high: a run whose estimate exceeds the
    memory available cannot run (``check_memory`` refuses it before anything starts),
    while one below it may still need more (Python, torch, the telemetry).
    """

    model: int
    """The two LSTMs and heads: weights, gradients and Adam's two moments (float32)."""
    rollout: int
    """The rollout buffers, the carried LSTM state and the activations kept for BPTT."""
    environments: int
    """The environment objects (a few KiB each)."""

    @property
    def total(self) -> int:
        """Everything together."""
        return self.model + self.rollout + self.environments

    @classmethod
    def of(cls, config: PPOConfig) -> MemoryEstimate:
        """The estimate for ``config`` (exact integers: no size overflows it)."""
        obs, actions = len(KEPT), 2
        h, layers = config.hidden, config.layers
        out = config.proj_size or h
        # Per layer: input and hidden weights, two biases, the projection; the first
        # layer reads the observation, the others the layer below (closed form: no loop).
        per_layer = 4 * h * out + 8 * h + (out * h if config.proj_size else 0)
        lstm = layers * per_layer + 4 * h * obs + (layers - 1) * 4 * h * out
        heads = (out * 64 + 64 + 64 * actions + actions) + (out * 64 + 64 + 64 + 1)
        params = 2 * lstm + heads
        # weights, gradients, Adam's exp_avg and exp_avg_sq, 4 bytes each; and the
        # Python objects of every layer's parameters (measured: about 4 KiB a layer).
        model = 16 * params + 2 * layers * _LAYER_OBJECT_BYTES
        steps, envs = config.steps, config.envs
        # obs, starts, actions, dones, and logp, values, rewards, advantages, returns
        per_step = obs * 4 + 1 + 8 + 1 + 4 * 5
        state = 2 * 2 * layers * envs * (h + out) * 4  # both LSTMs, state and a copy
        batch = envs // config.minibatches
        kept = steps * batch * 2 * layers * 4 * h * 4  # the gates autograd keeps per step
        rollout = steps * envs * per_step + state + kept
        return cls(model=model, rollout=rollout, environments=envs * _ENV_BYTES)

    def describe(self) -> str:
        """One line: the total and its parts."""
        return (
            f"at least {_bytes_text(self.total)} (model and optimiser "
            f"{_bytes_text(self.model)}, rollout {_bytes_text(self.rollout)}, "
            f"environments {_bytes_text(self.environments)})"
        )


def available_memory() -> int | None:
    """Bytes this process can still allocate, as far as the system says; None: unknown.

    The least of: the kernel's ``MemAvailable`` (Linux; else the free physical pages
    of ``os.sysconf``), the room left under a cgroup v2 memory limit, and the room left
    under ``RLIMIT_AS``.
    """
    found: list[int] = []
    meminfo = _read_text("/proc/meminfo")
    for line in meminfo.splitlines():
        if line.startswith("MemAvailable:"):
            found.append(int(line.split()[1]) * 1024)
    if not found:
        with contextlib.suppress(AttributeError, OSError, ValueError):
            found.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    limit = _read_text("/sys/fs/cgroup/memory.max")
    used = _read_text("/sys/fs/cgroup/memory.current")
    if limit.strip().isdigit() and used.strip().isdigit():
        found.append(max(int(limit) - int(used), 0))
    with contextlib.suppress(ImportError, OSError, ValueError):
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY:
            size = _read_text("/proc/self/statm").split()
            mapped = int(size[0]) * os.sysconf("SC_PAGE_SIZE") if size else 0
            found.append(max(soft - mapped, 0))
    return min(found) if found else None


def check_memory(
    config: PPOConfig, available: int | None = None, *, processes: int = 1
) -> MemoryEstimate:
    """Refuse settings whose memory estimate exceeds the memory available; return it.

    Args:
        config: The run's settings.
        available: Bytes available (default: :func:`available_memory`; when that is
            unknown, nothing is refused).
        processes: How many processes train with these settings on this machine (the
            ranks of ``esper ppo --nproc``); each needs the whole estimate.

    Raises:
        ConfigError: naming envs, steps, hidden and layers (and ``processes`` when there
            are several), with the estimate.
    """
    estimate = config.memory_estimate()
    room = available if available is not None else available_memory()
    if room is not None and estimate.total * processes > room:
        room_text = f"more than the {_bytes_text(room)} of memory available"
        if processes == 1:
            raise ConfigError(
                ("envs", "steps", "hidden", "layers"),
                f"the run would need {estimate.describe()}, {room_text}; choose smaller sizes",
            )
        raise ConfigError(
            ("envs", "steps", "hidden", "layers", "processes"),
            f"the run's {processes} processes would need {estimate.describe()} each, "
            f"{room_text}; choose smaller sizes or fewer processes",
        )
    return estimate


# ---------------------------------------------------------------------------- the model


class RecurrentActorCritic(nn.Module):
    """An actor LSTM with a policy head and a critic LSTM with a value head.

    Separate LSTMs, as RL Zoo's setting (``enable_critic_lstm``): the value loss never
    pulls on the policy's memory. Telemetry watches both states: the actor's is the
    primary one (``policy``), the critic's is ``value``.
    """

    def __init__(self, obs_dim: int, n_actions: int, config: PPOConfig) -> None:
        super().__init__()
        self.actor_lstm = nn.LSTM(obs_dim, config.hidden, config.layers, proj_size=config.proj_size)
        self.critic_lstm = nn.LSTM(
            obs_dim, config.hidden, config.layers, proj_size=config.proj_size
        )
        out = config.proj_size or config.hidden
        self.policy = nn.Sequential(nn.Linear(out, 64), nn.ReLU(), nn.Linear(64, n_actions))
        self.value = nn.Sequential(nn.Linear(out, 64), nn.ReLU(), nn.Linear(64, 1))

    def initial_state(self, batch: int) -> RecurrentState:
        """Zero (h, c) of both LSTMs for ``batch`` envs."""
        lstm = self.actor_lstm
        h_size = lstm.proj_size or lstm.hidden_size
        device = next(self.parameters()).device
        h = torch.zeros(lstm.num_layers, batch, h_size, device=device)
        c = torch.zeros(lstm.num_layers, batch, lstm.hidden_size, device=device)
        return (h, c), (h.clone(), c.clone())

    def unroll(
        self, obs: torch.Tensor, starts: torch.Tensor, state: RecurrentState
    ) -> tuple[torch.Tensor, torch.Tensor, RecurrentState]:
        """Run ``obs [T, B, obs_dim]`` from ``state``; zero the state where ``starts[t]``.

        Returns logits ``[T, B, actions]``, values ``[T, B]`` and the final state.
        """
        (ha, ca), (hc, cc) = state
        actor_out, critic_out = [], []
        for t in range(obs.shape[0]):
            # An episode boundary, and only that, resets the state. where() rather than
            # multiplying by 0, so a NaN state still resets at a boundary.
            keep = (~starts[t]).view(1, -1, 1)
            ha, ca, hc, cc = (torch.where(keep, x, torch.zeros_like(x)) for x in (ha, ca, hc, cc))
            out, (ha, ca) = self.actor_lstm(obs[t : t + 1], (ha, ca))
            actor_out.append(out)
            out, (hc, cc) = self.critic_lstm(obs[t : t + 1], (hc, cc))
            critic_out.append(out)
        logits = self.policy(torch.cat(actor_out))
        values = self.value(torch.cat(critic_out)).squeeze(-1)
        return logits, values, ((ha, ca), (hc, cc))

    def unroll_segments(
        self, obs: torch.Tensor, starts: torch.Tensor, state: RecurrentState
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """What :meth:`unroll` computes (logits ``[T, B, actions]``, values ``[T, B]``),
        with each LSTM run once over the whole batch instead of once per step.

        Each env's steps are cut into segments where an episode starts; the segments are
        padded into one ``[L, S, obs_dim]`` batch, each begun from zeros at an episode
        start and from ``state`` (the env's stored state) otherwise. Padding follows the
        real steps, so it never reaches them (an LSTM only looks back). The final state is
        not returned: where segments end at different steps, there is no single one.
        """
        return self.heads(*self.segment_outputs(obs, starts, state))

    def heads(
        self, actor_out: torch.Tensor, critic_out: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits ``[T, B, actions]`` and values ``[T, B]`` from the LSTMs' outputs."""
        return self.policy(actor_out), self.value(critic_out).squeeze(-1)

    def segment_outputs(
        self, obs: torch.Tensor, starts: torch.Tensor, state: RecurrentState
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The actor's and the critic's LSTM outputs ``[T, B, out]`` of every step, each
        LSTM run once over the episode segments (see :meth:`unroll_segments`)."""
        cut = Segments.of(starts)
        x = cut.pad(obs)
        outs = []
        for lstm, (h, c) in ((self.actor_lstm, state[0]), (self.critic_lstm, state[1])):
            out, _ = lstm(x, (cut.initial(h), cut.initial(c)))
            outs.append(cut.unpad(out))
        return outs[0], outs[1]


@dataclass(frozen=True)
class Segments:
    """How ``[T, B]`` steps are cut into episode segments and padded into ``[L, S]``.

    A segment is a run of one env's steps that starts at step 0 or at an episode start
    (``starts[t, b]``) and lasts until the next one. ``time`` and ``index`` place every
    step (env-major order: env 0's steps first) at its row and column of the padded batch.

    The padded batch holds ``L * S`` steps for the ``T * B`` real ones: close to it when
    episodes are long or short everywhere, up to about ``T`` times more when one env plays
    a whole window while the others end an episode every step. (A packed sequence would
    run only the real steps; on CartPole's 8 x 32 windows the padding costs less than the
    step-by-step loop it replaced.)
    """

    steps: int
    envs: int
    length: int
    """L: the longest segment."""
    env: torch.Tensor
    """``[S]``: the env of each segment."""
    fresh: torch.Tensor
    """``[S]``: True where a segment begins an episode (its state starts at zero)."""
    time: torch.Tensor
    """``[T * B]``: each step's row in the padded batch (its place in its segment)."""
    index: torch.Tensor
    """``[T * B]``: each step's column (its segment)."""

    @classmethod
    def of(cls, starts: torch.Tensor) -> Segments:
        """The segments of a ``[T, B]`` bool tensor of episode starts.

        >>> s = Segments.of(torch.tensor([[True, False], [False, False], [True, False]]))
        >>> s.length, s.env.tolist(), s.fresh.tolist(), s.index.tolist()
        (3, [0, 0, 1], [True, True, False], [0, 0, 1, 2, 2, 2])
        """
        steps, envs = starts.shape
        by_env = starts.T.cpu().numpy()  # [B, T], env-major
        begins = by_env.copy()
        begins[:, 0] = True  # every env's first step begins a segment
        flat_begins = begins.reshape(-1)
        index = np.cumsum(flat_begins) - 1  # each step's segment
        first = np.flatnonzero(flat_begins)  # each segment's first step (flat)
        time = np.arange(steps * envs) - first[index]
        device = starts.device
        return cls(
            steps=steps,
            envs=envs,
            length=int(time.max()) + 1,
            env=torch.as_tensor(first // steps, device=device),
            fresh=torch.as_tensor(by_env.reshape(-1)[first], device=device),
            time=torch.as_tensor(time, device=device),
            index=torch.as_tensor(index, device=device),
        )

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """``x [T, B, ...]`` as ``[L, S, ...]``, zeros after each segment's end."""
        flat = x.transpose(0, 1).reshape(self.steps * self.envs, *x.shape[2:])
        padded = x.new_zeros((self.length, len(self.env), *x.shape[2:]))
        padded[self.time, self.index] = flat
        return padded

    def unpad(self, y: torch.Tensor) -> torch.Tensor:
        """``y [L, S, ...]`` back to ``[T, B, ...]`` (padding dropped)."""
        flat = y[self.time, self.index]
        return flat.view(self.envs, self.steps, *y.shape[2:]).transpose(0, 1)

    def initial(self, x: torch.Tensor) -> torch.Tensor:
        """Each segment's initial state from the envs' stored ``x [layers, B, size]``:
        zero where it begins an episode. where() rather than a product by 0, so a NaN
        state still resets at a boundary, as in :meth:`RecurrentActorCritic.unroll`."""
        chosen = x[:, self.env]
        return torch.where(self.fresh.view(1, -1, 1), torch.zeros_like(chosen), chosen)


def select_envs(state: RecurrentState, envs: torch.Tensor) -> RecurrentState:
    """The part of ``state`` that belongs to the given env indices (a copy)."""
    (ha, ca), (hc, cc) = state
    return (ha[:, envs], ca[:, envs]), (hc[:, envs], cc[:, envs])


def sample_actions(logits: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Categorical samples by the Gumbel-max trick.

    Exact, seeded through ``generator``, and it never raises on a NaN policy, which
    ``torch.multinomial`` would: a broken run must go on and stay visible.
    """
    u = torch.rand(logits.shape, generator=generator, device=logits.device)
    u = u.clamp_(1e-20, 1.0 - 1e-7)
    return torch.argmax(logits - torch.log(-torch.log(u)), dim=-1)


class RunningNorm:
    """Running mean and variance (parallel algorithm), as used to normalise inputs."""

    def __init__(self, shape: tuple[int, ...] = ()) -> None:
        self.mean = np.zeros(shape, dtype=np.float64)
        self.var = np.ones(shape, dtype=np.float64)
        self.count = 1e-4

    def update(self, batch: np.ndarray) -> None:
        """Fold a batch (first axis: samples) into the statistics."""
        mean, var, n = batch.mean(axis=0), batch.var(axis=0), batch.shape[0]
        delta, total = mean - self.mean, self.count + n
        self.mean = self.mean + delta * n / total
        m2 = self.var * self.count + var * n + delta**2 * self.count * n / total
        self.var, self.count = m2 / total, total


class Normalizer:
    """Observation normalisation and reward scaling by running statistics.

    Observations: (x - mean) / std, clipped to [-10, 10]. Rewards: divided by the running
    std of the discounted return, clipped to [-10, 10]. Off: both pass through unchanged.
    """

    def __init__(self, obs_dim: int, num_envs: int, gamma: float, enabled: bool) -> None:
        self.enabled, self.gamma = enabled, gamma
        self.obs = RunningNorm((obs_dim,))
        self.ret = RunningNorm()
        self._returns = np.zeros(num_envs)

    def observe(self, obs: np.ndarray, *, update: bool = True) -> torch.Tensor:
        """The normalised observation as a float32 tensor; folds it into the stats."""
        if not self.enabled:
            return torch.as_tensor(obs, dtype=torch.float32)
        if update:
            self.obs.update(obs)
        scaled = (obs - self.obs.mean) / np.sqrt(self.obs.var + 1e-8)
        return torch.as_tensor(np.clip(scaled, -10.0, 10.0), dtype=torch.float32)

    def reward(self, reward: np.ndarray, done: np.ndarray) -> np.ndarray:
        """The scaled reward; the discounted return restarts where an episode ended."""
        if not self.enabled:
            return reward
        self._returns = self._returns * self.gamma + reward
        self.ret.update(self._returns)
        self._returns[done] = 0.0
        scaled = reward / np.sqrt(self.ret.var + 1e-8)
        return np.clip(scaled, -10.0, 10.0).astype(np.float32)


# ---------------------------------------------------------------------------- advantages


def compute_gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    dones: torch.Tensor,
    last_value: torch.Tensor,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimates and returns for a ``[T, B]`` rollout.

    ``dones[t]`` is True when transition t ended its episode (no bootstrap through it);
    ``last_value`` is V of the observation after the last step.

    >>> r = torch.tensor([[1.0], [1.0]]); v = torch.zeros(2, 1)
    >>> d = torch.tensor([[False], [True]])
    >>> adv, ret = compute_gae(r, v, d, torch.tensor([5.0]), gamma=0.5, lam=1.0)
    >>> adv.flatten().tolist(), ret.flatten().tolist()
    ([1.5, 1.0], [1.5, 1.0])
    """
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(last_value)
    next_value = last_value
    for t in reversed(range(rewards.shape[0])):
        not_done = (~dones[t]).to(rewards.dtype)
        delta = rewards[t] + gamma * next_value * not_done - values[t]
        running = delta + gamma * lam * not_done * running
        advantages[t] = running
        next_value = values[t]
    return advantages, advantages + values


# ---------------------------------------------------------------------------- training


@dataclass
class UpdateInfo:
    """What the caller's per-update callback receives."""

    update: int
    """The PPO update just published."""
    env_steps: int
    """Environment steps so far, all envs together."""
    mean_return: float
    """Mean return of the last 20 finished episodes (NaN before any): the update's
    ``episode_return_mean``."""
    health: LSTMHealthMetrics | None
    """Health of the actor's LSTM state at the end of the update."""
    level: TelemetryLevel
    """The hub's telemetry level after the update was handled."""
    seconds: float
    """Wall time of the update, telemetry included."""


@dataclass
class TrainResult:
    """How a run ended and what it achieved."""

    status: Literal["completed", "interrupted", "halted", "failed"]
    updates: int
    env_steps: int
    episode_returns: list[float] = field(default_factory=list)
    message: str = ""
    """Why the run stopped early (halted, interrupted, failed); empty when it completed."""
    error: Exception | None = field(default=None, repr=False)
    """The exception that failed the run (status "failed"), its frames cleared; else None."""

    @property
    def mean_return(self) -> float:
        """Mean return of the last 20 finished episodes (NaN before any finished)."""
        last = self.episode_returns[-_RETURN_WINDOW:]
        return sum(last) / len(last) if last else math.nan


@dataclass
class _Rollout:
    """One rollout's buffers, ``[steps, envs]`` each, and what PPO needs besides."""

    obs: torch.Tensor
    starts: torch.Tensor
    actions: torch.Tensor
    logp: torch.Tensor
    values: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor
    initial_state: RecurrentState
    outputs: tuple[torch.Tensor, torch.Tensor]
    """The actor's and the critic's LSTM output of every step ``[steps, envs, out]``: what
    the training pass must reproduce (the replay check)."""

    def tensors(self) -> tuple[torch.Tensor, ...]:
        """The buffers in the order ``_ppo_epochs`` reads them."""
        return (
            self.obs,
            self.starts,
            self.actions,
            self.logp,
            self.values,
            self.advantages,
            self.returns,
        )


@dataclass
class _Runner:
    """The state a run carries from one update to the next."""

    config: PPOConfig
    envs: Any
    model: RecurrentActorCritic
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    """Seeds the minibatch order (on the CPU)."""
    sampler: torch.Generator
    """Seeds the action samples, on the model's device (the same one as ``generator`` on
    the CPU, so a CPU run's randomness is one stream)."""
    norm: Normalizer
    obs: torch.Tensor
    starts: torch.Tensor
    state: RecurrentState
    result: TrainResult
    returns_window: deque[float]
    episode_return: np.ndarray
    health_group: dist.ProcessGroup | None = None
    """With ranks: the group over which the LSTM health is measured."""
    thresholds: HealthThresholds | None = None
    """The health rule (``train``'s), whose tolerance locates a replay mismatch."""
    steps_since_reset: torch.Tensor = field(default_factory=lambda: torch.zeros(0))
    """``[envs]`` int64: the steps each env's state has run since it was last zeroed
    (for ``c_growth_ratio``)."""


def train(
    config: PPOConfig,
    hub: TelemetryHub,
    *,
    on_update: Callable[[UpdateInfo], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    thresholds: HealthThresholds | None = None,
    parallel: DataParallel | None = None,
) -> TrainResult:
    """Train a recurrent PPO agent on CartPoleNoVel, publishing telemetry on ``hub``.

    Emits ``RunStarted``, one ``PPOUpdateCompleted`` per update and ``RunFinished``.
    Stops early when ``should_stop()`` turns true or on KeyboardInterrupt (status
    "interrupted"), or when a subscriber requested a halt (status "halted"). Any other
    exception once the run has started (from the envs, the model, the optimiser, the
    hub, a callback) ends it "failed": ``RunFinished`` and the result carry the error
    in one line, the result keeps the exception (``error``), and nothing is re-raised,
    so check ``result.status``. Deterministic on CPU for a given seed. Does not close
    the hub.

    Args:
        config: The run's settings.
        hub: Where the events go. Updates are numbered from ``hub.first_update``: 0,
            or for a run that resumes, the update after the last one on disk (the
            policy itself starts afresh: the reference trainer keeps no checkpoints).
        on_update: Called after each update is published (e.g. a progress bar).
        should_stop: Polled before each update; True stops the run cleanly.
        thresholds: The health rule (the anomaly detector's), used to decide which
            updates carry per-layer and per-env detail.
        parallel: Train as one rank of several (see
            :mod:`esper_telemetry.training.parallel`): every rank calls ``train`` with
            the same settings and its own hub; each plays ``config.envs`` envs of its
            own (seeded ``config.seed + rank``), gradients are averaged over the ranks,
            and after each update the ranks agree on the level, a halt and a stop, so
            they all stop at the same update. ``should_stop`` is then this rank's wish,
            honoured by every rank after the update under way. ``RunFinished`` carries
            ``weights_crc32``, equal on every rank while the replicas agree.

    Raises:
        ConfigError: the run cannot fit in the memory available (:func:`check_memory`);
            raised before anything is emitted.
    """
    check_memory(config)
    first = hub.first_update  # 0, or where a resumed run left off
    hub.emit(
        RunStarted(
            update=first,
            payload=RunStartedPayload(
                config={k: _jsonable(v) for k, v in asdict(config).items()},
                description="recurrent PPO on CartPoleNoVel-v1",
            ),
        )
    )
    result = TrainResult(status="completed", updates=0, env_steps=0)
    runner: _Runner | None = None
    agreed_stop = False  # with ``parallel``: a stop every rank agreed on at the last update
    try:
        runner = _start(config, result, parallel)
        runner.thresholds = thresholds
        try:
            for done in range(config.updates):
                update = first + done
                # With ranks, only a stop they all agreed on: a rank that stopped alone
                # would leave the others waiting in their next all-reduce.
                stopping = agreed_stop if parallel is not None else _asked(should_stop)
                if stopping:
                    result.status = "interrupted"
                    break
                hub.raise_if_halted()
                began = time.perf_counter()
                # 1. rollout, 2. PPO epochs (and the replay check, unless telemetry is off)
                stats, replays = _learn(runner, done, parallel, hub.level)
                info = _publish(runner, hub, update, stats, thresholds, replays)  # 3. telemetry
                result.updates = done + 1
                if parallel is not None:  # 4. every rank at one level, halt and stop
                    agreed_stop = parallel.agree(hub, stop=_asked(should_stop)).stop
                if on_update is not None:
                    on_update(replace(info, level=hub.level, seconds=time.perf_counter() - began))
            else:
                hub.raise_if_halted()  # a halt requested by the last update still counts
        finally:
            runner.envs.close()
    except TrainingHalted as halt:
        result.status, result.message = "halted", str(halt)
    except KeyboardInterrupt:
        result.status, result.message = "interrupted", "interrupted by the user"
    except Exception as exc:  # the run ends on the record, whatever broke it
        result.status, result.message, result.error = "failed", _failure(exc, result), exc
        traceback.clear_frames(exc.__traceback__)  # keep the trace, free the tensors
    checksum = None if runner is None or parallel is None else weights_checksum(runner.model)
    _emit_finished(hub, result, first, checksum)
    return result


def _asked(should_stop: Callable[[], bool] | None) -> bool:
    return should_stop is not None and should_stop()


def _learn(
    r: _Runner, done: int, parallel: DataParallel | None, level: TelemetryLevel
) -> tuple[dict[str, float], dict[str, ReplayConsistency]]:
    """The learning of the update after ``done`` others: (1) play ``steps`` steps in
    every env, (2) PPO epochs over whole sequences; the learning rate and the clip range
    annealed. Returns the update's statistics, and, unless ``level`` is OFF, the replay
    check of both LSTMs (``policy``, ``value``; their drift with the diagnostics: at
    DEBUG, or with ``config.diagnostics``; see :func:`_ppo_epochs`)."""
    config = r.config
    check = level > TelemetryLevel.OFF
    drift = check and (config.diagnostics or level >= TelemetryLevel.DEBUG)
    left = 1.0 - done / config.updates
    progress = config.anneal_to + (1.0 - config.anneal_to) * left if config.anneal else 1.0
    for group in r.optimizer.param_groups:
        group["lr"] = config.lr * progress
    rollout = _rollout(r)
    clip = config.clip * progress if config.anneal else config.clip
    stats, replays = _ppo_epochs(
        r.model,
        r.optimizer,
        config,
        clip,
        r.generator,
        rollout.tensors(),
        rollout.initial_state,
        parallel,
        outputs=rollout.outputs if check else None,
        drift=drift,
        thresholds=r.thresholds,
    )
    stats["learning_rate"] = config.lr * progress
    return stats, replays


def _start(config: PPOConfig, result: TrainResult, parallel: DataParallel | None) -> _Runner:
    """Seed everything, build the envs, the model and its optimiser, reset the envs.

    With ``parallel``, the model starts from the first rank's weights, and the envs and
    the action sampler of rank r are seeded ``seed + r``: the ranks play different games.
    """
    torch.manual_seed(config.seed)  # the same initial weights on every rank
    seed = config.seed + (parallel.rank if parallel is not None else 0)
    generator = torch.Generator().manual_seed(seed)
    device = torch.device(config.device)
    sampler = generator if device.type == "cpu" else torch.Generator(device).manual_seed(seed)
    envs = make_cartpole_novel(config.envs)
    try:
        obs_space, act_space = envs.single_observation_space, envs.single_action_space
        assert obs_space.shape is not None
        assert hasattr(act_space, "n")
        model = RecurrentActorCritic(obs_space.shape[0], int(act_space.n), config).to(device)
        if parallel is not None:
            parallel.broadcast_parameters(model)
        optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, eps=1e-5)
        norm = Normalizer(obs_space.shape[0], config.envs, config.gamma, config.normalize)
        obs_np, _ = envs.reset(seed=seed)
        return _Runner(
            config=config,
            envs=envs,
            model=model,
            optimizer=optimizer,
            generator=generator,
            sampler=sampler,
            norm=norm,
            obs=norm.observe(obs_np).to(device),
            starts=torch.ones(config.envs, dtype=torch.bool, device=device),
            state=model.initial_state(config.envs),
            result=result,
            returns_window=deque(maxlen=_RETURN_WINDOW),
            episode_return=np.zeros(config.envs),
            health_group=parallel.health_group if parallel is not None else None,
            steps_since_reset=torch.zeros(config.envs, dtype=torch.long, device=device),
        )
    except BaseException:
        envs.close()
        raise


def _rollout(r: _Runner) -> _Rollout:
    """Play ``steps`` steps in every env, carrying the LSTM state; compute GAE."""
    config, model, norm = r.config, r.model, r.norm
    T, B, device = config.steps, config.envs, r.obs.device
    buf_obs = torch.zeros((T, B, *r.obs.shape[1:]), device=device)
    buf_starts = torch.zeros((T, B), dtype=torch.bool, device=device)
    buf_actions = torch.zeros((T, B), dtype=torch.long, device=device)
    buf_logp = torch.zeros((T, B), device=device)
    buf_values = torch.zeros((T, B), device=device)
    buf_rewards = torch.zeros((T, B), device=device)
    buf_dones = torch.zeros((T, B), dtype=torch.bool, device=device)
    width = config.proj_size or config.hidden
    actor_out = torch.zeros((T, B, width), device=device)
    buf_outputs = (actor_out, torch.zeros_like(actor_out))
    initial_state = select_envs(r.state, torch.arange(B, device=device))
    obs, starts, state = r.obs, r.starts, r.state
    with torch.no_grad():
        for t in range(T):
            buf_obs[t], buf_starts[t] = obs, starts
            # A start zeroes the state before this step: it then has run one step.
            r.steps_since_reset = torch.where(starts, 1, r.steps_since_reset + 1)
            logits, value, state = model.unroll(obs[None], starts[None], state)
            for buf, (h, _) in zip(buf_outputs, state, strict=True):
                buf[t] = h[-1]  # the top layer's h: the LSTM's output at this step
            action = sample_actions(logits[0], r.sampler)
            buf_actions[t] = action
            buf_logp[t] = torch.log_softmax(logits[0], -1).gather(1, action[:, None])[:, 0]
            buf_values[t] = value[0]
            obs_np, raw_reward, terminated, truncated, info = r.envs.step(action.cpu().numpy())
            done = terminated | truncated
            r.episode_return += raw_reward
            reward = norm.reward(raw_reward.astype(np.float64), done)
            # A time limit is not a failure: bootstrap the value of the last obs.
            cut = truncated & ~terminated
            if cut.any():
                reward[cut] += config.gamma * _final_values(r, info["final_obs"][cut], cut, state)
            _end_episodes(r, done)
            buf_rewards[t] = torch.as_tensor(reward, device=device)
            buf_dones[t] = torch.as_tensor(done, device=device)
            obs = norm.observe(obs_np).to(device)
            starts = torch.as_tensor(done, device=device)
        _, last_value, _ = model.unroll(obs[None], starts[None], state)
    r.obs, r.starts, r.state = obs, starts, state
    advantages, returns = compute_gae(
        buf_rewards, buf_values, buf_dones, last_value[0], config.gamma, config.gae_lambda
    )
    r.result.env_steps += T * B
    return _Rollout(
        buf_obs,
        buf_starts,
        buf_actions,
        buf_logp,
        buf_values,
        advantages,
        returns,
        initial_state,
        buf_outputs,
    )


def _end_episodes(r: _Runner, done: np.ndarray) -> None:
    """Record the return of every env whose episode ended at this step, and start anew."""
    for i in np.flatnonzero(done):
        r.returns_window.append(float(r.episode_return[i]))
        r.result.episode_returns.append(float(r.episode_return[i]))
        r.episode_return[i] = 0.0


def _final_values(r: _Runner, final_obs: Any, cut: np.ndarray, state: RecurrentState) -> np.ndarray:
    """V of the last observations of the envs ``cut`` by a time limit, from the critic's
    state after the step (host values, for the rewards). ``final_obs``: gymnasium's
    object array of those envs' last observations."""
    device = r.obs.device
    final = r.norm.observe(np.stack(final_obs), update=False).to(device)
    idx = torch.as_tensor(np.flatnonzero(cut), device=device)
    no_start = torch.zeros(1, len(idx), dtype=torch.bool, device=device)
    _, v_final, _ = r.model.unroll(final[None], no_start, select_envs(state, idx))
    values: np.ndarray = v_final[0].cpu().numpy()
    return values


def _publish(
    r: _Runner,
    hub: TelemetryHub,
    update: int,
    stats: dict[str, float],
    thresholds: HealthThresholds | None,
    replays: dict[str, ReplayConsistency],
) -> UpdateInfo:
    """Measure both LSTM states and emit the update's event (the demo fault first)."""
    config = r.config
    if config.fault is not None and config.fault[1] == update:
        r.state = (_corrupt(r.state[0], config.fault[0]), r.state[1])
    # At OFF, telemetry costs nothing: not even the health check. Detail is computed
    # always (cheap next to an LSTM step); the emitter publishes it when it is due.
    states = None
    if hub.level > TelemetryLevel.OFF:
        diagnostics = config.diagnostics or hub.level >= TelemetryLevel.DEBUG
        steps = r.steps_since_reset if diagnostics else None
        states = _health(r.state, r.health_group, diagnostics, steps, thresholds)
    health = states["policy"] if states is not None else None
    window = r.returns_window
    mean_return = sum(window) / len(window) if window else math.nan
    stats["episodes"] = float(len(r.result.episode_returns))
    emit_ppo_update_event(
        hub,
        update=update,
        metrics=stats,
        recurrent_health=states,  # "policy" is the primary state
        env_steps=r.result.env_steps,
        episode_return_mean=mean_return,
        episode_return_window=_RETURN_WINDOW,
        thresholds=thresholds,
        replay=replays if states is not None else None,
    )
    return UpdateInfo(
        update=update,
        env_steps=r.result.env_steps,
        mean_return=mean_return,
        health=health[0] if health is not None else None,
        level=hub.level,
        seconds=0.0,
    )


def _health(
    state: RecurrentState,
    group: dist.ProcessGroup | None,
    diagnostics: bool,
    steps_since_reset: torch.Tensor | None,
    thresholds: HealthThresholds | None,
) -> dict[str, tuple[LSTMHealthMetrics, LSTMHealthDetail]]:
    """The health of the actor's (``policy``) and critic's (``value``) states, with
    detail and, when asked, the diagnostics (saturation, c growth, dormancy): with ranks
    (``group``), of every rank's envs together (one collective per state on every rank);
    else of this process's, in one transfer."""
    return compute_recurrent_health(
        {"policy": state[0], "value": state[1]},
        detail=True,
        group=group,
        diagnostics=diagnostics,
        steps_since_reset=steps_since_reset,
        thresholds=thresholds,
    )


def _ppo_epochs(
    model: RecurrentActorCritic,
    optimizer: torch.optim.Optimizer,
    config: PPOConfig,
    clip: float,
    generator: torch.Generator,
    rollout: tuple[torch.Tensor, ...],
    initial_state: RecurrentState,
    parallel: DataParallel | None = None,
    *,
    outputs: tuple[torch.Tensor, torch.Tensor] | None = None,
    drift: bool = False,
    thresholds: HealthThresholds | None = None,
) -> tuple[dict[str, float], dict[str, ReplayConsistency]]:
    """Clipped-surrogate PPO; returns the update's statistics as host floats, and the
    replay check of both LSTMs when ``outputs`` (the rollout's LSTM outputs) is given.

    The check compares ``outputs`` with the training pass's LSTM outputs before the first
    gradient step (with one minibatch, the first forward pass itself: no extra cost; with
    several, one extra pass without gradient), and, with ``drift``, with one more pass
    without gradient under the weights the update ended with.
    """
    obs, starts, actions, old_logp, old_values, advantages, returns = rollout
    per_batch = config.envs // config.minibatches
    first: tuple[torch.Tensor, torch.Tensor] | None = None  # the replay before any step
    if outputs is not None and per_batch < config.envs:
        with torch.no_grad():
            first = model.segment_outputs(obs, starts, initial_state)
    # policy, value, entropy, approx_kl, clip_fraction, grad_norm: on the model's device,
    # brought to the host once, at the end
    sums = torch.zeros(6, device=obs.device)
    count = 0
    for _ in range(config.epochs):
        order = torch.randperm(config.envs, generator=generator)
        for start in range(0, config.envs, per_batch):
            envs = order[start : start + per_batch]
            state = select_envs(initial_state, envs)
            lstm_out = model.segment_outputs(obs[:, envs], starts[:, envs], state)
            if outputs is not None and first is None:  # one minibatch: all envs, in order
                first = _in_env_order(lstm_out, envs)
            logits, values = model.heads(*lstm_out)
            part = tuple(x[:, envs] for x in (actions, old_logp, advantages, returns))
            loss, figures = ppo_loss(
                logits, values, *part, clip=clip, config=config, old_values=old_values[:, envs]
            )
            optimizer.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            if parallel is not None:  # every replica takes the same step
                parallel.average_gradients(model)
            grad_norm = nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            optimizer.step()
            sums += torch.cat([figures, grad_norm.detach()[None]])
            count += 1
    y, v = returns.flatten(), old_values.flatten()
    explained = 1 - (y - v).var() / y.var()
    host = torch.cat([sums / count, explained[None]]).tolist()  # the one transfer
    names = ("policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction", "grad_norm")
    stats = dict(zip(names, host[:6], strict=True))
    stats["explained_variance"] = host[6]
    replays: dict[str, ReplayConsistency] = {}
    if outputs is not None:
        assert first is not None
        after: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None)
        if drift:
            with torch.no_grad():
                after = model.segment_outputs(obs, starts, initial_state)
        for name, rolled, replayed, later in zip(
            ("policy", "value"), outputs, first, after, strict=True
        ):
            replays[name] = check_replay(
                rolled,
                replayed,
                after=later,
                thresholds=thresholds,
                group=parallel.health_group if parallel is not None else None,
            )
    return stats, replays


def _in_env_order(
    outs: tuple[torch.Tensor, torch.Tensor], envs: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Detached copies of ``[T, B, out]`` outputs of the envs ``envs`` (a permutation of
    all of them), put back in env order."""
    placed = []
    for x in outs:
        full = torch.empty_like(x, requires_grad=False)
        full[:, envs] = x.detach()
        placed.append(full)
    return placed[0], placed[1]


def ppo_loss(
    logits: torch.Tensor,
    values: torch.Tensor,
    actions: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    returns: torch.Tensor,
    *,
    clip: float,
    config: PPOConfig,
    old_values: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The clipped-surrogate loss of one minibatch (``[T, B]`` tensors; advantages
    normalised over the minibatch), and, detached, its policy loss, value loss, entropy,
    approx_kl and clip fraction. With ``config.clip_vf``, the value loss is the larger of
    the plain and the clipped one (the prediction held within ``clip_vf`` of
    ``old_values``, the rollout's)."""
    logp_all = torch.log_softmax(logits, dim=-1)
    logp = logp_all.gather(2, actions[..., None])[..., 0]
    entropy = -(logp_all.exp() * logp_all).sum(-1).mean()
    adv = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    log_ratio = logp - old_logp
    ratio = log_ratio.exp()
    policy_loss = torch.max(-adv * ratio, -adv * ratio.clamp(1 - clip, 1 + clip)).mean()
    value_loss = (returns - values).pow(2)
    if config.clip_vf is not None and old_values is not None:
        held = old_values + (values - old_values).clamp(-config.clip_vf, config.clip_vf)
        value_loss = torch.max(value_loss, (returns - held).pow(2))
    value_loss = value_loss.mean()
    loss = policy_loss - config.ent_coef * entropy + config.vf_coef * value_loss
    with torch.no_grad():
        approx_kl = ((ratio - 1) - log_ratio).mean()
        clipped = ((ratio - 1).abs() > clip).float().mean()
        figures = torch.stack([policy_loss, value_loss, entropy, approx_kl, clipped])
    return loss, figures


def _corrupt(state: LSTMState, kind: FaultKind) -> LSTMState:
    """The demo fault: a real corruption of the actor's carried state (it flows on)."""
    h, c = state[0].clone(), state[1].clone()
    if kind == "nan":
        h[..., 0, :] = math.nan
    elif kind == "inf":
        c[..., 0, :] = math.inf
    elif kind == "explode":
        c.mul_(1e3)
    else:
        h.mul_(1e-9)
        c.mul_(1e-9)
    return h, c


def _emit_finished(
    hub: TelemetryHub, result: TrainResult, first: int, checksum: int | None = None
) -> None:
    summary = {
        "updates": float(result.updates),
        "env_steps": float(result.env_steps),
        "episodes": float(len(result.episode_returns)),
        "return_mean_last20": result.mean_return,
    }
    if checksum is not None:  # a CRC-32 is exact as a float
        summary["weights_crc32"] = float(checksum)
    hub.emit(
        RunFinished(
            update=first + max(result.updates - 1, 0),
            payload=RunFinishedPayload(
                status=result.status,
                message=result.message,
                summary=summary,
                hub_stats=hub.stats(),
            ),
        )
    )


def _failure(exc: Exception, result: TrainResult) -> str:
    """One line: the exception, the updates done before it, and where it was raised."""
    done = result.updates
    line = f"{type(exc).__name__} after {done} update{'' if done == 1 else 's'}"
    text = next((t.strip() for t in str(exc).splitlines() if t.strip()), "")
    if text:
        line += f": {text}"
    frames = traceback.extract_tb(exc.__traceback__)
    if frames:
        last = frames[-1]
        line += f" ({os.path.basename(last.filename)}:{last.lineno} in {last.name})"
    return line


def _jsonable(value: object) -> object:
    if isinstance(value, tuple):
        return list(value)
    return value


_INT64_MAX = 2**63 - 1
_ENV_BYTES = 4 * 1024  # one CartPole env object, low (measured: about 7 KiB)
_LAYER_OBJECT_BYTES = 2 * 1024  # one LSTM layer's Python objects, low (measured: ~4 KiB)


def _check_device(device: object) -> None:
    if not isinstance(device, str) or not (
        device == "cpu" or device == "cuda" or (device.startswith("cuda:") and device[5:].isdigit())
    ):
        raise ConfigError("device", f"must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if device != "cpu":
        if not torch.cuda.is_available():
            raise ConfigError(
                "device",
                f"{device!r} was asked for, but torch {torch.__version__} sees no CUDA GPU "
                "here; use 'cpu'",
            )
        index = int(device[5:]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise ConfigError(
                "device",
                f"{device!r}: this machine has {torch.cuda.device_count()} CUDA device(s); "
                "pick one of them",
            )


def _check_int(name: str, value: object, *, low: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= _INT64_MAX:
        raise ConfigError(name, f"must be an int in [{low}, 2**63 - 1], got {value!r}")


def _check_real(name: str, value: object, rule: str, ok: Callable[[float], bool]) -> None:
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or not math.isfinite(value)
        or not ok(value)
    ):
        raise ConfigError(name, f"must be a finite number {rule}, got {value!r}")


def _bytes_text(n: int) -> str:
    """``n`` bytes in binary units: ``"512 B"``, ``"1.5 GiB"``, ``"8.0e+03 YiB"``."""
    if n < 1024:
        return f"{n} B"
    if n >= 2**1000:  # beyond a float; no PPOConfig comes near
        return f"about 10**{len(str(n)) - 1} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB", "EiB", "ZiB"):
        value /= 1024
        if value < 1024:
            return f"{value:.1f} {unit}"
    value /= 1024
    return f"{value:.1f} YiB" if value < 1024 else f"{value:.1e} YiB"


def _read_text(path: str) -> str:
    try:
        with open(path, encoding="ascii") as f:
            return f.read()
    except (OSError, UnicodeDecodeError):
        return ""
