"""The analytics log cannot be written: `esper ppo` under a small RLIMIT_FSIZE.

The limit applies to every file the child writes, so the structured log hits it at
about the same byte as the analytics log. What goes on regardless is everything that
does not write a file: training itself, the anomaly escalator (it still detects and
escalates), the run's summary on the terminal and the exit status. SIGXFSZ is ignored
in the child, so a write past the limit fails with EFBIG instead of killing it.
"""

from __future__ import annotations

import resource
import signal
from pathlib import Path

import pytest

from esper_telemetry.contracts import RunLayout
from tests.reliability.children import (
    SMALL,
    esper_ppo,
    finish,
    kinds,
    log_kinds,
    log_records,
    read_back,
    start,
)

LIMIT = 5000  # bytes: the run's first ~4 updates fit
UPDATES = 8
#: RUN_STARTED, 8 updates, the injected NaN's anomaly and level change, RUN_FINISHED.
EMITTED = 1 + UPDATES + 2 + 1
EFBIG = "OSError: [Errno 27] File too large"


def small_file_size_limit() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, LIMIT))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


def test_a_full_disk_is_reported_damages_nothing_written_and_training_goes_on(
    tmp_path: Path,
) -> None:
    """Exit 4 naming both logs and EFBIG; training completes and the escalator still
    catches the NaN injected after the logs died; every line written before the limit
    reads back, with only the cut-off line reported (torn)."""
    run_dir = tmp_path / "runs" / "full"
    argv = esper_ppo(tmp_path, "full", "--wandb", "disabled", "--episodes", str(UPDATES))
    argv += ["--inject-fault", "nan@6", *SMALL]
    proc = start(argv, tmp_path, preexec_fn=small_file_size_limit)
    out, err = finish(proc, timeout=120)
    assert proc.returncode == 4, err

    events, bad = read_back(run_dir)
    written = len(events)
    assert 0 < written < EMITTED
    assert kinds(events) == [
        (0, "RUN_STARTED", 0),
        *[(k + 1, "PPO_UPDATE_COMPLETED", k) for k in range(written - 1)],
    ]
    assert [(b.line_number, b.torn) for b in bad] in ([], [(written + 1, True)])
    assert RunLayout(run_dir).events.stat().st_size <= LIMIT
    records, broken = log_records(run_dir)
    assert log_kinds(records) == kinds(events)[: len(records)]
    assert len(broken) <= 1

    # The structured log's file buffer still holds the line it could not write, so its
    # flush() and close() fail too: two more failures than events.
    structlog_failed = EMITTED - len(records) + 2
    failures = "; ".join(
        f"{name} (lost {failed}: failed {failed}, dropped 0, abandoned 0, undelivered 0, "
        f"last error: {EFBIG})"
        for name, failed in (("analytics", EMITTED - written), ("structlog", structlog_failed))
    )
    assert f"esper ppo: backend failed to deliver everything: {failures}" in err.splitlines()
    assert f"full: completed, {UPDATES} updates" in out
    assert "anomalies        lstm_nan x1" in out
    assert f"anomaly-escalator delivered {EMITTED}, failed 0, dropped 0" in out
    assert f"analytics        delivered {written}, failed {EMITTED - written}" in out


@pytest.mark.soak
def test_wandb_offline_past_the_limit_loses_rows_without_telling_anyone(tmp_path: Path) -> None:
    """What W&B does under the same limit: its service process (which inherits it) stops
    writing the run file and logs the error to its own debug log only; the SDK raises
    nothing, so esper counts every W&B event delivered. Pinned as it is today."""
    run_dir = tmp_path / "runs" / "full"
    argv = esper_ppo(tmp_path, "full", "--wandb", "offline", "--episodes", str(UPDATES))
    argv += ["--inject-fault", "nan@6", *SMALL]
    proc = start(argv, tmp_path, preexec_fn=small_file_size_limit)
    out, err = finish(proc, timeout=120)
    assert proc.returncode == 4, err
    assert f"wandb            delivered {EMITTED}, failed 0, dropped 0" in out
    (wandb_run,) = RunLayout(run_dir).wandb.glob("offline-run-*")
    assert (wandb_run / "run-full.wandb").stat().st_size == LIMIT
    internal = (wandb_run / "logs" / "debug-internal.log").read_text()
    assert "file too large" in internal
