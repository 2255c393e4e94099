"""Step ``evaluate``: one directions file judged on held-out seeds by the protocol of
:mod:`pipeline.evaluation.protocol` (docs/methods.md, "Evaluation protocol"; docs/outputs.md, evaluate). The DAG
runs it once per file of ``evaluate.methods`` (a DVC ``foreach``), so a change to one method's directions
reruns only that method's evaluation; ``evaluate_summary`` gathers them."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from pipeline.diffusion.models import DiffusionModel
from pipeline.diffusion.sampling import SamplerConfig
from pipeline.directions.format import Directions
from pipeline.directions.methods import EVALUATED_METHODS, METHODS, TARGETED_METHODS
from pipeline.editing.samples import held_out
from pipeline.evaluation.protocol import (
    DirectionResult,
    MethodGrid,
    ProtocolConfig,
    judge_files,
    judged_rows,
    method_grid,
)
from pipeline.evaluation.readout import Reading, calibrated_reader
from pipeline.io.errors import ConfigError
from pipeline.io.files import WorkCache
from pipeline.io.validation import require

PARAMS = ("model", "sampler", "classifier", "toyfaces", "evaluate")
"""The params this step reads (its stage's ``params`` in dvc.yaml); ``toyfaces`` only with the ToyFaces
classifier, whose broken check re-renders faces."""


@dataclass
class EvaluateConfig(ProtocolConfig):
    """The ``evaluate`` params section: which files (``methods``; targeted files whole; the first
    ``max_directions`` directions of untargeted files) on which held-out seeds: from ``seed_offset``, first the
    ``choose_samples`` seeds that choose each side's operating point, then the ``num_samples`` seeds that report
    it (untargeted files: the first ``untargeted_choose_samples`` and ``untargeted_samples`` of each); the
    fields of :class:`ProtocolConfig` say how each direction is judged."""

    seed_offset: int = 95_000_000
    choose_samples: int = 64
    num_samples: int = 256
    untargeted_choose_samples: int = 32
    untargeted_samples: int = 128
    methods: list[str] = field(default_factory=lambda: list(EVALUATED_METHODS))
    max_directions: int = 2

    def __post_init__(self) -> None:
        super().__post_init__()
        key = "evaluate"
        require(self.seed_offset >= 0, f"{key}.seed_offset", self.seed_offset, "must be >= 0")
        require(self.choose_samples >= 2, f"{key}.choose_samples", self.choose_samples, "must be >= 2")
        require(self.num_samples >= 2, f"{key}.num_samples", self.num_samples, "must be >= 2")
        require(len(self.methods) >= 1, f"{key}.methods", self.methods, "must list at least one method")
        for method in [*self.methods, *self.method_scales]:
            require(method in METHODS, f"{key}.methods", method, f"unknown; expected one of {', '.join(METHODS)}")
        require(len(set(self.methods)) == len(self.methods), f"{key}.methods", self.methods, "has duplicates")
        require(
            2 <= self.untargeted_samples <= self.num_samples, f"{key}.untargeted_samples", self.untargeted_samples,
            "must be in [2, num_samples]",
        )  # fmt: skip
        require(
            2 <= self.untargeted_choose_samples <= self.choose_samples, f"{key}.untargeted_choose_samples",
            self.untargeted_choose_samples, "must be in [2, choose_samples]",
        )  # fmt: skip
        require(self.max_directions >= 1, f"{key}.max_directions", self.max_directions, "must be >= 1")
        broken = self.broken
        calibration_end = broken.seed_offset + broken.calibration_samples + broken.reference_samples
        evaluated_end = self.seed_offset + self.choose_samples + self.num_samples
        overlap = max(self.seed_offset, broken.seed_offset) < min(evaluated_end, calibration_end)
        require(
            not overlap, f"{key}.broken.seed_offset", self.broken.seed_offset,
            "its calibration seeds overlap the evaluated ones",
        )  # fmt: skip


@dataclass
class MethodEvaluation:
    """One file judged: its directions' results (name -> result, file order), its unedited reading, the
    labelled grid, the details JSON (settings, every direction's entry, the grid's row and column labels), the
    comparison the file asks for (``compare``: source method and target -> projected-out partners, for
    conditional files) and ``timings`` (logged, kept out of the outputs)."""

    method: str
    results: dict[str, DirectionResult]
    baseline: Reading
    names: list[str]
    factor_names: list[str]
    grid: MethodGrid
    details: dict[str, Any]
    compare: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


def run(
    model: DiffusionModel,
    classifier: nn.Module,
    method: str,
    directions: Directions,
    cfg: EvaluateConfig,
    sampler: SamplerConfig,
    world: Any = None,
    progress: bool = True,
    work: WorkCache | None = None,
    shard: tuple[int, int] | None = None,
) -> MethodEvaluation | None:
    """Judge the directions file of ``method`` by the protocol of the module docstring. ``world`` (a
    ToyFacesConfig) enables the exact broken check and the true factors of a ToyFaces classifier. With ``shard``
    (index, count), a shard job: only the directions k with k % count == index are judged, to fill ``work`` with
    their decodes, and None is returned (the stage then judges the whole file from ``work``)."""
    if method not in cfg.methods:
        raise ConfigError(f"evaluate: method '{method}' is not in evaluate.methods ({', '.join(cfg.methods)})")
    started = time.perf_counter()
    reader = calibrated_reader(model, sampler, classifier, world, cfg.broken)
    samples = held_out(model, sampler, cfg.seed_offset, cfg.choose_samples + cfg.num_samples)
    untargeted = (cfg.untargeted_choose_samples, cfg.untargeted_samples)
    results, baselines, _ = judge_files(
        model, reader, {method: directions}, cfg, sampler, samples, cfg.max_directions, untargeted, work, progress,
        choose=cfg.choose_samples, shard=shard,
    )  # fmt: skip
    if shard is not None:
        return None
    judged, baseline = results[method], baselines[method]
    grid = method_grid(method, judged, baseline, cfg.grid_samples)
    _, choose = judged_rows(len(samples.seeds), cfg.choose_samples, None if method in TARGETED_METHODS else untargeted)
    details = {
        "method": method,
        "settings": {
            "choose_samples": choose,
            "num_samples": len(baseline.decisions) - choose,
            "scales": cfg.scales_for(method),
            "growth": cfg.growth,
            "max_extensions": cfg.max_extensions,
            "max_broken": cfg.max_broken,
            "min_clean_flip": cfg.min_clean_flip,
            "min_eligible": cfg.min_eligible,
            "broken_check": reader.describe(),
        },
        "directions": [result.entry() for result in judged.values()],
        "grid": {"rows": grid.rows, "columns": grid.columns},
    }
    compare = {}
    if directions.extra.get("projected_out") and directions.extra.get("source_method"):
        compare = {"source_method": directions.extra["source_method"], "partners": directions.extra["projected_out"]}
    timings = {"seconds": time.perf_counter() - started, "resumed": work.resumed if work else 0}
    return MethodEvaluation(
        method, judged, baseline, reader.names, reader.factor_names, grid, details, compare, timings
    )
