"""examples/cleanrl_ppo_lstm.py: a CleanRL-style PPO-LSTM with esper in at most 10 lines."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

from esper_telemetry.contracts import PPOUpdateCompleted, RunFinished, RunStarted
from tests.reliability.children import child_env, read_back

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "cleanrl_ppo_lstm.py"
#: What only esper's lines may mention.
ESPER_NAMES = re.compile(r"esper_telemetry|TelemetryHub|hub\.|hub\b|track\(|tracker|emit_ppo")


def test_the_esper_lines_are_marked_and_at_most_ten() -> None:
    code = [
        line
        for line in EXAMPLE.read_text().split('"""', 2)[2].splitlines()  # after the docstring
        if line.strip() and not line.strip().startswith("#")
    ]
    marked = [line for line in code if line.endswith("# esper")]
    unmarked = [line for line in code if ESPER_NAMES.search(line) and line not in marked]
    assert unmarked == []
    assert 1 <= len(marked) <= 10


def test_a_few_updates_give_one_event_each_and_a_finished_run(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    argv = [sys.executable, str(EXAMPLE), "--num-updates", "3", "--num-steps", "32"]
    out = subprocess.run(
        [*argv, "--run-dir", str(run_dir)],
        cwd=tmp_path,
        env=child_env(tmp_path, OMP_NUM_THREADS="1"),
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    events, bad = read_back(run_dir)
    assert bad == []
    started = [e for e in events if isinstance(e, RunStarted)]
    updates = [e for e in events if isinstance(e, PPOUpdateCompleted)]
    finished = [e for e in events if isinstance(e, RunFinished)]
    assert len(started) == 1
    assert started[0].payload.config["num_steps"] == 32
    assert [e.update for e in updates] == [0, 1, 2]
    assert [(e.payload.status, e.payload.summary["updates"]) for e in finished] == [
        ("completed", 3.0)
    ]
    for e in updates:
        p = e.payload
        assert p.env_steps == 4 * 32 * (e.update + 1)
        assert list(p.recurrent_health) == ["policy"]
        assert p.recurrent_health["policy"].has_cell
        assert p.health() == p.recurrent_health["policy"]
        assert p.lstm_h_rms is not None
        assert 0 < p.lstm_h_rms < 1  # an LSTM's h is o * tanh(c)
        assert p.episode_return_window == 20
        assert p.grad_norm is not None
        assert math.isfinite(p.policy_loss)
    # 32 steps of 4 envs finish episodes in every update (random CartPole: ~20 steps).
    assert all(
        p.episode_return_mean is not None and p.episode_return_mean > 0
        for p in (e.payload for e in updates)
    )
