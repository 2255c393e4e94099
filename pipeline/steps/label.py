"""Step ``label``: classifier probabilities of every stored sample's image (the label table)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from pipeline.classifiers import classify
from pipeline.data.store import Store

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

