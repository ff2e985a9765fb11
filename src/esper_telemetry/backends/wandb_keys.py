"""The W&B key layout: every key esper writes to a W&B run, in one place.

:class:`~esper_telemetry.backends.WandBBackend` logs with it and the dashboards
(:mod:`esper_telemetry.backends.wandb_dashboard`) draw with it, so a panel cannot name a
key the backend does not write. It needs neither wandb nor torch.

Keys are grouped; each group can be switched off on its own (``WandBBackend(log=...)``):

==============  ===========================================================================
group           keys (``<p>`` is the optional prefix, e.g. ``esper/``)
==============  ===========================================================================
(always)        ``<p>update`` and ``<p>env_steps``: the two x-axes, in every row
``health``      ``<p>lstm/<figure>`` (the primary state), ``<p>lstm/<state>/<figure>`` (every
                named state), ``.../layer<i>/h_rms`` and ``.../c_rms`` (with detail),
                ``<p>lstm/outlier_envs``
``ppo``         ``<p>ppo/<stat>`` (PPO's statistics, ``episode_return_mean``),
                ``<p>extra/<name>`` (the trainer's own scalars)
``anomalies``   ``<p>anomaly/<type>`` (how many so far), ``<p>anomaly/table`` (a table of
                every anomaly, logged at flush when it grew)
``telemetry``   ``<p>telemetry/level``, ``<p>telemetry/lost``, ``<p>telemetry/dropped``,
                ``<p>telemetry/latency_p99_ms``
(summary)       ``<p>run/status``, ``<p>run/message``, ``<p>final/<name>``
==============  ===========================================================================

>>> keys = WandbKeys(prefix="esper")
>>> keys.health("h_rms"), keys.health("c_rms", state="value"), keys.x_key
('esper/lstm/h_rms', 'esper/lstm/value/c_rms', 'esper/update')
>>> WandbKeys(x_axis="env_steps").x_key
'env_steps'
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final, Literal, get_args

from esper_telemetry.contracts import PPO_STATISTICS, AnomalyType, LSTMHealthMetrics

__all__ = [
    "ANOMALY_COLUMNS",
    "BAD_NAME_CHARS",
    "DEFAULT_GROUPS",
    "DIAGNOSTIC_FIGURES",
    "GROUPS",
    "HEALTH_FIGURES",
    "PPO_KEYS",
    "REPLAY_FIGURES",
    "SHARED_GROUPS",
    "TELEMETRY_FIGURES",
    "X_AXES",
    "Group",
    "WandbKeys",
    "XAxis",
    "checked_groups",
    "checked_prefix",
    "checked_project",
    "checked_tags",
    "checked_text",
    "checked_x_axis",
]

Group = Literal["health", "ppo", "anomalies", "telemetry"]
XAxis = Literal["update", "env_steps"]

#: Every group, in the order the dashboards show them.
GROUPS: Final[tuple[Group, ...]] = get_args(Group)
#: What a run esper creates logs.
DEFAULT_GROUPS: Final[tuple[Group, ...]] = GROUPS
#: What a run handed in (shared with SB3's, CleanRL's or your own logging) logs by
#: default: the other logger already has PPO's statistics.
SHARED_GROUPS: Final[tuple[Group, ...]] = ("health",)
#: The x-axes every row carries.
X_AXES: Final[tuple[XAxis, ...]] = get_args(XAxis)
#: The 12 figures of a state, as logged (flags as 0/1).
HEALTH_FIGURES: Final[tuple[str, ...]] = LSTMHealthMetrics.FIGURES
#: A state's diagnostics (``RecurrentDiagnostics``), logged beside its figures when
#: measured: ``lstm/<state>/<figure>``.
DIAGNOSTIC_FIGURES: Final[tuple[str, ...]] = (
    "h_saturation_frac",
    "c_saturation_frac",
    "c_growth_ratio",
    "dormant_frac",
)
#: A state's replay check (``ReplayConsistency``), when the trainer made one:
#: ``lstm/<state>/replay_<figure>``.
REPLAY_FIGURES: Final[tuple[str, ...]] = (
    "replay_max_abs_diff",
    "replay_mismatched",
    "replay_drift",
)
#: The ``ppo/`` keys an update can carry (the statistics and the return).
PPO_KEYS: Final[tuple[str, ...]] = (*PPO_STATISTICS, "episode_return_mean")
#: The ``telemetry/`` keys of every update row (the level also on a level change).
TELEMETRY_FIGURES: Final[tuple[str, ...]] = ("level", "lost", "dropped", "latency_p99_ms")
#: The columns of ``anomaly/table``.
ANOMALY_COLUMNS: Final[tuple[str, ...]] = (
    "update",
    "env_steps",
    "state",
    "type",
    "severity",
    "observed",
    "threshold",
    "outlier_envs",
    "message",
)

_PREFIX = re.compile(r"[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*")
#: The characters W&B refuses in an entity or project name.
BAD_NAME_CHARS: Final = frozenset("/\\#?%:")


@dataclass(frozen=True)
class WandbKeys:
    """The keys of one layout: a prefix, the x-axis the charts use, the groups logged.

    Args:
        prefix: Put before every key, with a ``/`` (``"esper"`` gives ``esper/lstm/...``):
            a namespace of its own in a run other loggers write to. ``""``: none.
        x_axis: What charts are drawn against: ``"update"`` (the PPO update, the
            default) or ``"env_steps"`` (environment steps so far, as RL users plot).
            Both are logged in every row either way.
        groups: The groups logged (see the module docstring).
    """

    prefix: str = ""
    x_axis: XAxis = "update"
    groups: tuple[Group, ...] = DEFAULT_GROUPS
    _p: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "prefix", checked_prefix(self.prefix))
        object.__setattr__(self, "x_axis", checked_x_axis(self.x_axis))
        object.__setattr__(self, "groups", checked_groups(self.groups))
        object.__setattr__(self, "_p", f"{self.prefix}/" if self.prefix else "")

    def logs(self, group: Group) -> bool:
        """True when ``group`` is logged."""
        return group in self.groups

    # -- axes -------------------------------------------------------------------------

    @property
    def update_key(self) -> str:
        return f"{self._p}update"

    @property
    def env_steps_key(self) -> str:
        return f"{self._p}env_steps"

    @property
    def x_key(self) -> str:
        """The key charts are drawn against (every key's ``step_metric``)."""
        return self.update_key if self.x_axis == "update" else self.env_steps_key

    # -- health -----------------------------------------------------------------------

    def health(self, figure: str, *, state: str | None = None) -> str:
        """``lstm/<figure>`` for the primary state, ``lstm/<state>/<figure>`` for a named one."""
        return f"{self._health(state)}/{figure}"

    def layer(self, index: int, tensor: Literal["h", "c"], *, state: str | None = None) -> str:
        """The RMS of one layer's ``h`` or ``c``: ``lstm/[<state>/]layer<i>/<h|c>_rms``."""
        return f"{self._health(state)}/layer{index}/{tensor}_rms"

    @property
    def outlier_envs(self) -> str:
        """How many of the primary state's envs are outliers."""
        return f"{self._p}lstm/outlier_envs"

    def is_health(self, key: str) -> bool:
        return key.startswith(f"{self._p}lstm/")

    def _health(self, state: str | None) -> str:
        return f"{self._p}lstm" if state is None else f"{self._p}lstm/{state}"

    # -- ppo --------------------------------------------------------------------------

    def ppo(self, stat: str) -> str:
        return f"{self._p}ppo/{stat}"

    def extra(self, name: str) -> str:
        return f"{self._p}extra/{name}"

    # -- anomalies --------------------------------------------------------------------

    def anomaly_count(self, kind: AnomalyType | str) -> str:
        value = kind.value if isinstance(kind, AnomalyType) else kind
        return f"{self._p}anomaly/{value}"

    @property
    def anomaly_table(self) -> str:
        return f"{self._p}anomaly/table"

    # -- telemetry, summary -----------------------------------------------------------

    def telemetry(self, figure: str) -> str:
        return f"{self._p}telemetry/{figure}"

    def final(self, name: str) -> str:
        return f"{self._p}final/{name}"

    def run(self, name: Literal["status", "message"]) -> str:
        return f"{self._p}run/{name}"

    def sections(self) -> tuple[str, ...]:
        """The key prefixes declared with one ``define_metric`` glob each (``lstm/``
        keys are declared one by one, for their summaries)."""
        return tuple(f"{self._p}{s}" for s in ("ppo", "extra", "anomaly", "telemetry"))


def checked_prefix(prefix: object) -> str:
    """``prefix`` without surrounding slashes; one line naming what is wrong otherwise."""
    if not isinstance(prefix, str):
        raise ValueError(f"prefix must be a string such as 'esper', got {prefix!r:.80}")
    stripped = prefix.strip("/")
    if stripped and not _PREFIX.fullmatch(stripped):
        raise ValueError(
            f"prefix must be letters, digits, '_' and '-' in parts joined by '/' "
            f"(e.g. 'esper'), got {prefix!r:.80}"
        )
    return stripped


def checked_project(project: object) -> str | None:
    """A W&B project name (None: W&B's choice); one line naming what is wrong otherwise."""
    if project is None:
        return None
    if not isinstance(project, str) or not project.strip():
        raise ValueError(f"project must be a non-empty string or None, got {project!r}")
    if bad := sorted(BAD_NAME_CHARS.intersection(project)):
        raise ValueError(f"project: W&B names cannot contain {' '.join(bad)}, got {project!r}")
    return project


def checked_x_axis(x_axis: object) -> XAxis:
    if x_axis not in X_AXES:
        raise ValueError(f"x_axis must be one of {', '.join(X_AXES)}, got {x_axis!r:.80}")
    return x_axis  # checked against XAxis's values above


def checked_groups(groups: object) -> tuple[Group, ...]:
    """``groups`` as a tuple in the order of :data:`GROUPS`, checked."""
    if isinstance(groups, str) or not isinstance(groups, Iterable):
        raise ValueError(
            f"log must be a list of groups such as ['health'], got {groups!r:.80}; "
            f"the groups are {', '.join(GROUPS)}"
        )
    chosen = set()
    for group in groups:
        if group not in GROUPS:
            raise ValueError(f"log: {group!r:.40} is not a group; use some of {', '.join(GROUPS)}")
        chosen.add(group)
    if not chosen:
        raise ValueError(f"log must name at least one group of {', '.join(GROUPS)}")
    return tuple(g for g in GROUPS if g in chosen)


def checked_text(arg: str, value: object, *, limit: int = 256) -> str | None:
    """A W&B name (entity, group, job type, a tag): 1 to ``limit`` printable characters."""
    if value is None:
        return None
    if (
        not isinstance(value, str)
        or not value.strip()
        or len(value) > limit
        or any(ch < " " for ch in value)
    ):
        raise ValueError(
            f"{arg} must be a non-empty string of at most {limit} characters without control "
            f"characters, or None, got {value!r:.80}"
        )
    return value


def checked_tags(tags: object) -> tuple[str, ...]:
    """W&B tags, each checked, a repeated one kept once."""
    if tags is None:
        return ()
    if isinstance(tags, str) or not isinstance(tags, Iterable):
        raise ValueError(
            f"tags must be a list of strings, e.g. tags=['lstm', 'cartpole'], got {tags!r:.80}"
        )
    checked = tuple(tags)
    for tag in checked:
        checked_text("tags", tag, limit=64)  # W&B's limit for a tag
    return tuple(dict.fromkeys(checked))
