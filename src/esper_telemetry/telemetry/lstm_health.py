"""Health of an LSTM hidden state, computed on its device with one transfer to the host.

The reductions are fused: per tensor one ``aminmax`` pass (largest |x|, and the NaN/Inf
flags, since NaN propagates through it) and one ``vector_norm`` pass over the hidden
dimension; everything else works on the small ``[layers, batch]`` result. All numbers
then cross to the host in a single ``tolist()``.

Thresholds compare strictly, so a state whose RMS is exactly a threshold must measure
exactly that. Two facts make this hold without another pass over the data: when a
tensor's min equals its max, every element is that value and every RMS of it is |max|
exactly (a constant state, where rounded sums of squares would land an ulp either
side); and no RMS exceeds max|x|, so an RMS figure that rounding pushed above it is
brought back to max|x| (a state of ±a gives a, never a + ulp).

Rare paths take a second transfer, only for states that are already broken: NaN
present (the NaN hides any Inf in max|x|, so ``isinf`` is asked explicitly); finite
values whose squares leave the range of the dtype the norms run in, either huge
(|x| > ~1.8e19 in float32) or vanishingly small (max|x| < 1e-18 in float32); and, with
``detail``, a tensor holding NaN or Inf, whose other layers and envs may hold such
values. Each such tensor is reduced again in float64 after dividing by its largest
finite |x|, so its norms stay exact instead of turning into a false ``inf`` or ``0``.
This is decided per tensor, so a NaN in h does not stop the rescaling of c, and one
second transfer serves all of it.

With ``diagnostics=True`` (see ``_diagnostics``), saturation, the growth of c and
dormant units are reduced on the device as well, next to the figures above, and cross
in the same ``tolist()``; they never take part in the second transfer.

With ``group=``, the ranks' states are measured together by ``_health_group``: one
all-gather of a fixed-size row of partial figures, then the same single transfer. That
path never takes a second pass (it would need a second collective): it always reduces
where squares cannot leave the range, see its docstring.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal, overload

import torch
import torch.distributed as dist

from esper_telemetry.contracts import (
    HealthThresholds,
    LSTMHealthDetail,
    LSTMHealthMetrics,
    RecurrentDiagnostics,
)
from esper_telemetry.contracts.health import check_state_name
from esper_telemetry.telemetry import _diagnostics as diag
from esper_telemetry.telemetry._diagnostics import Steps

if TYPE_CHECKING:
    from torch.distributed import ProcessGroup

LSTMState = tuple[torch.Tensor, torch.Tensor]
#: An LSTM's ``(h, c)``, or the single hidden tensor of a GRU or ``nn.RNN``.
RecurrentState = LSTMState | torch.Tensor
Health = LSTMHealthMetrics | tuple[LSTMHealthMetrics, LSTMHealthDetail]

#: At or below this many [layer, batch] rows, the last steps of the reduction run in Python.
_HOST_ROWS = 64

#: Element counts for which _min_max uses amin + amax instead of aminmax (CPU only).
_SPLIT_MIN_MAX = (1 << 16, 1 << 19)

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@overload
def compute_lstm_health(
    hidden: RecurrentState,
    *,
    detail: Literal[False] = False,
    group: ProcessGroup | None = None,
    diagnostics: bool = False,
    steps_since_reset: Steps | None = None,
    thresholds: HealthThresholds | None = None,
) -> LSTMHealthMetrics: ...


@overload
def compute_lstm_health(
    hidden: RecurrentState,
    *,
    detail: Literal[True],
    group: ProcessGroup | None = None,
    diagnostics: bool = False,
    steps_since_reset: Steps | None = None,
    thresholds: HealthThresholds | None = None,
) -> tuple[LSTMHealthMetrics, LSTMHealthDetail]: ...


@overload
def compute_lstm_health(
    hidden: RecurrentState | None,
    *,
    detail: Literal[False] = False,
    group: ProcessGroup | None = None,
    diagnostics: bool = False,
    steps_since_reset: Steps | None = None,
    thresholds: HealthThresholds | None = None,
) -> LSTMHealthMetrics | None: ...


@overload
def compute_lstm_health(
    hidden: RecurrentState | None,
    *,
    detail: Literal[True],
    group: ProcessGroup | None = None,
    diagnostics: bool = False,
    steps_since_reset: Steps | None = None,
    thresholds: HealthThresholds | None = None,
) -> tuple[LSTMHealthMetrics, LSTMHealthDetail] | None: ...


@overload
def compute_lstm_health(
    hidden: RecurrentState | None,
    *,
    detail: bool,
    group: ProcessGroup | None = None,
    diagnostics: bool = False,
    steps_since_reset: Steps | None = None,
    thresholds: HealthThresholds | None = None,
) -> LSTMHealthMetrics | tuple[LSTMHealthMetrics, LSTMHealthDetail] | None: ...


def compute_lstm_health(
    hidden: RecurrentState | None,
    *,
    detail: bool = False,
    group: ProcessGroup | None = None,
    diagnostics: bool = False,
    steps_since_reset: Steps | None = None,
    thresholds: HealthThresholds | None = None,
) -> LSTMHealthMetrics | tuple[LSTMHealthMetrics, LSTMHealthDetail] | None:
    """Measure the health of a recurrent state, of this process or of every rank.

    Args:
        hidden: ``None`` when the policy has no recurrent layer; ``(h, c)`` of an LSTM
            in ``nn.LSTM`` layout ``[layers, batch, hidden]`` (a 2-D ``[batch, hidden]``
            tensor is one layer, as ``nn.LSTMCell`` gives); or one tensor ``h``, the
            state of a GRU or ``nn.RNN`` (``nn.GRUCell``: 2-D), whose metrics then have
            every ``c_*`` figure None and ``has_nan``/``has_inf`` about h alone. h and c
            must agree on layers and batch; their last dimensions may differ
            (``proj_size``). Any floating dtype and device; fp16/bf16 are reduced in
            float32. The tensors are read, never changed, and may require grad.
        detail: Also return per-layer and per-env RMS (used at DEBUG level), still in
            one transfer.
        group: A ``torch.distributed`` process group (``torch.distributed.group.WORLD``
            for every rank). Every rank of the group must then call this together, as
            for any collective, with the same ``detail`` and a state of the same layers
            and hidden sizes (batches may differ); each gets the metrics of all ranks'
            states concatenated along the batch (``scope="all_ranks"``), for one
            all-gather of a few hundred bytes on the state's device and the same single
            transfer to the host. With detail, the per-layer RMS covers every rank, the
            per-env RMS this rank's envs, and ``worst_envs`` the worst envs of each
            rank. ``None`` measures this process alone; in an initialised distributed
            run of several ranks that is only this rank's batch, and ``scope`` says
            ``"this_rank"``. (``hidden=None`` returns None without a collective: every
            rank must then pass None. A bad argument raises on its own rank before the
            collective, and the others wait for the group's timeout, as with any
            collective.)
        diagnostics: Also measure saturation, the growth of c and dormant units
            (``metrics.diagnostics``, a ``RecurrentDiagnostics``; its per-layer tuples
            with ``detail`` too), in the same transfer and, with ``group``, the same
            collective (every rank must then pass the same ``diagnostics``). Emitters ask
            for it at DEBUG; pass True to have it always.
        steps_since_reset: Per env, the steps since its state was last reset: an integer
            tensor of shape ``[batch]`` on the state's device or the CPU, or a sequence of
            ints. It gives ``c_growth_ratio`` (None without it, and for a state without a
            cell). Its type and shape are checked on every call; a negative value is
            found in the transfer, so only with ``diagnostics``. With ``group``, each rank
            passes its own envs' steps, and every rank passes them or none does.
        thresholds: Where ``dormant_tau`` comes from (``HealthThresholds()`` when None).

    Returns:
        ``None`` for ``hidden=None``; the metrics; or ``(metrics, detail)`` when
        ``detail=True``.

    Raises:
        TypeError: ``hidden`` is not a tensor or a pair of them, ``detail`` or
            ``diagnostics`` is not a bool, ``group`` is not a process group,
            ``thresholds`` is not ``HealthThresholds``, or ``steps_since_reset`` is not an
            integer tensor or a sequence of ints.
        ValueError: a tensor is empty, not floating point, not dense (sparse, nested),
            on the meta device, of rank other than 2 or 3, or h and c disagree on layers,
            batch or device (the message shows the shapes); ``group`` is given while
            torch.distributed is not initialised, or this process is not in it; the
            ranks of the group disagree on hidden sizes (raised by every rank, after
            the collective: none is left waiting), or this rank asked for ``detail``
            and another did not (raised by the ranks that asked). Ranks that disagree
            on the number of layers gather rows of different lengths, which the
            collective itself refuses (gloo raises ``RuntimeError``); so do ranks that
            disagree on ``diagnostics``, or with it on h's width.
            ``steps_since_reset`` is not of length batch, is on another device, or holds
            a negative value (with a group: raised by every rank, after the collective,
            as is a group where only some ranks passed it).

    >>> import torch
    >>> lstm = torch.nn.LSTM(input_size=4, hidden_size=8, num_layers=2)
    >>> _, state = lstm(torch.zeros(5, 3, 4))
    >>> m = compute_lstm_health(state)
    >>> m.has_nan, m.h_rms > 0, m.scope
    (False, True, 'process')
    >>> d = compute_lstm_health(state, diagnostics=True, steps_since_reset=[5, 5, 5]).diagnostics
    >>> d.h_saturation_frac, d.c_growth_ratio < 1.0
    (0.0, True)
    """
    _check_flags(detail=detail, diagnostics=diagnostics)
    diag.check_thresholds(thresholds)
    _check_group(group)
    if hidden is None:
        return None
    h, c, cell = _validated(hidden)
    # h and c are detached views: nothing below records autograd history.
    request = _request(h, diagnostics, steps_since_reset, thresholds, "steps_since_reset")
    if group is not None:
        return _group_health(h, c, cell, group, detail=detail, request=request)
    pending, finish = _pending(h, c, cell, detail=detail, request=request)
    return finish(pending.tolist())


@overload
def compute_recurrent_health(
    states: Mapping[str, RecurrentState],
    *,
    detail: Literal[False] = False,
    group: ProcessGroup | None = None,
    diagnostics: bool = False,
    steps_since_reset: Steps | Mapping[str, Steps] | None = None,
    thresholds: HealthThresholds | None = None,
) -> dict[str, LSTMHealthMetrics]: ...


@overload
def compute_recurrent_health(
    states: Mapping[str, RecurrentState],
    *,
    detail: Literal[True],
    group: ProcessGroup | None = None,
    diagnostics: bool = False,
    steps_since_reset: Steps | Mapping[str, Steps] | None = None,
    thresholds: HealthThresholds | None = None,
) -> dict[str, tuple[LSTMHealthMetrics, LSTMHealthDetail]]: ...


@overload
def compute_recurrent_health(
    states: Mapping[str, RecurrentState],
    *,
    detail: bool,
    group: ProcessGroup | None = None,
    diagnostics: bool = False,
    steps_since_reset: Steps | Mapping[str, Steps] | None = None,
    thresholds: HealthThresholds | None = None,
) -> dict[str, Health]: ...


def compute_recurrent_health(
    states: Mapping[str, RecurrentState],
    *,
    detail: bool = False,
    group: ProcessGroup | None = None,
    diagnostics: bool = False,
    steps_since_reset: Steps | Mapping[str, Steps] | None = None,
    thresholds: HealthThresholds | None = None,
) -> dict[str, Any]:
    """Measure several named recurrent states, with one transfer to the host in all.

    Each value of ``states`` is what :func:`compute_lstm_health` takes (``(h, c)`` or a
    GRU's ``h``); the result maps each name to what it would return for that state. The
    reductions of every state run on their devices and cross to the host together: one
    ``tolist()`` per device (one in all when the states share a device), plus the second
    transfer of a state that is already broken (see the module docstring). With
    ``group``, each state is measured across the ranks as ``compute_lstm_health`` does,
    one collective per state, in the order of ``states`` (every rank must pass the same
    names in the same order).

    ``diagnostics`` and ``thresholds`` apply to every state. ``steps_since_reset`` is
    either one value as ``compute_lstm_health`` takes it, used for every state (they
    then share one batch of envs, as a policy and a value LSTM do), or a mapping of
    state name to such a value; a state the mapping leaves out gets no growth ratio.

    Raises:
        TypeError: ``states`` is not a mapping, or a state is not one (the message
            names it); an argument is refused as by ``compute_lstm_health``.
        ValueError: a state name is not a valid one (see ``check_state_name``), a
            state is refused by ``compute_lstm_health`` (the message names it), or
            ``steps_since_reset`` names a state that is not in ``states`` or is
            refused for one (the message names it when given by name).

    >>> import torch
    >>> gru, lstm = torch.nn.GRU(4, 8), torch.nn.LSTM(4, 8)
    >>> x = torch.zeros(5, 3, 4)
    >>> out = compute_recurrent_health({"policy": lstm(x)[1], "value": gru(x)[1]})
    >>> out["policy"].has_cell, out["value"].has_cell, out["value"].c_rms
    (True, False, None)
    """
    _check_flags(detail=detail, diagnostics=diagnostics)
    diag.check_thresholds(thresholds)
    if not isinstance(states, Mapping):
        raise TypeError(
            "states must be a mapping of name to state, e.g. {'policy': (h, c)}, got "
            f"{_type_name(states)}"
        )
    _check_group(group)
    checked: dict[str, tuple[torch.Tensor, torch.Tensor, bool]] = {}
    for name, hidden in states.items():
        try:
            check_state_name(name)
            checked[name] = _validated(hidden)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"states[{name!r:.80}]: {exc}") from None
    steps = _steps_by_state(steps_since_reset, list(checked))
    requests = {
        name: _request(
            h, diagnostics, steps[name], thresholds, _steps_label(steps_since_reset, name)
        )
        for name, (h, _, _) in checked.items()
    }
    if group is not None:
        return {
            name: _group_health(h, c, cell, group, detail=detail, request=requests[name])
            for name, (h, c, cell) in checked.items()
        }
    pending = {
        name: _pending(h, c, cell, detail=detail, request=requests[name])
        for name, (h, c, cell) in checked.items()
    }
    raw = _to_host({name: tensor for name, (tensor, _) in pending.items()})
    return {name: finish(raw[name]) for name, (_, finish) in pending.items()}


def _check_flags(*, detail: object, diagnostics: object) -> None:
    for name, value in (("detail", detail), ("diagnostics", diagnostics)):
        if not isinstance(value, bool):  # "yes", 1 or a numpy bool would pass a truth test
            raise TypeError(f"{name} must be a bool, got {_type_name(value)} {value!r:.40}")


def _steps_by_state(steps: object, names: list[str]) -> dict[str, object]:
    """Each state's ``steps_since_reset``: a mapping's entry (None if absent), or the one given."""
    if not isinstance(steps, Mapping):
        return dict.fromkeys(names, steps)
    unknown = [k for k in steps if k not in names]
    if unknown:
        raise ValueError(
            f"steps_since_reset names states that are not measured: {unknown!r:.120}; the "
            f"states are {names!r:.120}"
        )
    return {name: steps.get(name) for name in names}


def _steps_label(steps: object, name: str) -> str:
    return f"steps_since_reset[{name!r:.80}]" if isinstance(steps, Mapping) else "steps_since_reset"


def _request(
    h: torch.Tensor,
    diagnostics: bool,
    steps: object,
    thresholds: HealthThresholds | None,
    label: str,
) -> diag.Request | None:
    """What the diagnostics of one state need, or None without ``diagnostics``.

    ``steps`` is checked either way, so that a bad one fails at once, not only at DEBUG.
    """
    checked = diag.checked_steps(steps, h.shape[1], h.device, label=label)
    if not diagnostics:
        return None
    tau = (thresholds or HealthThresholds()).dormant_tau
    return diag.Request(tau=tau, steps=checked, label=label)


def _pending(
    h: torch.Tensor, c: torch.Tensor, cell: bool, *, detail: bool, request: diag.Request | None
) -> tuple[torch.Tensor, Callable[[list[float]], Health]]:
    """One state's reductions as one 1-D tensor, and how to make its health of their values."""
    pending, finish = _reduce_on_device(h, c, detail=detail)
    if request is None:
        return pending, lambda raw: _completed(h, c, cell, finish(raw), detail=detail)
    size = pending.numel()

    def done(raw: list[float]) -> Health:
        found = diag.unpacked(raw[size:], h, c, cell=cell, request=request, detail=detail)
        return _completed(h, c, cell, finish(raw[:size]), detail=detail, diagnostics=found)

    return torch.cat((pending, diag.on_device(h, c, cell, request))), done


def _to_host(tensors: Mapping[str, torch.Tensor]) -> dict[str, list[float]]:
    """Each 1-D tensor's values, in one ``tolist()`` per device."""
    by_device: dict[torch.device, list[str]] = {}
    for name, t in tensors.items():
        by_device.setdefault(t.device, []).append(name)
    out: dict[str, list[float]] = {}
    for names in by_device.values():
        parts = [tensors[n] for n in names]
        dtype = parts[0].dtype
        if any(p.dtype != dtype for p in parts):  # float32 values are exact in float64
            parts = [p.double() for p in parts]
        flat: list[float] = torch.cat(parts).tolist()
        at = 0
        for n, p in zip(names, parts, strict=True):
            out[n] = flat[at : at + p.numel()]
            at += p.numel()
    return out


def _group_health(
    h: torch.Tensor,
    c: torch.Tensor,
    cell: bool,
    group: ProcessGroup,
    *,
    detail: bool,
    request: diag.Request | None,
) -> Health:
    from esper_telemetry.telemetry._health_group import group_health

    # Without a cell, c is h itself: every c figure then equals h's, so the choice of the
    # worst envs follows h alone; the c figures are dropped afterwards.
    result = group_health(h, h if not cell else c, group, detail=detail, request=request, cell=cell)
    return result if cell else _without_cell(result)


def _without_cell(result: Health) -> Health:
    if isinstance(result, LSTMHealthMetrics):
        return _metrics_without_cell(result)
    metrics, info = result
    worst = None
    if info.worst_envs is not None:
        worst = tuple(e.model_copy(update={"c_rms": None}) for e in info.worst_envs)
    info = LSTMHealthDetail.model_validate(
        {**dict(info), "c_layer_rms": None, "c_env_rms": None, "worst_envs": worst}
    )
    return _metrics_without_cell(metrics), info


def _metrics_without_cell(metrics: LSTMHealthMetrics) -> LSTMHealthMetrics:
    cleared: dict[str, object] = dict.fromkeys(LSTMHealthMetrics.CELL_FIGURES)
    return LSTMHealthMetrics.model_validate({**metrics.model_dump(), **cleared})


def _completed(
    h: torch.Tensor,
    c: torch.Tensor,
    cell: bool,
    values: list[float],
    *,
    detail: bool,
    diagnostics: RecurrentDiagnostics | None = None,
) -> Health:
    """The health of one state from its first transfer's values (``_reduce_on_device``)."""
    h_amax, c_amax = _abs_max(values[0], values[1]), _abs_max(values[2], values[3])
    has_nan = math.isnan(h_amax) or math.isnan(c_amax)
    has_inf = not has_nan and (math.isinf(h_amax) or math.isinf(c_amax))
    rescale = (
        _needs_rescale(values[4], h_amax, h, detail=detail),
        # Without a cell, c is a slice of h (see _validated): a subset, so a NaN or Inf
        # or overflow in it is one of h's, and its own figures are dropped.
        cell and _needs_rescale(values[5], c_amax, c, detail=detail),
    )
    scale = (1.0, 1.0)
    if any(rescale):
        # NaN wins in max|x| and can hide an Inf: when NaN is present, the same second
        # transfer asks for Inf directly.
        values = _reduce(h, c, detail=detail, rescale=rescale, find_inf=has_nan)
        if has_nan:
            has_inf = values.pop() != 0.0
        scale = (values[-2], values[-1])
        del values[-2:]
    elif has_nan:
        has_inf = bool(_any_inf(h, c).tolist())
    return _unpack(
        values,
        h,
        c,
        cell=cell,
        scale=scale,
        has_nan=has_nan,
        has_inf=has_inf,
        detail=detail,
        diagnostics=diagnostics,
    )


# --------------------------------------------------------------------------- process groups


def _check_group(group: object) -> None:
    if group is None:
        return
    if not dist.is_available():
        raise TypeError(
            "group must be None: this torch build has no torch.distributed, got "
            f"{_type_name(group)}"
        )
    if isinstance(group, int) and group == dist.GroupMember.NON_GROUP_MEMBER:
        raise ValueError(
            "group: this process is not a member of that group (torch.distributed.new_group "
            "gave it GroupMember.NON_GROUP_MEMBER); call with group= only on its ranks"
        )
    if not isinstance(group, dist.ProcessGroup):
        raise TypeError(
            "group must be None or a torch.distributed process group (such as "
            f"torch.distributed.group.WORLD), got {_type_name(group)} {group!r:.40}"
        )
    if not dist.is_initialized():
        raise ValueError(
            "group: torch.distributed is not initialised (init_process_group was not called, "
            "or the group was destroyed); pass group=None to measure this process alone"
        )


def _local_scope() -> Literal["process", "this_rank"]:
    """``"this_rank"`` inside an initialised distributed run of several ranks."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return "this_rank"
    return "process"


# --------------------------------------------------------------------------- helpers


def _validated(hidden: object) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """(h, c, has_cell): 3-D detached views; for a GRU's h alone, c is a 1-unit slice of h.

    The slice costs one tiny reduction and keeps a single code path; its figures are
    never reported.
    """
    if isinstance(hidden, torch.Tensor):
        (h, _), cell = _validated_pair((hidden, hidden)), False
        return h, h[..., :1], cell
    h, c = _validated_pair(hidden)
    return h, c, True


def _validated_pair(hidden: object) -> LSTMState:
    if not isinstance(hidden, tuple | list) or len(hidden) != 2:
        raise TypeError(
            "hidden must be None, a tensor h (GRU, RNN) or a tuple (h, c) of two tensors "
            f"(LSTM), got {type(hidden).__name__}{_len_note(hidden)}"
        )
    h, c = hidden
    if all(isinstance(x, tuple | list) and len(x) == 2 for x in (h, c)):
        raise TypeError(
            "hidden holds two (h, c) pairs, as sb3-contrib's RNNStates does (pi for the "
            "policy's LSTM, vf for the critic's); pass one pair, e.g. "
            "compute_lstm_health(states.pi)"
        )
    for name, t in (("h", h), ("c", c)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"hidden: {name} must be a torch.Tensor, got {type(t).__name__}")
    problem = _shape_problem(h, c)
    if problem:
        raise ValueError(f"hidden: {problem}; shapes seen: {_shapes(h, c)}")
    if h.dim() == 2:
        h, c = h.unsqueeze(0), c.unsqueeze(0)
    return h.detach(), c.detach()


def _shape_problem(h: torch.Tensor, c: torch.Tensor) -> str | None:
    for name, t in (("h", h), ("c", c)):
        if t.dtype not in _FLOAT_DTYPES:
            return (
                f"{name} must be a floating-point tensor (float16, bfloat16, float32 or "
                f"float64), got {t.dtype}"
            )
        if t.layout is not torch.strided or t.is_nested:
            return f"{name} must be a dense tensor, got layout {t.layout}"
        if t.is_meta:
            return f"{name} is on the meta device: it holds no values to measure"
        if t.dim() not in (2, 3):
            return f"{name} must be [layers, batch, hidden] or [batch, hidden], got rank {t.dim()}"
    if h.dim() != c.dim():
        return "h and c must have the same rank"
    if h.shape[:-1] != c.shape[:-1]:
        return "h and c must agree on layers and batch"
    if h.numel() == 0 or c.numel() == 0:
        return "h and c must not be empty (every dimension > 0)"
    if h.device != c.device:
        return f"h and c must be on the same device, got {h.device} and {c.device}"
    return None


def _shapes(h: torch.Tensor, c: torch.Tensor) -> str:
    return f"h {tuple(h.shape)} {h.dtype}, c {tuple(c.shape)} {c.dtype}"


def _type_name(obj: object) -> str:
    kind = type(obj)  # numpy.bool calls itself "bool": say where it comes from
    return kind.__name__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__name__}"


def _len_note(obj: object) -> str:
    try:
        return f" of length {len(obj)}"  # type: ignore[arg-type]
    except TypeError:
        return ""


def _reduce(
    h: torch.Tensor,
    c: torch.Tensor,
    *,
    detail: bool,
    rescale: tuple[bool, bool] = (False, False),
    find_inf: bool = False,
) -> list[float]:
    """All reductions of (h, c) on their device, moved to the host in one ``tolist``."""
    pending, finish = _reduce_on_device(h, c, detail=detail, rescale=rescale, find_inf=find_inf)
    return finish(pending.tolist())


def _identity(values: list[float]) -> list[float]:
    return values


def _reduce_on_device(
    h: torch.Tensor,
    c: torch.Tensor,
    *,
    detail: bool,
    rescale: tuple[bool, bool] = (False, False),
    find_inf: bool = False,
) -> tuple[torch.Tensor, Callable[[list[float]], list[float]]]:
    """All reductions of (h, c) as one 1-D tensor on their device, and how to read it.

    ``finish(tensor.tolist())`` gives the values below; the transfer is the caller's, so
    several states can share it (``compute_recurrent_health``).

    Layout: [h_hi, h_lo, c_hi, c_lo, h_ss, c_ss, h_env_norm_mean, c_env_norm_mean,
    h_env_norm_max, c_env_norm_max], then with detail the per-layer sums of squares
    (h then c) and the per-env norms (h then c). When ``rescale`` names a tensor, that
    tensor is reduced as ``x / scale`` (see ``_rescaled``) and the two scales follow (h's,
    c's; 1.0 for one not rescaled). Last, with ``find_inf``, a value that is nonzero
    when h or c holds ±Inf. Few, small ops: on small states the per-op overhead, not
    the arithmetic, is the cost.
    """
    tail: list[torch.Tensor] = []
    if any(rescale):
        (h, h_scale), (c, c_scale) = _rescaled(h, rescale[0]), _rescaled(c, rescale[1])
        tail.append(torch.stack((h_scale, c_scale)))
    else:
        h, c = _at_least_float32(h), _at_least_float32(c)
    if find_inf:
        tail.append(_any_inf(h, c).to(torch.float64).reshape(1))
    h_lo, h_hi = _min_max(h)
    c_lo, c_hi = _min_max(c)
    norms = torch.stack((torch.linalg.vector_norm(h, dim=2), torch.linalg.vector_norm(c, dim=2)))
    head = torch.stack((h_hi, h_lo, c_hi, c_lo))
    layers, batch = norms.shape[1], norms.shape[2]
    if layers * batch <= _HOST_ROWS:
        # Few rows: ship the row norms and finish in Python, saving ~6 tiny torch ops.
        tail_size = sum(t.numel() for t in tail)

        def finish(raw: list[float]) -> list[float]:
            end = len(raw) - tail_size
            return raw[:4] + _finish_on_host(raw[4:end], layers, batch, detail=detail) + raw[end:]

        return torch.cat((head, norms.flatten(), *tail)), finish
    squares = norms.square()  # [2, layers, batch]
    if norms.shape[1] == 1:
        env_ss, env_norm = squares[:, 0], norms[:, 0]
    else:
        env_ss = squares.sum(dim=1)
        env_norm = env_ss.sqrt()
    parts = [head, env_ss.sum(dim=1), env_norm.mean(dim=1), env_norm.amax(dim=1)]
    if detail:
        parts += [squares.sum(dim=2).flatten(), env_norm.flatten()]
    return torch.cat(parts + tail), _identity


def _min_max(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(min, max) of x; both NaN when x holds a NaN."""
    # On CPU, aminmax is slower than amin plus amax for mid-sized tensors (measured at
    # [1, 256, 512] fp32, one thread: 37 µs against 31 µs) and faster outside that band.
    if x.device.type == "cpu" and _SPLIT_MIN_MAX[0] < x.numel() <= _SPLIT_MIN_MAX[1]:
        return x.amin(), x.amax()
    lo, hi = torch.aminmax(x)
    return lo, hi


def _finish_on_host(norms: list[float], layers: int, batch: int, *, detail: bool) -> list[float]:
    """What ``_reduce`` computes on the device after the row norms, for few rows."""
    rows = layers * batch
    ss, means, maxes, layer_ss, env_norms = [], [], [], [], []
    for t in (0, 1):  # h, then c
        squares = [v * v for v in norms[t * rows : (t + 1) * rows]]
        if layers == 1:
            env_ss, env = squares, norms[t * rows : (t + 1) * rows]
        else:
            env_ss = [sum(squares[b::batch]) for b in range(batch)]
            env = [math.sqrt(v) for v in env_ss]
        total = sum(env)  # norms are >= 0, so the sum is NaN exactly when one of them is
        ss.append(sum(env_ss))
        means.append(total / batch)
        maxes.append(math.nan if math.isnan(total) else max(env))
        if detail:
            layer_ss += [sum(squares[i * batch : (i + 1) * batch]) for i in range(layers)]
            env_norms += env
    # Detail layout as on the device: per-layer sums (h then c), per-env norms (h then c).
    return ss + means + maxes + (layer_ss + env_norms if detail else [])


def _any_inf(h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """0-d bool tensor: h or c holds +Inf or -Inf (slow: it builds a bool tensor)."""
    return torch.isinf(h).any() | torch.isinf(c).any()


def _at_least_float32(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _rescaled(x: torch.Tensor, on: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """x in float64 divided by its largest finite |x| (1.0 if none), and that divisor.

    With ``on=False``: x itself (fp16/bf16 in float32), and 1.0.
    """
    one = torch.ones((), dtype=torch.float64, device=x.device)
    if not on:
        return _at_least_float32(x), one
    x = x.double()
    # The largest finite |x|, so that NaN and Inf leave the other values' scale alone.
    top = torch.nan_to_num(x.abs(), nan=0.0, posinf=0.0).amax()
    top = torch.where(top > 0.0, top, one)
    return x / top, top


def _abs_max(hi: float, lo: float) -> float:
    # aminmax makes both ends NaN when x holds a NaN; Python's max() would not propagate it.
    if math.isnan(hi) or math.isnan(lo):
        return math.nan
    return max(hi, -lo)


def _needs_rescale(ss: float, amax: float, x: torch.Tensor, *, detail: bool) -> bool:
    """True when squaring may have lost finite values of x, so x must be reduced again.

    Overflow: the sum of squares became inf although max|x| is finite (|x| beyond
    ~1.8e19 in float32). Underflow: max|x| is so small that the squares are subnormal
    or zero (below ~1e-19 in float32), so norms would read 0 while max|x| does not. A
    tensor holding NaN or Inf makes its whole-tensor figures NaN or Inf anyway, but
    with ``detail`` its other layers and envs are reported too, and the same can
    happen to them: it is always reduced again then.
    """
    if not math.isfinite(amax):
        return detail
    return math.isinf(ss) or 0.0 < amax < _tiny(x)


def _tiny(x: torch.Tensor) -> float:
    # Below this max|x|, x * x leaves the normal range of the dtype the norm runs in.
    return 1e-150 if x.dtype == torch.float64 else 1e-18


def _unpack(
    values: list[float],
    h: torch.Tensor,
    c: torch.Tensor,
    *,
    cell: bool,
    scale: tuple[float, float],
    has_nan: bool,
    has_inf: bool,
    detail: bool,
    diagnostics: RecurrentDiagnostics | None,
) -> LSTMHealthMetrics | tuple[LSTMHealthMetrics, LSTMHealthDetail]:
    layers, batch = h.shape[0], h.shape[1]
    h_shape, c_shape = (layers, batch, h.shape[2]), (layers, batch, c.shape[2])
    h_l2, h_rms, h_env_mean, h_env_max, h_max = _figures(values, 0, scale[0], h_shape)
    c_l2: float | None
    c_rms: float | None
    c_env_mean: float | None
    c_env_max: float | None
    c_max: float | None
    if cell:
        c_l2, c_rms, c_env_mean, c_env_max, c_max = _figures(values, 1, scale[1], c_shape)
    else:  # c is a slice of h standing in for a missing cell: its figures are not reported
        c_l2 = c_rms = c_env_mean = c_env_max = c_max = None
    metrics = LSTMHealthMetrics(
        h_l2_total=h_l2,
        c_l2_total=c_l2,
        h_rms=h_rms,
        c_rms=c_rms,
        h_env_rms_mean=h_env_mean,
        h_env_rms_max=h_env_max,
        c_env_rms_mean=c_env_mean,
        c_env_rms_max=c_env_max,
        h_max=h_max,
        c_max=c_max,
        has_nan=has_nan,
        has_inf=has_inf,
        scope=_local_scope(),
        diagnostics=diagnostics,
    )
    if not detail:
        return metrics
    h_layer, h_env = _detail_figures(values, 0, scale[0], h_shape)
    c_layer: tuple[float, ...] | None = None
    c_env: tuple[float, ...] | None = None
    if cell:
        c_layer, c_env = _detail_figures(values, 1, scale[1], c_shape)
    info = LSTMHealthDetail(
        h_layer_rms=h_layer, c_layer_rms=c_layer, h_env_rms=h_env, c_env_rms=c_env
    )
    return metrics, info


def _figures(
    values: list[float], t: int, scale: float, shape: tuple[int, int, int]
) -> tuple[float, float, float, float, float]:
    """(l2, rms, env_rms_mean, env_rms_max, max) of h (t=0) or c (t=1) from ``_reduce``.

    The reductions were taken of ``x / scale``; the scale goes back on here, in float64.
    """
    layers, batch, size = shape
    lo, hi = values[2 * t + 1], values[2 * t]
    amax = _abs_max(hi, lo) * scale
    if lo == hi:
        # Every element is hi: each RMS is |hi| exactly, where the sums would round.
        return amax * math.sqrt(layers * batch * size), amax, amax, amax, amax
    ss = values[4 + t]
    env_div = math.sqrt(layers * size)
    return (
        math.sqrt(ss) * scale,
        # sqrt(ss / n) rounds once less than sqrt(ss) / sqrt(n).
        _at_most(math.sqrt(ss / (layers * batch * size)) * scale, amax),
        _at_most(values[6 + t] * scale / env_div, amax),
        _at_most(values[8 + t] * scale / env_div, amax),
        amax,
    )


def _detail_figures(
    values: list[float], t: int, scale: float, shape: tuple[int, int, int]
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(per-layer RMS, per-env RMS) of h (t=0) or c (t=1), as ``_figures`` does."""
    layers, batch, size = shape
    lo, hi = values[2 * t + 1], values[2 * t]
    amax = _abs_max(hi, lo) * scale
    if lo == hi:
        return (amax,) * layers, (amax,) * batch
    # After the 10 metrics: per-layer sums of squares (h, c), then per-env norms (h, c).
    layer_at, env_at = 10 + t * layers, 10 + 2 * layers + t * batch
    layer_ss, env_norms = values[layer_at : layer_at + layers], values[env_at : env_at + batch]
    env_div = math.sqrt(layers * size)
    layer_rms = tuple(_at_most(math.sqrt(v / (batch * size)) * scale, amax) for v in layer_ss)
    env_rms = tuple(v * scale / env_div for v in env_norms)
    # values[8 + t] is the largest of env_norms, and rounding is monotonic: when it stays
    # at or below max|x|, so does every env (and a pass over the batch is saved).
    if values[8 + t] * scale / env_div > amax:
        env_rms = tuple(_at_most(v, amax) for v in env_rms)
    return layer_rms, env_rms


def _at_most(rms: float, amax: float) -> float:
    # An RMS never exceeds max|x|; only rounding can push it above. NaN stays NaN.
    return amax if rms > amax else rms
