"""The kept doc examples are the pages' own code (only the import line changed, or the change listed).

Runs in the main interpreter (no SDK needed). Exosphere's pages are found beside the checkout
(`../shared/exosphere/`) or through EXO_SHARED_DIR; locally a missing copy skips, under CI=true it fails.
"""

from __future__ import annotations

import re

import pytest

from ..support import CI, ROOT
from .docs_examples import EXAMPLES, PAGES, blocks, changes, docs_dir, example, to_ours

MIGRATING = ROOT / "docs" / "migrating-from-exosphere.md"
KEPT = sorted(p.name for p in EXAMPLES.iterdir() if p.suffix in {".py", ".json"})


@pytest.fixture(scope="module")
def pages() -> dict[str, list[tuple[str, str]]]:
    found = docs_dir()
    if found is None:
        message = "Exosphere's pages (shared/exosphere/) are not beside this checkout; set EXO_SHARED_DIR"
        if CI:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return {key: blocks((found / page).read_text()) for key, page in PAGES.items()}


def _where(name: str) -> tuple[str, int]:
    match = re.fullmatch(r"(.+)__b(\d+)\.(py|json)", name)
    assert match, name
    return match.group(1), int(match.group(2))


@pytest.mark.parametrize("name", KEPT)
def test_kept_example_is_the_page_block(name: str, pages: dict[str, list[tuple[str, str]]]) -> None:
    page, index = _where(name)
    language, code = pages[page][index]
    assert language == ("python" if name.endswith(".py") else "json")
    if changes(name):  # changed beyond the import: the migration page must say where and why
        assert f"`{name}`" in MIGRATING.read_text(), f"{name} changes more than its import; list it in {MIGRATING}"
    else:
        assert example(name) == to_ours(code), f"{name} differs from {page} block {index} beyond the import line"


def test_every_python_block_of_the_pages_is_kept_or_listed(pages: dict[str, list[tuple[str, str]]]) -> None:
    """A block not run as an example (a fragment of a class, a method body) is listed with the reason."""
    text = MIGRATING.read_text()
    missing = []
    for page, found in pages.items():
        for index, (language, _) in enumerate(found):
            name = f"{page}__b{index}"
            if language != "python" or f"{name}.py" in KEPT:
                continue
            if f"`{name}`" not in text:
                missing.append(name)
    assert missing == [], f"python blocks neither kept as examples nor listed in {MIGRATING}: {missing}"


def test_every_kept_example_is_listed() -> None:
    text = MIGRATING.read_text()
    assert [n for n in KEPT if f"`{n}`" not in text] == []
