"""Linear maps known only through their products, and the Jacobian of a network as one.

A :class:`LinearOperator` is a linear map A: R^d -> R^m (or a batch of independent ones of the same shape)
given by ``matmat`` (V [d, b] -> A V [m, b]) and ``rmatmat`` (U [m, b] -> A^T U [d, b]), optionally with a
fused ``gram`` (V -> A^T A V); the solvers of :mod:`pipeline.linalg.solvers` take nothing else.
:func:`jacobian_operator` builds one for the Jacobian J = d f / d x of a row-independent network map f at
one point, with batched products (J v by the double-vjp identity or forward-mode AD, J^T u by one reverse
pass) computed through an autograd graph built once per batch size and reused; :func:`frozen` makes a
module's parameters constants for the duration. Data matrices streamed in row batches are operators too
(:class:`pipeline.linalg.streamed.StreamedRows`). Background: docs/methods.md, "Linear algebra".
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.overrides import TorchFunctionMode

from pipeline.io.errors import ConfigError
from pipeline.io.validation import as_int

_CPU = torch.device("cpu")


@dataclass(frozen=True)
class LinearOperator:
    """A linear map A: R^d -> R^m, or a batch of independent maps of the same shape, given by products.

    Attributes:
        shape: (m, d).
        matmat: V [*batch_shape, d, b] -> A V [*batch_shape, m, b].
        rmatmat: U [*batch_shape, m, b] -> A^T U [*batch_shape, d, b].
        gram: optional V [*batch_shape, d, b] -> A^T A V in one application (for streamed data: one pass
            instead of two, and no [m, b] intermediate kept). When given,
            :func:`pipeline.linalg.solvers.randomized_svd` works on A^T A only.
        batch_shape: leading dimensions indexing independent operators (() for a single one).
        device: where the products take and return their tensors.
    """

    shape: tuple[int, int]
    matmat: Callable[[torch.Tensor], torch.Tensor]
    rmatmat: Callable[[torch.Tensor], torch.Tensor]
    gram: Callable[[torch.Tensor], torch.Tensor] | None = None
    batch_shape: tuple[int, ...] = ()
    device: torch.device = _CPU


JACOBIAN_MODES = ("auto", "forward", "reverse")
"""How :func:`jacobian_operator` computes J v: "reverse" (double vjp through the reused graph; "auto" is the
same), "forward" (forward-mode AD)."""
DEFAULT_CHUNK_SIZE = 16
"""Jacobian products per batched network call (peak memory ~ that many copies of the network's activations)."""


def jacobian_operator(
    function: Callable[[torch.Tensor], torch.Tensor],
    point: torch.Tensor,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    mode: str = "auto",
    transposed_conv_gradients: bool = True,
) -> LinearOperator:
    """The Jacobian J = d function / d input at ``point`` as a :class:`LinearOperator` of batched products.

    Used by the Jacobian directions (d eps / d h) and the pullback directions (d h / d x_t); docs/methods.md,
    "Jacobian directions" and "Pullback directions".

    ``function`` maps a batch [b, *in_shape] to [b, *out_shape] with rows independent of each other (true
    for a UNet in eval mode: GroupNorm and attention act within a sample). ``point`` is one input
    [*in_shape]. Products take and return float64 ([d, n] and [m, n], d = prod(in_shape),
    m = prod(out_shape)) and are computed in ``point``'s dtype, up to ``chunk_size`` vectors per call, by
    running ``function`` on that many copies of the point.

    * J^T u (``rmatmat``): one reverse pass per chunk through a graph built once and reused.
    * J v (``matmat``): ``mode="reverse"`` (and ``"auto"``) uses the double-vjp identity
      J v = d/dw (J^T w)^T v through the same reused graph; ``"forward"`` uses forward-mode AD
      (``torch.func.jvp``, a fresh forward per chunk). Reverse is the default because reusing the graph
      makes it several times faster per product than forward mode (figures: benchmarks/README.md, "Solver
      notes (moved from the code)"). Attention runs on the SDPA math backend, the one with derivatives of every
      order; in forward mode GroupNorm gets contiguous inputs (:class:`_ContiguousGroupNorm`).
    * ``transposed_conv_gradients``: while the graph is built, every 2-D convolution with a frozen weight
      is recorded as :class:`_FrozenWeightConv2d`, whose input gradient is a transposed convolution. Torch's
      own double backward of a convolution also computes a weight-shaped term, one more convolution per
      layer for every J v, even when the weight is frozen; the transposed form needs only the one J v is
      made of. The same kernels run, fewer of them, so the products agree with torch's derivatives up to
      rounding (bit for bit where measured: benchmarks/README.md, "Solver notes (moved from the code)"). False
      keeps torch's derivatives (timed side by side: ``benchmarks`` suite ``jacobian``, ``products``).

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
    resnet's GroupNorm a [b, C, H, W] tensor in NHWC order, so without this forward mode fails through every UNet
    with attention on the CPU. The copy is made only for inputs that are not contiguous."""

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
