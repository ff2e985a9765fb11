"""The README's promises: two commands, and a code example that runs as printed."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

README = (Path(__file__).parents[1] / "README.md").read_text()
ALARM = re.compile(r"update \d+: LSTM state [A-Z]+")
#: How ``print(event)`` starts for a PPO update: the event's repr.
PRINTED_EVENT = re.compile(
    r"event_type=<EventType\.PPO_UPDATE_COMPLETED: 'PPO_UPDATE_COMPLETED'> schema_version=3 "
    r"run_id='[0-9]{8}-[0-9]{6}-[0-9a-f]{6}' seq=(?P<seq>\d+) update=(?P<update>\d+) "
)


def test_readme_gives_exactly_two_commands() -> None:
    """The set-up section has one bash block with exactly `make run` and `make test`."""
    (block,) = re.findall(r"```bash\n(.*?)```", README, re.S)
    commands = [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]
    assert commands == ["make run", "make test"]


def test_readme_example_runs_and_publishes_one_event_per_update(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The trainer example, run with a stand-in ppo_update, prints every event in order and
    one alarm, for the update whose cell state exploded."""
    (code,) = re.findall(r"```python\n(.*?)```", README, re.S)
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(input_size=2, hidden_size=4)
    calls = []

    def ppo_update(_: object) -> tuple[dict[str, float], tuple[torch.Tensor, torch.Tensor]]:
        calls.append(1)
        _, (h, c) = lstm(torch.randn(3, 5, 2))
        if len(calls) == 2:
            c = c * 1e3  # an exploded cell state at update 1
        return {"policy_loss": 0.1, "value_loss": 0.2, "entropy": 0.6}, (h, c)

    exec(compile(code, "README.md", "exec"), {"num_updates": 3, "ppo_update": ppo_update})
    out = capsys.readouterr().out
    # The alarm prints from its own thread while the inline print prints events: a line
    # can land inside another one's (print writes the text and the newline apart).
    alarms = ALARM.findall(out)
    lines = [line for line in ALARM.sub("", out).splitlines() if line]
    kinds = re.findall(r"^event_type=<EventType\.(\w+):", "\n".join(lines), re.M)
    assert kinds == ["RUN_STARTED", *["PPO_UPDATE_COMPLETED"] * 3, "RUN_FINISHED"]
    assert all(line.startswith("event_type=") for line in lines)
    printed = [m for m in map(PRINTED_EVENT.match, lines) if m is not None]
    assert [(m["seq"], m["update"]) for m in printed] == [("1", "0"), ("2", "1"), ("3", "2")]
    assert alarms == ["update 1: LSTM state CRITICAL"]
