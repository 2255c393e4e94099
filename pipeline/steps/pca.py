"""Step ``pca``: per-step and all-step PCA directions of the stored h (docs/methods.md, "PCA directions")."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pipeline.data.hstats import HStats, centered_batches
from pipeline.data.store import Store
from pipeline.directions.format import Origin
from pipeline.directions.pca import PCAResult, pca_directions_streaming
from pipeline.io.validation import require

PARAMS = ("directions.pca",)
"""The params this step reads (its stage's ``params`` in dvc.yaml)."""


@dataclass
class PCAConfig:
    """The ``directions.pca`` params section (randomized SVD settings: pipeline.linalg)."""

    n_components: int = 8
    oversampling: int = 8
    power_iterations: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        require(self.n_components >= 1, "directions.pca.n_components", self.n_components, "must be >= 1")
        require(self.oversampling >= 0, "directions.pca.oversampling", self.oversampling, "must be >= 0")
        require(self.power_iterations >= 0, "directions.pca.power_iterations", self.power_iterations, "must be >= 0")


def run(store: Store, stats: HStats, cfg: PCAConfig, batch_size: int = 64) -> PCAResult:
    """Per-step and all-step PCA of the store's h, streamed (memory independent of the number of samples)."""
    return pca_directions_streaming(
        centered_batches(store, stats.means["h"], batch_size=batch_size, dtype=torch.float64),
        cfg.n_components,
        Origin.of_store(store),
        h_shape=store.h_shape,
        num_samples=len(store),
        oversampling=cfg.oversampling,
        power_iterations=cfg.power_iterations,
        seed=cfg.seed,
    )


def spectrum_rows(result: PCAResult) -> list[dict[str, float]]:
    """Rows for a DVC plot of the PCA spectrum: component, explained variance ratio (all-step and mean per-step)."""
    all_ratio = result.all_steps.extra["explained_variance_ratio"]
    per_step = torch.tensor(result.per_step.extra["explained_variance_ratio"])
    return [
        {"component": k, "all_steps": float(all_ratio[k]), "per_step_mean": float(per_step[k].mean())}
        for k in range(len(all_ratio))
    ]

