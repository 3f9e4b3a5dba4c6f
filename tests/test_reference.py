"""The documentation that cannot drift: the manifest reference is generated from the schema's field metadata and
the CLI reference from the argparse parser; the site builds with warnings as errors; README stays a landing page
whose links lead somewhere."""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bird_infer.cli import build_parser
from bird_infer.cli.reference import cli_reference
from bird_infer.contract.reference import contract_dataclasses, manifest_reference

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("cls", contract_dataclasses(), ids=lambda c: c.__name__)
def test_every_contract_field_has_a_description(cls: type) -> None:
    missing = [f.name for f in dataclasses.fields(cls) if not str(f.metadata.get("doc", "")).strip()]
    assert not missing, f"{cls.__module__}.{cls.__name__}: fields without a description (doc(...)): {missing}"


def test_the_manifest_reference_lists_every_field_of_the_contract() -> None:
    text = manifest_reference()
    sections = re.split(r"\n(?=#{2,3} )", text)
    for cls in contract_dataclasses():
        section = next((s for s in sections if f"({cls.__name__})" in s or s.startswith(f"### {cls.__name__}\n")), "")
        assert section, f"{cls.__name__} has no section"
        for f in dataclasses.fields(cls):
            if f.metadata.get("written", True):
                assert f"| `{f.name}` |" in section, f"{cls.__name__}.{f.name} is not in its section"
    assert "| `sample_rate` | integer | required | Hz |" in text  # key, JSON type, default, unit
    assert "| `row_s` | number | `5.0` | s |" in text
    assert "`root`" not in text  # where a bundle was read from is not a manifest field


def test_the_cli_reference_lists_every_command_and_option() -> None:
    text = cli_reference()
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert len(commands) >= 15
    for name, sub in commands.items():
        assert f"## `bird-infer {name}`" in text
        for action in sub._actions:
            if action.help != argparse.SUPPRESS and not isinstance(action, argparse._HelpAction):
                for flag in action.option_strings:
                    assert f"`{flag}`" in text, f"{name} {flag}"
    assert str(ROOT) not in text  # defaults below the checkout are shown relative to it


def test_the_site_builds_with_warnings_as_errors(tmp_path: Path) -> None:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    manifest_page = (tmp_path / "site" / "reference" / "manifest" / "index.html").read_text(encoding="utf-8")
    assert "generated: manifest" not in manifest_page and "sample_rate" in manifest_page
    cli_page = (tmp_path / "site" / "reference" / "cli" / "index.html").read_text(encoding="utf-8")
    assert "generated: cli" not in cli_page and "--time-limit-min" in cli_page


def test_readme_is_a_landing_page_whose_links_resolve() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 150
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", readme)
    local = [x for x in links if not x.startswith(("http://", "https://"))]
    assert local, "README links to no page of the documentation"
    assert [x for x in local if not (ROOT / x).exists()] == []
