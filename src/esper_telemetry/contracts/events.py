"""The events: one frozen model per kind, sharing one envelope.

Every event has the envelope fields of :class:`EventBase` (``run_id``, ``seq``,
``update``, ``timestamp``, ``rank``, ``level``, ``schema_version``), an ``event_type``
fixed by its class, and a typed ``payload``:

==========================  =============================  ==============================
class                       ``event_type``                 payload
==========================  =============================  ==============================
:class:`RunStarted`         ``RUN_STARTED``                :class:`RunStartedPayload`
:class:`PPOUpdateCompleted` ``PPO_UPDATE_COMPLETED``       :class:`PPOUpdatePayload`
:class:`AnomalyDetected`    ``ANOMALY_DETECTED``           :class:`AnomalyDetectedPayload`
:class:`TelemetryLevelChanged` ``TELEMETRY_LEVEL_CHANGED`` :class:`TelemetryLevelChangedPayload`
:class:`RunFinished`        ``RUN_FINISHED``               :class:`RunFinishedPayload`
==========================  =============================  ==============================

:data:`TelemetryEvent` is their union, discriminated by ``event_type``; :func:`parse_event`
reads one back from JSON. A consumer matches on the class::

    match event:
        case PPOUpdateCompleted(payload=p): ...
        case AnomalyDetected(payload=p): ...

>>> e = PPOUpdateCompleted(update=3, payload=PPOUpdatePayload(
...     policy_loss=0.1, value_loss=float("nan"), entropy=0.6))
>>> e.event_type
<EventType.PPO_UPDATE_COMPLETED: 'PPO_UPDATE_COMPLETED'>
>>> text = e.model_dump_json()
>>> '"value_loss":"NaN"' in text
True
>>> parse_event(text).payload.value_loss
nan
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal, Self

from pydantic import (
    BeforeValidator,
    ConfigDict,
    Field,
    JsonValue,
    TypeAdapter,
    model_validator,
)

from esper_telemetry.contracts._base import (
    Bool,
    Contract,
    Float,
    FrozenDict,
    FrozenFloats,
    Int,
    Level,
    NonNegativeFloat,
    NonNegativeInt,
    Redact,
    SecretText,
    Str,
    json_safe,
)
from esper_telemetry.contracts.anomaly import Anomaly
from esper_telemetry.contracts.health import (
    DEFAULT_STATE,
    HealthScope,
    LSTMHealthDetail,
    LSTMHealthMetrics,
    StateName,
)
from esper_telemetry.contracts.levels import TelemetryLevel
from esper_telemetry.contracts.replay import ReplayConsistency
from esper_telemetry.contracts.stats import HubStats

#: Bumped when a change to a contract would make old readers misread new events.
#: 2: the anomaly payload holds the ``Anomaly`` itself (version-1 lines still read).
#: 3: named recurrent states (``recurrent_health``, ``Anomaly.state``), states without a
#: cell (GRU: ``c_*`` None), declared episode returns. Older lines still read.
SCHEMA_VERSION = 3


class EventType(StrEnum):
    """Kinds of telemetry event; each has its own event class and payload model."""

    RUN_STARTED = "RUN_STARTED"
    PPO_UPDATE_COMPLETED = "PPO_UPDATE_COMPLETED"
    ANOMALY_DETECTED = "ANOMALY_DETECTED"
    TELEMETRY_LEVEL_CHANGED = "TELEMETRY_LEVEL_CHANGED"
    RUN_FINISHED = "RUN_FINISHED"


# ---------------------------------------------------------------------------- payloads

#: A run's configuration: JSON values, held read-only. Non-finite floats are stored as
#: the strings "NaN", "Infinity", "-Infinity" (JsonValue cannot tell such a float from a
#: string), so a config reads back exactly as it was stored.
_Config = Annotated[FrozenDict[Str, JsonValue], BeforeValidator(json_safe), Redact()]


class RunStartedPayload(Contract):
    """A run begins: its configuration, for W&B's config and the analytics log."""

    config: _Config = Field(
        default_factory=FrozenDict,
        description="The run's configuration (JSON values, read-only; secrets redacted).",
    )
    description: SecretText = Field(default="", description="Free text shown next to the run.")


class PPOUpdatePayload(Contract):
    """Statistics of one PPO update and the health of the recurrent states it ended with.

    ``recurrent_health`` holds every named state (``policy`` and ``value`` for an actor
    and a critic with an LSTM each, or one per module that ``track`` found); the 12 flat
    ``lstm_*`` fields repeat the figures of one of them, the primary state named by
    ``primary_state`` (the policy's), so readers of the original record keep working.
    The flat fields are None when the policy has no recurrent layer, and the ``lstm_c_*``
    ones when the primary state has no cell (a GRU or RNN).

    Building a payload with ``recurrent_health`` and ``primary_state`` fills the flat
    fields from the primary state; flat fields given as well must agree with it.
    """

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
    grad_norm: NonNegativeFloat | None = Field(
        default=None, description="Gradient norm before clipping."
    )
    learning_rate: Float | None = Field(default=None, description="Learning rate used.")
    env_steps: NonNegativeInt | None = Field(
        default=None, description="Environment steps taken so far, all envs together."
    )
    lstm_h_l2_total: NonNegativeFloat | None = Field(default=None, description="L2 norm of h.")
    lstm_c_l2_total: NonNegativeFloat | None = Field(default=None, description="L2 norm of c.")
    lstm_h_rms: NonNegativeFloat | None = Field(default=None, description="RMS of h.")
    lstm_c_rms: NonNegativeFloat | None = Field(default=None, description="RMS of c.")
    lstm_h_env_rms_mean: NonNegativeFloat | None = Field(
        default=None, description="Mean per-env RMS of h."
    )
    lstm_h_env_rms_max: NonNegativeFloat | None = Field(
        default=None, description="Max per-env RMS of h."
    )
    lstm_c_env_rms_mean: NonNegativeFloat | None = Field(
        default=None, description="Mean per-env RMS of c."
    )
    lstm_c_env_rms_max: NonNegativeFloat | None = Field(
        default=None, description="Max per-env RMS of c."
    )
    lstm_h_max: NonNegativeFloat | None = Field(default=None, description="Largest |h|.")
    lstm_c_max: NonNegativeFloat | None = Field(default=None, description="Largest |c|.")
    lstm_has_nan: Bool | None = Field(default=None, description="h or c holds a NaN.")
    lstm_has_inf: Bool | None = Field(default=None, description="h or c holds an Inf.")
    lstm_detail: LSTMHealthDetail | None = Field(
        default=None,
        description="Per-layer and per-env detail: at DEBUG level, and on an unhealthy update.",
    )
    lstm_outlier_envs: tuple[NonNegativeInt, ...] | None = Field(
        default=None,
        description="Envs whose RMS is non-finite or above warning_rms (with lstm_detail).",
    )
    health_scope: HealthScope | None = Field(
        default=None,
        description="Whose states the lstm_* figures cover (LSTMHealthMetrics.scope): "
        "'process', 'all_ranks' (every rank of a process group) or 'this_rank' (one rank "
        "of a distributed run, measured alone). None in logs written before it existed.",
    )
    health_ranks: Annotated[Int, Field(ge=1)] | None = Field(
        default=None, description="How many processes' states the lstm_* figures cover."
    )
    primary_state: StateName | None = Field(
        default=None,
        description="The name, in recurrent_health, of the state the lstm_* fields repeat. "
        "None when there is no recurrent state, and in logs written before names existed.",
    )
    recurrent_health: FrozenDict[StateName, LSTMHealthMetrics] = Field(
        default_factory=FrozenDict,
        description="The health of every named recurrent state, the primary one included "
        "(read-only). Empty without a recurrent state, and in logs written before it existed "
        "(named_health() reads those too).",
    )
    recurrent_detail: FrozenDict[StateName, LSTMHealthDetail] = Field(
        default_factory=FrozenDict,
        description="Per-layer and per-env detail of the states other than the primary one "
        "(whose detail is lstm_detail), under the same rule: at DEBUG level, and for a state "
        "the thresholds call CRITICAL. Read it with detail_of(name).",
    )
    replay: FrozenDict[StateName, ReplayConsistency] = Field(
        default_factory=FrozenDict,
        description="Replay consistency of the named states whose training pass the trainer "
        "checked against its rollout (read-only): how exactly the update's first replay "
        "reproduced what the rollout saw, and how far the states drifted over the update. "
        "Empty when the trainer checks none.",
    )
    episode_return_mean: Float | None = Field(
        default=None,
        description="Mean undiscounted return of the last episode_return_window finished "
        "episodes (fewer early on; NaN before the first one). None when the trainer reports "
        "none.",
    )
    episode_return_window: Annotated[Int, Field(ge=1)] | None = Field(
        default=None,
        description="How many of the latest episodes episode_return_mean averages at most "
        "(20 for esper ppo, 100 for Stable-Baselines3's ep_info_buffer).",
    )
    extra: FrozenFloats = Field(
        default_factory=FrozenDict, description="The trainer's own scalars, by name (read-only)."
    )

    @model_validator(mode="before")
    @classmethod
    def _fill_primary(cls, data: Any) -> Any:
        # The flat fields of the primary state, from recurrent_health when left out.
        if not isinstance(data, Mapping) or "lstm_h_rms" in data:
            return data
        states, primary = data.get("recurrent_health"), data.get("primary_state")
        if not isinstance(states, Mapping) or not isinstance(primary, str):
            return data
        metrics = states.get(primary)
        if isinstance(metrics, Mapping):
            metrics = LSTMHealthMetrics.model_validate(metrics)
        if not isinstance(metrics, LSTMHealthMetrics):
            return data
        return {
            **data,
            **metrics.to_dict(),
            "health_scope": metrics.scope,
            "health_ranks": metrics.ranks,
        }

    @model_validator(mode="after")
    def _states_agree(self) -> Self:
        names = list(self.recurrent_health)
        if self.episode_return_mean is not None and self.episode_return_window is None:
            raise ValueError(
                "episode_return_mean needs episode_return_window: how many episodes it "
                "averages at most"
            )
        if not names:
            if self.primary_state is not None or self.recurrent_detail or self.replay:
                raise ValueError(
                    "primary_state, recurrent_detail and replay need recurrent_health, which "
                    "is empty"
                )
            return self
        unmeasured = [n for n in self.replay if n not in self.recurrent_health]
        if unmeasured:
            raise ValueError(
                f"replay names states {unmeasured} that recurrent_health does not hold "
                f"({names}): a replay is reported with the health of its state"
            )
        if self.primary_state is None or self.primary_state not in self.recurrent_health:
            raise ValueError(
                f"primary_state must name one of recurrent_health's states {names}, got "
                f"{self.primary_state!r}"
            )
        unknown = [n for n in self.recurrent_detail if n not in self.recurrent_health]
        if unknown or self.primary_state in self.recurrent_detail:
            raise ValueError(
                "recurrent_detail holds the detail of recurrent_health's states other than "
                f"the primary one ({self.primary_state!r}, whose detail is lstm_detail), got "
                f"{list(self.recurrent_detail)}"
            )
        if not _repeats(self, self.recurrent_health[self.primary_state]):
            raise ValueError(
                f"the lstm_* fields must repeat the figures of the primary state "
                f"{self.primary_state!r} in recurrent_health (leave them out to have them "
                "filled in)"
            )
        return self

    def health(self) -> LSTMHealthMetrics | None:
        """The 12 ``lstm_*`` fields as ``LSTMHealthMetrics`` (the primary state's).

        None when there is no recurrent state. A primary state without a cell (GRU)
        has its ``c_*`` figures None.
        """
        values: dict[str, object] = {
            name: getattr(self, f"lstm_{name}") for name in LSTMHealthMetrics.FIGURES
        }
        if any(values[name] is None for name in LSTMHealthMetrics.FIGURES if name[0] != "c"):
            return None
        if self.health_scope is not None:
            values["scope"] = self.health_scope
        if self.health_ranks is not None:
            values["ranks"] = self.health_ranks
        return LSTMHealthMetrics.model_validate(values)

    def named_health(self) -> Mapping[str, LSTMHealthMetrics]:
        """Every named state's health, the primary one first.

        ``recurrent_health`` when the event has it; for a log written before names
        existed, the flat fields under the name ``"policy"``; empty without a state.
        """
        if self.recurrent_health:
            first = self.primary_state
            assert first is not None  # checked by _states_agree
            return {first: self.recurrent_health[first], **self.recurrent_health}
        flat = self.health()
        return {} if flat is None else {DEFAULT_STATE: flat}

    def primary_name(self) -> str | None:
        """The primary state's name (``"policy"`` for logs from before names existed)."""
        if self.primary_state is not None:
            return self.primary_state
        return None if self.health() is None else DEFAULT_STATE

    def detail_of(self, name: str) -> LSTMHealthDetail | None:
        """The detail of the state ``name`` (``lstm_detail`` for the primary); None if absent."""
        if name == self.primary_name():
            return self.lstm_detail
        return self.recurrent_detail.get(name)


def _repeats(payload: PPOUpdatePayload, primary: LSTMHealthMetrics) -> bool:
    """True when the payload's flat fields hold exactly the figures of ``primary``."""

    def same(x: object, y: object) -> bool:
        # NaN is data: a NaN figure repeats a NaN figure.
        return x == y or (isinstance(x, float) and isinstance(y, float) and x != x and y != y)

    return (
        all(same(getattr(payload, _FLAT[n]), getattr(primary, n)) for n in primary.FIGURES)
        and payload.health_scope == primary.scope
        and payload.health_ranks == primary.ranks
    )


_FLAT = {name: f"lstm_{name}" for name in LSTMHealthMetrics.FIGURES}


def _anomaly_v1(data: Any) -> Any:
    # schema_version 1 spelled the anomaly's fields out flat in the payload.
    if isinstance(data, Mapping) and "anomaly" not in data and "anomaly_type" in data:
        flat = dict(data)
        anomaly = {
            "type": flat.pop("anomaly_type"),
            **{
                k: flat.pop(k)
                for k in ("severity", "observed", "threshold", "message")
                if k in flat
            },
        }
        return {**flat, "anomaly": anomaly}
    return data


class AnomalyDetectedPayload(Contract):
    """An anomaly in the LSTM state of the update named by the envelope."""

    anomaly: Anomaly = Field(description="What was found: type, severity, value, threshold.")
    outlier_envs: tuple[NonNegativeInt, ...] | None = Field(
        default=None, description="Indices of the envs involved (when the update had detail)."
    )

    @model_validator(mode="before")
    @classmethod
    def _read_v1(cls, data: Any) -> Any:
        return _anomaly_v1(data)


class TelemetryLevelChangedPayload(Contract):
    """The hub's telemetry level changed."""

    previous: Level = Field(description="Level before the change.")
    level: Level = Field(description="Level from now on.")
    reason: SecretText = Field(default="", description="Why it changed (e.g. the anomaly).")


class RunFinishedPayload(Contract):
    """A run ended: how, a summary, and what the hub delivered."""

    status: Literal["completed", "interrupted", "halted", "failed"] = Field(
        description="How the run ended."
    )
    message: SecretText = Field(default="", description="Why, when it did not complete.")
    summary: FrozenFloats = Field(
        default_factory=FrozenDict, description="Final scalars (read-only)."
    )
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


# ---------------------------------------------------------------------------- events


def _utc_now() -> datetime:
    return datetime.now(UTC)


class EventBase(Contract):
    """The envelope every event shares.

    The hub stamps ``run_id``, ``seq``, ``rank`` and ``level`` when it emits an event,
    so leave them at their defaults when you build one.
    """

    event_type: EventType = Field(description="Kind of event; fixed by the event's class.")
    schema_version: Annotated[Int, Field(ge=1)] = Field(
        default=SCHEMA_VERSION, description="Contract version."
    )
    run_id: Str = Field(default="", description="The run (stamped by the hub).")
    seq: Annotated[Int, Field(ge=-1)] = Field(
        default=-1, description="Hub-assigned, strictly increasing; -1 before emit."
    )
    update: NonNegativeInt = Field(description="PPO update index: the x-axis of every backend.")
    timestamp: datetime = Field(default_factory=_utc_now, description="When it was built (UTC).")
    rank: NonNegativeInt = Field(default=0, description="Process rank that emitted it.")
    level: Level = Field(
        default=TelemetryLevel.NORMAL, description="Hub level when emitted (stamped by the hub)."
    )


class RunStarted(EventBase):
    """A run begins (``RUN_STARTED``)."""

    event_type: Literal[EventType.RUN_STARTED] = EventType.RUN_STARTED
    payload: RunStartedPayload = Field(description="The run's configuration.")


class PPOUpdateCompleted(EventBase):
    """One PPO update finished (``PPO_UPDATE_COMPLETED``): statistics and LSTM health."""

    event_type: Literal[EventType.PPO_UPDATE_COMPLETED] = EventType.PPO_UPDATE_COMPLETED
    payload: PPOUpdatePayload = Field(description="Statistics and LSTM health of the update.")


class AnomalyDetected(EventBase):
    """An anomaly in the LSTM state of one update (``ANOMALY_DETECTED``)."""

    event_type: Literal[EventType.ANOMALY_DETECTED] = EventType.ANOMALY_DETECTED
    payload: AnomalyDetectedPayload = Field(description="The anomaly and the envs involved.")


class TelemetryLevelChanged(EventBase):
    """The hub's telemetry level changed (``TELEMETRY_LEVEL_CHANGED``)."""

    event_type: Literal[EventType.TELEMETRY_LEVEL_CHANGED] = EventType.TELEMETRY_LEVEL_CHANGED
    payload: TelemetryLevelChangedPayload = Field(description="The old and new level, and why.")


class RunFinished(EventBase):
    """A run ended (``RUN_FINISHED``)."""

    event_type: Literal[EventType.RUN_FINISHED] = EventType.RUN_FINISHED
    payload: RunFinishedPayload = Field(description="How it ended, a summary, the hub's counts.")


#: Every event class, in the order of :class:`EventType`.
EVENT_CLASSES: tuple[type[EventBase], ...] = (
    RunStarted,
    PPOUpdateCompleted,
    AnomalyDetected,
    TelemetryLevelChanged,
    RunFinished,
)

#: Any event: the union of the event classes, discriminated by ``event_type``.
TelemetryEvent = Annotated[
    RunStarted | PPOUpdateCompleted | AnomalyDetected | TelemetryLevelChanged | RunFinished,
    Field(discriminator="event_type"),
]

#: The payload of any event.
EventPayload = (
    RunStartedPayload
    | PPOUpdatePayload
    | AnomalyDetectedPayload
    | TelemetryLevelChangedPayload
    | RunFinishedPayload
)

#: Validates and serialises any event; built on first use.
EVENT_ADAPTER: TypeAdapter[TelemetryEvent] = TypeAdapter(
    TelemetryEvent, config=ConfigDict(defer_build=True)
)


def event_class(event_type: EventType | str) -> type[EventBase]:
    """The event class of an event type (``"PPO_UPDATE_COMPLETED"`` → PPOUpdateCompleted).

    Raises:
        ValueError: ``event_type`` names no event type.
    """
    return EVENT_CLASSES[list(EventType).index(EventType(event_type))]


def parse_event(data: str | bytes | bytearray) -> TelemetryEvent:
    """Read one event from its JSON text (one line of ``events.jsonl``).

    The class follows from ``event_type``; floats come back bit-exact, NaN and ±Inf
    included; lines of ``schema_version`` 1 read too.

    Raises:
        pydantic.ValidationError: the text is not valid JSON or not a valid event (a
            ``ValueError``); the errors name the fields.
    """
    return EVENT_ADAPTER.validate_json(data)


def validate_event(data: object) -> TelemetryEvent:
    """An event from a mapping (``event.model_dump()`` of any event) or an event itself.

    Raises:
        pydantic.ValidationError: ``data`` is not a valid event.
    """
    return EVENT_ADAPTER.validate_python(data)
