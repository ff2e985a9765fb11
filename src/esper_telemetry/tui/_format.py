"""How the panel writes numbers and verdicts: one spelling, one colour per status.

Values are written with 3 decimals, in scientific notation when tiny or huge, and
non-finite values exactly as Python spells them ("nan", "inf", "-inf"): an exploded
state must read as exploded, never as a rounded number. A status is always a word
with a colour, never a colour alone.
"""

from __future__ import annotations

import math
from typing import Final, Literal

from rich.text import Text

from esper_telemetry.contracts import (
    HealthStatus,
    HealthThresholds,
    LSTMHealthMetrics,
    health_status,
)

#: The colour of each status (the word is always shown with it).
STATUS_STYLE: Final[dict[HealthStatus, str]] = {
    HealthStatus.HEALTHY: "bold green",
    HealthStatus.WARNING: "bold yellow",
    HealthStatus.CRITICAL: "bold red",
}

_SPARK_BLOCKS: Final = "▁▂▃▄▅▆▇█"


def format_value(x: float | None) -> str:
    """A number as the panel shows it: 3 decimals, scientific when tiny or huge.

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


def status_text(status: HealthStatus) -> Text:
    """The status word in its colour."""
    return Text(status.value, style=STATUS_STYLE[status])


def tensor_status(
    metrics: LSTMHealthMetrics, which: Literal["h", "c"], thresholds: HealthThresholds
) -> HealthStatus:
    """The verdict on ``h`` or ``c`` alone, by the one rule (:func:`health_status`).

    The rule judges a whole state; the verdict on one tensor is the rule applied to a
    state whose two halves both look like that tensor. Its NaN and Inf flags come from
    that tensor's own numbers (max |x| carries them: NaN propagates through it).
    """
    l2 = getattr(metrics, f"{which}_l2_total")
    rms = getattr(metrics, f"{which}_rms")
    env_mean = getattr(metrics, f"{which}_env_rms_mean")
    env_max = getattr(metrics, f"{which}_env_rms_max")
    top = getattr(metrics, f"{which}_max")
    numbers = (l2, rms, env_mean, env_max, top)
    mirrored = LSTMHealthMetrics(
        h_l2_total=l2,
        c_l2_total=l2,
        h_rms=rms,
        c_rms=rms,
        h_env_rms_mean=env_mean,
        h_env_rms_max=env_max,
        c_env_rms_mean=env_mean,
        c_env_rms_max=env_max,
        h_max=top,
        c_max=top,
        has_nan=any(math.isnan(v) for v in numbers),
        has_inf=math.isinf(top),
    )
    return health_status(mirrored, thresholds)


def rms_status(value: float, thresholds: HealthThresholds) -> HealthStatus:
    """The verdict on one RMS value by itself (colours one bar of a sparkline)."""
    if not math.isfinite(value) or thresholds.is_exploding(value, value):
        return HealthStatus.CRITICAL
    if thresholds.is_vanishing(value):
        return HealthStatus.CRITICAL
    if thresholds.is_warning(value):
        return HealthStatus.WARNING
    return HealthStatus.HEALTHY


def sparkline(values: list[float], thresholds: HealthThresholds) -> Text:
    """One bar per value on a log scale, each coloured by its own verdict.

    Non-finite values are drawn as a red "×"; zero (a vanished state) as the lowest bar.

    >>> t = HealthThresholds()
    >>> sparkline([0.1, 1.0, 10.0, float("nan")], t).plain
    '▁▅█×'
    """
    logs = [math.log10(v) for v in values if math.isfinite(v) and v > 0]
    lo, hi = (min(logs), max(logs)) if logs else (0.0, 0.0)
    out = Text()
    for v in values:
        style = STATUS_STYLE[rms_status(v, thresholds)]
        if not math.isfinite(v):
            out.append("×", style=style)
            continue
        if v <= 0 or hi == lo:
            index = 0 if v <= 0 or not logs else len(_SPARK_BLOCKS) // 2
        else:
            index = round((math.log10(v) - lo) / (hi - lo) * (len(_SPARK_BLOCKS) - 1))
        out.append(_SPARK_BLOCKS[index], style=style.replace("bold ", ""))
    return out
