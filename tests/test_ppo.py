"""The reference recurrent PPO: GAE, state masking at episode starts, sampling, runs."""

from __future__ import annotations

import math

import pytest
import torch

from esper_telemetry import EventType, TelemetryHub
from esper_telemetry.backends.escalator import AnomalyEscalator
from esper_telemetry.contracts import PPOUpdatePayload, RunFinishedPayload
from esper_telemetry.testing import RecordingBackend
from esper_telemetry.training.ppo import (
    PPOConfig,
    RecurrentActorCritic,
    compute_gae,
    sample_actions,
    select_envs,
    train,
)

TINY = {"envs": 2, "steps": 8, "epochs": 2, "hidden": 8}


def reference_gae(rewards, values, dones, last_value, gamma, lam):  # type: ignore[no-untyped-def]
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


def random_state(batch: int, fill: float | None = None) -> tuple:
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
    config: PPOConfig, *, escalator: AnomalyEscalator | None = None
) -> tuple[list, object]:
    rec = RecordingBackend()
    with TelemetryHub("ppo-test") as hub:
        if escalator is not None:
            hub.subscribe(escalator, mode="inline")
        hub.subscribe(rec, mode="inline")
        result = train(config, hub)
    return rec.events, result


def test_a_run_frames_its_updates_and_is_deterministic() -> None:
    """RUN_STARTED, one PPO update per update with 12 lstm fields, RUN_FINISHED; a second run
    with the same seed publishes the same numbers."""
    config = PPOConfig(updates=3, **TINY)
    first, result = run_events(config)
    second, _ = run_events(config)
    assert [e.event_type.value for e in first] == [
        "RUN_STARTED",
        *["PPO_UPDATE_COMPLETED"] * 3,
        "RUN_FINISHED",
    ]
    updates = [e.payload for e in first if isinstance(e.payload, PPOUpdatePayload)]
    assert [p.env_steps for p in updates] == [16, 32, 48]
    assert all(p.health() is not None for p in updates)
    assert [e.payload for e in first[1:-1]] == [e.payload for e in second[1:-1]]
    finished = first[-1].payload
    assert isinstance(finished, RunFinishedPayload)
    assert (finished.status, finished.summary["updates"]) == ("completed", 3.0)
    assert result.status == "completed"  # type: ignore[attr-defined]


def test_injected_nan_is_measured_and_training_goes_on() -> None:
    """fault nan@1 makes update 1's state NaN; the run still completes (nothing resets it)."""
    events, result = run_events(PPOConfig(updates=3, fault=("nan", 1), **TINY))
    flags = [e.payload.lstm_has_nan for e in events if isinstance(e.payload, PPOUpdatePayload)]
    assert flags[:2] == [False, True]
    assert result.status == "completed"  # type: ignore[attr-defined]


def test_halt_on_critical_stops_the_run_after_the_anomaly() -> None:
    """With an escalator halting on critical, the run stops after the faulty update and says so."""
    events, result = run_events(
        PPOConfig(updates=5, fault=("explode", 1), **TINY),
        escalator=AnomalyEscalator(halt_on="critical"),
    )
    assert [e.event_type.value for e in events] == [
        "RUN_STARTED",
        "PPO_UPDATE_COMPLETED",
        "PPO_UPDATE_COMPLETED",
        "ANOMALY_DETECTED",
        "TELEMETRY_LEVEL_CHANGED",
        "RUN_FINISHED",
    ]
    finished = events[-1].payload
    assert (finished.status, result.status) == ("halted", "halted")  # type: ignore[attr-defined]
    assert "lstm_c_explosion" in finished.message  # type: ignore[attr-defined]


def test_should_stop_interrupts_cleanly() -> None:
    """should_stop() turning true ends the run as interrupted, with RUN_FINISHED emitted."""
    calls = iter([False, True])
    rec = RecordingBackend()
    with TelemetryHub("stop") as hub:
        hub.subscribe(rec, mode="inline")
        result = train(PPOConfig(updates=5, **TINY), hub, should_stop=lambda: next(calls))
    assert (result.status, result.updates) == ("interrupted", 1)
    assert rec.of_type(EventType.RUN_FINISHED)[0].payload.status == "interrupted"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"updates": 0}, "updates must be an int >= 1, got 0"),
        ({"envs": 6, "minibatches": 4}, "minibatches must divide envs"),
        ({"proj_size": 64}, r"proj_size must be 0 or in \[1, hidden\)"),
        ({"gamma": 1.5}, r"gamma must be in \[0, 1\]"),
        ({"fault": ("melt", 1)}, "fault must be"),
    ],
)
def test_config_rejects_bad_values(kwargs: dict, message: str) -> None:
    """PPOConfig names the bad setting."""
    with pytest.raises(ValueError, match=message):
        PPOConfig(**kwargs)
