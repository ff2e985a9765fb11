"""Health of an LSTM hidden state: the metrics, the thresholds and the one rule.

Every part of esper that calls a state healthy, warning or critical (the anomaly
detector, the terminal panel, W&B, the logs) goes through :class:`HealthThresholds`
and :func:`health_status`, so they can never disagree.
"""

from __future__ import annotations

import math
import re
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, ClassVar, Final, Literal, Self

from pydantic import AfterValidator, Field, WithJsonSchema, model_validator

from esper_telemetry.contracts._base import (
    Bool,
    Contract,
    FrozenDict,
    Int,
    NonNegativeFloat,
    NonNegativeInt,
    Str,
    StrictFloat,
)

#: Where the figures of one health measurement come from (``LSTMHealthMetrics.scope``).
HealthScope = Literal["process", "all_ranks", "this_rank"]

#: At most this many envs per rank are named in a group call's detail (the worst ones).
WORST_ENVS_PER_RANK: Final = 8

if TYPE_CHECKING:
    from esper_telemetry.contracts.replay import ReplayConsistency

#: How far a replay may differ from its rollout and still be the same computation, by
#: dtype: a few hundred to a few thousand units of rounding of values near 1 (float32's
#: is 1.2e-7), enough for a batched unroll against a step-by-step one, far below what a
#: missed reset or a wrong initial state changes (0.01 to 1 in the trainers measured).
REPLAY_TOLERANCES: Final[dict[str, float]] = {
    "float64": 1e-9,
    "float32": 1e-4,
    "bfloat16": 5e-2,
    "float16": 1e-2,
}

#: The name of the primary state when a trainer names none (``lstm_health=`` alone).
DEFAULT_STATE: Final = "policy"

_STATE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,63}")
# W&B keys of the primary state's detail sit at lstm/layer<N>/ and lstm/outlier_envs: a
# state of that name would land on them (its figures are logged at lstm/<name>/...).
_RESERVED_STATE = re.compile(r"layer[0-9]+|outlier_envs")


def check_state_name(name: str) -> str:
    """``name`` if it can name a recurrent state, else ValueError saying what to change.

    A name is 1 to 64 characters from letters, digits, ``_``, ``.`` and ``-``, not
    starting with ``.`` or ``-`` (a module path such as ``encoder.lstm`` qualifies); it
    becomes part of W&B keys (``lstm/<name>/h_rms``) and a value SQL filters on.
    ``layer<N>`` and ``outlier_envs`` are taken by the primary state's own keys.

    >>> check_state_name("encoder.lstm")
    'encoder.lstm'
    """
    if not isinstance(name, str) or not _STATE_NAME.fullmatch(name):
        raise ValueError(
            "a state name must be 1-64 characters of letters, digits, '_', '.' or '-', not "
            f"starting with '.' or '-', got {name!r:.80}; e.g. 'policy', 'value' or "
            f"{_suggested(name)!r}"
        )
    if _RESERVED_STATE.fullmatch(name):
        raise ValueError(
            f"a state may not be named {name!r}: W&B keys lstm/{name}/... belong to the "
            f"primary state's detail; call it e.g. {'state_' + name!r}"
        )
    return name


def _suggested(name: object) -> str:
    text = re.sub(r"[^A-Za-z0-9_.\-]+", "_", str(name)).lstrip(".-")[:64]
    return text or "policy"


#: The name of a recurrent state: see :func:`check_state_name`.
StateName = Annotated[Str, AfterValidator(check_state_name)]


def _at_most_one(value: float) -> float:
    if value > 1.0:
        raise ValueError(f"a fraction must be in [0, 1] (or NaN), got {value!r}")
    return value


#: A fraction in [0, 1], or NaN (a figure of a broken measurement is data too).
Fraction = Annotated[
    NonNegativeFloat,
    AfterValidator(_at_most_one),
    WithJsonSchema({"type": "number", "minimum": 0, "maximum": 1}),
]

#: |h| above this counts as saturated: h = o * tanh(c), so it needs o > 0.99 and |tanh(c)| > 0.99.
H_SATURATION_BOUND: Final = 0.99

#: |c| above this counts as saturated: there |tanh(c)| > 0.99, so the gradient through
#: tanh, 1 - tanh(c)^2, is below 0.02.
C_SATURATION_BOUND: Final = 2.65


class RecurrentDiagnostics(Contract):
    """Saturation, runaway and dormancy of one recurrent state, from ``diagnostics=True``.

    The four figures cover the whole state (every layer, every env; with a process group,
    every rank). The per-layer tuples come with ``detail=True`` as well, layer 0 first.

    NaN and Inf are data, by one rule: a count compares values with a bound, and a NaN is
    never above or below one, so a NaN is not counted; the growth ratio is a largest
    value, and NaN propagates through it as it does through ``c_max``. So a NaN element
    is not saturated and an Inf one is; a NaN in a layer makes its layer's mean NaN and
    none of its units dormant, while an Inf makes the mean infinite and every finite
    unit of that layer dormant against it; NaN in c makes ``c_growth_ratio`` NaN, Inf
    makes it infinite. A state holding NaN or Inf is CRITICAL through ``has_nan`` /
    ``has_inf`` whatever these figures say.

    >>> d = RecurrentDiagnostics(h_saturation_frac=0.25, c_saturation_frac=0.0,
    ...     c_growth_ratio=0.1, dormant_frac=0.0)
    >>> d.h_saturation_frac, d.h_layer_saturation_frac
    (0.25, None)
    """

    h_saturation_frac: Fraction = Field(
        description=f"Fraction of the elements of h with |h| > {H_SATURATION_BOUND} (h = o * "
        "tanh(c) saturated: gradients through it nearly vanish)."
    )
    c_saturation_frac: Fraction | None = Field(
        description=f"Fraction of the elements of c with |c| > {C_SATURATION_BOUND} (where "
        "|tanh(c)| > 0.99 and its gradient is below 0.02). None without a cell."
    )
    c_growth_ratio: NonNegativeFloat | None = Field(
        description="Largest over the envs of max|c| of the env / (1 + steps since its last "
        "reset). After a reset to zero |c_t| < t, so this stays below 1; a cell that keeps "
        "growing at its largest possible rate tends to 1, a bounded one to 0. None without a "
        "cell or without steps_since_reset."
    )
    dormant_frac: Fraction = Field(
        description="Fraction of the hidden units of h, over all layers, that are tau-dormant "
        "(Sokar et al., ICML 2023): the unit's mean |h| over the batch is at most "
        "HealthThresholds.dormant_tau times its layer's mean over every unit."
    )
    h_layer_saturation_frac: tuple[Fraction, ...] | None = Field(
        default=None, description="h_saturation_frac of each layer (with detail, else None)."
    )
    c_layer_saturation_frac: tuple[Fraction, ...] | None = Field(
        default=None,
        description="c_saturation_frac of each layer (with detail, else None; None without a "
        "cell).",
    )
    layer_dormant_frac: tuple[Fraction, ...] | None = Field(
        default=None,
        description="Fraction of each layer's hidden units that are dormant (with detail, else "
        "None).",
    )

    @model_validator(mode="after")
    def _layers_agree(self) -> Self:
        if (self.h_layer_saturation_frac is None) != (self.layer_dormant_frac is None):
            raise ValueError(
                "h_layer_saturation_frac and layer_dormant_frac come together (detail) or not "
                f"at all, got {_count(self.h_layer_saturation_frac)} and "
                f"{_count(self.layer_dormant_frac)}"
            )
        lengths = {
            len(v)
            for v in (
                self.h_layer_saturation_frac,
                self.c_layer_saturation_frac,
                self.layer_dormant_frac,
            )
            if v is not None
        }
        if len(lengths) > 1:
            raise ValueError(
                f"the per-layer tuples must have one length (the layers), got {sorted(lengths)}"
            )
        if self.c_layer_saturation_frac is not None and self.c_saturation_frac is None:
            raise ValueError("c_layer_saturation_frac needs c_saturation_frac (a cell)")
        if self.c_growth_ratio is not None and self.c_saturation_frac is None:
            raise ValueError(
                "c_growth_ratio needs c_saturation_frac: only a state with a cell has one"
            )
        if (
            self.c_saturation_frac is not None
            and self.h_layer_saturation_frac is not None
            and self.c_layer_saturation_frac is None
        ):
            raise ValueError(
                "with a cell and detail, c_layer_saturation_frac comes with h_layer_saturation_frac"
            )
        return self

    @property
    def has_layers(self) -> bool:
        """True when the per-layer tuples are there (measured with ``detail=True``)."""
        return self.h_layer_saturation_frac is not None


class LSTMHealthMetrics(Contract):
    """Health of one recurrent state (the 12 figures of record TELE-340), and whose.

    An LSTM state ``(h, c)`` fills every figure. A GRU or ``nn.RNN`` state is h alone: its
    ``c_*`` figures are None (all six together), ``has_nan`` and ``has_inf`` describe h,
    and nothing about c is judged (:attr:`has_cell` is False).

    Non-finite values are data: an exploded state gives ``inf`` or ``nan`` here, and it
    is stored and shown as such. Every figure is a norm, an RMS or a largest |x|, so
    none is negative: a negative number or -Infinity is refused, naming the field.

    ``scope`` and ``ranks`` say whose states the figures cover: one process on its own
    (the default), every rank of a process group (``compute_lstm_health(...,
    group=...)``), or one rank of a distributed run measured alone, which is never the
    whole picture.

    >>> m = LSTMHealthMetrics(h_l2_total=2.0, c_l2_total=4.0, h_rms=0.5, c_rms=1.0,
    ...     h_env_rms_mean=0.5, h_env_rms_max=0.6, c_env_rms_mean=1.0, c_env_rms_max=1.2,
    ...     h_max=0.9, c_max=2.5, has_nan=False, has_inf=False)
    >>> m.to_dict()["lstm_h_rms"]
    0.5
    """

    h_l2_total: NonNegativeFloat = Field(description="L2 norm of the whole h tensor.")
    c_l2_total: NonNegativeFloat | None = Field(
        description="L2 norm of the whole c tensor. None without a cell."
    )
    h_rms: NonNegativeFloat = Field(description="RMS of h: its L2 norm / sqrt(number of elements).")
    c_rms: NonNegativeFloat | None = Field(
        description="RMS of c: its L2 norm / sqrt(number of elements). None without a cell."
    )
    h_env_rms_mean: NonNegativeFloat = Field(
        description="Mean over the batch of each env's RMS of h."
    )
    h_env_rms_max: NonNegativeFloat = Field(description="Largest per-env RMS of h.")
    c_env_rms_mean: NonNegativeFloat | None = Field(
        description="Mean over the batch of each env's RMS of c. None without a cell."
    )
    c_env_rms_max: NonNegativeFloat | None = Field(
        description="Largest per-env RMS of c. None without a cell."
    )
    h_max: NonNegativeFloat = Field(description="Largest absolute value in h.")
    c_max: NonNegativeFloat | None = Field(
        description="Largest absolute value in c. None without a cell."
    )
    has_nan: Bool = Field(description="True when h or c holds a NaN.")
    has_inf: Bool = Field(description="True when h or c holds +Inf or -Inf.")
    scope: HealthScope = Field(
        default="process",
        description="Whose states: 'process' (a process on its own, not in a distributed "
        "run of several ranks), 'all_ranks' (the union of every rank's batch in the process "
        "group given, as if concatenated along the batch), 'this_rank' (only this rank's "
        "batch, in a distributed run of several ranks: not the whole picture).",
    )
    ranks: Annotated[Int, Field(ge=1)] = Field(
        default=1,
        description="How many processes' states the figures cover: the group's size for "
        "'all_ranks', else 1.",
    )
    diagnostics: RecurrentDiagnostics | None = Field(
        default=None,
        description="Saturation, runaway and dormancy of the state "
        "(compute_lstm_health(..., diagnostics=True), at DEBUG or when asked); None when not "
        "measured. Not one of the 12 figures.",
    )

    #: The 12 health figures, in field order: every field but ``scope``, ``ranks`` and
    #: ``diagnostics``.
    FIGURES: ClassVar[tuple[str, ...]] = (
        "h_l2_total",
        "c_l2_total",
        "h_rms",
        "c_rms",
        "h_env_rms_mean",
        "h_env_rms_max",
        "c_env_rms_mean",
        "c_env_rms_max",
        "h_max",
        "c_max",
        "has_nan",
        "has_inf",
    )

    #: The six figures of c: all None for a state without a cell (GRU, RNN).
    CELL_FIGURES: ClassVar[tuple[str, ...]] = (
        "c_l2_total",
        "c_rms",
        "c_env_rms_mean",
        "c_env_rms_max",
        "c_max",
    )

    @model_validator(mode="after")
    def _ranks_match_scope(self) -> Self:
        given = [name for name in self.CELL_FIGURES if getattr(self, name) is not None]
        if given and len(given) != len(self.CELL_FIGURES):
            missing = [name for name in self.CELL_FIGURES if name not in given]
            raise ValueError(
                "the c figures come all together (an LSTM state) or not at all (GRU, RNN), "
                f"got {', '.join(given)} without {', '.join(missing)}"
            )
        if self.scope != "all_ranks" and self.ranks != 1:
            raise ValueError(
                f"ranks must be 1 unless scope is 'all_ranks', got ranks={self.ranks!r} "
                f"with scope={self.scope!r}"
            )
        d = self.diagnostics
        if d is not None and (d.c_saturation_frac is not None) != self.has_cell:
            raise ValueError(
                "diagnostics must match the state: c_saturation_frac is given exactly when the "
                f"c figures are, got c_saturation_frac={d.c_saturation_frac!r} with "
                f"c_rms={self.c_rms!r}"
            )
        return self

    @property
    def has_cell(self) -> bool:
        """True for an LSTM state (h and c), False for a GRU or RNN state (h alone)."""
        return self.c_rms is not None

    def to_dict(self) -> dict[str, float | bool | None]:
        """Return the 12 figures under ``lstm_``-prefixed keys (``lstm_h_rms``, ...).

        The ``lstm_c_*`` values are None for a state without a cell.
        """
        return {f"lstm_{name}": getattr(self, name) for name in self.FIGURES}

    def status_of(
        self, tensor: Literal["h", "c"], thresholds: HealthThresholds | None = None
    ) -> HealthStatus | None:
        """The verdict on ``h`` or ``c`` alone, by :meth:`HealthThresholds.status`.

        With :attr:`diagnostics`, a tensor otherwise HEALTHY is a WARNING when
        :meth:`HealthThresholds.diagnostics_warn` says so: h when saturated or dormant, c
        when saturated or running away. None for ``"c"`` of a state without a cell (GRU,
        RNN): there is nothing to judge.
        """
        t = thresholds if thresholds is not None else HealthThresholds()
        if tensor == "h":
            verdict = t.status(self.h_rms, self.h_env_rms_max, self.h_max)
        elif tensor == "c":
            if self.c_rms is None or self.c_env_rms_max is None or self.c_max is None:
                return None
            verdict = t.status(self.c_rms, self.c_env_rms_max, self.c_max)
        else:
            raise ValueError(f"tensor must be 'h' or 'c', got {tensor!r}")
        d = self.diagnostics
        if verdict is HealthStatus.HEALTHY and d is not None and t.diagnostics_warn(d, tensor):
            return HealthStatus.WARNING
        return verdict


class EnvRMS(Contract):
    """One env's RMS of h and of c, named by the rank of the process group that holds it."""

    rank: NonNegativeInt = Field(
        description="The rank in the process group (for torch.distributed.group.WORLD, the "
        "global rank)."
    )
    env: NonNegativeInt = Field(description="The env's index in that rank's batch.")
    h_rms: NonNegativeFloat = Field(description="RMS of h over the env's layers and units.")
    c_rms: NonNegativeFloat | None = Field(
        default=None,
        description="RMS of c over the env's layers and units; None without a cell.",
    )

    def is_outlier(self, thresholds: HealthThresholds | None = None) -> bool:
        """The rule of :meth:`LSTMHealthDetail.outlier_envs`, for this env."""
        return _is_outlier(self.h_rms, self.c_rms, thresholds or HealthThresholds())


class LSTMHealthDetail(Contract):
    """Debug-level detail of one LSTM state, from ``compute_lstm_health(..., detail=True)``.

    With a process group, the per-layer figures cover every rank, the per-env tuples
    only this rank's envs (the batch elements it holds), and ``worst_envs`` names the
    worst envs of every rank, so that an outlier on any rank is seen on all of them.
    """

    h_layer_rms: tuple[NonNegativeFloat, ...] = Field(
        description="RMS of h per layer, layer 0 first (with a group: over every rank's envs)."
    )
    c_layer_rms: tuple[NonNegativeFloat, ...] | None = Field(
        description="RMS of c per layer, layer 0 first (with a group: over every rank's "
        "envs). None without a cell."
    )
    h_env_rms: tuple[NonNegativeFloat, ...] = Field(
        description="RMS of h per env (batch element); with a group, this rank's envs only."
    )
    c_env_rms: tuple[NonNegativeFloat, ...] | None = Field(
        description="RMS of c per env (batch element); with a group, this rank's envs only. "
        "None without a cell."
    )
    worst_envs: tuple[EnvRMS, ...] | None = Field(
        default=None,
        description="With a group: the worst envs of every rank (largest of h and c RMS, "
        f"non-finite first), at most {WORST_ENVS_PER_RANK} per rank, by rank then env. "
        "None without a group.",
    )
    env_counts: tuple[NonNegativeInt, ...] | None = Field(
        default=None,
        description="With a group: how many envs each rank measured, by rank in the group "
        "(a rank with more envs than it names in worst_envs may hold further outliers). "
        "None without a group.",
    )

    @model_validator(mode="after")
    def _group_fields_together(self) -> Self:
        if (self.c_layer_rms is None) != (self.c_env_rms is None):
            raise ValueError(
                "c_layer_rms and c_env_rms come together (an LSTM state) or not at all (GRU, "
                f"RNN), got c_layer_rms={_count(self.c_layer_rms)} and "
                f"c_env_rms={_count(self.c_env_rms)}"
            )
        if (self.worst_envs is None) != (self.env_counts is None):
            raise ValueError(
                "worst_envs and env_counts come together (a group call) or not at all, got "
                f"worst_envs={_shown(self.worst_envs)} and env_counts={self.env_counts!r}"
            )
        counts = self.env_counts or ()
        for e in self.worst_envs or ():
            if e.rank >= len(counts) or e.env >= counts[e.rank]:
                raise ValueError(
                    f"worst_envs names rank {e.rank} env {e.env}, outside env_counts={counts!r}"
                )
        return self

    def outlier_envs(self, thresholds: HealthThresholds | None = None) -> tuple[int, ...]:
        """Indices of the envs whose h or c RMS is non-finite or above ``warning_rms``.

        These are indices into ``h_env_rms``: with a group, this rank's own envs; see
        :meth:`outlier_ranks_envs` for every rank's.
        """
        t = thresholds or HealthThresholds()
        cs: tuple[float | None, ...] = self.c_env_rms or (None,) * len(self.h_env_rms)
        return tuple(
            i
            for i, (h, c) in enumerate(zip(self.h_env_rms, cs, strict=True))
            if _is_outlier(h, c, t)
        )

    def outlier_ranks_envs(
        self, thresholds: HealthThresholds | None = None
    ) -> tuple[tuple[int, int], ...] | None:
        """``(rank, env)`` of every env in ``worst_envs`` that breaks the outlier rule.

        The rule is :meth:`outlier_envs`'s. None without a group. Complete unless
        :meth:`capped_ranks` names a rank.
        """
        if self.worst_envs is None:
            return None
        t = thresholds or HealthThresholds()
        return tuple((e.rank, e.env) for e in self.worst_envs if e.is_outlier(t))

    def capped_ranks(self, thresholds: HealthThresholds | None = None) -> tuple[int, ...]:
        """Ranks that may hold more outlier envs than ``worst_envs`` names.

        A rank is capped when every env it names is an outlier and it measured more envs
        than it names. Empty without a group.
        """
        if self.worst_envs is None or self.env_counts is None:
            return ()
        t = thresholds or HealthThresholds()
        named = [0] * len(self.env_counts)
        outliers = [0] * len(self.env_counts)
        for e in self.worst_envs:
            named[e.rank] += 1
            outliers[e.rank] += e.is_outlier(t)
        return tuple(
            rank
            for rank, count in enumerate(self.env_counts)
            if count > named[rank] and outliers[rank] == named[rank]
        )


class HealthStatus(StrEnum):
    """Verdict on one LSTM state; always shown as a word, never only as a colour."""

    HEALTHY = "HEALTHY"
    WARNING = "WARNING"
    CRITICAL = "CRITICAL"

    @property
    def rank(self) -> int:
        """0 for HEALTHY, 1 for WARNING, 2 for CRITICAL: ``max(..., key=...)`` picks the worst."""
        return _RANK[self]


_RANK: Final = {HealthStatus.HEALTHY: 0, HealthStatus.WARNING: 1, HealthStatus.CRITICAL: 2}

#: The colour every view shows a status in (the word is always shown with it).
STATUS_COLOUR: Final[dict[HealthStatus, str]] = {
    HealthStatus.HEALTHY: "green",
    HealthStatus.WARNING: "yellow",
    HealthStatus.CRITICAL: "red",
}


class HealthThresholds(Contract):
    """The thresholds of the one health rule (the RMS defaults from the seed project).

    All comparisons are strict: an RMS of exactly ``critical_rms`` is not critical, nor a
    saturated fraction of exactly ``h_saturation_frac`` a warning.
    """

    vanishing_rms: StrictFloat = Field(
        default=1e-6, gt=0, description="An RMS below this is a vanishing state (critical)."
    )
    warning_rms: StrictFloat = Field(
        default=5.0, gt=0, description="An RMS above this is a warning."
    )
    critical_rms: StrictFloat = Field(
        default=10.0, gt=0, description="An RMS or per-env RMS above this is an explosion."
    )
    h_saturation_frac: StrictFloat = Field(
        default=0.5,
        ge=0,
        le=1,
        description="A fraction of saturated h elements (|h| > 0.99) above this is a warning. "
        "0.5: a healthy LSTM keeps most of h off the flat ends of tanh; past half, most "
        "gradients through h are nearly gone. 1 turns the check off.",
    )
    c_saturation_frac: StrictFloat = Field(
        default=0.5,
        ge=0,
        le=1,
        description="A fraction of saturated c elements (|c| > 2.65, gradient through tanh "
        "below 0.02) above this is a warning; 0.5 for the reason of h_saturation_frac. 1 "
        "turns the check off.",
    )
    c_runaway_ratio: StrictFloat = Field(
        default=0.5,
        gt=0,
        description="A c_growth_ratio above this is a runaway cell (a warning): c has grown "
        "faster than half the largest possible rate (|c| gains at most 1 a step) since the "
        "env's last reset. After a reset to zero an env needs 2 steps to cross 0.5 at all, "
        "and a cell bounded by C stays below it after 2C steps.",
    )
    dormant_tau: StrictFloat = Field(
        default=0.1,
        ge=0,
        lt=1,
        description="A hidden unit is dormant when its mean |h| over the batch is at most "
        "this times its layer's mean over every unit (tau-dormant, Sokar et al., ICML 2023). "
        "0.1: a unit at a tenth of its layer's average barely moves the next layer.",
    )
    dormant_frac: StrictFloat = Field(
        default=0.5,
        ge=0,
        le=1,
        description="A fraction of dormant hidden units (over all layers) above this is a "
        "warning: the state uses less than half its width. 1 turns the check off.",
    )
    replay_tolerances: FrozenDict[Str, StrictFloat] = Field(
        default_factory=lambda: FrozenDict(REPLAY_TOLERANCES),
        description="Largest |replay - rollout| that is still rounding, by dtype name "
        "(float64, float32, bfloat16, float16); above it, lstm_replay_mismatch (critical). "
        "Dtypes left out keep their defaults.",
    )
    replay_drift: StrictFloat = Field(
        default=1.0,
        gt=0,
        description="A replay drift (RMS of the change of the replayed state over the update, "
        "relative to the state's RMS) above this is lstm_replay_drift (warning): the stored "
        "initial states have gone stale, the state moved by more than its own size in one "
        "update. 1.0: on esper ppo's default setting the drift stayed below 0.96 at the first "
        "update and below 0.55 after it (4 seeds); with the learning rate x30 it reached "
        "1.9-3.2 at the first update.",
    )

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if not (self.vanishing_rms < self.warning_rms < self.critical_rms):
            raise ValueError(
                "thresholds must satisfy vanishing_rms < warning_rms < critical_rms, got "
                f"vanishing_rms={self.vanishing_rms!r}, warning_rms={self.warning_rms!r}, "
                f"critical_rms={self.critical_rms!r}"
            )
        finite = ("vanishing_rms", "warning_rms", "critical_rms", "c_runaway_ratio", "replay_drift")
        for name in finite:
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be finite, got {getattr(self, name)!r}")
        for dtype, tolerance in self.replay_tolerances.items():
            if dtype not in REPLAY_TOLERANCES:
                raise ValueError(
                    f"replay_tolerances: {dtype!r} is not a dtype name; use "
                    f"{', '.join(REPLAY_TOLERANCES)}"
                )
            if not (math.isfinite(tolerance) and tolerance > 0):
                raise ValueError(
                    f"replay_tolerances[{dtype!r}] must be a finite number > 0, got {tolerance!r}"
                )
        return self

    def replay_tolerance(self, dtype: str) -> float:
        """The largest |replay - rollout| that is rounding for ``dtype`` (``"float32"``).

        >>> HealthThresholds().replay_tolerance("float32")
        0.0001
        """
        if dtype not in REPLAY_TOLERANCES:
            raise ValueError(f"dtype must be one of {', '.join(REPLAY_TOLERANCES)}, got {dtype!r}")
        return self.replay_tolerances.get(dtype, REPLAY_TOLERANCES[dtype])

    def is_replay_mismatch(self, replay: ReplayConsistency) -> bool:
        """True when the replay differs from its rollout by more than rounding (its dtype's
        tolerance); an infinite difference (NaN or Inf on one side only) always does."""
        return replay.max_abs_diff > self.replay_tolerance(replay.dtype)

    def is_replay_drifting(self, replay: ReplayConsistency) -> bool:
        """True when the replay's drift is above ``replay_drift`` (NaN is not; no drift
        measured is not)."""
        return replay.drift is not None and replay.drift > self.replay_drift

    def is_exploding(self, rms: float, env_rms_max: float) -> bool:
        """True when the RMS or the largest per-env RMS is above ``critical_rms``."""
        return rms > self.critical_rms or env_rms_max > self.critical_rms

    def is_vanishing(self, rms: float) -> bool:
        """True when the RMS is below ``vanishing_rms`` (NaN is not vanishing)."""
        return rms < self.vanishing_rms

    def is_warning(self, rms: float) -> bool:
        """True when the RMS is above ``warning_rms``."""
        return rms > self.warning_rms

    def is_saturated(self, fraction: float, tensor: Literal["h", "c"] = "h") -> bool:
        """True when a saturated fraction of h or c is above its threshold (NaN is not).

        ``tensor`` picks ``h_saturation_frac`` or ``c_saturation_frac``.
        """
        if tensor == "h":
            return fraction > self.h_saturation_frac
        if tensor == "c":
            return fraction > self.c_saturation_frac
        raise ValueError(f"tensor must be 'h' or 'c', got {tensor!r}")

    def is_running_away(self, growth_ratio: float) -> bool:
        """True when a cell's growth ratio is above ``c_runaway_ratio`` (NaN is not)."""
        return growth_ratio > self.c_runaway_ratio

    def is_dormant(self, dormant_frac: float) -> bool:
        """True when the dormant fraction of units is above ``dormant_frac`` (NaN is not)."""
        return dormant_frac > self.dormant_frac

    def diagnostics_warn(
        self, diagnostics: RecurrentDiagnostics, tensor: Literal["h", "c"] | None = None
    ) -> bool:
        """True when the diagnostics of one state break a threshold: a WARNING.

        ``tensor="h"`` asks about h only (saturated or dormant), ``"c"`` about c only
        (saturated or running away), None about both. A figure that is None is not judged.

        >>> d = RecurrentDiagnostics(h_saturation_frac=0.6, c_saturation_frac=0.0,
        ...     c_growth_ratio=None, dormant_frac=0.0)
        >>> HealthThresholds().diagnostics_warn(d, "h"), HealthThresholds().diagnostics_warn(d, "c")
        (True, False)
        """
        d = diagnostics
        h = self.is_saturated(d.h_saturation_frac, "h") or self.is_dormant(d.dormant_frac)
        c = (d.c_saturation_frac is not None and self.is_saturated(d.c_saturation_frac, "c")) or (
            d.c_growth_ratio is not None and self.is_running_away(d.c_growth_ratio)
        )
        if tensor == "h":
            return h
        if tensor == "c":
            return c
        return h or c

    def status(
        self, rms: float, env_rms_max: float | None = None, max_abs: float | None = None
    ) -> HealthStatus:
        """The one health rule, for one tensor (h or c) or one RMS value.

        CRITICAL when a value is NaN or infinite (max |x| carries the tensor's NaN/Inf:
        NaN propagates through it), when the RMS or the largest per-env RMS is above
        ``critical_rms``, or when the RMS is below ``vanishing_rms``; WARNING when the
        RMS is above ``warning_rms``; HEALTHY otherwise. Comparisons are strict.

        >>> t = HealthThresholds()
        >>> [t.status(v).value for v in (0.5, 5.0, 5.5, 10.0, 10.5, 0.0, float("nan"))]
        ['HEALTHY', 'HEALTHY', 'WARNING', 'WARNING', 'CRITICAL', 'CRITICAL', 'CRITICAL']
        """
        env_max = rms if env_rms_max is None else env_rms_max
        top = rms if max_abs is None else max_abs
        if not (math.isfinite(rms) and math.isfinite(env_max) and math.isfinite(top)):
            return HealthStatus.CRITICAL
        if self.is_exploding(rms, env_max) or self.is_vanishing(rms):
            return HealthStatus.CRITICAL
        if self.is_warning(rms):
            return HealthStatus.WARNING
        return HealthStatus.HEALTHY


def _is_outlier(h_rms: float, c_rms: float | None, t: HealthThresholds) -> bool:
    values = (h_rms,) if c_rms is None else (h_rms, c_rms)
    return not all(math.isfinite(v) for v in values) or t.is_warning(max(values))


def _shown(envs: tuple[EnvRMS, ...] | None) -> str:
    return "None" if envs is None else f"{len(envs)} envs"


def _count(values: tuple[float, ...] | None) -> str:
    return "None" if values is None else f"{len(values)} values"


def health_status(
    metrics: LSTMHealthMetrics, thresholds: HealthThresholds | None = None
) -> HealthStatus:
    """Classify one recurrent state: the worse of :meth:`HealthThresholds.status` on h and c.

    A state without a cell (GRU, RNN) is judged on h alone.

    CRITICAL when the state holds NaN or Inf, when h's or c's RMS or largest per-env
    RMS is above ``critical_rms``, or when an RMS is below ``vanishing_rms``. WARNING
    when an RMS is above ``warning_rms``, or when the metrics carry ``diagnostics`` that
    break a threshold (:meth:`HealthThresholds.diagnostics_warn`: saturated h or c, a
    runaway cell, dormant units). HEALTHY otherwise.

    Raises:
        TypeError: ``metrics`` or ``thresholds`` has the wrong type.

    >>> ok = LSTMHealthMetrics(h_l2_total=1.0, c_l2_total=1.0, h_rms=0.3, c_rms=0.6,
    ...     h_env_rms_mean=0.3, h_env_rms_max=0.4, c_env_rms_mean=0.6, c_env_rms_max=0.7,
    ...     h_max=0.9, c_max=1.5, has_nan=False, has_inf=False)
    >>> health_status(ok)
    <HealthStatus.HEALTHY: 'HEALTHY'>
    >>> health_status(ok.model_copy(update={"c_rms": 5.5}))
    <HealthStatus.WARNING: 'WARNING'>
    """
    if not isinstance(metrics, LSTMHealthMetrics):
        raise TypeError(f"metrics must be LSTMHealthMetrics, got {type(metrics).__name__}")
    t = thresholds if thresholds is not None else HealthThresholds()
    if not isinstance(t, HealthThresholds):
        raise TypeError(f"thresholds must be HealthThresholds, got {type(t).__name__}")
    if metrics.has_nan or metrics.has_inf:
        return HealthStatus.CRITICAL
    verdicts = [v for v in (metrics.status_of("h", t), metrics.status_of("c", t)) if v is not None]
    return max(verdicts, key=lambda s: s.rank)
