"""Facts about the ledger itself (`exo_meta`): the fingerprint of the secrets key every process must share."""

from __future__ import annotations

from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError

from ..crypto import decrypt_secrets, key_fingerprint
from ..errors import ConfigError
from .clock import ledger_now
from .db import get_engine
from .tables import graphs, meta

FINGERPRINT = "secrets_key_fingerprint"
WRONG_KEY = (
    "graph secrets cannot be decrypted with this EXO_SECRETS_KEY (every process must share the same key): "
    "its fingerprint differs from the one the ledger keeps"
)


def read_meta(url: str, key: str) -> str | None:
    """One value of `exo_meta`, or None."""
    with get_engine(url).connect() as conn:
        value: str | None = conn.execute(select(meta.c.value).where(meta.c.key == key)).scalar()
        return value


def check_secrets_key(url: str, key: bytes) -> None:
    """Raise ConfigError unless `key` is the ledger's secrets key; the first process to ask records it.

    The ledger keeps only an HMAC of a constant under the key (`crypto.key_fingerprint`). A ledger
    that already holds graphs but no fingerprint (made before there was one) takes the key only if
    it decrypts the newest graph's secrets, so a wrong key cannot claim it first.
    """
    fingerprint = key_fingerprint(key)
    stored = read_meta(url, FINGERPRINT)
    if stored is None:
        with get_engine(url).connect() as conn:
            cipher = conn.execute(
                select(graphs.c.secrets_cipher).order_by(graphs.c.updated_at.desc()).limit(1)
            ).scalar()
        if cipher is not None:
            try:
                decrypt_secrets(cipher, key)
            except ConfigError:
                raise ConfigError(
                    "graph secrets cannot be decrypted with this EXO_SECRETS_KEY (every process must share the "
                    "same key): the newest graph in the ledger was encrypted with another one"
                ) from None
        try:
            with get_engine(url).begin() as conn:
                conn.execute(insert(meta).values(key=FINGERPRINT, value=fingerprint, updated_at=ledger_now()))
            return
        except IntegrityError:  # another process recorded it first: compare with theirs
            stored = read_meta(url, FINGERPRINT)
    if stored != fingerprint:
        raise ConfigError(WRONG_KEY)
