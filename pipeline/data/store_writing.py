"""Writing a samples store: :func:`generate_store` samples a model into shards, resumably, and
:func:`synthetic_store` writes random samples in the same layout for measurements without a model.

The format written is defined in :mod:`pipeline.data.store_format`; reading is :mod:`pipeline.data.store`.
docs/architecture.md ("Samples store") describes where the store sits in the pipeline.

Sample i is a pure function of (model, spec, seed i) (:mod:`pipeline.diffusion.sampling`), so generation is resumable:
a rerun keeps every shard whose header and seeds match, regenerates missing or unreadable ones, and ends with
the same files as an uninterrupted run (bit for bit on the same machine, thread count and batch size).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as serialize_tensors
from tqdm.auto import tqdm

from pipeline.data.store import Store, open_store
from pipeline.data.store_format import (
    H_DTYPES,
    INDEX_FILE,
    SHARD_METADATA_KEY,
    SHARD_NAME_PATTERN,
    ShardEntry,
    StoreError,
    StoreIndex,
    StoreMismatchError,
    StoreSpec,
    check_positive,
    file_sha256,
    header_difference,
    read_shard_head,
    shard_name,
    store_header,
)
from pipeline.diffusion.hspace import hspace_shape
from pipeline.diffusion.models import DiffusionModel
from pipeline.diffusion.sampling import DEFAULT_BATCH_SIZE, DecodeSettings, ddim_grid, sample
from pipeline.io.errors import ConfigError
from pipeline.io.files import atomic_path, write_json
from pipeline.io.validation import as_int

# diffusers config entries that say where and with which version a model was loaded, not what it computes.
_CONFIG_LABEL_KEYS = frozenset({"_name_or_path", "_diffusers_version", "_use_default_values"})

logger = logging.getLogger(__name__)


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
    shard_size = check_positive("shard_size", shard_size)
    check_positive("batch_size", batch_size)
    if not isinstance(overwrite, bool):
        raise ConfigError(f"overwrite {overwrite!r}: must be true or false")
    num_shards = math.ceil(len(seed_tensor) / shard_size)
    own_shards = _partition_shards(partition, num_shards)
    ddim_grid(model.scheduler, spec.steps)  # validates steps against this model's schedule
    h_shape = hspace_shape(model.unet, spec.hspace_location, model.sample_shape)
    fingerprint = model_fingerprint(model)
    header = store_header(model.model_id, fingerprint, spec, model.sample_shape, h_shape, shard_size, seed_tensor)
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
    seeds = _check_seed_list(range(check_positive("count", count)))
    spec = StoreSpec(steps=steps, eta=0.0, h_dtype=h_dtype)
    shard_size = check_positive("shard_size", shard_size)
    header = store_header(
        "synthetic", f"synthetic-seed{seed}", spec, tuple(sample_shape), tuple(h_shape), shard_size, seeds
    )
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


def _write_shard(
    model: DiffusionModel,
    folder: Path,
    shard_index: int,
    seeds: torch.Tensor,
    header: dict[str, Any],
    spec: StoreSpec,
    batch_size: int,
) -> ShardEntry:
    """Sample shard ``shard_index`` (seeds [start, start + shard_size) of ``seeds`` [N]) and write it
    atomically; returns its index entry. x_T, x_0 and noise are stored as float32 whatever the model's dtype."""
    start = shard_index * header["shard_size"]
    shard_seeds = seeds[start : start + header["shard_size"]]
    settings = DecodeSettings(
        steps=spec.steps,
        eta=spec.eta,
        location=spec.hspace_location,
        batch_size=batch_size,
        h_dtype=H_DTYPES[spec.h_dtype],
    )
    batch = sample(model, shard_seeds, settings, capture_steps=list(spec.capture_steps), keep_noise=True)
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
    return ShardEntry(name, start, count, size, file_sha256(path))


def _previous_index_entries(folder: Path, header: dict[str, Any], overwrite: bool) -> dict[str, ShardEntry]:
    """Entries of an existing ``index.json`` with the same header; a mismatching one raises or is deleted."""
    path = folder / INDEX_FILE
    if not path.is_file():
        return {}
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
        difference = header_difference(index["spec"], header)
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
        match = SHARD_NAME_PATTERN.fullmatch(path.name)
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
    contents = read_shard_head(path)
    if contents is None:
        return "unreadable"
    shard_header, stored_index, stored_seeds = contents
    difference = header_difference(shard_header, header)
    if difference is not None:
        return difference
    start = shard_index * header["shard_size"]
    if stored_index != shard_index or not torch.equal(stored_seeds, seeds[start : start + header["shard_size"]]):
        return f"its seeds are not those of shard {shard_index} of the requested seed list"
    return None


def _mismatch(folder: Path, file_name: str, difference: str) -> StoreMismatchError:
    """The one-line error for a file written with other settings, naming the first differing header key."""
    return StoreMismatchError(
        f"samples store '{folder}': {file_name} was written with other settings ({difference}); "
        "delete the folder, choose another one, or pass overwrite=True"
    )


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
