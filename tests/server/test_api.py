"""Every route of the HTTP API against a live server, a real worker, PostgreSQL and Redis."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

from ..support import ROOT
from .conftest import A_KEY, ADMIN_KEY, NS_A, NS_B, Live, flaky_path, items


def test_namespaces_nodes_and_graphs_are_listed(live: Live) -> None:
    with live.client() as c:
        names = c.get("/v0/namespaces").json()
        assert {NS_A, NS_B} <= set(names["namespaces"]) and names["count"] == len(names["namespaces"])
        nodes = c.get(f"/v0/namespace/{NS_A}/nodes/").json()
        split = next(n for n in nodes["nodes"] if n["name"] == "Split")
        assert split["namespace"] == NS_A and split["runtime_name"]
        assert split["inputs_schema"]["properties"] == {"items": {"type": "string"}}
        graphs = c.get(f"/v0/namespace/{NS_A}/graphs/").json()
        assert {"echo", "fanout", "flaky"} <= {g["name"] for g in graphs["templates"]}
        echo = next(g for g in graphs["templates"] if g["name"] == "echo")
        assert (
            echo["secrets"] == {"token": True} and "s3cr3t-value-xyz" not in c.get(f"/v0/namespace/{NS_A}/graphs/").text
        )


def test_upsert_get_trigger_wait_states_and_structure(live: Live) -> None:
    with live.client() as c:
        graph = c.get(f"/v0/namespace/{NS_A}/graph/fanout").json()
        assert graph["validation_status"] == "VALID" and graph["name"] == "fanout" and graph["updated_at"]
        got = c.get(f"/v0/namespace/{NS_A}/graph/echo")
        assert got.json()["secrets"] == {"token": True} and "s3cr3t-value-xyz" not in got.text
        started = c.post(f"/v0/namespace/{NS_A}/graph/fanout/trigger", json={"inputs": {"items": items(5)}})
        assert started.status_code == 200, started.text
        assert started.json()["status"] == "CREATED"
        run_id = started.json()["run_id"]
        done = live.wait_run(NS_A, run_id)
        assert done["status"] == "SUCCESS" and done["counts"] == {"SUCCESS": 11}
        run = c.get(f"/v0/namespace/{NS_A}/run/{run_id}").json()
        assert run["status"] == "SUCCESS" and run["graph_name"] == "fanout"
        states = c.get(f"/v0/namespace/{NS_A}/run/{run_id}/states", params={"identifier": "up", "size": 3}).json()
        assert states["total"] == 5 and len(states["states"]) == 3
        assert {s["status"] for s in states["states"]} == {"SUCCESS"}
        nodes = c.get(f"/v0/namespace/{NS_A}/run/{run_id}/nodes").json()["nodes"]
        assert nodes["up"]["counts"] == {"SUCCESS": 5} and nodes["collect"]["counts"] == {"SUCCESS": 1}
        structure = c.get(f"/v0/namespace/{NS_A}/states/run/{run_id}/graph").json()
        assert structure["graph_name"] == "fanout" and structure["node_count"] == 11
        # a fan-out's outputs are states of their own (as in Exosphere): each split state is a root
        assert [s["identifier"] for s in structure["root_states"]].count("split") == 5
        assert structure["execution_summary"]["SUCCESS"] == 11
        ups = {s["id"] for s in structure["nodes"] if s["identifier"] == "up"}
        assert ups <= {e["target"] for e in structure["edges"]}
        collect = next(s for s in structure["nodes"] if s["identifier"] == "collect")
        details = c.get(f"/v0/namespace/{NS_A}/graph/fanout/run/{run_id}/node/{collect['id']}").json()
        assert details["outputs"]["count"] == "5" and details["status"] == "SUCCESS"
        runs = c.get(f"/v0/namespace/{NS_A}/runs/1/50", params={"graph_name": "fanout"}).json()
        listed = next(r for r in runs["runs"] if r["run_id"] == run_id)
        assert listed["success_count"] == 11 and listed["total_count"] == 11 and listed["status"] == "SUCCESS"
        assert all(r["graph_name"] == "fanout" for r in runs["runs"])
        filtered = c.get(f"/v0/namespace/{NS_A}/runs/1/50", params={"status": "FAILED"}).json()
        assert all(r["status"] == "FAILED" for r in filtered["runs"])


def test_invalid_upsert_lists_every_problem_and_stores_nothing(live: Live) -> None:
    body = {
        "secrets": {},
        "nodes": [{"node_name": "Echo", "namespace": NS_A, "identifier": "a", "inputs": {}, "next_nodes": ["missing"]}],
    }
    with live.client() as c:
        response = c.put(f"/v0/namespace/{NS_A}/graph/bad-graph", json=body)
        assert response.status_code == 422
        detail = response.json()["detail"]
        assert detail["validation_status"] == "INVALID" and len(detail["validation_errors"]) >= 2
        assert c.get(f"/v0/namespace/{NS_A}/graph/bad-graph").status_code == 404
        # As Exosphere's state manager: inputs the root does not take are dropped, and named.
        dropped = c.post(f"/v0/namespace/{NS_A}/graph/echo/trigger", json={"inputs": {"nope": "x"}})
        assert dropped.status_code == 200 and dropped.json()["dropped_inputs"] == ["nope"], dropped.text
        assert c.post(f"/v0/namespace/{NS_A}/graph/nothing/trigger", json={}).status_code == 404


def test_manual_retry_and_cancel(live: Live, tmp_path: Path) -> None:
    with live.client() as c:
        path = flaky_path(tmp_path)
        run_id = c.post(f"/v0/namespace/{NS_A}/graph/flaky/trigger", json={"inputs": {"path": path}}).json()["run_id"]
        assert live.wait_run(NS_A, run_id)["status"] == "FAILED"
        errored = c.get(f"/v0/namespace/{NS_A}/run/{run_id}/states", params={"status": "ERRORED"}).json()["states"]
        assert len(errored) == 1 and "flaky failure 1" in errored[0]["error"]
        retry = c.post(f"/v0/namespace/{NS_A}/state/{errored[0]['id']}/manual-retry", json={"fanout_id": "x"})
        assert retry.status_code == 200, retry.text
        again = c.post(f"/v0/namespace/{NS_A}/state/{errored[0]['id']}/manual-retry", json={})
        assert again.json()["id"] == retry.json()["id"]  # the same retry, not a second one
        assert live.wait_run(NS_A, run_id)["status"] == "SUCCESS"
        delayed = c.post(
            f"/v0/namespace/{NS_A}/graph/echo/trigger", json={"inputs": {"text": "later"}, "start_delay": 60000}
        ).json()["run_id"]
        cancelled = c.post(f"/v0/namespace/{NS_A}/run/{delayed}/cancel")
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "CANCELLED"
        waited = c.get(f"/v0/namespace/{NS_A}/run/{delayed}/wait", params={"timeout": 1}).json()
        assert waited["terminal"] is True and waited["status"] == "CANCELLED"


def test_wait_answers_after_its_timeout_with_the_current_status(live: Live) -> None:
    with live.client() as c:
        run_id = c.post(
            f"/v0/namespace/{NS_A}/graph/echo/trigger", json={"inputs": {"text": "x"}, "start_delay": 60000}
        ).json()["run_id"]
        body = c.get(f"/v0/namespace/{NS_A}/run/{run_id}/wait", params={"timeout": 0.5}).json()
        assert body["terminal"] is False and body["status"] == "PENDING"
        c.post(f"/v0/namespace/{NS_A}/run/{run_id}/cancel")


def test_missing_or_wrong_key_is_401_with_nothing_else(live: Live) -> None:
    routes = [
        ("GET", "/v0/namespaces"),
        ("GET", f"/v0/namespace/{NS_A}/graph/echo"),
        ("PUT", f"/v0/namespace/{NS_A}/graph/echo"),
        ("POST", f"/v0/namespace/{NS_A}/graph/echo/trigger"),
        ("GET", f"/v0/namespace/{NS_A}/runs/1/10"),
        ("GET", f"/v0/namespace/{NS_A}/nodes/"),
        ("GET", "/metrics"),
    ]
    for key in (None, "wrong-key-123456"):
        with live.client(key) as c:
            for method, path in routes:
                response = c.request(method, path, json={})
                assert response.status_code in (401, 403), (method, path, key, response.text)
                assert set(response.json()) == {"detail"}
                assert "srva" not in response.text or "namespace" in path
    with live.client(None) as c:
        page = c.get("/", follow_redirects=False)
        assert page.status_code == 303 and page.headers["location"] == "/login"


def test_a_key_scoped_to_a_namespace_cannot_touch_another(live: Live) -> None:
    with live.client() as admin:
        run_b = admin.post(f"/v0/namespace/{NS_B}/graph/echo/trigger", json={"inputs": {"text": "b"}}).json()["run_id"]
        live.wait_run(NS_B, run_b)
        state_b = admin.get(f"/v0/namespace/{NS_B}/run/{run_b}/states").json()["states"][0]["id"]
    with live.client(A_KEY) as c:
        assert c.get("/v0/namespaces").json()["namespaces"] == [NS_A]
        assert c.get(f"/v0/namespace/{NS_A}/graph/echo").status_code == 200
        for method, path in [
            ("GET", f"/v0/namespace/{NS_B}/graph/echo"),
            ("POST", f"/v0/namespace/{NS_B}/graph/echo/trigger"),
            ("GET", f"/v0/namespace/{NS_B}/run/{run_b}"),
            ("POST", f"/v0/namespace/{NS_B}/run/{run_b}/cancel"),
            ("POST", f"/v0/namespace/{NS_B}/state/{state_b}/manual-retry"),
            ("GET", f"/v0/namespace/{NS_B}/runs/1/10"),
        ]:
            response = c.request(method, path, json={})
            assert response.status_code == 403, (method, path, response.text)
            assert set(response.json()) == {"detail"} and run_b not in response.text
        # B's ids through A's namespace: not found, as if they did not exist
        assert c.get(f"/v0/namespace/{NS_A}/run/{run_b}").status_code == 404
        assert c.post(f"/v0/namespace/{NS_A}/run/{run_b}/cancel").status_code == 404
        assert c.post(f"/v0/namespace/{NS_A}/state/{state_b}/manual-retry", json={}).status_code == 404
        assert c.get(f"/v0/namespace/{NS_A}/graph/echo/run/{run_b}/node/{state_b}").status_code == 404


def test_browser_writes_need_the_csrf_header(live: Live) -> None:
    """Without x-api-key (a browser with a session cookie), a POST needs the double-submit CSRF header."""
    import httpx

    with httpx.Client(base_url=live.url, timeout=30) as browser:
        login = browser.get("/login")
        csrf = browser.cookies["exo_csrf"]
        assert login.status_code == 200
        logged = browser.post("/login", data={"key": ADMIN_KEY, "csrf": csrf}, follow_redirects=False)
        assert logged.status_code == 303 and ADMIN_KEY not in str(browser.cookies)
        url = f"/v0/namespace/{NS_A}/graph/echo/trigger"
        assert browser.post(url, json={"inputs": {"text": "x"}}).status_code == 403
        assert browser.post(url, json={"inputs": {"text": "x"}}, headers={"x-exo-csrf": "forged"}).status_code == 403
        ok = browser.post(url, json={"inputs": {"text": "x"}}, headers={"x-exo-csrf": csrf})
        assert ok.status_code == 200, ok.text


def test_metrics_show_the_exo_series(live: Live) -> None:
    with live.client() as c:
        run_id = c.post(f"/v0/namespace/{NS_A}/graph/echo/trigger", json={"inputs": {"text": "m"}}).json()["run_id"]
        live.wait_run(NS_A, run_id)
        text = c.get("/metrics").text
    for series in (
        'exo_runs_started_total{graph="echo",namespace="srva"}',
        'exo_runs_finished_total{graph="echo",namespace="srva",status="SUCCESS"}',
        'exo_states{namespace="srva",node="Echo",status="SUCCESS"}',
        'exo_state_wait_seconds_bucket{le="+Inf",namespace="srva",node="Echo"}',
        'exo_state_execution_seconds_count{namespace="srva",node="Echo"}',
        "exo_queue_depth{queue=",
        "exo_broker_up 1.0",
        "exo_state_retries_total",
    ):
        assert series in text, series
    assert "s3cr3t-value-xyz" not in text


def test_no_key_means_loopback_only(live: Live) -> None:
    env = {k: v for k, v in live.stack.env.items() if k != "EXO_API_KEY"}
    done = subprocess.run(
        [sys.executable, "-m", "exo_celery.cli", "serve", "--host", "0.0.0.0", "--port", "0"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0 and "refusing to serve on '0.0.0.0' without an API key" in done.stderr
    assert "Traceback" not in done.stderr


def test_secret_values_never_appear_in_responses_or_pages(live: Live) -> None:
    secret = "top-secret-9f8e7d"
    with live.client() as c:
        leak = c.post(f"/v0/namespace/{NS_A}/graph/secret/trigger", json={"inputs": {"mode": "leak-output"}})
        bad = c.post(f"/v0/namespace/{NS_A}/graph/secret/trigger", json={"inputs": {"mode": "leak-error"}})
        runs = [leak.json()["run_id"], bad.json()["run_id"]]
        assert [live.wait_run(NS_A, r)["status"] for r in runs] == ["SUCCESS", "FAILED"]
        c.cookies.set("exo_session", hashlib.sha256(ADMIN_KEY.encode()).hexdigest())
        texts = [c.get(f"/v0/namespace/{NS_A}/graph/secret").text, c.get(f"/v0/namespace/{NS_A}/graphs/").text]
        for run_id in runs:
            states = c.get(f"/v0/namespace/{NS_A}/run/{run_id}/states").json()["states"]
            texts.append(str(states))
            texts.append(c.get(f"/v0/namespace/{NS_A}/states/run/{run_id}/graph").text)
            texts.append(c.get(f"/v0/namespace/{NS_A}/graph/secret/run/{run_id}/node/{states[0]['id']}").text)
            texts.append(c.get(f"/ui/{NS_A}/run/{run_id}").text)
            texts.append(c.get(f"/ui/{NS_A}/state/{states[0]['id']}").text)
        texts.append(c.get("/metrics").text)
    assert all(secret not in t for t in texts)
    assert "key=***" in texts[2] and "bad key ***" in texts[7] and "bad key ***" in texts[10]
