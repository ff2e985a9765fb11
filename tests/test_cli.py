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
        "contracts",
        "export",
        "ppo",
        "query",
        "report",
        "watch",
    ]


def test_version() -> None:
    """esper --version prints the installed version."""
    result = CliRunner().invoke(main, ["--version"])
    assert (result.exit_code, result.output) == (0, f"esper, version {__version__}\n")


def test_contracts_export_writes_the_committed_schemas(tmp_path: Path) -> None:
    """esper contracts export DIR writes exactly the schemas committed in docs/contracts."""
    result = CliRunner().invoke(main, ["contracts", "export", str(tmp_path)])
    assert result.exit_code == 0, result.output
    committed = Path(__file__).parents[1] / "docs" / "contracts"
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
    } <= options
    assert "130 interrupted" in " ".join(result.output.split())


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
