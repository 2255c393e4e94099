"""DDIM sampling and decoding with h-space capture and editing (``docs/methods.md``, "DDIM sampling" and
"Injecting an h edit").

The grid, the step and the seeded noise are in :mod:`pipeline.diffusion.ddim` (whose conventions hold here:
step 0 is the noisiest, x_t arithmetic in float32, noise drawn on the CPU); the inversion of real images is in
:mod:`pipeline.diffusion.inversion`. Every function takes a :class:`~pipeline.diffusion.ddim.DecodeSettings`
(grid, eta, h site, injection, batch size) and the per-call tensors as arguments:

* h tensors have layout [B, K, *h_shape] where K indexes the captured step indices listed in ``h_steps``.
* ``delta_h`` has shape [T, *h_shape] (the same edit for every sample) or [B, T, *h_shape]; it is added
  only at the step indices of ``edit_steps`` (default: all steps).
* Every UNet call goes through :meth:`pipeline.diffusion.models.DiffusionModel.eps`: a text-conditioned model sees
  its generation prompt, classifier-free guided when configured (h is that of the unconditional branch and
  delta_h edits both, see :mod:`pipeline.diffusion.hspace`).

All returned tensors are on the CPU. The names of :mod:`pipeline.diffusion.ddim` that callers of this module
use with it (``DecodeSettings``, ``SamplerConfig``, ``ddim_grid``, ``initial_noise``, ...) are re-exported here.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Literal

import torch
from tqdm.auto import tqdm

from pipeline.diffusion.ddim import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_STEPS,
    DDIMGrid,
    DecodeSettings,
    SamplerConfig,
    asyrp_equivalent_scales,
    check_eta,
    check_seeds,
    ddim_grid,
    ddim_step,
    initial_noise,
    to_image_range,
    variance_noise_seed,
)
from pipeline.diffusion.hspace import HSpaceHook, SharedPrefix, check_location, hspace_shape
from pipeline.diffusion.models import DiffusionModel
from pipeline.io.errors import ConfigError, NumericalError
from pipeline.io.validation import as_int

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_STEPS",
    "CaptureSteps",
    "DDIMGrid",
    "DecodeSettings",
    "SampleBatch",
    "SamplerConfig",
    "asyrp_equivalent_scales",
    "ddim_grid",
    "ddim_step",
    "decode",
    "decode_scales",
    "denoise_steps",
    "initial_noise",
    "sample",
    "to_image_range",
    "variance_noise_seed",
]

CaptureSteps = Literal["all"] | Sequence[int] | None
"""Which step indices record their clean h: "all" (from the first step run), None (none) or a list."""


@dataclass
class SampleBatch:
    """Everything needed to reproduce and edit a batch of samples.

    Attributes:
        x_0: [B, C, H, W] final sample in model space (about [-1, 1]), unclipped; for an inversion, the
            input image. Use :func:`~pipeline.diffusion.ddim.to_image_range` for images in [0, 1].
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


def sample(
    model: DiffusionModel,
    seeds: Sequence[int] | torch.Tensor,
    settings: DecodeSettings | None = None,
    *,
    capture_steps: CaptureSteps = "all",
    delta_h: torch.Tensor | None = None,
    edit_steps: Sequence[int] | None = None,
    keep_noise: bool = True,
) -> SampleBatch:
    """Generate one sample per seed by DDIM, recording h and optionally editing it.

    Equivalent to :func:`~pipeline.diffusion.ddim.initial_noise` followed by :func:`decode`, done
    ``settings.batch_size`` seeds at a time so that the noise of a large run is never all in memory.
    ``settings`` defaults to ``DecodeSettings()``. ``keep_noise=False`` drops x_T and z from the result (they
    can be redrawn from the seeds). See :func:`decode` for the other arguments.
    """
    settings = DecodeSettings() if settings is None else settings
    seed_list = check_seeds(seeds)
    walk = _walk(model, settings, len(seed_list), capture_steps=capture_steps, delta_h=delta_h, edit_steps=edit_steps)
    batch_size = settings.batch_size
    results = []
    with _progress_bar(settings, len(seed_list), walk.grid.num_steps, "sampling") as bar:
        for begin in range(0, len(seed_list), batch_size):
            chunk = slice(begin, begin + batch_size)
            x_T, z = initial_noise(model.sample_shape, seed_list[chunk], settings.steps, settings.eta)
            x_0, h = _run_steps(model, walk, x_T, z, chunk, None, bar)
            results.append((x_0, h, x_T if keep_noise else None, z if keep_noise else None))
    return _assemble(results, walk, torch.tensor(seed_list, dtype=torch.int64))


def decode(
    model: DiffusionModel,
    x_T: torch.Tensor,
    noise: torch.Tensor | None = None,
    settings: DecodeSettings | None = None,
    *,
    capture_steps: CaptureSteps = "all",
    delta_h: torch.Tensor | None = None,
    edit_steps: Sequence[int] | None = None,
    start_step: int = 0,
    x_t_override: tuple[int, torch.Tensor] | None = None,
) -> SampleBatch:
    """Run the DDIM steps from given noise, optionally editing h; re-decodes stored samples exactly.

    Args:
        x_T: [B, C, H, W] x at step ``start_step`` (x_T for a full decode).
        noise: [B, T, C, H, W] stored variance noise z (required when ``settings.eta`` > 0, ignored when it
            is 0); the same z is reused in edited and unedited decodes.
        settings: grid, eta, h site, injection and batch size (default ``DecodeSettings()``).
        capture_steps: "all", None (capture nothing) or step indices whose clean h is recorded.
        delta_h: [T, *h_shape] or [B, T, *h_shape] shift added to h at each edited step, injected as
            ``settings.injection`` says.
        edit_steps: step indices that receive delta_h (default: all steps).
        start_step: first step index to run; ``x_T`` is then x at that step.
        x_t_override: (k, x) replaces x_t by x [B, C, H, W] just before step k (e.g. a pullback edit).
    """
    settings = DecodeSettings() if settings is None else settings
    x_T = _check_images("x_T", x_T, model.sample_shape)
    batch = len(x_T)
    walk = _walk(
        model, settings, batch, capture_steps=capture_steps, delta_h=delta_h, edit_steps=edit_steps,
        start_step=start_step,
    )  # fmt: skip
    noise = _check_noise(noise, settings.eta, batch, walk.grid.num_steps, model.sample_shape)
    override = _check_override(x_t_override, x_T.shape, start_step, walk.grid.num_steps)
    return _decode_checked(model, walk, x_T, noise, override, keep_inputs=True)


def decode_scales(
    model: DiffusionModel,
    x_T: torch.Tensor,
    noise: torch.Tensor | None,
    direction: torch.Tensor,
    scales: Sequence[float] | torch.Tensor,
    settings: DecodeSettings | None = None,
    *,
    edit_steps: Sequence[int] | None = None,
) -> torch.Tensor:
    """Decode one sample under S edit strengths: x_0 [S, C, H, W] with delta_h = scales[s] * direction.

    ``x_T`` is [C, H, W] or [1, C, H, W]; ``noise`` [T, C, H, W] or [1, T, C, H, W] (None when eta = 0);
    ``direction`` [T, *h_shape]; ``scales`` [S]. The sample is repeated S times in one batch (chunked by
    ``settings.batch_size``), and nothing is captured. ``settings`` and ``edit_steps`` as for :func:`decode`.
    """
    settings = DecodeSettings() if settings is None else settings
    if x_T.dim() not in (3, 4) or (x_T.dim() == 4 and len(x_T) != 1):
        raise ConfigError(f"x_T shape {tuple(x_T.shape)}: decode_scales takes one sample, [C, H, W] or [1, C, H, W]")
    if noise is not None and (noise.dim() not in (4, 5) or (noise.dim() == 5 and len(noise) != 1)):
        raise ConfigError(f"noise shape {tuple(noise.shape)}: decode_scales takes one sample's [T, C, H, W]")
    scale_tensor = torch.as_tensor(scales, dtype=torch.float32).reshape(-1)
    repeats = len(scale_tensor)
    x_batch = x_T.reshape(1, *x_T.shape[-3:]).expand(repeats, -1, -1, -1)
    noise_batch = None if noise is None else noise.reshape(1, *noise.shape[-4:]).expand(repeats, -1, -1, -1, -1)
    deltas = scale_tensor.reshape(-1, *([1] * direction.dim())) * direction.unsqueeze(0)
    x_batch = _check_images("x_T", x_batch, model.sample_shape)
    walk = _walk(model, settings, repeats, capture_steps=None, delta_h=deltas, edit_steps=edit_steps)
    noise_batch = _check_noise(noise_batch, settings.eta, repeats, walk.grid.num_steps, model.sample_shape)
    return _decode_checked(model, walk, x_batch, noise_batch, None, keep_inputs=False).x_0


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
    pullback edit's quality boost), which is why this walk takes no :class:`DecodeSettings`; ``noise``
    [B, T, C, H, W] is the variance noise (required where eta > 0). The whole batch runs in one UNet call per
    step. Returns (x after the last step, {i: x_{t_i} just before step i for i in ``record_steps``}), on the CPU.
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
        check_eta(value)
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


@dataclass(frozen=True)
class _Walk:
    """One call's validated plan, shared by all its chunks: the settings and their grid, the step indices whose
    h is recorded (``capture``, ascending) or edited (``edit``), delta_h (on the CPU, [T, *h] or, with
    ``delta_per_sample``, [B, T, *h]) and the first step index run."""

    settings: DecodeSettings
    grid: DDIMGrid
    capture: tuple[int, ...]
    delta_h: torch.Tensor | None
    delta_per_sample: bool
    edit: frozenset[int]
    start_step: int


def _walk(
    model: DiffusionModel,
    settings: DecodeSettings,
    batch: int,
    *,
    capture_steps: CaptureSteps,
    delta_h: torch.Tensor | None = None,
    edit_steps: Sequence[int] | None = None,
    start_step: int = 0,
) -> _Walk:
    """Validate the per-call arguments of sampling, decoding and inversion against the model and the grid of
    ``settings`` (one-line ConfigError naming the first bad argument)."""
    grid = ddim_grid(model.scheduler, settings.steps)
    num_steps = grid.num_steps
    location = settings.location
    check_location(model.unet, location)
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
    return _Walk(settings, grid, capture, delta_h, per_sample, edit, start_step)


def _decode_checked(
    model: DiffusionModel,
    walk: _Walk,
    x_start: torch.Tensor,
    noise: torch.Tensor | None,
    override: tuple[int, torch.Tensor] | None,
    keep_inputs: bool,
) -> SampleBatch:
    """Decode validated inputs chunk by chunk; ``keep_inputs=False`` leaves x_T and noise out of the result."""
    batch, batch_size = len(x_start), walk.settings.batch_size
    results = []
    with _progress_bar(walk.settings, batch, walk.grid.num_steps - walk.start_step, "decoding") as bar:
        for begin in range(0, batch, batch_size):
            chunk = slice(begin, begin + batch_size)
            chunk_override = None if override is None else (override[0], override[1][chunk])
            z = None if noise is None else noise[chunk]
            x_0, h = _run_steps(model, walk, x_start[chunk], z, chunk, chunk_override, bar)
            results.append((x_0, h, x_start[chunk] if keep_inputs else None, z if keep_inputs else None))
    return _assemble(results, walk, seeds=None)


class _HRecorder:
    """Collects the captured h of one chunk into a [b, K, *h_shape] CPU tensor in the settings' ``h_dtype``."""

    def __init__(self, walk: _Walk, batch: int) -> None:
        self.slots = {step: slot for slot, step in enumerate(walk.capture)}
        self.dtype = walk.settings.h_dtype
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
    walk: _Walk,
    x_start: torch.Tensor,
    z: torch.Tensor | None,
    chunk: slice,
    override: tuple[int, torch.Tensor] | None,
    bar: tqdm,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Decode one chunk (rows ``chunk`` of the call's batch) from step ``walk.start_step``; returns x_0
    [b, C, H, W] and h (both CPU)."""
    settings, grid = walk.settings, walk.grid
    compute_dtype = _compute_dtype(model)
    x = x_start.to(device=model.device, dtype=compute_dtype)
    z = None if z is None else z.to(device=model.device, dtype=compute_dtype)
    delta = walk.delta_h
    if delta is not None:
        delta = (delta[chunk] if walk.delta_per_sample else delta).to(model.device)
    recorder = _HRecorder(walk, len(x))
    prefix = SharedPrefix(model.unet, settings.location)
    with HSpaceHook.for_model(model, settings.location, capture=False) as hook:
        for step_index in range(walk.start_step, grid.num_steps):
            if override is not None and step_index == override[0]:
                x = override[1].to(device=model.device, dtype=compute_dtype)
            edited = delta is not None and step_index in walk.edit
            paired = edited and settings.asyrp  # a second pass at the same x_t with the clean h
            hook.delta = None
            if edited:
                hook.delta = delta[:, step_index] if walk.delta_per_sample else delta[step_index]
            hook.capture = recorder.wants(step_index)
            with prefix.recording() if paired else nullcontext():
                eps = _predict_eps(model, x, grid, step_index)
            recorder.record(step_index, hook)
            eps_direction = eps
            if paired:
                hook.delta, hook.capture = None, False
                with prefix.replaying():
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
    walk: _Walk,
    seeds: torch.Tensor | None,
) -> SampleBatch:
    """Concatenate per-chunk (x_0, h, x_T, z) into one SampleBatch."""
    x_0, hs, x_Ts, zs = zip(*results, strict=True)
    captured = bool(walk.capture) and hs[0] is not None
    eta = walk.settings.eta
    return SampleBatch(
        x_0=torch.cat(x_0),
        x_T=None if x_Ts[0] is None else torch.cat(x_Ts).cpu(),
        noise=None if zs[0] is None or eta == 0 else torch.cat(zs).cpu(),
        timesteps=walk.grid.timesteps.clone(),
        eta=float(eta),
        seeds=seeds,
        h=torch.cat(hs) if captured else None,
        h_steps=torch.tensor(walk.capture, dtype=torch.int64) if captured else None,
        hspace_location=walk.settings.location,
    )


def _compute_dtype(model: DiffusionModel) -> torch.dtype:
    """float32 for half-precision and float32 UNets, float64 for a float64 UNet."""
    return torch.promote_types(torch.float32, model.unet.dtype)


def _progress_bar(settings: DecodeSettings, batch: int, steps_per_chunk: int, description: str) -> tqdm:
    """tqdm over all UNet steps of a call (chunks x steps); a silent counter unless ``settings.progress``."""
    chunks = math.ceil(batch / settings.batch_size)
    return tqdm(total=chunks * steps_per_chunk, desc=description, unit="step", disable=not settings.progress)


def _check_indices(name: str, indices: Sequence[int], low: int, high: int) -> list[int]:
    """``indices`` as ints; ConfigError naming ``name`` unless each is an integer in [low, high)."""
    index_list = list(indices)
    for index in index_list:
        if as_int(index) is None or not low <= index < high:
            raise ConfigError(f"{name} index {index!r}: outside [{low}, {high}) for steps={high}")
    return [as_int(index) for index in index_list]


def _check_images(name: str, x: torch.Tensor, sample_shape: tuple[int, int, int]) -> torch.Tensor:
    """``x`` itself; ConfigError naming ``name`` unless it is [B, *sample_shape]."""
    if x.dim() != 4 or tuple(x.shape[1:]) != sample_shape:
        raise ConfigError(f"{name} shape {tuple(x.shape)}: expected (B, {', '.join(map(str, sample_shape))})")
    return x


def _check_noise(
    noise: torch.Tensor | None, eta: float, batch: int, num_steps: int, sample_shape: tuple[int, int, int]
) -> torch.Tensor | None:
    """The variance noise to use: None when eta = 0 (whatever was given), else ``noise`` checked to be
    [batch, T, *sample_shape]."""
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
    """``x_t_override`` checked: a step index in [start_step, T) and a tensor shaped like x_T."""
    if override is None:
        return None
    step_index, x = override
    _check_indices("x_t_override step", [step_index], start_step, num_steps)
    if x.shape != x_shape:
        raise ConfigError(f"x_t_override tensor shape {tuple(x.shape)}: expected {tuple(x_shape)}")
    return step_index, x
