"""Pullback directions (Park et al. 2023; docs/methods.md, "Pullback directions"): the local latent basis
of x_t, edits by x-space guidance, transport between samples and global directions.

The encoder map f(x_t) = h(x_t, t) (the UNet up to the h site) pulls the Euclidean metric of h-space back
to x_t. Its top right singular vectors v_i (orthonormal, in x_t) are the directions that move h most per
unit of x; u_i = J v_i / sigma_i is the matching tangent basis in h. Both come from the shared block
Krylov solver, exactly (no sign flip or one-iteration lag between u and v as in the reference code).

An edit is applied once, at one step: x-space guidance moves x_t so that its own eps follows the shift
along c v, then DDIM denoises to x_0, with the "quality boost" (eta = 1 on the last
steps, with seeded noise) where configured.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from pipeline.diffusion.hspace import h_of_x
from pipeline.diffusion.models import DiffusionModel
from pipeline.diffusion.sampling import DDIMGrid, ddim_grid, denoise_steps, initial_noise
from pipeline.io.errors import ConfigError
from pipeline.linalg import SolverConfig, frozen, jacobian_svd


@dataclass
class LocalBasis:
    """The pullback basis of one x_t.

    Attributes:
        v: [n, *x_shape] orthonormal latent directions in x_t (canonical signs).
        u: [n, *h_shape] unit tangent directions in h, u_i = J v_i / sigma_i.
        singular_values: [n] sigma_i = ||J v_i|| (h units per x unit), non-increasing.
        step: grid step index of x_t; timestep: its scheduler timestep.
        products: Jacobian products spent; converged: whether the solver met its tolerance.
    """

    v: torch.Tensor
    u: torch.Tensor
    singular_values: torch.Tensor
    step: int
    timestep: int
    products: int
    converged: bool

    def to_tensors(self) -> dict[str, torch.Tensor]:
        """The basis as a dict of tensors (for :class:`pipeline.io.files.WorkCache`)."""
        counts = torch.tensor([self.step, self.timestep, self.products, int(self.converged)], dtype=torch.int64)
        return {"v": self.v, "u": self.u, "singular_values": self.singular_values, "counts": counts}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> LocalBasis:
        """Inverse of :meth:`to_tensors`."""
        step, timestep, products, converged = tensors["counts"].tolist()
        return cls(tensors["v"], tensors["u"], tensors["singular_values"], step, timestep, products, bool(converged))


def step_for_fraction(grid: DDIMGrid, fraction: float, num_train_timesteps: int) -> int:
    """Grid step index whose timestep is closest to ``fraction * num_train_timesteps`` (1.0 = noisiest)."""
    if not 0.0 <= fraction <= 1.0:
        raise ConfigError(f"t {fraction!r}: must be a fraction of the schedule in [0, 1] (t_edit outside it)")
    target = fraction * num_train_timesteps
    return int((grid.timesteps.double() - target).abs().argmin())


def states_at(
    model: DiffusionModel,
    x_T: torch.Tensor,
    noise: torch.Tensor | None,
    *,
    steps: int,
    eta: float,
    step_indices: Sequence[int],
) -> dict[int, torch.Tensor]:
    """x_t [B, C, H, W] just before each listed grid step, along the samples' own trajectories."""
    if not step_indices:
        raise ConfigError("step_indices: empty")
    _, states = denoise_steps(
        model, x_T, steps=steps, eta=eta, noise=noise, stop_step=max(step_indices) + 1, record_steps=step_indices
    )
    return states


def local_basis(
    model: DiffusionModel,
    x_t: torch.Tensor,
    step: int,
    *,
    steps: int,
    n: int,
    location: str,
    solver: SolverConfig,
) -> LocalBasis:
    """The top-``n`` pullback basis of d h / d x_t at one x_t [C, H, W] and grid step ``step``."""
    grid = ddim_grid(model.scheduler, steps)
    if not 0 <= step < grid.num_steps:
        raise ConfigError(f"step {step}: t_edit outside the schedule's grid [0, {grid.num_steps})")
    timestep = int(grid.timesteps[step])
    point = x_t.to(model.device, torch.promote_types(model.unet.dtype, torch.float32))
    with frozen(model.unet):
        result = jacobian_svd(h_of_x(model, timestep, location), point, n, solver, compute_left=True)
    assert result.left_vectors is not None
    with torch.no_grad(), frozen(model.unet):
        h_shape = h_of_x(model, timestep, location)(point.unsqueeze(0)).shape[1:]
    return LocalBasis(
        v=result.right_vectors.reshape(n, *x_t.shape).float().cpu(),
        u=result.left_vectors.reshape(n, *h_shape).float().cpu(),
        singular_values=result.singular_values.float().cpu(),
        step=step,
        timestep=timestep,
        products=result.products,
        converged=result.converged,
    )


def guidance_edit(
    model: DiffusionModel,
    x_t: torch.Tensor,
    direction: torch.Tensor,
    timestep: int,
    scales: Sequence[float],
    *,
    step_size: float,
    iterations: int,
) -> torch.Tensor:
    """x-space guidance of one x_t [C, H, W] along ``direction`` [C, H, W] (v, unit norm
    expected) at every strength c of ``scales`` (0 returns x_t unchanged): edited x_t [S, C, H, W].
    See :func:`guidance_rows`."""
    if direction.shape != x_t.shape:
        raise ConfigError(f"direction shape {tuple(direction.shape)}: expected {tuple(x_t.shape)} like x_t")
    strengths = torch.as_tensor(list(scales), dtype=torch.float32)
    rows = x_t.unsqueeze(0).repeat(len(strengths), 1, 1, 1)
    return guidance_rows(model, rows, direction, strengths, timestep, step_size=step_size, iterations=iterations)


@torch.no_grad()
def guidance_rows(
    model: DiffusionModel,
    x_t: torch.Tensor,
    direction: torch.Tensor,
    strengths: torch.Tensor,
    timestep: int,
    *,
    step_size: float,
    iterations: int,
    batch_size: int = 64,
) -> torch.Tensor:
    """x-space guidance for many x_t at once: row b of x_t [B, C, H, W] follows ``direction`` [C, H, W] with
    strength c = ``strengths[b]``, N = ``iterations`` updates x <- x + gamma * (eps(x + c v, t) - eps(x, t))
    with gamma = ``step_size``, ``batch_size`` rows per UNet call; returns the edited x_t [B, C, H, W] (CPU).
    A text-conditioned model's eps are those of its edit prompt, without classifier-free guidance."""
    if iterations < 0 or step_size < 0:
        raise ConfigError(f"guidance: iterations {iterations} and step_size {step_size} must be >= 0")
    dtype = torch.promote_types(model.unet.dtype, torch.float32)
    v = direction.to(model.device, dtype).unsqueeze(0)
    edited = []
    for rows, c in zip(x_t.split(batch_size), strengths.split(batch_size), strict=True):
        x = rows.to(model.device, dtype)
        c = c.to(model.device, dtype).reshape(-1, 1, 1, 1)
        for _ in range(iterations):
            both = model.eps(torch.cat([x + c * v, x]), timestep, edit=True)
            shifted, plain = both.chunk(2)
            x = x + step_size * (shifted - plain)
        edited.append(x.cpu())
    return torch.cat(edited)


def decode_edited(
    model: DiffusionModel,
    x_t: torch.Tensor,
    step: int,
    *,
    steps: int,
    boost_step: int | None,
    boost_seed: int,
) -> torch.Tensor:
    """Denoise edited x_t [B, C, H, W] from grid step ``step`` to x_0 [B, C, H, W] by DDIM (eta 0), with
    eta = 1 from ``boost_step`` on (the quality boost; None: off), its noise drawn from ``boost_seed`` so
    that every row and every rerun get the same noise."""
    grid = ddim_grid(model.scheduler, steps)
    etas = [0.0] * grid.num_steps
    noise = None
    if boost_step is not None:
        etas[max(boost_step, step) :] = [1.0] * (grid.num_steps - max(boost_step, step))
        _, z = initial_noise(model.sample_shape, [boost_seed], steps, 1.0)
        assert z is not None
        noise = z.expand(len(x_t), -1, -1, -1, -1)
    x_0, _ = denoise_steps(model, x_t, steps=steps, start_step=step, eta=etas, noise=noise)
    return x_0
