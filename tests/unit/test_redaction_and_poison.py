"""Pure checks behind issue 13 (part A): escaped secret spellings, message shapes, the name and text rules."""

from __future__ import annotations

import json
import logging
import uuid

import pytest

from exo_celery.crypto import key_fingerprint, redact
from exo_celery.poison import envelope_problem, task_args_problem
from exo_celery.validate import name_problem, text_problem

SECRET = "line1\nline2-'q\"é"


@pytest.mark.parametrize(
    "text",
    [
        str(KeyError(SECRET)),
        repr(SECRET),
        ascii(SECRET),
        json.dumps(SECRET),
        json.dumps(SECRET, ensure_ascii=False),
        repr(["x", SECRET, "'\""]),
        f"plain {SECRET} text",
    ],
)
def test_every_spelling_of_a_secret_is_redacted(text: str) -> None:
    assert "line2" not in redact(text, [SECRET])


def test_the_key_fingerprint_is_stable_and_not_the_key() -> None:
    key = b"jYH2Qn7yQ5m7k3h1F1m9d4y0Hq6QF0x5uT5rQkB8Jkw="
    assert key_fingerprint(key) == key_fingerprint(key) != key_fingerprint(key + b"x")
    assert key.decode() not in key_fingerprint(key) and len(key_fingerprint(key)) == 64


def test_task_arguments_must_be_two_ids() -> None:
    ok = uuid.uuid4().hex
    assert task_args_problem((ok, ok), {}) is None
    for args, kwargs in (((ok,), {}), ((ok, ok, ok), {}), ((ok, "x"), {}), ((None, ok), {}), ((ok, ok), {"k": 1})):
        assert task_args_problem(args, kwargs)


def test_envelopes_kombu_cannot_read_are_named() -> None:
    good = {
        "body": "e30=",
        "headers": {},
        "properties": {
            "delivery_tag": "t",
            "body_encoding": "base64",
            "delivery_info": {"exchange": "q", "routing_key": "q"},
        },
    }
    assert envelope_problem(good) is None
    for bad in ([1], "x", {}, {**good, "properties": {}}, {**good, "body": "!!"}, {**good, "headers": [1]}):
        assert envelope_problem(bad)


def test_one_ascii_name_rule_and_text_the_ledger_holds() -> None:
    assert name_problem("namespace", "ns-1_A") is None
    for bad in ("名前", "é", "a.b", "ns\n", "", "a" * 129, "a\x00", 5):
        assert name_problem("namespace", bad)
    assert text_problem("fine é 名前") is None
    assert "NUL" in (text_problem("a\x00") or "") and "surrogate" in (text_problem("a\ud800") or "")


def test_the_log_filter_redacts_message_arguments_and_tracebacks() -> None:
    from exo_celery.log_redaction import FILTER, hide_in_logs

    hide_in_logs(["tok-" + SECRET])
    try:
        raise ValueError("tok-" + SECRET)
    except ValueError as exc:
        record = logging.LogRecord(
            "n", logging.WARNING, __file__, 1, "got %s", ("tok-" + SECRET,), (type(exc), exc, None)
        )
    assert FILTER.filter(record)
    assert "line2" not in record.getMessage() and "line2" not in (record.exc_text or "")
