"""Two folders of BirdNET-Analyzer-style tables compared line by line: equal, or equal but for confidences one unit
apart in their 4th decimal (what LiteRT's kernels, which are not TensorFlow's, cause now and then), or different.
Used by the tests against BirdNET-Analyzer 2.4.0's golden files and by ``benchmarks/birdnet_peer.py``."""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

CONFIDENCE = re.compile(r"\d\.\d{4}")


def last_digit_apart(want: str, got: str) -> bool:
    """The two lines are equal but for confidences one unit apart in the 4th decimal."""
    sep = "\t" if "\t" in want else ","
    a, b = want.split(sep), got.split(sep)
    if len(a) != len(b):
        return False
    return all(
        x == y or (CONFIDENCE.fullmatch(x) and CONFIDENCE.fullmatch(y) and abs(float(x) - float(y)) < 1.5e-4)
        for x, y in zip(a, b, strict=True)
    )


@dataclass
class Comparison:
    files: int = 0
    identical: int = 0
    lines: int = 0
    apart_lines: int = 0
    """Lines equal but for a confidence one unit apart in its 4th decimal."""
    problems: list[str] = field(default_factory=list)
    """Files missing, extra, or differing beyond that."""


def compare_folders(
    want_dir: Path, got_dir: Path, replace: tuple[str, str] | None = None, ignore: Collection[str] = ()
) -> Comparison:
    """Every file below ``want_dir`` against the same path below ``got_dir`` (``replace``: (old, new) applied to the
    wanted text first; ``ignore``: file names left out on both sides)."""
    want = {p.relative_to(want_dir) for p in want_dir.rglob("*") if p.is_file() and p.name not in ignore}
    got = {p.relative_to(got_dir) for p in got_dir.rglob("*") if p.is_file() and p.name not in ignore}
    c = Comparison(files=len(want))
    c.problems += [f"missing {p}" for p in sorted(want - got)] + [f"extra {p}" for p in sorted(got - want)]
    for rel in sorted(want & got):
        expected = (want_dir / rel).read_text(encoding="utf-8")
        if replace is not None:
            expected = expected.replace(*replace)
        actual = (got_dir / rel).read_text(encoding="utf-8")
        w, g = expected.split("\n"), actual.split("\n")
        c.lines += len(w)
        if actual == expected:
            c.identical += 1
            continue
        apart = [k for k, (x, y) in enumerate(zip(w, g, strict=False)) if x != y]
        if len(w) != len(g) or not all(last_digit_apart(w[k], g[k]) for k in apart):
            c.problems.append(f"differs {rel}")
        else:
            c.apart_lines += len(apart)
    return c
