"""Reading images for the judge: every attribute's decision (the classifier at its threshold) and the broken
verdict (:mod:`pipeline.evaluation.broken`), with the check calibrated on the model's own unedited samples."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pipeline.classifiers import classify_logits
from pipeline.diffusion.models import DiffusionModel
from pipeline.diffusion.sampling import SamplerConfig
from pipeline.editing.samples import decode_images, held_out
from pipeline.evaluation.broken import BrokenCheck, BrokenConfig, make_broken_check, resolved_detector
from pipeline.evaluation.judge import decisions
from pipeline.evaluation.measures import ClassifierFeatures

GATED_FACTORS = {"hat_hue": "hat"}
"""Continuous ToyFaces factors that exist only with an attribute: their change counts only where the attribute is
present before and after the edit (a hatless face's hat hue is not observable)."""


@dataclass
class Reading:
    """Images [M, 3, H, W] in [0, 1] with their attribute decisions [M, A] bool, broken verdicts [M] bool,
    on ToyFaces the continuous factors [M, F] read by the classifier in units of each factor's standard
    deviation in the world (None otherwise), and the classifier's logits [M, A] (the decisions are logit > 0;
    None for readings that only decide)."""

    images: torch.Tensor
    decisions: torch.Tensor
    broken: torch.Tensor
    factors: torch.Tensor | None = None
    logits: torch.Tensor | None = None

    def head(self, count: int) -> Reading:
        """The reading of the first ``count`` images."""
        return self.subset(torch.arange(min(count, len(self.images))))

    def subset(self, index: torch.Tensor) -> Reading:
        """The reading of the images at positions ``index`` (1-d integer tensor)."""
        factors = None if self.factors is None else self.factors[index]
        logits = None if self.logits is None else self.logits[index]
        return Reading(self.images[index], self.decisions[index], self.broken[index], factors, logits)


class Reader:
    """Reads images: the classifier's decision of every attribute and the broken check's verdict; with
    ``factor_std`` [F] (ToyFaces), also the classifier's continuous factor predictions divided by it."""

    def __init__(self, classifier: nn.Module, check: BrokenCheck, factor_std: torch.Tensor | None = None):
        self.classifier = classifier
        self.check = check
        self.names: list[str] = list(classifier.attribute_names)
        self.factor_std = factor_std
        self.factor_names: list[str] = list(classifier.factor_names) if factor_std is not None else []
        self.gates = [
            (self.factor_names.index(factor), self.names.index(attribute))
            for factor, attribute in GATED_FACTORS.items()
            if factor in self.factor_names and attribute in self.names
        ]

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> Reading:
        """The reading of images [M, 3, H, W] in [0, 1]."""
        logits = classify_logits(self.classifier, images)
        factors = None
        if self.factor_std is not None:
            device = next(self.classifier.parameters()).device
            predicted = [self.classifier.predict_factors(chunk.to(device)).float().cpu() for chunk in images.split(256)]
            factors = torch.cat(predicted) / self.factor_std
        return Reading(images, decisions(logits), self.check(images), factors, logits)

    def factor_change(self, before: Reading, after: Reading) -> torch.Tensor | None:
        """|change| [M, F] of the continuous factors from ``before`` to ``after`` (world standard deviations),
        gated factors counted only where their attribute is present in both; None without factors."""
        if before.factors is None or after.factors is None:
            return None
        change = (after.factors - before.factors).abs()
        for factor, attribute in self.gates:
            change[:, factor] *= (before.decisions[:, attribute] & after.decisions[:, attribute]).float()
        return change

    def describe(self) -> dict[str, Any]:
        """The broken check's detector, threshold and calibration, for the outputs."""
        return self.check.describe()


def calibrated_reader(
    model: DiffusionModel,
    sampler: SamplerConfig,
    classifier: nn.Module,
    world: object | None,
    cfg: BrokenConfig,
) -> Reader:
    """A reader whose broken check is calibrated on ``cfg.calibration_samples`` unedited decodes of held-out
    seeds (and, for the k-NN score, compares with ``cfg.reference_samples`` decodes of the seeds before them).
    Every stage that judges edits with the same ``cfg`` gets the same threshold, so their verdicts agree. With a
    ToyFaces classifier and its ``world`` the reader also reads the continuous factors (the ground truth)."""
    knn = resolved_detector(cfg, classifier, world) == "knn"
    reference_count = cfg.reference_samples if knn else 0
    seeds = held_out(model, sampler, cfg.seed_offset, reference_count + cfg.calibration_samples)
    images = decode_images(model, seeds.x_T, seeds.noise, sampler)
    reference = images[:reference_count] if knn else None
    features = ClassifierFeatures(classifier)
    check = make_broken_check(cfg, classifier, features, world, reference, images[reference_count:])
    toyfaces = world is not None and hasattr(classifier, "predict_factors")
    return Reader(classifier, check, toyfaces_factor_std(world) if toyfaces else None)


def toyfaces_factor_std(world: Any, count: int = 4096) -> torch.Tensor:
    """Standard deviation [F] of the continuous ToyFaces factors over ``count`` faces of the world ``world`` (a
    :class:`pipeline.toyfaces.world.ToyFacesConfig`), the unit in which factor changes are reported."""
    from pipeline.toyfaces.world import sample_factors

    return sample_factors(range(count), world).continuous.float().std(dim=0).clamp(min=1e-6)
