"""Per-image checks that an edited image is still one the model could produce ("broken" otherwise).

Two scores, both "higher is worse", each turned into a verdict by a threshold calibrated on unedited decodes
(:class:`BrokenCheck`), so that what counts as broken is set by the model's own samples, not by a constant:

* :class:`RerenderScore` (ToyFaces, exact): read every factor of the image with the classifier (attribute
  decisions and the factor head), paint that face with the ToyFaces renderer and take the structural
  dissimilarity 1 - SSIM of the image and the painting. A face the world can draw is re-drawn closely; a
  ghosted, doubled, half-drawn or washed-out face is not, whatever its attribute logits say. (SSIM, not the
  pixel RMS: a washed-out blob of face colours has a small RMS difference from a face but no face structure.)
* :class:`KNNRealismScore` (any model): the k-NN realism score of Kynkäänniemi et al. 2019 ("Improved
  Precision and Recall Metric for Assessing Generative Models", section 5) in the classifier's feature space.
  Every reference (unedited) feature vector r gets the radius rho_r of its k-th nearest reference neighbour;
  the realism of an image with features f is max_r rho_r / ||f - r||, >= 1 inside some reference ball. As in
  the paper, the references with the largest radii (``prune_fraction`` of them) are left out, so that an
  outlier's wide ball does not vouch for anything. The score used here is 1 / realism.

The threshold is ``margin`` times the ``quantile`` of the score over calibration images (unedited decodes of
seeds that are neither the edited samples nor, for the k-NN score, its references).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from pipeline.evaluation.measures import ssim_per_image
from pipeline.io.errors import ConfigError
from pipeline.io.validation import require

DETECTORS = ("auto", "rerender", "knn")
"""``evaluate.broken.detector``: auto = rerender when the classifier reads the ToyFaces factors, else knn."""


@dataclass
class BrokenConfig:
    """The ``evaluate.broken`` params: which score, and how its threshold is calibrated: on
    ``calibration_samples`` unedited decodes of held-out seeds from ``seed_offset`` (after the
    ``reference_samples`` seeds the k-NN score compares with, decoded only for that score)."""

    detector: str = "auto"
    seed_offset: int = 97_000_000
    calibration_samples: int = 128
    reference_samples: int = 128
    quantile: float = 0.99
    margin: float = 1.25
    knn_k: int = 3
    prune_fraction: float = 0.5

    def __post_init__(self) -> None:
        key = "evaluate.broken"
        require(self.detector in DETECTORS, f"{key}.detector", self.detector, f"must be one of {DETECTORS}")
        require(self.seed_offset >= 0, f"{key}.seed_offset", self.seed_offset, "must be >= 0")
        require(self.calibration_samples >= 8, f"{key}.calibration_samples", self.calibration_samples, "must be >= 8")
        require(self.reference_samples >= 2, f"{key}.reference_samples", self.reference_samples, "must be >= 2")
        require(0.5 <= self.quantile <= 1.0, f"{key}.quantile", self.quantile, "must be in [0.5, 1]")
        require(self.margin >= 1.0, f"{key}.margin", self.margin, "must be >= 1")
        require(self.knn_k >= 1, f"{key}.knn_k", self.knn_k, "must be >= 1")
        require(0.0 <= self.prune_fraction < 1.0, f"{key}.prune_fraction", self.prune_fraction, "must be in [0, 1)")


class ImageScore(Protocol):
    """A per-image score, higher for images less like the model's own: images [N, 3, H, W] in [0, 1] -> [N]."""

    name: str

    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...


class RerenderScore:
    """1 - SSIM [N] between each image and the ToyFaces face its classifier reading describes."""

    name = "rerender"

    def __init__(self, classifier: nn.Module, world: object, batch_size: int = 256):
        from pipeline.toyfaces.world import CONTINUOUS_FACTORS

        if not hasattr(classifier, "predict_factors"):
            raise ConfigError("evaluate.broken.detector 'rerender': the classifier does not read ToyFaces factors")
        self.classifier = classifier
        self.world = world
        self.batch_size = batch_size
        self.low = torch.tensor([-1.0 if name == "pose_x" else 0.0 for name in CONTINUOUS_FACTORS])
        self.high = torch.ones(len(CONTINUOUS_FACTORS))  # factor ranges: pose_x in [-1, 1], the rest [0, 1]

    @torch.no_grad()
    def rerender(self, images: torch.Tensor) -> torch.Tensor:
        """The faces [N, 3, R, R] the classifier reads in ``images`` [N, 3, H, W] (R the world's resolution)."""
        from pipeline.toyfaces.world import Factors, render

        device = next(self.classifier.parameters()).device
        drawn = []
        for chunk in images.split(self.batch_size):
            features = self.classifier.features(chunk.to(device))
            binary = (self.classifier.attribute_head(features) > 0).float().cpu()
            continuous = self.classifier.factor_head(features).float().cpu()
            continuous = continuous.clamp(min=self.low, max=self.high)
            drawn.append(render(Factors(binary, continuous), self.world))
        return torch.cat(drawn)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        drawn = self.rerender(images)
        if images.shape[-2:] != drawn.shape[-2:]:
            images = nn.functional.interpolate(images, size=drawn.shape[-2:], mode="area")
        return 1.0 - ssim_per_image(images.float(), drawn)


class KNNRealismScore:
    """1 / k-NN realism [N] of images against reference images, in a feature space (see the module docstring)."""

    name = "knn"

    def __init__(self, features: nn.Module, reference: torch.Tensor, k: int, prune_fraction: float):
        if len(reference) <= k:
            raise ConfigError(f"evaluate.broken.knn_k={k}: needs more than {k} reference images, got {len(reference)}")
        self.features = features
        self.reference = features(reference).double()  # [R, D]
        distances = torch.cdist(self.reference, self.reference)
        radii = distances.kthvalue(k + 1, dim=1).values  # the 1st nearest is the point itself
        keep = max(1, round(len(radii) * (1.0 - prune_fraction)))
        order = radii.argsort()[:keep]
        self.reference, self.radii = self.reference[order], radii[order]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        distances = torch.cdist(self.features(images).double(), self.reference)  # [N, R]
        realism = (self.radii[None, :] / distances.clamp(min=1e-12)).max(dim=1).values
        return (1.0 / realism).float()


class BrokenCheck:
    """A score with a threshold calibrated on unedited images: ``check(images)`` -> [N] bool, True = broken."""

    def __init__(self, score: ImageScore, calibration: torch.Tensor, quantile: float, margin: float):
        values = score(calibration).double()
        self.score = score
        self.calibration_scores = values
        self.threshold = float(torch.quantile(values, quantile)) * margin

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.score(images) > self.threshold

    def describe(self) -> dict[str, float | str | int]:
        """The detector, its threshold and the calibration it came from, for the outputs."""
        return {
            "detector": self.score.name,
            "threshold": self.threshold,
            "calibration_samples": len(self.calibration_scores),
            "calibration_median": float(self.calibration_scores.median()),
        }


def resolved_detector(cfg: BrokenConfig, classifier: nn.Module, world: object | None) -> str:
    """``cfg.detector``, with "auto" resolved: "rerender" for a ToyFaces classifier with its world, else "knn"."""
    if cfg.detector != "auto":
        return cfg.detector
    return "rerender" if world is not None and hasattr(classifier, "predict_factors") else "knn"


def make_broken_check(
    cfg: BrokenConfig,
    classifier: nn.Module,
    features: nn.Module,
    world: object | None,
    reference: torch.Tensor | None,
    calibration: torch.Tensor,
) -> BrokenCheck:
    """The configured check: the re-render score when ``cfg.detector`` is "rerender" (or "auto" with a
    ToyFaces classifier and world), else the k-NN realism score against ``reference`` images; both calibrated
    on ``calibration`` images (unedited decodes of other seeds)."""
    if resolved_detector(cfg, classifier, world) == "rerender":
        if world is None:
            raise ConfigError("evaluate.broken.detector 'rerender': needs the ToyFaces world (a toyfaces classifier)")
        score: ImageScore = RerenderScore(classifier, world)
    else:
        if reference is None:
            raise ConfigError("evaluate.broken.detector 'knn': needs reference images")
        score = KNNRealismScore(features, reference, cfg.knn_k, cfg.prune_fraction)
    return BrokenCheck(score, calibration, cfg.quantile, cfg.margin)
