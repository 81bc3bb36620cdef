"""The real SDK's HTTP client against the live server (tests/compat/sdk_http_client.py).

Runs in the compat suite's Python 3.12 venv with exospherehost==0.0.3 (the `sdk_python` fixture:
skipped locally when no Python 3.12 is found, a failure under CI=true).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from ..compat.conftest import sdk_python  # noqa: F401  (the fixture)
from ..support import ROOT
from .conftest import ADMIN_KEY, NS_A, Live


@pytest.mark.timeout(1200)  # the first user of `sdk_python` builds the compat venv (pip, minutes)
def test_the_sdk_http_state_manager_drives_a_run(live: Live, sdk_python: Path) -> None:  # noqa: F811
    done = subprocess.run(
        [str(sdk_python), str(ROOT / "tests/compat/sdk_http_client.py"), live.url, NS_A, ADMIN_KEY],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout
