"""Diagnostics across real gloo processes: the figures of the ranks' batches concatenated.

One group of 2 and one of 3 processes (``tests/diagnostics_ranks_child.py``) measure every
scenario; each test reads what the ranks wrote. The reference is one process measuring
the ranks' states and steps concatenated along the batch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from esper_telemetry import compute_lstm_health
from esper_telemetry.contracts import LSTMHealthMetrics, RecurrentDiagnostics
from tests import diagnostics_ranks_child as child
from tests.test_lstm_health_distributed import GATHERS, Results, metrics_of, run_group

CHILD = Path(child.__file__).resolve()


@pytest.fixture(scope="module", params=[2, 3], ids=["2-ranks", "3-ranks"])
def group(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Results:
    """What every rank of a real gloo group of 2 or 3 processes measured."""
    world: int = request.param
    return run_group(world, tmp_path_factory.mktemp(f"diag{world}"), CHILD)


def one_process(name: str, world: int) -> RecurrentDiagnostics:
    """The diagnostics one process measures on every rank's state and steps, concatenated."""
    parts = [child.state(name, r, world) for r in range(world)]
    steps = [int(s) for _, rank_steps in parts for s in (rank_steps or [])] or None
    states: list[Any] = [p[0] for p in parts]
    if isinstance(states[0], torch.Tensor):
        hidden: Any = torch.cat(states, dim=1)
    else:
        hidden = tuple(torch.cat([s[i] for s in states], dim=1) for i in (0, 1))
    result = compute_lstm_health(
        hidden, detail=child.SCENARIOS[name], diagnostics=True, steps_since_reset=steps
    )
    metrics = result[0] if isinstance(result, tuple) else result
    assert metrics is not None
    assert metrics.diagnostics is not None
    return metrics.diagnostics


def diagnostics_of(record: dict[str, Any]) -> RecurrentDiagnostics:
    d = metrics_of(record).diagnostics
    assert d is not None
    return d


@pytest.mark.parametrize("name", ["planted", "gru", "nan-one-rank", "no-steps", "float64"])
def test_every_rank_gets_the_diagnostics_of_the_concatenated_batch(
    group: Results, name: str
) -> None:
    """Each rank's diagnostics are one process's on the concatenated batch, exactly."""
    world = len(group)
    expected = one_process(name, world).model_dump_json()
    assert [diagnostics_of(group[r][name]).model_dump_json() for r in range(world)] == [
        expected
    ] * world


def test_dormancy_is_judged_over_the_whole_batch(group: Results) -> None:
    """Unit 1 of layer 0 is dead on every rank but the last: over all ranks it is not dormant."""
    d = diagnostics_of(group[0]["planted"])
    assert d.layer_dormant_frac == (1 / 6, 0.0)


def test_growth_is_the_largest_of_the_ranks(group: Results) -> None:
    """The cell grown at 0.6 a step on the last rank sets the growth ratio of every rank."""
    d = diagnostics_of(group[0]["planted"])
    assert d.c_growth_ratio == pytest.approx(0.6, rel=1e-6)


def test_one_collective_and_one_transfer_with_diagnostics(group: Results) -> None:
    """Diagnostics ride in the same all-gather and the same tolist()."""
    for r in group:
        record = group[r]["planted"]
        assert set(record["collectives"]) <= GATHERS
        assert (list(record["collectives"].values()), record["transfers"]) == ([1], {"tolist": 1})


def test_steps_on_some_ranks_only_raise_on_every_rank(group: Results) -> None:
    """steps_since_reset passed by rank 0 alone is refused by every rank, after the collective."""
    for r in group:
        kind, message = group[r]["steps-one-rank"]["error"]
        assert kind == "ValueError"
        assert "rank(s) [0] of the group passed it" in message


def test_negative_steps_on_one_rank_raise_on_every_rank(group: Results) -> None:
    """A negative step on the last rank is named by every rank."""
    last = len(group) - 1
    for r in group:
        kind, message = group[r]["negative-steps"]["error"]
        assert (kind, f"(rank {last}) must be >= 0" in message) == ("ValueError", True)


def test_the_metrics_validate_with_their_diagnostics(group: Results) -> None:
    """A GRU's group metrics have no c figures and no c diagnostics."""
    m = metrics_of(group[0]["gru"])
    assert isinstance(m, LSTMHealthMetrics)
    assert (m.has_cell, m.diagnostics and m.diagnostics.c_saturation_frac) == (False, None)
