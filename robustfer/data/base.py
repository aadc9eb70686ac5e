"""The in-memory form every reader returns: one uint8 image array plus labels and annotations."""
from __future__ import annotations

import csv
import re
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator

import numpy as np

from robustfer.errors import RobustferError

UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
INTEGER = re.compile(r"[+-]?[0-9]+")
NUMBER = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")


def parse_int(cell: str) -> int | None:
    """An ASCII decimal integer cell ('3', ' -1 ') -> int, else None (no '1_0', '٣' or '3.0' as int() allows)."""
    cell = cell.strip()
    return int(cell) if INTEGER.fullmatch(cell) else None


def parse_number(cell: str) -> float | None:
    """A finite ASCII decimal number cell ('2', '0.5', '1e1') -> float, else None (no 'nan', 'inf', '1_0')."""
    cell = cell.strip()
    return float(cell) if NUMBER.fullmatch(cell) else None


def text_lines(path: Path) -> Iterator[str]:
    """The lines of a label file, for csv.reader or split(): UTF-8 with or without a BOM, or UTF-16 with its
    BOM; CRLF or LF. Other encodings (latin-1, UTF-16 without BOM) are an error naming the file and the fix
    instead of wrong names or a UnicodeDecodeError."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            encoding = "utf-16" if f.read(2) in UTF16_BOMS else "utf-8-sig"
    except OSError as e:
        raise RobustferError(f"cannot read {path} ({e.strerror}): check that it is a readable file") from None
    fix = "save it as UTF-8 (e.g. iconv -f latin1 -t utf-8, or 'CSV UTF-8' in a spreadsheet)"
    try:
        with open(path, newline="", encoding=encoding) as f:
            for n, line in enumerate(f, start=1):
                if "\x00" in line:
                    raise RobustferError(f"{path} line {n} holds NUL bytes: it is not a text file (UTF-16 without "
                                         f"a byte-order mark?); {fix}")
                yield line
    except UnicodeDecodeError:
        raise RobustferError(f"{path}: not {encoding.replace('-sig', '')} text ({_first_bad_byte(path, encoding)}); "
                             f"{fix}") from None


def _first_bad_byte(path: Path, encoding: str) -> str:
    """'byte 0xe9 on line 3': where a file first fails to decode (read again line by line, on the error path only)."""
    if encoding == "utf-16":
        return "not valid UTF-16"
    with open(path, "rb") as f:
        for n, raw in enumerate(f, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as e:
                return f"byte 0x{raw[e.start]:02x} on line {n}"
    return "an incomplete character at the end"


def csv_rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(line number, cells) of every non-empty csv row of `path` (text_lines' encodings); a csv syntax error
    (an unclosed quote) names the line."""
    reader = csv.reader(text_lines(path))
    try:
        for row in reader:
            if row and any(c.strip() for c in row):
                yield reader.line_num, row
    except csv.Error as e:
        raise RobustferError(f"{path} line {reader.line_num}: not valid csv ({e}); fix the line") from None


def header_columns(rows: Iterator[tuple[int, list[str]]], path: Path, header: tuple[str, ...],
                   fix: str) -> tuple[dict[str, int], int]:
    """Read a csv's header row and return ({column name: index} for `header`'s names, the row's width).
    Columns are found by name (any order, case and surrounding spaces ignored; extra columns are ignored), so
    a missing, renamed or repeated required column is the only header error; it names the file and the fix."""
    first = next(rows, None)
    found = [h.strip() for h in first[1]] if first else []
    lower = [h.lower() for h in found]
    missing = [h for h in header if lower.count(h.lower()) != 1]
    if missing:
        what = "repeats" if any(lower.count(h.lower()) > 1 for h in missing) else "lacks"
        raise RobustferError(
            f"{path} line 1: expected the header {','.join(header)}, found {','.join(found)!r} (it {what} "
            f"{', '.join(missing)}); {fix}")
    return {h: lower.index(h.lower()) for h in header}, len(found)


def check_inside(name: str, path: Path, line: int) -> None:
    """An image path from a label file must stay inside the data set's folder (no absolute path, no '..')."""
    parts = Path(name.replace("\\", "/")).parts
    if Path(name).is_absolute() or name.startswith(("/", "\\")) or ".." in parts:
        raise RobustferError(f"{path} line {line}: image path {name!r} leaves the data set's folder; give it "
                             "relative to the folder, as the publisher does")


class Rows:
    """Label rows keyed by image: an exact repeat of a row is read once (and counted, see `warn`), the same
    image with other content is an error naming both lines, since one of its labels would be silently wrong."""

    def __init__(self, path: Path):
        self.path, self.seen, self.repeats = path, {}, []

    def add(self, image: str, content, line: int) -> bool:
        """True for a new image; False for an exact repeat (to skip)."""
        if image not in self.seen:
            self.seen[image] = (content, line)
            return True
        first, first_line = self.seen[image]
        if first != content:
            raise RobustferError(f"{self.path} lines {first_line} and {line} are conflicting rows for image {image!r} "
                                 "(other labels or box): keep the right row and delete the other")
        self.repeats.append((line, first_line, image))
        return False

    def warn(self) -> None:
        """One stderr line when rows were repeats: how many, and the first."""
        if self.repeats:
            line, first_line, image = self.repeats[0]
            print(f"warning: {self.path}: {len(self.repeats)} repeated row(s) read once (first: line {line} repeats "
                  f"line {first_line}, image {image!r}); delete the repeats to silence this", file=sys.stderr)


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
        """Rows `idx` of every per-image field (memory-mapped images stay so: a RowView, read when used)."""
        from robustfer.data.stream import take_rows

        idx = np.asarray(idx)
        pick = lambda a: None if a is None else a[idx]  # noqa: E731
        return replace(
            self, images=take_rows(self.images, idx), labels=self.labels[idx],
            files=[self.files[i] for i in idx], votes=pick(self.votes), soft=pick(self.soft),
            clean_labels=pick(self.clean_labels), flipped=pick(self.flipped),
        )

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=self.num_classes)
