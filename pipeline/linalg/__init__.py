"""Linear algebra on operators known by their products: batched J v / J^T u of a network map, data matrices
streamed in row batches, and the solvers that read their spectra. One core serves the PCA, Jacobian and
pullback methods (docs/methods.md, "Linear algebra").

Public API, by module (all re-exported here):

* :mod:`pipeline.linalg.operators`: :class:`LinearOperator` (a map A: R^d -> R^m given by ``matmat``,
  ``rmatmat`` and optionally ``gram``), :func:`jacobian_operator` (d f / d x at a point, batched products,
  float64 in and out), :func:`frozen` (a module's parameters as constants), :data:`JACOBIAN_MODES`,
  :data:`DEFAULT_CHUNK_SIZE`.
* :mod:`pipeline.linalg.streamed`: :class:`StreamedRows` (a data matrix [N, d], or a stack [N, B, d], read in
  row batches, as operators whose products are one pass each), :data:`BatchFactory`.
* :mod:`pipeline.linalg.solvers`: :class:`SVDResult`, :func:`canonical_signs` (the sign convention),
  :func:`randomized_svd` (:data:`DEFAULT_OVERSAMPLING`, :data:`DEFAULT_POWER_ITERATIONS`),
  :func:`block_krylov_svd` (:data:`DEFAULT_KRYLOV_TOLERANCE`, :data:`DEFAULT_KRYLOV_ITERATIONS`),
  :class:`SolverConfig` and :func:`jacobian_svd` (block Krylov SVD of a Jacobian).
"""

from pipeline.linalg.operators import (
    DEFAULT_CHUNK_SIZE,
    JACOBIAN_MODES,
    LinearOperator,
    frozen,
    jacobian_operator,
)
from pipeline.linalg.solvers import (
    DEFAULT_KRYLOV_ITERATIONS,
    DEFAULT_KRYLOV_TOLERANCE,
    DEFAULT_OVERSAMPLING,
    DEFAULT_POWER_ITERATIONS,
    SolverConfig,
    SVDResult,
    block_krylov_svd,
    canonical_signs,
    jacobian_svd,
    randomized_svd,
)
from pipeline.linalg.streamed import BatchFactory, StreamedRows

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_KRYLOV_ITERATIONS",
    "DEFAULT_KRYLOV_TOLERANCE",
    "DEFAULT_OVERSAMPLING",
    "DEFAULT_POWER_ITERATIONS",
    "JACOBIAN_MODES",
    "BatchFactory",
    "LinearOperator",
    "SVDResult",
    "SolverConfig",
    "StreamedRows",
    "block_krylov_svd",
    "canonical_signs",
    "frozen",
    "jacobian_operator",
    "jacobian_svd",
    "randomized_svd",
]
