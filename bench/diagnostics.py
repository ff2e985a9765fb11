"""The LSTM diagnostics study: which anomaly fires first on healthy and broken recurrent PPO.

One command reruns everything (about 10-15 minutes on a quiet 2-core machine)::

    PYTHONPATH=$PWD/src .venv/bin/python bench/diagnostics.py

It trains the reference trainer (``esper_telemetry.training.ppo.train``, masked CartPole)
through ``run_ppo`` (the wiring of ``esper ppo``: the anomaly escalator inline, the
analytics log, W&B disabled) for every configuration in ``CONFIGS`` and every seed, and
writes ``bench/results/diagnostics.json``: per run, the mean-of-20 return of every
update, every anomaly (type, state, update), the diagnostics and replay figures at the
first firing of each type, the first update of a return collapse and of a NaN/Inf. For
one seed per configuration in ``REPORTED`` it keeps the run directory (under
``--runs-dir``) and renders its report PNG with ``esper report`` into
``docs/diagnostics/``. ``docs/diagnostics.md`` reads the results.

Options: ``--updates`` (150), ``--seeds`` (0 1 2), ``--configs`` (all), ``--runs-dir``.

The broken configurations that PPOConfig cannot express are planted by patching the
model for that run only (``_patched``, a context manager that restores what it
replaced); nothing under ``src`` is edited. In the trainer the rollout runs the LSTMs
step by step through ``RecurrentActorCritic.unroll``, and the PPO epochs (and the
replay check's extra passes) run them over padded episode segments through
``RecurrentActorCritic.segment_outputs``. So a patch of ``segment_outputs`` alone is a
bug of the training pass with a correct rollout, and a patch of both changes the agent
consistently. Each patch is described where it is defined.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import math
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

import esper_telemetry
from esper_telemetry.contracts import (
    AnomalyDetected,
    PPOUpdateCompleted,
    TelemetryEvent,
)
from esper_telemetry.run import RunOptions, run_ppo
from esper_telemetry.telemetry import compute_recurrent_health
from esper_telemetry.training import PPOConfig
from esper_telemetry.training import ppo as ppo_module
from esper_telemetry.training.ppo import RecurrentActorCritic, RecurrentState, Segments

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "diagnostics.json"
PNG_DIR = HERE.parent / "docs" / "diagnostics"  # the study page shows them

#: The six norm rules (critical): what the thresholds on h and c alone would say.
NORM_RULES = (
    "lstm_nan",
    "lstm_inf",
    "lstm_h_explosion",
    "lstm_c_explosion",
    "lstm_h_vanishing",
    "lstm_c_vanishing",
)
#: Collapse: the mean-of-20 return falls below this fraction of its best so far, after
#: the best has reached COLLAPSE_FROM.
COLLAPSE_FRACTION, COLLAPSE_FROM = 0.5, 100.0

Patch = Callable[[], contextlib.AbstractContextManager[None]]
SegmentOutputs = Callable[
    [RecurrentActorCritic, torch.Tensor, torch.Tensor, RecurrentState],
    tuple[torch.Tensor, torch.Tensor],
]


# ----------------------------------------------------------------------------- the patches


@contextlib.contextmanager
def _replaced(owner: Any, name: str, value: Any) -> Iterator[None]:
    """``owner.name = value`` for the duration of the block, restored after."""
    original = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, original)


@contextlib.contextmanager
def forget_bias(shift: float = 5.0) -> Iterator[None]:
    """Add ``shift`` to the forget-gate bias of both LSTMs right after the model is built.

    PyTorch orders an LSTM's gates input, forget, cell, output, so the forget gate is the
    second quarter of ``bias_ih_l*``. With +5 the forget gate sits near sigmoid(5) = 0.993:
    the cell barely forgets, and c accumulates over an episode.
    """
    original = RecurrentActorCritic.__init__

    def init(self: RecurrentActorCritic, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        with torch.no_grad():
            for lstm in (self.actor_lstm, self.critic_lstm):
                size = lstm.hidden_size
                for layer in range(lstm.num_layers):
                    getattr(lstm, f"bias_ih_l{layer}")[size : 2 * size] += shift

    with _replaced(RecurrentActorCritic, "__init__", init):
        yield


def _segment_outputs(
    model: RecurrentActorCritic,
    obs: torch.Tensor,
    starts: torch.Tensor,
    state: RecurrentState,
    *,
    left_pad: bool = False,
    zero_initial: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``RecurrentActorCritic.segment_outputs``, optionally with one of two mistakes:
    ``left_pad`` puts each segment's padding before its steps instead of after them;
    ``zero_initial`` begins every segment from zeros, stored state or not."""
    cut = Segments.of(starts)
    if left_pad:
        lengths = torch.bincount(cut.index, minlength=len(cut.env))
        cut = dataclasses.replace(cut, time=cut.time + (cut.length - lengths[cut.index]))
    x = cut.pad(obs)
    outs = []
    for lstm, (h, c) in ((model.actor_lstm, state[0]), (model.critic_lstm, state[1])):
        if zero_initial:
            h0 = torch.zeros_like(h[:, cut.env])
            c0 = torch.zeros_like(c[:, cut.env])
        else:
            h0, c0 = cut.initial(h), cut.initial(c)
        out, _ = lstm(x, (h0, c0))
        outs.append(cut.unpad(out))
    return outs[0], outs[1]


def _training_pass(replacement: SegmentOutputs) -> Patch:
    """A patch of the training pass only (``segment_outputs``); the rollout is untouched."""
    return lambda: _replaced(RecurrentActorCritic, "segment_outputs", replacement)


def _no_reset(
    model: RecurrentActorCritic, obs: torch.Tensor, starts: torch.Tensor, state: RecurrentState
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bug: the window is not cut at episode starts, so each env's stored state runs
    through every episode of the window (the rollout zeroed it at each start)."""
    return _segment_outputs(model, obs, torch.zeros_like(starts), state)


def _late_reset(
    model: RecurrentActorCritic, obs: torch.Tensor, starts: torch.Tensor, state: RecurrentState
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bug: the reset is applied one step late: the first step of an episode still sees
    the old episode's state, and the state is zeroed before the step after it. Expressed
    as the episode starts shifted one step later (a start at the window's last step is
    lost: its late reset would fall in the next window)."""
    late = torch.zeros_like(starts)
    late[1:] = starts[:-1]
    return _segment_outputs(model, obs, late, state)


def _padding_as_steps(
    model: RecurrentActorCritic, obs: torch.Tensor, starts: torch.Tensor, state: RecurrentState
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bug: segments are padded at the front, so every segment shorter than the longest
    first runs its initial state through zero observations (padding read as steps)."""
    return _segment_outputs(model, obs, starts, state, left_pad=True)


def _zero_initial_state(
    model: RecurrentActorCritic, obs: torch.Tensor, starts: torch.Tensor, state: RecurrentState
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bug: every segment begins from zeros, including each env's first segment, which
    should continue from the stored state the window began with."""
    return _segment_outputs(model, obs, starts, state, zero_initial=True)


@contextlib.contextmanager
def never_reset() -> Iterator[None]:
    """The state is never zeroed at an episode end, in the rollout and in training alike:
    the agent carries its memory across episodes (consistently, so the replay matches).

    ``unroll`` (the rollout) and ``segment_outputs`` (training) get no episode starts.
    The trainer still counts the steps since a reset from the episode starts (for
    ``c_growth_ratio``); so that the ratio is of the steps since the state was last
    zeroed, the run's health call is given the steps since the run began instead.
    """
    unroll = RecurrentActorCritic.unroll
    segments = RecurrentActorCritic.segment_outputs
    health = compute_recurrent_health
    calls = [0]

    def unroll_(
        self: RecurrentActorCritic, obs: torch.Tensor, starts: torch.Tensor, state: RecurrentState
    ) -> tuple[torch.Tensor, torch.Tensor, RecurrentState]:
        return unroll(self, obs, torch.zeros_like(starts), state)

    def segments_(
        self: RecurrentActorCritic, obs: torch.Tensor, starts: torch.Tensor, state: RecurrentState
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return segments(self, obs, torch.zeros_like(starts), state)

    def health_(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        since = kwargs.get("steps_since_reset")
        if since is not None:
            kwargs["steps_since_reset"] = torch.full_like(since, calls[0] * _STEPS[0])
        return health(*args, **kwargs)

    with (
        _replaced(RecurrentActorCritic, "unroll", unroll_),
        _replaced(RecurrentActorCritic, "segment_outputs", segments_),
        _replaced(ppo_module, "compute_recurrent_health", health_),
    ):
        yield


_STEPS = [PPOConfig().steps]  # the rollout length of the run under way (never_reset)

#: name -> (PPOConfig settings over the defaults, the patch or None, one line).
CONFIGS: dict[str, tuple[dict[str, Any], Patch | None, str]] = {
    "healthy": ({}, None, "PPOConfig defaults"),
    "lr_x30": ({"lr": 3e-2}, None, "learning rate 3e-2 (x30)"),
    "forget_bias_5": ({}, forget_bias, "forget-gate bias +5 on both LSTMs"),
    "no_clip": ({"max_grad_norm": 1e9}, None, "no gradient clipping (max_grad_norm 1e9)"),
    "no_clip_lr_x10": (
        {"max_grad_norm": 1e9, "lr": 1e-2},
        None,
        "no gradient clipping and learning rate 1e-2 (x10)",
    ),
    "never_reset": ({}, never_reset, "state never reset at episode ends (rollout and training)"),
    "bug_no_reset": ({}, _training_pass(_no_reset), "training pass: no reset at episode start"),
    "bug_late_reset": ({}, _training_pass(_late_reset), "training pass: reset one step late"),
    "bug_padding_as_steps": (
        {},
        _training_pass(_padding_as_steps),
        "training pass: padding read as real steps",
    ),
    "bug_zero_initial_state": (
        {},
        _training_pass(_zero_initial_state),
        "training pass: zero initial states instead of the stored ones",
    ),
}
#: The configurations whose seed-0 run directory is kept and rendered with esper report.
REPORTED = ("healthy", "lr_x30", "forget_bias_5", "bug_zero_initial_state")


# ------------------------------------------------------------------------------- one run


class _Recorder:
    """A subscriber that keeps what the study needs of every event."""

    def __init__(self) -> None:
        self.updates: list[dict[str, Any]] = []
        self.anomalies: list[dict[str, Any]] = []

    def __call__(self, event: TelemetryEvent) -> None:
        if isinstance(event, AnomalyDetected):
            a = event.payload.anomaly
            self.anomalies.append(
                {
                    "update": event.update,
                    "type": a.type.value,
                    "severity": a.severity.value,
                    "state": a.state,
                    "observed": _num(a.observed),
                    "threshold": _num(a.threshold),
                }
            )
        elif isinstance(event, PPOUpdateCompleted):
            p = event.payload
            row: dict[str, Any] = {
                "update": event.update,
                "return": _num(p.episode_return_mean),
                "policy_loss": _num(p.policy_loss),
                "grad_norm": _num(p.grad_norm),
                "states": {},
            }
            for name, health in p.recurrent_health.items():
                d = health.diagnostics
                replay = p.replay.get(name)
                row["states"][name] = {
                    "h_rms": _num(health.h_rms),
                    "c_rms": _num(health.c_rms),
                    "nan_or_inf": bool(health.has_nan or health.has_inf),
                    "h_saturation_frac": _num(d.h_saturation_frac) if d else None,
                    "c_saturation_frac": _num(d.c_saturation_frac) if d else None,
                    "c_growth_ratio": _num(d.c_growth_ratio) if d else None,
                    "dormant_frac": _num(d.dormant_frac) if d else None,
                    "replay_max_abs_diff": _num(replay.max_abs_diff) if replay else None,
                    "replay_mismatched": replay.mismatched if replay else None,
                    "replay_drift": _num(replay.drift) if replay else None,
                }
            self.updates.append(row)


def _num(x: float | None) -> float | str | None:
    """A JSON-safe number: NaN and Inf as strings, others rounded to 6 significant."""
    if x is None:
        return None
    if not math.isfinite(x):
        return str(x)
    return float(f"{x:.6g}")


def _collapse(returns: list[float | str | None]) -> int | None:
    """The first update whose mean-of-20 return is below COLLAPSE_FRACTION of the best
    so far, once the best has reached COLLAPSE_FROM; None: never."""
    best = -math.inf
    for u, r in enumerate(returns):
        if not isinstance(r, float):
            continue
        if best >= COLLAPSE_FROM and r < COLLAPSE_FRACTION * best:
            return u
        best = max(best, r)
    return None


def run_one(name: str, seed: int, updates: int, run_root: Path) -> dict[str, Any]:
    """Train one configuration for one seed; what the study keeps of it."""
    settings, patch, _ = CONFIGS[name]
    config = PPOConfig(updates=updates, seed=seed, diagnostics=True, **settings)
    _STEPS[0] = config.steps
    recorder = _Recorder()
    options = RunOptions(
        config=config,
        run_root=run_root,
        run_id=f"{name}-s{seed}",
        wandb="disabled",
        progress=False,
        backends=(recorder,),
    )
    began = time.perf_counter()
    with patch() if patch is not None else contextlib.nullcontext():
        outcome = run_ppo(options, Console(file=io.StringIO()))
    seconds = time.perf_counter() - began
    rows = sorted(recorder.updates, key=lambda r: r["update"])
    returns = [r["return"] for r in rows]
    nan_update = next(
        (
            r["update"]
            for r in rows
            if any(s["nan_or_inf"] for s in r["states"].values())
            or not isinstance(r["policy_loss"], float)
        ),
        None,
    )
    by_update = {r["update"]: r for r in rows}
    first: dict[str, dict[str, Any]] = {}
    for a in sorted(recorder.anomalies, key=lambda a: a["update"]):
        if a["type"] not in first:
            row = by_update.get(a["update"], {"states": {}})
            first[a["type"]] = {**a, "figures": row["states"].get(a["state"])}
    first_diagnostic, first_norm_rule = _firsts(first)
    finite = [r for r in returns if isinstance(r, float)]
    return {
        "config": name,
        "seed": seed,
        "updates": len(rows),
        "status": outcome.result.status if outcome.result else None,
        "exit_code": outcome.exit_code,
        "seconds": round(seconds, 1),
        "first_diagnostic": first_diagnostic,
        "first_norm_rule": first_norm_rule,
        "collapse_update": _collapse(returns),
        "nan_update": nan_update,
        "best_return": max(finite) if finite else None,
        "final_return": returns[-1] if returns else None,
        "first_by_type": first,
        "anomaly_counts": _counts(recorder.anomalies),
        "returns": returns,
    }


def _key(a: dict[str, Any]) -> tuple[int, bool, str]:
    """Earliest first; within one update a critical anomaly before a warning."""
    return a["update"], a["severity"] != "critical", a["type"]


def _firsts(first: dict[str, dict[str, Any]]) -> tuple[str | None, str | None]:
    """(first diagnostic, first norm rule) of a run's first anomaly of each type."""
    diagnostic = [a for a in first.values() if a["type"] not in NORM_RULES]
    norm = [a for a in first.values() if a["type"] in NORM_RULES]
    return (
        _at(min(diagnostic, key=_key)) if diagnostic else None,
        _at(min(norm, key=_key)) if norm else None,
    )


def _at(a: dict[str, Any]) -> str:
    return f"{a['type']}@{a['update']} ({a['state']})"


def _counts(anomalies: list[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for a in anomalies:
        key = f"{a['type']}/{a['state']}"
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


# ---------------------------------------------------------------------------------- main


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=HERE, capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return out.stdout.strip()


def _render(run_dir: Path, name: str) -> str | None:
    """``esper report RUN_DIR -o docs/diagnostics/NAME.png``; the PNG's path."""
    PNG_DIR.mkdir(parents=True, exist_ok=True)
    target = PNG_DIR / f"{name}.png"
    esper = Path(sys.executable).with_name("esper")
    command = [str(esper)] if esper.exists() else [sys.executable, "-m", "esper_telemetry.cli"]
    done = subprocess.run(
        [*command, "report", str(run_dir), "--output", str(target)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        print(f"esper report {run_dir}: {done.stderr.strip()}", file=sys.stderr)
        return None
    return str(target.relative_to(HERE.parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--updates", type=int, default=150)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--runs-dir", type=Path, default=None, help="keep run directories here")
    parser.add_argument(
        "--tables", action="store_true", help="print the tables of the saved results; no runs"
    )
    args = parser.parse_args()
    if args.tables:
        print(tables(json.loads(RESULTS.read_text())))
        return
    torch.set_num_threads(1)
    run_root = args.runs_dir or Path(tempfile.mkdtemp(prefix="esper-diagnostics-"))
    previous: dict[str, Any] = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    runs = [r for r in previous.get("runs", []) if r["config"] not in args.configs]
    reports = {k: v for k, v in previous.get("reports", {}).items() if k not in args.configs}
    for name in args.configs:
        for seed in args.seeds:
            shutil.rmtree(run_root / f"{name}-s{seed}", ignore_errors=True)
            run = run_one(name, seed, args.updates, run_root)
            runs.append(run)
            print(
                f"{name:24} seed {seed}: {run['seconds']:5.1f} s  "
                f"diag {run['first_diagnostic']}  norm {run['first_norm_rule']}  "
                f"collapse {run['collapse_update']}  nan {run['nan_update']}  "
                f"final {run['final_return']}",
                flush=True,
            )
            if seed == args.seeds[0] and name in REPORTED:
                png = _render(run_root / f"{name}-s{seed}", name)
                if png is not None:
                    reports[name] = png
        RESULTS.write_text(json.dumps(_document(runs, reports, args), indent=1) + "\n")
    order = list(CONFIGS)
    runs.sort(key=lambda r: (order.index(r["config"]), r["seed"]))
    RESULTS.write_text(json.dumps(_document(runs, reports, args), indent=1) + "\n")
    if args.runs_dir is None:
        shutil.rmtree(run_root, ignore_errors=True)


def tables(document: dict[str, Any]) -> str:
    """The study's tables in Markdown, from a saved results document: one row per run,
    then each configuration's anomalies counted over its seeds."""

    def cell(value: Any) -> str:
        return "-" if value is None else str(value)

    lines = [
        "| configuration | seed | first diagnostic | first norm rule | collapse | NaN/Inf "
        "| best | final |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for run in document["runs"]:
        diagnostic, norm = _firsts(run["first_by_type"])
        lines.append(
            f"| {run['config']} | {run['seed']} | {cell(diagnostic)} | {cell(norm)} "
            f"| {cell(run['collapse_update'])} | {cell(run['nan_update'])} "
            f"| {cell(run['best_return'])} | {cell(run['final_return'])} |"
        )
    lines += ["", "| configuration | anomalies over all seeds (type/state: updates) |", "|---|---|"]
    for name in document["configs"]:
        counts: dict[str, int] = {}
        for run in document["runs"]:
            if run["config"] == name:
                for key, n in run["anomaly_counts"].items():
                    counts[key] = counts.get(key, 0) + n
        text = ", ".join(f"{k}: {n}" for k, n in sorted(counts.items())) or "none"
        lines.append(f"| {name} | {text} |")
    return "\n".join(lines)


def _document(
    runs: list[dict[str, Any]], reports: dict[str, str], args: argparse.Namespace
) -> dict[str, Any]:
    return {
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "esper_telemetry": getattr(esper_telemetry, "__version__", "unknown"),
            "torch_threads": torch.get_num_threads(),
            "commit": _git_commit(),
        },
        "updates": args.updates,
        "seeds": args.seeds,
        "collapse": {"fraction": COLLAPSE_FRACTION, "from": COLLAPSE_FROM, "window": 20},
        "norm_rules": list(NORM_RULES),
        "configs": {name: line for name, (_, _, line) in CONFIGS.items()},
        "reports": reports,
        "runs": runs,
    }


if __name__ == "__main__":
    main()
