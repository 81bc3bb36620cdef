"""Settings, the embedded key file, redaction, and exospherehost-named signals (no servers needed)."""

from __future__ import annotations

import stat
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from exo_celery import ConfigError, PruneSignal, ReQueueAfterSignal, Settings
from exo_celery.crypto import decrypt_secrets, encrypt_secrets, redact
from exo_celery.settings import load_settings
from exo_celery.signals import as_prune, as_requeue


def test_embedded_default_needs_no_configuration(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / ".exo")
    assert settings.ledger_url == f"sqlite:///{tmp_path / '.exo' / 'ledger.db'}"
    assert settings.broker == "filesystem://"
    options = settings.broker_transport_options()
    assert Path(options["data_folder_in"]).is_dir() and options["polling_interval"] == 0.01


def test_embedded_key_file_is_created_once_with_mode_0600(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    key = settings.fernet_key()
    path = tmp_path / "secrets.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert Settings(home=tmp_path).fernet_key() == key
    token = encrypt_secrets({"api_key": "s3cr3t-value"}, key)
    assert "s3cr3t-value" not in token
    assert decrypt_secrets(token, key) == {"api_key": "s3cr3t-value"}


def test_wrong_key_is_a_config_error_that_shows_no_secret() -> None:
    token = encrypt_secrets({"api_key": "s3cr3t-value"}, Fernet.generate_key())
    with pytest.raises(ConfigError, match="EXO_SECRETS_KEY") as info:
        decrypt_secrets(token, Fernet.generate_key())
    assert "s3cr3t-value" not in str(info.value)


def test_postgres_urls_use_psycopg3_and_bad_settings_are_config_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXO_DATABASE_URL", "postgresql://u@h:5432/db")
    assert load_settings().ledger_url == "postgresql+psycopg://u@h:5432/db"
    with pytest.raises(ConfigError, match="max_countdown"):
        load_settings(max_countdown=-1)
    monkeypatch.setenv("EXO_LEASE_SECONDS", "not-a-number")
    with pytest.raises(ConfigError, match="lease_seconds"):
        load_settings()


def test_redact_replaces_secret_values_everywhere() -> None:
    data = {"a": "x-TOKEN-y", "b": ["TOKEN"], "c": {"TOKEN": 1}, "d": 5}
    assert redact(data, ["TOKEN", ""]) == {"a": "x-***-y", "b": ["***"], "c": {"***": 1}, "d": 5}


def test_signals_and_their_exosphere_namesakes() -> None:
    with pytest.raises(ValueError, match="greater than 0"):
        ReQueueAfterSignal(timedelta(0))
    assert as_prune(PruneSignal({"why": "x"})) == {"why": "x"}
    assert as_requeue(ReQueueAfterSignal(timedelta(seconds=2))) == timedelta(seconds=2)

    class PruneSignal_(Exception):  # an exospherehost-style class with the same name and fields
        def __init__(self, data: dict) -> None:
            self.data = data

    PruneSignal_.__name__ = "PruneSignal"

    class ReQueueAfterSignal_(Exception):
        def __init__(self, delay: timedelta) -> None:
            self.delay = delay

    ReQueueAfterSignal_.__name__ = "ReQueueAfterSignal"
    assert as_prune(PruneSignal_({"k": "v"})) == {"k": "v"}
    assert as_requeue(ReQueueAfterSignal_(timedelta(milliseconds=5))) == timedelta(milliseconds=5)
    assert as_prune(ValueError("x")) is None and as_requeue(ValueError("x")) is None
