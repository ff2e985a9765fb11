"""One rank of a real gloo group running ``check_replay(..., group=...)``, for ``test_replay.py``.

Run as ``python tests/replay_ranks_child.py RANK WORLD RENDEZVOUS_FILE OUT_DIR``. The rank
checks every scenario of :data:`SCENARIOS` with its own rollout (built by :func:`outputs`,
which the parent calls too, to check one process against the ranks' concatenated envs)
and returns them to ``tests.rank_child.run_rank``, which writes ``OUT_DIR/rank{RANK}.json``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SCENARIOS = ("match", "mismatch-late-ranks", "drift")


def outputs(
    name: str, rank: int, world: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(rollout, replay, after) of ``rank`` in scenario ``name``: 6 steps, 2 + rank envs."""
    gen = torch.Generator().manual_seed(10 * SCENARIOS.index(name) + rank)
    rollout = torch.tanh(torch.randn(6, 2 + rank, 4, generator=gen))
    replay = rollout.clone()
    after = None
    if name == "mismatch-late-ranks" and rank >= 1:
        # Every rank from 1 on mismatches; rank 1 first at step 2 (its env 1), the last
        # rank at step 2 too (its env 0) but also at step 4: the first is rank 1's.
        replay[2, 1 if rank == 1 else 0, 3] += 0.25 * rank
        replay[4, 0, 0] += 1.0
    if name == "drift":
        after = rollout + 0.1 * (rank + 1) * torch.randn(rollout.shape, generator=gen)
    return rollout, replay, after


def main(rank: int, world: int) -> dict[str, Any]:
    from esper_telemetry.telemetry import check_replay

    results = {}
    for name in SCENARIOS:
        rollout, replay, after = outputs(name, rank, world)
        check = check_replay(rollout, replay, after=after, group=dist.group.WORLD)
        results[name] = check.model_dump_json()
    return results


if __name__ == "__main__":
    from tests.rank_child import run_rank

    run_rank(main)
