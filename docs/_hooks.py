"""MkDocs hooks: tables rendered from the code, so the site cannot drift from it.

A page asks for a table with a marker on a line of its own, an HTML comment that GitHub's
view of the page hides: ``<!-- esper:thresholds -->`` and the other names of
:data:`RENDERERS`. The build replaces each marker with Markdown made from the installed
package (``HealthThresholds``' fields, the 12 health figures, the anomaly types, the W&B
keys) or from the JSON Schemas under the repository's ``contracts/``. A marker with an
unknown name fails the build.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from markdown import Extension, Markdown
from markdown.preprocessors import Preprocessor

from esper_telemetry.backends import wandb_keys
from esper_telemetry.contracts import (
    AnomalyType,
    HealthThresholds,
    LSTMHealthMetrics,
)

CONTRACTS = Path(__file__).resolve().parents[1] / "contracts"
MARKER = re.compile(r"^<!-- esper:([a-z-]+) -->$", re.MULTILINE)


def _cell(text: object) -> str:
    """Text fit for one Markdown table cell."""
    return " ".join(str(text).split()).replace("|", "\\|")


def thresholds() -> str:
    """Every field of HealthThresholds: its default and what it means."""
    rows = ["| field | default | meaning |", "|---|---|---|"]
    defaults = HealthThresholds()
    for name, field in HealthThresholds.model_fields.items():
        value = getattr(defaults, name)
        shown = dict(value) if name == "replay_tolerances" else value
        rows.append(f"| `{name}` | `{shown}` | {_cell(field.description or '')} |")
    return "\n".join(rows)


def metrics() -> str:
    """The 12 figures of a state's health, in their order."""
    rows = ["| figure | meaning |", "|---|---|"]
    for name in LSTMHealthMetrics.FIGURES:
        field = LSTMHealthMetrics.model_fields[name]
        rows.append(f"| `{name}` | {_cell(field.description or '')} |")
    return "\n".join(rows)


def anomalies() -> str:
    """The anomaly types, as events, logs and W&B name them."""
    return "\n".join(f"- `{kind.value}`" for kind in AnomalyType)


def wandb() -> str:
    """Every key WandBBackend writes, by group, built by the layout the backend logs with
    (``WandbKeys``; ``<p>`` stands for the optional prefix)."""
    keys = wandb_keys.WandbKeys()
    checks = [*wandb_keys.DIAGNOSTIC_FIGURES, *wandb_keys.REPLAY_FIGURES]

    def layers(state: str | None) -> list[str]:
        found = (keys.layer(0, "h", state=state), keys.layer(0, "c", state=state))
        return [key.replace("layer0", "layer<i>") for key in found]

    state = "<state>"
    groups = [
        ("(always)", [keys.update_key, keys.env_steps_key]),
        (
            "health: the primary state",
            [keys.health(f) for f in wandb_keys.HEALTH_FIGURES]
            + layers(None)
            + [keys.outlier_envs],
        ),
        (
            "health: every named state (diagnostics and replay when measured)",
            [keys.health(f, state=state) for f in (*wandb_keys.HEALTH_FIGURES, *checks)]
            + layers(state),
        ),
        ("ppo", [keys.ppo(k) for k in wandb_keys.PPO_KEYS] + [keys.extra("<name>")]),
        ("anomalies", [keys.anomaly_count(kind) for kind in AnomalyType] + [keys.anomaly_table]),
        ("telemetry", [keys.telemetry(k) for k in wandb_keys.TELEMETRY_FIGURES]),
        ("summary", [keys.run("status"), keys.run("message"), keys.final("<name>")]),
    ]
    rows = ["| group | keys |", "|---|---|"]
    for group, names in groups:
        rows.append(f"| {group} | {', '.join(f'`<p>{k}`' for k in names)} |")
    columns = ", ".join(f"`{c}`" for c in wandb_keys.ANOMALY_COLUMNS)
    return "\n".join(rows) + f"\n\nThe columns of `<p>anomaly/table`: {columns}."


def schemas() -> str:
    """Each exported JSON Schema: its title, description and top-level properties, and
    the whole schema folded below."""
    paths = sorted(CONTRACTS.glob("*.schema.json"))
    if not paths:
        raise FileNotFoundError(f"no JSON Schemas under {CONTRACTS}: run `make schemas`")
    parts = []
    for path in paths:
        schema: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        title = schema.get("title", path.stem)
        parts.append(f"### {title}\n\n`contracts/{path.name}`\n")
        if "description" in schema:
            parts.append(_cell(schema["description"]) + "\n")
        properties: dict[str, Any] = schema.get("properties", {})
        if properties:
            required = set(schema.get("required", ()))
            parts.append("| property | type | required | description |\n|---|---|---|---|")
            for name, prop in properties.items():
                parts.append(
                    f"| `{name}` | {_cell(_type(prop))} | {'yes' if name in required else ''} "
                    f"| {_cell(prop.get('description', ''))} |"
                )
            parts.append("")
        elif "oneOf" in schema or "anyOf" in schema or "discriminator" in schema:
            choices = schema.get("oneOf") or schema.get("anyOf") or []
            names = ", ".join(f"`{_type(c)}`" for c in choices)
            parts.append(f"One of: {names}.\n")
        body = json.dumps(schema, indent=2)
        parts.append(f'??? note "The whole schema"\n\n    ```json\n{_indent(body)}\n    ```\n')
    return "\n".join(parts)


def _type(prop: dict[str, Any]) -> str:
    if "$ref" in prop:
        return str(prop["$ref"]).rsplit("/", 1)[-1]
    if "type" in prop:
        return str(prop["type"])
    for key in ("anyOf", "oneOf"):
        if key in prop:
            return " or ".join(_type(p) for p in prop[key])
    if "const" in prop:
        return json.dumps(prop["const"])
    if "enum" in prop:
        return " / ".join(json.dumps(v) for v in prop["enum"])
    return "any"


def _indent(text: str) -> str:
    return "\n".join(f"    {line}" for line in text.splitlines())


RENDERERS: dict[str, Callable[[], str]] = {
    "thresholds": thresholds,
    "metrics": metrics,
    "anomalies": anomalies,
    "wandb-keys": wandb,
    "schemas": schemas,
}


class _Doctests(Preprocessor):
    """Shows the doctests of the docstrings as Python console code.

    esper's docstrings carry doctests as plain paragraphs (``>>>`` lines and their
    output up to a blank line), which Markdown would read as nested quotes; each such
    paragraph outside a fenced block becomes a ``pycon`` block.
    """

    def run(self, lines: list[str]) -> list[str]:
        out: list[str] = []
        fenced = in_doctest = False
        for line in lines:
            stripped = line.lstrip()
            if stripped.startswith(("```", "~~~")) and not in_doctest:
                fenced = not fenced
            elif not fenced and not in_doctest and stripped.startswith(">>> "):
                indent = line[: len(line) - len(stripped)]
                out.append(f"{indent}```pycon")
                in_doctest = True
            elif in_doctest and not stripped:
                out.append(f"{indent}```")
                in_doctest = False
            out.append(line)
        if in_doctest:
            out.append(f"{indent}```")
        return out


class DoctestExtension(Extension):
    def extendMarkdown(self, md: Markdown) -> None:
        md.registerExtension(self)
        md.preprocessors.register(_Doctests(md), "esper_doctests", 40)


def on_config(config: Any) -> Any:
    """Add the doctest extension to the site's Markdown (the API reference uses it)."""
    config["markdown_extensions"].append(DoctestExtension())
    return config


def on_page_markdown(markdown: str, **_: Any) -> str:
    """Replace each ``<!-- esper:NAME -->`` marker with its table."""

    def render(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in RENDERERS:
            known = ", ".join(sorted(RENDERERS))
            raise ValueError(f"docs marker esper:{name} is unknown; use one of {known}")
        return RENDERERS[name]()

    return MARKER.sub(render, markdown)
