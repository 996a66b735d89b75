"""Every command's --help is something a person can act on: what it does,
each option's default, the environment variables it reads. The loops walk
the parser itself, so a command or option added without them fails here."""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

import service.runtime.settings as settings_module
from service.cli.main import build_parser

STORE, SECRET = "SESSIOND_STORE", "SESSIOND_SECRET"
# Every variable service/runtime/settings.py reads: all of them are serve's.
SETTINGS_VARIABLES = set(
    re.findall(r'"(SESSIOND_[A-Z_]+)"', Path(settings_module.__file__).read_text())
)
# What each command reads, beyond serve's settings.
READS: dict[str, set[str]] = {
    "serve": SETTINGS_VARIABLES,
    "token": {SECRET, STORE},
    "replay": {STORE},
    "projections": {STORE},
    "projections rebuild": {STORE},
    "projections status": {STORE},
    "tail": {"SESSIOND_URL", "SESSIOND_HOST", "SESSIOND_PORT", "SESSIOND_TOKEN", SECRET, STORE},
    "lifecycle": set(),
}


def commands(
    parser: argparse.ArgumentParser, prefix: str = ""
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield prefix + name, sub
                yield from commands(sub, prefix + name + " ")


def entries(help_text: str) -> dict[str, str]:
    """Each entry of a help text (an option, a positional), by its first word,
    with its continuation lines joined."""
    found: dict[str, str] = {}
    current: str | None = None
    for line in help_text.splitlines():
        if re.match(r"  \S", line):
            current = line.split()[0].rstrip(",")
            found[current] = line.strip()
        elif current is not None and line.startswith("   "):
            found[current] += " " + line.strip()
        else:
            current = None
    return found


@pytest.fixture(autouse=True)
def fixed_width(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "100")


ALL = list(commands(build_parser()))


def test_the_commands_are_the_ones_this_file_knows() -> None:
    assert [name for name, _ in ALL] == list(READS), "add the new command to READS"


@pytest.mark.parametrize(("name", "parser"), ALL, ids=[name for name, _ in ALL])
def test_every_command_describes_itself_and_each_argument(
    name: str, parser: argparse.ArgumentParser
) -> None:
    assert parser.description and len(parser.description) > 20, name
    for action in parser._actions:
        assert action.help, f"sessiond {name}: {action.option_strings or action.dest} has no help"


@pytest.mark.parametrize(("name", "parser"), ALL, ids=[name for name, _ in ALL])
def test_every_option_with_a_default_shows_it(name: str, parser: argparse.ArgumentParser) -> None:
    shown = entries(parser.format_help())
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        if action.required or action.nargs == 0:  # nothing to default, or a flag
            continue
        if not action.option_strings and action.nargs not in ("?", "*"):
            continue  # a positional that must be given
        key = action.option_strings[0] if action.option_strings else str(action.metavar)
        assert key in shown, f"sessiond {name}: {key} is not in its help"
        assert "default" in shown[key], f"sessiond {name}: {key} does not show its default"


@pytest.mark.parametrize(("name", "parser"), ALL, ids=[name for name, _ in ALL])
def test_every_command_names_the_environment_variables_it_reads(
    name: str, parser: argparse.ArgumentParser
) -> None:
    text = parser.format_help()
    assert "environment" in text, f"sessiond {name} --help has no environment section"
    named = set(re.findall(r"SESSIOND_[A-Z_]+[A-Z]", text))
    assert named == READS[name], f"sessiond {name}: missing {READS[name] - named}"


def test_serve_ends_its_help_with_examples() -> None:
    serve = dict(ALL)["serve"]
    assert serve.epilog is not None
    examples = serve.epilog.split("examples:", 1)[1]
    assert "sessiond serve --host 0.0.0.0" in examples
    # Written lines stay as written.
    assert "  sessiond serve\n" in serve.format_help()


def test_the_top_level_help_lists_every_command_with_its_line() -> None:
    parser = build_parser()
    text = " ".join(parser.format_help().split())
    (choices,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for listed in choices._choices_actions:
        assert f"{listed.dest} {listed.help}" in text, listed.dest
    assert [a.dest for a in choices._choices_actions] == [n for n in READS if " " not in n]
    assert "--version" in text


def test_drain_seconds_come_from_the_flag_then_the_environment() -> None:
    from service.cli.main import _settings

    parser = build_parser()
    assert _settings(parser.parse_args(["serve", "--drain-seconds", "1.5"])).drain_seconds == 1.5
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "--drain-seconds", "-1"])
    env = {"SESSIOND_DRAIN_SECONDS": "2.5"}
    assert settings_module.Settings.from_env(env).drain_seconds == 2.5
    assert settings_module.Settings.from_env({}).drain_seconds == 5.0
    with pytest.raises(settings_module.SettingsError, match="SESSIOND_DRAIN_SECONDS"):
        settings_module.Settings.from_env({"SESSIOND_DRAIN_SECONDS": "soon"})


def test_the_listen_backlog_is_a_setting_of_its_own() -> None:
    assert settings_module.Settings.from_env({}).listen_backlog == 4096
    env = {"SESSIOND_LISTEN_BACKLOG": "777"}
    assert settings_module.Settings.from_env(env).listen_backlog == 777
    for bad in ("0", "many"):
        with pytest.raises(settings_module.SettingsError, match="SESSIOND_LISTEN_BACKLOG"):
            settings_module.Settings.from_env({"SESSIOND_LISTEN_BACKLOG": bad})
