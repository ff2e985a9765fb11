"""Tests of AnomalyDetector, health_status and HealthThresholds."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from esper_telemetry.contracts import (
    Anomaly,
    AnomalyReport,
    AnomalyType,
    HealthStatus,
    HealthThresholds,
    LSTMHealthMetrics,
    Severity,
    health_status,
)
from esper_telemetry.telemetry import AnomalyDetector

NAN, INF = math.nan, math.inf
CRITICAL, WARNING, VANISHING = 10.0, 5.0, 1e-6
ABOVE_CRITICAL = math.nextafter(CRITICAL, INF)
ABOVE_WARNING = math.nextafter(WARNING, INF)
BELOW_VANISHING = math.nextafter(VANISHING, 0.0)

T = AnomalyType

HEALTHY_FIELDS: dict[str, Any] = {
    "h_l2_total": 4.0,
    "c_l2_total": 8.0,
    "h_rms": 0.5,
    "c_rms": 1.0,
    "h_env_rms_mean": 0.5,
    "h_env_rms_max": 0.6,
    "c_env_rms_mean": 1.0,
    "c_env_rms_max": 1.2,
    "h_max": 0.9,
    "c_max": 2.5,
    "has_nan": False,
    "has_inf": False,
}


def metrics(**changes: Any) -> LSTMHealthMetrics:
    """A healthy state with the given fields changed (validated, not model_copy'd)."""
    return LSTMHealthMetrics(**{**HEALTHY_FIELDS, **changes})


def records(report: AnomalyReport) -> list[tuple[AnomalyType, Severity, str, float | None]]:
    """Every record as (type, severity, repr(observed), threshold): NaN compares equal."""
    return [(a.type, a.severity, repr(a.observed), a.threshold) for a in report.anomalies]


def check(m: LSTMHealthMetrics, thresholds: HealthThresholds | None = None) -> AnomalyReport:
    return AnomalyDetector(thresholds=thresholds or HealthThresholds()).check_lstm_health(m)


def crit(kind: AnomalyType, observed: float, threshold: float | None) -> tuple[Any, ...]:
    return (kind, Severity.CRITICAL, repr(observed), threshold)


# --------------------------------------------------------------------------- boundaries


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"h_rms": CRITICAL, "h_env_rms_max": CRITICAL}, []),
        ({"h_rms": ABOVE_CRITICAL}, [crit(T.LSTM_H_EXPLOSION, ABOVE_CRITICAL, CRITICAL)]),
        ({"h_env_rms_max": CRITICAL}, []),
        ({"h_env_rms_max": ABOVE_CRITICAL}, [crit(T.LSTM_H_EXPLOSION, ABOVE_CRITICAL, CRITICAL)]),
        ({"c_rms": CRITICAL, "c_env_rms_max": CRITICAL}, []),
        ({"c_rms": ABOVE_CRITICAL}, [crit(T.LSTM_C_EXPLOSION, ABOVE_CRITICAL, CRITICAL)]),
        ({"c_env_rms_max": CRITICAL}, []),
        ({"c_env_rms_max": ABOVE_CRITICAL}, [crit(T.LSTM_C_EXPLOSION, ABOVE_CRITICAL, CRITICAL)]),
        ({"h_rms": VANISHING}, []),
        ({"h_rms": BELOW_VANISHING}, [crit(T.LSTM_H_VANISHING, BELOW_VANISHING, VANISHING)]),
        ({"c_rms": VANISHING}, []),
        ({"c_rms": BELOW_VANISHING}, [crit(T.LSTM_C_VANISHING, BELOW_VANISHING, VANISHING)]),
        ({"h_rms": WARNING, "c_rms": ABOVE_WARNING}, []),
    ],
    ids=[
        "h-rms-at-critical",
        "h-rms-above-critical",
        "h-env-max-at-critical",
        "h-env-max-above-critical",
        "c-rms-at-critical",
        "c-rms-above-critical",
        "c-env-max-at-critical",
        "c-env-max-above-critical",
        "h-rms-at-vanishing",
        "h-rms-below-vanishing",
        "c-rms-at-vanishing",
        "c-rms-below-vanishing",
        "warning-is-not-an-anomaly",
    ],
)
def test_thresholds_are_strict(changes: dict[str, float], expected: list[Any]) -> None:
    """A value exactly at a threshold is no anomaly; the next float beyond it is."""
    assert records(check(metrics(**changes))) == expected


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({}, HealthStatus.HEALTHY),
        ({"h_rms": WARNING, "c_rms": WARNING}, HealthStatus.HEALTHY),
        ({"h_rms": ABOVE_WARNING}, HealthStatus.WARNING),
        ({"c_rms": ABOVE_WARNING}, HealthStatus.WARNING),
        ({"h_rms": CRITICAL, "h_env_rms_max": CRITICAL}, HealthStatus.WARNING),
        ({"h_rms": ABOVE_CRITICAL}, HealthStatus.CRITICAL),
        ({"c_env_rms_max": ABOVE_CRITICAL}, HealthStatus.CRITICAL),
        ({"h_env_rms_max": CRITICAL}, HealthStatus.HEALTHY),
        ({"c_rms": VANISHING}, HealthStatus.HEALTHY),
        ({"c_rms": BELOW_VANISHING}, HealthStatus.CRITICAL),
        ({"h_rms": BELOW_VANISHING}, HealthStatus.CRITICAL),
        ({"has_nan": True}, HealthStatus.CRITICAL),
        ({"has_inf": True}, HealthStatus.CRITICAL),
    ],
    ids=[
        "healthy",
        "at-warning",
        "h-above-warning",
        "c-above-warning",
        "at-critical-is-warning",
        "above-critical",
        "c-env-max-above-critical",
        "env-max-at-critical",
        "at-vanishing",
        "c-below-vanishing",
        "h-below-vanishing",
        "nan",
        "inf",
    ],
)
def test_health_status_boundaries(changes: dict[str, Any], expected: HealthStatus) -> None:
    """health_status applies the same strict comparisons at each threshold."""
    assert health_status(metrics(**changes), HealthThresholds()) == expected


# --------------------------------------------------------------------------- anomaly types


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"has_nan": True}, [crit(T.LSTM_NAN, NAN, None)]),
        ({"has_inf": True}, [crit(T.LSTM_INF, INF, None)]),
        ({"h_rms": 12.0, "h_env_rms_max": 15.0}, [crit(T.LSTM_H_EXPLOSION, 12.0, CRITICAL)]),
        ({"c_rms": 9.0, "c_env_rms_max": 11.0}, [crit(T.LSTM_C_EXPLOSION, 11.0, CRITICAL)]),
        ({"h_rms": 1e-9}, [crit(T.LSTM_H_VANISHING, 1e-9, VANISHING)]),
        ({"c_rms": 0.0}, [crit(T.LSTM_C_VANISHING, 0.0, VANISHING)]),
    ],
    ids=["nan", "inf", "h-explosion", "c-explosion-by-env", "h-vanishing", "c-vanishing"],
)
def test_each_anomaly_alone(changes: dict[str, Any], expected: list[Any]) -> None:
    """Each anomaly type is reported alone, critical, with its observed value and threshold."""
    assert records(check(metrics(**changes))) == expected


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"h_rms": 12.0, "h_env_rms_max": 15.0}, "h_rms"),
        ({"c_rms": 9.0, "c_env_rms_max": 11.0}, "c_env_rms_max"),
        ({"h_rms": 1e-9}, "h_rms"),
        ({"c_rms": 0.0}, "c_rms"),
    ],
)
def test_message_names_the_metric_and_threshold(changes: dict[str, Any], field: str) -> None:
    """An explosion or vanishing message names the metric that crossed and its threshold."""
    (anomaly,) = check(metrics(**changes)).anomalies
    assert field in anomaly.message
    assert f"{anomaly.threshold:g}" in anomaly.message


def test_nan_state_reports_nan_alone() -> None:
    """A state whose norms are NaN reports lstm_nan alone: NaN crosses no threshold."""
    nan_fields = dict.fromkeys(("h_l2_total", "h_rms", "h_env_rms_mean", "h_env_rms_max"), NAN)
    report = check(metrics(**nan_fields, h_max=NAN, has_nan=True))
    assert records(report) == [crit(T.LSTM_NAN, NAN, None)]
    assert report.anomalies[0].message == "LSTM state holds NaN"


def test_inf_state_reports_inf_and_explosion() -> None:
    """A state whose c norms are Inf reports lstm_inf then an explosion observed at Inf."""
    inf_fields = dict.fromkeys(("c_l2_total", "c_rms", "c_env_rms_mean", "c_env_rms_max"), INF)
    report = check(metrics(**inf_fields, c_max=INF, has_inf=True))
    assert records(report) == [
        crit(T.LSTM_INF, INF, None),
        crit(T.LSTM_C_EXPLOSION, INF, CRITICAL),
    ]


def test_all_six_together_in_fixed_order() -> None:
    """All six anomalies at once come in the order nan, inf, explosions h/c, vanishing h/c."""
    report = check(
        metrics(
            has_nan=True,
            has_inf=True,
            h_rms=1e-7,
            h_env_rms_max=20.0,
            c_rms=2e-7,
            c_env_rms_max=30.0,
        )
    )
    assert records(report) == [
        crit(T.LSTM_NAN, NAN, None),
        crit(T.LSTM_INF, INF, None),
        crit(T.LSTM_H_EXPLOSION, 20.0, CRITICAL),
        crit(T.LSTM_C_EXPLOSION, 30.0, CRITICAL),
        crit(T.LSTM_H_VANISHING, 1e-7, VANISHING),
        crit(T.LSTM_C_VANISHING, 2e-7, VANISHING),
    ]
    # The first six types are the critical ones; the later ones need diagnostics.
    assert report.anomaly_types == list(AnomalyType)[:6]


def test_several_together_keep_the_order() -> None:
    """A subset of anomalies keeps the same relative order."""
    report = check(metrics(has_inf=True, c_rms=50.0, h_rms=1e-8))
    assert report.anomaly_types == [T.LSTM_INF, T.LSTM_C_EXPLOSION, T.LSTM_H_VANISHING]


def test_healthy_state_has_no_anomaly() -> None:
    """A healthy state yields an empty report."""
    report = check(metrics())
    assert (report, report.has_anomaly, report.anomaly_types) == (AnomalyReport(), False, [])


# --------------------------------------------------------------------------- reports


def test_merge_keeps_every_record_in_order() -> None:
    """merge keeps all records of every report, self first, duplicates included."""
    first = check(metrics(has_nan=True, h_rms=12.0))
    second = check(metrics(h_rms=11.0, c_rms=0.0))
    merged = first.merge(AnomalyReport(), second)
    assert records(merged) == records(first) + records(second)
    assert [a.message for a in merged.anomalies] == [
        a.message for a in first.anomalies + second.anomalies
    ]


def test_anomaly_types_has_no_duplicates() -> None:
    """anomaly_types lists each type once, in the order it was first found."""
    first = check(metrics(h_rms=12.0, c_rms=0.0))
    second = check(metrics(has_inf=True, h_rms=11.0))
    merged = first.merge(second)
    assert [a.type for a in merged.anomalies] == [
        T.LSTM_H_EXPLOSION,
        T.LSTM_C_VANISHING,
        T.LSTM_INF,
        T.LSTM_H_EXPLOSION,
    ]
    assert merged.anomaly_types == [T.LSTM_H_EXPLOSION, T.LSTM_C_VANISHING, T.LSTM_INF]


def test_merge_rejects_non_reports() -> None:
    """merge raises TypeError for something that is not an AnomalyReport."""
    with pytest.raises(TypeError, match="AnomalyReport"):
        AnomalyReport().merge([])  # type: ignore[arg-type]


# --------------------------------------------------------------------------- agreement

_interesting = st.sampled_from(
    [
        0.0,
        VANISHING,
        BELOW_VANISHING,
        WARNING,
        ABOVE_WARNING,
        CRITICAL,
        ABOVE_CRITICAL,
        NAN,
        INF,
        0.01,
        0.5,
        2.0,
        3.0,
        20.0,
    ]
)
# Every figure of LSTMHealthMetrics is a norm, an RMS or a max|x|: never negative.
_values = st.one_of(_interesting, st.floats(min_value=0.0))


@st.composite
def random_metrics(draw: st.DrawFn) -> LSTMHealthMetrics:
    """Arbitrary metrics, boundary values and non-finite numbers included."""
    fields = {
        k: draw(st.booleans()) if k.startswith("has_") else draw(_values) for k in HEALTHY_FIELDS
    }
    return LSTMHealthMetrics(**fields)


@st.composite
def random_thresholds(draw: st.DrawFn) -> HealthThresholds:
    """The defaults, or three ordered positive finite thresholds."""
    if draw(st.booleans()):
        return HealthThresholds()
    values = draw(
        st.lists(st.floats(min_value=1e-12, max_value=1e12), min_size=3, max_size=3, unique=True)
    )
    vanishing, warning, critical = sorted(values)
    return HealthThresholds(vanishing_rms=vanishing, warning_rms=warning, critical_rms=critical)


@given(m=random_metrics(), t=random_thresholds())
def test_health_status_agrees_with_detector(m: LSTMHealthMetrics, t: HealthThresholds) -> None:
    """CRITICAL iff the detector finds an anomaly; else WARNING iff an RMS is above warning."""
    report = AnomalyDetector(thresholds=t).check_lstm_health(m)
    if report.has_anomaly:
        expected = HealthStatus.CRITICAL
    elif m.h_rms > t.warning_rms or (m.c_rms or 0.0) > t.warning_rms:
        expected = HealthStatus.WARNING
    else:
        expected = HealthStatus.HEALTHY
    assert health_status(m, t) == expected
    assert {a.severity for a in report.anomalies} <= {Severity.CRITICAL}


# --------------------------------------------------------------------------- thresholds


def test_custom_thresholds_are_honored() -> None:
    """A detector and health_status given custom thresholds apply them, not the defaults."""
    custom = HealthThresholds(vanishing_rms=0.01, warning_rms=1.0, critical_rms=2.0)
    m = metrics(h_rms=2.5, h_env_rms_max=2.6, c_rms=0.005, c_env_rms_max=0.006)
    assert records(AnomalyDetector(thresholds=custom).check_lstm_health(m)) == [
        crit(T.LSTM_H_EXPLOSION, 2.5, 2.0),
        crit(T.LSTM_C_VANISHING, 0.005, 0.01),
    ]
    assert (health_status(m, custom), health_status(m), check(m).has_anomaly) == (
        HealthStatus.CRITICAL,
        HealthStatus.HEALTHY,
        False,
    )


def test_detector_defaults_to_default_thresholds() -> None:
    """AnomalyDetector() and AnomalyDetector(thresholds=None) use HealthThresholds()."""
    expected = HealthThresholds(vanishing_rms=1e-6, warning_rms=5.0, critical_rms=10.0)
    assert (AnomalyDetector().thresholds, AnomalyDetector(thresholds=None).thresholds) == (
        expected,
        expected,
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"vanishing_rms": 6.0},
        {"warning_rms": 11.0},
        {"critical_rms": 4.0},
        {"warning_rms": 10.0},
        {"vanishing_rms": 5.0},
        {"vanishing_rms": INF},
        {"warning_rms": INF},
    ],
)
def test_unordered_thresholds_are_rejected(kwargs: dict[str, float]) -> None:
    """Thresholds not strictly ordered vanishing < warning < critical raise ValueError."""
    with pytest.raises(ValueError, match="vanishing_rms < warning_rms < critical_rms") as info:
        HealthThresholds(**kwargs)
    (field,) = kwargs
    assert f"{field}={kwargs[field]!r}" in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"vanishing_rms": 0.0}, "greater than 0"),
        ({"vanishing_rms": -1e-6}, "greater than 0"),
        ({"warning_rms": -5.0}, "greater than 0"),
        ({"critical_rms": 0.0}, "greater than 0"),
        ({"vanishing_rms": NAN}, "greater than 0"),
        ({"warning_rms": NAN}, "greater than 0"),
        ({"critical_rms": NAN}, "greater than 0"),
        ({"critical_rms": -INF}, "greater than 0"),
        ({"critical_rms": INF}, "critical_rms must be finite"),
    ],
)
def test_non_positive_or_non_finite_thresholds_are_rejected(
    kwargs: dict[str, float], message: str
) -> None:
    """A non-positive, NaN or infinite threshold raises ValueError naming the field."""
    with pytest.raises(ValueError, match=message) as info:
        HealthThresholds(**kwargs)
    (field,) = kwargs
    assert field in str(info.value)


@pytest.mark.parametrize("value", [True, "10", None, [10.0]])
def test_thresholds_reject_wrong_types(value: Any) -> None:
    """A bool, string, None or list for a threshold raises a ValidationError naming the field."""
    with pytest.raises(ValidationError) as info:
        HealthThresholds(critical_rms=value)
    assert [e["loc"] for e in info.value.errors()] == [("critical_rms",)]


@pytest.mark.parametrize(
    "call",
    [
        lambda: AnomalyDetector(thresholds={"critical_rms": 3.0}),  # type: ignore[arg-type]
        lambda: AnomalyDetector().check_lstm_health(HEALTHY_FIELDS),  # type: ignore[arg-type]
        lambda: AnomalyDetector().check_lstm_health(None),  # type: ignore[arg-type]
        lambda: health_status(HEALTHY_FIELDS),  # type: ignore[arg-type]
        lambda: health_status(metrics(), {"critical_rms": 3.0}),  # type: ignore[arg-type]
    ],
    ids=[
        "detector-thresholds-dict",
        "check-dict",
        "check-none",
        "status-dict",
        "status-thresholds-dict",
    ],
)
def test_wrong_argument_types_raise_type_error(call: Any) -> None:
    """Passing a dict or None where a contract model is expected raises TypeError."""
    with pytest.raises(TypeError, match=r"must be (LSTMHealthMetrics|HealthThresholds)"):
        call()


def test_anomaly_record_fields() -> None:
    """An Anomaly carries exactly type, severity, observed, threshold and message."""
    (anomaly,) = check(metrics(h_rms=12.0)).anomalies
    assert anomaly == Anomaly(
        type=T.LSTM_H_EXPLOSION,
        severity=Severity.CRITICAL,
        observed=12.0,
        threshold=CRITICAL,
        message=anomaly.message,
    )
    assert set(Anomaly.model_fields) == {
        "type",
        "severity",
        "observed",
        "threshold",
        "message",
        "state",
    }
    assert anomaly.state is None  # no name given to the detector
