"""The classifier's read-out of images: attribute logits, standardised ToyFaces factors and the features for
KID/FID; and one edit measured against its unedited baseline."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pipeline.classifiers import classify_logits
from pipeline.evaluation.measures import ClassifierFeatures, psnr_per_image, ssim_per_image
from pipeline.io.errors import ConfigError

GATED_FACTORS = {"hat_hue": "hat"}
"""Ground truth: continuous factors that exist only with a binary attribute."""


class Judge:
    """The classifier's read-out of images: attribute logits, the standardised ToyFaces factors (when the
    classifier predicts them and a world is given), and the feature extractor for KID/FID."""

    def __init__(self, classifier: nn.Module, factor_std: torch.Tensor | None = None):
        self.classifier = classifier
        self.names = list(classifier.attribute_names)
        self.features = ClassifierFeatures(classifier)
        self.factor_std = factor_std
        self.factor_names: list[str] = []
        self.gates: list[tuple[int, int]] = []
        if factor_std is not None:
            self.factor_names = [*classifier.attribute_names, *classifier.factor_names]
            if len(self.factor_names) != len(factor_std):
                raise ConfigError(f"factor_std: {len(factor_std)} values for {len(self.factor_names)} factors")
            # a factor that exists only with an attribute (the hat's hue): its change counts as much as the
            # attribute is present before and after the edit, so unobservable hues of hatless faces add nothing
            self.gates = [
                (self.factor_names.index(factor), self.factor_names.index(attribute))
                for factor, attribute in GATED_FACTORS.items()
                if factor in self.factor_names and attribute in self.factor_names
            ]

    @torch.no_grad()
    def read(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(attribute logits [N, A] (raw), factors [N, F] / std or None) of images in [0, 1]."""
        logits = classify_logits(self.classifier, images)
        probabilities = torch.sigmoid(logits)
        if self.factor_std is None:
            return logits, None
        device = next(self.classifier.parameters()).device
        continuous = torch.cat(
            [self.classifier.predict_factors(chunk.to(device)).float().cpu() for chunk in images.split(256)]
        )
        return logits, torch.cat([probabilities, continuous], dim=1) / self.factor_std


def toyfaces_factor_std(world: Any, count: int = 4096) -> torch.Tensor:
    """Standard deviation [13] of the ToyFaces factors (7 binary attributes, then 6 continuous factors)
    over ``count`` faces of the world ``world`` (a :class:`pipeline.toyfaces.world.ToyFacesConfig`)."""
    from pipeline.toyfaces.world import sample_factors

    factors = sample_factors(range(count), world)
    return torch.cat([factors.binary, factors.continuous], dim=1).float().std(dim=0).clamp(min=1e-6)


@dataclass
class Reading:
    """Images [M, 3, H, W] in [0, 1] with their logits [M, A] and standardised factors [M, F] (or None)."""

    images: torch.Tensor
    logits: torch.Tensor
    factors: torch.Tensor | None

    @classmethod
    def of(cls, judge: Judge, images: torch.Tensor) -> Reading:
        logits, factors = judge.read(images)
        return cls(images, logits, factors)


@dataclass
class Measurement:
    """One edit at ``scale`` measured against its baseline: per sample, the signed logit changes
    ``effects`` [M, A], the standardised factor changes ``truth`` [M, F] (or None), SSIM and PSNR [M]."""

    scale: float
    reading: Reading
    effects: torch.Tensor
    truth: torch.Tensor | None
    ssim: torch.Tensor
    psnr: torch.Tensor

    @property
    def distortion(self) -> float:
        """Mean 1 - SSIM over samples."""
        return float(1.0 - self.ssim.double().mean())

    @property
    def mean_effects(self) -> torch.Tensor:
        """The attribute-effect vector [A] (mean over samples)."""
        return self.effects.mean(dim=0)


def measure(judge: Judge, baseline: Reading, images: torch.Tensor, scale: float) -> Measurement:
    """Measure edited images [M, 3, H, W] (sample i edited from baseline sample i) against ``baseline``."""
    reading = Reading.of(judge, images)
    truth = None
    if reading.factors is not None and baseline.factors is not None:
        truth = reading.factors - baseline.factors
        for factor, attribute in judge.gates:
            present = torch.minimum(
                torch.sigmoid(reading.logits[:, attribute]), torch.sigmoid(baseline.logits[:, attribute])
            )
            truth[:, factor] = truth[:, factor] * present
    return Measurement(
        scale=float(scale),
        reading=reading,
        effects=reading.logits - baseline.logits,
        truth=truth,
        ssim=ssim_per_image(images, baseline.images),
        psnr=psnr_per_image(images, baseline.images),
    )

