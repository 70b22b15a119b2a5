"""The man page and the shell completions the package ships, generated here by the same script from the real parser."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vocwatch.cli.main import COMMANDS, _parser

GEN = Path(__file__).resolve().parent.parent / "deploy" / "gen-docs.sh"


def subcommands(parser: argparse.ArgumentParser, prefix: str = "vocwatch") -> list[str]:
    """Every command path the parser knows ("vocwatch run", "vocwatch ledger list", ...), nested ones too."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.append(f"{prefix} {name}")
                found.extend(subcommands(sub, f"{prefix} {name}"))
    return found


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("docs")
    done = subprocess.run(["sh", str(GEN), sys.executable, str(out)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return out


def test_the_parser_has_every_command() -> None:
    names = subcommands(_parser())
    assert [n for n in names if n.count(" ") == 1] == [f"vocwatch {c}" for c in COMMANDS]
    assert "vocwatch setup" in names and "vocwatch ledger list" in names


def test_the_man_page_documents_every_command_and_renders_without_a_warning(generated: Path) -> None:
    page = generated / "vocwatch.1"
    text = page.read_text()
    assert text.startswith(".TH VOCWATCH")
    groff = shutil.which("groff")
    assert groff, "groff is missing (Debian's groff-base, which man-db needs)"
    rendered = subprocess.run(
        [groff, "-man", "-Tutf8", "-ww", "-P-cbou", str(page)], capture_output=True, text=True, timeout=60
    )
    assert rendered.returncode == 0 and rendered.stderr == "", rendered.stderr
    plain = rendered.stdout
    for command in subcommands(_parser()):
        assert f"COMMAND '{command}'" in plain, command
    for option in ("--tenant", "--key-file", "--key-path", "--base-url", "--online", "--config"):
        assert option in plain, option


def test_the_bash_completion_names_every_command(generated: Path) -> None:
    script = (generated / "vocwatch.bash").read_text()
    assert "complete -o bashdefault -F _shtab_vocwatch vocwatch" in script
    for command in subcommands(_parser()):
        assert command.rsplit(" ", 1)[1] in script, command
    assert (generated / "_vocwatch").read_text().startswith("#compdef vocwatch")


@pytest.mark.parametrize(
    ("words", "expected"),
    [
        (["vocwatch", "se"], ["setup"]),
        (["vocwatch", "ledger", "l"], ["list"]),
        (["vocwatch", "setup", "--key"], ["--key-file", "--key-path"]),
        (["vocwatch", "ledger", "export", "--format", ""], ["csv", "jsonl"]),
    ],
    ids=["command", "ledger_action", "option", "choice"],
)
def test_bash_completes_from_the_generated_script(generated: Path, words: list[str], expected: list[str]) -> None:
    # As bash's programmable completion calls it: COMP_WORDS and COMP_CWORD set, then the function; no
    # bash-completion package needed.
    line = " ".join(words)
    program = (
        f'source "$1"; COMP_WORDS=({" ".join(repr(w) for w in words)}); COMP_CWORD={len(words) - 1}; '
        f'COMP_LINE={line!r}; COMP_POINT=${{#COMP_LINE}}; _shtab_vocwatch; printf "%s\\n" "${{COMPREPLY[@]}}"'
    )
    done = subprocess.run(
        ["bash", "--norc", "-c", program, "bash", str(generated / "vocwatch.bash")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert sorted(done.stdout.split()) == expected
