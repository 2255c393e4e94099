"""Step ``pullback``: local bases of d h / d x_t of held-out samples, their transport between samples, global
directions and the analyses of the x_t geometry (docs/methods.md, "Pullback directions")."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from pipeline.diffusion.hspace import h_of_x
from pipeline.diffusion.models import DiffusionModel
from pipeline.diffusion.sampling import SamplerConfig, ddim_grid
from pipeline.directions import geometry
from pipeline.directions.format import Directions, Origin
from pipeline.directions.pullback import (
    LocalBasis,
    decode_edited,
    guidance_edit,
    local_basis,
    states_at,
    step_for_fraction,
)
from pipeline.editing.samples import held_out
from pipeline.io.files import WorkCache
from pipeline.io.images import make_grid
from pipeline.io.validation import require
from pipeline.linalg import SolverConfig, frozen
from pipeline.steps.result import StepResult

PARAMS = ("model", "sampler", "directions.pullback")
"""The params this step reads (its stage's ``params`` in dvc.yaml)."""


@dataclass
class PullbackConfig:
    """The ``directions.pullback`` params section: local pullback bases in x_t (paper B).

    Times are fractions of the training schedule (1.0 = noisiest): ``edit_t`` where bases are computed and
    edits applied, ``analysis_t`` where the spectra and tangent-space statistics are measured, ``boost_t``
    from where denoising uses eta = 1 (null: no quality boost). ``scales`` are the guidance strengths c
    of the preview; ``step_size`` and ``iterations`` are gamma and N_g of x-space guidance.
    """

    seed_offset: int = 80_000_000
    num_samples: int = 4
    basis_size: int = 8
    edit_t: float = 0.6
    analysis_t: list[float] = field(default_factory=lambda: [1.0, 0.8, 0.6, 0.4, 0.2])
    step_size: float = 0.1
    iterations: int = 16
    boost_t: float | None = 0.2
    scales: list[float] = field(default_factory=lambda: [-4.0, -2.0, 0.0, 2.0, 4.0])
    preview_directions: int = 3
    curvedness_points: int = 8
    solver: SolverConfig = field(default_factory=SolverConfig)

    def __post_init__(self) -> None:
        key = "directions.pullback"
        require(self.seed_offset >= 0, f"{key}.seed_offset", self.seed_offset, "must be >= 0")
        require(self.num_samples >= 2, f"{key}.num_samples", self.num_samples, "must be >= 2 (for transport)")
        require(self.basis_size >= 1, f"{key}.basis_size", self.basis_size, "must be >= 1")
        times = [("edit_t", self.edit_t), ("boost_t", self.boost_t), *(("analysis_t", t) for t in self.analysis_t)]
        for name, value in times:
            require(value is None or 0.0 <= value <= 1.0, f"{key}.{name}", value, "t_edit outside the schedule [0, 1]")
        require(len(self.analysis_t) >= 1, f"{key}.analysis_t", self.analysis_t, "must list at least one t")
        require(self.step_size > 0, f"{key}.step_size", self.step_size, "must be > 0")
        require(self.iterations >= 0, f"{key}.iterations", self.iterations, "must be >= 0")
        require(len(self.scales) >= 1, f"{key}.scales", self.scales, "must list at least one scale")
        require(self.preview_directions >= 1, f"{key}.preview_directions", self.preview_directions, "must be >= 1")
        require(self.curvedness_points >= 2, f"{key}.curvedness_points", self.curvedness_points, "must be >= 2")
        self.solver.check(f"{key}.solver")


def run(
    model: DiffusionModel,
    cfg: PullbackConfig,
    sampler: SamplerConfig,
    location: str,
    progress: bool = True,
    work: WorkCache | None = None,
) -> StepResult:
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
    details = {
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
    metrics = {  # the headline; per-t values are in the plots, lists and the segment in the details
        **{key: details[key] for key in ("products", "converged", "edit_step", "late_over_early_frequency")},
        "curvedness": curvedness["curvedness"],
        "mean_transport_alignment": float(transport_alignment.mean()),
    }
    plots = {"pullback_spectrum": spectrum_rows, "pullback_psd": psd_rows, "pullback_tangent_distance": distance_rows}
    timings = {"seconds": seconds, "resumed": work.resumed}
    return StepResult({"pullback": local_file, "pullback_global": global_file}, plots, metrics, pictures, timings,
                      details)  # fmt: skip


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

