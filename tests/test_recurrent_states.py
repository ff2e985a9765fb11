"""Several named recurrent states per update, GRU states, and declared episode returns."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from pydantic import ValidationError

from esper_telemetry import (
    AnomalyDetector,
    AnomalyType,
    HealthStatus,
    LSTMHealthMetrics,
    PPOUpdatePayload,
    TelemetryHub,
    TelemetryLevel,
    compute_lstm_health,
    compute_recurrent_health,
    emit_ppo_update_event,
    health_status,
    parse_event,
)
from esper_telemetry.contracts import AnomalyDetected, LSTMHealthDetail, PPOUpdateCompleted
from esper_telemetry.testing import capture_events

PPO = {"policy_loss": -0.01, "value_loss": 0.5, "entropy": 0.69}


@pytest.fixture
def hub() -> Iterator[TelemetryHub]:
    h = TelemetryHub("states")
    yield h
    h.close()


def gru_state(scale: float = 1.0, layers: int = 2) -> torch.Tensor:
    torch.manual_seed(0)
    _, h = torch.nn.GRU(3, 5, num_layers=layers)(torch.randn(4, 6, 3))
    out: torch.Tensor = h.detach() * scale
    return out


def lstm_state() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    _, (h, c) = torch.nn.LSTM(3, 5)(torch.randn(4, 6, 3))
    return h.detach(), c.detach()


# --------------------------------------------------------------------------- GRU states


def test_a_gru_state_has_the_h_figures_of_the_same_tensor_as_an_lstm_h() -> None:
    h = gru_state()
    gru = compute_lstm_health(h)
    as_lstm = compute_lstm_health((h, torch.ones_like(h)))
    assert gru is not None
    assert as_lstm is not None
    h_figures = [f for f in LSTMHealthMetrics.FIGURES if f.startswith("h_")]
    assert [getattr(gru, f) for f in h_figures] == [getattr(as_lstm, f) for f in h_figures]
    assert [getattr(gru, f) for f in LSTMHealthMetrics.CELL_FIGURES] == [None] * 5
    assert not gru.has_cell
    assert gru.to_dict()["lstm_c_rms"] is None


def test_a_gru_state_with_detail_has_no_c_detail() -> None:
    metrics, info = compute_lstm_health(gru_state(), detail=True)
    _, as_lstm = compute_lstm_health((gru_state(), gru_state()), detail=True)
    assert (info.c_layer_rms, info.c_env_rms) == (None, None)
    assert (info.h_layer_rms, info.h_env_rms) == (as_lstm.h_layer_rms, as_lstm.h_env_rms)
    assert not metrics.has_cell


def test_a_2d_gru_cell_state_is_one_layer() -> None:
    h = torch.nn.GRUCell(3, 4)(torch.randn(5, 3))
    metrics, info = compute_lstm_health(h, detail=True)
    assert len(info.h_layer_rms) == 1
    assert len(info.h_env_rms) == 5
    assert metrics.h_rms == pytest.approx(h.pow(2).mean().sqrt().item())


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nan_and_inf_in_a_gru_state_are_flagged_on_h(bad: float) -> None:
    h = gru_state().detach().clone()
    h[1, 3, 2] = bad
    metrics, info = compute_lstm_health(h, detail=True)
    assert (metrics.has_nan, metrics.has_inf) == (math.isnan(bad), math.isinf(bad))
    assert health_status(metrics) is HealthStatus.CRITICAL
    assert info.outlier_envs() == (3,)


def test_a_gru_state_is_judged_on_h_alone() -> None:
    big = compute_lstm_health(gru_state(scale=1e3))
    assert big is not None
    assert health_status(big) is HealthStatus.CRITICAL
    assert big.status_of("c") is None
    report = AnomalyDetector().check_lstm_health(big, state="value")
    assert [(a.type, a.state) for a in report.anomalies] == [
        (AnomalyType.LSTM_H_EXPLOSION, "value")
    ]
    tiny = compute_lstm_health(gru_state(scale=1e-9))
    assert tiny is not None
    assert AnomalyDetector().check_lstm_health(tiny).anomaly_types == [
        AnomalyType.LSTM_H_VANISHING
    ]  # and no lstm_c_vanishing for the cell that is not there


def test_huge_and_tiny_gru_states_keep_exact_figures() -> None:
    h = torch.full((1, 2, 3), 3e20)  # squares overflow float32: the rescaled path
    metrics = compute_lstm_health(h)
    assert metrics is not None
    assert metrics.h_rms == pytest.approx(3e20, rel=1e-6)
    assert not metrics.has_inf
    h = torch.tensor([[[1e-25, 2e-25, 0.0]]])
    metrics = compute_lstm_health(h)
    assert metrics is not None
    assert metrics.h_l2_total == pytest.approx(math.sqrt(5) * 1e-25, rel=1e-6)


def test_the_c_figures_come_all_together_or_not_at_all() -> None:
    values: dict[str, Any] = dict.fromkeys(LSTMHealthMetrics.FIGURES, 1.0)
    values.update(has_nan=False, has_inf=False, c_max=None)
    with pytest.raises(ValidationError, match="the c figures come all together"):
        LSTMHealthMetrics.model_validate(values)


# --------------------------------------------------------------------------- several states


def test_compute_recurrent_health_equals_one_call_per_state() -> None:
    states: dict[str, Any] = {"policy": lstm_state(), "value": gru_state()}
    together = compute_recurrent_health(states, detail=True)
    assert together == {name: compute_lstm_health(s, detail=True) for name, s in states.items()}


def test_compute_recurrent_health_names_the_state_it_refuses() -> None:
    with pytest.raises(ValueError, match=r"states\['value'\]: hidden: h must be a floating"):
        compute_recurrent_health(
            {"policy": lstm_state(), "value": torch.zeros(2, 3, dtype=torch.int64)}
        )
    with pytest.raises(ValueError, match=r"states\['bad name'\]: a state name must be"):
        compute_recurrent_health({"bad name": gru_state()})
    with pytest.raises(TypeError, match="states must be a mapping of name to state"):
        compute_recurrent_health([gru_state()])  # type: ignore[call-overload]


def test_the_emitter_publishes_every_state_and_repeats_the_primary(hub: TelemetryHub) -> None:
    health = compute_recurrent_health({"value": gru_state(), "policy": lstm_state()})
    with capture_events(hub) as rec:
        emit_ppo_update_event(hub, update=0, metrics=PPO, recurrent_health=health)
    (event,) = rec.events
    assert isinstance(event, PPOUpdateCompleted)
    p = event.payload
    assert p.primary_state == "policy"  # "policy" is the primary when present
    assert dict(p.recurrent_health) == health
    assert p.health() == health["policy"]
    assert list(p.named_health()) == ["policy", "value"]  # primary first
    # Back from JSON, exactly.
    assert parse_event(event.model_dump_json()) == event


def test_without_policy_the_first_state_is_primary_unless_named(hub: TelemetryHub) -> None:
    health = compute_recurrent_health({"actor": lstm_state(), "critic": gru_state()})
    first = emit_ppo_update_event(hub, update=0, metrics=PPO, recurrent_health=health)
    named = emit_ppo_update_event(
        hub, update=1, metrics=PPO, recurrent_health=health, primary="critic"
    )
    assert first is not None
    assert named is not None
    assert first.payload.primary_state == "actor"
    assert named.payload.primary_state == "critic"
    assert named.payload.lstm_c_rms is None  # a GRU primary: the flat c fields are None
    assert named.payload.lstm_h_rms == health["critic"].h_rms
    with pytest.raises(ValueError, match=r"primary: 'policy' is not one of the states given"):
        emit_ppo_update_event(hub, update=2, metrics=PPO, recurrent_health=health, primary="policy")


def test_a_critical_secondary_state_carries_its_detail_and_outliers(hub: TelemetryHub) -> None:
    bad = gru_state().detach().clone()
    bad[0, 4, 0] = math.nan
    health = compute_recurrent_health({"policy": lstm_state(), "value": bad}, detail=True)
    from esper_telemetry.backends import AnomalyEscalator

    hub.subscribe(AnomalyEscalator(), mode="inline")
    with capture_events(hub) as rec:
        emit_ppo_update_event(hub, update=0, metrics=PPO, recurrent_health=health)
    update = rec.events[0]
    assert isinstance(update, PPOUpdateCompleted)
    p = update.payload
    assert p.lstm_detail is None  # the healthy primary at NORMAL: no detail
    assert list(p.recurrent_detail) == ["value"]
    assert p.detail_of("value") == health["value"][1]
    anomalies = [e.payload for e in rec.events if isinstance(e, AnomalyDetected)]
    assert [(a.anomaly.type, a.anomaly.state, a.outlier_envs) for a in anomalies] == [
        (AnomalyType.LSTM_NAN, "value", (4,))
    ]
    # At DEBUG (the escalator raised the level) every state's detail is published.
    assert hub.level is TelemetryLevel.DEBUG
    event = emit_ppo_update_event(hub, update=1, metrics=PPO, recurrent_health=health)
    assert event is not None
    assert event.payload.lstm_detail is not None
    assert list(event.payload.recurrent_detail) == ["value"]


@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("has space", r"recurrent_health: a state name must be 1-64 characters"),
        ("layer0", r"a state may not be named 'layer0'"),
        ("api_key", r"recurrent_health"),
    ],
)
def test_bad_state_names_are_refused_naming_the_argument(
    hub: TelemetryHub, name: str, match: str
) -> None:
    health = compute_lstm_health(gru_state())
    assert health is not None
    with pytest.raises(ValueError, match=match):
        emit_ppo_update_event(hub, update=0, metrics=PPO, recurrent_health={name: health})
    assert hub.stats().emitted == 0


def test_a_raw_state_in_recurrent_health_says_to_measure_it(hub: TelemetryHub) -> None:
    with pytest.raises(TypeError, match=r"recurrent_health\['value'\] got a raw hidden state"):
        emit_ppo_update_event(hub, update=0, metrics=PPO, recurrent_health={"value": gru_state()})  # type: ignore[dict-item]


def test_a_payload_refuses_flat_fields_that_disagree_with_the_primary() -> None:
    health = compute_lstm_health(lstm_state())
    assert health is not None
    ok = PPOUpdatePayload(**PPO, recurrent_health={"policy": health}, primary_state="policy")
    assert ok.lstm_h_rms == health.h_rms
    flat = {**health.to_dict(), "lstm_h_rms": health.h_rms * 2}
    with pytest.raises(ValidationError, match="must repeat the figures of the primary state"):
        PPOUpdatePayload(**PPO, **flat, recurrent_health={"policy": health}, primary_state="policy")
    with pytest.raises(ValidationError, match="primary_state must name one of"):
        PPOUpdatePayload(**PPO, recurrent_health={"policy": health}, primary_state="value")
    with pytest.raises(ValidationError, match="primary_state, recurrent_detail and replay need"):
        PPOUpdatePayload(**PPO, primary_state="policy")


def test_a_nan_primary_repeats_as_nan() -> None:
    h, c = lstm_state()
    c = c.detach().clone()
    c[0, 0, 0] = math.nan
    health = compute_lstm_health((h, c))
    assert health is not None
    p = PPOUpdatePayload(**PPO, recurrent_health={"policy": health}, primary_state="policy")
    assert p.lstm_c_rms is not None
    assert math.isnan(p.lstm_c_rms)
    text = p.model_dump_json()
    assert PPOUpdatePayload.model_validate_json(text).model_dump_json() == text


def test_an_old_line_reads_its_flat_state_as_policy() -> None:
    health = compute_lstm_health(lstm_state())
    assert health is not None
    old = PPOUpdatePayload(**PPO, **health.to_dict())  # as written before names existed
    assert old.recurrent_health == {}
    assert old.primary_name() == "policy"
    assert dict(old.named_health()) == {"policy": health}
    assert PPOUpdatePayload(**PPO).named_health() == {}


def test_a_detail_without_a_cell_has_neither_c_tuple() -> None:
    assert LSTMHealthDetail(h_layer_rms=(1.0,), c_layer_rms=None, h_env_rms=(1.0,), c_env_rms=None)
    with pytest.raises(ValidationError, match="c_layer_rms and c_env_rms come together"):
        LSTMHealthDetail(h_layer_rms=(1.0,), c_layer_rms=(1.0,), h_env_rms=(1.0,), c_env_rms=None)


# --------------------------------------------------------------------------- episode returns


def test_episode_returns_have_their_declared_fields(hub: TelemetryHub) -> None:
    event = emit_ppo_update_event(
        hub, update=0, metrics=PPO, episode_return_mean=21.5, episode_return_window=100
    )
    assert event is not None
    assert (event.payload.episode_return_mean, event.payload.episode_return_window) == (21.5, 100)
    assert "episode_return_mean" not in event.payload.extra
    early = emit_ppo_update_event(
        hub, update=1, metrics=PPO, episode_return_mean=math.nan, episode_return_window=20
    )
    assert early is not None
    assert early.payload.episode_return_mean is not None
    assert math.isnan(early.payload.episode_return_mean)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"episode_return_mean": 1.0}, "episode_return_mean needs episode_return_window"),
        ({"episode_return_mean": 1.0, "episode_return_window": 0}, "episode_return_window"),
        (
            {"episode_return_mean": "high", "episode_return_window": 5},
            r"^episode_return_mean must be a real number, got str 'high'$",
        ),
    ],
)
def test_bad_episode_returns_are_one_line_naming_the_argument(
    hub: TelemetryHub, kwargs: dict[str, Any], match: str
) -> None:
    with pytest.raises(ValueError, match=match) as info:
        emit_ppo_update_event(hub, update=0, metrics=PPO, **kwargs)
    assert "\n" not in str(info.value)
    assert hub.stats().emitted == 0


# --------------------------------------------------------------------------- across ranks


def test_a_gru_state_across_a_process_group_has_no_c_and_the_local_h(tmp_path: Any) -> None:
    """The group path (one gloo rank, in this process) drops c just as the local one does."""
    import torch.distributed as dist

    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1
    )
    try:
        h = gru_state()
        metrics, info = compute_lstm_health(h, detail=True, group=dist.group.WORLD)
        both = compute_recurrent_health(
            {"policy": lstm_state(), "value": h}, group=dist.group.WORLD
        )
    finally:
        dist.destroy_process_group()
    local = compute_lstm_health(h)
    assert (metrics.scope, metrics.ranks, metrics.has_cell) == ("all_ranks", 1, False)
    for name in ("h_rms", "h_env_rms_max", "h_max"):
        assert getattr(metrics, name) == pytest.approx(getattr(local, name), rel=1e-6)
    assert (info.c_layer_rms, info.c_env_rms) == (None, None)
    assert info.worst_envs is not None
    assert {e.c_rms for e in info.worst_envs} == {None}
    assert both["policy"].has_cell
    assert not both["value"].has_cell
