"""One rank of a real gloo process group, for ``test_lstm_health_distributed.py``.

Run as ``python tests/health_ranks_child.py RANK WORLD RENDEZVOUS_FILE OUT_DIR``. The rank
joins the group, measures every scenario of :data:`SCENARIOS` with
``compute_lstm_health(..., group=...)`` while counting the collectives and the
device-to-host transfers of each call, and writes ``OUT_DIR/rank{RANK}.json``. The parent
rebuilds each rank's state with :func:`state` (same seeds) and compares.
"""

from __future__ import annotations

import functools
import math
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

#: Every collective of torch.distributed this module counts (those the installed torch has).
COLLECTIVES = (
    "all_gather",
    "all_gather_into_tensor",
    "all_gather_object",
    "all_gather_single",
    "all_reduce",
    "all_to_all",
    "all_to_all_single",
    "barrier",
    "broadcast",
    "broadcast_object_list",
    "gather",
    "gather_object",
    "reduce",
    "reduce_scatter",
    "reduce_scatter_tensor",
    "scatter",
    "scatter_object_list",
)
TRANSFER_METHODS = ("tolist", "item", "cpu", "numpy", "__float__", "__bool__")

#: Measured with the group and detail=True; all others with detail=False.
WITH_DETAIL = ("uneven-proj", "two-d", "nan-one-rank", "float32-limits", "bfloat16", "outliers")

#: Scenarios measured with group=torch.distributed.group.WORLD, in order.
SCENARIOS = (
    "equal",
    "uneven-proj",
    "two-d",
    "nan-one-rank",
    "inf-one-rank",
    "nan-hides-inf",
    "nan-and-inf-apart",
    "float32-limits",
    "nan-with-huge-other",
    "float64-huge",
    "bfloat16",
    "constant-threshold",
    "outliers",
)


State = tuple[torch.Tensor, torch.Tensor]


class Draw:
    """Random tensors of one rank: another seed, scale and offset on every rank."""

    def __init__(self, seed: int, rank: int) -> None:
        self.gen = torch.Generator().manual_seed(seed)
        self.rank = rank

    def __call__(self, *shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        x = torch.randn(*shape, generator=self.gen, dtype=torch.float64)
        return (x * (1.0 + 0.5 * self.rank) + 0.1 * self.rank).to(dtype)


def state(name: str, rank: int, world: int) -> State:
    """The ``(h, c)`` that ``rank`` of a group of ``world`` measures in scenario ``name``."""
    draw = Draw(1000 * (SCENARIOS + EXTRA).index(name) + rank, rank)
    return _STATES.get(name, _healthy)(draw, rank, world - 1)


def _healthy(draw: Draw, rank: int, last: int) -> State:
    return draw(2, 6, 8), draw(2, 6, 8)


def _sizes_differ(draw: Draw, rank: int, last: int) -> State:
    return draw(2, 6, 8 + rank), draw(2, 6, 8)


def _uneven_proj(draw: Draw, rank: int, last: int) -> State:
    # Batches 1, 4, 7, 10; h projected to 5 units while c has 12.
    return draw(2, 1 + 3 * rank, 5), draw(2, 1 + 3 * rank, 12)


def _broken(draw: Draw, rank: int, c_size: int = 6) -> State:
    # c as wide as h (8) takes the path that reduces h and c as one tensor; 6 the other.
    return draw(2, 4 + rank, 8), draw(2, 4 + rank, c_size)


def _nan_one_rank(draw: Draw, rank: int, last: int) -> State:
    h, c = _broken(draw, rank)
    if rank == last:
        h[1, 2, 3] = math.nan
    return h, c


def _inf_one_rank(draw: Draw, rank: int, last: int) -> State:
    h, c = _broken(draw, rank, c_size=8)
    if rank == 1:
        c[0, 1, 2] = -math.inf
    return h, c


def _nan_hides_inf(draw: Draw, rank: int, last: int) -> State:
    h, c = _broken(draw, rank, c_size=8)
    if rank == last:  # the NaN makes max|h| NaN, which hides the Inf
        h[0, 0, 0] = math.nan
        h[1, 3, 7] = math.inf
    return h, c


def _nan_and_inf_apart(draw: Draw, rank: int, last: int) -> State:
    h, c = _broken(draw, rank)
    if rank == 0:
        h[0, 2, 1] = math.nan
    if rank == last:
        c[1, 0, 5] = math.inf
    return h, c


def _float32_limits(draw: Draw, rank: int, last: int) -> State:
    # Squares of 1e30 overflow float32, squares of 1e-30 underflow it.
    h, c = _broken(draw, rank, c_size=8)
    scale = 1e30 if rank == 0 else (1e-30 if rank == last else 1.0)
    return h * scale, c * scale


def _nan_with_huge_other(draw: Draw, rank: int, last: int) -> State:
    h, c = _broken(draw, rank)
    if rank == last:
        h[0, 0, 0] = math.nan
        c = c * 1e30
    return h, c


def _float64_huge(draw: Draw, rank: int, last: int) -> State:
    # Squares of 1e200 overflow float64, squares of 1e-200 underflow it.
    scale = 1e200 if rank == 0 else (1e-200 if rank == last else 1.0)
    return draw(2, 3, 4, dtype=torch.float64) * scale, draw(2, 3, 6, dtype=torch.float64)


def _outliers(draw: Draw, rank: int, last: int) -> State:
    h, c = draw(2, 12, 8) * 0.3, draw(2, 12, 6) * 0.3
    if rank == 0:  # env 3 and env 7 of rank 0 above warning_rms
        h[:, 3] = 20.0
        c[:, 7] = -7.0
    if rank == last:  # 10 outliers, more than the 8 a rank can name: capped
        for env in range(10):
            h[:, env] = 30.0 + env  # distinct, so that the 8 worst are envs 2..9
    return h, c


_STATES: dict[str, Callable[[Draw, int, int], State]] = {
    "uneven-proj": _uneven_proj,
    "two-d": lambda draw, rank, last: (draw(4 + rank, 10), draw(4 + rank, 10)),
    "nan-one-rank": _nan_one_rank,
    "inf-one-rank": _inf_one_rank,
    "nan-hides-inf": _nan_hides_inf,
    "nan-and-inf-apart": _nan_and_inf_apart,
    "float32-limits": _float32_limits,
    "nan-with-huge-other": _nan_with_huge_other,
    "float64-huge": _float64_huge,
    "bfloat16": lambda draw, rank, last: (
        draw(2, 5, 8, dtype=torch.bfloat16),
        draw(2, 5, 8, dtype=torch.bfloat16),
    ),
    # c exactly critical_rms everywhere: WARNING, not CRITICAL
    "constant-threshold": lambda draw, rank, last: (
        torch.full((2, 3 + rank, 4), 0.5),
        torch.full((2, 3 + rank, 6), 10.0),
    ),
    "outliers": _outliers,
    "sizes-differ": _sizes_differ,
    "subgroup": lambda draw, rank, last: (draw(3, 2 + rank, 6), draw(3, 2 + rank, 6)),
}


#: Scenarios with their own call (see ``_extra``).
EXTRA = (
    "local",
    "bad-group",
    "sizes-differ",
    "detail-differs",
    "subgroup",
    "after-errors",
)


class Counts:
    """Collectives (outermost calls only) and device-to-host transfers, while installed."""

    def __init__(self) -> None:
        self.collectives: Counter[str] = Counter()
        self.transfers: Counter[str] = Counter()
        self._depth = 0

    def install(self) -> None:
        """Wrap the collectives of torch.distributed and the transfer methods of Tensor."""
        for module in (dist, dist.distributed_c10d):
            for name in COLLECTIVES:
                if hasattr(module, name):
                    setattr(module, name, self._counting(name, getattr(module, name)))
        for name in TRANSFER_METHODS:
            original = getattr(torch.Tensor, name)

            def transfer(self_: torch.Tensor, *a: Any, _n: str = name, _o: Any = original) -> Any:
                self.transfers[_n] += 1
                return _o(self_, *a)

            setattr(torch.Tensor, name, transfer)

    def _counting(self, name: str, original: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(original)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if self._depth == 0:
                self.collectives[name] += 1
            self._depth += 1
            try:
                return original(*args, **kwargs)
            finally:
                self._depth -= 1

        return wrapper

    @contextmanager
    def measuring(self) -> Iterator[dict[str, Any]]:
        """Zero the counters, run the block, then put what it did in the dict yielded."""
        self.collectives.clear()
        self.transfers.clear()
        record: dict[str, Any] = {}
        yield record
        record["collectives"] = dict(self.collectives)
        record["transfers"] = dict(self.transfers)


def measure(counts: Counts, hidden: Any, *, detail: bool, group: Any) -> dict[str, Any]:
    """One call of compute_lstm_health: its result (as JSON) or its error, and the counts."""
    from esper_telemetry import compute_lstm_health

    with counts.measuring() as record:
        try:
            result = compute_lstm_health(hidden, detail=detail, group=group)
        except (TypeError, ValueError) as exc:
            record["error"] = [type(exc).__name__, str(exc)]
        else:
            metrics, info = result if isinstance(result, tuple) else (result, None)
            record["metrics"] = metrics.model_dump_json() if metrics is not None else None
            record["detail"] = info.model_dump_json() if info is not None else None
    return record


def _extra(counts: Counts, rank: int, world: int) -> dict[str, Any]:
    """The scenarios of EXTRA: no group, bad groups, disagreeing ranks, a subgroup."""
    world_group = dist.group.WORLD
    out: dict[str, Any] = {
        "local": measure(counts, state("local", rank, world), detail=True, group=None)
    }
    healthy = state("equal", rank, world)
    out["bad-group"] = {
        "str": measure(counts, healthy, detail=False, group="world"),
        "int": measure(counts, healthy, detail=False, group=0),
        "none-state": measure(counts, None, detail=False, group=world_group),
    }
    out["sizes-differ"] = measure(
        counts, state("sizes-differ", rank, world), detail=False, group=world_group
    )
    out["detail-differs"] = measure(
        counts, state("detail-differs", rank, world), detail=rank == 0, group=world_group
    )
    # Ranks 1 and 3 (of 4) or 1 alone (of 2): new_group is called by every rank.
    members = [r for r in (1, 3) if r < world]
    sub = dist.new_group(members)
    out["subgroup"] = measure(counts, state("subgroup", rank, world), detail=True, group=sub)
    out["after-errors"] = measure(
        counts, state("after-errors", rank, world), detail=True, group=world_group
    )
    return out


def main(rank: int, world: int) -> dict[str, Any]:
    counts = Counts()
    counts.install()
    results: dict[str, Any] = {}
    for name in SCENARIOS:
        results[name] = measure(
            counts, state(name, rank, world), detail=name in WITH_DETAIL, group=dist.group.WORLD
        )
    results.update(_extra(counts, rank, world))
    return results


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.rank_child import run_rank

    run_rank(main)
