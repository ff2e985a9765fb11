"""Bad input, generated: arbitrary metric mappings for the emitter, arbitrary tensors for
the health check. Each gives a correct result or a ValueError, never anything else."""

from __future__ import annotations

import io
import json
import numbers
import re
import tempfile
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import event, given
from hypothesis import strategies as st

from esper_telemetry import PPOUpdatePayload, TelemetryHub, compute_lstm_health
from esper_telemetry import emit_ppo_update_event as emit_update
from esper_telemetry.analytics import read_events
from esper_telemetry.backends import AnalyticsCollector, StructlogBackend
from esper_telemetry.testing import RecordingBackend
from tests.test_lstm_health import REL_TOL, assert_model_close, reference

REQUIRED = ("policy_loss", "value_loss", "entropy")
OPTIONAL = ("approx_kl", "clip_fraction", "explained_variance", "grad_norm", "learning_rate")

# --------------------------------------------------------------------------- the emitter

numbers_ = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.builds(np.float32, st.floats(width=32)),
    st.builds(np.int64, st.integers(-(2**63), 2**63 - 1)),
    st.fractions(),
)
not_numbers = st.one_of(
    st.none(),
    st.booleans(),
    st.builds(np.bool_, st.booleans()),
    st.text(max_size=8),
    st.binary(max_size=8),
    st.decimals(allow_nan=True),
    st.complex_numbers(),
    st.lists(st.floats(), max_size=3),
    st.dictionaries(st.text(max_size=4), st.floats(), max_size=3),
)
keys = st.one_of(
    st.sampled_from(
        [*REQUIRED, *OPTIONAL, "env_steps", "lstm_h_rms", "lstm_detail", "extra", "", "fps"]
    ),
    st.text(max_size=12),
    st.integers(),
    st.none(),
    st.tuples(st.text(max_size=3)),
)


@st.composite
def metric_mappings(draw: st.DrawFn) -> dict[Any, Any]:
    """Mostly the required keys, then anything: numbers, non-numbers, odd keys, nesting."""
    metrics: dict[Any, Any] = {}
    for key in REQUIRED:
        if draw(st.integers(0, 9)):  # 1 in 10 leaves one out
            metrics[key] = draw(numbers_)
    more = draw(st.dictionaries(keys, st.one_of(numbers_, not_numbers), max_size=6))
    metrics.update(more)
    return metrics


def problem(metrics: dict[Any, Any]) -> tuple[str, Any] | None:
    """What the emitter must refuse, decided independently: ("missing", the missing
    required keys), else ("key", the first bad key in iteration order), else None."""
    missing = [k for k in REQUIRED if k not in metrics]
    if missing:
        return "missing", missing
    for key, value in metrics.items():
        if not isinstance(key, str) or not key:
            return "key", key
        if key in OPTIONAL and value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return "key", key
        try:
            float(value)
        except OverflowError:
            return "key", key
        if key == "env_steps" or key.startswith("lstm_"):
            return "key", key
    return None


def expected_payload(metrics: dict[str, Any]) -> PPOUpdatePayload:
    fields: dict[str, Any] = {"extra": {}}
    for key, value in metrics.items():
        number = None if value is None else float(value)
        if key in REQUIRED or key in OPTIONAL:
            fields[key] = number
        else:
            fields["extra"][key] = number
    return PPOUpdatePayload(**fields)


def refuse_constant(token: str) -> None:
    raise AssertionError(f"non-strict JSON token {token}")


@given(metrics=metric_mappings())
def test_any_metrics_mapping_gives_a_whole_event_everywhere_or_a_value_error_naming_the_key(
    metrics: dict[Any, Any],
) -> None:
    """A valid event that every subscriber got whole (and the log reads back equal), or a
    ValueError naming the key, with nothing delivered to anyone."""
    bad = problem(metrics)
    event("refused" if bad else "published")
    with tempfile.TemporaryDirectory() as run_dir:
        hub = TelemetryHub("fuzz")
        inline, threaded = RecordingBackend("inline"), RecordingBackend("threaded")
        hub.subscribe(inline, mode="inline")
        hub.subscribe(threaded)
        hub.subscribe(AnalyticsCollector(run_dir, fsync="never"))
        log = io.StringIO()
        hub.subscribe(StructlogBackend(stream=log))
        if bad is None:
            published = emit_update(hub, update=1, metrics=metrics)
        else:
            kind, what = bad
            named = (
                f"missing required key(s) {', '.join(what)}" if kind == "missing" else repr(what)
            )
            with pytest.raises(ValueError, match=re.escape(named)):
                emit_update(hub, update=1, metrics=metrics)
        stats = hub.close(timeout=10)
        read_back = [e.model_dump_json() for e in read_events(run_dir)]
    assert [(s.name, s.failed) for s in stats.subscribers if s.failed] == []
    if bad is not None:
        assert (inline.events, threaded.events, read_back, log.getvalue()) == ([], [], [], "")
        return
    assert published is not None
    assert published.payload.model_dump_json() == expected_payload(metrics).model_dump_json()
    assert [e.model_dump_json() for e in inline.events] == [published.model_dump_json()]
    assert [e.model_dump_json() for e in threaded.events] == [published.model_dump_json()]
    assert read_back == [published.model_dump_json()]
    (line,) = log.getvalue().splitlines()
    assert json.loads(line, parse_constant=refuse_constant)["seq"] == 0


# --------------------------------------------------------------------------- the health check

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
OTHER_DTYPES = (
    torch.int8,
    torch.int32,
    torch.int64,
    torch.uint8,
    torch.bool,
    torch.complex64,
    torch.float8_e4m3fn,
    torch.float8_e5m2,
)
DEVICES = ("cpu", "meta", *(("cuda",) if torch.cuda.is_available() else ()))
VIEWS = ("contiguous", "permuted", "stepped", "expanded", "sparse")


@st.composite
def tensors(draw: st.DrawFn, shape: tuple[int, ...], *, usable: bool) -> torch.Tensor:
    """A tensor of ``shape`` with a drawn dtype, device and memory layout (views included);
    ``usable`` keeps to floating dtypes on a device with data, strided."""
    dtype = draw(st.sampled_from(FLOAT_DTYPES if usable else FLOAT_DTYPES + OTHER_DTYPES))
    device = draw(st.sampled_from([d for d in DEVICES if d != "meta"] if usable else DEVICES))
    view = draw(st.sampled_from(VIEWS[:-1] if usable else VIEWS))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**32 - 1)))
    scale = 10.0 ** draw(st.integers(-3, 3))

    def filled(size: tuple[int, ...]) -> torch.Tensor:
        if device == "meta":
            return torch.empty(size, dtype=dtype, device="meta")
        return (torch.randn(size, generator=gen) * scale).to(dtype).to(device)

    rank = len(shape)
    if view == "permuted" and rank >= 2:
        order = draw(st.permutations(range(rank)))
        base = filled(tuple(shape[i] for i in order))
        return base.permute(*[order.index(i) for i in range(rank)])
    if view == "stepped" and rank >= 1:
        return filled((*shape[:-1], shape[-1] * 2))[..., ::2]
    if view == "expanded" and rank >= 1:
        dim = draw(st.integers(0, rank - 1))
        return filled(tuple(1 if i == dim else n for i, n in enumerate(shape))).expand(*shape)
    if view == "sparse" and device == "cpu" and dtype is torch.float32:
        return filled(shape).to_sparse()
    return filled(shape)


@st.composite
def hidden_pairs(draw: st.DrawFn) -> tuple[torch.Tensor, torch.Tensor]:
    """(h, c): half the time a measurable pair in any layout, else anything at all."""
    if draw(st.booleans()):
        shape = tuple(draw(st.lists(st.integers(1, 5), min_size=2, max_size=3)))
        c_shape = (*shape[:-1], draw(st.integers(1, 5)))
        pair = draw(tensors(shape, usable=True)), draw(tensors(c_shape, usable=True))
    else:
        shape = tuple(draw(st.lists(st.integers(0, 4), max_size=4)))
        c_shape = tuple(draw(st.lists(st.integers(0, 4), max_size=4)))
        same_batch = draw(st.booleans())
        if shape and same_batch:
            c_shape = (*shape[:-1], draw(st.integers(0, 4)))
        pair = draw(tensors(shape, usable=False)), draw(tensors(c_shape, usable=False))
    event("measurable" if measurable(*pair) else "refused")
    return pair


def measurable(h: torch.Tensor, c: torch.Tensor) -> bool:
    """Whether compute_lstm_health must measure (h, c), decided independently."""
    return (
        all(t.dtype in FLOAT_DTYPES for t in (h, c))
        and all(t.layout is torch.strided and not t.is_meta for t in (h, c))
        and h.dim() == c.dim()
        and h.dim() in (2, 3)
        and h.shape[:-1] == c.shape[:-1]
        and h.numel() > 0
        and c.numel() > 0
        and h.device == c.device
    )


@given(pair=hidden_pairs())
def test_any_tensor_pair_is_measured_correctly_or_refused_with_a_value_error(
    pair: tuple[torch.Tensor, torch.Tensor],
) -> None:
    """Any shape, dtype, device, stride or layout: the float64 reference's numbers, or a
    ValueError that shows the shapes."""
    h, c = pair
    if not measurable(h, c):
        with pytest.raises(ValueError, match="shapes seen: h "):
            compute_lstm_health((h, c), detail=True)
        return
    measured = compute_lstm_health((h, c), detail=True)
    assert measured is not None
    metrics, detail = measured
    expected, expected_detail = reference(h, c)
    tolerance = max(REL_TOL[h.dtype], REL_TOL[c.dtype])
    assert_model_close(metrics, expected, tolerance)
    assert_model_close(detail, expected_detail, tolerance)
