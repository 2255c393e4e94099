"""Users' labelled images: a label file and an image folder, read into tensors for the ``folder`` labeller.

Two label-file layouts are read (the file's suffix picks one):

- CelebA's ``list_attr_celeba.txt`` (any suffix but ``.csv``): a line with the image count, a line with the
  attribute names, then one line per image ``<file> v1 v2 ...`` with values 1 (present) or -1 (absent),
  separated by any whitespace.
- CSV (``.csv``): a header ``file,<attr1>,<attr2>,...`` then one row per image with values 0 or 1.

Every malformed input is a one-line :class:`ConfigError` naming the file (and the line).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.io.errors import ConfigError
from pipeline.io.images import read_images

CELEBA_VALUES = {"1": 1.0, "-1": 0.0}
CSV_VALUES = {"1": 1.0, "0": 0.0}
CHUNK = 1024
"""Images decoded at once (as float) before they are stored as 8-bit."""


@dataclass
class LabelTable:
    """Image file names [N] (relative to the image folder), attribute names [A], labels [N, A] in {0, 1}."""

    files: list[str]
    names: list[str]
    labels: torch.Tensor

    def select(self, names: Sequence[str], key: str) -> LabelTable:
        """The table restricted to the attributes ``names`` (in that order; empty: all); an unknown name is a
        ConfigError naming the params ``key``."""
        if not names:
            return self
        unknown = [name for name in names if name not in self.names]
        if unknown:
            raise ConfigError(f"params: {key}: {', '.join(unknown)} not among the label file's attributes")
        columns = [self.names.index(name) for name in names]
        return LabelTable(self.files, list(names), self.labels[:, columns])


def read_label_file(path: str | Path) -> LabelTable:
    """Read a label file in CelebA's layout or as CSV (``.csv``); see the module docstring."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"label file '{path}': no such file")
    lines = path.read_text().splitlines()
    table = _read_csv(path, lines) if path.suffix.lower() == ".csv" else _read_celeba(path, lines)
    if not table.files:
        raise ConfigError(f"label file '{path}': no images listed")
    if not table.names or len(set(table.names)) != len(table.names):
        raise ConfigError(f"label file '{path}': the attribute names must be present and distinct")
    if len(set(table.files)) != len(table.files):
        raise ConfigError(f"label file '{path}': an image is listed twice")
    return table


def _read_celeba(path: Path, lines: list[str]) -> LabelTable:
    if len(lines) < 2 or not lines[0].strip().isdigit():
        raise ConfigError(f"label file '{path}': expected CelebA's layout (a count line, a header line of names)")
    names = lines[1].split()
    rows = [(number, line.split()) for number, line in enumerate(lines[2:], start=3) if line.strip()]
    if len(rows) != int(lines[0]):
        raise ConfigError(f"label file '{path}': line 1 says {int(lines[0])} images, {len(rows)} are listed")
    return _table(path, names, rows, CELEBA_VALUES)


def _read_csv(path: Path, lines: list[str]) -> LabelTable:
    records = list(csv.reader(lines))
    if not records or not records[0] or records[0][0].strip() != "file":
        raise ConfigError(f"label file '{path}': expected a CSV header 'file,<attribute>,...'")
    names = [name.strip() for name in records[0][1:]]
    rows = [
        (number, [value.strip() for value in record]) for number, record in enumerate(records[1:], start=2) if record
    ]
    return _table(path, names, rows, CSV_VALUES)


def _table(path: Path, names: list[str], rows: list[tuple[int, list[str]]], values: dict[str, float]) -> LabelTable:
    files, labels = [], []
    for number, fields in rows:
        if len(fields) != len(names) + 1:
            raise ConfigError(
                f"label file '{path}': line {number} has {len(fields) - 1} values, the header names {len(names)}"
            )
        bad = [value for value in fields[1:] if value not in values]
        if bad:
            raise ConfigError(f"label file '{path}': line {number}: value '{bad[0]}' is not one of {', '.join(values)}")
        files.append(fields[0])
        labels.append([values[value] for value in fields[1:]])
    return LabelTable(files, names, torch.tensor(labels, dtype=torch.float32).reshape(len(files), len(names)))


def load_images(folder: str | Path, files: Sequence[str], resolution: int) -> torch.Tensor:
    """The images ``folder/<file>`` as uint8 [N, 3, R, R] (R = ``resolution``), each centre-cropped to a square
    and resized as the edit command reads images (:func:`pipeline.io.images.read_images`). Read in chunks of
    :data:`CHUNK` and kept as 8-bit (a 64 px CelebA set takes 2.4 GB). A missing or unreadable image is a
    ConfigError naming it."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"image folder '{folder}': no such folder")
    paths = [folder / name for name in files]
    missing = next((path for path in paths if not path.is_file()), None)
    if missing is not None:
        raise ConfigError(f"image '{missing}': listed in the label file but missing")
    images = torch.empty(len(paths), 3, resolution, resolution, dtype=torch.uint8)
    for start in range(0, len(paths), CHUNK):
        chunk = read_images(paths[start : start + CHUNK], (resolution, resolution), crop="center")
        images[start : start + len(chunk)] = (chunk * 255).round().to(torch.uint8)
    return images
