"""The reference recurrent PPO: GAE, state masking at episode starts, sampling, runs."""

from __future__ import annotations

import math
import re
import statistics
from dataclasses import replace
from typing import Any

import gymnasium
import pytest
import torch

from esper_telemetry import TelemetryHub
from esper_telemetry.backends.escalator import AnomalyEscalator
from esper_telemetry.contracts import (
    AnomalyDetected,
    AnomalyType,
    HealthThresholds,
    PPOUpdateCompleted,
    PPOUpdatePayload,
    RunFinished,
    RunStarted,
    TelemetryEvent,
    TelemetryLevelChanged,
)
from esper_telemetry.testing import RecordingBackend, capture_events
from esper_telemetry.training import FaultKind, PPOConfig, TrainResult, train
from esper_telemetry.training.ppo import (
    ConfigError,
    RecurrentActorCritic,
    RecurrentState,
    Segments,
    UpdateInfo,
    available_memory,
    check_memory,
    compute_gae,
    ppo_loss,
    sample_actions,
    select_envs,
)

#: Updates of the learning test (the issue's 30; ~35 s on this 2-core machine).
LEARNING_UPDATES = 30
#: How much the mean return must rise between the first and the last 5 updates: seed 0
#: gains about 49 (20.7 -> 69.9); with a learning rate of 1e-9 (no learning) the same run
#: drifts by about 4 (20.5 -> 24.7).
LEARNING_GAIN = 25.0


def tiny(updates: int, fault: tuple[FaultKind, int] | None = None) -> PPOConfig:
    """A run small enough for a unit test: 2 envs, 8 steps, 2 epochs, 8 hidden units."""
    return PPOConfig(updates=updates, envs=2, steps=8, epochs=2, hidden=8, fault=fault)


def reference_gae(
    rewards: list[list[float]],
    values: list[list[float]],
    dones: list[list[bool]],
    last_value: list[float],
    gamma: float,
    lam: float,
) -> list[list[float]]:
    """GAE as the sum over l of (gamma*lam)^l * delta_{t+l}, stopping after a done."""
    T, B = len(rewards), len(rewards[0])
    adv = [[0.0] * B for _ in range(T)]
    for b in range(B):
        for t in range(T):
            total, weight = 0.0, 1.0
            for k in range(t, T):
                nxt = last_value[b] if k == T - 1 else values[k + 1][b]
                delta = rewards[k][b] + gamma * nxt * (0.0 if dones[k][b] else 1.0) - values[k][b]
                total += weight * delta
                if dones[k][b]:
                    break
                weight *= gamma * lam
            adv[t][b] = total
    return adv


def test_gae_matches_the_explicit_sum_with_episode_ends() -> None:
    """compute_gae equals the truncated discounted sum of TD errors, dones included."""
    torch.manual_seed(1)
    rewards = torch.rand(6, 3)
    values = torch.randn(6, 3)
    dones = torch.tensor(
        [[0, 0, 0], [0, 1, 0], [0, 0, 0], [1, 0, 0], [0, 0, 1], [0, 0, 0]], dtype=torch.bool
    )
    last = torch.randn(3)
    adv, ret = compute_gae(rewards, values, dones, last, gamma=0.9, lam=0.8)
    expected = reference_gae(
        rewards.tolist(), values.tolist(), dones.tolist(), last.tolist(), 0.9, 0.8
    )
    torch.testing.assert_close(adv, torch.tensor(expected))
    torch.testing.assert_close(ret, adv + values)


def test_gae_does_not_bootstrap_through_a_terminal_step() -> None:
    """A done at the last step ignores last_value entirely."""
    rewards, values = torch.ones(2, 1), torch.zeros(2, 1)
    dones = torch.tensor([[False], [True]])
    a, _ = compute_gae(rewards, values, dones, torch.tensor([1e6]), gamma=0.5, lam=1.0)
    b, _ = compute_gae(rewards, values, dones, torch.tensor([-1e6]), gamma=0.5, lam=1.0)
    assert a.flatten().tolist() == b.flatten().tolist() == [1.5, 1.0]


def model() -> RecurrentActorCritic:
    torch.manual_seed(0)
    return RecurrentActorCritic(2, 2, PPOConfig(hidden=8, layers=2))


def random_state(batch: int, fill: float | None = None) -> RecurrentState:
    def t() -> torch.Tensor:
        return torch.full((2, batch, 8), fill) if fill is not None else torch.randn(2, batch, 8)

    return (t(), t()), (t(), t())


def test_an_episode_start_zeroes_only_that_envs_state() -> None:
    """With starts[t] set for env 0, env 0 continues as if from a zero state; env 1 does not."""
    m = model()
    obs = torch.randn(5, 2, 2)
    starts = torch.zeros(5, 2, dtype=torch.bool)
    starts[3, 0] = True
    state = random_state(2)
    no_starts = torch.zeros(5, 1, dtype=torch.bool)
    with torch.no_grad():
        logits, values, _ = m.unroll(obs, starts, state)
        fresh_l, fresh_v, _ = m.unroll(obs[3:, :1], starts[3:, :1], m.initial_state(1))
        kept_l, kept_v, _ = m.unroll(obs[:, 1:], no_starts, select_envs(state, torch.tensor([1])))
    torch.testing.assert_close(logits[3:, :1], fresh_l)
    torch.testing.assert_close(values[3:, :1], fresh_v)
    torch.testing.assert_close(logits[:, 1:], kept_l)
    torch.testing.assert_close(values[:, 1:], kept_v)


def test_an_episode_start_resets_even_a_nan_state() -> None:
    """A NaN state is cleared at an episode boundary (zeroed, not multiplied by 0)."""
    m = model()
    start = torch.ones(1, 1, dtype=torch.bool)
    with torch.no_grad():
        logits, values, state = m.unroll(torch.randn(1, 1, 2), start, random_state(1, math.nan))
    assert not torch.isnan(logits).any()
    assert not torch.isnan(values).any()
    assert not any(torch.isnan(x).any() for pair in state for x in pair)


def planted_starts(steps: int = 32, envs: int = 8) -> torch.Tensor:
    """Episode starts as a rollout has them: a few envs reset inside the window, one at
    step 0, one twice, env 0 never (a long episode going on from its stored state)."""
    starts = torch.zeros(steps, envs, dtype=torch.bool)
    starts[0, 1] = True
    starts[5, 2] = True
    starts[[3, 19], 3] = True
    starts[steps - 1, 4] = True  # a one-step segment at the end
    starts[1:, 5] = True  # one-step episodes throughout
    return starts


def test_the_segment_unroll_gives_the_step_by_step_loss_and_gradients() -> None:
    """On the same parameters and data, the PPO loss of the batched unroll equals the
    step-by-step one to 1e-6, and so do the gradients of every parameter."""
    torch.manual_seed(3)
    config = PPOConfig()
    m = RecurrentActorCritic(2, 2, config)
    steps, envs = 32, 8
    obs, starts = torch.randn(steps, envs, 2), planted_starts(steps, envs)

    def pair() -> tuple[torch.Tensor, torch.Tensor]:
        return torch.randn(1, envs, 64), torch.randn(1, envs, 64)

    state: RecurrentState = (pair(), pair())
    actions = torch.randint(0, 2, (steps, envs))
    old_logp = torch.log(torch.full((steps, envs), 0.5)) + 0.05 * torch.randn(steps, envs)
    advantages, returns = torch.randn(steps, envs), torch.randn(steps, envs)

    def loss_and_grads(batched: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        m.zero_grad()
        if batched:
            logits, values = m.unroll_segments(obs, starts, state)
        else:
            logits, values, _ = m.unroll(obs, starts, state)
        loss, _ = ppo_loss(
            logits, values, actions, old_logp, advantages, returns, clip=0.2, config=config
        )
        loss.backward()  # type: ignore[no-untyped-call]
        return loss.detach(), [p.grad.clone() for p in m.parameters() if p.grad is not None]

    step_loss, step_grads = loss_and_grads(batched=False)
    batch_loss, batch_grads = loss_and_grads(batched=True)
    assert abs(step_loss.item() - batch_loss.item()) <= 1e-6
    assert len(step_grads) == len(batch_grads) == len(list(m.parameters()))
    for a, b in zip(step_grads, batch_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_an_episode_start_inside_a_segment_batch_resets_the_state() -> None:
    """Env 0 plays a long episode from its stored state, env 1 resets at step 5: the
    batched unroll gives env 0 the LSTM run over all steps from that state, and env 1 the
    run from its stored state up to step 4, then the run from zeros."""
    m = model()
    steps = 12
    obs = torch.randn(steps, 2, 2)
    starts = torch.zeros(steps, 2, dtype=torch.bool)
    starts[5, 1] = True
    state = random_state(2)
    with torch.no_grad():
        actor, critic = m.segment_outputs(obs, starts, state)
        (ha, ca), (hc, cc) = state
        long_actor, _ = m.actor_lstm(obs[:, :1], (ha[:, :1], ca[:, :1]))
        long_critic, _ = m.critic_lstm(obs[:, :1], (hc[:, :1], cc[:, :1]))
        before, _ = m.actor_lstm(obs[:5, 1:], (ha[:, 1:], ca[:, 1:]))
        after, _ = m.actor_lstm(obs[5:, 1:])  # nn.LSTM's own zero initial state
    torch.testing.assert_close(actor[:, :1], long_actor)
    torch.testing.assert_close(critic[:, :1], long_critic)
    torch.testing.assert_close(actor[:5, 1:], before)
    torch.testing.assert_close(actor[5:, 1:], after)
    assert not torch.equal(actor[5:, 1:], m.actor_lstm(obs[5:, 1:], (ha[:, 1:], ca[:, 1:]))[0])


def test_segments_reset_a_nan_state_at_an_episode_start_and_keep_it_otherwise() -> None:
    """A NaN stored state is cleared where a segment begins an episode and flows on where
    it does not (no repair: broken training stays visible)."""
    m = model()
    starts = torch.zeros(4, 2, dtype=torch.bool)
    starts[0, 0] = True
    with torch.no_grad():
        logits, values = m.unroll_segments(torch.randn(4, 2, 2), starts, random_state(2, math.nan))
    assert not torch.isnan(logits[:, 0]).any()
    assert not torch.isnan(values[:, 0]).any()
    assert torch.isnan(logits[:, 1]).all()


def test_segments_place_every_step_once() -> None:
    """Padding and unpadding give back every step of every env, and segments split at
    exactly the planted starts."""
    starts = planted_starts()
    cut = Segments.of(starts)
    x = torch.arange(32 * 8, dtype=torch.float32).view(32, 8, 1)
    torch.testing.assert_close(cut.unpad(cut.pad(x)), x)
    per_env = [1 + int(starts[1:, b].sum()) for b in range(8)]
    assert len(cut.env) == sum(per_env)
    assert cut.env.tolist() == [b for b in range(8) for _ in range(per_env[b])]
    assert cut.length == 32  # env 0's long episode


def test_sampling_is_seeded_follows_softmax_and_survives_nan() -> None:
    """Gumbel-max sampling repeats for a seed, matches softmax frequencies, and does not raise
    on NaN logits."""
    logits = torch.tensor([[0.0, 1.0, -1.0]]).expand(20000, 3)
    a = sample_actions(logits, torch.Generator().manual_seed(3))
    b = sample_actions(logits, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    freq = torch.bincount(a, minlength=3).float() / len(a)
    torch.testing.assert_close(freq, torch.softmax(logits[0], 0), atol=0.015, rtol=0)
    nan_actions = sample_actions(torch.full((4, 3), math.nan), torch.Generator())
    assert nan_actions.shape == (4,)


def run_events(
    config: PPOConfig,
    *,
    escalator: AnomalyEscalator | None = None,
    thresholds: HealthThresholds | None = None,
) -> tuple[list[TelemetryEvent], TrainResult]:
    rec = RecordingBackend()
    with TelemetryHub("ppo-test") as hub:
        if escalator is not None:
            hub.subscribe(escalator, mode="inline")
        hub.subscribe(rec, mode="inline")
        result = train(config, hub, thresholds=thresholds)
    return rec.events, result


def updates_of(events: list[TelemetryEvent]) -> list[PPOUpdatePayload]:
    return [e.payload for e in events if isinstance(e, PPOUpdateCompleted)]


def returns_of(payloads: list[PPOUpdatePayload]) -> list[float]:
    """The mean returns the updates declare (NaN where one declares none), after checking
    that each declares esper ppo's window of 20 episodes."""
    assert [p.episode_return_window for p in payloads] == [20] * len(payloads)
    return [math.nan if p.episode_return_mean is None else p.episode_return_mean for p in payloads]


def test_a_run_frames_its_updates_and_is_deterministic() -> None:
    """RunStarted, one PPOUpdateCompleted per update with 12 lstm fields, RunFinished; a
    second run with the same seed publishes the same numbers."""
    config = tiny(3)
    first, result = run_events(config)
    second, _ = run_events(config)
    assert [type(e) for e in first] == [RunStarted, *[PPOUpdateCompleted] * 3, RunFinished]
    updates = updates_of(first)
    assert [p.env_steps for p in updates] == [16, 32, 48]
    assert [p.health() is not None for p in updates] == [True, True, True]
    assert updates == updates_of(second)
    finished = first[-1]
    assert isinstance(finished, RunFinished)
    assert (finished.payload.status, finished.payload.summary["updates"]) == ("completed", 3.0)
    assert (result.status, result.updates, result.env_steps) == ("completed", 3, 48)


def test_each_update_names_its_two_states_and_declares_its_mean_return() -> None:
    """The actor's LSTM state is the primary state, "policy", which the flat lstm_* fields
    repeat, and the critic's is "value"; the mean return of the last 20 episodes is
    declared (NaN before the first one ends), and extra keeps only the count of finished
    episodes."""
    # 2 steps per update: the first episode ends at update 4.
    events, result = run_events(PPOConfig(updates=6, envs=2, steps=2, epochs=1, hidden=8))
    updates = updates_of(events)
    assert [(p.primary_state, list(p.recurrent_health)) for p in updates] == [
        ("policy", ["policy", "value"])
    ] * 6
    assert all(p.recurrent_health["policy"] != p.recurrent_health["value"] for p in updates)
    assert [p.recurrent_health["policy"] == p.health() for p in updates] == [True] * 6
    assert [(dict(p.recurrent_detail), sorted(p.extra)) for p in updates] == [
        ({}, ["episodes"])
    ] * 6
    returns, episodes = returns_of(updates), [p.extra["episodes"] for p in updates]
    assert [math.isnan(r) for r in returns] == [True] * 4 + [False] * 2
    assert [n == 0 for n in episodes] == [True] * 4 + [False] * 2
    assert (returns[-1], episodes[-1]) == (result.mean_return, len(result.episode_returns))


def test_injected_nan_is_measured_and_training_goes_on() -> None:
    """fault nan@1 makes update 1's state NaN (env 0, named in its detail); the run still
    completes, and an episode start in env 0 clears the NaN by update 2."""
    events, result = run_events(tiny(3, ("nan", 1)))
    assert [(p.lstm_has_nan, p.lstm_outlier_envs) for p in updates_of(events)] == [
        (False, None),
        (True, (0,)),
        (False, None),
    ]
    assert result.status == "completed"


def test_only_the_critical_update_carries_detail_at_normal_level() -> None:
    """At NORMAL level, the exploded update 1 carries its per-env detail; the healthy
    updates around it carry none."""
    events, _ = run_events(tiny(3, ("explode", 1)))
    assert [(p.lstm_detail is not None, p.lstm_outlier_envs) for p in updates_of(events)] == [
        (False, None),
        (True, (0, 1)),
        (False, None),
    ]


def test_the_thresholds_given_to_train_decide_which_updates_carry_detail() -> None:
    """With thresholds that call every healthy state vanishing (critical), every update
    carries its detail; with the default ones, none does."""
    strict = HealthThresholds(vanishing_rms=1.0, warning_rms=2.0, critical_rms=3.0)
    config = tiny(3)
    with_strict, _ = run_events(config, thresholds=strict)
    with_default, _ = run_events(config)
    assert [p.lstm_detail is not None for p in updates_of(with_strict)] == [True] * 3
    assert [p.lstm_detail is not None for p in updates_of(with_default)] == [False] * 3


def test_halt_on_critical_stops_the_run_after_the_anomaly() -> None:
    """With an escalator halting on critical, the run stops after the faulty update and says so."""
    events, result = run_events(
        tiny(5, ("explode", 1)),
        escalator=AnomalyEscalator(halt_on="critical"),
    )
    assert [(type(e), e.update) for e in events] == [
        (RunStarted, 0),
        (PPOUpdateCompleted, 0),
        (PPOUpdateCompleted, 1),
        (AnomalyDetected, 1),
        (TelemetryLevelChanged, 1),
        (RunFinished, 1),
    ]
    anomalies = [e.payload.anomaly.type for e in events if isinstance(e, AnomalyDetected)]
    assert anomalies == [AnomalyType.LSTM_C_EXPLOSION]
    finished = events[-1]
    assert isinstance(finished, RunFinished)
    assert (finished.payload.status, result.status) == ("halted", "halted")
    assert "lstm_c_explosion" in finished.payload.message
    assert result.message == finished.payload.message


def test_should_stop_interrupts_cleanly() -> None:
    """should_stop() turning true ends the run as interrupted, with RunFinished emitted."""
    calls = iter([False, True])
    rec = RecordingBackend()
    with TelemetryHub("stop") as hub:
        hub.subscribe(rec, mode="inline")
        result = train(tiny(5), hub, should_stop=lambda: next(calls))
    assert (result.status, result.updates) == ("interrupted", 1)
    assert [type(e) for e in rec.events] == [RunStarted, PPOUpdateCompleted, RunFinished]
    assert [e.payload.status for e in rec.events if isinstance(e, RunFinished)] == ["interrupted"]


def test_the_reference_trainer_learns() -> None:
    """Seed 0, default settings, 30 updates: the mean return of the last 5 updates is far
    above that of the first 5 (see LEARNING_GAIN)."""
    with TelemetryHub("learns") as hub, capture_events(hub, events=[PPOUpdateCompleted]) as rec:
        result = train(PPOConfig(updates=LEARNING_UPDATES, seed=0), hub)
    returns = returns_of(updates_of(rec.events))
    assert result.status == "completed"
    assert [math.isfinite(r) for r in returns] == [True] * LEARNING_UPDATES
    early, late = statistics.mean(returns[:5]), statistics.mean(returns[-5:])
    assert late - early > LEARNING_GAIN, (early, late, returns)


@pytest.mark.parametrize(
    ("kwargs", "fields", "message"),
    [
        ({"updates": 0}, ("updates",), r"updates: must be an int in \[1, 2\*\*63 - 1\], got 0"),
        ({"updates": True}, ("updates",), "got True"),
        ({"envs": 2**63}, ("envs",), "must be an int in"),
        ({"envs": 6, "minibatches": 4}, ("minibatches",), "must divide envs"),
        ({"proj_size": 64}, ("proj_size",), r"less than hidden \(64\), got 64"),
        ({"proj_size": -1}, ("proj_size",), r"must be an int in \[0, "),
        ({"seed": -1}, ("seed",), r"seed: must be an int in \[0, 2\*\*63 - 1\], got -1"),
        ({"seed": 2**70}, ("seed",), "got 1180591620717411303424"),
        ({"lr": math.inf}, ("lr",), "lr: must be a finite number > 0, got inf"),
        ({"lr": math.nan}, ("lr",), "must be a finite number > 0, got nan"),
        ({"lr": 0.0}, ("lr",), "must be a finite number > 0, got 0.0"),
        ({"lr": -1e-3}, ("lr",), "got -0.001"),
        ({"lr": "fast"}, ("lr",), "got 'fast'"),
        ({"ent_coef": math.nan}, ("ent_coef",), "must be a finite number >= 0"),
        ({"gamma": 1.5}, ("gamma",), r"gamma: must be a finite number in \[0, 1\]"),
        ({"anneal": 1}, ("anneal",), "must be True or False, got 1"),
        ({"device": "gpu"}, ("device",), "must be 'cpu', 'cuda' or 'cuda:N', got 'gpu'"),
        ({"device": "cuda:x"}, ("device",), "got 'cuda:x'"),
        ({"fault": ("melt", 1)}, ("fault",), "must be \\(kind, update\\)"),
        (
            {"fault": ("nan", 10)},
            ("fault",),
            r"update 10 is not one of the run's updates; pick one",
        ),
        (
            {"updates": 2**40, "envs": 2**20, "steps": 2**10},
            ("updates", "envs", "steps"),
            r"more than an event can count \(2\*\*63 - 1\)",
        ),
    ],
)
def test_config_rejects_bad_values(
    kwargs: dict[str, object], fields: tuple[str, ...], message: str
) -> None:
    """PPOConfig refuses the value with a ConfigError naming the setting (fields and text)."""
    with pytest.raises(ConfigError, match=message) as caught:
        PPOConfig(**kwargs)  # type: ignore[arg-type]
    assert caught.value.fields == fields
    assert str(caught.value) == f"{', '.join(fields)}: {caught.value.reason}"


@pytest.mark.parametrize(
    "kwargs", [{}, {"hidden": 16, "layers": 3}, {"hidden": 16, "layers": 3, "proj_size": 4}]
)
def test_the_memory_estimate_counts_every_parameter(kwargs: dict[str, int]) -> None:
    """The model part of the estimate is 16 bytes for each parameter the model really has,
    plus the per-layer object allowance."""
    config = PPOConfig(**kwargs)  # type: ignore[arg-type]
    params = sum(p.numel() for p in RecurrentActorCritic(2, 2, config).parameters())
    assert config.memory_estimate().model == 16 * params + 2 * config.layers * 2048


def test_check_memory_refuses_a_run_that_cannot_fit_naming_the_sizes() -> None:
    """A run whose lower-bound estimate exceeds the memory available is refused with the
    estimate, the sizes named; one that fits is returned its estimate."""
    small = PPOConfig(envs=2, steps=8, hidden=8)
    assert check_memory(small, available=2**30) == small.memory_estimate()
    with pytest.raises(ConfigError) as caught:
        check_memory(PPOConfig(envs=10**12), available=2**30)
    assert caught.value.fields == ("envs", "steps", "hidden", "layers")
    assert caught.value.reason == (
        "the run would need at least 64.7 PiB (model and optimiser 681.0 KiB, rollout "
        "61.1 PiB, environments 3.6 PiB), more than the 1.0 GiB of memory available; "
        "choose smaller sizes"
    )


@pytest.mark.parametrize(
    "kwargs",
    [{"hidden": 10**12}, {"steps": 10**15}, {"envs": 10**12}, {"layers": 10**9}],
)
def test_the_sizes_of_the_issue_are_refused_on_this_machine(kwargs: dict[str, int]) -> None:
    """--hidden 10**12, --episode-length 10**15, --envs 10**12 and --layers 10**9 exceed the
    memory of any machine, so check_memory refuses each against the real available memory."""
    assert available_memory() is not None
    with pytest.raises(ConfigError, match="the run would need at least"):
        check_memory(PPOConfig(**kwargs))  # type: ignore[arg-type]


def test_train_refuses_a_run_that_cannot_fit_before_emitting_anything() -> None:
    """train() checks the memory first: a run too big raises ConfigError and emits nothing."""
    rec = RecordingBackend()
    with TelemetryHub("too-big") as hub:
        hub.subscribe(rec, mode="inline")
        with pytest.raises(ConfigError, match="the run would need"):
            train(PPOConfig(envs=2, steps=2**40, hidden=8), hub)
    assert rec.events == []


def test_a_failure_inside_training_ends_the_run_failed_on_the_record() -> None:
    """A callback raising after update 1: RunFinished says failed with the error in one line,
    the result says the same and keeps the exception; nothing is re-raised."""

    def on_update(info: UpdateInfo) -> None:
        if info.update == 1:
            raise RuntimeError("callback broke\nsecond line")

    rec = RecordingBackend()
    with TelemetryHub("fails") as hub:
        hub.subscribe(rec, mode="inline")
        result = train(tiny(4), hub, on_update=on_update)
    assert [(type(e), e.update) for e in rec.events] == [
        (RunStarted, 0),
        (PPOUpdateCompleted, 0),
        (PPOUpdateCompleted, 1),
        (RunFinished, 1),
    ]
    finished = rec.events[-1]
    assert isinstance(finished, RunFinished)
    line = finished.payload.message
    assert re.fullmatch(
        r"RuntimeError after 2 updates: callback broke \(test_ppo\.py:\d+ in on_update\)", line
    ), line
    assert (finished.payload.status, result.status, result.message) == ("failed", "failed", line)
    assert (result.updates, finished.payload.summary["updates"]) == (2, 2.0)
    assert isinstance(result.error, RuntimeError)


def test_a_library_failure_mid_update_ends_the_run_failed() -> None:
    """torch raising inside the PPO epochs of update 1 (as a device error would): the run
    ends failed after 1 update, RunFinished names the error, the envs are closed."""
    real = torch.nn.utils.clip_grad_norm_
    calls = iter(range(10**6))

    def clip(*args: Any, **kwargs: Any) -> torch.Tensor:
        if next(calls) == 3:  # tiny(): 2 epochs x 1 minibatch per update
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return real(*args, **kwargs)

    events, result = _run_patched(torch.nn.utils, "clip_grad_norm_", clip, tiny(4))
    assert [type(e) for e in events] == [RunStarted, PPOUpdateCompleted, RunFinished]
    assert result.status == "failed"
    assert result.message.startswith(
        "RuntimeError after 1 update: CUDA error: an illegal memory access was encountered ("
    )
    assert [e.payload.message for e in events if isinstance(e, RunFinished)] == [result.message]


def test_a_failure_while_starting_still_finishes_the_run() -> None:
    """The environments failing to build: RunStarted, then RunFinished failed after 0 updates."""

    def make(*args: Any, **kwargs: Any) -> Any:
        raise OSError("no display")

    events, result = _run_patched(gymnasium, "make", make, tiny(2))
    assert [type(e) for e in events] == [RunStarted, RunFinished]
    assert (result.status, result.updates) == ("failed", 0)
    assert result.message.startswith("OSError after 0 updates: no display (")


def _run_patched(
    owner: object, name: str, replacement: object, config: PPOConfig
) -> tuple[list[TelemetryEvent], TrainResult]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(owner, name, replacement)
        return run_events(config)


def test_a_cuda_device_without_a_gpu_is_refused_in_one_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """device='cuda' on a machine whose torch sees no GPU: a ConfigError naming device
    (torch's own answer is forced to "none", so the test says the same on a GPU machine)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(
        ConfigError,
        match=r"device: 'cuda' was asked for, but torch .* sees no CUDA GPU here; use 'cpu'",
    ) as info:
        PPOConfig(device="cuda")
    assert info.value.fields == ("device",)
    assert PPOConfig().device == "cpu"


def test_value_clipping_takes_the_larger_of_the_plain_and_the_clipped_value_loss() -> None:
    """clip_vf: a prediction that moved past clip_vf from the rollout's value is charged as
    if held at the clip (when that is worse), PPO2's rule; None leaves the plain loss."""
    logits = torch.zeros(1, 3, 2)
    actions = torch.zeros(1, 3, dtype=torch.long)
    old_logp = torch.log(torch.full((1, 3), 0.5))
    advantages = torch.tensor([[1.0, -1.0, 0.5]])
    returns = torch.tensor([[1.0, 1.0, 1.0]])
    old_values = torch.tensor([[0.0, 0.0, 0.0]])
    values = torch.tensor([[0.9, 3.0, 0.1]])  # moved 0.9, 3.0, 0.1 from the rollout's

    def value_loss(config: PPOConfig) -> float:
        _, figures = ppo_loss(
            logits,
            values,
            actions,
            old_logp,
            advantages,
            returns,
            clip=0.2,
            config=config,
            old_values=old_values,
        )
        return float(figures[1])

    plain = ((1 - 0.9) ** 2 + (1 - 3.0) ** 2 + (1 - 0.1) ** 2) / 3
    # held at 0.2, 0.2 and 0.1 (within the clip): losses 0.64 vs 0.01, 0.64 vs 4, 0.81
    clipped = (max(0.01, 0.64) + max(4.0, 0.64) + 0.81) / 3
    assert value_loss(PPOConfig(clip_vf=None)) == pytest.approx(plain)
    assert value_loss(PPOConfig(clip_vf=0.2)) == pytest.approx(clipped)
    with pytest.raises(ConfigError, match=r"clip_vf: must be a finite number > 0"):
        PPOConfig(clip_vf=0.0)


def test_with_diagnostics_an_exploded_cell_also_warns_of_saturation_and_runaway() -> None:
    """PPOConfig(diagnostics=True): every update carries both states' diagnostics and the
    replay drift; the planted explosion's cell is saturated and grew faster than a cell
    can, two warnings after the critical explosion that halts the run."""
    events, result = run_events(
        replace(tiny(5, ("explode", 1)), diagnostics=True),
        escalator=AnomalyEscalator(halt_on="critical"),
    )
    updates = updates_of(events)
    assert all(
        m.diagnostics is not None and p.replay[name].drift is not None
        for p in updates
        for name, m in p.recurrent_health.items()
    )
    anomalies = [e.payload.anomaly.type for e in events if isinstance(e, AnomalyDetected)]
    assert anomalies == [
        AnomalyType.LSTM_C_EXPLOSION,
        AnomalyType.LSTM_C_SATURATION,
        AnomalyType.LSTM_C_RUNAWAY,
    ]
    assert result.status == "halted"
