"""The ToyFaces attribute classifier: a small CNN trained by the project on true ToyFaces labels.

Like every classifier of the pipeline it takes images in [0, 1], shape [N, 3, H, W] (resized when
needed), returns one logit per attribute [N, A] named by ``attribute_names``, and exposes the
penultimate activations ``features`` [N, num_features] (the FID/KID feature extractor).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Self

import torch
from torch import nn

from pipeline.labellers.cnn import AttributeCNN, CNNConfig
from pipeline.toyfaces.world import BINARY_ATTRIBUTES, CONTINUOUS_FACTORS, Factors, ToyFacesConfig, region_masks


class ToyFacesClassifier(AttributeCNN):
    """The attribute CNN (:class:`pipeline.labellers.cnn.AttributeCNN`) with two heads: binary attribute logits
    [N, 7] and continuous factors [N, 6].

    Input: images [N, 3, R, R] in [0, 1]. ``features`` returns the shared penultimate layer [N, feature_dim].
    """

    factor_names = CONTINUOUS_FACTORS

    def __init__(self, config: CNNConfig | None = None):
        super().__init__(config or CNNConfig(), BINARY_ATTRIBUTES)
        self.factor_head = nn.Linear(self.config.feature_dim, len(CONTINUOUS_FACTORS))

    def predict_factors(self, images: torch.Tensor) -> torch.Tensor:
        """Predicted continuous factors [N, 6] (order ``factor_names``; pose_x in [-1, 1], others [0, 1])."""
        return self.factor_head(self.features(images))

    def config_json(self) -> dict[str, Any]:
        """What ``config.json`` holds: the architecture (the attribute names are the world's)."""
        return asdict(self.config)

    @classmethod
    def from_config_json(cls, data: dict[str, Any]) -> Self:
        """An untrained classifier of the architecture :meth:`config_json` describes."""
        return cls(CNNConfig(**data))


@torch.no_grad()
def locate_regions(
    classifier: ToyFacesClassifier, images: torch.Tensor, world: ToyFacesConfig
) -> dict[str, torch.Tensor]:
    """Face-parsing for ToyFaces images (the role BiSeNet plays for CelebA-HQ in paper A): masks of the
    regions of :data:`pipeline.toyfaces.world.REGIONS`, [N, 1, R, R] in {0, 1}, drawn from the factors and
    attributes the classifier reads off ``images`` [N, 3, R, R] in [0, 1] (for generated samples, whose
    true factors are unknown)."""
    device = next(classifier.parameters()).device
    images = images.to(device)
    binary = (classifier(images) > 0).float().cpu()
    continuous = classifier.predict_factors(images).cpu()
    low = torch.tensor([-1.0 if name == "pose_x" else 0.0 for name in CONTINUOUS_FACTORS])
    factors = Factors(binary=binary, continuous=torch.maximum(torch.minimum(continuous, torch.ones(1)), low))
    return region_masks(factors, world)
