"""What importing esper costs: import times of its parts and the wall time of light commands.

Each figure is the median of ``--runs`` fresh processes (default 10), measured side by
side in one run, interleaved round by round so that drifts of this shared machine fall on
all of them alike:

* ``python -c pass``: the interpreter alone, the floor every row includes;
* import rows: the time of the import statement inside a fresh interpreter
  (``time.perf_counter`` around it), so the interpreter's start is not counted; the
  contracts package is lazy, so a "first use" row shows what its first real import costs;
* command rows: the wall time of the whole process (``esper --help``, ``esper query --help``).

Targets (issue 9): ``import esper_telemetry.contracts`` <= 0.15 s and ``esper query --help``
<= 0.4 s on this machine.

Run::

    .venv/bin/python bench/imports.py            # 10 runs each (about 1 min)
    .venv/bin/python bench/imports.py --runs 3   # smoke run
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent
ESPER = str(BIN / "esper")

#: Row name -> the statement timed. The contracts package is lazy, so the second row
#: shows what first real use costs (pydantic's own import is most of it).
IMPORTS = {
    "import esper_telemetry": "import esper_telemetry",
    "import esper_telemetry.contracts": "import esper_telemetry.contracts",
    "first use: from esper_telemetry.contracts import PPOUpdateCompleted": (
        "from esper_telemetry.contracts import PPOUpdateCompleted"
    ),
    "import pydantic (BaseModel), for reference": "from pydantic import BaseModel",
    "import esper_telemetry.hub": "import esper_telemetry.hub",
    "import esper_telemetry.cli": "import esper_telemetry.cli",
    "import esper_telemetry.telemetry.lstm_health (torch)": (
        "import esper_telemetry.telemetry.lstm_health"
    ),
}
COMMANDS: dict[str, list[str]] = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "esper --help": [ESPER, "--help"],
    "esper query --help": [ESPER, "query", "--help"],
}
TARGETS = {"import esper_telemetry.contracts": 0.15, "esper query --help": 0.4}


def import_seconds(statement: str) -> float:
    """Seconds ``statement`` (an import) takes in a fresh interpreter."""
    code = f"import time\nt = time.perf_counter()\n{statement}\nprint(time.perf_counter() - t)\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout)


def command_seconds(argv: list[str]) -> float:
    """Wall seconds of one whole process."""
    start = time.perf_counter()
    subprocess.run(argv, capture_output=True, check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="fresh processes per row")
    args = parser.parse_args()
    env_note = {k: os.environ[k] for k in ("PYTHONDONTWRITEBYTECODE",) if k in os.environ}
    samples: dict[str, list[float]] = {}
    for _ in range(args.runs):
        for name, statement in IMPORTS.items():
            samples.setdefault(name, []).append(import_seconds(statement))
        for name, argv in COMMANDS.items():
            samples.setdefault(name, []).append(command_seconds(argv))
    print(f"# imports: medians of {args.runs} fresh processes")
    print(f"# python {platform.python_version()}, {platform.machine()}, load {os.getloadavg()}")
    if env_note:
        print(f"# env {env_note}")
    print(f"{'what':<72} {'median s':>9} {'min':>7} {'max':>7}  target")
    for name, values in samples.items():
        target = TARGETS.get(name)
        median = statistics.median(values)
        verdict = "" if target is None else f"<= {target} {'met' if median <= target else 'MISSED'}"
        print(f"{name:<72} {median:9.3f} {min(values):7.3f} {max(values):7.3f}  {verdict}")


if __name__ == "__main__":
    main()
