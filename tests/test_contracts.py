"""Tests of the contracts: strict-JSON round trips, payload typing, validation, levels."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from esper_telemetry.contracts import (
    PAYLOAD_MODELS,
    AnomalyDetectedPayload,
    AnomalyType,
    EventType,
    HealthThresholds,
    HubStats,
    LSTMHealthDetail,
    LSTMHealthMetrics,
    PPOUpdatePayload,
    RunFinishedPayload,
    RunStartedPayload,
    Severity,
    SubscriberStats,
    TelemetryEvent,
    TelemetryLevel,
    TelemetryLevelChangedPayload,
)

NAN, INF = math.nan, math.inf

LSTM_KEYS = (
    "lstm_h_l2_total",
    "lstm_c_l2_total",
    "lstm_h_rms",
    "lstm_c_rms",
    "lstm_h_env_rms_mean",
    "lstm_h_env_rms_max",
    "lstm_c_env_rms_mean",
    "lstm_c_env_rms_max",
    "lstm_h_max",
    "lstm_c_max",
    "lstm_has_nan",
    "lstm_has_inf",
)

#: Floats that JSON tends to mangle: non-finite, signed zero, extremes, short reprs.
AWKWARD = {
    "nan": NAN,
    "inf": INF,
    "ninf": -INF,
    "neg_zero": -0.0,
    "tiny": 5e-324,
    "huge": 1.7976931348623157e308,
    "tenth": 0.1,
    "third": 1 / 3,
}


def _subscriber(name: str, p50: float, p99: float, worst: float) -> SubscriberStats:
    return SubscriberStats(
        name=name,
        mode="thread",
        when_full="block",
        delivered=10,
        failed=1,
        dropped=0,
        queue_depth=0,
        queue_size=64,
        latency_p50_ms=p50,
        latency_p99_ms=p99,
        latency_max_ms=worst,
        last_error="RuntimeError('boom')",
    )


def sample_payloads() -> dict[EventType, BaseModel]:
    """One payload per event type, with NaN and ±Inf in every float field that takes them."""
    return {
        EventType.RUN_STARTED: RunStartedPayload(
            config={"lr": 3e-4, "gamma": 0.99, "envs": 8, "net": {"lstm": True, "sizes": [64]}},
            description="cartpole ∞",
        ),
        EventType.PPO_UPDATE_COMPLETED: PPOUpdatePayload(
            policy_loss=NAN,
            value_loss=INF,
            entropy=-INF,
            approx_kl=-0.0,
            clip_fraction=5e-324,
            explained_variance=-1.7976931348623157e308,
            grad_norm=INF,
            learning_rate=3e-4,
            env_steps=12_800,
            lstm_h_l2_total=INF,
            lstm_c_l2_total=NAN,
            lstm_h_rms=INF,
            lstm_c_rms=NAN,
            lstm_h_env_rms_mean=-INF,
            lstm_h_env_rms_max=0.1,
            lstm_c_env_rms_mean=NAN,
            lstm_c_env_rms_max=1 / 3,
            lstm_h_max=INF,
            lstm_c_max=NAN,
            lstm_has_nan=True,
            lstm_has_inf=True,
            lstm_detail=LSTMHealthDetail(
                h_layer_rms=(INF, 0.5),
                c_layer_rms=(NAN, -INF),
                h_env_rms=(0.1, INF, -0.0),
                c_env_rms=(NAN, 2.0, 5e-324),
            ),
            lstm_outlier_envs=(0, 1),
            extra=AWKWARD,
        ),
        EventType.ANOMALY_DETECTED: AnomalyDetectedPayload(
            anomaly_type=AnomalyType.LSTM_NAN,
            severity=Severity.CRITICAL,
            observed=NAN,
            threshold=-INF,
            message="LSTM state holds NaN",
            outlier_envs=(3,),
        ),
        EventType.TELEMETRY_LEVEL_CHANGED: TelemetryLevelChangedPayload(
            previous=TelemetryLevel.NORMAL, level=TelemetryLevel.DEBUG, reason="lstm_nan"
        ),
        EventType.RUN_FINISHED: RunFinishedPayload(
            status="halted",
            message="NaN in the LSTM state",
            summary=AWKWARD,
            hub_stats=HubStats(
                run_id="run-1",
                state="closed",
                level=TelemetryLevel.DEBUG,
                emitted=12,
                subscribers=(
                    _subscriber("wandb", NAN, INF, -INF),
                    _subscriber("log", 0.1, 0.2, 5e-324),
                ),
            ),
        ),
    }


def sample_event(event_type: EventType) -> TelemetryEvent:
    """A fully stamped event of the given type around its sample payload."""
    return TelemetryEvent(
        update=7,
        run_id="run-1",
        seq=41,
        rank=0,
        level=TelemetryLevel.DEBUG,
        timestamp=datetime(2026, 11, 5, 12, 30, 15, 123456, tzinfo=UTC),
        payload=sample_payloads()[event_type],
    )


def canonical(value: Any) -> Any:
    """Make floats comparable bit for bit: each float becomes ('float', repr(value))."""
    if isinstance(value, bool | int | str) or value is None:
        return value
    if isinstance(value, float):
        return ("float", repr(value))
    if isinstance(value, dict):
        return {k: canonical(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return type(value)(canonical(v) for v in value)
    return value


def _no_constants(token: str) -> Any:
    raise AssertionError(f"not strict JSON: bare {token} token")


def strict_loads(text: str) -> Any:
    """json.loads that fails on the NaN/Infinity/-Infinity tokens strict JSON lacks."""
    return json.loads(text, parse_constant=_no_constants)


ALL_TYPES = list(EventType)


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("event_type", ALL_TYPES)
def test_event_round_trips_bit_exact_through_json(event_type: EventType) -> None:
    """Every event, NaN/±Inf included, reads back from its JSON with identical values."""
    event = sample_event(event_type)
    restored = TelemetryEvent.model_validate_json(event.model_dump_json())
    assert type(restored.payload) is type(event.payload)
    assert canonical(restored.model_dump()) == canonical(event.model_dump())


@pytest.mark.parametrize("event_type", ALL_TYPES)
def test_event_json_is_strict_json(event_type: EventType) -> None:
    """The JSON of every event parses without NaN/Infinity tokens and names its type."""
    data = strict_loads(sample_event(event_type).model_dump_json())
    assert (data["event_type"], data["update"], data["seq"]) == (event_type.value, 7, 41)


def test_non_finite_floats_are_written_as_strings() -> None:
    """NaN, +Inf and -Inf in `extra` appear in JSON as "NaN", "Infinity" and "-Infinity"."""
    data = strict_loads(sample_event(EventType.PPO_UPDATE_COMPLETED).model_dump_json())
    extra = data["payload"]["extra"]
    assert (extra["nan"], extra["inf"], extra["ninf"]) == ("NaN", "Infinity", "-Infinity")


def test_extra_round_trips_bit_exact() -> None:
    """Each awkward float in `extra` comes back as the same float (NaN as NaN, -0.0 as -0.0)."""
    event = sample_event(EventType.PPO_UPDATE_COMPLETED)
    extra = TelemetryEvent.model_validate_json(event.model_dump_json()).payload.extra
    assert math.isnan(extra["nan"])
    assert {k: repr(v) for k, v in extra.items()} == {k: repr(v) for k, v in AWKWARD.items()}
    assert [extra[k] for k in AWKWARD if k != "nan"] == [
        v for k, v in AWKWARD.items() if k != "nan"
    ]


def test_run_config_with_non_finite_floats_round_trips() -> None:
    """NaN and ±Inf in a run's config are stored as their strict-JSON strings, so the config
    reads back exactly as it was stored."""
    config = {"clip": INF, "target_kl": NAN, "nested": {"low": -INF, "values": [INF, 1.5]}}
    event = TelemetryEvent(update=0, payload=RunStartedPayload(config=config))
    stored = {
        "clip": "Infinity",
        "target_kl": "NaN",
        "nested": {"low": "-Infinity", "values": ["Infinity", 1.5]},
    }
    assert event.payload.config == stored
    text = event.model_dump_json()
    strict_loads(text)
    restored = TelemetryEvent.model_validate_json(text)
    assert restored.payload.config == stored


# --------------------------------------------------------------------------- payload typing


def _mismatches() -> list[tuple[EventType, EventType]]:
    return [(own, other) for own in ALL_TYPES for other in ALL_TYPES if other != own]


@pytest.mark.parametrize(("own", "other"), _mismatches())
def test_payload_cannot_travel_under_another_type(own: EventType, other: EventType) -> None:
    """Building an event whose event_type does not fit its payload raises, naming payload."""
    with pytest.raises(ValidationError, match="payload") as info:
        TelemetryEvent(event_type=other, update=0, payload=sample_payloads()[own])
    assert isinstance(info.value, ValueError)
    assert PAYLOAD_MODELS[other].__name__ in str(info.value)


@pytest.mark.parametrize(("own", "other"), _mismatches())
def test_json_with_changed_event_type_is_rejected(own: EventType, other: EventType) -> None:
    """JSON whose event_type was changed no longer validates: the payload does not fit."""
    data = json.loads(sample_event(own).model_dump_json())
    data["event_type"] = other.value
    with pytest.raises(ValidationError, match="payload") as info:
        TelemetryEvent.model_validate_json(json.dumps(data))
    assert all(e["loc"][:1] == ("payload",) or not e["loc"] for e in info.value.errors())


@pytest.mark.parametrize("event_type", ALL_TYPES)
def test_event_type_follows_from_payload(event_type: EventType) -> None:
    """Without event_type, the envelope takes the payload's own type."""
    event = TelemetryEvent(update=0, payload=sample_payloads()[event_type])
    assert event.event_type is event_type


# --------------------------------------------------------------------------- validation


def test_unknown_envelope_field_is_rejected() -> None:
    """An unknown field on the envelope raises, naming that field."""
    payload = sample_payloads()[EventType.RUN_STARTED]
    with pytest.raises(ValidationError, match="Extra inputs are not permitted") as info:
        TelemetryEvent(update=0, payload=payload, colour="red")
    assert [e["loc"] for e in info.value.errors()] == [("colour",)]


def test_unknown_envelope_field_in_json_is_rejected() -> None:
    """An unknown field on the envelope in JSON raises, naming that field."""
    data = json.loads(sample_event(EventType.RUN_STARTED).model_dump_json())
    data["colour"] = "red"
    with pytest.raises(ValidationError) as info:
        TelemetryEvent.model_validate_json(json.dumps(data))
    assert [(e["loc"], e["type"]) for e in info.value.errors()] == [
        (("colour",), "extra_forbidden")
    ]


@pytest.mark.parametrize("event_type", ALL_TYPES)
def test_unknown_payload_field_is_rejected(event_type: EventType) -> None:
    """An unknown field in any payload raises, naming the field, directly and inside JSON."""
    payload = sample_payloads()[event_type]
    fields = payload.model_dump()
    with pytest.raises(ValidationError) as direct:
        type(payload)(**fields, surprise=1.0)
    assert [(e["loc"], e["type"]) for e in direct.value.errors()] == [
        (("surprise",), "extra_forbidden")
    ]
    data = json.loads(sample_event(event_type).model_dump_json())
    data["payload"]["surprise"] = 1.0
    with pytest.raises(ValidationError, match=r"payload\.surprise") as nested:
        TelemetryEvent.model_validate_json(json.dumps(data))
    assert [(e["loc"], e["type"]) for e in nested.value.errors()] == [
        (("payload", "surprise"), "extra_forbidden")
    ]


@pytest.mark.parametrize(
    ("model", "fields"),
    [
        (LSTMHealthMetrics, {}),
        (HealthThresholds, {}),
        (
            LSTMHealthDetail,
            {"h_layer_rms": (), "c_layer_rms": (), "h_env_rms": (), "c_env_rms": ()},
        ),
    ],
)
def test_unknown_field_on_other_contracts_is_rejected(
    model: type[BaseModel], fields: dict[str, Any]
) -> None:
    """The health contracts are closed too: an unknown field is named in the error."""
    with pytest.raises(ValidationError, match="h_rms_typo"):
        model(**fields, h_rms_typo=1.0)


_PPO_BASE = {"policy_loss": 0.1, "value_loss": 0.2, "entropy": 0.6}


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"policy_loss": True}, "policy_loss"),
        ({"entropy": False}, "entropy"),
        ({"value_loss": "1.5"}, "value_loss"),
        ({"approx_kl": "nan"}, "approx_kl"),
        ({"lstm_h_rms": True}, "lstm_h_rms"),
        ({"env_steps": 100.0}, "env_steps"),
        ({"env_steps": "100"}, "env_steps"),
        ({"env_steps": True}, "env_steps"),
        ({"lstm_has_nan": 1}, "lstm_has_nan"),
        ({"lstm_outlier_envs": (1.0,)}, "lstm_outlier_envs"),
        ({"extra": {"x": True}}, "extra"),
        ({"extra": {"x": "0.5"}}, "extra"),
    ],
)
def test_wrong_types_are_rejected_with_field_named(changes: dict[str, Any], field: str) -> None:
    """Bools and numeric strings for floats, floats for ints, ints for bools raise, naming it."""
    with pytest.raises(ValidationError, match=field) as info:
        PPOUpdatePayload(**{**_PPO_BASE, **changes})
    assert {e["loc"][0] for e in info.value.errors()} == {field}


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"update": 1.0}, "update"),
        ({"seq": "3"}, "seq"),
        ({"rank": True}, "rank"),
        ({"run_id": 5}, "run_id"),
    ],
)
def test_wrong_envelope_types_are_rejected(changes: dict[str, Any], field: str) -> None:
    """A float, string or bool for an int envelope field, or a number for run_id, raises."""
    payload = sample_payloads()[EventType.RUN_STARTED]
    with pytest.raises(ValidationError, match=field) as info:
        TelemetryEvent(**{"update": 0, "payload": payload, **changes})
    assert {e["loc"][0] for e in info.value.errors()} == {field}


@pytest.mark.parametrize(("value", "field"), [("true", "entropy"), ("1.0", "env_steps")])
def test_wrong_types_in_json_payload_are_rejected(value: str, field: str) -> None:
    """In JSON too, a bool for a float and a float for an int raise under payload.<field>."""
    text = sample_event(EventType.PPO_UPDATE_COMPLETED).model_dump_json()
    data = json.loads(text)
    data["payload"][field] = json.loads(value)
    with pytest.raises(ValidationError, match=rf"payload\.{field}") as info:
        TelemetryEvent.model_validate_json(json.dumps(data))
    assert {e["loc"][:2] for e in info.value.errors()} == {("payload", field)}


def test_float_fields_take_ints_and_non_finite_strings() -> None:
    """A float field takes an int, and "NaN"/"Infinity"/"-Infinity" as the floats they spell."""
    p = PPOUpdatePayload(policy_loss=1, value_loss="Infinity", entropy="-Infinity", approx_kl="NaN")
    assert canonical((p.policy_loss, p.value_loss, p.entropy, p.approx_kl)) == canonical(
        (1.0, INF, -INF, NAN)
    )


@pytest.mark.parametrize(
    ("instance", "field", "value"),
    [
        (sample_event(EventType.RUN_STARTED), "update", 8),
        (sample_event(EventType.RUN_STARTED), "payload", None),
        (sample_payloads()[EventType.PPO_UPDATE_COMPLETED], "policy_loss", 0.0),
        (sample_payloads()[EventType.ANOMALY_DETECTED], "observed", 1.0),
        (
            LSTMHealthMetrics(
                **dict.fromkeys(LSTMHealthMetrics.model_fields, 0.0)
                | {"has_nan": False, "has_inf": False}
            ),
            "h_rms",
            1.0,
        ),
        (HealthThresholds(), "critical_rms", 20.0),
    ],
    ids=["envelope-update", "envelope-payload", "ppo", "anomaly", "metrics", "thresholds"],
)
def test_models_are_frozen(instance: BaseModel, field: str, value: Any) -> None:
    """Assigning to a field of any contract raises and leaves the value as it was."""
    before = canonical(instance.model_dump())
    with pytest.raises(ValidationError, match="frozen"):
        setattr(instance, field, value)
    assert canonical(instance.model_dump()) == before


# --------------------------------------------------------------------------- health fields


def test_metrics_to_dict_has_the_twelve_prefixed_values() -> None:
    """to_dict returns exactly the 12 lstm_-prefixed keys with the metrics' values."""
    m = LSTMHealthMetrics(
        h_l2_total=1.0,
        c_l2_total=2.0,
        h_rms=0.25,
        c_rms=INF,
        h_env_rms_mean=0.5,
        h_env_rms_max=0.75,
        c_env_rms_mean=3.0,
        c_env_rms_max=4.0,
        h_max=5.0,
        c_max=6.0,
        has_nan=False,
        has_inf=True,
    )
    assert m.to_dict() == {
        "lstm_h_l2_total": 1.0,
        "lstm_c_l2_total": 2.0,
        "lstm_h_rms": 0.25,
        "lstm_c_rms": INF,
        "lstm_h_env_rms_mean": 0.5,
        "lstm_h_env_rms_max": 0.75,
        "lstm_c_env_rms_mean": 3.0,
        "lstm_c_env_rms_max": 4.0,
        "lstm_h_max": 5.0,
        "lstm_c_max": 6.0,
        "lstm_has_nan": False,
        "lstm_has_inf": True,
    }
    assert tuple(m.to_dict()) == LSTM_KEYS


def test_ppo_payload_lstm_fields_default_to_none() -> None:
    """PPOUpdatePayload has the 12 lstm_ fields, all None when no LSTM is reported."""
    p = PPOUpdatePayload(**_PPO_BASE)
    assert {k: getattr(p, k) for k in LSTM_KEYS} == dict.fromkeys(LSTM_KEYS)
    assert {k: PPOUpdatePayload.model_fields[k].default for k in LSTM_KEYS} == dict.fromkeys(
        LSTM_KEYS
    )


def test_ppo_payload_takes_metrics_to_dict() -> None:
    """The output of to_dict fills the PPO payload's lstm_ fields one to one."""
    m = LSTMHealthMetrics(
        **dict.fromkeys(LSTMHealthMetrics.model_fields, 0.5) | {"has_nan": True, "has_inf": False}
    )
    p = PPOUpdatePayload(**_PPO_BASE, **m.to_dict())
    assert {k: getattr(p, k) for k in LSTM_KEYS} == m.to_dict()


# --------------------------------------------------------------------------- levels


def test_levels_are_ordered() -> None:
    """OFF < MINIMAL < NORMAL < DEBUG, and sorting the members gives that order."""
    levels = [
        TelemetryLevel.DEBUG,
        TelemetryLevel.OFF,
        TelemetryLevel.NORMAL,
        TelemetryLevel.MINIMAL,
    ]
    assert sorted(levels) == [
        TelemetryLevel.OFF,
        TelemetryLevel.MINIMAL,
        TelemetryLevel.NORMAL,
        TelemetryLevel.DEBUG,
    ]
    assert (
        TelemetryLevel.OFF < TelemetryLevel.MINIMAL < TelemetryLevel.NORMAL < TelemetryLevel.DEBUG
    )


@pytest.mark.parametrize("value", ["debug", "DEBUG", " Debug ", 3, TelemetryLevel.DEBUG], ids=repr)
def test_parse_reads_names_numbers_and_members(value: Any) -> None:
    """parse accepts a name in any case, the level's number or the member itself."""
    assert TelemetryLevel.parse(value) is TelemetryLevel.DEBUG


@pytest.mark.parametrize("value", ["verbose", "", 7, -1, True, 3.0], ids=repr)
def test_parse_rejects_unknown_levels_listing_names(value: Any) -> None:
    """An unknown level raises ValueError that lists every valid name."""
    with pytest.raises(ValueError, match=r"use one of off, minimal, normal, debug$"):
        TelemetryLevel.parse(value)
