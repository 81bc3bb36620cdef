"""Build the compat venvs (Python 3.12 and 3.13) in the background while the rest of the suite runs.

`tests/conftest.py` starts this as a subprocess at the start of a run that includes `tests/compat`:
building a venv is mostly waiting on pip, and the fixtures that need a venv (`sdk_python`,
`newest_python`) otherwise build it inside a test, holding one of the two xdist workers idle for
minutes. The fixtures call the same `build_venv`, which waits on the venv's file lock, so they take
the venv built here, or build it themselves if this failed (and then report why).
"""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor

from .conftest import NEWEST_VERSION, build_venv, find_python


def main() -> int:
    pythons = [p for p in (find_python(), find_python(NEWEST_VERSION, chosen=False)) if p is not None]
    with ThreadPoolExecutor(max_workers=len(pythons) or 1) as pool:
        for python, built in zip(pythons, pool.map(_try_build, pythons), strict=True):
            print(f"{python}: {built}", flush=True)
    return 0


def _try_build(python: str) -> str:
    try:
        return str(build_venv(python))
    except (RuntimeError, OSError) as exc:  # the fixture builds again and reports it
        return f"not built: {exc}"


if __name__ == "__main__":
    sys.exit(main())
