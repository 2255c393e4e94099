"""x-space guidance of a directions file in space "x_t" (docs/methods.md, "Pullback directions"): the file's edit
step and guidance settings, checked once (:meth:`Guidance.of`), and the guided edit, guidance at the edit step
then DDIM to x_0 (:meth:`Guidance.edit`). Held-out samples (:class:`~pipeline.editing.samples.GuidedEditor`) and
the user's images (:func:`~pipeline.editing.images.edit_images`) are both edited here."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from pipeline.diffusion.models import DiffusionModel
from pipeline.diffusion.sampling import ddim_grid, denoise_steps
from pipeline.directions.format import Directions
from pipeline.directions.pullback import guidance_rows
from pipeline.io.errors import ConfigError

GUIDANCE_KEYS = ("step_size", "iterations")
"""The keys of a file's ``extra`` that x-space guidance reads."""


@dataclass(frozen=True)
class Guidance:
    """x-space guidance of one file: at grid step ``step`` (timestep ``timestep``), ``iterations`` updates of
    size ``step_size`` (:func:`~pipeline.directions.pullback.guidance_rows`)."""

    step: int
    timestep: int
    step_size: float
    iterations: int

    @classmethod
    def of(
        cls, model: DiffusionModel, directions: Directions, steps: int, label: str, keys: Sequence[str] = GUIDANCE_KEYS
    ) -> Guidance:
        """The guidance of ``directions`` on the ``steps``-step grid: its one edit step (``origin.steps``) and its
        ``extra`` settings. ConfigError, prefixed with ``label`` (how errors name the file), when the file has
        not exactly one edit step, lacks one of ``keys`` in ``extra`` or its step is outside the grid."""
        if directions.origin.steps is None or len(directions.origin.steps) != 1:
            raise ConfigError(f"{label}: space 'x_t' needs exactly one edit step (origin.steps)")
        missing = [key for key in keys if key not in directions.extra]
        if missing:
            raise ConfigError(f"{label}: extra lacks {missing} (x-space guidance settings)")
        step = int(directions.origin.steps[0])
        grid = ddim_grid(model.scheduler, steps)
        if not 0 <= step < grid.num_steps:
            raise ConfigError(f"{label}: edit step {step} outside the grid [0, {grid.num_steps})")
        extra = directions.extra
        return cls(step, int(grid.timesteps[step]), float(extra["step_size"]), int(extra["iterations"]))

    def edit(
        self,
        model: DiffusionModel,
        x_t: torch.Tensor,
        rows: torch.Tensor,
        direction: torch.Tensor,
        strengths: torch.Tensor,
        *,
        steps: int,
        eta: float | Sequence[float],
        noise: torch.Tensor | None,
        batch_size: int,
    ) -> torch.Tensor:
        """Images [B, 3, H, W] in [0, 1]: edit b guides state ``x_t[rows[b]]`` (x_t [N, C, H, W] at the edit step,
        rows [B] int64) along ``direction`` [C, H, W] with strength ``strengths[b]`` (strengths [B]), then
        denoises it as :meth:`denoise` does; ``batch_size`` rows per UNet call."""
        edited = guidance_rows(
            model, x_t[rows], direction, strengths, self.timestep, step_size=self.step_size,
            iterations=self.iterations, batch_size=batch_size,
        )  # fmt: skip
        return self.denoise(model, edited, rows, steps=steps, eta=eta, noise=noise, batch_size=batch_size)

    def denoise(
        self,
        model: DiffusionModel,
        x_t: torch.Tensor,
        rows: torch.Tensor,
        *,
        steps: int,
        eta: float | Sequence[float],
        noise: torch.Tensor | None,
        batch_size: int,
    ) -> torch.Tensor:
        """Images [B, 3, H, W] in [0, 1] of x_t [B, C, H, W] at the edit step after DDIM to x_0 on the
        ``steps``-step grid with ``eta`` (one value or one per step); row b uses the variance noise
        ``noise[rows[b]]`` (noise [N, T, C, H, W], or None where eta is 0); ``batch_size`` rows per walk."""
        images = []
        for chunk, chunk_rows in zip(x_t.split(batch_size), rows.split(batch_size), strict=True):
            chunk_noise = None if noise is None else noise[chunk_rows]
            x_0, _ = denoise_steps(model, chunk, steps=steps, start_step=self.step, eta=eta, noise=chunk_noise)
            images.append(model.images(x_0))
        return torch.cat(images)
