"""Linear algebra on Jacobian operators: batched J v / J^T u of a network map, and the solvers that read
their spectra (randomized SVD, block Krylov, streamed PCA). One core serves the Jacobian and the pullback
methods (docs/methods.md, "Linear algebra")."""

from pipeline.linalg.solvers import (
    DEFAULT_OVERSAMPLING,
    DEFAULT_POWER_ITERATIONS,
    JACOBIAN_MODES,
    LinearOperator,
    SolverConfig,
    StreamedRows,
    SVDResult,
    block_krylov_svd,
    canonical_signs,
    frozen,
    jacobian_operator,
    jacobian_svd,
    randomized_svd,
)

__all__ = [
    "DEFAULT_OVERSAMPLING",
    "DEFAULT_POWER_ITERATIONS",
    "JACOBIAN_MODES",
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
