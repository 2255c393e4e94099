"""Streaming statistics over a samples store: means of h (and x_T, x_0, noise), group means, PCA inputs.

Every statistic is computed in one pass over the store, shard by shard
(:meth:`pipeline.data.store.Store.iter_batches`), with float64 accumulators (h may be stored in float16, and a
running sum over N samples in the storage dtype would lose precision as N grows). Memory depends on the batch
size and on the number of statistics kept (each one [K, *h_shape] float64 for h), never on the number of samples N.

Groups are named sets of store positions, e.g. the top-k and bottom-k samples of every attribute
(:func:`select_extremes`) or the samples whose score lies above or below 0.5 (:func:`threshold_groups`); their
means give supervised directions (docs/methods.md, "Supervised directions") and, for x_T, x_0 and noise, the
noise-space comparisons.
"""

from __future__ import annotations

import json
import numbers
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from pipeline.data.store import Store
from pipeline.io.errors import ConfigError, PipelineError
from pipeline.io.files import load_tensors, save_tensors

DEFAULT_BATCH_SIZE = 16
"""Samples read from the store at a time: memory of one batch, e.g. 16 x K x 512 x 8 x 8 h values."""
HSTATS_FORMAT = "hspace-hstats"
"""Format name in the metadata of a statistics file; :func:`load_hstats` refuses another."""
HSTATS_FORMAT_VERSION = 1
"""Format version of a statistics file, bumped when its tensors or metadata change."""
MEAN_FIELDS = ("h", "x_T", "x_0", "noise")
"""Store fields whose means can be taken."""


class HStatsFileError(PipelineError):
    """A statistics file is missing, unreadable or of another format; the message names it."""


@dataclass
class HStats:
    """Means over a whole store and over named groups of its samples (all float64).

    Attributes:
        count: N, samples in the store.
        h_steps: [K] int64 step indices of the h axis of every h statistic.
        means: field -> mean over all N samples; "h": [K, *h_shape], "x_T"/"x_0": [C, H, W],
            "noise": [T, C, H, W].
        group_means: field -> group name -> mean over the group's samples (same shapes as ``means``).
        group_sizes: group name -> number of samples in it.
        source: the store's header (model, sampler settings, seed fingerprint), for provenance.
    """

    count: int
    h_steps: torch.Tensor
    means: dict[str, torch.Tensor]
    group_means: dict[str, dict[str, torch.Tensor]]
    group_sizes: dict[str, int]
    source: dict[str, Any]


@dataclass(frozen=True)
class Extremes:
    """The highest- and lowest-scoring samples of every attribute (store positions).

    Attributes:
        names: the A attribute names.
        top: [A, k] int64 positions of the k highest scores, highest first.
        bottom: [A, k] int64 positions of the k lowest scores, lowest first.
    """

    names: tuple[str, ...]
    top: torch.Tensor
    bottom: torch.Tensor

    def groups(self) -> dict[str, torch.Tensor]:
        """Groups for :func:`group_means`: ``"<name>/top"`` and ``"<name>/bottom"`` for every attribute."""
        result = {}
        for attribute, name in enumerate(self.names):
            result[f"{name}/top"] = self.top[attribute]
            result[f"{name}/bottom"] = self.bottom[attribute]
        return result


def default_fields(store: Store) -> tuple[str, ...]:
    """h, x_T and x_0, plus noise when the store keeps it (redrawing it for every sample would be slow)."""
    return ("h", "x_T", "x_0", "noise") if "noise" in store.stored_fields else ("h", "x_T", "x_0")


def hspace_mean(store: Store, *, batch_size: int = DEFAULT_BATCH_SIZE, progress: bool = False) -> torch.Tensor:
    """Per-step mean of h over all samples, [K, *h_shape] float64, in one streaming pass."""
    overall, _ = _streaming_means(store, {}, ("h",), True, batch_size, progress)
    return overall["h"]


def group_means(
    store: Store,
    groups: dict[str, torch.Tensor | Sequence[int]],
    *,
    fields: Sequence[str] | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = False,
) -> dict[str, dict[str, torch.Tensor]]:
    """Means of each field over every group of store positions, all in one streaming pass.

    Args:
        store: the samples store.
        groups: group name -> 1-D store positions (distinct, in [0, N)); e.g. ``Extremes.groups()``.
        fields: fields to average (subset of :data:`MEAN_FIELDS`); default :func:`default_fields`.
        batch_size: samples read at a time.
        progress: show a tqdm bar over samples.

    Returns:
        field -> group name -> float64 mean ([K, *h_shape] for h, [C, H, W] for x_T and x_0,
        [T, C, H, W] for noise).
    """
    masks = _group_masks(groups, len(store))
    _, grouped = _streaming_means(store, masks, _check_mean_fields(store, fields), False, batch_size, progress)
    return grouped


def compute_hstats(
    store: Store,
    groups: dict[str, torch.Tensor | Sequence[int]] | None = None,
    *,
    fields: Sequence[str] | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = False,
) -> HStats:
    """Means over all samples and over every group (see :func:`group_means`) of each field, in one pass."""
    groups = groups or {}
    masks = _group_masks(groups, len(store))
    names = _check_mean_fields(store, fields)
    overall, grouped = _streaming_means(store, masks, names, True, batch_size, progress)
    return HStats(
        count=len(store),
        h_steps=store.h_steps,
        means=overall,
        group_means=grouped,
        group_sizes={name: int(mask.sum()) for name, mask in masks.items()},
        source=dict(store.header),
    )


def select_extremes(scores: torch.Tensor, k: int, attribute_names: Sequence[str] | None = None) -> Extremes:
    """For every attribute, the store positions of the k highest and the k lowest scores.

    Ties are broken by position (stable sort). Raises ConfigError when k > N // 2 (the two sets would
    overlap), or, naming the attribute, when a score is NaN/inf or the top-k and bottom-k are not separated
    (the lowest top-k score is not above the highest bottom-k score: too few positive or negative examples,
    all scores equal included).

    Args:
        scores: [N, A] attribute scores in store order (e.g. classifier probabilities).
        k: samples per side.
        attribute_names: the A names (default "attribute_0", ...).
    """
    scores, names = _check_scores(scores, attribute_names)
    count = scores.shape[0]
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
        raise ConfigError(f"k {k!r}: must be a positive integer")
    if 2 * k > count:
        raise ConfigError(f"k {k}: the top-k and bottom-k of {count} samples would overlap; need k <= {count // 2}")
    tops, bottoms = [], []
    for attribute, name in enumerate(names):
        column = scores[:, attribute]
        top = torch.sort(column, descending=True, stable=True).indices[:k]
        bottom = torch.sort(column, stable=True).indices[:k]
        lowest_top, highest_bottom = column[top].min().item(), column[bottom].max().item()
        if lowest_top <= highest_bottom:
            if column.min() == column.max():
                raise ConfigError(
                    f"attribute '{name}': all {count} scores equal {lowest_top:.4g}; no positive or negative examples"
                )
            above = int((column > highest_bottom).sum())
            below = int((column < lowest_top).sum())
            raise ConfigError(
                f"attribute '{name}': top-{k} and bottom-{k} are not separated ({above} samples score above "
                f"{highest_bottom:.4g}, {below} below {lowest_top:.4g}); lower k or label more samples"
            )
        tops.append(top)
        bottoms.append(bottom)
    return Extremes(tuple(names), torch.stack(tops), torch.stack(bottoms))


def threshold_groups(
    scores: torch.Tensor, threshold: float = 0.5, attribute_names: Sequence[str] | None = None
) -> dict[str, torch.Tensor]:
    """Label-conditioned groups: ``"<name>/positive"`` (score > threshold) and ``"<name>/negative"`` (score <
    threshold) store positions for every attribute; scores equal to the threshold are in neither.

    ``scores`` is [N, A] in store order. ConfigError naming the attribute when a score is NaN/inf or a
    group is empty.
    """
    scores, names = _check_scores(scores, attribute_names)
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real):
        raise ConfigError(f"threshold {threshold!r}: must be a number")
    result = {}
    for attribute, name in enumerate(names):
        column = scores[:, attribute]
        for side, selected in (("positive", column > threshold), ("negative", column < threshold)):
            if not selected.any():
                relation = "above" if side == "positive" else "below"
                raise ConfigError(f"attribute '{name}': no sample scores {relation} {threshold}; {side} group empty")
            result[f"{name}/{side}"] = selected.nonzero().flatten()
    return result


def centered_batches(
    store: Store,
    mean: torch.Tensor,
    steps: Sequence[int] | None = None,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    dtype: torch.dtype = torch.float32,
) -> Callable[[], Iterator[torch.Tensor]]:
    """A factory of passes over the centred, flattened h, for streaming PCA (one call = one pass).

    Each call of the returned function re-reads the shards and yields, in store order, batches
    [n, K', D] = h - mean of the step indices ``steps`` (values of ``store.h_steps``; None: all K), with
    D = prod(h_shape), in ``dtype``. ``mean`` is [K, *h_shape] (e.g. :func:`hspace_mean`). Memory holds one
    batch.
    """
    expected = (len(store.h_steps), *store.h_shape)
    if tuple(mean.shape) != expected:
        raise ConfigError(f"mean shape {tuple(mean.shape)}: expected {expected} (K steps, *h_shape) of the store")
    positions = list(range(len(store.h_steps))) if steps is None else store.h_positions(steps)
    step_list = None if steps is None else list(steps)
    store.iter_batches(("h",), batch_size=batch_size, dtype=dtype, h_steps=step_list)  # checks the arguments now
    centre = mean[positions].reshape(len(positions), -1).to(dtype)

    def passes() -> Iterator[torch.Tensor]:
        for batch in store.iter_batches(("h",), batch_size=batch_size, dtype=dtype, h_steps=step_list):
            h = batch["h"]
            yield h.reshape(len(h), len(positions), -1) - centre

    return passes


def save_hstats(path: str | Path, stats: HStats) -> None:
    """Write ``stats`` to one safetensors file atomically.

    Tensors: ``h_steps``, ``mean/<field>``, ``group_mean/<field>/<group>``; metadata: format, version,
    count, group sizes and source (JSON).
    """
    tensors = {"h_steps": stats.h_steps}
    for field_name, mean in stats.means.items():
        tensors[f"mean/{field_name}"] = mean
    for field_name, by_group in stats.group_means.items():
        for group, mean in by_group.items():
            tensors[f"group_mean/{field_name}/{group}"] = mean
    metadata = {
        "format": HSTATS_FORMAT,
        "format_version": str(HSTATS_FORMAT_VERSION),
        "count": str(stats.count),
        "group_sizes": json.dumps(stats.group_sizes),
        "source": json.dumps(stats.source),
    }
    save_tensors(path, tensors, metadata)


def load_hstats(path: str | Path) -> HStats:
    """Read a file written by :func:`save_hstats`; HStatsFileError naming it when missing or of another format."""
    tensors, metadata = load_tensors(path, "hstats file", HStatsFileError)
    if metadata.get("format") != HSTATS_FORMAT or metadata.get("format_version") != str(HSTATS_FORMAT_VERSION):
        raise HStatsFileError(
            f"hstats file '{path}': format {metadata.get('format')!r} version {metadata.get('format_version')!r}; "
            f"expected {HSTATS_FORMAT!r} version {HSTATS_FORMAT_VERSION}"
        )
    means: dict[str, torch.Tensor] = {}
    grouped: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in tensors.items():
        if name.startswith("mean/"):
            means[name.removeprefix("mean/")] = tensor
        elif name.startswith("group_mean/"):
            field_name, group = name.removeprefix("group_mean/").split("/", 1)
            grouped.setdefault(field_name, {})[group] = tensor
    return HStats(
        count=int(metadata["count"]),
        h_steps=tensors["h_steps"],
        means=means,
        group_means=grouped,
        group_sizes=json.loads(metadata["group_sizes"]),
        source=json.loads(metadata["source"]),
    )


def _streaming_means(
    store: Store,
    masks: dict[str, torch.Tensor],
    fields: Sequence[str],
    overall: bool,
    batch_size: int,
    progress: bool,
) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, torch.Tensor]]]:
    """One pass: float64 means of ``fields`` over all samples (if ``overall``) and over each masked group."""

    def zeros(name: str) -> torch.Tensor:
        return torch.zeros(_field_shape(store, name), dtype=torch.float64)

    total_sums = {name: zeros(name) for name in fields} if overall else {}
    group_sums = {name: {group: zeros(name) for group in masks} for name in fields}
    with tqdm(total=len(store), desc="streaming means", unit="sample", disable=not progress) as bar:
        for batch in store.iter_batches(fields, batch_size=batch_size, dtype=None):
            positions = batch["index"]
            for name in fields:
                values = batch[name]
                if overall:
                    total_sums[name] += values.sum(dim=0, dtype=torch.float64)
                for group, mask in masks.items():
                    selected = mask[positions]
                    if selected.any():
                        group_sums[name][group] += values[selected].sum(dim=0, dtype=torch.float64)
            bar.update(len(positions))
    sizes = {group: int(mask.sum()) for group, mask in masks.items()}
    means = {name: total / len(store) for name, total in total_sums.items()}
    grouped = {
        name: {group: total / sizes[group] for group, total in sums.items()} for name, sums in group_sums.items()
    }
    return means, grouped


def _field_shape(store: Store, name: str) -> tuple[int, ...]:
    """Per-sample shape of a mean field: [K, *h_shape] for h, [T, C, H, W] for noise, [C, H, W] otherwise."""
    if name == "h":
        return (len(store.h_steps), *store.h_shape)
    if name == "noise":
        return (store.spec.steps, *store.sample_shape)
    return tuple(store.sample_shape)


def _check_mean_fields(store: Store, fields: Sequence[str] | None) -> tuple[str, ...]:
    """The fields to average (default :func:`default_fields`); ConfigError naming one that cannot be averaged
    (not in :data:`MEAN_FIELDS`, or noise of an eta = 0 store) or when a name repeats."""
    if fields is None:
        return default_fields(store)
    names = (fields,) if isinstance(fields, str) else tuple(fields)
    if not names:
        raise ConfigError(f"fields: empty; expected some of {', '.join(MEAN_FIELDS)}")
    for name in names:
        if name not in MEAN_FIELDS:
            raise ConfigError(f"field {name!r}: cannot be averaged; expected one of {', '.join(MEAN_FIELDS)}")
        if name == "noise" and store.spec.eta == 0:
            raise ConfigError(f"field 'noise': store '{store.folder}' has eta = 0, so there is no variance noise")
    if len(set(names)) != len(names):
        raise ConfigError(f"fields {list(names)}: contains repeated names")
    return names


def _group_masks(groups: dict[str, torch.Tensor | Sequence[int]], count: int) -> dict[str, torch.Tensor]:
    """Boolean [N] membership mask of each group; ConfigError naming a group that is empty, out of range,
    has repeated positions or non-integer entries."""
    if not isinstance(groups, dict):
        raise ConfigError(f"groups: expected a dict of name -> store positions, got {type(groups).__name__}")
    masks = {}
    for name, indices in groups.items():
        if not isinstance(name, str) or not name:
            raise ConfigError(f"group name {name!r}: must be a non-empty string")
        positions = torch.as_tensor(indices)
        if positions.numel() == 0:
            raise ConfigError(f"group '{name}': empty")
        if positions.dim() != 1 or positions.dtype.is_floating_point or positions.dtype == torch.bool:
            raise ConfigError(f"group '{name}': expected a 1-D tensor or list of integer store positions")
        if positions.min() < 0 or positions.max() >= count:
            bad = positions[(positions < 0) | (positions >= count)][0].item()
            raise ConfigError(f"group '{name}': position {bad} outside [0, {count}) for a store of {count} samples")
        mask = torch.zeros(count, dtype=torch.bool)
        mask[positions] = True
        if int(mask.sum()) != len(positions):
            raise ConfigError(f"group '{name}': contains repeated positions")
        masks[name] = mask
    return masks


def _check_scores(scores: torch.Tensor, attribute_names: Sequence[str] | None) -> tuple[torch.Tensor, list[str]]:
    """[N, A] scores as float64 and the A attribute names (default "attribute_0", ...); ConfigError for
    another shape, mismatched names, or a NaN/inf score (naming its attribute)."""
    if not isinstance(scores, torch.Tensor) or scores.dim() != 2 or scores.dtype == torch.bool:
        shape = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
        raise ConfigError(f"scores {shape}: expected a 2-D numeric tensor [N samples, A attributes]")
    count = scores.shape[1]
    names = [f"attribute_{index}" for index in range(count)] if attribute_names is None else list(attribute_names)
    if len(names) != count:
        raise ConfigError(f"attribute_names: {len(names)} names for {count} score columns")
    if len(set(names)) != len(names):
        raise ConfigError(f"attribute_names {names}: contains repeated names")
    scores = scores.to(torch.float64)
    bad_columns = (~torch.isfinite(scores)).any(dim=0).nonzero().flatten().tolist()
    if bad_columns:
        raise ConfigError(f"attribute '{names[bad_columns[0]]}': scores contain NaN or inf")
    return scores, names
