"""Build and emit the one event a trainer publishes after each PPO update."""

from __future__ import annotations

import numbers
from collections.abc import Mapping

from esper_telemetry.contracts import (
    PPO_REQUIRED,
    PPO_STATISTICS,
    HealthStatus,
    HealthThresholds,
    LSTMHealthDetail,
    LSTMHealthMetrics,
    PPOUpdateCompleted,
    PPOUpdatePayload,
    TelemetryLevel,
    health_status,
)
from esper_telemetry.hub import TelemetryHub

_REQUIRED = PPO_REQUIRED
_OPTIONAL = PPO_STATISTICS[len(PPO_REQUIRED) :]

LSTMHealth = LSTMHealthMetrics | tuple[LSTMHealthMetrics, LSTMHealthDetail]


def emit_ppo_update_event(
    hub: TelemetryHub,
    *,
    update: int,
    metrics: Mapping[str, object],
    lstm_health: LSTMHealth | None = None,
    env_steps: int | None = None,
    thresholds: HealthThresholds | None = None,
) -> PPOUpdateCompleted | None:
    """Publish a :class:`PPOUpdateCompleted` event for one PPO update.

    Args:
        hub: The hub to publish on.
        update: The PPO update index (>= 0); the x-axis of every backend.
        metrics: PPO statistics by name, as host numbers (call ``.item()`` first).
            ``policy_loss``, ``value_loss`` and ``entropy`` are required;
            ``approx_kl``, ``clip_fraction``, ``explained_variance``, ``grad_norm`` and
            ``learning_rate`` are known (None allowed); any other key goes to ``extra``.
            NaN and Inf are kept as they are.
        lstm_health: What ``compute_lstm_health`` returned: metrics, ``(metrics,
            detail)`` or None for a policy without an LSTM. The detail (per-layer and
            per-env RMS, and the outlier envs under ``thresholds``) is published at
            DEBUG level, and on any update whose state ``thresholds`` calls CRITICAL:
            the update that trips an anomaly carries its own detail, although the
            level only rises after it. Pass ``compute_lstm_health(state,
            detail=True)`` to have it at hand.
        env_steps: Environment steps so far, all envs together.
        thresholds: The health rule (the anomaly detector's); default rule if None.

    Returns:
        The event as published, or None at level OFF (nothing is built).

    Raises:
        TypeError: ``hub`` or ``lstm_health`` has the wrong type.
        ValueError: a bad ``update`` or ``env_steps``, a missing required metric, or a
            metric that is not a real number; the message names the key. Nothing is
            published then.
        HubClosedError: the hub is closed.
        TrainingHalted: a subscriber asked for a halt (see ``TelemetryHub.request_halt``).

    >>> from esper_telemetry.hub import TelemetryHub
    >>> with TelemetryHub("doc") as hub:
    ...     e = emit_ppo_update_event(hub, update=1, metrics={
    ...         "policy_loss": -0.02, "value_loss": 0.4, "entropy": 0.68, "fps": 900})
    >>> dict(e.payload.extra)
    {'fps': 900.0}
    """
    if not isinstance(hub, TelemetryHub):
        raise TypeError(f"hub must be a TelemetryHub, got {type(hub).__name__}")
    hub.raise_if_halted()
    level = hub.level
    if level is TelemetryLevel.OFF:
        return None
    if not isinstance(update, int) or isinstance(update, bool) or update < 0:
        raise ValueError(f"update must be an int >= 0, got {update!r}")
    if env_steps is not None and (
        not isinstance(env_steps, int) or isinstance(env_steps, bool) or env_steps < 0
    ):
        raise ValueError(f"env_steps must be an int >= 0 or None, got {env_steps!r}")
    fields: dict[str, object] = {"env_steps": env_steps, **_ppo_fields(metrics)}
    fields.update(_health_fields(lstm_health, level, thresholds))
    payload = PPOUpdatePayload.model_validate(fields)
    event = hub.emit(PPOUpdateCompleted(update=update, payload=payload))
    assert isinstance(event, PPOUpdateCompleted)
    return event


def _ppo_fields(metrics: object) -> dict[str, object]:
    if not isinstance(metrics, Mapping):
        raise TypeError(
            f"metrics must be a mapping of name to number, got {type(metrics).__name__}"
        )
    missing = [k for k in _REQUIRED if k not in metrics]
    if missing:
        raise ValueError(f"metrics: missing required key(s) {', '.join(missing)}")
    fields: dict[str, object] = {}
    extra: dict[str, float] = {}
    for key, value in metrics.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"metrics: keys must be non-empty strings, got {key!r}")
        if key in _OPTIONAL and value is None:
            fields[key] = None
            continue
        number = _real(key, value)
        if key in _REQUIRED or key in _OPTIONAL:
            fields[key] = number
        elif key == "env_steps" or key.startswith("lstm_"):
            raise ValueError(
                f"metrics: {key!r} is set by emit_ppo_update_event itself; pass "
                "env_steps= or lstm_health= instead"
            )
        else:
            extra[key] = number
    fields["extra"] = extra
    return fields


def _real(key: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(
            f"metrics[{key!r}] must be a real number, got {type(value).__name__} {value!r:.80}"
        )
    try:
        return float(value)
    except OverflowError:
        raise ValueError(f"metrics[{key!r}] = {value!r:.40} does not fit in a float") from None


def _health_fields(
    health: LSTMHealth | None, level: TelemetryLevel, thresholds: HealthThresholds | None
) -> dict[str, object]:
    if health is None:
        return {}
    detail: LSTMHealthDetail | None = None
    if isinstance(health, tuple):
        if len(health) != 2 or not isinstance(health[1], LSTMHealthDetail):
            raise TypeError("lstm_health: expected (LSTMHealthMetrics, LSTMHealthDetail)")
        health, detail = health
    if not isinstance(health, LSTMHealthMetrics):
        raise TypeError(
            "lstm_health must be what compute_lstm_health returned (LSTMHealthMetrics, "
            f"a (metrics, detail) tuple, or None), got {type(health).__name__}"
        )
    fields: dict[str, object] = dict(health.to_dict())
    if detail is not None and (
        level >= TelemetryLevel.DEBUG or health_status(health, thresholds) is HealthStatus.CRITICAL
    ):
        fields["lstm_detail"] = detail
        fields["lstm_outlier_envs"] = detail.outlier_envs(thresholds)
    return fields
