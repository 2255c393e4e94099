"""Step ``evaluate``: every directions file scored alike on held-out seeds by the protocol of
:mod:`pipeline.evaluation.protocol` (docs/methods.md, "Evaluation protocol"; docs/outputs.md, evaluate.json)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from pipeline.diffusion.models import DiffusionModel
from pipeline.diffusion.sampling import SamplerConfig
from pipeline.directions.format import Directions
from pipeline.directions.methods import EVALUATED_METHODS, METHODS, TARGETED_METHODS
from pipeline.directions.pullback import states_at
from pipeline.editing import Editor, GuidedEditor, ResumableEditor, decode_images, held_out
from pipeline.evaluation.protocol import (
    DirectionResult,
    EvaluationResult,
    ProtocolConfig,
    caption,
    evaluate_direction,
    finite,
    method_metrics,
    table_row,
)
from pipeline.evaluation.readout import Judge, Reading, toyfaces_factor_std
from pipeline.evaluation.supervised import matched_conditional
from pipeline.io.files import WorkCache
from pipeline.io.images import make_grid
from pipeline.io.validation import require

PARAMS = ("model", "sampler", "classifier", "toyfaces", "evaluate")
"""The params this step reads (its stage's ``params`` in dvc.yaml); ``toyfaces`` only with the ToyFaces
classifier, for the ground truth."""


@dataclass
class EvaluateConfig(ProtocolConfig):
    """The ``evaluate`` params section: which files (``methods``, the first ``max_directions`` directions
    of each; files of targeted methods whole), on how many held-out seeds from ``seed_offset``, with realism
    measured against ``reference_samples`` unedited decodes of further held-out seeds (after the edited
    ones); the fields of :class:`ProtocolConfig` say how each direction is judged."""

    seed_offset: int = 95_000_000
    num_samples: int = 12
    methods: list[str] = field(default_factory=lambda: list(EVALUATED_METHODS))
    max_directions: int = 5
    reference_samples: int = 32

    def __post_init__(self) -> None:
        super().__post_init__()
        key = "evaluate"
        require(self.seed_offset >= 0, f"{key}.seed_offset", self.seed_offset, "must be >= 0")
        require(self.num_samples >= 2, f"{key}.num_samples", self.num_samples, "must be >= 2")
        require(len(self.methods) >= 1, f"{key}.methods", self.methods, "must list at least one method")
        for method in self.methods:
            require(method in METHODS, f"{key}.methods", method, f"unknown; expected one of {', '.join(METHODS)}")
        require(len(set(self.methods)) == len(self.methods), f"{key}.methods", self.methods, "has duplicates")
        require(self.max_directions >= 1, f"{key}.max_directions", self.max_directions, "must be >= 1")
        require(self.reference_samples >= 2, f"{key}.reference_samples", self.reference_samples, "must be >= 2")
        require(
            self.grid_samples <= self.num_samples, f"{key}.grid_samples", self.grid_samples,
            "must be in [1, num_samples]",
        )  # fmt: skip


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
    """Evaluate every directions file of ``files`` (method -> Directions) by the protocol of the module
    docstring. ``world`` (a ToyFacesConfig) enables the ground truth when ``classifier`` predicts factors.
    Every edit decode is a unit of ``work`` (a killed run resumes from the decodes it finished)."""
    work = work or WorkCache(None)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    factor_std = toyfaces_factor_std(world) if world is not None and hasattr(classifier, "predict_factors") else None
    judge = Judge(classifier, factor_std)
    samples = held_out(model, sampler, cfg.seed_offset, cfg.num_samples)
    others = held_out(model, sampler, cfg.seed_offset + cfg.num_samples, cfg.reference_samples)
    reference = decode_images(model, others.x_T, others.noise, sampler)
    plain: dict[str, Reading] = {}
    states: dict[int, torch.Tensor] = {}

    def state_at(step: int) -> torch.Tensor:
        if step not in states:
            states[step] = states_at(
                model, samples.x_T, samples.noise, steps=sampler.steps, eta=sampler.eta, step_indices=[step]
            )[step]
        return states[step]

    methods: dict[str, Any] = {}
    curve_rows: list[dict[str, Any]] = []
    method_rows: list[dict[str, Any]] = []
    grids: dict[str, torch.Tensor] = {}
    captions: dict[str, str] = {}
    results: dict[str, dict[str, DirectionResult]] = {}
    jobs = [(method, k) for method, d in files.items() for k in range(_count(method, d, cfg))]
    bar = tqdm(total=len(jobs), desc="evaluate", unit="direction", disable=not progress)
    for method, directions in files.items():
        method_started = time.perf_counter()
        decoder: Editor | GuidedEditor
        if directions.space == "x_t":
            decoder = GuidedEditor(model, directions, samples, sampler, state_at, f"'{method}'")
            baseline = Reading.of(judge, decoder.baseline)
        else:
            if "decoded" not in plain:
                images = decode_images(model, samples.x_T, samples.noise, sampler)
                plain["decoded"] = Reading.of(judge, images)
            baseline = plain["decoded"]
            decoder = Editor(model, directions, samples, sampler, baseline.images)
        editor = ResumableEditor(decoder, work, method)
        results[method] = {}
        for k in range(_count(method, directions, cfg)):
            name = directions.names[k]
            target = judge.names.index(name) if method in TARGETED_METHODS and name in judge.names else None
            results[method][name] = evaluate_direction(editor, judge, baseline, k, name, method, cfg, reference, target)
            curve_rows += results[method][name].rows
            bar.update()
        methods[method] = method_metrics(results[method], judge, baseline, reference, cfg)
        timings[f"seconds/{method}"] = time.perf_counter() - method_started
        method_rows.append({"method": method, **table_row(methods[method]["summary"])})
        # one row per direction: for each shown sample, its grid scales then its matched edit
        rows = torch.stack([result.columns.flatten(0, 1) for result in results[method].values()])
        grids[method] = make_grid(rows.flatten(0, 1), columns=rows.shape[1])
        captions[method] = caption(method, results[method], cfg)
    bar.close()
    metrics: dict[str, Any] = {
        "table": {row["method"]: {key: value for key, value in row.items() if key != "method"} for row in method_rows},
        "methods": methods,
        "settings": {
            "num_samples": cfg.num_samples,
            "distortion_budget": cfg.distortion_budget,
            "max_scale": cfg.max_scale,
            "ground_truth": factor_std is not None,
            "reference_samples": cfg.reference_samples,
            "fid_note": (
                f"FID needs more than {judge.features.num_features} samples per set (the feature size); "
                f"{cfg.reference_samples} reference samples give KID only"
                if cfg.reference_samples <= judge.features.num_features
                else ""
            ),
        },
    }
    conditional = matched_conditional(files, results, judge)
    if conditional:
        metrics["conditional"] = conditional
    timings |= {"seconds": time.perf_counter() - started, "resumed": work.resumed}
    return EvaluationResult(finite(metrics), curve_rows, method_rows, grids, captions, timings)


def _count(method: str, directions: Directions, cfg: EvaluateConfig) -> int:
    if method in TARGETED_METHODS:
        return directions.num_directions
    return min(cfg.max_directions, directions.num_directions)

