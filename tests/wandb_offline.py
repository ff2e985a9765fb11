"""Offline W&B for tests: a private W&B home per test, and wandb's own reader of a run."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import wandb


@contextmanager
def offline_wandb(root: Path, mp: pytest.MonkeyPatch) -> Iterator[Path]:
    """Point every W&B folder (and HOME) at ``root``, offline; yield the WANDB_DIR."""
    wandb.teardown()  # W&B froze the environment it saw at its first use in this process
    wandb_dir = root / "wb"
    wandb_dir.mkdir(parents=True)
    env = {
        "WANDB_MODE": "offline",
        "WANDB_DIR": str(wandb_dir),
        "WANDB_CACHE_DIR": str(root / "cache"),
        "WANDB_CONFIG_DIR": str(root / "config"),
        "WANDB_DATA_DIR": str(root / "data"),
        "WANDB_SILENT": "true",
        "WANDB_CONSOLE": "off",
        "HOME": str(root / "home"),
        "NETRC": str(root / "home" / ".netrc"),
    }
    for key, value in env.items():
        mp.setenv(key, value)
    mp.delenv("WANDB_API_KEY", raising=False)
    try:
        yield wandb_dir
    finally:
        wandb.teardown()


def run_dir_of(wandb_dir: Path, run_id: str) -> Path:
    (found,) = (wandb_dir / "wandb").glob(f"offline-run-*-{run_id}")
    return found


def inspect_run(run_dir: Path) -> list[dict[str, Any]]:
    """Every record of an offline run, as wandb's own reader prints them."""
    out = subprocess.run(
        [sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(run_dir)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return [json.loads(line) for line in out.stdout.splitlines()]


def inspect_summary(run_dir: Path) -> dict[str, Any]:
    """The run's final state (config, summary, notes) as wandb's own reader prints it."""
    out = subprocess.run(
        [sys.executable, "-m", "wandb", "leet", "inspect", "--summary", "--json", str(run_dir)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def history(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """History rows without W&B's clock keys (_runtime, _timestamp)."""
    return [
        {k: v for k, v in r["history"]["item"].items() if k not in ("_runtime", "_timestamp")}
        for r in records
        if r["type"] == "history"
    ]


def of_type(records: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [r[kind] for r in records if r["type"] == kind]
