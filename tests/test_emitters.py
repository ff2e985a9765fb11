"""emit_ppo_update_event: building, validating and publishing the PPO-update event."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from esper_telemetry import (
    HealthThresholds,
    PPOUpdatePayload,
    TelemetryHub,
    TelemetryLevel,
    TrainingHalted,
    compute_lstm_health,
    emit_ppo_update_event,
)
from esper_telemetry.testing import capture_events

PPO = {"policy_loss": -0.01, "value_loss": 0.5, "entropy": 0.69}
I64 = 2**63 - 1
NUMBERED_KEY: dict[Any, float] = {**PPO, 3: 1.0}


@pytest.fixture
def hub() -> Iterator[TelemetryHub]:
    h = TelemetryHub("emit")
    yield h
    h.close()


def lstm_state(batch: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(input_size=3, hidden_size=6, num_layers=2)
    _, state = lstm(torch.randn(5, batch, 3))
    h, c = state
    return h, c


def test_builds_the_payload_from_metrics_health_and_env_steps(hub: TelemetryHub) -> None:
    """Known keys become fields, unknown ones go to extra, health fills the lstm_* fields."""
    state = lstm_state()
    health = compute_lstm_health(state)
    assert health is not None
    metrics = {**PPO, "approx_kl": 0.01, "grad_norm": 0.7, "fps": 1200, "return_mean": 21.5}
    with capture_events(hub) as rec:
        event = emit_ppo_update_event(
            hub, update=3, metrics=metrics, lstm_health=health, env_steps=4096
        )
    assert event is not None
    assert rec.events == [event]
    assert event.update == 3
    assert event.payload == PPOUpdatePayload(
        **PPO,
        approx_kl=0.01,
        grad_norm=0.7,
        env_steps=4096,
        extra={"fps": 1200.0, "return_mean": 21.5},
        **health.to_dict(),
        health_scope="process",
        health_ranks=1,
        primary_state="policy",
        recurrent_health={"policy": health},
    )


def test_no_lstm_leaves_every_lstm_field_none(hub: TelemetryHub) -> None:
    """Without lstm_health the 12 lstm_* fields stay None (no LSTM in use)."""
    event = emit_ppo_update_event(hub, update=0, metrics=PPO)
    assert event is not None
    lstm = {k: v for k, v in event.payload.model_dump().items() if k.startswith("lstm_")}
    assert set(lstm.values()) == {None}
    assert len(lstm) == 14  # the 12 seed fields plus the DEBUG-only detail and outliers


def test_nan_and_inf_metrics_are_kept_exactly(hub: TelemetryHub) -> None:
    """NaN and Inf statistics are data: published as they are."""
    event = emit_ppo_update_event(
        hub,
        update=1,
        metrics={**PPO, "value_loss": math.nan, "grad_norm": math.inf, "x": -math.inf},
    )
    assert event is not None
    p = event.payload
    assert isinstance(p, PPOUpdatePayload)
    assert (math.isnan(p.value_loss), p.grad_norm, dict(p.extra)) == (
        True,
        math.inf,
        {"x": -math.inf},
    )


@pytest.mark.parametrize(
    ("metrics", "message"),
    [
        ({**PPO, "fps": "fast"}, r"metrics\['fps'\] must be a real number, got str"),
        ({**PPO, "fps": None}, r"metrics\['fps'\] must be a real number, got NoneType"),
        ({**PPO, "done": True}, r"metrics\['done'\] must be a real number, got bool"),
        ({**PPO, "nested": {"a": 1}}, r"metrics\['nested'\] must be a real number, got dict"),
        ({**PPO, "big": 10**400}, r"metrics\['big'\] = 1000.* does not fit in a float"),
        ({**PPO, "entropy": torch.tensor(0.5)}, r"metrics\['entropy'\] must be a real number"),
        ({"policy_loss": 0.1, "entropy": 0.2}, "missing required key.*value_loss"),
        ({**PPO, "lstm_h_rms": 0.1}, "'lstm_h_rms' is set by emit_ppo_update_event itself"),
        (NUMBERED_KEY, "keys must be non-empty strings, got 3"),
    ],
)
def test_bad_metrics_raise_naming_the_key_and_publish_nothing(
    hub: TelemetryHub, metrics: dict[Any, Any], message: str
) -> None:
    """A bad metric raises ValueError naming its key, and nothing reaches subscribers."""
    with capture_events(hub) as rec, pytest.raises(ValueError, match=message):
        emit_ppo_update_event(hub, update=0, metrics=metrics)
    assert rec.events == []
    assert hub.stats().emitted == 0


def test_optional_known_metrics_accept_none(hub: TelemetryHub) -> None:
    """approx_kl and friends may be None (not computed this update)."""
    event = emit_ppo_update_event(hub, update=0, metrics={**PPO, "approx_kl": None})
    assert event is not None
    assert event.payload.approx_kl is None


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"update": -1}, ValueError, rf"update must be an int from 0 to {I64} \(int64\), got -1"),
        ({"update": True}, ValueError, "update must be an int from 0 to .*, got True"),
        ({"update": 1.0}, ValueError, "update must be an int from 0 to .*, got 1.0"),
        ({"update": 2**63}, ValueError, f"update must be an int from 0 to .*, got {2**63}"),
        ({"update": 10**5000}, ValueError, "update must be .*, got an int of 16610 bits"),
        ({"update": 0, "env_steps": -5}, ValueError, "env_steps must be an int from 0 to"),
        ({"update": 0, "env_steps": 2**63}, ValueError, f"env_steps must be .*got {2**63}"),
        ({"update": 0, "thresholds": "x"}, TypeError, "thresholds must be a HealthThresholds"),
        ({"update": 0, "lstm_health": (1, 2)}, TypeError, "lstm_health: expected"),
        ({"update": 0, "lstm_health": "ok"}, TypeError, "lstm_health must be what"),
    ],
)
def test_bad_arguments_raise_naming_them(
    hub: TelemetryHub, kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    """update, env_steps and lstm_health are validated before anything is published."""
    with pytest.raises(error, match=message):
        emit_ppo_update_event(hub, metrics=PPO, **kwargs)
    assert hub.stats().emitted == 0


def test_hub_must_be_a_telemetry_hub() -> None:
    """Passing something else as hub raises TypeError naming hub."""
    with pytest.raises(TypeError, match="hub must be a TelemetryHub, got NoneType"):
        emit_ppo_update_event(None, update=0, metrics=PPO)  # type: ignore[arg-type]


def test_level_off_builds_and_publishes_nothing() -> None:
    """At OFF the emitter returns None and no event is emitted, even with bad metrics."""
    with TelemetryHub("off", level=TelemetryLevel.OFF) as hub, capture_events(hub) as rec:
        assert emit_ppo_update_event(hub, update=0, metrics={"junk": "x"}) is None
        assert rec.events == []


def test_debug_level_carries_detail_and_outlier_envs() -> None:
    """At DEBUG the payload carries per-layer/per-env detail and the outlier env indices."""
    h, c = lstm_state(batch=4)
    c = c.clone()
    c[:, 2, :] = 50.0  # env 2 is far above warning_rms
    health = compute_lstm_health((h, c), detail=True)
    assert health is not None
    with TelemetryHub("debug", level="debug") as hub:
        event = emit_ppo_update_event(hub, update=0, metrics=PPO, lstm_health=health)
    assert event is not None
    p = event.payload
    assert isinstance(p, PPOUpdatePayload)
    assert p.lstm_detail == health[1]
    assert p.lstm_outlier_envs == (2,)
    assert len(p.lstm_detail.h_layer_rms) == 2
    assert p.lstm_detail.c_env_rms is not None
    assert len(p.lstm_detail.c_env_rms) == 4


def test_normal_level_drops_the_detail_of_a_healthy_state() -> None:
    """Below DEBUG a healthy state's detail is not published even when it was computed."""
    health = compute_lstm_health(lstm_state(), detail=True)
    with TelemetryHub("normal") as hub:
        event = emit_ppo_update_event(hub, update=0, metrics=PPO, lstm_health=health)
    assert event is not None
    assert (event.payload.lstm_detail, event.payload.lstm_outlier_envs) == (None, None)
    assert event.payload.lstm_h_rms == health[0].h_rms


@pytest.mark.parametrize(
    ("thresholds", "published"),
    [(None, True), (HealthThresholds(warning_rms=100.0, critical_rms=1000.0), False)],
    ids=["critical-by-default", "healthy-under-looser-thresholds"],
)
def test_a_critical_state_carries_its_detail_at_normal_level(
    thresholds: HealthThresholds | None, published: bool
) -> None:
    """At NORMAL, a state the thresholds call CRITICAL carries its detail and outlier envs."""
    h, c = lstm_state(batch=4)
    c = c.clone()
    c[:, 1, :] = 50.0  # env 1 explodes: critical under the default rule (env RMS > 10)
    health = compute_lstm_health((h, c), detail=True)
    assert health is not None
    with TelemetryHub("spike") as hub:
        event = emit_ppo_update_event(
            hub, update=0, metrics=PPO, lstm_health=health, thresholds=thresholds
        )
    assert event is not None
    expected = (health[1], (1,)) if published else (None, None)
    assert (event.payload.lstm_detail, event.payload.lstm_outlier_envs) == expected


def test_a_requested_halt_stops_the_next_emit_and_publishes_nothing(hub: TelemetryHub) -> None:
    """After request_halt, emit_ppo_update_event raises TrainingHalted and emits nothing."""
    with capture_events(hub) as rec:
        first = emit_ppo_update_event(hub, update=0, metrics=PPO)
        hub.request_halt("lstm_nan at update 0", update=0)
        with pytest.raises(TrainingHalted, match="lstm_nan at update 0"):
            emit_ppo_update_event(hub, update=1, metrics=PPO)
    assert rec.events == [first]


@pytest.mark.parametrize("level", list(TelemetryLevel))
@pytest.mark.parametrize("with_health", [False, True], ids=["no-lstm", "lstm"])
def test_bad_thresholds_are_a_type_error_at_every_level(
    level: TelemetryLevel, with_health: bool
) -> None:
    """thresholds="x" raises TypeError naming thresholds at OFF, MINIMAL, NORMAL and DEBUG,
    with or without LSTM health (it used to be an AttributeError at DEBUG only)."""
    health = compute_lstm_health(lstm_state(), detail=True) if with_health else None
    with (
        TelemetryHub("levels", level=level) as hub,
        capture_events(hub) as rec,
        pytest.raises(TypeError, match="thresholds") as info,
    ):
        emit_ppo_update_event(
            hub,
            update=0,
            metrics=PPO,
            lstm_health=health,
            thresholds="x",  # type: ignore[arg-type]
        )
    assert str(info.value) == "thresholds must be a HealthThresholds or None, got str"
    assert rec.events == []


@pytest.mark.parametrize("level", list(TelemetryLevel))
def test_update_and_env_steps_are_checked_at_every_level(level: TelemetryLevel) -> None:
    """An update or env_steps beyond int64 is refused at OFF too, not only once detail is on."""
    messages = []
    with TelemetryHub("levels", level=level) as hub:
        for kwargs in ({"update": 2**63}, {"update": 0, "env_steps": -1}):
            with pytest.raises(ValueError, match="must be an int from 0 to") as info:
                emit_ppo_update_event(hub, metrics=PPO, **kwargs)  # type: ignore[arg-type]
            messages.append(str(info.value))
        emitted = hub.stats().emitted
    assert messages == [
        f"update must be an int from 0 to {I64} (int64), got {2**63}",
        f"env_steps must be an int from 0 to {I64} (int64) or None, got -1",
    ]
    assert emitted == 0


@pytest.mark.parametrize("value", [-1.0, -math.inf, -1])
def test_a_negative_grad_norm_is_one_value_error_naming_it(hub: TelemetryHub, value: float) -> None:
    """grad_norm is a norm: a negative one is refused in one line naming the key."""
    with capture_events(hub) as rec, pytest.raises(ValueError, match="grad_norm") as info:
        emit_ppo_update_event(hub, update=0, metrics={**PPO, "grad_norm": value})
    assert str(info.value) == (
        "metrics['grad_norm']: must be >= 0 (NaN and +Infinity are kept as data), "
        f"got {float(value)!r}"
    )
    assert rec.events == []
