"""Secrets at rest (Fernet) and their redaction from any text shown to people."""

from __future__ import annotations

import json
from collections.abc import Iterable
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


def redact(value: Any, secret_values: Iterable[str]) -> Any:
    """`value` (text, or JSON-like data) with every secret value replaced by ***."""
    needles = sorted((s for s in secret_values if s), key=len, reverse=True)
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
