"""Step ``train_classifier``: train the attribute CNN of the ``folder`` labeller on a user's labelled images
(CelebA's ``list_attr_celeba.txt`` layout or a ``file,<attribute>,...`` CSV, with its image folder), with the
training loop, optimiser and checkpoints of the ToyFaces classifier; resumable from its checkpoints."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from pipeline.io.artefacts import TOY_DATASET_IMAGES, TOY_DATASET_LABELS
from pipeline.io.files import TrainingCheckpoint
from pipeline.io.validation import require
from pipeline.labellers.cnn import AttributeCNN, CNNConfig, decide
from pipeline.labellers.datasets import load_images, read_label_file
from pipeline.toyfaces.training import (
    OptimConfig,
    make_optimizer,
    optimizer_step,
    run_training_loop,
    step_generator,
    validate_training,
)

PARAMS = ("train_classifier",)
"""The params this step reads (its stage's ``params`` in dvc.yaml)."""


@dataclass
class TrainClassifierConfig:
    """Parameters of the ``train_classifier`` stage.

    ``images``: the image folder; ``labels``: the label file (``.csv``, else CelebA's layout); ``attributes``:
    the columns to learn (empty: all); ``heldout_fraction``: the share of images, drawn with ``seed``, kept out
    of training and measured; ``flip``: random horizontal flips (for attributes a mirror image keeps).
    """

    images: str = TOY_DATASET_IMAGES
    labels: str = TOY_DATASET_LABELS
    attributes: list[str] = field(default_factory=list)
    model: CNNConfig = field(default_factory=lambda: CNNConfig(widths=[8, 16, 32], feature_dim=64))
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=2e-3, warmup_steps=50))
    steps: int = 400
    batch_size: int = 32
    flip: bool = True
    heldout_fraction: float = 0.2
    seed: int = 0
    checkpoint_every: int = 200

    def __post_init__(self) -> None:
        fraction = self.heldout_fraction
        require(0.0 < fraction < 1.0, "train_classifier.heldout_fraction", fraction, "must be in (0, 1)")


def split(count: int, heldout_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions [count - k] of the training images and [k] of the held-out ones, k = round(fraction * count)
    (at least 1), from a permutation drawn with ``seed``; both sorted."""
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    heldout = max(1, round(heldout_fraction * count))
    require(
        count - heldout >= 1,
        "train_classifier.heldout_fraction",
        heldout_fraction,
        f"leaves no training image of {count}",
    )
    return order[heldout:].sort().values, order[:heldout].sort().values


def run(
    cfg: TrainClassifierConfig,
    output_dir: str | Path,
    checkpoint_dir: str | Path,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> tuple[AttributeCNN, dict[str, float]]:
    """Train the attribute CNN on ``cfg.labels`` / ``cfg.images``; save it to ``output_dir``.

    Each step draws ``batch_size`` training images with replacement from the step's own generator, so a run
    resumed from ``checkpoint_dir`` sees exactly the batches of an uninterrupted one. Returns the classifier
    and held-out metrics: ``accuracy/<name>`` and ``balanced_accuracy/<name>`` (mean of the true positive and
    true negative rates; 0.5 is chance whatever the attribute's frequency) per attribute, ``min_accuracy``,
    ``min_balanced_accuracy``, and the image counts ``train_images`` and ``heldout_images``.
    """
    validate_training("train_classifier", cfg.steps, cfg.batch_size, cfg.optim, cfg.checkpoint_every)
    table = read_label_file(cfg.labels).select(cfg.attributes, "train_classifier.attributes")
    images = load_images(cfg.images, table.files, cfg.model.resolution)
    train, heldout = split(len(table.files), cfg.heldout_fraction, cfg.seed)
    torch.manual_seed(cfg.seed)
    model = AttributeCNN(cfg.model, table.names).to(device).train()
    optimizer = make_optimizer(model.parameters(), cfg.optim)

    def train_step(step: int) -> dict[str, float]:
        generator = step_generator(cfg.seed, step)
        picked = train[torch.randint(len(train), (cfg.batch_size,), generator=generator)]
        batch = images[picked].float() / 255.0
        if cfg.flip:
            flipped = torch.rand(cfg.batch_size, generator=generator) < 0.5
            batch = torch.where(flipped.view(-1, 1, 1, 1), batch.flip(-1), batch)
        loss = F.binary_cross_entropy_with_logits(model(batch.to(device)), table.labels[picked].to(device))
        optimizer_step(loss, model, optimizer, step, cfg.steps, cfg.optim)
        return {"bce": loss.item()}

    data = {"labels_sha256": hashlib.sha256(Path(cfg.labels).read_bytes()).hexdigest()}
    run_training_loop(
        cfg.steps,
        TrainingCheckpoint(checkpoint_dir, {"train_classifier": asdict(cfg), "data": data}),
        cfg.checkpoint_every,
        {"model": model},
        optimizer,
        train_step,
        "train_classifier",
        progress,
    )
    model = model.cpu().eval().requires_grad_(False)
    model.save(output_dir)
    metrics = heldout_metrics(decide(model, images[heldout]), table.labels[heldout].bool(), table.names)
    return model, metrics | {"train_images": len(train)}


def heldout_metrics(decided: torch.Tensor, truth: torch.Tensor, names: list[str]) -> dict[str, float]:
    """Accuracy and balanced accuracy per attribute of decisions [N, A] against labels [N, A] (both bool),
    their minima and the held-out count (see :func:`run`). A rate of a class absent from the held-out images
    counts as 1 (nothing of it to miss)."""
    accuracy = (decided == truth).float().mean(dim=0)
    positives, negatives = truth.sum(dim=0), (~truth).sum(dim=0)
    true_positive = torch.where(positives > 0, (decided & truth).sum(0) / positives.clamp_min(1), torch.ones(1))
    true_negative = torch.where(negatives > 0, (~decided & ~truth).sum(0) / negatives.clamp_min(1), torch.ones(1))
    balanced = (true_positive + true_negative) / 2
    metrics = {f"accuracy/{name}": accuracy[i].item() for i, name in enumerate(names)}
    metrics |= {f"balanced_accuracy/{name}": balanced[i].item() for i, name in enumerate(names)}
    metrics |= {"min_accuracy": accuracy.min().item(), "min_balanced_accuracy": balanced.min().item()}
    return metrics | {"heldout_images": len(truth)}
