"""Cost of one LSTM health check: fused ``compute_lstm_health`` against a naive version.

Measured: wall time per call (``time.perf_counter_ns``) of

* **fused**: ``esper_telemetry.compute_lstm_health((h, c))`` -- a few fused reductions and
  one device->host transfer (a single ``.tolist()``);
* **naive**: the obvious code, written below: one reduction plus one ``.item()`` per
  metric (L2 norm, RMS, per-env RMS mean and max, max |x| for each of h and c), then
  ``isnan(x).any().item()`` and ``isinf(x).any().item()`` for the flags.

States are float32 ``[layers, batch, hidden]`` drawn from a standard normal, on CPU, with
``torch.set_num_threads(1)``. The two versions run interleaved (A, B, B, A, ...) in one
process so that machine noise hits both alike. Before timing, the script asserts that
both return the same 12 values (relative 1e-5), on a healthy state and on states
holding NaN and Inf, so the comparison is between equivalent computations.

A second table prices ``diagnostics=True`` (saturation, c growth with a
``steps_since_reset`` tensor, dormancy): the fused call with and without it, interleaved
the same way, at the same shapes and call counts; the script first asserts that the 12
figures are the same either way.

Run::

    .venv/bin/python bench/health.py            # full run (about 20 s)
    .venv/bin/python bench/health.py --quick    # smoke run (about 5 s)
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial

import torch

from esper_telemetry import compute_lstm_health

Shape = tuple[int, int, int]
Metrics = dict[str, float | bool]

# (shape, timed calls per version in a full run, target ratio naive/fused)
CASES: list[tuple[Shape, int, float]] = [
    ((1, 32, 128), 5000, 2.0),
    ((1, 256, 512), 1000, 6.0),
    ((4, 1024, 1024), 60, 6.0),
]
QUICK_DIVISOR = 20
REL_TOL = 1e-5


def naive_health(h: torch.Tensor, c: torch.Tensor) -> Metrics:
    """One op and one ``.item()`` per metric; the flags via ``isnan``/``isinf``."""
    out: Metrics = {}
    with torch.no_grad():
        for name, x in (("h", h), ("c", c)):
            # Not torch.linalg.vector_norm(x): over a whole 4M-element fp32 tensor on CPU
            # it is off by ~8e-5 relative (measured), which would fail the agreement check.
            out[f"{name}_l2_total"] = x.square().sum().sqrt().item()
            out[f"{name}_rms"] = x.square().mean().sqrt().item()
            # Per-env RMS: over layers and hidden units of each batch element. Computed
            # once and read twice, which is kinder to the naive side than recomputing it.
            env_rms = x.square().mean(dim=(0, 2)).sqrt()
            out[f"{name}_env_rms_mean"] = env_rms.mean().item()
            out[f"{name}_env_rms_max"] = env_rms.max().item()
            out[f"{name}_max"] = x.abs().max().item()
        out["has_nan"] = bool(torch.isnan(h).any().item()) | bool(torch.isnan(c).any().item())
        out["has_inf"] = bool(torch.isinf(h).any().item()) | bool(torch.isinf(c).any().item())
    return out


def fused_health(h: torch.Tensor, c: torch.Tensor) -> Metrics:
    metrics = compute_lstm_health((h, c))
    assert metrics is not None
    return {name: getattr(metrics, name) for name in metrics.FIGURES}


def diagnosed_health(h: torch.Tensor, c: torch.Tensor, steps: torch.Tensor) -> Metrics:
    metrics = compute_lstm_health((h, c), diagnostics=True, steps_since_reset=steps)
    assert metrics is not None
    assert metrics.diagnostics is not None
    return {name: getattr(metrics, name) for name in metrics.FIGURES}


def same(a: float | bool, b: float | bool) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    if math.isinf(a) or math.isinf(b):
        return a == b
    return math.isclose(a, b, rel_tol=REL_TOL, abs_tol=1e-30)


def check_agreement(shape: Shape) -> None:
    """Assert both versions give the same 12 values: healthy, with NaN, with Inf."""
    gen = torch.Generator().manual_seed(1)
    h, c = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)
    h_nan, c_inf = h.clone(), c.clone()
    h_nan[0, 0, 0] = math.nan
    c_inf[-1, -1, -1] = -math.inf
    for hh, cc in ((h, c), (h_nan, c), (h, c_inf), (h_nan, c_inf)):
        fused, naive = fused_health(hh, cc), naive_health(hh, cc)
        assert fused.keys() == naive.keys(), (sorted(fused), sorted(naive))
        bad = {k: (fused[k], naive[k]) for k in fused if not same(fused[k], naive[k])}
        assert not bad, f"fused and naive disagree at {shape}: {bad}"
    # Both fp32 versions also match a float64 reference on the healthy state.
    ref = naive_health(h.double(), c.double())
    for name, got in (("fused", fused_health(h, c)), ("naive", naive_health(h, c))):
        bad = {k: (got[k], ref[k]) for k in ref if not same(got[k], ref[k])}
        assert not bad, f"{name} disagrees with float64 at {shape}: {bad}"


@dataclass
class Timing:
    median_us: float
    p90_us: float


def summarise(samples_ns: list[int]) -> Timing:
    s = sorted(samples_ns)
    return Timing(
        median_us=s[len(s) // 2] / 1e3, p90_us=s[min(len(s) - 1, int(0.9 * len(s)))] / 1e3
    )


def time_interleaved(fns: list[Callable[[], object]], calls: int, warmup: int) -> list[list[int]]:
    """Time each fn ``calls`` times, alternating which goes first on every round."""
    samples: list[list[int]] = [[] for _ in fns]
    clock = time.perf_counter_ns
    for i in range(warmup + calls):
        order = range(len(fns)) if i % 2 == 0 else reversed(range(len(fns)))
        for j in order:
            t0 = clock()
            fns[j]()
            dt = clock() - t0
            if i >= warmup:
                samples[j].append(dt)
    return samples


def fmt_us(us: float) -> str:
    return f"{us / 1e3:,.2f} ms" if us >= 1e3 else f"{us:,.1f} µs"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few calls: a smoke run")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random states")
    args = parser.parse_args()

    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    print(
        f"# bench/health.py  {datetime.now(UTC):%Y-%m-%d %H:%M} UTC  "
        f"Python {platform.python_version()}  torch {torch.__version__}  "
        f"threads {torch.get_num_threads()}  {'quick' if args.quick else 'full'}\n"
    )
    rows: list[str] = []
    verdicts: list[bool] = []
    for shape, full_calls, target in CASES:
        check_agreement(shape)
        calls = max(3, full_calls // QUICK_DIVISOR) if args.quick else full_calls
        warmup = max(2, calls // 10)
        h, c = torch.randn(shape), torch.randn(shape)
        fused_s, naive_s = time_interleaved(
            [partial(fused_health, h, c), partial(naive_health, h, c)], calls, warmup
        )
        fused, naive = summarise(fused_s), summarise(naive_s)
        ratio = naive.median_us / fused.median_us
        ok = ratio >= target
        verdicts.append(ok)
        rows.append(
            f"| {shape[0]}, {shape[1]}, {shape[2]} | {calls} | {fmt_us(fused.median_us)} | "
            f"{fmt_us(fused.p90_us)} | {fmt_us(naive.median_us)} | {fmt_us(naive.p90_us)} | "
            f"{ratio:.2f}× | ≥ {target:g}× | {'PASS' if ok else 'FAIL'} |"
        )
        print(f"done {shape}: ratio {ratio:.2f}×", file=sys.stderr)
    print("| state [layers, batch, hidden] | calls each | fused median | fused p90 ", end="")
    print("| naive median | naive p90 | naive/fused (median) | target | result |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    print("\n".join(rows))
    print(f"\nfused and naive agree to rel {REL_TOL:g} on every shape (asserted).")
    print(f"overall: {'PASS' if all(verdicts) else 'FAIL'} ({sum(verdicts)}/{len(verdicts)})")
    print("\n" + diagnostics_table(quick=args.quick))


def diagnostics_table(*, quick: bool) -> str:
    """The fused call without and with ``diagnostics=True``, interleaved, as a table."""
    lines = [
        "| state [layers, batch, hidden] | calls each | diagnostics off median | "
        "diagnostics on median | on p90 | on/off (median) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for shape, full_calls, _ in CASES:
        calls = max(3, full_calls // QUICK_DIVISOR) if quick else full_calls
        h, c = torch.randn(shape), torch.randn(shape)
        steps = torch.randint(0, 500, (shape[1],))
        assert fused_health(h, c) == diagnosed_health(h, c, steps), "figures differ"
        off_s, on_s = time_interleaved(
            [partial(fused_health, h, c), partial(diagnosed_health, h, c, steps)],
            calls,
            max(2, calls // 10),
        )
        off, on = summarise(off_s), summarise(on_s)
        lines.append(
            f"| {shape[0]}, {shape[1]}, {shape[2]} | {calls} | {fmt_us(off.median_us)} | "
            f"{fmt_us(on.median_us)} | {fmt_us(on.p90_us)} | "
            f"{on.median_us / off.median_us:.2f}× |"
        )
        print(f"done diagnostics {shape}", file=sys.stderr)
    return "\n".join(lines)


if __name__ == "__main__":
    main()
