"""Scenario 6 (client side): bad graph templates, trigger inputs and store values, fuzzed with hypothesis.

In-process against a private ledger, with the fault nodes registered (no worker needed). Every call
either succeeds or raises an `ExoError` with a message; a rejected call writes nothing (row counts of
exo_graphs, exo_runs, exo_states and exo_store unchanged).

Known defects have their own strict-xfail tests below; the fuzz counts the examples that hit them
(`known_defect`) rather than failing on them, so it keeps exploring everything else.
"""

from __future__ import annotations

import datetime as dt
import math
from collections import Counter
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exo_celery import ExoError, GraphValidationError, StateManager, TriggerError
from exo_celery.ledger.repo import Repo
from exo_celery.node import node_schema

from ..support import Stack, uid
from . import nodes as fault_nodes
from .harness import SOAK, Figures, Ledger

EXAMPLES = 300 * SOAK
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
POOL = ["a", "b", "c", "d", "e"]
REGISTERED = ["FanOut", "Work", "Gather", "Echo", "Parse", "Leak"]


class Fuzz:
    """A manager on a private ledger with every fault node registered, and outcome tallies."""

    def half_written(self) -> dict[str, int]:
        """Rows of this namespace that only part of a call wrote, as the ledger holds them now."""
        ns = (self.ns,)
        checks = {
            "runs without a state": "SELECT count(*) FROM exo_runs r WHERE r.namespace = %s"
            " AND NOT EXISTS (SELECT 1 FROM exo_states s WHERE s.run_id = r.id)",
            "states without their run": "SELECT count(*) FROM exo_states s WHERE s.namespace = %s"
            " AND NOT EXISTS (SELECT 1 FROM exo_runs r WHERE r.id = s.run_id)",
            "runs without their graph version": "SELECT count(*) FROM exo_runs r WHERE r.namespace = %s"
            " AND NOT EXISTS (SELECT 1 FROM exo_graphs g WHERE g.namespace = r.namespace"
            " AND g.name = r.graph_name AND g.version = r.graph_version)",
            # The target graph requires store key r: a run of it without that row lost its store.
            "runs of 'target' without their store": "SELECT count(*) FROM exo_runs r WHERE r.namespace = %s"
            " AND r.graph_name = 'target'"
            " AND NOT EXISTS (SELECT 1 FROM exo_store st WHERE st.run_id = r.id AND st.key = 'r')",
            "runs whose outstanding count is off": "SELECT count(*) FROM exo_runs r WHERE r.namespace = %s"
            " AND r.outstanding <> (SELECT count(*) FROM exo_states s WHERE s.run_id = r.id"
            " AND s.status IN ('CREATED', 'QUEUED', 'EXECUTED'))",
        }
        found = {what: int(self.ledger.value(sql, ns)) for what, sql in checks.items()}
        orphans = "SELECT count(*) FROM {} t WHERE NOT EXISTS (SELECT 1 FROM exo_runs r WHERE r.id = t.run_id)"
        for table in ("exo_store", "exo_scopes"):  # no namespace column: the module's ledger is its own
            found[f"{table} rows without their run"] = int(self.ledger.value(orphans.format(table)))
        return found

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.ns = uid("fz")
        self.manager: StateManager = stack.manager(self.ns)
        schemas = {cls.__name__: node_schema(cls) for cls in fault_nodes.NODES}
        Repo(self.manager.settings.ledger_url).register_nodes(self.ns, schemas, "fuzz")
        self.ledger = Ledger(stack.database_url or "")
        self.tally: Counter[str] = Counter()
        self.known: Counter[str] = Counter()
        self.unexpected = 0  # exceptions that were neither an ExoError nor a known defect (each fails its test)
        self.manager.upsert_graph_sync(
            "target",
            [{"node_name": "Echo", "identifier": "root", "inputs": {"text": "${{ store.r }}/${{ store.d }}"}}],
            secrets={},
            store_config={"required_keys": ["r"], "default_values": {"d": "dflt"}},
            validation_timeout=0,
        )


@pytest.fixture(scope="module")
def fuzz(module_fstack: Stack) -> Fuzz:
    return Fuzz(module_fstack)


def known_defect(exc: BaseException) -> str | None:
    """The known defect (see the xfail tests below) an exception is an instance of, or None."""
    text = str(exc)
    if type(exc).__name__ == "DataError" and "NUL (0x00)" in text:
        return "nul-byte-reaches-postgres"
    if type(exc).__name__ == "DataError" and "value too long for type character varying(256)" in text:
        return "store-key-over-256"
    if isinstance(exc, TypeError) and "is not JSON serializable" in text:
        return "template-value-not-json"
    return None


# -- strategies -----------------------------------------------------------------------------
odd_text = st.one_of(
    st.sampled_from(["", " ", "a.b", "a b", "a/b", "${{", "}}", "é", "名前", "a\tb", "-", "_", "\u202e", "a" * 129]),
    st.text(max_size=8),
    st.text(min_size=120, max_size=300),
)
names = st.one_of(st.sampled_from(POOL), odd_text, st.integers(-5, 5), st.none())
placeholders = st.one_of(
    st.builds(
        lambda i, f: "${{ " + i + ".outputs." + f + " }}", st.sampled_from(POOL), st.sampled_from(["text", "item", "x"])
    ),
    st.builds(lambda k: "${{ store." + k + " }}", st.sampled_from(["k", "r", "a.b", ""])),
    st.sampled_from(
        ["${{ a }}", "${{ a.outputs }}", "${{ a.inputs.text }}", "${{ store }}", "${{", "x ${{ a.outputs.text"]
    ),
)
json_leaf = st.one_of(
    st.text(max_size=20), st.integers(), st.floats(allow_nan=True), st.booleans(), st.none(), placeholders
)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)),
    max_leaves=6,
)
input_values = st.one_of(
    placeholders, st.text(max_size=30), json_value, st.integers(2000, 500_000).map(lambda n: "w" * n)
)
node_dicts = st.fixed_dictionaries(
    {},
    optional={
        "node_name": st.one_of(st.sampled_from(REGISTERED), names),
        "identifier": names,
        "namespace": st.one_of(st.none(), names),
        "inputs": st.one_of(
            st.dictionaries(
                st.one_of(st.sampled_from(["text", "n", "item", "path", "ms", "values", "mode"]), st.text(max_size=6)),
                input_values,
                max_size=4,
            ),
            json_value,
        ),
        "next_nodes": st.one_of(st.none(), st.lists(names, max_size=3), names),
        "unites": st.one_of(
            st.none(),
            st.fixed_dictionaries(
                {"identifier": names}, optional={"strategy": st.sampled_from(["ALL_SUCCESS", "ALL_DONE", "X", 1])}
            ),
            names,
        ),
        "extra": st.text(max_size=3),
    },
)
graph_nodes = st.one_of(st.lists(node_dicts, max_size=6), json_value)
secrets = st.one_of(
    st.none(),
    st.dictionaries(
        st.one_of(st.text(max_size=10), st.sampled_from(["api_key"])),
        st.one_of(st.text(max_size=20), st.integers()),
        max_size=3,
    ),
)
store_configs = st.one_of(
    st.none(),
    st.fixed_dictionaries(
        {},
        optional={
            "required_keys": st.one_of(st.lists(odd_text, max_size=3), json_value),
            "default_values": st.one_of(
                st.dictionaries(odd_text, st.one_of(st.text(max_size=10), st.integers()), max_size=3), json_value
            ),
            "other": st.integers(),
        },
    ),
)
retry_policies = st.one_of(
    st.none(),
    st.fixed_dictionaries(
        {},
        optional={
            "max_retries": st.one_of(st.integers(-3, 2000), st.text(max_size=3)),
            "strategy": st.sampled_from(["EXPONENTIAL", "LINEAR_FULL_JITTER", "FIXED", "NOPE", 3]),
            "backoff_factor": st.integers(-10, 10**12),
            "exponent": st.integers(-2, 200),
            "max_delay": st.one_of(st.none(), st.integers(-5, 10**15)),
        },
    ),
)
triggers = st.one_of(
    st.none(),
    st.lists(
        st.one_of(
            st.sampled_from(["* * * * *", "0 0 31 2 *", "61 * * * *", "* * * *", "@hourly", "*/5 * * * *"]),
            st.fixed_dictionaries({"expression": st.one_of(st.text(max_size=12), st.integers())}),
            st.fixed_dictionaries(
                {
                    "type": st.sampled_from(["CRON", "WEBHOOK"]),
                    "value": st.fixed_dictionaries({"expression": st.sampled_from(["* * * * *", "x"])}),
                }
            ),
        ),
        max_size=2,
    ),
)


def base_graphs() -> list[list[dict[str, Any]]]:
    """Valid templates the mutations start from: linear, and fan-out + unite (needs the api_key secret)."""
    linear = [
        {"node_name": "Echo", "identifier": "a", "inputs": {"text": "x"}, "next_nodes": ["b"]},
        {"node_name": "Echo", "identifier": "b", "inputs": {"text": "<${{ a.outputs.text }}>"}},
    ]
    fan = [
        {"node_name": "FanOut", "identifier": "a", "inputs": {"n": "3"}, "next_nodes": ["b"]},
        {
            "node_name": "Work",
            "identifier": "b",
            "inputs": {"item": "${{ a.outputs.item }}", "path": "/dev/null", "ms": "0"},
            "next_nodes": ["c"],
        },
        {
            "node_name": "Gather",
            "identifier": "c",
            "inputs": {"values": "${{ b.outputs.item }}"},
            "unites": {"identifier": "a"},
        },
    ]
    return [linear, fan]


@st.composite
def mutated_graph(draw: st.DrawFn) -> list[Any]:
    """A valid template with 0-3 mutations: odd names, cycles, broken placeholders, missing fields, wrong types."""
    nodes: list[Any] = [dict(n, inputs=dict(n["inputs"])) for n in draw(st.sampled_from(base_graphs()))]
    for _ in range(draw(st.integers(0, 3))):
        i = draw(st.integers(0, len(nodes) - 1))
        node = nodes[i]
        kind = draw(st.sampled_from(["rename", "node_name", "edge", "input", "drop", "wrong-type", "unites", "dup"]))
        if kind == "rename":
            node["identifier"] = draw(names)
        elif kind == "node_name":
            node["node_name"] = draw(st.one_of(st.sampled_from(REGISTERED), names))
        elif kind == "edge":
            old = node.get("next_nodes")
            node["next_nodes"] = [*(old if isinstance(old, list) else []), draw(st.sampled_from(POOL[:3]))]
        elif kind == "input":
            if not isinstance(node.get("inputs"), dict):
                node["inputs"] = {}
            node["inputs"][draw(st.sampled_from([*node["inputs"], "text", "extra"]))] = draw(input_values)
        elif kind == "drop":
            node.pop(draw(st.sampled_from(["identifier", "node_name", "inputs", "next_nodes"])), None)
        elif kind == "wrong-type":
            node[draw(st.sampled_from(["identifier", "node_name", "inputs", "next_nodes", "namespace"]))] = draw(
                st.one_of(st.integers(), st.lists(st.integers(), max_size=2), st.just({}), st.floats(allow_nan=True))
            )
        elif kind == "unites":
            node["unites"] = draw(st.one_of(st.fixed_dictionaries({"identifier": names}), names))
        else:
            nodes.append(dict(node))
    return nodes


@FUZZ
@given(
    name=st.one_of(st.sampled_from(["g1", "g2"]), st.sampled_from(["g1", "g2"]), names),
    nodes=st.one_of(mutated_graph(), mutated_graph(), graph_nodes),
    secrets=st.one_of(st.just({"api_key": "k"}), secrets),
    store_config=store_configs,
    retry_policy=retry_policies,
    triggers=triggers,
)
def test_fuzzed_templates_are_stored_or_rejected_cleanly(
    fuzz: Fuzz, name: Any, nodes: Any, secrets: Any, store_config: Any, retry_policy: Any, triggers: Any
) -> None:
    before = fuzz.ledger.table_counts()
    try:
        result = fuzz.manager.upsert_graph_sync(
            name, nodes, secrets, retry_policy, store_config, triggers, validation_timeout=0
        )
    except ExoError as exc:
        assert isinstance(exc, GraphValidationError), type(exc)
        assert exc.errors and all(isinstance(e, str) and e for e in exc.errors)
        assert f"graph {str(name)!r} is invalid" in str(exc)
        assert fuzz.ledger.table_counts() == before, "a rejected graph wrote something"
        fuzz.tally["templates rejected"] += 1
        return
    except Exception as exc:
        defect = known_defect(exc)
        if defect is None:
            fuzz.unexpected += 1
            raise
        assert fuzz.ledger.table_counts() == before, "a failed upsert wrote something"
        fuzz.known[defect] += 1
        return
    assert result["validation_status"] == "VALID"
    after = fuzz.ledger.table_counts()
    # One new version, or none when the template and secrets equal the latest version's (returned instead).
    added = after["exo_graphs"] - before["exo_graphs"]
    assert added in (0, 1)
    assert fuzz.manager.repo.latest_version(fuzz.manager.namespace, name) == result["version"]
    if added == 0:
        fuzz.tally["identical upserts (no new version)"] += 1
    assert {k: v for k, v in after.items() if k != "exo_graphs"} == {
        k: v for k, v in before.items() if k != "exo_graphs"
    }
    fuzz.tally["templates accepted"] += 1


trigger_keys = st.one_of(
    st.sampled_from(["text", "r", "d", "k", "a.b", "", "x" * 300]), st.text(max_size=6), st.integers()
)
trigger_values = st.one_of(
    st.text(max_size=10),
    st.text(max_size=10),
    st.integers(),
    st.none(),
    st.lists(st.text(max_size=3), max_size=2),
    st.integers(10_000, 3_000_000).map(lambda n: "v" * n),
)


@FUZZ
@given(
    inputs=st.one_of(
        st.none(),
        st.fixed_dictionaries({"text": trigger_values}),
        st.dictionaries(trigger_keys, trigger_values, max_size=3),
    ),
    store=st.one_of(
        st.fixed_dictionaries({"r": trigger_values}, optional={"d": trigger_values, "k": trigger_values}),
        st.fixed_dictionaries({"r": st.text()}, optional={"": st.text(), "a.b": st.text(), "x" * 300: st.text()}),
        st.dictionaries(trigger_keys, trigger_values, max_size=4),
        st.none(),
    ),
    start_delay=st.one_of(
        st.integers(10**9, 10**12), st.floats(10**9, 10**12), st.integers(-10, -1), st.text(max_size=3), st.none()
    ),
)
def test_fuzzed_triggers_start_a_run_or_are_rejected_cleanly(
    fuzz: Fuzz, inputs: Any, store: Any, start_delay: Any
) -> None:
    before = fuzz.ledger.table_counts()
    try:
        # start_delay is long (or invalid): an accepted run waits in the ledger, no message is sent.
        result = fuzz.manager.trigger_sync("target", inputs, store, start_delay if start_delay is not None else 10**9)
    except ExoError as exc:
        assert isinstance(exc, TriggerError), type(exc)
        assert str(exc).startswith("cannot trigger graph 'target': ")
        assert fuzz.ledger.table_counts() == before, "a rejected trigger wrote something"
        fuzz.tally["triggers rejected"] += 1
        return
    except Exception as exc:
        defect = known_defect(exc)
        if defect is None:
            fuzz.unexpected += 1
            raise
        assert fuzz.ledger.table_counts() == before, "a failed trigger wrote something"
        fuzz.known[defect] += 1
        return
    assert result["status"] == "CREATED"
    after = fuzz.ledger.table_counts()
    assert after["exo_runs"] == before["exo_runs"] + 1 and after["exo_states"] == before["exo_states"] + 1
    run = fuzz.manager.get_run_sync(result["run_id"])
    assert run["status"] == "PENDING"
    fuzz.tally["triggers accepted"] += 1


def test_fuzz_figures(fuzz: Fuzz, figures: Figures) -> None:
    """Runs after the two fuzz tests (same module fixture): record what they saw, and what the ledger holds."""
    half_written = fuzz.half_written()
    figures.record(
        "6-fuzzed-input",
        examples=fuzz.tally["templates accepted"] + fuzz.tally["templates rejected"] + fuzz.tally["triggers accepted"]
        + fuzz.tally["triggers rejected"] + sum(fuzz.known.values()) + fuzz.unexpected,
        **dict(fuzz.tally),
        known_defect_hits=dict(fuzz.known),
        partial_writes=sum(half_written.values()),
        unexpected_exceptions=fuzz.unexpected,
    )
    assert fuzz.tally["triggers accepted"] > 0, "no run was written: the half-written checks saw nothing"
    assert not any(half_written.values()), half_written


# -- the known defects, one minimal reproduction each ---------------------------------------------
def _rejected_cleanly(fuzz: Fuzz, call: Any, error: type[ExoError]) -> None:
    before = fuzz.ledger.table_counts()
    with pytest.raises(error):
        call()
    assert fuzz.ledger.table_counts() == before


def test_trigger_store_key_over_256_characters_is_a_trigger_error(fuzz: Fuzz) -> None:
    _rejected_cleanly(fuzz, lambda: fuzz.manager.trigger_sync("target", store={"r": "1", "k" * 300: "v"}), TriggerError)


def test_trigger_store_value_with_nul_byte_is_a_trigger_error(fuzz: Fuzz) -> None:
    _rejected_cleanly(fuzz, lambda: fuzz.manager.trigger_sync("target", store={"r": "a\x00b"}), TriggerError)


def test_store_defaults_postgres_cannot_hold_are_rejected_at_upsert(fuzz: Fuzz) -> None:
    for defaults in ({"k": "a\x00"}, {"k" * 300: "v"}):
        _rejected_cleanly(
            fuzz,
            lambda d=defaults: fuzz.manager.upsert_graph_sync(
                uid("sd"),
                [{"node_name": "Echo", "identifier": "a", "inputs": {"text": "x"}}],
                {},
                store_config={"default_values": d},
                validation_timeout=0,
            ),
            GraphValidationError,
        )


def test_template_input_that_is_not_json_is_a_validation_error(fuzz: Fuzz) -> None:
    for value in (dt.datetime(2024, 1, 1), b"\xff", {1, 2}):
        _rejected_cleanly(
            fuzz,
            lambda v=value: fuzz.manager.upsert_graph_sync(
                uid("nj"), [{"node_name": "Echo", "identifier": "a", "inputs": {"text": v}}], {}, validation_timeout=0
            ),
            GraphValidationError,
        )


def test_secrets_and_triggers_of_the_wrong_type_are_validation_errors(fuzz: Fuzz) -> None:
    graph = [{"node_name": "Echo", "identifier": "a", "inputs": {"text": "x"}}]
    _rejected_cleanly(
        fuzz,
        lambda: fuzz.manager.upsert_graph_sync(uid("w"), graph, [1, 2], validation_timeout=0),
        GraphValidationError,
    )  # type: ignore[arg-type]
    _rejected_cleanly(
        fuzz,
        lambda: fuzz.manager.upsert_graph_sync(uid("w"), graph, {}, triggers=5, validation_timeout=0),
        GraphValidationError,
    )  # type: ignore[arg-type]


def test_trigger_inputs_that_are_not_a_dict_are_a_trigger_error(fuzz: Fuzz) -> None:
    _rejected_cleanly(fuzz, lambda: fuzz.manager.trigger_sync("target", inputs="text", store={"r": "1"}), TriggerError)  # type: ignore[arg-type]
    _rejected_cleanly(fuzz, lambda: fuzz.manager.trigger_sync("target", store=["r"]), TriggerError)  # type: ignore[arg-type]


def test_non_finite_start_delay_is_a_trigger_error(fuzz: Fuzz) -> None:
    for delay in (math.nan, math.inf):
        _rejected_cleanly(
            fuzz, lambda d=delay: fuzz.manager.trigger_sync("target", store={"r": "1"}, start_delay=d), TriggerError
        )


def test_names_with_a_trailing_newline_are_rejected(fuzz: Fuzz) -> None:
    _rejected_cleanly(
        fuzz,
        lambda: fuzz.manager.upsert_graph_sync(
            "nl\n", [{"node_name": "Echo", "identifier": "a\n", "inputs": {"text": "x"}}], {}, validation_timeout=0
        ),
        GraphValidationError,
    )


def test_reads_with_odd_ids_raise_exo_errors(fuzz: Fuzz) -> None:
    m = fuzz.manager
    for call in (
        lambda: m.get_run_sync("x\x00"),
        lambda: m.list_states_sync("x\x00"),
        lambda: m.cancel_sync("x\x00"),
        lambda: m.get_graph_sync("x\x00"),
        lambda: m.manual_retry_sync("x\x00"),
        lambda: m.list_runs_sync(limit=-1),
    ):
        with pytest.raises(ExoError):
            call()
