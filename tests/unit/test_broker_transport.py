"""Which kombu transport each broker URL gets, and what the sweep's queue-depth check sees of it."""

from __future__ import annotations

import ssl

import pytest
from kombu.transport import redis

from exo_celery.celery_app import make_app
from exo_celery.poison import RedisTransport
from exo_celery.settings import load_settings


@pytest.mark.parametrize("url", ["redis://:pw@127.0.0.1:6399/0", "rediss://:pw@127.0.0.1:6399/0"])
def test_redis_and_rediss_urls_get_exo_celerys_redis_transport(url: str) -> None:
    app = make_app(load_settings(broker_url=url, database_url="sqlite:///unused.db"))
    assert app.conf.broker_transport == "exo_celery.poison:RedisTransport"  # malformed messages are dropped
    conn = app.connection_for_write()  # lazy: nothing connects
    try:
        assert isinstance(conn.transport, RedisTransport)
        # beat.broker_load counts a queue's messages with LLEN and kombu's unacked hash for this driver type
        assert conn.transport.driver_type == "redis"
        if url.startswith("rediss://"):
            # TLS as kombu's own transport gives rediss:// without options: an SSL connection class
            assert conn.ssl == {"ssl_cert_reqs": ssl.CERT_NONE}
            assert conn.transport.Channel.connection_class_ssl is redis.redis.SSLConnection
        else:
            assert not conn.ssl
    finally:
        conn.release()


def test_the_worker_consumer_reconnects_quickly_and_without_mingle() -> None:
    from exo_celery.consumer import RECONNECT

    app = make_app(load_settings(broker_url="redis://127.0.0.1:6399/0", database_url="sqlite:///unused.db"))
    assert app.conf.worker_consumer == "exo_celery.consumer:Consumer"
    assert RECONNECT["interval_max"] <= 1.0
