"""One rank of a real gloo group measuring diagnostics, for ``test_diagnostics_distributed.py``.

Run as ``python tests/diagnostics_ranks_child.py RANK WORLD RENDEZVOUS_FILE OUT_DIR``. The
rank measures every scenario of :data:`SCENARIOS` with ``compute_lstm_health(...,
diagnostics=True, group=WORLD)``, counting collectives and transfers as
``health_ranks_child`` does, and writes ``OUT_DIR/rank{RANK}.json``. The parent rebuilds
each rank's state and steps with :func:`state` and compares with one process.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.health_ranks_child import Counts

#: Scenario name -> measured with detail.
SCENARIOS = {
    "planted": True,
    "gru": True,
    "nan-one-rank": False,
    "no-steps": False,
    "float64": True,
    "steps-one-rank": False,
    "negative-steps": False,
}

State = tuple[torch.Tensor | tuple[torch.Tensor, torch.Tensor], list[int] | torch.Tensor | None]


def state(name: str, rank: int, world: int) -> State:
    """The state and steps_since_reset that ``rank`` measures in scenario ``name``."""
    gen = torch.Generator().manual_seed(100 * list(SCENARIOS).index(name) + rank)
    batch = 2 + rank
    h = torch.rand(2, batch, 6, generator=gen, dtype=torch.float64) * 0.9 + 0.05
    c = (torch.rand(2, batch, 6, generator=gen, dtype=torch.float64) - 0.5) * 4.0
    # Units 0 and 1 of layer 0 are dead on every rank but the last, where unit 1 lives: over
    # the whole batch only unit 0 is dormant, which no rank alone can tell.
    h[0, :, 0] = 0.0
    h[0, :, 1] = 0.0 if rank < world - 1 else 0.9
    h[1, 0, : 2 + rank] = 0.995  # rank r saturates 2 + r elements
    # The last env of each rank grew at 0.3 a step since its reset, 0.6 on the last rank.
    c[1, -1, 0] = (0.6 if rank == world - 1 else 0.3) * (1 + 10 * (rank + 1))
    steps = [10 * (rank + 1)] * batch
    if name == "gru":
        return h.float(), steps
    if name == "nan-one-rank" and rank == world - 1:
        c[0, 0, 0] = math.nan
    if name == "no-steps":
        return (h.float(), c.float()), None
    if name == "steps-one-rank":
        return (h.float(), c.float()), steps if rank == 0 else None
    if name == "negative-steps":
        # A tensor: its values are read only in the transfer, after the collective (a
        # negative int in a list is refused before it, on its rank alone).
        return (h.float(), c.float()), torch.tensor([-1 if rank == world - 1 else 1] * batch)
    if name == "float64":
        return (h, c), steps
    return (h.float(), c.float()), steps


def main(rank: int, world: int) -> dict[str, Any]:
    from esper_telemetry import compute_lstm_health

    counts = Counts()
    counts.install()
    results: dict[str, Any] = {}
    for name, detail in SCENARIOS.items():
        hidden, steps = state(name, rank, world)
        with counts.measuring() as record:
            try:
                result = compute_lstm_health(
                    hidden,
                    detail=detail,
                    diagnostics=True,
                    steps_since_reset=steps,
                    group=dist.group.WORLD,
                )
            except (TypeError, ValueError) as exc:
                record["error"] = [type(exc).__name__, str(exc)]
            else:
                metrics = result[0] if isinstance(result, tuple) else result
                assert metrics is not None
                record["metrics"] = metrics.model_dump_json()
        results[name] = record
    return results


if __name__ == "__main__":
    from tests.rank_child import run_rank

    run_rank(main)
