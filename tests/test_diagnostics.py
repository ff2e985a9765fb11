"""Saturation, c growth and dormancy (``diagnostics=True``) against hand-computed figures.

Each state is planted so that its figures can be counted by hand: known saturated
elements, a cell grown linearly with the steps since each env's reset, dead units.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import pytest
import torch
from pydantic import ValidationError

from esper_telemetry import compute_lstm_health, compute_recurrent_health
from esper_telemetry.contracts import (
    AnomalyType,
    HealthStatus,
    HealthThresholds,
    LSTMHealthMetrics,
    PPOUpdatePayload,
    RecurrentDiagnostics,
    Severity,
    health_status,
)
from esper_telemetry.telemetry import AnomalyDetector

TRANSFER_METHODS = ("tolist", "item", "cpu", "numpy", "__float__", "__bool__")

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


def diagnose(hidden: Any, **kwargs: Any) -> RecurrentDiagnostics:
    """The diagnostics compute_lstm_health gives for ``hidden``."""
    result = compute_lstm_health(hidden, diagnostics=True, **kwargs)
    metrics: LSTMHealthMetrics | None = result[0] if isinstance(result, tuple) else result
    assert metrics is not None
    assert metrics.diagnostics is not None
    return metrics.diagnostics


def planted(dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """A [2, 4, 5] state: h with 6 saturated elements, c with 5, values far from the bounds.

    Layer 0 of h: 4 elements at +-0.999 (all in env 0); layer 1: 2 at 1.0. c: 3 elements
    at +-3.0 in layer 0 and 2 at 4.0 in layer 1; all others are 0.5 (h) and 1.0 (c).
    """
    h = torch.full((2, 4, 5), 0.5, dtype=torch.float64)
    c = torch.full((2, 4, 5), 1.0, dtype=torch.float64)
    h[0, 0, :4] = torch.tensor([0.999, -0.999, 0.999, -0.999])
    h[1, 2, 1:3] = 1.0
    c[0, 1, :3] = torch.tensor([3.0, -3.0, 3.0])
    c[1, 3, 3:] = 4.0
    return h.to(dtype), c.to(dtype)


# --------------------------------------------------------------------------- saturation


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_saturation_counts_the_planted_elements(dtype: torch.dtype) -> None:
    """h and c saturation are the planted counts over all elements, in every dtype."""
    d = diagnose(planted(dtype), detail=True)
    assert (d.h_saturation_frac, d.c_saturation_frac) == (6 / 40, 5 / 40)
    assert (d.h_layer_saturation_frac, d.c_layer_saturation_frac) == (
        (4 / 20, 2 / 20),
        (3 / 20, 2 / 20),
    )


def test_values_at_the_bounds_are_not_saturated() -> None:
    """|h| = 0.99 and |c| = 2.65 exactly (float64) are not saturated: the bounds are strict."""
    h = torch.tensor([[0.99, -0.99, math.nextafter(0.99, 1.0), 0.0]], dtype=torch.float64)
    c = torch.tensor([[2.65, -2.65, -math.nextafter(2.65, 3.0), 0.0]], dtype=torch.float64)
    d = diagnose((h, c))
    assert (d.h_saturation_frac, d.c_saturation_frac) == (0.25, 0.25)


def test_a_gru_state_has_no_cell_figures() -> None:
    """A GRU's h gives h saturation and dormancy; c saturation and growth are None."""
    h, _ = planted()
    d = diagnose(h, steps_since_reset=[1, 2, 3, 4], detail=True)
    assert (d.h_saturation_frac, d.c_saturation_frac, d.c_growth_ratio) == (6 / 40, None, None)
    assert d.c_layer_saturation_frac is None
    assert d.h_layer_saturation_frac == (4 / 20, 2 / 20)


def test_a_real_gru_and_lstm_measure_in_range() -> None:
    """States of real nn.GRU and nn.LSTM layers give fractions in [0, 1] and a ratio below 1."""
    torch.manual_seed(0)
    x = torch.randn(7, 3, 4) * 5
    _, (h, c) = torch.nn.LSTM(4, 6, num_layers=2)(x)
    d = diagnose((h, c), steps_since_reset=[7, 7, 7])
    assert d.c_growth_ratio is not None
    assert 0.0 < d.c_growth_ratio < 1.0
    assert 0.0 <= d.h_saturation_frac <= 1.0
    assert 0.0 <= d.dormant_frac <= 1.0
    g = diagnose(torch.nn.GRU(4, 6)(x)[1])
    assert g.c_saturation_frac is None
    assert 0.0 <= g.h_saturation_frac <= 1.0


def test_lstm_with_projection_counts_c_over_its_own_width() -> None:
    """With proj_size, h and c differ in width; each fraction divides by its own count."""
    h = torch.zeros(1, 2, 3)
    c = torch.zeros(1, 2, 5)
    h[0, 0, 0] = 1.0
    c[0, 1, :2] = 3.0
    d = diagnose((h, c))
    assert (d.h_saturation_frac, d.c_saturation_frac) == (1 / 6, 2 / 10)


# --------------------------------------------------------------------------- growth


def test_growth_ratio_of_a_linearly_grown_cell() -> None:
    """c grown by rate r per step since each env's reset gives max r (an env's max|c| / (1+t))."""
    steps = torch.tensor([0, 3, 9, 19])
    rates = [0.25, 0.5, 0.75, 0.125]
    c = torch.zeros(2, 4, 3, dtype=torch.float64)
    for env, (t, r) in enumerate(zip(steps.tolist(), rates, strict=True)):
        c[1, env, 2] = -r * (1 + t)  # the env's largest |c|, in its last layer
        c[0, env, 0] = 0.1
    d = diagnose((torch.zeros(2, 4, 3, dtype=torch.float64), c), steps_since_reset=steps)
    assert d.c_growth_ratio == 0.75


@pytest.mark.parametrize("steps", [[4, 4], (4, 4), range(4, 5 + 3, 3)], ids=str)
def test_steps_may_be_a_sequence_of_ints(steps: Any) -> None:
    """A list or tuple of ints is as good as a tensor."""
    c = torch.tensor([[1.0, 2.0], [0.5, 0.5]])
    d = diagnose((torch.zeros(2, 2), c), steps_since_reset=steps)
    assert d.c_growth_ratio == 2.0 / 5


def test_growth_is_none_without_steps() -> None:
    """Without steps_since_reset there is no growth ratio; the other figures are there."""
    d = diagnose(planted())
    assert d.c_growth_ratio is None
    assert d.c_saturation_frac == 5 / 40


@pytest.mark.parametrize(
    ("steps", "error", "words"),
    [
        (torch.tensor([1.0, 2.0, 3.0, 4.0]), TypeError, "integer tensor"),
        (torch.tensor([True, False, True, False]), TypeError, "integer tensor"),
        (torch.tensor([1, 2, 3]), ValueError, "shape (4,)"),
        (torch.tensor([[1, 2, 3, 4]]), ValueError, "shape (4,)"),
        ([1, 2, 3], ValueError, "one value per env (4), got 3"),
        ([1, 2, True, 4], TypeError, "steps_since_reset[2] must be an int"),
        ([1, 2, 3.0, 4], TypeError, "steps_since_reset[2] must be an int"),
        ([1, -2, 3, 4], ValueError, "steps_since_reset[1] must be >= 0, got -2"),
        ("1234", TypeError, "got str"),
        (4, TypeError, "got int"),
        (torch.tensor([1, 2, -7, 4]), ValueError, "a smallest value of -7"),
    ],
)
def test_bad_steps_are_refused_naming_the_argument(steps: Any, error: type, words: str) -> None:
    """Each bad steps_since_reset raises one error that names it and what is wrong."""
    with pytest.raises(error) as info:
        compute_lstm_health(planted(), diagnostics=True, steps_since_reset=steps)
    assert "steps_since_reset" in str(info.value)
    assert words in str(info.value)


def test_steps_are_checked_without_diagnostics_too() -> None:
    """A steps_since_reset of the wrong length fails even when diagnostics are off."""
    with pytest.raises(ValueError, match="one value per env"):
        compute_lstm_health(planted(), steps_since_reset=[1])


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"diagnostics": "yes"}, "diagnostics must be a bool"),
        ({"diagnostics": 1}, "diagnostics must be a bool"),
        ({"diagnostics": True, "thresholds": {"dormant_tau": 0.2}}, "thresholds must be None"),
    ],
)
def test_bad_flags_are_type_errors(kwargs: dict[str, Any], words: str) -> None:
    """diagnostics must be a bool and thresholds a HealthThresholds."""
    with pytest.raises(TypeError, match=words):
        compute_lstm_health(planted(), **kwargs)


# --------------------------------------------------------------------------- dormancy


def dead_units() -> torch.Tensor:
    """h [2, 3, 5]: layer 0 has unit 0 at zero and unit 1 at 0.05 against units at 1.0;
    layer 1 has one unit at 0.125 with the others at 0.5.

    Layer 0's mean |h| over units is (0 + 0.05 + 3) / 5 = 0.61, so tau = 0.1 makes units
    at most 0.061 dormant: units 0 and 1. Layer 1's mean is (0.125 + 2) / 5 = 0.425, whose
    tenth is 0.0425: no unit is dormant.
    """
    h = torch.full((2, 3, 5), 1.0, dtype=torch.float64)
    h[0, :, 0] = 0.0
    h[0, :, 1] = torch.tensor([0.05, -0.05, 0.05])
    h[1] = 0.5
    h[1, :, 4] = -0.125
    return h


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_dormant_units_are_the_planted_ones(dtype: torch.dtype) -> None:
    """Two of layer 0's five units are dormant, none of layer 1's: 2 of 10 in all."""
    d = diagnose((dead_units().to(dtype), torch.zeros(2, 3, 5, dtype=dtype)), detail=True)
    assert (d.dormant_frac, d.layer_dormant_frac) == (0.2, (0.4, 0.0))


def test_tau_comes_from_the_thresholds() -> None:
    """A larger dormant_tau takes in the unit at 0.125 of a layer whose mean is 0.425."""
    h = dead_units()
    d = diagnose(h, thresholds=HealthThresholds(dormant_tau=0.3), detail=True)
    assert d.layer_dormant_frac == (0.4, 0.2)


def test_a_unit_exactly_at_tau_times_the_mean_is_dormant() -> None:
    """Dormancy is 'at most tau times the mean' (Sokar et al.): equality counts."""
    h = torch.tensor([[[0.25, 1.0, 1.0, 1.75]]], dtype=torch.float64)  # mean 1.0
    d = diagnose(h, thresholds=HealthThresholds(dormant_tau=0.25))
    assert d.dormant_frac == 0.25


def test_an_all_zero_layer_is_all_dormant() -> None:
    """A layer whose every unit is zero is dead: all its units are dormant."""
    d = diagnose(torch.zeros(1, 4, 6))
    assert d.dormant_frac == 1.0


# --------------------------------------------------------------------------- NaN and Inf


def test_nan_and_inf_follow_the_documented_rule() -> None:
    """NaN is never saturated, Inf is; NaN propagates into growth; a NaN layer has no dormant
    unit, and an Inf layer has every finite unit dormant."""
    h, c = planted(torch.float64)
    h[0, 3, 0] = math.nan  # layer 0: its means are NaN, so none of its units is dormant
    h[1, 0, 0] = math.inf  # saturated; its unit's mean and its layer's are infinite
    c[0, 0, 0] = math.nan
    steps = [1, 1, 1, 1]
    m = compute_lstm_health((h, c), diagnostics=True, steps_since_reset=steps, detail=True)[0]
    d = m.diagnostics
    assert d is not None
    assert m.has_nan
    assert (d.h_saturation_frac, d.c_saturation_frac) == (7 / 40, 5 / 40)
    assert d.c_growth_ratio is not None
    assert math.isnan(d.c_growth_ratio)
    # Layer 1's mean is infinite: its 4 finite units are dormant against it, the Inf one not.
    assert d.layer_dormant_frac == (0.0, 0.8)
    assert health_status(m) is HealthStatus.CRITICAL


def test_an_inf_in_c_gives_an_infinite_growth_ratio() -> None:
    """+-Inf in c is a saturated element and makes the growth ratio infinite."""
    h, c = planted()
    c[1, 2, 0] = -math.inf
    d = diagnose((h, c), steps_since_reset=torch.tensor([3, 3, 3, 3]))
    assert (d.c_saturation_frac, d.c_growth_ratio) == (6 / 40, math.inf)


def test_nan_figures_round_trip_through_json_bit_exact() -> None:
    """A NaN growth ratio survives the strict-JSON round trip of the metrics and a payload."""
    h, c = planted()
    c[0, 0, 0] = math.nan
    m = compute_lstm_health((h, c), diagnostics=True, steps_since_reset=[1, 2, 3, 4])
    back = LSTMHealthMetrics.model_validate_json(m.model_dump_json())
    assert back.model_dump_json() == m.model_dump_json()
    assert back.diagnostics is not None
    assert math.isnan(back.diagnostics.c_growth_ratio or 0.0)
    payload = PPOUpdatePayload(
        policy_loss=0.1,
        value_loss=0.2,
        entropy=0.3,
        recurrent_health={"policy": m},
        primary_state="policy",
    )
    again = PPOUpdatePayload.model_validate_json(payload.model_dump_json())
    assert again.model_dump_json() == payload.model_dump_json()


# --------------------------------------------------------------------------- the other figures


@pytest.mark.parametrize(
    "shape", [(1, 2, 3, 3), (3, 40, 16, 16), (2, 8, 16, 24)], ids=["host", "device", "proj"]
)
@pytest.mark.parametrize("detail", [False, True])
@pytest.mark.parametrize("broken", ["none", "nan", "huge"])
def test_diagnostics_leave_the_other_figures_alone(
    shape: tuple[int, int, int, int], detail: bool, broken: str
) -> None:
    """With diagnostics, every other figure (and the detail) is what it is without them."""
    layers, batch, h_size, c_size = shape
    gen = torch.Generator().manual_seed(7)
    h, c = (
        torch.randn(layers, batch, h_size, generator=gen),
        torch.randn(layers, batch, c_size, generator=gen),
    )
    if broken == "nan":
        h[0, 0, 0] = math.nan
        c[-1, -1, -1] = math.inf
    elif broken == "huge":
        c *= 1e30  # takes the second, rescaling transfer
    plain = compute_lstm_health((h, c), detail=detail)
    with_diag = compute_lstm_health((h, c), detail=detail, diagnostics=True)
    if detail:
        assert isinstance(plain, tuple)
        assert isinstance(with_diag, tuple)
        assert with_diag[1].model_dump_json() == plain[1].model_dump_json()
        plain, with_diag = plain[0], with_diag[0]
    assert isinstance(plain, LSTMHealthMetrics)
    assert isinstance(with_diag, LSTMHealthMetrics)
    assert plain.diagnostics is None
    assert with_diag.diagnostics is not None
    stripped = with_diag.model_copy(update={"diagnostics": None})
    assert stripped.model_dump_json() == plain.model_dump_json()


# --------------------------------------------------------------------------- transfers


@pytest.fixture
def transfers(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Count every device-to-host transfer method called on any tensor (delegating to torch)."""
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


@pytest.mark.parametrize("shape", [(1, 2, 3), (4, 512, 128)], ids=["small", "large"])
@pytest.mark.parametrize("detail", [False, True])
def test_one_transfer_with_diagnostics(
    transfers: Counter[str], shape: tuple[int, int, int], detail: bool
) -> None:
    """Diagnostics, steps tensor included, cross in the call's one tolist() and nothing else."""
    h, c = torch.randn(*shape), torch.randn(*shape)
    steps = torch.arange(shape[1])
    transfers.clear()
    compute_lstm_health((h, c), detail=detail, diagnostics=True, steps_since_reset=steps)
    assert dict(transfers) == {"tolist": 1}


def test_one_transfer_for_several_states_with_diagnostics(transfers: Counter[str]) -> None:
    """compute_recurrent_health still moves every state's figures in one tolist()."""
    states: dict[str, tuple[torch.Tensor, torch.Tensor] | torch.Tensor] = {
        "policy": (torch.randn(1, 4, 8), torch.randn(1, 4, 8)),
        "value": torch.randn(1, 4, 8),
    }
    transfers.clear()
    compute_recurrent_health(states, diagnostics=True, steps_since_reset=torch.arange(4))
    assert dict(transfers) == {"tolist": 1}


# --------------------------------------------------------------------------- several states


def test_one_steps_value_serves_every_state() -> None:
    """One steps_since_reset is used for each LSTM state; a GRU state has no growth ratio."""
    policy, value = planted(), planted()[0]
    out = compute_recurrent_health(
        {"policy": policy, "value": value}, diagnostics=True, steps_since_reset=[0, 1, 2, 3]
    )
    alone = diagnose(policy, steps_since_reset=[0, 1, 2, 3])
    assert out["policy"].diagnostics == alone
    assert out["value"].diagnostics is not None
    assert out["value"].diagnostics.c_growth_ratio is None


def test_steps_by_name_and_the_states_they_leave_out() -> None:
    """A mapping gives steps by state name; a state left out has no growth ratio."""
    states = {"policy": planted(), "critic": planted()}
    out = compute_recurrent_health(
        states, diagnostics=True, steps_since_reset={"policy": [3, 3, 3, 3]}
    )
    growth = {name: m.diagnostics.c_growth_ratio for name, m in out.items() if m.diagnostics}
    assert growth == {"policy": 4.0 / 4, "critic": None}


@pytest.mark.parametrize(
    ("steps", "words"),
    [
        ({"polcy": [1, 1, 1, 1]}, "names states that are not measured: ['polcy']"),
        ({"policy": [1, 1]}, "steps_since_reset['policy'] must have one value per env"),
        ({"policy": torch.tensor([1, -1, 1, 1])}, "steps_since_reset['policy'] must be >= 0"),
    ],
)
def test_bad_steps_by_name_name_the_state(steps: dict[str, Any], words: str) -> None:
    """An unknown state name or a bad entry raises ValueError naming it."""
    with pytest.raises(ValueError, match="steps_since_reset") as info:
        compute_recurrent_health({"policy": planted()}, diagnostics=True, steps_since_reset=steps)
    assert words in str(info.value)


# --------------------------------------------------------------------------- contracts


def test_figures_and_flat_fields_stay_the_twelve() -> None:
    """diagnostics is no figure: FIGURES and to_dict keep the 12 base figures."""
    m = compute_lstm_health(planted(), diagnostics=True)
    assert len(LSTMHealthMetrics.FIGURES) == 12
    assert "diagnostics" not in LSTMHealthMetrics.FIGURES
    assert list(m.to_dict()) == [f"lstm_{n}" for n in LSTMHealthMetrics.FIGURES]
    payload = PPOUpdatePayload(
        policy_loss=0.0,
        value_loss=0.0,
        entropy=0.0,
        recurrent_health={"policy": m},
        primary_state="policy",
    )
    assert payload.lstm_h_rms == m.h_rms
    assert payload.recurrent_health["policy"] == m


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"h_saturation_frac": 1.5}, "a fraction must be in [0, 1]"),
        ({"dormant_frac": -0.1}, "must be >= 0"),
        ({"h_saturation_frac": math.inf}, "a fraction must be in [0, 1]"),
        ({"c_saturation_frac": None}, "c_growth_ratio needs c_saturation_frac"),
        ({"h_layer_saturation_frac": (0.1,)}, "come together"),
        (
            {
                "h_layer_saturation_frac": (0.1,),
                "c_layer_saturation_frac": (0.1, 0.2),
                "layer_dormant_frac": (0.0,),
            },
            "one length",
        ),
    ],
)
def test_diagnostics_refuse_bad_figures(fields: dict[str, Any], words: str) -> None:
    """Fractions outside [0, 1], lone per-layer tuples and growth without a cell are refused."""
    base: dict[str, Any] = {
        "h_saturation_frac": 0.1,
        "c_saturation_frac": 0.2,
        "c_growth_ratio": 0.3,
        "dormant_frac": 0.0,
    }
    with pytest.raises(ValidationError, match=words.replace("[", r"\[").replace("(", r"\(")):
        RecurrentDiagnostics.model_validate({**base, **fields})


def test_nan_fractions_are_data() -> None:
    """A NaN fraction is accepted and kept, as NaN is elsewhere in the contracts."""
    d = RecurrentDiagnostics(
        h_saturation_frac=math.nan, c_saturation_frac=None, c_growth_ratio=None, dormant_frac=0.0
    )
    assert math.isnan(
        RecurrentDiagnostics.model_validate_json(d.model_dump_json()).h_saturation_frac
    )


def test_metrics_refuse_diagnostics_of_another_kind_of_state() -> None:
    """c diagnostics on a GRU state's metrics, or none on an LSTM's, are refused."""
    lstm = compute_lstm_health(planted(), diagnostics=True)
    gru = compute_lstm_health(planted()[0], diagnostics=True)
    assert lstm.diagnostics is not None
    assert gru.diagnostics is not None
    with pytest.raises(ValidationError, match="diagnostics must match the state"):
        LSTMHealthMetrics.model_validate({**gru.model_dump(), "diagnostics": lstm.diagnostics})
    with pytest.raises(ValidationError, match="diagnostics must match the state"):
        LSTMHealthMetrics.model_validate({**lstm.model_dump(), "diagnostics": gru.diagnostics})


# --------------------------------------------------------------------------- thresholds, status


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"h_saturation_frac": 1.5}, "less than or equal to 1"),
        ({"c_saturation_frac": -0.1}, "greater than or equal to 0"),
        ({"dormant_tau": 1.0}, "less than 1"),
        ({"dormant_frac": 2.0}, "less than or equal to 1"),
        ({"c_runaway_ratio": 0.0}, "greater than 0"),
        ({"c_runaway_ratio": math.inf}, "c_runaway_ratio must be finite"),
        ({"dormant_tau": "0.1"}, "valid number"),
    ],
)
def test_bad_diagnostic_thresholds_are_refused(fields: dict[str, Any], words: str) -> None:
    """Each diagnostic threshold keeps to its range, as the RMS thresholds do."""
    with pytest.raises(ValidationError, match=words):
        HealthThresholds.model_validate(fields)


def test_predicates_are_strict_and_nan_never_fires() -> None:
    """is_saturated, is_running_away and is_dormant compare strictly; NaN is never true."""
    t = HealthThresholds()
    above = math.nextafter(0.5, 1.0)
    assert [t.is_saturated(v, "h") for v in (0.5, above, math.nan)] == [False, True, False]
    assert [t.is_saturated(v, "c") for v in (0.5, above, math.nan)] == [False, True, False]
    assert [t.is_running_away(v) for v in (0.5, above, math.nan)] == [False, True, False]
    assert [t.is_dormant(v) for v in (0.5, above, math.nan)] == [False, True, False]
    with pytest.raises(ValueError, match="tensor must be 'h' or 'c'"):
        t.is_saturated(0.9, "x")  # type: ignore[arg-type]


def metrics_with(**diag: Any) -> LSTMHealthMetrics:
    """Healthy metrics of an LSTM state carrying diagnostics with ``diag`` overriding zeros."""
    fields: dict[str, Any] = {
        "h_saturation_frac": 0.0,
        "c_saturation_frac": 0.0,
        "c_growth_ratio": 0.0,
        "dormant_frac": 0.0,
        **diag,
    }
    return LSTMHealthMetrics(
        h_l2_total=1.0,
        c_l2_total=1.0,
        h_rms=0.3,
        c_rms=0.6,
        h_env_rms_mean=0.3,
        h_env_rms_max=0.4,
        c_env_rms_mean=0.6,
        c_env_rms_max=0.7,
        h_max=0.9,
        c_max=1.5,
        has_nan=False,
        has_inf=False,
        diagnostics=RecurrentDiagnostics(**fields),
    )


ABOVE = math.nextafter(0.5, 1.0)


@pytest.mark.parametrize(
    ("field", "tensor"),
    [
        ("h_saturation_frac", "h"),
        ("dormant_frac", "h"),
        ("c_saturation_frac", "c"),
        ("c_growth_ratio", "c"),
    ],
)
def test_status_is_warning_just_above_a_threshold(field: str, tensor: str) -> None:
    """health_status and status_of say WARNING just above a threshold, HEALTHY at it."""
    at, above = metrics_with(**{field: 0.5}), metrics_with(**{field: ABOVE})
    assert (health_status(at), health_status(above)) == (HealthStatus.HEALTHY, HealthStatus.WARNING)
    other = "c" if tensor == "h" else "h"
    assert above.status_of(tensor) is HealthStatus.WARNING  # type: ignore[arg-type]
    assert above.status_of(other) is HealthStatus.HEALTHY  # type: ignore[arg-type]


def test_status_keeps_critical_over_a_diagnostic_warning() -> None:
    """A CRITICAL state stays CRITICAL when its diagnostics also warn."""
    m = metrics_with(h_saturation_frac=0.9).model_copy(update={"c_rms": 20.0})
    assert health_status(m) is HealthStatus.CRITICAL


# --------------------------------------------------------------------------- the detector


@pytest.mark.parametrize(
    ("field", "kind", "threshold"),
    [
        ("h_saturation_frac", AnomalyType.LSTM_H_SATURATION, "h_saturation_frac"),
        ("c_saturation_frac", AnomalyType.LSTM_C_SATURATION, "c_saturation_frac"),
        ("c_growth_ratio", AnomalyType.LSTM_C_RUNAWAY, "c_runaway_ratio"),
        ("dormant_frac", AnomalyType.LSTM_DORMANT, "dormant_frac"),
    ],
)
def test_each_rule_fires_just_above_its_threshold(
    field: str, kind: AnomalyType, threshold: str
) -> None:
    """At the threshold nothing; one ulp above, one WARNING with the value and the threshold."""
    detector = AnomalyDetector()
    assert detector.check_lstm_health(metrics_with(**{field: 0.5})).anomalies == ()
    (found,) = detector.check_lstm_health(metrics_with(**{field: ABOVE}), state="policy").anomalies
    expected = (kind, Severity.WARNING, ABOVE, getattr(detector.thresholds, threshold), "policy")
    assert (found.type, found.severity, found.observed, found.threshold, found.state) == expected
    assert found.message.startswith(f"policy: {field} = 0.5 ")
    assert f"is above {threshold} = 0.5" in found.message


def test_all_four_warnings_come_after_the_criticals_in_order() -> None:
    """The diagnostics' warnings follow the critical anomalies, in the documented order."""
    m = metrics_with(
        h_saturation_frac=0.9, c_saturation_frac=0.8, c_growth_ratio=0.7, dormant_frac=0.6
    ).model_copy(update={"c_rms": 20.0})
    report = AnomalyDetector().check_lstm_health(m)
    assert report.anomaly_types == [
        AnomalyType.LSTM_C_EXPLOSION,
        AnomalyType.LSTM_H_SATURATION,
        AnomalyType.LSTM_C_SATURATION,
        AnomalyType.LSTM_C_RUNAWAY,
        AnomalyType.LSTM_DORMANT,
    ]
    assert [a.severity for a in report.anomalies] == [Severity.CRITICAL] + [Severity.WARNING] * 4


def test_nan_diagnostics_raise_no_warning() -> None:
    """NaN figures compare false with every threshold: no diagnostic anomaly for them."""
    m = metrics_with(h_saturation_frac=math.nan, c_growth_ratio=math.nan)
    assert AnomalyDetector().check_lstm_health(m).anomalies == ()


def test_the_detector_uses_its_own_thresholds() -> None:
    """Lower diagnostic thresholds make the same figures anomalous."""
    m = metrics_with(dormant_frac=0.2)
    assert AnomalyDetector().check_lstm_health(m).anomalies == ()
    strict = AnomalyDetector(HealthThresholds(dormant_frac=0.1))
    assert strict.check_lstm_health(m).anomaly_types == [AnomalyType.LSTM_DORMANT]


def test_a_measured_runaway_cell_is_detected() -> None:
    """A cell that grew at 0.75 a step since its reset, measured, trips lstm_c_runaway."""
    c = torch.zeros(1, 2, 4)
    c[0, 1, 0] = 0.75 * 9
    m = compute_lstm_health(
        (torch.zeros(1, 2, 4) + 0.1, c), diagnostics=True, steps_since_reset=[8, 8]
    )
    report = AnomalyDetector().check_lstm_health(m)
    assert report.anomaly_types == [AnomalyType.LSTM_C_RUNAWAY]
    assert report.anomalies[0].observed == 0.75


def test_a_large_cpu_state_measured_in_blocks_gives_the_same_figures() -> None:
    """A state large enough to be taken in blocks of envs counts across the blocks exactly."""
    h = torch.full((2, 300, 1024), 0.5)
    c = torch.zeros(2, 300, 1024)
    h[0, 0, :10] = 0.995  # first block
    h[1, 299, :7] = -1.0  # last block
    h[:, :, 3] = 0.0  # a dead unit in each layer, across every block
    c[0, 150, :5] = 3.0
    c[1, 280, :4] = -3.0
    d = diagnose((h, c), detail=True)
    n = 300 * 1024
    assert d.h_layer_saturation_frac == (9 / n, 6 / n)  # unit 3 is dead, not saturated
    assert d.c_layer_saturation_frac == (5 / n, 4 / n)
    assert d.layer_dormant_frac == (1 / 1024, 1 / 1024)
