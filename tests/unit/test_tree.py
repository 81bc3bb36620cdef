"""The checkout itself: no file keeps a merge's conflict markers."""

from __future__ import annotations

import subprocess

from ..support import ROOT

MARKERS = ("<<<<<<< ", ">>>>>>> ")


def test_no_tracked_file_keeps_conflict_markers() -> None:
    listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True)
    found = []
    for name in listed.stdout.splitlines():
        path = ROOT / name
        if not path.is_file() or path.suffix not in {".py", ".md", ".toml", ".yml", ".yaml", ".cfg", ".txt", ""}:
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if line.startswith(MARKERS):
                found.append(f"{name}:{number}")
    assert not found, f"conflict markers left by a merge: {found}"
