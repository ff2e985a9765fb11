"""Warnings and errors of the library as one line each on standard error, for the CLI.

The hub logs a subscriber's first failure with its traceback (``exc_info``), for the
application's own logging to keep. A command-line run usually configures no logging,
and then Python's last-resort handler prints that traceback to the terminal: two of
them, before the verdict, when a full disk fails two backends. ``esper ppo`` installs
this module's handler instead, which prints each record as one line that says who
failed and with what error (``error: telemetry subscriber 'structlog' raised ...``);
the run's summary and its ``esper ppo:`` verdict then say what was lost.

>>> import logging
>>> try:
...     raise OSError(28, "No space left on device")
... except OSError as exc:
...     record = logging.makeLogRecord({
...         "msg": "subscriber %r raised", "args": ("structlog",), "levelname": "ERROR",
...         "exc_info": (type(exc), exc, exc.__traceback__)})
>>> OneLineHandler().format(record)
"error: subscriber 'structlog' raised (OSError: [Errno 28] No space left on device)"
"""

from __future__ import annotations

import logging
import sys

#: The logger every module of the package logs under.
PACKAGE_LOGGER = "esper_telemetry"


class OneLineHandler(logging.Handler):
    """Writes each record as ``"<level>: <message> (<error type>: <error>)"``, one line.

    The level is in lower case (``warning``, ``error``). The exception, when the record
    carries one, is named with its message, never its traceback; line breaks inside
    the message become spaces. The stream is looked up at each record (``sys.stderr``
    now), so a replaced ``sys.stderr`` is honoured.
    """

    def __init__(self, level: int = logging.WARNING) -> None:
        super().__init__(level)

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line (see the class docstring)."""
        text = record.getMessage()
        error = record.exc_info[1] if record.exc_info else None
        if error is not None:
            text += f" ({type(error).__name__}: {error})"
        return f"{record.levelname.lower()}: {' '.join(text.splitlines())}"

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = sys.stderr
            stream.write(self.format(record) + "\n")
            stream.flush()
        except Exception:  # logging must never break the run: report it logging's way
            self.handleError(record)


def install_one_line_errors() -> OneLineHandler | None:
    """Print the package's warnings and errors as one line each, unless logging is set up.

    Nothing changes when a handler would already receive the package's records (the
    application configured logging, or this was called before): then that handler
    decides what is shown, tracebacks included.

    Returns:
        The handler installed, or None when none was.
    """
    package = logging.getLogger(PACKAGE_LOGGER)
    if package.hasHandlers():
        return None
    handler = OneLineHandler()
    package.addHandler(handler)
    return handler


def first_line(exc: BaseException) -> str:
    """The first non-blank line of an exception's message, or its type's name."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[0] if lines else type(exc).__name__
