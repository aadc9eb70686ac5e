"""Canonical class lists per data set and explicit name mappings (never by position alone)."""
from __future__ import annotations

from robustfer.errors import RobustferError

FERPLUS = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt")
# RAF-DB basic, in the order of the file's 1..7 ids.
RAFDB = ("surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral")
# AffectNet expression ids 0..7 (8 none, 9 uncertain, 10 no-face are dropped by the reader).
AFFECTNET = ("neutral", "happiness", "sadness", "surprise", "fear", "disgust", "anger", "contempt")
# Kaggle fer2013.csv `emotion` ids 0..6.
FER2013 = ("anger", "disgust", "fear", "happiness", "sadness", "surprise", "neutral")

CANONICAL = {"ferplus": FERPLUS, "rafdb": RAFDB, "affectnet": AFFECTNET, "fer2013": FER2013}

# Spellings found in publishers' files and folder names, mapped to robustfer's names.
ALIASES = {
    "happy": "happiness", "sad": "sadness", "angry": "anger", "surprised": "surprise",
    "fearful": "fear", "disgusted": "disgust", "contemptuous": "contempt", "neutrality": "neutral",
}


def canonical_name(name: str) -> str:
    """Lower-case a class name and resolve known aliases ('Happy' -> 'happiness')."""
    key = name.strip().lower()
    return ALIASES.get(key, key)


def name_to_index(names: list[str] | tuple[str, ...], classes: tuple[str, ...], source: str) -> list[int]:
    """Map class names to indices of `classes` by name; an unknown name is a clear error naming `source`."""
    lookup = {c: i for i, c in enumerate(classes)}
    out = []
    for n in names:
        c = canonical_name(n)
        if c not in lookup:
            raise RobustferError(
                f"{source}: unknown class name {n!r}; expected one of {', '.join(classes)}"
            )
        out.append(lookup[c])
    return out
