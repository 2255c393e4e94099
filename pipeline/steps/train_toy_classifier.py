"""Step ``train_toy_classifier``: train the ToyFaces attribute classifier (7 attributes and 6 continuous
factors) on faces drawn fresh from the world every step; resumable from its checkpoints."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from pipeline.io.errors import ConfigError
from pipeline.io.files import TrainingCheckpoint
from pipeline.labellers.cnn import CNNConfig
from pipeline.toyfaces.classifier import ToyFacesClassifier
from pipeline.toyfaces.training import (
    OptimConfig,
    data_seeds,
    evaluate_classifier,
    make_optimizer,
    optimizer_step,
    run_training_loop,
    validate_training,
)
from pipeline.toyfaces.world import ToyFacesConfig, make_batch

PARAMS = ("toyfaces", "train_toy_classifier")
"""The params this step reads (its stage's ``params`` in dvc.yaml)."""


@dataclass
class TrainToyClassifierConfig:
    """Parameters of the ``train_toy_classifier`` stage."""

    model: CNNConfig = field(default_factory=CNNConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=2e-3, warmup_steps=50))
    steps: int = 2000
    batch_size: int = 64
    factor_loss_weight: float = 1.0
    seed: int = 0
    data_seed_offset: int = 10_000_000
    heldout_seed_offset: int = 20_000_000
    heldout_size: int = 4096
    checkpoint_every: int = 250


def run(
    cfg: TrainToyClassifierConfig,
    world: ToyFacesConfig,
    output_dir: str | Path,
    checkpoint_dir: str | Path,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> tuple[ToyFacesClassifier, dict[str, float]]:
    """Train the ToyFaces attribute classifier on true labels; save it to ``output_dir``.

    Returns the classifier and held-out metrics: accuracy per binary attribute (keys
    ``accuracy/<name>``), their minimum (``min_accuracy``) and the factor regression RMSE per factor.
    """
    validate_training("train_toy_classifier", cfg.steps, cfg.batch_size, cfg.optim, cfg.checkpoint_every)
    if cfg.model.resolution != world.resolution:
        raise ConfigError(
            f"train_toy_classifier.model.resolution={cfg.model.resolution}: "
            f"must equal toyfaces.resolution={world.resolution}"
        )
    torch.manual_seed(cfg.seed)
    model = ToyFacesClassifier(cfg.model).to(device).train()
    optimizer = make_optimizer(model.parameters(), cfg.optim)

    def train_step(step: int) -> dict[str, float]:
        images, factors = make_batch(data_seeds(cfg.data_seed_offset, step, cfg.batch_size), world)
        features = model.features(images.to(device))
        attribute_loss = F.binary_cross_entropy_with_logits(
            model.attribute_head(features), factors.binary.to(device)
        )
        factor_loss = F.mse_loss(model.factor_head(features), factors.continuous.to(device))
        loss = attribute_loss + cfg.factor_loss_weight * factor_loss
        optimizer_step(loss, model, optimizer, step, cfg.steps, cfg.optim)
        return {"bce": attribute_loss.item(), "mse": factor_loss.item()}

    run_training_loop(
        cfg.steps,
        TrainingCheckpoint(checkpoint_dir, {"train_toy_classifier": asdict(cfg), "toyfaces": asdict(world)}),
        cfg.checkpoint_every,
        {"model": model},
        optimizer,
        train_step,
        "train_toy_classifier",
        progress,
    )
    model = model.cpu().eval().requires_grad_(False)
    model.save(output_dir)
    return model, evaluate_classifier(
        model, world, range(cfg.heldout_seed_offset, cfg.heldout_seed_offset + cfg.heldout_size)
    )

