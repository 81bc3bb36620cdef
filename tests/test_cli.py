"""The `exo-celery` command line, run as a subprocess against the PostgreSQL + Redis stack's shared worker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .conftest import SHARED_NAMESPACE as NS
from .support import ROOT, Stack, uid

SECRET = "sk-cli-5e1d0c9b7a"


def cli(stack: Stack | None, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = stack.env if stack is not None else {k: v for k, v in os.environ.items() if not k.startswith("EXO_")}
    done = subprocess.run(
        [sys.executable, "-m", "exo_celery.cli", *args],
        cwd=ROOT,
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "Traceback" not in done.stderr, done.stderr
    return done


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, f"exit {done.returncode}\nstdout: {done.stdout}\nstderr: {done.stderr}"
    return done.stdout


def as_json(done: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(ok(done))


def one_line_error(done: subprocess.CompletedProcess[str], code: int, *needles: str) -> str:
    """A failed command: the expected exit code, nothing on stdout, one `error:` line on stderr."""
    assert done.returncode == code, f"exit {done.returncode}: {done.stdout} {done.stderr}"
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def fan_out_body() -> dict[str, Any]:
    return {
        "secrets": {"api_key": SECRET},
        "nodes": [
            {
                "node_name": "Split",
                "namespace": NS,
                "identifier": "split",
                "inputs": {"items": '["p1", "p2"]'},
                "next_nodes": ["up"],
            },
            {
                "node_name": "Upper",
                "namespace": NS,
                "identifier": "up",
                "inputs": {"item": "${{ split.outputs.item }}"},
                "next_nodes": ["collect"],
            },
            {
                "node_name": "Collect",
                "namespace": NS,
                "identifier": "collect",
                "inputs": {"values": "${{ up.outputs.result }}"},
                "unites": {"identifier": "split"},
                "next_nodes": ["secret"],
            },
            {"node_name": "UseSecret", "namespace": NS, "identifier": "secret", "inputs": {"mode": "leak-output"}},
        ],
        "retry_policy": {"max_retries": 2, "strategy": "FIXED", "backoff_factor": 100},
    }


def test_upsert_trigger_wait_runs_show_json_and_the_secret_never_printed(pg_stack: Stack, tmp_path: Path) -> None:
    name = uid("cli")
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(fan_out_body()))
    outputs: list[str] = []

    def keep(done: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
        outputs.append(done.stdout + done.stderr)
        return done

    # --namespace before the command; the graph is named after the file.
    text = ok(keep(cli(pg_stack, "-n", NS, "upsert", str(path))))
    assert f"graph '{name}' version 1 in namespace '{NS}': VALID (4 nodes: split, up, collect, secret" in text
    # The same template and secrets again: no new version.
    graph = as_json(keep(cli(pg_stack, "upsert", str(path), "--name", name, "--namespace", NS, "--json")))
    assert graph["version"] == 1 and graph["secrets"] == {"api_key": True} and graph["validation_status"] == "VALID"
    assert graph["unchanged"] is True
    assert "version 1" in ok(keep(cli(pg_stack, "-n", NS, "upsert", str(path)))).replace("unchanged", "")

    # EXO_NAMESPACE as the default namespace; --wait shows a progress bar of states finished / known.
    env = {"EXO_NAMESPACE": NS}
    done = keep(cli(pg_stack, "trigger", name, "--input", 'items=["a", "b", "c"]', "--wait", env=env))
    text = ok(done)
    run_id = text.split()[1]
    assert f"run {run_id}: SUCCESS in " in text and "(SUCCESS 8)" in text
    assert "8/8" in done.stderr  # 3 split outputs, 3 up, 1 collect, 1 secret

    listed = as_json(keep(cli(pg_stack, "runs", "--graph", name, "--json", env=env)))
    assert [r["run_id"] for r in listed] == [run_id] and listed[0]["status"] == "SUCCESS"
    table = ok(keep(cli(pg_stack, "runs", "--namespace", NS, "--limit", "5")))
    assert run_id in table and "SUCCESS" in table and f"runs in namespace '{NS}'" in table

    tree = ok(keep(cli(pg_stack, "show", run_id, env=env)))
    lines = tree.splitlines()
    assert lines[0].startswith(f"run {run_id}  graph '{name}'  namespace '{NS}'  SUCCESS")
    assert sum("split (Split)  SUCCESS" in line for line in lines) == 3
    assert sum("up (Upper)  SUCCESS" in line for line in lines) == 3
    assert sum("split (Split)  SUCCESS  -  fan-out output" in line for line in lines) == 2  # outputs 2 and 3
    # Each `up` hangs under its own `split`; `collect` and then `secret` follow the united branches.
    split_at = [i for i, line in enumerate(lines) if "split (Split)" in line]
    assert all("up (Upper)" in lines[i + 1] for i in split_at)
    depth = {line.split("(")[0].strip(" │├└─"): line.index(line.strip(" │├└─")) for line in lines[1:]}
    assert depth["up"] > depth["split"] and depth["secret"] > depth["collect"]

    shown = as_json(keep(cli(pg_stack, "show", run_id, "--json", "-n", NS)))
    assert shown["run"]["status"] == "SUCCESS" and len(shown["states"]) == 8
    secret_state = next(s for s in shown["states"] if s["identifier"] == "secret")
    assert secret_state["outputs"] == {"length": "key=***"}  # the node did output it: masked

    created = as_json(keep(cli(pg_stack, "trigger", name, "--json", "--store", "unused=x", env=env)))
    assert created["status"] == "CREATED" and created["run_id"]

    for out in outputs:
        assert SECRET not in out


def state_id(line: str) -> str:
    """The state id `show` prints on a state's line."""
    return next(word for word in line.split() if len(word) == 32 and all(c in "0123456789abcdef" for c in word))


def test_failed_run_shows_errors_and_retries_a_state_can_be_retried_and_a_run_cancelled(
    pg_stack: Stack, tmp_path: Path
) -> None:
    name = uid("cli")
    path = tmp_path / "failing.json"
    body = {
        "nodes": [
            {"node_name": "Echo", "identifier": "a", "inputs": {"text": "t"}, "next_nodes": ["b"]},
            {"node_name": "Fail", "identifier": "b", "inputs": {"text": "${{ a.outputs.text }}"}},
        ],
        "retry_policy": {"max_retries": 1, "strategy": "FIXED", "backoff_factor": 50},
    }
    path.write_text(json.dumps(body))
    ok(cli(pg_stack, "upsert", str(path), "--name", name, "-n", NS))
    done = cli(pg_stack, "trigger", name, "-n", NS, "--input", "text=boom", "--wait", "--timeout", "60")
    assert done.returncode == 1, done.stderr  # --wait exits non-zero unless the run succeeded
    run_id = done.stdout.split()[1]
    assert f"run {run_id}: FAILED" in done.stdout
    # The errors that failed it follow: identifier, node, status, state id and the error text.
    reason = next(line for line in done.stdout.splitlines() if "b (Fail) ERRORED state " in line)
    assert reason.endswith(": ValueError: always fails: boom") or "always fails: boom" in reason, reason

    lines = ok(cli(pg_stack, "show", run_id, "-n", NS)).splitlines()
    errored = next(line for line in lines if "b (Fail)" in line and "ERRORED" in line)
    assert state_id(errored) in reason
    assert "retry 1" in errored and "error: " in errored and "always fails: boom" in errored
    first_attempt = next(line for line in lines if "attempt: b (Fail)  RETRY_CREATED" in line)
    assert "always fails: boom" in first_attempt
    assert lines.index(first_attempt) == lines.index(errored) + 1  # folded under the attempt that replaced it

    failed = state_id(errored)
    retried = ok(cli(pg_stack, "retry", failed, "-n", NS))
    assert f"retries {failed} (retry 2, run {run_id})" in retried
    again = as_json(cli(pg_stack, "retry", failed, "-n", NS, "--json"))
    assert again["retry_of"] == failed and again["state_id"] in retried  # repeating returns the same retry
    succeeded = state_id(next(line for line in lines if "a (Echo)  SUCCESS" in line))
    one_line_error(cli(pg_stack, "retry", succeeded, "-n", NS), 1, "is SUCCESS", "can be retried")

    # A run waiting on a 30 s start delay is cancelled at once.
    created = as_json(cli(pg_stack, "trigger", name, "-n", NS, "--start-delay", "30000", "--json"))
    cancelled = ok(cli(pg_stack, "cancel", created["run_id"], "-n", NS))
    assert f"run {created['run_id']}: CANCELLED (CANCELLED 1)" in cancelled
    assert "a (Echo)  CANCELLED" in ok(cli(pg_stack, "show", created["run_id"], "-n", NS))


def test_errors_print_one_line_and_exit_non_zero(pg_stack: Stack, tmp_path: Path) -> None:
    name = uid("cli")
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"nodes": [{"node_name": "Echo", "identifier": "a", "inputs": {"text": "x"}}]}))
    ok(cli(pg_stack, "upsert", str(good), "--name", name, "-n", NS))
    # An input the root node does not take is dropped, as Exosphere does, and named.
    created = as_json(cli(pg_stack, "trigger", name, "-n", NS, "--input", "nope=1", "--json"))
    assert created["status"] == "CREATED" and created["dropped_inputs"] == ["nope"]
    bad_json = tmp_path / "broken.json"
    bad_json.write_text('{"nodes": [')
    invalid = tmp_path / "invalid.json"
    invalid.write_text(
        json.dumps(
            {
                "secrets": {"api_key": SECRET, "other": [SECRET]},
                "nodes": [
                    {"node_name": "NoSuchNode", "identifier": "a", "inputs": {}, "next_nodes": ["b"]},
                    {"node_name": "Echo", "identifier": "b", "inputs": {"text": "${{ zz.outputs.x }}"}},
                ],
            }
        )
    )
    cases: list[tuple[tuple[str, ...], int, tuple[str, ...]]] = [
        (("trigger", uid("missing")), 1, ("does not exist",)),
        (("trigger", name, "--input", "text"), 2, ("--input", "KEY=VALUE")),
        (("show", "no-such-run"), 1, ("run 'no-such-run' does not exist",)),
        (("retry", "no-such-state"), 1, ("state 'no-such-state' does not exist",)),
        (("upsert", str(tmp_path / "absent.json")), 1, ("cannot read",)),
        (("upsert", str(bad_json)), 1, ("is not valid JSON",)),
        (("upsert", str(invalid), "--validation-timeout", "0"), 1, ("is invalid", "zz")),
        (("no-such-command",), 2, ("no-such-command",)),
    ]
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda c: cli(pg_stack, *c[0], "-n", NS), cases))
    for (args, code, needles), done in zip(cases, results, strict=True):
        line = one_line_error(done, code, *needles)
        assert SECRET not in line, args


def test_demo_runs_on_the_embedded_default(tmp_path: Path) -> None:
    env = {"EXO_HOME": str(tmp_path / "home"), "PYTHONPATH": str(ROOT)}
    done = cli(None, "demo", "--json", env=env)
    result = as_json(done)
    assert result["run"]["status"] == "SUCCESS"
    total = next(s for s in result["states"] if s["identifier"] == "sum")["outputs"]
    assert total == {"total": "55"}
    assert "SUCCESS" in done.stderr  # the human summary goes to stderr with --json
    # One line says what to try next, and that command works as printed.
    (hint,) = [line for line in done.stderr.splitlines() if line.startswith("next: ")]
    command = hint.removeprefix("next: ").split("  ")[0].split()
    assert command[:2] == ["exo-celery", "show"] and result["run"]["run_id"] in command
    assert "sum (SumAll)  SUCCESS" in ok(cli(None, *command[1:], env=env))


def test_upsert_adds_a_version_only_when_the_template_or_a_secret_changed(pg_stack: Stack, tmp_path: Path) -> None:
    """The ledger's dedupe (the CLI's "unchanged" is checked above); secrets compared decrypted."""
    name = uid("cli")
    manager = pg_stack.manager(NS)

    def upsert(secret: str, text: str = "x") -> dict[str, Any]:
        body = {
            "secrets": {"api_key": secret},
            "nodes": [{"node_name": "UseSecret", "identifier": "a", "inputs": {"mode": text}}],
        }
        return manager.upsert_graph_json_sync(name, body)

    assert [upsert(SECRET)["version"], upsert(SECRET)["version"]] == [1, 1]
    assert upsert(SECRET + "-rotated")["version"] == 2  # same template, another secret value
    assert upsert(SECRET + "-rotated")["version"] == 2
    assert upsert(SECRET + "-rotated", "y")["version"] == 3  # another template
    assert upsert(SECRET)["version"] == 4  # back to the first secret is a change too


def test_runs_filter_by_status_and_since(pg_stack: Stack, tmp_path: Path) -> None:
    name = uid("cli")
    path = tmp_path / "g.json"
    path.write_text(
        json.dumps(
            {
                "nodes": [
                    {"node_name": "Echo", "identifier": "a", "inputs": {"text": "t"}, "next_nodes": ["b"]},
                    {"node_name": "Prune", "identifier": "b", "inputs": {"item": "${{ a.outputs.text }}"}},
                ],
                "retry_policy": {"max_retries": 0},
            }
        )
    )
    manager = pg_stack.manager(NS)
    manager.upsert_graph_json_sync(name, json.loads(path.read_text()))
    good_id = manager.trigger_sync(name, {"text": "fine"})["run_id"]
    manager.wait_sync(good_id, timeout=60)
    bad = cli(pg_stack, "trigger", name, "-n", NS, "--input", "text=xbad", "--wait", "--json")
    bad_id = json.loads(bad.stdout)["run_id"]
    assert bad.returncode == 1 and json.loads(bad.stdout)["errors"][0]["error"].endswith("bad item xbad")

    queries: list[tuple[tuple[str, ...], list[str]]] = [
        (("--status", "FAILED"), [bad_id]),
        (("-s", "running", "-s", "SUCCESS"), [good_id]),  # repeatable, any case
        (("--since", "10m", "--status", "FAILED,SUCCESS"), [bad_id, good_id]),  # newest first
        (("--since", "2099-01-01T00:00"), []),
    ]
    with ThreadPoolExecutor(3) as pool:
        found = list(pool.map(lambda q: cli(pg_stack, "runs", "--graph", name, "-n", NS, "--json", *q[0]), queries))
        table, wrong = pool.map(
            lambda a: cli(pg_stack, "runs", "-n", NS, *a),
            [("--graph", name, "--status", "RUNNING", "--since", "1h"), ("--since", "yesterday")],
        )
    for (args, expected), done in zip(queries, found, strict=True):
        assert [r["run_id"] for r in as_json(done)] == expected, args
    assert "no runs in namespace" in ok(table) and "in status RUNNING since 1h" in table.stdout
    one_line_error(wrong, 2, "--since", "10m")


def test_json_errors_are_json_on_stdout_with_a_non_zero_exit(pg_stack: Stack, tmp_path: Path) -> None:
    bad_json = tmp_path / "broken.json"
    bad_json.write_text("{")
    cases: list[tuple[tuple[str, ...], int, str, str]] = [
        (("show", "no-such-run"), 1, "NotFoundError", "run 'no-such-run' does not exist"),
        (("trigger", uid("missing")), 1, "NotFoundError", "does not exist"),
        (("trigger", "g", "--input", "text"), 2, "UsageError", "KEY=VALUE"),
        (("upsert", str(bad_json)), 1, "JSONDecodeError", "is not valid JSON"),
        (("runs", "--status", "DONE"), 1, "ArgumentError", "unknown run status 'DONE'"),
        (("beat", "--check", "--name", "nobody"), 1, "BeatUnhealthy", "no heartbeat of beat 'nobody'"),
    ]
    runs: list[tuple[tuple[str, ...], int, str, str]] = []
    for i, (args, code, kind, needle) in enumerate(cases):
        scope = ("-n", NS) if args[0] != "beat" else ()  # beat serves every namespace
        # --json before the command name for some, after it for the others
        argv = ("--json", *scope, *args) if i % 2 else (*args, *scope, "--json")
        runs.append((argv, code, kind, needle))
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda c: cli(pg_stack, *c[0]), runs))
    for (argv, code, kind, needle), done in zip(runs, results, strict=True):
        assert done.returncode == code, (argv, done.stdout, done.stderr)
        error = json.loads(done.stdout)
        assert error["type"] == kind and needle in error["error"], (argv, error)
        assert done.stderr == "", (argv, done.stderr)


def test_show_watch_redraws_until_the_run_ends(pg_stack: Stack, tmp_path: Path) -> None:
    name = uid("cli")
    path = tmp_path / "slow.json"
    marks = tmp_path / "sleeps.txt"
    path.write_text(
        json.dumps(
            {
                "nodes": [
                    {
                        "node_name": "Split",
                        "identifier": "split",
                        "inputs": {"items": '["0.6", "0.9"]'},
                        "next_nodes": ["nap"],
                    },
                    {
                        "node_name": "Sleep",
                        "identifier": "nap",
                        "inputs": {"seconds": "${{ split.outputs.item }}", "path": str(marks)},
                        "next_nodes": ["all"],
                    },
                    {
                        "node_name": "Collect",
                        "identifier": "all",
                        "inputs": {"values": "${{ nap.outputs.slept }}"},
                        "unites": {"identifier": "split"},
                    },
                ]
            }
        )
    )
    manager = pg_stack.manager(NS)
    manager.upsert_graph_json_sync(name, json.loads(path.read_text()))
    # The root waits 4 s: `show` alone would print a PENDING run; --watch keeps redrawing until it ends.
    run_id = manager.trigger_sync(name, start_delay=4000)["run_id"]
    assert manager.get_run_sync(run_id)["status"] == "PENDING"
    done = cli(pg_stack, "show", run_id, "--watch", "--interval", "0.2", "-n", NS)
    text = ok(done)
    # It returned once the run ended, with the final tree printed once.
    assert manager.get_run_sync(run_id)["status"] == "SUCCESS"
    assert text.count(f"run {run_id}  graph '{name}'") == 1 and f"namespace '{NS}'  SUCCESS" in text
    assert sum("nap (Sleep)  SUCCESS" in line for line in text.splitlines()) == 2
    assert "all (Collect)  SUCCESS" in text
    watched = as_json(cli(pg_stack, "show", run_id, "--watch", "--json", "-n", NS))
    assert watched["run"]["status"] == "SUCCESS" and len(watched["states"]) == 5
