"""Secrets at rest (Fernet) and their redaction from any text shown to people."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

from cryptography.fernet import Fernet, InvalidToken

from .errors import ConfigError

REDACTED = "***"


def encrypt_secrets(secrets: dict[str, str], key: bytes) -> str:
    """The secrets dict as one Fernet token."""
    return Fernet(key).encrypt(json.dumps(secrets).encode()).decode()


def decrypt_secrets(token: str, key: bytes) -> dict[str, str]:
    """The secrets dict back; a wrong key is a ConfigError that shows no secret."""
    try:
        result: dict[str, str] = json.loads(Fernet(key).decrypt(token.encode()))
    except (InvalidToken, ValueError) as exc:
        raise ConfigError(
            "graph secrets cannot be decrypted with this EXO_SECRETS_KEY (every process must share the same key)"
        ) from exc
    return result


def key_fingerprint(key: bytes) -> str:
    """A fingerprint of the secrets key, safe to store: HMAC-SHA256 of a constant under the key (never the key)."""
    return hmac.new(key, b"exo_celery secrets key fingerprint v1", hashlib.sha256).hexdigest()


@lru_cache(maxsize=4096)
def escaped_forms(secret: str) -> frozenset[str]:
    """`secret` as it appears in text: itself, and escaped by repr(), ascii() or json.dumps() (without quotes).

    A secret holding a newline, a quote or a non-ASCII character is written differently by
    `KeyError(secret)`, `f"{secret!r}"` or a JSON dump; each of those spellings is a leak too.
    """
    forms = {secret}
    for quoted in (repr(secret), ascii(secret), json.dumps(secret), json.dumps(secret, ensure_ascii=False)):
        forms.add(quoted[1:-1])
    forms.add(repr(secret + "'\"")[1:-4])  # inside a longer repr holding both quote kinds (' escaped)
    return frozenset(f for f in forms if f)


@lru_cache(maxsize=1024)
def _needles(secret_values: tuple[str, ...]) -> tuple[str, ...]:
    """Every spelling of these secrets, longest first (so a longer one is replaced before its parts)."""
    found = {form for s in secret_values if s for form in escaped_forms(s)}
    return tuple(sorted(found, key=len, reverse=True))


def redact(value: Any, secret_values: Iterable[str]) -> Any:
    """`value` (text, or JSON-like data) with every secret value, plain or escaped, replaced by ***."""
    needles = _needles(tuple(secret_values))
    if not needles:
        return value

    def scrub(item: Any) -> Any:
        if isinstance(item, str):
            for needle in needles:
                if needle in item:
                    item = item.replace(needle, REDACTED)
            return item
        if isinstance(item, dict):
            return {scrub(k): scrub(v) for k, v in item.items()}
        if isinstance(item, (list, tuple)):
            return [scrub(v) for v in item]
        return item

    return scrub(value)
