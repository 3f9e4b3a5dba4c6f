"""The command-line reference, generated from the argparse parser itself (:func:`bird_infer.cli.build_parser`):
every command, its usage and every option with its default and help. The documentation site's *CLI reference*
page is this text (``scripts/docs_hooks.py`` inserts it at build time), so it cannot drift from the parser."""

from __future__ import annotations

import argparse
from pathlib import Path

import bird_infer
from bird_infer.cli import build_parser


def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """(name, one-line help, parser) for each command, in the order they were added."""
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {c.dest: c.help or "" for c in action._choices_actions}
    return [(name, helps.get(name, ""), sub) for name, sub in action.choices.items()]


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _default(action: argparse.Action) -> str:
    if action.default in (None, argparse.SUPPRESS) or isinstance(action, argparse._StoreTrueAction):
        return "—"
    if isinstance(action.default, list | tuple) and not action.default:
        return "—"
    return f"`{action.default}`"


def option_table(parser: argparse.ArgumentParser) -> str:
    """A markdown table of ``parser``'s arguments: flags (or name), default, help."""
    rows = ["| Argument | Default | What it does |", "|---|---|---|"]
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction | argparse._SubParsersAction) or action.help == argparse.SUPPRESS:
            continue
        flags = ", ".join(f"`{s}`" for s in action.option_strings) or f"`{action.dest}`"
        if action.option_strings and action.nargs != 0 and action.metavar is not None:
            flags += f" `{action.metavar}`"
        elif action.option_strings and action.nargs != 0 and action.choices:
            flags += " `{" + ",".join(map(str, action.choices)) + "}`"
        help_text = (action.help or "").replace("%(default)s", str(action.default)).replace("%%", "%")
        rows.append(f"| {flags} | {_cell(_default(action))} | {_cell(help_text) or '—'} |")
    return "\n".join(rows)


def cli_reference() -> str:
    """The whole reference, as markdown: the global options, then each command."""
    parser = build_parser()
    parts = [f"```text\n{parser.format_usage().strip()}\n```\n", option_table(parser), ""]
    for name, help_text, sub in _subcommands(parser):
        parts.append(f"## `bird-infer {name}`\n")
        if help_text:
            parts.append(f"{_cell(help_text)}.\n" if not help_text.endswith(".") else f"{_cell(help_text)}\n")
        parts.append(f"```text\n{sub.format_usage().strip()}\n```\n")
        parts.append(option_table(sub) + "\n")
    here = f"{Path(bird_infer.__file__).resolve().parent.parent}/"  # defaults below the checkout: shown relative
    return "\n".join(parts).replace(here, "")
