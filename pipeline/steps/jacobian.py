"""Step ``jacobian``: image-specific directions of held-out samples from the spectrum of d(mask * eps)/d h
(docs/methods.md, "Jacobian directions"), their spectra, the locality of masked edits, and a preview."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.diffusion.models import DiffusionModel
from pipeline.diffusion.sampling import SamplerConfig, ddim_grid
from pipeline.directions.format import Origin
from pipeline.directions.jacobian import (
    JacobianSpectra,
    image_mask,
    jacobian_directions,
    jacobian_spectra,
    rectangle_mask,
)
from pipeline.editing import HeldOut, decode_images, edit, held_out
from pipeline.io.errors import ConfigError
from pipeline.io.files import WorkCache
from pipeline.io.images import make_grid
from pipeline.io.validation import require
from pipeline.linalg import SolverConfig
from pipeline.steps.result import StepResult
from pipeline.toyfaces.world import REGIONS, ToyFacesConfig

PARAMS = ("model", "sampler", "classifier", "toyfaces", "directions.jacobian", "preview.scales")
"""The params this step reads (its stage's ``params`` in dvc.yaml)."""


@dataclass
class JacobianConfig:
    """The ``directions.jacobian`` params section: image-specific Jacobian directions (paper A).

    ``mask`` is null (whole image), a ToyFaces region name (located on each sample by the ToyFaces
    classifier), a rectangle [top, left, bottom, right] in fractions of the image, or a mask image path.
    ``steps`` is "all" or a list of grid step indices; ``source_step`` the step whose vectors "global"
    application uses (negative counts from the end); ``unit`` the paper's alpha of edit scale 1.
    """

    seed_offset: int = 70_000_000
    num_samples: int = 2
    k: int = 3
    steps: Any = "all"
    source_step: int = 4
    apply: str = "global"
    unit: float = 300.0
    mask: Any = "mouth"
    solver: SolverConfig = field(default_factory=SolverConfig)

    def __post_init__(self) -> None:
        key = "directions.jacobian"
        require(self.seed_offset >= 0, f"{key}.seed_offset", self.seed_offset, "must be >= 0")
        require(self.num_samples >= 1, f"{key}.num_samples", self.num_samples, "must be >= 1")
        require(self.k >= 1, f"{key}.k", self.k, "must be >= 1")
        require(
            self.steps == "all" or (isinstance(self.steps, list) and len(self.steps) > 0),
            f"{key}.steps", self.steps, "must be 'all' or a non-empty list of step indices",
        )  # fmt: skip
        require(self.apply in ("global", "per_step"), f"{key}.apply", self.apply, "must be 'global' or 'per_step'")
        require(self.unit > 0, f"{key}.unit", self.unit, "must be > 0")
        check_mask_setting(self.mask)
        self.solver.check(f"{key}.solver")


MASK_KEY = "directions.jacobian.mask"
MASK_CHOICES = f"{', '.join(REGIONS)}, a rectangle [top, left, bottom, right] or an image file"
"""What ``directions.jacobian.mask`` may be besides null, as error messages list it."""


def check_mask_setting(mask: Any) -> None:
    """Check ``directions.jacobian.mask`` without any model (milliseconds): null, a ToyFaces region of
    :data:`~pipeline.toyfaces.world.REGIONS`, a rectangle [top, left, bottom, right] of fractions with
    top < bottom and left < right, or an existing image file. A string that is neither a region nor a file is
    an unknown region, or a missing file when it looks like a path (a folder or a suffix); ConfigError names the
    key, the value and what is expected."""
    if mask is None or (isinstance(mask, str) and mask in REGIONS):
        return
    if isinstance(mask, str):
        if Path(mask).is_file():
            return
        if "/" in mask or Path(mask).suffix:
            raise ConfigError(f"{MASK_KEY} '{mask}': no such image file (expected one of {MASK_CHOICES})")
        raise ConfigError(f"{MASK_KEY} '{mask}': unknown region; expected one of {MASK_CHOICES}")
    box = list(mask) if isinstance(mask, Sequence) else None
    numbers = box is not None and all(isinstance(v, int | float) and not isinstance(v, bool) for v in box)
    if not numbers or len(box) != 4:
        raise ConfigError(f"{MASK_KEY} {mask!r}: expected null or one of {MASK_CHOICES}")
    top, left, bottom, right = (float(v) for v in box)
    if not (0.0 <= top < bottom <= 1.0 and 0.0 <= left < right <= 1.0):
        raise ConfigError(
            f"{MASK_KEY} {box}: a rectangle [top, left, bottom, right] needs fractions of the image in [0, 1] "
            "with top < bottom and left < right"
        )


def check_mask_classifier(mask: Any, classifier: str) -> None:
    """ConfigError when ``mask`` is a ToyFaces region but the classifier (``classifier.name``) cannot locate it:
    regions are found on each sample by the ToyFaces classifier."""
    if isinstance(mask, str) and mask in REGIONS and classifier != "toyfaces":
        raise ConfigError(
            f"{MASK_KEY} '{mask}': a ToyFaces region needs classifier.name 'toyfaces', not '{classifier}'; "
            "set the mask to a rectangle [top, left, bottom, right], an image file or null"
        )


def sample_masks(
    mask: Any, samples: HeldOut, images: torch.Tensor, classifier: nn.Module | None, world: ToyFacesConfig | None
) -> tuple[list[torch.Tensor | None], list[torch.Tensor | None]]:
    """Per sample: the Jacobian mask [1, H, W] (None: whole image) and the "rest of the face" to compare
    against (ToyFaces regions: the face minus the mask; otherwise the complement; None without a mask)."""
    count, shape = len(samples.seeds), tuple(samples.x_T.shape[1:])
    if mask is None:
        return [None] * count, [None] * count
    if isinstance(mask, str) and mask in REGIONS:
        from pipeline.toyfaces.classifier import ToyFacesClassifier, locate_regions

        if not isinstance(classifier, ToyFacesClassifier) or world is None:
            raise ConfigError(f"directions.jacobian.mask '{mask}': ToyFaces regions need the toyfaces classifier")
        regions = {
            name: (F.interpolate(value, size=shape[1:], mode="area") > 0.5).float()  # to the model's resolution
            for name, value in locate_regions(classifier, images, world).items()
        }
        inside = [regions[mask][i] for i in range(count)]
        rest = [regions["face"][i] * (1 - regions[mask][i]) for i in range(count)]
        for region in inside:
            if not region.any():
                raise ConfigError(f"directions.jacobian.mask '{mask}': empty on a sample (region not found)")
        return inside, rest
    if isinstance(mask, str):
        inside_one = image_mask(mask, shape)
    elif isinstance(mask, Sequence):
        inside_one = rectangle_mask([float(v) for v in mask], shape)
    else:
        raise ConfigError(f"directions.jacobian.mask {mask!r}: expected null, a region, a rectangle or an image path")
    return [inside_one] * count, [1 - inside_one] * count


def run(
    model: DiffusionModel,
    cfg: JacobianConfig,
    sampler: SamplerConfig,
    location: str,
    classifier: nn.Module | None = None,
    world: ToyFacesConfig | None = None,
    preview_scales: Sequence[float] = (-2.0, -1.0, 0.0, 1.0, 2.0),
    progress: bool = True,
    work: WorkCache | None = None,
) -> StepResult:
    """Jacobian directions of ``cfg.num_samples`` held-out samples, their spectra, the locality of masked
    edits and a preview (each sample edited by its own directions at ``preview_scales``). Each sample's
    spectra are a unit of ``work`` (a killed run resumes from the samples it finished)."""
    grid = ddim_grid(model.scheduler, sampler.steps)
    steps = list(range(grid.num_steps)) if cfg.steps == "all" else [int(step) for step in cfg.steps]
    source_step = cfg.source_step % grid.num_steps if cfg.source_step < 0 else cfg.source_step
    samples = held_out(model, sampler, cfg.seed_offset, cfg.num_samples)
    originals = decode_images(model, samples.x_T, samples.noise, sampler)
    masks, rests = sample_masks(cfg.mask, samples, originals, classifier, world)
    work = work or WorkCache(None)
    started = time.perf_counter()

    def spectra_of(i: int) -> dict[str, torch.Tensor]:
        noise = None if samples.noise is None else samples.noise[i]
        return jacobian_spectra(
            model, samples.x_T[i], noise, steps=sampler.steps, eta=sampler.eta, location=location,
            step_indices=steps, k=cfg.k, solver=cfg.solver, mask=masks[i], progress=progress,
        ).to_tensors()  # fmt: skip

    spectra = [
        JacobianSpectra.from_tensors(work.fetch(f"spectra/{i}/{seed}", partial(spectra_of, i)))
        for i, seed in enumerate(samples.seeds)
    ]
    seconds = time.perf_counter() - started
    origin = Origin(model_id=model.model_id, hspace_location=location, sampler_steps=sampler.steps, eta=sampler.eta)
    directions = jacobian_directions(
        spectra, samples.seeds, origin, apply=cfg.apply, source_step=source_step, unit=cfg.unit
    )
    rows, locality = [], []
    edits_per_sample = []
    for i, seed in enumerate(samples.seeds):
        one = HeldOut([seed], samples.x_T[i : i + 1], None if samples.noise is None else samples.noise[i : i + 1])
        own = [i * cfg.k + k for k in range(cfg.k)]
        edits = torch.stack([edit(model, directions, k, preview_scales, one, sampler)[:, 0] for k in own])
        edits_per_sample.append(edits)
        if masks[i] is not None and rests[i] is not None:
            change = (edits - originals[i]).abs().mean(dim=2, keepdim=True)  # [k, S, 1, H, W]
            mask, rest = (_at_image_size(region, change.shape[-2:]) for region in (masks[i], rests[i]))
            inside = (change * mask).sum(dim=(-1, -2, -3)) / mask.sum()
            outside = (change * rest).sum(dim=(-1, -2, -3)) / rest.sum().clamp(min=1)
            moved = torch.tensor([scale != 0 for scale in preview_scales])
            locality.append((inside[:, moved] / outside[:, moved].clamp(min=1e-8)).mean(dim=1))
    for position, step in enumerate(directions.origin.steps.tolist()):
        row = {"step": step, "timestep": int(grid.timesteps[step])}
        values = torch.stack([item.singular_values[:, position] for item in spectra]).mean(dim=0)
        row.update({f"sigma_{k}": float(values[k]) for k in range(cfg.k)})
        rows.append(row)
    metrics: dict[str, Any] = {
        "products": sum(item.products for item in spectra),
        "converged": all(item.converged for item in spectra),
        "mask": cfg.mask if isinstance(cfg.mask, (str, type(None))) else list(cfg.mask),
    }
    if locality:
        ratios = torch.stack(locality)  # [samples, k]
        metrics["mask_locality"] = {
            "mean_ratio": float(ratios.mean()),
            "top_direction_ratio": float(ratios[:, 0].mean()),
            "fraction_above_1": float((ratios > 1).float().mean()),
        }
    pictures = {}
    if edits_per_sample:
        stacked = torch.cat(edits_per_sample)  # [samples*k, S, 3, H, W]
        pictures["jacobian"] = make_grid(stacked.flatten(0, 1), columns=len(preview_scales))
    timings = {"seconds": seconds, "seconds_per_step": seconds / (len(steps) * len(spectra)), "resumed": work.resumed}
    return StepResult({"jacobian": directions}, {"jacobian_spectrum": rows}, metrics, pictures, timings)


def _at_image_size(region: torch.Tensor, size: torch.Size) -> torch.Tensor:
    """A region [C, h, w] given at the model's resolution (latents) resampled to the images' [C, *size]."""
    if tuple(region.shape[-2:]) == tuple(size):
        return region
    return F.interpolate(region.unsqueeze(0).float(), size=tuple(size), mode="nearest")[0]

