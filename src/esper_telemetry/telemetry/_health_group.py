"""``compute_lstm_health`` across the ranks of a process group, with one collective.

Each rank reduces its own ``(h, c)`` on its device to one short float64 row of partial
figures; one ``all_gather_single`` (``all_gather_into_tensor`` on older torch) brings
every rank's row to every rank, on the state's device; the whole matrix then crosses to
the host in the call's single ``tolist()``, and every rank combines the same numbers in
the same order, so all of them return the same metrics: those of the ranks' states
concatenated along the batch. The row's length depends only on the number of layers,
never on the batch or the hidden sizes.

Row layout (``_COLUMNS`` names the fixed part)::

    batch, layers, h_size, c_size, detail,            what the rank measured
    h_scale, c_scale,                                 divisors of the norms below
    h_lo, c_lo, h_hi, c_hi,                           min and max (NaN when a NaN is there)
    h_probe, c_probe,                                 non-finite exactly when h, c holds ±Inf
    h_l2, c_l2, h_env_sum, c_env_sum,                 L2 norm, sum of the per-env norms
    h_env_max, c_env_max,                             largest per-env norm
    h_layer_l2[layers], c_layer_l2[layers],           with detail (else zeros): per layer
    env[K], h_env_norm[K], c_env_norm[K]              the rank's K worst envs (-1: none)

With ``diagnostics=True`` the row goes on (its length then depends on h's width too)::

    has_steps, growth, smallest_step,                 (zeros without steps_since_reset)
    h_saturated[layers], c_saturated[layers],         counts of saturated elements
    h_unit_abs_sum[layers * h_size]                   each unit's sum of |h| over the envs

Counts and sums add up over the ranks, so fractions and dormancy are those of the
concatenated batch; the growth ratio is the largest of the ranks'. Ranks that disagree
on ``diagnostics`` (or, with it, on h's width) gather rows of different lengths, which
the collective refuses, as for the number of layers.

No second pass, so no second collective. The single-process path reduces in the input's
dtype and, for states whose squares left that dtype's range, reduces again after a
first transfer. Here a second pass would need a second collective (the other ranks need
the corrected figures), so the partials are always made where they cannot overflow or
underflow: the norms of a float32 (or float16, bfloat16) state are taken of a float64
copy, where the square of any finite float32 fits; a float64 state is divided by its
largest finite |x| first, and that divisor travels in the row. NaN hides Inf in the min and max,
so each row carries ``nansum`` of those float64 tensors: NaN is skipped, and no sum of
finite float32 values (nor of values divided by their largest) can overflow float64, so
a probe is non-finite exactly when its tensor holds ±Inf.
"""

from __future__ import annotations

import math
from typing import Final

import torch
import torch.distributed as dist

from esper_telemetry.contracts import (
    EnvRMS,
    LSTMHealthDetail,
    LSTMHealthMetrics,
    RecurrentDiagnostics,
)
from esper_telemetry.contracts.health import WORST_ENVS_PER_RANK
from esper_telemetry.telemetry import _diagnostics as diag
from esper_telemetry.telemetry.lstm_health import (
    _abs_max,
    _at_least_float32,
    _at_most,
    _min_max,
    _rescaled,
)

_COLUMNS: Final = (
    "batch",
    "layers",
    "h_size",
    "c_size",
    "detail",
    "h_scale",
    "c_scale",
    "h_lo",
    "c_lo",
    "h_hi",
    "c_hi",
    "h_probe",
    "c_probe",
    "h_l2",
    "c_l2",
    "h_env_sum",
    "c_env_sum",
    "h_env_max",
    "c_env_max",
)
_AT: Final = {name: i for i, name in enumerate(_COLUMNS)}
#: Per tensor (0: h, 1: c), the column of each of its figures: ``_OF[t]["lo"]``.
_OF: Final = tuple(
    {k: _AT[f"{n}_{k}"] for k in ("scale", "lo", "hi", "probe", "l2", "env_sum", "env_max")}
    for n in "hc"
)
_K: Final = WORST_ENVS_PER_RANK

#: Up to this many elements, a float32 h and c of one shape are reduced as one tensor.
_STACK_UP_TO: Final = 1 << 15


def group_health(
    h: torch.Tensor,
    c: torch.Tensor,
    group: dist.ProcessGroup,
    *,
    detail: bool,
    request: diag.Request | None = None,
    cell: bool = True,
) -> LSTMHealthMetrics | tuple[LSTMHealthMetrics, LSTMHealthDetail]:
    """The health of every rank's ``(h, c)`` together; h and c are validated, 3-D, detached.

    With ``request``, the row also carries the partial diagnostics (see the module
    docstring) and the metrics their combination; ``cell=False`` (c is h standing in)
    leaves the c diagnostics out.
    """
    row, env_norms = _partials(h, c, detail=detail)
    base = row.numel()
    if request is not None:
        row = torch.cat((row, _diagnosis_row(h, c, cell, request)))
    ranks = dist.get_world_size(group)
    # Flat, rank after rank: gloo takes only the concatenated form of the output.
    gathered = torch.empty(ranks * row.numel(), dtype=torch.float64, device=row.device)
    all_gather_rows(gathered, row, group)
    if detail:
        values: list[float] = torch.cat((gathered, env_norms.flatten())).tolist()
    else:
        values = gathered.tolist()
    width = row.numel()
    rows = [values[r * width : (r + 1) * width] for r in range(ranks)]
    me = dist.get_rank(group)
    _check_agreement(rows, me, detail=detail)
    metrics, amax = _combined(rows, ranks)
    if request is not None:
        found = _combined_diagnostics(rows, base, request, cell=cell, detail=detail)
        # Not validated here: without a cell, c is h and its figures are still present;
        # the caller drops them and validates the whole.
        metrics = metrics.model_copy(update={"diagnostics": found})
    if not detail:
        return metrics
    own = values[ranks * width :]
    return metrics, _combined_detail(rows, me, own, amax)


def all_gather_rows(out: torch.Tensor, row: torch.Tensor, group: dist.ProcessGroup) -> None:
    # Looked up on the module at each call, so that all_gather_single (torch >= 2.10, which
    # deprecates all_gather_into_tensor) is used where it exists.
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    gather(out, row, group=group)


# --------------------------------------------------------------------------- one rank's row


def _partials(
    h: torch.Tensor, c: torch.Tensor, *, detail: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's row (see the module docstring) and its per-env norms ``[2, batch]``.

    Few ops: on small states each costs more than the arithmetic.
    """
    layers, batch, device = h.shape[0], h.shape[1], h.device
    head = [float(batch), float(layers), float(h.shape[2]), float(c.shape[2]), float(detail)]
    h, c = _at_least_float32(h), _at_least_float32(c)
    scales: torch.Tensor | None = None
    if h.shape == c.shape and h.dtype == c.dtype == torch.float32 and h.numel() <= _STACK_UP_TO:
        # Small, same-shaped float32 h and c: one float64 copy of both, half the ops.
        both = torch.stack((h, c)).double()  # [2, layers, batch, hidden]
        flat = both.view(2, -1)  # aminmax along a dim is several times slower here
        rows = torch.linalg.vector_norm(both, dim=3)  # [2, layers, batch]
        extremes = [flat.amin(dim=1), flat.amax(dim=1), torch.nansum(both, dim=(1, 2, 3))]
        parts = [_from_host([*head, 1.0, 1.0], device)]
    else:
        h_lo, h_hi, h_rows, h_probe, h_scale = _reduced(h)
        c_lo, c_hi, c_rows, c_probe, c_scale = _reduced(c)
        rows = torch.stack((h_rows, c_rows))
        extremes = [torch.stack((h_lo, c_lo, h_hi, c_hi, h_probe, c_probe))]
        if h_scale is None and c_scale is None:
            parts = [_from_host([*head, 1.0, 1.0], device)]
        else:  # a float64 state: its divisor goes in the row (1 for a float32 one beside it)
            one = torch.ones((), dtype=torch.float64, device=device)
            scales = torch.stack(
                (one if h_scale is None else h_scale, one if c_scale is None else c_scale)
            )
            parts = [_from_host(head, device), scales]
    env_norms = rows[:, 0] if layers == 1 else torch.linalg.vector_norm(rows, dim=1)
    parts += [
        *extremes,  # made float64 by cat
        torch.linalg.vector_norm(env_norms, dim=1),  # h_l2, c_l2
        env_norms.sum(dim=1),
        env_norms.amax(dim=1),
    ]
    if detail:
        sizes = (h.shape[2], c.shape[2])
        layer_l2 = torch.linalg.vector_norm(rows, dim=2).flatten()  # h's layers, then c's
        parts += [layer_l2, _worst_envs(env_norms, layers, sizes, scales)]
    else:
        parts.append(torch.zeros(2 * layers + 3 * _K, dtype=torch.float64, device=device))
    return torch.cat(parts), env_norms


def _reduced(
    x: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(min, max, row norms ``[layers, batch]``, Inf probe, divisor or None) of one tensor.

    The norms and the probe are taken of x in float64, where its squares and sums cannot
    leave the range: a float32 x is only converted (divisor None: 1), a float64 one is
    divided by its largest finite |x|. One tensor at a time, so that one float64 copy at
    most is alive (an allocator hands a freed block of the same size back cheaply).
    """
    lo, hi = _min_max(x)
    if x.dtype == torch.float64:
        wide, scale = _rescaled(x, True)
    else:
        wide, scale = x.double(), None
    return lo, hi, torch.linalg.vector_norm(wide, dim=2), torch.nansum(wide), scale


def _worst_envs(
    env_norms: torch.Tensor, layers: int, sizes: tuple[int, int], scales: torch.Tensor | None
) -> torch.Tensor:
    """``[env[K], h_norm[K], c_norm[K]]`` of the K envs whose h or c RMS is largest.

    Non-finite RMS ranks first. Unused slots (a batch smaller than K) hold -1.
    """
    batch, device = env_norms.shape[1], env_norms.device
    h_rms, c_rms = (env_norms[t] * (1.0 / math.sqrt(layers * sizes[t])) for t in (0, 1))
    if scales is not None:  # h and c were divided by different scales: compare true RMS
        h_rms, c_rms = h_rms * scales[0], c_rms * scales[1]
    score = torch.nan_to_num(torch.maximum(h_rms, c_rms), nan=math.inf)
    index = torch.topk(score, min(_K, batch)).indices
    out = torch.full((3, _K), -1.0, dtype=torch.float64, device=device)
    out[0, : index.numel()] = index
    out[1:, : index.numel()] = env_norms[:, index]
    return out.flatten()


def _from_host(values: list[float], device: torch.device) -> torch.Tensor:
    """A float64 tensor of ``values`` on ``device``, without waiting for the device.

    A copy from ordinary (pageable) memory to a GPU may wait for the work already queued
    there; one from pinned memory is queued behind it instead.
    """
    on_host = torch.tensor(values, dtype=torch.float64)
    if device.type == "cpu":
        return on_host
    if device.type == "cuda":
        return on_host.pin_memory().to(device, non_blocking=True)
    return on_host.to(device)


def _diagnosis_row(
    h: torch.Tensor, c: torch.Tensor, cell: bool, request: diag.Request
) -> torch.Tensor:
    """This rank's partial diagnostics, float64: see the module docstring.

    Counts rather than fractions, and per-unit sums of |h| rather than dormant units, so
    that the ranks' parts add up to the figures of the concatenated batch.
    """
    # With cell=False, c is h: its count is made and dropped, to keep one row layout.
    h_sat, c_sat, unit_sums = diag.partials(h, c, True)
    assert c_sat is not None
    counts = torch.cat((h_sat, c_sat))
    if cell and request.steps is not None:
        wide_c = _at_least_float32(c)
        growth = (diag.env_abs_max(wide_c).to(torch.float64) / (request.steps + 1)).amax()
        smallest = request.steps.amin().to(torch.float64)
        one = torch.ones((), dtype=torch.float64, device=h.device)
        steps = torch.stack((one, growth, smallest))
    else:
        steps = torch.zeros(3, dtype=torch.float64, device=h.device)
    return torch.cat((steps, counts.to(torch.float64), unit_sums.flatten().to(torch.float64)))


# --------------------------------------------------------------------------- all ranks


def _check_agreement(rows: list[list[float]], me: int, *, detail: bool) -> None:
    """Every rank measured the same model (layers, hidden sizes) and, for detail, asked too."""
    models = [_model(row) for row in rows]
    if len(set(models)) > 1:
        seen = ", ".join(
            f"rank {r}: h [{n}, {b}, {hs}], c [{n}, {b}, {cs}]"
            for r, ((n, (hs, cs)), b) in enumerate(zip(models, _batches(rows), strict=True))
        )
        raise ValueError(
            "hidden: the ranks of the group hold states of different layers or hidden sizes "
            f"({seen}); every rank must measure the same model's state"
        )
    if detail:
        without = [r for r, row in enumerate(rows) if row[_AT["detail"]] == 0.0]
        if without:
            raise ValueError(
                f"detail: rank {me} passed detail=True but rank(s) {without} of the group did "
                "not; every rank must pass the same detail"
            )


def _batches(rows: list[list[float]]) -> list[int]:
    return [int(row[_AT["batch"]]) for row in rows]


def _combined(rows: list[list[float]], ranks: int) -> tuple[LSTMHealthMetrics, tuple[float, float]]:
    """The metrics of all rows together, and the global max|x| of h and of c."""
    layers, sizes = _model(rows[0])
    batch = sum(_batches(rows))
    figures = [_tensor_figures(rows, t, layers, batch, sizes[t]) for t in (0, 1)]
    (h_l2, h_rms, h_mean, h_max_env, h_amax), (c_l2, c_rms, c_mean, c_max_env, c_amax) = figures
    has_nan = math.isnan(h_amax) or math.isnan(c_amax)
    has_inf = any(not math.isfinite(row[_OF[t]["probe"]]) for row in rows for t in (0, 1))
    metrics = LSTMHealthMetrics(
        h_l2_total=h_l2,
        c_l2_total=c_l2,
        h_rms=h_rms,
        c_rms=c_rms,
        h_env_rms_mean=h_mean,
        h_env_rms_max=h_max_env,
        c_env_rms_mean=c_mean,
        c_env_rms_max=c_max_env,
        h_max=h_amax,
        c_max=c_amax,
        has_nan=has_nan,
        has_inf=has_inf,
        scope="all_ranks",
        ranks=ranks,
    )
    return metrics, (h_amax, c_amax)


def _tensor_figures(
    rows: list[list[float]], t: int, layers: int, batch: int, size: int
) -> tuple[float, float, float, float, float]:
    """(l2, rms, env_rms_mean, env_rms_max, max) of h (t=0) or c (t=1) over all rows.

    Each row's sums are of ``x / scale``; they are brought to the largest scale of all
    rows before they are added, so that no sum leaves the float64 range on the way.
    """
    lo, hi = _global_min_max(rows, t)
    amax = _abs_max(hi, lo)
    if lo == hi:
        # Every element of every rank is hi: each RMS is |hi| exactly, as in one process.
        return amax * math.sqrt(layers * batch * size), amax, amax, amax, amax
    of = _OF[t]
    top, weights = _weights(rows, t)
    ss = sum((row[of["l2"]] * w) ** 2 for row, w in zip(rows, weights, strict=True))
    env_sum = sum(row[of["env_sum"]] / batch * w for row, w in zip(rows, weights, strict=True))
    env_maxes = [row[of["env_max"]] * w for row, w in zip(rows, weights, strict=True)]
    env_max = math.nan if any(math.isnan(v) for v in env_maxes) else max(env_maxes)
    env_div = math.sqrt(layers * size)
    return (
        math.sqrt(ss) * top,
        _at_most(math.sqrt(ss / (layers * batch * size)) * top, amax),
        _at_most(env_sum * top / env_div, amax),
        _at_most(env_max * top / env_div, amax),
        amax,
    )


def _global_min_max(rows: list[list[float]], t: int) -> tuple[float, float]:
    """(min, max) over every row, both NaN when one row holds a NaN (as aminmax does)."""
    los, his = [row[_OF[t]["lo"]] for row in rows], [row[_OF[t]["hi"]] for row in rows]
    if any(math.isnan(v) for v in (*los, *his)):
        return math.nan, math.nan
    return min(los), max(his)


def _weights(rows: list[list[float]], t: int) -> tuple[float, list[float]]:
    """The largest row scale, and each row's scale divided by it (<= 1)."""
    scales = [row[_OF[t]["scale"]] for row in rows]
    top = max(scales)
    return top, [s / top for s in scales]


def _combined_detail(
    rows: list[list[float]], me: int, own: list[float], amax: tuple[float, float]
) -> LSTMHealthDetail:
    """Per-layer RMS over all rows, this rank's per-env RMS, every rank's worst envs."""
    layers, sizes = _model(rows[0])
    batches = _batches(rows)
    per_layer = [_layer_rms(rows, t, layers, sum(batches), sizes[t], amax[t]) for t in (0, 1)]
    mine = batches[me]
    per_env = [
        _env_rms(rows[me], t, own[t * mine : (t + 1) * mine], layers, sizes[t]) for t in (0, 1)
    ]
    worst = tuple(e for r, row in enumerate(rows) for e in _row_worst(r, row, layers, sizes))
    return LSTMHealthDetail(
        h_layer_rms=per_layer[0],
        c_layer_rms=per_layer[1],
        h_env_rms=per_env[0],
        c_env_rms=per_env[1],
        worst_envs=worst,
        env_counts=tuple(batches),
    )


def _combined_diagnostics(
    rows: list[list[float]], base: int, request: diag.Request, *, cell: bool, detail: bool
) -> RecurrentDiagnostics:
    """The diagnostics of every rank's envs together, from the rows' diagnostic parts.

    Raises:
        ValueError: some ranks passed ``steps_since_reset`` and others did not, or one
            passed a negative value (raised by every rank: the collective is done).
    """
    layers, (h_size, c_size) = _model(rows[0])
    batch = sum(_batches(rows))
    parts = [row[base:] for row in rows]
    growth: float | None = None
    if cell:
        given = [r for r, part in enumerate(parts) if part[0] != 0.0]
        if given and len(given) != len(parts):
            missing = [r for r in range(len(parts)) if r not in given]
            raise ValueError(
                f"{request.label}: rank(s) {given} of the group passed it and rank(s) "
                f"{missing} did not; every rank must pass it, or none"
            )
        for r in given:
            diag.check_smallest(parts[r][2], f"{request.label} (rank {r})")
        if given:
            growths = [part[1] for part in parts]
            growth = math.nan if any(math.isnan(v) for v in growths) else max(growths)
    h_sat = [sum(part[3 + i] for part in parts) for i in range(layers)]
    c_sat = [sum(part[3 + layers + i] for part in parts) for i in range(layers)]
    at = 3 + 2 * layers
    dormant = []
    for layer in range(layers):
        lo = at + layer * h_size
        means = [sum(part[lo + u] for part in parts) / batch for u in range(h_size)]
        limit = request.tau * (sum(means) / h_size)
        # m - limit <= 0, as on one process: false for NaN and for Inf - Inf.
        dormant.append(float(sum(m - limit <= 0.0 for m in means)))
    return diag.from_counts(
        h_sat,
        c_sat if cell else None,
        dormant,
        growth,
        batch=batch,
        units=h_size,
        c_units=c_size,
        detail=detail,
    )


def _model(row: list[float]) -> tuple[int, tuple[int, int]]:
    """(layers, (h_size, c_size)) from a row's head."""
    return int(row[_AT["layers"]]), (int(row[_AT["h_size"]]), int(row[_AT["c_size"]]))


def _layer_rms(
    rows: list[list[float]], t: int, layers: int, batch: int, size: int, amax: float
) -> tuple[float, ...]:
    """RMS per layer of h (t=0) or c (t=1) over every rank's envs."""
    lo, hi = _global_min_max(rows, t)
    if lo == hi:
        return (amax,) * layers
    top, weights = _weights(rows, t)
    at = len(_COLUMNS) + t * layers
    sums = [
        sum((row[at + i] * w) ** 2 for row, w in zip(rows, weights, strict=True))
        for i in range(layers)
    ]
    return tuple(_at_most(math.sqrt(v / (batch * size)) * top, amax) for v in sums)


def _env_rms(
    row: list[float], t: int, norms: list[float], layers: int, size: int
) -> tuple[float, ...]:
    """RMS of each env of one rank (norms of ``x / scale``), as the single-process path."""
    lo, hi = row[_OF[t]["lo"]], row[_OF[t]["hi"]]
    amax = _abs_max(hi, lo)
    if lo == hi:  # this rank's tensor is constant: every env is |hi| exactly
        return (amax,) * len(norms)
    factor = row[_OF[t]["scale"]] / math.sqrt(layers * size)
    return tuple(_at_most(v * factor, amax) for v in norms)


def _row_worst(rank: int, row: list[float], layers: int, sizes: tuple[int, int]) -> list[EnvRMS]:
    """The worst envs one rank sent, by env index."""
    at = len(_COLUMNS) + 2 * layers
    envs = row[at : at + _K]
    h_rms = _env_rms(row, 0, row[at + _K : at + 2 * _K], layers, sizes[0])
    c_rms = _env_rms(row, 1, row[at + 2 * _K : at + 3 * _K], layers, sizes[1])
    found = [
        EnvRMS(rank=rank, env=int(env), h_rms=h, c_rms=c)
        for env, h, c in zip(envs, h_rms, c_rms, strict=True)
        if env >= 0.0
    ]
    return sorted(found, key=lambda e: e.env)
