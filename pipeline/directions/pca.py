"""Global h-space directions by principal component analysis of h over many samples (docs/methods.md, "PCA directions").

Two analyses of the same data h [N, T, *h_shape] (N samples, T steps, D = prod(h_shape)):

* **per-step** ("pca_per_step"): for every step index t, the top-K principal axes u_{k,t} of h_t over the
  samples, centred by the per-step mean; scale std_{k,t} = s_{k,t} / sqrt(N - 1), so ``delta(k, alpha)``
  is alpha standard deviations at every step.
* **all-step** ("pca_all_steps"): the top-K principal axes of the concatenation over steps, [N, T D]
  (centred by the same per-step means); one unit-norm vector over all steps and one std per component.

Both come from :func:`pipeline.linalg.randomized_svd` on a :class:`pipeline.linalg.StreamedRows` over the
data; the per-step problems are solved together, so each product is one pass over the data for all T.
The search subspace has width min(K + oversampling, N, D): at full width the axes are exact up to rounding.

Signs:

1. every axis (each per-step u_{k,t}, and each all-step vector as a whole) has its largest-magnitude
   entry positive (sklearn's ``svd_flip`` rule). The reference code makes the *first* coordinate
   positive instead; that coordinate can be close to 0, where rounding flips the sign, while the largest
   entry has magnitude >= 1/sqrt(D).
2. per-step axes only: for every k and step t >= 1, u_{k,t} is flipped when <u_{k,0}, u_{k,t}> < 0, so a
   component points the same way at every step, step 0 (the noisiest) being the reference. All-step
   vectors are never re-signed per step (that would change the vector).

Explained variance ratios (s_k^2 over the total sum of squared centred entries, per step or over all
steps) and the total variances go into ``extra``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch

from pipeline.directions.format import Directions, Origin
from pipeline.io.errors import ConfigError
from pipeline.linalg import (
    DEFAULT_OVERSAMPLING,
    DEFAULT_POWER_ITERATIONS,
    StreamedRows,
    randomized_svd,
)

DEFAULT_BATCH_SIZE = 256


@dataclass(frozen=True)
class PCAResult:
    """Per-step and all-step principal directions of the same data.

    Attributes:
        per_step: method "pca_per_step": directions [K, T, *h_shape] (unit norm at every step),
            singular_values and scales (std) [K, T]; extra ``explained_variance_ratio`` [K][T] and
            ``total_variance`` [T].
        all_steps: method "pca_all_steps": directions [K, T, *h_shape] (unit norm over all steps together),
            singular_values and scales (std) [K]; extra ``explained_variance_ratio`` [K] and
            ``total_variance``.
    """

    per_step: Directions
    all_steps: Directions


def pca_directions(
    h: torch.Tensor,
    n_components: int,
    origin: Origin,
    *,
    oversampling: int = DEFAULT_OVERSAMPLING,
    power_iterations: int = DEFAULT_POWER_ITERATIONS,
    seed: int = 0,
    batch_size: int = DEFAULT_BATCH_SIZE,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> PCAResult:
    """Per-step and all-step PCA of in-memory h [N, T, *h_shape] (N >= 2 samples).

    Args:
        h: clean h of N samples at T step indices (``origin.steps``, or all sampler steps).
        n_components: K, at most min(N, D) with D = prod(h_shape).
        origin: provenance written into both results.
        oversampling, power_iterations, seed: randomized SVD settings (:func:`pipeline.linalg.randomized_svd`).
        batch_size: samples converted to float64 at a time (bounds the working memory).
        dtype: dtype of the returned directions, singular values and scales (computation is float64).
        device: where the products run (default CPU); results are on the CPU.
    """
    if not isinstance(h, torch.Tensor) or h.dim() < 3:
        shape = tuple(h.shape) if isinstance(h, torch.Tensor) else type(h).__name__
        raise ConfigError(f"h shape {shape}: expected [N, T, *h_shape]")
    if _positive_int(batch_size) is None:
        raise ConfigError(f"batch_size {batch_size!r}: must be a positive integer")
    flat = h.flatten(2)
    mean = flat.mean(dim=0, dtype=torch.float64)
    stream = StreamedRows(lambda: flat.split(batch_size), mean=mean, num_rows=len(h), device=device)
    return _pca(stream, n_components, origin, tuple(h.shape[2:]), oversampling, power_iterations, seed, dtype)


def pca_directions_streaming(
    batches: Callable[[], Iterable[torch.Tensor]],
    n_components: int,
    origin: Origin,
    *,
    h_shape: Sequence[int],
    mean: torch.Tensor | None = None,
    num_samples: int | None = None,
    oversampling: int = DEFAULT_OVERSAMPLING,
    power_iterations: int = DEFAULT_POWER_ITERATIONS,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> PCAResult:
    """Per-step and all-step PCA of h streamed in batches, never holding all samples in memory.

    Args:
        batches: zero-argument callable returning a fresh iterable of batches [n, T, *h_shape] or [n, T, D]
            (D = prod(h_shape)), the same samples in the same order on every call. Without ``mean`` they
            must already be centred by the per-step mean over all samples (for example the store's
            ``centered_batches``); with it they are raw h.
        n_components: K, at most min(N, D).
        origin: provenance written into both results.
        h_shape: per-sample shape of h, used to shape the directions.
        mean: per-step mean [T, *h_shape] or [T, D] over all N samples, subtracted in float64; None when
            the batches are centred already.
        num_samples: N if known; otherwise a first pass over the stream counts it.
        oversampling, power_iterations, seed: randomized SVD settings. The stream is read
            power_iterations + 2 times for each of the two analyses.
        dtype: dtype of the returned tensors (computation is float64).
        device: where the products run (default CPU); results are on the CPU.
    """
    h_shape = tuple(int(size) for size in h_shape)
    features = math.prod(h_shape)
    flat_mean = None if mean is None else mean.reshape(mean.shape[0], -1)

    def flat_batches() -> Iterable[torch.Tensor]:
        for batch in batches():
            if batch.dim() < 3 or math.prod(batch.shape[2:]) != features:
                raise ConfigError(
                    f"batch shape {tuple(batch.shape)}: expected [n, T, *{h_shape}] or [n, T, {features}]"
                )
            yield batch.reshape(batch.shape[0], batch.shape[1], features)

    stream = StreamedRows(flat_batches, mean=flat_mean, num_rows=num_samples, device=device)
    return _pca(stream, n_components, origin, h_shape, oversampling, power_iterations, seed, dtype)


def _pca(
    stream: StreamedRows,
    n_components: int,
    origin: Origin,
    h_shape: tuple[int, ...],
    oversampling: int,
    power_iterations: int,
    seed: int,
    dtype: torch.dtype,
) -> PCAResult:
    """Both analyses of a centred stream of rows [n, T, D]."""
    samples = stream.num_rows
    steps, features = stream.row_shape
    if samples < 2:
        raise ConfigError(f"samples {samples}: PCA needs at least 2")
    if _positive_int(n_components) is None or n_components > min(samples, features):
        raise ConfigError(
            f"n_components {n_components!r}: must be an integer in [1, min(samples, features)] = "
            f"[1, min({samples}, {features})]"
        )
    settings = {"oversampling": oversampling, "power_iterations": power_iterations, "seed": seed}
    names = [f"pc{k}" for k in range(n_components)]

    per_step = randomized_svd(stream.stacked_operator(), n_components, **settings)
    step_totals = stream.squared_norms.cpu()
    axes = per_step.right_vectors.transpose(0, 1).cpu()  # [K, T, D]
    agreement = (axes * axes[:, :1]).sum(dim=-1)
    axes = axes * torch.where(agreement < 0, -1.0, 1.0).to(axes.dtype).unsqueeze(-1)
    step_values = per_step.singular_values.T.cpu()  # [K, T]
    per_step_result = Directions(
        directions=axes.reshape(n_components, steps, *h_shape).to(dtype),
        method="pca_per_step",
        space="h",
        names=names,
        origin=origin,
        singular_values=step_values.to(dtype),
        scales=(step_values / math.sqrt(samples - 1)).to(dtype),
        extra={
            "explained_variance_ratio": _ratios(step_values, step_totals).tolist(),
            "total_variance": (step_totals / (samples - 1)).tolist(),
            "num_samples": samples,
            "svd": settings,
        },
    )

    all_steps = randomized_svd(stream.operator(), n_components, **settings)
    total = stream.squared_norms.cpu().sum()
    values = all_steps.singular_values.cpu()
    all_steps_result = Directions(
        directions=all_steps.right_vectors.cpu().reshape(n_components, steps, *h_shape).to(dtype),
        method="pca_all_steps",
        space="h",
        names=names,
        origin=origin,
        singular_values=values.to(dtype),
        scales=(values / math.sqrt(samples - 1)).to(dtype),
        extra={
            "explained_variance_ratio": _ratios(values, total).tolist(),
            "total_variance": float(total / (samples - 1)),
            "num_samples": samples,
            "svd": settings,
        },
    )
    return PCAResult(per_step=per_step_result, all_steps=all_steps_result)


def _ratios(singular_values: torch.Tensor, totals: torch.Tensor) -> torch.Tensor:
    """s^2 / total (0 where the total is 0); ``singular_values`` [K] or [K, T], ``totals`` [] or [T]."""
    safe = torch.where(totals > 0, totals, torch.ones_like(totals))
    return torch.where(totals > 0, singular_values.square() / safe, torch.zeros_like(singular_values))


def _positive_int(value: object) -> int | None:
    """``value`` if it is a positive int (not bool), else None."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        return None
    return value
