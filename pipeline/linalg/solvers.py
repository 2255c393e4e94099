"""Operator-based spectral tools: randomized SVD of linear maps known only through products, and data
matrices streamed in row batches (ALGORITHMS 2.1 and 4).

A :class:`LinearOperator` is a linear map A: R^d -> R^m (or a batch of independent ones, solved together)
given by two callables, ``matmat`` (V -> A V) and ``rmatmat`` (U -> A^T U), optionally with a fused
``gram`` (V -> A^T A V). :func:`randomized_svd` finds its top-k singular triplets (Halko, Martinsson and
Tropp 2011, randomized subspace iteration) in float64. :class:`StreamedRows` turns a re-iterable stream of
row batches into such operators, computing each product in one pass over the stream.

Sign convention: each right singular vector is flipped so that its entry of largest magnitude is positive
(the first such entry on ties; sklearn's ``svd_flip(..., u_based_decision=False)`` rule), and its left
singular vector with it.
"""

from __future__ import annotations

import contextlib
import logging
import operator as _operator
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.overrides import TorchFunctionMode

from pipeline.io.validation import as_int
from pipeline.io.errors import ConfigError

BatchFactory = Callable[[], Iterable[torch.Tensor]]
"""A zero-argument callable returning a fresh iterable of row batches (one full pass over the data)."""

logger = logging.getLogger(__name__)

_CPU = torch.device("cpu")
DEFAULT_OVERSAMPLING = 10
DEFAULT_POWER_ITERATIONS = 4


@dataclass(frozen=True)
class LinearOperator:
    """A linear map A: R^d -> R^m, or a batch of independent maps of the same shape, given by products.

    Attributes:
        shape: (m, d).
        matmat: V [*batch_shape, d, b] -> A V [*batch_shape, m, b].
        rmatmat: U [*batch_shape, m, b] -> A^T U [*batch_shape, d, b].
        gram: optional V [*batch_shape, d, b] -> A^T A V in one application (for streamed data: one pass
            instead of two, and no [m, b] intermediate kept). When given, :func:`randomized_svd` works on
            A^T A only.
        batch_shape: leading dimensions indexing independent operators (() for a single one).
        device: where the products take and return their tensors.
    """

    shape: tuple[int, int]
    matmat: Callable[[torch.Tensor], torch.Tensor]
    rmatmat: Callable[[torch.Tensor], torch.Tensor]
    gram: Callable[[torch.Tensor], torch.Tensor] | None = None
    batch_shape: tuple[int, ...] = ()
    device: torch.device = _CPU


@dataclass(frozen=True)
class SVDResult:
    """Top-k singular triplets of an operator (float64), A ≈ sum_i s_i u_i v_i^T.

    Attributes:
        singular_values: [*batch_shape, k] s_i, non-increasing.
        right_vectors: [*batch_shape, k, d] rows v_i (unit norm, mutually orthogonal), signed by the module's
            sign convention.
        left_vectors: [*batch_shape, k, m] rows u_i, or None when not computed. A row whose s_i is 0 is zero.
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


class StreamedRows:
    """A data matrix X [N, d], or B matrices X_b [N, d] sharing their rows, whose rows arrive in batches.

    ``batches()`` returns a fresh iterable over row batches, [n_i, d] for one matrix or [n_i, B, d] for a
    stack (for h: X_t holds h at step t of every sample, batches [n, T, D]). Every call must yield the same
    rows in the same order, because ``rmatmat`` pairs its input rows with the stream by position. Each
    batch is moved to ``device``, converted to float64 and centred by ``mean`` there (peak memory about
    three float64 copies of one batch); every product is accumulated in float64 in one pass, with memory
    O(d b) beyond the batch and the output.

    Each pass also recounts the rows (a different count from ``num_rows`` is an error) and accumulates
    ``squared_norms``, the sum of squared centred entries of each matrix ([B], or [] for one matrix).
    """

    def __init__(
        self,
        batches: BatchFactory,
        *,
        mean: torch.Tensor | None = None,
        num_rows: int | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        """Wrap ``batches``; ``mean`` [d] or [B, d] is subtracted from every row; ``num_rows`` N is counted
        by a first pass when None (one extra pass over the stream; pass it when known)."""
        if num_rows is not None and (as_int(num_rows) is None or num_rows < 1):
            raise ConfigError(f"num_rows {num_rows!r}: must be a positive integer")
        self.batches = batches
        self.device = torch.device("cpu") if device is None else torch.device(device)
        self.mean = None if mean is None else mean.to(device=self.device, dtype=torch.float64)
        self.squared_norms: torch.Tensor | None = None
        self._row_shape: tuple[int, ...] | None = None
        self._row_shape = self._first_row_shape()
        if self.mean is not None and tuple(self.mean.shape) != self.row_shape:
            raise ConfigError(f"mean shape {tuple(self.mean.shape)}: expected the row shape {self.row_shape}")
        self._num_rows = num_rows
        if num_rows is None:
            self.scan()

    @property
    def num_rows(self) -> int:
        """N, the number of rows of every matrix."""
        assert self._num_rows is not None
        return self._num_rows

    @property
    def stacked(self) -> bool:
        """True for a stack of B matrices (batches [n, B, d]), False for one matrix (batches [n, d])."""
        return len(self.row_shape) == 2

    @property
    def row_shape(self) -> tuple[int, ...]:
        """(d,) for one matrix, (B, d) for a stack."""
        assert self._row_shape is not None
        return self._row_shape

    def scan(self) -> None:
        """One pass that only counts the rows and accumulates ``squared_norms``."""
        for _ in self._pass():
            pass

    def operator(self) -> LinearOperator:
        """X as an operator of shape (N, d), or for a stack the concatenation [X_1 ... X_B] of shape
        (N, B d) (column index b d + j is column j of X_b); vectors V are [B d, k]."""
        blocks, width = self._blocks_and_width()

        def matmat(vectors: torch.Tensor) -> torch.Tensor:
            blocked = vectors.reshape(blocks, width, -1)
            out = torch.empty((self.num_rows, vectors.shape[-1]), dtype=torch.float64, device=self.device)
            for rows, x in self._pass():
                out[rows] = torch.einsum("nbd,bdk->nk", x, blocked)
            return out

        def rmatmat(vectors: torch.Tensor) -> torch.Tensor:
            out = torch.zeros((blocks, width, vectors.shape[-1]), dtype=torch.float64, device=self.device)
            for rows, x in self._pass():
                out += torch.einsum("nbd,nk->bdk", x, vectors[rows])
            return out.reshape(blocks * width, -1)

        def gram(vectors: torch.Tensor) -> torch.Tensor:
            blocked = vectors.reshape(blocks, width, -1)
            out = torch.zeros_like(blocked)
            for _, x in self._pass():
                out += torch.einsum("nbd,nk->bdk", x, torch.einsum("nbd,bdk->nk", x, blocked))
            return out.reshape(blocks * width, -1)

        return LinearOperator(
            shape=(self.num_rows, blocks * width), matmat=matmat, rmatmat=rmatmat, gram=gram, device=self.device
        )

    def stacked_operator(self) -> LinearOperator:
        """The B matrices X_b as a batch of operators of shape (N, d), batch_shape (B,); vectors [B, d, k].

        Solving them together reads the stream once per product for all B (instead of B times).
        """
        if not self.stacked:
            raise ConfigError(
                f"stacked_operator: the stream yields batches of rows of shape {self.row_shape}, not a stack [n, B, d]"
            )
        blocks, width = self.row_shape

        def matmat(vectors: torch.Tensor) -> torch.Tensor:
            out = torch.empty((blocks, self.num_rows, vectors.shape[-1]), dtype=torch.float64, device=self.device)
            for rows, x in self._pass():
                out[:, rows] = torch.einsum("nbd,bdk->bnk", x, vectors)
            return out

        def rmatmat(vectors: torch.Tensor) -> torch.Tensor:
            out = torch.zeros((blocks, width, vectors.shape[-1]), dtype=torch.float64, device=self.device)
            for rows, x in self._pass():
                out += torch.einsum("nbd,bnk->bdk", x, vectors[:, rows])
            return out

        def gram(vectors: torch.Tensor) -> torch.Tensor:
            out = torch.zeros_like(vectors)
            for _, x in self._pass():
                out += torch.einsum("nbd,bnk->bdk", x, torch.einsum("nbd,bdk->bnk", x, vectors))
            return out

        return LinearOperator(
            shape=(self.num_rows, width),
            matmat=matmat,
            rmatmat=rmatmat,
            gram=gram,
            batch_shape=(blocks,),
            device=self.device,
        )

    def _blocks_and_width(self) -> tuple[int, int]:
        return (self.row_shape[0], self.row_shape[1]) if self.stacked else (1, self.row_shape[0])

    def _first_row_shape(self) -> tuple[int, ...]:
        for batch in self.batches():
            return self._check_layout(batch)
        raise ConfigError("batches: the stream yielded no batch")

    def _check_layout(self, batch: torch.Tensor) -> tuple[int, ...]:
        if not isinstance(batch, torch.Tensor) or batch.dim() not in (2, 3) or batch.shape[0] < 1:
            shape = tuple(batch.shape) if isinstance(batch, torch.Tensor) else type(batch).__name__
            raise ConfigError(f"batch {shape}: expected a tensor [n, d] or [n, B, d] with n >= 1")
        row_shape = tuple(batch.shape[1:])
        if self._row_shape is not None and row_shape != self._row_shape:
            raise ConfigError(
                f"batch shape {tuple(batch.shape)}: rows of shape {row_shape}, expected {self._row_shape}"
            )
        return row_shape

    def _pass(self) -> Iterable[tuple[slice, torch.Tensor]]:
        """One pass: yields (row slice, centred float64 batch [n, B, d] on ``device``) and updates the counts."""
        offset = 0
        squared_norms: torch.Tensor | None = None
        for batch in self.batches():
            self._check_layout(batch)
            x = batch.to(device=self.device, dtype=torch.float64)
            if self.mean is not None:
                x = x - self.mean
            if not self.stacked:
                x = x.unsqueeze(1)
            if self._num_rows is not None and offset + len(x) > self._num_rows:
                raise ConfigError(f"batches: the stream yielded more than num_rows = {self._num_rows} rows")
            batch_norms = x.square().sum(dim=(0, 2))
            squared_norms = batch_norms if squared_norms is None else squared_norms + batch_norms
            yield slice(offset, offset + len(x)), x
            offset += len(x)
        if offset == 0 or squared_norms is None:
            raise ConfigError("batches: the stream yielded no batch")
        if self._num_rows is None:
            self._num_rows = offset
        elif offset != self._num_rows:
            raise ConfigError(
                f"batches: the stream yielded {offset} rows, expected num_rows = {self._num_rows} "
                "(every pass must yield the same rows)"
            )
        self.squared_norms = squared_norms if self.stacked else squared_norms[0]



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

    The search space is the block Krylov space span{Q_0, G Q_0, G^2 Q_0, ...} of G = A^T A from a Gaussian start Q_0
    [d, b] (seeded, CPU generator), kept orthonormal by full re-orthogonalisation (two passes of block
    Gram-Schmidt). After each block the estimates come from the Rayleigh-Ritz step of A A^T on the left space A Q,
    which the products have already computed: with T = Q^T G Q and the Lanczos relation G Q = Q' H (Q' = Q plus the
    next block, no products), sigma^2 are the eigenvalues of T^-1/2 H^T H T^-1/2 and v = Q' H T^-1/2 y / sigma.
    Measured on the ToyFaces J2 (d eps / d h, block 1), it gives 2.5-4x smaller subspace sines and 2-5x smaller
    singular-value errors than the Rayleigh-Ritz step on Q at every product count: about one Lanczos step for free.
    But its vectors are built from the computed products G Q, so they carry the products' rounding, and in float32
    their change between iterations can stall above a tight tolerance where the ordinary Rayleigh-Ritz step on Q
    (vectors Q y, from T alone) gets below it (celebahq-256 architecture's d eps / d h at 64 px, 16 triplets,
    tolerance 1e-6: the left step stalled at sines of 1.2-1.5e-6 from the 11th iteration to the 19th, when it was
    stopped, the ordinary one reached 8e-7 at the 12th; on an H200 at 256 px the left step alone needed 94
    iterations). Both are formed at every iteration (small eigenproblems; compared through their coordinates in the
    nested basis, so no d-dimensional vector is formed before the end), and iteration stops when either one has
    settled: between consecutive iterations every one of its top-k singular values moved by less than ``tolerance``
    relative to itself and the largest principal-angle sine between its two top-k subspaces is below ``tolerance``
    (signs never enter the test); the settled one is returned (the left one when both are). It also stops when the
    space reaches dimension d (then the result is exact). For the same accuracy this needs several times fewer
    products than subspace iteration (ALGORITHMS 8). Memory: the basis, d x (b x iterations) float64.

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


JACOBIAN_MODES = ("auto", "forward", "reverse")
DEFAULT_CHUNK_SIZE = 16


def jacobian_operator(
    function: Callable[[torch.Tensor], torch.Tensor],
    point: torch.Tensor,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    mode: str = "auto",
    transposed_conv_gradients: bool = True,
) -> LinearOperator:
    """The Jacobian J = d function / d input at ``point`` as a :class:`LinearOperator` of batched products.

    ``function`` maps a batch [b, *in_shape] to [b, *out_shape] with rows independent of each other (true
    for a UNet in eval mode: GroupNorm and attention act within a sample). ``point`` is one input
    [*in_shape]. Products take and return float64 ([d, n] and [m, n], d = prod(in_shape),
    m = prod(out_shape)) and are computed in ``point``'s dtype, up to ``chunk_size`` vectors per call, by
    running ``function`` on that many copies of the point.

    * J^T u (``rmatmat``): one reverse pass per chunk through a graph built once and reused.
    * J v (``matmat``): ``mode="reverse"`` (and ``"auto"``) uses the double-vjp identity
      J v = d/dw (J^T w)^T v through the same reused graph; ``"forward"`` uses forward-mode AD
      (``torch.func.jvp``, a fresh forward per chunk). Reverse is the default because reusing the graph
      made it 4-5x faster per product than forward mode on CPU (tiny UNet, 16 vectors). Attention runs on the
      SDPA math backend, the one with derivatives of every order; in forward mode GroupNorm gets contiguous
      inputs (:class:`_ContiguousGroupNorm`).
    * ``transposed_conv_gradients``: while the graph is built, every 2-D convolution with a frozen weight
      is recorded as :class:`_FrozenWeightConv2d`, whose input gradient is a transposed convolution. Torch's
      own double backward of a convolution also computes a weight-shaped term, one more convolution per
      layer for every J v, even when the weight is frozen; the transposed form needs only the one J v is
      made of. The same kernels run, fewer of them: the products are equal to the last bit on ToyFaces.
      False keeps torch's derivatives (timed side by side: ``benchmarks`` suite ``jacobian``, ``products``).

    Parameters of modules inside ``function`` should not require grad (see :func:`frozen`).
    """
    if mode not in JACOBIAN_MODES:
        raise ConfigError(f"mode {mode!r}: expected one of {', '.join(JACOBIAN_MODES)}")
    if as_int(chunk_size) is None or chunk_size < 1:
        raise ConfigError(f"chunk_size {chunk_size!r}: must be a positive integer")
    if not point.is_floating_point():
        raise ConfigError(f"point dtype {point.dtype}: must be floating point")
    products = _ReplicatedJacobian(
        function, point.detach(), chunk_size, mode == "forward", transposed_conv_gradients
    )
    return LinearOperator(
        shape=(products.out_size, products.in_size),
        matmat=products.jvp,
        rmatmat=products.vjp,
        device=point.device,
    )


class _ReplicatedJacobian:
    """Batched J v and J^T u of a row-independent function at one point, by replicating the point.

    The graph of ``function`` on b copies of the point is built once per batch size b (at most two sizes
    occur: full chunks and the remainder) and reused by every later product of that size.
    """

    def __init__(
        self,
        function: Callable[[torch.Tensor], torch.Tensor],
        point: torch.Tensor,
        chunk_size: int,
        forward_mode: bool,
        transposed_conv_gradients: bool,
    ) -> None:
        self.function = function
        self.point = point
        self.chunk = chunk_size
        self.forward_mode = forward_mode
        self.transposed_conv_gradients = transposed_conv_gradients
        self.in_shape = tuple(point.shape)
        self.in_size = point.numel()
        self._graphs: dict[int, _Graph] = {}
        self.out_size = self._graph(1).outputs[0].numel()

    def vjp(self, vectors: torch.Tensor) -> torch.Tensor:
        """J^T U for U [m, n] float64 -> [d, n] float64."""
        return self._chunked(vectors, self.out_size, self._vjp_chunk)

    def jvp(self, vectors: torch.Tensor) -> torch.Tensor:
        """J V for V [d, n] float64 -> [m, n] float64."""
        return self._chunked(vectors, self.in_size, self._jvp_chunk)

    def _graph(self, batch: int) -> _Graph:
        if batch not in self._graphs:
            convolutions = _TransposedConvGradients() if self.transposed_conv_gradients else contextlib.nullcontext()
            with _exact_kernels(), convolutions:
                inputs = self.point.unsqueeze(0).expand(batch, *self.in_shape).clone().requires_grad_(True)
                outputs = self.function(inputs)
            if outputs.shape[0] != batch or not outputs.requires_grad:
                raise ConfigError(
                    f"function: expected an output [{batch}, ...] that depends on the input, "
                    f"got shape {tuple(outputs.shape)}"
                )
            self._graphs[batch] = _Graph(inputs, outputs)
        return self._graphs[batch]

    def _chunked(
        self, vectors: torch.Tensor, size: int, product: Callable[[_Graph, torch.Tensor], torch.Tensor]
    ) -> torch.Tensor:
        if vectors.dim() != 2 or vectors.shape[0] != size:
            raise ConfigError(f"vectors shape {tuple(vectors.shape)}: expected [{size}, n]")
        columns = []
        for begin in range(0, vectors.shape[1], self.chunk):
            part = vectors[:, begin : begin + self.chunk].mT.to(self.point.dtype)
            graph = self._graph(len(part))
            with _exact_kernels():
                result = product(graph, part)
            columns.append(result.reshape(len(part), -1).to(torch.float64).mT)
        return torch.cat(columns, dim=1)

    def _vjp_chunk(self, graph: _Graph, cotangents: torch.Tensor) -> torch.Tensor:
        (gradient,) = torch.autograd.grad(
            graph.outputs, graph.inputs, cotangents.reshape(graph.outputs.shape), retain_graph=True
        )
        return gradient

    def _jvp_chunk(self, graph: _Graph, tangents: torch.Tensor) -> torch.Tensor:
        tangents = tangents.reshape(graph.inputs.shape).contiguous()
        if self.forward_mode:
            with _ContiguousGroupNorm():
                _, output_tangents = torch.func.jvp(self.function, (graph.inputs.detach(),), (tangents,))
            return output_tangents
        if graph.input_gradient is None:
            # g(w) = J^T w is linear in w; differentiating <g(w), v> in w gives J v (double-vjp identity).
            graph.cotangent = torch.zeros_like(graph.outputs, requires_grad=True)
            (graph.input_gradient,) = torch.autograd.grad(
                graph.outputs, graph.inputs, graph.cotangent, retain_graph=True, create_graph=True
            )
        (output_tangents,) = torch.autograd.grad(graph.input_gradient, graph.cotangent, tangents, retain_graph=True)
        return output_tangents


@dataclass
class _Graph:
    """The autograd graph of the function on b copies of the point (and, once needed, of J^T w in w)."""

    inputs: torch.Tensor
    outputs: torch.Tensor
    cotangent: torch.Tensor | None = None
    input_gradient: torch.Tensor | None = None


class _FrozenWeightConv2d(torch.autograd.Function):
    """``F.conv2d`` with a weight and bias that take no gradient, differentiated as the linear map of its input
    it is: the input gradient of a gradient being built (``create_graph``, the J v graph) is
    ``conv_transpose2d(grad, weight)``, whose own derivative in ``grad`` is one convolution. A plain first-order
    backward uses the convolution backward kernel, the fastest for J^T u."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        inputs: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        stride: tuple[int, int],
        padding: tuple[int, int],
        dilation: tuple[int, int],
        groups: int,
    ) -> torch.Tensor:
        ctx.save_for_backward(inputs, weight)
        ctx.geometry = (stride, padding, dilation, groups)  # type: ignore[attr-defined]
        return F.conv2d(inputs, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        inputs, weight = ctx.saved_tensors  # type: ignore[attr-defined]
        stride, padding, dilation, groups = ctx.geometry  # type: ignore[attr-defined]
        if torch.is_grad_enabled():
            # conv_transpose2d's output size is ambiguous for strides > 1; output_padding picks the input's.
            output_padding = [
                size - ((out - 1) * s - 2 * p + d * (k - 1) + 1)
                for size, out, s, p, d, k in zip(
                    inputs.shape[-2:], grad.shape[-2:], stride, padding, dilation, weight.shape[-2:], strict=True
                )
            ]
            gradient = F.conv_transpose2d(grad, weight, None, stride, padding, output_padding, groups, dilation)
        else:
            gradient = torch.ops.aten.convolution_backward(
                grad, inputs, weight, None, list(stride), list(padding), list(dilation), False, [0, 0], groups,
                [True, False, False],
            )[0]  # fmt: skip
        return gradient, None, None, None, None, None, None


class _TransposedConvGradients(TorchFunctionMode):
    """Within the block, ``F.conv2d`` calls on a batched input that takes a gradient, with a weight and bias that
    take none and a numeric padding, run as :class:`_FrozenWeightConv2d` (see :func:`jacobian_operator`); every
    other call is unchanged."""

    _PARAMETERS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
    _DEFAULTS = (None, None, None, 1, 0, 1, 1)

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        if func is F.conv2d:
            call = dict(zip(self._PARAMETERS, self._DEFAULTS, strict=True))
            call.update(zip(self._PARAMETERS, args, strict=False))
            call.update(kwargs)
            weight, bias, padding = call["weight"], call["bias"], call["padding"]
            inputs = call["input"]
            frozen_weights = not weight.requires_grad and (bias is None or not bias.requires_grad)
            if frozen_weights and inputs.requires_grad and inputs.dim() == 4 and not isinstance(padding, str):
                pairs = [_pair(call[name]) for name in ("stride", "padding", "dilation")]
                return _FrozenWeightConv2d.apply(inputs, weight, bias, *pairs, call["groups"])
        return func(*args, **kwargs)


class _ContiguousGroupNorm(TorchFunctionMode):
    """Within the block, ``F.group_norm`` gets a contiguous input. Its forward-AD formula views the input, which
    fails on a strided one ("view size is not compatible"): the math-backend attention of a UNet hands the next
    resnet's GroupNorm a [b, C, H, W] tensor in NHWC order, so forward mode failed through every UNet with
    attention on the CPU (NOTES 5.2). The copy is made only for inputs that are not contiguous."""

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        if func is F.group_norm and args:
            args = (args[0].contiguous(), *args[1:])
        elif func is F.group_norm and "input" in kwargs:
            kwargs = {**kwargs, "input": kwargs["input"].contiguous()}
        return func(*args, **kwargs)


def _pair(value: int | tuple[int, ...] | list[int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


@contextlib.contextmanager
def _exact_kernels() -> Iterator[None]:
    """Kernels for Jacobian products: SDPA on the math backend (the fused kernels lack forward-mode and double
    derivatives) and TF32 off for CUDA matmuls and convolutions (cuDNN allows TF32 by default, which rounds
    float32 products to ~1e-3 relative: spectra are float32 by default, not TF32). Flags are restored on exit."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        with sdpa_kernel(SDPBackend.MATH):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


@contextlib.contextmanager
def frozen(module: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Within the block, ``module``'s parameters do not require grad and it is in eval mode (both restored
    on exit), so Jacobian products differentiate with respect to inputs only."""
    flags = [parameter.requires_grad for parameter in module.parameters()]
    training = module.training
    module.requires_grad_(False).eval()
    try:
        yield module
    finally:
        for parameter, flag in zip(module.parameters(), flags, strict=True):
            parameter.requires_grad_(flag)
        module.train(training)


@dataclass
class SolverConfig:
    """Settings of the Jacobian spectral solver (the ``solver`` subsection of the jacobian and pullback params).

    Attributes:
        block_size: vectors per Krylov block (None: k).
        tolerance: stop when singular values and the top-k subspace move by less than this between blocks.
        max_iterations: most Krylov blocks after the first.
        chunk_size: Jacobian products per batched UNet call (memory ~ chunk_size UNet activations).
        mode: "auto" | "forward" | "reverse" (how J v is computed, see :func:`jacobian_operator`).
        seed: seed of the start block.
    """

    block_size: int | None = None
    tolerance: float = DEFAULT_KRYLOV_TOLERANCE
    max_iterations: int = DEFAULT_KRYLOV_ITERATIONS
    chunk_size: int = DEFAULT_CHUNK_SIZE
    mode: str = "auto"
    seed: int = 0


def jacobian_svd(
    function: Callable[[torch.Tensor], torch.Tensor],
    point: torch.Tensor,
    k: int,
    solver: SolverConfig,
    compute_left: bool = False,
) -> SVDResult:
    """Top-``k`` singular triplets of d function / d input at ``point`` (see :func:`jacobian_operator` for
    the function's contract and :func:`block_krylov_svd` for the result)."""
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
