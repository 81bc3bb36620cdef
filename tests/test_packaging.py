"""From a wheel in a fresh virtualenv, in an empty folder: the packaged `celery -A` entry points run a graph.

Builds the wheel (`pip wheel . --no-deps`), installs it with its dependencies in a new venv, and
runs everything from an empty temporary folder (no repository on the path) on the embedded
default: `celery -A exo_celery.worker_app worker`, `celery -A exo_celery.beat_app beat`, and the
installed `exo-celery` command. About 30-60 s, most of it the install.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from exo_celery import __version__

from .support import ROOT, Proc

# Builds a wheel and installs it into a fresh venv (pip alone may take up to 15 minutes).
pytestmark = pytest.mark.timeout(1200)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """(the wheel, the bin folder of a fresh venv holding it)."""
    base = tmp_path_factory.mktemp("packaging")
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-q", "-w", str(base / "dist")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = (base / "dist").glob("exo_celery-*.whl")
    subprocess.run([sys.executable, "-m", "venv", str(base / "venv")], check=True, timeout=120)
    bin_dir = base / "venv" / "bin"
    done = subprocess.run(
        [str(bin_dir / "python"), "-m", "pip", "install", "-q", str(wheel)], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    yield wheel, bin_dir


def test_the_wheel_carries_types_licence_migrations_and_metadata(installed: tuple[Path, Path]) -> None:
    wheel, bin_dir = installed
    names = zipfile.ZipFile(wheel).namelist()
    for needed in (
        "exo_celery/py.typed",
        "exo_celery/worker_app.py",
        "exo_celery/beat_app.py",
        "exo_celery/ledger/migrations/script.py.mako",
    ):
        assert needed in names, needed
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert not any(n.startswith(("worker/", "beat/", "tests/")) for n in names)
    metadata = next(zipfile.ZipFile(wheel).read(n).decode() for n in names if n.endswith(".dist-info/METADATA"))
    assert "License-Expression: Apache-2.0" in metadata
    assert "Classifier: Programming Language :: Python :: 3.13" in metadata
    assert f"Version: {__version__}" in metadata
    shown = subprocess.run([str(bin_dir / "exo-celery"), "--version"], capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and shown.stdout.strip() == f"exo-celery {__version__}"


def test_packaged_celery_entry_points_run_a_graph_from_an_empty_folder(
    installed: tuple[Path, Path], tmp_path: Path
) -> None:
    _, bin_dir = installed
    folder = tmp_path / "empty"
    folder.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EXO_", "PYTHON"))}
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
        EXO_NAMESPACE="demo",
        EXO_NODES="exo_celery.demo:NODES",
        EXO_MAX_COUNTDOWN="1",
        EXO_SWEEP_INTERVAL="0.5",
    )
    procs: list[Proc] = []

    def start(label: str, *argv: str) -> Proc:
        log = tmp_path / f"{label}.log"
        with log.open("wb") as out:
            popen = subprocess.Popen(
                [str(bin_dir / "celery"), *argv],
                cwd=folder,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        procs.append(Proc(popen, log))
        return procs[-1]

    def exo(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(bin_dir / "exo-celery"), *argv], cwd=folder, env=env, capture_output=True, text=True, timeout=120
        )

    try:
        worker = start("worker", "-A", "exo_celery.worker_app", "worker", "-P", "threads", "-c", "2", "--loglevel=INFO")
        beat = start("beat", "-A", "exo_celery.beat_app", "beat", "--loglevel=INFO")
        worker.wait_for(" ready.", timeout=90)
        beat.wait_for("beat: Starting", timeout=90)
        where = subprocess.run(
            [str(bin_dir / "python"), "-c", "import exo_celery; print(exo_celery.__file__)"],
            cwd=folder,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert where.stdout.startswith(str(bin_dir.parent)), where  # the wheel's copy, not the repository

        graph = folder / "squares.json"
        shutil.copy(ROOT / "config" / "squares.json", graph)
        upserted = exo("upsert", str(graph))
        assert upserted.returncode == 0 and "VALID" in upserted.stdout, upserted.stderr
        # 2 s is longer than EXO_MAX_COUNTDOWN: the root waits in the ledger until the packaged beat sends it.
        done = exo("trigger", "squares", "--start-delay", "2000", "--wait", "--timeout", "90", "--json")
        assert done.returncode == 0, done.stderr + worker.text()[-3000:]
        finished = json.loads(done.stdout)
        assert finished["status"] == "SUCCESS" and finished["counts"] == {"SUCCESS": 11}
        shown = json.loads(exo("show", finished["run_id"], "--json").stdout)
        assert next(s for s in shown["states"] if s["identifier"] == "sum")["outputs"] == {"total": "55"}
        assert "released 1 due state(s)" in beat.text()
        check = exo("beat", "--check")
        assert check.returncode == 0 and "ticked" in check.stdout, check.stderr
        # Everything lived in the empty folder's embedded default, and the repository was never imported.
        assert (folder / ".exo" / "ledger.db").is_file()
        assert str(ROOT) not in worker.text()
    finally:
        for proc in procs:
            proc.stop()
