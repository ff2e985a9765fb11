"""Replay consistency: check_replay, its anomalies, its payload, and trainers that break it.

The last part plants four real-world unroll bugs in a small recurrent PPO trainer
(tests/replay_trainer.py) and checks that each is caught at the first update where it
can show, pointing at the step where it first shows; and that correct trainers (that
one and the reference ``esper ppo`` trainer) are never flagged.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch

import esper_telemetry.training.ppo as ppo_module
from esper_telemetry import (
    AnomalyType,
    HealthThresholds,
    TelemetryHub,
    compute_lstm_health,
    emit_ppo_update_event,
)
from esper_telemetry.backends import AnomalyEscalator
from esper_telemetry.contracts import (
    AnomalyDetected,
    PPOUpdateCompleted,
    PPOUpdatePayload,
    ReplayConsistency,
    Severity,
)
from esper_telemetry.contracts.events import parse_event
from esper_telemetry.telemetry import AnomalyDetector, check_replay
from esper_telemetry.testing import RecordingBackend
from esper_telemetry.training.ppo import PPOConfig, train
from tests.replay_trainer import BUGS, Bug, ReplayTrainer, UpdateRecord

MISMATCH = AnomalyType.LSTM_REPLAY_MISMATCH
DRIFT = AnomalyType.LSTM_REPLAY_DRIFT
PPO_STATS = {"policy_loss": 0.0, "value_loss": 0.1, "entropy": 0.6}


def consistency(**fields: Any) -> ReplayConsistency:
    """A ReplayConsistency with float32 defaults for whatever is not given."""
    base: dict[str, Any] = {"max_abs_diff": 0.0, "dtype": "float32", "compared": 64}
    base.update(fields)
    base.setdefault("mismatched", 0)
    return ReplayConsistency(**base)


def lstm_state(scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """A real nn.LSTM final state (1 layer, 4 envs, hidden 3), c multiplied by ``scale``."""
    torch.manual_seed(0)
    with torch.no_grad():
        _, (h, c) = torch.nn.LSTM(2, 3)(torch.randn(5, 4, 2))
    return h, c * scale


# --------------------------------------------------------------------------- check_replay


def test_equal_outputs_have_no_difference() -> None:
    out = torch.tanh(torch.randn(6, 4, 5))
    r = check_replay(out, out.clone())
    assert r == ReplayConsistency(
        max_abs_diff=0.0, dtype="float32", compared=24, mismatched=0, drift=None
    )
    assert r.first_env is None
    assert r.first_step is None


def test_planted_differences_are_measured_and_the_earliest_step_then_lowest_env_located() -> None:
    torch.manual_seed(1)
    rollout = torch.randn(5, 4, 3)
    replay = rollout.clone()
    replay[3, 2, 1] += 0.5
    replay[3, 1, 0] += 0.25  # same step, lower env: this one is "first"
    replay[4, 0, 2] -= 0.75  # lowest env, but a later step; the largest difference
    replay[1, 3, 2] += 1e-5  # earlier still, but within float32's tolerance
    r = check_replay(rollout, replay)
    exact = (replay.double() - rollout.double()).abs().max().item()
    assert r.max_abs_diff == exact
    assert r.max_abs_diff == pytest.approx(0.75, abs=1e-6)
    assert (r.mismatched, r.compared) == (3, 20)
    assert (r.first_step, r.first_env) == (3, 1)


def test_a_difference_in_several_elements_of_one_step_counts_that_step_once() -> None:
    rollout = torch.zeros(3, 2, 4, 5)  # trailing dims [4, 5] are reduced per step
    replay = rollout.clone()
    replay[2, 1, 0, 0] = 0.1
    replay[2, 1, 3, 4] = -0.3
    replay[0, 1, 2, 2] = 0.2
    r = check_replay(rollout, replay)
    assert r.compared == 6
    assert r.mismatched == 2
    assert (r.first_step, r.first_env) == (0, 1)
    assert r.max_abs_diff == pytest.approx(0.3, abs=1e-7)


def test_nan_on_both_sides_is_equal_and_on_one_side_is_infinite() -> None:
    rollout = torch.zeros(4, 3)
    rollout[1, 2] = math.nan
    both = rollout.clone()
    assert check_replay(rollout, both).max_abs_diff == 0.0
    assert check_replay(rollout, both).mismatched == 0

    lost = rollout.clone()
    lost[1, 2] = 0.0  # the replay lost the rollout's NaN
    r = check_replay(rollout, lost)
    assert r.max_abs_diff == math.inf
    assert (r.mismatched, r.first_step, r.first_env) == (1, 1, 2)

    gained = torch.zeros(4, 3)
    gained[3, 0] = math.nan  # the replay turned one up where the rollout had none
    r = check_replay(torch.zeros(4, 3), gained)
    assert r.max_abs_diff == math.inf
    assert (r.mismatched, r.first_step, r.first_env) == (1, 3, 0)


def test_matching_inf_is_equal() -> None:
    rollout = torch.zeros(2, 3)
    rollout[0, 1] = math.inf
    rollout[1, 0] = -math.inf
    r = check_replay(rollout, rollout.clone())
    assert r.max_abs_diff == 0.0
    assert r.mismatched == 0


@pytest.mark.parametrize(
    ("planted", "where"),
    [
        (1e30, (0, 1)),  # the rollout's +inf became a finite number
        (-math.inf, (0, 1)),  # +inf against -inf
        (math.inf, (1, 2)),  # an inf where the rollout had 0
    ],
)
def test_an_unmatched_inf_is_an_infinite_difference(planted: float, where: tuple[int, int]) -> None:
    """The contract: "Infinity where NaN or Inf appears on one side only". (Fails on this
    branch: the difference comes out as the largest float64, 1.8e308, not inf.)"""
    rollout = torch.zeros(2, 3)
    rollout[0, 1] = math.inf
    replay = rollout.clone()
    replay[where] = planted
    r = check_replay(rollout, replay)
    assert (r.mismatched, r.first_step, r.first_env) == (1, *where)
    assert r.max_abs_diff == math.inf, r


def test_drift_is_the_rms_of_the_change_over_the_rms_of_the_rollout() -> None:
    rollout = torch.tensor([[3.0, 0.0], [0.0, 4.0]])
    after = torch.tensor([[3.0, 0.0], [0.0, 1.0]])  # moved by 3 in one of 4 elements
    r = check_replay(rollout, rollout.clone(), after=after)
    assert r.drift == pytest.approx(math.sqrt(9.0 / 25.0), rel=1e-12)  # 0.6

    torch.manual_seed(2)
    rollout = torch.randn(7, 3, 5)
    after = rollout + 0.1 * torch.randn(7, 3, 5)
    moved = (after.double() - rollout.double()).square().mean().sqrt()
    base = rollout.double().square().mean().sqrt()
    r = check_replay(rollout, rollout.clone(), after=after)
    assert r.drift == pytest.approx((moved / base).item(), rel=1e-12)
    # The drift is of ``after`` only: the replay itself does not enter it.
    assert check_replay(rollout, rollout + 1.0, after=after).drift == r.drift


def test_drift_of_nothing_over_nothing_is_zero_and_of_something_over_nothing_infinite() -> None:
    zeros = torch.zeros(3, 2)
    assert check_replay(zeros, zeros.clone(), after=zeros.clone()).drift == 0.0
    assert check_replay(zeros, zeros.clone(), after=torch.ones(3, 2)).drift == math.inf
    assert check_replay(zeros, zeros.clone()).drift is None


@pytest.mark.parametrize(
    ("dtype", "name", "documented"),
    [
        (torch.float64, "float64", 1e-9),
        (torch.float32, "float32", 1e-4),
        (torch.bfloat16, "bfloat16", 5e-2),
        (torch.float16, "float16", 1e-2),
    ],
)
def test_each_dtype_is_judged_by_its_own_tolerance(
    dtype: torch.dtype, name: str, documented: float
) -> None:
    tolerance = HealthThresholds().replay_tolerance(name)
    assert tolerance == documented
    rollout = torch.zeros(2, 3, dtype=dtype)
    for factor, expect_mismatch in ((1.03, True), (0.97, False)):
        replay = rollout.clone()
        replay[1, 2] = tolerance * factor
        gap = replay[1, 2].double().item()  # what the dtype can hold of it
        assert (gap > tolerance) == expect_mismatch, "the planted value crossed the line"
        r = check_replay(rollout, replay)
        assert r.dtype == name
        assert r.max_abs_diff == gap
        assert r.mismatched == int(expect_mismatch)
        assert HealthThresholds().is_replay_mismatch(r) == expect_mismatch


def test_a_difference_of_exactly_the_tolerance_is_not_a_mismatch() -> None:
    rollout = torch.zeros(2, 2, dtype=torch.float64)
    replay = rollout.clone()
    replay[0, 0] = 1e-9  # float64's tolerance, exactly
    r = check_replay(rollout, replay)
    assert r.max_abs_diff == 1e-9
    assert r.mismatched == 0
    assert r.first_step is None


def test_the_thresholds_given_decide_what_is_counted_and_located() -> None:
    rollout = torch.zeros(3, 2)
    replay = rollout.clone()
    replay[0, 1] = 1e-3
    replay[2, 0] = 0.5
    default = check_replay(rollout, replay)
    assert (default.mismatched, default.first_step, default.first_env) == (2, 0, 1)
    loose = check_replay(
        rollout, replay, thresholds=HealthThresholds(replay_tolerances={"float32": 1e-2})
    )
    assert (loose.mismatched, loose.first_step, loose.first_env) == (1, 2, 0)
    assert loose.max_abs_diff == default.max_abs_diff


OK = torch.zeros(4, 3)


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "names"),
    [
        (([[0.0]], OK), {}, TypeError, "rollout must be a torch.Tensor"),
        ((OK, None), {}, TypeError, "replay must be a torch.Tensor"),
        ((OK, OK), {"after": "later"}, TypeError, "after must be a torch.Tensor (or None)"),
        ((OK, OK), {"thresholds": {"float32": 1e-4}}, TypeError, "thresholds must be"),
        ((OK, torch.zeros(4, 2)), {}, ValueError, "replay must have the rollout's shape"),
        ((OK, OK), {"after": torch.zeros(3, 4)}, ValueError, "after must have the rollout's shape"),
        ((OK, OK.double()), {}, ValueError, "replay must have the rollout's dtype"),
        ((OK, OK), {"after": OK.half()}, ValueError, "after must have the rollout's dtype"),
        (
            (OK, torch.zeros(4, 3, device="meta")),
            {},
            ValueError,
            "replay must have the rollout's device",
        ),
        ((OK.long(), OK.long()), {}, ValueError, "rollout must be a floating-point tensor"),
        ((OK.bool(), OK.bool()), {}, ValueError, "rollout must be a floating-point tensor"),
        ((OK, OK.int()), {}, ValueError, "replay must have the rollout's dtype"),
        ((torch.zeros(5), torch.zeros(5)), {}, ValueError, "rollout must be [steps, envs, ...]"),
        ((torch.zeros(0, 3), torch.zeros(0, 3)), {}, ValueError, "rollout must be [steps, envs"),
    ],
)
def test_argument_errors_are_one_line_and_name_the_argument(
    args: tuple[Any, ...], kwargs: dict[str, Any], error: type[Exception], names: str
) -> None:
    with pytest.raises(error) as info:
        check_replay(*args, **kwargs)
    assert type(info.value) is error
    message = str(info.value)
    assert message.startswith(names), message
    assert "\n" not in message


# --------------------------------------------------------------------------- the detector


def test_a_mismatch_is_one_critical_anomaly_naming_the_state() -> None:
    r = consistency(max_abs_diff=3e-3, mismatched=5, first_env=2, first_step=7)
    report = AnomalyDetector().check_replay({"value": r})
    assert len(report.anomalies) == 1
    (a,) = report.anomalies
    assert a.type is MISMATCH
    assert a.severity is Severity.CRITICAL
    assert a.state == "value"
    assert (a.observed, a.threshold) == (3e-3, 1e-4)
    assert a.message.startswith("value: ")
    assert "env 2 step 7" in a.message
    assert "5 of 64 steps" in a.message


def test_an_infinite_difference_is_a_mismatch() -> None:
    r = consistency(max_abs_diff=math.inf, mismatched=1, first_env=0, first_step=0)
    assert AnomalyDetector().check_replay({"policy": r}).anomaly_types == [MISMATCH]


@pytest.mark.parametrize("diff", [0.0, 5e-5, 1e-4])
def test_at_or_below_the_tolerance_there_is_no_anomaly(diff: float) -> None:
    report = AnomalyDetector().check_replay({"policy": consistency(max_abs_diff=diff)})
    assert not report.has_anomaly


def test_the_detectors_thresholds_set_the_tolerance() -> None:
    r = consistency(max_abs_diff=5e-3, mismatched=1, first_env=0, first_step=0)
    loose = AnomalyDetector(HealthThresholds(replay_tolerances={"float32": 1e-2}))
    assert not loose.check_replay({"policy": r}).has_anomaly
    assert AnomalyDetector().check_replay({"policy": r}).anomaly_types == [MISMATCH]


def test_drift_above_the_threshold_is_a_warning() -> None:
    limit = HealthThresholds().replay_drift
    report = AnomalyDetector().check_replay({"policy": consistency(drift=limit * 1.2)})
    (a,) = report.anomalies
    assert a.type is DRIFT
    assert a.severity is Severity.WARNING
    assert a.state == "policy"
    assert (a.observed, a.threshold) == (limit * 1.2, limit)
    for quiet in (limit, limit * 0.5, 0.0, math.nan, None):
        r = consistency(drift=quiet)
        assert not AnomalyDetector().check_replay({"policy": r}).has_anomaly, quiet


def test_a_replay_can_both_mismatch_and_drift() -> None:
    r = consistency(max_abs_diff=0.2, mismatched=3, first_env=1, first_step=0, drift=1.5)
    report = AnomalyDetector().check_replay({"policy": r})
    assert report.anomaly_types == [MISMATCH, DRIFT]


def test_check_replay_refuses_what_is_not_a_mapping_of_consistencies() -> None:
    detector = AnomalyDetector()
    with pytest.raises(TypeError, match="replays must be a mapping"):
        detector.check_replay([consistency()])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="replays must be a mapping"):
        detector.check_replay({"policy": 0.0})  # type: ignore[dict-item]


def published(**kwargs: Any) -> PPOUpdatePayload:
    """The payload ``emit_ppo_update_event`` publishes with these arguments."""
    with TelemetryHub("replay-payload") as hub:
        event = emit_ppo_update_event(hub, update=3, metrics=PPO_STATS, **kwargs)
    assert event is not None
    return event.payload


def test_check_update_gives_the_health_anomalies_then_the_replay_ones() -> None:
    payload = published(
        recurrent_health={
            "policy": compute_lstm_health(lstm_state()),
            "value": compute_lstm_health(lstm_state(scale=1e3)),  # an exploded cell
        },
        replay={
            "policy": consistency(max_abs_diff=0.1, mismatched=2, first_env=3, first_step=1),
            "value": consistency(drift=2.0),
        },
    )
    report = AnomalyDetector().check_update(payload)
    assert [(a.state, a.type) for a in report.anomalies] == [
        ("value", AnomalyType.LSTM_C_EXPLOSION),
        ("policy", MISMATCH),
        ("value", DRIFT),
    ]


# --------------------------------------------------------------------------- the payload


def test_a_replay_of_a_state_that_was_not_measured_is_refused() -> None:
    with TelemetryHub("replay-refused") as hub:
        with pytest.raises(ValueError, match=r"replay names states \['value'\]") as info:
            emit_ppo_update_event(
                hub,
                update=0,
                metrics=PPO_STATS,
                lstm_health=compute_lstm_health(lstm_state()),
                replay={"value": consistency()},
            )
        assert "recurrent_health does not hold (['policy'])" in str(info.value)
        with pytest.raises(ValueError, match="replay need recurrent_health"):
            emit_ppo_update_event(
                hub, update=0, metrics=PPO_STATS, replay={"policy": consistency()}
            )


def test_the_json_round_trip_keeps_nan_and_inf_exactly() -> None:
    odd = 0.1 + 0.2  # not the shortest decimal: it must come back to the last bit
    replays = {
        "policy": consistency(
            max_abs_diff=math.inf, mismatched=1, first_env=2, first_step=0, drift=math.nan
        ),
        "value": consistency(max_abs_diff=odd, dtype="bfloat16", drift=math.inf),
    }
    with TelemetryHub("replay-json") as hub:
        event = emit_ppo_update_event(
            hub,
            update=1,
            metrics=PPO_STATS,
            recurrent_health={
                "policy": compute_lstm_health(lstm_state()),
                "value": compute_lstm_health(lstm_state()),
            },
            replay=replays,
        )
    assert event is not None
    back = parse_event(event.model_dump_json())
    assert isinstance(back, PPOUpdateCompleted)
    policy, value = back.payload.replay["policy"], back.payload.replay["value"]
    assert policy.max_abs_diff == math.inf
    assert policy.drift is not None
    assert math.isnan(policy.drift)
    assert (policy.first_env, policy.first_step, policy.mismatched) == (2, 0, 1)
    assert value == replays["value"]
    assert value.max_abs_diff == odd
    assert value.drift == math.inf


def _escalated(update: int, policy: ReplayConsistency) -> list[AnomalyDetected]:
    """What the escalator publishes for one update whose policy replay is ``policy``."""
    rec = RecordingBackend()
    with TelemetryHub("replay-escalator") as hub:
        hub.subscribe(AnomalyEscalator(), mode="inline")
        hub.subscribe(rec, mode="inline")
        emit_ppo_update_event(
            hub,
            update=update,
            metrics=PPO_STATS,
            lstm_health=compute_lstm_health(lstm_state(), detail=True),
            replay={"policy": policy},
        )
    return [e for e in rec.events if isinstance(e, AnomalyDetected)]


def test_the_escalator_names_the_first_env_of_a_mismatch_and_none_for_drift() -> None:
    found = _escalated(
        4, consistency(max_abs_diff=0.3, mismatched=4, first_env=3, first_step=5, drift=1.8)
    )
    assert [(e.update, e.payload.anomaly.type, e.payload.outlier_envs) for e in found] == [
        (4, MISMATCH, (3,)),
        (4, DRIFT, None),
    ]


def test_the_escalator_names_an_env_of_another_rank_by_no_env_of_its_own() -> None:
    """outlier_envs index the event's own rank's envs: a first mismatch on rank 1 seen in
    rank 0's event names none (the message names the rank)."""
    policy = consistency(
        max_abs_diff=0.3, mismatched=1, first_env=1, first_step=2, ranks=2, first_rank=1
    )
    (found,) = _escalated(0, policy)
    assert found.payload.outlier_envs is None
    assert "first at rank 1 env 1 step 2" in found.payload.anomaly.message


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"first_rank": 0, "ranks": 2}, "first_rank names the rank of a located mismatch"),
        (
            {"first_rank": 2, "ranks": 2, "mismatched": 1, "first_env": 0, "first_step": 0},
            "first_rank names the rank",
        ),
        ({"ranks": 0}, "greater than or equal to 1"),
    ],
)
def test_a_rank_that_locates_nothing_or_is_not_compared_is_refused(
    fields: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        consistency(**fields)


@pytest.fixture(scope="module")
def ranks_checked(tmp_path_factory: pytest.TempPathFactory) -> dict[int, dict[str, Any]]:
    """What each rank of a real gloo group of 3 processes got from check_replay(group=)."""
    from tests import replay_ranks_child
    from tests.test_lstm_health_distributed import run_group

    return run_group(3, tmp_path_factory.mktemp("replay-ranks"), Path(replay_ranks_child.__file__))


@pytest.mark.parametrize("name", ["match", "mismatch-late-ranks", "drift"])
def test_across_ranks_every_rank_gets_the_check_of_all_envs_together(
    ranks_checked: dict[int, dict[str, Any]], name: str
) -> None:
    """Every rank returns the same check: that of one process given the ranks' envs side
    by side, with ranks = 3 and, for a mismatch, the rank of the first one."""
    from tests.replay_ranks_child import outputs

    checks = {r: ReplayConsistency.model_validate_json(ranks_checked[r][name]) for r in range(3)}
    assert checks[0] == checks[1] == checks[2]
    parts = [outputs(name, r, 3) for r in range(3)]
    after = None if parts[0][2] is None else torch.cat([p[2] for p in parts], dim=1)  # type: ignore[misc]
    alone = check_replay(
        torch.cat([p[0] for p in parts], dim=1),
        torch.cat([p[1] for p in parts], dim=1),
        after=after,
    )
    got = checks[0]
    assert got.ranks == 3
    assert (got.compared, got.mismatched, got.first_step) == (
        alone.compared,
        alone.mismatched,
        alone.first_step,
    )
    assert got.max_abs_diff == pytest.approx(alone.max_abs_diff, rel=1e-12)
    if name == "drift":
        assert got.drift is not None
        assert alone.drift is not None
        assert got.drift == pytest.approx(alone.drift, rel=1e-12)
    if name == "mismatch-late-ranks":
        # rank 1's env 1 is env 2 + 1 = 3 of the concatenated batch
        assert (got.first_rank, got.first_env) == (1, 1)
        assert alone.first_env == 3
    else:
        assert (got.first_rank, got.first_env, got.mismatched) == (None, None, 0)


# --------------------------------------------------------------------------- planted bugs


@contextmanager
def watched(name: str) -> Iterator[tuple[TelemetryHub, RecordingBackend]]:
    """A hub with an AnomalyEscalator and a recorder subscribed inline."""
    rec = RecordingBackend()
    with TelemetryHub(name) as hub:
        hub.subscribe(AnomalyEscalator(), mode="inline")
        hub.subscribe(rec, mode="inline")
        yield hub, rec


def run_trainer(
    bug: Bug | None, updates: int, seed: int = 0
) -> tuple[list[UpdateRecord], list[AnomalyDetected]]:
    """Run the small trainer; its update records and the mismatch anomalies raised."""
    with watched(f"replay-{bug}-{seed}") as (hub, rec):
        trainer = ReplayTrainer(hub, bug=bug, seed=seed)
        try:
            records = [trainer.update(k) for k in range(updates)]
        finally:
            trainer.close()
    mismatches = [
        e
        for e in rec.events
        if isinstance(e, AnomalyDetected) and e.payload.anomaly.type is MISMATCH
    ]
    return records, mismatches


def episode_starts(starts: torch.Tensor, *, after_step: int = 0) -> list[tuple[int, int]]:
    """(step, env) of every episode start later than ``after_step``, earliest step first,
    then lowest env: the order check_replay locates mismatches in."""
    return [(t, b) for t, b in starts.nonzero().tolist() if t > after_step]


def segments(starts: torch.Tensor) -> list[tuple[int, int, int]]:
    """(first step, env, length) of every episode segment of a window."""
    T, B = starts.shape
    found = []
    for b in range(B):
        cuts = [0, *(t for t in range(1, T) if starts[t, b]), T]
        found += [(s, b, e - s) for s, e in itertools.pairwise(cuts)]
    return found


def expected_first(bug: Bug, starts: torch.Tensor) -> tuple[int, int]:
    """Where each bug must first show in a window, from the rollout's episode starts
    alone: (step, env)."""
    T = starts.shape[0]
    if bug == "no_reset":
        # The first start after step 0 (at step 0 of the first window the carried state
        # is the zero state, so a missed reset there changes nothing).
        return episode_starts(starts)[0]
    if bug == "late_reset":
        # At a start the old state is still used; one step later it is zeroed wrongly.
        at = episode_starts(starts)
        late: list[tuple[int, int]] = [
            (t + 1, b) for t, b in starts.nonzero().tolist() if t + 1 < T
        ]
        return min(at + late)
    if bug == "padding_as_steps":
        # The first step of every segment shorter than the longest one.
        cut = segments(starts)
        longest = max(n for *_, n in cut)
        return min((s, b) for s, b, n in cut if n < longest)
    # zero_initial_state: step 0 of the lowest env that continues an episode.
    return 0, min(b for b in range(starts.shape[1]) if not starts[0, b])


# Where a bug can first show: the first window starts from the zero state, so only a
# trainer that drops the stored initial state gets away with it there.
FIRST_UPDATE: dict[Bug, int] = {
    "no_reset": 0,
    "late_reset": 0,
    "padding_as_steps": 0,
    "zero_initial_state": 1,
}


@pytest.mark.parametrize("bug", BUGS)
def test_each_planted_bug_is_caught_at_the_first_update_where_it_can_show(bug: Bug) -> None:
    first = FIRST_UPDATE[bug]
    records, mismatches = run_trainer(bug, updates=first + 1)
    for early in records[:first]:
        assert early.replay.max_abs_diff < 1e-5, f"{bug} showed before it can: {early.replay}"
    record = records[first]
    starts = record.starts
    assert starts[1:].any(), "no episode ended inside the window: the test proves nothing"
    r = record.replay
    assert r.max_abs_diff > 1e-2, r  # far above float32's 1e-4, not a rounding matter
    assert r.first_step is not None
    assert r.first_env is not None
    where = (r.first_step, r.first_env)
    assert where == expected_first(bug, starts), (bug, where, starts.nonzero().tolist())
    if bug == "no_reset":
        assert starts[where], "a missed reset first shows at a real episode start"
    if bug == "late_reset":
        assert starts[where] or starts[r.first_step - 1, r.first_env], (
            "a late reset first shows at a real episode start or the step after it"
        )
    if bug == "zero_initial_state":
        assert r.first_step == 0
        assert not starts[where], "it shows where an episode continues"

    (event,) = mismatches[:1]
    assert event.update == first
    assert event.payload.anomaly.state == "policy"
    assert event.payload.anomaly.severity is Severity.CRITICAL
    assert event.payload.anomaly.observed == r.max_abs_diff
    assert event.payload.outlier_envs == (r.first_env,)
    assert all(e.update >= first for e in mismatches)


def test_the_correct_small_trainer_is_never_flagged() -> None:
    largest = 0.0
    for seed in (0, 1, 2):
        records, mismatches = run_trainer(None, updates=50, seed=seed)
        assert mismatches == [], f"seed {seed}: {mismatches[0].payload.anomaly.message}"
        assert len(records) == 50
        # Episodes ended inside the windows, so resets were exercised, not just skipped.
        assert sum(int(r.starts[1:].sum()) for r in records) > 50
        for r in records:
            assert r.replay.mismatched == 0
            assert r.replay.drift is not None
            assert math.isfinite(r.replay.drift)
        largest = max(largest, *(r.replay.max_abs_diff for r in records))
    assert largest < 1e-5, f"largest replay difference of the correct trainer: {largest:.3g}"


# --------------------------------------------------------------------------- esper ppo


REFERENCE_SEEDS = (0, 1, 2)


@pytest.mark.parametrize("seed", REFERENCE_SEEDS)
def test_the_reference_trainer_checks_both_lstms_every_update_and_matches(seed: int) -> None:
    """Seeds 0 and 1 with the diagnostics asked for (the drift too), seed 2 without: the
    replay check runs every update either way, the drift only when asked."""
    asked = seed != 2
    with watched(f"replay-ppo-{seed}") as (hub, rec):
        result = train(PPOConfig(updates=50, seed=seed, diagnostics=asked), hub)
    assert result.status == "completed", result.message
    payloads = [e.payload for e in rec.events if isinstance(e, PPOUpdateCompleted)]
    assert len(payloads) == 50
    tolerance = HealthThresholds().replay_tolerance("float32")
    largest = 0.0
    for update, p in enumerate(payloads):
        assert set(p.replay) == {"policy", "value"}, update
        for name, r in p.replay.items():
            assert r.dtype == "float32"
            assert r.compared == 8 * 32
            assert r.max_abs_diff < tolerance, (update, name, r)
            assert r.mismatched == 0, (update, name, r)
            largest = max(largest, r.max_abs_diff)
            if not asked:
                assert r.drift is None, (update, name, r)
                assert p.recurrent_health[name].diagnostics is None
                continue
            assert p.recurrent_health[name].diagnostics is not None
            assert r.drift is not None, (update, name, r)
            assert math.isfinite(r.drift), (update, name, r)
            assert r.drift > 0, (update, name, r)
    mismatches = [
        e
        for e in rec.events
        if isinstance(e, AnomalyDetected) and e.payload.anomaly.type is MISMATCH
    ]
    assert mismatches == []
    assert largest < 1e-5, f"largest replay difference of esper ppo, seed {seed}: {largest:.3g}"


@pytest.mark.parametrize(("level", "calls"), [("OFF", 0), ("NORMAL", 2 * 3)])
def test_at_level_off_the_reference_trainer_computes_no_replay(
    monkeypatch: pytest.MonkeyPatch, level: str, calls: int
) -> None:
    seen: list[ReplayConsistency] = []
    real = check_replay  # the function the trainer imported, wrapped to count its calls

    def counting(*args: Any, **kwargs: Any) -> ReplayConsistency:
        seen.append(real(*args, **kwargs))
        return seen[-1]

    monkeypatch.setattr(ppo_module, "check_replay", counting)
    rec = RecordingBackend()
    with TelemetryHub(f"replay-{level}", level=level) as hub:
        hub.subscribe(rec, mode="inline")
        result = train(PPOConfig(updates=3, envs=2, steps=8, hidden=8, epochs=2), hub)
    assert result.status == "completed", result.message
    assert len(seen) == calls  # two LSTMs a checked update
    updates = [e for e in rec.events if isinstance(e, PPOUpdateCompleted)]
    assert len(updates) == (0 if level == "OFF" else 3)
