"""`esper ppo --nproc N`: real ranks (gloo on CPU) under the launcher, in subprocesses.

Every run is bounded by a timeout, so a hang fails the test instead of blocking it. The
refusals of bad input and the launcher's verdict rules are driven in-process. A run of
two ranks takes half a minute on a shared 2-core machine (three processes load torch),
so the signal and crash runs are soak tests (``--soak``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from esper_telemetry._launch import _End, _verdict
from esper_telemetry._rank import RankOutcome, _rank_options, write_spec
from esper_telemetry.analytics import read_events
from esper_telemetry.cli import main
from esper_telemetry.contracts import (
    AnomalyDetected,
    PPOUpdateCompleted,
    RunFinished,
    RunLayout,
    TelemetryEvent,
)
from esper_telemetry.run import RunOptions, WandbSettings
from esper_telemetry.training import PPOConfig
from esper_telemetry.training.parallel import DataParallel
from esper_telemetry.training.ppo import ConfigError, check_memory
from tests.reliability.children import (
    SMALL,
    child_env,
    esper_ppo,
    finish,
    log_records,
    start,
    wait_for_updates,
)
from tests.wandb_offline import history, inspect_run

#: The longest any one run may take before the test fails (a hang, not slowness).
TIMEOUT_S = 240


def run(tmp: Path, run_id: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        esper_ppo(tmp, run_id, "--nproc", "2", *SMALL, *args),
        capture_output=True,
        text=True,
        env=child_env(tmp),
        cwd=tmp,
        timeout=TIMEOUT_S,
    )


def kinds(events: list[TelemetryEvent]) -> list[tuple[int, str]]:
    return [(e.update, e.event_type.value) for e in events]


def updates(events: list[TelemetryEvent]) -> list[int]:
    return [e.update for e in events if isinstance(e, PPOUpdateCompleted)]


def finished(events: list[TelemetryEvent]) -> RunFinished:
    (last,) = [e for e in events if isinstance(e, RunFinished)]
    return last


def rank_events(run_dir: Path, rank: int) -> list[TelemetryEvent]:
    return list(read_events(RunLayout(run_dir).events_of_rank(rank)))


def test_nproc_2_end_to_end_makes_one_run_of_rank_0s_events(tmp_path: Path) -> None:
    """Exit 0; one analytics log, one structured log and one offline W&B run, all of rank
    0's events only, seq gapless and every update present; the summary printed once."""
    result = run(tmp_path, "two", "--episodes", "3", "--wandb", "offline")
    assert result.returncode == 0, result.stderr
    run_dir = tmp_path / "runs" / "two"
    events = list(read_events(run_dir))
    assert kinds(events) == [
        (0, "RUN_STARTED"),
        *[(k, "PPO_UPDATE_COMPLETED") for k in range(3)],
        (2, "RUN_FINISHED"),
    ]
    assert [(e.seq, e.rank) for e in events] == [(k, 0) for k in range(5)]
    assert finished(events).payload.status == "completed"
    # The replay check is of both ranks' rollouts (2 envs x 8 steps each), not rank 0's.
    replays = [e.payload.replay for e in events if isinstance(e, PPOUpdateCompleted)]
    assert [sorted(r) for r in replays] == [["policy", "value"]] * 3
    checks = [c for r in replays for c in r.values()]
    assert {(c.ranks, c.compared, c.mismatched) for c in checks} == {(2, 32, 0)}
    records, broken = log_records(run_dir)
    assert ([(r["seq"], r["rank"]) for r in records], broken) == ([(k, 0) for k in range(5)], [])
    (wandb_run,) = RunLayout(run_dir).wandb.glob("offline-run-*")
    assert wandb_run.name.endswith("-two")
    assert [r["_step"] for r in history(inspect_run(wandb_run))] == [0, 1, 2]
    assert sorted(p.name for p in run_dir.iterdir()) == ["events.jsonl", "log.jsonl", "wandb"]
    assert result.stdout.count("run two: completed") == 1
    assert "ranks            2 (rank 0 publishes)" in result.stdout
    assert result.stderr == ""


def test_publish_ranks_all_and_a_halt_on_rank_1_alone_stop_every_rank_at_one_update(
    tmp_path: Path,
) -> None:
    """--publish-ranks all: events.rank0/1.jsonl and log.rank0/1.jsonl, each rank's own
    events. The explosion injected on rank 1 alone at update 1 halts both ranks there
    (exit 3, one line naming rank 1 and the anomaly), and the replicas' weights are the
    same on both ranks at the end (their RUN_FINISHED checksums agree)."""
    result = run(
        tmp_path,
        "halt",
        *("--episodes", "4", "--wandb", "disabled", "--publish-ranks", "all"),
        *("--inject-fault", "explode@1", "--fault-rank", "1", "--halt-on", "critical"),
    )
    assert result.returncode == 3, result.stderr
    run_dir = tmp_path / "runs" / "halt"
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "events.rank0.jsonl",
        "events.rank1.jsonl",
        "log.rank0.jsonl",
        "log.rank1.jsonl",
    ]
    ranks = [rank_events(run_dir, r) for r in (0, 1)]
    for r, events in enumerate(ranks):
        assert {e.rank for e in events} == {r}
        assert [e.seq for e in events] == list(range(len(events)))
        assert updates(events) == [0, 1]
        assert (finished(events).update, finished(events).payload.status) == (1, "halted")
    anomalies = [(r, e.update) for r in (0, 1) for e in ranks[r] if isinstance(e, AnomalyDetected)]
    # The health is global (every rank measures all ranks' states): rank 0 sees rank 1's
    # explosion at the same update, and its event says the figures cover both ranks.
    assert anomalies == [(0, 1), (1, 1)]
    health = [e.payload.health() for e in ranks[0] if isinstance(e, PPOUpdateCompleted)]
    assert [(h.scope, h.ranks) for h in health if h is not None] == [("all_ranks", 2)] * 2
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("esper ppo:")]
    # Rank 0's own escalator saw the explosion too, so the verdict is its own halt.
    assert line.startswith("esper ppo: halted: training halted (update 1): lstm_c_explosion")
    checksums = [finished(events).payload.summary["weights_crc32"] for events in ranks]
    assert checksums[0] == checksums[1]


@pytest.mark.soak  # about 30 s each on a shared 2-core machine
@pytest.mark.parametrize("how", ["ctrl-c to the process group", "SIGTERM to the launcher"])
def test_a_signal_stops_every_rank_at_one_update_with_everything_flushed(
    tmp_path: Path, how: str
) -> None:
    """Ctrl-C as a terminal sends it (to the whole process group), or SIGTERM to the
    launcher alone (it forwards it): exit 130, both ranks stop after the same update, and
    each rank's log holds every update and RUN_FINISHED interrupted."""
    proc = start(
        esper_ppo(
            tmp_path,
            "sig",
            *("--nproc", "2", *SMALL, "--episodes", "10000"),
            *("--wandb", "disabled", "--publish-ranks", "all"),
        ),
        tmp_path,
        new_session=True,
    )
    run_dir = tmp_path / "runs" / "sig"
    try:
        wait_for_updates(proc, RunLayout(run_dir).events_of_rank(0), 2, timeout=TIMEOUT_S)
        if how == "SIGTERM to the launcher":
            proc.send_signal(signal.SIGTERM)
        else:
            os.killpg(proc.pid, signal.SIGINT)
        _, stderr = finish(proc, timeout=TIMEOUT_S)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    ranks = [rank_events(run_dir, r) for r in (0, 1)]
    done = updates(ranks[0])
    assert len(done) >= 2
    for events in ranks:
        assert kinds(events) == [
            (0, "RUN_STARTED"),
            *[(k, "PPO_UPDATE_COMPLETED") for k in range(len(done))],
            (done[-1], "RUN_FINISHED"),
        ]
        assert finished(events).payload.status == "interrupted"
    assert "esper ppo: interrupted; every event emitted so far was flushed" in stderr


@pytest.mark.soak  # about 30 s on a shared 2-core machine
def test_a_rank_killed_outright_ends_the_run_with_one_line_naming_it(tmp_path: Path) -> None:
    """SIGKILL to rank 1 mid-run: rank 0 is not left waiting; it ends the run on the record
    (RUN_FINISHED failed, everything flushed), and the launcher exits 5 naming rank 1."""
    proc = start(
        esper_ppo(
            tmp_path, "crash", "--nproc", "2", *SMALL, "--episodes", "10000", "--wandb", "disabled"
        ),
        tmp_path,
        new_session=True,
    )
    run_dir = tmp_path / "runs" / "crash"
    try:
        wait_for_updates(proc, RunLayout(run_dir).events, 2, timeout=TIMEOUT_S)
        os.kill(rank_pid(proc.pid, 1), signal.SIGKILL)
        _, stderr = finish(proc, timeout=TIMEOUT_S)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 5, stderr
    lines = [x for x in stderr.splitlines() if x.startswith("esper ppo:")]
    assert len(lines) == 1
    assert lines[0].startswith("esper ppo: rank 1 was killed by SIGKILL; rank 0: training failed")
    events = list(read_events(run_dir))
    assert kinds(events)[-1] == (updates(events)[-1], "RUN_FINISHED")
    assert finished(events).payload.status == "failed"
    assert updates(events) == list(range(len(updates(events))))


def rank_pid(launcher: int, rank: int) -> int:
    """The pid of the launcher's child running ``rank`` (from /proc)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if (
            parent == launcher
            and b"esper_telemetry._rank" in argv
            and argv[-2:-1] == [b"%d" % rank]
        ):
            return int(entry.name)
    raise AssertionError(f"no rank {rank} under the launcher {launcher}")


# -- refused before anything starts (in-process) ----------------------------------------


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--nproc", "0"], "Invalid value for --nproc: must be an int >= 1, got 0"),
        (
            ["--nproc", str(10**6)],
            f"Invalid value for --nproc: 1000000 processes are more than this machine can "
            f"run: at most {(os.cpu_count() or 1) * 8} (8 per CPU core",
        ),
        (
            ["--nproc", "2", "--tui"],
            "Invalid value for --tui: the panel shows one process; with --nproc above 1 "
            "watch the run from another terminal instead: esper watch RUN_DIR/RUN_ID",
        ),
        (
            ["--nproc", "2", "--inject-fault", "nan@1", "--fault-rank", "2"],
            "Invalid value for --fault-rank: rank 2 is not one of the 2 ranks; pick one in [0, 1]",
        ),
        (
            ["--nproc", "2", "--fault-rank", "1"],
            "Invalid value for --fault-rank: names the rank --inject-fault corrupts; give "
            "--inject-fault too",
        ),
        (
            ["--nproc", "2", "--publish-ranks", "some"],
            "Invalid value for '--publish-ranks': 'some' is not one of 'zero', 'all'.",
        ),
    ],
)
def test_bad_rank_options_are_refused_in_one_line_creating_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], error: str
) -> None:
    """Exit 2 with click's usage error and one error line naming the option; no process
    is started and nothing is created."""
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["ppo", *SMALL, *args], prog_name="esper")
    assert (result.exit_code, type(result.exception)) == (2, SystemExit), result.output
    lines = result.output.splitlines()
    assert len(lines) == 4
    assert lines[3].startswith(f"Error: {error}")
    assert list(tmp_path.iterdir()) == []


def test_nproc_with_resume_is_refused(tmp_path: Path) -> None:
    """--resume continues a one-process run: with --nproc 2 it is refused in one line."""
    (tmp_path / "runs" / "old").mkdir(parents=True)
    (tmp_path / "runs" / "old" / "events.jsonl").write_text("")
    result = CliRunner().invoke(
        main, ["ppo", "--nproc", "2", "--resume", str(tmp_path / "runs" / "old")]
    )
    assert result.exit_code == 2
    assert "Invalid value for --resume: continues a run of one process" in result.output


def test_the_memory_check_counts_every_rank() -> None:
    """Settings that fit once but not N times are refused, naming the processes too."""
    config = PPOConfig(envs=2, steps=8, hidden=16)
    need = config.memory_estimate().total
    assert check_memory(config, available=3 * need, processes=3) == config.memory_estimate()
    with pytest.raises(ConfigError) as caught:
        check_memory(config, available=3 * need, processes=4)
    assert caught.value.fields == ("envs", "steps", "hidden", "layers", "processes")
    assert caught.value.reason.startswith("the run's 4 processes would need at least")
    assert caught.value.reason.endswith("choose smaller sizes or fewer processes")


def test_data_parallel_needs_an_initialised_distributed_run() -> None:
    """Outside torch.distributed, DataParallel refuses in one line saying what to do."""
    with pytest.raises(RuntimeError, match=r"^DataParallel needs an initialised torch"):
        DataParallel()


# -- the launcher's verdict ---------------------------------------------------------------


def end(rank: int, code: int, message: str = "", *, order: int = 0, at: float = 0.0) -> _End:
    """A rank that ended with its own verdict."""
    return _End(rank, code, RankOutcome(code, message, True, at), killed=False, order=order)


@pytest.mark.parametrize(
    ("ends", "verdict"),
    [
        ([end(0, 0, "completed"), end(1, 0, "completed")], (0, "completed")),
        ([end(0, 0, "completed"), end(1, 4, "lost")], (4, "rank 1: lost")),
        (
            [end(0, 3, "halted: rank 1 halted the run"), end(1, 3, "halted: lstm_nan")],
            (3, "halted: rank 1 halted the run; rank 1: halted: lstm_nan"),
        ),
        (
            [end(0, 5, "failed: peer gone", at=2.0), end(1, 5, "failed: boom", at=1.0)],
            (5, "failed: peer gone; rank 1: failed: boom"),
        ),
        (
            [
                end(0, 5, "failed: peer gone", order=1),
                _End(1, -9, None, killed=False, order=0),
            ],
            (5, "rank 1 was killed by SIGKILL; rank 0: failed: peer gone"),
        ),
        (
            [end(0, 0, "completed"), _End(1, -9, None, killed=True, order=1)],
            (5, "rank 1 had not ended 60 s after another rank; killed; rank 0: completed"),
        ),
        (
            [end(0, 5, "failed: x"), _End(1, 1, None, killed=False, order=1)],
            (5, "rank 1 crashed with exit status 1 (its error is above); rank 0: failed: x"),
        ),
        (
            [_End(0, 130, None, killed=False, order=0), _End(1, 130, None, False, order=1)],
            (130, "interrupted while starting; nothing was trained"),
        ),
    ],
)
def test_the_launcher_exits_with_rank_0s_verdict_naming_the_rank_that_caused_it(
    ends: list[_End], verdict: tuple[int, str]
) -> None:
    """Rank 0's status, or another rank's when rank 0 succeeded; a crash or a kill is 5
    and names the rank; a halt or failure adds the first differing message."""
    assert _verdict(ends, grace=60.0) == verdict


def test_every_rank_gets_the_runs_wandb_settings_and_trainer_settings(tmp_path: Path) -> None:
    """What the launcher writes for its ranks carries the --wandb-* settings and every
    trainer setting (the value clipping, the device): a rank runs what was asked."""
    settings = WandbSettings(
        entity="team",
        group="g",
        tags=("a", "b"),
        job_type="train",
        log=("health",),
        prefix="esper",
        x_axis="env_steps",
    )
    options = RunOptions(
        config=PPOConfig(updates=2, clip_vf=None, envs=2, steps=8),
        run_id="ranks",
        wandb_settings=settings,
    )
    spec = tmp_path / "spec.json"
    write_spec(
        spec,
        options,
        world_size=2,
        init_file=tmp_path / "init",
        out_dir=tmp_path,
        fault_rank=None,
    )
    rank = _rank_options(json.loads(spec.read_text()), 1)
    assert rank.wandb_settings == settings
    assert rank.config == options.config
