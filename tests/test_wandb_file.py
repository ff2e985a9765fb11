"""backends._wandb_file: reading an offline W&B run file the way WandBBackend checks it."""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import wandb

from esper_telemetry.backends import _wandb_file
from esper_telemetry.backends._wandb_file import (
    RunFileContents,
    first_error,
    read_final_run_file,
    read_run_file,
)
from tests.wandb_offline import inspect_run, offline_wandb, run_dir_of

STEPS = 5
#: Step 2's row is ~100 KiB, so its record spans four 32 KiB blocks (FIRST, MIDDLE, LAST).
WIDE = {f"ppo/a_rather_long_metric_name_{i:05d}": float(i) for i in range(2500)}


@pytest.fixture
def run_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A finished offline run: config, notes, 5 rows (one very wide), a status summary."""
    with offline_wandb(tmp_path, monkeypatch) as wandb_dir:
        run = wandb.init(project="esper-tests", id="filerun", config={"lr": 0.1})
        run.notes = "a note"
        for step in range(STEPS):
            run.log({"ppo/loss": step / 10, **(WIDE if step == 2 else {})}, step=step)
        run.summary.update({"run/status": "completed"})
        run.finish()
        return run_dir_of(wandb_dir, "filerun") / "run-filerun.wandb"


def test_a_finished_run_reads_back_whole(run_file: Path) -> None:
    """Every record is read (as many as W&B's own reader finds), with each row's step,
    the config keys, the notes, the summary keys and the exit record."""
    contents = read_run_file(run_file)
    assert (contents.steps, contents.exited, contents.damaged, contents.notes) == (
        set(range(STEPS)),
        True,
        False,
        True,
    )
    assert contents.records == len(inspect_run(run_file.parent))
    assert {"lr"} <= contents.config_keys
    assert {"run/status", "ppo/loss"} <= contents.summary_keys


def test_a_file_cut_anywhere_holds_a_prefix_of_its_rows(run_file: Path, tmp_path: Path) -> None:
    """Cut at any byte, the file reads without raising: its rows are the first rows of
    the whole file, fewer the earlier the cut, and a cut inside a chunk is reported."""
    data = run_file.read_bytes()
    cut_file = tmp_path / "cut.wandb"
    seen: list[tuple[int, int]] = []
    for size in [*range(0, len(data), 997), len(data) - 1]:
        cut_file.write_bytes(data[:size])
        contents = read_run_file(cut_file)
        assert contents.steps == set(range(len(contents.steps))), size
        seen.append((len(contents.steps), contents.records))
    assert seen == sorted(seen)
    assert seen[0] == (0, 0)
    assert read_run_file(cut_file).damaged


def test_a_corrupted_byte_stops_the_reading_there(run_file: Path, tmp_path: Path) -> None:
    """A flipped byte in the wide row fails its chunk's checksum: the rows before it
    are read, nothing after it, and the file is reported damaged."""
    data = bytearray(run_file.read_bytes())
    data[data.index(b"a_rather_long_metric_name_01000")] ^= 0xFF
    damaged = tmp_path / "damaged.wandb"
    damaged.write_bytes(bytes(data))
    contents = read_run_file(damaged)
    assert (contents.steps, contents.exited, contents.damaged) == ({0, 1}, False, True)


def test_a_missing_or_foreign_file_holds_nothing(tmp_path: Path) -> None:
    """No file: nothing, not damaged; a file that is not a W&B run file: nothing, damaged."""
    foreign = tmp_path / "foreign.wandb"
    foreign.write_bytes(b"not a W&B transaction log")
    assert (read_run_file(tmp_path / "missing.wandb"), read_run_file(foreign)) == (
        RunFileContents(),
        RunFileContents(damaged=True),
    )


def test_the_error_about_the_run_file_is_preferred(tmp_path: Path) -> None:
    """first_error picks the first ERROR naming the run file, else the first ERROR."""
    log = tmp_path / "debug-internal.log"
    entries = [
        {"level": "INFO", "msg": "stream: started"},
        {"level": "ERROR", "msg": "write output.log: no space left on device"},
        {"level": "ERROR", "msg": "write run-x.wandb: no space left on device"},
    ]
    log.write_text("\n".join(map(json.dumps, entries)) + "\nnot json\n")
    assert (
        first_error(log, about="run-x.wandb"),
        first_error(log, about="run-y.wandb"),
        first_error(tmp_path / "none.log", about="run-x.wandb"),
    ) == (
        "write run-x.wandb: no space left on device",
        "write output.log: no space left on device",
        None,
    )


def test_the_final_file_is_read_once_wandb_core_wrote_its_end(
    run_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """read_final_run_file polls a file without its exit record until the record is
    there; it reads once when wandb-core logged an error writing the file, or with
    timeout=0."""
    data = run_file.read_bytes()
    growing, log = tmp_path / "run-x.wandb", tmp_path / "debug-internal.log"
    log.write_text("")
    sleeps: list[float] = []

    def wandb_core_writes_the_rest(seconds: float) -> None:
        sleeps.append(seconds)
        growing.write_bytes(data)

    clock = SimpleNamespace(monotonic=time.monotonic, sleep=wandb_core_writes_the_rest)
    monkeypatch.setattr(_wandb_file, "time", clock)
    growing.write_bytes(data[: len(data) // 2])
    assert read_final_run_file(growing, log, timeout=3600).exited
    growing.write_bytes(data[: len(data) // 2])
    assert not read_final_run_file(growing, log, timeout=0).exited
    log.write_text(json.dumps({"level": "ERROR", "msg": "write run-x.wandb: no space"}) + "\n")
    assert not read_final_run_file(growing, log, timeout=3600).exited
    assert sleeps == [0.05]


def test_run_folders_of_one_id_include_those_w_and_b_numbered_in_the_same_second(
    tmp_path: Path,
) -> None:
    """W&B adds -1, -2... to a folder of a run id started again within the same second;
    the run file names the run, and the folders come oldest first."""
    from esper_telemetry.backends._wandb_file import run_folders

    names = [
        "offline-run-20261202_032202-wb-1",
        "offline-run-20261202_032202-wb",
        "offline-run-20261202_032159-wb",
        "offline-run-20261202_032203-other",
        "run-20261202_032210-wb",
    ]
    for name in names:
        (tmp_path / name).mkdir()
        run_id = name.removeprefix("offline-").split("-")[2]
        (tmp_path / name / f"run-{run_id}.wandb").write_bytes(b"")
    (tmp_path / "offline-run-20261202_032300-wb-empty").mkdir()  # no run file: not a run
    assert [p.name for p in run_folders(tmp_path, "wb")] == [
        "offline-run-20261202_032159-wb",
        "offline-run-20261202_032202-wb",
        "offline-run-20261202_032202-wb-1",
        "run-20261202_032210-wb",
    ]
