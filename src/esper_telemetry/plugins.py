"""Backend plugins: subscribers other packages install, found through an entry point.

A package offers a backend by declaring an entry point in the group
``esper_telemetry.backends`` (:data:`ENTRY_POINT_GROUP`) that names a *factory*: a
callable that takes the backend's options as keyword arguments, all strings, and returns
a subscriber (anything :meth:`TelemetryHub.subscribe` accepts). The first line of the
factory's docstring is the description ``esper backends`` shows. ``docs/plugins.md``
walks through writing one.

``esper ppo --backend NAME[:key=value,...]`` loads one (:class:`BackendSpec`,
:func:`load`); every plugin installed and not asked for is loaded with no options unless
``--no-plugins`` is given. The built-in backends are listed too (:data:`BUILT_IN`), but
they are wired by their own flags, not by ``--backend``.

>>> spec = BackendSpec.parse("example:path=events.jsonl")
>>> spec.name, dict(spec.options)
('example', {'path': 'events.jsonl'})
>>> str(spec)
'example:path=events.jsonl'
>>> spec in {BackendSpec.parse("example:path=events.jsonl")}
True
>>> BackendSpec.parse("example:path")
Traceback (most recent call last):
...
ValueError: --backend example: option 'path' needs a value (key=value)
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from types import MappingProxyType
from typing import TYPE_CHECKING

from esper_telemetry.errors import EsperError

if TYPE_CHECKING:
    from esper_telemetry.hub import Subscriber

__all__ = [
    "BUILT_IN",
    "ENTRY_POINT_GROUP",
    "BackendSpec",
    "BuiltIn",
    "Plugin",
    "PluginError",
    "discover",
    "installed_names",
    "load",
]

#: The entry-point group a package registers its backend factories under.
ENTRY_POINT_GROUP = "esper_telemetry.backends"

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\Z")
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


class PluginError(EsperError):
    """A backend plugin could not be found, imported or built.

    Attributes:
        name: The plugin's name (its entry point's).
        reason: What went wrong, in one line (the plugin's own error, named by type).
    """

    def __init__(self, name: str, reason: str) -> None:
        self.name = name
        self.reason = reason
        super().__init__(f"backend {name!r}: {reason}")


@dataclass(frozen=True)
class BuiltIn:
    """A backend that ships with esper and is wired by its own ``esper ppo`` flag."""

    name: str
    """Its subscriber name in the run's summary and ``hub.stats()``."""
    description: str
    """What it does and which flag controls it, in one line."""


#: The built-in backends, as ``esper backends`` lists them.
BUILT_IN: tuple[BuiltIn, ...] = (
    BuiltIn("anomaly-escalator", "detects anomalies and raises the level to DEBUG (always on)"),
    BuiltIn("wandb", "one Weights & Biases run per run (--wandb; offline by default)"),
    BuiltIn("analytics", "the append-only events.jsonl of the run (always on)"),
    BuiltIn("structlog", "the structured JSON-lines log, log.jsonl (always on)"),
    BuiltIn("tui", "the live health panel (--tui; needs the tui extra)"),
)

_BUILT_IN_NAMES = frozenset(b.name for b in BUILT_IN)


@dataclass(frozen=True)
class BackendSpec:
    """A plugin asked for by name, with its options: ``NAME[:key=value,...]``.

    Values are strings and may hold ``=`` and ``:`` but not ``,``.
    """

    name: str
    """The plugin's entry-point name."""
    options: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    """Keyword arguments for its factory."""

    @classmethod
    def parse(cls, text: str) -> BackendSpec:
        """Read ``NAME[:key=value,...]``.

        Raises:
            ValueError: a malformed spec; the message names ``--backend``, the plugin and
                the option, never a value (it may be a secret).
        """
        name, _, rest = text.partition(":")
        name = name.strip()
        if not _NAME.match(name):
            raise ValueError(
                f"--backend: {name!r} is not a backend name (letters, digits, '.', '_', "
                "'-'); the form is NAME[:key=value,...]"
            )
        options: dict[str, str] = {}
        for item in rest.split(",") if rest.strip() else ():
            key, eq, value = item.partition("=")
            key = key.strip()
            if not eq:
                raise ValueError(f"--backend {name}: option {key!r} needs a value (key=value)")
            if not _KEY.match(key):
                raise ValueError(
                    f"--backend {name}: {key!r} is not an option name (letters, digits, '_')"
                )
            if key in options:
                raise ValueError(f"--backend {name}: option {key!r} is given twice")
            options[key] = value
        return cls(name, MappingProxyType(options))

    def __str__(self) -> str:
        options = ",".join(f"{k}={v}" for k, v in self.options.items())
        return f"{self.name}:{options}" if options else self.name

    def __hash__(self) -> int:  # the options' read-only mapping is not hashable itself
        return hash((self.name, tuple(sorted(self.options.items()))))


@dataclass(frozen=True)
class Plugin:
    """An installed backend plugin, as :func:`discover` finds it."""

    name: str
    """Its entry-point name: what ``--backend`` takes."""
    distribution: str
    """The package that installed it, with its version (``esper-webhook 0.1.0``)."""
    description: str = ""
    """The first line of its factory's docstring ("" when it has none or failed to load)."""
    error: str | None = None
    """Why it could not be imported, in one line; None: it imports."""


def discover() -> list[Plugin]:
    """Every installed backend plugin, sorted by name; each imported to read its docstring.

    A plugin that fails to import is listed with its ``error``; none raises.
    """
    found = []
    for ep in _entry_points():
        try:
            factory = ep.load()
        except Exception as exc:
            found.append(Plugin(ep.name, _distribution(ep), error=_one_line(exc)))
            continue
        found.append(Plugin(ep.name, _distribution(ep), description=_summary(factory)))
    return sorted(found, key=lambda p: (p.name, p.distribution))


def load(spec: BackendSpec) -> Subscriber:
    """Import the plugin ``spec`` names and build its subscriber with ``spec.options``.

    Raises:
        PluginError: no plugin has that name (or a built-in one does), two packages
            install the name, or importing or calling its factory failed.
    """
    if spec.name in _BUILT_IN_NAMES:
        raise PluginError(spec.name, "is a built-in backend, set by its own esper ppo flag")
    matches = [ep for ep in _entry_points() if ep.name == spec.name]
    if not matches:
        raise PluginError(spec.name, "no such plugin is installed (esper backends lists them)")
    if len(matches) > 1:
        dists = ", ".join(_distribution(ep) for ep in matches)
        raise PluginError(spec.name, f"installed by more than one package ({dists})")
    try:
        factory: Callable[..., Subscriber] = matches[0].load()
    except Exception as exc:
        raise PluginError(spec.name, f"could not be imported ({_one_line(exc)})") from exc
    try:
        backend = factory(**spec.options)
    except Exception as exc:
        raise PluginError(spec.name, f"could not be built ({_one_line(exc)})") from exc
    if not (callable(backend) or callable(getattr(backend, "handle", None))):
        raise PluginError(
            spec.name, f"its factory returned {type(backend).__name__}, not a subscriber"
        )
    return backend


def installed_names() -> list[str]:
    """The names of the installed plugins, without importing any (sorted, unique)."""
    return sorted({ep.name for ep in _entry_points()})


def _entry_points() -> Iterable[EntryPoint]:
    return entry_points(group=ENTRY_POINT_GROUP)


def _distribution(ep: EntryPoint) -> str:
    dist = ep.dist
    if dist is None:
        return "unknown package"
    return f"{dist.name} {dist.version}"


def _summary(factory: object) -> str:
    doc = getattr(factory, "__doc__", None) or ""
    lines = doc.strip().splitlines()
    return lines[0].strip() if lines else ""


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
