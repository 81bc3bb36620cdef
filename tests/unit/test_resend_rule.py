"""The sweep's rule for re-sending never-claimed states (beat.likely_lost, issue 13 item 11)."""

from __future__ import annotations

import base64
import json

from exo_celery.beat import QueueLook, _state_of, likely_lost


def test_a_backlog_the_broker_still_holds_is_not_resent() -> None:
    before = QueueLook(lost=0, queued=9_990)
    assert likely_lost(10_000, 9_992, 8, before) == 0


def test_a_shortfall_is_resent_only_when_seen_twice_without_queue_growth() -> None:
    assert likely_lost(100, 40, 0, None) == 0  # first sight: a worker may still be publishing
    assert likely_lost(100, 40, 0, QueueLook(lost=60, queued=40)) == 60
    assert likely_lost(100, 40, 0, QueueLook(lost=20, queued=80)) == 20  # only what both sweeps saw missing
    assert likely_lost(100, 90, 0, QueueLook(lost=60, queued=40)) == 0  # the queue grew: publishing goes on
    assert likely_lost(100, 90, 0, QueueLook(lost=60, queued=40, resent=60)) == 10  # it grew by our re-sends


def test_after_a_broker_restart_the_shortfall_is_resent_at_once() -> None:
    # The broker restarted (Redis run_id changed) or was unreachable at the previous sweep.
    assert likely_lost(80, 0, 0, QueueLook(lost=0, queued=75), restarted=True) == 80
    assert likely_lost(80, 0, 0, None, restarted=True) == 80
    assert likely_lost(80, 70, 10, None, restarted=True) == 0  # a broker that kept its messages (persistence)


def test_a_shortfall_must_last_a_lease() -> None:
    # A worker publishing 10,000 states in pipelines of 1,000 can leave the queue flat over a sweep.
    before = QueueLook(lost=9_000, queued=1_000)
    assert likely_lost(10_000, 1_000, 0, before, seen_for=1.0, lease=2.0) == 0
    assert likely_lost(10_000, 1_000, 0, before, seen_for=2.0, lease=2.0) == 9_000


def test_the_state_of_a_kombu_redis_message_is_its_first_argument() -> None:
    body = base64.b64encode(json.dumps([["a" * 32, "b" * 32], {}, {}]).encode()).decode()
    raw = json.dumps({"body": body, "properties": {"body_encoding": "base64"}, "headers": {}})
    assert _state_of(raw) == "a" * 32
    assert _state_of(None) is None
    assert _state_of("not json") is None
    assert _state_of(json.dumps({"body": "e30=", "properties": {"body_encoding": "base64"}})) is None
