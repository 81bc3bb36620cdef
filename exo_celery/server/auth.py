"""API keys (`EXO_API_KEY`), namespace scopes, the loopback-only rule and CSRF for the dashboard.

`EXO_API_KEY` is a comma-separated list of keys; a key may be followed by `:` and the namespaces it
may use, separated by `|`:

    EXO_API_KEY="ops-key,team-a-key:alpha|beta"

`ops-key` may use every namespace; `team-a-key` only `alpha` and `beta`. Only SHA-256 digests of the
keys are kept in memory, compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from dataclasses import dataclass, field

from ..errors import ConfigError
from ..settings import Settings
from ..validate import name_problem

SESSION_COOKIE = "exo_session"
CSRF_COOKIE = "exo_csrf"
CSRF_HEADER = "x-exo-csrf"
KEY_HEADER = "x-api-key"


def digest(key: str) -> str:
    """The hex SHA-256 of a key (what the session cookie carries, never the key itself)."""
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class ApiKey:
    """One key, by digest; `namespaces` is None for a key that may use every namespace."""

    digest: str
    namespaces: frozenset[str] | None = None

    def allows(self, namespace: str) -> bool:
        return self.namespaces is None or namespace in self.namespaces


@dataclass(frozen=True)
class Principal:
    """Who is calling: `None` namespaces means all (an unscoped key, or no keys configured)."""

    namespaces: frozenset[str] | None = None
    authenticated: bool = False

    def allows(self, namespace: str) -> bool:
        return self.namespaces is None or namespace in self.namespaces

    def visible(self, known: list[str]) -> list[str]:
        return [n for n in known if self.allows(n)]


@dataclass
class KeyRing:
    """The configured keys; empty means auth is off (and the server binds loopback only)."""

    keys: list[ApiKey] = field(default_factory=list)

    @property
    def enabled(self) -> bool:
        return bool(self.keys)

    @classmethod
    def parse(cls, text: str | None) -> KeyRing:
        """Parse `EXO_API_KEY`; a malformed entry is a ConfigError that never shows the key."""
        ring = cls()
        for position, raw in enumerate((text or "").split(","), start=1):
            entry = raw.strip()
            if not entry:
                continue
            key, sep, scope = entry.partition(":")
            key = key.strip()
            if len(key) < 8:
                raise ConfigError(f"EXO_API_KEY entry {position}: a key must have at least 8 characters")
            namespaces: frozenset[str] | None = None
            if sep:
                names = [n.strip() for n in scope.split("|") if n.strip()]
                if not names:
                    raise ConfigError(f"EXO_API_KEY entry {position}: ':' must be followed by namespaces ('a|b')")
                for name in names:
                    if (problem := name_problem("namespace", name)) is not None:
                        raise ConfigError(f"EXO_API_KEY entry {position}: {problem}")
                namespaces = frozenset(names)
            ring.keys.append(ApiKey(digest(key), namespaces))
        return ring

    @classmethod
    def from_settings(cls, settings: Settings) -> KeyRing:
        """The keys of `EXO_API_KEY` (settings.api_key)."""
        return cls.parse(settings.api_key.get_secret_value() if settings.api_key else None)

    def find(self, key: str | None = None, session: str | None = None) -> ApiKey | None:
        """The key matching a raw `x-api-key` value or a session cookie's digest."""
        wanted = digest(key) if key else session
        if not wanted:
            return None
        found = None
        for candidate in self.keys:  # no early exit: the time taken does not tell which key matched
            if hmac.compare_digest(candidate.digest, wanted):
                found = candidate
        return found


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and 'localhost'."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, ring: KeyRing) -> None:
    """Refuse to listen beyond loopback while no API key is configured."""
    if not ring.enabled and not is_loopback(host):
        raise ConfigError(
            f"refusing to serve on {host!r} without an API key: set EXO_API_KEY (e.g. EXO_API_KEY=<key> or "
            "<key>:<namespace>|<namespace>) or bind 127.0.0.1"
        )


def new_csrf_token() -> str:
    return secrets.token_urlsafe(24)


def host_is_loopback(host_header: str | None) -> bool:
    """The Host header names a loopback address (DNS rebinding guard while auth is off)."""
    if not host_header:
        return False
    host = host_header.rsplit(":", 1)[0] if not host_header.endswith("]") else host_header
    if host_header.startswith("["):
        host = host_header[1:].split("]", 1)[0]
    return is_loopback(host)
