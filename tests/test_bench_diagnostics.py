"""The study's planted faults (``bench/diagnostics.py``) on the reference trainer itself:
each unroll bug trips the replay check at the first update that can show it, the healthy
configuration raises nothing, and every patch is undone after its run."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from esper_telemetry.training.ppo import RecurrentActorCritic
from tests.script import load_script

BENCH = Path(__file__).resolve().parents[1] / "bench" / "diagnostics.py"


@pytest.fixture(scope="module")
def study() -> ModuleType:
    return load_script(BENCH, "esper_bench_diagnostics")


@pytest.mark.parametrize(
    ("config", "first_update"),
    [
        ("bug_no_reset", 0),
        ("bug_late_reset", 0),
        ("bug_padding_as_steps", 0),
        # at update 0 every stored state is zero: the bug cannot show before update 1
        ("bug_zero_initial_state", 1),
    ],
)
def test_each_planted_unroll_bug_is_a_replay_mismatch_at_once(
    study: ModuleType, tmp_path: Path, config: str, first_update: int
) -> None:
    run: dict[str, Any] = study.run_one(config, 0, 3, tmp_path)
    assert run["status"] == "completed"
    mismatch = run["first_by_type"]["lstm_replay_mismatch"]
    assert mismatch["update"] == first_update
    assert mismatch["severity"] == "critical"
    assert run["first_norm_rule"] is None


def test_the_healthy_configuration_raises_nothing_and_patches_are_undone(
    study: ModuleType, tmp_path: Path
) -> None:
    original = RecurrentActorCritic.segment_outputs
    study.run_one("bug_no_reset", 1, 1, tmp_path)
    assert RecurrentActorCritic.segment_outputs is original
    run: dict[str, Any] = study.run_one("healthy", 0, 3, tmp_path)
    assert run["first_by_type"] == {}
    assert run["updates"] == 3


def test_the_tables_rank_a_critical_anomaly_first_within_an_update(study: ModuleType) -> None:
    first = {
        "lstm_replay_drift": {
            "type": "lstm_replay_drift",
            "update": 0,
            "severity": "warning",
            "state": "value",
        },
        "lstm_replay_mismatch": {
            "type": "lstm_replay_mismatch",
            "update": 0,
            "severity": "critical",
            "state": "policy",
        },
        "lstm_c_explosion": {
            "type": "lstm_c_explosion",
            "update": 4,
            "severity": "critical",
            "state": "policy",
        },
    }
    assert study._firsts(first) == (
        "lstm_replay_mismatch@0 (policy)",
        "lstm_c_explosion@4 (policy)",
    )
