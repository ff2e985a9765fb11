"""Small closed vocabularies shared by the backends, the run wiring and the command line."""

from __future__ import annotations

from typing import Final, Literal, get_args

#: How a W&B run is written: to W&B's servers, to disk only, or not at all.
WandbMode = Literal["offline", "online", "disabled"]

#: The values of :data:`WandbMode`, in order.
WANDB_MODES: Final[tuple[str, ...]] = get_args(WandbMode)
