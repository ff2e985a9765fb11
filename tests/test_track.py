"""track(): forward hooks on the recurrent layers of real torch policies."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from esper_telemetry import (
    AnomalyDetected,
    AnomalyType,
    PPOUpdateCompleted,
    TelemetryHub,
    TelemetryLevel,
    Tracker,
    compute_lstm_health,
    emit_ppo_update_event,
    track,
)
from esper_telemetry.backends import AnomalyEscalator
from esper_telemetry.testing import capture_events

PPO = {"policy_loss": -0.01, "value_loss": 0.5, "entropy": 0.69}


class ActorCritic(nn.Module):
    """A recurrent actor-critic as sb3-contrib builds one: an LSTM each for actor and critic."""

    def __init__(self, obs: int = 4, hidden: int = 16, proj: int = 0) -> None:
        super().__init__()
        self.actor_lstm = nn.LSTM(obs, hidden, num_layers=2, proj_size=proj)
        self.critic_lstm = nn.LSTM(obs, hidden)
        self.pi = nn.Linear(proj or hidden, 2)
        self.vf = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a, _ = self.actor_lstm(x)
        v, _ = self.critic_lstm(x)
        return self.pi(a), self.vf(v)


class GRUPolicy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(4, 8), nn.Tanh())
        self.gru = nn.GRU(8, 12, num_layers=2)
        self.head = nn.Linear(12, 2)

    def forward(self, x: torch.Tensor, h: torch.Tensor | None = None) -> Any:
        out, h = self.gru(self.encoder(x), h)
        return self.head(out), h


@pytest.fixture
def hub() -> Iterator[TelemetryHub]:
    h = TelemetryHub("track")
    yield h
    h.close()


def same(a: float | None, b: float | None) -> bool:
    return a == b or (a is not None and b is not None and math.isnan(a) and math.isnan(b))


def test_two_lstms_become_two_named_states_with_their_own_figures(hub: TelemetryHub) -> None:
    torch.manual_seed(0)
    policy = ActorCritic()
    x = torch.randn(7, 5, 4)
    with track(policy, names={"actor_lstm": "policy", "critic_lstm": "value"}) as tracker:
        policy(x)
        with capture_events(hub) as rec:
            emit_ppo_update_event(hub, update=0, metrics=PPO, tracker=tracker)
    (event,) = rec.events
    assert isinstance(event, PPOUpdateCompleted)
    p = event.payload
    assert (p.primary_state, list(p.recurrent_health)) == ("policy", ["policy", "value"])
    # Each state's figures are exactly those of the layer's own output state.
    _, actor_state = policy.actor_lstm(x)
    _, critic_state = policy.critic_lstm(x)
    assert p.recurrent_health["policy"] == compute_lstm_health(actor_state)
    assert p.recurrent_health["value"] == compute_lstm_health(critic_state)
    assert p.recurrent_health["policy"] != p.recurrent_health["value"]
    assert p.health() == p.recurrent_health["policy"]  # the flat fields repeat the primary


def test_default_names_are_module_paths_and_the_first_is_primary(hub: TelemetryHub) -> None:
    policy = ActorCritic()
    with track(policy) as tracker:
        assert tracker.names == ("actor_lstm", "critic_lstm")
        policy(torch.randn(3, 2, 4))
        event = emit_ppo_update_event(hub, update=0, metrics=PPO, tracker=tracker)
    assert event is not None
    assert event.payload.primary_state == "actor_lstm"
    event = emit_ppo_update_event(
        hub, update=1, metrics=PPO, tracker=tracker, primary="critic_lstm"
    )
    assert event is not None
    assert event.payload.health() == event.payload.recurrent_health["critic_lstm"]


def test_a_gru_policy_has_h_figures_and_no_c(hub: TelemetryHub) -> None:
    torch.manual_seed(1)
    policy = GRUPolicy()
    with track(policy) as tracker:
        _, h = policy(torch.randn(6, 3, 4))
        event = emit_ppo_update_event(hub, update=0, metrics=PPO, tracker=tracker)
    assert event is not None
    m = event.payload.recurrent_health["gru"]
    assert m == compute_lstm_health(h)
    assert not m.has_cell
    assert [getattr(m, f) for f in m.CELL_FIGURES] == [None] * 5
    assert m.h_rms > 0
    assert event.payload.lstm_c_rms is None
    assert event.payload.lstm_h_rms == m.h_rms


def test_nan_in_a_gru_state_is_an_anomaly_that_names_the_state(hub: TelemetryHub) -> None:
    policy = GRUPolicy()
    hub.subscribe(AnomalyEscalator(), mode="inline")
    h0 = torch.zeros(2, 3, 12)
    h0[1, 2, 0] = math.nan
    with track(policy, names=["value"]) as tracker, capture_events(hub) as rec:
        policy(torch.randn(4, 3, 4), h0)
        emit_ppo_update_event(hub, update=0, metrics=PPO, tracker=tracker)
    anomalies = [e.payload.anomaly for e in rec.events if isinstance(e, AnomalyDetected)]
    assert [(a.type, a.state) for a in anomalies] == [(AnomalyType.LSTM_NAN, "value")]
    assert anomalies[0].message.startswith("value: ")
    update = rec.events[0]
    assert isinstance(update, PPOUpdateCompleted)
    assert update.payload.lstm_has_nan is True
    # The critical update carries its detail; env 2 holds the NaN.
    assert update.payload.lstm_outlier_envs == (2,)
    assert hub.level is TelemetryLevel.DEBUG


@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")
def test_proj_size_tracks_the_projected_h() -> None:
    torch.manual_seed(2)
    policy = ActorCritic(hidden=16, proj=5)
    x = torch.randn(3, 4, 4)
    with track(policy) as tracker:
        policy(x)
        health = tracker.health()
    _, (h, c) = policy.actor_lstm(x)
    assert (h.shape, c.shape) == ((2, 4, 5), (2, 4, 16))
    assert health["actor_lstm"] == compute_lstm_health((h, c))


def test_a_packed_sequence_gives_the_state_at_each_sequence_end() -> None:
    torch.manual_seed(3)
    lstm = nn.LSTM(4, 6)
    x = torch.randn(5, 3, 4)
    packed = pack_padded_sequence(x, lengths=[5, 3, 1], enforce_sorted=True)
    with track(lstm) as tracker:
        _, (h, c) = lstm(packed)
        held = tracker.states()["lstm"]
    assert isinstance(held, tuple)
    assert torch.equal(held[0], h)
    assert torch.equal(held[1], c)
    # The state of the length-1 sequence is its state after its one real step.
    _, (h1, _) = lstm(x[:1, 2:3])
    torch.testing.assert_close(held[0][:, 2:3], h1)


def test_a_cell_run_every_step_reports_its_latest_call() -> None:
    torch.manual_seed(4)
    cell = nn.LSTMCell(4, 6)
    policy = nn.ModuleDict({"cell": cell})
    xs = torch.randn(10, 3, 4)
    with track(policy) as tracker:
        h = c = torch.zeros(3, 6)
        for x in xs:
            h, c = cell(x, (h, c))
            held = tracker.states()["cell"]
            assert isinstance(held, tuple)
            assert held[0].data_ptr() == h.data_ptr()  # the output itself: no copy
    assert compute_lstm_health(held) == compute_lstm_health((h, c))


def test_a_layer_called_twice_per_step_keeps_the_second_call() -> None:
    gru = nn.GRU(4, 6)
    with track(gru) as tracker:
        gru(torch.randn(2, 3, 4))
        _, h_second = gru(torch.randn(2, 3, 4) * 5)
        held = tracker.states()["gru"]
    assert isinstance(held, torch.Tensor)
    assert torch.equal(held, h_second)


def test_the_held_state_is_detached_and_shares_the_output_storage() -> None:
    lstm = nn.LSTM(4, 6)
    with track(lstm) as tracker:
        _, (h, c) = lstm(torch.randn(2, 3, 4))
        held = tracker.states()["lstm"]
    assert isinstance(held, tuple)
    assert h.requires_grad
    assert not held[0].requires_grad
    assert not held[1].requires_grad
    assert (held[0].data_ptr(), held[1].data_ptr()) == (h.data_ptr(), c.data_ptr())


def test_unbatched_input_reads_as_a_batch_of_one() -> None:
    lstm = nn.LSTM(4, 6, num_layers=3)
    with track(lstm) as tracker:
        _, (h, _) = lstm(torch.randn(5, 4))  # unbatched: h is [layers, hidden]
        assert h.shape == (3, 6)
        health = tracker.health(detail=True)["lstm"]
    _metrics, info = health
    assert len(info.h_layer_rms) == 3
    assert len(info.h_env_rms) == 1


def test_every_state_crosses_to_the_host_in_one_transfer(monkeypatch: pytest.MonkeyPatch) -> None:
    policy = ActorCritic()
    gru = GRUPolicy()
    both = nn.ModuleDict({"ac": policy, "g": gru})
    with track(both) as tracker:
        policy(torch.randn(3, 4, 4))
        gru(torch.randn(3, 4, 4))
        calls: list[int] = []
        real = torch.Tensor.tolist

        def counted(self: torch.Tensor) -> Any:
            calls.append(self.numel())
            return real(self)

        monkeypatch.setattr(torch.Tensor, "tolist", counted)
        health = tracker.health(detail=True)
    assert sorted(health) == ["ac.actor_lstm", "ac.critic_lstm", "g.gru"]
    assert len(calls) == 1


def test_remove_and_the_with_block_take_every_hook_off() -> None:
    policy = ActorCritic()
    tracker = track(policy)
    assert len(policy.actor_lstm._forward_hooks) == 1
    tracker.remove()
    tracker.remove()  # idempotent
    assert tracker.removed
    assert not policy.actor_lstm._forward_hooks
    assert not policy.critic_lstm._forward_hooks
    policy(torch.randn(2, 1, 4))
    assert tracker.states() == {}
    with track(policy) as inner:
        assert len(policy.critic_lstm._forward_hooks) == 1
    assert inner.removed
    assert not policy.critic_lstm._forward_hooks
    assert "removed" in repr(inner)


def test_a_layer_that_has_not_run_is_left_out(hub: TelemetryHub) -> None:
    policy = ActorCritic()
    with track(policy) as tracker:
        policy.critic_lstm(torch.randn(2, 2, 4))
        event = emit_ppo_update_event(hub, update=0, metrics=PPO, tracker=tracker)
    assert event is not None
    assert list(event.payload.recurrent_health) == ["critic_lstm"]


def test_nothing_run_yet_means_no_health(hub: TelemetryHub) -> None:
    with track(nn.GRU(2, 2)) as tracker:
        event = emit_ppo_update_event(hub, update=0, metrics=PPO, tracker=tracker)
    assert event is not None
    assert event.payload.health() is None
    assert not event.payload.recurrent_health


def test_a_module_without_a_recurrent_layer_is_refused() -> None:
    with pytest.raises(ValueError, match=r"module: Sequential holds no recurrent layer") as info:
        track(nn.Sequential(nn.Linear(2, 2), nn.ReLU()))
    assert "nn.LSTM" in str(info.value)
    assert "nn.GRUCell" in str(info.value)
    with pytest.raises(TypeError, match=r"module must be a torch\.nn\.Module, got tuple"):
        track((nn.LSTM(2, 2),))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("names", "match"),
    [
        ({"actor": "policy"}, r"names: 'actor' is not a recurrent layer .*'actor_lstm'"),
        (["policy"], r"names: 1 names for 2 recurrent layers"),
        (["a", "a"], r"names: each name must be used once"),
        ({"actor_lstm": "x", "critic_lstm": "x"}, r"names: each name must be used once"),
        (["ok", "bad name"], r"names: a state name must be 1-64 characters"),
        (["layer0", "ok"], r"names: a state may not be named 'layer0'"),
    ],
)
def test_bad_names_say_what_to_pass(names: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        track(ActorCritic(), names=names)


def test_the_root_module_itself_may_be_the_layer() -> None:
    tracker = track(nn.GRUCell(3, 4))
    assert isinstance(tracker, Tracker)
    assert tracker.names == ("grucell",)
    tracker.remove()


def test_tracker_and_lstm_health_together_are_refused(hub: TelemetryHub) -> None:
    lstm = nn.LSTM(2, 3)
    with track(lstm) as tracker:
        _, state = lstm(torch.randn(1, 1, 2))
        with pytest.raises(
            TypeError, match="pass one of lstm_health, recurrent_health and tracker"
        ):
            emit_ppo_update_event(
                hub, update=0, metrics=PPO, tracker=tracker, lstm_health=compute_lstm_health(state)
            )
        with pytest.raises(TypeError, match=r"tracker must be what esper_telemetry\.track"):
            emit_ppo_update_event(hub, update=0, metrics=PPO, tracker=lstm)  # type: ignore[arg-type]


# -- diagnostics and the steps since each env's reset (issue 15) ---------------------------------


def rollout_with_resets(lstm: nn.LSTM, starts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Step an LSTM one step at a time, zeroing an env's state where ``starts[t]`` says,
    as a CleanRL-style rollout does; returns the final (h, c)."""
    torch.manual_seed(0)
    steps, envs = starts.shape
    h = torch.zeros(1, envs, lstm.hidden_size)
    c = torch.zeros_like(h)
    for t in range(steps):
        keep = (~starts[t]).view(1, -1, 1).float()
        _, (h, c) = lstm(torch.randn(1, envs, lstm.input_size) * 3, (h * keep, c * keep))
    return h, c


def test_count_steps_gives_the_steps_since_each_reset_and_the_c_growth_ratio() -> None:
    """count_steps() at every step counts, per env, the steps since its state was zeroed;
    with diagnostics the growth ratio is max over envs of max|c| / (1 + those steps)."""
    lstm = nn.LSTM(3, 6)
    starts = torch.zeros(7, 3, dtype=torch.bool)
    starts[0] = True  # every env starts an episode at the first step
    starts[4, 1] = True  # env 1 starts another at step 4
    with track(lstm, names=["policy"], diagnostics=True) as tracker:
        for t in range(starts.shape[0]):
            tracker.count_steps(starts[t])
        _, c = rollout_with_resets(lstm, starts)
        health = tracker.health()
    assert tracker.steps_since_reset == (7, 3, 7)
    diagnostics = health["policy"].diagnostics
    assert diagnostics is not None
    per_env = c.detach().abs().amax(dim=(0, 2)) / torch.tensor([8.0, 4.0, 8.0])
    assert diagnostics.c_growth_ratio == pytest.approx(float(per_env.max()), rel=1e-6)


def test_the_emitter_measures_a_trackers_diagnostics_when_asked_or_at_debug() -> None:
    """track(diagnostics=False): the event's states carry no diagnostics at NORMAL, and do
    at DEBUG; track(diagnostics=True): at every level."""
    lstm = nn.LSTM(3, 6)
    seen: dict[tuple[bool, str], object] = {}
    for asked in (False, True):
        for level in ("normal", "debug"):
            with (
                TelemetryHub("diag", level=level) as hub,
                track(lstm, names=["policy"], diagnostics=asked) as tracker,
            ):
                lstm(torch.randn(4, 2, 3))
                event = emit_ppo_update_event(hub, update=0, metrics=PPO, tracker=tracker)
            assert event is not None
            seen[asked, level] = event.payload.recurrent_health["policy"].diagnostics
    assert seen[False, "normal"] is None
    assert all(seen[k] is not None for k in ((False, "debug"), (True, "normal"), (True, "debug")))


def test_count_steps_refuses_what_is_not_one_flag_per_env() -> None:
    with track(nn.LSTM(3, 6)) as tracker:
        with pytest.raises(ValueError, match="episode_starts must be one bool per env"):
            tracker.count_steps("yes")
        tracker.count_steps([True, False])
        with pytest.raises(ValueError, match="3 flags, but earlier steps had 2"):
            tracker.count_steps([True, False, True])
    with pytest.raises(TypeError, match="diagnostics must be True or False"):
        track(nn.LSTM(3, 6), diagnostics="yes")  # type: ignore[arg-type]
