"""User code written the documented way type-checks under mypy strict; misuse does not.

Each snippet is checked by mypy itself (its API, strict, with the pydantic plugin at its
default settings), in a scratch directory, the way a user's CI would check their trainer.
A payload of the wrong kind is pydantic's to refuse at run time (the plugin types
``__init__`` loosely by default); ``test_contracts`` covers that.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from mypy import api

ROOT = Path(__file__).parents[1]

GOOD = """
from esper_telemetry.contracts import (
    Anomaly, AnomalyDetected, AnomalyDetectedPayload, AnomalyType, PPOUpdateCompleted,
    PPOUpdatePayload, Severity, TelemetryEvent, health_status,
)
from esper_telemetry.hub import Backend, TelemetryHub


def on_update(event: PPOUpdateCompleted) -> None:
    print(event.payload.policy_loss)


class Alarm(Backend):
    def handle(self, event: TelemetryEvent) -> None:
        match event:
            case PPOUpdateCompleted(payload=p):
                health = p.health()
                if health is not None:
                    print(health_status(health).value)
            case AnomalyDetected(payload=p):
                print(p.anomaly.type.value)
            case _:
                pass


class OnlyUpdates:
    def handle(self, event: PPOUpdateCompleted) -> None:
        print(dict(event.payload.extra))


with TelemetryHub("typed") as hub:
    hub.subscribe(Alarm(), mode="inline")
    hub.subscribe(on_update, events=PPOUpdateCompleted)
    hub.subscribe(OnlyUpdates(), events=[PPOUpdateCompleted])
    hub.subscribe(print, events=["RUN_STARTED"])
    event: PPOUpdateCompleted = hub.emit(
        PPOUpdateCompleted(
            update=3, payload=PPOUpdatePayload(policy_loss=0.1, value_loss=0.2, entropy=0.7)
        )
    )
    hub.emit(
        AnomalyDetected(
            update=3,
            payload=AnomalyDetectedPayload(
                anomaly=Anomaly(
                    type=AnomalyType.LSTM_NAN,
                    severity=Severity.CRITICAL,
                    observed=float("nan"),
                    message="NaN",
                )
            ),
        )
    )
"""

#: Misuse mypy must reject, each with a code mypy reports for it.
BAD = {
    "calling the union, as before the event classes": (
        "from esper_telemetry.contracts import TelemetryEvent\nTelemetryEvent(update=0)\n",
        "operator",
    ),
    "a missing update": (
        "from esper_telemetry.contracts import PPOUpdateCompleted, PPOUpdatePayload\n"
        "PPOUpdateCompleted(payload=PPOUpdatePayload(policy_loss=0, value_loss=0, entropy=0))\n",
        "call-arg",
    ),
    "writing into extra": (
        "from esper_telemetry.contracts import PPOUpdatePayload\n"
        "p = PPOUpdatePayload(policy_loss=0, value_loss=0, entropy=0)\n"
        'p.extra["fps"] = 1.0\n',
        "index",
    ),
    "a handler for one class subscribed to another": (
        "from esper_telemetry.contracts import AnomalyDetected, PPOUpdateCompleted\n"
        "from esper_telemetry.hub import TelemetryHub\n"
        "def on_update(event: PPOUpdateCompleted) -> None: ...\n"
        "TelemetryHub('x').subscribe(on_update, events=AnomalyDetected)\n",
        "arg-type",
    ),
}


def _mypy(tmp_path: Path, code: str) -> tuple[int, str]:
    target = tmp_path / "user_code.py"
    target.write_text(textwrap.dedent(code), encoding="utf-8")
    out, err, status = api.run(
        [
            "--strict",
            "--no-error-summary",
            "--show-error-codes",
            "--config-file",
            str(ROOT / "pyproject.toml"),
            "--cache-dir",
            str(tmp_path.parent / "mypy-cache"),
            str(target),
        ]
    )
    return status, out + err


def test_documented_user_code_type_checks(tmp_path: Path) -> None:
    """Building events, matching on classes and typed subscriptions pass mypy strict."""
    status, output = _mypy(tmp_path, GOOD)
    assert (status, output) == (0, "")


@pytest.mark.parametrize("case", sorted(BAD))
def test_misuse_is_a_type_error(tmp_path: Path, case: str) -> None:
    """Each kind of misuse is reported by mypy with its own error code."""
    code, error_code = BAD[case]
    status, output = _mypy(tmp_path, code)
    assert (status, f"[{error_code}]" in output) == (1, True), output
