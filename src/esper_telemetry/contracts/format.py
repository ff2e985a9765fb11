"""How esper writes a number for a person: one spelling for the panel, report and console.

Three decimals, scientific notation when tiny or huge, and non-finite values exactly as
Python spells them ("nan", "inf", "-inf"): an exploded state must read as exploded,
never as a rounded number.
"""

from __future__ import annotations

import math


def format_value(x: float | None) -> str:
    """A number as esper shows it to a person.

    >>> [format_value(v) for v in (0.12345, 12.0, 0.0, 2.5e-7, 3.2e6)]
    ['0.123', '12.000', '0.000', '2.500e-07', '3.200e+06']
    >>> [format_value(v) for v in (float("nan"), float("inf"), -float("inf"), None)]
    ['nan', 'inf', '-inf', '—']
    """
    if x is None:
        return "—"
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if x != 0 and (abs(x) < 1e-3 or abs(x) >= 1e4):
        return f"{x:.3e}"
    return f"{x:.3f}"


def json_float_text(x: float) -> str:
    """A float as strict JSON data spells it: ``repr`` or "NaN", "Infinity", "-Infinity".

    >>> [json_float_text(v) for v in (0.1, float("nan"), float("-inf"))]
    ['0.1', 'NaN', '-Infinity']
    """
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "Infinity" if x > 0 else "-Infinity"
    return repr(x)
