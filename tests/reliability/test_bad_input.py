"""Bad input, generated: arbitrary metric mappings for the emitter, arbitrary tensors for
the health check. Each gives a correct result or a ValueError, never anything else."""

from __future__ import annotations

import io
import json
import math
import numbers
import re
import tempfile
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import event, given
from hypothesis import strategies as st
from pydantic import ValidationError

from esper_telemetry import PPOUpdatePayload, TelemetryHub, compute_lstm_health
from esper_telemetry import emit_ppo_update_event as emit_update
from esper_telemetry.analytics import read_events
from esper_telemetry.analytics._parse import _field_of
from esper_telemetry.backends import AnalyticsCollector, StructlogBackend
from esper_telemetry.contracts import (
    LSTMHealthDetail,
    LSTMHealthMetrics,
    PPOUpdateCompleted,
    SubscriberStats,
)
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
    grad_norm = metrics.get("grad_norm")
    if grad_norm is not None and float(grad_norm) < 0:  # a norm: checked once all keys are
        return "key", "grad_norm"
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


# --------------------------------------------------------------------------- the API, one by one

I64 = 2**63 - 1
PPO = {"policy_loss": 0.1, "value_loss": 0.2, "entropy": 0.3}
HEALTH = dict.fromkeys(
    ("h_l2_total", "c_l2_total", "h_rms", "c_rms", "h_env_rms_mean", "h_env_rms_max"), 0.5
) | dict.fromkeys(("c_env_rms_mean", "c_env_rms_max", "h_max", "c_max"), 0.5)
NOT_A_LIMIT = "or None to wait without a limit"
SECONDS = f"a number of seconds, 0 <= s <= {threading.TIMEOUT_MAX:.0f} (threading.TIMEOUT_MAX)"
POSITIVE = f"a number of seconds, 0 < s <= {threading.TIMEOUT_MAX:.0f} (threading.TIMEOUT_MAX)"
NORM = "must be >= 0 (NaN and +Infinity are kept as data)"


def _state() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.ones(1, 2, 3), torch.ones(1, 2, 3)


def _at(level: str, call: Callable[[TelemetryHub], object]) -> Callable[[], object]:
    def run() -> object:
        with TelemetryHub("table", level=level) as hub:
            return call(hub)

    return run


def _hub(call: Callable[[TelemetryHub], object]) -> Callable[[], object]:
    def run() -> object:
        hub = TelemetryHub("table")
        try:
            return call(hub)
        finally:
            hub.close(timeout=10)

    return run


def _metrics(**fields: Any) -> LSTMHealthMetrics:
    return LSTMHealthMetrics(**{**HEALTH, "has_nan": False, "has_inf": False, **fields})


#: (what was tried, the call, the exception, its message, or the fields a ValidationError
#: names). docs/reliability.md's API table lists these rows.
API_CASES: list[tuple[str, Callable[[], object], type[Exception], str | list[str]]] = [
    (
        "compute_lstm_health(state, detail='yes')",
        lambda: compute_lstm_health(_state(), detail="yes"),  # type: ignore[call-overload]
        TypeError,
        "detail must be a bool, got str 'yes'",
    ),
    (
        "compute_lstm_health(None, detail=1)",
        lambda: compute_lstm_health(None, detail=1),  # type: ignore[call-overload]
        TypeError,
        "detail must be a bool, got int 1",
    ),
    *(
        (
            f"emit_ppo_update_event(thresholds='x') at {level}",
            _at(
                level,
                lambda hub: emit_update(
                    hub,
                    update=0,
                    metrics=PPO,
                    lstm_health=compute_lstm_health(_state(), detail=True),
                    thresholds="x",  # type: ignore[arg-type]
                ),
            ),
            TypeError,
            "thresholds must be a HealthThresholds or None, got str",
        )
        for level in ("off", "normal", "debug")
    ),
    (
        "emit_ppo_update_event(update=2**63)",
        _hub(lambda hub: emit_update(hub, update=2**63, metrics=PPO)),
        ValueError,
        f"update must be an int from 0 to {I64} (int64), got {2**63}",
    ),
    (
        "emit_ppo_update_event(env_steps=2**64)",
        _hub(lambda hub: emit_update(hub, update=0, metrics=PPO, env_steps=2**64)),
        ValueError,
        f"env_steps must be an int from 0 to {I64} (int64) or None, got {2**64}",
    ),
    (
        "emit_ppo_update_event(update=10**5000)",
        _hub(lambda hub: emit_update(hub, update=10**5000, metrics=PPO)),
        ValueError,
        f"update must be an int from 0 to {I64} (int64), got an int of 16610 bits",
    ),
    (
        "emit_ppo_update_event(metrics={'grad_norm': -1.0})",
        _hub(lambda hub: emit_update(hub, update=0, metrics={**PPO, "grad_norm": -1.0})),
        ValueError,
        f"metrics['grad_norm']: {NORM}, got -1.0",
    ),
    *(
        (
            f"hub.subscribe(block_timeout={shown})",
            _hub(lambda hub, v=value: hub.subscribe(print, block_timeout=v)),  # type: ignore[misc]
            ValueError,
            f"block_timeout must be {POSITIVE}, {NOT_A_LIMIT}; got {shown}",
        )
        for value, shown in ((True, "True"), (math.nan, "nan"), (math.inf, "inf"), (0, "0"))
    ),
    *(
        (
            f"hub.{name}(timeout={shown})",
            _hub(lambda hub, n=name, v=value: getattr(hub, n)(timeout=v)),  # type: ignore[misc]
            ValueError,
            f"timeout must be {SECONDS}{'' if name == 'close' else ', ' + NOT_A_LIMIT}; "
            f"got {shown}",
        )
        for name in ("flush", "close")
        for value, shown in (
            (math.nan, "nan"),
            (math.inf, "inf"),
            (True, "True"),
            (-1, "-1"),
            (1e10, "10000000000.0"),
        )
    ),
    (
        "hub.unsubscribe(name, timeout=nan)",
        _hub(lambda hub: hub.unsubscribe(hub.subscribe(print), timeout=math.nan)),
        ValueError,
        f"timeout must be {SECONDS}, {NOT_A_LIMIT}; got nan",
    ),
    (
        "TelemetryHub(rank=2**63)",
        lambda: TelemetryHub("table", rank=2**63),
        ValueError,
        f"rank must be an int from 0 to {I64} (int64), got {2**63}",
    ),
    (
        "hub.emit(event.model_copy(update={'update': 2**70}))",
        _hub(
            lambda hub: hub.emit(
                PPOUpdateCompleted(update=0, payload=PPOUpdatePayload(**PPO)).model_copy(
                    update={"update": 2**70}
                )
            )
        ),
        ValueError,
        f"event.update must be an int from 0 to {I64} (int64), got {2**70}; build events with "
        "their class, e.g. PPOUpdateCompleted(update=...), which validates every field",
    ),
    ("LSTMHealthMetrics(h_rms=-1)", lambda: _metrics(h_rms=-1), ValidationError, ["h_rms"]),
    (
        "LSTMHealthMetrics(c_max=-inf, h_l2_total=-0.5)",
        lambda: _metrics(c_max=-math.inf, h_l2_total=-0.5),
        ValidationError,
        ["h_l2_total", "c_max"],
    ),
    (
        "LSTMHealthDetail(h_env_rms=(0.1, -0.5))",
        lambda: LSTMHealthDetail(
            h_layer_rms=(), c_layer_rms=(), h_env_rms=(0.1, -0.5), c_env_rms=()
        ),
        ValidationError,
        ["h_env_rms.1"],
    ),
    (
        "PPOUpdatePayload(lstm_c_rms=-1.0)",
        lambda: PPOUpdatePayload(**PPO, lstm_c_rms=-1.0),
        ValidationError,
        ["lstm_c_rms"],
    ),
    (
        "PPOUpdatePayload(env_steps=2**63, lstm_outlier_envs=(-1,))",
        lambda: PPOUpdatePayload(**PPO, env_steps=2**63, lstm_outlier_envs=(-1,)),
        ValidationError,
        ["env_steps", "lstm_outlier_envs.0"],
    ),
    (
        "PPOUpdatePayload(policy_loss=10**400)",
        lambda: PPOUpdatePayload(**{**PPO, "policy_loss": 10**400}),
        ValidationError,
        ["policy_loss"],
    ),
    (
        "PPOUpdateCompleted(update=2**63, rank=2**64, seq=-2)",
        lambda: PPOUpdateCompleted(
            update=2**63, rank=2**64, seq=-2, payload=PPOUpdatePayload(**PPO)
        ),
        ValidationError,
        ["seq", "update", "rank"],
    ),
    (
        "SubscriberStats(delivered=-1, latency_max_ms=-inf)",
        lambda: SubscriberStats(
            name="s",
            mode="inline",
            when_full="block",
            delivered=-1,
            failed=0,
            dropped=0,
            queue_depth=0,
            queue_size=0,
            latency_p50_ms=0.0,
            latency_p99_ms=0.0,
            latency_max_ms=-math.inf,
        ),
        ValidationError,
        ["delivered", "latency_max_ms"],
    ),
]


@pytest.mark.parametrize(
    ("call", "error", "expected"), [c[1:] for c in API_CASES], ids=[c[0] for c in API_CASES]
)
def test_each_bad_api_input_gives_one_error_naming_the_argument(
    call: Callable[[], object], error: type[Exception], expected: str | list[str]
) -> None:
    """Each row of the API table: the exception named there, with its exact one-line
    message (or, for a contract, a ValidationError naming exactly those fields)."""
    with pytest.raises(error) as info:
        call()
    if isinstance(expected, str):
        assert str(info.value) == expected
    else:
        assert isinstance(info.value, ValidationError)
        fields = [".".join(map(str, _field_of(e["loc"]))) for e in info.value.errors()]
        assert list(dict.fromkeys(fields)) == expected  # a union field errs once per member
