"""docs/distributed.md's example, run as it says: torchrun, two gloo ranks on CPU.

Rank 1 alone has an exploding cell state from update 3. The health is global, so every
rank's escalator sees the explosion and asks for a halt; both ranks stop at update 4
(none is left in an all-reduce), and rank 0's log, the only one, holds rank 1's
explosion. Bounded by a timeout: a hang fails the test.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from esper_telemetry.contracts import AnomalyDetected, PPOUpdateCompleted
from tests.reliability.children import child_env, read_back

ROOT = Path(__file__).resolve().parents[1]


def test_the_ddp_example_halts_both_ranks_on_rank_1s_explosion(tmp_path: Path) -> None:
    run_dir = tmp_path / "ddp-demo"
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    argv += ["--nproc-per-node", "2", str(ROOT / "examples" / "ddp.py")]
    argv += ["--run-dir", str(run_dir), "--explode-on-rank", "1"]
    out = subprocess.run(
        argv,
        cwd=tmp_path,
        env=child_env(tmp_path, OMP_NUM_THREADS="1"),
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    # The ranks' lines can interleave on torchrun's shared stdout: find them anywhere.
    halted = sorted(re.findall(r"rank (\d): halted at update (\d+)", out.stdout))
    assert halted == [("0", "4"), ("1", "4")], out.stdout

    events, bad = read_back(run_dir)
    assert bad == []
    assert {e.rank for e in events} == {0}  # rank 0 alone delivers to the collector
    updates = [e for e in events if isinstance(e, PPOUpdateCompleted)]
    assert [e.update for e in updates] == [0, 1, 2, 3]
    health = updates[3].payload.health()
    assert health is not None
    assert health.c_max is not None
    assert health.c_max > 1e3  # rank 1's state, seen in rank 0's event
    assert health.scope == "all_ranks"
    assert health.ranks == 2
    assert [e.update for e in events if isinstance(e, AnomalyDetected)][:1] == [3]
