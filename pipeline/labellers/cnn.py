"""A small attribute CNN: images [N, 3, R, R] in [0, 1] -> one logit per attribute [N, A].

The ToyFaces classifier (:mod:`pipeline.toyfaces.classifier`) is this network with a second head for the
world's continuous factors; the ``folder`` labeller is this network trained on a user's labelled images
(:mod:`pipeline.steps.train_classifier`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Self

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from pipeline.io.errors import ConfigError, ModelNotFoundError
from pipeline.io.files import atomic_path


@dataclass
class CNNConfig:
    """Architecture of the attribute CNN: conv widths per stage (each stage halves the resolution), the
    width of the penultimate feature layer, and the side images are resized to."""

    widths: list[int] = field(default_factory=lambda: [16, 32, 64])
    feature_dim: int = 128
    resolution: int = 32


class AttributeCNN(nn.Module):
    """Conv stages (two 3x3 convolutions, GroupNorm, SiLU, 2x average pooling each), a linear feature layer
    and one logit per attribute.

    Input: images [N, 3, H, W] in [0, 1], area-resized to ``config.resolution`` when needed. ``features``
    returns the penultimate layer [N, feature_dim] (the FID/KID feature extractor).
    """

    def __init__(self, config: CNNConfig, attribute_names: Sequence[str]):
        super().__init__()
        self.config = config
        self.attribute_names = tuple(attribute_names)
        layers: list[nn.Module] = []
        in_channels = 3
        for width in config.widths:
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
        spatial = config.resolution // 2 ** len(config.widths)
        self.neck = nn.Sequential(nn.Flatten(), nn.Linear(in_channels * spatial**2, config.feature_dim), nn.SiLU())
        self.attribute_head = nn.Linear(config.feature_dim, len(self.attribute_names))
        self.num_features = config.feature_dim

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        size = self.config.resolution
        if images.ndim != 4 or images.shape[1] != 3:
            raise ConfigError(f"classifier input: expected images [N, 3, H, W], got {tuple(images.shape)}")
        if images.shape[-2:] != (size, size):
            images = F.interpolate(images, size=(size, size), mode="area")
        return images * 2.0 - 1.0

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate features [N, feature_dim] of images [N, 3, H, W] in [0, 1]."""
        return self.neck(self.body(self._prepare(images)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Attribute logits [N, A] (order ``attribute_names``)."""
        return self.attribute_head(self.features(images))

    def config_json(self) -> dict[str, Any]:
        """What ``config.json`` holds: the architecture and the attribute names."""
        return {**asdict(self.config), "attribute_names": list(self.attribute_names)}

    @classmethod
    def from_config_json(cls, data: dict[str, Any]) -> Self:
        """An untrained network of the architecture :meth:`config_json` describes."""
        names = data.pop("attribute_names")
        return cls(CNNConfig(**data), names)

    def save(self, folder: str | Path) -> None:
        """Write ``config.json`` and ``model.safetensors`` into ``folder`` atomically."""
        with atomic_path(folder) as tmp:
            tmp.mkdir()
            (tmp / "config.json").write_text(json.dumps(self.config_json(), indent=2) + "\n")
            save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(tmp / "model.safetensors"))

    @classmethod
    def load(cls, folder: str | Path, device: str | torch.device = "cpu") -> Self:
        """Load a network saved with :meth:`save`; eval mode, gradients off."""
        folder = Path(folder)
        weights = folder / "model.safetensors"
        if not weights.is_file() or not (folder / "config.json").is_file():
            raise ModelNotFoundError(f"classifier folder '{folder}': missing config.json or model.safetensors")
        model = cls.from_config_json(json.loads((folder / "config.json").read_text()))
        model.load_state_dict(load_file(str(weights)))
        return model.to(device).eval().requires_grad_(False)


@torch.no_grad()
def decide(model: nn.Module, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Decisions logit > 0 [N, A] (bool) of ``model`` on images [N, 3, H, W], uint8 or float in [0, 1]."""
    device = next(model.parameters()).device
    decided = []
    for chunk in images.split(batch_size):
        chunk = chunk.float() / 255.0 if chunk.dtype == torch.uint8 else chunk
        decided.append(model(chunk.to(device)).cpu() > 0)
    return torch.cat(decided)
