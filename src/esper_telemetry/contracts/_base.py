"""The model configuration and field types every contract shares."""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Callable, Iterator, Mapping
from typing import Annotated, Any, Final, TypeVar, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    SerializerFunctionWrapHandler,
    Strict,
    WithJsonSchema,
)
from pydantic_core import core_schema

from esper_telemetry.contracts.levels import TelemetryLevel

M = TypeVar("M", bound=BaseModel)
K = TypeVar("K")
V = TypeVar("V")

_NON_FINITE_JSON = {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}


def _real_number(value: Any) -> Any:
    # Lax pydantic would turn True into 1.0 and "1.5" into 1.5; a typo'd metric must fail
    # instead. The three strings are how strict JSON spells NaN and ±Inf (see Contract).
    if isinstance(value, bool):
        raise ValueError(f"expected a real number, got a bool ({value!r})")
    if isinstance(value, str):
        if value in _NON_FINITE_JSON:
            return _NON_FINITE_JSON[value]
        raise ValueError(f"expected a real number, got a string ({value!r})")
    if isinstance(value, numbers.Real):
        try:
            return float(value)
        except OverflowError:  # an int or Fraction beyond ±1.8e308: not a ValidationError
            raise ValueError(f"{_short(value)} does not fit in a float") from None
    return value  # pydantic reports the wrong type


def _short(value: object) -> str:
    """``repr(value)`` cut to 40 characters (a huge int's repr may even refuse to print)."""
    if isinstance(value, int) and abs(value) >= 10**40:
        return f"an int of {value.bit_length()} bits"
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:37]}..."


def _not_negative(value: float) -> float:
    # NaN and +Inf pass: they are data (a broken state), shown and stored as such.
    if value < 0:
        raise ValueError(f"must be >= 0 (NaN and +Infinity are kept as data), got {value!r}")
    return value


#: A float that refuses bools and numeric strings but reads "NaN"/"Infinity"/"-Infinity".
#: The strict member takes the common case (a float or int) at pydantic-core speed; the
#: second one only runs for what the first rejects.
Float = Annotated[
    Annotated[float, Strict()] | Annotated[float, BeforeValidator(_real_number)],
    Field(union_mode="left_to_right"),
]


def _level_number(value: Any) -> Any:
    # An IntEnum field would take True, "1" and 1.0 as levels; only ints are levels.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected a telemetry level (an int 0-3), got {value!r}")
    return value


#: A telemetry level: a TelemetryLevel or its int value, nothing else.
Level = Annotated[TelemetryLevel, BeforeValidator(_level_number)]

#: A Float that cannot be negative: a norm, an RMS, a largest |x|, a duration. NaN and
#: +Infinity are allowed (a broken state is data); a negative number and -Infinity are not.
#: As with Float, pydantic-core's own check takes the common case (a number >= 0); NaN,
#: the JSON strings and what it refuses go on to the Python validators.
NonNegativeFloat = Annotated[
    Annotated[float, Strict(), Field(ge=0)]
    | Annotated[float, BeforeValidator(_real_number), AfterValidator(_not_negative)],
    Field(union_mode="left_to_right"),
    WithJsonSchema({"type": "number", "minimum": 0}),
]

#: A float for settings (thresholds): refuses bools and strings; constraints apply to it.
StrictFloat = Annotated[float, Strict()]

#: The range of a signed 64-bit integer: what DuckDB's BIGINT, Arrow and Parquet hold.
INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1

#: An int that refuses bools, floats, strings, and anything outside int64: a log line
#: holding a bigger one would make the whole run unloadable into DuckDB or Arrow.
#: Narrow it in the type (``Annotated[Int, Field(ge=0)]``, as ``NonNegativeInt`` does),
#: never in the field's own ``Field(ge=...)``: pydantic lets the type's bounds win.
Int = Annotated[int, Strict(), Field(ge=INT64_MIN, le=INT64_MAX)]
#: An Int >= 0: an update number, a rank, a count, an index.
NonNegativeInt = Annotated[Int, Field(ge=0)]
#: A bool that refuses 0/1 and "true".
Bool = Annotated[bool, Strict()]
#: A str that refuses numbers.
Str = Annotated[str, Strict()]


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float, at any depth, spelled as strict JSON spells it.

    NaN, +Inf and -Inf become "NaN", "Infinity" and "-Infinity" (the contracts' own
    spelling); mappings and sequences are copied with their items converted; anything
    else is returned as it is.

    >>> json_safe({"a": float("nan"), "b": [1.0, float("-inf")]})
    {'a': 'NaN', 'b': [1.0, '-Infinity']}
    """
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, Mapping):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


class Contract(BaseModel):
    """Base of every contract: frozen, closed to unknown fields, strict JSON.

    ``ser_json_inf_nan="strings"`` writes NaN and ±Inf as "NaN", "Infinity" and
    "-Infinity": the output is strict JSON and validates back to the same floats.
    """

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        ser_json_inf_nan="strings",
        # Validators are built on first use, not at import: importing the contracts
        # (and so ``esper --help``) stays cheap.
        defer_build=True,
    )


class FrozenDict(Mapping[K, V]):
    """A read-only mapping: what a frozen contract holds where it holds a dict.

    Reads like a dict (``d[k]``, ``d.get``, iteration, ``dict(d)``, ``==`` with a dict);
    offers no way to change it, so one subscriber can never rewrite what another sees.
    As a pydantic field type (``FrozenDict[str, float]``) it validates like the dict of
    the same types and serialises as one.

    >>> d = FrozenDict({"lr": 0.001})
    >>> d["lr"], d == {"lr": 0.001}
    (0.001, True)
    >>> d["lr"] = 1.0
    Traceback (most recent call last):
    ...
    TypeError: 'FrozenDict' object does not support item assignment
    """

    __slots__ = ("_data",)

    def __init__(self, data: Mapping[K, V] | None = None) -> None:
        self._data: dict[K, V] = dict(data) if data is not None else {}

    def __getitem__(self, key: K) -> V:
        return self._data[key]

    def __iter__(self) -> Iterator[K]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"FrozenDict({self._data!r})"

    def __reduce__(self) -> tuple[type[FrozenDict[K, V]], tuple[dict[K, V]]]:
        return (type(self), (self._data,))

    def to_dict(self) -> dict[K, Any]:
        """A plain, mutable copy: dicts and lists at every depth (tuples become lists)."""
        plain: dict[K, Any] = _thaw(self)
        return plain

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        key, value = get_args(source) or (Any, Any)
        as_dict = handler.generate_schema(dict[key, value])  # type: ignore[valid-type]
        return core_schema.no_info_after_validator_function(
            _freeze,
            as_dict,
            serialization=core_schema.wrap_serializer_function_ser_schema(
                _serialize_frozen, schema=as_dict
            ),
        )


def _freeze(value: Any) -> Any:
    """``value`` with every mapping, at any depth, made a FrozenDict and every list a tuple."""
    if isinstance(value, Mapping):
        return FrozenDict({k: _freeze(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    return value


def _thaw(value: Any) -> Any:
    """The inverse of ``_freeze`` for serialisation: plain dicts and lists."""
    if isinstance(value, Mapping):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value


def _serialize_frozen(value: Any, handler: SerializerFunctionWrapHandler) -> Any:
    return handler(_thaw(value))


#: Validates as ``dict[str, float]`` and holds the result read-only.
FrozenFloats = FrozenDict[Str, Float]


class Redact:
    """Marks a contract field whose free text may carry a secret (``Annotated[str, Redact()]``).

    The hub redacts every marked field (see :func:`redact_marked`) before any subscriber
    sees an event; a new payload field is covered by marking it, not by editing the hub.
    """

    def __repr__(self) -> str:
        return "Redact()"


#: Free text a person or a subscriber fills in; redacted by the hub.
SecretText = Annotated[Str, Redact()]


def redact_marked(model: M, redact: Callable[[Any], Any]) -> M:
    """``model`` with ``redact`` applied to every field marked :class:`Redact`, at any depth.

    Sub-models are walked when their class holds a marked field somewhere; a model with
    nothing marked is returned as it is (the same object, at no cost).
    """
    plan = _redaction_plan(type(model))
    if not plan:
        return model
    changes: dict[str, Any] = {}
    for name, marked in plan:
        value = getattr(model, name)
        if marked:
            changes[name] = (
                _freeze(redact(_thaw(value))) if isinstance(value, Mapping) else redact(value)
            )
        elif isinstance(value, BaseModel):
            redacted = redact_marked(value, redact)
            if redacted is not value:
                changes[name] = redacted
        elif isinstance(value, tuple):
            items = tuple(
                redact_marked(v, redact) if isinstance(v, BaseModel) else v for v in value
            )
            if any(a is not b for a, b in zip(items, value, strict=True)):
                changes[name] = items
    return model.model_copy(update=changes) if changes else model


@functools.cache
def _redaction_plan(cls: type[BaseModel]) -> tuple[tuple[str, bool], ...]:
    """(field, marked) pairs: marked fields, then fields holding models with marks inside."""
    plan: list[tuple[str, bool]] = []
    for name, info in cls.model_fields.items():
        if any(isinstance(m, Redact) for m in info.metadata):
            plan.append((name, True))
        elif any(_redaction_plan(sub) for sub in _models_in(info.annotation)):
            plan.append((name, False))
    return tuple(plan)


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in get_args(annotation) for m in _models_in(arg)]
