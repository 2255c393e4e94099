"""Step ``jacobian``: image-specific directions of held-out samples from the spectrum of d(mask * eps)/d h
(docs/methods.md, "Jacobian directions"), their spectra, the locality of masked edits, and a preview."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.diffusion.models import DiffusionModel
from pipeline.diffusion.sampling import SamplerConfig, ddim_grid
from pipeline.directions.format import Origin
from pipeline.directions.jacobian import JacobianSpectra, jacobian_directions, jacobian_spectra
from pipeline.directions.masks import check_mask_setting, sample_masks
from pipeline.editing.samples import HeldOut, decode_images, edit, held_out
from pipeline.io.files import WorkCache
from pipeline.io.images import make_grid
from pipeline.io.validation import require
from pipeline.linalg import SolverConfig
from pipeline.steps.result import StepResult
from pipeline.toyfaces.world import ToyFacesConfig

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
    masks, rests = sample_masks(cfg.mask, model.sample_shape, originals, classifier, world)
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

