"""The samples store written by the ``generate`` stage: sharded safetensors files and an ``index.json``.

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
position of its first sample}``. The *header* is shared by every shard and ``index.json``: format name and
version, model id and weights fingerprint, the :class:`StoreSpec` fields, sample and h shapes, shard size,
total count and a SHA-256 fingerprint of the seed list. ``index.json`` holds
``{"spec": header, "shards": [{file, start, count, bytes, sha256}]}``. Shard bytes are a deterministic
function of the contents, so a resumed store is byte-identical to an uninterrupted one.

Sample i is a pure function of (model, spec, seed i) (:mod:`pipeline.diffusion.sampling`), so generation is resumable:
a rerun keeps every shard whose header and seeds match, regenerates missing or unreadable ones, and ends with
the same files as an uninterrupted run (bit for bit on the same machine, thread count and batch size).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import numbers
import operator
import re
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as serialize_tensors
from tqdm.auto import tqdm

from pipeline.io.files import atomic_path, write_json
from pipeline.io.validation import as_int
from pipeline.io.errors import ConfigError, PipelineError
from pipeline.diffusion.hspace import DEFAULT_LOCATION, hspace_shape
from pipeline.diffusion.models import DiffusionModel
from pipeline.diffusion.sampling import DEFAULT_BATCH_SIZE, ddim_grid, initial_noise, sample, to_image_range

FORMAT = "hspace-samples"
FORMAT_VERSION = 1
INDEX_FILE = "index.json"
SHARD_METADATA_KEY = "shard"

H_DTYPES: dict[str, torch.dtype] = {"float16": torch.float16, "float32": torch.float32}
"""Storage dtypes accepted for h."""

SAMPLE_FIELDS = ("seeds", "x_T", "x_0", "noise", "h", "images")
"""Per-sample fields a store can be read by (``noise`` only when eta > 0, ``images`` only for latent models)."""

_SHARD_NAME = re.compile(r"shard-(\d{5,})\.safetensors")
_MODEL_LABEL_KEYS = ("model_id",)  # a label only: the weights fingerprint is what identifies the model
# diffusers config entries that say where and with which version a model was loaded, not what it computes.
_CONFIG_LABEL_KEYS = frozenset({"_name_or_path", "_diffusers_version", "_use_default_values"})
_HASH_CHUNK_BYTES = 1 << 22

logger = logging.getLogger(__name__)


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
    """What :func:`generate_store` left in a folder.

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


def model_fingerprint(model: DiffusionModel) -> str:
    """SHA-256 hex digest of what determines the stored samples: the UNet's config and weights (names, dtypes,
    shapes, values), the scheduler config, a latent model's autoencoder, and a text-conditioned model's
    generation conditioning (prompt and negative-prompt encodings, guidance scale; the edit prompt does not
    change samples), and the autocast, channels_last and compile options when they are on.

    Two models with the same fingerprint produce the same samples (on the same kind of device); a retrained
    or re-cast model, or another prompt, does not share it; the same files loaded from another folder or the
    hub cache, or with another diffusers version, do. Tensors are hashed one at a time, so memory stays
    at one tensor.
    """
    hasher = hashlib.sha256()
    for config in (model.unet.config, model.scheduler.config):
        settings = {key: value for key, value in config.items() if key not in _CONFIG_LABEL_KEYS}
        hasher.update(json.dumps(settings, sort_keys=True, default=str).encode())
    tensors = list(model.unet.state_dict().items())
    if model.vae is not None:
        tensors += [(f"autoencoder.{name}", tensor) for name, tensor in model.vae.state_dict().items()]
    if model.autocast is not None or model.channels_last:  # both change rounding; absent when off
        hasher.update(f"autocast|{model.autocast}|channels_last|{model.channels_last}".encode())
    if model.compile is not None:  # fused kernels round differently
        hasher.update(f"compile|{model.compile}".encode())
    if model.conditioning is not None:
        hasher.update(f"guidance_scale|{model.conditioning.guidance_scale!r}".encode())
        tensors.append(("conditioning.prompt", model.conditioning.prompt))
        if model.conditioning.negative is not None:
            tensors.append(("conditioning.negative", model.conditioning.negative))
    for name, tensor in tensors:
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        hasher.update(f"{name}|{flat.dtype}|{tuple(tensor.shape)}".encode())
        hasher.update(flat.view(torch.uint8).numpy().tobytes())
    return hasher.hexdigest()


def generate_store(
    model: DiffusionModel,
    folder: str | Path,
    seeds: Sequence[int] | torch.Tensor,
    spec: StoreSpec,
    *,
    shard_size: int,
    batch_size: int = DEFAULT_BATCH_SIZE,
    overwrite: bool = False,
    partition: tuple[int, int] | None = None,
    sample: bool = True,
    progress: bool = True,
) -> StoreIndex:
    """Sample one shard at a time into ``folder`` and write ``index.json`` once every shard is there.

    Resumable: a shard file whose header (everything but the model id label) and seeds match the request is
    kept; a shard that cannot be read (truncated or damaged file) is deleted and regenerated with a logged
    warning, since its contents are a pure function of its seeds. A shard or ``index.json`` written with
    another spec, model or seed list raises :class:`StoreMismatchError` before anything is sampled, unless
    ``overwrite=True``, which deletes the mismatching files (matching shards are kept: they are exactly what
    would be written). Memory holds one shard at a time.

    Args:
        model: the diffusion model; its weights fingerprint goes into the header.
        folder: store folder (created if needed).
        seeds: [N] distinct non-negative integer seeds; sample i of the store has seed ``seeds[i]``.
        spec: sampler settings of the store.
        shard_size: samples per shard file (the last shard may be smaller).
        batch_size: samples per UNet batch (results agree across batch sizes to float rounding).
        overwrite: replace files written with another spec instead of refusing.
        partition: (i, n) to generate only the shards s with s % n == i, so that n jobs can share a store;
            the job that finds every shard present writes ``index.json`` (should the last two jobs finish
            together without seeing each other's shard, a rerun without partition writes it, sampling
            nothing). None generates every shard.
        sample: False to sample nothing: the merge step after partition jobs, which checks that every shard
            is present and consistent (raising :class:`StoreError` naming the missing ones) and writes
            ``index.json``.
        progress: show a tqdm bar over this call's shards.

    Returns:
        The :class:`StoreIndex`; ``complete`` is False only while other partitions' shards are missing.
    """
    folder = Path(folder)
    seed_tensor = _check_seed_list(seeds)
    shard_size = _check_positive("shard_size", shard_size)
    _check_positive("batch_size", batch_size)
    if not isinstance(overwrite, bool):
        raise ConfigError(f"overwrite {overwrite!r}: must be true or false")
    num_shards = math.ceil(len(seed_tensor) / shard_size)
    own_shards = _partition_shards(partition, num_shards)
    ddim_grid(model.scheduler, spec.steps)  # validates steps against this model's schedule
    h_shape = hspace_shape(model.unet, spec.hspace_location, model.sample_shape)
    fingerprint = model_fingerprint(model)
    header = _header(model.model_id, fingerprint, spec, model.sample_shape, h_shape, shard_size, seed_tensor)
    previous_entries = _previous_index_entries(folder, header, overwrite)
    valid = _scan_shards(folder, header, seed_tensor, set(own_shards), num_shards, overwrite)
    to_generate = {shard for shard in own_shards if shard not in valid}
    if to_generate and not sample:
        missing = sorted(to_generate)
        names = ", ".join(shard_name(shard) for shard in missing[:3]) + (" ..." if len(missing) > 3 else "")
        raise StoreError(
            f"samples store '{folder}': {len(missing)} of {num_shards} shards missing or unreadable ({names}); "
            "rerun the shard jobs"
        )
    if to_generate:
        (folder / INDEX_FILE).unlink(missing_ok=True)
    written: dict[int, ShardEntry] = {}
    with tqdm(total=len(own_shards), desc="generating shards", unit="shard", disable=not progress) as bar:
        for shard in own_shards:
            if shard in to_generate:
                written[shard] = _write_shard(model, folder, shard, seed_tensor, header, spec, batch_size)
            bar.update(1)
    return _finish_index(folder, header, seed_tensor, num_shards, written, previous_entries)


def synthetic_store(
    folder: str | Path,
    count: int,
    *,
    h_shape: Sequence[int],
    steps: int,
    sample_shape: Sequence[int] = (3, 8, 8),
    shard_size: int = 64,
    h_dtype: str = "float16",
    seed: int = 0,
    progress: bool = False,
) -> Store:
    """A complete store of ``count`` random samples with a real store's layout, made without a model.

    For scale and memory measurements of the streaming stages (hstats, PCA, supervised) at realistic h shapes
    (for example celebahq-256's [512, 8, 8] at many steps) without sampling: h ~ N(0, 1) in ``h_dtype`` at
    every one of ``steps`` steps, x_T and x_0 ~ N(0, 1) of ``sample_shape``, seeds 0..count-1. Written one
    shard at a time (memory of one shard), deterministic in ``seed``; model id "synthetic".
    """
    folder = Path(folder)
    seeds = _check_seed_list(range(_check_positive("count", count)))
    spec = StoreSpec(steps=steps, eta=0.0, h_dtype=h_dtype)
    shard_size = _check_positive("shard_size", shard_size)
    header = _header("synthetic", f"synthetic-seed{seed}", spec, tuple(sample_shape), tuple(h_shape), shard_size, seeds)
    num_shards = math.ceil(count / shard_size)
    timesteps = torch.linspace(999, 0, steps).round().to(torch.int64)
    written = {}
    for shard in tqdm(range(num_shards), desc="synthetic shards", unit="shard", disable=not progress):
        generator = torch.Generator().manual_seed(seed * 1_000_003 + shard)
        start = shard * shard_size
        shard_seeds = seeds[start : start + shard_size]
        n = len(shard_seeds)
        tensors = {
            "seeds": shard_seeds.clone(),
            "x_T": torch.randn(n, *sample_shape, generator=generator),
            "x_0": torch.randn(n, *sample_shape, generator=generator),
            "h": torch.randn(n, steps, *h_shape, generator=generator).to(H_DTYPES[h_dtype]),
            "h_steps": torch.arange(steps, dtype=torch.int64),
            "timesteps": timesteps,
        }
        written[shard] = _save_shard(folder, shard, tensors, header)
    _finish_index(folder, header, seeds, num_shards, written, {})
    return open_store(folder)


def _header(
    model_id: str,
    fingerprint: str,
    spec: StoreSpec,
    sample_shape: Sequence[int],
    h_shape: Sequence[int],
    shard_size: int,
    seeds: torch.Tensor,
) -> dict[str, Any]:
    """The JSON header shared by every shard and ``index.json`` (see the module docstring)."""
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


class Store:
    """A complete samples store opened for reading (use :func:`open_store`).

    Samples are addressed by their store position 0..N-1 (the order of the seed list). Reads go shard by
    shard through memory-mapped safetensors slices, so memory is bounded by the batch, never by N.

    Attributes:
        folder: the store folder.
        header: the JSON header (see the module docstring).
        spec: the :class:`StoreSpec` it was generated with.
        shards: the ``index.json`` entries, in order.
    """

    def __init__(self, folder: Path, header: dict[str, Any], shards: Sequence[ShardEntry]) -> None:
        self.folder = folder
        self.header = header
        self.spec = StoreSpec.from_dict(header)
        self.shards = tuple(shards)
        with safe_open(str(folder / self.shards[0].file), framework="pt") as handle:
            self._stored = frozenset(handle.keys())
            self._timesteps = handle.get_tensor("timesteps")

    def __len__(self) -> int:
        """N, the number of samples."""
        return int(self.header["count"])

    def __repr__(self) -> str:
        return f"Store('{self.folder}', {len(self)} samples, model '{self.model_id}', {self.spec})"

    @property
    def model_id(self) -> str:
        """Id of the model the samples were drawn from (as given when generating)."""
        return str(self.header["model_id"])

    @property
    def shard_size(self) -> int:
        """Samples per shard (the last shard may hold fewer)."""
        return int(self.header["shard_size"])

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """(C, H, W) of x_T, x_0 and each step's noise."""
        return tuple(self.header["sample_shape"])

    @property
    def h_shape(self) -> tuple[int, ...]:
        """Per-step shape of h, e.g. (512, 8, 8)."""
        return tuple(self.header["h_shape"])

    @property
    def h_steps(self) -> torch.Tensor:
        """[K] int64 step indices (0 = noisiest) of the second axis of ``h``."""
        return torch.tensor(self.spec.capture_steps, dtype=torch.int64)

    @property
    def timesteps(self) -> torch.Tensor:
        """[T] int64 DDIM timestep grid, noisiest first."""
        return self._timesteps.clone()

    @property
    def fields(self) -> tuple[str, ...]:
        """Fields that can be read: seeds, x_T, x_0, h, noise when eta > 0 (stored or redrawn), and images
        when the store holds a latent model's decoded samples."""
        return tuple(
            name
            for name in SAMPLE_FIELDS
            if (name != "noise" or self.spec.eta > 0) and (name != "images" or name in self._stored)
        )

    @property
    def image_field(self) -> str:
        """The field images come from: ``images`` (decoded latents, uint8) when stored, else ``x_0`` (pixels)."""
        return "images" if "images" in self._stored else "x_0"

    def as_images(self, values: torch.Tensor) -> torch.Tensor:
        """Values of :attr:`image_field` [n, ...] as images [n, 3, H, W] in [0, 1], float32."""
        if self.image_field == "images":
            return values.float() / 255
        return to_image_range(values.float())

    @property
    def stored_fields(self) -> tuple[str, ...]:
        """Fields present in the shard files (``noise`` is absent when it is redrawn from the seeds)."""
        return tuple(name for name in SAMPLE_FIELDS if name in self._stored)

    @cached_property
    def seeds(self) -> torch.Tensor:
        """[N] int64 seeds in store order."""
        parts = []
        for shard in self.shards:
            with safe_open(str(self.folder / shard.file), framework="pt") as handle:
                parts.append(handle.get_tensor("seeds"))
        return torch.cat(parts)

    def iter_batches(
        self,
        fields: Sequence[str] = ("h",),
        batch_size: int = 64,
        dtype: torch.dtype | None = torch.float32,
        h_steps: Sequence[int] | None = None,
        shards: Sequence[int] | None = None,
    ) -> Iterator[dict[str, torch.Tensor]]:
        """Stream the store in order as dicts of tensors with ``batch_size`` samples (the last may be fewer).

        Each dict has the requested ``fields`` (shapes [n, ...] as stored, h [n, K, *h_shape]) and ``index``,
        the [n] int64 store positions. Floating fields are cast to ``dtype`` (None keeps the stored dtype).
        ``h_steps`` restricts h to those step indices (values of :attr:`h_steps`), read from disk alone.
        ``shards`` restricts the stream to those shard indices (ascending; default all). Batches span shard
        boundaries; memory holds one batch.
        """
        names = self._check_fields(fields)
        batch_size = _check_positive("batch_size", batch_size)
        positions = None if h_steps is None else self.h_positions(h_steps)
        chosen = list(range(len(self.shards))) if shards is None else [int(s) for s in shards]
        if any(not 0 <= s < len(self.shards) for s in chosen) or chosen != sorted(set(chosen)):
            raise ConfigError(f"shards {list(shards or [])}: expected ascending indices in [0, {len(self.shards)})")
        return self._stream(names, batch_size, dtype, positions, [self.shards[s] for s in chosen])

    def _stream(
        self,
        names: list[str],
        batch_size: int,
        dtype: torch.dtype | None,
        positions: list[int] | None,
        shards: list[ShardEntry],
    ) -> Iterator[dict[str, torch.Tensor]]:
        """Generator behind :meth:`iter_batches` (separate so that arguments are checked on the call)."""
        pending: list[dict[str, torch.Tensor]] = []
        pending_count = 0
        for shard in shards:
            with safe_open(str(self.folder / shard.file), framework="pt") as handle:
                offset = 0
                while offset < shard.count:
                    take = min(batch_size - pending_count, shard.count - offset)
                    pending.append(self._read(handle, shard, names, offset, offset + take, dtype, positions))
                    pending_count += take
                    offset += take
                    if pending_count == batch_size:
                        yield _concatenate(pending)
                        pending, pending_count = [], 0
        if pending:
            yield _concatenate(pending)

    def load(
        self,
        field: str,
        indices: Sequence[int] | torch.Tensor,
        dtype: torch.dtype | None = torch.float32,
    ) -> torch.Tensor:
        """Random access: ``field`` of the samples at store positions ``indices`` [m], in that order.

        Returns [m, ...] (h: [m, K, *h_shape]); floating fields cast to ``dtype`` (None keeps the stored one).
        Reads only the requested rows, e.g. the few held-out samples to edit.
        """
        (name,) = self._check_fields([field])
        index_list = _check_store_indices(indices, len(self))
        rows: dict[int, torch.Tensor] = {}
        by_shard: dict[int, list[int]] = {}
        for position in index_list:
            by_shard.setdefault(position // self.shard_size, []).append(position)
        for shard_index, positions in by_shard.items():
            shard = self.shards[shard_index]
            with safe_open(str(self.folder / shard.file), framework="pt") as handle:
                for position in positions:
                    offset = position - shard.start
                    rows[position] = self._read(handle, shard, [name], offset, offset + 1, dtype, None)[name]
        return torch.cat([rows[position] for position in index_list])

    def images(self, indices: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """x_0 of the samples at ``indices`` as images in [0, 1], [m, C, H, W] float32."""
        return self.as_images(self.load(self.image_field, indices, dtype=None))

    def _check_fields(self, fields: Sequence[str]) -> list[str]:
        if isinstance(fields, str):
            fields = [fields]
        names = list(fields)
        if not names:
            raise ConfigError("fields: empty; expected some of " + ", ".join(self.fields))
        for name in names:
            if name == "noise" and self.spec.eta == 0:
                raise ConfigError(f"field 'noise': store '{self.folder}' has eta = 0, so there is no variance noise")
            if name not in self.fields:
                raise ConfigError(f"field {name!r}: unknown; expected one of {', '.join(self.fields)}")
        return names

    def h_positions(self, h_steps: Sequence[int]) -> list[int]:
        """Positions along h's step axis (its second axis) of the step indices ``h_steps``.

        ConfigError naming the first step index whose h is not in the store.
        """
        captured = list(self.spec.capture_steps)
        positions = []
        for step in h_steps:
            if as_int(step) is None or step not in captured:
                raise ConfigError(
                    f"h step {step!r}: not captured in store '{self.folder}' (captured: {_short(captured, 60)})"
                )
            positions.append(captured.index(step))
        if not positions:
            raise ConfigError("h_steps: empty; expected step indices or None for all")
        return positions

    def _read(
        self,
        handle: Any,
        shard: ShardEntry,
        names: Sequence[str],
        begin: int,
        end: int,
        dtype: torch.dtype | None,
        step_positions: list[int] | None,
    ) -> dict[str, torch.Tensor]:
        """Rows [begin, end) of one open shard: the requested fields plus ``index``."""
        result = {"index": torch.arange(shard.start + begin, shard.start + end, dtype=torch.int64)}
        for name in names:
            if name == "noise" and "noise" not in self._stored:
                seeds = handle.get_slice("seeds")[begin:end]
                tensor = initial_noise(self.sample_shape, seeds, self.spec.steps, self.spec.eta)[1]
            elif name == "h" and step_positions is not None:
                h_slice = handle.get_slice("h")
                tensor = torch.cat([h_slice[begin:end, p : p + 1] for p in step_positions], dim=1)
            else:
                tensor = handle.get_slice(name)[begin:end]
            if dtype is not None and tensor.is_floating_point():
                tensor = tensor.to(dtype)
            result[name] = tensor
        return result


def open_store(folder: str | Path, verify: bool = False) -> Store:
    """Open a complete store, checking that every shard of ``index.json`` is present and consistent.

    Checks each shard's existence, size in bytes, header, shard index and sample count against
    ``index.json``; ``verify=True`` also recomputes every SHA-256 (reads the whole store).
    Raises :class:`StoreError` with one line naming the missing or inconsistent file.
    """
    folder = Path(folder)
    index_path = folder / INDEX_FILE
    if not folder.is_dir():
        raise StoreError(f"samples store '{folder}': no such folder")
    if not index_path.is_file():
        raise StoreError(f"samples store '{folder}': no {INDEX_FILE}; generation did not finish, rerun it")
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
        header = index["spec"]
        entries = [ShardEntry(**entry) for entry in index["shards"]]
    except (ValueError, KeyError, TypeError) as error:
        raise StoreError(f"samples store '{folder}': unreadable {INDEX_FILE} ({error})") from error
    if header.get("format") != FORMAT or header.get("format_version") != FORMAT_VERSION:
        raise StoreError(
            f"samples store '{folder}': format {header.get('format')!r} version {header.get('format_version')!r}; "
            f"expected {FORMAT!r} version {FORMAT_VERSION}"
        )
    try:
        StoreSpec.from_dict(header)
        expected_shards = math.ceil(header["count"] / header["shard_size"])
    except (KeyError, TypeError, ConfigError) as error:
        raise StoreError(f"samples store '{folder}': {INDEX_FILE} has an invalid spec ({error})") from error
    if len(entries) != expected_shards:
        raise StoreError(
            f"samples store '{folder}': {INDEX_FILE} lists {len(entries)} shards, expected {expected_shards}"
        )
    for shard_index, entry in enumerate(entries):
        _check_listed_shard(folder, shard_index, entry, header, verify)
    return Store(folder, header, entries)


def _check_listed_shard(
    folder: Path, shard_index: int, entry: ShardEntry, header: dict[str, Any], verify: bool
) -> None:
    """Raise StoreError unless the shard file matches its ``index.json`` entry."""
    path = folder / entry.file
    where = f"samples store '{folder}': {entry.file}"
    start = shard_index * header["shard_size"]
    expected_count = min(header["shard_size"], header["count"] - start)
    if entry.file != shard_name(shard_index) or entry.start != start or entry.count != expected_count:
        raise StoreError(f"{where}: {INDEX_FILE} entry {entry} does not fit shard {shard_index} of the layout")
    if not path.is_file():
        raise StoreError(f"{where}: listed in {INDEX_FILE} but missing")
    size = path.stat().st_size
    if size != entry.bytes:
        raise StoreError(f"{where}: {size} bytes, {INDEX_FILE} says {entry.bytes}")
    contents = _read_shard_head(path)
    if contents is None:
        raise StoreError(f"{where}: not a readable safetensors shard")
    shard_header, stored_index, seeds = contents
    difference = _first_difference(shard_header, header)
    if difference is not None:
        raise StoreError(f"{where}: header differs from {INDEX_FILE} ({difference})")
    if stored_index != shard_index or len(seeds) != entry.count:
        raise StoreError(f"{where}: holds shard {stored_index} with {len(seeds)} samples")
    if verify and _file_sha256(path) != entry.sha256:
        raise StoreError(f"{where}: SHA-256 differs from {INDEX_FILE} (file changed or damaged)")


def _write_shard(
    model: DiffusionModel,
    folder: Path,
    shard_index: int,
    seeds: torch.Tensor,
    header: dict[str, Any],
    spec: StoreSpec,
    batch_size: int,
) -> ShardEntry:
    """Sample one shard and write it atomically; returns its index entry."""
    start = shard_index * header["shard_size"]
    shard_seeds = seeds[start : start + header["shard_size"]]
    batch = sample(
        model,
        shard_seeds,
        steps=spec.steps,
        eta=spec.eta,
        hspace_location=spec.hspace_location,
        capture_steps=list(spec.capture_steps),
        h_dtype=H_DTYPES[spec.h_dtype],
        batch_size=batch_size,
        keep_noise=True,
    )
    tensors = {
        "seeds": shard_seeds.clone(),
        "x_T": batch.x_T.float(),
        "x_0": batch.x_0.float(),
        "h": batch.h,
        "h_steps": batch.h_steps,
        "timesteps": batch.timesteps,
    }
    if spec.store_noise:
        tensors["noise"] = batch.noise.float()
    if model.latent:  # decoded once here, so that labelling and previews need no autoencoder
        tensors["images"] = (model.images(batch.x_0) * 255).round().to(torch.uint8)
    return _save_shard(folder, shard_index, tensors, header)


def _save_shard(folder: Path, shard_index: int, tensors: dict[str, torch.Tensor], header: dict[str, Any]) -> ShardEntry:
    """Write one shard's tensors atomically, with its metadata; returns its index entry."""
    start = shard_index * header["shard_size"]
    # One metadata key: safetensors writes its metadata map in hash order, so several keys would make the
    # bytes of identical shards differ between runs (and DVC would see a changed output after a resume).
    description = {"spec": header, "shard_index": shard_index, "start": start}
    metadata = {SHARD_METADATA_KEY: json.dumps(description, sort_keys=True)}
    data = serialize_tensors({name: tensor.contiguous() for name, tensor in tensors.items()}, metadata)
    name = shard_name(shard_index)
    with atomic_path(folder / name, ".safetensors") as tmp:
        tmp.write_bytes(data)
    return ShardEntry(name, start, len(tensors["seeds"]), len(data), hashlib.sha256(data).hexdigest())


def _finish_index(
    folder: Path,
    header: dict[str, Any],
    seeds: torch.Tensor,
    num_shards: int,
    written: dict[int, ShardEntry],
    previous_entries: dict[str, ShardEntry],
) -> StoreIndex:
    """Collect the entries of every valid shard; write ``index.json`` when none is missing."""
    entries = []
    for shard_index in range(num_shards):
        entry = written.get(shard_index)
        if entry is None:
            entry = _existing_entry(folder, shard_index, header, seeds, previous_entries)
        if entry is not None:
            entries.append(entry)
    index = StoreIndex(folder, header, num_shards, tuple(entries), tuple(sorted(written)))
    if index.complete:
        write_json(
            folder / INDEX_FILE,
            {"spec": header, "shards": [asdict(entry) for entry in entries]},
        )
    return index


def _existing_entry(
    folder: Path,
    shard_index: int,
    header: dict[str, Any],
    seeds: torch.Tensor,
    previous_entries: dict[str, ShardEntry],
) -> ShardEntry | None:
    """Index entry of a valid shard already on disk (its hash reused from a matching index), else None."""
    name = shard_name(shard_index)
    path = folder / name
    if not path.is_file() or _shard_problem(path, shard_index, header, seeds) is not None:
        return None
    size = path.stat().st_size
    previous = previous_entries.get(name)
    if previous is not None and previous.bytes == size:
        return previous
    start = shard_index * header["shard_size"]
    count = min(header["shard_size"], header["count"] - start)
    return ShardEntry(name, start, count, size, _file_sha256(path))


def _previous_index_entries(folder: Path, header: dict[str, Any], overwrite: bool) -> dict[str, ShardEntry]:
    """Entries of an existing ``index.json`` with the same header; a mismatching one raises or is deleted."""
    path = folder / INDEX_FILE
    if not path.is_file():
        return {}
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
        difference = _first_difference(index["spec"], header)
        entries = {entry["file"]: ShardEntry(**entry) for entry in index["shards"]}
    except (ValueError, KeyError, TypeError):
        logger.warning("samples store '%s': unreadable %s is rebuilt", folder, INDEX_FILE)
        path.unlink()
        return {}
    if difference is None:
        return entries
    if not overwrite:
        raise _mismatch(folder, INDEX_FILE, difference)
    path.unlink()
    return {}


def _scan_shards(
    folder: Path,
    header: dict[str, Any],
    seeds: torch.Tensor,
    own_shards: set[int],
    num_shards: int,
    overwrite: bool,
) -> set[int]:
    """Check every shard file in ``folder`` before sampling; return the indices of valid ones.

    Unreadable files of this call's shards are deleted (to be regenerated); mismatching files raise
    StoreMismatchError, or are deleted with ``overwrite`` (when this call owns them or they lie beyond
    the requested layout).
    """
    valid: set[int] = set()
    if not folder.is_dir():
        return valid
    for path in sorted(folder.iterdir()):
        match = _SHARD_NAME.fullmatch(path.name)
        if match is None or not path.is_file():
            continue
        shard_index = int(match.group(1))
        problem = _shard_problem(path, shard_index, header, seeds)
        if problem is None:
            valid.add(shard_index)
        elif problem == "unreadable":
            if shard_index in own_shards or shard_index >= num_shards:
                logger.warning("samples store '%s': %s is unreadable and will be regenerated", folder, path.name)
                path.unlink()
        elif not overwrite:
            raise _mismatch(folder, path.name, problem)
        elif shard_index in own_shards or shard_index >= num_shards:
            path.unlink()
    return valid


def _shard_problem(path: Path, shard_index: int, header: dict[str, Any], seeds: torch.Tensor) -> str | None:
    """None when the shard file fits the request; "unreadable", or a description of the first mismatch."""
    contents = _read_shard_head(path)
    if contents is None:
        return "unreadable"
    shard_header, stored_index, stored_seeds = contents
    difference = _first_difference(shard_header, header)
    if difference is not None:
        return difference
    start = shard_index * header["shard_size"]
    if stored_index != shard_index or not torch.equal(stored_seeds, seeds[start : start + header["shard_size"]]):
        return f"its seeds are not those of shard {shard_index} of the requested seed list"
    return None


def _read_shard_head(path: Path) -> tuple[dict[str, Any], int, torch.Tensor] | None:
    """(header, shard index, seeds [n]) of a shard file, or None when it is not a readable shard."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            missing = {"seeds", "x_T", "x_0", "h", "h_steps", "timesteps"} - set(handle.keys())
            if missing:
                return None
            description = json.loads(metadata[SHARD_METADATA_KEY])
            if not isinstance(description, dict) or not isinstance(description.get("spec"), dict):
                return None
            return description["spec"], int(description["shard_index"]), handle.get_tensor("seeds")
    except (SafetensorError, OSError, ValueError, KeyError, TypeError):
        return None


def _first_difference(found: dict[str, Any], expected: dict[str, Any]) -> str | None:
    """'key=found but key=expected was requested' for the first differing header key, or None."""
    for key in [*expected, *(key for key in found if key not in expected)]:
        if key in _MODEL_LABEL_KEYS:
            continue
        if found.get(key) != expected.get(key):
            return f"{key}={_short(found.get(key))} but {key}={_short(expected.get(key))} was requested"
    return None


def _mismatch(folder: Path, file_name: str, difference: str) -> StoreMismatchError:
    return StoreMismatchError(
        f"samples store '{folder}': {file_name} was written with other settings ({difference}); "
        "delete the folder, choose another one, or pass overwrite=True"
    )


def _short(value: Any, limit: int = 40) -> str:
    """repr of a header value, cut to ``limit`` characters so that error messages stay one short line."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _file_sha256(path: Path) -> str:
    hasher = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_HASH_CHUNK_BYTES):
            hasher.update(chunk)
    return hasher.hexdigest()


def _concatenate(parts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    if len(parts) == 1:
        return parts[0]
    return {name: torch.cat([part[name] for part in parts]) for name in parts[0]}


def _partition_shards(partition: tuple[int, int] | None, num_shards: int) -> list[int]:
    """Shard indices this call generates: all, or those s with s % n == i for partition (i, n)."""
    if partition is None:
        return list(range(num_shards))
    try:
        part, parts = (as_int(value) for value in partition)
    except (TypeError, ValueError):
        part = parts = None
    if part is None or parts is None or parts < 1 or not 0 <= part < parts:
        raise ConfigError(f"partition {partition!r}: expected (i, n) with 0 <= i < n")
    return list(range(part, num_shards, parts))


def _check_seed_list(seeds: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """[N] int64 tensor of distinct seeds in [0, 2**63); ConfigError naming the first bad one."""
    raw = seeds.reshape(-1).tolist() if isinstance(seeds, torch.Tensor) else list(seeds)
    if not raw:
        raise ConfigError("seeds: empty; expected at least one integer seed")
    seen: set[int] = set()
    for seed in raw:
        value = as_int(seed)
        if value is None or not 0 <= value < 2**63:
            raise ConfigError(f"seed {seed!r}: must be an integer in [0, 2**63)")
        if value in seen:
            raise ConfigError(f"seed {value}: appears more than once; a store needs distinct seeds")
        seen.add(value)
    return torch.tensor([as_int(seed) for seed in raw], dtype=torch.int64)


def _check_store_indices(indices: Sequence[int] | torch.Tensor, count: int) -> list[int]:
    raw = indices.reshape(-1).tolist() if isinstance(indices, torch.Tensor) else list(indices)
    if not raw:
        raise ConfigError("indices: empty; expected at least one store position")
    for index in raw:
        if as_int(index) is None or not 0 <= index < count:
            raise ConfigError(f"index {index!r}: outside [0, {count}) for a store of {count} samples")
    return [as_int(index) for index in raw]


def _check_positive(name: str, value: int) -> int:
    if as_int(value) is None or value < 1:
        raise ConfigError(f"{name} {value!r}: must be a positive integer")
    return as_int(value)

