"""Settings: arguments first, then `EXO_*` environment variables, then embedded defaults.

With nothing configured, the ledger is SQLite and the broker is kombu's
filesystem transport, both under `EXO_HOME` (default `./.exo`), so a first run
needs no server.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .errors import ConfigError


class Settings(BaseSettings):
    """Every knob exo_celery reads; see `config/README.md` for the reference."""

    model_config = SettingsConfigDict(env_prefix="EXO_", extra="ignore")

    home: Path = Field(Path(".exo"), description="folder for the embedded ledger, broker and key")
    database_url: str | None = Field(None, description="SQLAlchemy URL of the ledger")
    broker_url: str | None = Field(None, description="Celery broker URL")
    secrets_key: SecretStr | None = Field(None, description="Fernet key encrypting graph secrets")
    queue_prefix: str = Field("exo", description="queues are named <prefix>.<namespace>.<NodeName>")
    max_countdown: float = Field(300.0, gt=0, description="longer delays wait in the ledger (s)")
    lease_seconds: float = Field(30.0, gt=0, description="a dead worker's state is re-sent after this (s)")
    sweep_interval: float = Field(5.0, gt=0, description="beat's sweep period (s)")
    retention_seconds: float = Field(7 * 24 * 3600.0, gt=0, description="finished runs kept this long (s)")
    max_output_bytes: int = Field(1_048_576, gt=0, description="largest JSON a node may return")
    max_input_bytes: int = Field(8_388_608, gt=0, description="largest JSON of a state's rendered inputs")
    embedded_polling_interval: float = Field(0.01, gt=0, description="filesystem broker poll (s)")
    api_key: SecretStr | None = Field(None, description="API keys of `exo-celery serve` (key[:ns|ns],...)")
    flower_url: str | None = Field(None, description="Flower's URL, linked from the dashboard")
    serve_validation_timeout: float = Field(10.0, ge=0, description="HTTP upsert's wait for node registration (s)")

    @field_validator("queue_prefix")
    @classmethod
    def _prefix_has_no_dot_edges(cls, value: str) -> str:
        if not value or value.startswith(".") or value.endswith("."):
            raise ConfigError("EXO_QUEUE_PREFIX must be a non-empty name without leading/trailing '.'")
        return value

    @property
    def home_dir(self) -> Path:
        """The embedded folder as an absolute path (created on first use)."""
        path = self.home.expanduser().resolve()
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def ledger_url(self) -> str:
        """The ledger's SQLAlchemy URL; psycopg 3 is chosen for plain PostgreSQL URLs."""
        url = self.database_url or f"sqlite:///{self.home_dir / 'ledger.db'}"
        if url.startswith("postgresql://") or url.startswith("postgres://"):
            url = "postgresql+psycopg://" + url.split("://", 1)[1]
        return url

    @property
    def broker(self) -> str:
        """The Celery broker URL (the filesystem transport when unset)."""
        return self.broker_url or "filesystem://"

    @property
    def is_embedded_broker(self) -> bool:
        return self.broker.startswith("filesystem://")

    def broker_transport_options(self) -> dict[str, Any]:
        """Transport options: folders for the embedded broker, a long visibility timeout for Redis."""
        if self.is_embedded_broker:
            folder = self.home_dir / "broker"
            for sub in ("queue", "control"):
                (folder / sub).mkdir(parents=True, exist_ok=True)
            return {
                "data_folder_in": str(folder / "queue"),
                "data_folder_out": str(folder / "queue"),
                "control_folder": str(folder / "control"),
                "store_processed": False,
                "polling_interval": self.embedded_polling_interval,
            }
        if self.broker.startswith(("redis://", "rediss://")):
            # Countdowns never exceed max_countdown, so they cannot outlive this.
            return {"visibility_timeout": max(3600.0, self.max_countdown * 4)}
        return {}

    def fernet_key(self) -> bytes:
        """The secrets key: `EXO_SECRETS_KEY`, else a key file kept (mode 0600) under `EXO_HOME`."""
        if self.secrets_key is not None:
            return self.secrets_key.get_secret_value().encode()
        from cryptography.fernet import Fernet

        path = self.home_dir / "secrets.key"
        if not path.exists():
            key = Fernet.generate_key()
            try:
                fd = path.open("xb")  # exclusive: two processes racing keep one key
            except FileExistsError:
                return path.read_bytes().strip()
            with fd:
                path.chmod(0o600)
                fd.write(key)
            return key
        return path.read_bytes().strip()


def load_settings(**overrides: Any) -> Settings:
    """Settings from keyword overrides (None means unset), then the environment."""
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(**given)
    except Exception as exc:  # pydantic's ValidationError, reworded
        raise ConfigError(f"invalid exo_celery settings: {exc}") from exc
