"""The ``dai`` command line itself: help on every command and option, ``--version``."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from importlib.metadata import version

import pytest

from democratic_ai.ops.cli import _parser, main


def _walk(parser: argparse.ArgumentParser, path: str = "dai") -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, subparser in action.choices.items():
                yield from _walk(subparser, f"{path} {name}")


def test_every_command_and_option_has_help() -> None:
    missing = []
    parsers = list(_walk(_parser()))
    # The walk reached the nested commands.
    assert {"dai projections status", "dai module run", "dai identity rotate-jwt-key"} <= {p for p, _ in parsers}
    for path, parser in parsers:
        if not parser.description:
            missing.append(f"{path}: no description")
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            if isinstance(action, argparse._SubParsersAction):
                missing += [f"{path} {c.dest}: no help" for c in action._choices_actions if not c.help]
                continue
            if not action.help or action.help == argparse.SUPPRESS:
                missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}: no help")
    assert missing == []


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"dai {version('democratic-ai')}"
