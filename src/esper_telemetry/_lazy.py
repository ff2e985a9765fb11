"""Public names imported on first use, so that importing a package stays cheap."""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from importlib import import_module


def lazy_attributes(package: str, where: Mapping[str, str]) -> Callable[[str], object]:
    """A module ``__getattr__`` for ``package`` that imports ``name`` from ``where[name]``.

    The value is cached in the package's namespace, so the import runs once.

    >>> getattr_ = lazy_attributes("esper_telemetry", {"json_safe": "esper_telemetry.contracts"})
    >>> getattr_("json_safe").__name__
    'json_safe'
    """

    def __getattr__(name: str) -> object:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(import_module(module), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__
