"""Step ``label``: classifier probabilities of every stored sample's image (the label table), calibrated on the
samples' own score distribution when ``classifier.calibration`` asks for it (after all samples are scored)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict

import torch
from torch import nn

from pipeline.classifiers import classify
from pipeline.data.store import Store
from pipeline.labellers.calibration import calibrate

PARAMS = ("classifier",)
"""The params this step reads (its stage's ``params`` in dvc.yaml)."""


def run(
    store: Store, classifier: nn.Module, batch_size: int = 256, shards: Sequence[int] | None = None
) -> torch.Tensor:
    """Probabilities [n, A] of the stored samples' x_0 in store order: every sample, or those of ``shards``.

    Batches never span a store shard, so a sample's scores do not depend on which shards a job labels
    (a sharded run merges to exactly the unsharded table).
    """
    chosen = range(len(store.shards)) if shards is None else shards
    field = store.image_field
    scores = [
        classify(classifier, store.as_images(batch[field]), batch_size)
        for shard in chosen
        for batch in store.iter_batches((field,), batch_size=batch_size, shards=[shard])
    ]
    return torch.cat(scores)



def calibrate_table(
    scores: torch.Tensor, names: Sequence[str], method: str
) -> tuple[torch.Tensor, dict[str, dict[str, dict[str, float | bool]]]]:
    """The label table's probabilities [n, A] of every sample calibrated with ``method`` ("none": unchanged),
    and its metrics: ``{"calibration": {<attribute>: {split, shift, scale, upper_weight}}}`` (empty for "none").

    Run on the whole table (unsharded, or merged from shard jobs), so the calibration sees every sample.
    """
    calibrated, fits = calibrate(scores, method)
    if not fits:
        return calibrated, {}
    return calibrated, {"calibration": {name: asdict(fit) for name, fit in zip(names, fits, strict=True)}}
