"""Step ``preview``: labelled edit grids of held-out samples for the PCA and supervised directions files, every
edit framed by the judge's verdict (:mod:`pipeline.evaluation.protocol`), before the slower stages run. The DAG runs
it once per file of ``preview.methods`` (a DVC ``foreach``, as ``evaluate``), so a change to one method's directions
reruns only that file's preview.

Preview judges its few grid samples with the protocol and the broken check that ``evaluate`` uses (the same
``evaluate.broken`` calibration), so the same edit of the same seed gets the same verdict in both."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from pipeline.diffusion.models import DiffusionModel
from pipeline.diffusion.sampling import SamplerConfig
from pipeline.directions.format import Directions
from pipeline.directions.methods import METHODS as REGISTERED
from pipeline.directions.methods import written_by
from pipeline.editing.samples import held_out
from pipeline.evaluation.broken import BrokenConfig
from pipeline.evaluation.protocol import ProtocolConfig, file_entries, judge_files, method_grid
from pipeline.evaluation.readout import calibrated_reader
from pipeline.io.validation import require

PARAMS = ("model", "sampler", "classifier", "toyfaces", "preview", "evaluate.broken")
"""The params this step reads (its stage's ``params`` in dvc.yaml)."""

METHODS = written_by("pca", "supervised")
"""The directions files previewed by default (the default of ``preview.methods``): those of the steps before this
one."""


@dataclass
class PreviewConfig:
    """The ``preview`` params section: the files previewed (``methods``, one ``preview@<method>`` stage each),
    ``grid_samples`` held-out seeds from ``seed_offset``, edited at every magnitude of ``scales`` with both signs
    (0 is the unedited column; the Jacobian stage's preview uses the same list), the first ``max_directions``
    directions of untargeted files (targeted files whole)."""

    seed_offset: int = 90_000_000
    grid_samples: int = 2
    scales: list[float] = field(default_factory=lambda: [-2.0, -1.0, 0.0, 1.0, 2.0])
    max_directions: int = 4
    methods: list[str] = field(default_factory=lambda: list(METHODS))

    def __post_init__(self) -> None:
        require(self.seed_offset >= 0, "preview.seed_offset", self.seed_offset, "must be >= 0")
        require(self.grid_samples >= 1, "preview.grid_samples", self.grid_samples, "must be >= 1")
        require(any(s != 0 for s in self.scales), "preview.scales", self.scales, "must list a non-zero scale")
        require(self.max_directions >= 1, "preview.max_directions", self.max_directions, "must be >= 1")
        require(len(self.methods) >= 1, "preview.methods", self.methods, "must list at least one method")
        for method in self.methods:
            expected = f"unknown; expected one of {', '.join(REGISTERED)}"
            require(method in REGISTERED, "preview.methods", method, expected)
        require(len(set(self.methods)) == len(self.methods), "preview.methods", self.methods, "has duplicates")

    @property
    def magnitudes(self) -> list[float]:
        """The distinct non-zero |scale| values, ascending (each is edited with both signs)."""
        return sorted({abs(float(s)) for s in self.scales if s != 0})


@dataclass
class PreviewResult:
    """What the preview stage writes: one labelled grid per method with its caption, and per method the judge's
    entries of the grid samples (``{"broken_check": ..., "directions": [...]}``, entries of :func:`file_entries`)."""

    grids: dict[str, torch.Tensor]
    captions: dict[str, str]
    details: dict[str, dict[str, Any]]


def run(
    model: DiffusionModel,
    classifier: nn.Module,
    files: Mapping[str, Directions],
    cfg: PreviewConfig,
    sampler: SamplerConfig,
    broken: BrokenConfig,
    world: Any = None,
    progress: bool = True,
) -> PreviewResult:
    """Judge and draw every file of ``files`` (method -> Directions) on ``cfg.grid_samples`` held-out seeds;
    ``broken`` is the ``evaluate.broken`` calibration, ``world`` the ToyFaces world (its exact check)."""
    protocol = ProtocolConfig(
        scales=cfg.magnitudes, max_extensions=0, min_eligible=1, grid_samples=cfg.grid_samples, broken=broken
    )  # the grid's columns are the configured scales; its few samples choose and show
    reader = calibrated_reader(model, sampler, classifier, world, broken)
    samples = held_out(model, sampler, cfg.seed_offset, cfg.grid_samples)
    results, baselines, _ = judge_files(
        model, reader, files, protocol, sampler, samples, cfg.max_directions, progress=progress
    )
    grids, captions = {}, {}
    for method, judged in results.items():
        grid = method_grid(method, judged, baselines[method], cfg.grid_samples)
        grids[method], captions[method] = grid.picture, grid.caption
    check = reader.describe()
    entries = file_entries(results)
    details = {method: {"broken_check": check, "directions": entries[method]} for method in entries}
    return PreviewResult(grids, captions, details)
