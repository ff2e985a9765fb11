"""Secrets never travel: the hub redacts them before any subscriber sees an event.

One rule (:func:`redact_secrets`) for every free-text field the contracts mark
(``SecretText``) and every config; where a string cannot be redacted, because it names
something (a run id, a metric name), it is refused where it enters, by the same shapes
(:func:`secret_shape_in`, :func:`names_a_secret`).
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Mapping
from typing import Any, NamedTuple

#: What a secret is replaced with.
REDACTED = "[REDACTED]"

#: A key containing one of these words (any case) names a secret.
SECRET_KEY_WORDS = (
    "key",
    "token",
    "secret",
    "passw",
    "passphrase",
    "passcode",
    "pwd",
    "auth",  # not "author", "authority"; still "authorization", "oauth"
    "credential",
    "bearer",
    "cookie",
    "jwt",
)
#: A key one of whose words (split at non-letters and camelCase) is one of these.
SECRET_KEY_PARTS = frozenset({"pass", "pw", "cred", "creds", "dsn", "otp", "pat"})

_SECRET_WORD = re.compile(
    "|".join(r"auth(?!or(?!i[sz]))" if w == "auth" else re.escape(w) for w in SECRET_KEY_WORDS),
    re.IGNORECASE,
)
_WORDS = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")


class Shape(NamedTuple):
    """A well-known token shape: what it is (for messages) and how to find it."""

    what: str
    pattern: re.Pattern[str]
    lowered: bool = False
    """Searched in the lower-cased text (a case-insensitive shape, written in lower case:
    far faster than ``re.IGNORECASE``)."""


#: Strings holding one of these are secrets. Each pattern starts with a literal where it
#: can (a boundary check comes after it), so most strings are scanned in microseconds.
SECRET_SHAPES: tuple[Shape, ...] = (
    Shape("a W&B API key (wandb_v1_...)", re.compile(r"wandb_v\d+_[A-Za-z0-9_]{8,}")),
    Shape(
        "40 or more hex digits (the shape of a W&B API key)",
        re.compile(r"(?<![0-9A-Fa-f])[0-9A-Fa-f]{40,}(?![0-9A-Fa-f])"),
    ),
    Shape("a Hugging Face token (hf_...)", re.compile(r"hf_(?<![A-Za-z0-9]hf_)[A-Za-z0-9]{20,}")),
    Shape(
        "a GitHub token (ghp_..., github_pat_...)",
        re.compile(r"g(?:h[pousr]_[A-Za-z0-9]{20,}|ithub_pat_[A-Za-z0-9_]{20,})"),
    ),
    Shape("an API key (sk-...)", re.compile(r"sk-(?<![A-Za-z0-9]sk-)[A-Za-z0-9_-]{16,}")),
    Shape("an API key (sk_live_...)", re.compile(r"[spr]k_(?:live|test)_[A-Za-z0-9]{10,}")),
    Shape(
        "an AWS access key id (AKIA...)",
        re.compile(
            r"A(?:KIA|SIA|BIA|CCA|GPA|IDA|IPA|NPA|NVA|ROA|PKA|SCA)(?<![A-Z0-9]....)"
            r"[A-Z0-9]{16}(?![A-Z0-9])"
        ),
    ),
    Shape("a Google API key (AIza...)", re.compile(r"AIza[0-9A-Za-z_-]{35}")),
    Shape("a Slack token (xoxb-...)", re.compile(r"xox[abeoprs]-[A-Za-z0-9-]{10,}")),
    Shape("a JSON Web Token (eyJ...)", re.compile(r"eyJ[A-Za-z0-9_-]{8,}")),
    Shape(
        "an HTTP credential (Authorization: ..., Bearer ...)",
        re.compile(r"bearer\s+[a-z0-9._~+/=-]{8,}|authorization\s*[:=]\s*\S"),
        lowered=True,
    ),
    Shape(
        "an HTTP credential (Basic ...)",
        # base64 with a digit, + / = or three capitals: not "Basic settings"
        re.compile(
            r"Basic\s+(?=[A-Za-z0-9+/]*(?:[0-9+/=]|[A-Z][a-z]*[A-Z][a-z]*[A-Z]))[A-Za-z0-9+/]{8,}"
        ),
    ),
    Shape(
        "a private key (-----BEGIN ... PRIVATE KEY-----)",
        re.compile(r"-----BEGIN[A-Z ]*PRIVATE KEY"),
    ),
    Shape(
        "a secret assignment (password=..., api_key: ...)",
        re.compile(
            r"(?:passw(?:or)?d|pwd|secret|token|api[_-]?key|access[_-]?key|private[_-]?key"
            r"|credentials?)\s*[:=]\s*['\"]?[^\s'\",;]{4,}"
        ),
        lowered=True,
    ),
    Shape(
        "a URL with a password (scheme://user:password@host)",
        re.compile(r"://[^\s/:@]*:[^\s/@]+@"),
    ),
)

_MIN_ENV_SECRET = 8
_PLAIN_WORD = re.compile(r"[a-z]+")


def redact_secrets(value: Any, *, key: str = "") -> Any:
    """``value`` with every secret in it replaced by ``REDACTED`` (a copy; input untouched).

    ``key`` is the name ``value`` is stored under, if any.

    A value is a secret, and becomes ``"[REDACTED]"`` (a whole string, never a part of it),
    when any of these holds:

    - **its key names a secret**, at any depth, in any case: the key contains one of
      ``SECRET_KEY_WORDS`` (``key``, ``token``, ``secret``, ``passw``, ``passphrase``,
      ``passcode``, ``pwd``, ``auth`` but not ``author``/``authority``, ``credential``,
      ``bearer``, ``cookie``, ``jwt``), or one of its words (split at non-letters and at
      camelCase) is one of ``SECRET_KEY_PARTS`` (``pass``, ``pw``, ``cred``, ``creds``,
      ``dsn``, ``otp``, ``pat``). So ``wandb_api_key``, ``HF_TOKEN``, ``db.password``,
      ``Authorization``, ``passwd``, ``pwd``, ``credentials``, ``private_key``,
      ``access_key``, ``session_cookie``, ``dbPass`` are secrets; so is ``keyboard`` (it
      contains ``key``: the rule errs on the side of hiding); ``author``, ``passes``,
      ``credit`` and ``patience`` are not;
    - **it is a string holding a well-known token shape** (``SECRET_SHAPES``): a W&B API key
      (``wandb_v1_...``, or 40 or more hex digits: the legacy key, also any SHA-1 such as a
      git commit), a Hugging Face token (``hf_...``), a GitHub token (``ghp_``, ``gho_``,
      ``ghu_``, ``ghs_``, ``ghr_``, ``github_pat_``), an OpenAI/Anthropic-style key
      (``sk-...``), a Stripe-style key (``sk_live_...``), an AWS access key id
      (``AKIA...``), a Google API key (``AIza...``), a Slack token (``xoxb-...``), a JSON
      Web Token (``eyJ...``), an HTTP credential (``Authorization: ...``, ``Bearer ...``,
      ``Basic`` and base64), a PEM private key, an assignment in text (``password=...``,
      ``HF_TOKEN: ...``, ``api_key=...``, 4 characters or more), or a URL with a password
      (``scheme://user:password@host``);
    - **it contains the value of a secret environment variable**: ``WANDB_API_KEY`` (8
      characters or more), and any variable whose name names a secret (as keys do:
      ``HF_TOKEN``, ``AWS_SECRET_ACCESS_KEY``, ``OPENAI_API_KEY``...) whose value has 8
      characters or more, is not a path (``/...``) and is not a plain lowercase word (so
      ``TOKENIZERS_PARALLELISM=false`` hides nothing).

    A mapping key that is itself a secret (holds a shape or a secret environment value) is
    replaced by the marker too (``[REDACTED]``, ``[REDACTED]#2``...), its value with it.
    Numbers under a harmless key are never secrets. Other strings the hub does not carry
    through this function are refused where they enter instead: a run id that
    :func:`secret_shape_in` recognises (``TelemetryHub``), and a metric name that names or
    holds a secret (``emit_ppo_update_event``). A subscriber's exception text goes through
    this rule into ``last_error`` and the hub's log line, and a traceback that would
    repeat a secret is not logged.

    >>> redact_secrets({"lr": 0.001, "wandb_api_key": "abc", "nested": {"hf_token": "x"}})
    {'lr': 0.001, 'wandb_api_key': '[REDACTED]', 'nested': {'hf_token': '[REDACTED]'}}
    >>> redact_secrets(["ok", "Authorization: Bearer abc.def.ghi-123"])
    ['ok', '[REDACTED]']
    """
    return _redact(value, key, _env_secrets())


@functools.lru_cache(maxsize=4096)
def names_a_secret(key: str) -> str | None:
    """The secret word ``key`` contains (``"token"`` for ``HF_TOKEN``), or None."""
    found = _SECRET_WORD.search(key)
    if found is not None:
        return found.group(0).lower()
    words: list[str] = _WORDS.findall(key)
    return next((w.lower() for w in words if w.lower() in SECRET_KEY_PARTS), None)


def secret_shape_in(text: str, *, environment: bool = True) -> str | None:
    """What secret ``text`` holds ("a GitHub token (ghp_..., github_pat_...)"), or None.

    ``environment=False`` looks for the shapes only, not for the values of secret
    environment variables (a pure function of ``text``, so its answer can be cached).
    Never returns the secret itself, so the answer can go into an error message.
    """
    return _shape_in(text, _env_secrets() if environment else ())


def _shape_in(text: str, env_secrets: tuple[str, ...]) -> str | None:
    lowered = text.lower()
    for shape in SECRET_SHAPES:
        if shape.pattern.search(lowered if shape.lowered else text):
            return shape.what
    if any(s in text for s in env_secrets):
        return "the value of a secret environment variable"
    return None


def _env_secrets() -> tuple[str, ...]:
    """The values of the environment variables that hold secrets (see redact_secrets)."""
    global _env_cache  # one memo, replaced whole (atomic under the GIL)
    # os.environ decodes every name and value on each pass (~50 us); its raw dict of
    # bytes compares in about a microsecond, so the scan runs only when something changed.
    raw = getattr(os.environ, "_data", None)
    snapshot = tuple(raw.items()) if isinstance(raw, dict) else None
    cached = _env_cache
    if snapshot is not None and cached is not None and cached[0] == snapshot:
        return cached[1]
    found = []
    for name, value in os.environ.items():
        if len(value) < _MIN_ENV_SECRET:
            continue
        if name == "WANDB_API_KEY" or (
            names_a_secret(name) and not value.startswith("/") and not _PLAIN_WORD.fullmatch(value)
        ):
            found.append(value)
    _env_cache = (snapshot, tuple(found))
    return _env_cache[1]


_env_cache: tuple[object, tuple[str, ...]] | None = None


def _redact(value: Any, key: str, env_secrets: tuple[str, ...]) -> Any:
    if names_a_secret(key):
        return REDACTED
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            name = str(k)
            if _shape_in(name, env_secrets) is not None:
                name = _free_marker(out)
                out[name] = REDACTED
            else:
                out[name] = _redact(v, name, env_secrets)
        return out
    if isinstance(value, list | tuple):
        return [_redact(v, "", env_secrets) for v in value]
    if isinstance(value, str) and _shape_in(value, env_secrets) is not None:
        return REDACTED
    return value


def _free_marker(taken: Mapping[str, Any]) -> str:
    """``[REDACTED]``, or ``[REDACTED]#2``, ``#3``... when several keys were secrets."""
    name, n = REDACTED, 1
    while name in taken:
        n += 1
        name = f"{REDACTED}#{n}"
    return name


@functools.lru_cache(maxsize=4096)
def secret_key_problem(key: str, field: str) -> str | None:
    """Why ``key`` cannot be a metric name in ``field`` (``metrics``, ``extra``,
    ``summary``), or None. Metric names reach every backend (W&B's keys, the logs), so
    one that names or holds a secret is refused, not renamed. Cached: an update's keys
    are the same every update, so checking them again costs a dictionary lookup."""
    shape = secret_shape_in(key, environment=False)
    if shape is not None:  # the message must not repeat the key
        return (
            f"{field}: a key holds {shape}; metric names reach every backend, so it was "
            "refused: keep secrets out of metric names"
        )
    word = names_a_secret(key)
    if word is not None:
        return (
            f"{field}: {key!r} names a secret ({word!r}); metric names reach every backend, "
            "so names that look like secrets are refused: rename it"
        )
    return None
