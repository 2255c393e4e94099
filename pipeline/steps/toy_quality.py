"""Step ``toy_quality``: how well the trained ToyFaces DDPM reproduces its world, judged by the ToyFaces
classifier."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pipeline.diffusion.models import DiffusionModel
from pipeline.diffusion.sampling import DecodeSettings, sample
from pipeline.io.errors import ConfigError
from pipeline.io.images import make_grid, side_by_side
from pipeline.toyfaces.classifier import ToyFacesClassifier
from pipeline.toyfaces.world import BINARY_ATTRIBUTES, ToyFacesConfig, make_batch

PARAMS = ("toyfaces", "toy_quality")
"""The params this step reads (its stage's ``params`` in dvc.yaml)."""


@dataclass
class ToyQualityConfig:
    """Parameters of the ``toy_quality`` stage."""

    num_samples: int = 512
    steps: int = 50
    eta: float = 0.0
    clip_sample: bool = True
    batch_size: int = 128
    seed_offset: int = 40_000_000
    confidence: float = 0.9
    grid_samples: int = 64


def _validate(cfg: ToyQualityConfig) -> None:
    if cfg.num_samples < 2:
        raise ConfigError(f"toy_quality.num_samples={cfg.num_samples}: must be >= 2")
    if not 0.5 < cfg.confidence < 1:
        raise ConfigError(f"toy_quality.confidence={cfg.confidence}: must be in (0.5, 1)")
    if not 1 <= cfg.grid_samples <= cfg.num_samples:
        raise ConfigError(f"toy_quality.grid_samples={cfg.grid_samples}: must be in [1, num_samples]")


def attribute_statistics(
    probabilities: torch.Tensor, world: ToyFacesConfig, confidence: float
) -> dict[str, float]:
    """Compare classifier probabilities [N, 7] of generated images with the world's true statistics.

    Returns ``confident_fraction`` (share of images whose every attribute has p < 1-confidence or
    p > confidence), ``max_marginal_gap`` (largest |frequency - configured probability| over attributes,
    frequencies of p > 0.5), ``correlation_gap`` (largest |correlation - configured rho| over the
    correlated pairs), and per attribute ``frequency/<name>``.
    """
    decided = (probabilities > 0.5).float()
    confident = ((probabilities < 1 - confidence) | (probabilities > confidence)).all(dim=1)
    stats = {"confident_fraction": confident.float().mean().item()}
    gaps = []
    for index, name in enumerate(BINARY_ATTRIBUTES):
        frequency = decided[:, index].mean().item()
        stats[f"frequency/{name}"] = frequency
        gaps.append(abs(frequency - world.probabilities[name]))
    stats["max_marginal_gap"] = max(gaps)
    correlation_gaps = []
    for pair in world.correlations:
        first, second = (
            decided[:, BINARY_ATTRIBUTES.index(pair.first)],
            decided[:, BINARY_ATTRIBUTES.index(pair.second)],
        )
        correlation = torch.corrcoef(torch.stack([first, second]))[0, 1].nan_to_num(0.0).item()
        stats[f"correlation/{pair.first}-{pair.second}"] = correlation
        correlation_gaps.append(abs(correlation - pair.rho))
    stats["correlation_gap"] = max(correlation_gaps, default=0.0)
    return stats


@torch.no_grad()
def run(
    model: DiffusionModel,
    classifier: ToyFacesClassifier,
    world: ToyFacesConfig,
    cfg: ToyQualityConfig,
    progress: bool = True,
) -> tuple[dict[str, float], torch.Tensor]:
    """Sample ``num_samples`` images by DDIM, classify them, and compare with the world's statistics.

    Returns the statistics of :func:`attribute_statistics` and a picture [3, H, W] in [0, 1]:
    ``grid_samples`` generated images (left) beside as many real ToyFaces images (right).
    """
    _validate(cfg)
    seeds = range(cfg.seed_offset, cfg.seed_offset + cfg.num_samples)
    settings = DecodeSettings(steps=cfg.steps, eta=cfg.eta, batch_size=cfg.batch_size, progress=progress)
    batch = sample(model, seeds, settings, capture_steps=None, keep_noise=False)
    images = model.images(batch.x_0)
    device = next(classifier.parameters()).device
    probabilities = torch.cat(
        [torch.sigmoid(classifier(chunk.to(device))).cpu() for chunk in images.split(cfg.batch_size)]
    )
    real, _ = make_batch(seeds[: cfg.grid_samples], world)
    columns = max(1, int(cfg.grid_samples**0.5))
    picture = side_by_side(make_grid(images[: cfg.grid_samples], columns), make_grid(real, columns), gap=6)
    return attribute_statistics(probabilities, world, cfg.confidence), picture
