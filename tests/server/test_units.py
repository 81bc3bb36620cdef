"""Pure parts of the server: EXO_API_KEY parsing, the bind rule, the DAG's layout and labels."""

from __future__ import annotations

import pytest

from exo_celery.errors import ConfigError
from exo_celery.server.auth import KeyRing, check_bind, digest, host_is_loopback
from exo_celery.server.dag import count_label, layers, render_svg, status_class


def test_keys_parse_with_optional_namespace_scopes() -> None:
    ring = KeyRing.parse(" admin-key-1 , team-key-22:alpha|beta ,")
    assert ring.enabled and len(ring.keys) == 2
    admin, team = ring.find(key="admin-key-1"), ring.find(key="team-key-22")
    assert admin is not None and admin.namespaces is None and admin.allows("anything")
    assert team is not None and team.allows("alpha") and not team.allows("gamma")
    assert ring.find(key="nope-nope-nope") is None and ring.find() is None
    assert ring.find(session=digest("team-key-22")) == team
    assert "admin-key-1" not in repr(ring)  # only digests are kept


@pytest.mark.parametrize("text", ["short", "long-enough-key:", "long-enough-key:bad ns"])
def test_bad_keys_are_a_config_error_that_never_shows_the_key(text: str) -> None:
    with pytest.raises(ConfigError) as caught:
        KeyRing.parse(text)
    assert text.split(":")[0] not in str(caught.value)


def test_without_keys_only_loopback_may_be_bound() -> None:
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        check_bind(host, KeyRing())
    with pytest.raises(ConfigError, match=r"refusing to serve on '0\.0\.0\.0' without an API key"):
        check_bind("0.0.0.0", KeyRing())
    check_bind("0.0.0.0", KeyRing.parse("a-long-key-123"))
    assert host_is_loopback("127.0.0.1:8000") and host_is_loopback("[::1]:80") and host_is_loopback("localhost")
    assert not host_is_loopback("evil.example:8000") and not host_is_loopback(None)


FANOUT = {
    "nodes": [
        {"identifier": "split", "node_name": "Split", "next_nodes": ["up"]},
        {"identifier": "up", "node_name": "Upper", "next_nodes": ["tail"]},
        {"identifier": "tail", "node_name": "Echo"},
        {"identifier": "collect", "node_name": "Collect", "unites": {"identifier": "split"}},
    ]
}


def test_a_uniting_node_is_drawn_below_the_region_it_unites() -> None:
    assert layers(FANOUT) == {"split": 0, "up": 1, "tail": 2, "collect": 3}


def test_a_wide_fan_out_is_one_box_with_its_counts() -> None:
    counts = {"SUCCESS": 4812, "QUEUED": 185, "ERRORED": 3, "RETRY_CREATED": 7}
    assert count_label(counts) == "4,812 / 5,000 SUCCESS, 3 ERRORED, 185 QUEUED, 7 retried"
    assert status_class(counts) == "errored" and status_class({"SUCCESS": 2}) == "success"
    assert status_class({"QUEUED": 1, "SUCCESS": 1}) == "running" and status_class({}) == "idle"
    svg = render_svg(FANOUT, {"up": {"counts": counts}}, "/n/")
    assert svg.count('class="node ') == 4 and "4,812 / 5,000 SUCCESS" in svg and 'href="/n/up"' in svg
    assert render_svg({"nodes": [{"identifier": "<x>", "node_name": "N"}]}, {}).count("<x>") == 0  # escaped
