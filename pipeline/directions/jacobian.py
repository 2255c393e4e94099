"""Image-specific Jacobian directions (Haas et al. 2024; docs/methods.md, "Jacobian directions"): the top right
singular vectors of d(mask * eps)/d h at each step of one sample's own trajectory, with x_t and the skip
connections fixed.

The trajectory reuses the sample's stored variance noise (the reference code draws fresh noise, so its
Jacobians belong to another trajectory). Spectra come from the shared block Krylov solver
(:func:`pipeline.linalg.jacobian_svd`) instead of the reference's sequential power iteration.

Applying a direction (``apply``): ``"global"`` uses the vector of one source step at every step, scaled
by each step's own singular value (the paper's default); ``"per_step"`` uses each step's own vector,
signed to agree with the source step's. The file's scales are ``unit * sigma_{k,j}``, so scale 1 is the
paper's alpha = ``unit``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from pipeline.diffusion.hspace import eps_of_h
from pipeline.diffusion.models import DiffusionModel
from pipeline.diffusion.sampling import ddim_grid, denoise_steps
from pipeline.directions.format import Directions, Origin
from pipeline.directions.masks import check_mask
from pipeline.io.errors import ConfigError
from pipeline.linalg import SolverConfig, frozen, jacobian_svd

APPLY_MODES = ("global", "per_step")


@dataclass
class JacobianSpectra:
    """Spectra of one sample's denoiser Jacobians at S steps.

    Attributes:
        singular_values: [k, S] sigma_{k,j} (eps units per h unit), non-increasing in k.
        vectors: [k, S, *h_shape] unit right singular vectors u_{k,j} (canonical signs per step).
        steps: [S] int64 grid step indices (0 = noisiest).
        timesteps: [S] int64 scheduler timesteps.
        products: Jacobian products spent (J v and J^T u each count one).
        converged: whether every step met the solver's tolerance.
    """

    singular_values: torch.Tensor
    vectors: torch.Tensor
    steps: torch.Tensor
    timesteps: torch.Tensor
    products: int
    converged: bool

    def to_tensors(self) -> dict[str, torch.Tensor]:
        """The spectra as a dict of tensors (for :class:`pipeline.io.files.WorkCache`)."""
        counts = torch.tensor([self.products, int(self.converged)], dtype=torch.int64)
        return {"singular_values": self.singular_values, "vectors": self.vectors, "steps": self.steps,
                "timesteps": self.timesteps, "counts": counts}  # fmt: skip

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> JacobianSpectra:
        """Inverse of :meth:`to_tensors`."""
        products, converged = tensors["counts"].tolist()
        return cls(tensors["singular_values"], tensors["vectors"], tensors["steps"], tensors["timesteps"],
                   products, bool(converged))  # fmt: skip


def jacobian_spectra(
    model: DiffusionModel,
    x_T: torch.Tensor,
    noise: torch.Tensor | None,
    *,
    steps: int,
    eta: float,
    location: str,
    step_indices: Sequence[int],
    k: int,
    solver: SolverConfig,
    mask: torch.Tensor | None = None,
    progress: bool = False,
) -> JacobianSpectra:
    """Top-k right singular vectors of d(mask * eps)/d h at the listed steps of one sample's trajectory.

    Args:
        x_T: [C, H, W] the sample's starting noise.
        noise: [T, C, H, W] its stored variance noise (required when eta > 0).
        steps, eta: the sampler grid and stochasticity the sample was drawn with.
        location: h-space site.
        step_indices: grid steps to analyse (ascending, distinct).
        k: directions per step, 1 <= k <= min(dim h, dim eps).
        solver: Krylov settings.
        mask: optional [1 or C, H, W] region weights on eps (None: the whole image).
        progress: tqdm bar over the steps.
    """
    grid = ddim_grid(model.scheduler, steps)
    indices = sorted(set(int(i) for i in step_indices))
    if not indices or indices[0] < 0 or indices[-1] >= grid.num_steps:
        raise ConfigError(f"steps {list(step_indices)}: expected step indices in [0, {grid.num_steps})")
    if mask is not None:
        check_mask(mask, model.sample_shape)
    _, states = denoise_steps(
        model,
        x_T.reshape(1, *model.sample_shape),
        steps=steps,
        eta=eta,
        noise=None if noise is None else noise.reshape(1, *noise.shape[-4:]),
        stop_step=indices[-1] + 1,
        record_steps=indices,
    )
    values, vectors, products, converged = [], [], 0, True
    with frozen(model.unet):
        for step_index in tqdm(indices, desc="jacobian", unit="step", disable=not progress):
            timestep = int(grid.timesteps[step_index])
            x_t = states[step_index][0].to(model.device, torch.promote_types(model.unet.dtype, torch.float32))
            function, clean_h = eps_of_h(model, x_t, timestep, location, mask)
            result = jacobian_svd(function, clean_h, k, solver)
            values.append(result.singular_values)
            vectors.append(result.right_vectors.reshape(k, *clean_h.shape).float().cpu())
            products += result.products
            converged &= result.converged
    return JacobianSpectra(
        singular_values=torch.stack(values, dim=1).float().cpu(),
        vectors=torch.stack(vectors, dim=1),
        steps=torch.tensor(indices, dtype=torch.int64),
        timesteps=grid.timesteps[indices].clone(),
        products=products,
        converged=converged,
    )


def jacobian_directions(
    spectra: Sequence[JacobianSpectra],
    seeds: Sequence[int],
    origin: Origin,
    *,
    apply: str = "global",
    source_step: int,
    unit: float,
) -> Directions:
    """The "jacobian" directions file: for every sample (seed) and k, a direction [S, *h_shape] over the
    analysed steps, named ``seed<seed>/k<k>``.

    Args:
        spectra: one :class:`JacobianSpectra` per seed, all over the same steps.
        seeds: the samples' seeds.
        origin: model, h site, sampler grid (its steps/timesteps are replaced by the analysed ones).
        apply: "global" (the source step's vector at every step) or "per_step" (each step's own vector).
        source_step: grid step index whose vectors "global" uses and "per_step" aligns signs to.
        unit: alpha of scale 1 (file scales = unit * sigma_{k,j}).
    """
    if apply not in APPLY_MODES:
        raise ConfigError(f"directions.jacobian.apply {apply!r}: expected one of {', '.join(APPLY_MODES)}")
    if len(spectra) != len(seeds) or not spectra:
        raise ConfigError(f"seeds: {len(seeds)} seeds for {len(spectra)} spectra")
    steps = spectra[0].steps
    if any(not torch.equal(item.steps, steps) for item in spectra):
        raise ConfigError("spectra: every sample must be analysed at the same steps")
    if source_step not in steps.tolist():
        raise ConfigError(
            f"directions.jacobian.source_step {source_step}: not among the analysed steps {steps.tolist()}"
        )
    position = steps.tolist().index(source_step)
    directions, values, names = [], [], []
    for seed, item in zip(seeds, spectra, strict=True):
        source = item.vectors[:, position : position + 1]  # [k, 1, *h]
        if apply == "global":
            vectors = source.expand_as(item.vectors)
        else:
            agreement = (item.vectors * source).flatten(2).sum(-1)  # [k, S]
            signs = torch.where(agreement < 0, -1.0, 1.0)
            vectors = item.vectors * signs.reshape(*signs.shape, *([1] * (item.vectors.dim() - 2)))
        directions.append(vectors)
        values.append(item.singular_values)
        names += [f"seed{seed}/k{index}" for index in range(len(item.vectors))]
    singular_values = torch.cat(values)
    return Directions(
        directions=torch.cat(directions).contiguous(),
        method="jacobian",
        space="h",
        names=names,
        origin=Origin(
            model_id=origin.model_id,
            hspace_location=origin.hspace_location,
            sampler_steps=origin.sampler_steps,
            eta=origin.eta,
            timesteps=spectra[0].timesteps,
            steps=steps,
        ),
        singular_values=singular_values,
        scales=unit * singular_values,
        extra={
            "apply": apply,
            "source_step": source_step,
            "unit": unit,
            "seeds": [int(seed) for seed in seeds],
            "products": [item.products for item in spectra],
            "converged": all(item.converged for item in spectra),
        },
    )
