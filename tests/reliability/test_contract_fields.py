"""Every field of every contract refuses a wrong type, and every contract an unknown field,
with an error that names the field: in JSON (how logs are read, by the event class and by
``parse_event``) and in Python.

The samples come from a real hub run (an LSTM pushed to explode at DEBUG level, a
failing subscriber), so that every optional field is set as the system sets it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import cache
from typing import Any

import pytest
from pydantic import ValidationError

from esper_telemetry import AnomalyDetector, TelemetryHub
from esper_telemetry.backends import AnomalyEscalator
from esper_telemetry.contracts import (
    EVENT_CLASSES,
    AnomalyDetected,
    EnvRMS,
    EventBase,
    HealthThresholds,
    LSTMHealthDetail,
    LSTMHealthMetrics,
    PPOUpdateCompleted,
    RecurrentDiagnostics,
    ReplayConsistency,
    RunFinished,
    RunFinishedPayload,
    RunStarted,
    RunStartedPayload,
    TelemetryEvent,
    parse_event,
)
from esper_telemetry.contracts._base import Contract
from esper_telemetry.testing import capture_events
from tests.faulty_lstm import FaultyLSTM

NON_FINITE = ("NaN", "Infinity", "-Infinity")
#: TelemetryLevel fields coerce like lax pydantic: JSON true, "1" and 1.0 read as MINIMAL.
LEVEL_WRONG_VALUES = ("1", True, 1.0)


def fails(event: TelemetryEvent) -> None:
    raise RuntimeError("sample failure")


@cache
def samples() -> dict[str, Contract]:
    """One instance of every contract, with every optional field filled in."""
    hub = TelemetryHub("samples")
    hub.subscribe(AnomalyEscalator(escalate_for=1), mode="inline")
    hub.subscribe(fails, mode="inline")
    with capture_events(hub) as rec:
        config = {"lr": 0.1, "layers": [1, 2], "nested": {"a": "b"}, "off": None}
        hub.emit(RunStarted(update=0, payload=RunStartedPayload(config=config, description="d")))
        model = FaultyLSTM(hub, {1: "explode", 2: "explode"})
        for k in (0, 1, 2):
            model.update(k)
        payload = RunFinishedPayload(
            status="interrupted", message="m", summary={"x": 1.0}, hub_stats=hub.stats()
        )
        hub.emit(RunFinished(update=2, payload=payload))
    hub.close()
    last = {type(e): e for e in rec.events}
    assert set(last) == set(EVENT_CLASSES)  # every kind of event
    update = last[PPOUpdateCompleted]
    assert isinstance(update, PPOUpdateCompleted)
    health, detail, stats = update.payload.health(), update.payload.lstm_detail, payload.hub_stats
    assert health is not None
    assert detail is not None
    assert stats is not None
    report = AnomalyDetector().check_lstm_health(health)
    # A group call's detail (tests/test_lstm_health_distributed.py makes real ones) names
    # the worst envs of each rank; fill those fields in as such a call does.
    worst = EnvRMS(rank=1, env=0, h_rms=12.5, c_rms=0.4)
    detail = LSTMHealthDetail.model_validate(
        {**detail.model_dump(), "worst_envs": [worst.model_dump()], "env_counts": [2, 3]}
    )
    # Diagnostics with detail (compute_lstm_health(..., diagnostics=True, detail=True)).
    diagnostics = RecurrentDiagnostics(
        h_saturation_frac=0.25,
        c_saturation_frac=0.5,
        c_growth_ratio=0.75,
        dormant_frac=0.125,
        h_layer_saturation_frac=(0.25,),
        c_layer_saturation_frac=(0.5,),
        layer_dormant_frac=(0.125,),
    )
    health = LSTMHealthMetrics.model_validate(
        {**health.model_dump(), "diagnostics": diagnostics.model_dump()}
    )
    envelope = EventBase.model_validate(last[AnomalyDetected].model_dump(exclude={"payload"}))
    found: dict[str, Contract] = {
        type(c).__name__: c
        for c in (
            *last.values(),
            *(e.payload for e in last.values()),
            envelope,
            health,
            diagnostics,
            detail,
            HealthThresholds(),
            report,
            report.anomalies[0],
            worst,
            ReplayConsistency(
                max_abs_diff=0.5,
                dtype="float32",
                compared=8,
                mismatched=1,
                first_env=0,
                first_step=1,
                drift=0.2,
            ),
            stats,
            next(s for s in stats.subscribers if s.name == "fails"),
        )
    }
    return found


def wrong_values(field: str, sample: Any) -> list[Any]:
    """JSON values of a type the field does not take, given a value it does take."""
    values: list[Any] = [{"a": 1} if isinstance(sample, list) else [1]]
    if isinstance(sample, bool):
        values += [1, "true"]
    elif isinstance(sample, int):
        values += [1.5, 1.0, "1", True]
    elif isinstance(sample, float) or sample in NON_FINITE:
        values += ["1.5", "nan", True]
    elif isinstance(sample, str):
        values += ["not a time"] if field == "timestamp" else [True, 1]
    return values


def error_fields(exc: ValidationError, *, union: bool = False) -> set[object]:
    """The top-level fields the errors are about; through the event union (``parse_event``)
    the location starts with the event type, and a bad tag is about ``event_type``."""
    if not union:
        return {err["loc"][0] for err in exc.errors()}
    return {err["loc"][1] if err["loc"] else "event_type" for err in exc.errors()}


def json_readers(model: type[Contract]) -> list[tuple[Callable[[str], object], bool]]:
    """How a JSON line of this contract is read: its own class, and for an event the union."""
    readers: list[tuple[Callable[[str], object], bool]] = [(model.model_validate_json, False)]
    if model in EVENT_CLASSES:
        readers.append((parse_event, True))
    return readers


CONTRACTS = sorted(samples())


def test_every_contract_is_sampled() -> None:
    """The samples cover every contract exported by esper_telemetry.contracts."""
    import esper_telemetry.contracts as contracts

    exported = {
        name
        for name in contracts.__all__
        if isinstance(getattr(contracts, name), type)
        and issubclass(getattr(contracts, name), Contract)
    }
    assert exported == set(CONTRACTS)


@pytest.mark.parametrize("name", CONTRACTS)
def test_every_field_refuses_a_wrong_json_type_naming_the_field(name: str) -> None:
    """Each field, given JSON of another type, fails validation under its own name (an event
    read through parse_event too)."""
    model = type(samples()[name])
    data = json.loads(samples()[name].model_dump_json())
    misses = []
    for read, union in json_readers(model):
        for field in model.model_fields:
            for wrong in wrong_values(field, data[field]):
                try:
                    read(json.dumps({**data, field: wrong}))
                except ValidationError as exc:
                    if error_fields(exc, union=union) != {field} or field not in str(exc):
                        misses.append((union, field, wrong, str(exc)))
                else:
                    misses.append((union, field, wrong, "accepted"))
    assert misses == []


@pytest.mark.parametrize("name", CONTRACTS)
def test_every_field_refuses_a_wrong_python_type_naming_the_field(name: str) -> None:
    """Each field, given an arbitrary object, fails validation under its own name."""
    sample = samples()[name]
    model = type(sample)
    data = {field: getattr(sample, field) for field in model.model_fields}
    misses = []
    for field in model.model_fields:
        try:
            model.model_validate({**data, field: object()})
        except ValidationError as exc:
            if error_fields(exc) != {field} or field not in str(exc):
                misses.append((field, str(exc)))
        else:
            misses.append((field, "accepted"))
    assert misses == []


@pytest.mark.parametrize("name", CONTRACTS)
def test_an_unknown_field_is_refused_by_name(name: str) -> None:
    """A field the contract does not declare is an error naming it, not silently kept."""
    model = type(samples()[name])
    data = json.loads(samples()[name].model_dump_json())
    tag = (data["event_type"],) if model in EVENT_CLASSES else ()
    for read, union in json_readers(model):
        with pytest.raises(ValidationError, match="from_a_newer_version") as info:
            read(json.dumps({**data, "from_a_newer_version": 1}))
        assert [(e["loc"], e["type"]) for e in info.value.errors()] == [
            ((*(tag if union else ()), "from_a_newer_version"), "extra_forbidden")
        ]


@pytest.mark.parametrize("wrong", LEVEL_WRONG_VALUES, ids=repr)
def test_level_fields_refuse_bools_numeric_strings_and_floats(wrong: object) -> None:
    """A telemetry level is an int in JSON: true, "1" and 1.0 are not levels."""
    data = json.loads(samples()["AnomalyDetected"].model_dump_json())
    with pytest.raises(ValidationError) as info:
        parse_event(json.dumps({**data, "level": wrong}))
    assert [e["loc"] for e in info.value.errors()] == [("ANOMALY_DETECTED", "level")]
