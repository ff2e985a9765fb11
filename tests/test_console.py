"""_console: the package's warnings and errors as one line each, for `esper ppo`."""

from __future__ import annotations

import logging

import pytest

from esper_telemetry._console import PACKAGE_LOGGER, OneLineHandler, install_one_line_errors


def no_logging_configured(monkeypatch: pytest.MonkeyPatch) -> logging.Logger:
    """The package logger as in a fresh process: no handler on it or on the root logger.

    Called in the test itself: pytest adds its capture handlers to the root logger after
    fixtures are set up; monkeypatch puts them back afterwards.
    """
    package = logging.getLogger(PACKAGE_LOGGER)
    monkeypatch.setattr(logging.getLogger(), "handlers", [])
    monkeypatch.setattr(package, "handlers", [])
    return package


def test_a_failure_with_its_exception_is_one_line_naming_the_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Installed where no logging is set up, an error logged with exc_info prints one
    line (level, message, error type and text) and no traceback; debug is not shown."""
    no_logging_configured(monkeypatch)
    assert isinstance(install_one_line_errors(), OneLineHandler)
    log = logging.getLogger(f"{PACKAGE_LOGGER}.hub")
    try:
        raise OSError(28, "No space left on device")
    except OSError as exc:
        log.error("subscriber %r raised\nhandling seq=3", "structlog", exc_info=exc)
    log.warning("W&B's run file holds 0 of 30 rows")
    log.debug("not shown")
    assert capsys.readouterr().err.splitlines() == [
        "error: subscriber 'structlog' raised handling seq=3 "
        "(OSError: [Errno 28] No space left on device)",
        "warning: W&B's run file holds 0 of 30 rows",
    ]


def test_logging_the_application_set_up_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a handler already there (the application's, or one installed before),
    nothing is added."""
    package = no_logging_configured(monkeypatch)
    first = install_one_line_errors()
    assert (install_one_line_errors(), package.handlers) == (None, [first])
    package.handlers = []
    logging.getLogger().addHandler(logging.NullHandler())
    assert (install_one_line_errors(), package.handlers) == (None, [])
