"""Editing held-out samples: decode them with any directions file's edits, in its own space and unit.

* Spaces "h" and "x_T" (:func:`edit`, :class:`Editor`): h-space directions are injected at every step of the
  sampler grid, as ``sampler.injection`` says (docs/methods.md, "Injecting an h edit"); x_T directions shift
  the starting noise. The h location comes from the file's origin. An h edit whose delta is zero on the first
  steps (a windowed direction, such as the supervised later half) starts from the unedited x at its first edited
  step (:func:`first_edited_step`, :func:`unedited_state`): those steps are the unedited decode's, so
  recomputing them (twice per step with the "asyrp" injection) would change nothing.
* Space "x_t" (:class:`GuidedEditor`): x-space guidance at the file's edit step from each sample's own x_t,
  then DDIM to x_0 with the file's quality boost (:mod:`pipeline.editing.guidance`; docs/methods.md, "Pullback
  directions").

Held-out samples are seeds that no stage fitted on (:func:`held_out`); a sample is a pure function of
(model, sampler, seed), so edited and unedited decodes of a seed share its noise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import torch

from pipeline.diffusion.models import DEFAULT_LOCATION, DiffusionModel
from pipeline.diffusion.sampling import SamplerConfig, ddim_grid, decode, denoise_steps, initial_noise
from pipeline.directions.format import Directions
from pipeline.editing.guidance import GUIDANCE_KEYS, Guidance
from pipeline.io.errors import ConfigError
from pipeline.io.files import WorkCache


@dataclass
class HeldOut:
    """Held-out samples to edit: seeds [M], x_T [M, C, H, W], variance noise [M, T, C, H, W] or None."""

    seeds: list[int]
    x_T: torch.Tensor
    noise: torch.Tensor | None


def held_out(model: DiffusionModel, sampler: SamplerConfig, seed_offset: int, count: int) -> HeldOut:
    """Noise of ``count`` held-out seeds from ``seed_offset`` (never used to fit directions)."""
    seeds = list(range(seed_offset, seed_offset + count))
    x_T, noise = initial_noise(model.sample_shape, seeds, sampler.steps, sampler.eta)
    return HeldOut(seeds, x_T, noise)


def subset(samples: HeldOut, index: torch.Tensor) -> HeldOut:
    """The held-out samples at positions ``index`` (1-d integer tensor)."""
    return HeldOut(
        [samples.seeds[i] for i in index.tolist()],
        samples.x_T[index],
        None if samples.noise is None else samples.noise[index],
    )


def check_grid(directions: Directions, sampler: SamplerConfig) -> None:
    """Refuse to apply directions made on another sampler grid than ``sampler``'s (their step axis would
    address other timesteps)."""
    made_on = directions.origin.sampler_steps
    if made_on is not None and made_on != sampler.steps:
        raise ConfigError(
            f"directions '{directions.method}': made on a {made_on}-step grid, "
            f"applied with sampler.steps={sampler.steps}"
        )


def first_edited_step(delta: torch.Tensor) -> int:
    """The first step index where an h edit ``delta`` [T, *h_shape] is nonzero; T when it is zero at every step.

    Steps before it are the unedited decode's, whatever the edit's scale.
    """
    edited = torch.nonzero(delta.flatten(1).abs().amax(1) > 0)
    return int(edited[0]) if len(edited) else len(delta)


@torch.no_grad()
def unedited_state(model: DiffusionModel, samples: HeldOut, sampler: SamplerConfig, step: int) -> torch.Tensor:
    """x [M, C, H, W] (CPU, the model's compute dtype) of each held-out sample just before grid step ``step`` of
    its own unedited trajectory (DDIM with ``sampler.eta`` and the samples' stored noise); ``step`` = T gives
    x_0. Run ``sampler.batch_size`` samples at a time, one UNet call per step and batch."""
    parts = []
    for begin in range(0, len(samples.seeds), sampler.batch_size):
        rows = slice(begin, begin + sampler.batch_size)
        noise = None if samples.noise is None else samples.noise[rows]
        x, _ = denoise_steps(
            model, samples.x_T[rows], steps=sampler.steps, stop_step=step, eta=sampler.eta, noise=noise
        )
        parts.append(x)
    return torch.cat(parts)


@torch.no_grad()
def edit(
    model: DiffusionModel,
    directions: Directions,
    k: int,
    scales: Sequence[float],
    samples: HeldOut,
    sampler: SamplerConfig,
    *,
    reuse_unedited_steps: bool = True,
) -> torch.Tensor:
    """Decode the held-out samples with direction ``k`` at every scale (in the direction's own unit), in one
    batched decode: images [S, M, 3, H, W] in [0, 1].

    h-space directions are injected at every step (as ``sampler.injection`` says) at the file's h location;
    x_T-space directions shift the starting noise. With no scales edited (scale 0) the result equals the
    unedited decode.

    ``reuse_unedited_steps`` (default): an h edit whose delta is zero on the steps before
    :func:`first_edited_step` decodes from the unedited x at that step (:func:`unedited_state`), and one that is
    zero everywhere is the unedited decode; equal to the full decode up to float rounding (the batches differ),
    at the cost of the edited steps only. False decodes every step from x_T: the reference that the tests and
    ``benchmarks/evaluate.py`` compare with.
    """
    state = partial(unedited_state, model, samples, sampler) if reuse_unedited_steps else None
    return _edit(model, directions, k, scales, samples, sampler, state)


def _edit(
    model: DiffusionModel,
    directions: Directions,
    k: int,
    scales: Sequence[float],
    samples: HeldOut,
    sampler: SamplerConfig,
    state: Callable[[int], torch.Tensor] | None,
) -> torch.Tensor:
    """:func:`edit`, given ``state``: step -> the samples' unedited x [M, C, H, W] just before that step (as
    :func:`unedited_state`), or None to decode every step from x_T."""
    if directions.space not in ("h", "x_T"):
        raise ConfigError(f"directions space '{directions.space}': decoding edits supports 'h' and 'x_T'")
    check_grid(directions, sampler)
    count = len(samples.seeds)
    unit = directions.delta(k, 1.0)
    scale_column = torch.as_tensor(list(scales), dtype=torch.float32).repeat_interleave(count)
    shifts = scale_column.reshape(-1, *([1] * unit.dim())) * unit  # [S*M, *unit.shape]
    x_T = samples.x_T.repeat(len(scales), 1, 1, 1)
    noise = None if samples.noise is None else samples.noise.repeat(len(scales), 1, 1, 1, 1)
    if directions.space == "x_T":
        images = decode_images(model, x_T + shifts, noise, sampler)
    else:
        start = 0 if state is None else first_edited_step(unit)
        if start == len(unit):  # no step edited: every scale is the unedited decode
            images = model.images(state(start)).repeat(len(scales), 1, 1, 1)
        else:
            x_start = x_T if start == 0 else state(start).repeat(len(scales), 1, 1, 1)
            location = directions.origin.hspace_location
            images = decode_images(model, x_start, noise, sampler, shifts, location, start_step=start)
    return images.reshape(len(scales), count, *images.shape[1:])


@torch.no_grad()
def decode_images(
    model: DiffusionModel,
    x_T: torch.Tensor,
    noise: torch.Tensor | None,
    sampler: SamplerConfig,
    delta_h: torch.Tensor | None = None,
    location: str | None = None,
    *,
    start_step: int = 0,
) -> torch.Tensor:
    """Decode x_T [B, C, H, W] (with stored noise, and a per-sample delta_h [B, T, *h] at ``location`` if
    given, injected as ``sampler.injection`` says) to images [B, 3, H, W] in [0, 1]. With ``start_step`` > 0,
    ``x_T`` is x just before that grid step and only the steps from it on run (``noise`` is still the full
    [B, T, C, H, W])."""
    if delta_h is not None and location is None:
        raise ConfigError("decode_images: an h edit needs its h location")
    settings = sampler.decode_settings(location or DEFAULT_LOCATION)
    result = decode(model, x_T, noise, settings, capture_steps=None, delta_h=delta_h, start_step=start_step)
    return model.images(result.x_0)


class Editor:
    """Decodes held-out samples with direction k of a file in space "h" or "x_T" (:func:`edit`).

    With ``reuse_unedited_steps`` (default) the unedited x of the samples at a first edited step is computed once
    per step and reused by every direction, scale and index subset (rows of the cache); False decodes every step
    from x_T (the reference of the tests and ``benchmarks/evaluate.py``).
    """

    def __init__(self, model: DiffusionModel, directions: Directions, samples: HeldOut, sampler: SamplerConfig,
                 baseline: torch.Tensor, *, reuse_unedited_steps: bool = True):  # fmt: skip
        self.model, self.directions, self.samples, self.sampler = model, directions, samples, sampler
        self.baseline = baseline
        self.reuse_unedited_steps = reuse_unedited_steps
        self.states: dict[int, torch.Tensor] = {}
        """step -> unedited x [M, C, H, W] of all the samples just before that step (:func:`unedited_state`)."""

    def __call__(self, k: int, scales: Sequence[float], index: torch.Tensor | None = None) -> torch.Tensor:
        """Images [S, m, 3, H, W] of the samples at ``index`` (default: all) at every scale."""
        samples = self.samples if index is None else subset(self.samples, index)
        state = partial(self.unedited_state, index) if self.reuse_unedited_steps else None
        return _edit(self.model, self.directions, k, scales, samples, self.sampler, state)

    def unedited_state(self, index: torch.Tensor | None, step: int) -> torch.Tensor:
        """Unedited x [m, C, H, W] of the samples at ``index`` (default: all) just before grid ``step``, from the
        cache of all the samples' states (computed on first use)."""
        if step not in self.states:
            self.states[step] = unedited_state(self.model, self.samples, self.sampler, step)
        return self.states[step] if index is None else self.states[step][index]


class GuidedEditor:
    """Decodes held-out samples with direction k of a file in space "x_t": x-space guidance at the file's edit
    step (``origin.steps[0]``) from each sample's own x_t, with ``extra`` step_size, iterations and
    boost_step; then DDIM to x_0 with eta = 1 from the boost step on, the noise being each sample's own
    variance noise (so edits and baseline of a sample share it). ``baseline`` is the unedited x_t decoded
    the same way."""

    def __init__(
        self,
        model: DiffusionModel,
        directions: Directions,
        samples: HeldOut,
        sampler: SamplerConfig,
        states: Callable[[int], torch.Tensor],
        source: str,
    ):
        check_grid(directions, sampler)
        keys = (*GUIDANCE_KEYS, "boost_step")
        self.guidance = Guidance.of(model, directions, sampler.steps, f"directions file {source}", keys)
        self.model, self.directions, self.samples, self.sampler = model, directions, samples, sampler
        step, num_steps = self.guidance.step, ddim_grid(model.scheduler, sampler.steps).num_steps
        boost = directions.extra["boost_step"]
        self.etas = [0.0] * num_steps
        self.noise = None
        if boost is not None:
            first = max(int(boost), step)
            self.etas[first:] = [1.0] * (num_steps - first)
            _, self.noise = initial_noise(model.sample_shape, samples.seeds, sampler.steps, 1.0)
        self.x_t = states(step)
        self.baseline = self.guidance.denoise(
            model, self.x_t, torch.arange(len(samples.seeds)), steps=sampler.steps, eta=self.etas, noise=self.noise,
            batch_size=sampler.batch_size,
        )  # fmt: skip

    def __call__(self, k: int, scales: Sequence[float], index: torch.Tensor | None = None) -> torch.Tensor:
        """Images [S, m, 3, H, W] of the samples at ``index`` (default: all) at every guidance strength."""
        index = torch.arange(len(self.samples.seeds)) if index is None else index
        count = len(index)
        rows = index.repeat(len(scales))
        strengths = torch.as_tensor(list(scales), dtype=torch.float32).repeat_interleave(count)
        edited = self.guidance.edit(
            self.model, self.x_t, rows, self.directions.delta(k, 1.0), strengths, steps=self.sampler.steps,
            eta=self.etas, noise=self.noise, batch_size=self.sampler.batch_size,
        )  # fmt: skip
        return edited.reshape(len(scales), count, *self.baseline.shape[1:])


class ResumableEditor:
    """An editor whose decodes are units of a :class:`~pipeline.io.files.WorkCache`: a killed evaluation
    resumes without decoding again what it had decoded (the bisection asks for the same scales again,
    since every probe follows from the measurements before it)."""

    def __init__(self, editor: Editor | GuidedEditor, work: WorkCache, method: str):
        self.editor, self.work, self.method = editor, work, method
        self.baseline = editor.baseline

    def __call__(self, k: int, scales: Sequence[float], index: torch.Tensor | None = None) -> torch.Tensor:
        """What ``editor(k, scales, index)`` returns, loaded when an earlier run decoded it."""
        rows = None if index is None else index.tolist()
        key = f"{self.method}/{k}/{[float(scale) for scale in scales]!r}/{rows}"
        return self.work.fetch(key, lambda: {"images": self.editor(k, scales, index)})["images"]


AnyEditor = Editor | GuidedEditor | ResumableEditor
