"""The label table (data/labels.csv): one row per stored sample, columns ``seed`` and one classifier
probability per attribute, written with 6 decimals. The one definition of its format: the ``label`` stage,
its shard jobs and their merge (:func:`merge_label_parts`) all read and write it here."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

import torch

from pipeline.data.store import Store
from pipeline.io.errors import ConfigError
from pipeline.io.files import atomic_path
from pipeline.io.launch import ShardJob, ShardJobError


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


def label_part_path(folder: str | Path, job: ShardJob) -> Path:
    """Where label job ``job`` writes its part of the table."""
    return Path(folder) / f"labels-{job.index:05d}-of-{job.count:05d}.csv"


def job_shards(store: Store, job: ShardJob) -> list[int]:
    """Store shard indices labelled by ``job``: those s with s % count == index."""
    return list(range(job.index, len(store.shards), job.count))


def merge_label_parts(folder: str | Path, store: Store, count: int, output: str | Path) -> None:
    """Assemble the ``count`` label parts in ``folder`` into the table ``output`` (store order, atomic write).

    Checks that every part is present, that all have the same attribute columns, and that part i holds
    exactly the seeds of the store shards s with s % count == i, in order. Every part is read and the merge
    written by :func:`read_labels` and :func:`write_labels`, whose 6-decimal rows survive that round trip
    exactly, so the merged table is byte-identical to the unsharded one.
    """
    parts = [ShardJob("label", index, count) for index in range(count)]
    missing = [label_part_path(folder, job).name for job in parts if not label_part_path(folder, job).is_file()]
    if missing:
        raise ShardJobError(f"label: {len(missing)} of {count} parts missing in '{folder}' ({', '.join(missing[:3])})")
    names: list[str] | None = None
    by_shard: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    for job in parts:
        path = label_part_path(folder, job)
        seeds, columns, scores = read_labels(path, allow_empty=True)
        if names is not None and columns != names:
            raise ShardJobError(f"label part '{path}': its columns differ from the other parts'")
        names = columns
        for shard in job_shards(store, job):
            size = store.shards[shard].count
            by_shard[shard], seeds, scores = (seeds[:size], scores[:size]), seeds[size:], scores[size:]
        if len(seeds):
            raise ShardJobError(f"label part '{path}': {len(seeds)} rows more than its store shards hold")
    ordered = [by_shard[shard] for shard in range(len(store.shards))]
    seeds = torch.cat([part[0] for part in ordered])
    if not torch.equal(seeds, store.seeds):
        raise ShardJobError(f"label parts in '{folder}': seeds differ from the samples store's; rerun the label jobs")
    write_labels(output, seeds, names or [], torch.cat([part[1] for part in ordered]))
