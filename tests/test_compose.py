"""docker-compose.yml, config/ and the worker/ and beat/ entry points: the file is consistent, and its commands run."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid
from typing import Any

import yaml

from exo_celery.settings import Settings

from .support import ROOT, Proc, Stack

COMPOSE = ROOT / "docker-compose.yml"
CONFIG = ROOT / "config" / "README.md"
ENTRY_POINT_VARIABLES = {"EXO_NAMESPACE", "EXO_NODES", "EXO_WORKER_NAME"}


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def documented() -> dict[str, str]:
    """`EXO_*` variables in config/README.md's tables, with their default column."""
    rows = re.findall(r"^\| `(EXO_[A-Z_]+)` \| ([^|]+) \|", CONFIG.read_text(), flags=re.M)
    return {name: default.strip() for name, default in rows}


def settings_variables() -> set[str]:
    return {f"EXO_{name.upper()}" for name in Settings.model_fields}


def test_config_documents_every_setting_and_the_example_env_uses_only_known_ones() -> None:
    docs = documented()
    assert settings_variables() | ENTRY_POINT_VARIABLES == set(docs)
    for name, field in Settings.model_fields.items():
        if isinstance(field.default, (int, float)) and not isinstance(field.default, bool):
            shown = int(field.default) if float(field.default).is_integer() else field.default
            assert f"`{shown}`" in docs[f"EXO_{name.upper()}"], name  # the default column is right
    example = ROOT / "config" / "example.env"
    keys = {line.split("=", 1)[0] for line in example.read_text().splitlines() if line and not line.startswith("#")}
    assert keys and keys <= set(docs)
    assert json.loads((ROOT / "config" / "squares.json").read_text())["nodes"]


def test_compose_file_has_the_stack_in_order_with_known_settings() -> None:
    data = compose()
    services = data["services"]
    assert {"postgres", "redis", "worker", "beat", "flower"} <= set(services)
    assert services["postgres"]["image"].startswith("postgres:")
    assert services["redis"]["image"].startswith("redis:")
    assert (ROOT / "Dockerfile").is_file()
    for name in ("worker", "beat", "flower", "migrate"):
        assert services[name]["build"] == "." and services[name]["image"], name

    worker_env = services["worker"]["environment"]
    assert services["worker"]["command"][:4] == ["celery", "-A", "worker.app", "worker"]
    queues = services["worker"]["command"][services["worker"]["command"].index("-Q") + 1].split(",")
    namespace_queues = f"{worker_env['EXO_QUEUE_PREFIX']}.{worker_env['EXO_NAMESPACE']}"
    assert queues == [f"{namespace_queues}.{node}" for node in ("SplitNumbers", "Square", "SumAll")]  # one per node
    assert services["beat"]["command"][:4] == ["celery", "-A", "beat.app", "beat"]
    assert services["migrate"]["command"] == ["exo-celery", "db", "upgrade"]
    flower = services["flower"]
    assert "flower" in flower["command"] and "--port=5555" in flower["command"]
    assert f"--broker={worker_env['EXO_BROKER_URL']}" in flower["command"]
    assert flower["ports"] == ["5555:5555"]
    assert flower["environment"]["FLOWER_UNAUTHENTICATED_API"] == "true"  # Flower 2 serves /api only then

    # Every dependency waits for health (or a finished migration), and what is waited on has a health check.
    for name, service in services.items():
        for needed, condition in (service.get("depends_on") or {}).items():
            assert needed in services, (name, needed)
            assert condition["condition"] in {"service_healthy", "service_completed_successfully"}, (name, needed)
            if condition["condition"] == "service_healthy":
                assert services[needed].get("healthcheck", {}).get("test"), needed
    for name in ("worker", "beat"):
        assert services[name]["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    for name in ("postgres", "redis", "worker", "beat", "flower"):
        assert services[name]["healthcheck"]["test"], name

    # Settings: only documented EXO_ variables; every exo process shares ledger, broker and prefix.
    docs = set(documented())
    for name, service in services.items():
        env = service.get("environment") or {}
        assert {k for k in env if k.startswith("EXO_")} <= docs, name
    shared = ("EXO_DATABASE_URL", "EXO_BROKER_URL", "EXO_QUEUE_PREFIX", "EXO_HOME")
    for name in ("worker", "beat", "migrate"):
        assert {k: services[name]["environment"][k] for k in shared} == {k: worker_env[k] for k in shared}, name
    assert (
        worker_env["EXO_DATABASE_URL"].startswith("postgresql://exo:")
        and "@postgres:5432/exo" in worker_env["EXO_DATABASE_URL"]
    )
    assert services["postgres"]["environment"]["POSTGRES_USER"] == "exo"
    assert worker_env["EXO_BROKER_URL"].startswith("redis://redis:6379/")
    assert worker_env["EXO_NODES"] == "exo_celery.demo:NODES"


def spawn(stack: Stack, argv: list[str], env: dict[str, str], label: str) -> Proc:
    log = stack.home / f"{label}-{uuid.uuid4().hex[:6]}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        popen = subprocess.Popen(
            argv, cwd=ROOT, env={**stack.env, **env}, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    proc = Proc(popen, log)
    stack.procs.append(proc)
    return proc


def local(command: list[str], stack: Stack) -> list[str]:
    """A compose command run here: this interpreter's celery, this stack's queue prefix."""
    assert command[0] == "celery"
    argv = [sys.executable, "-m", "celery", *command[1:]]
    if "-Q" in argv:
        queues = argv[argv.index("-Q") + 1].split(",")
        argv[argv.index("-Q") + 1] = ",".join(f"{stack.settings().queue_prefix}.{q.split('.', 1)[1]}" for q in queues)
    return argv


def test_compose_worker_and_beat_commands_run_the_example_graph(fresh_pg: Stack) -> None:
    """`celery -A worker.app worker` registers the demo nodes; `celery -A beat.app beat` releases a long delay."""
    services = compose()["services"]
    worker_env = {k: v for k, v in services["worker"]["environment"].items() if k in ENTRY_POINT_VARIABLES}
    fast = {"EXO_MAX_COUNTDOWN": "1", "EXO_SWEEP_INTERVAL": "0.5"}
    worker = spawn(fresh_pg, local(services["worker"]["command"], fresh_pg), {**worker_env, **fast}, "compose-worker")
    beat = spawn(fresh_pg, local(services["beat"]["command"], fresh_pg), fast, "compose-beat")
    worker.wait_for(" ready.")
    beat.wait_for("beat: Starting")

    env = {**fresh_pg.env, **worker_env, **fast}
    cli = [sys.executable, "-m", "exo_celery.cli"]
    done = subprocess.run(
        [*cli, "upsert", "config/squares.json"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and "graph 'squares' version 1 in namespace 'demo': VALID" in done.stdout, done.stderr
    # 2 s is longer than EXO_MAX_COUNTDOWN here: the root waits in the ledger until beat sends it.
    done = subprocess.run(
        [*cli, "trigger", "squares", "--input", "numbers=[1, 2, 3, 4]", "--start-delay", "2000", "--wait", "--json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    finished = json.loads(done.stdout)
    assert finished["status"] == "SUCCESS" and finished["counts"] == {"SUCCESS": 9}
    states = fresh_pg.manager("demo").list_states_sync(finished["run_id"])
    assert next(s for s in states if s["identifier"] == "sum")["outputs"] == {"total": "30"}
    assert "released 1 due state(s)" in beat.text()
    registered = f"Task {fresh_pg.settings().queue_prefix}.demo.SumAll"
    assert registered in worker.text()
