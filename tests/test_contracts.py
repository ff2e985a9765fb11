"""Tests of the contracts: strict-JSON round trips, payload typing, validation, levels."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, cast

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from esper_telemetry.contracts import (
    EVENT_CLASSES,
    STATUS_COLOUR,
    Anomaly,
    AnomalyDetected,
    AnomalyDetectedPayload,
    AnomalyType,
    EventType,
    FrozenDict,
    HealthStatus,
    HealthThresholds,
    HubStats,
    LSTMHealthDetail,
    LSTMHealthMetrics,
    PPOUpdateCompleted,
    PPOUpdatePayload,
    RunFinishedPayload,
    RunLayout,
    RunStarted,
    RunStartedPayload,
    Severity,
    SubscriberStats,
    TelemetryEvent,
    TelemetryLevel,
    TelemetryLevelChangedPayload,
    event_class,
    format_value,
    health_status,
    parse_event,
    validate_event,
)
from esper_telemetry.contracts.events import EVENT_ADAPTER

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
    """One payload per event type, with NaN and ±Inf in every float field that takes them
    (+Inf only where a value cannot be negative)."""
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
            lstm_h_env_rms_mean=-0.0,
            lstm_h_env_rms_max=0.1,
            lstm_c_env_rms_mean=NAN,
            lstm_c_env_rms_max=1 / 3,
            lstm_h_max=INF,
            lstm_c_max=NAN,
            lstm_has_nan=True,
            lstm_has_inf=True,
            lstm_detail=LSTMHealthDetail(
                h_layer_rms=(INF, 0.5),
                c_layer_rms=(NAN, 1.7976931348623157e308),
                h_env_rms=(0.1, INF, -0.0),
                c_env_rms=(NAN, 2.0, 5e-324),
            ),
            lstm_outlier_envs=(0, 1),
            extra=AWKWARD,
        ),
        EventType.ANOMALY_DETECTED: AnomalyDetectedPayload(
            anomaly=Anomaly(
                type=AnomalyType.LSTM_NAN,
                severity=Severity.CRITICAL,
                observed=NAN,
                threshold=-INF,
                message="LSTM state holds NaN",
            ),
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
                    _subscriber("wandb", NAN, INF, 1.7976931348623157e308),
                    _subscriber("log", 0.1, 0.2, 5e-324),
                ),
            ),
        ),
    }


def build(kind: EventType, /, **fields: Any) -> Any:
    """The event class of ``kind`` called with ``fields`` (any fields, to provoke errors)."""
    cls: Any = event_class(kind)
    return cls(**fields)


def sample_event(event_type: EventType) -> TelemetryEvent:
    """A fully stamped event of the given type around its sample payload."""
    event: TelemetryEvent = build(
        event_type,
        update=7,
        run_id="run-1",
        seq=41,
        rank=0,
        level=TelemetryLevel.DEBUG,
        timestamp=datetime(2026, 11, 5, 12, 30, 15, 123456, tzinfo=UTC),
        payload=sample_payloads()[event_type],
    )
    return event


def canonical(value: Any) -> Any:
    """Make floats comparable bit for bit: each float becomes ('float', repr(value))."""
    if isinstance(value, bool | int | str) or value is None:
        return value
    if isinstance(value, float):
        return ("float", repr(value))
    if isinstance(value, Mapping):
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
    restored = parse_event(event.model_dump_json())
    assert (type(restored), type(restored.payload)) == (type(event), type(event.payload))
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
    restored = parse_event(event.model_dump_json())
    assert isinstance(restored.payload, PPOUpdatePayload)
    extra = restored.payload.extra
    assert math.isnan(extra["nan"])
    assert {k: repr(v) for k, v in extra.items()} == {k: repr(v) for k, v in AWKWARD.items()}
    assert [extra[k] for k in AWKWARD if k != "nan"] == [
        v for k, v in AWKWARD.items() if k != "nan"
    ]


def test_run_config_with_non_finite_floats_round_trips() -> None:
    """NaN and ±Inf in a run's config are stored as their strict-JSON strings, so the config
    reads back exactly as it was stored."""
    config = {"clip": INF, "target_kl": NAN, "nested": {"low": -INF, "values": [INF, 1.5]}}
    event = RunStarted(update=0, payload=RunStartedPayload(config=config))
    stored = {
        "clip": "Infinity",
        "target_kl": "NaN",
        "nested": {"low": "-Infinity", "values": ["Infinity", 1.5]},
    }
    assert event.payload.config.to_dict() == stored
    text = event.model_dump_json()
    strict_loads(text)
    restored = parse_event(text)
    assert isinstance(restored, RunStarted)
    assert restored.payload.config.to_dict() == stored


# --------------------------------------------------------------------------- payload typing


def _mismatches() -> list[tuple[EventType, EventType]]:
    return [(own, other) for own in ALL_TYPES for other in ALL_TYPES if other != own]


@pytest.mark.parametrize(("own", "other"), _mismatches())
def test_payload_cannot_travel_under_another_type(own: EventType, other: EventType) -> None:
    """Building an event class around another kind's payload raises, naming payload."""
    with pytest.raises(ValidationError, match="payload") as info:
        build(other, update=0, payload=sample_payloads()[own])
    assert isinstance(info.value, ValueError)
    assert {e["loc"][0] for e in info.value.errors()} == {"payload"}


@pytest.mark.parametrize(("own", "other"), _mismatches())
def test_event_type_is_fixed_by_the_class(own: EventType, other: EventType) -> None:
    """An event class refuses another kind's event_type, naming event_type."""
    with pytest.raises(ValidationError, match="event_type"):
        build(own, event_type=other, update=0, payload=sample_payloads()[own])


@pytest.mark.parametrize(("own", "other"), _mismatches())
def test_json_with_changed_event_type_is_rejected(own: EventType, other: EventType) -> None:
    """JSON whose event_type was changed no longer validates: the payload does not fit."""
    data = json.loads(sample_event(own).model_dump_json())
    data["event_type"] = other.value
    with pytest.raises(ValidationError, match="payload") as info:
        parse_event(json.dumps(data))
    assert all(e["loc"][1:2] == ("payload",) for e in info.value.errors())


@pytest.mark.parametrize("event_type", ALL_TYPES)
def test_event_type_follows_from_the_class(event_type: EventType) -> None:
    """Each class carries its own event_type; the classes cover EventType in order."""
    event = build(event_type, update=0, payload=sample_payloads()[event_type])
    assert event.event_type is event_type
    assert [c.model_fields["event_type"].default for c in EVENT_CLASSES] == list(EventType)


@pytest.mark.parametrize("event_type", ALL_TYPES)
def test_validate_event_picks_the_class_from_python_data(event_type: EventType) -> None:
    """validate_event reads a dumped event back into its own class."""
    event = sample_event(event_type)
    restored = validate_event(event.model_dump())
    assert type(restored) is type(event)
    assert canonical(restored.model_dump()) == canonical(event.model_dump())


# --------------------------------------------------------------------------- validation


def test_unknown_envelope_field_is_rejected() -> None:
    """An unknown field on the envelope raises, naming that field."""
    payload = sample_payloads()[EventType.RUN_STARTED]
    with pytest.raises(ValidationError, match="Extra inputs are not permitted") as info:
        RunStarted(update=0, payload=payload, colour="red")  # type: ignore[call-arg]
    assert [e["loc"] for e in info.value.errors()] == [("colour",)]


def test_unknown_envelope_field_in_json_is_rejected() -> None:
    """An unknown field on the envelope in JSON raises, naming that field."""
    data = json.loads(sample_event(EventType.RUN_STARTED).model_dump_json())
    data["colour"] = "red"
    with pytest.raises(ValidationError) as info:
        parse_event(json.dumps(data))
    assert [(e["loc"], e["type"]) for e in info.value.errors()] == [
        (("RUN_STARTED", "colour"), "extra_forbidden")
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
        parse_event(json.dumps(data))
    assert [(e["loc"], e["type"]) for e in nested.value.errors()] == [
        ((event_type.value, "payload", "surprise"), "extra_forbidden")
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
        RunStarted(**{"update": 0, "payload": payload, **changes})
    assert {e["loc"][0] for e in info.value.errors()} == {field}


@pytest.mark.parametrize(("value", "field"), [("true", "entropy"), ("1.0", "env_steps")])
def test_wrong_types_in_json_payload_are_rejected(value: str, field: str) -> None:
    """In JSON too, a bool for a float and a float for an int raise under payload.<field>."""
    text = sample_event(EventType.PPO_UPDATE_COMPLETED).model_dump_json()
    data = json.loads(text)
    data["payload"][field] = json.loads(value)
    with pytest.raises(ValidationError, match=rf"payload\.{field}") as info:
        parse_event(json.dumps(data))
    assert {e["loc"][1:3] for e in info.value.errors()} == {("payload", field)}


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
        (sample_payloads()[EventType.ANOMALY_DETECTED], "anomaly", None),
        (
            LSTMHealthMetrics(
                **dict.fromkeys(LSTMHealthMetrics.FIGURES, 0.0)
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


# --------------------------------------------------------------------------- bounds

I64_MIN, I64_MAX = -(2**63), 2**63 - 1
_LSTM_FLOAT_KEYS = tuple(k for k in LSTM_KEYS if not k.startswith("lstm_has_"))


def _int_leaves(data: Any, path: tuple[str | int, ...] = ()) -> list[tuple[str | int, ...]]:
    """Paths of the int values in an event's JSON data (the config is free JSON: skipped)."""
    if isinstance(data, bool):
        return []
    if isinstance(data, int):
        return [path]
    if isinstance(data, Mapping):
        return [p for k, v in data.items() if k != "config" for p in _int_leaves(v, (*path, k))]
    if isinstance(data, list):
        return [p for i, v in enumerate(data) for p in _int_leaves(v, (*path, i))]
    return []


def _with(data: Any, path: tuple[str | int, ...], value: int) -> Any:
    copy = json.loads(json.dumps(data))
    node = copy
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    return copy


def _json_data(event_type: EventType) -> Any:
    return json.loads(sample_event(event_type).model_dump_json())


INT_PATHS = [(t, p) for t in EventType for p in _int_leaves(_json_data(t))]


def _ids(cases: list[tuple[EventType, tuple[str | int, ...]]]) -> list[str]:
    return [f"{t.value}:{'.'.join(map(str, p))}" for t, p in cases]


def test_every_int_of_every_event_is_found() -> None:
    """The sweep below covers every int field of the contracts, not only the envelope's."""
    fields = {".".join(str(part) for part in p if isinstance(part, str)) for _, p in INT_PATHS}
    assert fields == {
        "schema_version",
        "seq",
        "update",
        "rank",
        "level",
        "payload.env_steps",
        "payload.lstm_outlier_envs",
        "payload.outlier_envs",
        "payload.previous",
        "payload.level",
        "payload.hub_stats.level",
        "payload.hub_stats.emitted",
        *(
            f"payload.hub_stats.subscribers.{name}"
            for name in (
                "delivered",
                "failed",
                "dropped",
                "abandoned",
                "undelivered",
                "queue_depth",
                "queue_size",
            )
        ),
    }


@pytest.mark.parametrize("too_big", [I64_MAX + 1, 2**70, I64_MIN - 1, 10**400])
@pytest.mark.parametrize(("event_type", "path"), INT_PATHS, ids=_ids(INT_PATHS))
def test_an_int_outside_int64_is_refused_naming_its_field(
    event_type: EventType, path: tuple[str | int, ...], too_big: int
) -> None:
    """Any int field, in JSON and in Python, refuses a value no int64 column can hold."""
    data = _with(_json_data(event_type), path, too_big)
    errors = []
    for parse, argument in ((parse_event, json.dumps(data)), (validate_event, data)):
        with pytest.raises(ValidationError) as info:
            parse(argument)
        errors.append([e["loc"][1:] for e in info.value.errors()])
    assert errors == [[path], [path]]


NOT_LEVELS = [(t, p) for t, p in INT_PATHS if p[-1] not in ("level", "previous")]


@pytest.mark.parametrize(("event_type", "path"), NOT_LEVELS, ids=_ids(NOT_LEVELS))
def test_int64_max_is_held_where_an_int_field_is_not_a_level(
    event_type: EventType, path: tuple[str | int, ...]
) -> None:
    """The largest int64 is a valid count, index, update or seq, and round-trips exactly."""
    data = _with(_json_data(event_type), path, I64_MAX)
    event = parse_event(json.dumps(data))
    assert json.loads(event.model_dump_json()) == data


@pytest.mark.parametrize(("event_type", "path"), INT_PATHS, ids=_ids(INT_PATHS))
def test_a_negative_int_is_refused_where_it_means_nothing(
    event_type: EventType, path: tuple[str | int, ...]
) -> None:
    """Counts, indices, update, rank and schema_version refuse -1; seq refuses -2 (-1 is
    "not emitted yet")."""
    value = -2 if path == ("seq",) else -1
    data = _with(_json_data(event_type), path, value)
    with pytest.raises(ValidationError) as info:
        parse_event(json.dumps(data))
    assert [e["loc"][1:] for e in info.value.errors()] == [path]


def test_every_int_in_the_schemas_is_bounded_to_int64() -> None:
    """Each integer of the published JSON Schemas states bounds within int64."""

    def ints(node: Any) -> list[tuple[Any, Any]]:
        if isinstance(node, Mapping):
            own = (
                [(node.get("minimum"), node.get("maximum"))]
                if node.get("type") == "integer"
                else []
            )
            return own + [b for v in node.values() for b in ints(v)]
        if isinstance(node, list):
            return [b for v in node for b in ints(v)]
        return []

    defs = EVENT_ADAPTER.json_schema()["$defs"]
    found = ints({k: v for k, v in defs.items() if k != "TelemetryLevel"})  # an enum, 0-3
    # 4 envelope ints x 5 events, 5 in payloads (health_ranks, episode_return_window among
    # them), 1 in the metrics of a named state (ranks), 3 in the LSTM detail (a worst env's
    # rank and env, env_counts), 6 in a replay check (compared, mismatched, first_env,
    # first_step, ranks, first_rank), 8 in the stats
    assert len(found) == 43
    assert [(lo, hi) for lo, hi in found if not (lo >= I64_MIN and hi == I64_MAX)] == []


def test_a_float_field_refuses_an_int_too_big_for_a_float_naming_it() -> None:
    """10**400 cannot be a float: a ValidationError naming the field, not an OverflowError."""
    with pytest.raises(ValidationError) as info:
        PPOUpdatePayload(**{**_PPO_BASE, "policy_loss": 10**400, "extra": {"x": 10**400}})
    # Each field reports both members of the Float union; the second says why.
    assert [(e["loc"][:-1], e["msg"]) for e in info.value.errors()][1::2] == [
        (("policy_loss",), "Value error, an int of 1329 bits does not fit in a float"),
        (("extra", "x"), "Value error, an int of 1329 bits does not fit in a float"),
    ]


NORM_FIELDS = [
    (LSTMHealthMetrics, name)
    for name in LSTMHealthMetrics.FIGURES
    if name not in ("has_nan", "has_inf")
] + [
    (PPOUpdatePayload, name)
    for name in PPOUpdatePayload.model_fields
    if name == "grad_norm" or (name.startswith("lstm_") and name in _LSTM_FLOAT_KEYS)
]


def _build(cls: type[BaseModel], field: str, value: float) -> BaseModel:
    if cls is LSTMHealthMetrics:
        base: dict[str, Any] = dict.fromkeys(LSTMHealthMetrics.FIGURES, 0.5)
        base |= {"has_nan": False, "has_inf": False}
        return LSTMHealthMetrics(**{**base, field: value})
    return cls(**{**_PPO_BASE, field: value})


@pytest.mark.parametrize("value", [-1.0, -5e-324, -INF, -1])
@pytest.mark.parametrize(("cls", "field"), NORM_FIELDS)
def test_a_norm_refuses_a_negative_value_naming_the_field(
    cls: type[BaseModel], field: str, value: float
) -> None:
    """A norm, RMS or max|x| below 0 (or -Infinity) is refused, naming the field."""
    with pytest.raises(ValidationError) as info:
        _build(cls, field, value)
    errors = info.value.errors()
    # One error per member of the union (pydantic-core's check, then the Python one).
    assert [(e["loc"][0], e["msg"].split(", got")[0]) for e in errors] == [
        (field, "Input should be greater than or equal to 0"),
        (field, "Value error, must be >= 0 (NaN and +Infinity are kept as data)"),
    ]


@pytest.mark.parametrize("value", [0.0, -0.0, 5e-324, NAN, INF])
@pytest.mark.parametrize(("cls", "field"), NORM_FIELDS)
def test_a_norm_holds_zero_nan_and_infinity(cls: type[BaseModel], field: str, value: float) -> None:
    """0, -0.0, NaN and +Inf are data a norm can hold: stored as given."""
    assert canonical(getattr(_build(cls, field, value), field)) == canonical(value)


@pytest.mark.parametrize(
    ("model", "field"),
    [
        (
            lambda v: LSTMHealthDetail(
                h_layer_rms=(v,), c_layer_rms=(), h_env_rms=(), c_env_rms=()
            ),
            ("h_layer_rms", 0),
        ),
        (
            lambda v: LSTMHealthDetail(
                h_layer_rms=(), c_layer_rms=(), h_env_rms=(), c_env_rms=(1.0, v)
            ),
            ("c_env_rms", 1),
        ),
        (lambda v: _subscriber("s", 0.1, v, 0.2), ("latency_p99_ms",)),
    ],
    ids=["detail-layer", "detail-env", "latency"],
)
def test_per_layer_and_per_env_rms_and_latencies_refuse_negatives(
    model: Callable[[float], BaseModel], field: tuple[str | int, ...]
) -> None:
    """The detail's RMS values and the hub's latencies are >= 0 too."""
    with pytest.raises(ValidationError) as info:
        model(-1.0)
    assert {e["loc"][: len(field)] for e in info.value.errors()} == {field}


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
        **dict.fromkeys(LSTMHealthMetrics.FIGURES, 0.5) | {"has_nan": True, "has_inf": False}
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


# --------------------------------------------------------------------------- read-only


@pytest.mark.parametrize(
    ("mapping", "key"),
    [
        (PPOUpdatePayload(**_PPO_BASE, extra={"fps": 900.0}).extra, "fps"),
        (RunFinishedPayload(status="completed", summary={"updates": 3.0}).summary, "updates"),
        (RunStartedPayload(config={"net": {"sizes": [64]}}).config, "net"),
    ],
    ids=["extra", "summary", "config"],
)
def test_payload_mappings_are_read_only(mapping: Any, key: str) -> None:
    """extra, summary and config refuse every kind of change."""
    before = dict(mapping)
    attempts: list[Callable[[], object]] = [
        lambda: mapping.__setitem__(key, 1.0),
        lambda: mapping.__delitem__(key),
        lambda: mapping.update({key: 1.0}),
        lambda: mapping.pop(key),
        lambda: mapping.clear(),
    ]
    refused = 0
    for attempt in attempts:
        with pytest.raises((TypeError, AttributeError)):
            attempt()
        refused += 1
    assert (refused, dict(mapping)) == (len(attempts), before)


def test_nested_config_is_read_only_too() -> None:
    """A config's nested mappings and lists cannot be changed either."""
    config = RunStartedPayload(config={"net": {"sizes": [64, 64]}}).config
    net: Any = config["net"]
    assert isinstance(cast(object, net), FrozenDict)
    with pytest.raises(TypeError):
        net["sizes"] = [1]
    with pytest.raises(AttributeError):
        net["sizes"].append(1)
    assert config.to_dict() == {"net": {"sizes": [64, 64]}}


def test_frozen_mappings_pickle_and_compare_like_dicts() -> None:
    """A FrozenDict pickles, equals the dict it holds, and to_dict() gives a mutable copy."""
    import pickle

    payload = PPOUpdatePayload(**_PPO_BASE, extra={"a": 1.0})
    copy = pickle.loads(pickle.dumps(payload))
    plain = payload.extra.to_dict()
    plain["a"] = 2.0
    assert (copy == payload, payload.extra == {"a": 1.0}, plain) == (True, True, {"a": 2.0})


def test_an_inline_subscriber_cannot_rewrite_what_others_see() -> None:
    """One subscriber trying to change payload.extra fails; the next one sees the original."""
    from esper_telemetry.hub import TelemetryHub

    seen: list[dict[str, float]] = []
    errors: list[str] = []

    def vandal(event: Any) -> None:
        try:
            event.payload.extra["fps"] = -1.0
        except TypeError as exc:
            errors.append(type(exc).__name__)

    with TelemetryHub("frozen") as hub:
        hub.subscribe(vandal, mode="inline")
        hub.subscribe(
            lambda e: seen.append(dict(e.payload.extra)), events=PPOUpdateCompleted, mode="inline"
        )
        hub.emit(
            PPOUpdateCompleted(update=0, payload=PPOUpdatePayload(**_PPO_BASE, extra={"fps": 9.0}))
        )
    assert (errors, seen) == (["TypeError"], [{"fps": 9.0}])


# --------------------------------------------------------------------------- versions


V1_ANOMALY = (
    '{"event_type":"ANOMALY_DETECTED","schema_version":1,"run_id":"r","seq":4,"update":3,'
    '"timestamp":"2026-11-05T12:30:15Z","rank":0,"level":3,"payload":{"anomaly_type":'
    '"lstm_c_explosion","severity":"critical","observed":260.9,"threshold":10.0,'
    '"message":"c_rms = 260.9 is above critical_rms = 10","outlier_envs":[2]}}'
)


def test_version_1_anomaly_lines_still_read() -> None:
    """An anomaly line of schema_version 1 (flat fields) reads into the nested shape."""
    event = parse_event(V1_ANOMALY)
    assert isinstance(event, AnomalyDetected)
    assert (event.schema_version, event.payload.model_dump(mode="json")) == (
        1,
        {
            "anomaly": {
                "type": "lstm_c_explosion",
                "severity": "critical",
                "observed": 260.9,
                "threshold": 10.0,
                "message": "c_rms = 260.9 is above critical_rms = 10",
                "state": None,
            },
            "outlier_envs": [2],
        },
    )


def test_new_anomaly_lines_nest_the_anomaly_and_carry_version_3() -> None:
    """A new anomaly line holds the Anomaly itself under payload.anomaly, with its state."""
    data = json.loads(sample_event(EventType.ANOMALY_DETECTED).model_dump_json())
    assert (data["schema_version"], sorted(data["payload"])) == (3, ["anomaly", "outlier_envs"])
    assert "state" in data["payload"]["anomaly"]


# --------------------------------------------------------------------------- redaction marks


def _flatten(annotation: Any) -> list[Any]:
    """``annotation`` and every type inside it (Optional, tuple, Annotated unwrapped)."""
    from typing import get_args, get_origin

    inner = get_args(annotation) if get_origin(annotation) is not None else ()
    return [annotation, *(a for arg in inner for a in _flatten(arg))]


def _text_fields(model: type[BaseModel], prefix: str = "") -> list[tuple[str, bool]]:
    """(path, marked) for every str or mapping field of ``model`` and its sub-models."""
    from typing import get_origin

    from esper_telemetry.contracts import Redact

    found: list[tuple[str, bool]] = []
    for name, info in model.model_fields.items():
        types = _flatten(info.annotation)
        for sub in {t for t in types if isinstance(t, type) and issubclass(t, BaseModel)}:
            found += _text_fields(sub, f"{prefix}{name}.")
        marked = any(isinstance(m, Redact) for t in types for m in getattr(t, "__metadata__", ()))
        marked = marked or any(isinstance(m, Redact) for m in info.metadata)
        if str in types or any(get_origin(t) is Mapping for t in types):
            found.append((f"{prefix}{name}", marked))
    return found


def test_free_text_fields_are_marked_for_redaction() -> None:
    """Every free-text field of every event is marked Redact, except the envelope's run_id."""
    fields = sorted({f for cls in EVENT_CLASSES for f in _text_fields(cls)})
    assert fields == [
        ("payload.anomaly.message", True),
        # State names are refused when they look like secrets (emit_ppo_update_event).
        ("payload.anomaly.state", False),
        ("payload.config", True),
        ("payload.description", True),
        ("payload.extra", False),
        ("payload.hub_stats.run_id", False),
        ("payload.hub_stats.subscribers.last_error", True),
        ("payload.hub_stats.subscribers.name", False),
        ("payload.message", True),
        ("payload.primary_state", False),
        ("payload.reason", True),
        ("payload.recurrent_detail", False),
        ("payload.recurrent_health", False),
        # State names (checked as above) to ReplayConsistency, which holds no free text.
        ("payload.replay", False),
        ("payload.summary", False),
        ("run_id", False),
    ]


def test_redact_marked_walks_every_marked_field() -> None:
    """redact_marked replaces exactly the marked fields, at any depth, and leaves the input."""
    from esper_telemetry.contracts import redact_marked

    def shout(value: Any) -> Any:
        return value.upper() if isinstance(value, str) else dict.fromkeys(value, "X")

    anomaly = sample_event(EventType.ANOMALY_DETECTED)
    started = RunStarted(update=0, payload=RunStartedPayload(config={"a": 1}, description="d"))
    ppo = sample_event(EventType.PPO_UPDATE_COMPLETED)
    redacted = redact_marked(anomaly, shout)
    assert isinstance(redacted, AnomalyDetected)
    assert (
        redacted.payload.anomaly.message,
        redact_marked(started, shout).payload.model_dump(),
        redact_marked(ppo, shout) is ppo,
        anomaly.payload.model_dump()["anomaly"]["message"],
    ) == (
        "LSTM STATE HOLDS NAN",
        {"config": {"a": "X"}, "description": "D"},
        True,
        "LSTM state holds NaN",
    )


# --------------------------------------------------------------------------- the health rule

_values = st.one_of(
    st.floats(min_value=0.0, max_value=1e6, allow_nan=False),
    st.sampled_from([0.0, 1e-6, 5.0, 10.0, NAN, INF]),
)


@pytest.mark.parametrize(
    ("rms", "env_max", "top", "expected"),
    [
        (0.5, 0.6, 0.9, HealthStatus.HEALTHY),
        (5.0, 5.0, 9.0, HealthStatus.HEALTHY),  # strict: exactly warning_rms is not a warning
        (5.5, 6.0, 9.0, HealthStatus.WARNING),
        (10.0, 10.0, 30.0, HealthStatus.WARNING),  # strict: exactly critical_rms is not critical
        (9.0, 10.5, 30.0, HealthStatus.CRITICAL),  # one env above critical_rms
        (1e-7, 1e-7, 1e-7, HealthStatus.CRITICAL),  # vanishing
        (1e-6, 1e-6, 1e-6, HealthStatus.HEALTHY),  # strict: exactly vanishing_rms is not
        (0.5, 0.6, NAN, HealthStatus.CRITICAL),  # NaN somewhere in the tensor
        (0.5, 0.6, INF, HealthStatus.CRITICAL),
    ],
)
def test_the_rule_for_one_tensor(rms: float, env_max: float, top: float, expected: Any) -> None:
    """HealthThresholds.status applies the one rule, strictly, to one tensor's numbers."""
    assert HealthThresholds().status(rms, env_max, top) is expected


@given(h=st.tuples(_values, _values, _values), c=st.tuples(_values, _values, _values))
def test_health_status_is_the_worse_of_the_two_tensors(
    h: tuple[float, float, float], c: tuple[float, float, float]
) -> None:
    """health_status is exactly the worse of the rule applied to h and to c."""
    metrics = LSTMHealthMetrics(
        h_l2_total=1.0,
        c_l2_total=1.0,
        h_rms=h[0],
        h_env_rms_mean=h[0],
        h_env_rms_max=h[1],
        h_max=h[2],
        c_rms=c[0],
        c_env_rms_mean=c[0],
        c_env_rms_max=c[1],
        c_max=c[2],
        has_nan=any(math.isnan(v) for v in (*h, *c)),
        has_inf=any(math.isinf(v) for v in (*h, *c)),
    )
    t = HealthThresholds()
    worst = max(t.status(*h), t.status(*c), key=lambda s: s.rank)
    assert (health_status(metrics, t), metrics.status_of("h", t), metrics.status_of("c", t)) == (
        worst,
        t.status(*h),
        t.status(*c),
    )


def test_every_status_has_one_colour() -> None:
    """The colour map covers every status, one distinct colour each."""
    assert STATUS_COLOUR == {
        HealthStatus.HEALTHY: "green",
        HealthStatus.WARNING: "yellow",
        HealthStatus.CRITICAL: "red",
    }


# --------------------------------------------------------------------------- losses


def _stats(when_full: Any, **counts: int) -> SubscriberStats:
    base = dict.fromkeys(("delivered", "failed", "dropped", "queue_depth"), 0)
    return SubscriberStats(
        name="s",
        mode="thread",
        when_full=when_full,
        queue_size=8,
        latency_p50_ms=0.0,
        latency_p99_ms=0.0,
        latency_max_ms=0.0,
        **{**base, **counts},
    )


@pytest.mark.parametrize(
    ("when_full", "counts", "lost"),
    [
        ("block", {"delivered": 9}, 0),
        ("drop_oldest", {"dropped": 5}, 0),  # a view asked for recent events only
        ("block", {"dropped": 5}, 5),  # a stuck lossless subscriber lost them
        ("block", {"failed": 2}, 2),
        ("drop_oldest", {"abandoned": 3}, 3),
        ("drop_oldest", {"undelivered": 4}, 4),  # rows the backend could not write
        ("block", {"failed": 1, "dropped": 1, "abandoned": 1, "undelivered": 1}, 4),
    ],
)
def test_lost_has_one_definition(when_full: Any, counts: dict[str, int], lost: int) -> None:
    """Lost = failed + abandoned + undelivered + the drops of a block subscriber."""
    stats = _stats(when_full, **counts)
    hub = HubStats(run_id="r", state="open", level=2, emitted=9, subscribers=(stats, stats))
    assert (stats.lost, hub.lost, hub.lossless) == (lost, 2 * lost, lost == 0)


# --------------------------------------------------------------------------- layout, numbers


def test_the_run_layout_names_every_file_once() -> None:
    """RunLayout puts each file of a run where every reader looks for it."""
    layout = RunLayout("runs/r1")
    assert [str(p) for p in (layout.events, layout.log, layout.wandb, layout.report)] == [
        "runs/r1/events.jsonl",
        "runs/r1/log.jsonl",
        "runs/r1/wandb",
        "runs/r1/report.png",
    ]


def test_format_value_spells_non_finite_values_exactly() -> None:
    """The one number formatter never rounds a broken value into a plausible one."""
    values = [NAN, INF, -INF, 1e308, 5e-324, 0.0, None]
    assert [format_value(v) for v in values] == [
        "nan",
        "inf",
        "-inf",
        "1.000e+308",
        "4.941e-324",
        "0.000",
        "—",
    ]
