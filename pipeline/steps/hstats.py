"""Step ``hstats``: one streaming pass over the store for the h statistics the direction steps need."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from pipeline.data.hstats import HStats, compute_hstats, select_extremes, threshold_groups
from pipeline.data.store import Store
from pipeline.io.errors import ConfigError
from pipeline.io.validation import require

PARAMS = ("hstats",)
"""The params this step reads (its stage's ``params`` in dvc.yaml)."""


@dataclass
class HStatsConfig:
    """The ``hstats`` params section."""

    top_k: int = 100
    label_conditioned: bool = True
    threshold: float = 0.5
    batch_size: int = 64

    def __post_init__(self) -> None:
        require(self.top_k >= 1, "hstats.top_k", self.top_k, "must be >= 1")
        require(0.0 < self.threshold < 1.0, "hstats.threshold", self.threshold, "must be in (0, 1)")
        require(self.batch_size >= 1, "hstats.batch_size", self.batch_size, "must be >= 1")


def run(
    store: Store, names: Sequence[str], scores: torch.Tensor, cfg: HStatsConfig, progress: bool = True
) -> HStats:
    """One streaming pass: means of h (and x_T) over all samples and over the top-k/bottom-k samples of
    every attribute (groups ``<name>/top``, ``<name>/bottom``), plus, with ``label_conditioned``, the
    groups above/below ``threshold`` (``<name>/positive``, ``<name>/negative``)."""
    if cfg.top_k > len(scores) // 2:
        raise ConfigError(
            f"hstats.top_k={cfg.top_k}: the top and bottom {cfg.top_k} of {len(scores)} samples would overlap; "
            f"need hstats.top_k <= {len(scores) // 2} or more generate.num_samples"
        )
    groups = select_extremes(scores, cfg.top_k, names).groups()
    if cfg.label_conditioned:
        groups |= threshold_groups(scores, cfg.threshold, names)
    return compute_hstats(store, groups, fields=("h", "x_T"), batch_size=cfg.batch_size, progress=progress)

