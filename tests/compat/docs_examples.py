"""The examples of Exosphere's docs (../shared/exosphere/) as the compat suite keeps them.

`tests/compat/examples/<page>__b<n>.<py|json>` is code block n of a page with its import line changed
from `exospherehost` to `exo_celery` and nothing else, unless the file starts with `# changed:`
lines saying what else had to change and why (docs/migrating-from-exosphere.md lists them).
"""

from __future__ import annotations

import os
import re
import textwrap
from pathlib import Path

from ..support import ROOT

EXAMPLES = Path(__file__).resolve().parent / "examples"
PAGES = {
    "concepts": "000_99daef383b63d2ab.txt",
    "getting-started": "004_06cd5ff08d5869dc.txt",
    "create-graph": "create-graph.md",
    "graph-validation": "graph-validation.md",
    "retry-policy": "retry-policy.md",
    "signals": "signals.md",
    "store": "store.md",
    "triggers": "triggers.md",
    "unite": "unite.md",
}
_BLOCK = re.compile(r"^([ \t]*)```(\w+)[^\n]*\n(.*?)^\1```", re.S | re.M)


def docs_dir() -> Path | None:
    """Where Exosphere's pages are: EXO_SHARED_DIR, or a `shared/` beside the checkout (or one level up)."""
    given = os.environ.get("EXO_SHARED_DIR")
    candidates = [Path(given)] if given else [ROOT.parent / "shared", ROOT.parent.parent / "shared"]
    for base in candidates:
        if (base / "exosphere").is_dir():
            return base / "exosphere"
    return None


def blocks(page_text: str) -> list[tuple[str, str]]:
    """Every fenced block of a page as (language, dedented text)."""
    return [(lang, textwrap.dedent(body)) for _, lang, body in _BLOCK.findall(page_text)]


def to_ours(code: str) -> str:
    """The one change every example gets: its import line."""
    return code.replace("from exospherehost import", "from exo_celery import")


def example(name: str) -> str:
    """An example's text without its `# changed:` header."""
    text = (EXAMPLES / name).read_text()
    return "".join(line for line in text.splitlines(keepends=True) if not line.startswith("# changed:"))


def changes(name: str) -> list[str]:
    """The `# changed:` notes of an example (empty for an import-only one)."""
    lines = (EXAMPLES / name).read_text().splitlines()
    return [line.removeprefix("# changed:").strip() for line in lines if line.startswith("# changed:")]
