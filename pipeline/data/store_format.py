"""The on-disk format of the samples store: folder layout, shard contents, the shared header, and the checks
that both the reader (:mod:`pipeline.data.store`) and the writer (:mod:`pipeline.data.store_writing`) apply to
a shard file. docs/architecture.md ("Samples store") describes where the store sits in the pipeline.

Folder layout::

    <folder>/shard-00000.safetensors    samples [0, shard_size) of the seed list
    <folder>/shard-00001.safetensors    samples [shard_size, 2 * shard_size)
    ...
    <folder>/index.json                 written last: a store is complete exactly when this file exists

Every shard is self-describing. Its tensors (n samples in the shard, T steps, K captured steps):

* ``seeds`` [n] int64, in the order of the seed list;
* ``x_T`` [n, C, H, W] float32 starting noise; ``x_0`` [n, C, H, W] float32 final sample (model space, unclipped);
* ``noise`` [n, T, C, H, W] float32 variance noise z, only when eta > 0 and ``StoreSpec.store_noise``
  (readers otherwise redraw it from the seeds with :func:`pipeline.diffusion.sampling.initial_noise`);
* ``images`` [n, 3, H', W'] uint8, only for a latent model: x_0 decoded by its autoencoder (so that labelling and
  previews need no autoencoder);
* ``h`` [n, K, *h_shape] clean h (float16 or float32, ``StoreSpec.h_dtype``); ``h_steps`` [K] int64 step
  indices of h's second axis (0 = noisiest); ``timesteps`` [T] int64 DDIM grid.

Its safetensors metadata has one key, ``shard``, a JSON object ``{"spec": header, "shard_index": s, "start":
position of its first sample}``. The *header* (:func:`store_header`) is shared by every shard and
``index.json``: format name and version, model id and weights fingerprint, the :class:`StoreSpec` fields, sample
and h shapes, shard size, total count and a SHA-256 fingerprint of the seed list. ``index.json`` holds
``{"spec": header, "shards": [{file, start, count, bytes, sha256}]}`` (:class:`ShardEntry`). Shard bytes are a
deterministic function of the contents, so a resumed store is byte-identical to an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import numbers
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from pipeline.diffusion.hspace import DEFAULT_LOCATION
from pipeline.io.errors import ConfigError, PipelineError
from pipeline.io.validation import as_int, first_difference

FORMAT = "hspace-samples"
"""Format name in every header; a reader refuses another."""
FORMAT_VERSION = 1
"""Format version in every header; bumped when the layout or the header changes."""
INDEX_FILE = "index.json"
"""File name of the index, written last: its presence marks a complete store."""
SHARD_METADATA_KEY = "shard"
"""The one safetensors metadata key of a shard (see the module docstring for its JSON value)."""

H_DTYPES: dict[str, torch.dtype] = {"float16": torch.float16, "float32": torch.float32}
"""Storage dtypes accepted for h."""

SAMPLE_FIELDS = ("seeds", "x_T", "x_0", "noise", "h", "images")
"""Per-sample fields a store can be read by (``noise`` only when eta > 0, ``images`` only for latent models)."""

SHARD_NAME_PATTERN = re.compile(r"shard-(\d{5,})\.safetensors")
"""Full match of a shard file name (:func:`shard_name`); group 1 is the shard index."""

_REQUIRED_TENSORS = frozenset({"seeds", "x_T", "x_0", "h", "h_steps", "timesteps"})
_MODEL_LABEL_KEYS = ("model_id",)  # a label only: the weights fingerprint is what identifies the model
_HASH_CHUNK_BYTES = 1 << 22  # 4 MiB read at a time when hashing a shard file


class StoreError(PipelineError):
    """A samples store on disk is missing, incomplete or inconsistent; the message names the file."""


class StoreMismatchError(StoreError):
    """A store folder holds samples written with other settings, model or seeds than those requested."""


def shard_name(shard_index: int) -> str:
    """File name of shard ``shard_index``, e.g. ``shard-00003.safetensors``."""
    return f"shard-{shard_index:05d}.safetensors"


@dataclass(frozen=True)
class StoreSpec:
    """The sampler settings that, with the model and the seed list, define a store's contents.

    Attributes:
        steps: T, the number of DDIM steps.
        eta: DDIM stochasticity in [0, 1].
        hspace_location: where h is captured (see :mod:`pipeline.diffusion.hspace`).
        capture_steps: step indices (0 = noisiest) whose h is stored; None means every step. Normalised on
            construction to an ascending tuple of unique indices.
        h_dtype: storage dtype of h, "float16" (half the disk) or "float32".
        store_noise: keep the variance noise z [T, C, H, W] of every sample. Without it readers redraw z from
            the seed. Normalised to False when eta = 0 (there is no z).
    """

    steps: int
    eta: float = 0.0
    hspace_location: str = DEFAULT_LOCATION
    capture_steps: tuple[int, ...] | None = None
    h_dtype: str = "float32"
    store_noise: bool = True

    def __post_init__(self) -> None:
        steps = as_int(self.steps)
        if steps is None or steps < 1:
            raise ConfigError(f"steps {self.steps!r}: must be a positive integer")
        if isinstance(self.eta, bool) or not isinstance(self.eta, numbers.Real) or not 0.0 <= self.eta <= 1.0:
            raise ConfigError(f"eta {self.eta!r}: outside [0, 1]")
        if self.h_dtype not in H_DTYPES:
            raise ConfigError(f"h_dtype {self.h_dtype!r}: unknown; expected one of {', '.join(H_DTYPES)}")
        if not isinstance(self.store_noise, bool):
            raise ConfigError(f"store_noise {self.store_noise!r}: must be true or false")
        if not isinstance(self.hspace_location, str):
            raise ConfigError(f"hspace_location {self.hspace_location!r}: must be a location name")
        capture = range(steps) if self.capture_steps is None else list(self.capture_steps)
        for step in capture:
            if as_int(step) is None or not 0 <= step < steps:
                raise ConfigError(f"capture_steps index {step!r}: outside [0, {steps}) for steps={steps}")
        normalised = tuple(sorted({as_int(step) for step in capture}))
        if not normalised:
            raise ConfigError("capture_steps: empty; a store needs h of at least one step")
        if len(normalised) != len(capture):
            raise ConfigError(f"capture_steps {list(capture)}: contains repeated step indices")
        object.__setattr__(self, "steps", steps)
        object.__setattr__(self, "eta", float(self.eta))
        object.__setattr__(self, "capture_steps", normalised)
        object.__setattr__(self, "store_noise", self.store_noise and self.eta > 0)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of the fields (``capture_steps`` as a list)."""
        return {
            "steps": self.steps,
            "eta": self.eta,
            "hspace_location": self.hspace_location,
            "capture_steps": list(self.capture_steps),
            "h_dtype": self.h_dtype,
            "store_noise": self.store_noise,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StoreSpec:
        """Inverse of :meth:`to_dict`; extra keys (such as the rest of a store header) are ignored."""
        return cls(
            steps=data["steps"],
            eta=data["eta"],
            hspace_location=data["hspace_location"],
            capture_steps=tuple(data["capture_steps"]),
            h_dtype=data["h_dtype"],
            store_noise=data["store_noise"],
        )


@dataclass(frozen=True)
class ShardEntry:
    """One shard as listed in ``index.json``: file name, store positions [start, start + count), file size
    in bytes and SHA-256 of the file."""

    file: str
    start: int
    count: int
    bytes: int
    sha256: str


@dataclass(frozen=True)
class StoreIndex:
    """What :func:`pipeline.data.store_writing.generate_store` left in a folder.

    Attributes:
        folder: the store folder.
        header: the JSON header (see the module docstring).
        num_shards: shards a complete store has.
        shards: the valid shards present, in order (all ``num_shards`` of them when complete).
        generated: indices of the shards written by this call (the others were already there).
    """

    folder: Path
    header: dict[str, Any]
    num_shards: int
    shards: tuple[ShardEntry, ...]
    generated: tuple[int, ...] = ()

    @property
    def complete(self) -> bool:
        """True when every shard is present and ``index.json`` was written."""
        return len(self.shards) == self.num_shards


def seeds_fingerprint(seeds: torch.Tensor) -> str:
    """SHA-256 hex digest of a seed list [N] (as little-endian int64); identifies the list and its order."""
    return hashlib.sha256(seeds.to(torch.int64).numpy().astype("<i8").tobytes()).hexdigest()


def store_header(
    model_id: str,
    fingerprint: str,
    spec: StoreSpec,
    sample_shape: Sequence[int],
    h_shape: Sequence[int],
    shard_size: int,
    seeds: torch.Tensor,
) -> dict[str, Any]:
    """The JSON header shared by every shard and ``index.json`` (see the module docstring).

    Key order is part of the format: ``index.json`` and the shard metadata are serialised from this dict.
    ``seeds`` is the [N] int64 seed list; only its length and fingerprint are kept.
    """
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_id": model_id,
        "model_fingerprint": fingerprint,
        **spec.to_dict(),
        "sample_shape": list(sample_shape),
        "h_shape": list(h_shape),
        "shard_size": shard_size,
        "count": len(seeds),
        "seeds_sha256": seeds_fingerprint(seeds),
    }


def read_shard_head(path: Path) -> tuple[dict[str, Any], int, torch.Tensor] | None:
    """(header, shard index, seeds [n] int64) of a shard file, or None when it is not a readable shard.

    Reads the metadata and the seeds only (a few bytes of a memory-mapped file), so checking every shard of a
    large store is cheap. A file that is truncated, not safetensors, or lacks a required tensor or the shard
    metadata counts as unreadable.
    """
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            missing = _REQUIRED_TENSORS - set(handle.keys())
            if missing:
                return None
            description = json.loads(metadata[SHARD_METADATA_KEY])
            if not isinstance(description, dict) or not isinstance(description.get("spec"), dict):
                return None
            return description["spec"], int(description["shard_index"]), handle.get_tensor("seeds")
    except (SafetensorError, OSError, ValueError, KeyError, TypeError):
        return None


def header_difference(found: Mapping[str, Any], expected: Mapping[str, Any]) -> str | None:
    """'key=found but key=expected was requested' for the first differing header key, or None when they match.

    Keys are compared in sorted order (:func:`pipeline.io.validation.first_difference`); a key present in one
    header only counts as a difference. The model id is skipped: it is a label, and the weights fingerprint is
    what identifies the model, so the same weights under another name reuse a store.
    """
    found, expected = (
        {key: value for key, value in header.items() if key not in _MODEL_LABEL_KEYS} for header in (found, expected)
    )
    path = first_difference(found, expected)
    if path is None:
        return None
    # Header values are flat; should a nested value differ, name the header key that holds it.
    key = path if path in found or path in expected else path.split(".", 1)[0]
    return f"{key}={short_repr(found.get(key))} but {key}={short_repr(expected.get(key))} was requested"


def short_repr(value: Any, limit: int = 40) -> str:
    """repr of a header value, cut to ``limit`` characters so that error messages stay one short line."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def file_sha256(path: Path) -> str:
    """SHA-256 hex digest of a file, read in 4 MiB chunks (memory stays at one chunk)."""
    hasher = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_HASH_CHUNK_BYTES):
            hasher.update(chunk)
    return hasher.hexdigest()


def check_positive(name: str, value: int) -> int:
    """``value`` as an int; ConfigError naming ``name`` unless it is an integer >= 1."""
    if as_int(value) is None or value < 1:
        raise ConfigError(f"{name} {value!r}: must be a positive integer")
    return as_int(value)
