"""Per-image measures: SSIM against the unedited image (the image change 1 - SSIM), and the classifier's
penultimate features (the space of the k-NN realism score, :mod:`pipeline.evaluation.broken`)."""

from __future__ import annotations

import math

import torch
from torch import nn
from torchmetrics.functional.image import structural_similarity_index_measure


def ssim_per_image(edited: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """SSIM [N] of images [N, 3, H, W] in [0, 1] (Gaussian window 11, or the largest odd size that fits)."""
    kernel = min(11, min(original.shape[-2:]))
    kernel -= 1 - kernel % 2
    values = structural_similarity_index_measure(
        edited.float(), original.float(), data_range=1.0, reduction="none", kernel_size=kernel
    )
    return values.reshape(len(original))


class ClassifierFeatures(nn.Module):
    """Images uint8 in [0, 255] or float in [0, 1], [N, 3, H, W] -> the classifier's penultimate features
    [N, num_features] (float32, on the CPU), each scaled to norm sqrt(num_features), so that distances between
    them do not depend on the arbitrary scale of a classifier's activations."""

    def __init__(self, classifier: nn.Module):
        super().__init__()
        self.classifier = classifier
        self.num_features = int(classifier.num_features)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        images = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        device = next(self.classifier.parameters()).device
        features = torch.cat([self.classifier.features(chunk.to(device)).float().cpu() for chunk in images.split(256)])
        return features / features.norm(dim=1, keepdim=True).clamp(min=1e-12) * math.sqrt(self.num_features)
