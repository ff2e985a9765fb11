"""The names the analytics side offers: its tables and its output formats (no imports)."""

from __future__ import annotations

from typing import Final, Literal, get_args

#: How :func:`~esper_telemetry.analytics.render_result` writes rows: ``table`` aligned
#: text (all rows at once), ``csv`` with a header row, ``json`` one strict JSON object per row.
QueryFormat = Literal["table", "csv", "json"]
QUERY_FORMATS: Final[tuple[QueryFormat, ...]] = get_args(QueryFormat)

#: The tables :func:`~esper_telemetry.analytics.connect` creates, which SQL reads.
TABLES: Final = ("events", "ppo_updates", "recurrent_health", "anomalies", "level_changes")
