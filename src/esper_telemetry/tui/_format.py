"""How the panel writes verdicts and draws sparklines, in the shared spelling and colours.

Numbers are written by :func:`esper_telemetry.contracts.format_value` and verdicts are
coloured by :data:`esper_telemetry.contracts.STATUS_COLOUR` (in bold where the verdict
is a word); this module only turns them into Rich text. A status is always a word with
a colour, never a colour alone.
"""

from __future__ import annotations

import math
from typing import Final

from rich.text import Text

from esper_telemetry.contracts import STATUS_COLOUR, HealthStatus, HealthThresholds

_SPARK_BLOCKS: Final = "▁▂▃▄▅▆▇█"


def status_style(status: HealthStatus, *, bold: bool = True) -> str:
    """The Rich style of ``status``: its colour from ``STATUS_COLOUR``, bold by default.

    >>> status_style(HealthStatus.WARNING), status_style(HealthStatus.WARNING, bold=False)
    ('bold yellow', 'yellow')
    """
    colour = STATUS_COLOUR[status]
    return f"bold {colour}" if bold else colour


def status_text(status: HealthStatus) -> Text:
    """The status word in its colour."""
    return Text(status.value, style=status_style(status))


def sparkline(values: list[float], thresholds: HealthThresholds) -> Text:
    """One bar per value on a log scale, each coloured by its own verdict.

    The verdict on a bar is :meth:`HealthThresholds.status` of that one RMS value.
    Non-finite values are drawn as a bold red "×"; zero (a vanished state) as the
    lowest bar.

    >>> t = HealthThresholds()
    >>> sparkline([0.1, 1.0, 10.0, float("nan")], t).plain
    '▁▅█×'
    """
    logs = [math.log10(v) for v in values if math.isfinite(v) and v > 0]
    lo, hi = (min(logs), max(logs)) if logs else (0.0, 0.0)
    out = Text()
    for v in values:
        status = thresholds.status(v)
        if not math.isfinite(v):
            out.append("×", style=status_style(status))
            continue
        if v <= 0 or hi == lo:
            index = 0 if v <= 0 or not logs else len(_SPARK_BLOCKS) // 2
        else:
            index = round((math.log10(v) - lo) / (hi - lo) * (len(_SPARK_BLOCKS) - 1))
        out.append(_SPARK_BLOCKS[index], style=status_style(status, bold=False))
    return out
