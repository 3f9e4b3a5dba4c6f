"""Names derived from input paths, unique by construction: the submission's row_id prefixes and the field
tables' output names. Both make names printable (:func:`~bird_infer.contract.text.safe_text`) and end with the
same ``~k`` rule (:func:`disambiguate`)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from bird_infer.contract.text import safe_text


def disambiguate(names: Sequence[str]) -> list[str]:
    """``names`` made unique: the first holder of a name keeps it; a later one gets ``~2``, ``~3``..., the first
    suffix that no other name in the list holds (so a generated name never takes a name some entry has)."""
    counts = Counter(names)
    taken: set[str] = set()
    out = []
    for n in names:
        name, k = n, 1
        while name in taken or (name != n and counts[name]):
            k += 1
            name = f"{n}~{k}"
        taken.add(name)
        out.append(name)
    return out


def _below(p: Path, root: Path) -> Path:
    """``p`` relative to ``root``, or its name alone when it lies elsewhere."""
    try:
        return p.relative_to(root)
    except ValueError:
        return Path(p.name)


def unique_stems(paths: Sequence[Path], root: Path) -> list[str]:
    """The row_id prefix of each file, unique by construction.

    Each file's first choice is its stem. Where stems collide, the path below ``root`` joined by ``-``
    (``siteA/0600.wav`` -> ``siteA-0600``); where that collides too, the same with the extension
    (``a.wav``, ``a.flac``). Whatever still collides (``siteA/0600.wav`` beside a file named
    ``siteA-0600.wav``) gets ``~2``, ``~3``... (:func:`disambiguate`), so no two files ever share a prefix.
    BirdCLEF stems are unique, so there the prefix is always the stem. Names are made printable.
    """
    levels = [
        [safe_text(p.stem) for p in paths],
        [safe_text("-".join(_below(p, root).with_suffix("").parts) or p.stem) for p in paths],
        [safe_text("-".join(_below(p, root).parts) or p.name) for p in paths],
    ]
    names = list(levels[0])
    for level in levels[1:]:
        counts = Counter(names)
        names = [level[k] if counts[n] > 1 else n for k, n in enumerate(names)]
    return disambiguate(names)


RESERVED_NAMES = ("combined",)
"""Output names the tool writes itself (``combined.selection.table.txt``...): an input ``combined.wav`` at the top
of ``--audio`` gets ``combined~2``, so that its tables and the combined ones never overwrite each other."""


def output_names(entries: Sequence[Path], root: Path) -> list[str]:
    """Each entry's output name below OUTDIR (a relative POSIX path, no suffix), unique by construction: the
    folder below ``root`` and the stem; the file name with its extension where stems collide; ``~2``, ``~3``
    for whatever still collides or is one of :data:`RESERVED_NAMES` (:func:`disambiguate`). Names are made
    printable."""
    first = ["/".join(safe_text(x) for x in (*_below(p, root).parent.parts, p.stem)) for p in entries]
    second = ["/".join(safe_text(x) for x in _below(p, root).parts) or safe_text(p.name) for p in entries]
    counts = Counter(first)
    names = [s if counts[f] > 1 else f for f, s in zip(first, second, strict=True)]
    return disambiguate([*RESERVED_NAMES, *names])[len(RESERVED_NAMES) :]
