"""DDIM sampling with h-space capture and editing, and inversion of real images (ALGORITHMS 1.1, 1.4-1.6).

Conventions shared by every function here:

* Step index i runs over 0..T-1 with **index 0 the noisiest step** (timestep ``timesteps[0]``); a step
  goes from timestep t_i to t_i - num_train_timesteps // T, or to ``final_alpha_cumprod`` after the last
  grid point (the rule of diffusers' ``DDIMScheduler.step``; for "leading" spacing it lands exactly on the
  next grid point).
* x_t lives in model space (pixels in [-1, 1] for a pixel DDPM) and its arithmetic runs in float32 (float64
  for a float64 UNet) whatever dtype the UNet runs in.
* Noise is drawn on the CPU from ``torch.Generator("cpu")`` and then moved to the device, so a sample is a
  pure function of (model, sampler settings, seed), independent of device, batch size and position.
  x_T uses the seed itself; the per-step variance noise z uses :func:`variance_noise_seed` of it.
* h tensors have layout [B, K, *h_shape] where K indexes the captured step indices listed in ``h_steps``.
* ``delta_h`` has shape [T, *h_shape] (the same edit for every sample) or [B, T, *h_shape]; it is added
  only at the step indices of ``edit_steps`` (default: all steps).
* Every UNet call goes through :meth:`pipeline.diffusion.models.DiffusionModel.eps`: a text-conditioned model sees its
  generation prompt, classifier-free guided when configured (h is that of the unconditional branch and
  delta_h edits both, see :mod:`pipeline.diffusion.hspace`). Inversions use the same prediction as decoding, so
  edit-friendly inversion stays exact; DDIM inversion under strong guidance reconstructs less well.

All returned tensors are on the CPU.
"""

from __future__ import annotations

import hashlib
import math
import numbers
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from diffusers import DDIMScheduler
from tqdm.auto import tqdm

from pipeline.io.validation import as_int
from pipeline.io.errors import ConfigError, NumericalError
from pipeline.io.validation import require
from pipeline.diffusion.hspace import DEFAULT_LOCATION, HSpaceHook, check_location, hspace_shape
from pipeline.diffusion.models import DiffusionModel

CaptureSteps = Literal["all"] | Sequence[int] | None

DEFAULT_STEPS = 50
DEFAULT_BATCH_SIZE = 16
_MAX_SEED = 2**63


@dataclass
class SamplerConfig:
    """The ``sampler`` params section: the DDIM grid used to generate and to decode edits.

    ``injection`` is how an h edit enters each DDIM step (ALGORITHMS 1.5): "symmetric" (the edited eps in
    both terms of the step, paper A) or "asyrp" (the unedited eps in the direction term: one more UNet pass
    per edited step; to first order the symmetric edit scaled by c_t = b_t / a_t per step).
    """

    steps: int = 20
    eta: float = 0.0
    batch_size: int = 64
    injection: str = "asyrp"

    def __post_init__(self) -> None:
        require(self.steps >= 1, "sampler.steps", self.steps, "must be >= 1")
        require(0.0 <= self.eta <= 1.0, "sampler.eta", self.eta, "must be in [0, 1]")
        require(self.batch_size >= 1, "sampler.batch_size", self.batch_size, "must be >= 1")
        injection = self.injection
        require(injection in ("symmetric", "asyrp"), "sampler.injection", injection, "must be symmetric or asyrp")


@dataclass
class SampleBatch:
    """Everything needed to reproduce and edit a batch of samples.

    Attributes:
        x_0: [B, C, H, W] final sample in model space (about [-1, 1]), unclipped; for an inversion, the
            input image. Use :func:`to_image_range` for images in [0, 1].
        x_T: [B, C, H, W] starting noise (None when ``sample(..., keep_noise=False)``).
        noise: [B, T, C, H, W] variance noise z_i added at step i; None when eta = 0 or not kept.
        timesteps: [T] int64 grid, noisiest first.
        eta: DDIM stochasticity used (0 = deterministic DDIM, 1 = DDPM-like).
        seeds: [B] int64 seeds of generated samples; None for decodes of given noise and inversions.
        h: [B, K, *h_shape] clean activations at ``hspace_location`` for the step indices ``h_steps``, in
            the requested storage dtype; None when nothing was captured.
        h_steps: [K] int64 step indices (ascending) of the second axis of ``h``; None with ``h``.
        hspace_location: where h was captured and delta_h was applied.
    """

    x_0: torch.Tensor
    x_T: torch.Tensor | None
    noise: torch.Tensor | None
    timesteps: torch.Tensor
    eta: float
    seeds: torch.Tensor | None
    h: torch.Tensor | None
    h_steps: torch.Tensor | None
    hspace_location: str


@dataclass(frozen=True)
class DDIMGrid:
    """The inference timestep grid and the cumulative alphas (ā) each step moves between.

    ``timesteps`` [T] int64 (noisiest first); ``alphas_cumprod`` [T] float64, ā at t_i;
    ``alphas_cumprod_prev`` [T] float64, ā at the step's target (``final_alpha_cumprod`` for the last);
    ``clip_range``: the predicted x_0 is clamped to [-clip_range, clip_range] at every step (the
    scheduler's ``clip_sample``), or None for no clamping.
    """

    timesteps: torch.Tensor
    alphas_cumprod: torch.Tensor
    alphas_cumprod_prev: torch.Tensor
    clip_range: float | None = None

    @property
    def num_steps(self) -> int:
        """T, the number of inference steps."""
        return len(self.timesteps)

    def sigmas(self, eta: float) -> torch.Tensor:
        """[T] float64 standard deviation of the added noise, sigma_i = eta * sqrt(v_i) (ALGORITHMS 1.1)."""
        alpha, alpha_prev = self.alphas_cumprod, self.alphas_cumprod_prev
        variance = (1 - alpha_prev) / (1 - alpha) * (1 - alpha / alpha_prev)
        return eta * variance.clamp(min=0).sqrt()


def ddim_grid(scheduler: DDIMScheduler, steps: int) -> DDIMGrid:
    """The T-step DDIM grid of ``scheduler`` (its ``set_timesteps``; see the module conventions)."""
    num_train = int(scheduler.config.num_train_timesteps)
    if as_int(steps) is None or not 1 <= as_int(steps) <= num_train:
        raise ConfigError(f"steps {steps!r}: must be an integer in [1, {num_train}] (num_train_timesteps)")
    steps = as_int(steps)
    scheduler.set_timesteps(steps)
    timesteps = scheduler.timesteps.to(device="cpu", dtype=torch.int64)
    all_alphas = scheduler.alphas_cumprod.to(device="cpu", dtype=torch.float64)
    previous = timesteps - num_train // steps
    final_alpha = torch.as_tensor(scheduler.final_alpha_cumprod, dtype=torch.float64)
    alphas_prev = torch.where(previous >= 0, all_alphas[previous.clamp(min=0)], final_alpha)
    clip_range = float(scheduler.config.clip_sample_range) if scheduler.config.clip_sample else None
    return DDIMGrid(
        timesteps=timesteps,
        alphas_cumprod=all_alphas[timesteps],
        alphas_cumprod_prev=alphas_prev,
        clip_range=clip_range,
    )


def ddim_step(
    grid: DDIMGrid,
    step_index: int,
    x_t: torch.Tensor,
    eps: torch.Tensor,
    eta: float = 0.0,
    z: torch.Tensor | None = None,
    eps_direction: torch.Tensor | None = None,
) -> torch.Tensor:
    """One DDIM step x_{t_i} -> x_{t_i'} (ALGORITHMS 1.1); all tensors [B, C, H, W], same dtype.

    x' = sqrt(ā') P(eps) + sqrt(1 - ā' - sigma^2) eps_direction + sigma z, with P(eps) the predicted x_0
    (clamped to the grid's ``clip_range`` when set).
    ``eps_direction`` defaults to ``eps`` (symmetric step); Asyrp passes the unedited prediction there.
    ``z`` is required when sigma > 0.
    """
    alpha = grid.alphas_cumprod[step_index].item()
    alpha_prev = grid.alphas_cumprod_prev[step_index].item()
    sigma = grid.sigmas(eta)[step_index].item()
    predicted_x0 = (x_t - math.sqrt(1 - alpha) * eps) / math.sqrt(alpha)
    if grid.clip_range is not None:
        predicted_x0 = predicted_x0.clamp(-grid.clip_range, grid.clip_range)
    direction = eps if eps_direction is None else eps_direction
    x_prev = math.sqrt(alpha_prev) * predicted_x0 + math.sqrt(max(1 - alpha_prev - sigma**2, 0.0)) * direction
    if sigma > 0:
        if z is None:
            raise ConfigError(f"ddim_step at step {step_index}: z is required when eta > 0")
        x_prev = x_prev + sigma * z
    return x_prev


def asyrp_equivalent_scales(grid: DDIMGrid, eta: float = 0.0) -> torch.Tensor:
    """[T] float64 factors c_i = b_i / a_i: Asyrp with delta ≈ symmetric with c_i * delta (ALGORITHMS 1.5).

    b_i = sqrt(ā'(1-ā)/ā) and a_i = b_i - sqrt(1 - ā' - sigma_i^2); c_i >= 1 (1 at a last step to ā' = 1).
    """
    alpha, alpha_prev = grid.alphas_cumprod, grid.alphas_cumprod_prev
    b = (alpha_prev * (1 - alpha) / alpha).sqrt()
    a = b - (1 - alpha_prev - grid.sigmas(eta) ** 2).clamp(min=0).sqrt()
    return b / a


def variance_noise_seed(seed: int) -> int:
    """Seed of the variance-noise generator of sample ``seed``: a 63-bit BLAKE2b hash of it.

    Hashing (rather than seed + constant) keeps z of one sample from ever equalling x_T of another.
    """
    digest = hashlib.blake2b(f"ddim-variance-noise/{seed}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def initial_noise(
    sample_shape: tuple[int, int, int], seeds: Sequence[int] | torch.Tensor, steps: int, eta: float
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """x_T [B, C, H, W] and, when eta > 0, variance noise z [B, T, C, H, W] (float32, CPU) for ``seeds``.

    Sample b uses ``Generator("cpu").manual_seed(seeds[b])`` for x_T and ``variance_noise_seed(seeds[b])``
    for z, so its noise does not depend on the other seeds in the batch.
    """
    seed_list = _check_seeds(seeds)
    _check_eta(eta)
    x_T = torch.stack([torch.randn(sample_shape, generator=_generator(seed)) for seed in seed_list])
    if eta == 0:
        return x_T, None
    z = torch.stack(
        [torch.randn((steps, *sample_shape), generator=_generator(variance_noise_seed(seed))) for seed in seed_list]
    )
    return x_T, z


def sample(
    model: DiffusionModel,
    seeds: Sequence[int] | torch.Tensor,
    *,
    steps: int = DEFAULT_STEPS,
    eta: float = 0.0,
    hspace_location: str = DEFAULT_LOCATION,
    capture_steps: CaptureSteps = "all",
    h_dtype: torch.dtype = torch.float32,
    delta_h: torch.Tensor | None = None,
    edit_steps: Sequence[int] | None = None,
    asyrp: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
    keep_noise: bool = True,
    progress: bool = False,
) -> SampleBatch:
    """Generate one sample per seed by DDIM, recording h and optionally editing it.

    Equivalent to :func:`initial_noise` followed by :func:`decode`, done ``batch_size`` seeds at a time
    so that the noise of a large run is never all in memory. ``keep_noise=False`` drops x_T and z from the
    result (they can be redrawn from the seeds). See :func:`decode` for the other arguments.
    """
    seed_list = _check_seeds(seeds)
    grid = ddim_grid(model.scheduler, steps)
    settings = _settings(
        model,
        grid,
        len(seed_list),
        eta=eta,
        location=hspace_location,
        capture_steps=capture_steps,
        h_dtype=h_dtype,
        delta_h=delta_h,
        edit_steps=edit_steps,
        asyrp=asyrp,
        start_step=0,
        batch_size=batch_size,
    )
    results = []
    with _progress_bar(progress, len(seed_list), batch_size, grid.num_steps, "sampling") as bar:
        for begin in range(0, len(seed_list), batch_size):
            chunk = slice(begin, begin + batch_size)
            x_T, z = initial_noise(model.sample_shape, seed_list[chunk], steps, eta)
            x_0, h = _run_steps(model, grid, settings, x_T, z, chunk, None, bar)
            results.append((x_0, h, x_T if keep_noise else None, z if keep_noise else None))
    return _assemble(results, grid, settings, torch.tensor(seed_list, dtype=torch.int64))


def decode(
    model: DiffusionModel,
    x_T: torch.Tensor,
    noise: torch.Tensor | None = None,
    *,
    steps: int = DEFAULT_STEPS,
    eta: float = 0.0,
    hspace_location: str = DEFAULT_LOCATION,
    capture_steps: CaptureSteps = "all",
    h_dtype: torch.dtype = torch.float32,
    delta_h: torch.Tensor | None = None,
    edit_steps: Sequence[int] | None = None,
    asyrp: bool = False,
    start_step: int = 0,
    x_t_override: tuple[int, torch.Tensor] | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = False,
) -> SampleBatch:
    """Run the DDIM steps from given noise, optionally editing h; re-decodes stored samples exactly.

    Args:
        x_T: [B, C, H, W] x at step ``start_step`` (x_T for a full decode).
        noise: [B, T, C, H, W] stored variance noise z (required when eta > 0, ignored when eta = 0); the
            same z is reused in edited and unedited decodes.
        steps: T, the number of DDIM steps of the grid.
        eta: stochasticity in [0, 1]; sigma_i = eta * sqrt(v_i).
        hspace_location: where h is captured and edited (see :mod:`pipeline.diffusion.hspace`).
        capture_steps: "all", None (capture nothing) or step indices whose clean h is recorded.
        h_dtype: storage dtype of the recorded h (e.g. torch.float16 to halve memory).
        delta_h: [T, *h_shape] or [B, T, *h_shape] shift added to h at each edited step.
        edit_steps: step indices that receive delta_h (default: all steps).
        asyrp: False for symmetric injection (the edited eps is used in both terms of the step); True for
            Asyrp (a second, unedited pass gives the direction term; twice the UNet passes on edited steps).
        start_step: first step index to run; ``x_T`` is then x at that step.
        x_t_override: (k, x) replaces x_t by x [B, C, H, W] just before step k (e.g. a pullback edit).
        batch_size: samples per UNet batch.
        progress: show a tqdm bar over steps.
    """
    grid = ddim_grid(model.scheduler, steps)
    x_T = _check_images("x_T", x_T, model.sample_shape)
    batch = len(x_T)
    settings = _settings(
        model,
        grid,
        batch,
        eta=eta,
        location=hspace_location,
        capture_steps=capture_steps,
        h_dtype=h_dtype,
        delta_h=delta_h,
        edit_steps=edit_steps,
        asyrp=asyrp,
        start_step=start_step,
        batch_size=batch_size,
    )
    noise = _check_noise(noise, eta, batch, grid.num_steps, model.sample_shape)
    override = _check_override(x_t_override, x_T.shape, start_step, grid.num_steps)
    return _decode_checked(model, grid, settings, x_T, noise, override, batch_size, progress, keep_inputs=True)


def decode_scales(
    model: DiffusionModel,
    x_T: torch.Tensor,
    noise: torch.Tensor | None,
    direction: torch.Tensor,
    scales: Sequence[float] | torch.Tensor,
    *,
    steps: int = DEFAULT_STEPS,
    eta: float = 0.0,
    hspace_location: str = DEFAULT_LOCATION,
    edit_steps: Sequence[int] | None = None,
    asyrp: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = False,
) -> torch.Tensor:
    """Decode one sample under S edit strengths: x_0 [S, C, H, W] with delta_h = scales[s] * direction.

    ``x_T`` is [C, H, W] or [1, C, H, W]; ``noise`` [T, C, H, W] or [1, T, C, H, W] (None when eta = 0);
    ``direction`` [T, *h_shape]; ``scales`` [S]. The sample is repeated S times in one batch (chunked by
    ``batch_size``), and nothing is captured.
    """
    if x_T.dim() not in (3, 4) or (x_T.dim() == 4 and len(x_T) != 1):
        raise ConfigError(f"x_T shape {tuple(x_T.shape)}: decode_scales takes one sample, [C, H, W] or [1, C, H, W]")
    if noise is not None and (noise.dim() not in (4, 5) or (noise.dim() == 5 and len(noise) != 1)):
        raise ConfigError(f"noise shape {tuple(noise.shape)}: decode_scales takes one sample's [T, C, H, W]")
    scale_tensor = torch.as_tensor(scales, dtype=torch.float32).reshape(-1)
    repeats = len(scale_tensor)
    x_batch = x_T.reshape(1, *x_T.shape[-3:]).expand(repeats, -1, -1, -1)
    noise_batch = None if noise is None else noise.reshape(1, *noise.shape[-4:]).expand(repeats, -1, -1, -1, -1)
    deltas = scale_tensor.reshape(-1, *([1] * direction.dim())) * direction.unsqueeze(0)
    grid = ddim_grid(model.scheduler, steps)
    x_batch = _check_images("x_T", x_batch, model.sample_shape)
    settings = _settings(
        model,
        grid,
        repeats,
        eta=eta,
        location=hspace_location,
        capture_steps=None,
        h_dtype=torch.float32,
        delta_h=deltas,
        edit_steps=edit_steps,
        asyrp=asyrp,
        start_step=0,
        batch_size=batch_size,
    )
    noise_batch = _check_noise(noise_batch, eta, repeats, grid.num_steps, model.sample_shape)
    result = _decode_checked(model, grid, settings, x_batch, noise_batch, None, batch_size, progress, keep_inputs=False)
    return result.x_0


def invert_ddim(
    model: DiffusionModel,
    x0: torch.Tensor,
    steps: int = DEFAULT_STEPS,
    *,
    hspace_location: str = DEFAULT_LOCATION,
    capture_steps: CaptureSteps = None,
    h_dtype: torch.dtype = torch.float32,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = False,
) -> SampleBatch:
    """Deterministic DDIM inversion of images x0 [B, C, H, W] (model space, [-1, 1]) to x_T.

    Walks the decode grid backwards, from the clean level to exactly the noisiest grid timestep
    ``timesteps[0]`` (T steps, no off-by-one). Step i is the algebraic inverse of decode step i with
    eps evaluated at (x_{i+1}, t_i) instead of the unknown (x_i, t_i), so ``decode(x_T, eta=0)``
    reconstructs x0 approximately, better with more steps. h at step i (if captured) comes from that
    same UNet pass. The result's ``x_0`` is the input ``x0``; ``noise`` is None and ``eta`` 0.
    """
    grid = ddim_grid(model.scheduler, steps)
    x0 = _check_images("x0", x0, model.sample_shape)
    settings = _settings(
        model,
        grid,
        len(x0),
        eta=0.0,
        location=hspace_location,
        capture_steps=capture_steps,
        h_dtype=h_dtype,
        delta_h=None,
        edit_steps=None,
        asyrp=False,
        start_step=0,
        batch_size=batch_size,
    )
    compute_dtype = _compute_dtype(model)
    results = []
    with (
        _progress_bar(progress, len(x0), batch_size, grid.num_steps, "DDIM inversion") as bar,
        HSpaceHook.for_model(model, hspace_location, capture=False) as hook,
    ):
        for begin in range(0, len(x0), batch_size):
            x = x0[begin : begin + batch_size].to(device=model.device, dtype=compute_dtype)
            recorder = _HRecorder(settings, len(x))
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
    return _assemble(results, grid, settings, seeds=None)


def invert_edit_friendly(
    model: DiffusionModel,
    x0: torch.Tensor,
    steps: int = DEFAULT_STEPS,
    eta: float = 1.0,
    seed: int = 0,
    *,
    hspace_location: str = DEFAULT_LOCATION,
    capture_steps: CaptureSteps = None,
    h_dtype: torch.dtype = torch.float32,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = False,
) -> SampleBatch:
    """Edit-friendly DDPM inversion of images x0 [B, C, H, W] (model space) into (x_T, z) (ALGORITHMS 1.6b).

    Draws independent x_{t_i} = sqrt(ā_i) x0 + sqrt(1-ā_i) n_i for every grid step (n [B, T, C, H, W]
    from one CPU generator seeded with ``seed``), sets the level after the last step to x0, and solves
    z_i = (x_{t_{i+1}} - mu_i) / sigma_i with sigma_i = eta sqrt(v_i) exactly as :func:`decode` uses it
    (z_i = 0 where sigma_i = 0). ``decode(x_T, noise, eta=eta)`` then reproduces x0 up to float error and the
    sigma = 0 last step. h at step i comes from the UNet pass at (x_{t_i}, t_i), the one decode repeats.
    The result's ``x_0`` is the input ``x0``.
    """
    _check_eta(eta)
    if eta == 0:
        raise ConfigError("eta 0: edit-friendly inversion needs eta in (0, 1]; use invert_ddim for eta = 0")
    grid = ddim_grid(model.scheduler, steps)
    x0 = _check_images("x0", x0, model.sample_shape)
    settings = _settings(
        model,
        grid,
        len(x0),
        eta=eta,
        location=hspace_location,
        capture_steps=capture_steps,
        h_dtype=h_dtype,
        delta_h=None,
        edit_steps=None,
        asyrp=False,
        start_step=0,
        batch_size=batch_size,
    )
    compute_dtype = _compute_dtype(model)
    alphas = grid.alphas_cumprod.to(compute_dtype).reshape(1, -1, 1, 1, 1)
    sigmas = grid.sigmas(eta)
    all_noise = torch.randn((len(x0), grid.num_steps, *model.sample_shape), generator=_generator(seed))
    results = []
    with (
        _progress_bar(progress, len(x0), batch_size, grid.num_steps, "edit-friendly inversion") as bar,
        HSpaceHook.for_model(model, hspace_location, capture=False) as hook,
    ):
        for begin in range(0, len(x0), batch_size):
            clean = x0[begin : begin + batch_size].to(dtype=compute_dtype)
            noisy = alphas.sqrt() * clean.unsqueeze(1) + (1 - alphas).sqrt() * all_noise[begin : begin + batch_size]
            levels = torch.cat([noisy, clean.unsqueeze(1)], dim=1).to(model.device)
            z = torch.zeros_like(levels[:, :-1])
            recorder = _HRecorder(settings, len(clean))
            for step_index in range(grid.num_steps):
                hook.capture = recorder.wants(step_index)
                eps = _predict_eps(model, levels[:, step_index], grid, step_index)
                recorder.record(step_index, hook)
                mean = ddim_step(grid, step_index, levels[:, step_index], eps, eta, torch.zeros_like(eps))
                if sigmas[step_index] > 0:
                    z[:, step_index] = (levels[:, step_index + 1] - mean) / sigmas[step_index].item()
                bar.update(1)
            results.append((clean.cpu(), recorder.h, levels[:, 0].cpu(), z.cpu()))
    return _assemble(results, grid, settings, seeds=None)


def denoise_steps(
    model: DiffusionModel,
    x: torch.Tensor,
    *,
    steps: int,
    start_step: int = 0,
    stop_step: int | None = None,
    eta: float | Sequence[float] = 0.0,
    noise: torch.Tensor | None = None,
    record_steps: Sequence[int] = (),
) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """Plain DDIM steps ``start_step`` .. ``stop_step - 1`` of the T-step grid from x [B, C, H, W] (no h edit).

    ``eta`` is one value or one per grid step (for example 0 before a step and 1 after it, as the
    pullback edit's quality boost); ``noise`` [B, T, C, H, W] is the variance noise (required where eta > 0).
    Returns (x after the last step, {i: x_{t_i} just before step i for i in ``record_steps``}), on the CPU.
    """
    grid = ddim_grid(model.scheduler, steps)
    x = _check_images("x", x, model.sample_shape)
    stop = grid.num_steps if stop_step is None else stop_step
    if as_int(start_step) is None or as_int(stop) is None or not 0 <= start_step <= stop <= grid.num_steps:
        raise ConfigError(
            f"start_step {start_step!r} / stop_step {stop_step!r}: need 0 <= start <= stop <= {grid.num_steps}"
        )
    etas = [eta] * grid.num_steps if isinstance(eta, numbers.Real) else list(eta)
    if len(etas) != grid.num_steps:
        raise ConfigError(f"eta: expected one value or {grid.num_steps} (one per step), got {len(etas)}")
    for value in etas:
        _check_eta(value)
    if any(etas[i] > 0 for i in range(start_step, stop)):
        noise = _check_noise(noise, 1.0, len(x), grid.num_steps, model.sample_shape)
    recorded: dict[int, torch.Tensor] = {}
    wanted = set(_check_indices("record_steps", record_steps, start_step, stop))
    compute_dtype = _compute_dtype(model)
    x = x.to(device=model.device, dtype=compute_dtype)
    for step_index in range(start_step, stop):
        if step_index in wanted:
            recorded[step_index] = x.cpu()
        eps = _predict_eps(model, x, grid, step_index)
        z = None if noise is None or etas[step_index] == 0 else noise[:, step_index].to(x.device, compute_dtype)
        x = ddim_step(grid, step_index, x, eps, etas[step_index], z)
    return x.cpu(), recorded


def to_image_range(x: torch.Tensor) -> torch.Tensor:
    """Map model-space x in [-1, 1] (any shape) to image intensities in [0, 1], clamping outliers."""
    return ((x + 1) / 2).clamp(0, 1)


def _decode_checked(
    model: DiffusionModel,
    grid: DDIMGrid,
    settings: _Settings,
    x_start: torch.Tensor,
    noise: torch.Tensor | None,
    override: tuple[int, torch.Tensor] | None,
    batch_size: int,
    progress: bool,
    keep_inputs: bool,
) -> SampleBatch:
    """Decode validated inputs chunk by chunk; ``keep_inputs=False`` leaves x_T and noise out of it."""
    batch = len(x_start)
    results = []
    with _progress_bar(progress, batch, batch_size, grid.num_steps - settings.start_step, "decoding") as bar:
        for begin in range(0, batch, batch_size):
            chunk = slice(begin, begin + batch_size)
            chunk_override = None if override is None else (override[0], override[1][chunk])
            z = None if noise is None else noise[chunk]
            x_0, h = _run_steps(model, grid, settings, x_start[chunk], z, chunk, chunk_override, bar)
            results.append((x_0, h, x_start[chunk] if keep_inputs else None, z if keep_inputs else None))
    return _assemble(results, grid, settings, seeds=None)


@dataclass(frozen=True)
class _Settings:
    """Validated sampler settings shared by all chunks of one call."""

    eta: float
    location: str
    capture: tuple[int, ...]
    h_dtype: torch.dtype
    delta_h: torch.Tensor | None
    delta_per_sample: bool
    edit: frozenset[int]
    asyrp: bool
    start_step: int


def _settings(
    model: DiffusionModel,
    grid: DDIMGrid,
    batch: int,
    *,
    eta: float,
    location: str,
    capture_steps: CaptureSteps,
    h_dtype: torch.dtype,
    delta_h: torch.Tensor | None,
    edit_steps: Sequence[int] | None,
    asyrp: bool,
    start_step: int,
    batch_size: int,
) -> _Settings:
    """Validate arguments shared by sampling, decoding and inversion (ConfigError on the first bad one)."""
    num_steps = grid.num_steps
    _check_eta(eta)
    check_location(model.unet, location)
    if as_int(batch_size) is None or batch_size < 1:
        raise ConfigError(f"batch_size {batch_size!r}: must be a positive integer")
    if as_int(start_step) is None or not 0 <= start_step < num_steps:
        raise ConfigError(f"start_step {start_step!r}: outside [0, {num_steps}) for steps={num_steps}")
    if capture_steps is None:
        capture: tuple[int, ...] = ()
    elif isinstance(capture_steps, str):
        if capture_steps != "all":
            raise ConfigError(f"capture_steps '{capture_steps}': expected 'all', None or a list of step indices")
        capture = tuple(range(start_step, num_steps))
    else:
        capture = tuple(sorted(set(_check_indices("capture_steps", capture_steps, start_step, num_steps))))
    edit = frozenset(range(num_steps) if edit_steps is None else _check_indices("edit_steps", edit_steps, 0, num_steps))
    per_sample = False
    if delta_h is not None:
        h_shape = hspace_shape(model.unet, location, model.sample_shape)
        shared, individual = (num_steps, *h_shape), (batch, num_steps, *h_shape)
        if tuple(delta_h.shape) not in (shared, individual):
            raise ConfigError(
                f"delta_h shape {tuple(delta_h.shape)}: expected {shared} or {individual} "
                f"(T={num_steps} steps, h at '{location}')"
            )
        per_sample = delta_h.dim() == len(individual)
    return _Settings(eta, location, capture, h_dtype, delta_h, per_sample, edit, asyrp, start_step)


class _HRecorder:
    """Collects the captured h of one chunk into a [b, K, *h_shape] CPU tensor."""

    def __init__(self, settings: _Settings, batch: int) -> None:
        self.slots = {step: slot for slot, step in enumerate(settings.capture)}
        self.dtype = settings.h_dtype
        self.batch = batch
        self.h: torch.Tensor | None = None

    def wants(self, step_index: int) -> bool:
        """Whether h of this step index is to be recorded."""
        return step_index in self.slots

    def record(self, step_index: int, hook: HSpaceHook) -> None:
        """Copy the hook's h into its slot if this step is captured."""
        if step_index not in self.slots or hook.h is None:
            return
        if self.h is None:
            self.h = torch.empty((self.batch, len(self.slots), *hook.h.shape[1:]), dtype=self.dtype)
        self.h[:, self.slots[step_index]] = hook.h.to(device="cpu", dtype=self.dtype)


def _run_steps(
    model: DiffusionModel,
    grid: DDIMGrid,
    settings: _Settings,
    x_start: torch.Tensor,
    z: torch.Tensor | None,
    chunk: slice,
    override: tuple[int, torch.Tensor] | None,
    bar: tqdm,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Decode one chunk from step ``settings.start_step``; returns x_0 [b, C, H, W] and h (both CPU)."""
    compute_dtype = _compute_dtype(model)
    x = x_start.to(device=model.device, dtype=compute_dtype)
    z = None if z is None else z.to(device=model.device, dtype=compute_dtype)
    delta = settings.delta_h
    if delta is not None:
        delta = (delta[chunk] if settings.delta_per_sample else delta).to(model.device)
    recorder = _HRecorder(settings, len(x))
    with HSpaceHook.for_model(model, settings.location, capture=False) as hook:
        for step_index in range(settings.start_step, grid.num_steps):
            if override is not None and step_index == override[0]:
                x = override[1].to(device=model.device, dtype=compute_dtype)
            edited = delta is not None and step_index in settings.edit
            hook.delta = None
            if edited:
                hook.delta = delta[:, step_index] if settings.delta_per_sample else delta[step_index]
            hook.capture = recorder.wants(step_index)
            eps = _predict_eps(model, x, grid, step_index)
            recorder.record(step_index, hook)
            eps_direction = eps
            if edited and settings.asyrp:
                hook.delta, hook.capture = None, False
                eps_direction = _predict_eps(model, x, grid, step_index)
            step_z = None if z is None else z[:, step_index]
            x = ddim_step(grid, step_index, x, eps, settings.eta, step_z, eps_direction)
            bar.update(1)
    return x.cpu(), recorder.h


def _predict_eps(model: DiffusionModel, x: torch.Tensor, grid: DDIMGrid, step_index: int) -> torch.Tensor:
    """UNet epsilon prediction at grid step ``step_index`` in x's dtype; NumericalError on NaN/inf."""
    timestep = int(grid.timesteps[step_index])
    with torch.no_grad():
        eps = model.eps(x, timestep)
    if not torch.isfinite(eps).all():
        raise NumericalError(
            f"UNet output at timestep {timestep} (step {step_index} of {grid.num_steps}) contains NaN or inf"
        )
    return eps


def _assemble(
    results: list[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]],
    grid: DDIMGrid,
    settings: _Settings,
    seeds: torch.Tensor | None,
) -> SampleBatch:
    """Concatenate per-chunk (x_0, h, x_T, z) into one SampleBatch."""
    x_0, hs, x_Ts, zs = zip(*results, strict=True)
    captured = bool(settings.capture) and hs[0] is not None
    return SampleBatch(
        x_0=torch.cat(x_0),
        x_T=None if x_Ts[0] is None else torch.cat(x_Ts).cpu(),
        noise=None if zs[0] is None or settings.eta == 0 else torch.cat(zs).cpu(),
        timesteps=grid.timesteps.clone(),
        eta=float(settings.eta),
        seeds=seeds,
        h=torch.cat(hs) if captured else None,
        h_steps=torch.tensor(settings.capture, dtype=torch.int64) if captured else None,
        hspace_location=settings.location,
    )


def _compute_dtype(model: DiffusionModel) -> torch.dtype:
    """float32 for half-precision and float32 UNets, float64 for a float64 UNet."""
    return torch.promote_types(torch.float32, model.unet.dtype)


def _generator(seed: int) -> torch.Generator:
    """A fresh CPU generator (CUDA generators give other numbers for the same seed, NOTES 1.7)."""
    return torch.Generator("cpu").manual_seed(seed)


def _progress_bar(enabled: bool, batch: int, batch_size: int, steps_per_chunk: int, description: str) -> tqdm:
    """tqdm over all UNet steps of a call (chunks x steps); a silent counter when disabled."""
    chunks = math.ceil(batch / batch_size)
    return tqdm(total=chunks * steps_per_chunk, desc=description, unit="step", disable=not enabled)



def _check_eta(eta: float) -> None:
    if isinstance(eta, bool) or not isinstance(eta, numbers.Real) or not 0.0 <= eta <= 1.0:
        raise ConfigError(f"eta {eta!r}: outside [0, 1]")


def _check_seeds(seeds: Sequence[int] | torch.Tensor) -> list[int]:
    raw = seeds.reshape(-1).tolist() if isinstance(seeds, torch.Tensor) else list(seeds)
    if not raw:
        raise ConfigError("seeds: empty; expected at least one integer seed")
    for seed in raw:
        if as_int(seed) is None or not 0 <= seed < _MAX_SEED:
            raise ConfigError(f"seed {seed!r}: must be an integer in [0, 2**63)")
    return [as_int(seed) for seed in raw]


def _check_indices(name: str, indices: Sequence[int], low: int, high: int) -> list[int]:
    index_list = list(indices)
    for index in index_list:
        if as_int(index) is None or not low <= index < high:
            raise ConfigError(f"{name} index {index!r}: outside [{low}, {high}) for steps={high}")
    return [as_int(index) for index in index_list]


def _check_images(name: str, x: torch.Tensor, sample_shape: tuple[int, int, int]) -> torch.Tensor:
    if x.dim() != 4 or tuple(x.shape[1:]) != sample_shape:
        raise ConfigError(f"{name} shape {tuple(x.shape)}: expected (B, {', '.join(map(str, sample_shape))})")
    return x


def _check_noise(
    noise: torch.Tensor | None, eta: float, batch: int, num_steps: int, sample_shape: tuple[int, int, int]
) -> torch.Tensor | None:
    if eta == 0:
        return None
    expected = (batch, num_steps, *sample_shape)
    if noise is None:
        raise ConfigError(f"noise: required when eta > 0 (variance noise z of shape {expected})")
    if tuple(noise.shape) != expected:
        raise ConfigError(f"noise shape {tuple(noise.shape)}: expected {expected}")
    return noise


def _check_override(
    override: tuple[int, torch.Tensor] | None, x_shape: torch.Size, start_step: int, num_steps: int
) -> tuple[int, torch.Tensor] | None:
    if override is None:
        return None
    step_index, x = override
    _check_indices("x_t_override step", [step_index], start_step, num_steps)
    if x.shape != x_shape:
        raise ConfigError(f"x_t_override tensor shape {tuple(x.shape)}: expected {tuple(x_shape)}")
    return step_index, x
