"""Step ``preview``: edit grids of held-out samples for the PCA and supervised directions files, and the check
of the supervised directions at one fixed scale (:mod:`pipeline.evaluation.supervised`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from pipeline.classifiers import classify_logits
from pipeline.diffusion.models import DiffusionModel
from pipeline.diffusion.sampling import SamplerConfig
from pipeline.directions.format import Directions
from pipeline.directions.methods import written_by
from pipeline.editing import HeldOut, decode_images, edit, held_out
from pipeline.evaluation.supervised import attribute_effects, conditional_check, supervised_check
from pipeline.io.images import make_grid
from pipeline.io.validation import require

PARAMS = ("model", "sampler", "classifier", "directions.supervised", "preview")
"""The params this step reads (its stage's ``params`` in dvc.yaml)."""

METHODS = written_by("pca", "supervised")
"""The directions files previewed: those of the steps before this one."""

CHECKED = ("supervised", "supervised_conditional")
"""The files whose directions are checked against their target attribute."""


@dataclass
class PreviewConfig:
    """The ``preview`` params section: edit grids and the supervised-direction check on held-out seeds."""

    seed_offset: int = 90_000_000
    grid_samples: int = 2
    scales: list[float] = field(default_factory=lambda: [-2.0, -1.0, 0.0, 1.0, 2.0])
    max_directions: int = 4
    check_samples: int = 32
    check_scale: float = 3.0

    def __post_init__(self) -> None:
        require(self.seed_offset >= 0, "preview.seed_offset", self.seed_offset, "must be >= 0")
        require(self.grid_samples >= 1, "preview.grid_samples", self.grid_samples, "must be >= 1")
        require(len(self.scales) >= 1, "preview.scales", self.scales, "must list at least one scale")
        require(self.max_directions >= 1, "preview.max_directions", self.max_directions, "must be >= 1")
        require(self.check_samples >= 1, "preview.check_samples", self.check_samples, "must be >= 1")
        require(self.check_scale > 0, "preview.check_scale", self.check_scale, "must be > 0")


def preview_grid(
    model: DiffusionModel,
    directions: Directions,
    cfg: PreviewConfig,
    sampler: SamplerConfig,
    samples: HeldOut,
) -> torch.Tensor:
    """A picture [3, H', W']: one row per (direction, held-out sample), one column per scale of ``cfg.scales``."""
    count = min(cfg.max_directions, directions.num_directions)
    edits = torch.stack(
        [edit(model, directions, k, cfg.scales, samples, sampler) for k in range(count)]
    )
    rows = edits.permute(0, 2, 1, 3, 4, 5)  # [K, S, M, ...] -> [K, M, S, ...]: rows (k, m), columns s
    return make_grid(rows.reshape(-1, *rows.shape[-3:]), columns=len(cfg.scales))



@dataclass
class PreviewResult:
    """What the preview stage writes: one grid per method with its caption, and the check's metrics."""

    grids: dict[str, torch.Tensor]
    captions: dict[str, str]
    metrics: dict[str, Any] = field(default_factory=dict)


def run(
    model: DiffusionModel,
    classifier: nn.Module,
    files: Mapping[str, Directions],
    cfg: PreviewConfig,
    sampler: SamplerConfig,
    conditional: Mapping[str, list[str]],
) -> PreviewResult:
    """Grids of every file of ``files`` (method -> Directions) on ``cfg.grid_samples`` held-out seeds, and
    the supervised check of the files of :data:`CHECKED` at ``cfg.check_scale`` on ``cfg.check_samples``
    seeds; ``conditional`` is ``directions.supervised.conditional`` (target -> projected-out attributes)."""
    grid_samples = held_out(model, sampler, cfg.seed_offset, cfg.grid_samples)
    grids, captions = {}, {}
    for method, directions in files.items():
        grids[method] = preview_grid(model, directions, cfg, sampler, grid_samples)
        captions[method] = ", ".join(directions.names[: cfg.max_directions])
    names = list(classifier.attribute_names)
    check_samples = held_out(model, sampler, cfg.seed_offset, cfg.check_samples)
    baseline = classify_logits(classifier, decode_images(model, check_samples.x_T, check_samples.noise, sampler))
    reports: dict[str, Any] = {}
    for method in CHECKED:
        effects = attribute_effects(model, classifier, files[method], cfg.check_scale, check_samples, sampler, baseline)
        reports[method] = supervised_check(names, files[method], effects, baseline)
    reports["conditional"] = conditional_check(reports["supervised"], reports["supervised_conditional"], conditional)
    reports["min_moved_supervised"] = min(entry["moved"] for entry in reports["supervised"].values())
    return PreviewResult(grids, captions, reports)
