"""Top-k singular triplets of a :class:`~pipeline.linalg.operators.LinearOperator` from its products, in float64.

* :func:`randomized_svd`: randomized subspace iteration (Halko, Martinsson and Tropp 2011), for a batch of
  operators solved together; used for the streamed PCA of h (:class:`pipeline.linalg.streamed.StreamedRows`).
* :func:`block_krylov_svd`: block Lanczos on A^T A with full re-orthogonalisation (block Krylov; Musco and
  Musco 2015), several times fewer products than subspace iteration for the same accuracy; used for
  Jacobians, whose every product is a network pass.
* :func:`jacobian_svd` with :class:`SolverConfig`: :func:`block_krylov_svd` of a
  :func:`~pipeline.linalg.operators.jacobian_operator`, as the Jacobian and pullback directions run it
  (docs/methods.md, "Jacobian directions" and "Pullback directions").

Sign convention: each right singular vector is flipped so that its entry of largest magnitude is positive
(the first such entry on ties; sklearn's ``svd_flip(..., u_based_decision=False)`` rule), and its left
singular vector with it (:func:`canonical_signs`). Background: docs/methods.md, "Linear algebra".
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch

from pipeline.io.errors import ConfigError
from pipeline.io.validation import as_int, require
from pipeline.linalg.operators import DEFAULT_CHUNK_SIZE, JACOBIAN_MODES, LinearOperator, jacobian_operator

logger = logging.getLogger(__name__)

DEFAULT_OVERSAMPLING = 10
DEFAULT_POWER_ITERATIONS = 4


@dataclass(frozen=True)
class SVDResult:
    """Top-k singular triplets of an operator (float64), A ≈ sum_i s_i u_i v_i^T.

    Attributes:
        singular_values: [*batch_shape, k] s_i, non-increasing.
        right_vectors: [*batch_shape, k, d] rows v_i (unit norm, mutually orthogonal), signed by the module's
            sign convention.
        left_vectors: [*batch_shape, k, m] rows u_i, or None when not computed. A row whose s_i is 0 is zero.
        products: operator applications to single vectors (A v and A^T u count one each), the cost measure
            that is comparable across solvers and block sizes.
        iterations: power iterations (:func:`randomized_svd`) or Krylov blocks after the first
            (:func:`block_krylov_svd`) run.
        converged: whether the stopping test was met (always True for :func:`randomized_svd`, which runs a fixed
            number of iterations).
    """

    singular_values: torch.Tensor
    right_vectors: torch.Tensor
    left_vectors: torch.Tensor | None
    products: int = 0
    iterations: int = 0
    converged: bool = True


def canonical_signs(rows: torch.Tensor) -> torch.Tensor:
    """Signs [*, k] (+1 or -1, rows' dtype) that make the largest-magnitude entry of each row of ``rows``
    [*, k, d] positive (the first such entry on ties). Multiply ``rows`` by ``signs[..., None]`` to apply.

    The largest entry has magnitude >= 1/sqrt(d) for a unit vector, so the sign is stable under rounding,
    unlike a rule that looks at a fixed coordinate that may be close to 0.
    """
    largest = rows.abs().argmax(dim=-1, keepdim=True)
    signs = torch.sign(rows.gather(-1, largest).squeeze(-1))
    return torch.where(signs == 0, torch.ones_like(signs), signs)


def randomized_svd(
    op: LinearOperator,
    k: int,
    *,
    oversampling: int = DEFAULT_OVERSAMPLING,
    power_iterations: int = DEFAULT_POWER_ITERATIONS,
    seed: int = 0,
    compute_left: bool = False,
) -> SVDResult:
    """Top-``k`` singular values and vectors of ``op`` by randomized subspace iteration, in float64.

    Both variants search the same subspace, range((A^T A)^(q+1) Omega) for a Gaussian d x (k + oversampling)
    start Omega drawn from a CPU generator seeded with ``seed`` (so a result is reproducible from the seed),
    and re-orthonormalise with a QR after every application:

    * without ``op.gram``: Halko et al. Algorithm 4.4, alternating A and A^T, then the SVD of the small
      projected matrix Q^T A. Applications: 2 q + 2 (the left vectors come for free).
    * with ``op.gram``: subspace iteration on A^T A followed by a Rayleigh-Ritz step on it; s_i = sqrt of
      the Ritz values. Applications: q + 2 (+ one ``matmat`` for the left vectors). This squares the
      condition number of the small problem, harmless with float64 products.

    Args:
        op: the operator (float64 products expected).
        k: number of triplets, 1 <= k <= min(m, d).
        oversampling: extra columns of the search subspace (its width is min(k + oversampling, m, d);
            at full width the result is exact up to rounding).
        power_iterations: q >= 0; each one sharpens the separation of s_k from s_(width+1).
        seed: seed of the start matrix.
        compute_left: also return the left singular vectors.

    Returns:
        :class:`SVDResult` with singular values [*batch, k], right vectors [*batch, k, d] and, when asked,
        left vectors [*batch, k, m]; ``products`` counts operator applications to single vectors
        (A v and A^T u each count one; a ``gram`` application counts two).
    """
    rows, columns = op.shape
    if as_int(k) is None or not 1 <= k <= min(rows, columns):
        raise ConfigError(
            f"k {k!r}: must be an integer in [1, min(m, d)] = [1, {min(rows, columns)}] "
            f"for an operator of shape {rows} x {columns}"
        )
    for name, value in (("oversampling", oversampling), ("power_iterations", power_iterations)):
        if as_int(value) is None or value < 0:
            raise ConfigError(f"{name} {value!r}: must be a non-negative integer")
    if as_int(seed) is None:
        raise ConfigError(f"seed {seed!r}: must be an integer")
    width = min(k + oversampling, rows, columns)
    generator = torch.Generator("cpu").manual_seed(seed)
    start = torch.randn((*op.batch_shape, columns, width), generator=generator, dtype=torch.float64)
    start = start.to(op.device)
    if op.gram is None:
        singular_values, right, left = _alternating_iteration(op, start, power_iterations)
    else:
        singular_values, right, left = _gram_iteration(op, start, power_iterations, compute_left)
    if op.gram is None:
        products = (2 * power_iterations + 2) * width
    else:
        products = 2 * (power_iterations + 2) * width + (width if compute_left else 0)
    singular_values, right = singular_values[..., :k], right[..., :k, :]
    signs = canonical_signs(right).unsqueeze(-1)
    left = left[..., :k, :] * signs if compute_left and left is not None else None
    return SVDResult(
        singular_values=singular_values,
        right_vectors=right * signs,
        left_vectors=left,
        products=products,
        iterations=power_iterations,
    )


def _alternating_iteration(
    op: LinearOperator, start: torch.Tensor, power_iterations: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Halko Algorithm 4.4 + SVD of Q^T A: (s [*, w], right rows [*, w, d], left rows [*, w, m])."""
    range_basis = _orthonormal(op.matmat(start))
    for _ in range(power_iterations):
        row_basis = _orthonormal(op.rmatmat(range_basis))
        range_basis = _orthonormal(op.matmat(row_basis))
    projected_transposed = op.rmatmat(range_basis)  # (Q^T A)^T, [*, d, w]
    right_columns, singular_values, small_left_t = torch.linalg.svd(projected_transposed, full_matrices=False)
    left = range_basis @ small_left_t.mT
    return singular_values, right_columns.mT, left.mT


def _gram_iteration(
    op: LinearOperator, start: torch.Tensor, power_iterations: int, compute_left: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Subspace iteration and Rayleigh-Ritz on A^T A: (s [*, w], right rows [*, w, d], left rows or None)."""
    assert op.gram is not None
    basis = _orthonormal(start)
    for _ in range(power_iterations + 1):
        basis = _orthonormal(op.gram(basis))
    ritz_matrix = basis.mT @ op.gram(basis)
    ritz_values, ritz_vectors = torch.linalg.eigh((ritz_matrix + ritz_matrix.mT) / 2)
    ritz_values, ritz_vectors = ritz_values.flip(-1), ritz_vectors.flip(-1)
    singular_values = ritz_values.clamp(min=0).sqrt()
    right_columns = basis @ ritz_vectors
    if not compute_left:
        return singular_values, right_columns.mT, None
    images = op.matmat(right_columns)  # A v_i = s_i u_i
    safe = torch.where(singular_values > 0, singular_values, torch.ones_like(singular_values))
    left = torch.where(singular_values.unsqueeze(-2) > 0, images / safe.unsqueeze(-2), torch.zeros_like(images))
    return singular_values, right_columns.mT, left.mT


def _orthonormal(matrix: torch.Tensor) -> torch.Tensor:
    """Orthonormal basis [*, n, w] of the columns of ``matrix`` [*, n, w] (Householder QR; orthonormal
    even when the columns are rank deficient)."""
    return torch.linalg.qr(matrix, mode="reduced").Q


DEFAULT_KRYLOV_TOLERANCE = 1e-4
DEFAULT_KRYLOV_ITERATIONS = 30


def block_krylov_svd(
    op: LinearOperator,
    k: int,
    *,
    block_size: int | None = None,
    tolerance: float = DEFAULT_KRYLOV_TOLERANCE,
    max_iterations: int = DEFAULT_KRYLOV_ITERATIONS,
    seed: int = 0,
    compute_left: bool = False,
) -> SVDResult:
    """Top-``k`` singular triplets of one operator by block Lanczos (block Krylov) on A^T A, in float64.

    The search space is the block Krylov space span{Q_0, G Q_0, G^2 Q_0, ...} of G = A^T A from a Gaussian start
    Q_0 [d, b] (seeded, CPU generator), kept orthonormal by full re-orthogonalisation (two passes of block
    Gram-Schmidt). For the same accuracy this needs several times fewer products than subspace iteration (Musco
    and Musco 2015; docs/methods.md, "Linear algebra"). Each block costs 2 b products (b J v and b J^T u).

    Two estimates are formed after each block (small eigenproblems, no products):

    * left: the Rayleigh-Ritz step of A A^T on the left space A Q, which the products have already computed.
      With T = Q^T G Q and the Lanczos relation G Q = Q' H (Q' = Q plus the next block), sigma^2 are the
      eigenvalues of T^-1/2 H^T H T^-1/2 and v = Q' H T^-1/2 y / sigma (:func:`_left_ritz`). It is more
      accurate per product than the ordinary step, about one Lanczos step for free.
    * right: the ordinary Rayleigh-Ritz step of G on Q, vectors Q y from T alone (:func:`_right_ritz`).

    Why both: the left vectors are built from the computed products G Q, so they carry the products' rounding,
    and with float32 products their change between iterations can stall above a tight tolerance that the
    ordinary step gets below. Iteration stops when either estimate has settled (:func:`_krylov_settled`):
    between consecutive iterations every one of its top-k singular values moved by less than ``tolerance``
    relative to itself and the largest principal-angle sine between its two top-k subspaces is below
    ``tolerance`` (signs never enter the test). The two are compared through their coordinates in the nested
    basis, so no d-dimensional vector is formed before the end; the settled one is returned (the left one when
    both are, or when none is and ``max_iterations`` ran out). It also stops when the space reaches dimension d
    (then the result is exact). Memory: the basis, d x (b x iterations) float64. Measured convergence and
    timings: benchmarks/README.md, "Solver notes (moved from the code)".

    Args:
        op: one operator (batch_shape ()), float64 products.
        k: number of triplets, 1 <= k <= min(m, d).
        block_size: b, vectors per block (default k); larger blocks batch better and resolve clusters.
        tolerance: convergence threshold on the relative change of singular values and on subspace sines.
        max_iterations: most blocks after the first; the result is returned unconverged (``converged``
            False) when they run out.
        seed: seed of the start block.
        compute_left: also return u_i = A v_i / s_i (k more products).

    Returns:
        :class:`SVDResult` with singular values [k], right vectors [k, d] (canonical signs), left vectors
        [k, m] when asked, the number of single-vector products, the iterations run and whether the test
        was met.
    """
    rows, columns = op.shape
    if op.batch_shape:
        raise ConfigError(f"block_krylov_svd: takes one operator, got a batch of shape {op.batch_shape}")
    if as_int(k) is None or not 1 <= k <= min(rows, columns):
        raise ConfigError(
            f"k {k!r}: must be an integer in [1, min(m, d)] = [1, {min(rows, columns)}] "
            f"for an operator of shape {rows} x {columns}"
        )
    block = k if block_size is None else block_size
    if as_int(block) is None or block < 1:
        raise ConfigError(f"block_size {block_size!r}: must be a positive integer")
    if as_int(max_iterations) is None or max_iterations < 0:
        raise ConfigError(f"max_iterations {max_iterations!r}: must be a non-negative integer")
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not tolerance > 0:
        raise ConfigError(f"tolerance {tolerance!r}: must be a positive number")
    if as_int(seed) is None:
        raise ConfigError(f"seed {seed!r}: must be an integer")
    generator = torch.Generator("cpu").manual_seed(seed)
    block = min(block, columns)

    def gram(vectors: torch.Tensor) -> torch.Tensor:
        return op.rmatmat(op.matmat(vectors))

    basis = _orthonormal(_random(columns, block, generator, op.device))
    image = gram(basis)
    ritz_matrix = basis.mT @ image  # T = Q^T G Q
    products, iterations, converged = 2 * block, 0, False
    previous: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # the last iteration's estimates
    while True:
        if basis.shape[1] >= columns:  # Q spans the whole space: the ordinary Rayleigh-Ritz step is exact
            singular_values, coordinates = _right_ritz(ritz_matrix, k)
            right = basis @ coordinates
            converged = True
            break
        next_block = _extend_orthonormal(basis, image[:, -block:], generator)
        # Lanczos relation G Q = [Q, Q_next] H: T on top, Q_next^T G Q_last in the last columns below.
        below = torch.zeros(next_block.shape[1], basis.shape[1], dtype=basis.dtype, device=basis.device)
        below[:, -image.shape[1] :] = next_block.mT @ image
        hessenberg = torch.cat([ritz_matrix, below])
        # Both estimates as orthonormal coordinates [n + b, k] in [Q, Q_next] (the ordinary one has none on
        # Q_next). The bases are nested (this Q is the last Q plus the last next block), so the last estimates
        # are in the same coordinates, zero beyond their rows: no d-dimensional vectors until the end.
        right_values, right_coordinates = _right_ritz(ritz_matrix, k)
        estimates = {
            "left": _left_ritz(ritz_matrix, hessenberg, k),
            "right": (right_values, torch.nn.functional.pad(right_coordinates, (0, 0, 0, next_block.shape[1]))),
        }
        settled = [
            name
            for name, (values, coordinates) in estimates.items()
            if name in previous and _krylov_settled(values, coordinates, *previous[name], tolerance)
        ]
        converged = bool(settled)
        if converged or iterations >= max_iterations:
            singular_values, coordinates = estimates[settled[0] if settled else "left"]
            right = basis @ coordinates[: basis.shape[1]] + next_block @ coordinates[basis.shape[1] :]
            break
        previous = {name: estimate for name, estimate in estimates.items() if len(estimate[0]) == k}
        new_image = gram(next_block)
        products += 2 * next_block.shape[1]
        cross = basis.mT @ new_image
        corner = next_block.mT @ new_image
        ritz_matrix = torch.cat(
            [torch.cat([ritz_matrix, cross], dim=1), torch.cat([cross.mT, corner], dim=1)], dim=0
        )
        basis = torch.cat([basis, next_block], dim=1)
        image = new_image
        iterations += 1
    if not converged:
        logger.warning(
            "block_krylov_svd: not converged to tolerance %g after %d iterations (%d products)",
            tolerance,
            iterations,
            products,
        )
    signs = canonical_signs(right.mT)
    right_rows = right.mT * signs.unsqueeze(-1)
    left_rows = None
    if compute_left:
        images = op.matmat(right_rows.mT)
        products += k
        safe = torch.where(singular_values > 0, singular_values, torch.ones_like(singular_values))
        left_rows = torch.where(singular_values.unsqueeze(-1) > 0, images.mT / safe.unsqueeze(-1), 0.0)
    return SVDResult(
        singular_values=singular_values,
        right_vectors=right_rows,
        left_vectors=left_rows,
        products=products,
        iterations=iterations,
        converged=converged,
    )


def _right_ritz(ritz_matrix: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` (at most n) Ritz pairs of G on Q from T = Q^T G Q [n, n]: singular values and coordinates [n, k]."""
    values, vectors = torch.linalg.eigh((ritz_matrix + ritz_matrix.mT) / 2)
    top = min(k, values.shape[0])
    return values.flip(-1)[:top].clamp(min=0).sqrt(), vectors.flip(-1)[:, :top]


def _left_ritz(ritz_matrix: torch.Tensor, hessenberg: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` Ritz pairs of A A^T on the left space A Q.

    With T = Q^T G Q [n, n] = E diag(lambda) E^T and G Q = Q' H (``hessenberg`` [n', n]), the orthonormal left
    basis is U = A Q E lambda^-1/2 and A^T U = Q' H E lambda^-1/2 =: Q' C. The SVD of C gives sigma and the
    right vectors' coordinates in Q' ([n', k], unit columns). Directions of T below 1e-12 of its largest
    eigenvalue (A Q nearly rank-deficient there) are dropped; when fewer than k remain (an operator of rank
    < k), the ordinary Rayleigh-Ritz pairs of T on Q are returned instead (zero coordinates on the next block).
    """
    values, vectors = torch.linalg.eigh((ritz_matrix + ritz_matrix.mT) / 2)
    keep = values > values[-1].clamp(min=torch.finfo(values.dtype).tiny) * 1e-12
    if int(keep.sum()) < min(k, values.shape[0]):
        singular_values, on_basis = _right_ritz(ritz_matrix, k)
        coordinates = torch.zeros(hessenberg.shape[0], on_basis.shape[1], dtype=values.dtype, device=values.device)
        coordinates[: values.shape[0]] = on_basis
        return singular_values, coordinates
    whitening = vectors[:, keep] / values[keep].sqrt()
    left_image = hessenberg @ whitening  # C [n', r]
    squared, rotation = torch.linalg.eigh(left_image.mT @ left_image)
    top = min(k, squared.shape[0])
    singular_values = squared.flip(-1)[:top].clamp(min=0).sqrt()
    coordinates = left_image @ rotation.flip(-1)[:, :top]
    coordinates = coordinates / coordinates.norm(dim=0).clamp(min=torch.finfo(coordinates.dtype).tiny)
    return singular_values, coordinates


def _krylov_settled(
    values: torch.Tensor,
    vectors: torch.Tensor,
    previous_values: torch.Tensor,
    previous_vectors: torch.Tensor,
    tolerance: float,
) -> bool:
    """Whether singular values [k] and the subspace of orthonormal columns [n, k] (vectors, or coordinates in an
    orthonormal basis) moved by less than ``tolerance`` since the last step. The previous columns may have fewer
    rows n' <= n: coordinates in a nested basis (the first n' basis vectors), zero beyond."""
    floor = values[0].clamp(min=torch.finfo(values.dtype).tiny) * 1e-12
    value_change = ((values - previous_values).abs() / values.clamp(min=floor)).max()
    cosines = torch.linalg.svdvals(previous_vectors.mT @ vectors[: previous_vectors.shape[0]]).clamp(max=1)
    largest_sine = (1 - cosines.min() ** 2).clamp(min=0).sqrt()
    return bool(value_change < tolerance) and bool(largest_sine < tolerance)


def _random(rows: int, columns: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.randn((rows, columns), generator=generator, dtype=torch.float64).to(device)


def _extend_orthonormal(basis: torch.Tensor, candidates: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Orthonormal block [d, c'] spanning ``candidates`` [d, c] minus their part in ``basis`` [d, n] (two
    Gram-Schmidt passes); columns that vanish (an invariant subspace was found) are replaced by random
    ones, so that the space keeps growing. c' = min(c, d - n)."""
    dimension, used = basis.shape
    width = min(candidates.shape[1], dimension - used)
    block = candidates[:, :width]
    scale = block.norm(dim=0).clamp(min=torch.finfo(block.dtype).tiny)
    for _ in range(2):
        block = block - basis @ (basis.mT @ block)
    lost = block.norm(dim=0) < 1e-10 * scale
    if lost.any():
        block[:, lost] = _random(dimension, int(lost.sum()), generator, block.device)
        for _ in range(2):
            block = block - basis @ (basis.mT @ block)
    return _orthonormal(block)


@dataclass
class SolverConfig:
    """Settings of :func:`jacobian_svd` (the ``solver`` subsection of the jacobian and pullback params).

    Attributes:
        block_size: vectors per Krylov block (None: k).
        tolerance: stop when singular values and the top-k subspace move by less than this between blocks
            (relative change of each value; largest principal-angle sine).
        max_iterations: most Krylov blocks after the first.
        chunk_size: Jacobian products per batched network call (memory ~ chunk_size network activations).
        mode: "auto" | "forward" | "reverse" (how J v is computed, see
            :func:`~pipeline.linalg.operators.jacobian_operator`).
        seed: seed of the start block.
    """

    block_size: int | None = None
    tolerance: float = DEFAULT_KRYLOV_TOLERANCE
    max_iterations: int = DEFAULT_KRYLOV_ITERATIONS
    chunk_size: int = DEFAULT_CHUNK_SIZE
    mode: str = "auto"
    seed: int = 0

    def check(self, key: str) -> None:
        """Raise a one-line :class:`ConfigError` ``params: <key>.<field>=<value>: <rule>`` for the first field of
        the wrong type or out of range (``key``: where this section sits in the params, e.g.
        "directions.jacobian.solver"), so that a bad value is reported when the params are read, not after the
        first network pass."""
        block = self.block_size
        require(block is None or as_int(block) is not None, f"{key}.block_size", block, "must be an integer or null")
        require(block is None or block >= 1, f"{key}.block_size", block, "must be >= 1")
        tolerance = self.tolerance
        number = isinstance(tolerance, (int, float)) and not isinstance(tolerance, bool)
        require(number, f"{key}.tolerance", tolerance, "must be a number")
        require(tolerance > 0, f"{key}.tolerance", tolerance, "must be > 0")
        for name, lowest in (("max_iterations", 0), ("chunk_size", 1)):
            value = getattr(self, name)
            require(as_int(value) is not None, f"{key}.{name}", value, "must be an integer")
            require(value >= lowest, f"{key}.{name}", value, f"must be >= {lowest}")
        require(self.mode in JACOBIAN_MODES, f"{key}.mode", self.mode, f"must be one of {', '.join(JACOBIAN_MODES)}")
        require(as_int(self.seed) is not None, f"{key}.seed", self.seed, "must be an integer")


def jacobian_svd(
    function: Callable[[torch.Tensor], torch.Tensor],
    point: torch.Tensor,
    k: int,
    solver: SolverConfig,
    compute_left: bool = False,
) -> SVDResult:
    """Top-``k`` singular triplets of the Jacobian d function / d input at ``point``, by :func:`block_krylov_svd`
    with the settings of ``solver``.

    See :func:`~pipeline.linalg.operators.jacobian_operator` for the function's contract (a batch [b, *in_shape]
    to [b, *out_shape], rows independent) and :func:`block_krylov_svd` for the result: singular values [k],
    right vectors [k, d] over the flattened input (d = prod(in_shape)), left vectors [k, m] over the flattened
    output when ``compute_left``, all float64.
    """
    op = jacobian_operator(function, point, chunk_size=solver.chunk_size, mode=solver.mode)
    return block_krylov_svd(
        op,
        k,
        block_size=solver.block_size,
        tolerance=solver.tolerance,
        max_iterations=solver.max_iterations,
        seed=solver.seed,
        compute_left=compute_left,
    )
