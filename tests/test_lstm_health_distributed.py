"""compute_lstm_health across real gloo processes on CPU, and the contracts it fills.

One group of 2 and one of 4 processes (``tests/health_ranks_child.py``) are started once
per module and measure every scenario; each test reads what the ranks wrote. A run that
overruns its deadline is killed and fails: a hang never blocks the suite. The reference
is one process measuring the ranks' states concatenated along the batch.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from esper_telemetry import compute_lstm_health
from esper_telemetry.contracts import (
    EnvRMS,
    HealthStatus,
    HealthThresholds,
    LSTMHealthDetail,
    LSTMHealthMetrics,
    health_status,
)
from esper_telemetry.contracts.health import WORST_ENVS_PER_RANK
from tests import health_ranks_child as child
from tests.test_lstm_health import (
    REL_TOL,
    assert_model_close,
    broken_lstm_states,
    lstm_states,
    reference,
)

CHILD = Path(child.__file__).resolve()

#: Seconds a whole group may take, start-up included (torch's import dominates; 4 ranks
#: share 2 cores here). Generous: it only bounds a hang.
DEADLINE_S = 240.0

Results = dict[int, dict[str, Any]]

#: The one collective a call makes: all_gather_single, or its older name.
GATHERS = {"all_gather_single", "all_gather_into_tensor"}


# --------------------------------------------------------------------------- the groups


def run_group(world: int, tmp: Path, child_script: Path = CHILD) -> Results:
    """Start ``world`` ranks of ``child_script``, wait for all (killing every one past the
    deadline), read them."""
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    rendezvous = tmp / "rendezvous"
    procs = []
    for r in range(world):
        with (tmp / f"rank{r}.log").open("w") as log:  # a file: a full pipe would block it
            argv = [sys.executable, str(child_script), str(r), str(world), str(rendezvous)]
            argv.append(str(tmp))
            procs.append(subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT))
    end = time.monotonic() + DEADLINE_S
    try:
        for proc in procs:
            proc.wait(timeout=max(0.1, end - time.monotonic()))
    except subprocess.TimeoutExpired:
        for proc in procs:
            proc.kill()
            proc.wait()
        pytest.fail(f"{world} ranks did not finish within {DEADLINE_S} s:\n{_logs(tmp, procs)}")
    if any(proc.returncode != 0 for proc in procs):
        pytest.fail(f"a rank failed:\n{_logs(tmp, procs)}")
    return {r: json.loads((tmp / f"rank{r}.json").read_text()) for r in range(world)}


def _logs(tmp: Path, procs: list[subprocess.Popen[bytes]]) -> str:
    return "\n".join(
        f"--- rank {r} (exit {proc.returncode}):\n{(tmp / f'rank{r}.log').read_text()[-3000:]}"
        for r, proc in enumerate(procs)
    )


@pytest.fixture(scope="module", params=[2, 4], ids=["2-ranks", "4-ranks"])
def group(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Results:
    """What every rank of a real gloo group of 2 or 4 processes measured."""
    world: int = request.param
    return run_group(world, tmp_path_factory.mktemp(f"ranks{world}"))


def world_of(results: Results) -> int:
    return len(results)


def metrics_of(record: dict[str, Any]) -> LSTMHealthMetrics:
    assert "error" not in record, record["error"]
    return LSTMHealthMetrics.model_validate_json(record["metrics"])


def detail_of(record: dict[str, Any]) -> LSTMHealthDetail:
    assert record["detail"] is not None
    return LSTMHealthDetail.model_validate_json(record["detail"])


def concatenated(name: str, ranks: list[int], world: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The states of ``ranks`` in scenario ``name``, concatenated along the batch."""
    states = [child.state(name, r, world) for r in ranks]
    return torch.cat([h for h, _ in states], dim=-2), torch.cat([c for _, c in states], dim=-2)


def one_process(
    name: str, ranks: list[int], world: int
) -> tuple[LSTMHealthMetrics, LSTMHealthDetail]:
    """What one process measures on the concatenated states, with detail."""
    result = compute_lstm_health(concatenated(name, ranks, world), detail=True)
    assert result is not None
    return result


def figures(metrics: LSTMHealthMetrics) -> LSTMHealthMetrics:
    """The metrics with scope and ranks reset, to compare figures with one process's."""
    return metrics.model_copy(update={"scope": "process", "ranks": 1})


def rel_tol(name: str) -> float:
    return REL_TOL[child.state(name, 0, 2)[0].dtype]


# --------------------------------------------------------------------------- the metrics


@pytest.mark.parametrize("name", child.SCENARIOS)
def test_every_rank_gets_the_metrics_of_the_concatenated_state(group: Results, name: str) -> None:
    """Each rank's figures equal one process's on all ranks' states concatenated."""
    world = world_of(group)
    expected, _ = one_process(name, list(range(world)), world)
    for r in range(world):
        got = metrics_of(group[r][name])
        assert (got.scope, got.ranks) == ("all_ranks", world)
        assert_model_close(figures(got), expected, rel_tol(name))


@pytest.mark.parametrize("name", child.SCENARIOS)
def test_every_rank_returns_the_same_result(group: Results, name: str) -> None:
    """All ranks combine the same gathered numbers in the same order: identical metrics."""
    texts = {(group[r][name]["metrics"], _without_own_envs(group[r][name])) for r in group}
    assert len(texts) == 1


def _without_own_envs(record: dict[str, Any]) -> str | None:
    if record["detail"] is None:
        return None
    detail = detail_of(record)
    return detail.model_copy(update={"h_env_rms": (), "c_env_rms": ()}).model_dump_json()


def test_nan_or_inf_on_one_rank_is_seen_by_every_rank(group: Results) -> None:
    """NaN on the last rank, Inf on rank 1, NaN hiding Inf, or both apart: every rank flags it."""
    flags = {
        name: {
            (metrics_of(group[r][name]).has_nan, metrics_of(group[r][name]).has_inf) for r in group
        }
        for name in ("nan-one-rank", "inf-one-rank", "nan-hides-inf", "nan-and-inf-apart", "equal")
    }
    assert flags == {
        "nan-one-rank": {(True, False)},
        "inf-one-rank": {(False, True)},
        "nan-hides-inf": {(True, True)},
        "nan-and-inf-apart": {(True, True)},
        "equal": {(False, False)},
    }


@pytest.mark.parametrize("name", ["float32-limits", "nan-with-huge-other", "float64-huge"])
def test_values_near_the_limits_stay_exact(group: Results, name: str) -> None:
    """Huge and tiny values on some ranks, or NaN in one tensor only, match float64 closely."""
    world = world_of(group)
    expected, _ = reference(*concatenated(name, list(range(world)), world))
    got, want = metrics_of(group[0][name]).model_dump(), expected.model_dump()
    # Finite figures of a tensor free of NaN/Inf: far tighter than float32 rounding.
    for t in ("h", "c"):
        if name == "nan-with-huge-other" and t == "h":
            assert math.isnan(got["h_rms"])
            continue
        for figure in ("l2_total", "rms", "env_rms_mean", "env_rms_max", "max"):
            key = f"{t}_{figure}"
            assert math.isclose(got[key], want[key], rel_tol=1e-6), (key, got[key], want[key])
    assert (got["has_nan"], got["has_inf"]) == (name == "nan-with-huge-other", False)


def test_a_state_exactly_at_a_threshold_measures_exactly_it(group: Results) -> None:
    """c = 10 (critical_rms) on every rank measures exactly 10 everywhere: WARNING, not CRITICAL."""
    for r in group:
        m = metrics_of(group[r]["constant-threshold"])
        assert (m.c_rms, m.c_env_rms_mean, m.c_env_rms_max, m.c_max, m.h_rms) == (
            10.0,
            10.0,
            10.0,
            10.0,
            0.5,
        )
        assert health_status(m) is HealthStatus.WARNING


# --------------------------------------------------------------------------- the detail


@pytest.mark.parametrize("name", child.WITH_DETAIL)
def test_detail_layers_cover_all_ranks_and_envs_this_rank(group: Results, name: str) -> None:
    """Per-layer RMS is of all ranks together; per-env RMS is this rank's slice of the batch."""
    world = world_of(group)
    _, expected = one_process(name, list(range(world)), world)
    assert expected.c_env_rms is not None
    start = 0
    for r in range(world):
        got = detail_of(group[r][name])
        batch = child.state(name, r, world)[0].shape[-2]
        own = expected.model_copy(
            update={
                "h_env_rms": expected.h_env_rms[start : start + batch],
                "c_env_rms": expected.c_env_rms[start : start + batch],
            }
        )
        start += batch
        plain = got.model_copy(update={"worst_envs": None, "env_counts": None})
        assert_model_close(plain, own, rel_tol(name))


@pytest.mark.parametrize("name", child.WITH_DETAIL)
def test_worst_envs_are_each_ranks_worst_with_their_rms(group: Results, name: str) -> None:
    """worst_envs names, per rank, its K envs of largest RMS (non-finite first), by env."""
    world = world_of(group)
    _, expected = one_process(name, list(range(world)), world)
    batches = [child.state(name, r, world)[0].shape[-2] for r in range(world)]
    assert expected.c_env_rms is not None
    wanted: list[tuple[int, int, float, float]] = []
    start = 0
    for r, batch in enumerate(batches):
        envs = [
            (r, e, expected.h_env_rms[start + e], expected.c_env_rms[start + e])
            for e in range(batch)
        ]
        worst = sorted(envs, key=lambda x: _score(x[2], x[3]), reverse=True)
        wanted += sorted(worst[:WORST_ENVS_PER_RANK], key=lambda x: x[1])
        start += batch
    got = detail_of(group[0][name])
    assert got.env_counts == tuple(batches)
    assert got.worst_envs is not None
    assert [(e.rank, e.env) for e in got.worst_envs] == [(r, e) for r, e, _, _ in wanted]
    for e, (_, _, h, c) in zip(got.worst_envs, wanted, strict=True):
        assert_model_close(e, EnvRMS(rank=e.rank, env=e.env, h_rms=h, c_rms=c), rel_tol(name))


def _score(h: float, c: float) -> float:
    top = max(h, c)
    return math.inf if math.isnan(h) or math.isnan(c) else top


def test_outliers_name_their_rank_and_env_and_say_when_capped(group: Results) -> None:
    """Rank 0's envs 3 and 7 and the last rank's 8 worst of 10 are named; the last is capped."""
    last = world_of(group) - 1
    for r in group:
        detail = detail_of(group[r]["outliers"])
        assert detail.outlier_ranks_envs() == ((0, 3), (0, 7), *((last, e) for e in range(2, 10)))
        assert detail.capped_ranks() == (last,)
    # outlier_envs stays the rank's own view, by index into its own per-env RMS.
    assert detail_of(group[0]["outliers"]).outlier_envs() == (3, 7)
    assert detail_of(group[last]["outliers"]).outlier_envs() == tuple(range(10))


# --------------------------------------------------------------------------- the calls


@pytest.mark.parametrize("name", child.SCENARIOS)
def test_one_collective_and_one_transfer_per_call(group: Results, name: str) -> None:
    """Each call makes one all-gather and one device-to-host transfer, broken state or not."""
    for r in group:
        record = group[r][name]
        assert (list(record["collectives"].values()), record["transfers"]) == ([1], {"tolist": 1})
        assert set(record["collectives"]) <= GATHERS


def test_without_a_group_a_rank_measures_itself_and_says_so(group: Results) -> None:
    """group=None in a distributed run: this rank's batch only, scope 'this_rank', no collective."""
    world = world_of(group)
    for r in group:
        record = group[r]["local"]
        got, got_detail = metrics_of(record), detail_of(record)
        expected = compute_lstm_health(child.state("local", r, world), detail=True)
        assert expected is not None
        assert (got, got_detail) == (
            expected[0].model_copy(update={"scope": "this_rank"}),
            expected[1],
        )
        assert got_detail.worst_envs is None
        assert (record["collectives"], record["transfers"]) == ({}, {"tolist": 1})


def test_bad_groups_raise_before_any_collective(group: Results) -> None:
    """A str or an int for group is a TypeError naming group; None as state: no collective."""
    for r in group:
        bad = group[r]["bad-group"]
        for kind, shown in (("str", "str 'world'"), ("int", "int 0")):
            name, message = bad[kind]["error"]
            assert name == "TypeError"
            assert message.startswith("group must be None or a torch.distributed process group")
            assert message.endswith(f"got {shown}")
            assert bad[kind]["collectives"] == {}
        assert bad["none-state"] == {
            "metrics": None,
            "detail": None,
            "collectives": {},
            "transfers": {},
        }


def test_ranks_disagreeing_on_sizes_all_raise_after_the_one_collective(group: Results) -> None:
    """Hidden sizes that differ by rank: every rank raises the same ValueError, none hangs."""
    errors = {tuple(group[r]["sizes-differ"]["error"]) for r in group}
    assert len(errors) == 1
    ((name, message),) = errors
    assert name == "ValueError"
    assert message.startswith("hidden: the ranks of the group hold states of different")
    assert "rank 1: h [2, 6, 9], c [2, 6, 8]" in message
    assert [sum(group[r]["sizes-differ"]["collectives"].values()) for r in group] == [1] * len(
        group
    )


def test_detail_asked_by_one_rank_only_raises_there(group: Results) -> None:
    """Rank 0 asks detail, the others do not: rank 0 raises naming them, the others measure."""
    world = world_of(group)
    name, message = group[0]["detail-differs"]["error"]
    assert (name, message) == (
        "ValueError",
        f"detail: rank 0 passed detail=True but rank(s) {list(range(1, world))} of the group "
        "did not; every rank must pass the same detail",
    )
    expected, _ = one_process("detail-differs", list(range(world)), world)
    for r in range(1, world):
        assert_model_close(figures(metrics_of(group[r]["detail-differs"])), expected, 1e-5)


def test_a_subgroup_measures_its_members_only(group: Results) -> None:
    """new_group([1, 3]): its members get their union, ranked in the group; others are refused."""
    world = world_of(group)
    members = [r for r in (1, 3) if r < world]
    expected, _ = one_process("subgroup", members, world)
    for r in group:
        record = group[r]["subgroup"]
        if r in members:
            got = metrics_of(record)
            assert (got.scope, got.ranks) == ("all_ranks", len(members))
            assert_model_close(figures(got), expected, 1e-5)
            worst = detail_of(record).worst_envs
            assert worst is not None
            assert {e.rank for e in worst} == set(range(len(members)))
        else:
            name, message = record["error"]
            assert (name, message.split(";")[0]) == (
                "ValueError",
                "group: this process is not a member of that group (torch.distributed.new_group "
                "gave it GroupMember.NON_GROUP_MEMBER)",
            )
            assert record["collectives"] == {}


def test_the_group_still_works_after_the_errors(group: Results) -> None:
    """After the refused calls, one more call with the group gives the concatenated metrics."""
    world = world_of(group)
    expected, _ = one_process("after-errors", list(range(world)), world)
    for r in group:
        assert_model_close(figures(metrics_of(group[r]["after-errors"])), expected, 1e-5)


# --------------------------------------------------------------------------- one process


@pytest.fixture
def one_rank(tmp_path: Path) -> Iterator[torch.distributed.ProcessGroup]:
    """A gloo group of this process alone, destroyed after the test."""
    torch.distributed.init_process_group(
        "gloo", init_method=(tmp_path / "rendezvous").as_uri(), rank=0, world_size=1
    )
    try:
        group = torch.distributed.group.WORLD
        assert group is not None
        yield group
    finally:
        torch.distributed.destroy_process_group()


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(state=st.one_of(lstm_states(), broken_lstm_states()))
def test_a_group_of_one_measures_what_one_process_does(
    one_rank: torch.distributed.ProcessGroup, state: tuple[torch.Tensor, torch.Tensor]
) -> None:
    """Random shapes, dtypes, scales, NaN and Inf: a group of one gives the one-process result.

    The group is the same for every example (it holds no state between calls).
    """
    h, c = state
    grouped = compute_lstm_health((h, c), detail=True, group=one_rank)
    alone = compute_lstm_health((h, c), detail=True)
    assert grouped is not None
    assert alone is not None
    (metrics, detail), (expected, expected_detail) = grouped, alone
    assert (metrics.scope, metrics.ranks, detail.env_counts) == ("all_ranks", 1, (h.shape[-2],))
    assert_model_close(figures(metrics), expected, REL_TOL[h.dtype])
    plain = detail.model_copy(update={"worst_envs": None, "env_counts": None})
    assert_model_close(plain, expected_detail, REL_TOL[h.dtype])


def test_outside_a_distributed_run_the_scope_is_process() -> None:
    """Without torch.distributed initialised, group=None and group.WORLD (None) measure alone."""
    state = child.state("equal", 0, 2)
    plain = compute_lstm_health(state)
    assert plain is not None
    assert (plain.scope, plain.ranks) == ("process", 1)
    assert compute_lstm_health(state, group=torch.distributed.group.WORLD) == plain


@pytest.mark.parametrize(
    ("group", "shown"),
    [("world", "str 'world'"), (1, "int 1"), (True, "bool True"), (object(), "object <object")],
)
@pytest.mark.parametrize("hidden", [None, child.state("equal", 0, 2)], ids=["none", "state"])
def test_group_must_be_a_process_group(hidden: Any, group: object, shown: str) -> None:
    """Anything but None or a ProcessGroup is a one-line TypeError naming group, LSTM or not."""
    with pytest.raises(TypeError) as info:
        compute_lstm_health(hidden, group=group)  # type: ignore[call-overload]
    message = str(info.value)
    assert message.startswith("group must be None or a torch.distributed process group")
    assert f"got {shown}" in message
    assert "\n" not in message


# --------------------------------------------------------------------------- the contracts


def _metrics(**update: object) -> LSTMHealthMetrics:
    values = dict.fromkeys(LSTMHealthMetrics.FIGURES[:10], 1.0)
    return LSTMHealthMetrics.model_validate(
        {**values, "has_nan": False, "has_inf": False, **update}
    )


def test_figures_are_every_field_but_scope_and_ranks() -> None:
    """FIGURES lists the 12 figures in field order; to_dict gives exactly those.

    ``diagnostics`` is no figure either: a sub-model, None unless asked for.
    """
    others = ("scope", "ranks", "diagnostics")
    fields = [n for n in LSTMHealthMetrics.model_fields if n not in others]
    assert list(LSTMHealthMetrics.FIGURES) == fields
    assert list(_metrics().to_dict()) == [f"lstm_{n}" for n in fields]


def test_ranks_other_than_one_need_scope_all_ranks() -> None:
    """ranks=4 with scope 'this_rank' is refused; with 'all_ranks' it is kept; 0 is refused."""
    assert _metrics(scope="all_ranks", ranks=4).ranks == 4
    with pytest.raises(ValidationError, match="ranks must be 1 unless scope is 'all_ranks'"):
        _metrics(scope="this_rank", ranks=4)
    with pytest.raises(ValidationError, match="ranks"):
        _metrics(scope="all_ranks", ranks=0)


def test_a_detail_without_the_group_fields_still_validates() -> None:
    """A detail written before group calls existed reads back with worst_envs None."""
    old = '{"h_layer_rms":[1.0],"c_layer_rms":[1.0],"h_env_rms":[1.0,9.0],"c_env_rms":[1.0,1.0]}'
    detail = LSTMHealthDetail.model_validate_json(old)
    assert (detail.worst_envs, detail.env_counts, detail.outlier_envs()) == (None, None, (1,))
    assert (detail.outlier_ranks_envs(), detail.capped_ranks()) == (None, ())


def _detail(worst: list[tuple[int, int, float]], counts: tuple[int, ...]) -> LSTMHealthDetail:
    return LSTMHealthDetail(
        h_layer_rms=(1.0,),
        c_layer_rms=(1.0,),
        h_env_rms=(1.0,),
        c_env_rms=(1.0,),
        worst_envs=tuple(EnvRMS(rank=r, env=e, h_rms=h, c_rms=0.1) for r, e, h in worst),
        env_counts=counts,
    )


def test_outlier_ranks_envs_follow_the_thresholds() -> None:
    """The outlier rule reads the thresholds given: NaN always, 6.0 only above warning_rms."""
    detail = _detail([(0, 1, 6.0), (1, 0, math.nan), (1, 2, 0.5)], (2, 3))
    assert detail.outlier_ranks_envs() == ((0, 1), (1, 0))
    strict = HealthThresholds(warning_rms=7.0, critical_rms=20.0)
    assert detail.outlier_ranks_envs(strict) == ((1, 0),)
    # Rank 0 names 1 of its 2 envs, an outlier: the other may be one too. Rank 1 names a
    # healthy env, so every outlier it has is named.
    assert detail.capped_ranks() == (0,)
    assert detail.capped_ranks(strict) == ()


def test_worst_envs_must_fit_env_counts() -> None:
    """worst_envs without env_counts, or naming an env beyond them, is refused."""
    with pytest.raises(ValidationError, match="come together"):
        LSTMHealthDetail(
            h_layer_rms=(1.0,),
            c_layer_rms=(1.0,),
            h_env_rms=(1.0,),
            c_env_rms=(1.0,),
            env_counts=(1,),
        )
    with pytest.raises(ValidationError, match="rank 1 env 3, outside env_counts"):
        _detail([(1, 3, 1.0)], (2, 3))
