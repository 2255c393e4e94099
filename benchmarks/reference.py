"""The papers' own Jacobian spectral schemes, written from the papers (Haas et al. 2024; Park et al. 2023),
for benchmarking.

Both run on a :class:`pipeline.linalg.LinearOperator` J: R^d -> R^m (float64 products), so that they use the
same product engine as the project's solver and a comparison isolates the algorithms. Products are counted
as single-vector applications (one J v or one J^T u each), however they are batched.

* :func:`sequential_power_iteration` (paper A, 2.2): power iteration on J J^T in output space, one vector at a
  time with deflation; every J^T w and J g is a separate single-vector product, as in the reference code.
* :func:`subspace_iteration` (paper B, 3.2): U = J V in forward-mode chunks of 25 columns, then M = U^T J
  with one reverse pass per row, and V <- right singular vectors of M.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from pipeline.io.errors import ConfigError
from pipeline.linalg import LinearOperator

POWER_K = 3
POWER_TOLERANCE = 1e-5
POWER_MAX_ITERS = 50
POWER_PATIENCE = 10
"""Power iteration stops once the convergence counter exceeds this (11 hits; the counter is never reset)."""

SUBSPACE_N = 50
SUBSPACE_MIN_ITER = 10
SUBSPACE_MAX_ITER = 50
SUBSPACE_THRESHOLD = 1e-4
SUBSPACE_RTOL = 1e-5
SUBSPACE_CHUNK = 25
"""Columns of V per forward-mode call in the reference (pixel models)."""


@dataclass
class ReferenceResult:
    """Output of a reference scheme (float64, CPU).

    Attributes:
        singular_values: [k] estimates of the top singular values sigma_i (as the scheme returns them; not
            re-sorted).
        right_vectors: [k, d] rows; estimates of the top right singular vectors (input space of J). For power
            iteration these are u = J^T w / sigma, not exactly orthonormal.
        left_vectors: [k, m] rows in output space (power iteration: the unit w; subspace iteration: U = J V of
            the previous iterate, unnormalised, as the reference returns it).
        products: single-vector Jacobian products used (J v and J^T u each count one).
        jvps: how many of them were J v.
        vjps: how many were J^T u.
        iterations: per vector for power iteration ([k]), or one entry for subspace iteration.
        converged: whether the scheme's own stopping test fired (per vector for power iteration, else one).
        seconds: wall-clock time of the run (time.perf_counter; CUDA synchronised at the ends).
    """

    singular_values: torch.Tensor
    right_vectors: torch.Tensor
    left_vectors: torch.Tensor
    products: int
    jvps: int
    vjps: int
    iterations: list[int]
    converged: list[bool]
    seconds: float


def synchronize(device: torch.device) -> None:
    """Wait for queued CUDA work on ``device`` (no-op elsewhere), so that wall-clock times are complete."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def sequential_power_iteration(
    op: LinearOperator,
    k: int = POWER_K,
    *,
    tolerance: float = POWER_TOLERANCE,
    max_iters: int = POWER_MAX_ITERS,
    seed: int = 0,
) -> ReferenceResult:
    """Paper A's sequential power iteration with deflation (Haas et al. 2024), one vector at a time.

    For each of the ``k`` vectors: draw w ~ N(0, I_m) orthogonalised against the output vectors W already found
    (the [R] fix; the reference reuses the previous vector) and normalise it; then up to ``max_iters`` times:
    g = J^T w (one VJP), y = J g (one JVP), deflate y <- y - W (W^T W)^-1 W^T y, lambda = ||y||, w = y / lambda.
    Each time |lambda - lambda_prev| < ``tolerance`` (absolute, on lambda = sigma^2) a counter is incremented
    (never reset); the vector is done once it exceeds 10. Returns sigma = sqrt(lambda) and u = g / sigma, with
    g the VJP of the last iteration's starting w.

    Args:
        op: J of shape (m, d), single operator, float64 products.
        k: number of singular triplets, 1 <= k <= min(m, d).
        tolerance: absolute threshold on the change of lambda between iterations.
        max_iters: most iterations per vector.
        seed: seed of the CPU generator that draws the start vectors.

    Returns:
        :class:`ReferenceResult` with singular values [k], right vectors u [k, d], left vectors w [k, m].
    """
    rows, columns = _check_operator(op)
    _check_count("k", k, min(rows, columns))
    _check_count("max_iters", max_iters, None)
    _check_positive_number("tolerance", tolerance)
    generator = torch.Generator("cpu").manual_seed(_check_int("seed", seed))
    found_w: list[torch.Tensor] = []
    sigmas, right, iterations, converged = [], [], [], []
    jvps = vjps = 0
    synchronize(op.device)
    start = time.perf_counter()
    for _ in range(k):
        w = _deflate(torch.randn(rows, generator=generator, dtype=torch.float64).to(op.device), found_w)
        w = w / w.norm()
        lam_prev, hits, lam, done, steps = math.inf, 0, 0.0, False, 0
        g = torch.zeros(columns, dtype=torch.float64, device=op.device)
        for _ in range(max_iters):
            g = op.rmatmat(w.unsqueeze(1))[:, 0]
            y = op.matmat(g.unsqueeze(1))[:, 0]
            vjps, jvps, steps = vjps + 1, jvps + 1, steps + 1
            y = _deflate(y, found_w)
            lam = float(y.norm())
            if lam == 0.0:  # J^T w = 0: w lies in the null space left after deflation
                done = True
                break
            w = y / lam
            if abs(lam - lam_prev) < tolerance:
                hits += 1
            if hits > POWER_PATIENCE:
                done = True
                break
            lam_prev = lam
        sigma = math.sqrt(lam)
        sigmas.append(sigma)
        right.append(g / sigma if sigma > 0 else g)
        found_w.append(w)
        iterations.append(steps)
        converged.append(done)
    synchronize(op.device)
    seconds = time.perf_counter() - start
    return ReferenceResult(
        singular_values=torch.tensor(sigmas, dtype=torch.float64),
        right_vectors=torch.stack(right).cpu(),
        left_vectors=torch.stack(found_w).cpu(),
        products=jvps + vjps,
        jvps=jvps,
        vjps=vjps,
        iterations=iterations,
        converged=converged,
        seconds=seconds,
    )


def subspace_iteration(
    op: LinearOperator,
    n: int = SUBSPACE_N,
    *,
    min_iter: int = SUBSPACE_MIN_ITER,
    max_iter: int = SUBSPACE_MAX_ITER,
    threshold: float = SUBSPACE_THRESHOLD,
    chunk: int = SUBSPACE_CHUNK,
    seed: int = 0,
) -> ReferenceResult:
    """Paper B's Jacobian subspace iteration as coded (Park et al. 2023).

    V = Q of the QR of randn(d, n); each iteration i: U = J V (``matmat`` on ``chunk``-column pieces, one
    batched forward-mode call each), M = U^T J [n, d] with one single-column ``rmatmat`` per row (n reverse
    passes), thin SVD M = P S Q^T and V^T <- Q^T. Before comparing, each new row is flipped to agree in sign with
    the previous one (the [R] fix); the loop stops when ``allclose(V_prev^T, V_new^T, atol=threshold,
    rtol=1e-5)`` and i > ``min_iter`` (so at least min_iter + 2 iterations), or after ``max_iter``.
    Returns s = sqrt(S) (M = V^T J^T J has singular values ~ sigma^2), the rows of V^T and the last U.

    Args:
        op: J of shape (m, d), single operator, float64 products.
        n: basis size (``pca_rank``), 1 <= n <= min(m, d).
        min_iter: the stopping test is only honoured once i > min_iter.
        max_iter: most iterations.
        threshold: absolute tolerance of the elementwise comparison of consecutive V^T.
        chunk: columns per forward-mode call for U = J V.
        seed: seed of the CPU generator of the start matrix.

    Returns:
        :class:`ReferenceResult` with singular values [n], right vectors [n, d] (orthonormal rows), left
        vectors U^T [n, m] (unnormalised).
    """
    rows, columns = _check_operator(op)
    _check_count("n", n, min(rows, columns))
    _check_count("max_iter", max_iter, None)
    _check_count("chunk", chunk, None)
    if _as_int(min_iter) is None or min_iter < 0:
        raise ConfigError(f"min_iter {min_iter!r}: must be a non-negative integer")
    _check_positive_number("threshold", threshold)
    generator = torch.Generator("cpu").manual_seed(_check_int("seed", seed))
    synchronize(op.device)
    start = time.perf_counter()
    basis = torch.linalg.qr(torch.randn(columns, n, generator=generator, dtype=torch.float64)).Q.to(op.device)
    rows_v = basis.mT  # Vt [n, d]
    images = torch.zeros(rows, n, dtype=torch.float64, device=op.device)
    squared = torch.zeros(n, dtype=torch.float64, device=op.device)
    jvps = vjps = steps = 0
    done = False
    for iteration in range(max_iter):
        images = torch.cat([op.matmat(rows_v[b : b + chunk].mT) for b in range(0, n, chunk)], dim=1)  # U [m, n]
        jvps += n
        projected = torch.stack([op.rmatmat(images[:, b : b + 1])[:, 0] for b in range(n)])  # M = U^T J [n, d]
        vjps += n
        _, squared, new_rows = torch.linalg.svd(projected, full_matrices=False)
        signs = torch.sign((new_rows * rows_v).sum(dim=1))
        new_rows = new_rows * torch.where(signs == 0, torch.ones_like(signs), signs).unsqueeze(1)
        settled = torch.allclose(rows_v.cpu(), new_rows.cpu(), atol=threshold, rtol=SUBSPACE_RTOL)
        rows_v = new_rows
        steps = iteration + 1
        if settled and iteration > min_iter:
            done = True
            break
    synchronize(op.device)
    seconds = time.perf_counter() - start
    return ReferenceResult(
        singular_values=squared.clamp(min=0).sqrt().cpu(),
        right_vectors=rows_v.cpu(),
        left_vectors=images.mT.cpu(),
        products=jvps + vjps,
        jvps=jvps,
        vjps=vjps,
        iterations=[steps],
        converged=[done],
        seconds=seconds,
    )


def _deflate(vector: torch.Tensor, found: list[torch.Tensor]) -> torch.Tensor:
    """vector - W (W^T W)^-1 W^T vector for W = [found] as columns (vector itself when nothing is found)."""
    if not found:
        return vector
    basis = torch.stack(found, dim=1)
    coefficients = torch.linalg.solve(basis.mT @ basis, basis.mT @ vector)
    return vector - basis @ coefficients


def _check_operator(op: LinearOperator) -> tuple[int, int]:
    if op.batch_shape:
        raise ConfigError(f"operator: the reference schemes take one operator, got a batch of shape {op.batch_shape}")
    return op.shape


def _check_count(name: str, value: int, upper: int | None) -> int:
    number = _as_int(value)
    if number is None or number < 1 or (upper is not None and number > upper):
        bound = "" if upper is None else f" <= {upper}"
        raise ConfigError(f"{name} {value!r}: must be an integer >= 1{bound}")
    return number


def _check_int(name: str, value: int) -> int:
    number = _as_int(value)
    if number is None:
        raise ConfigError(f"{name} {value!r}: must be an integer")
    return number


def _check_positive_number(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(f"{name} {value!r}: must be a positive number")


def _as_int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    try:
        return int(value.__index__())  # type: ignore[attr-defined]
    except (AttributeError, TypeError):
        return None
