"""Replay consistency: compare what the rollout produced with what training recomputed.

A recurrent PPO update re-runs the policy over the stored rollout from stored initial
states. Before its first gradient step the weights are the rollout's, so that replay
must give the rollout's own outputs back, up to rounding; anything more is a bug in the
training-time unroll. :func:`check_replay` measures the difference, and, given a second
replay under the weights the update ended with, how far the states drifted (see
:class:`~esper_telemetry.contracts.ReplayConsistency`).

What to compare is the trainer's choice, as long as both sides hold the same thing per
step: the recurrent layer's output (h of the top layer, what ``esper ppo`` and the SB3
callback compare: the most sensitive, since every later figure is computed from it),
or the action log-probs and values. Layout ``[steps, envs, ...]``, the rollout buffer's.

Everything is reduced on the tensors' device and crosses to the host in one transfer.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

from esper_telemetry.contracts import HealthThresholds, ReplayConsistency
from esper_telemetry.telemetry._health_group import all_gather_rows

_DTYPES = {
    torch.float16: "float16",
    torch.bfloat16: "bfloat16",
    torch.float32: "float32",
    torch.float64: "float64",
}


def check_replay(
    rollout: torch.Tensor,
    replay: torch.Tensor,
    *,
    after: torch.Tensor | None = None,
    thresholds: HealthThresholds | None = None,
    group: dist.ProcessGroup | None = None,
) -> ReplayConsistency:
    """Compare a rollout's per-step outputs with the training pass's replay of them.

    Args:
        rollout: What the rollout produced, ``[steps, envs, ...]`` (e.g. the LSTM output
            of every step, ``[steps, envs, hidden]``, or the log-prob of each action
            taken, ``[steps, envs]``).
        replay: The same outputs recomputed by the training pass before its first
            gradient step (same shape, dtype and device). Padding, if the trainer pads,
            must be removed first: every entry is a real step.
        after: Optionally, the same replay once more under the weights the update ended
            with; fills ``drift``.
        thresholds: Whose tolerance locates ``first_env``/``first_step`` and counts
            ``mismatched`` (default rule if None).
        group: A process group (torch.distributed initialised): every rank of it calls
            with its own rollout, the same dtype and the same ``after`` (given or not),
            and all of them get the check of every rank's steps together (one small
            all-gather; ``ranks``, ``first_rank``). None: this process's steps alone.

    Returns:
        The comparison. ``max_abs_diff`` counts a NaN on both sides as equal and a NaN or
        an unmatched Inf on one side as an infinite difference.

    Raises:
        TypeError: an argument is not a tensor (``after``: or None), or ``thresholds``
            is not HealthThresholds.
        ValueError: the tensors differ in shape, dtype or device, are not floating point,
            or have fewer than 2 dimensions (the message names the argument).

    >>> import torch
    >>> out = torch.tanh(torch.arange(12.0).reshape(3, 4))
    >>> check_replay(out, out.clone()).max_abs_diff
    0.0
    >>> wrong = out.clone(); wrong[2, 1] += 0.5
    >>> r = check_replay(out, wrong)
    >>> r.mismatched, r.first_step, r.first_env
    (1, 2, 1)
    """
    t = thresholds if thresholds is not None else HealthThresholds()
    if not isinstance(t, HealthThresholds):
        raise TypeError(f"thresholds must be HealthThresholds or None, got {type(t).__name__}")
    dtype = _checked(rollout, replay, after)
    tolerance = t.replay_tolerance(dtype)
    steps, envs = rollout.shape[0], rollout.shape[1]
    diff = _per_step(_abs_diff(rollout, replay))  # [steps, envs], float64
    over = diff > tolerance
    parts = [diff.amax().reshape(1), over.sum().reshape(1), over.flatten().int().argmax()[None]]
    if after is not None:
        base = rollout.detach().double()
        parts += [
            (after.detach().double() - base).square().sum().reshape(1),
            base.square().sum().reshape(1),
        ]
    row = torch.cat([p.to(torch.float64) for p in parts])
    if group is None:
        values = row.tolist()  # the one transfer
        return _combined([[*values, steps, envs]], dtype, drift=after is not None)
    # The ranks' shapes may differ: each row says its own steps and envs.
    row = torch.cat([row, torch.tensor([steps, envs], dtype=torch.float64, device=row.device)])
    ranks = dist.get_world_size(group)
    gathered = torch.empty(ranks * row.numel(), dtype=torch.float64, device=row.device)
    # Every rank's row has the same length: all called with `after` given, or none did.
    all_gather_rows(gathered, row, group)
    values = gathered.tolist()  # the one transfer
    width = row.numel()
    rows = [values[r * width : (r + 1) * width] for r in range(ranks)]
    return _combined(rows, dtype, drift=after is not None, across_ranks=True)


def _combined(
    rows: list[list[float]], dtype: str, *, drift: bool, across_ranks: bool = False
) -> ReplayConsistency:
    """The check of every row's steps together. A row, one per rank (one in a single
    process): ``[largest, mismatched, first, (moved_ss, base_ss,) steps, envs]``, the
    sums of squares when there was a replay after the update. Every rank combines the
    same numbers, so all agree."""
    mismatched = [int(r[1]) for r in rows]
    located = [  # (step, rank, env) of each row's first mismatch
        (int(r[2]) // int(r[-1]), rank, int(r[2]) % int(r[-1]))
        for rank, r in enumerate(rows)
        if mismatched[rank]
    ]
    first = min(located) if located else None
    return ReplayConsistency(
        max_abs_diff=max(r[0] for r in rows),
        dtype=dtype,
        compared=sum(int(r[-2]) * int(r[-1]) for r in rows),
        mismatched=sum(mismatched),
        first_env=first[2] if first else None,
        first_step=first[0] if first else None,
        drift=_ratio(sum(r[3] for r in rows), sum(r[4] for r in rows)) if drift else None,
        ranks=len(rows),
        first_rank=first[1] if first and across_ranks else None,
    )


def _abs_diff(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|a - b| in float64; 0 where both are NaN or the same Inf, Inf where one side only
    is NaN or Inf."""
    a, b = a.detach().double(), b.detach().double()
    same = (a == b) | (torch.isnan(a) & torch.isnan(b))
    gap = torch.nan_to_num((a - b).abs(), nan=math.inf, posinf=math.inf)
    return torch.where(same, torch.zeros_like(gap), gap)


def _per_step(diff: torch.Tensor) -> torch.Tensor:
    """The largest difference of each ``[step, env]`` over its trailing dimensions."""
    return diff.flatten(2).amax(dim=2) if diff.dim() > 2 else diff


def _ratio(moved_ss: float, base_ss: float) -> float:
    # Both sums of squares; NaN stays NaN (data), nothing over nothing is no drift.
    if math.isnan(moved_ss) or math.isnan(base_ss):
        return math.nan
    if base_ss == 0.0:
        return 0.0 if moved_ss == 0.0 else math.inf
    return math.sqrt(moved_ss / base_ss)


def _checked(rollout: object, replay: object, after: object) -> str:
    named = [("rollout", rollout), ("replay", replay)]
    if after is not None:
        named.append(("after", after))
    for name, x in named:
        if not isinstance(x, torch.Tensor):
            none = " (or None)" if name == "after" else ""
            raise TypeError(f"{name} must be a torch.Tensor{none}, got {type(x).__name__}")
    assert isinstance(rollout, torch.Tensor)
    if rollout.dtype not in _DTYPES:
        raise ValueError(
            f"rollout must be a floating-point tensor (float16, bfloat16, float32, float64), "
            f"got {rollout.dtype}"
        )
    if rollout.dim() < 2 or rollout.numel() == 0:
        raise ValueError(
            f"rollout must be [steps, envs, ...] with every dimension > 0, got shape "
            f"{tuple(rollout.shape)}"
        )
    for name, x in named[1:]:
        assert isinstance(x, torch.Tensor)
        for what, mine, theirs in (
            ("shape", tuple(x.shape), tuple(rollout.shape)),
            ("dtype", x.dtype, rollout.dtype),
            ("device", x.device, rollout.device),
        ):
            if mine != theirs:
                raise ValueError(
                    f"{name} must have the rollout's {what} {theirs}, got {mine}: compare the "
                    "same outputs of the same steps (remove any padding first)"
                )
    return _DTYPES[rollout.dtype]
