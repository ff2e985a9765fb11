"""Replay consistency: did the training pass see what the rollout saw?

In recurrent PPO the loss re-runs the policy over the stored rollout, from stored initial
states. Before the update's first gradient step the weights are still the rollout's, so
that replay must reproduce the rollout's own per-step outputs up to float rounding. A
larger difference is a bug in the training-time unroll (a missed reset, a state leaked
across episodes, padding read as steps, a wrong initial state), never a property of
learning. :class:`ReplayConsistency` is what one such comparison found, for one named
recurrent state; ``esper_telemetry.telemetry.check_replay`` measures it.
"""

from __future__ import annotations

from typing import Annotated, Literal, Self

from pydantic import Field, model_validator

from esper_telemetry.contracts._base import Contract, Int, NonNegativeFloat, NonNegativeInt

#: The floating dtypes a replay can be compared in (``torch.float32`` is ``"float32"``).
ReplayDtype = Literal["float16", "bfloat16", "float32", "float64"]


class ReplayConsistency(Contract):
    """How exactly the training pass reproduced the rollout's outputs, for one state.

    ``max_abs_diff`` is the largest |replay - rollout| over every compared step (and
    every element of a step's output). A NaN on both sides at the same place counts as
    equal; a NaN on one side only, or an Inf that does not match, counts as an infinite
    difference: NaN is data, and a replay that turns it up where the rollout had none (or
    loses it) is the clearest mismatch there is. The verdict is
    :meth:`HealthThresholds.is_replay_mismatch`, by the tolerance of ``dtype``.

    ``first_env`` and ``first_step`` locate the earliest step (then the lowest env) whose
    difference is above that tolerance, judged by the thresholds the check was given;
    both None when there is none.

    Across the ranks of a process group (``check_replay(..., group=...)``) the figures are
    of every rank's rollout together: ``ranks`` says how many, ``compared`` and
    ``mismatched`` add up, ``max_abs_diff`` and ``drift`` are of all the steps, and the
    first mismatch is the earliest step on any rank, ``first_rank`` naming the rank whose
    env ``first_env`` (an index into that rank's batch) it is.

    ``drift`` is filled when the trainer also replayed under the weights the update ended
    with: RMS(replay_after - rollout) / RMS(rollout), how far the stored states have gone
    stale (0 when nothing moved; the first replay is the baseline, so a mismatch shows as
    drift too).

    >>> r = ReplayConsistency(max_abs_diff=0.0, dtype="float32", compared=256, mismatched=0)
    >>> r.first_step is None and r.drift is None
    True
    """

    max_abs_diff: NonNegativeFloat = Field(
        description="Largest |replay - rollout| over the compared outputs (Infinity where "
        "NaN or Inf appears on one side only)."
    )
    dtype: ReplayDtype = Field(description="The dtype the outputs were compared in.")
    compared: NonNegativeInt = Field(description="How many steps (env x step) were compared.")
    mismatched: NonNegativeInt = Field(
        description="How many of them differ by more than the dtype's tolerance."
    )
    first_env: NonNegativeInt | None = Field(
        default=None, description="The env of the first mismatched step; None if none."
    )
    first_step: NonNegativeInt | None = Field(
        default=None,
        description="The rollout step (0 = the first of the update) of the first mismatched "
        "step; None if none.",
    )
    drift: NonNegativeFloat | None = Field(
        default=None,
        description="RMS(replay under the updated weights - rollout) / RMS(rollout); None "
        "when the trainer did not replay after the update.",
    )
    ranks: Annotated[Int, Field(ge=1)] = Field(
        default=1, description="How many ranks' rollouts were compared together (1: one process)."
    )
    first_rank: NonNegativeInt | None = Field(
        default=None,
        description="In a check across ranks, the rank of the first mismatched step (its "
        "first_env indexes that rank's envs); None in one process or without a mismatch.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if (self.first_env is None) != (self.first_step is None):
            raise ValueError(
                "first_env and first_step come together (a mismatch was located) or not at "
                f"all, got first_env={self.first_env!r} and first_step={self.first_step!r}"
            )
        if self.mismatched > self.compared:
            raise ValueError(
                f"mismatched ({self.mismatched}) cannot exceed compared ({self.compared})"
            )
        if (self.mismatched == 0) != (self.first_step is None):
            raise ValueError(
                "first_env and first_step locate a mismatch: given exactly when mismatched "
                f"> 0, got mismatched={self.mismatched} and first_step={self.first_step!r}"
            )
        if self.first_rank is not None and (
            self.first_step is None or self.first_rank >= self.ranks
        ):
            raise ValueError(
                "first_rank names the rank of a located mismatch, one of the ranks compared: "
                f"got first_rank={self.first_rank!r} with ranks={self.ranks} and "
                f"first_step={self.first_step!r}"
            )
        return self
