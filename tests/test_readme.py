"""The README documents every setting (key, environment variable) and the quick start."""

from __future__ import annotations

from pathlib import Path

from verifier.settings import describe

README = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")


def test_every_setting_is_documented_with_its_environment_variable() -> None:
    missing = []
    for table, key, _default, doc in describe():
        env = "VERIFIER_" + (table.upper() + "_" if table else "") + key.upper()
        if f"| `{key}` |" not in README or f"`{env}`" not in README:
            missing.append(env)
        assert doc, f"{table or 'top'}.{key} has no doc string"
    assert [] == missing


def test_quick_start_is_two_commands_and_ci_runs_the_second() -> None:
    block = README.split("## Quick start", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    commands = [line for line in block.strip().splitlines() if line.strip()]
    assert 2 == len(commands)
    assert commands[0].endswith("verifier demo")
    assert "bash .ci/run" == commands[1]
