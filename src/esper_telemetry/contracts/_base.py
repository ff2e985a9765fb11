"""The model configuration and field types every contract shares."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, Strict

from esper_telemetry.contracts.levels import TelemetryLevel

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
        return float(value)
    return value  # pydantic reports the wrong type


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

#: A float for settings (thresholds): refuses bools and strings; constraints apply to it.
StrictFloat = Annotated[float, Strict()]
#: An int that refuses bools, floats and strings.
Int = Annotated[int, Strict()]
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
    )
