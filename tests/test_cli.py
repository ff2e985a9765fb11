"""The esper command, driven in-process with click's CliRunner."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from esper_telemetry import __version__
from esper_telemetry.cli import main


def test_help_lists_the_commands() -> None:
    """esper --help names every command."""
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    commands = result.output.split("Commands:")[1]
    assert re.findall(r"^  (\w+)", commands, re.M) == [
        "backends",
        "contracts",
        "export",
        "ppo",
        "query",
        "report",
        "wandb",
        "watch",
    ]


def test_version() -> None:
    """esper --version prints the installed version."""
    result = CliRunner().invoke(main, ["--version"])
    assert (result.exit_code, result.output) == (0, f"esper, version {__version__}\n")


def test_contracts_export_writes_the_committed_schemas(tmp_path: Path) -> None:
    """esper contracts export DIR writes exactly the schemas committed in contracts/."""
    result = CliRunner().invoke(main, ["contracts", "export", str(tmp_path)])
    assert result.exit_code == 0, result.output
    committed = Path(__file__).parents[1] / "contracts"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in committed.iterdir())
    for path in tmp_path.iterdir():
        assert path.read_text() == (committed / path.name).read_text(), (
            f"{path.name} drifted from the models: run `make schemas` and commit the result"
        )


def test_contracts_export_refuses_a_file_as_directory(tmp_path: Path) -> None:
    """Exporting into a path that is a file fails with a clear message, exit status 2."""
    target = tmp_path / "file"
    target.write_text("x")
    result = CliRunner().invoke(main, ["contracts", "export", str(target)])
    assert result.exit_code == 2
    assert "is a file" in result.output


def test_ppo_help_documents_the_options_and_exit_statuses() -> None:
    """esper ppo --help lists every option of the issue and the exit statuses."""
    result = CliRunner().invoke(main, ["ppo", "--help"])
    assert result.exit_code == 0
    options = set(re.findall(r"(--[a-z-]+)", result.output))
    assert {
        "--episodes",
        "--envs",
        "--episode-length",
        "--hidden",
        "--layers",
        "--lr",
        "--seed",
        "--run-dir",
        "--run-id",
        "--telemetry-level",
        "--wandb",
        "--halt-on",
        "--inject-fault",
        "--nproc",
        "--publish-ranks",
        "--fault-rank",
    } <= options
    text = " ".join(result.output.split())
    assert "5 training failed" in text
    assert "130 interrupted" in text


def test_ppo_refuses_a_bogus_fault_with_one_usage_error_and_trains_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """esper ppo --inject-fault bogus: exit 2, click's usage error naming --inject-fault and
    what it expects (no traceback), and no run directory."""
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["ppo", "--inject-fault", "bogus"], prog_name="esper")
    assert (result.exit_code, type(result.exception)) == (2, SystemExit)
    assert result.output.splitlines() == [
        "Usage: esper ppo [OPTIONS]",
        "Try 'esper ppo --help' for help.",
        "",
        "Error: Invalid value for --inject-fault: expected KIND@UPDATE with KIND one of nan, "
        "inf, explode, vanish and UPDATE an int >= 0 (e.g. nan@3), got 'bogus'",
    ]
    assert list(tmp_path.iterdir()) == []


MEMORY = "Invalid value for --envs / --episode-length / --hidden / --layers: the run would need "
SMALL = ["--envs", "2", "--episode-length", "8", "--hidden", "16", "--wandb", "disabled"]


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--seed", "-1"], "Invalid value for --seed: must be an int in [0, 2**63 - 1], got -1"),
        (
            ["--seed", str(2**70)],
            "Invalid value for --seed: must be an int in [0, 2**63 - 1], got "
            "1180591620717411303424",
        ),
        (["--hidden", str(10**12)], MEMORY),
        (["--episode-length", str(10**15)], MEMORY),
        (["--envs", str(10**12)], MEMORY),
        (["--layers", str(10**9)], MEMORY),
        (["--lr", "inf"], "Invalid value for --lr: must be a finite number > 0, got inf"),
        (["--lr", "1e400"], "Invalid value for --lr: must be a finite number > 0, got inf"),
        (["--lr", "nan"], "Invalid value for --lr: must be a finite number > 0, got nan"),
        (["--lr", "0"], "Invalid value for --lr: must be a finite number > 0, got 0.0"),
        (["--lr", "-1"], "Invalid value for --lr: must be a finite number > 0, got -1.0"),
        (
            ["--proj-size", "16"],
            "Invalid value for --proj-size: must be 0 (none) or less than hidden (16), got 16",
        ),
        (
            ["--proj-size", "-1"],
            "Invalid value for --proj-size: must be an int in [0, 2**63 - 1], got -1",
        ),
        (
            ["--episodes", "0"],
            "Invalid value for --episodes: must be an int in [1, 2**63 - 1], got 0",
        ),
        (
            ["--episodes", str(10**20)],
            "Invalid value for --episodes: must be an int in [1, 2**63 - 1], got " + str(10**20),
        ),
        (
            ["--episodes", "2", "--inject-fault", "nan@5"],
            "Invalid value for --inject-fault: update 5 is not one of the run's updates; pick one "
            "in [0, 1]",
        ),
        (
            ["--inject-fault", "nan@\u00b2"],
            "Invalid value for --inject-fault: expected KIND@UPDATE with KIND one of nan, inf, "
            "explode, vanish and UPDATE an int >= 0 (e.g. nan@3), got 'nan@\u00b2'",
        ),
        (
            ["--run-dir", ""],
            "Invalid value for '--run-dir': '' is an empty path; give one, e.g. runs (or . for "
            "the current folder)",
        ),
    ],
)
def test_ppo_refuses_a_bad_option_naming_it_and_creates_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], error: str
) -> None:
    """Each bad value of the issue: click's usage error, exit 2, one error line that names
    the option the user typed (not a PPOConfig field), and nothing created."""
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["ppo", *SMALL, *args], prog_name="esper")
    assert (result.exit_code, type(result.exception)) == (2, SystemExit), result.output
    lines = result.output.splitlines()
    assert lines[:3] == ["Usage: esper ppo [OPTIONS]", "Try 'esper ppo --help' for help.", ""]
    assert len(lines) == 4
    assert lines[3].startswith(f"Error: {error}")
    if error == MEMORY:
        assert lines[3].endswith("of memory available; choose smaller sizes")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("directory", ["", "  "])
def test_contracts_export_refuses_an_empty_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, directory: str
) -> None:
    """contracts export '' is refused (it wrote into the current folder): exit 2, one line."""
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["contracts", "export", directory])
    assert result.exit_code == 2
    assert result.output.splitlines()[-1] == (
        f"Error: Invalid value for 'DIRECTORY': {directory!r} is an empty path; give one, "
        "e.g. contracts (or . for the current folder)"
    )
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A run directory holding one PPO update."""
    from esper_telemetry import TelemetryHub, emit_ppo_update_event
    from esper_telemetry.backends.analytics import AnalyticsCollector

    with TelemetryHub("one") as hub:
        hub.subscribe(AnalyticsCollector(tmp_path / "run"))
        metrics = {"policy_loss": 0.1, "value_loss": 0.2, "entropy": 0.6}
        emit_ppo_update_event(hub, update=0, metrics=metrics)
    return tmp_path / "run"


def test_report_refuses_an_output_in_a_missing_folder(tmp_path: Path, run_dir: Path) -> None:
    """report -o NOPE/dir/x.png: exit 2, one line naming -o/--output; no folder is created."""
    target = tmp_path / "nope" / "dir" / "x.png"
    result = CliRunner().invoke(main, ["report", str(run_dir), "-o", str(target)])
    assert result.exit_code == 2
    assert result.output.splitlines()[-1] == (
        f"Error: Invalid value for -o/--output: {str(target)!r}: no folder "
        f"{str(target.parent)!r}; create it first"
    )
    assert not (tmp_path / "nope").exists()


@pytest.mark.parametrize("command", ["query", "export", "report"])
def test_an_empty_run_argument_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, run_dir: Path, command: str
) -> None:
    """query, export and report refuse an empty run argument (it meant the current folder,
    here a run directory) with exit 2 and one line."""
    monkeypatch.chdir(run_dir)
    extra = {"query": ["SELECT 1"], "export": ["--parquet", str(tmp_path / "x.parquet")]}
    before = sorted(run_dir.iterdir())
    result = CliRunner().invoke(main, [command, "", *extra.get(command, [])])
    assert result.exit_code == 2, result.output
    assert result.output.splitlines()[-1].startswith("Error: Invalid value for ")
    assert "'' is" in result.output
    assert sorted(run_dir.iterdir()) == before
    assert not (tmp_path / "x.parquet").exists()
