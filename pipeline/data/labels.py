"""The label table (data/labels.csv): one row per stored sample, columns ``seed`` and one classifier
probability per attribute, written with 6 decimals. The one definition of its format: the ``label`` stage,
its shard jobs and their merge all read and write it here."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

import torch

from pipeline.data.store import Store
from pipeline.io.errors import ConfigError
from pipeline.io.files import atomic_path


def write_labels(path: str | Path, seeds: torch.Tensor, names: Sequence[str], scores: torch.Tensor) -> None:
    """Write the label table: a CSV with columns ``seed`` and one probability per attribute (6 decimals)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["seed", *names])
    for seed, row in zip(seeds.tolist(), scores.tolist(), strict=True):
        writer.writerow([seed, *(f"{value:.6f}" for value in row)])
    with atomic_path(path, ".csv") as tmp:
        tmp.write_text(buffer.getvalue())


def read_labels(path: str | Path, allow_empty: bool = False) -> tuple[torch.Tensor, list[str], torch.Tensor]:
    """Read a label table: seeds [N] int64, attribute names [A], probabilities [N, A] float32.

    ``allow_empty``: a header-only table (a shard job's part when there are more jobs than store shards) is
    read as N = 0 instead of refused. Probabilities in [0, 1] written with 6 decimals survive a float32 round
    trip exactly, so reading and rewriting a table reproduces its bytes.
    """
    with Path(path).open(newline="") as handle:
        rows = list(csv.reader(handle))
    if not rows or rows[0][:1] != ["seed"] or (len(rows) < 2 and not allow_empty):
        raise ConfigError(f"label table '{path}': expected a header 'seed,<attributes...>' and at least one row")
    seeds = torch.tensor([int(row[0]) for row in rows[1:]], dtype=torch.int64)
    scores = torch.tensor([[float(value) for value in row[1:]] for row in rows[1:]], dtype=torch.float32)
    return seeds, rows[0][1:], scores.reshape(len(rows) - 1, len(rows[0]) - 1)


def check_labels_match(store: Store, seeds: torch.Tensor) -> None:
    """Refuse a label table whose seeds are not the store's, in the store's order."""
    if not torch.equal(seeds, store.seeds):
        raise ConfigError("label table: seeds differ from the samples store's; rerun the label stage")

