"""Capture and edit UNet activations ("h-space") at a named location with forward hooks.

Locations (``docs/methods.md``, "Injecting an h edit"):

* ``"after"``: output of ``unet.mid_block`` (the bottleneck h of Asyrp and of both papers; the default).
* ``"before"``: input of ``unet.mid_block`` (the last down block's hidden state).
* ``"down_blocks.i"``: hidden-state output of down block i; its skip residuals are left untouched.
* ``"up_blocks.i"``: output of up block i.

The recorded h is always the clean activation, before any delta is added. An edit returns
``h + delta`` from the hook, which replaces the module output; the ControlNet argument
``mid_block_additional_residual`` is not used because diffusers ignores it on its own.

Under classifier-free guidance the UNet sees a doubled batch [unconditional; conditional]: a hook told
``branches=2`` records h of the unconditional half, which depends on x_t and t only, and adds the same delta to
both halves, so an edit moves the guided prediction as a whole (the choice of paper A's code).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any

import torch
from diffusers import UNet2DConditionModel, UNet2DModel
from torch import nn

from pipeline.diffusion.models import DEFAULT_LOCATION, DiffusionModel
from pipeline.io.errors import ConfigError


def hspace_locations(unet: UNet2DModel | UNet2DConditionModel) -> list[str]:
    """All valid location names for this UNet, in forward order of the blocks they name."""
    mid = ["after", "before"] if unet.mid_block is not None else []
    down = [f"down_blocks.{index}" for index in range(len(unet.down_blocks))]
    up = [f"up_blocks.{index}" for index in range(len(unet.up_blocks))]
    return mid + down + up


def _describe_locations(unet: UNet2DModel | UNet2DConditionModel) -> str:
    """Compact one-line list of the valid locations, e.g. 'after', 'down_blocks.0'..'down_blocks.3'."""
    parts = ["'after'", "'before'"] if unet.mid_block is not None else []
    for name, blocks in (("down_blocks", unet.down_blocks), ("up_blocks", unet.up_blocks)):
        last = len(blocks) - 1
        parts.append(f"'{name}.0'" if last == 0 else f"'{name}.0'..'{name}.{last}'")
    return ", ".join(parts)


def check_location(unet: UNet2DModel | UNet2DConditionModel, location: str) -> None:
    """Raise ConfigError (listing the valid names) unless ``location`` names a hookable site of ``unet``."""
    _resolve_location(unet, location)


def _resolve_location(unet: UNet2DModel | UNet2DConditionModel, location: str) -> tuple[nn.Module, bool]:
    """Return (module to hook, True when the location is the module's input rather than its output)."""
    if location in ("after", "before"):
        if unet.mid_block is None:
            raise ConfigError(
                f"hspace location '{location}': this UNet has no mid block; "
                f"expected {_describe_locations(unet)}"
            )
        return unet.mid_block, location == "before"
    if location in hspace_locations(unet):
        group, index = location.split(".")
        return getattr(unet, group)[int(index)], False
    raise ConfigError(f"hspace location '{location}': unknown; expected {_describe_locations(unet)}")


class HSpaceReached(Exception):
    """Raised by an :class:`HSpaceHook` with ``stop=True`` to end a forward pass once h is recorded."""


class HSpaceHook:
    """Context manager that records and/or shifts the activation h at one location of a UNet.

    Inside the ``with`` block every UNet forward pass:

    * stores the clean activation in :attr:`h` (shape [B, *h_shape], before any delta) when
      :attr:`capture` is True; detached unless :attr:`keep_graph` is True (needed for Jacobians);
    * replaces h by ``h + delta`` when :attr:`delta` is not None. ``delta`` has shape [*h_shape],
      [1, *h_shape] or [B, *h_shape] and may require grad; it is cast to h's dtype and device.

    ``branches`` is the number of conditioning copies stacked in the batch (2 under classifier-free guidance,
    :meth:`pipeline.diffusion.models.DiffusionModel.branches`): h is then that of the first (unconditional) copy, B
    samples, and the delta (shaped for B) is added to every copy.

    Both attributes may be changed between forward passes. With ``stop=True`` the forward pass ends
    right after h is recorded (the rest of the UNet is skipped; the call raises :class:`HSpaceReached`,
    which :func:`h_of_x` catches). Hooks are removed on exit, after which the UNet behaves exactly as
    before.
    """

    def __init__(
        self,
        unet: UNet2DModel | UNet2DConditionModel,
        location: str = DEFAULT_LOCATION,
        *,
        capture: bool = True,
        keep_graph: bool = False,
        stop: bool = False,
        branches: int = 1,
    ) -> None:
        if branches < 1:
            raise ConfigError(f"HSpaceHook branches={branches}: must be >= 1")
        self.location = location
        self.branches = branches
        self.capture = capture
        self.keep_graph = keep_graph
        self.stop = stop
        self.delta: torch.Tensor | None = None
        self.h: torch.Tensor | None = None
        self._module, self._is_input = _resolve_location(unet, location)
        self._handle: torch.utils.hooks.RemovableHandle | None = None

    @classmethod
    def for_model(cls, model: DiffusionModel, location: str, *, edit: bool = False, **options: bool) -> HSpaceHook:
        """A hook on ``model``'s UNet for the calls of ``model.eps(..., edit=edit)``: ``branches`` follows the
        model's classifier-free guidance; ``options`` are ``capture``, ``keep_graph`` and ``stop``."""
        return cls(model.unet, location, branches=model.branches(edit), **options)

    def __enter__(self) -> HSpaceHook:
        if self._is_input:
            self._handle = self._module.register_forward_pre_hook(self._pre_hook, with_kwargs=True)
        else:
            self._handle = self._module.register_forward_hook(self._forward_hook)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def _record_and_edit(self, hidden: torch.Tensor) -> torch.Tensor:
        """Record the clean h if asked, and return h + delta (or h itself when there is no delta)."""
        total, *h_shape = hidden.shape
        batch = total // self.branches
        if self.capture:
            first = hidden[:batch]
            self.h = first if self.keep_graph else first.detach()
        if self.stop:
            raise HSpaceReached
        if self.delta is None:
            return hidden
        allowed = (tuple(h_shape), (1, *h_shape), (batch, *h_shape))
        if tuple(self.delta.shape) not in allowed:
            raise ConfigError(
                f"delta_h shape {tuple(self.delta.shape)} does not fit h at '{self.location}'; "
                f"expected {tuple(h_shape)} or {(batch, *h_shape)}"
            )
        delta = self.delta.to(device=hidden.device, dtype=hidden.dtype)
        if self.branches > 1 and delta.dim() == hidden.dim() and len(delta) == batch > 1:
            delta = delta.repeat(self.branches, *([1] * len(h_shape)))
        return hidden + delta

    def _forward_hook(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        # Down blocks return (hidden, res_samples[, skip]): only the hidden state is edited.
        if isinstance(output, tuple):
            edited = self._record_and_edit(output[0])
            return None if edited is output[0] else (edited, *output[1:])
        edited = self._record_and_edit(output)
        return None if edited is output else edited

    def _pre_hook(
        self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        if args:
            edited = self._record_and_edit(args[0])
            return None if edited is args[0] else ((edited, *args[1:]), kwargs)
        edited = self._record_and_edit(kwargs["hidden_states"])
        return None if edited is kwargs["hidden_states"] else (args, {**kwargs, "hidden_states": edited})


class SharedPrefix:
    """Runs the part of the UNet before the h site once for a pair of passes that differ only after it.

    An Asyrp step needs epsilon twice at the same x_t: once with the edited h and once with the clean h
    (docs/methods.md, "Injecting an h edit"). Everything computed before the h site (time embedding, the input
    convolution, the down blocks, and the mid block itself when h is its output) is the same in both passes.
    Inside :meth:`recording` the UNet's top-level layers and blocks keep their outputs, up to the h site; inside
    :meth:`replaying` those layers return the kept outputs instead of running, so the second pass computes only
    what follows h. The kept tensors are the first pass's own, so the second pass's result is bit for bit the
    one a full pass would give. The h site's hook (:class:`HSpaceHook`) still sees the clean h and applies its
    delta, if any. When the recorded pass did not reach the site, or a layer ran twice in it, the replay is a
    plain pass.
    """

    def __init__(self, unet: UNet2DModel | UNet2DConditionModel, location: str = DEFAULT_LOCATION) -> None:
        self._site, self._site_is_input = _resolve_location(unet, location)
        self._layers = [
            layer
            for child in unet.children()
            for layer in (child if isinstance(child, nn.ModuleList) else [child])
        ]
        self._kept: list[tuple[nn.Module, Any]] | None = None

    @contextlib.contextmanager
    def recording(self) -> Iterator[None]:
        """Keep the outputs of the layers that finish before h, in the UNet pass run inside the block."""
        kept: list[tuple[nn.Module, Any]] = []
        reached = False

        def finished(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            nonlocal reached
            if not reached:
                kept.append((module, output))
                reached = module is self._site

        def started(module: nn.Module, args: tuple[Any, ...]) -> None:
            nonlocal reached
            reached = True

        # prepended, so that the output kept is the site's clean one, before an HSpaceHook adds its delta
        handles = [layer.register_forward_hook(finished, prepend=True) for layer in self._layers]
        if self._site_is_input:
            handles.append(self._site.register_forward_pre_hook(started, prepend=True))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()
        once = len({id(module) for module, _ in kept}) == len(kept)
        self._kept = kept if reached and once else None

    @contextlib.contextmanager
    def replaying(self) -> Iterator[None]:
        """Inside the block, the layers kept by the last :meth:`recording` return their kept outputs."""
        kept, self._kept = self._kept or [], None
        for module, output in kept:
            module.forward = _returning(output)  # an instance attribute shadows the class's forward
        try:
            yield
        finally:
            for module, _ in kept:
                del module.forward


def _returning(output: Any) -> Callable[..., Any]:
    def forward(*args: Any, **kwargs: Any) -> Any:
        return output

    return forward


def hspace_shape(
    unet: UNet2DModel | UNet2DConditionModel, location: str, sample_shape: tuple[int, int, int]
) -> tuple[int, ...]:
    """Per-sample shape of h at ``location`` for x_t of shape ``sample_shape`` (C, H, W).

    For example (512, 8, 8) at "after" on a 256 px DDPM. Found by one forward pass at batch size 1 on
    zeros; a text-conditioned UNet gets a one-token zero text embedding.
    """
    x = torch.zeros((1, *sample_shape), device=unet.device, dtype=unet.dtype)
    extra: dict[str, torch.Tensor] = {}
    if isinstance(unet, UNet2DConditionModel):
        extra["encoder_hidden_states"] = torch.zeros(
            (1, 1, unet.config.cross_attention_dim), device=unet.device, dtype=unet.dtype
        )
    with torch.no_grad(), HSpaceHook(unet, location) as hook:
        unet(x, 0, **extra)
    assert hook.h is not None  # every forward pass runs every block, so the hook has fired
    return tuple(hook.h.shape[1:])


def h_of_x(
    model: DiffusionModel, timestep: int, location: str = DEFAULT_LOCATION
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The encoder map x_t [b, C, H, W] -> h [b, *h_shape] at ``timestep`` (the f whose pullback metric
    J^T J gives paper B's local basis), differentiable; the UNet stops at ``location``, so the decoder half is
    never run. A text-conditioned model is conditioned on its edit prompt, without guidance. Always exact
    (no autocast), since Jacobian products need the unfused kernels."""
    check_location(model.unet, location)

    def encode(x: torch.Tensor) -> torch.Tensor:
        with (
            HSpaceHook.for_model(model, location, edit=True, keep_graph=True, stop=True) as hook,
            contextlib.suppress(HSpaceReached),
        ):
            model.eps(x, timestep, edit=True, exact=True)
        assert hook.h is not None  # the hook stops the pass only after recording h
        return hook.h

    return encode


def eps_of_h(
    model: DiffusionModel,
    x_t: torch.Tensor,
    timestep: int,
    location: str = DEFAULT_LOCATION,
    mask: torch.Tensor | None = None,
) -> tuple[Callable[[torch.Tensor], torch.Tensor], torch.Tensor]:
    """The denoiser as a function of h with x_t (and so every skip connection) fixed: the map whose
    Jacobian d(mask * eps) / d h gives paper A's image-specific directions.

    Args:
        model: the diffusion model; a guided text-conditioned model gives the guided eps with the h edit
            in both branches, as at sampling time. Always exact (no autocast).
        x_t: [C, H, W] one noisy sample.
        timestep: scheduler timestep of x_t.
        location: the h site.
        mask: optional [C, H, W] or [1, H, W] weights on eps (1 inside the region, 0 outside).

    Returns:
        (function h [b, *h_shape] -> mask * eps [b, C, H, W], the clean h [*h_shape] of x_t).
    """
    check_location(model.unet, location)
    with torch.no_grad(), HSpaceHook.for_model(model, location) as hook:
        model.eps(x_t.unsqueeze(0), timestep, exact=True)
    assert hook.h is not None
    clean = hook.h[0]
    weights = None if mask is None else mask.to(device=x_t.device, dtype=x_t.dtype)

    def denoise(h: torch.Tensor) -> torch.Tensor:
        with HSpaceHook.for_model(model, location, capture=False) as edit:
            edit.delta = h - clean  # the hook adds delta to the clean h, so the UNet sees h itself
            eps = model.eps(x_t.unsqueeze(0).expand(len(h), -1, -1, -1), timestep, exact=True)
        return eps if weights is None else eps * weights

    return denoise, clean
