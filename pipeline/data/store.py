"""Reading a samples store written by the ``generate`` stage: :func:`open_store` checks a complete store and
returns a :class:`Store`, which streams or randomly accesses its samples shard by shard.

The folder layout, shard contents and header are defined in :mod:`pipeline.data.store_format`; writing
(generation, resuming, partitioned jobs) is :mod:`pipeline.data.store_writing`. docs/architecture.md
("Samples store") describes where the store sits in the pipeline.

The format's names (:class:`StoreSpec`, :class:`StoreIndex`, :class:`StoreError`, ``INDEX_FILE``, ...) are
importable from here too, so that a reader needs one import.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from pipeline.data.store_format import (
    FORMAT,
    FORMAT_VERSION,
    H_DTYPES,
    INDEX_FILE,
    SAMPLE_FIELDS,
    SHARD_METADATA_KEY,
    ShardEntry,
    StoreError,
    StoreIndex,
    StoreMismatchError,
    StoreSpec,
    check_positive,
    file_sha256,
    header_difference,
    read_shard_head,
    seeds_fingerprint,
    shard_name,
    short_repr,
)
from pipeline.diffusion.sampling import initial_noise, to_image_range
from pipeline.io.errors import ConfigError
from pipeline.io.validation import as_int

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "H_DTYPES",
    "INDEX_FILE",
    "SAMPLE_FIELDS",
    "SHARD_METADATA_KEY",
    "ShardEntry",
    "Store",
    "StoreError",
    "StoreIndex",
    "StoreMismatchError",
    "StoreSpec",
    "open_store",
    "seeds_fingerprint",
    "shard_name",
]


class Store:
    """A complete samples store opened for reading (use :func:`open_store`).

    Samples are addressed by their store position 0..N-1 (the order of the seed list). Reads go shard by
    shard through memory-mapped safetensors slices, so memory is bounded by the batch, never by N.

    Attributes:
        folder: the store folder.
        header: the JSON header (see :mod:`pipeline.data.store_format`).
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
        batch_size = check_positive("batch_size", batch_size)
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
        """``fields`` (a name or a sequence of names) as a list; ConfigError naming the first unreadable one."""
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
                    f"h step {step!r}: not captured in store '{self.folder}' (captured: {short_repr(captured, 60)})"
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
    contents = read_shard_head(path)
    if contents is None:
        raise StoreError(f"{where}: not a readable safetensors shard")
    shard_header, stored_index, seeds = contents
    difference = header_difference(shard_header, header)
    if difference is not None:
        raise StoreError(f"{where}: header differs from {INDEX_FILE} ({difference})")
    if stored_index != shard_index or len(seeds) != entry.count:
        raise StoreError(f"{where}: holds shard {stored_index} with {len(seeds)} samples")
    if verify and file_sha256(path) != entry.sha256:
        raise StoreError(f"{where}: SHA-256 differs from {INDEX_FILE} (file changed or damaged)")


def _concatenate(parts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """One batch from pieces read from consecutive shards: each field concatenated along the sample axis."""
    if len(parts) == 1:
        return parts[0]
    return {name: torch.cat([part[name] for part in parts]) for name in parts[0]}


def _check_store_indices(indices: Sequence[int] | torch.Tensor, count: int) -> list[int]:
    """Store positions as a list of ints (a 1-D tensor is flattened); ConfigError naming the first outside
    [0, count), or when there is none."""
    raw = indices.reshape(-1).tolist() if isinstance(indices, torch.Tensor) else list(indices)
    if not raw:
        raise ConfigError("indices: empty; expected at least one store position")
    for index in raw:
        if as_int(index) is None or not 0 <= index < count:
            raise ConfigError(f"index {index!r}: outside [0, {count}) for a store of {count} samples")
    return [as_int(index) for index in raw]
