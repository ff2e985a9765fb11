"""Load: events from 4 threads through a hub with every backend (W&B offline), in a child.

20,000 events normally; 1,000,000 with ``--soak`` (W&B offline takes ~1.4k events/s
here, so about 12 minutes). Nothing lost or duplicated (seq checked end to end in the
analytics log and the structured log), each thread's order kept, memory bounded by the
queues rather than by the number of events.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from esper_telemetry.analytics import BadLine, read_events
from esper_telemetry.contracts import PPOUpdateCompleted, RunLayout
from tests.reliability import load_child
from tests.reliability.children import child_env

THREADS = 4
#: How much the child's memory may grow once its backends are running: four queues of
#: 1024 events of ~2 KiB each is 8 MiB; the rest is allocator slack.
MAX_GROWTH_MIB = 64.0


@pytest.mark.parametrize(
    "events",
    [20_000, pytest.param(1_000_000, marks=pytest.mark.soak)],
    ids=["20k", "1M"],
)
def test_events_from_four_threads_reach_every_backend_once_in_order(
    tmp_path: Path, events: int
) -> None:
    """Every backend delivered every event; the analytics log holds seq 0..N-1 once each,
    in order, with each thread's events in the order it emitted them; memory stayed flat."""
    out = subprocess.run(
        [sys.executable, load_child.__file__, str(tmp_path), str(events), str(THREADS), "--wandb"],
        capture_output=True,
        text=True,
        env=child_env(tmp_path, WANDB_SILENT="true"),
        cwd=tmp_path,
        timeout=60 + events / 500,
        check=True,
    )
    report = json.loads(out.stdout.splitlines()[-1])
    (tmp_path / "report.json").write_text(json.dumps(report))  # the figures, kept with the run
    assert report["emitted"] == events
    backends = ("anomaly-escalator", "wandb", "analytics", "structlog")
    assert report["subscribers"] == {name: [events, 0, 0, 0, 0, False] for name in backends}
    assert report["lost"] == 0
    samples = report["rss_samples_mib"]
    assert report["peak_rss_mib"] - samples[0] < MAX_GROWTH_MIB

    run_dir = tmp_path / load_child.RUN_ID
    bad: list[BadLine] = []
    next_i = [0] * THREADS
    seq = -1
    out_of_order = []
    for seq, event in enumerate(read_events(run_dir, on_bad_line=bad.append)):
        assert isinstance(event, PPOUpdateCompleted)
        extra = event.payload.extra
        thread, i = int(extra["thread"]), int(extra["i"])
        if (event.seq, i) != (seq, next_i[thread]):
            out_of_order.append((seq, event.seq, thread, i))
        next_i[thread] += 1
    assert (seq + 1, next_i, bad, out_of_order) == (
        events,
        [events // THREADS] * THREADS,
        [],
        [],
    )

    with RunLayout(run_dir).log.open() as log:
        logged = [json.loads(line)["seq"] for line in log]
    assert logged == list(range(events))
