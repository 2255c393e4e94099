"""Inversion of real images into the noise that :func:`pipeline.diffusion.sampling.decode` turns back into them
(``docs/methods.md``, "Inversion").

Two inversions, each returning a :class:`~pipeline.diffusion.sampling.SampleBatch` whose ``x_0`` is the input
and whose ``x_T`` (and ``noise``) decode to it under the same :class:`~pipeline.diffusion.ddim.DecodeSettings`:

* :func:`invert_ddim`: deterministic DDIM inversion (Song et al. 2021), eta = 0; approximate, better with more
  steps.
* :func:`invert_edit_friendly`: edit-friendly DDPM inversion (Huberman-Spiegelglas et al. 2024), eta > 0;
  exact up to float error, and the stored z keep an h edit's decode close to the image.

Both use the same UNet prediction as decoding (:meth:`pipeline.diffusion.models.DiffusionModel.eps`, guided
when the model is), so edit-friendly inversion stays exact; DDIM inversion under strong classifier-free
guidance reconstructs less well. h at step i, when captured, comes from the UNet pass that decode repeats.
"""

from __future__ import annotations

import math

import torch

from pipeline.diffusion.ddim import DecodeSettings, cpu_generator, ddim_step
from pipeline.diffusion.hspace import HSpaceHook
from pipeline.diffusion.models import DiffusionModel
from pipeline.diffusion.sampling import (
    CaptureSteps,
    SampleBatch,
    _assemble,
    _check_images,
    _compute_dtype,
    _HRecorder,
    _predict_eps,
    _progress_bar,
    _walk,
)
from pipeline.io.errors import ConfigError

EDIT_FRIENDLY_ETA = 1.0
"""eta of :func:`invert_edit_friendly` when no settings are given (DDPM-like, the paper's setting)."""


def invert_ddim(
    model: DiffusionModel,
    x0: torch.Tensor,
    settings: DecodeSettings | None = None,
    *,
    capture_steps: CaptureSteps = None,
) -> SampleBatch:
    """Deterministic DDIM inversion of images x0 [B, C, H, W] (model space, [-1, 1]) to x_T.

    Walks the decode grid of ``settings`` (default ``DecodeSettings()``; its eta must be 0) backwards, from the
    clean level to exactly the noisiest grid timestep ``timesteps[0]`` (T steps, no off-by-one). Step i is the
    algebraic inverse of decode step i with eps evaluated at (x_{i+1}, t_i) instead of the unknown (x_i, t_i),
    so ``decode(model, x_T, settings=settings)`` reconstructs x0 approximately, better with more steps. h at
    step i (if in ``capture_steps``) comes from that same UNet pass. The result's ``x_0`` is the input ``x0``;
    ``noise`` is None and ``eta`` 0.
    """
    settings = DecodeSettings() if settings is None else settings
    if settings.eta != 0:
        raise ConfigError(
            f"eta {settings.eta!r}: DDIM inversion is deterministic (eta 0); use invert_edit_friendly for eta > 0"
        )
    x0 = _check_images("x0", x0, model.sample_shape)
    walk = _walk(model, settings, len(x0), capture_steps=capture_steps)
    grid, batch_size = walk.grid, settings.batch_size
    compute_dtype = _compute_dtype(model)
    results = []
    with (
        _progress_bar(settings, len(x0), grid.num_steps, "DDIM inversion") as bar,
        HSpaceHook.for_model(model, settings.location, capture=False) as hook,
    ):
        for begin in range(0, len(x0), batch_size):
            x = x0[begin : begin + batch_size].to(device=model.device, dtype=compute_dtype)
            recorder = _HRecorder(walk, len(x))
            for step_index in reversed(range(grid.num_steps)):
                hook.capture = recorder.wants(step_index)
                eps = _predict_eps(model, x, grid, step_index)
                recorder.record(step_index, hook)
                alpha = grid.alphas_cumprod[step_index].item()
                alpha_prev = grid.alphas_cumprod_prev[step_index].item()
                predicted_x0 = (x - math.sqrt(1 - alpha_prev) * eps) / math.sqrt(alpha_prev)
                x = math.sqrt(alpha) * predicted_x0 + math.sqrt(1 - alpha) * eps
                bar.update(1)
            results.append((x0[begin : begin + batch_size].cpu(), recorder.h, x.cpu(), None))
    return _assemble(results, walk, seeds=None)


def invert_edit_friendly(
    model: DiffusionModel,
    x0: torch.Tensor,
    settings: DecodeSettings | None = None,
    *,
    seed: int = 0,
    capture_steps: CaptureSteps = None,
) -> SampleBatch:
    """Edit-friendly DDPM inversion of images x0 [B, C, H, W] (model space) into (x_T, z)
    (Huberman-Spiegelglas et al. 2024).

    Draws independent x_{t_i} = sqrt(ā_i) x0 + sqrt(1-ā_i) n_i for every step of the grid of ``settings``
    (n [T, C, H, W] from a CPU generator seeded with ``seed``, the same for every image, so that an image's
    inversion, and every edit of it, does not depend on the other images of the batch), sets the level after
    the last step to x0, and solves z_i = (x_{t_{i+1}} - mu_i) / sigma_i with sigma_i = eta sqrt(v_i) exactly as
    :func:`~pipeline.diffusion.sampling.decode` uses it (z_i = 0 where sigma_i = 0).
    ``decode(model, x_T, noise, settings)`` then reproduces x0 up to float error and the sigma = 0 last step.
    ``settings`` defaults to ``DecodeSettings(eta=1.0)``; its eta must be in (0, 1]. h at step i (if in
    ``capture_steps``) comes from the UNet pass at (x_{t_i}, t_i), the one decode repeats. The result's
    ``x_0`` is the input ``x0``.
    """
    settings = DecodeSettings(eta=EDIT_FRIENDLY_ETA) if settings is None else settings
    eta = settings.eta
    if eta == 0:
        raise ConfigError("eta 0: edit-friendly inversion needs eta in (0, 1]; use invert_ddim for eta = 0")
    x0 = _check_images("x0", x0, model.sample_shape)
    walk = _walk(model, settings, len(x0), capture_steps=capture_steps)
    grid, batch_size = walk.grid, settings.batch_size
    compute_dtype = _compute_dtype(model)
    alphas = grid.alphas_cumprod.to(compute_dtype).reshape(1, -1, 1, 1, 1)
    sigmas = grid.sigmas(eta)
    all_noise = torch.randn((1, grid.num_steps, *model.sample_shape), generator=cpu_generator(seed)).expand(
        len(x0), -1, -1, -1, -1
    )
    results = []
    with (
        _progress_bar(settings, len(x0), grid.num_steps, "edit-friendly inversion") as bar,
        HSpaceHook.for_model(model, settings.location, capture=False) as hook,
    ):
        for begin in range(0, len(x0), batch_size):
            clean = x0[begin : begin + batch_size].to(dtype=compute_dtype)
            noisy = alphas.sqrt() * clean.unsqueeze(1) + (1 - alphas).sqrt() * all_noise[begin : begin + batch_size]
            levels = torch.cat([noisy, clean.unsqueeze(1)], dim=1).to(model.device)
            z = torch.zeros_like(levels[:, :-1])
            recorder = _HRecorder(walk, len(clean))
            for step_index in range(grid.num_steps):
                hook.capture = recorder.wants(step_index)
                eps = _predict_eps(model, levels[:, step_index], grid, step_index)
                recorder.record(step_index, hook)
                mean = ddim_step(grid, step_index, levels[:, step_index], eps, eta, torch.zeros_like(eps))
                if sigmas[step_index] > 0:
                    z[:, step_index] = (levels[:, step_index + 1] - mean) / sigmas[step_index].item()
                bar.update(1)
            results.append((clean.cpu(), recorder.h, levels[:, 0].cpu(), z.cpu()))
    return _assemble(results, walk, seeds=None)
