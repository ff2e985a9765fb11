"""Saturation, runaway and dormancy of a recurrent state: the figures of ``diagnostics=True``.

``compute_lstm_health`` reduces these on the state's device next to its own figures and
sends them to the host in the same ``tolist()``; this module holds the device part
(:func:`on_device`), the host part (:func:`unpacked`) and the checks of
``steps_since_reset``. Every count is per layer on the device (a sum over batch and
units); the whole-state figures are sums of those on the host, so detail costs nothing
more on the device.

Layout of :func:`on_device`'s float64 tensor, for a state of ``L`` layers::

    h_saturated[L], c_saturated[L] (with a cell), dormant[L],
    growth, smallest step (with a cell and steps_since_reset)

How NaN and Inf are counted is the rule of ``RecurrentDiagnostics``: comparisons, so a
NaN element is neither saturated nor, through its unit's or layer's mean, dormant; the
growth ratio is an ``amax``, through which NaN propagates.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import NamedTuple

import torch

from esper_telemetry.contracts import HealthThresholds, RecurrentDiagnostics
from esper_telemetry.contracts.health import C_SATURATION_BOUND, H_SATURATION_BOUND

#: Elements of h above which a CPU state is measured in blocks of envs (see ``partials``).
_BLOCK = 1 << 19

#: What ``steps_since_reset`` may be: an int tensor or a sequence of ints, one per env.
Steps = torch.Tensor | Sequence[int]


class Request(NamedTuple):
    """What one state's diagnostics need: tau, the checked steps (or None), their name."""

    tau: float
    steps: torch.Tensor | None
    label: str = "steps_since_reset"


def check_thresholds(thresholds: object) -> None:
    """TypeError unless ``thresholds`` is None or a ``HealthThresholds``."""
    if thresholds is not None and not isinstance(thresholds, HealthThresholds):
        raise TypeError(
            f"thresholds must be None or HealthThresholds, got {type(thresholds).__name__} "
            f"{thresholds!r:.40}"
        )


def checked_steps(
    steps: object, batch: int, device: torch.device, *, label: str = "steps_since_reset"
) -> torch.Tensor | None:
    """``steps_since_reset`` as a 1-D int64 tensor of length ``batch`` on ``device``.

    A tensor's values are not read here (that would be a transfer from its device): a
    negative one is found in the call's single transfer (see :func:`check_smallest`).

    Raises:
        TypeError: ``steps`` is not None, an integer tensor or a sequence of ints.
        ValueError: it is not 1-D of length ``batch``, is on another device than the
            state (a CPU tensor is always accepted), or a sequence holds a negative int.
    """
    if steps is None:
        return None
    if isinstance(steps, torch.Tensor):
        return _checked_tensor(steps, batch, device, label)
    if isinstance(steps, str | bytes) or not isinstance(steps, Sequence):
        raise TypeError(
            f"{label} must be None, an integer tensor or a sequence of ints (one per "
            f"env), got {type(steps).__name__}"
        )
    if len(steps) != batch:
        raise ValueError(f"{label} must have one value per env ({batch}), got {len(steps)}")
    for i, v in enumerate(steps):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise TypeError(f"{label}[{i}] must be an int, got {type(v).__name__}")
        if v < 0:
            raise ValueError(f"{label}[{i}] must be >= 0, got {v}")
    return torch.tensor([int(v) for v in steps], dtype=torch.int64, device=device)


def _checked_tensor(
    steps: torch.Tensor, batch: int, device: torch.device, label: str
) -> torch.Tensor:
    if steps.dtype.is_floating_point or steps.dtype.is_complex or steps.dtype == torch.bool:
        raise TypeError(
            f"{label} must be an integer tensor (e.g. torch.int64) or a sequence "
            f"of ints, got a tensor of {steps.dtype}"
        )
    if steps.layout is not torch.strided or steps.is_nested or steps.is_meta:
        raise ValueError(f"{label} must be a dense tensor holding values")
    if tuple(steps.shape) != (batch,):
        raise ValueError(
            f"{label} must have one value per env, shape ({batch},), got shape {tuple(steps.shape)}"
        )
    if steps.device.type != "cpu" and steps.device != device:
        raise ValueError(
            f"{label} must be on the state's device ({device}) or on the CPU, got {steps.device}"
        )
    return steps.detach().to(device=device, dtype=torch.int64)


def check_smallest(smallest: float, label: str = "steps_since_reset") -> None:
    """ValueError when the smallest value of ``steps_since_reset`` is negative."""
    if smallest < 0:
        raise ValueError(
            f"{label} must be >= 0 (steps since each env's last reset), got a smallest value "
            f"of {int(smallest)}"
        )


def on_device(h: torch.Tensor, c: torch.Tensor, cell: bool, req: Request) -> torch.Tensor:
    """The diagnostics of 3-D ``(h, c)`` as one float64 tensor on their device (see above).

    fp16 and bf16 are compared and averaged in float32, float64 in float64: the bounds
    0.99 and 2.65 are those rounded to that dtype.
    """
    h_sat, c_sat, unit_sums = partials(h, c, cell)
    parts = [h_sat] if c_sat is None else [h_sat, c_sat]
    unit = unit_sums / h.shape[1]  # [layers, units]: each unit's mean |h| over the batch
    # unit - tau * mean <= 0 is unit <= tau * mean for finite values (a difference of
    # floats is 0 only when they are equal), and false for Inf - Inf and NaN.
    dormant = (unit - req.tau * unit.mean(dim=1, keepdim=True)) <= 0
    parts.append(dormant.sum(dim=1, dtype=torch.int32))
    counts = torch.cat(parts).to(torch.float64)
    if not (cell and req.steps is not None):
        return counts
    growth = (env_abs_max(_wide(c)).to(torch.float64) / (req.steps + 1)).amax()
    smallest = req.steps.amin().to(torch.float64)
    return torch.cat((counts, torch.stack((growth, smallest))))


def partials(
    h: torch.Tensor, c: torch.Tensor, cell: bool
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Per layer, the saturated counts of h and c (None without a cell), and each unit's
    sum of |h| over the batch ``[layers, units]``.

    On the CPU a large state is taken in blocks of envs, so that the temporaries (|h|,
    the comparisons) stay in cache: measured at [4, 1024, 1024] float32, one thread, 12
    ms against 17-38 ms in one piece, where fresh pages for them dominate.
    """
    per_env = h.shape[0] * h.shape[2]
    step = h.shape[1]
    if h.device.type == "cpu" and h.numel() > _BLOCK:
        step = max(1, _BLOCK // per_env)
    h_sats, c_sats, sums = [], [], []
    for start in range(0, h.shape[1], step):
        a = _wide(h[:, start : start + step]).abs()
        h_sats.append(saturated(a, H_SATURATION_BOUND))
        sums.append(a.sum(dim=1))
        if cell:
            c_sats.append(
                saturated(_wide(c[:, start : start + step]), C_SATURATION_BOUND, signed=True)
            )
    if len(sums) == 1:
        return h_sats[0], c_sats[0] if cell else None, sums[0]
    c_sat = torch.stack(c_sats).sum(dim=0) if cell else None
    return torch.stack(h_sats).sum(dim=0), c_sat, torch.stack(sums).sum(dim=0)


def saturated(x: torch.Tensor, bound: float, *, signed: bool = False) -> torch.Tensor:
    """Per layer, how many elements of 3-D x have |x| > bound (int32; NaN is not counted).

    ``signed``: x itself, not |x| (two comparisons instead of a copy of |x|). The sums
    are int32, several times faster than int64 on CPU, and exact below 2**31 elements.
    """
    if not signed:
        return (x > bound).sum(dim=(1, 2), dtype=torch.int32)
    return (x > bound).sum(dim=(1, 2), dtype=torch.int32) + (x < -bound).sum(
        dim=(1, 2), dtype=torch.int32
    )


def env_abs_max(c: torch.Tensor) -> torch.Tensor:
    """max|c| of each env ``[batch]``, from its max and min: no copy of |c|; NaN propagates."""
    return torch.maximum(c.amax(dim=(0, 2)), -c.amin(dim=(0, 2)))


def unpacked(
    values: Sequence[float],
    h: torch.Tensor,
    c: torch.Tensor,
    *,
    cell: bool,
    request: Request,
    detail: bool,
) -> RecurrentDiagnostics:
    """The contract from :func:`on_device`'s values for 3-D ``(h, c)``.

    Raises:
        ValueError: the smallest step was negative.
    """
    layers, batch, units = h.shape
    h_sat = values[:layers]
    c_sat = values[layers : 2 * layers] if cell else None
    at = 2 * layers if cell else layers
    dormant = values[at : at + layers]
    growth = None
    if cell and request.steps is not None:
        check_smallest(values[at + layers + 1], request.label)
        growth = values[at + layers]
    return from_counts(
        h_sat, c_sat, dormant, growth, batch=batch, units=units, c_units=c.shape[2], detail=detail
    )


def from_counts(
    h_sat: Sequence[float],
    c_sat: Sequence[float] | None,
    dormant: Sequence[float],
    growth: float | None,
    *,
    batch: int,
    units: int,
    detail: bool,
    c_units: int | None = None,
) -> RecurrentDiagnostics:
    """The contract from per-layer counts (h's units and c's, which may differ: proj_size)."""
    layers = len(h_sat)
    per_layer = batch * units
    c_per_layer = batch * (units if c_units is None else c_units)
    h_frac = tuple(v / per_layer for v in h_sat)
    c_frac = None if c_sat is None else tuple(v / c_per_layer for v in c_sat)
    d_frac = tuple(v / units for v in dormant)
    return RecurrentDiagnostics(
        h_saturation_frac=sum(h_sat) / (layers * per_layer),
        c_saturation_frac=None if c_sat is None else sum(c_sat) / (layers * c_per_layer),
        c_growth_ratio=growth,
        dormant_frac=sum(dormant) / (layers * units),
        h_layer_saturation_frac=h_frac if detail else None,
        c_layer_saturation_frac=c_frac if detail else None,
        layer_dormant_frac=d_frac if detail else None,
    )


def _wide(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
