"""Training the embedded ToyFaces models: a small DDPM (diffusers UNet2DModel) and the attribute classifier.

Data is drawn fresh from the procedural world every step (seeds ``step * batch_size + i``, offset by
the config), so training never repeats an image, needs no dataset on disk, and a run resumed from a
checkpoint sees exactly the batches an uninterrupted run would.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DModel
from tqdm.auto import tqdm

from pipeline.io.errors import ConfigError
from pipeline.io.files import TrainingCheckpoint
from pipeline.toyfaces.classifier import ToyFacesClassifier
from pipeline.toyfaces.world import ToyFacesConfig, make_batch


@dataclass
class ToyUNetConfig:
    """UNet2DModel architecture for the ToyFaces DDPM (32x32 RGB, bottleneck at resolution / 4)."""

    block_out_channels: list[int] = field(default_factory=lambda: [32, 64, 96])
    down_block_types: list[str] = field(
        default_factory=lambda: ["DownBlock2D", "DownBlock2D", "AttnDownBlock2D"]
    )
    up_block_types: list[str] = field(default_factory=lambda: ["AttnUpBlock2D", "UpBlock2D", "UpBlock2D"])
    layers_per_block: int = 1
    norm_num_groups: int = 16


@dataclass
class NoiseScheduleConfig:
    """The DDPM training noise schedule (diffusers DDPMScheduler arguments)."""

    num_train_timesteps: int = 1000
    beta_start: float = 0.0001
    beta_end: float = 0.02
    beta_schedule: str = "linear"


@dataclass
class OptimConfig:
    """AdamW with linear warm-up then cosine decay to ``min_lr_ratio * lr``; gradient clipping."""

    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 200
    min_lr_ratio: float = 0.05
    grad_clip: float = 1.0


def validate_training(
    section: str, steps: int, batch_size: int, optim: OptimConfig, checkpoint_every: int
) -> None:
    """Check the settings both training steps share; a one-line ConfigError names the key under ``section``."""
    if steps < 1:
        raise ConfigError(f"{section}.steps={steps}: must be >= 1")
    if batch_size < 1:
        raise ConfigError(f"{section}.batch_size={batch_size}: must be >= 1")
    if optim.lr <= 0:
        raise ConfigError(f"{section}.optim.lr={optim.lr}: must be > 0")
    if not 0 <= optim.min_lr_ratio <= 1:
        raise ConfigError(f"{section}.optim.min_lr_ratio={optim.min_lr_ratio}: must be in [0, 1]")
    if checkpoint_every < 1:
        raise ConfigError(f"{section}.checkpoint_every={checkpoint_every}: must be >= 1")


def build_toy_unet(cfg: ToyUNetConfig, resolution: int) -> UNet2DModel:
    """A freshly initialised UNet2DModel for RGB images of ``resolution`` pixels."""
    if not len(cfg.block_out_channels) == len(cfg.down_block_types) == len(cfg.up_block_types):
        raise ConfigError(
            "train_toy_model.unet: block_out_channels, down_block_types, up_block_types differ in length"
        )
    return UNet2DModel(
        sample_size=resolution,
        in_channels=3,
        out_channels=3,
        block_out_channels=tuple(cfg.block_out_channels),
        down_block_types=tuple(cfg.down_block_types),
        up_block_types=tuple(cfg.up_block_types),
        layers_per_block=cfg.layers_per_block,
        norm_num_groups=cfg.norm_num_groups,
    )


def build_noise_scheduler(cfg: NoiseScheduleConfig) -> DDPMScheduler:
    """The DDPMScheduler used for training (and saved with the model, so DDIM sampling reads its betas)."""
    return DDPMScheduler(
        num_train_timesteps=cfg.num_train_timesteps,
        beta_start=cfg.beta_start,
        beta_end=cfg.beta_end,
        beta_schedule=cfg.beta_schedule,
        clip_sample=False,
    )


def learning_rate(step: int, total_steps: int, cfg: OptimConfig) -> float:
    """Learning rate at ``step``: linear warm-up, then cosine decay to ``min_lr_ratio * lr``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps)
    return cfg.lr * (
        cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    )


def make_optimizer(params, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW over ``params`` with the configured learning rate and weight decay."""
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def optimizer_step(
    loss: torch.Tensor, module: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int, total_steps: int,
    cfg: OptimConfig,
) -> None:
    """One update at training step ``step``: the scheduled learning rate (:func:`learning_rate`), the gradients of
    ``loss`` with ``module``'s global norm clipped to ``cfg.grad_clip``, and the optimizer's step."""
    for group in optimizer.param_groups:
        group["lr"] = learning_rate(step, total_steps, cfg)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(module.parameters(), cfg.grad_clip)
    optimizer.step()


def step_generator(seed: int, step: int) -> torch.Generator:
    """The CPU generator of training step ``step``: one per step (not one long stream), so a resumed run
    draws exactly the noise an uninterrupted one would."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


def data_seeds(offset: int, step: int, batch_size: int) -> range:
    """The world seeds of training step ``step``'s batch: ``offset + step * batch_size`` on."""
    start = offset + step * batch_size
    return range(start, start + batch_size)


def run_training_loop(
    total_steps: int,
    checkpoint: TrainingCheckpoint,
    checkpoint_every: int,
    modules: dict[str, torch.nn.Module],
    optimizer: torch.optim.Optimizer,
    train_step: Callable[[int], dict[str, float]],
    description: str,
    progress: bool,
) -> int:
    """Resume from ``checkpoint`` if present, run ``train_step(step)`` to ``total_steps``; return the start step."""
    start = checkpoint.load(modules, optimizer) if checkpoint.exists() else 0
    bar = tqdm(
        range(start, total_steps), initial=start, total=total_steps, desc=description, disable=not progress
    )
    for step in bar:
        logs = train_step(step)
        bar.set_postfix({k: f"{v:.4f}" for k, v in logs.items()}, refresh=False)
        if (step + 1) % checkpoint_every == 0 or step + 1 == total_steps:
            checkpoint.save(step + 1, modules, optimizer)
    return start


@torch.no_grad()
def heldout_denoising_loss(
    unet: UNet2DModel,
    scheduler: DDPMScheduler,
    world: ToyFacesConfig,
    size: int,
    seed_offset: int = 30_000_000,
) -> float:
    """Mean epsilon-prediction MSE on ``size`` fixed held-out images, timesteps and noises (CPU, deterministic)."""
    images, _ = make_batch(range(seed_offset, seed_offset + size), world)
    generator = torch.Generator().manual_seed(seed_offset)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (size,), generator=generator)
    noise = torch.randn(images.shape, generator=generator)
    a = scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    x_t = a.sqrt() * (images * 2.0 - 1.0) + (1 - a).sqrt() * noise
    return F.mse_loss(unet(x_t, t).sample, noise).item()


@torch.no_grad()
def evaluate_classifier(
    model: ToyFacesClassifier, world: ToyFacesConfig, seeds: range, batch_size: int = 512
) -> dict[str, float]:
    """Accuracy per binary attribute and RMSE per continuous factor on ToyFaces images of ``seeds``."""
    correct = torch.zeros(len(model.attribute_names))
    squared_error = torch.zeros(len(model.factor_names))
    for start in range(0, len(seeds), batch_size):
        images, factors = make_batch(seeds[start : start + batch_size], world)
        features = model.features(images)
        correct += ((model.attribute_head(features) > 0).float() == factors.binary).float().sum(0)
        squared_error += (model.factor_head(features) - factors.continuous).pow(2).sum(0)
    metrics = {
        f"accuracy/{name}": (correct[i] / len(seeds)).item() for i, name in enumerate(model.attribute_names)
    }
    metrics["min_accuracy"] = min(metrics.values())
    metrics |= {
        f"rmse/{name}": (squared_error[i] / len(seeds)).sqrt().item()
        for i, name in enumerate(model.factor_names)
    }
    return metrics
