"""Step ``evaluate``: every directions file judged alike on held-out seeds by the protocol of
:mod:`pipeline.evaluation.protocol` (docs/methods.md, "Evaluation protocol"; docs/outputs.md, evaluate)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from pipeline.diffusion.models import DiffusionModel
from pipeline.diffusion.sampling import SamplerConfig
from pipeline.directions.format import Directions
from pipeline.directions.methods import EVALUATED_METHODS, METHODS, TARGETED_METHODS
from pipeline.editing import held_out
from pipeline.evaluation.judge import Rate
from pipeline.evaluation.protocol import DirectionResult, ProtocolConfig, file_entries, judge_files, method_grid
from pipeline.evaluation.readout import calibrated_reader
from pipeline.evaluation.summary import conditional_comparison, method_summary, targeted_summary
from pipeline.io.files import WorkCache
from pipeline.io.validation import require

PARAMS = ("model", "sampler", "classifier", "toyfaces", "evaluate")
"""The params this step reads (its stage's ``params`` in dvc.yaml); ``toyfaces`` only with the ToyFaces
classifier, whose broken check re-renders faces."""


@dataclass
class EvaluateConfig(ProtocolConfig):
    """The ``evaluate`` params section: which files (``methods``; targeted files whole, on ``num_samples``
    held-out seeds from ``seed_offset``; the first ``max_directions`` directions of untargeted files, on the
    first ``untargeted_samples`` of those seeds); the fields of :class:`ProtocolConfig` say how each direction
    is judged."""

    seed_offset: int = 95_000_000
    num_samples: int = 64
    untargeted_samples: int = 32
    methods: list[str] = field(default_factory=lambda: list(EVALUATED_METHODS))
    max_directions: int = 2

    def __post_init__(self) -> None:
        super().__post_init__()
        key = "evaluate"
        require(self.seed_offset >= 0, f"{key}.seed_offset", self.seed_offset, "must be >= 0")
        require(self.num_samples >= 2, f"{key}.num_samples", self.num_samples, "must be >= 2")
        require(len(self.methods) >= 1, f"{key}.methods", self.methods, "must list at least one method")
        for method in [*self.methods, *self.method_scales]:
            require(method in METHODS, f"{key}.methods", method, f"unknown; expected one of {', '.join(METHODS)}")
        require(len(set(self.methods)) == len(self.methods), f"{key}.methods", self.methods, "has duplicates")
        require(
            2 <= self.untargeted_samples <= self.num_samples, f"{key}.untargeted_samples", self.untargeted_samples,
            "must be in [2, num_samples]",
        )  # fmt: skip
        require(self.max_directions >= 1, f"{key}.max_directions", self.max_directions, "must be >= 1")
        seeds = range(self.seed_offset, self.seed_offset + self.num_samples)
        calibration = range(self.broken.seed_offset, self.broken.seed_offset + self.broken.calibration_samples
                            + self.broken.reference_samples)  # fmt: skip
        require(
            not set(seeds) & set(calibration), f"{key}.broken.seed_offset", self.broken.seed_offset,
            "its calibration seeds overlap the evaluated ones",
        )  # fmt: skip


@dataclass
class EvaluationResult:
    """What the evaluate stage writes: the short metrics, the details (every rate with its interval and every
    curve), the plot rows (curves, method table), one labelled grid per method with its caption, and
    ``timings`` (seconds per method and in all, decodes resumed), logged but kept out of the metrics."""

    metrics: dict[str, Any]
    details: dict[str, Any]
    curve_rows: list[dict[str, Any]]
    method_rows: list[dict[str, Any]]
    grids: dict[str, torch.Tensor]
    captions: dict[str, str]
    timings: dict[str, float] = field(default_factory=dict)


def run(
    model: DiffusionModel,
    classifier: nn.Module,
    files: Mapping[str, Directions],
    cfg: EvaluateConfig,
    sampler: SamplerConfig,
    world: Any = None,
    progress: bool = True,
    work: WorkCache | None = None,
) -> EvaluationResult:
    """Judge every directions file of ``files`` (method -> Directions) by the protocol of the module docstring.
    ``world`` (a ToyFacesConfig) enables the exact broken check of a ToyFaces classifier."""
    started = time.perf_counter()
    reader = calibrated_reader(model, sampler, classifier, world, cfg.broken)
    samples = held_out(model, sampler, cfg.seed_offset, cfg.num_samples)
    results, baselines, seconds = judge_files(
        model, reader, files, cfg, sampler, samples, cfg.max_directions, cfg.untargeted_samples, work, progress
    )
    unedited = next(
        (baselines[m] for m in baselines if files[m].space != "x_t" and m in TARGETED_METHODS),
        next(iter(baselines.values())),
    )
    summaries = {method: method_summary(judged) for method, judged in results.items()}
    metrics: dict[str, Any] = {
        "num_samples": cfg.num_samples,
        "untargeted_samples": cfg.untargeted_samples,
        "broken_threshold": reader.check.threshold,
        "unedited_broken": Rate.of(unedited.broken, torch.ones_like(unedited.broken)).value,
        "methods": summaries,
    }
    details: dict[str, Any] = {
        "settings": {
            "num_samples": cfg.num_samples,
            "untargeted_samples": cfg.untargeted_samples,
            "scales": {method: cfg.scales_for(method) for method in results},
            "max_broken": cfg.max_broken,
            "broken_check": reader.describe(),
        },
        "methods": file_entries(results),
    }
    if "supervised" in results:
        metrics["supervised"] = targeted_summary(results["supervised"])
    conditional = _conditional(files, results, reader.names)
    if conditional:
        metrics["conditional"] = details["conditional"] = conditional
    grids, captions = {}, {}
    for method, judged in results.items():
        grids[method], captions[method] = method_grid(method, judged, baselines[method], cfg.grid_samples)
    timings = {f"seconds/{method}": value for method, value in seconds.items()}
    timings |= {"seconds": time.perf_counter() - started, "resumed": (work.resumed if work else 0)}
    return EvaluationResult(
        metrics, details, curve_rows(results), method_rows(summaries, results), grids, captions, timings
    )


def _conditional(
    files: Mapping[str, Directions], results: Mapping[str, Mapping[str, DirectionResult]], names: list[str]
) -> dict[str, Any]:
    """Conditional against plain directions (:func:`conditional_comparison`) for every conditional file whose
    source file was evaluated too."""
    comparison: dict[str, Any] = {}
    for method, directions in files.items():
        projected = directions.extra.get("projected_out")
        source = directions.extra.get("source_method")
        if not projected or source not in results or method not in results:
            continue
        for name, partners in projected.items():
            if name in results[method] and name in results[source]:
                comparison[name] = conditional_comparison(
                    results[source][name], results[method][name], list(partners), names
                )
    return comparison


def curve_rows(results: Mapping[str, Mapping[str, DirectionResult]]) -> list[dict[str, Any]]:
    """One row per (method, direction, side, scale): the curve's rates, and whether it is the operating scale."""
    rows = []
    for method, judged in results.items():
        for name, result in judged.items():
            for side, side_result in result.sides.items():
                entry = side_result.entry()
                for point in entry["curve"]:
                    rows.append({
                        "method": method, "direction": name, "side": side,
                        "target": f"{entry['target']} {entry['towards']}",
                        "scale": side_result.edits.sign * point["scale"],
                        **{key: point[key] for key in ("flip", "clean_flip", "broken", "distortion")},
                        "operating": int(side_result.edits.sign * point["scale"] == entry["scale"]),
                    })  # fmt: skip
    return rows


def method_rows(
    summaries: Mapping[str, Mapping[str, Any]], results: Mapping[str, Mapping[str, DirectionResult]]
) -> list[dict[str, Any]]:
    """The method table: one row per method (directions judged and its :func:`method_summary`)."""
    return [{"method": method, "directions": len(results[method]), **summary} for method, summary in summaries.items()]
