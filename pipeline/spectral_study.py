"""The jacobian and pullback steps of the study as library functions (the stages only read params and write).

Each takes typed configs and loaded models and returns a :class:`SpectralResult`: directions files,
rows for DVC plots, metrics and preview pictures.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from pipeline.directions import geometry
from pipeline.io.files import WorkCache
from pipeline.directions import Directions, Origin
from pipeline.directions.jacobian import (
    JacobianSpectra,
    image_mask,
    jacobian_directions,
    jacobian_spectra,
    rectangle_mask,
)
from pipeline.directions.pullback import (
    LocalBasis,
    decode_edited,
    guidance_edit,
    local_basis,
    states_at,
    step_for_fraction,
)
from pipeline.io.errors import ConfigError
from pipeline.diffusion.hspace import h_of_x
from pipeline.io.images import make_grid
from pipeline.linalg import frozen
from pipeline.diffusion.models import DiffusionModel
from pipeline.diffusion.sampling import ddim_grid
from pipeline.study import HeldOut, JacobianConfig, PullbackConfig, SamplerConfig, decode_images, edit, held_out
from pipeline.toyfaces.world import REGIONS, ToyFacesConfig


@dataclass
class SpectralResult:
    """What a spectral stage writes: directions files by method, plot rows by name, metrics, pictures; and
    ``timings`` (seconds, units resumed), logged but kept out of the metrics so that outputs are reproducible."""

    directions: dict[str, Directions]
    plots: dict[str, list[dict[str, float]]]
    metrics: dict[str, Any]
    pictures: dict[str, torch.Tensor] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


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


def run_jacobian(
    model: DiffusionModel,
    cfg: JacobianConfig,
    sampler: SamplerConfig,
    location: str,
    classifier: nn.Module | None = None,
    world: ToyFacesConfig | None = None,
    preview_scales: Sequence[float] = (-2.0, -1.0, 0.0, 1.0, 2.0),
    progress: bool = True,
    work: WorkCache | None = None,
) -> SpectralResult:
    """Jacobian directions of ``cfg.num_samples`` held-out samples, their spectra, the locality of masked
    edits and a preview (each sample edited by its own directions at ``preview_scales``). Each sample's
    spectra are a unit of ``work`` (a killed run resumes from the samples it finished)."""
    grid = ddim_grid(model.scheduler, sampler.steps)
    steps = list(range(grid.num_steps)) if cfg.steps == "all" else [int(step) for step in cfg.steps]
    source_step = cfg.source_step % grid.num_steps if cfg.source_step < 0 else cfg.source_step
    samples = held_out(model, sampler, cfg.seed_offset, cfg.num_samples)
    originals = decode_images(model, samples.x_T, samples.noise, sampler, location)
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
        edits = torch.stack([edit(model, directions, k, preview_scales, one, sampler, location)[:, 0] for k in own])
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
    return SpectralResult({"jacobian": directions}, {"jacobian_spectrum": rows}, metrics, pictures, timings)


def _at_image_size(region: torch.Tensor, size: torch.Size) -> torch.Tensor:
    """A region [C, h, w] given at the model's resolution (latents) resampled to the images' [C, *size]."""
    if tuple(region.shape[-2:]) == tuple(size):
        return region
    return F.interpolate(region.unsqueeze(0).float(), size=tuple(size), mode="nearest")[0]


def run_pullback(
    model: DiffusionModel,
    cfg: PullbackConfig,
    sampler: SamplerConfig,
    location: str,
    progress: bool = True,
    work: WorkCache | None = None,
) -> SpectralResult:
    """Pullback bases of ``cfg.num_samples`` held-out samples at every analysis t and at t_edit, with:
    spectra, coarse-to-fine (mean spatial frequency of the basis per t), tangent-space distances across
    samples per t, the curvedness of the segment between the first two samples, transport of the first
    sample's directions to the others, global (chordal-mean) directions, and preview edits. Each basis is a
    unit of ``work`` (a killed run resumes from the bases it finished)."""
    grid = ddim_grid(model.scheduler, sampler.steps)
    num_train = int(model.scheduler.config.num_train_timesteps)
    edit_step = step_for_fraction(grid, cfg.edit_t, num_train)
    analysis = sorted({step_for_fraction(grid, t, num_train) for t in cfg.analysis_t} | {edit_step})
    boost_step = None if cfg.boost_t is None else step_for_fraction(grid, cfg.boost_t, num_train)
    samples = held_out(model, sampler, cfg.seed_offset, cfg.num_samples)
    states = states_at(model, samples.x_T, samples.noise, steps=sampler.steps, eta=sampler.eta, step_indices=analysis)
    work = work or WorkCache(None)
    started = time.perf_counter()
    bases: dict[int, list[LocalBasis]] = {}
    jobs = [(step, i) for step in analysis for i in range(len(samples.seeds))]
    for step, i in tqdm(jobs, desc="pullback", unit="basis", disable=not progress):
        basis = _cached_basis(work, f"basis/{step}/{i}/{samples.seeds[i]}", model, states[step][i], step, cfg, sampler,
                              location)  # fmt: skip
        bases.setdefault(step, []).append(basis)
    seconds = time.perf_counter() - started

    spectrum_rows, psd_rows, distance_rows = [], [], []
    for step in analysis:
        local = bases[step]
        t = int(grid.timesteps[step]) / num_train
        values = torch.stack([basis.singular_values for basis in local]).mean(dim=0)
        spectrum_rows += [{"t": t, "index": k, "sigma": float(values[k])} for k in range(cfg.basis_size)]
        frequency = torch.stack([geometry.mean_frequency(basis.v) for basis in local]).mean()
        psd_rows.append({"t": t, "step": step, "mean_frequency": float(frequency)})
        pairs = [
            geometry.grassmann_distance(local[a].v.flatten(1), local[b].v.flatten(1))
            for a in range(len(local))
            for b in range(a + 1, len(local))
        ]
        distance_rows.append({"t": t, "step": step, "grassmann_distance_x": sum(pairs) / len(pairs)})

    edit_bases = bases[edit_step]
    timestep = int(grid.timesteps[edit_step])
    source_tangents = edit_bases[0].u.flatten(1)
    transported = [
        torch.stack([geometry.transport(u, target.u.flatten(1), target.v.flatten(1)) for u in source_tangents])
        .reshape_as(target.v)
        .float()
        for target in edit_bases[1:]
    ]
    # |<transported v_k, the target's own v_k>|: 1 where the two tangent spaces agree direction by direction.
    transport_alignment = torch.stack(
        [
            (moved.flatten(1) * target.v.flatten(1)).sum(dim=1).abs()
            for moved, target in zip(transported, edit_bases[1:], strict=True)
        ]
    ).mean(dim=0)
    global_basis, weights = geometry.chordal_mean([basis.v.flatten(1) for basis in edit_bases])
    curvedness = _curvedness(
        model, states[edit_step][0], states[edit_step][1], edit_step, timestep, cfg, location, sampler, work
    )

    origin = Origin(
        model_id=model.model_id,
        hspace_location=location,
        sampler_steps=sampler.steps,
        eta=sampler.eta,
        timesteps=grid.timesteps[[edit_step]].clone(),
        steps=torch.tensor([edit_step], dtype=torch.int64),
    )
    local_file = Directions(
        directions=torch.cat([basis.v for basis in edit_bases]),
        method="pullback",
        space="x_t",
        names=[f"seed{seed}/v{k}" for seed in samples.seeds for k in range(cfg.basis_size)],
        origin=origin,
        singular_values=torch.cat([basis.singular_values for basis in edit_bases]),
        extra=_edit_extra(cfg, samples.seeds, edit_step, boost_step),
    )
    global_file = Directions(
        directions=global_basis.float().reshape(cfg.basis_size, *model.sample_shape),
        method="pullback_global",
        space="x_t",
        names=[f"global/v{k}" for k in range(cfg.basis_size)],
        origin=origin,
        extra={**_edit_extra(cfg, samples.seeds, edit_step, boost_step), "mean_projector_weights": weights.tolist()},
    )
    pictures = {
        "pullback": _pullback_preview(model, edit_bases, transported, global_basis, states[edit_step], cfg, sampler,
                                      edit_step, timestep, boost_step),
    }  # fmt: skip
    frequencies = [row["mean_frequency"] for row in psd_rows]
    metrics = {
        "products": sum(basis.products for local in bases.values() for basis in local),
        "converged": all(basis.converged for local in bases.values() for basis in local),
        "edit_step": edit_step,
        "mean_frequency": {f"t={row['t']:.3f}": row["mean_frequency"] for row in psd_rows},
        # rows run from the noisiest step; coarse-to-fine: the noisiest t's basis is smoother than the last t's
        "late_over_early_frequency": frequencies[-1] / frequencies[0],
        "grassmann_distance_x": {f"t={row['t']:.3f}": row["grassmann_distance_x"] for row in distance_rows},
        "transport_alignment": [float(value) for value in transport_alignment],
        "global_weights": [float(value) for value in weights],
        "curvedness": curvedness,
    }
    plots = {"pullback_spectrum": spectrum_rows, "pullback_psd": psd_rows, "pullback_tangent_distance": distance_rows}
    timings = {"seconds": seconds, "resumed": work.resumed}
    return SpectralResult({"pullback": local_file, "pullback_global": global_file}, plots, metrics, pictures, timings)


def _cached_basis(
    work: WorkCache,
    key: str,
    model: DiffusionModel,
    x_t: torch.Tensor,
    step: int,
    cfg: PullbackConfig,
    sampler: SamplerConfig,
    location: str,
) -> LocalBasis:
    """:func:`local_basis` of ``x_t`` at ``step`` as the unit ``key`` of ``work``."""
    return LocalBasis.from_tensors(
        work.fetch(
            key,
            lambda: local_basis(
                model, x_t, step, steps=sampler.steps, n=cfg.basis_size, location=location, solver=cfg.solver
            ).to_tensors(),
        )
    )


def _edit_extra(cfg: PullbackConfig, seeds: Sequence[int], edit_step: int, boost_step: int | None) -> dict[str, Any]:
    return {
        "seeds": [int(seed) for seed in seeds],
        "edit_step": edit_step,
        "boost_step": boost_step,
        "step_size": cfg.step_size,
        "iterations": cfg.iterations,
    }


def _curvedness(
    model: DiffusionModel,
    start: torch.Tensor,
    end: torch.Tensor,
    step: int,
    timestep: int,
    cfg: PullbackConfig,
    location: str,
    sampler: SamplerConfig,
    work: WorkCache,
) -> dict[str, float]:
    """Curvedness of the straight segment between two x_t: of its image in h, and the turning of the
    tangent spaces along it (see :func:`pipeline.directions.geometry.segment_curvedness` / ``tangent_turning``)."""
    fractions = torch.linspace(0, 1, cfg.curvedness_points)
    points = torch.stack([(1 - s) * start + s * end for s in fractions])
    with torch.no_grad(), frozen(model.unet):
        encode = h_of_x(model, timestep, location)
        features = torch.cat([encode(chunk.to(model.device)).cpu() for chunk in points.split(sampler.batch_size)])
    result = geometry.segment_curvedness(points.flatten(1), features.flatten(1))
    tangents = [
        _cached_basis(work, f"curvedness/{index}", model, point, step, cfg, sampler, location).v.flatten(1)
        for index, point in enumerate(points)
    ]
    result["tangent_turning"] = geometry.tangent_turning(tangents)
    return result


def _pullback_preview(
    model: DiffusionModel,
    edit_bases: list[LocalBasis],
    transported: list[torch.Tensor],
    global_basis: torch.Tensor,
    x_t: torch.Tensor,
    cfg: PullbackConfig,
    sampler: SamplerConfig,
    edit_step: int,
    timestep: int,
    boost_step: int | None,
) -> torch.Tensor:
    """Rows: sample 0 along its own v_k; sample 1 along v_k transported from sample 0; every sample along
    the first global direction projected onto its own basis. Columns: ``cfg.scales``."""
    shown = min(cfg.preview_directions, cfg.basis_size)
    jobs = [(0, edit_bases[0].v[k]) for k in range(shown)]
    jobs += [(1, transported[0][k]) for k in range(shown)]
    jobs += [
        (i, geometry.project_onto_span(global_basis[0], basis.v.flatten(1)).reshape(model.sample_shape).float())
        for i, basis in enumerate(edit_bases)
    ]
    rows = []
    for i, direction in jobs:
        edited = guidance_edit(
            model, x_t[i], direction, timestep, cfg.scales, step_size=cfg.step_size, iterations=cfg.iterations
        )
        x_0 = decode_edited(model, edited, edit_step, steps=sampler.steps, boost_step=boost_step, boost_seed=i)
        rows.append(model.images(x_0))
    return make_grid(torch.cat(rows), columns=len(cfg.scales))
