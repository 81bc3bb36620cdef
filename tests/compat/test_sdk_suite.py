"""Runs the compat suite and the unit tests on Python 3.12, which has the real SDK (3.13: see
test_newest_python.py, a file of its own so that the two run in parallel under `-n 2`).

EXO_COMPAT_PYTEST_ARGS replaces what the 3.12 interpreter runs, e.g. `tests` to run the whole suite
on Python 3.12 too (the default is the SDK suite and the unit tests). The whole suite on every
version does not fit CI's time on two cores: see docs/migrating-from-exosphere.md.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest

from ..support import CI, ROOT

DEFAULT_ARGS = "tests/compat/sdk tests/unit"


def passes_inside(python: Path, args: list[str]) -> None:
    """Run pytest with `args` in `python`; assert it passed and, under CI, skipped nothing."""
    if os.environ.get("EXO_COMPAT_INNER"):
        pytest.skip("already inside the compat interpreter")
    env = {**os.environ, "EXO_COMPAT_INNER": "1"}
    done = subprocess.run(
        # One -q (the project's addopts has one more) keeps pytest's "N passed" line to read.
        [str(python), "-m", "pytest", "-o", "addopts=", "-q", "-p", "no:cacheprovider", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    report = (done.stdout + done.stderr)[-20000:]
    print(report)
    assert done.returncode == 0, f"tests failed on {python}:\n{report}"
    summary = done.stdout.strip().splitlines()[-1]
    assert " passed" in summary, report
    if CI:  # inside, CI=true already turns a missing server into a failure; nothing may be skipped
        assert " skipped" not in summary, report


# Its inner suite may take 15 minutes (its own timeout), after the compat venv is built (pip, minutes).
@pytest.mark.timeout(1800)
def test_compat_suite_passes_on_python_312_against_the_real_sdk(sdk_python: Path) -> None:
    passes_inside(sdk_python, shlex.split(os.environ.get("EXO_COMPAT_PYTEST_ARGS") or DEFAULT_ARGS))

