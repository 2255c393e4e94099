"""The DDIM grid and step, the seeded noise of a sample, and the settings a decode runs under.

Conventions shared by :mod:`pipeline.diffusion.sampling` and :mod:`pipeline.diffusion.inversion` (see
``docs/methods.md``, "DDIM sampling", and Song et al. 2021, *Denoising Diffusion Implicit Models*):

* Step index i runs over 0..T-1 with **index 0 the noisiest step** (timestep ``timesteps[0]``); a step
  goes from timestep t_i to t_i - num_train_timesteps // T, or to ``final_alpha_cumprod`` after the last
  grid point (the rule of diffusers' ``DDIMScheduler.step``; for "leading" spacing it lands exactly on the
  next grid point).
* x_t lives in model space (pixels in [-1, 1] for a pixel DDPM, scaled latents for a latent model) and its
  arithmetic runs in float32 (float64 for a float64 UNet) whatever dtype the UNet runs in.
* Noise is drawn on the CPU from ``torch.Generator("cpu")`` and then moved to the device, so a sample is a
  pure function of (model, sampler settings, seed), independent of device, batch size and position in the
  batch. x_T uses the seed itself; the per-step variance noise z uses :func:`variance_noise_seed` of it.
"""

from __future__ import annotations

import hashlib
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from diffusers import DDIMScheduler

from pipeline.diffusion.models import DEFAULT_LOCATION
from pipeline.io.errors import ConfigError
from pipeline.io.validation import as_int, require

DEFAULT_STEPS = 20
"""T of the DDIM grid when none is given: the study's ``sampler.steps`` (:class:`SamplerConfig` and
:class:`DecodeSettings` share it, so a library call walks the grid the DAG's directions were made on)."""
DEFAULT_BATCH_SIZE = 16
"""Samples per UNet batch of :class:`DecodeSettings` when none is given."""
INJECTIONS = ("symmetric", "asyrp")
"""How an h edit enters a DDIM step (see :class:`DecodeSettings`)."""
DEFAULT_INJECTION = "asyrp"
"""The study's ``sampler.injection``, also the library's default (the directions' scales are calibrated in it)."""
_MAX_SEED = 2**63


@dataclass(frozen=True)
class DecodeSettings:
    """How sampling, decoding and inversion walk the DDIM grid: what stays the same across the calls of a study.

    The per-call data (x_T, noise, delta_h, the steps to capture or edit) are arguments of the functions that
    take these settings (:func:`pipeline.diffusion.sampling.decode` and its relatives). A params section
    gives them through :meth:`SamplerConfig.decode_settings`.

    Attributes:
        steps: T, the number of DDIM steps of the grid; checked against the scheduler's
            ``num_train_timesteps`` when used (:func:`ddim_grid`).
        eta: stochasticity in [0, 1]: the added noise has standard deviation sigma_i = eta * sqrt(v_i)
            (0: deterministic DDIM; 1: DDPM-like).
        location: the h site where h is captured and delta_h is added (see :mod:`pipeline.diffusion.hspace`);
            checked against the UNet when used.
        injection: how an h edit enters each edited step (``docs/methods.md``, "Injecting an h edit"):
            "symmetric", the edited eps in both terms of the step; or "asyrp" (Kwon et al. 2023), the
            unedited eps of a second UNet pass in the direction term, so edited steps cost two passes.
        batch_size: samples per UNet batch; bounds memory. The noise of a sample does not depend on it.
        h_dtype: storage dtype of recorded h (e.g. torch.float16 to halve its memory).
        progress: show a tqdm bar over the UNet steps of a call.

    Construction raises a one-line ConfigError naming the first bad argument.
    """

    steps: int = DEFAULT_STEPS
    eta: float = 0.0
    location: str = DEFAULT_LOCATION
    injection: str = DEFAULT_INJECTION
    batch_size: int = DEFAULT_BATCH_SIZE
    h_dtype: torch.dtype = torch.float32
    progress: bool = False

    def __post_init__(self) -> None:
        check_eta(self.eta)
        if as_int(self.batch_size) is None or self.batch_size < 1:
            raise ConfigError(f"batch_size {self.batch_size!r}: must be a positive integer")
        if self.injection not in INJECTIONS:
            raise ConfigError(f"injection {self.injection!r}: expected 'symmetric' or 'asyrp'")
        if not isinstance(self.h_dtype, torch.dtype):
            raise ConfigError(f"h_dtype {self.h_dtype!r}: expected a torch dtype such as torch.float16")

    @property
    def asyrp(self) -> bool:
        """True when edited steps use the unedited eps in the direction term (``injection`` "asyrp")."""
        return self.injection == "asyrp"


@dataclass
class SamplerConfig:
    """The ``sampler`` params section: the DDIM grid used to generate and to decode edits.

    ``injection`` is how an h edit enters each DDIM step (``docs/methods.md``, "Injecting an h edit"):
    "symmetric" (the edited eps in both terms of the step, paper A) or "asyrp" (Kwon et al. 2023: the
    unedited eps in the direction term, one more UNet pass per edited step; to first order the symmetric edit
    scaled by c_t = b_t / a_t per step, see :func:`asyrp_equivalent_scales`).
    """

    steps: int = DEFAULT_STEPS
    eta: float = 0.0
    batch_size: int = 64
    injection: str = DEFAULT_INJECTION

    def __post_init__(self) -> None:
        require(self.steps >= 1, "sampler.steps", self.steps, "must be >= 1")
        require(0.0 <= self.eta <= 1.0, "sampler.eta", self.eta, "must be in [0, 1]")
        require(self.batch_size >= 1, "sampler.batch_size", self.batch_size, "must be >= 1")
        injection = self.injection
        require(injection in INJECTIONS, "sampler.injection", injection, "must be symmetric or asyrp")

    def decode_settings(
        self, location: str, *, h_dtype: torch.dtype = torch.float32, progress: bool = False
    ) -> DecodeSettings:
        """This section's grid, stochasticity, injection and batch size at h site ``location`` (the model's
        ``hspace_location``, or that of the directions being decoded)."""
        return DecodeSettings(
            steps=self.steps,
            eta=self.eta,
            location=location,
            injection=self.injection,
            batch_size=self.batch_size,
            h_dtype=h_dtype,
            progress=progress,
        )


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
        """[T] float64 standard deviation of the added noise, sigma_i = eta * sqrt(v_i), with
        v_i = (1 - ā') / (1 - ā) * (1 - ā / ā') the DDPM posterior variance (Song et al. 2021, eq. 16)."""
        alpha, alpha_prev = self.alphas_cumprod, self.alphas_cumprod_prev
        variance = (1 - alpha_prev) / (1 - alpha) * (1 - alpha / alpha_prev)
        return eta * variance.clamp(min=0).sqrt()


def ddim_grid(scheduler: DDIMScheduler, steps: int) -> DDIMGrid:
    """The T-step DDIM grid of ``scheduler`` (its ``set_timesteps``; see the module conventions).

    ConfigError unless ``steps`` is an integer in [1, num_train_timesteps].
    """
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
    """One DDIM step x_{t_i} -> x_{t_i'} (``docs/methods.md``, "DDIM sampling"); all tensors [B, C, H, W],
    same dtype.

    x' = sqrt(ā') P(eps) + sqrt(1 - ā' - sigma^2) eps_direction + sigma z, with P(eps) the predicted x_0
    (clamped to the grid's ``clip_range`` when set) and sigma = eta * sqrt(v_i) (:meth:`DDIMGrid.sigmas`).
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
    """[T] float64 factors c_i = b_i / a_i: Asyrp with delta ≈ symmetric with c_i * delta, to first order in
    delta (``docs/methods.md``, "Injecting an h edit").

    A symmetric edit moves x' by -a_i d_eps, an Asyrp edit by -b_i d_eps, with b_i = sqrt(ā'(1-ā)/ā) the weight
    of eps in P(eps) and a_i = b_i - sqrt(1 - ā' - sigma_i^2); c_i >= 1 (1 at a last step to ā' = 1).
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
    for z, so its noise does not depend on the other seeds in the batch. ``steps`` is T.
    """
    seed_list = check_seeds(seeds)
    check_eta(eta)
    x_T = torch.stack([torch.randn(sample_shape, generator=cpu_generator(seed)) for seed in seed_list])
    if eta == 0:
        return x_T, None
    z = torch.stack(
        [torch.randn((steps, *sample_shape), generator=cpu_generator(variance_noise_seed(seed))) for seed in seed_list]
    )
    return x_T, z


def to_image_range(x: torch.Tensor) -> torch.Tensor:
    """Map model-space x in [-1, 1] (any shape) to image intensities in [0, 1], clamping outliers."""
    return ((x + 1) / 2).clamp(0, 1)


def cpu_generator(seed: int) -> torch.Generator:
    """A fresh CPU generator seeded with ``seed``: CUDA generators draw other numbers for the same seed, so
    noise is always drawn here and moved to the device afterwards."""
    return torch.Generator("cpu").manual_seed(seed)


def check_eta(eta: float) -> None:
    """ConfigError unless ``eta`` is a real number in [0, 1] (not a bool)."""
    if isinstance(eta, bool) or not isinstance(eta, numbers.Real) or not 0.0 <= eta <= 1.0:
        raise ConfigError(f"eta {eta!r}: outside [0, 1]")


def check_seeds(seeds: Sequence[int] | torch.Tensor) -> list[int]:
    """``seeds`` (any sequence or tensor of integers) as a list of ints; ConfigError unless each is in
    [0, 2**63) and there is at least one."""
    raw = seeds.reshape(-1).tolist() if isinstance(seeds, torch.Tensor) else list(seeds)
    if not raw:
        raise ConfigError("seeds: empty; expected at least one integer seed")
    for seed in raw:
        if as_int(seed) is None or not 0 <= seed < _MAX_SEED:
            raise ConfigError(f"seed {seed!r}: must be an integer in [0, 2**63)")
    return [as_int(seed) for seed in raw]
