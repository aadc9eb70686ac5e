"""The in-memory form every reader returns: one uint8 image array plus labels and annotations."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from robustfer.errors import RobustferError


def check_header(reader, path: Path, header: tuple[str, ...], fix: str) -> None:
    """Read a csv reader's first row and require it to be `header` (an error names the file and the fix)."""
    found = next(reader, None)
    if found is None or tuple(h.strip() for h in found) != header:
        raise RobustferError(
            f"{path} line 1: expected the header {','.join(header)}, found {','.join(found or [])!r}; {fix}")


@dataclass
class FERData:
    """One split of a data set.

    images: N x C x H x W uint8 (C = 1 for grey data sets, 3 for colour), possibly memory-mapped.
    labels: N int64 indices into `classes` (the training target; noisy if noise was applied).
    files: N image paths relative to the data set root (or ids such as 'fer2013.csv#17').
    votes: raw annotator votes per image where the data set has them (FERPlus: N x 10, the 8 emotions,
      unknown and not-a-face), else None.
    soft: N x C float targets of the FERPlus label mode (one-hot for 'majority'), else None.
    clean_labels / flipped: set when synthetic noise was applied (the truth and the flip mask).
    """

    name: str
    split: str
    classes: tuple[str, ...]
    images: np.ndarray
    labels: np.ndarray
    files: list[str]
    votes: np.ndarray | None = None
    soft: np.ndarray | None = None
    clean_labels: np.ndarray | None = None
    flipped: np.ndarray | None = None
    extra: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def subset(self, idx: np.ndarray) -> "FERData":
        """Rows `idx` of every per-image field (images are copied out of the memory map)."""
        idx = np.asarray(idx)
        pick = lambda a: None if a is None else a[idx]  # noqa: E731
        return replace(
            self, images=np.ascontiguousarray(self.images[idx]), labels=self.labels[idx],
            files=[self.files[i] for i in idx], votes=pick(self.votes), soft=pick(self.soft),
            clean_labels=pick(self.clean_labels), flipped=pick(self.flipped),
        )

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=self.num_classes)
