"""EsperCallback's replay check of sb3-contrib RecurrentPPO's rollout buffer (issue 15).

Before each ``train()``, the callback replays the buffer the way ``train()`` does and
compares the log-probs (and a critic LSTM's values) with what the rollout stored. These
tests run the real RecurrentPPO: the check must find nothing in sb3-contrib as it is,
must not change what ``learn()`` trains, and must find a buffer whose stored states were
lost (the bug class of sb3-contrib #265 and RLlib #15483: a replay from the wrong
initial states).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from sb3_contrib import RecurrentPPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env

from esper_telemetry import TelemetryHub
from esper_telemetry.backends import AnomalyEscalator
from esper_telemetry.contracts import AnomalyDetected, AnomalyType, PPOUpdateCompleted
from esper_telemetry.integrations import sb3
from esper_telemetry.integrations.sb3 import EsperCallback
from esper_telemetry.testing import capture_events
from esper_telemetry.training.envs import NoVelocityObservation

N_ENVS, N_STEPS = 4, 16
PER_UPDATE = N_ENVS * N_STEPS


def recurrent(seed: int = 0, **policy: Any) -> RecurrentPPO:
    """A small RecurrentPPO on masked CartPole: episodes end inside the 16-step windows."""
    return RecurrentPPO(
        "MlpLstmPolicy",
        make_vec_env(lambda: NoVelocityObservation(gym.make("CartPole-v1")), N_ENVS, seed=seed),
        n_steps=N_STEPS,
        batch_size=PER_UPDATE // 2,  # two minibatches: train() draws a random split
        n_epochs=2,
        seed=seed,
        device="cpu",
        policy_kwargs={"lstm_hidden_size": 8, "net_arch": {"pi": [8], "vf": [8]}, **policy},
    )


class LoseStoredStates(BaseCallback):
    """Plants a bug: at the end of each rollout, the buffer's stored LSTM states are zeroed,
    as a buffer that failed to store them would hold. The rollout itself ran from the
    true states; only the replay is wrong, and only where a sequence does not begin an
    episode (there the state is zero anyway)."""

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        model: Any = self.model
        buffer = model.rollout_buffer
        for name in ("hidden_states_pi", "cell_states_pi", "hidden_states_vf", "cell_states_vf"):
            getattr(buffer, name)[:] = 0.0


@pytest.fixture
def hub() -> Iterator[TelemetryHub]:
    with TelemetryHub("sb3-replay") as hub:
        yield hub


def updates(events: list[Any]) -> list[PPOUpdateCompleted]:
    return [e for e in events if isinstance(e, PPOUpdateCompleted)]


def test_sb3_contrib_replays_its_buffer_exactly_every_update(hub: TelemetryHub) -> None:
    """Each update checks both LSTMs over every real step, and sb3-contrib's training pass
    reproduces its rollout: no step differs by more than float32 rounding."""
    model = recurrent()
    with capture_events(hub) as rec:
        model.learn(6 * PER_UPDATE, callback=EsperCallback(hub))
    published = updates(rec.events)
    assert len(published) == 6
    for event in published:
        replay = event.payload.replay
        assert list(replay) == ["policy", "value"]
        for r in replay.values():
            assert (r.compared, r.mismatched, r.first_step) == (PER_UPDATE, 0, None)
            assert r.max_abs_diff <= 1e-6, r
            assert r.drift is None  # sb3's buffer holds no per-step output to drift from
    assert not rec.of_type(AnomalyDetected)


def test_the_check_does_not_change_what_learn_trains(hub: TelemetryHub) -> None:
    """The same seed trains the same weights with the check (level NORMAL) and without
    any callback: the check draws nothing from numpy's random state that train() uses for
    its minibatch split, and leaves the buffer as train() expects it."""
    # One after the other: building a model seeds the global random state learn() uses.
    checked = recurrent()
    checked.learn(4 * PER_UPDATE, callback=EsperCallback(hub))
    plain = recurrent()
    plain.learn(4 * PER_UPDATE)
    for (name, a), b in zip(
        checked.policy.state_dict().items(), plain.policy.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name


def test_lost_stored_states_raise_a_replay_mismatch_from_the_second_update(
    hub: TelemetryHub,
) -> None:
    """With the stored states zeroed, the first update still replays exactly (its window
    starts from zeros, as the first rollout did); from the second update on, the windows
    start from carried states, and the check names the first step of an env whose
    window began mid-episode."""
    hub.subscribe(AnomalyEscalator(), mode="inline")
    model = recurrent()
    with capture_events(hub) as rec:
        model.learn(3 * PER_UPDATE, callback=[LoseStoredStates(), EsperCallback(hub)])
    first, *later = updates(rec.events)
    assert all(r.mismatched == 0 for r in first.payload.replay.values())
    for event in later:
        policy = event.payload.replay["policy"]
        assert policy.mismatched > 0
        assert policy.first_step == 0  # the window's first step: a carried state
    anomalies = [
        e
        for e in rec.of_type(AnomalyDetected)
        if isinstance(e, AnomalyDetected)
        and e.payload.anomaly.type is AnomalyType.LSTM_REPLAY_MISMATCH
    ]
    assert {(e.update, e.payload.anomaly.state) for e in anomalies} == {
        (1, "policy"),
        (1, "value"),
        (2, "policy"),
        (2, "value"),
    }
    mismatch = next(e for e in anomalies if e.payload.anomaly.state == "policy")
    replay = later[0].payload.replay["policy"]
    assert mismatch.payload.outlier_envs == (replay.first_env,)
    assert mismatch.payload.anomaly.observed == replay.max_abs_diff


def test_a_check_that_fails_is_turned_off_with_one_warning_and_training_goes_on(
    hub: TelemetryHub, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A buffer the check cannot read (stood in for by a check that raises, as it would
    on a layout a future sb3-contrib might choose) costs the check, never the run: one
    warning, updates published without a replay, learn() completes."""
    calls: list[int] = []

    def unreadable(model: object, thresholds: object) -> None:
        calls.append(1)
        raise KeyError("hidden_states_pi")

    monkeypatch.setattr(sb3, "_replay_check", unreadable)
    model = recurrent()
    with caplog.at_level(logging.WARNING), capture_events(hub) as rec:
        model.learn(3 * PER_UPDATE, callback=EsperCallback(hub))
    published = updates(rec.events)
    assert len(published) == 3
    assert all(not e.payload.replay for e in published)
    assert calls == [1]  # off after the first failure
    warnings = [r for r in caplog.records if "replay check" in r.getMessage()]
    assert len(warnings) == 1
    assert "KeyError" in warnings[0].getMessage()


def test_at_level_off_nothing_is_replayed(hub: TelemetryHub) -> None:
    """At OFF telemetry costs nothing: the buffer is not replayed (its layout is left for
    train() to make)."""
    hub.set_level("off", reason="test")
    model = recurrent()
    seen: list[bool] = []

    class Watch(BaseCallback):
        def _on_step(self) -> bool:
            return True

        def _on_rollout_end(self) -> None:
            model: Any = self.model
            seen.append(bool(model.rollout_buffer.generator_ready))

    model.learn(2 * PER_UPDATE, callback=[EsperCallback(hub), Watch()])
    assert seen == [False, False]
    assert np.isfinite(model.policy.parameters().__next__().detach().numpy()).all()
