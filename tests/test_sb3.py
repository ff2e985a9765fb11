"""EsperCallback: the real sb3-contrib RecurrentPPO and SB3 PPO on masked-velocity CartPole.

What SB3 did is captured here on a path of its own: ``train`` wrapped on the class (so
it runs inside the callback's wrapper and before it publishes) for the logger's values
and the LSTM states, and a ``KVWriter`` on the model's logger for ``rollout/ep_rew_mean``.
"""

from __future__ import annotations

import importlib
import math
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import pytest
import torch
from sb3_contrib import RecurrentPPO
from sb3_contrib.common.recurrent.type_aliases import RNNStates
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback, CheckpointCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.logger import KVWriter, Logger
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm

from esper_telemetry import TelemetryHub, compute_lstm_health
from esper_telemetry.backends import AnomalyEscalator
from esper_telemetry.contracts import (
    AnomalyDetected,
    LSTMHealthMetrics,
    PPOUpdateCompleted,
    PPOUpdatePayload,
    RunFinished,
    RunStarted,
    TelemetryEvent,
)
from esper_telemetry.integrations.sb3 import EsperCallback
from esper_telemetry.testing import RecordingBackend, capture_events
from esper_telemetry.training.envs import NoVelocityObservation

N_ENVS, N_STEPS = 2, 16
PER_UPDATE = N_ENVS * N_STEPS
WRAPPED = {"train", "collect_rollouts", "dump_logs", "_excluded_save_params"}


def recurrent(**policy: Any) -> RecurrentPPO:
    """A tiny RecurrentPPO; ``policy`` goes to policy_kwargs (shared_lstm=...)."""
    return RecurrentPPO(
        "MlpLstmPolicy",
        make_vec_env(lambda: NoVelocityObservation(gym.make("CartPole-v1")), N_ENVS, seed=0),
        n_steps=N_STEPS,
        batch_size=PER_UPDATE,
        n_epochs=2,
        seed=0,
        device="cpu",
        policy_kwargs={"lstm_hidden_size": 8, "net_arch": {"pi": [8], "vf": [8]}, **policy},
    )


def plain_ppo() -> PPO:
    return PPO(
        "MlpPolicy",
        make_vec_env(lambda: NoVelocityObservation(gym.make("CartPole-v1")), N_ENVS, seed=0),
        n_steps=N_STEPS,
        batch_size=PER_UPDATE,
        n_epochs=2,
        seed=0,
        device="cpu",
        policy_kwargs={"net_arch": [8]},
    )


@dataclass
class Seen:
    """What SB3 itself logged and held at each train() and each dump."""

    logged: list[dict[str, Any]] = field(default_factory=list)
    states: list[RNNStates | None] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)
    dumped: list[dict[str, Any]] = field(default_factory=list)


class DumpRecorder(KVWriter):
    """An SB3 output format that keeps a copy of every dump."""

    def __init__(self, seen: Seen) -> None:
        self.seen = seen

    def write(
        self, key_values: dict[str, Any], key_excluded: dict[str, tuple[str, ...]], step: int = 0
    ) -> None:
        self.seen.dumped.append(dict(key_values))

    def close(self) -> None:
        pass


@pytest.fixture
def watch(monkeypatch: pytest.MonkeyPatch) -> Callable[[OnPolicyAlgorithm], Seen]:
    """Record what SB3 logged inside each train() of a model, on SB3's side."""

    def watch(model: OnPolicyAlgorithm) -> Seen:
        seen = Seen()
        cls = type(model)
        train = cls.train

        def recording_train(self: OnPolicyAlgorithm) -> None:
            train(self)
            seen.logged.append(dict(self.logger.name_to_value))
            states = getattr(self, "_last_lstm_states", None)
            seen.states.append(
                None
                if states is None
                else RNNStates(
                    tuple(t.clone() for t in states.pi), tuple(t.clone() for t in states.vf)
                )
            )
            seen.steps.append(self.num_timesteps)

        monkeypatch.setattr(cls, "train", recording_train)
        model.set_logger(Logger(None, [DumpRecorder(seen)]))
        return seen

    return watch


@pytest.fixture
def hub() -> Iterator[TelemetryHub]:
    with TelemetryHub("sb3-test") as hub:
        yield hub


def health(state: tuple[torch.Tensor, ...]) -> LSTMHealthMetrics:
    measured = compute_lstm_health((state[0], state[1]))
    assert measured is not None
    return measured


def expected_payloads(seen: Seen, states: tuple[str, ...]) -> list[str]:
    """The payload of each update, built from SB3's own records (as JSON: NaN compares),
    but for the replay check, which is esper's own."""
    out = []
    for logged, state, steps, dumped in zip(
        seen.logged, seen.states, seen.steps, seen.dumped, strict=True
    ):
        train = {k.removeprefix("train/"): float(v) for k, v in logged.items() if "train/" in k}
        named = {}
        if state is not None:
            named = {"policy": health(state.pi), "value": health(state.vf)}
            named = {name: named[name] for name in states}
        payload = PPOUpdatePayload(
            policy_loss=train.pop("policy_gradient_loss"),
            value_loss=train.pop("value_loss"),
            entropy=-train.pop("entropy_loss"),
            approx_kl=train.pop("approx_kl"),
            clip_fraction=train.pop("clip_fraction"),
            explained_variance=train.pop("explained_variance"),
            learning_rate=train.pop("learning_rate"),
            env_steps=steps,
            # dumped before this update's train(), after its rollout
            episode_return_mean=dumped.get("rollout/ep_rew_mean", math.nan),
            episode_return_window=100,
            recurrent_health=named,
            primary_state="policy" if named else None,
            extra=train,
        )
        out.append(payload.model_dump_json(exclude={"replay"}))
    return out


def kinds(events: list[TelemetryEvent]) -> list[tuple[str, int]]:
    return [(e.event_type.value, e.update) for e in events]


def finished(rec: RecordingBackend) -> RunFinished:
    (end,) = rec.of_type(RunFinished)
    assert isinstance(end, RunFinished)
    return end


def published(rec: RecordingBackend) -> list[PPOUpdateCompleted]:
    return [e for e in rec.events if isinstance(e, PPOUpdateCompleted)]


# -- what each update carries ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "states"),
    [
        ({}, ("policy", "value")),
        ({"shared_lstm": True, "enable_critic_lstm": False}, ("policy",)),
        ({"enable_critic_lstm": False}, ("policy",)),
    ],
    ids=["critic-lstm", "shared-lstm", "no-critic-lstm"],
)
def test_each_recurrent_update_carries_what_sb3_logged_and_its_lstm_health(
    hub: TelemetryHub,
    watch: Callable[[OnPolicyAlgorithm], Seen],
    policy: dict[str, Any],
    states: tuple[str, ...],
) -> None:
    """One event per train(), indices 0..3, each with that update's logged statistics,
    episode return and the health of SB3's own last LSTM states (value: a critic LSTM's)."""
    model = recurrent(**policy)
    seen = watch(model)
    with capture_events(hub) as rec:
        model.learn(4 * PER_UPDATE, callback=EsperCallback(hub))
    assert kinds(rec.events) == [
        ("RUN_STARTED", 0),
        *[("PPO_UPDATE_COMPLETED", k) for k in range(4)],
        ("RUN_FINISHED", 3),
    ]
    # The replay check is esper's own (tests/test_sb3_replay.py): every update, one per
    # state with an LSTM of its own, every real step compared, none off.
    payloads = [e.payload for e in published(rec)]
    assert [p.model_dump_json(exclude={"replay"}) for p in payloads] == expected_payloads(
        seen, states
    )
    for p in payloads:
        assert list(p.replay) == list(states)
        assert all((r.compared, r.mismatched) == (PER_UPDATE, 0) for r in p.replay.values())
    assert published(rec)[-1].payload.episode_return_mean == seen.dumped[-1]["rollout/ep_rew_mean"]
    assert set(published(rec)[0].payload.extra) == {"clip_range", "loss", "n_updates"}
    end = finished(rec)
    assert (end.payload.status, end.payload.summary.to_dict()) == ("completed", {"updates": 4.0})
    assert not WRAPPED & set(vars(model))  # the model is put back


def test_plain_ppo_updates_carry_no_health(
    hub: TelemetryHub, watch: Callable[[OnPolicyAlgorithm], Seen]
) -> None:
    """SB3's PPO has no recurrent state: the same statistics, no health fields."""
    model = plain_ppo()
    seen = watch(model)
    with capture_events(hub) as rec:
        model.learn(3 * PER_UPDATE, callback=EsperCallback(hub))
    updates = published(rec)
    assert [e.update for e in updates] == [0, 1, 2]
    assert [e.payload.model_dump_json(exclude={"replay"}) for e in updates] == expected_payloads(
        seen, ()
    )
    assert all(
        e.payload.health() is None and not (e.payload.recurrent_health or e.payload.replay)
        for e in updates
    )
    assert finished(rec).payload.status == "completed"


def test_run_started_records_the_hyperparameters_as_json(hub: TelemetryHub) -> None:
    """RUN_STARTED holds the model's settings (a schedule by its value now), the
    learn() arguments, and the user's config over them; the description."""
    model = recurrent()
    model.learning_rate = lambda progress: 0.001 * progress  # SB3 reads it at learn()
    model._setup_lr_schedule()
    callback = EsperCallback(hub, config={"env": "CartPoleNoVel", "seed": 7}, description="d")
    with capture_events(hub) as rec:
        model.learn(PER_UPDATE, callback=callback)
    (started,) = rec.of_type(RunStarted)
    assert isinstance(started, RunStarted)
    assert started.payload.description == "d"
    assert started.payload.config.to_dict() == {
        "algorithm": "RecurrentPPO",
        "policy_class": "RecurrentActorCriticPolicy",
        "learning_rate": 0.001,
        "learning_rate_schedule": True,
        "clip_range": 0.2,
        "clip_range_schedule": False,
        "clip_range_vf": None,
        "n_steps": N_STEPS,
        "batch_size": PER_UPDATE,
        "n_epochs": 2,
        "gamma": 0.99,
        "gae_lambda": 0.95,
        "ent_coef": 0.0,
        "vf_coef": 0.5,
        "max_grad_norm": 0.5,
        "normalize_advantage": True,
        "target_kl": None,
        "use_sde": False,
        "sde_sample_freq": -1,
        "n_envs": N_ENVS,
        "seed": 7,  # the user's config wins
        "device": "cpu",
        "policy_kwargs": {"lstm_hidden_size": 8, "net_arch": {"pi": [8], "vf": [8]}},
        "lstm_hidden_size": 8,
        "n_lstm_layers": 1,
        "shared_lstm": False,
        "enable_critic_lstm": True,
        "total_timesteps": PER_UPDATE,
        "reset_num_timesteps": True,
        "log_interval": 1,
        "env": "CartPoleNoVel",
    }


# -- halts ----------------------------------------------------------------------------------------


class PoisonState(BaseCallback):
    """Puts NaN in the policy LSTM's last state when rollout ``at`` ends (before its
    train(), which replays the buffer's states and so stays finite)."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at = at
        self.rollouts = 0

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        if self.rollouts == self.at:
            self.model._last_lstm_states.pi[0].fill_(math.nan)  # type: ignore[attr-defined]
        self.rollouts += 1


def test_a_halt_on_a_nan_state_ends_learn_cleanly_before_the_next_forward_pass(
    hub: TelemetryHub,
) -> None:
    """NaN in the policy state at update 1, a critical anomaly, a halt: learn() returns,
    the run is halted, and the policy never runs again on the NaN state."""
    hub.subscribe(AnomalyEscalator(halt_on="critical"), mode="inline")
    model = recurrent()
    forwards = [0]

    def count(*_: object) -> None:
        forwards[0] += 1

    lstm = model.policy.lstm_actor
    assert isinstance(lstm, torch.nn.LSTM)
    lstm.register_forward_hook(count)
    at_publish: list[int] = []
    hub.subscribe(
        lambda e: at_publish.append(forwards[0]), events=PPOUpdateCompleted, mode="inline"
    )
    with capture_events(hub) as rec:
        assert model.learn(6 * PER_UPDATE, callback=[EsperCallback(hub), PoisonState(at=1)])
    updates = published(rec)
    assert [e.update for e in updates] == [0, 1]
    assert updates[1].payload.lstm_has_nan
    assert updates[1].payload.lstm_detail is not None  # the update that trips it: detail
    states = {e.payload.anomaly.state for e in rec.events if isinstance(e, AnomalyDetected)}
    assert states == {"policy"}
    end = finished(rec)
    assert (end.update, end.payload.status) == (1, "halted")
    assert "update 1" in end.payload.message
    assert forwards[0] == at_publish[-1]  # no forward pass after the halt
    assert not WRAPPED & set(vars(model))


def test_without_the_halt_the_nan_state_crashes_the_next_rollout(hub: TelemetryHub) -> None:
    """The control: the same NaN, no halt asked for, and SB3's next rollout raises."""
    hub.subscribe(AnomalyEscalator(), mode="inline")
    with capture_events(hub) as rec, pytest.raises(ValueError, match="invalid values"):
        recurrent().learn(6 * PER_UPDATE, callback=[EsperCallback(hub), PoisonState(at=1)])
    assert finished(rec).payload.status == "failed"


class HaltMidRollout(BaseCallback):
    """Asks for a halt at step ``at`` (and, with ``raise_``, raises it there)."""

    def __init__(self, hub: TelemetryHub, at: int, *, raise_: bool) -> None:
        super().__init__()
        self.hub, self.at, self.raise_ = hub, at, raise_

    def _on_step(self) -> bool:
        if self.n_calls == self.at:
            self.hub.request_halt("asked by a test")
            if self.raise_:
                self.hub.raise_if_halted()
        return True


@pytest.mark.parametrize("raise_", [False, True], ids=["requested", "raised"])
def test_a_halt_during_a_rollout_stops_it_without_training_on_it(
    hub: TelemetryHub, raise_: bool
) -> None:
    """A halt requested (or TrainingHalted raised) in another callback's on_step during
    rollout 1 ends learn() without that rollout's update, and without an exception."""
    with capture_events(hub) as rec:
        recurrent().learn(
            4 * PER_UPDATE,
            callback=[EsperCallback(hub), HaltMidRollout(hub, N_STEPS + 4, raise_=raise_)],
        )
    assert kinds(rec.events) == [
        ("RUN_STARTED", 0),
        ("PPO_UPDATE_COMPLETED", 0),
        ("RUN_FINISHED", 0),
    ]
    assert finished(rec).payload.status == "halted"


# -- failures ---------------------------------------------------------------------------------


class Raises(BaseCallback):
    """Raises ``error`` at step ``at``."""

    def __init__(self, error: BaseException, at: int) -> None:
        super().__init__()
        self.error, self.at = error, at

    def _on_step(self) -> bool:
        if self.n_calls == self.at:
            raise self.error
        return True


@pytest.mark.parametrize(
    ("error", "status", "message"),
    [
        (RuntimeError("boom"), "failed", "RuntimeError: boom"),
        (KeyboardInterrupt(), "interrupted", "interrupted by the user"),
    ],
    ids=["exception", "ctrl-c"],
)
def test_an_error_in_another_callback_ends_the_run_and_is_raised_again(
    hub: TelemetryHub, error: BaseException, status: str, message: str
) -> None:
    """An exception (Ctrl-C) during rollout 1 ends the run failed (interrupted), leaves
    learn() as it was, and the model is put back."""
    model = recurrent()
    with capture_events(hub) as rec, pytest.raises(type(error)):
        model.learn(4 * PER_UPDATE, callback=[EsperCallback(hub), Raises(error, N_STEPS + 3)])
    assert kinds(rec.events) == [
        ("RUN_STARTED", 0),
        ("PPO_UPDATE_COMPLETED", 0),
        ("RUN_FINISHED", 0),
    ]
    end = finished(rec)
    assert (end.payload.status, end.payload.message) == (status, message)
    assert not WRAPPED & set(vars(model))


def test_an_error_inside_train_ends_the_run_failed(
    hub: TelemetryHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An exception from SB3's second train() ends the run failed, after update 0."""
    model = recurrent()
    train = RecurrentPPO.train
    calls = [0]

    def failing_train(self: RecurrentPPO) -> None:
        calls[0] += 1
        if calls[0] == 2:
            raise FloatingPointError("loss went non-finite")
        train(self)

    monkeypatch.setattr(RecurrentPPO, "train", failing_train)
    with capture_events(hub) as rec, pytest.raises(FloatingPointError):
        model.learn(4 * PER_UPDATE, callback=EsperCallback(hub))
    assert [e.update for e in published(rec)] == [0]
    assert finished(rec).payload.message == "FloatingPointError: loss went non-finite"


# -- several learn() calls, saving -----------------------------------------------------------


def test_learn_again_continues_the_update_index(hub: TelemetryHub) -> None:
    """With the same callback, a second learn() (reset_num_timesteps=False) continues
    the index and the env steps; with reset_num_timesteps=True only the steps restart.
    Each learn() is a run block of its own."""
    model, callback = recurrent(), EsperCallback(hub)
    with capture_events(hub) as rec:
        model.learn(2 * PER_UPDATE, callback=callback)
        model.learn(2 * PER_UPDATE, callback=callback, reset_num_timesteps=False)
        model.learn(PER_UPDATE, callback=callback, reset_num_timesteps=True)
    rows = [
        (e.event_type.value, e.update, getattr(e.payload, "env_steps", None)) for e in rec.events
    ]
    block = ("RUN_STARTED", 0, None)
    assert rows == [
        block,
        ("PPO_UPDATE_COMPLETED", 0, 32),
        ("PPO_UPDATE_COMPLETED", 1, 64),
        ("RUN_FINISHED", 1, None),
        block,
        ("PPO_UPDATE_COMPLETED", 2, 96),
        ("PPO_UPDATE_COMPLETED", 3, 128),
        ("RUN_FINISHED", 3, None),
        block,
        ("PPO_UPDATE_COMPLETED", 4, 32),
        ("RUN_FINISHED", 4, None),
    ]
    starts = [e for e in rec.events if isinstance(e, RunStarted)]
    assert [e.payload.config["reset_num_timesteps"] for e in starts] == [True, False, True]
    assert callback.next_update == 5


def test_a_checkpoint_during_learn_saves_the_model_without_the_wrappers(
    hub: TelemetryHub, tmp_path: Path
) -> None:
    """model.save() from SB3's CheckpointCallback works while learn() runs, and the
    saved model loads as a plain one."""
    model = recurrent()
    checkpoint = CheckpointCallback(save_freq=N_STEPS + 2, save_path=str(tmp_path))
    with capture_events(hub) as rec:
        model.learn(2 * PER_UPDATE, callback=[EsperCallback(hub), checkpoint])
    (saved,) = tmp_path.glob("*.zip")
    loaded = RecurrentPPO.load(saved, device="cpu")
    assert not WRAPPED & set(vars(loaded))
    assert finished(rec).payload.status == "completed"


def test_one_learn_takes_one_esper_callback(hub: TelemetryHub) -> None:
    """Two EsperCallbacks in one learn() would publish every update twice: refused, and
    the first one's run ends failed."""
    model = recurrent()
    with capture_events(hub) as rec, pytest.raises(RuntimeError, match="two EsperCallbacks"):
        model.learn(PER_UPDATE, callback=[EsperCallback(hub), EsperCallback(hub)])
    assert kinds(rec.events) == [("RUN_STARTED", 0), ("RUN_FINISHED", 0)]
    assert finished(rec).payload.message.startswith("RuntimeError: this learn() has two")
    assert not WRAPPED & set(vars(model))


class FailsToStart(BaseCallback):
    """Raises in on_training_start: after EsperCallback's, before any wrapped call."""

    def _on_training_start(self) -> None:
        raise RuntimeError("no GPU")

    def _on_step(self) -> bool:
        return True


@pytest.mark.parametrize(
    ("same_callback", "then"),
    [
        (
            True,
            [("RUN_STARTED", None), ("PPO_UPDATE_COMPLETED", None), ("RUN_FINISHED", "completed")],
        ),
        (False, []),  # a learn() without the callback publishes nothing
    ],
    ids=["same-callback", "no-callback"],
)
def test_a_run_ended_out_of_sight_is_ended_failed_by_the_next_learn(
    hub: TelemetryHub, same_callback: bool, then: list[tuple[str, str | None]]
) -> None:
    """An exception where nothing is wrapped leaves the run open; the model's next
    learn() ends it failed and runs on its own (unwrapped) methods."""
    model, callback = recurrent(), EsperCallback(hub)
    with capture_events(hub) as rec:
        with pytest.raises(RuntimeError, match="no GPU"):
            model.learn(PER_UPDATE, callback=[callback, FailsToStart()])
        assert kinds(rec.events) == [("RUN_STARTED", 0)]
        model.learn(PER_UPDATE, callback=callback if same_callback else None)
    rows = [(e.event_type.value, getattr(e.payload, "status", None)) for e in rec.events]
    assert rows == [("RUN_STARTED", None), ("RUN_FINISHED", "failed"), *then]
    ends = [e for e in rec.events if isinstance(e, RunFinished)]
    assert ends[0].payload.message.startswith("RuntimeError: learn() ended without reaching")
    assert not WRAPPED & set(vars(model))


def test_bad_arguments_are_refused(hub: TelemetryHub) -> None:
    """The hub, thresholds and config are checked when the callback is made."""
    with pytest.raises(TypeError, match="hub must be a TelemetryHub"):
        EsperCallback("hub")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="thresholds must be a HealthThresholds"):
        EsperCallback(hub, thresholds={"warning_rms": 1.0})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^config\.env: input was not a valid JSON value"):
        EsperCallback(hub, config={"env": object()})


def test_without_sb3_the_import_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """Importing the integration without stable-baselines3 gives one line naming the fix."""
    for name in [n for n in sys.modules if n.split(".")[0] == "stable_baselines3"]:
        monkeypatch.setitem(sys.modules, name, None)  # what an absent package looks like
    monkeypatch.setitem(sys.modules, "stable_baselines3", None)
    monkeypatch.delitem(sys.modules, "esper_telemetry.integrations.sb3")
    with pytest.raises(ImportError) as info:
        importlib.import_module("esper_telemetry.integrations.sb3")
    assert str(info.value) == (
        "esper_telemetry.integrations.sb3 needs stable_baselines3: "
        "pip install 'esper-telemetry[sb3]'"
    )


def test_diagnostics_count_each_envs_steps_since_its_reset(hub: TelemetryHub) -> None:
    """EsperCallback(diagnostics=True): every update's states carry the diagnostics, and the
    steps counted since each env's reset match the Monitor's length of the episode under
    way (for an env whose episode did not end at the rollout's last step)."""
    model = recurrent()
    callback = EsperCallback(hub, diagnostics=True)
    with capture_events(hub) as rec:
        model.learn(3 * PER_UPDATE, callback=callback)
    for event in published(rec):
        diagnostics = [m.diagnostics for m in event.payload.recurrent_health.values()]
        assert all(d is not None and d.c_growth_ratio is not None for d in diagnostics)
    env: Any = model.get_env()
    lengths = [len(m.rewards) for m in env.envs]  # the Monitor of each env
    ended = list(model._last_episode_starts if model._last_episode_starts is not None else [])
    since = callback._since
    assert since is not None
    assert not all(ended)  # an env is mid-episode: the comparison below is not empty
    assert [int(n) for n, e in zip(since, ended, strict=True) if not e] == [
        n for n, e in zip(lengths, ended, strict=True) if not e
    ]
