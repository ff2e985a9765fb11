"""Tests of compute_lstm_health against a float64 reference written here."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from esper_telemetry.contracts import (
    HealthStatus,
    LSTMHealthDetail,
    LSTMHealthMetrics,
    health_status,
)
from esper_telemetry.telemetry import compute_lstm_health

ONE_DNN_PROJ_WARNING = "ignore:LSTM with projections is not supported with oneDNN:UserWarning"

#: Relative tolerance per input dtype: float64 is reduced in float64, the rest in float32.
REL_TOL = {
    torch.float64: 1e-12,
    torch.float32: 1e-5,
    torch.float16: 1e-4,
    torch.bfloat16: 1e-4,
}

TRANSFER_METHODS = ("tolist", "item", "cpu", "numpy", "__float__", "__bool__")


# --------------------------------------------------------------------------- reference


def _as_3d(h: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if h.dim() == 2:
        return h.unsqueeze(0), c.unsqueeze(0)
    return h, c


def _scalar(x: torch.Tensor) -> float:
    return float(x.item())


def _ref_one(x: torch.Tensor) -> dict[str, Any]:
    """Reference numbers of one [layers, batch, hidden] tensor, all in float64.

    Finite values are first scaled by a power of two (exact) near 1/max|x|, so that
    squares of float64 values as large as 1e200 or as small as 1e-200 stay in range.
    """
    x = x.detach().to(torch.float64)
    layers, batch, size = x.shape
    amax = _scalar(x.abs().max())
    power = 2.0 ** -max(-1000, min(1000, math.frexp(amax)[1])) if math.isfinite(amax) else 1.0
    sq = (x * power).square()
    l2 = math.sqrt(_scalar(sq.sum())) / power
    env_rms = (sq.sum(dim=(0, 2)) / (layers * size)).sqrt() / power
    layer_rms = (sq.sum(dim=(1, 2)) / (batch * size)).sqrt() / power
    return {
        "l2": l2,
        "rms": l2 / math.sqrt(x.numel()),
        "env_rms_mean": _scalar(env_rms.mean()),
        "env_rms_max": _scalar(env_rms.max()),
        "max": amax,
        "has_nan": bool(torch.isnan(x).any().item()),
        "has_inf": bool(torch.isinf(x).any().item()),
        "layer_rms": tuple(layer_rms.tolist()),
        "env_rms": tuple(env_rms.tolist()),
    }


def reference(h: torch.Tensor, c: torch.Tensor) -> tuple[LSTMHealthMetrics, LSTMHealthDetail]:
    """The metrics and detail computed in float64 from h and c as they are stored."""
    h, c = _as_3d(h, c)
    rh, rc = _ref_one(h), _ref_one(c)
    metrics = LSTMHealthMetrics(
        h_l2_total=rh["l2"],
        c_l2_total=rc["l2"],
        h_rms=rh["rms"],
        c_rms=rc["rms"],
        h_env_rms_mean=rh["env_rms_mean"],
        h_env_rms_max=rh["env_rms_max"],
        c_env_rms_mean=rc["env_rms_mean"],
        c_env_rms_max=rc["env_rms_max"],
        h_max=rh["max"],
        c_max=rc["max"],
        has_nan=rh["has_nan"] or rc["has_nan"],
        has_inf=rh["has_inf"] or rc["has_inf"],
    )
    detail = LSTMHealthDetail(
        h_layer_rms=rh["layer_rms"],
        c_layer_rms=rc["layer_rms"],
        h_env_rms=rh["env_rms"],
        c_env_rms=rc["env_rms"],
    )
    return metrics, detail


def _close(actual: Any, expected: Any, rel: float) -> bool:
    if isinstance(expected, bool) or isinstance(actual, bool):
        return actual is expected
    if expected is None or isinstance(expected, str | int):  # scope, ranks, an env index
        return type(actual) is type(expected) and actual == expected
    if isinstance(expected, dict):  # a sub-model (a worst env of a group call)
        return (
            isinstance(actual, dict)
            and actual.keys() == expected.keys()
            and all(_close(actual[k], expected[k], rel) for k in expected)
        )
    if isinstance(expected, tuple):
        return (
            isinstance(actual, tuple)
            and len(actual) == len(expected)
            and all(_close(a, e, rel) for a, e in zip(actual, expected, strict=True))
        )
    if math.isnan(expected):
        return math.isnan(actual)
    if math.isinf(expected):
        return bool(actual == expected)
    return math.isclose(actual, expected, rel_tol=rel, abs_tol=0.0)


def assert_model_close(actual: BaseModel, expected: BaseModel, rel: float) -> None:
    """Every field of ``actual`` matches ``expected`` (NaN = NaN, ±Inf exact, floats to rel)."""
    assert type(actual) is type(expected)
    got, want = actual.model_dump(), expected.model_dump()
    assert got.keys() == want.keys()
    mismatches = {k: (got[k], want[k]) for k in want if not _close(got[k], want[k], rel)}
    assert mismatches == {}


def measure(h: torch.Tensor, c: torch.Tensor) -> LSTMHealthMetrics:
    """``compute_lstm_health((h, c))``, typed for a state that is not None."""
    metrics = compute_lstm_health((h, c))
    assert metrics is not None
    return metrics


def measure_detail(h: torch.Tensor, c: torch.Tensor) -> tuple[LSTMHealthMetrics, LSTMHealthDetail]:
    """``compute_lstm_health((h, c), detail=True)``, typed for a state that is not None."""
    result = compute_lstm_health((h, c), detail=True)
    assert result is not None
    return result


# --------------------------------------------------------------------------- strategies

DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _exponents(dtype: torch.dtype) -> st.SearchStrategy[int]:
    if dtype == torch.float16:
        # float16 spans ~6e-8 .. 65504: exercise subnormals and overflow to Inf.
        return st.integers(-9, 5)
    return st.integers(-30, 30)


@st.composite
def lstm_states(draw: st.DrawFn) -> tuple[torch.Tensor, torch.Tensor]:
    """(h, c) of random shape, dtype and scale; c's hidden size may differ (proj_size)."""
    layers = draw(st.integers(1, 4))
    batch = draw(st.integers(1, 64))
    h_size = draw(st.integers(1, 64))
    c_size = draw(st.one_of(st.just(h_size), st.integers(1, 64)))
    dtype = draw(st.sampled_from(DTYPES))
    h_exp = draw(_exponents(dtype))
    c_exp = draw(st.one_of(st.just(h_exp), _exponents(dtype)))
    two_d = layers == 1 and draw(st.booleans())
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**32 - 1)))
    shape_h = (batch, h_size) if two_d else (layers, batch, h_size)
    shape_c = (batch, c_size) if two_d else (layers, batch, c_size)
    h = torch.randn(shape_h, generator=gen, dtype=torch.float64) * 10.0**h_exp
    c = torch.randn(shape_c, generator=gen, dtype=torch.float64) * 10.0**c_exp
    return h.to(dtype), c.to(dtype)


@st.composite
def broken_lstm_states(draw: st.DrawFn) -> tuple[torch.Tensor, torch.Tensor]:
    """lstm_states with a few NaN and ±Inf put at random places in h, c or both."""
    h, c = (t.clone() for t in draw(lstm_states()))
    for value in draw(st.lists(st.sampled_from((math.nan, math.inf, -math.inf)), max_size=3)):
        x = draw(st.sampled_from((h, c)))
        x.view(-1)[draw(st.integers(0, x.numel() - 1))] = value
    return h, c


@st.composite
def shapes(draw: st.DrawFn) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Shapes of h and c: [layers, batch, hidden] or [batch, hidden]; c may be wider."""
    layers = draw(st.integers(1, 4))
    batch = draw(st.integers(1, 80))
    h_size = draw(st.integers(1, 80))
    c_size = draw(st.one_of(st.just(h_size), st.integers(1, 80)))
    if layers == 1 and draw(st.booleans()):
        return (batch, h_size), (batch, c_size)
    return (layers, batch, h_size), (layers, batch, c_size)


def _state(
    layers: int, batch: int, h_size: int, c_size: int | None = None, *, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    h = torch.randn(layers, batch, h_size, generator=gen)
    c = torch.randn(layers, batch, c_size or h_size, generator=gen) * 3.0
    return h, c


# --------------------------------------------------------------------------- values


@given(state=lstm_states())
@example(state=(torch.full((2, 3, 5), 1e30), torch.full((2, 3, 7), -1e30)))
@example(state=(torch.full((2, 3, 5), 1e-30), torch.full((2, 3, 7), -1e-30)))
def test_metrics_match_float64_reference(state: tuple[torch.Tensor, torch.Tensor]) -> None:
    """For random shapes, dtypes and scales the metrics match the float64 reference."""
    h, c = state
    expected, _ = reference(h, c)
    actual = compute_lstm_health((h, c))
    assert isinstance(actual, LSTMHealthMetrics)
    assert_model_close(actual, expected, REL_TOL[h.dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("value", [1e-20, 1e-25, 1e-30])
def test_tiny_finite_values_are_measured_exactly(dtype: torch.dtype, value: float) -> None:
    """Tiny values whose squares underflow float32 still give their true RMS and norms."""
    h = torch.full((2, 3, 4), value, dtype=dtype)
    c = torch.full((2, 3, 6), -value, dtype=dtype)
    expected, _ = reference(h, c)
    assert_model_close(measure(h, c), expected, REL_TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
def test_huge_finite_values_are_exact_and_not_inf(dtype: torch.dtype) -> None:
    """Values of 1e30 (squares overflow float32) give exact norms and no Inf flag."""
    h = torch.full((2, 3, 4), 1e30, dtype=dtype)
    c = torch.full((2, 3, 6), -1e30, dtype=dtype)
    stored = float(h[0, 0, 0])  # 1e30 as rounded by the dtype
    expected = LSTMHealthMetrics(
        h_l2_total=stored * math.sqrt(24),
        c_l2_total=stored * math.sqrt(36),
        h_rms=stored,
        c_rms=stored,
        h_env_rms_mean=stored,
        h_env_rms_max=stored,
        c_env_rms_mean=stored,
        c_env_rms_max=stored,
        h_max=stored,
        c_max=stored,
        has_nan=False,
        has_inf=False,
    )
    assert_model_close(measure(h, c), expected, 1e-12)


@settings(max_examples=200)
@given(
    shape=shapes(),
    dtype=st.sampled_from(DTYPES),
    values=st.tuples(st.floats(allow_nan=False), st.floats(allow_nan=False)),
)
@example(shape=((2, 3, 5), (2, 3, 7)), dtype=torch.float64, values=(0.5, 10.0))
@example(shape=((1, 9, 3), (1, 9, 3)), dtype=torch.float32, values=(0.1, -1e30))
@example(shape=((4, 7, 11), (4, 7, 6)), dtype=torch.float64, values=(1e-200, 1e300))
def test_constant_state_measures_exactly_its_value(
    shape: tuple[tuple[int, ...], tuple[int, ...]],
    dtype: torch.dtype,
    values: tuple[float, float],
) -> None:
    """A state constant in h and in c gives exactly |value| for every RMS, L2 to 1e-12."""
    h = torch.full(shape[0], values[0], dtype=torch.float64).to(dtype)
    c = torch.full(shape[1], values[1], dtype=torch.float64).to(dtype)
    h_value, c_value = abs(float(h.flatten()[0])), abs(float(c.flatten()[0]))
    assume(math.isfinite(h_value) and math.isfinite(c_value))
    metrics, detail = measure_detail(h, c)
    layers = 1 if h.dim() == 2 else h.shape[0]
    batch = h.shape[-2]
    h_l2, c_l2 = h_value * math.sqrt(h.numel()), c_value * math.sqrt(c.numel())
    assert math.isclose(metrics.h_l2_total, h_l2, rel_tol=1e-12, abs_tol=0.0)
    assert metrics.c_l2_total is not None
    assert math.isclose(metrics.c_l2_total, c_l2, rel_tol=1e-12, abs_tol=0.0)
    assert metrics == LSTMHealthMetrics(
        h_l2_total=metrics.h_l2_total,  # checked above, to 1e-12
        c_l2_total=metrics.c_l2_total,
        h_rms=h_value,
        c_rms=c_value,
        h_env_rms_mean=h_value,
        h_env_rms_max=h_value,
        c_env_rms_mean=c_value,
        c_env_rms_max=c_value,
        h_max=h_value,
        c_max=c_value,
        has_nan=False,
        has_inf=False,
    )
    assert detail == LSTMHealthDetail(
        h_layer_rms=(h_value,) * layers,
        c_layer_rms=(c_value,) * layers,
        h_env_rms=(h_value,) * batch,
        c_env_rms=(c_value,) * batch,
    )


@settings(max_examples=50)
@given(shape=shapes(), dtype=st.sampled_from((torch.float32, torch.float64)))
@pytest.mark.parametrize(
    ("c_value", "status"), [(10.0, HealthStatus.WARNING), (5.0, HealthStatus.HEALTHY)]
)
def test_rms_exactly_at_a_threshold_is_not_above_it(
    shape: tuple[tuple[int, ...], tuple[int, ...]],
    dtype: torch.dtype,
    c_value: float,
    status: HealthStatus,
) -> None:
    """c = 10 (critical_rms) everywhere is a WARNING, c = 5 (warning_rms) HEALTHY; h = 0.5."""
    h = torch.full(shape[0], 0.5, dtype=dtype)
    c = torch.full(shape[1], c_value, dtype=dtype)
    metrics = measure(h, c)
    assert (metrics.c_rms, metrics.c_env_rms_max, metrics.h_rms) == (c_value, c_value, 0.5)
    assert health_status(metrics) is status


@settings(max_examples=50)
@given(
    shape=shapes(),
    dtype=st.sampled_from((torch.float32, torch.float64)),
    seed=st.integers(0, 2**32 - 1),
)
def test_rms_of_plus_minus_a_value_never_exceeds_it(
    shape: tuple[tuple[int, ...], tuple[int, ...]], dtype: torch.dtype, seed: int
) -> None:
    """h = ±0.5 and c = ±10 with random signs: no RMS figure exceeds max|x|, so no CRITICAL."""
    gen = torch.Generator().manual_seed(seed)
    h = torch.randint(0, 2, shape[0], generator=gen).to(dtype) - 0.5
    c = (torch.randint(0, 2, shape[1], generator=gen).to(dtype) * 2 - 1) * 10.0
    metrics, detail = measure_detail(h, c)
    expected, expected_detail = reference(h, c)
    assert_model_close(metrics, expected, REL_TOL[dtype])
    assert_model_close(detail, expected_detail, REL_TOL[dtype])
    h_figures = (metrics.h_rms, metrics.h_env_rms_mean, metrics.h_env_rms_max)
    assert metrics.c_rms is not None
    assert metrics.c_env_rms_mean is not None
    assert metrics.c_env_rms_max is not None
    c_figures = (metrics.c_rms, metrics.c_env_rms_mean, metrics.c_env_rms_max)
    assert max(h_figures + detail.h_layer_rms + detail.h_env_rms) <= 0.5 == metrics.h_max
    assert detail.c_layer_rms is not None
    assert detail.c_env_rms is not None
    assert max((*c_figures, *detail.c_layer_rms, *detail.c_env_rms)) <= 10.0 == metrics.c_max
    assert health_status(metrics) is HealthStatus.WARNING


def test_zero_state_gives_zero_metrics_and_no_flags() -> None:
    """An all-zero state measures exactly 0 everywhere and raises no flag."""
    h, c = torch.zeros(2, 4, 8), torch.zeros(2, 4, 3)
    expected = LSTMHealthMetrics(
        h_l2_total=0.0,
        c_l2_total=0.0,
        h_rms=0.0,
        c_rms=0.0,
        h_env_rms_mean=0.0,
        h_env_rms_max=0.0,
        c_env_rms_mean=0.0,
        c_env_rms_max=0.0,
        h_max=0.0,
        c_max=0.0,
        has_nan=False,
        has_inf=False,
    )
    assert compute_lstm_health((h, c)) == expected


@pytest.mark.parametrize("where", ["h", "c"])
def test_nan_only_sets_has_nan(where: str) -> None:
    """A single NaN in h or c sets has_nan, not has_inf, and the reference values follow."""
    h, c = _state(2, 4, 8, 5)
    (h if where == "h" else c)[1, 2, 3] = math.nan
    expected, _ = reference(h, c)
    actual = measure(h, c)
    assert (actual.has_nan, actual.has_inf) == (True, False)
    assert_model_close(actual, expected, REL_TOL[torch.float32])


@pytest.mark.parametrize("where", ["h", "c"])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_inf_only_sets_has_inf(where: str, sign: float) -> None:
    """A single +Inf or -Inf in h or c sets has_inf, not has_nan; norms and max are Inf."""
    h, c = _state(2, 4, 8, 5)
    (h if where == "h" else c)[0, 1, 2] = sign * math.inf
    expected, _ = reference(h, c)
    actual = measure(h, c)
    assert (actual.has_nan, actual.has_inf) == (False, True)
    assert_model_close(actual, expected, REL_TOL[torch.float32])


@pytest.mark.parametrize(("nan_in", "inf_in"), [("h", "h"), ("h", "c"), ("c", "h"), ("c", "c")])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_nan_and_inf_together_set_both_flags(nan_in: str, inf_in: str, sign: float) -> None:
    """NaN and ±Inf together set has_nan and has_inf, wherever each one sits."""
    h, c = _state(2, 4, 8, 5)
    (h if nan_in == "h" else c)[1, 1, 1] = math.nan
    (h if inf_in == "h" else c)[0, 3, 4] = sign * math.inf
    expected, _ = reference(h, c)
    actual = measure(h, c)
    assert (actual.has_nan, actual.has_inf) == (True, True)
    assert_model_close(actual, expected, REL_TOL[torch.float32])


@settings(max_examples=200)
@given(state=broken_lstm_states())
@example(state=(torch.tensor([[[math.nan, 1.0]]]), torch.full((1, 1, 3), 1e30)))
@example(state=(torch.full((1, 1, 3), -1e-30), torch.tensor([[[1.0, math.nan]]])))
def test_broken_states_match_float64_reference(state: tuple[torch.Tensor, torch.Tensor]) -> None:
    """With NaN and ±Inf placed anywhere, metrics and detail match the float64 reference."""
    h, c = state
    expected_metrics, expected_detail = reference(h, c)
    metrics, detail = measure_detail(h, c)
    assert_model_close(metrics, expected_metrics, REL_TOL[h.dtype])
    assert_model_close(detail, expected_detail, REL_TOL[h.dtype])


#: (dtype, magnitude) whose squares leave the range the dtype's norms run in.
OUT_OF_RANGE = [
    (torch.float32, 1e30),
    (torch.float32, 1e-30),
    (torch.float64, 1e200),
    (torch.float64, 1e-200),
]


@pytest.mark.parametrize(("dtype", "value"), OUT_OF_RANGE, ids=str)
@pytest.mark.parametrize("nan_in", ["h", "c"])
@pytest.mark.parametrize("with_inf", [False, True], ids=["nan", "nan-and-inf"])
@pytest.mark.parametrize("shape", [(2, 3, 4, 6), (3, 40, 8, 5)], ids=["few-rows", "many-rows"])
def test_nan_in_one_tensor_leaves_the_other_exact(
    dtype: torch.dtype, value: float, nan_in: str, with_inf: bool, shape: tuple[int, ...]
) -> None:
    """A NaN (and maybe -Inf) in one tensor: the other's huge or tiny values stay exact."""
    broken, other = _state(*shape, seed=1)
    broken, other = broken.to(dtype), (other.double() * value).to(dtype)
    broken[1, 2, 3] = math.nan
    if with_inf:
        broken[0, 1, 2] = -math.inf
    h, c = (broken, other) if nan_in == "h" else (other, broken)
    expected, expected_detail = reference(h, c)
    metrics, detail = measure_detail(h, c)
    assert (metrics.has_nan, metrics.has_inf) == (True, with_inf)
    assert_model_close(metrics, expected, REL_TOL[dtype])
    assert_model_close(detail, expected_detail, REL_TOL[dtype])
    # The measured tensor went through the float64 rescaling: far tighter than float32.
    side = "c" if nan_in == "h" else "h"
    got, want = metrics.model_dump(), expected.model_dump()
    for name in ("l2_total", "rms", "env_rms_mean", "env_rms_max", "max"):
        key = f"{side}_{name}"
        assert math.isclose(got[key], want[key], rel_tol=1e-12), key


@pytest.mark.parametrize(("dtype", "value"), OUT_OF_RANGE, ids=str)
def test_nan_in_h_with_constant_c_gives_c_exactly(dtype: torch.dtype, value: float) -> None:
    """NaN in h, c = 1e30 (or 1e-30, ...) everywhere: c_rms is exactly c's value, no Inf."""
    h = torch.randn(2, 3, 4, dtype=dtype)
    h[0, 0, 0] = math.nan
    c = torch.full((2, 3, 6), value, dtype=dtype)
    stored = float(c[0, 0, 0])
    metrics = measure(h, c)
    assert (metrics.c_rms, metrics.c_env_rms_mean, metrics.c_env_rms_max, metrics.c_max) == (
        (stored,) * 4
    )
    assert metrics.c_l2_total is not None
    assert math.isclose(metrics.c_l2_total, stored * math.sqrt(c.numel()), rel_tol=1e-12)
    assert math.isnan(metrics.h_rms)
    assert (metrics.has_nan, metrics.has_inf) == (True, False)


def test_two_dimensional_state_is_one_layer() -> None:
    """A [batch, hidden] state measures exactly like the same state with one layer."""
    h, c = _state(1, 6, 8, 4)
    assert compute_lstm_health((h[0], c[0])) == compute_lstm_health((h, c))


# --------------------------------------------------------------------------- detail


@settings(max_examples=50)
@given(state=lstm_states())
def test_detail_matches_float64_reference(state: tuple[torch.Tensor, torch.Tensor]) -> None:
    """detail=True returns the same metrics plus per-layer and per-env RMS of the reference."""
    h, c = state
    expected_metrics, expected_detail = reference(h, c)
    result = compute_lstm_health((h, c), detail=True)
    assert isinstance(result, tuple)
    metrics, detail = result
    assert_model_close(metrics, expected_metrics, REL_TOL[h.dtype])
    assert_model_close(detail, expected_detail, REL_TOL[h.dtype])


def test_detail_does_not_change_the_metrics() -> None:
    """The metrics returned with detail=True equal those returned without it."""
    h, c = _state(3, 16, 32, 12)
    metrics, _ = measure_detail(h, c)
    assert metrics == compute_lstm_health((h, c))


def test_detail_of_huge_values_is_exact() -> None:
    """Per-layer and per-env RMS stay exact when the squares overflow float32."""
    h = torch.full((2, 3, 4), 1e30)
    h[1] *= 2.0
    c = torch.full((2, 3, 6), -3e25)
    expected_metrics, expected_detail = reference(h, c)
    metrics, detail = measure_detail(h, c)
    assert_model_close(metrics, expected_metrics, 1e-12)
    assert_model_close(detail, expected_detail, 1e-12)


# --------------------------------------------------------------------------- transfers


@pytest.fixture
def transfers(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Count every device→host transfer method called on any tensor (delegating to torch)."""
    counts: Counter[str] = Counter()
    for name in TRANSFER_METHODS:
        original = getattr(torch.Tensor, name)

        def counting(
            self: torch.Tensor, *args: Any, _n: str = name, _o: Any = original, **kw: Any
        ) -> Any:
            counts[_n] += 1
            return _o(self, *args, **kw)

        monkeypatch.setattr(torch.Tensor, name, counting)
    return counts


@pytest.mark.parametrize("shape", [(1, 2, 3, 3), (4, 512, 256, 128)], ids=["small", "large"])
@pytest.mark.parametrize("detail", [False, True])
def test_one_transfer_per_call(
    transfers: Counter[str], shape: tuple[int, int, int, int], detail: bool
) -> None:
    """A healthy state crosses to the host in exactly one tolist() and nothing else."""
    h, c = _state(*shape)
    transfers.clear()
    compute_lstm_health((h, c), detail=detail)
    assert dict(transfers) == {"tolist": 1}


@pytest.mark.parametrize("detail", [False, True])
def test_nan_and_inf_take_exactly_two_transfers(transfers: Counter[str], detail: bool) -> None:
    """When NaN and Inf are both present, a second tolist() asks for Inf; nothing else runs."""
    h, c = _state(2, 8, 16, 8)
    h[0, 0, 0] = math.nan
    c[1, 1, 1] = math.inf
    transfers.clear()
    compute_lstm_health((h, c), detail=detail)
    assert dict(transfers) == {"tolist": 2}


@pytest.mark.parametrize("detail", [False, True])
def test_nan_and_out_of_range_values_take_exactly_two_transfers(
    transfers: Counter[str], detail: bool
) -> None:
    """NaN in h and huge c: one second tolist() both rescales c and asks for Inf."""
    h, c = _state(2, 8, 16, 8)
    h[0, 0, 0] = math.nan
    c *= 1e30
    transfers.clear()
    compute_lstm_health((h, c), detail=detail)
    assert dict(transfers) == {"tolist": 2}


# --------------------------------------------------------------------------- inputs


def test_works_under_inference_mode() -> None:
    """Inference tensors measured inside torch.inference_mode() match the reference."""
    with torch.inference_mode():
        h, c = _state(2, 8, 16, 8)
        actual = measure(h, c)
    expected, _ = reference(h, c)
    assert_model_close(actual, expected, REL_TOL[torch.float32])


def test_tensors_requiring_grad_are_read_not_changed() -> None:
    """Leaf tensors that require grad are left as they were: same values, version, no grad."""
    h, c = _state(2, 8, 16, 8)
    h.requires_grad_(True)
    c.requires_grad_(True)
    before = (h.detach().clone(), c.detach().clone(), h._version, c._version)
    actual = compute_lstm_health((h, c), detail=True)
    assert actual is not None
    after = (h.detach(), c.detach(), h._version, c._version)
    assert torch.equal(after[0], before[0])
    assert torch.equal(after[1], before[1])
    assert (after[2], after[3]) == (before[2], before[3])
    assert (h.grad, c.grad, h.grad_fn, c.grad_fn) == (None, None, None, None)
    assert (h.requires_grad, c.requires_grad, torch.is_grad_enabled()) == (True, True, True)


def test_non_leaf_state_keeps_its_graph() -> None:
    """Measuring a state with grad history neither breaks nor extends its backward pass."""
    x = torch.randn(2, 8, 16, requires_grad=True)
    h, c = x * 2.0, x * 3.0
    expected, _ = reference(h, c)
    actual = measure(h, c)
    torch.autograd.backward(h.sum() + c.sum())
    assert x.grad is not None
    assert torch.equal(x.grad, torch.full_like(x, 5.0))
    assert_model_close(actual, expected, REL_TOL[torch.float32])


def _transposed() -> tuple[torch.Tensor, torch.Tensor]:
    base_h, base_c = _state(8, 3, 16, 10)  # [batch, layers, hidden] storage
    return base_h.transpose(0, 1), base_c.transpose(0, 1)


def _expanded() -> tuple[torch.Tensor, torch.Tensor]:
    h, c = _state(1, 1, 16, 10)
    return h.expand(3, 8, 16), c.expand(3, 8, 10)


def _sliced() -> tuple[torch.Tensor, torch.Tensor]:
    h, c = _state(4, 16, 32, 20)
    return h[::2, 1::2, 3:], c[1:3, ::2, ::3]


def _hidden_transposed() -> tuple[torch.Tensor, torch.Tensor]:
    h, c = _state(2, 16, 8, 8)  # [layers, hidden, batch] storage
    return h.transpose(1, 2), c.transpose(1, 2)


@pytest.mark.parametrize(
    "make", [_transposed, _expanded, _sliced, _hidden_transposed], ids=lambda f: f.__name__
)
def test_non_contiguous_views_match_reference(make: Any) -> None:
    """Transposed, expanded and sliced views are measured like their contiguous copies."""
    h, c = make()
    assert not (h.is_contiguous() and c.is_contiguous())
    expected, expected_detail = reference(h.contiguous(), c.contiguous())
    metrics, detail = measure_detail(h, c)
    assert_model_close(metrics, expected, REL_TOL[torch.float32])
    assert_model_close(detail, expected_detail, REL_TOL[torch.float32])


@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize(
    "proj_size",
    [0, pytest.param(3, marks=pytest.mark.filterwarnings(ONE_DNN_PROJ_WARNING))],
)
def test_real_lstm_state_goes_through(num_layers: int, proj_size: int) -> None:
    """The final state of a real nn.LSTM (with and without proj_size) matches the reference."""
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(input_size=5, hidden_size=8, num_layers=num_layers, proj_size=proj_size)
    _, (h, c) = lstm(torch.randn(7, 4, 5))
    assert h.shape == (num_layers, 4, proj_size or 8)
    assert c.shape == (num_layers, 4, 8)
    expected, expected_detail = reference(h, c)
    metrics, detail = measure_detail(h, c)
    assert_model_close(metrics, expected, REL_TOL[torch.float32])
    assert_model_close(detail, expected_detail, REL_TOL[torch.float32])


# --------------------------------------------------------------------------- errors


def test_none_means_no_lstm() -> None:
    """hidden=None returns None, with or without detail."""
    assert (compute_lstm_health(None), compute_lstm_health(None, detail=True)) == (None, None)


@pytest.mark.parametrize(
    ("h", "c", "problem"),
    [
        (
            torch.zeros(1, 2, 3, dtype=torch.int64),
            torch.zeros(1, 2, 3),
            "h must be a floating-point tensor",
        ),
        (
            torch.zeros(1, 2, 3),
            torch.zeros(1, 2, 3, dtype=torch.int32),
            "c must be a floating-point tensor",
        ),
        (
            torch.zeros(1, 2, 3, dtype=torch.bool),
            torch.zeros(1, 2, 3, dtype=torch.bool),
            "h must be a floating-point tensor",
        ),
        (torch.zeros(1, 0, 3), torch.zeros(1, 0, 3), "must not be empty"),
        (torch.zeros(1, 2, 0), torch.zeros(1, 2, 0), "must not be empty"),
        (torch.zeros(1, 2, 3), torch.zeros(1, 2, 0), "must not be empty"),
        (torch.zeros(4), torch.zeros(4), "got rank 1"),
        (torch.zeros(1, 2, 3, 4), torch.zeros(1, 2, 3, 4), "got rank 4"),
        (torch.zeros(2, 2, 3), torch.zeros(1, 2, 3), "agree on layers and batch"),
        (torch.zeros(1, 2, 3), torch.zeros(1, 5, 3), "agree on layers and batch"),
        (torch.zeros(2, 3), torch.zeros(1, 2, 3), "same rank"),
        (torch.zeros(1, 2, 3), torch.zeros(2, 3), "same rank"),
    ],
    ids=[
        "int-h",
        "int-c",
        "bool",
        "batch-0",
        "hidden-0",
        "c-hidden-0",
        "rank-1",
        "rank-4",
        "layers-differ",
        "batch-differs",
        "h-2d-c-3d",
        "h-3d-c-2d",
    ],
)
def test_bad_tensors_raise_value_error_with_shapes(
    h: torch.Tensor, c: torch.Tensor, problem: str
) -> None:
    """Bad dtypes, ranks, empty or mismatched shapes raise ValueError naming problem and shapes."""
    with pytest.raises(ValueError, match=r"^hidden: ") as info:
        compute_lstm_health((h, c))
    message = str(info.value)
    assert problem in message
    assert f"h {tuple(h.shape)} {h.dtype}" in message
    assert f"c {tuple(c.shape)} {c.dtype}" in message


@pytest.mark.parametrize(
    ("hidden", "expected"),
    [
        ((torch.zeros(1, 2, 3),), "got tuple of length 1"),
        ((torch.zeros(1, 2, 3),) * 3, "got tuple of length 3"),
        (3.0, "got float"),
        ((torch.zeros(1, 2, 3), "c"), "c must be a torch.Tensor, got str"),
        ((None, torch.zeros(1, 2, 3)), "h must be a torch.Tensor, got NoneType"),
    ],
    ids=["tuple-of-1", "tuple-of-3", "float", "c-not-tensor", "h-not-tensor"],
)
def test_not_a_pair_of_tensors_raises_type_error(hidden: Any, expected: str) -> None:
    """Anything but a pair of tensors raises TypeError saying what it got."""
    with pytest.raises(TypeError, match="hidden") as info:
        compute_lstm_health(hidden)
    assert expected in str(info.value)


@pytest.mark.parametrize(
    ("detail", "shown"),
    [
        ("yes", "str 'yes'"),
        (1, "int 1"),
        (None, "NoneType None"),
        (np.bool_(True), "numpy.bool"),
    ],
    ids=["str", "int", "none", "numpy-bool"],
)
@pytest.mark.parametrize("hidden", [None, (torch.zeros(1, 2, 3), torch.zeros(1, 2, 3))])
def test_detail_must_be_a_bool(hidden: Any, detail: object, shown: str) -> None:
    """detail="yes" (or 1, None, a numpy bool) raises TypeError naming detail, LSTM or not."""
    with pytest.raises(TypeError) as info:
        compute_lstm_health(hidden, detail=detail)  # type: ignore[call-overload]
    assert str(info.value).startswith(f"detail must be a bool, got {shown}")
