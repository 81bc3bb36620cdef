"""The README's two set-up commands are the ones CI runs."""

from __future__ import annotations

from .support import ROOT


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = text.split("```bash\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip()]


def test_readme_starts_with_exactly_two_commands_demo_then_tests() -> None:
    commands = readme_commands()
    assert len(commands) == 2
    assert commands[0].endswith("exo-celery demo")
    assert "pytest" in commands[1]
    assert (ROOT / "README.md").read_text().index("```bash") < 40  # at the top


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert readme_commands()[1] in ci.splitlines()
    assert "export CI=true" in ci
