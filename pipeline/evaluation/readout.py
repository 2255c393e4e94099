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
from pipeline.editing import decode_images, held_out
from pipeline.evaluation.broken import BrokenCheck, BrokenConfig, make_broken_check, resolved_detector
from pipeline.evaluation.judge import decisions
from pipeline.evaluation.measures import ClassifierFeatures


@dataclass
class Reading:
    """Images [M, 3, H, W] in [0, 1] with their attribute decisions [M, A] bool and broken verdicts [M] bool."""

    images: torch.Tensor
    decisions: torch.Tensor
    broken: torch.Tensor

    def head(self, count: int) -> Reading:
        """The reading of the first ``count`` images."""
        return Reading(self.images[:count], self.decisions[:count], self.broken[:count])


class Reader:
    """Reads images: the classifier's decision of every attribute and the broken check's verdict."""

    def __init__(self, classifier: nn.Module, check: BrokenCheck):
        self.classifier = classifier
        self.check = check
        self.names: list[str] = list(classifier.attribute_names)

    def __call__(self, images: torch.Tensor) -> Reading:
        """The reading of images [M, 3, H, W] in [0, 1]."""
        return Reading(images, decisions(classify_logits(self.classifier, images)), self.check(images))

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
    Every stage that judges edits with the same ``cfg`` gets the same threshold, so their verdicts agree."""
    knn = resolved_detector(cfg, classifier, world) == "knn"
    reference_count = cfg.reference_samples if knn else 0
    seeds = held_out(model, sampler, cfg.seed_offset, reference_count + cfg.calibration_samples)
    images = decode_images(model, seeds.x_T, seeds.noise, sampler)
    reference = images[:reference_count] if knn else None
    features = ClassifierFeatures(classifier)
    check = make_broken_check(cfg, classifier, features, world, reference, images[reference_count:])
    return Reader(classifier, check)
