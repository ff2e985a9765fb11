"""What every rank child of the distributed tests shares: join a real gloo group, run the
scenarios, write ``OUT_DIR/rank{RANK}.json`` (or ``rank{RANK}.error`` with the traceback).

A child script defines ``main(rank, world) -> results`` and ends with
``run_rank(main)``; it is started as ``python CHILD RANK WORLD RENDEZVOUS_FILE OUT_DIR``
by ``tests.test_lstm_health_distributed.run_group``.
"""

from __future__ import annotations

import datetime
import json
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist


def run_rank(main: Callable[[int, int], dict[str, Any]]) -> None:
    """Run one rank of ``main`` from this process's command line."""
    rank, world = int(sys.argv[1]), int(sys.argv[2])
    rendezvous, out_dir = Path(sys.argv[3]), Path(sys.argv[4])
    try:
        torch.set_num_threads(1)
        dist.init_process_group(
            "gloo",
            init_method=rendezvous.as_uri(),
            rank=rank,
            world_size=world,
            timeout=datetime.timedelta(seconds=60),
        )
        results = main(rank, world)
        (out_dir / f"rank{rank}.json").write_text(json.dumps(results), encoding="utf-8")
        dist.destroy_process_group()
    except BaseException:
        (out_dir / f"rank{rank}.error").write_text(traceback.format_exc())
        raise
