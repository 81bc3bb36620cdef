"""A property-based run of the OpenAPI schema (schemathesis) against the live server, bounded to stay fast.

Every generated request must get an answer the schema documents, never a 5xx; random ids and names
mostly reach the "not found" and validation paths, which is where a crash would hide.
"""

from __future__ import annotations

from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings

from .conftest import ADMIN_KEY, Live

EXAMPLES = 8
# A schema-valid graph or trigger body can still be refused by graph validation (422/400 with every
# problem listed): the schema cannot say "exactly one root", so that check does not apply.
EXCLUDED = [schemathesis.checks.positive_data_acceptance]


def test_every_route_answers_as_documented(live: Live) -> None:
    schema = schemathesis.openapi.from_url(live.url + "/openapi.json")
    failures: list[str] = []
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case: Any) -> None:
            case.call_and_validate(headers={"x-api-key": ADMIN_KEY}, timeout=30, excluded_checks=EXCLUDED)

        try:
            check()
        except Exception as exc:
            failures.append(f"{operation.label}: {type(exc).__name__}: {str(exc)[:1500]}")
    assert operations >= 14
    assert not failures, "\n\n".join(failures)
