"""The directions file: one safetensors file per method, read by every consumer
(docs/architecture.md, "Directions file").

Tensors:

* ``directions`` [K, T, *h_shape] for space "h" (axis 1 indexes the step indices ``steps``, 0 = noisiest),
  or [K, *x_shape] for spaces "x_t" and "x_T";
* ``singular_values`` (optional) [K] or, for space "h", [K, T];
* ``scales`` (optional) the natural unit of each direction, [K] or, for space "h", [K, T] (per-step
  standard deviation of per-step PCA, one standard deviation for all-step PCA); absent means the raw
  vector is the unit (supervised mean differences);
* ``timesteps`` (optional) [T] int64 scheduler timesteps of axis 1; ``steps`` (optional) [T] int64 step
  indices of axis 1 in the sampler grid.

String metadata: ``format`` ("hspace-directions"), ``format_version``, ``method``, ``space`` and
``model_id`` as plain strings; ``names`` (list of K strings), ``hspace_location`` (string or null),
``sampler_steps`` (int or null), ``eta`` (float or null) and ``extra`` (free-form object) JSON-encoded.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from pipeline.directions.methods import METHODS, REGISTRY
from pipeline.io.artefacts import directions_path
from pipeline.io.errors import ConfigError
from pipeline.io.files import save_tensors

FORMAT = "hspace-directions"
FORMAT_VERSION = 1


SPACES = ("h", "x_t", "x_T")
"""Spaces a direction may live in: h-space (per step), the noisy sample x_t, or the initial noise x_T."""

_JSON_METADATA = ("names", "hspace_location", "sampler_steps", "eta", "extra")


@dataclass(frozen=True)
class Origin:
    """Where the directions were computed: the model, the h-space site and the sampler grid.

    Attributes:
        model_id: the model's hub id or folder (as :class:`pipeline.diffusion.models.DiffusionModel` reports it).
        hspace_location: h-space site (see :mod:`pipeline.diffusion.hspace`); None for x-space directions.
        sampler_steps: T of the DDIM grid the data was sampled on; None when unknown.
        eta: DDIM stochasticity of that sampling; None when unknown.
        timesteps: [T'] int64 scheduler timesteps of the directions' step axis; None when unknown.
        steps: [T'] int64 step indices (0 = noisiest) of the directions' step axis, when it holds only some
            steps of the grid (for example the captured ones); None means all ``sampler_steps`` in order.
    """

    model_id: str
    hspace_location: str | None = None
    sampler_steps: int | None = None
    eta: float | None = None
    timesteps: torch.Tensor | None = None
    steps: torch.Tensor | None = None

    @classmethod
    def of_store(cls, store: Any) -> Origin:
        """Provenance of directions computed from a samples store (:class:`pipeline.data.store.Store`): its
        model, h site, sampler grid and captured steps."""
        return cls(
            model_id=store.model_id,
            hspace_location=store.spec.hspace_location,
            sampler_steps=store.spec.steps,
            eta=store.spec.eta,
            timesteps=store.timesteps[store.h_steps],
            steps=store.h_steps,
        )


@dataclass
class Directions:
    """K named directions of one method, with the provenance needed to apply them.

    Attributes:
        directions: [K, T, *h_shape] (space "h") or [K, *x_shape] (spaces "x_t", "x_T").
        method: one of :data:`METHODS`.
        space: one of :data:`SPACES`.
        names: K unique labels (attribute names, "pc0", ...).
        origin: model, h location and sampler grid (:class:`Origin`).
        singular_values: optional [K] or [K, T] (space "h" only).
        scales: optional natural unit per direction, [K] or [K, T] (space "h" only); None means 1.
        extra: free-form JSON-serialisable metadata (explained variance ratios, solver settings, ...).
    """

    directions: torch.Tensor
    method: str
    space: str
    names: list[str]
    origin: Origin
    singular_values: torch.Tensor | None = None
    scales: torch.Tensor | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"method {self.method!r}: unknown; expected one of {', '.join(METHODS)}")
        if self.space not in SPACES:
            raise ConfigError(f"space {self.space!r}: unknown; expected one of {', '.join(SPACES)}")
        if not isinstance(self.directions, torch.Tensor) or not self.directions.is_floating_point():
            raise ConfigError("directions: must be a floating-point tensor")
        minimum_dims = 3 if self.space == "h" else 2
        if self.directions.dim() < minimum_dims:
            layout = "[K, T, *h_shape]" if self.space == "h" else "[K, *x_shape]"
            raise ConfigError(f"directions shape {tuple(self.directions.shape)}: expected {layout}")
        if isinstance(self.names, str):
            raise ConfigError(f"names {self.names!r}: expected a list of {self.num_directions} strings")
        self.names = list(self.names)
        count = self.num_directions
        if len(self.names) != count or not all(isinstance(name, str) for name in self.names):
            raise ConfigError(f"names {self.names!r}: expected {count} strings, one per direction")
        if len(set(self.names)) != count:
            raise ConfigError(f"names {self.names!r}: contain duplicates")
        for name in ("singular_values", "scales"):
            self._check_per_direction(name, getattr(self, name))
        self._check_origin()
        try:
            json.dumps(self.extra)
        except (TypeError, ValueError) as error:
            raise ConfigError(f"extra: not JSON-serialisable ({error})") from None

    @property
    def num_directions(self) -> int:
        """K."""
        return self.directions.shape[0]

    @property
    def num_steps(self) -> int | None:
        """T of the sampler grid these directions are for: ``origin.sampler_steps`` if recorded, else the
        length of the step axis for space "h" covering every step (no ``origin.steps``), else None."""
        if self.origin.sampler_steps is not None:
            return self.origin.sampler_steps
        return self.directions.shape[1] if self.space == "h" and self.origin.steps is None else None

    @property
    def item_shape(self) -> tuple[int, ...]:
        """Shape of one step of one direction: h_shape for space "h", x_shape otherwise."""
        return tuple(self.directions.shape[2:] if self.space == "h" else self.directions.shape[1:])

    def index(self, name: str) -> int:
        """Position of the direction called ``name``."""
        if name not in self.names:
            raise ConfigError(f"direction {name!r}: not among {self.names}")
        return self.names.index(name)

    def direction(self, k: int | str) -> torch.Tensor:
        """Direction ``k`` (position or name): [T, *h_shape] for space "h", [*x_shape] otherwise."""
        return self.directions[self._position(k)]

    def delta(self, k: int | str, scale: float) -> torch.Tensor:
        """``scale`` natural units of direction ``k``: scale * scales[k] * direction(k), in its dtype.

        For space "h" the result is [sampler_steps, *h_shape], ready as ``delta_h`` for
        :func:`pipeline.diffusion.sampling.decode`; steps the directions do not cover (``origin.steps``) are zero.
        Per-step scales [K, T] scale each step; [K] scales every step alike.
        """
        position = self._position(k)
        vector = self.directions[position]
        if self.scales is not None:
            unit = self.scales[position].to(vector.dtype)
            vector = vector * unit.reshape(*unit.shape, *([1] * (vector.dim() - unit.dim())))
        vector = scale * vector
        steps, sampler_steps = self.origin.steps, self.origin.sampler_steps
        if self.space != "h" or steps is None or sampler_steps is None:
            return vector
        full = torch.zeros((sampler_steps, *vector.shape[1:]), dtype=vector.dtype, device=vector.device)
        full[steps.to(vector.device)] = vector
        return full

    def _position(self, k: int | str) -> int:
        if isinstance(k, str):
            return self.index(k)
        if isinstance(k, bool) or not isinstance(k, int) or not -self.num_directions <= k < self.num_directions:
            raise ConfigError(f"direction index {k!r}: outside [0, {self.num_directions})")
        return k

    def _check_per_direction(self, name: str, values: torch.Tensor | None) -> None:
        if values is None:
            return
        count = self.num_directions
        allowed = [(count,)] + ([(count, self.directions.shape[1])] if self.space == "h" else [])
        if not isinstance(values, torch.Tensor) or tuple(values.shape) not in allowed:
            shape = tuple(values.shape) if isinstance(values, torch.Tensor) else type(values).__name__
            raise ConfigError(f"{name} shape {shape}: expected one of {allowed}")

    def _check_origin(self) -> None:
        origin = self.origin
        if not isinstance(origin.model_id, str) or not origin.model_id:
            raise ConfigError(f"model_id {origin.model_id!r}: must be a non-empty string")
        if self.space == "h" and not origin.hspace_location:
            raise ConfigError("hspace_location: required for directions in space 'h'")
        if origin.sampler_steps is not None and (
            isinstance(origin.sampler_steps, bool)
            or not isinstance(origin.sampler_steps, int)
            or origin.sampler_steps < 1
        ):
            raise ConfigError(f"sampler_steps {origin.sampler_steps!r}: must be a positive integer")
        if origin.eta is not None and (not _is_finite_number(origin.eta) or not 0 <= origin.eta <= 1):
            raise ConfigError(f"eta {origin.eta!r}: outside [0, 1]")
        step_axis = self.directions.shape[1] if self.space == "h" else None
        for name in ("timesteps", "steps"):
            values = getattr(origin, name)
            if values is None:
                continue
            if not isinstance(values, torch.Tensor) or values.dim() != 1 or values.is_floating_point():
                raise ConfigError(f"{name}: must be a 1-d integer tensor")
            if step_axis is not None and len(values) != step_axis:
                raise ConfigError(f"{name} length {len(values)}: expected T = {step_axis}, the directions' step axis")
        if self.space != "h" or origin.sampler_steps is None:
            return
        if origin.steps is None and step_axis != origin.sampler_steps:
            raise ConfigError(
                f"directions step axis {step_axis}: expected sampler_steps = {origin.sampler_steps} "
                "(or give the step indices it covers as steps)"
            )
        if origin.steps is not None and (
            len(origin.steps.unique()) != len(origin.steps)
            or bool((origin.steps < 0).any() or (origin.steps >= origin.sampler_steps).any())
        ):
            raise ConfigError(
                f"steps {origin.steps.tolist()}: expected distinct indices in [0, {origin.sampler_steps})"
            )


@dataclass(frozen=True)
class Expected:
    """What a consumer needs a directions file to match; None fields are not checked.

    Attributes:
        model_id: the model the directions will be applied to.
        hspace_location: the h-space site they will be injected at.
        h_shape: per-sample shape of h there (directions must be in space "h").
        num_steps: T of the sampler grid they will be decoded with (compared with ``Directions.num_steps``;
            not checked where that is unknown, None).
    """

    model_id: str | None = None
    hspace_location: str | None = None
    h_shape: tuple[int, ...] | None = None
    num_steps: int | None = None


def save_directions(path: str | Path, directions: Directions) -> None:
    """Write ``directions`` to the safetensors file ``path`` atomically (see the module docstring)."""
    origin = directions.origin
    tensors = {"directions": directions.directions}
    optional = {
        "singular_values": directions.singular_values,
        "scales": directions.scales,
        "timesteps": None if origin.timesteps is None else origin.timesteps.to(torch.int64),
        "steps": None if origin.steps is None else origin.steps.to(torch.int64),
    }
    tensors.update({name: value for name, value in optional.items() if value is not None})
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "method": directions.method,
        "space": directions.space,
        "model_id": origin.model_id,
        "names": json.dumps(directions.names),
        "hspace_location": json.dumps(origin.hspace_location),
        "sampler_steps": json.dumps(origin.sampler_steps),
        "eta": json.dumps(None if origin.eta is None else float(origin.eta)),
        "extra": json.dumps(directions.extra, sort_keys=True),
    }
    save_tensors(path, tensors, metadata)


def require_directions_file(path: str | Path) -> None:
    """Refuse a missing directions file with a one-line ConfigError; when it is one the study writes (a DVC output,
    absent from a fresh clone until its stage runs), the message names the command that makes it."""
    if Path(path).is_file():
        return
    for name, method in REGISTRY.items():
        if Path(path).resolve() == Path(directions_path(name)).resolve():
            raise ConfigError(f"directions file {path}: not found; make it with: dvc repro {method.stage}")
    raise ConfigError(f"directions file {path}: not found")


def load_directions(path: str | Path, expect: Expected | None = None, device: torch.device | str = "cpu") -> Directions:
    """Read a directions file written by :func:`save_directions`, with its tensors on ``device``.

    Raises ConfigError (one line naming the file) when the file is missing, unreadable or truncated, not a
    directions file, of another format version, or does not match ``expect`` (naming the field).
    """
    path = Path(path)
    require_directions_file(path)
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as reader:
            metadata = reader.metadata() or {}
            tensors = {name: reader.get_tensor(name) for name in reader.keys()}  # noqa: SIM118
    except (SafetensorError, OSError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ConfigError(f"directions file {path}: unreadable or truncated ({reason})") from None
    if metadata.get("format") != FORMAT:
        raise ConfigError(f"directions file {path}: not a directions file (format {metadata.get('format')!r})")
    if metadata.get("format_version") != str(FORMAT_VERSION):
        raise ConfigError(
            f"directions file {path}: format version {metadata.get('format_version')!r}, "
            f"this code reads version {FORMAT_VERSION}"
        )
    if "directions" not in tensors:
        raise ConfigError(f"directions file {path}: has no 'directions' tensor")
    try:
        decoded = {key: json.loads(metadata[key]) for key in _JSON_METADATA}
        origin = Origin(
            model_id=metadata["model_id"],
            hspace_location=decoded["hspace_location"],
            sampler_steps=decoded["sampler_steps"],
            eta=decoded["eta"],
            timesteps=tensors.get("timesteps"),
            steps=tensors.get("steps"),
        )
        directions = Directions(
            directions=tensors["directions"],
            method=metadata["method"],
            space=metadata["space"],
            names=decoded["names"],
            origin=origin,
            singular_values=tensors.get("singular_values"),
            scales=tensors.get("scales"),
            extra=decoded["extra"],
        )
    except KeyError as error:
        raise ConfigError(f"directions file {path}: metadata lacks {error.args[0]!r}") from None
    except json.JSONDecodeError as error:
        raise ConfigError(f"directions file {path}: malformed metadata ({error.msg})") from None
    except ConfigError as error:
        raise ConfigError(f"directions file {path}: {error}") from None
    if expect is not None:
        check_expected(directions, expect, str(path))
    return directions


def check_expected(directions: Directions, expect: Expected, source: str) -> None:
    """Raise ConfigError naming the first field of ``expect`` that ``directions`` (read from ``source``,
    a file name for the message) does not match."""
    origin = directions.origin
    prefix = f"directions file {source} was made"
    if expect.model_id is not None and origin.model_id != expect.model_id:
        raise ConfigError(f"{prefix} for model_id {origin.model_id!r}, not {expect.model_id!r}")
    if expect.hspace_location is not None and origin.hspace_location != expect.hspace_location:
        raise ConfigError(f"{prefix} at hspace_location {origin.hspace_location!r}, not {expect.hspace_location!r}")
    if expect.h_shape is not None:
        if directions.space != "h":
            raise ConfigError(f"{prefix} in space {directions.space!r}, not 'h' (h_shape {tuple(expect.h_shape)})")
        if directions.item_shape != tuple(expect.h_shape):
            raise ConfigError(f"{prefix} for h_shape {directions.item_shape}, not {tuple(expect.h_shape)}")
    num_steps = directions.num_steps
    if expect.num_steps is not None and num_steps is not None and num_steps != expect.num_steps:
        raise ConfigError(f"{prefix} for num_steps {num_steps} (sampler steps), not {expect.num_steps}")


def _is_finite_number(value: Any) -> bool:
    """True for an int or float (not bool) that is finite."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
