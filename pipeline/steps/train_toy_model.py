"""Step ``train_toy_model``: train the ToyFaces DDPM (a diffusers UNet2DModel) on faces drawn fresh from the
world every step; resumable from its checkpoints."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import DDPMPipeline

from pipeline.io.errors import ConfigError
from pipeline.io.files import TrainingCheckpoint, save_with
from pipeline.toyfaces.training import (
    NoiseScheduleConfig,
    OptimConfig,
    ToyUNetConfig,
    build_noise_scheduler,
    build_toy_unet,
    data_seeds,
    heldout_denoising_loss,
    make_optimizer,
    optimizer_step,
    run_training_loop,
    step_generator,
    validate_training,
)
from pipeline.toyfaces.world import ToyFacesConfig, make_batch

PARAMS = ("toyfaces", "train_toy_model")
"""The params this step reads (its stage's ``params`` in dvc.yaml)."""


@dataclass
class TrainToyModelConfig:
    """Parameters of the ``train_toy_model`` stage."""

    unet: ToyUNetConfig = field(default_factory=ToyUNetConfig)
    schedule: NoiseScheduleConfig = field(default_factory=NoiseScheduleConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    steps: int = 12000
    batch_size: int = 32
    ema_decay: float = 0.999
    seed: int = 0
    data_seed_offset: int = 0
    checkpoint_every: int = 200
    heldout_size: int = 256


def run(
    cfg: TrainToyModelConfig,
    world: ToyFacesConfig,
    output_dir: str | Path,
    checkpoint_dir: str | Path,
    device: torch.device | str = "cpu",
    progress: bool = True,
    on_step: Callable[[int, float], None] | None = None,
) -> tuple[DDPMPipeline, dict[str, float]]:
    """Train a DDPM on ToyFaces and save the EMA model as a diffusers pipeline folder at ``output_dir``.

    The saved folder (``model_index.json``, ``unet/``, ``scheduler/``; safetensors) loads like a hub
    model. Checkpoints go to ``checkpoint_dir`` every ``checkpoint_every`` steps; a rerun resumes
    from the latest one and produces the same weights as an uninterrupted run (same device).
    ``on_step(step, loss)`` is called after every step (for logging). Returns the pipeline (EMA
    weights, CPU) and ``{"heldout_loss": ...}``, the EMA model's loss on fixed held-out noisy images.
    """
    validate_training("train_toy_model", cfg.steps, cfg.batch_size, cfg.optim, cfg.checkpoint_every)
    if not 0 <= cfg.ema_decay < 1:
        raise ConfigError(f"train_toy_model.ema_decay={cfg.ema_decay}: must be in [0, 1)")
    torch.manual_seed(cfg.seed)
    unet = build_toy_unet(cfg.unet, world.resolution).to(device).train()
    ema = copy.deepcopy(unet).eval().requires_grad_(False)
    scheduler = build_noise_scheduler(cfg.schedule)
    alphas_cumprod = scheduler.alphas_cumprod.to(device)
    optimizer = make_optimizer(unet.parameters(), cfg.optim)

    def train_step(step: int) -> dict[str, float]:
        images, _ = make_batch(data_seeds(cfg.data_seed_offset, step, cfg.batch_size), world)
        x0 = (images * 2.0 - 1.0).to(device)
        generator = step_generator(cfg.seed, step)
        t = torch.randint(0, cfg.schedule.num_train_timesteps, (cfg.batch_size,), generator=generator)
        noise = torch.randn(x0.shape, generator=generator).to(device)
        a = alphas_cumprod[t.to(device)].view(-1, 1, 1, 1)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
        loss = F.mse_loss(unet(x_t, t.to(device)).sample, noise)
        optimizer_step(loss, unet, optimizer, step, cfg.steps, cfg.optim)
        decay = min(cfg.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for p_ema, p in zip(ema.parameters(), unet.parameters(), strict=True):
                p_ema.lerp_(p, 1 - decay)
        if on_step is not None:
            on_step(step, loss.item())
        return {"loss": loss.item()}

    run_training_loop(
        cfg.steps,
        TrainingCheckpoint(checkpoint_dir, {"train_toy_model": asdict(cfg), "toyfaces": asdict(world)}),
        cfg.checkpoint_every,
        {"unet": unet, "ema": ema},
        optimizer,
        train_step,
        "train_toy_model",
        progress,
    )
    ema = ema.cpu()
    pipeline = DDPMPipeline(unet=ema, scheduler=scheduler)
    save_with(lambda tmp: pipeline.save_pretrained(tmp, safe_serialization=True), output_dir)
    return pipeline, {"heldout_loss": heldout_denoising_loss(ema, scheduler, world, cfg.heldout_size)}

