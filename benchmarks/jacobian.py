"""Suite ``jacobian``: the project's block Krylov solver against the papers' schemes, on one sample's Jacobians.

Two maps at one x_t (a mid step of the DDIM grid): J2 = d eps / d h (paper A,
:func:`pipeline.diffusion.hspace.eps_of_h`) against sequential power iteration
(:func:`benchmarks.reference.sequential_power_iteration`), and J1 = d h / d x_t
(paper B's pullback, :func:`pipeline.diffusion.hspace.h_of_x`) against subspace iteration
(:func:`benchmarks.reference.subspace_iteration`). Both are compared with the exact SVD of the explicitly formed
Jacobian (or, for maps too large to form, a tightly converged block Krylov solve, see ``truth``); the project's
:func:`pipeline.linalg.block_krylov_svd` is tightened until it is at least as accurate as the reference on both
measures, and the two are timed.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from benchmarks.reference import (
    POWER_MAX_ITERS,
    POWER_TOLERANCE,
    SUBSPACE_CHUNK,
    SUBSPACE_MAX_ITER,
    SUBSPACE_MIN_ITER,
    SUBSPACE_THRESHOLD,
    ReferenceResult,
    sequential_power_iteration,
    subspace_iteration,
    synchronize,
)
from pipeline.diffusion.hspace import eps_of_h, h_of_x
from pipeline.diffusion.models import DiffusionModel
from pipeline.diffusion.sampling import ddim_grid, denoise_steps, initial_noise
from pipeline.io.errors import ConfigError
from pipeline.linalg import JACOBIAN_MODES, LinearOperator, block_krylov_svd, frozen, jacobian_operator

TOLERANCE_LADDER = (3e-1, 2e-1, 1e-1, 5e-2, 3e-2, 2e-2, 1e-2, 5e-3, 3e-3, 2e-3, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8)
"""Tolerances tried for the project's solver, loosest first, until it is accurate enough (steps of about 1.5-2x
down to 1e-3, where one Lanczos iteration more or less is a tenth of the products of a few-triplet solve)."""
TRUTHS = ("auto", "exact", "krylov")
MAPS = ("J2", "J1")


@dataclass
class JacobianBenchConfig:
    """Settings of the ``jacobian`` suite.

    Attributes:
        maps: which Jacobians to benchmark, in this order ("J2": d eps / d h against paper A's scheme, "J1":
            d h / d x_t against paper B's).
        steps: DDIM grid size used to pick x_t; ``step_index`` the grid step (None: steps // 2, a mid timestep).
        seed: seed of the sample whose x_t is used (and of every solver's start vectors).
        location: h site.
        power_k, power_tolerance, power_max_iters: reference 2.2 (paper A) settings, on J2.
        subspace_n, subspace_min_iter, subspace_max_iter, subspace_threshold, subspace_chunk: reference 3.2
            (paper B) settings, on J1.
        chunk_size: vectors per batched UNet call in the project's operator.
        exact_chunk: vectors per batched call when forming the exact Jacobian (None: ``chunk_size``).
        mode: how J v is computed ("auto" | "forward" | "reverse", see pipeline.linalg.jacobian_operator).
        reference_mode: how the reference schemes compute J v. None: ``mode``, the project's own product engine,
            so that the comparison isolates the algorithm. "forward": as the papers' code does
            (docs/methods.md, "Jacobian directions"), by forward-mode AD with a fresh forward pass per call and
            torch's own convolution derivatives (J^T u goes through the retained graph either way); the ratios
            then also contain the product engine. Forward mode needs every layer's forward-AD formula; where
            one is missing the run stops with an error naming this setting.
        product_repeats: timed calls per entry of the product-cost table (``products``, the median is kept).
        truth: what accuracy is measured against. "exact": the explicitly formed Jacobian's SVD (min(m, d)
            products and an eigendecomposition of a min(m, d)-square Gram matrix); "krylov": a block Krylov
            solve of ``truth_extra`` more triplets than needed, at ``truth_tolerance``, from another start block
            than the compared runs; "auto": exact when min(m, d) <= ``exact_limit``, else krylov.
        truth_tolerance, truth_max_iterations, truth_extra: settings of the Krylov truth.
        tolerances: the project's tolerance ladder, loosest first.
        krylov_max_iterations: cap on the Krylov blocks (besides exhausting the input dimension).
        krylov_block_sizes: block sizes the project's solver is run with against the references (None: k); the
            fastest that reaches the reference's accuracy is compared. Block 1 needs the fewest products for a
            few triplets, larger blocks batch better (GPU) and resolve clustered singular values.
        sweep_sizes: k (or n) of the size sweep; sizes above min(m, d) are skipped.
        sweep_sv_target, sweep_sine_target: the sweep's target accuracy.
        sweep_references: also run the matching reference in the sweep (where within ``max_reference_products``).
        max_reference_products: worst-case product budget of one sweep reference run (else skipped).
        warmup: untimed runs before each timed run (sweep references: none; their operators are primed).
        reference_warmup: untimed runs of each reference scheme before its timed run (None: ``warmup``). Its
            operators' graphs and kernels are primed anyway (one product of every batch size it uses), so 0
            only skips re-running it; on a GPU paper B's n = 50 scheme runs for minutes.
    """

    maps: tuple[str, ...] = MAPS
    steps: int = 20
    step_index: int | None = None
    seed: int = 0
    location: str = "after"
    power_k: int = 3
    power_tolerance: float = POWER_TOLERANCE
    power_max_iters: int = POWER_MAX_ITERS
    subspace_n: int = 50
    subspace_min_iter: int = SUBSPACE_MIN_ITER
    subspace_max_iter: int = SUBSPACE_MAX_ITER
    subspace_threshold: float = SUBSPACE_THRESHOLD
    subspace_chunk: int = SUBSPACE_CHUNK
    chunk_size: int = 16
    exact_chunk: int | None = None
    mode: str = "auto"
    reference_mode: str | None = None
    product_repeats: int = 3
    truth: str = "auto"
    exact_limit: int = 8192
    truth_tolerance: float = 1e-6
    truth_max_iterations: int = 150
    truth_extra: int = 8
    tolerances: tuple[float, ...] = TOLERANCE_LADDER
    krylov_max_iterations: int = 200
    krylov_block_sizes: tuple[int | None, ...] = (None, 1)
    sweep_sizes: tuple[int, ...] = (3, 8, 32, 50)
    sweep_sv_target: float = 1e-3
    sweep_sine_target: float = 1e-2
    sweep_references: bool = True
    max_reference_products: int = 6000
    warmup: int = 1
    reference_warmup: int | None = None

    def __post_init__(self) -> None:
        for name in ("steps", "power_k", "power_max_iters", "subspace_n", "subspace_max_iter", "subspace_chunk",
                     "chunk_size", "krylov_max_iterations", "max_reference_products", "exact_limit",
                     "truth_max_iterations", "truth_extra", "product_repeats"):  # fmt: skip
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"jacobian {name} {value!r}: must be a positive integer")
        if not self.maps or any(name not in MAPS for name in self.maps) or len(set(self.maps)) < len(self.maps):
            raise ConfigError(f"jacobian maps {self.maps!r}: expected distinct names among {', '.join(MAPS)}")
        if self.exact_chunk is None:
            self.exact_chunk = self.chunk_size
        if isinstance(self.exact_chunk, bool) or not isinstance(self.exact_chunk, int) or self.exact_chunk < 1:
            raise ConfigError(f"jacobian exact_chunk {self.exact_chunk!r}: must be a positive integer")
        if self.truth not in TRUTHS:
            raise ConfigError(f"jacobian truth {self.truth!r}: expected one of {', '.join(TRUTHS)}")
        if not self.truth_tolerance > 0:
            raise ConfigError(f"jacobian truth_tolerance {self.truth_tolerance!r}: must be positive")
        if self.mode not in JACOBIAN_MODES:
            raise ConfigError(f"jacobian mode {self.mode!r}: expected one of {', '.join(JACOBIAN_MODES)}")
        if self.reference_mode is None:
            self.reference_mode = self.mode
        if self.reference_mode not in JACOBIAN_MODES:
            raise ConfigError(
                f"jacobian reference_mode {self.reference_mode!r}: expected one of {', '.join(JACOBIAN_MODES)}"
            )
        if not self.tolerances or any(not t > 0 for t in self.tolerances):
            raise ConfigError(f"jacobian tolerances {self.tolerances!r}: must be a non-empty list of positive numbers")
        if not self.krylov_block_sizes or any(size is not None and size < 1 for size in self.krylov_block_sizes):
            raise ConfigError(f"jacobian krylov_block_sizes {self.krylov_block_sizes!r}: must be positive or k")
        if not self.sweep_sizes or any(s < 1 for s in self.sweep_sizes):
            raise ConfigError(f"jacobian sweep_sizes {self.sweep_sizes!r}: must be positive integers")
        if self.warmup < 0:
            raise ConfigError(f"jacobian warmup {self.warmup!r}: must be >= 0")
        if self.reference_warmup is None:
            self.reference_warmup = self.warmup
        if self.reference_warmup < 0:
            raise ConfigError(f"jacobian reference_warmup {self.reference_warmup!r}: must be >= 0")


@dataclass
class Truth:
    """The spectrum accuracy is measured against: singular values (descending; all min(m, d) of them for the
    explicit SVD, the top r for a Krylov truth) and top right vectors [r, d]; how it was obtained and its cost."""

    singular_values: torch.Tensor
    right_vectors: torch.Tensor
    seconds: float
    products: int
    method: str = "explicit_svd"
    converged: bool = True


@dataclass
class JacobianMap:
    """One Jacobian to benchmark: name, the function and the point it is taken at."""

    name: str
    description: str
    function: Callable[[torch.Tensor], torch.Tensor]
    point: torch.Tensor
    operators: dict[tuple[int, str, bool], LinearOperator] = field(default_factory=dict)

    def operator(self, chunk: int, mode: str, transposed_conv_gradients: bool = True) -> LinearOperator:
        """The Jacobian as an operator batching ``chunk`` vectors per call, J v by ``mode`` (built once per
        setting, so its autograd graphs are reused by every later run; see pipeline.linalg.jacobian_operator)."""
        key = (chunk, mode, transposed_conv_gradients)
        if key not in self.operators:
            self.operators[key] = jacobian_operator(
                self.function, self.point, chunk_size=chunk, mode=mode,
                transposed_conv_gradients=transposed_conv_gradients,
            )  # fmt: skip
        return self.operators[key]

    def reference_operator(self, chunk: int, cfg: JacobianBenchConfig) -> LinearOperator:
        """The operator the reference schemes run on: the project's (``cfg.mode``) or, with
        ``cfg.reference_mode`` "forward", the papers' products (fresh forward-mode passes, torch's derivatives)."""
        assert cfg.reference_mode is not None  # resolved by JacobianBenchConfig
        if cfg.reference_mode == cfg.mode:
            return self.operator(chunk, cfg.mode)
        return self.operator(chunk, cfg.reference_mode, transposed_conv_gradients=cfg.reference_mode != "forward")

    def release(self) -> None:
        """Drop the operators and their autograd graphs (on a 256 px UNet, a few GiB of GPU memory per
        replicated sample), so that the next map starts from free memory."""
        self.operators.clear()
        if self.point.device.type == "cuda":
            torch.cuda.empty_cache()


def exact_spectrum(op: LinearOperator, top: int, chunk: int) -> Truth:
    """The exact Jacobian [m, d] formed row by row (``rmatmat`` of identity columns, ``chunk`` at a time), and
    its singular values [min(m, d)] and top-``top`` right singular vectors [top, d], from the eigendecomposition
    of the smaller Gram matrix in float64."""
    rows, columns = op.shape
    synchronize(op.device)
    start = time.perf_counter()
    block = 8 * chunk
    parts = []
    for begin in range(0, rows, block):
        width = min(block, rows - begin)
        identity = torch.zeros(rows, width, dtype=torch.float64, device=op.device)
        identity[torch.arange(begin, begin + width), torch.arange(width)] = 1.0
        parts.append(op.rmatmat(identity).mT)
    jacobian = torch.cat(parts).cpu()  # [m, d]
    if rows >= columns:
        values, vectors = torch.linalg.eigh(jacobian.mT @ jacobian)
        values, vectors = values.flip(0).clamp(min=0), vectors.flip(1)
        singular = values.sqrt()
        right = vectors[:, :top].mT
    else:
        values, vectors = torch.linalg.eigh(jacobian @ jacobian.mT)
        values, vectors = values.flip(0).clamp(min=0), vectors.flip(1)
        singular = values.sqrt()
        right = (jacobian.mT @ vectors[:, :top]) / singular[:top].clamp(min=torch.finfo(torch.float64).tiny)
        right = right.mT
    seconds = time.perf_counter() - start
    return Truth(singular_values=singular, right_vectors=right.contiguous(), seconds=seconds, products=rows)


def krylov_truth(op: LinearOperator, top: int, cfg: JacobianBenchConfig) -> Truth:
    """The top-``top`` spectrum of ``op`` by :func:`pipeline.linalg.block_krylov_svd` run for ``top +
    cfg.truth_extra`` triplets (the extra ones keep the top ``top`` away from the slowest-converging edge of
    the search space) at ``cfg.truth_tolerance``, started from seed ``cfg.seed + 1`` so that it shares no start
    block with the runs it judges. For Jacobians too large to form; its own error is of the order of the
    tolerance (and, in float32, of float32 rounding, ~1e-6 relative)."""
    rows, columns = op.shape
    size = min(top + cfg.truth_extra, rows, columns)
    synchronize(op.device)
    start = time.perf_counter()
    with quiet_solver():
        result = block_krylov_svd(
            op, size, tolerance=cfg.truth_tolerance, seed=cfg.seed + 1,
            max_iterations=min(cfg.truth_max_iterations, math.ceil(columns / size)),
        )  # fmt: skip
    synchronize(op.device)
    return Truth(
        singular_values=result.singular_values[:top].cpu(),
        right_vectors=result.right_vectors[:top].cpu().contiguous(),
        seconds=time.perf_counter() - start,
        products=int(result.products),
        method="block_krylov",
        converged=bool(result.converged),
    )


def truth_method(shape: tuple[int, int], cfg: JacobianBenchConfig) -> str:
    """"exact" or "krylov": ``cfg.truth``, with "auto" resolved by min(m, d) against ``cfg.exact_limit``."""
    if cfg.truth != "auto":
        return cfg.truth
    return "exact" if min(shape) <= cfg.exact_limit else "krylov"


def accuracy(values: torch.Tensor, right_rows: torch.Tensor, truth: Truth) -> dict[str, float]:
    """How close estimates are to the exact top-k spectrum.

    Args:
        values: [k] estimated singular values (compared after sorting, descending).
        right_rows: [k, d] estimated right singular vectors (any basis of the subspace; orthonormalised here).
        truth: the true spectrum (at least k right vectors).

    Returns:
        ``sv_rel_error``: max_i |s_i - sigma_i| / sigma_i over the top k; ``max_sine``: sine of the largest
        principal angle between the estimated and exact top-k right subspaces, computed as the 2-norm of the
        component of the estimated basis outside the exact subspace (accurate near 0).
    """
    k = len(values)
    estimated = values.detach().double().cpu().sort(descending=True).values
    expected = truth.singular_values[:k]
    relative = ((estimated - expected).abs() / expected.clamp(min=torch.finfo(torch.float64).tiny)).max()
    basis = torch.linalg.qr(right_rows.detach().double().cpu().mT).Q  # [d, k]
    reference = truth.right_vectors[:k].mT  # [d, k]
    outside = basis - reference @ (reference.mT @ basis)
    sine = torch.linalg.matrix_norm(outside, ord=2).clamp(max=1.0)
    return {"sv_rel_error": float(relative), "max_sine": float(sine)}


def timed(run: Callable[[], Any], device: torch.device, warmup: int) -> tuple[Any, float]:
    """(result, seconds) of ``run()`` after ``warmup`` untimed calls; CUDA is synchronised around the timing."""
    for _ in range(warmup):
        run()
    synchronize(device)
    start = time.perf_counter()
    result = run()
    synchronize(device)
    return result, time.perf_counter() - start


@contextlib.contextmanager
def quiet_solver() -> Iterator[None]:
    """Silence block_krylov_svd's not-converged warnings (the ladder records ``converged`` itself)."""
    solver_logger = logging.getLogger("pipeline.linalg.solvers")
    level = solver_logger.level
    solver_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        solver_logger.setLevel(level)


def krylov_ladder(
    jmap: JacobianMap,
    k: int,
    truth: Truth,
    sv_target: float,
    sine_target: float,
    cfg: JacobianBenchConfig,
    block_sizes: Sequence[int | None] = (None,),
) -> dict[str, Any]:
    """For each block size (None: k), run block_krylov_svd at each tolerance of ``cfg.tolerances`` (loosest
    first) until its accuracy against ``truth`` is at most ``sv_target`` (relative singular-value error) and
    ``sine_target`` (largest sine). Products are batched ``min(chunk_size, block)`` vectors per UNet call.

    Returns ``{"attempts": [...], "matched": attempt or None, "reached": bool}``; each attempt holds the block
    size, tolerance, products, iterations, converged, seconds (one warm-up run before a block size's first) and
    the accuracy; ``matched`` is the fastest attempt that reached the targets.
    """
    attempts: list[dict[str, Any]] = []
    matches = []
    for block in dict.fromkeys(min(k if size is None else size, k) for size in block_sizes):
        op = jmap.operator(min(cfg.chunk_size, block), cfg.mode)
        cap = min(cfg.krylov_max_iterations, math.ceil(op.shape[1] / block))
        with quiet_solver():
            for position, tolerance in enumerate(cfg.tolerances):
                run = functools.partial(
                    block_krylov_svd, op, k, block_size=block, tolerance=tolerance, max_iterations=cap, seed=cfg.seed
                )
                result, seconds = timed(run, op.device, cfg.warmup if position == 0 else 0)
                attempt = {
                    "block_size": block,
                    "tolerance": tolerance,
                    "products": int(result.products),
                    "iterations": int(result.iterations),
                    "converged": bool(result.converged),
                    "seconds": seconds,
                    **accuracy(result.singular_values, result.right_vectors, truth),
                }
                attempts.append(attempt)
                if attempt["sv_rel_error"] <= sv_target and attempt["max_sine"] <= sine_target:
                    matches.append(attempt)
                    break
    matched = min(matches, key=lambda attempt: attempt["seconds"]) if matches else None
    return {"attempts": attempts, "matched": matched, "reached": matched is not None}


def reference_summary(result: ReferenceResult, truth: Truth) -> dict[str, Any]:
    """JSON-ready summary of a reference run: cost, own convergence and accuracy against ``truth``."""
    return {
        "products": result.products,
        "jvps": result.jvps,
        "vjps": result.vjps,
        "iterations": result.iterations,
        "converged": result.converged,
        "seconds": result.seconds,
        "singular_values": result.singular_values.tolist(),
        **accuracy(result.singular_values, result.right_vectors, truth),
    }


def comparison(reference: dict[str, Any], ladder: dict[str, Any]) -> dict[str, Any]:
    """Speed and product ratios reference / project at the project's first attempt that matches the reference
    (None when it never does)."""
    matched = ladder["matched"]
    if matched is None:
        return {"reached": False, "speed_ratio": None, "products_ratio": None}
    return {
        "reached": True,
        "speed_ratio": reference["seconds"] / matched["seconds"] if matched["seconds"] > 0 else None,
        "products_ratio": reference["products"] / matched["products"],
    }


PRODUCT_ENGINES = (
    ("jvp_reverse_torch", "reverse", False),
    ("jvp_reverse_transposed", "reverse", True),
    ("jvp_forward", "forward", False),
)
"""The J v engines of the product-cost table: (name, mode, transposed_conv_gradients). The project's default is
``jvp_reverse_transposed``; ``jvp_forward`` is how the papers' code computes J v."""
PROJECT_ENGINE = "jvp_reverse_transposed"
"""The project's default J v engine (:func:`pipeline.linalg.jacobian_operator`'s defaults)."""


def product_costs(jmap: JacobianMap, cfg: JacobianBenchConfig) -> dict[str, Any]:
    """Milliseconds per call of J^T u and of J v by each engine of :data:`PRODUCT_ENGINES`, at batch sizes 1 and
    ``cfg.chunk_size``, side by side on one map: the median of ``cfg.product_repeats`` timed calls after one
    untimed call (which builds the graphs). An engine that fails (forward mode through a layer without a
    forward-AD formula, or out of memory) is recorded with its error. Operators are built here and dropped,
    not cached on the map.

    Returns ``{"batches": {str(b): {"vjp_ms": .., "<engine>_ms": .. or None, "<engine>_error": ..}},
    "jvp_speedup_transposed": {str(b): jvp_reverse_torch_ms / jvp_reverse_transposed_ms, or None},
    "batch_consistency": see :func:`batch_consistency`}``.
    """
    generator = torch.Generator("cpu").manual_seed(cfg.seed)
    batches: dict[str, dict[str, Any]] = {}
    project_operators: dict[int, LinearOperator] = {}
    for batch in dict.fromkeys([1, cfg.chunk_size]):
        row: dict[str, Any] = {}
        for name, mode, transposed in PRODUCT_ENGINES:
            op = jacobian_operator(
                jmap.function, jmap.point, chunk_size=batch, mode=mode, transposed_conv_gradients=transposed
            )
            if name == PROJECT_ENGINE:
                project_operators[batch] = op
            rows, columns = op.shape
            tangents = torch.randn(columns, batch, generator=generator, dtype=torch.float64).to(op.device)
            try:
                row[f"{name}_ms"] = _median_ms(op.matmat, tangents, cfg.product_repeats)
            except RuntimeError as error:
                row[f"{name}_ms"], row[f"{name}_error"] = None, str(error).splitlines()[0]
            if "vjp_ms" not in row:
                cotangents = torch.randn(rows, batch, generator=generator, dtype=torch.float64).to(op.device)
                row["vjp_ms"] = _median_ms(op.rmatmat, cotangents, cfg.product_repeats)
        batches[str(batch)] = row
    consistency = batch_consistency(project_operators[1], project_operators[cfg.chunk_size], cfg.chunk_size, cfg.seed)
    project_operators.clear()
    if jmap.point.device.type == "cuda":
        torch.cuda.empty_cache()
    speedup = {
        batch: row["jvp_reverse_torch_ms"] / row["jvp_reverse_transposed_ms"]
        if row["jvp_reverse_torch_ms"] and row["jvp_reverse_transposed_ms"]
        else None
        for batch, row in batches.items()
    }
    return {"batches": batches, "jvp_speedup_transposed": speedup, "batch_consistency": consistency}


def batch_consistency(single: LinearOperator, batched: LinearOperator, vectors: int, seed: int) -> dict[str, Any]:
    """How far the same products differ between batch sizes: ``vectors`` random vectors (seeded by ``seed``)
    multiplied by one operator one at a time (``single``) and by one in one batch (``batched``). Convolution
    libraries pick their algorithm by batch size, so in float32 on a GPU the two differ by far more than
    float32's rounding (an H100, celebahq-256 J2: 5.6e-5 for J v, 7.5e-5 for J^T u), and so do the singular
    values of solvers that batch differently: that is the accuracy below which no comparison of solvers on
    this map means anything.

    Returns ``{"vectors": vectors, "jvp_rel_diff": .., "vjp_rel_diff": ..}``: the largest relative 2-norm
    difference over the vectors (0 when ``batched`` is ``single``).
    """
    generator = torch.Generator("cpu").manual_seed(seed)
    rows, columns = single.shape
    differences = {}
    for name, size, product, batched_product in (
        ("jvp_rel_diff", columns, single.matmat, batched.matmat),
        ("vjp_rel_diff", rows, single.rmatmat, batched.rmatmat),
    ):
        block = torch.randn(size, vectors, generator=generator, dtype=torch.float64).to(single.device)
        one_by_one = torch.cat([product(block[:, [column]]) for column in range(vectors)], dim=1)
        together = batched_product(block)
        differences[name] = ((one_by_one - together).norm(dim=0) / together.norm(dim=0)).max().item()
    return {"vectors": vectors, **differences}


def _median_ms(product: Callable[[torch.Tensor], torch.Tensor], vectors: torch.Tensor, repeats: int) -> float:
    run = functools.partial(product, vectors)
    seconds = [timed(run, vectors.device, warmup=1 if repeat == 0 else 0)[1] for repeat in range(repeats)]
    return 1e3 * statistics.median(seconds)


def build_maps(model: DiffusionModel, cfg: JacobianBenchConfig) -> tuple[dict[str, JacobianMap], dict[str, Any]]:
    """x_t of sample ``cfg.seed`` at the chosen grid step (DDIM, eta 0) and the two maps J1 and J2 there."""
    grid = ddim_grid(model.scheduler, cfg.steps)
    step = cfg.steps // 2 if cfg.step_index is None else cfg.step_index
    if not 0 <= step < cfg.steps:
        raise ConfigError(f"jacobian step_index {step!r}: outside [0, {cfg.steps})")
    x_T, _ = initial_noise(model.sample_shape, [cfg.seed], cfg.steps, 0.0)
    x_step, _ = denoise_steps(model, x_T, steps=cfg.steps, stop_step=step)  # x just before grid step ``step``
    x_t = x_step[0].to(device=model.device, dtype=model.unet.dtype)
    timestep = int(grid.timesteps[step])
    denoiser, clean_h = eps_of_h(model, x_t, timestep, cfg.location)
    maps = {
        "J2": JacobianMap("J2", "d eps / d h (paper A, reference 2.2)", denoiser, clean_h),
        "J1": JacobianMap(
            "J1", "d h / d x_t (paper B pullback, reference 3.2)", h_of_x(model, timestep, cfg.location), x_t
        ),
    }
    where = {"step_index": step, "timestep": timestep, "seed": cfg.seed, "location": cfg.location}
    return maps, where


def run_jacobian(
    model: DiffusionModel,
    cfg: JacobianBenchConfig,
    log: Callable[[str], None] = print,
    on_map: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run the whole ``jacobian`` suite on ``model``; returns the JSON-ready results (see benchmarks/README.md).
    ``on_map`` is called with the results so far after each map, so that a run stopped by a time limit keeps
    the maps it finished."""
    results: dict[str, Any] = {}
    with frozen(model.unet):
        maps, where = build_maps(model, cfg)
        results["point"] = where
        schemes = {"J2": ("power_iteration_2.2", cfg.power_k), "J1": ("subspace_iteration_3.2", cfg.subspace_n)}
        for name in cfg.maps:  # one map at a time: its graphs are freed before the next
            scheme, size = schemes[name]
            jmap = maps[name]
            log(f"[jacobian] {name} product costs: J^T u, and J v by {', '.join(e[0] for e in PRODUCT_ENGINES)}")
            costs = product_costs(jmap, cfg)  # before this map's cached graphs exist: one engine's graphs at a time
            log(f"[jacobian] {name} ms per call: {costs['batches']}")
            if cfg.reference_mode != cfg.mode:
                _prime(jmap, scheme, size, cfg)  # fail before the truth's cost if the papers' products cannot run
            op = jmap.operator(cfg.chunk_size, cfg.mode)
            rows, columns = op.shape
            top = min(min(rows, columns), max(size, *cfg.sweep_sizes))
            if truth_method((rows, columns), cfg) == "exact":
                log(f"[jacobian] {name} {jmap.description}: shape {rows} x {columns}; forming the exact Jacobian")
                truth = exact_spectrum(jmap.operator(cfg.exact_chunk, cfg.mode), top, cfg.exact_chunk)
            else:
                log(f"[jacobian] {name} {jmap.description}: shape {rows} x {columns}; Krylov truth, top {top}")
                truth = krylov_truth(op, top, cfg)
            log(f"[jacobian] {name} truth ({truth.method}): {truth.products} products, {truth.seconds:.1f} s")
            results[name] = {
                "description": jmap.description,
                "shape": [rows, columns],
                "products": costs,
                "truth": {
                    "method": truth.method,
                    "converged": truth.converged,
                    "seconds": truth.seconds,
                    "products": truth.products,
                    "top_singular_values": truth.singular_values[:top].tolist(),
                },
                "reference": _reference_and_ladder(jmap, truth, scheme, size, cfg, log),
                "sweep": _sweep(jmap, truth, name, cfg, log),
            }
            jmap.release()
            if on_map is not None:
                on_map(results)
    return results


def _run_reference(jmap: JacobianMap, scheme: str, size: int, cfg: JacobianBenchConfig) -> ReferenceResult:
    if scheme.startswith("power"):
        op = jmap.reference_operator(cfg.chunk_size, cfg)
        return sequential_power_iteration(
            op, size, tolerance=cfg.power_tolerance, max_iters=cfg.power_max_iters, seed=cfg.seed
        )
    op = jmap.reference_operator(cfg.subspace_chunk, cfg)
    return subspace_iteration(
        op,
        size,
        min_iter=cfg.subspace_min_iter,
        max_iter=cfg.subspace_max_iter,
        threshold=cfg.subspace_threshold,
        chunk=cfg.subspace_chunk,
        seed=cfg.seed,
    )


def _prime(jmap: JacobianMap, scheme: str, size: int, cfg: JacobianBenchConfig) -> None:
    """Build the autograd graphs a reference run needs (J^T u: one vector; J v: the batch sizes it uses) before
    timing it; a forward-mode failure of ``cfg.reference_mode`` "forward" is a ConfigError naming the setting."""
    chunk = cfg.chunk_size if scheme.startswith("power") else cfg.subspace_chunk
    op = jmap.reference_operator(chunk, cfg)
    rows, columns = op.shape
    op.rmatmat(torch.zeros(rows, 1, dtype=torch.float64, device=op.device))
    if scheme.startswith("power"):
        widths = [1]  # single-vector products only
    else:
        widths = list(dict.fromkeys([min(chunk, size), *([size % chunk] if size % chunk and size > chunk else [])]))
    for width in widths:
        try:
            op.matmat(torch.zeros(columns, width, dtype=torch.float64, device=op.device))
        except RuntimeError as error:  # a layer without a forward-AD formula on this device
            if cfg.reference_mode != "forward":
                raise
            raise ConfigError(
                f"jacobian reference_mode 'forward': forward-mode AD fails on {jmap.name} on {op.device.type} "
                f"({str(error).splitlines()[0]}); use the project's products (reference_mode unset)"
            ) from error


def _reference_and_ladder(
    jmap: JacobianMap, truth: Truth, scheme: str, size: int, cfg: JacobianBenchConfig, log: Callable[[str], None]
) -> dict[str, Any]:
    rows, columns = jmap.operator(cfg.chunk_size, cfg.mode).shape
    if size > min(rows, columns):
        raise ConfigError(f"{scheme}: size {size} exceeds min(m, d) = {min(rows, columns)} of {jmap.name}")
    _prime(jmap, scheme, size, cfg)
    for _ in range(cfg.reference_warmup):
        _run_reference(jmap, scheme, size, cfg)
    reference = reference_summary(_run_reference(jmap, scheme, size, cfg), truth)
    log(
        f"[jacobian] {jmap.name} {scheme} k={size}: {reference['products']} products, {reference['seconds']:.3f} s, "
        f"sv err {reference['sv_rel_error']:.2e}, sine {reference['max_sine']:.2e}"
    )
    ladder = krylov_ladder(
        jmap, size, truth, reference["sv_rel_error"], reference["max_sine"], cfg, cfg.krylov_block_sizes
    )
    result = {"scheme": scheme, "k": size, "reference": reference, "project": ladder, **comparison(reference, ladder)}
    matched = ladder["matched"]
    if matched is not None:
        log(
            f"[jacobian] {jmap.name} block_krylov_svd k={size} block {matched['block_size']} "
            f"tol {matched['tolerance']:.0e}: {matched['products']} "
            f"products, {matched['seconds']:.3f} s -> speed x{result['speed_ratio']:.2f}, "
            f"products x{result['products_ratio']:.2f}"
        )
    return result


def _sweep(
    jmap: JacobianMap, truth: Truth, name: str, cfg: JacobianBenchConfig, log: Callable[[str], None]
) -> list[dict[str, Any]]:
    op = jmap.operator(cfg.chunk_size, cfg.mode)
    scheme = "power_iteration_2.2" if name == "J2" else "subspace_iteration_3.2"
    rows_out = []
    for size in cfg.sweep_sizes:
        entry: dict[str, Any] = {"k": size}
        if size > min(op.shape) or size > len(truth.right_vectors):
            entry["skipped"] = f"k > min(m, d) = {min(op.shape)}"
            rows_out.append(entry)
            continue
        ladder = krylov_ladder(jmap, size, truth, cfg.sweep_sv_target, cfg.sweep_sine_target, cfg)
        entry["project"] = ladder
        worst = 2 * size * (cfg.power_max_iters if name == "J2" else cfg.subspace_max_iter)
        if not cfg.sweep_references:
            entry["reference"] = None
        elif worst > cfg.max_reference_products:
            entry["reference"] = {"skipped": f"worst case {worst} products > {cfg.max_reference_products}"}
        else:
            _prime(jmap, scheme, size, cfg)
            summary = reference_summary(_run_reference(jmap, scheme, size, cfg), truth)
            summary["met_target"] = (
                summary["sv_rel_error"] <= cfg.sweep_sv_target and summary["max_sine"] <= cfg.sweep_sine_target
            )
            entry["reference"] = {"scheme": scheme, **summary}
        matched = ladder["matched"]
        shown = matched or ladder["attempts"][-1]
        log(
            f"[jacobian] sweep {name} k={size}: project {shown['products']} products {shown['seconds']:.3f} s "
            f"(reached {ladder['reached']})"
        )
        rows_out.append(entry)
    return rows_out


def config_dict(cfg: JacobianBenchConfig) -> dict[str, Any]:
    """The suite's settings as a JSON-ready dict."""
    data = asdict(cfg)
    data["tolerances"] = list(cfg.tolerances)
    data["sweep_sizes"] = list(cfg.sweep_sizes)
    data["krylov_block_sizes"] = list(cfg.krylov_block_sizes)
    data["maps"] = list(cfg.maps)
    return data
