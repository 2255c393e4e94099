"""Randomized SVD of linear operators and streamed data matrices (pipeline.linalg)."""

import pytest
import torch

from pipeline.io.errors import ConfigError
from pipeline.linalg import (
    LinearOperator,
    StreamedRows,
    block_krylov_svd,
    canonical_signs,
    jacobian_operator,
    randomized_svd,
)


def dense_operator(matrix: torch.Tensor, fused_gram: bool) -> LinearOperator:
    """``matrix`` [*batch, m, d] as an operator, with or without a fused A^T A product."""
    return LinearOperator(
        shape=(matrix.shape[-2], matrix.shape[-1]),
        matmat=lambda vectors: matrix @ vectors,
        rmatmat=lambda vectors: matrix.mT @ vectors,
        gram=(lambda vectors: matrix.mT @ (matrix @ vectors)) if fused_gram else None,
        batch_shape=tuple(matrix.shape[:-2]),
    )


def low_rank_plus_noise(*shape: int, rank: int = 5, noise: float = 1e-3, seed: int = 0) -> torch.Tensor:
    """[*batch, m, d] float64 matrices with singular values about 10, 9, ..., (11 - rank) plus small noise."""
    generator = torch.Generator().manual_seed(seed)
    *batch, rows, columns = shape
    left = torch.linalg.qr(torch.randn(*batch, rows, rank, generator=generator, dtype=torch.float64)).Q
    right = torch.linalg.qr(torch.randn(*batch, columns, rank, generator=generator, dtype=torch.float64)).Q
    strengths = torch.arange(10.0, 10.0 - rank, -1.0, dtype=torch.float64)
    signal = left @ torch.diag_embed(strengths.expand(*batch, rank)) @ right.mT
    return signal + noise * torch.randn(*shape, generator=generator, dtype=torch.float64)


def reference_svd(matrix: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exact top-k (s, right rows, left rows) with the module's sign convention."""
    left, values, right = torch.linalg.svd(matrix, full_matrices=False)
    right, left = right[..., :k, :], left[..., :k].mT
    signs = canonical_signs(right).unsqueeze(-1)
    return values[..., :k], right * signs, left * signs


@pytest.mark.parametrize("fused_gram", [False, True])
def test_matches_exact_svd_on_low_rank_plus_noise(fused_gram: bool) -> None:
    matrix = low_rank_plus_noise(60, 40)
    result = randomized_svd(dense_operator(matrix, fused_gram), 4, oversampling=3, compute_left=True)
    values, right, left = reference_svd(matrix, 4)
    torch.testing.assert_close(result.singular_values, values, rtol=1e-10, atol=0)
    torch.testing.assert_close(result.right_vectors, right, rtol=0, atol=1e-8)
    torch.testing.assert_close(result.left_vectors, left, rtol=0, atol=1e-8)


@pytest.mark.parametrize("fused_gram", [False, True])
def test_full_width_is_exact_on_a_flat_spectrum(fused_gram: bool) -> None:
    matrix = torch.randn(12, 30, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    result = randomized_svd(dense_operator(matrix, fused_gram), 12, oversampling=5, power_iterations=0)
    values, right, _ = reference_svd(matrix, 12)
    torch.testing.assert_close(result.singular_values, values, rtol=1e-10, atol=0)
    torch.testing.assert_close(result.right_vectors, right, rtol=0, atol=1e-8)


def test_batched_operators_equal_separate_ones() -> None:
    matrices = low_rank_plus_noise(3, 25, 20, seed=2)
    batched = randomized_svd(dense_operator(matrices, True), 3, oversampling=4)
    for index in range(3):
        single = reference_svd(matrices[index], 3)
        torch.testing.assert_close(batched.singular_values[index], single[0], rtol=1e-10, atol=0)
        torch.testing.assert_close(batched.right_vectors[index], single[1], rtol=0, atol=1e-8)


def test_reproducible_from_seed_and_seed_independent_when_converged() -> None:
    matrix = low_rank_plus_noise(50, 30, seed=3)
    operator = dense_operator(matrix, False)
    first = randomized_svd(operator, 3, oversampling=2, seed=7)
    again = randomized_svd(operator, 3, oversampling=2, seed=7)
    other = randomized_svd(operator, 3, oversampling=2, seed=8)
    assert torch.equal(first.right_vectors, again.right_vectors)
    assert torch.equal(first.singular_values, again.singular_values)
    torch.testing.assert_close(first.right_vectors, other.right_vectors, rtol=0, atol=1e-8)


def test_variants_agree_and_left_vectors_satisfy_av_equals_su() -> None:
    matrix = low_rank_plus_noise(40, 35, rank=6, noise=0.05, seed=4)
    alternating = randomized_svd(dense_operator(matrix, False), 5, compute_left=True)
    fused = randomized_svd(dense_operator(matrix, True), 5, compute_left=True)
    torch.testing.assert_close(alternating.singular_values, fused.singular_values, rtol=1e-9, atol=0)
    torch.testing.assert_close(alternating.right_vectors, fused.right_vectors, rtol=0, atol=1e-7)
    images = matrix @ fused.right_vectors.T
    torch.testing.assert_close(images, fused.left_vectors.T * fused.singular_values, rtol=0, atol=1e-10)


def test_sign_convention_largest_entry_positive() -> None:
    matrix = low_rank_plus_noise(30, 20, seed=5)
    right = randomized_svd(dense_operator(matrix, True), 4).right_vectors
    largest = right.gather(-1, right.abs().argmax(dim=-1, keepdim=True))
    assert (largest > 0).all()
    assert randomized_svd(dense_operator(matrix, True), 4).left_vectors is None


@pytest.mark.parametrize("k", [0, 21, 2.0])
def test_k_outside_range_is_one_line_error_naming_k_and_dimension(k: object) -> None:
    matrix = torch.zeros(30, 20, dtype=torch.float64)
    with pytest.raises(ConfigError, match=r"^k .*min\(m, d\)\] = \[1, 20\]") as error:
        randomized_svd(dense_operator(matrix, False), k)
    assert "\n" not in str(error.value)


def test_bad_solver_settings_are_errors() -> None:
    operator = dense_operator(torch.zeros(5, 5, dtype=torch.float64), False)
    with pytest.raises(ConfigError, match=r"^oversampling -1"):
        randomized_svd(operator, 2, oversampling=-1)
    with pytest.raises(ConfigError, match=r"^power_iterations"):
        randomized_svd(operator, 2, power_iterations=1.5)


def stream_of(data: torch.Tensor, batch: int):
    """Zero-argument factory of row batches of ``data``, ``batch`` rows at a time (float32 storage)."""
    stored = data.to(torch.float32)
    return lambda: iter(stored.split(batch))


def test_streamed_stack_products_equal_dense_products() -> None:
    generator = torch.Generator().manual_seed(6)
    data = torch.randn(23, 3, 7, generator=generator, dtype=torch.float64)  # N, B, d
    mean = data.mean(dim=0)
    stream = StreamedRows(stream_of(data, 5), mean=mean, num_rows=23)
    centred = data.to(torch.float32).to(torch.float64) - mean
    stacked = centred.transpose(0, 1)  # [B, N, d]
    vectors = torch.randn(3, 7, 2, generator=generator, dtype=torch.float64)
    row_vectors = torch.randn(3, 23, 2, generator=generator, dtype=torch.float64)
    operator = stream.stacked_operator()
    assert operator.shape == (23, 7) and operator.batch_shape == (3,)
    torch.testing.assert_close(operator.matmat(vectors), stacked @ vectors)
    torch.testing.assert_close(operator.rmatmat(row_vectors), stacked.mT @ row_vectors)
    torch.testing.assert_close(operator.gram(vectors), stacked.mT @ (stacked @ vectors))
    torch.testing.assert_close(stream.squared_norms, stacked.square().sum(dim=(1, 2)))

    concatenated = centred.reshape(23, 21)
    flat_vectors = vectors.reshape(21, 2)
    operator = stream.operator()
    assert operator.shape == (23, 21) and operator.batch_shape == ()
    torch.testing.assert_close(operator.matmat(flat_vectors), concatenated @ flat_vectors)
    torch.testing.assert_close(operator.rmatmat(row_vectors[0]), concatenated.T @ row_vectors[0])
    torch.testing.assert_close(operator.gram(flat_vectors), concatenated.T @ (concatenated @ flat_vectors))


def test_streamed_single_matrix_counts_rows_and_matches_dense_svd() -> None:
    matrix = low_rank_plus_noise(45, 16, seed=7).to(torch.float32).to(torch.float64)
    stream = StreamedRows(stream_of(matrix, 8))
    assert stream.num_rows == 45 and not stream.stacked
    torch.testing.assert_close(stream.squared_norms, matrix.square().sum())
    result = randomized_svd(stream.operator(), 3, oversampling=3, compute_left=True)
    values, right, left = reference_svd(matrix, 3)
    torch.testing.assert_close(result.singular_values, values, rtol=1e-10, atol=0)
    torch.testing.assert_close(result.right_vectors, right, rtol=0, atol=1e-8)
    torch.testing.assert_close(result.left_vectors, left, rtol=0, atol=1e-8)
    with pytest.raises(ConfigError, match=r"^stacked_operator"):
        stream.stacked_operator()


def test_stream_that_changes_between_passes_is_an_error() -> None:
    data = torch.randn(10, 4)
    passes = iter([data, data, data[:7]])
    stream = StreamedRows(lambda: iter([next(passes)]))
    with pytest.raises(ConfigError, match=r"^batches: the stream yielded 7 rows, expected num_rows = 10"):
        stream.scan()
    with pytest.raises(ConfigError, match=r"^batches: the stream yielded more than num_rows = 3"):
        StreamedRows(lambda: iter([data]), num_rows=3).scan()


def test_bad_batches_and_mean_are_errors() -> None:
    with pytest.raises(ConfigError, match=r"^batch shape \(2, 5\): rows of shape \(5,\), expected \(4,\)"):
        StreamedRows(lambda: iter([torch.zeros(3, 4), torch.zeros(2, 5)]))
    with pytest.raises(ConfigError, match=r"^mean shape \(3,\): expected the row shape \(4,\)"):
        StreamedRows(lambda: iter([torch.zeros(3, 4)]), mean=torch.zeros(3))
    with pytest.raises(ConfigError, match=r"^batches: the stream yielded no batch"):
        StreamedRows(lambda: iter([]))


def test_jacobian_products_run_without_tf32_and_restore_the_flags() -> None:
    """cuDNN allows TF32 by default (~1e-3 relative rounding); Jacobian products turn it off and restore it."""
    seen = []

    def function(x: torch.Tensor) -> torch.Tensor:
        seen.append((torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32))
        return 2 * x

    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    try:
        op = jacobian_operator(function, torch.ones(3))
        assert torch.allclose(op.matmat(torch.eye(3, dtype=torch.float64)), 2 * torch.eye(3, dtype=torch.float64))
        assert seen and all(flags == (False, False) for flags in seen)
        assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == (True, True)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def test_block_krylov_handles_operators_of_rank_below_k() -> None:
    generator = torch.Generator().manual_seed(1)
    left = torch.randn(40, 2, generator=generator, dtype=torch.float64)
    right = torch.randn(30, 2, generator=generator, dtype=torch.float64)
    for matrix in (left @ right.mT, torch.zeros(40, 30, dtype=torch.float64)):
        op = LinearOperator(shape=(40, 30), matmat=lambda v, a=matrix: a @ v, rmatmat=lambda u, a=matrix: a.mT @ u)
        result = block_krylov_svd(op, 4, block_size=1, tolerance=1e-10, max_iterations=40)
        exact = torch.linalg.svdvals(matrix)[:4]
        assert result.singular_values.shape == (4,) and result.right_vectors.shape == (4, 30)
        assert torch.allclose(result.singular_values, exact, atol=1e-8 * max(1.0, float(exact[0])))
        assert torch.isfinite(result.right_vectors).all()


def test_block_krylov_stops_on_the_ordinary_ritz_step_when_the_left_one_stalls(monkeypatch) -> None:
    """The left Rayleigh-Ritz vectors carry the products' rounding and can stall above a tight tolerance (float32
    products); the ordinary step's estimates settle then, and the solver returns them, converged and exact."""
    import pipeline.linalg.solvers as linalg

    matrix = low_rank_plus_noise(300, 200, rank=4, noise=1e-2)  # 30 blocks of 4 never fill the 200 columns
    op = dense_operator(matrix, fused_gram=False)
    kicks = torch.Generator().manual_seed(7)
    left_ritz = linalg._left_ritz

    def stalling_left_ritz(ritz_matrix, hessenberg, k):  # a rounding floor of 1e-5 on the left coordinates
        values, coordinates = left_ritz(ritz_matrix, hessenberg, k)
        jitter = torch.randn(coordinates.shape, generator=kicks, dtype=coordinates.dtype)
        return values, coordinates + 1e-5 * jitter

    monkeypatch.setattr(linalg, "_left_ritz", stalling_left_ritz)
    result = block_krylov_svd(op, 4, tolerance=1e-8, max_iterations=30)
    values, right, _ = reference_svd(matrix, 4)
    assert result.converged and result.iterations < 30
    assert torch.allclose(result.singular_values, values, rtol=1e-8)
    assert torch.allclose(result.right_vectors, right, atol=1e-6)  # the left estimates would be ~1e-5 off
