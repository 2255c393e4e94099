"""Editing held-out samples: decode them with any directions file's edits, in its own space and unit.

* Spaces "h" and "x_T" (:func:`edit`, :class:`Editor`): h-space directions are injected at every step of the
  sampler grid, as ``sampler.injection`` says (docs/methods.md, "Injecting an h edit"); x_T directions shift
  the starting noise. The h location comes from the file's origin.
* Space "x_t" (:class:`GuidedEditor`): x-space guidance at the file's edit step from each sample's own x_t,
  then DDIM to x_0 with the file's quality boost (:mod:`pipeline.editing.guidance`; docs/methods.md, "Pullback
  directions").

Held-out samples are seeds that no stage fitted on (:func:`held_out`); a sample is a pure function of
(model, sampler, seed), so edited and unedited decodes of a seed share its noise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from pipeline.diffusion.models import DEFAULT_LOCATION, DiffusionModel
from pipeline.diffusion.sampling import SamplerConfig, ddim_grid, decode, initial_noise
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


@torch.no_grad()
def edit(
    model: DiffusionModel,
    directions: Directions,
    k: int,
    scales: Sequence[float],
    samples: HeldOut,
    sampler: SamplerConfig,
) -> torch.Tensor:
    """Decode the held-out samples with direction ``k`` at every scale (in the direction's own unit), in one
    batched decode: images [S, M, 3, H, W] in [0, 1].

    h-space directions are injected at every step (as ``sampler.injection`` says) at the file's h location;
    x_T-space directions shift the starting noise. With no scales edited (scale 0) the result equals the
    unedited decode.
    """
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
        images = decode_images(model, x_T, noise, sampler, shifts, directions.origin.hspace_location)
    return images.reshape(len(scales), count, *images.shape[1:])


@torch.no_grad()
def decode_images(
    model: DiffusionModel,
    x_T: torch.Tensor,
    noise: torch.Tensor | None,
    sampler: SamplerConfig,
    delta_h: torch.Tensor | None = None,
    location: str | None = None,
) -> torch.Tensor:
    """Decode x_T [B, C, H, W] (with stored noise, and a per-sample delta_h [B, T, *h] at ``location`` if
    given, injected as ``sampler.injection`` says) to images [B, 3, H, W] in [0, 1]."""
    if delta_h is not None and location is None:
        raise ConfigError("decode_images: an h edit needs its h location")
    settings = sampler.decode_settings(location or DEFAULT_LOCATION)
    result = decode(model, x_T, noise, settings, capture_steps=None, delta_h=delta_h)
    return model.images(result.x_0)


class Editor:
    """Decodes held-out samples with direction k of a file in space "h" or "x_T" (:func:`edit`)."""

    def __init__(self, model: DiffusionModel, directions: Directions, samples: HeldOut, sampler: SamplerConfig,
                 baseline: torch.Tensor):  # fmt: skip
        self.model, self.directions, self.samples, self.sampler = model, directions, samples, sampler
        self.baseline = baseline

    def __call__(self, k: int, scales: Sequence[float], index: torch.Tensor | None = None) -> torch.Tensor:
        """Images [S, m, 3, H, W] of the samples at ``index`` (default: all) at every scale."""
        samples = self.samples if index is None else subset(self.samples, index)
        return edit(self.model, self.directions, k, scales, samples, self.sampler)


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

