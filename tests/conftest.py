"""Shared test settings: one torch thread, a hypothesis profile for this 2-core machine,
and the opt-in ``--soak`` flag for long stress runs."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

torch.set_num_threads(1)

settings.register_profile(
    "default",
    deadline=None,  # shared 2-core machines: wall-clock deadlines would be flaky
    max_examples=100,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--soak",
        action="store_true",
        default=False,
        help="also run the long soak tests (marked soak): minutes, not seconds",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Without --soak, soak tests are deselected (reported as such, never as passed)."""
    if config.getoption("--soak"):
        return
    soak = [item for item in items if item.get_closest_marker("soak")]
    if soak:
        config.hook.pytest_deselected(items=soak)
        items[:] = [item for item in items if not item.get_closest_marker("soak")]


@pytest.fixture(scope="session")
def soak(pytestconfig: pytest.Config) -> bool:
    """True when the run asked for the long soak variants (--soak)."""
    return bool(pytestconfig.getoption("--soak"))
