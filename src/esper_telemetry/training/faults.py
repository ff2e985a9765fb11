"""The demo faults of the reference trainer, and how the command line spells them.

A fault (``PPOConfig.fault``) really corrupts the actor's carried LSTM state at one
update, so detection, escalation and alerts can be watched on a real run. Needs no
torch: ``esper --help`` imports this.
"""

from __future__ import annotations

import re
from typing import Literal

FaultKind = Literal["nan", "inf", "explode", "vanish"]
#: The fault kinds, in the order the help text lists them.
FAULT_KINDS: tuple[FaultKind, ...] = ("nan", "inf", "explode", "vanish")

_UPDATE = re.compile(r"[0-9]{1,18}")


def parse_fault(text: str) -> tuple[FaultKind, int]:
    """Read ``KIND@UPDATE`` (``"nan@3"``) into ``(kind, update)``.

    Raises:
        ValueError: ``text`` is not a known kind, ``@`` and an int >= 0 written in
            ASCII digits (at most 18 of them); the message says what is expected.

    >>> parse_fault("explode@12")
    ('explode', 12)
    """
    kind, sep, at = text.partition("@")
    for known in FAULT_KINDS:
        # ASCII digits only: str.isdigit() accepts "²", which int() refuses.
        if kind == known and sep and _UPDATE.fullmatch(at):
            return known, int(at)
    raise ValueError(
        f"expected KIND@UPDATE with KIND one of {', '.join(FAULT_KINDS)} and UPDATE an "
        f"int >= 0 (e.g. nan@3), got {text[:40]!r}{'...' if len(text) > 40 else ''}"
    )
