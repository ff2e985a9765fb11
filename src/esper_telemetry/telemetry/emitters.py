"""Build and emit the one event a trainer publishes after each PPO update."""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import TYPE_CHECKING

from pydantic import ValidationError

from esper_telemetry.contracts import (
    PPO_REQUIRED,
    PPO_STATISTICS,
    HealthStatus,
    HealthThresholds,
    LSTMHealthDetail,
    LSTMHealthMetrics,
    PPOUpdateCompleted,
    PPOUpdatePayload,
    ReplayConsistency,
    TelemetryLevel,
    health_status,
)
from esper_telemetry.contracts._base import INT64_MAX
from esper_telemetry.contracts.health import DEFAULT_STATE, check_state_name
from esper_telemetry.hub import TelemetryHub, redact_secrets
from esper_telemetry.hub._redact import secret_key_problem

if TYPE_CHECKING:
    from esper_telemetry.telemetry.tracking import Tracker

_REQUIRED = PPO_REQUIRED
_OPTIONAL = PPO_STATISTICS[len(PPO_REQUIRED) :]

LSTMHealth = LSTMHealthMetrics | tuple[LSTMHealthMetrics, LSTMHealthDetail]


def emit_ppo_update_event(
    hub: TelemetryHub,
    *,
    update: int,
    metrics: Mapping[str, object],
    lstm_health: LSTMHealth | None = None,
    recurrent_health: Mapping[str, LSTMHealth] | None = None,
    primary: str | None = None,
    tracker: Tracker | None = None,
    env_steps: int | None = None,
    episode_return_mean: float | None = None,
    episode_return_window: int | None = None,
    thresholds: HealthThresholds | None = None,
    replay: Mapping[str, ReplayConsistency] | None = None,
) -> PPOUpdateCompleted | None:
    """Publish a :class:`PPOUpdateCompleted` event for one PPO update.

    Args:
        hub: The hub to publish on.
        update: The PPO update index (>= 0); the x-axis of every backend.
        metrics: PPO statistics by name, as host numbers (call ``.item()`` first).
            ``policy_loss``, ``value_loss`` and ``entropy`` are required;
            ``approx_kl``, ``clip_fraction``, ``explained_variance``, ``grad_norm`` and
            ``learning_rate`` are known (None allowed); any other key goes to ``extra``,
            unless it names or holds a secret (``api_key``, ``hf_...``: see
            ``esper_telemetry.hub.redact_secrets``), which is refused.
            NaN and Inf are kept as they are.
        lstm_health: What ``compute_lstm_health`` returned: metrics, ``(metrics,
            detail)`` or None for a policy without an LSTM. The detail (per-layer and
            per-env RMS, and the outlier envs under ``thresholds``) is published at
            DEBUG level, and on any update whose state ``thresholds`` calls CRITICAL:
            the update that trips an anomaly carries its own detail, although the
            level only rises after it. Pass ``compute_lstm_health(state,
            detail=True)`` to have it at hand. It is the primary state, named
            ``primary`` (default ``"policy"``).
        recurrent_health: Several named states instead: name to what
            ``compute_lstm_health`` returned for it (``compute_recurrent_health``
            measures them all with one transfer). Every one lands in the payload's
            ``recurrent_health``; the detail rule above applies to each.
        primary: The name of the primary state, whose figures the flat ``lstm_*``
            fields repeat: with ``recurrent_health`` or ``tracker``, ``"policy"`` when
            that name is there, else the first state.
        tracker: What ``esper_telemetry.track(module)`` returned: every state it holds
            is measured now, with detail, in one transfer (``Tracker.health``), and with
            the diagnostics when the tracker asks for them (``track(...,
            diagnostics=True)``) or the level is DEBUG. A tracked module not yet run
            since ``track`` is left out.
        env_steps: Environment steps so far, all envs together.
        episode_return_mean: Mean return of the latest finished episodes (NaN before
            the first); needs ``episode_return_window``.
        episode_return_window: How many latest episodes that mean covers at most (20
            for ``esper ppo``, 100 for Stable-Baselines3).
        thresholds: The health rule (the anomaly detector's); default rule if None.
        replay: What ``check_replay`` found for named states this update (name to
            ``ReplayConsistency``); each name must be one of the measured states. The
            anomaly escalator judges them (``lstm_replay_mismatch``, ``lstm_replay_drift``).

    Returns:
        The event as published, or None at level OFF (nothing is built).

    Raises:
        TypeError: ``hub``, ``thresholds``, ``lstm_health``, ``recurrent_health``,
            ``tracker`` or ``replay`` has the wrong type, or more than one of
            ``lstm_health``, ``recurrent_health`` and ``tracker`` is given.
        ValueError: an ``update`` or ``env_steps`` that is not an int from 0 to
            2**63 - 1, a missing required metric, a metric that is not a real number
            (or a negative ``grad_norm``); the message names the key. Nothing is
            published then. ``hub``, ``update``, ``env_steps`` and ``thresholds`` are
            checked at every level, OFF included; the metrics only when an event is
            built.
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
    # The arguments are checked at every level: a mistake must not wait, hidden, for
    # the level to rise (the metrics are not: at OFF nothing is built from them).
    _check_count("update", update)
    if env_steps is not None:
        _check_count("env_steps", env_steps, or_none=True)
    if thresholds is not None and not isinstance(thresholds, HealthThresholds):
        raise TypeError(
            f"thresholds must be a HealthThresholds or None, got {type(thresholds).__name__}"
        )
    _check_replay_arg(replay)
    hub.raise_if_halted()
    level = hub.level
    if level is TelemetryLevel.OFF:
        return None
    states = _named_states(
        lstm_health,
        recurrent_health,
        tracker,
        primary,
        debug=level >= TelemetryLevel.DEBUG,
        thresholds=thresholds,
    )
    fields: dict[str, object] = {"env_steps": env_steps, **_ppo_fields(metrics)}
    if episode_return_mean is not None or episode_return_window is not None:
        if episode_return_mean is not None:
            episode_return_mean = _real("", episode_return_mean, arg="episode_return_mean")
        fields["episode_return_mean"] = episode_return_mean
        fields["episode_return_window"] = episode_return_window
    if states:
        fields.update(_health_fields(states, _primary_of(states, primary), level, thresholds))
    fields["replay"] = dict(replay or {})
    try:
        payload = PPOUpdatePayload.model_validate(fields)
    except ValidationError as exc:  # e.g. a negative grad_norm: one line, naming the key
        errors = exc.errors(include_url=False)
        key = errors[0]["loc"][0] if errors[0]["loc"] else None
        # A Float field errs once per member of its union; the last one says why.
        why = [e["msg"] for e in errors if (e["loc"][0] if e["loc"] else None) == key][-1]
        if key in ("episode_return_mean", "episode_return_window", None):
            raise ValueError(f"{key or 'emit_ppo_update_event'}: {_reason(why)}") from None
        raise ValueError(f"metrics[{key!r}]: {_reason(why)}") from None
    event = hub.emit(PPOUpdateCompleted(update=update, payload=payload))
    assert isinstance(event, PPOUpdateCompleted)
    return event


def _check_replay_arg(replay: object) -> None:
    if replay is not None and not (
        isinstance(replay, Mapping)
        and all(isinstance(r, ReplayConsistency) for r in replay.values())
    ):
        raise TypeError(
            "replay must be a mapping of state name to ReplayConsistency (what check_replay "
            f"returns), got {type(replay).__name__}"
        )


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
            raise ValueError(
                f"metrics: keys must be non-empty strings, got {redact_secrets(repr(key))}"
            )
        if key not in _REQUIRED and key not in _OPTIONAL:
            refused = secret_key_problem(key, "metrics")  # before a message repeats the key
            if refused is not None:
                raise ValueError(refused)
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


def _check_count(name: str, value: object, *, or_none: bool = False) -> None:
    # DuckDB, Arrow and Parquet store these as int64: a bigger one is refused here.
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= INT64_MAX:
        none = " or None" if or_none else ""
        raise ValueError(
            f"{name} must be an int from 0 to {INT64_MAX} (int64){none}, got {_shown(value)}"
        )


def _shown(value: object) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**40:
        return f"an int of {value.bit_length()} bits"  # repr may refuse past 4300 digits
    return f"{value!r:.80}"


def _reason(msg: str) -> str:
    return msg.removeprefix("Value error, ")


def _real(key: str, value: object, *, arg: str | None = None) -> float:
    """``value`` as a float; errors name ``metrics[key]``, or the argument ``arg``."""
    where = arg or f"metrics[{key!r}]"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        hint = ""
        if callable(getattr(value, "item", None)) and hasattr(value, "shape"):
            hint = (
                f"; pass a host number: {where}.item() (for many tensors, "
                "torch.stack(...).tolist() moves them in one transfer)"
            )
        raise ValueError(
            f"{where} must be a real number, got {type(value).__name__} {value!r:.80}{hint}"
        )
    try:
        return float(value)
    except OverflowError:
        raise ValueError(f"{where} = {value!r:.40} does not fit in a float") from None


Measured = tuple[LSTMHealthMetrics, LSTMHealthDetail | None]


def _named_states(
    lstm_health: object,
    recurrent_health: object,
    tracker: object,
    primary: object,
    *,
    debug: bool,
    thresholds: HealthThresholds | None,
) -> dict[str, Measured]:
    """Every state given, by name, checked: ``{}`` when there is none."""
    given = [
        name
        for name, value in (
            ("lstm_health", lstm_health),
            ("recurrent_health", recurrent_health),
            ("tracker", tracker),
        )
        if value is not None
    ]
    if len(given) > 1:
        raise TypeError(
            f"pass one of lstm_health, recurrent_health and tracker, got {' and '.join(given)}"
        )
    if primary is not None:
        _checked_name("primary", primary)
    if lstm_health is not None:
        name = DEFAULT_STATE if primary is None else str(primary)
        return {name: _measured("lstm_health", lstm_health)}
    if tracker is not None:
        from esper_telemetry.telemetry.tracking import Tracker

        if not isinstance(tracker, Tracker):
            raise TypeError(
                "tracker must be what esper_telemetry.track(module) returned, got "
                f"{type(tracker).__name__}"
            )
        # The tracker's own setting, or always at DEBUG (an anomaly raised it).
        recurrent_health = tracker.health(
            detail=True, diagnostics=tracker.diagnostics or debug, thresholds=thresholds
        )
    if recurrent_health is None:
        return {}
    if not isinstance(recurrent_health, Mapping):
        raise TypeError(
            "recurrent_health must map state names to what compute_lstm_health returned, "
            f"e.g. {{'policy': ..., 'value': ...}}, got {type(recurrent_health).__name__}"
        )
    return {
        _checked_name("recurrent_health", name): _measured(f"recurrent_health[{name!r}]", health)
        for name, health in recurrent_health.items()
    }


def _checked_name(arg: str, name: object) -> str:
    if not isinstance(name, str):
        raise TypeError(f"{arg}: a state name must be a str, got {type(name).__name__}")
    refused = secret_key_problem(name, arg)
    if refused is not None:
        raise ValueError(refused)
    try:
        return check_state_name(name)
    except ValueError as exc:
        raise ValueError(f"{arg}: {exc}") from None


def _primary_of(states: Mapping[str, Measured], primary: str | None) -> str:
    if primary is None:
        return DEFAULT_STATE if DEFAULT_STATE in states else next(iter(states))
    if primary not in states:
        raise ValueError(f"primary: {primary!r} is not one of the states given: {list(states)}")
    return primary


def _measured(arg: str, health: object) -> Measured:
    detail: LSTMHealthDetail | None = None
    if isinstance(health, tuple):
        if any(hasattr(x, "shape") and hasattr(x, "dtype") for x in health):
            raise TypeError(
                f"{arg} got the raw recurrent state (tensors); pass what "
                f"compute_lstm_health returns: {arg}=compute_lstm_health((h, c)), or track "
                "the module with esper_telemetry.track(policy) and pass tracker="
            )
        if len(health) != 2 or not isinstance(health[1], LSTMHealthDetail):
            raise TypeError(f"{arg}: expected (LSTMHealthMetrics, LSTMHealthDetail)")
        health, detail = health
    if hasattr(health, "shape") and hasattr(health, "dtype"):
        raise TypeError(
            f"{arg} got a raw hidden state (a tensor); pass compute_lstm_health(h) of it, "
            "or track the module with esper_telemetry.track(policy) and pass tracker="
        )
    if not isinstance(health, LSTMHealthMetrics):
        raise TypeError(
            f"{arg} must be what compute_lstm_health returned (LSTMHealthMetrics, "
            f"a (metrics, detail) tuple, or None), got {type(health).__name__}"
        )
    return health, detail


def _health_fields(
    states: Mapping[str, Measured],
    primary: str,
    level: TelemetryLevel,
    thresholds: HealthThresholds | None,
) -> dict[str, object]:
    health, detail = states[primary]
    fields: dict[str, object] = dict(health.to_dict())
    fields["health_scope"], fields["health_ranks"] = health.scope, health.ranks
    fields["primary_state"] = primary
    fields["recurrent_health"] = {name: m for name, (m, _) in states.items()}

    def shown(metrics: LSTMHealthMetrics, info: LSTMHealthDetail | None) -> bool:
        return info is not None and (
            level >= TelemetryLevel.DEBUG
            or health_status(metrics, thresholds) is HealthStatus.CRITICAL
        )

    if detail is not None and shown(health, detail):
        fields["lstm_detail"] = detail
        fields["lstm_outlier_envs"] = detail.outlier_envs(thresholds)
    fields["recurrent_detail"] = {
        name: info
        for name, (m, info) in states.items()
        if name != primary and info is not None and shown(m, info)
    }
    return fields
