"""The ToyFaces attribute classifier: a small CNN trained by the project on true ToyFaces labels.

Like every classifier of the pipeline it takes images in [0, 1], shape [N, 3, H, W] (resized when
needed), returns one logit per attribute [N, A] named by ``attribute_names``, and exposes the
penultimate activations ``features`` [N, num_features] (the FID/KID feature extractor).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from pipeline.io.errors import ConfigError, ModelNotFoundError
from pipeline.io.files import atomic_path
from pipeline.toyfaces.world import BINARY_ATTRIBUTES, CONTINUOUS_FACTORS, Factors, ToyFacesConfig, region_masks


@dataclass
class ToyClassifierConfig:
    """Architecture of the ToyFaces classifier: conv widths per stage (each stage halves the resolution)."""

    widths: list[int] = field(default_factory=lambda: [16, 32, 64])
    feature_dim: int = 128
    resolution: int = 32


class ToyFacesClassifier(nn.Module):
    """A small CNN with two heads: binary attribute logits [N, 7] and continuous factors [N, 6].

    Input: images [N, 3, R, R] in [0, 1]. ``features`` returns the shared penultimate layer [N, feature_dim].
    """

    attribute_names = BINARY_ATTRIBUTES
    factor_names = CONTINUOUS_FACTORS

    def __init__(self, config: ToyClassifierConfig | None = None):
        super().__init__()
        self.config = config or ToyClassifierConfig()
        layers: list[nn.Module] = []
        in_channels = 3
        for width in self.config.widths:
            layers += [
                nn.Conv2d(in_channels, width, 3, padding=1),
                nn.GroupNorm(8, width),
                nn.SiLU(),
                nn.Conv2d(width, width, 3, padding=1),
                nn.GroupNorm(8, width),
                nn.SiLU(),
                nn.AvgPool2d(2),
            ]
            in_channels = width
        self.body = nn.Sequential(*layers)
        spatial = self.config.resolution // 2 ** len(self.config.widths)
        self.neck = nn.Sequential(
            nn.Flatten(), nn.Linear(in_channels * spatial**2, self.config.feature_dim), nn.SiLU()
        )
        self.attribute_head = nn.Linear(self.config.feature_dim, len(BINARY_ATTRIBUTES))
        self.factor_head = nn.Linear(self.config.feature_dim, len(CONTINUOUS_FACTORS))
        self.num_features = self.config.feature_dim

    def _check(self, images: torch.Tensor) -> torch.Tensor:
        size = self.config.resolution
        if images.ndim != 4 or images.shape[1] != 3:
            raise ConfigError(f"classifier input: expected images [N, 3, H, W], got {tuple(images.shape)}")
        if images.shape[-2:] != (size, size):
            images = F.interpolate(images, size=(size, size), mode="area")
        return images * 2.0 - 1.0

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate features [N, feature_dim] of images [N, 3, H, W] in [0, 1]."""
        return self.neck(self.body(self._check(images)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Binary attribute logits [N, 7] (order ``attribute_names``)."""
        return self.attribute_head(self.features(images))

    def predict_factors(self, images: torch.Tensor) -> torch.Tensor:
        """Predicted continuous factors [N, 6] (order ``factor_names``; pose_x in [-1, 1], others [0, 1])."""
        return self.factor_head(self.features(images))

    def save(self, folder: str | Path) -> None:
        """Write ``config.json`` and ``model.safetensors`` into ``folder`` atomically."""
        with atomic_path(folder) as tmp:
            tmp.mkdir()
            (tmp / "config.json").write_text(json.dumps(asdict(self.config), indent=2) + "\n")
            save_file(
                {k: v.contiguous() for k, v in self.state_dict().items()}, str(tmp / "model.safetensors")
            )

    @classmethod
    def load(cls, folder: str | Path, device: str | torch.device = "cpu") -> ToyFacesClassifier:
        """Load a classifier saved with ``save``; eval mode, gradients off."""
        folder = Path(folder)
        weights = folder / "model.safetensors"
        if not weights.is_file() or not (folder / "config.json").is_file():
            raise ModelNotFoundError(
                f"classifier folder '{folder}': missing config.json or model.safetensors"
            )
        model = cls(ToyClassifierConfig(**json.loads((folder / "config.json").read_text())))
        model.load_state_dict(load_file(str(weights)))
        return model.to(device).eval().requires_grad_(False)


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
