"""Runs the compat suite (tests/compat/sdk/) in the Python 3.12 interpreter that has the real SDK.

EXO_COMPAT_PYTEST_ARGS replaces what that interpreter runs, e.g. `tests/unit` or `tests` to run
the unit tests or the whole suite on Python 3.12 too (the default is the SDK suite alone).
"""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest

from ..support import CI, ROOT

DEFAULT_ARGS = "tests/compat/sdk"


# Its inner suite may take 15 minutes (its own timeout), after the compat venv is built (pip, minutes).
@pytest.mark.timeout(1800)
def test_compat_suite_passes_on_python_312_against_the_real_sdk(sdk_python: Path) -> None:
    if os.environ.get("EXO_COMPAT_INNER"):
        pytest.skip("already inside the compat interpreter")
    args = shlex.split(os.environ.get("EXO_COMPAT_PYTEST_ARGS") or DEFAULT_ARGS)
    env = {**os.environ, "EXO_COMPAT_INNER": "1"}
    done = subprocess.run(
        # One -q (the project's addopts has one more) keeps pytest's "N passed" line to read.
        [str(sdk_python), "-m", "pytest", "-o", "addopts=", "-q", "-p", "no:cacheprovider", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    report = (done.stdout + done.stderr)[-20000:]
    print(report)
    assert done.returncode == 0, f"compat suite failed on {sdk_python}:\n{report}"
    summary = done.stdout.strip().splitlines()[-1]
    assert " passed" in summary, report
    if CI:  # inside, CI=true already turns a missing server into a failure; nothing may be skipped
        assert " skipped" not in summary, report
