"""The unit tests on Python 3.13, the newest supported version (in its own venv, see conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from .test_sdk_suite import passes_inside


@pytest.mark.timeout(1200)
def test_unit_tests_pass_on_python_313(newest_python: Path) -> None:
    passes_inside(newest_python, ["tests/unit"])
