"""The spectral core on Jacobians: block Krylov SVD and batched Jacobian products (pipeline.linalg).

References are exact: the SVD of the explicitly formed Jacobian, on a small MLP and on the tiny UNet of
conftest, for both maps the methods need (d h / d x_t for pullback, d eps / d h for Jacobian directions).
"""

import pytest
import torch

from pipeline.diffusion.hspace import eps_of_h, h_of_x
from pipeline.diffusion.models import DiffusionModel
from pipeline.io.errors import ConfigError
from pipeline.linalg import (
    LinearOperator,
    SolverConfig,
    block_krylov_svd,
    canonical_signs,
    frozen,
    jacobian_operator,
)

TIMESTEP = 500


def largest_sine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Sine of the largest principal angle between the row spaces of a [k, d] and b [k, d] (orthonormal)."""
    cosines = torch.linalg.svdvals(a @ b.mT).clamp(max=1)
    return float((1 - cosines.min() ** 2).clamp(min=0).sqrt())


def explicit_jacobian(op: LinearOperator) -> torch.Tensor:
    """The Jacobian [m, d] formed row by row through rmatmat (J^T e_i)."""
    rows, _ = op.shape
    return op.rmatmat(torch.eye(rows, dtype=torch.float64)).mT


def dense(matrix: torch.Tensor) -> LinearOperator:
    return LinearOperator(shape=tuple(matrix.shape), matmat=lambda v: matrix @ v, rmatmat=lambda u: matrix.mT @ u)


@pytest.fixture(scope="module")
def mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(20, 64), torch.nn.Tanh(), torch.nn.Linear(64, 30)).requires_grad_(False)


@pytest.mark.parametrize("mode", ["forward", "reverse"])
def test_products_equal_the_explicit_jacobian_of_an_mlp(mlp: torch.nn.Module, mode: str) -> None:
    point = torch.randn(20, generator=torch.Generator().manual_seed(1))
    op = jacobian_operator(mlp, point, chunk_size=7, mode=mode)  # 7 does not divide 20 or 30: padded chunks
    reference = torch.func.jacrev(mlp)(point).double()
    assert op.shape == (30, 20)
    assert torch.allclose(op.matmat(torch.eye(20, dtype=torch.float64)), reference, atol=1e-6)
    assert torch.allclose(op.rmatmat(torch.eye(30, dtype=torch.float64)), reference.mT, atol=1e-6)


class ConvNet(torch.nn.Module):
    """Convolutions of every geometry the transposed-gradient form must reproduce: a stride-2 layer (whose
    transpose needs output_padding on even sizes), padding 0 and 1, dilation 2, groups 2, a bias-free layer."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList(
            [
                torch.nn.Conv2d(2, 4, 3, stride=2, padding=1),
                torch.nn.Conv2d(4, 4, 3, padding=2, dilation=2, groups=2),
                torch.nn.Conv2d(4, 3, 2, padding=0, bias=False),
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = torch.tanh(layer(x))
        return x


CUDA = pytest.param(
    "cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
)


@pytest.mark.parametrize("device", ["cpu", CUDA])
@pytest.mark.parametrize("mode", ["forward", "reverse"])
def test_transposed_conv_gradients_give_torch_s_products(mode: str, device: str) -> None:
    torch.manual_seed(0)
    net = ConvNet().double().requires_grad_(False).to(device)
    point = torch.randn(2, 10, 7, dtype=torch.float64, device=device)  # stride 2: 10 x 7 -> 5 x 4 -> back 9 x 7
    reference = torch.func.jacrev(net)(point).reshape(-1, point.numel())
    identity = torch.eye(max(reference.shape), dtype=torch.float64, device=device)
    for flag in (True, False):
        op = jacobian_operator(net, point, chunk_size=5, mode=mode, transposed_conv_gradients=flag)
        assert torch.allclose(op.matmat(identity[: point.numel(), : point.numel()]), reference, atol=1e-12)
        assert torch.allclose(op.rmatmat(identity[: len(reference), : len(reference)]), reference.mT, atol=1e-12)


def test_transposed_conv_gradients_replace_frozen_convolutions_only() -> None:
    from pipeline.linalg.operators import _TransposedConvGradients

    torch.manual_seed(1)
    net = ConvNet().double()
    x = torch.randn(1, 2, 10, 7, dtype=torch.float64, requires_grad=True)
    trained = net.layers[0]
    with _TransposedConvGradients():
        assert type(trained(x).grad_fn).__name__ == "ConvolutionBackward0"  # its weight takes a gradient
        trained.requires_grad_(False)
        assert "FrozenWeightConv2d" in type(trained(x).grad_fn).__name__
        same = torch.nn.functional.conv2d(x, trained.weight, None, 1, "same")  # string padding: left to torch
        assert type(same.grad_fn).__name__ == "ConvolutionBackward0"


def test_transposed_conv_gradients_are_exact_on_the_unet(tiny_model: DiffusionModel, single_thread: None) -> None:
    x_t = torch.randn(3, 16, 16, generator=torch.Generator().manual_seed(6))
    generator = torch.Generator().manual_seed(7)
    with frozen(tiny_model.unet):
        for function, point in [(h_of_x(tiny_model, TIMESTEP), x_t), eps_of_h(tiny_model, x_t, TIMESTEP)]:
            ops = [jacobian_operator(function, point, chunk_size=3, transposed_conv_gradients=f) for f in (True, False)]
            v = torch.randn(ops[0].shape[1], 3, dtype=torch.float64, generator=generator)
            u = torch.randn(ops[0].shape[0], 3, dtype=torch.float64, generator=generator)
            # The same convolution kernels run in both forms, only fewer of them: products agree to rounding.
            assert torch.allclose(ops[0].matmat(v), ops[1].matmat(v), rtol=1e-6, atol=1e-7)
            assert torch.allclose(ops[0].rmatmat(u), ops[1].rmatmat(u), rtol=1e-6, atol=1e-7)


def test_forward_mode_runs_through_the_unet_and_agrees_with_reverse_mode(
    tiny_model: DiffusionModel, single_thread: None
) -> None:
    """The attention block hands GroupNorm a strided tensor, whose forward-AD formula failed on the CPU."""
    x_t = torch.randn(3, 16, 16, generator=torch.Generator().manual_seed(8))
    generator = torch.Generator().manual_seed(9)
    with frozen(tiny_model.unet):
        for function, point in [(h_of_x(tiny_model, TIMESTEP), x_t), eps_of_h(tiny_model, x_t, TIMESTEP)]:
            forward, reverse = (jacobian_operator(function, point, chunk_size=3, mode=m) for m in ("forward", "auto"))
            v = torch.randn(forward.shape[1], 5, dtype=torch.float64, generator=generator)  # chunks of 3 and 2
            assert torch.allclose(forward.matmat(v), reverse.matmat(v), rtol=1e-4, atol=1e-6)


def test_krylov_on_dense_matrix_matches_svd_and_exhausting_the_space_is_exact() -> None:
    generator = torch.Generator().manual_seed(0)
    matrix = torch.randn(40, 12, generator=generator, dtype=torch.float64)
    _, values, right = torch.linalg.svd(matrix, full_matrices=False)
    result = block_krylov_svd(dense(matrix), 4, block_size=4, tolerance=1e-30, max_iterations=10)
    # 12 columns: three blocks of 4 span everything, so the answer is exact however small the tolerance.
    assert result.converged and result.iterations == 2
    assert torch.allclose(result.singular_values, values[:4], rtol=1e-12)
    signs = canonical_signs(right[:4]).unsqueeze(-1)
    assert torch.allclose(result.right_vectors, right[:4] * signs, atol=1e-10)


@pytest.mark.parametrize("jacobian", ["pullback d h/d x_t", "denoiser d eps/d h"])
@pytest.mark.parametrize("k", [3, 8])
def test_krylov_matches_explicit_unet_jacobian_svd(
    tiny_model: DiffusionModel, single_thread: None, jacobian: str, k: int
) -> None:
    x_t = torch.randn(3, 16, 16, generator=torch.Generator().manual_seed(2))
    with frozen(tiny_model.unet):
        function, point = (h_of_x(tiny_model, TIMESTEP), x_t) if jacobian.startswith("pullback") else eps_of_h(
            tiny_model, x_t, TIMESTEP
        )
        reference = explicit_jacobian(jacobian_operator(function, point, chunk_size=64))
        result = block_krylov_svd(jacobian_operator(function, point, chunk_size=16), k, compute_left=True)
    _, values, right = torch.linalg.svd(reference, full_matrices=False)
    assert result.converged
    assert ((result.singular_values - values[:k]).abs() / values[:k]).max() < 1e-3
    assert largest_sine(result.right_vectors, right[:k]) < 1e-2
    # The pullback basis: orthonormal v, ||J v_i|| = sigma_i, non-increasing sigma, u_i = J v_i / sigma_i.
    v = result.right_vectors
    assert torch.allclose(v @ v.mT, torch.eye(k, dtype=torch.float64), atol=1e-10)
    assert torch.allclose((reference @ v.mT).norm(dim=0), result.singular_values, rtol=1e-5)
    assert (result.singular_values[1:] <= result.singular_values[:-1]).all()
    assert torch.allclose(result.left_vectors.norm(dim=1), torch.ones(k, dtype=torch.float64), atol=1e-5)


def test_krylov_is_reproducible_from_its_seed_and_signs_are_canonical(
    tiny_model: DiffusionModel, single_thread: None
) -> None:
    x_t = torch.randn(3, 16, 16, generator=torch.Generator().manual_seed(3))
    with frozen(tiny_model.unet):
        op = jacobian_operator(h_of_x(tiny_model, TIMESTEP), x_t, chunk_size=8)
        first = block_krylov_svd(op, 3, seed=5)
        second = block_krylov_svd(op, 3, seed=5)
        other = block_krylov_svd(op, 3, seed=6)
    assert torch.equal(first.right_vectors, second.right_vectors)
    assert torch.equal(first.singular_values, second.singular_values)
    # Another start converges to the same triplets, with the same signs (largest entry positive).
    assert torch.allclose(first.singular_values, other.singular_values, rtol=1e-4)
    assert (first.right_vectors * other.right_vectors).sum(dim=1).min() > 0.999
    largest = first.right_vectors.abs().argmax(dim=1)
    assert (first.right_vectors.gather(1, largest[:, None]) > 0).all()


def test_unconverged_run_is_flagged_not_hidden() -> None:
    matrix = torch.randn(200, 150, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    result = block_krylov_svd(dense(matrix), 5, tolerance=1e-12, max_iterations=1)
    assert not result.converged and result.iterations == 1 and result.products == 2 * 5 * 2


def test_frozen_restores_requires_grad_and_mode(mlp: torch.nn.Module) -> None:
    mlp.train()
    mlp[0].weight.requires_grad_(True)
    with frozen(mlp):
        assert not any(parameter.requires_grad for parameter in mlp.parameters()) and not mlp.training
    assert mlp[0].weight.requires_grad and not mlp[0].bias.requires_grad and mlp.training
    mlp.requires_grad_(False).eval()


def test_h_of_x_stops_at_h_and_equals_the_captured_activation(
    tiny_model: DiffusionModel, single_thread: None
) -> None:
    from pipeline.diffusion.hspace import HSpaceHook

    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    with torch.no_grad(), HSpaceHook(tiny_model.unet, "after") as hook:
        tiny_model.unet(x, TIMESTEP)
    with torch.no_grad():
        assert torch.equal(h_of_x(tiny_model, TIMESTEP)(x), hook.h)


def test_eps_of_h_at_the_clean_h_is_the_unedited_denoiser(tiny_model: DiffusionModel, single_thread: None) -> None:
    x_t = torch.randn(3, 16, 16, generator=torch.Generator().manual_seed(5))
    denoise, clean = eps_of_h(tiny_model, x_t, TIMESTEP)
    with torch.no_grad():
        reference = tiny_model.unet(x_t.unsqueeze(0), TIMESTEP).sample
        assert torch.allclose(denoise(clean.unsqueeze(0)), reference, atol=1e-6)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda op: block_krylov_svd(op, 0), "k 0"),
        (lambda op: block_krylov_svd(op, 21), r"k 21: .*\[1, 20\]"),
        (lambda op: block_krylov_svd(op, 2, block_size=0), "block_size 0"),
        (lambda op: block_krylov_svd(op, 2, tolerance=0), "tolerance 0"),
        (lambda op: block_krylov_svd(op, 2, max_iterations=-1), "max_iterations -1"),
    ],
)
def test_bad_solver_input_is_one_line_naming_it(call, message: str) -> None:
    op = dense(torch.randn(30, 20, dtype=torch.float64))
    with pytest.raises(ConfigError, match=message):
        call(op)


def test_bad_jacobian_settings_are_errors(mlp: torch.nn.Module) -> None:
    point = torch.zeros(20)
    with pytest.raises(ConfigError, match="mode 'sideways'"):
        jacobian_operator(mlp, point, mode="sideways")
    with pytest.raises(ConfigError, match="chunk_size 0"):
        jacobian_operator(mlp, point, chunk_size=0)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"block_size": 0}, r"solver\.block_size=0: must be >= 1$"),
        ({"block_size": 2.0}, r"solver\.block_size=2\.0: must be an integer or null$"),
        ({"tolerance": 0.0}, r"solver\.tolerance=0\.0: must be > 0$"),
        ({"tolerance": "1e-4"}, r"solver\.tolerance='1e-4': must be a number$"),
        ({"max_iterations": -1}, r"solver\.max_iterations=-1: must be >= 0$"),
        ({"chunk_size": 0}, r"solver\.chunk_size=0: must be >= 1$"),
        ({"mode": "sideways"}, r"solver\.mode='sideways': must be one of auto, forward, reverse$"),
        ({"seed": None}, r"solver\.seed=None: must be an integer$"),
    ],
)
def test_solver_config_check_names_the_key_in_one_line(settings: dict, message: str) -> None:
    SolverConfig(block_size=None).check("directions.jacobian.solver")  # the defaults are valid
    SolverConfig(block_size=4, tolerance=1, max_iterations=0, chunk_size=1, mode="forward").check("x")
    with pytest.raises(ConfigError, match=r"^params: directions\.jacobian\." + message):
        SolverConfig(**settings).check("directions.jacobian.solver")
