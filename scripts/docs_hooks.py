"""MkDocs hooks (``mkdocs.yml``): the reference pages are generated from the code at build time, never written by
hand. A page that holds ``<!-- generated: manifest -->`` gets :func:`bird_infer.contract.reference.manifest_reference`
in its place; ``<!-- generated: cli -->``, :func:`bird_infer.cli.reference.cli_reference`."""

from __future__ import annotations

from typing import Any

from bird_infer.cli.reference import cli_reference
from bird_infer.contract.reference import manifest_reference

GENERATED = {"<!-- generated: manifest -->": manifest_reference, "<!-- generated: cli -->": cli_reference}


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    for marker, make in GENERATED.items():
        if marker in markdown:
            markdown = markdown.replace(marker, make())
    return markdown
