"""The hub in a real multi-process run: gloo on CPU, one process per rank.

Every test starts its ranks as separate processes (``tests/distributed_child.py``) and
waits for them with a timeout, killing them when it runs out: a hang fails the test
instead of blocking the suite.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from esper_telemetry import TelemetryHub
from esper_telemetry.analytics import read_events
from tests.reliability.children import child_env, log_records

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 120


def run_ranks(tmp_path: Path, scenario: str, world: int) -> list[dict[str, Any]]:
    """Run ``scenario`` on ``world`` ranks; each rank's result, rank 0 first."""
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    init = tmp_path / "init"

    def args(rank: int) -> tuple[object, ...]:
        return (rank, world, init, out)

    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.distributed_child", scenario, *map(str, args(r))],
            cwd=ROOT,
            env=child_env(tmp_path),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(world)
    ]
    deadline = time.monotonic() + TIMEOUT_S
    try:
        for proc in procs:
            _, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
            assert proc.returncode == 0, err[-3000:]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(world)]


@pytest.mark.parametrize("world", [2, 4])
def test_only_rank_0_delivers_to_threaded_backends_and_inline_ones_run_everywhere(
    tmp_path: Path, world: int
) -> None:
    ranks = run_ranks(tmp_path, "zero", world)
    assert [(r["rank"], r["world_size"], r["publishes"]) for r in ranks] == [
        (k, world, k == 0) for k in range(world)
    ]
    for k, r in enumerate(ranks):
        assert r["inline"] == [[seq, k] for seq in range(3)]  # every rank's escalator sees all
    assert ranks[0]["subscribers"] == ["inline", "analytics", "structlog"]
    assert all(r["subscribers"] == ["inline"] for r in ranks[1:])
    run_dir = tmp_path / "out" / "run"
    assert sorted(p.name for p in run_dir.iterdir()) == ["events.jsonl", "log.jsonl"]
    events = list(read_events(run_dir))
    assert [(e.seq, e.rank) for e in events] == [(k, 0) for k in range(3)]


def test_with_publish_ranks_all_each_rank_writes_its_own_files_with_its_rank(
    tmp_path: Path,
) -> None:
    ranks = run_ranks(tmp_path, "all", 2)
    assert [r["publishes"] for r in ranks] == [True, True]
    run_dir = tmp_path / "out" / "run"
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "events.rank0.jsonl",
        "events.rank1.jsonl",
        "log.rank0.jsonl",
        "log.rank1.jsonl",
    ]
    events = list(read_events(run_dir))  # every rank's file, rank 0 first
    assert [(e.rank, e.seq) for e in events] == [(r, k) for r in (0, 1) for k in range(3)]
    for r in (0, 1):
        lines = [json.loads(x) for x in (run_dir / f"log.rank{r}.jsonl").read_text().splitlines()]
        assert [(x["rank"], x["seq"]) for x in lines] == [(r, k) for k in range(3)]


def test_a_level_raised_on_rank_1_alone_reaches_every_rank_at_the_next_update(
    tmp_path: Path,
) -> None:
    """Rank 1's own health explodes at update 3 (its escalator raises DEBUG there); after
    sync_ranks, every rank publishes update 4 onwards at DEBUG."""
    ranks = run_ranks(tmp_path, "explode-level", 2)
    levels = [{int(k): v for k, v in r["levels"].items()} for r in ranks]
    assert levels[1][3] == "NORMAL"  # the event that trips the escalator was already out
    for rank_levels in levels:
        assert [rank_levels[u] for u in range(4)] == ["NORMAL"] * 4
        assert {rank_levels[u] for u in range(4, 8)} == {"DEBUG"}
    assert [r["stopped_at"] for r in ranks] == [None, None]


@pytest.mark.parametrize("fault", ["explode", "nan"])
def test_a_halt_asked_on_rank_1_alone_stops_every_rank_at_the_same_update(
    tmp_path: Path, fault: str
) -> None:
    """No rank is left waiting in the all-reduce standing for the gradients."""
    ranks = run_ranks(tmp_path, f"{fault}-halt", 2)
    assert [r["stopped_at"] for r in ranks] == [4, 4]


def test_rank_and_world_size_are_checked_and_a_distributed_hub_needs_a_run_id() -> None:
    hub = TelemetryHub("x", rank=1, world_size=2)
    assert (hub.rank, hub.world_size, hub.publishes, hub.per_rank_files) == (1, 2, False, False)
    hub.close()
    with pytest.raises(
        ValueError, match=r"^rank must be below world_size: got rank 2 of world_size 2$"
    ):
        TelemetryHub("x", rank=2, world_size=2)
    with pytest.raises(ValueError, match=r"^world_size must be an int >= 1, got 0"):
        TelemetryHub("x", world_size=0)
    with pytest.raises(ValueError, match=r"^publish_ranks must be 'zero' or 'all'"):
        TelemetryHub("x", publish_ranks="some")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^run_id: in a run of 2 processes every rank"):
        TelemetryHub(rank=0, world_size=2)


def test_a_rank_whose_hub_has_no_subscriber_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    from esper_telemetry import emit_ppo_update_event

    stats = {"policy_loss": 0.1, "value_loss": 0.5, "entropy": 0.7}
    with caplog.at_level(logging.WARNING, logger="esper_telemetry.hub"):
        with TelemetryHub("alone", rank=1, world_size=2) as hub:
            emit_ppo_update_event(hub, update=0, metrics=stats)
            emit_ppo_update_event(hub, update=1, metrics=stats)
        with TelemetryHub("zero", rank=0, world_size=2) as hub:
            emit_ppo_update_event(hub, update=0, metrics=stats)
    assert [r.getMessage()[:59] for r in caplog.records] == [
        "TelemetryHub 'alone' on rank 1 has no subscriber: this rank"
    ]


def test_log_records_helper_reads_per_rank_logs(tmp_path: Path) -> None:
    """The structured log of a one-process run keeps its one file (no rank suffix)."""
    with TelemetryHub("solo", rank=0, world_size=1, publish_ranks="all") as hub:
        from esper_telemetry.backends import StructlogBackend

        hub.subscribe(StructlogBackend(tmp_path / "log.jsonl"))
    assert (tmp_path / "log.jsonl").exists()
    assert log_records(tmp_path) == ([], [])
