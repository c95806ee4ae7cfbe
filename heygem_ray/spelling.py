"""Names a person may have meant: a manifest column misspelt, a file named with a slip."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import PurePosixPath

_NUMBERS = re.compile(r"\d+")
# Letters a name's stem has before one edit away is taken for a slip (b.wav is no slip for a.wav).
_EDITED_FROM = 4


def distance(a: str, b: str) -> int:
    """The optimal string alignment distance: Levenshtein's (a letter added, left out or
    replaced), with a swap of two neighbours as one edit."""
    prev2: list[int] = []
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        row = [i] + [0] * len(b)
        for j, y in enumerate(b, 1):
            row[j] = min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + (x != y))
            if i > 1 and j > 1 and x == b[j - 2] and a[i - 2] == y:
                row[j] = min(row[j], prev2[j - 2] + 1)
        prev2, prev = prev, row
    return prev[-1]


def meant(name: str, names: Iterable[str], most: int = 3) -> list[str]:
    """Of ``names`` (the files beside a missing one), up to ``most`` that ``name`` may be a
    slip for, likeliest first: the same but for case; the same stem with another suffix
    (``lesson1.mp3`` for ``lesson1.wav``); one edit away, not counting case, where the stem
    is long enough for that to be a slip (``_EDITED_FROM``). Never one
    whose numbers differ (``lesson2.wav`` is another lesson, not a slip for ``lesson1.wav``;
    ``lesson01.wav`` may be meant by it)."""
    stem, low = PurePosixPath(name).stem.lower(), name.lower()
    numbers = _numbers(stem)  # (of the stems: a suffix may hold one, .mp3)
    found: list[tuple[int, str]] = []
    for other in names:
        if other == name or _numbers(PurePosixPath(other).stem) != numbers:
            continue
        if other.lower() == low:
            found.append((0, other))
        elif PurePosixPath(other).stem.lower() == stem:
            found.append((1, other))
        elif len(stem) >= _EDITED_FROM and abs(len(other) - len(name)) <= 1 and distance(other.lower(), low) <= 1:
            found.append((2, other))
    return [other for _, other in sorted(found)[:most]]


def beside(name: str, names: Iterable[str]) -> str:
    """What a missing ``name``'s message adds of ``names`` beside it (``meant``):
    `` (beside it: Lesson1.wav, lesson1.mp3)``, or "" where none may be meant."""
    near = meant(name, names)
    return f" (beside it: {', '.join(near)})" if near else ""


def _numbers(name: str) -> list[int]:
    return [int(n) for n in _NUMBERS.findall(name)]
