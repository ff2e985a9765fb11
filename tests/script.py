"""Import a script of the repository (an example, a benchmark, a docs tool) as a module.

Scripts live outside any package (``examples/``, ``bench/``, ``docs/``), so the tests that
call their functions load them by path. Nothing runs but the module's top level: a
script's ``main`` waits for ``if __name__ == "__main__"``.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType


def load_script(path: Path, name: str) -> ModuleType:
    """The module of the script at ``path``, registered as ``name`` in ``sys.modules``
    (dataclasses and pickling look a class's module up there)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
