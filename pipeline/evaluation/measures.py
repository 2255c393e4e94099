"""Per-image measures of edits: selectivity of an effect vector, SSIM and PSNR against the unedited image,
and the realism of a set of images (KID and FID on the classifier's features, torchmetrics)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch
from torch import nn
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from pipeline.io.errors import ConfigError

PSNR_CAP = 100.0
"""PSNR (dB) reported for an unchanged image (whose PSNR is infinite)."""


def selectivity(effects: torch.Tensor) -> float:
    """|largest| / sum |effects| of an effect vector [A]: in [1/A, 1] for a non-zero vector, 0 for zero."""
    magnitude = effects.abs().double()
    total = float(magnitude.sum())
    return float(magnitude.max()) / total if total > 0 else 0.0


def auto_label(effects: torch.Tensor, names: Sequence[str]) -> str:
    """The name of the entry of ``effects`` [A] with the largest magnitude."""
    return names[int(effects.abs().argmax())]


def central_difference(plus: torch.Tensor, minus: torch.Tensor) -> torch.Tensor:
    """(plus - minus) / 2 averaged over samples: [M, X] changes at +s and -s -> [X]."""
    return ((plus - minus) / 2).mean(dim=0)


def ssim_per_image(edited: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """SSIM [N] of images [N, 3, H, W] in [0, 1] (Gaussian window 11, or the largest odd size that fits)."""
    kernel = min(11, min(original.shape[-2:]))
    kernel -= 1 - kernel % 2
    values = structural_similarity_index_measure(
        edited.float(), original.float(), data_range=1.0, reduction="none", kernel_size=kernel
    )
    return values.reshape(len(original))


def psnr_per_image(edited: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """PSNR [N] in dB of images in [0, 1], capped at :data:`PSNR_CAP` (an unchanged image)."""
    values = peak_signal_noise_ratio(edited.float(), original.float(), data_range=1.0, reduction="none", dim=(1, 2, 3))
    return values.nan_to_num(PSNR_CAP, posinf=PSNR_CAP).clamp(max=PSNR_CAP)


class ClassifierFeatures(nn.Module):
    """A torchmetrics ``feature=`` extractor: images uint8 in [0, 255] or float in [0, 1], [N, 3, H, W]
    -> the classifier's penultimate features [N, num_features] (float32, on the CPU), each scaled to norm
    sqrt(num_features): KID's kernel (x.y / d + 1)^3 then reads cosine similarities, so KID is bounded
    (|KID| <= 16) and does not depend on the arbitrary scale of a classifier's activations."""

    def __init__(self, classifier: nn.Module):
        super().__init__()
        self.classifier = classifier
        self.num_features = int(classifier.num_features)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        images = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        device = next(self.classifier.parameters()).device
        features = self.classifier.features(images.to(device)).float().cpu()
        return features / features.norm(dim=1, keepdim=True).clamp(min=1e-12) * math.sqrt(self.num_features)


def kid(
    features: nn.Module, real: torch.Tensor, fake: torch.Tensor, subset_size: int, subsets: int, seed: int = 0
) -> tuple[float, float]:
    """KID (mean, std over subsets) of ``fake`` against ``real`` images [N, 3, H, W] in [0, 1] with the
    extractor ``features``; subsets are drawn from ``seed`` (the global RNG is left untouched)."""
    from torchmetrics.image.kid import KernelInceptionDistance

    size = min(subset_size, len(real), len(fake))
    if size < 2:
        raise ConfigError(f"KID: needs at least 2 images per set, got {len(real)} and {len(fake)}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "will save all extracted features in buffer"
        metric = KernelInceptionDistance(feature=features, subset_size=size, subsets=subsets, normalize=True)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std)


def fid(features: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> float | None:
    """FID of ``fake`` against ``real`` with ``features``; None when either set has no more samples than
    features (the covariance would be singular)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    if min(len(real), len(fake)) <= int(features.num_features):
        return None
    metric = FrechetInceptionDistance(feature=features, normalize=True)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    return float(metric.compute())

