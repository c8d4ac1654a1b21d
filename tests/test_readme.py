"""The README's configuration reference is the one generated from the settings; quick start."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from verifier.settings import ConfigError, describe
from verifier.settings_text import README_BEGIN, README_END, REGENERATE, reference, update_reference

README = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")


def _block(text: str) -> str:
    begin, end = text.index(README_BEGIN), text.index(README_END)
    return text[begin : end + len(README_END)]


def test_configuration_reference_is_the_generated_one() -> None:
    assert reference() == _block(README), f"README.md's reference is out of date: run {REGENERATE}"


def test_reference_lists_every_key_with_environment_variable_default_and_doc() -> None:
    block = reference()
    for key in describe():
        rows = [line for line in block.splitlines() if line.startswith(f"| `{key.name}` | ")]
        assert [r for r in rows if f"| `{key.env}` |" in r], key.label
    assert "| `writer_batch_size` | `VERIFIER_TUNING_WRITER_BATCH_SIZE` | `2000` | " in block
    assert "| `ca_file` | `VERIFIER_HTTP_CLIENT_CA_FILE` | (unset) | " in block
    assert '| `user_agent` | `VERIFIER_HTTP_CLIENT_USER_AGENT` | `"verifier/<version>"` | ' in block
    assert "**[tuning]**\n\nPerformance knobs. Leave them alone unless you have measured" in block
    assert "**[http_client]**\n\nThe rules every outgoing fetch follows" in block


def test_reference_holds_no_measured_figures() -> None:
    figure = re.compile(
        r"\d[\d,.]*\s*(us|µs|ms|x|%)(?!\w)|/s\b|\bpairs?\b|measured (with|in)", re.I
    )
    assert [] == [line for line in reference().splitlines() if figure.search(line)]


def test_update_replaces_only_the_block_and_needs_the_markers() -> None:
    text = f"# Title\n\nbefore\n\n{README_BEGIN}\nstale\n{README_END}\n\nafter\n"
    assert f"# Title\n\nbefore\n\n{reference()}\n\nafter\n" == update_reference(text)
    with pytest.raises(ConfigError, match="no '<!-- BEGIN"):
        update_reference("# Title\n")
    with pytest.raises(ConfigError):
        update_reference(f"{README_END}\n{README_BEGIN}\n")


def test_quick_start_is_two_commands_and_ci_runs_the_second() -> None:
    block = README.split("## Quick start", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    commands = [line for line in block.strip().splitlines() if line.strip()]
    assert 2 == len(commands)
    assert commands[0].endswith("verifier demo")
    assert "bash .ci/run" == commands[1]
