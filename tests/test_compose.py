"""docker-compose.yml, config/ and the worker/ and beat/ entry points: the file is consistent, and its commands run."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
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


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's variable substitution (`${VAR}`, `${VAR:-default}`, `$$`) applied to a value of the file."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, default = match.group(1), match.group(3)
        return env.get(name) or (default if default is not None else "")

    return re.sub(r"\$\$|\$\{([A-Z_][A-Z0-9_]*)(:-([^}]*))?\}", one, value)


def services_with(env: dict[str, str] | None = None) -> dict[str, Any]:
    """The services as compose would run them with `env` (the shell and .env) set."""
    given = env or {}
    services: dict[str, Any] = interpolate(compose()["services"], given)
    profiles = set(filter(None, given.get("COMPOSE_PROFILES", "").split(",")))
    return {n: s for n, s in services.items() if not s.get("profiles") or profiles & set(s["profiles"])}


EXO_PROCESSES = ("migrate", "worker", "beat", "flower")
RABBITMQ = {"COMPOSE_PROFILES": "rabbitmq", "EXO_BROKER_URL": "amqp://exo:exo@rabbitmq:5672//"}


def test_compose_file_has_the_stack_in_order_with_known_settings() -> None:
    services = services_with()
    assert {"postgres", "redis", "worker", "beat", "flower", "migrate"} <= set(services)
    assert "rabbitmq" not in services  # only with its profile
    assert services["postgres"]["image"].startswith("postgres:")
    assert services["redis"]["image"].startswith("redis:")
    assert (ROOT / "Dockerfile").is_file()
    for name in EXO_PROCESSES:
        assert services[name]["build"] == "." and services[name]["image"], name

    worker_env = services["worker"]["environment"]
    assert services["worker"]["command"][:4] == ["celery", "-A", "exo_celery.worker_app", "worker"]
    assert services["beat"]["command"][:4] == ["celery", "-A", "exo_celery.beat_app", "beat"]
    assert services["migrate"]["command"] == ["exo-celery", "db", "upgrade"]

    # Every dependency waits for health (or a finished migration), and what is waited on has a health check.
    every = compose()["services"]
    for name, service in every.items():
        for needed, condition in (service.get("depends_on") or {}).items():
            assert needed in every, (name, needed)
            assert condition["condition"] in {"service_healthy", "service_completed_successfully"}, (name, needed)
            if condition["condition"] == "service_healthy":
                assert every[needed].get("healthcheck", {}).get("test"), needed
    for name in ("worker", "beat"):
        assert services[name]["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    for name in ("postgres", "redis", "worker", "beat", "flower"):
        assert services[name]["healthcheck"]["test"], name

    # Settings: only documented EXO_ variables; every exo process shares ledger, broker, prefix and home.
    docs = set(documented())
    for name, service in services.items():
        env = service.get("environment") or {}
        assert {k for k in env if k.startswith("EXO_")} <= docs, name
    shared = ("EXO_DATABASE_URL", "EXO_BROKER_URL", "EXO_QUEUE_PREFIX", "EXO_HOME", "EXO_NAMESPACE")
    for name in EXO_PROCESSES:
        assert {k: services[name]["environment"][k] for k in shared} == {k: worker_env[k] for k in shared}, name
    assert (
        worker_env["EXO_DATABASE_URL"].startswith("postgresql://exo:")
        and "@postgres:5432/exo" in worker_env["EXO_DATABASE_URL"]
    )
    assert services["postgres"]["environment"]["POSTGRES_USER"] == "exo"
    assert worker_env["EXO_BROKER_URL"] == "redis://redis:6379/0"
    assert worker_env["EXO_QUEUE_PREFIX"] == "exo" and worker_env["EXO_NAMESPACE"] == "demo"
    assert worker_env["EXO_NODES"] == "exo_celery.demo:NODES"


def test_compose_rules_flower_is_not_open_queues_and_broker_come_from_the_environment() -> None:
    text = COMPOSE.read_text()
    services = services_with()

    # Flower: published on loopback only, its API not opened without auth, its broker everyone's variable.
    flower = services["flower"]
    assert flower["ports"] and all(str(p).startswith("127.0.0.1:") for p in flower["ports"]), flower["ports"]
    assert str((flower.get("environment") or {}).get("FLOWER_UNAUTHENTICATED_API", "false")).lower() != "true"
    assert "FLOWER_BASIC_AUTH" not in (flower.get("environment") or {})  # a password comes from .env, not this file
    assert {"path": ".env", "required": False} in flower["env_file"]
    command = " ".join(flower["command"])
    assert "flower" in command and '--broker="$EXO_BROKER_URL"' in command
    assert "redis://" not in command and "amqp://" not in command
    for name, service in services.items():  # nothing else is published beyond loopback either
        assert all(str(p).startswith("127.0.0.1:") for p in service.get("ports") or []), name

    # Queues: never named in the file; the worker consumes what its app computes from the environment.
    assert "-Q" not in text and "exo.demo" not in text
    for name in EXO_PROCESSES:
        assert "-Q" not in services[name]["command"], name
    custom = services_with({"EXO_QUEUE_PREFIX": "acme", "EXO_NAMESPACE": "billing"})
    assert custom["worker"]["environment"]["EXO_QUEUE_PREFIX"] == "acme"
    assert custom["worker"]["environment"]["EXO_NAMESPACE"] == "billing"

    # Health: beat by its heartbeat in the ledger, the worker by Celery's ping of its own node name.
    assert services["beat"]["healthcheck"]["test"] == ["CMD", "exo-celery", "beat", "--check"]
    ping = " ".join(services["worker"]["healthcheck"]["test"])
    assert "inspect ping" in ping and '--broker="$EXO_BROKER_URL"' in ping and "celery@$HOSTNAME" in ping

    # The rabbitmq profile switches every exo process and Flower to RabbitMQ, and they wait for it.
    rabbit = services_with(RABBITMQ)
    assert rabbit["rabbitmq"]["image"].startswith("rabbitmq:") and rabbit["rabbitmq"]["healthcheck"]["test"]
    assert compose()["services"]["rabbitmq"]["profiles"] == ["rabbitmq"]
    for name in EXO_PROCESSES:
        assert rabbit[name]["environment"]["EXO_BROKER_URL"] == RABBITMQ["EXO_BROKER_URL"], name
    for name in ("worker", "beat", "flower"):
        needs = rabbit[name]["depends_on"]
        assert needs["rabbitmq"] == {"condition": "service_healthy", "required": False}, name
        assert needs["redis"] == {"condition": "service_healthy", "required": False}, name
    user = rabbit["rabbitmq"]["environment"]["RABBITMQ_DEFAULT_USER"]
    password = rabbit["rabbitmq"]["environment"]["RABBITMQ_DEFAULT_PASS"]
    assert RABBITMQ["EXO_BROKER_URL"].startswith(f"amqp://{user}:{password}@rabbitmq:5672/")
    assert "COMPOSE_PROFILES=rabbitmq" in text and f"EXO_BROKER_URL={RABBITMQ['EXO_BROKER_URL']}" in text


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


def local(command: list[str]) -> list[str]:
    """A compose command run here, with this interpreter's celery (the stack's environment gives the queues)."""
    assert command[0] == "celery"
    return [sys.executable, "-m", "celery", *command[1:]]


def test_compose_worker_and_beat_commands_run_the_example_graph(fresh_pg: Stack) -> None:
    """The packaged `celery -A exo_celery.worker_app worker` (no -Q) registers the demo nodes and consumes the
    stack's queues; `celery -A exo_celery.beat_app beat` releases a long delay; beat's healthcheck tells the truth."""
    services = services_with()
    worker_env = {k: v for k, v in services["worker"]["environment"].items() if k in ENTRY_POINT_VARIABLES}
    fast = {"EXO_MAX_COUNTDOWN": "1", "EXO_SWEEP_INTERVAL": "0.5"}
    env = {**fresh_pg.env, **worker_env, **fast}
    cli = [sys.executable, "-m", "exo_celery.cli"]
    health = services["beat"]["healthcheck"]["test"][1:]
    assert health[0] == "exo-celery"

    def beat_check(*extra: str) -> subprocess.CompletedProcess[str]:
        argv = [*cli, *health[1:], *extra]
        return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)

    before = beat_check()
    assert before.returncode == 1 and before.stderr.startswith("error: ") and "Traceback" not in before.stderr

    worker = spawn(fresh_pg, local(services["worker"]["command"]), {**worker_env, **fast}, "compose-worker")
    beat = spawn(fresh_pg, local(services["beat"]["command"]), fast, "compose-beat")
    worker.wait_for(" ready.")
    beat.wait_for("beat: Starting")
    prefix = fresh_pg.settings().queue_prefix
    assert f".> {prefix}.demo.SplitNumbers " in worker.text()  # the queues came from EXO_QUEUE_PREFIX and EXO_NAMESPACE
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
    registered = f"Task {prefix}.demo.SumAll"
    assert registered in worker.text()

    # The compose healthcheck passes while beat ticks, and fails (one line, exit 1) once it stopped.
    alive = beat_check()
    assert alive.returncode == 0 and "ticked" in alive.stdout and "limit 10 s" in alive.stdout, alive.stderr
    beat.kill()
    beat.popen.wait(timeout=10)
    deadline = time.monotonic() + 30
    while (dead := beat_check("--max-age", "2")).returncode == 0:
        assert time.monotonic() < deadline, dead.stdout
        time.sleep(0.5)
    assert dead.returncode == 1 and dead.stdout == "", dead.stdout
    line = dead.stderr.strip()
    assert "\n" not in line and line.startswith("error: beat 'beat@") and "(limit 2 s)" in line, line
