"""File-name patterns (a ``prior`` step's ``pattern``) matched under a time bound, so that no manifest can hang a run.

Python's ``re`` backtracks without limit: a nested quantifier written by mistake (``(\\w+_?)+``) can take hours on
one name it does not match. Patterns are compiled with the ``regex`` module (``VERSION0``: ``re``'s syntax and
behaviour) and every match carries a timeout (:data:`MATCH_TIMEOUT_S`; a real name matches in microseconds). At
parse time each pattern is also tried on :func:`adversarial_names`, long names built to make a backtracking
pattern blow up, and refused when one of them exceeds the bound there.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import regex

from bird_infer.contract.describe import doc
from bird_infer.contract.errors import InvalidFieldError

MATCH_TIMEOUT_S = 0.05
"""Seconds one name may take to match (a file name matches a sane pattern in microseconds, even under load)."""
ADVERSARIAL_LENGTH = 64
"""Characters of the repeated part of each adversarial name: 2^64 steps for a pattern that backtracks."""


class PatternTimeoutError(ValueError):
    """A name took longer than the bound to match."""


def adversarial_names(n: int = ADVERSARIAL_LENGTH) -> tuple[str, ...]:
    """Long names on which a catastrophically backtracking pattern blows up: runs of one character class (word
    letters, digits, separators, mixed) that almost match, each ended by a character no name part holds."""
    runs = ["a" * n, "A" * n, "0" * n, "_" * n, "-" * n, " " * n, "." * n, "a_" * (n // 2), "A0" * (n // 2)]
    runs += ["aA0_-. " * (n // 7), "S4A03895_20190522_000000_" + "a" * n, "H02_20230420_074000" + "0" * n]
    return tuple(r + end for r in runs for end in ("!", "\x00"))


@dataclass(frozen=True)
class NamePattern:
    """A compiled pattern with named groups; :meth:`groups` matches a name under the bound."""

    text: str = field(metadata=doc("The regular expression as written in the manifest."))
    compiled: regex.Pattern = field(
        metadata=doc("The expression compiled (matched with a timeout, so a pattern never hangs a run)."),
    )

    @classmethod
    def compile(cls, text: str, where: str = "pattern", check: bool = True) -> NamePattern:
        """Compile ``text``; raise InvalidFieldError (naming ``where``) when it is not a regular expression, or,
        with ``check``, when an adversarial name makes it run past the bound."""
        try:
            compiled = regex.compile(text, flags=regex.VERSION0)
        except (regex.error, TypeError) as e:
            raise InvalidFieldError(f"{where} is not a regular expression: {e}") from e
        pattern = cls(text, compiled)
        if check:
            for name in adversarial_names():
                try:
                    pattern.search(name)
                except PatternTimeoutError as e:
                    raise InvalidFieldError(
                        f"{where} {text!r} backtracks without bound: matching a {len(name)}-character name "
                        f"({name[:24]!r}...) took over {MATCH_TIMEOUT_S} s; remove nested quantifiers such as "
                        "(\\w+_?)+ (e.g. write [\\w_]+ instead)"
                    ) from e
        return pattern

    @property
    def groupindex(self) -> dict[str, int]:
        return dict(self.compiled.groupindex)

    def search(self, name: str):
        """The first match in ``name``, or None; PatternTimeoutError past :data:`MATCH_TIMEOUT_S`."""
        try:
            return self.compiled.search(name, timeout=MATCH_TIMEOUT_S)
        except TimeoutError as e:
            raise PatternTimeoutError(
                f"the pattern {self.text!r} took over {MATCH_TIMEOUT_S} s on the name {name!r} (it backtracks)"
            ) from e
