"""The compatibility suite's second interpreter: Python 3.12 with the real exospherehost SDK.

`sdk_python` builds (once, then reuses) a venv at `<repo>/.venv-compat-3.12` holding this project
(editable, with its `compat` extra: pytest and its plugins only) and `exospherehost==0.0.3`, and
returns its interpreter (`prebuild.py` starts the build when the run starts). Tests that need the
SDK live in `tests/compat/sdk/` and run in that interpreter as a subprocess (see
test_sdk_suite.py); this interpreter never collects them. Locally a missing Python 3.12 or a failed
install skips; under CI=true it fails.

Environment: EXO_COMPAT_PYTHON picks the interpreter (a path or a name such as python3.13; the venv
is then `.venv-compat-<version>`).

`newest_python` builds the same venv for Python 3.13 (`.venv-compat-3.13`), where the unit tests run
too (test_sdk_suite.py); EXO_COMPAT_PYTHON does not change it.
"""

from __future__ import annotations

import fcntl
import glob
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..support import CI, ROOT

SDK_REQUIREMENT = "exospherehost==0.0.3"
SDK_VERSION = "3.12"
NEWEST_VERSION = "3.13"

# Collected only inside the compat interpreter (where the SDK imports).
if importlib.util.find_spec("exospherehost") is None:
    collect_ignore_glob = ["sdk/*"]


def _unavailable(message: str) -> None:
    if CI:
        pytest.fail(f"{message} (CI=true: the compat suite must run)", pytrace=False)
    pytest.skip(message)


def _version_of(python: str) -> str | None:
    done = subprocess.run(
        [python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"], capture_output=True, text=True
    )
    return done.stdout.strip() if done.returncode == 0 else None


def find_python(version: str = SDK_VERSION, chosen: bool = True) -> str | None:
    """An interpreter of `version` (PATH, then pyenv's versions, then the usual prefixes), or None.

    With `chosen`, EXO_COMPAT_PYTHON, when set, is the interpreter whatever its version."""
    wanted = os.environ.get("EXO_COMPAT_PYTHON") if chosen else None
    if wanted:
        path = shutil.which(wanted) or (wanted if os.path.isfile(wanted) else None)
        return path if path and _version_of(path) else None
    roots = [os.environ.get("PYENV_ROOT", ""), os.path.expanduser("~/.pyenv")]
    candidates = [
        shutil.which(f"python{version}") or "",
        *(p for root in roots if root for p in sorted(glob.glob(f"{root}/versions/{version}*/bin/python{version}"))),
        f"/usr/bin/python{version}",
        f"/usr/local/bin/python{version}",
    ]
    for path in candidates:
        # pyenv's shim exists even when the version is not selected: it is judged by running it.
        if path and os.path.isfile(path) and _version_of(path) == version:
            return path
    return None


def _fingerprint() -> str:
    """What the venv was built from: a change rebuilds it (pip install again, in place)."""
    data = (ROOT / "pyproject.toml").read_bytes() + SDK_REQUIREMENT.encode()
    return hashlib.sha256(data).hexdigest()


def build_venv(python: str) -> Path:
    """The compat venv for `python`, built or refreshed under a file lock; returns its interpreter."""
    version = _version_of(python)
    venv = ROOT / f".venv-compat-{version}"
    marker = venv / ".exo-compat-built"
    lock_path = ROOT / f".venv-compat-{version}.lock"
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.exists() and marker.read_text() == _fingerprint() and (venv / "bin" / "python").exists():
            return venv / "bin" / "python"
        if not (venv / "bin" / "python").exists():
            done = subprocess.run([python, "-m", "venv", str(venv)], capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"python -m venv failed:\n{done.stdout}{done.stderr}")
        # The SDK requires Python >= 3.12; --ignore-requires-python also lets 3.11 be tried by hand.
        argv = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        argv += ["--ignore-requires-python", "-e", f"{ROOT}[compat]", SDK_REQUIREMENT]
        done = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT)
        if done.returncode != 0:
            raise RuntimeError(f"pip install into {venv} failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
        marker.write_text(_fingerprint())
    return venv / "bin" / "python"


@pytest.fixture(scope="session")
def sdk_python() -> Iterator[Path]:
    """Path of a Python 3.12 interpreter with this project and the real exospherehost SDK installed."""
    if os.environ.get("EXO_COMPAT_INNER"):
        yield Path(sys.executable)  # already inside the compat interpreter
        return
    yield _built(find_python(), f"Python {SDK_VERSION} (set EXO_COMPAT_PYTHON)")


@pytest.fixture(scope="session")
def newest_python() -> Iterator[Path]:
    """Path of a Python 3.13 interpreter with this project installed (and the SDK, which installs there too)."""
    if os.environ.get("EXO_COMPAT_INNER"):
        yield Path(sys.executable)
        return
    yield _built(find_python(NEWEST_VERSION, chosen=False), f"Python {NEWEST_VERSION}")


def _built(python: str | None, wanted: str) -> Path:
    """The compat venv of `python`; skips (fails under CI) when there is none or it cannot be built."""
    if python is None:
        _unavailable(f"no {wanted} interpreter found")
    try:
        return build_venv(python)  # type: ignore[arg-type]
    except (RuntimeError, OSError) as exc:
        _unavailable(f"cannot build the compat venv of {wanted}: {exc}")
        raise  # _unavailable skips or fails; never reached
