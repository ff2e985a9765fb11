"""Turn an LSTM health measurement into a list of typed anomalies.

The detector applies :class:`~esper_telemetry.contracts.HealthThresholds` through its
own predicates (``is_exploding``, ``is_vanishing``, and for a state's diagnostics
``is_saturated``, ``is_running_away``, ``is_dormant``), the same ones ``health_status``
uses, so a state the detector flags is never shown as healthy elsewhere.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from esper_telemetry.contracts import (
    Anomaly,
    AnomalyReport,
    AnomalyType,
    HealthThresholds,
    LSTMHealthMetrics,
    PPOUpdatePayload,
    RecurrentDiagnostics,
    ReplayConsistency,
    Severity,
)
from esper_telemetry.contracts.health import (
    C_SATURATION_BOUND,
    H_SATURATION_BOUND,
    check_state_name,
)


class AnomalyDetector:
    """Checks LSTM health metrics against one set of thresholds.

    >>> from esper_telemetry.contracts import LSTMHealthMetrics
    >>> m = LSTMHealthMetrics(h_l2_total=1.0, c_l2_total=90.0, h_rms=0.3, c_rms=12.0,
    ...     h_env_rms_mean=0.3, h_env_rms_max=0.4, c_env_rms_mean=12.0, c_env_rms_max=15.0,
    ...     h_max=0.9, c_max=40.0, has_nan=False, has_inf=False)
    >>> AnomalyDetector().check_lstm_health(m).anomaly_types
    [<AnomalyType.LSTM_C_EXPLOSION: 'lstm_c_explosion'>]
    """

    def __init__(self, thresholds: HealthThresholds | None = None) -> None:
        if thresholds is not None and not isinstance(thresholds, HealthThresholds):
            raise TypeError(
                f"thresholds must be HealthThresholds or None, got {type(thresholds).__name__}"
            )
        self._thresholds = thresholds if thresholds is not None else HealthThresholds()

    @property
    def thresholds(self) -> HealthThresholds:
        """The thresholds this detector applies."""
        return self._thresholds

    def __repr__(self) -> str:
        return f"AnomalyDetector(thresholds={self._thresholds!r})"

    def check_lstm_health(
        self, metrics: LSTMHealthMetrics, *, state: str | None = None
    ) -> AnomalyReport:
        """Return every anomaly in ``metrics``, in a fixed order.

        Order: ``lstm_nan``, ``lstm_inf``, then h before c for explosion and vanishing.
        A NaN RMS compares false with every threshold, so a NaN state reports
        ``lstm_nan`` alone; an infinite RMS is also an explosion. A state without a cell
        (GRU, RNN) is checked on h alone. When ``metrics.diagnostics`` is set, its
        warnings follow, in the order ``lstm_h_saturation``, ``lstm_c_saturation``,
        ``lstm_c_runaway``, ``lstm_dormant`` (each by its ``HealthThresholds`` predicate:
        strict, and a NaN figure never fires). With ``state``, every anomaly carries that
        name (``Anomaly.state``) and its message begins with it.

        Raises:
            TypeError: ``metrics`` is not an ``LSTMHealthMetrics``.
            ValueError: ``state`` is not a valid state name.
        """
        if not isinstance(metrics, LSTMHealthMetrics):
            raise TypeError(f"metrics must be LSTMHealthMetrics, got {type(metrics).__name__}")
        t = self._thresholds
        found: list[Anomaly] = []
        tensors = [("h", metrics.h_rms, metrics.h_env_rms_max, metrics.h_max)]
        if metrics.c_rms is not None and metrics.c_env_rms_max is not None:
            tensors.append(("c", metrics.c_rms, metrics.c_env_rms_max, metrics.c_max or 0.0))
        # A NaN or infinite figure is a NaN or Inf in the state, flags or not (the one rule,
        # HealthThresholds.status, says CRITICAL for it too): metrics built by hand may
        # carry one without the flag.
        figures = [v for _, rms, env_max, top in tensors for v in (rms, env_max, top)]
        kind = "LSTM" if metrics.has_cell else "recurrent"
        if metrics.has_nan or any(math.isnan(v) for v in figures):
            found.append(_critical(AnomalyType.LSTM_NAN, math.nan, None, f"{kind} state holds NaN"))
        if metrics.has_inf or any(math.isinf(top) for *_, top in tensors):
            found.append(_critical(AnomalyType.LSTM_INF, math.inf, None, f"{kind} state holds Inf"))
        explosions = {"h": AnomalyType.LSTM_H_EXPLOSION, "c": AnomalyType.LSTM_C_EXPLOSION}
        for name, rms, env_max, _ in tensors:
            explosion = explosions[name]
            if t.is_exploding(rms, env_max):
                # Name the whole state when it is over the line, else the worst env.
                if rms > t.critical_rms:
                    what, observed = f"{name}_rms", rms
                else:
                    what, observed = f"{name}_env_rms_max", env_max
                found.append(
                    _critical(
                        explosion,
                        observed,
                        t.critical_rms,
                        f"{what} = {observed:.4g} is above critical_rms = {t.critical_rms:g}",
                    )
                )
        vanishings = {"h": AnomalyType.LSTM_H_VANISHING, "c": AnomalyType.LSTM_C_VANISHING}
        for name, rms, _, _ in tensors:
            vanishing = vanishings[name]
            if t.is_vanishing(rms):
                found.append(
                    _critical(
                        vanishing,
                        rms,
                        t.vanishing_rms,
                        f"{name}_rms = {rms:.4g} is below vanishing_rms = {t.vanishing_rms:g}",
                    )
                )
        found += _diagnosed(metrics.diagnostics, t)
        return AnomalyReport(anomalies=tuple(_named(found, state)))

    def check_states(self, states: Mapping[str, LSTMHealthMetrics]) -> AnomalyReport:
        """Every anomaly of several named states, state by state in the mapping's order.

        ``PPOUpdatePayload.named_health()`` gives the mapping of an update; each anomaly
        names its state.

        Raises:
            TypeError: ``states`` is not a mapping of name to ``LSTMHealthMetrics``.
        """
        if not isinstance(states, Mapping):
            raise TypeError(f"states must be a mapping of name to metrics, got {states!r:.60}")
        return AnomalyReport().merge(
            *(self.check_lstm_health(m, state=name) for name, m in states.items())
        )

    def check_replay(self, replays: Mapping[str, ReplayConsistency]) -> AnomalyReport:
        """Every anomaly of the named states' replay checks, state by state.

        ``lstm_replay_mismatch`` (critical) when a replay differs from its rollout by
        more than its dtype's tolerance (:meth:`HealthThresholds.is_replay_mismatch`):
        a bug in the training-time unroll. ``lstm_replay_drift`` (warning) when the
        states drifted over the update by more than ``replay_drift``.

        Raises:
            TypeError: ``replays`` is not a mapping of name to ``ReplayConsistency``.
        """
        if not isinstance(replays, Mapping) or not all(
            isinstance(r, ReplayConsistency) for r in replays.values()
        ):
            raise TypeError(
                f"replays must be a mapping of name to ReplayConsistency, got {replays!r:.60}"
            )
        t = self._thresholds
        found: list[Anomaly] = []
        for name, r in replays.items():
            if t.is_replay_mismatch(r):
                tolerance = t.replay_tolerance(r.dtype)
                rank = f"rank {r.first_rank} " if r.first_rank is not None else ""
                where = (
                    f", first at {rank}env {r.first_env} step {r.first_step}"
                    if r.first_step is not None
                    else ""
                )
                found += _named(
                    [
                        _critical(
                            AnomalyType.LSTM_REPLAY_MISMATCH,
                            r.max_abs_diff,
                            tolerance,
                            f"the training pass does not reproduce the rollout: max |replay - "
                            f"rollout| = {r.max_abs_diff:.3g} > {tolerance:g} ({r.dtype}) in "
                            f"{r.mismatched} of {r.compared} steps{where}",
                        )
                    ],
                    name,
                )
            if t.is_replay_drifting(r):
                assert r.drift is not None
                found += _named(
                    [
                        Anomaly(
                            type=AnomalyType.LSTM_REPLAY_DRIFT,
                            severity=Severity.WARNING,
                            observed=r.drift,
                            threshold=t.replay_drift,
                            message=f"replay_drift = {r.drift:.4g} is above replay_drift = "
                            f"{t.replay_drift:g}: the stored initial states are stale",
                        )
                    ],
                    name,
                )
        return AnomalyReport(anomalies=tuple(found))

    def check_update(self, payload: PPOUpdatePayload) -> AnomalyReport:
        """Every anomaly of one PPO update: its states' health (:meth:`check_states`),
        then its replay checks (:meth:`check_replay`).

        Raises:
            TypeError: ``payload`` is not a ``PPOUpdatePayload``.
        """
        if not isinstance(payload, PPOUpdatePayload):
            raise TypeError(f"payload must be PPOUpdatePayload, got {type(payload).__name__}")
        return self.check_states(payload.named_health()).merge(self.check_replay(payload.replay))


def _named(found: list[Anomaly], state: str | None) -> list[Anomaly]:
    if state is None:
        return found
    check_state_name(state)
    return [
        a.model_copy(update={"state": state, "message": f"{state}: {a.message}"}) for a in found
    ]


def _diagnosed(d: RecurrentDiagnostics | None, t: HealthThresholds) -> list[Anomaly]:
    """The warnings of one state's diagnostics (none without), in the documented order."""
    found: list[Anomaly] = []
    if d is None:
        return found
    if t.is_saturated(d.h_saturation_frac, "h"):
        found.append(
            _warning(
                AnomalyType.LSTM_H_SATURATION,
                d.h_saturation_frac,
                t.h_saturation_frac,
                f"h_saturation_frac = {d.h_saturation_frac:.4g} (|h| > {H_SATURATION_BOUND}) is "
                f"above h_saturation_frac = {t.h_saturation_frac:g}",
            )
        )
    if d.c_saturation_frac is not None and t.is_saturated(d.c_saturation_frac, "c"):
        found.append(
            _warning(
                AnomalyType.LSTM_C_SATURATION,
                d.c_saturation_frac,
                t.c_saturation_frac,
                f"c_saturation_frac = {d.c_saturation_frac:.4g} (|c| > {C_SATURATION_BOUND}) is "
                f"above c_saturation_frac = {t.c_saturation_frac:g}",
            )
        )
    if d.c_growth_ratio is not None and t.is_running_away(d.c_growth_ratio):
        found.append(
            _warning(
                AnomalyType.LSTM_C_RUNAWAY,
                d.c_growth_ratio,
                t.c_runaway_ratio,
                f"c_growth_ratio = {d.c_growth_ratio:.4g} (max|c| / (1 + steps since reset)) "
                f"is above c_runaway_ratio = {t.c_runaway_ratio:g}",
            )
        )
    if t.is_dormant(d.dormant_frac):
        found.append(
            _warning(
                AnomalyType.LSTM_DORMANT,
                d.dormant_frac,
                t.dormant_frac,
                f"dormant_frac = {d.dormant_frac:.4g} (units at most {t.dormant_tau:g} of their "
                f"layer's mean |h|) is above dormant_frac = {t.dormant_frac:g}",
            )
        )
    return found


def _warning(kind: AnomalyType, observed: float, threshold: float, msg: str) -> Anomaly:
    return Anomaly(
        type=kind, severity=Severity.WARNING, observed=observed, threshold=threshold, message=msg
    )


def _critical(kind: AnomalyType, observed: float, threshold: float | None, msg: str) -> Anomaly:
    return Anomaly(
        type=kind, severity=Severity.CRITICAL, observed=observed, threshold=threshold, message=msg
    )
