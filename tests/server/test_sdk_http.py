"""The real SDK's HTTP client against the live server (tests/compat/sdk_http_client.py).

Needs a Python with exospherehost==0.0.3, named by EXO_SDK_PYTHON (the compat suite's `sdk_python`
fixture will provide one); without it this test is skipped.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from ..support import ROOT
from .conftest import ADMIN_KEY, NS_A, Live

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


def test_the_sdk_http_state_manager_drives_a_run(live: Live) -> None:
    python = os.environ.get("EXO_SDK_PYTHON")
    if not python:
        pytest.skip("EXO_SDK_PYTHON (a Python with exospherehost==0.0.3) is not set")
    done = subprocess.run(
        [python, str(ROOT / "tests/compat/sdk_http_client.py"), live.url, NS_A, ADMIN_KEY],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout
