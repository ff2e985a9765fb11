"""Secrets never travel: the hub redacts them before any subscriber sees an event.

A value is a secret when its key names one (``key``, ``token``, ``secret``, ``password``,
in any case, at any depth: ``wandb_api_key``, ``HF_TOKEN``, ``db.password``), when it is
a string of 40 hex digits (the shape of a W&B API key), or when it contains the value of
the ``WANDB_API_KEY`` environment variable. Each becomes ``"[REDACTED]"``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

#: What a secret is replaced with.
REDACTED = "[REDACTED]"

_SECRET_KEY = re.compile(r"key|token|secret|password", re.IGNORECASE)
_API_KEY_LIKE = re.compile(r"(?<![0-9a-fA-F])[0-9a-fA-F]{40}(?![0-9a-fA-F])")


def redact_secrets(value: Any, *, key: str = "") -> Any:
    """``value`` with every secret in it replaced by ``REDACTED`` (a copy; input untouched).

    >>> redact_secrets({"lr": 0.001, "wandb_api_key": "abc", "nested": {"hf_token": "x"}})
    {'lr': 0.001, 'wandb_api_key': '[REDACTED]', 'nested': {'hf_token': '[REDACTED]'}}
    """
    api_key = os.environ.get("WANDB_API_KEY", "")
    return _redact(value, key, api_key if len(api_key) >= 8 else None)


def _redact(value: Any, key: str, api_key: str | None) -> Any:
    if _SECRET_KEY.search(key):
        return REDACTED
    if isinstance(value, Mapping):
        return {str(k): _redact(v, str(k), api_key) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact(v, "", api_key) for v in value]
    if isinstance(value, str) and (
        _API_KEY_LIKE.search(value) or (api_key is not None and api_key in value)
    ):
        return REDACTED
    return value
