"""The event envelope and one payload model per event type.

A :class:`TelemetryEvent` carries exactly one payload, and the payload's model is
fixed by ``event_type``: a PPO-update payload can only travel as
``PPO_UPDATE_COMPLETED``. Reading JSON back picks the payload model from
``event_type`` (a discriminated union keyed on the envelope).

>>> from esper_telemetry.contracts import PPOUpdatePayload, TelemetryEvent
>>> e = TelemetryEvent(update=3, payload=PPOUpdatePayload(
...     policy_loss=0.1, value_loss=float("nan"), entropy=0.6))
>>> e.event_type
<EventType.PPO_UPDATE_COMPLETED: 'PPO_UPDATE_COMPLETED'>
>>> text = e.model_dump_json()
>>> '"value_loss":"NaN"' in text
True
>>> TelemetryEvent.model_validate_json(text).payload.value_loss
nan
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BeforeValidator, Field, JsonValue, ValidationError, model_validator
from pydantic_core import InitErrorDetails

from esper_telemetry.contracts._base import Bool, Contract, Float, Int, Level, Str, json_safe
from esper_telemetry.contracts.anomaly import AnomalyType, Severity
from esper_telemetry.contracts.health import LSTMHealthDetail, LSTMHealthMetrics
from esper_telemetry.contracts.levels import TelemetryLevel
from esper_telemetry.contracts.stats import HubStats

#: Bumped when a change to a contract would make old readers misread new events.
SCHEMA_VERSION = 1


class EventType(StrEnum):
    """Kinds of telemetry event; each has its own payload model."""

    RUN_STARTED = "RUN_STARTED"
    PPO_UPDATE_COMPLETED = "PPO_UPDATE_COMPLETED"
    ANOMALY_DETECTED = "ANOMALY_DETECTED"
    TELEMETRY_LEVEL_CHANGED = "TELEMETRY_LEVEL_CHANGED"
    RUN_FINISHED = "RUN_FINISHED"


class RunStartedPayload(Contract):
    """A run begins: its configuration, for W&B's config and the analytics log."""

    event_type: ClassVar[EventType] = EventType.RUN_STARTED

    config: Annotated[dict[Str, JsonValue], BeforeValidator(json_safe)] = Field(
        default_factory=dict,
        # JsonValue cannot tell a float written as "Infinity" from a string, so non-finite
        # floats are stored as those strings up front: the config then round-trips exactly.
        description=(
            "The run's configuration (JSON values). Non-finite floats are stored as the "
            'strings "NaN", "Infinity", "-Infinity", so a config reads back as it was stored.'
        ),
    )
    description: Str = Field(default="", description="Free text shown next to the run.")


class PPOUpdatePayload(Contract):
    """Statistics of one PPO update and the health of the LSTM state it ended with.

    The 12 ``lstm_*`` fields are None when the policy has no LSTM.
    """

    event_type: ClassVar[EventType] = EventType.PPO_UPDATE_COMPLETED

    policy_loss: Float = Field(description="Clipped surrogate policy loss.")
    value_loss: Float = Field(description="Value-function loss.")
    entropy: Float = Field(description="Mean policy entropy.")
    approx_kl: Float | None = Field(default=None, description="Approximate KL(old || new).")
    clip_fraction: Float | None = Field(
        default=None, description="Fraction of samples whose ratio was clipped."
    )
    explained_variance: Float | None = Field(
        default=None, description="Explained variance of the value predictions."
    )
    grad_norm: Float | None = Field(default=None, description="Gradient norm before clipping.")
    learning_rate: Float | None = Field(default=None, description="Learning rate used.")
    env_steps: Int | None = Field(
        default=None, ge=0, description="Environment steps taken so far, all envs together."
    )
    lstm_h_l2_total: Float | None = Field(default=None, description="L2 norm of h.")
    lstm_c_l2_total: Float | None = Field(default=None, description="L2 norm of c.")
    lstm_h_rms: Float | None = Field(default=None, description="RMS of h.")
    lstm_c_rms: Float | None = Field(default=None, description="RMS of c.")
    lstm_h_env_rms_mean: Float | None = Field(default=None, description="Mean per-env RMS of h.")
    lstm_h_env_rms_max: Float | None = Field(default=None, description="Max per-env RMS of h.")
    lstm_c_env_rms_mean: Float | None = Field(default=None, description="Mean per-env RMS of c.")
    lstm_c_env_rms_max: Float | None = Field(default=None, description="Max per-env RMS of c.")
    lstm_h_max: Float | None = Field(default=None, description="Largest |h|.")
    lstm_c_max: Float | None = Field(default=None, description="Largest |c|.")
    lstm_has_nan: Bool | None = Field(default=None, description="h or c holds a NaN.")
    lstm_has_inf: Bool | None = Field(default=None, description="h or c holds an Inf.")
    lstm_detail: LSTMHealthDetail | None = Field(
        default=None, description="Per-layer and per-env detail; only at DEBUG level."
    )
    lstm_outlier_envs: tuple[Int, ...] | None = Field(
        default=None, description="Envs whose RMS is non-finite or above warning_rms (DEBUG)."
    )
    extra: dict[Str, Float] = Field(
        default_factory=dict, description="The trainer's own scalars, by name."
    )

    def health(self) -> LSTMHealthMetrics | None:
        """The 12 ``lstm_*`` fields as ``LSTMHealthMetrics``; None when there is no LSTM."""
        values = {name: getattr(self, f"lstm_{name}") for name in LSTMHealthMetrics.model_fields}
        if any(v is None for v in values.values()):
            return None
        return LSTMHealthMetrics.model_validate(values)


class AnomalyDetectedPayload(Contract):
    """An anomaly in the LSTM state of the update named by the envelope."""

    event_type: ClassVar[EventType] = EventType.ANOMALY_DETECTED

    anomaly_type: AnomalyType = Field(description="Kind of anomaly.")
    severity: Severity = Field(description="How bad it is.")
    observed: Float = Field(description="The value seen.")
    threshold: Float | None = Field(default=None, description="The threshold crossed, if any.")
    message: Str = Field(description="One sentence for a person reading a log.")
    outlier_envs: tuple[Int, ...] | None = Field(
        default=None, description="Indices of the envs involved (DEBUG level only)."
    )


class TelemetryLevelChangedPayload(Contract):
    """The hub's telemetry level changed."""

    event_type: ClassVar[EventType] = EventType.TELEMETRY_LEVEL_CHANGED

    previous: Level = Field(description="Level before the change.")
    level: Level = Field(description="Level from now on.")
    reason: Str = Field(default="", description="Why it changed (e.g. the anomaly).")


class RunFinishedPayload(Contract):
    """A run ended: how, a summary, and what the hub delivered."""

    event_type: ClassVar[EventType] = EventType.RUN_FINISHED

    status: Literal["completed", "interrupted", "halted", "failed"] = Field(
        description="How the run ended."
    )
    message: Str = Field(default="", description="Why, when it did not complete.")
    summary: dict[Str, Float] = Field(default_factory=dict, description="Final scalars.")
    hub_stats: HubStats | None = Field(default=None, description="The hub's counters at the end.")


#: The PPO statistics of ``PPOUpdatePayload``, in field order; the first three are required.
PPO_STATISTICS: tuple[str, ...] = (
    "policy_loss",
    "value_loss",
    "entropy",
    "approx_kl",
    "clip_fraction",
    "explained_variance",
    "grad_norm",
    "learning_rate",
)
PPO_REQUIRED: tuple[str, ...] = PPO_STATISTICS[:3]

EventPayload = (
    RunStartedPayload
    | PPOUpdatePayload
    | AnomalyDetectedPayload
    | TelemetryLevelChangedPayload
    | RunFinishedPayload
)

PAYLOAD_MODELS: dict[EventType, type[Contract]] = {
    EventType.RUN_STARTED: RunStartedPayload,
    EventType.PPO_UPDATE_COMPLETED: PPOUpdatePayload,
    EventType.ANOMALY_DETECTED: AnomalyDetectedPayload,
    EventType.TELEMETRY_LEVEL_CHANGED: TelemetryLevelChangedPayload,
    EventType.RUN_FINISHED: RunFinishedPayload,
}


_EVENT_TYPE_OF = {model: et for et, model in PAYLOAD_MODELS.items()}


def _utc_now() -> datetime:
    return datetime.now(UTC)


class TelemetryEvent(Contract):
    """The envelope every event travels in.

    Build one from a payload and an update index; ``event_type`` follows from the
    payload. The hub stamps ``run_id``, ``seq``, ``rank`` and ``level`` when it emits
    the event, so leave them at their defaults.
    """

    event_type: EventType = Field(description="Kind of event; fixes the payload model.")
    schema_version: Int = Field(default=SCHEMA_VERSION, ge=1, description="Contract version.")
    run_id: Str = Field(default="", description="The run (stamped by the hub).")
    seq: Int = Field(
        default=-1, ge=-1, description="Hub-assigned, strictly increasing; -1 before emit."
    )
    update: Int = Field(ge=0, description="PPO update index: the x-axis of every backend.")
    timestamp: datetime = Field(default_factory=_utc_now, description="When it was built (UTC).")
    rank: Int = Field(default=0, ge=0, description="Process rank that emitted it.")
    level: Level = Field(
        default=TelemetryLevel.NORMAL, description="Hub level when emitted (stamped by the hub)."
    )
    payload: EventPayload = Field(description="The typed payload for event_type.")

    @model_validator(mode="before")
    @classmethod
    def _payload_for_event_type(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        payload = data.get("payload")
        raw_type = data.get("event_type")
        if raw_type is None:
            inferred = _EVENT_TYPE_OF.get(type(payload)) if isinstance(payload, Contract) else None
            if inferred is not None:
                return {**data, "event_type": inferred}
            if isinstance(payload, dict):
                raise ValueError("event_type is required when the payload is given as a mapping")
            return data
        try:
            event_type = EventType(raw_type)
        except ValueError:
            return data  # the field validator reports the bad event_type
        model = PAYLOAD_MODELS[event_type]
        if isinstance(payload, Contract):
            if type(payload) is not model:
                raise ValueError(
                    f"payload: a {type(payload).__name__} cannot travel as {event_type.value}; "
                    f"that event type carries {model.__name__}"
                )
            return data
        if isinstance(payload, dict):
            try:
                return {**data, "payload": model.model_validate(payload)}
            except ValidationError as exc:
                # Report the payload's errors under "payload.<field>", as a nested model would.
                details: list[InitErrorDetails] = [
                    {
                        "type": err["type"],
                        "loc": ("payload", *err["loc"]),
                        "input": err["input"],
                        "ctx": err.get("ctx", {}),
                    }
                    for err in exc.errors()
                ]
                raise ValidationError.from_exception_data(cls.__name__, details) from None
        return data

    @model_validator(mode="after")
    def _payload_matches(self) -> TelemetryEvent:
        expected = PAYLOAD_MODELS[self.event_type]
        if type(self.payload) is not expected:
            raise ValueError(
                f"payload: a {type(self.payload).__name__} cannot travel as "
                f"{self.event_type.value}; that event type carries {expected.__name__}"
            )
        return self
