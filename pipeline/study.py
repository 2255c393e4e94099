"""The study's steps as library functions, one per DVC stage (the stages only read params and write files).

generate -> label -> hstats -> pca / supervised -> preview. Each function takes typed configs (the
params sections) and in-memory objects, so a notebook can run any step without Hydra or DVC.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.io.files import atomic_path
from pipeline.directions import Directions, Origin, supervised
from pipeline.directions.pca import PCAResult, pca_directions_streaming
from pipeline.io.errors import ConfigError
from pipeline.diffusion.hspace import DEFAULT_LOCATION
from pipeline.data.hstats import HStats, centered_batches, compute_hstats, select_extremes, threshold_groups
from pipeline.io.images import make_grid
from pipeline.linalg import JACOBIAN_MODES, SolverConfig
from pipeline.diffusion.models import DiffusionModel, TextPrompts, load_model
from pipeline.diffusion.sampling import decode, initial_noise
from pipeline.data.store import Store, StoreIndex, StoreSpec, generate_store


@dataclass
class ModelConfig:
    """The ``model`` params section: which diffusion model, its dtype, the h-space site, whether sampling
    clamps the predicted x_0 to [-1, 1] (see :func:`pipeline.diffusion.models.load_model`), and for a text-conditioned
    model (Stable Diffusion) its prompts and guidance (``text``, see :class:`pipeline.diffusion.models.TextPrompts`;
    absent for unconditional models). Performance: ``autocast`` ("none" | "bfloat16" | "float16") runs
    sampling and edit decodes in mixed precision (Jacobians and spectra stay in ``dtype``), ``channels_last``
    the NHWC memory format, ``compile`` ("none" | "default" | "reduce-overhead" | "max-autotune") compiles
    the UNet's layers for those calls (Jacobians and spectra run eagerly)."""

    source: str = "models/toyfaces/ddpm"
    dtype: str = "float32"
    hspace_location: str = DEFAULT_LOCATION
    clip_sample: bool = True
    text: TextPrompts | None = None
    autocast: str = "none"
    channels_last: bool = False
    compile: str = "none"


@dataclass
class SamplerConfig:
    """The ``sampler`` params section: the DDIM grid used to generate and to decode edits.

    ``injection`` is how an h edit enters each DDIM step (ALGORITHMS 1.5): "symmetric" (the edited eps in
    both terms of the step, paper A) or "asyrp" (the unedited eps in the direction term: one more UNet pass
    per edited step; to first order the symmetric edit scaled by c_t = b_t / a_t per step).
    """

    steps: int = 20
    eta: float = 0.0
    batch_size: int = 64
    injection: str = "asyrp"

    def __post_init__(self) -> None:
        _require(self.steps >= 1, "sampler.steps", self.steps, "must be >= 1")
        _require(0.0 <= self.eta <= 1.0, "sampler.eta", self.eta, "must be in [0, 1]")
        _require(self.batch_size >= 1, "sampler.batch_size", self.batch_size, "must be >= 1")
        injection = self.injection
        _require(injection in ("symmetric", "asyrp"), "sampler.injection", injection, "must be symmetric or asyrp")


@dataclass
class GenerateConfig:
    """The ``generate`` params section: which samples define the statistics, and how they are stored."""

    num_samples: int = 1024
    seed_offset: int = 0
    shard_size: int = 64
    h_dtype: str = "float16"
    store_noise: bool = True

    def __post_init__(self) -> None:
        _require(self.num_samples >= 2, "generate.num_samples", self.num_samples, "must be >= 2")
        _require(self.seed_offset >= 0, "generate.seed_offset", self.seed_offset, "must be >= 0")
        _require(self.shard_size >= 1, "generate.shard_size", self.shard_size, "must be >= 1")


@dataclass
class HStatsConfig:
    """The ``hstats`` params section."""

    top_k: int = 100
    label_conditioned: bool = True
    threshold: float = 0.5
    batch_size: int = 64

    def __post_init__(self) -> None:
        _require(self.top_k >= 1, "hstats.top_k", self.top_k, "must be >= 1")
        _require(0.0 < self.threshold < 1.0, "hstats.threshold", self.threshold, "must be in (0, 1)")
        _require(self.batch_size >= 1, "hstats.batch_size", self.batch_size, "must be >= 1")


@dataclass
class PCAConfig:
    """The ``directions.pca`` params section (randomized SVD settings: pipeline.linalg)."""

    n_components: int = 8
    oversampling: int = 8
    power_iterations: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        _require(self.n_components >= 1, "directions.pca.n_components", self.n_components, "must be >= 1")
        _require(self.oversampling >= 0, "directions.pca.oversampling", self.oversampling, "must be >= 0")
        _require(self.power_iterations >= 0, "directions.pca.power_iterations", self.power_iterations, "must be >= 0")


GROUP_SIDES = {"extremes": ("top", "bottom"), "labels": ("positive", "negative")}
"""``directions.supervised.groups`` -> the (positive, negative) hstats group of every attribute."""


@dataclass
class SupervisedConfig:
    """The ``directions.supervised`` params section.

    ``groups`` picks the two sides of every mean difference: "labels" (every sample scoring above / below
    ``hstats.threshold``, which needs ``hstats.label_conditioned``; the cleaner directions on a saturated
    classifier, README) or "extremes" (the top-k and bottom-k samples by classifier score, paper A; works
    when a label group is empty). ``conditional``: target attribute -> attributes projected out.
    """

    groups: str = "labels"
    conditional: dict[str, list[str]] = field(default_factory=lambda: {"smiling": ["light_hair"]})

    def __post_init__(self) -> None:
        _require(self.groups in GROUP_SIDES, "directions.supervised.groups", self.groups, "must be extremes or labels")


@dataclass
class JacobianConfig:
    """The ``directions.jacobian`` params section: image-specific Jacobian directions (paper A).

    ``mask`` is null (whole image), a ToyFaces region name (located on each sample by the ToyFaces
    classifier), a rectangle [top, left, bottom, right] in fractions of the image, or a mask image path.
    ``steps`` is "all" or a list of grid step indices; ``source_step`` the step whose vectors "global"
    application uses (negative counts from the end); ``unit`` the paper's alpha of edit scale 1.
    """

    seed_offset: int = 70_000_000
    num_samples: int = 2
    k: int = 3
    steps: Any = "all"
    source_step: int = 4
    apply: str = "global"
    unit: float = 300.0
    mask: Any = "mouth"
    solver: SolverConfig = field(default_factory=SolverConfig)

    def __post_init__(self) -> None:
        key = "directions.jacobian"
        _require(self.seed_offset >= 0, f"{key}.seed_offset", self.seed_offset, "must be >= 0")
        _require(self.num_samples >= 1, f"{key}.num_samples", self.num_samples, "must be >= 1")
        _require(self.k >= 1, f"{key}.k", self.k, "must be >= 1")
        _require(
            self.steps == "all" or (isinstance(self.steps, list) and len(self.steps) > 0),
            f"{key}.steps", self.steps, "must be 'all' or a non-empty list of step indices",
        )  # fmt: skip
        _require(self.apply in ("global", "per_step"), f"{key}.apply", self.apply, "must be 'global' or 'per_step'")
        _require(self.unit > 0, f"{key}.unit", self.unit, "must be > 0")
        _check_solver(self.solver, f"{key}.solver")


@dataclass
class PullbackConfig:
    """The ``directions.pullback`` params section: local pullback bases in x_t (paper B).

    Times are fractions of the training schedule (1.0 = noisiest): ``edit_t`` where bases are computed and
    edits applied, ``analysis_t`` where the spectra and tangent-space statistics are measured, ``boost_t``
    from where denoising uses eta = 1 (null: no quality boost). ``scales`` are the guidance strengths c
    of the preview; ``step_size`` and ``iterations`` are gamma and N_g of x-space guidance.
    """

    seed_offset: int = 80_000_000
    num_samples: int = 4
    basis_size: int = 8
    edit_t: float = 0.6
    analysis_t: list[float] = field(default_factory=lambda: [1.0, 0.8, 0.6, 0.4, 0.2])
    step_size: float = 0.1
    iterations: int = 16
    boost_t: float | None = 0.2
    scales: list[float] = field(default_factory=lambda: [-4.0, -2.0, 0.0, 2.0, 4.0])
    preview_directions: int = 3
    curvedness_points: int = 8
    solver: SolverConfig = field(default_factory=SolverConfig)

    def __post_init__(self) -> None:
        key = "directions.pullback"
        _require(self.seed_offset >= 0, f"{key}.seed_offset", self.seed_offset, "must be >= 0")
        _require(self.num_samples >= 2, f"{key}.num_samples", self.num_samples, "must be >= 2 (for transport)")
        _require(self.basis_size >= 1, f"{key}.basis_size", self.basis_size, "must be >= 1")
        times = [("edit_t", self.edit_t), ("boost_t", self.boost_t), *(("analysis_t", t) for t in self.analysis_t)]
        for name, value in times:
            _require(value is None or 0.0 <= value <= 1.0, f"{key}.{name}", value, "t_edit outside the schedule [0, 1]")
        _require(len(self.analysis_t) >= 1, f"{key}.analysis_t", self.analysis_t, "must list at least one t")
        _require(self.step_size > 0, f"{key}.step_size", self.step_size, "must be > 0")
        _require(self.iterations >= 0, f"{key}.iterations", self.iterations, "must be >= 0")
        _require(len(self.scales) >= 1, f"{key}.scales", self.scales, "must list at least one scale")
        _require(self.preview_directions >= 1, f"{key}.preview_directions", self.preview_directions, "must be >= 1")
        _require(self.curvedness_points >= 2, f"{key}.curvedness_points", self.curvedness_points, "must be >= 2")
        _check_solver(self.solver, f"{key}.solver")


def _check_solver(solver: SolverConfig, key: str) -> None:
    block = solver.block_size
    _require(block is None or block >= 1, f"{key}.block_size", block, "must be >= 1")
    _require(solver.tolerance > 0, f"{key}.tolerance", solver.tolerance, "must be > 0")
    _require(solver.max_iterations >= 0, f"{key}.max_iterations", solver.max_iterations, "must be >= 0")
    _require(solver.chunk_size >= 1, f"{key}.chunk_size", solver.chunk_size, "must be >= 1")
    _require(solver.mode in JACOBIAN_MODES, f"{key}.mode", solver.mode, f"must be one of {', '.join(JACOBIAN_MODES)}")


@dataclass
class DirectionsConfig:
    """The ``directions`` params section, one subsection per method."""

    pca: PCAConfig = field(default_factory=PCAConfig)
    supervised: SupervisedConfig = field(default_factory=SupervisedConfig)
    jacobian: JacobianConfig = field(default_factory=JacobianConfig)
    pullback: PullbackConfig = field(default_factory=PullbackConfig)


@dataclass
class PreviewConfig:
    """The ``preview`` params section: edit grids and the supervised-direction check on held-out seeds."""

    seed_offset: int = 90_000_000
    grid_samples: int = 2
    scales: list[float] = field(default_factory=lambda: [-2.0, -1.0, 0.0, 1.0, 2.0])
    max_directions: int = 4
    check_samples: int = 32
    check_scale: float = 3.0

    def __post_init__(self) -> None:
        _require(self.seed_offset >= 0, "preview.seed_offset", self.seed_offset, "must be >= 0")
        _require(self.grid_samples >= 1, "preview.grid_samples", self.grid_samples, "must be >= 1")
        _require(len(self.scales) >= 1, "preview.scales", self.scales, "must list at least one scale")
        _require(self.max_directions >= 1, "preview.max_directions", self.max_directions, "must be >= 1")
        _require(self.check_samples >= 1, "preview.check_samples", self.check_samples, "must be >= 1")
        _require(self.check_scale > 0, "preview.check_scale", self.check_scale, "must be > 0")


def _require(condition: bool, key: str, value: object, rule: str) -> None:
    if not condition:
        raise ConfigError(f"params: {key}={value!r}: {rule}")


def open_model(cfg: ModelConfig, device: str) -> DiffusionModel:
    """Load the configured diffusion model on ``device``."""
    return load_model(
        cfg.source, device=device, dtype=cfg.dtype, clip_sample=cfg.clip_sample, text=cfg.text,
        autocast=cfg.autocast, channels_last=cfg.channels_last, compile=cfg.compile,
    )  # fmt: skip


def generate(
    model: DiffusionModel,
    model_cfg: ModelConfig,
    sampler: SamplerConfig,
    cfg: GenerateConfig,
    folder: str | Path,
    progress: bool = True,
    partition: tuple[int, int] | None = None,
    sample: bool = True,
) -> StoreIndex:
    """Sample seeds ``seed_offset .. seed_offset + num_samples - 1`` into a sharded store at ``folder``.

    Resumable: shards already written for the same settings are kept. ``partition`` (i, n): only the shards
    s with s % n == i (one of n shard jobs); ``sample=False``: the merge after the jobs, which checks that
    every shard is there and writes the index (see :func:`pipeline.data.store.generate_store`).
    """
    if cfg.num_samples < 2:
        raise ConfigError(f"generate.num_samples={cfg.num_samples}: must be >= 2")
    spec = StoreSpec(
        steps=sampler.steps,
        eta=sampler.eta,
        hspace_location=model_cfg.hspace_location,
        h_dtype=cfg.h_dtype,
        store_noise=cfg.store_noise,
    )
    seeds = range(cfg.seed_offset, cfg.seed_offset + cfg.num_samples)
    return generate_store(
        model, folder, seeds, spec, shard_size=cfg.shard_size, batch_size=sampler.batch_size, progress=progress,
        partition=partition, sample=sample,
    )  # fmt: skip


@torch.no_grad()
def classify_logits(classifier: nn.Module, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Attribute logits [N, A] of images [N, 3, H, W] in [0, 1].

    Edit effects are measured on raw logits: the logit of a sigmoid probability saturates in float32
    (p rounds to 1 near logit 17), which would hide the change of an already confident attribute.
    """
    device = next(classifier.parameters()).device
    return torch.cat([classifier(chunk.to(device)).float().cpu() for chunk in images.split(batch_size)])


def classify(classifier: nn.Module, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Attribute probabilities [N, A] of images [N, 3, H, W] in [0, 1] (sigmoid of the classifier's logits)."""
    return torch.sigmoid(classify_logits(classifier, images, batch_size))


def label(
    store: Store, classifier: nn.Module, batch_size: int = 256, shards: Sequence[int] | None = None
) -> torch.Tensor:
    """Probabilities [n, A] of the stored samples' x_0 in store order: every sample, or those of ``shards``.

    Batches never span a store shard, so a sample's scores do not depend on which shards a job labels
    (a sharded run merges to exactly the unsharded table).
    """
    chosen = range(len(store.shards)) if shards is None else shards
    field = store.image_field
    scores = [
        classify(classifier, store.as_images(batch[field]), batch_size)
        for shard in chosen
        for batch in store.iter_batches((field,), batch_size=batch_size, shards=[shard])
    ]
    return torch.cat(scores)


def write_labels(path: str | Path, seeds: torch.Tensor, names: Sequence[str], scores: torch.Tensor) -> None:
    """Write the label table: a CSV with columns ``seed`` and one probability per attribute (6 decimals)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["seed", *names])
    for seed, row in zip(seeds.tolist(), scores.tolist(), strict=True):
        writer.writerow([seed, *(f"{value:.6f}" for value in row)])
    with atomic_path(path, ".csv") as tmp:
        tmp.write_text(buffer.getvalue())


def read_labels(path: str | Path) -> tuple[torch.Tensor, list[str], torch.Tensor]:
    """Read a label table: seeds [N] int64, attribute names [A], probabilities [N, A] float32."""
    with Path(path).open(newline="") as handle:
        rows = list(csv.reader(handle))
    if not rows or rows[0][0] != "seed" or len(rows) < 2:
        raise ConfigError(f"label table '{path}': expected a header 'seed,<attributes...>' and at least one row")
    seeds = torch.tensor([int(row[0]) for row in rows[1:]], dtype=torch.int64)
    scores = torch.tensor([[float(value) for value in row[1:]] for row in rows[1:]], dtype=torch.float32)
    return seeds, rows[0][1:], scores


def check_labels_match(store: Store, seeds: torch.Tensor) -> None:
    """Refuse a label table whose seeds are not the store's, in the store's order."""
    if not torch.equal(seeds, store.seeds):
        raise ConfigError("label table: seeds differ from the samples store's; rerun the label stage")


def hstats(
    store: Store, names: Sequence[str], scores: torch.Tensor, cfg: HStatsConfig, progress: bool = True
) -> HStats:
    """One streaming pass: means of h (and x_T) over all samples and over the top-k/bottom-k samples of
    every attribute (groups ``<name>/top``, ``<name>/bottom``), plus, with ``label_conditioned``, the
    groups above/below ``threshold`` (``<name>/positive``, ``<name>/negative``)."""
    if cfg.top_k > len(scores) // 2:
        raise ConfigError(
            f"hstats.top_k={cfg.top_k}: the top and bottom {cfg.top_k} of {len(scores)} samples would overlap; "
            f"need hstats.top_k <= {len(scores) // 2} or more generate.num_samples"
        )
    groups = select_extremes(scores, cfg.top_k, names).groups()
    if cfg.label_conditioned:
        groups |= threshold_groups(scores, cfg.threshold, names)
    return compute_hstats(store, groups, fields=("h", "x_T"), batch_size=cfg.batch_size, progress=progress)


def origin_of(store: Store) -> Origin:
    """Provenance of directions computed from ``store``: model, site, sampler grid and captured steps."""
    return Origin(
        model_id=store.model_id,
        hspace_location=store.spec.hspace_location,
        sampler_steps=store.spec.steps,
        eta=store.spec.eta,
        timesteps=store.timesteps[store.h_steps],
        steps=store.h_steps,
    )


def pca(store: Store, stats: HStats, cfg: PCAConfig, batch_size: int = 64) -> PCAResult:
    """Per-step and all-step PCA of the store's h, streamed (memory independent of the number of samples)."""
    return pca_directions_streaming(
        centered_batches(store, stats.means["h"], batch_size=batch_size, dtype=torch.float64),
        cfg.n_components,
        origin_of(store),
        h_shape=store.h_shape,
        num_samples=len(store),
        oversampling=cfg.oversampling,
        power_iterations=cfg.power_iterations,
        seed=cfg.seed,
    )


def spectrum_rows(result: PCAResult) -> list[dict[str, float]]:
    """Rows for a DVC plot of the PCA spectrum: component, explained variance ratio (all-step and mean per-step)."""
    all_ratio = result.all_steps.extra["explained_variance_ratio"]
    per_step = torch.tensor(result.per_step.extra["explained_variance_ratio"])
    return [
        {"component": k, "all_steps": float(all_ratio[k]), "per_step_mean": float(per_step[k].mean())}
        for k in range(len(all_ratio))
    ]


def supervised_methods(
    store: Store, stats: HStats, names: Sequence[str], cfg: SupervisedConfig
) -> dict[str, Directions]:
    """Supervised directions (mean difference of the ``cfg.groups`` sides) in h and in x_T, and conditional
    ones in h.

    Returns ``{"supervised": ..., "supervised_conditional": ..., "noise_supervised": ...}``; the
    conditional file holds one direction per target of ``cfg.conditional``.
    """
    for target, conditions in cfg.conditional.items():
        for name in (target, *conditions):
            if name not in names:
                raise ConfigError(f"directions.supervised.conditional: unknown attribute '{name}'")
    origin = origin_of(store)

    positive, negative = GROUP_SIDES[cfg.groups]
    if f"{names[0]}/{positive}" not in stats.group_sizes:
        raise ConfigError(
            f"directions.supervised.groups '{cfg.groups}': the statistics lack the {positive}/{negative} groups "
            "(set hstats.label_conditioned: true)"
        )

    def means(space: str, side: str) -> dict[str, torch.Tensor]:
        return {name: stats.group_means[space][f"{name}/{side}"] for name in names}

    sizes = {name: [stats.group_sizes[f"{name}/{side}"] for side in (positive, negative)] for name in names}
    extra = {"groups": cfg.groups, "group_sizes": sizes}
    in_h = supervised.supervised_directions(means("h", positive), means("h", negative), origin, space="h", extra=extra)
    noise_origin = Origin(model_id=origin.model_id, sampler_steps=origin.sampler_steps, eta=origin.eta)
    in_noise = supervised.supervised_directions(
        means("x_T", positive), means("x_T", negative), noise_origin, space="x_T", extra=extra
    )
    methods = {"supervised": in_h, "noise_supervised": in_noise}
    if cfg.conditional:
        methods["supervised_conditional"] = supervised.conditional_directions(in_h, cfg.conditional)
    return methods


@dataclass
class HeldOut:
    """Held-out samples to edit: seeds [M], x_T [M, C, H, W], variance noise [M, T, C, H, W] or None."""

    seeds: list[int]
    x_T: torch.Tensor
    noise: torch.Tensor | None


def held_out(model: DiffusionModel, sampler: SamplerConfig, seed_offset: int, count: int) -> HeldOut:
    """Noise of ``count`` held-out seeds from ``seed_offset`` (never used to fit directions)."""
    seeds = list(range(seed_offset, seed_offset + count))
    x_T, noise = initial_noise(model.sample_shape, seeds, sampler.steps, sampler.eta)
    return HeldOut(seeds, x_T, noise)


@torch.no_grad()
def edit(
    model: DiffusionModel,
    directions: Directions,
    k: int,
    scales: Sequence[float],
    samples: HeldOut,
    sampler: SamplerConfig,
    hspace_location: str,
) -> torch.Tensor:
    """Decode the held-out samples with direction ``k`` at every scale (in the direction's own unit), in one
    batched decode: images [S, M, 3, H, W] in [0, 1].

    h-space directions are injected at every step (as ``sampler.injection`` says); x_T-space directions shift
    the starting noise.
    With no scales edited (scale 0) the result equals the unedited decode.
    """
    if directions.space not in ("h", "x_T"):
        raise ConfigError(f"directions space '{directions.space}': editing by preview supports 'h' and 'x_T'")
    count = len(samples.seeds)
    unit = directions.delta(k, 1.0)
    scale_column = torch.as_tensor(list(scales), dtype=torch.float32).repeat_interleave(count)
    shifts = scale_column.reshape(-1, *([1] * unit.dim())) * unit  # [S*M, *unit.shape]
    x_T = samples.x_T.repeat(len(scales), 1, 1, 1)
    noise = None if samples.noise is None else samples.noise.repeat(len(scales), 1, 1, 1, 1)
    delta_h = shifts if directions.space == "h" else None
    if directions.space == "x_T":
        x_T = x_T + shifts
    images = decode_images(model, x_T, noise, sampler, hspace_location, delta_h)
    return images.reshape(len(scales), count, *images.shape[1:])


@torch.no_grad()
def decode_images(
    model: DiffusionModel,
    x_T: torch.Tensor,
    noise: torch.Tensor | None,
    sampler: SamplerConfig,
    hspace_location: str,
    delta_h: torch.Tensor | None = None,
) -> torch.Tensor:
    """Decode x_T [B, C, H, W] (with stored noise, and a per-sample delta_h [B, T, *h] if given, injected as
    ``sampler.injection`` says) to images [B, 3, H, W] in [0, 1]."""
    result = decode(
        model,
        x_T,
        noise,
        steps=sampler.steps,
        eta=sampler.eta,
        hspace_location=hspace_location,
        capture_steps=None,
        delta_h=delta_h,
        asyrp=delta_h is not None and sampler.injection == "asyrp",
        batch_size=sampler.batch_size,
    )
    return model.images(result.x_0)


def preview_grid(
    model: DiffusionModel,
    directions: Directions,
    cfg: PreviewConfig,
    sampler: SamplerConfig,
    hspace_location: str,
    samples: HeldOut,
) -> torch.Tensor:
    """A picture [3, H', W']: one row per (direction, held-out sample), one column per scale of ``cfg.scales``."""
    count = min(cfg.max_directions, directions.num_directions)
    edits = torch.stack(
        [edit(model, directions, k, cfg.scales, samples, sampler, hspace_location) for k in range(count)]
    )
    rows = edits.permute(0, 2, 1, 3, 4, 5)  # [K, S, M, ...] -> [K, M, S, ...]: rows (k, m), columns s
    return make_grid(rows.reshape(-1, *rows.shape[-3:]), columns=len(cfg.scales))


def logit(probabilities: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Log-odds of probabilities, clamped to [eps, 1 - eps]."""
    p = probabilities.clamp(eps, 1 - eps)
    return torch.log(p) - torch.log1p(-p)


def attribute_effects(
    model: DiffusionModel,
    classifier: nn.Module,
    directions: Directions,
    scale: float,
    samples: HeldOut,
    sampler: SamplerConfig,
    hspace_location: str,
    baseline_logits: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """For every direction k: the change of every attribute's logit [M, A] when editing at +scale and -scale.

    Returns ``{"up": [K, M, A], "down": [K, M, A]}`` (edited minus unedited logits).
    """
    up, down = [], []
    for k in range(directions.num_directions):
        images = edit(model, directions, k, [scale, -scale], samples, sampler, hspace_location)
        changes = classify_logits(classifier, images.flatten(0, 1)).reshape(2, len(samples.seeds), -1) - baseline_logits
        up.append(changes[0])
        down.append(changes[1])
    return {"up": torch.stack(up), "down": torch.stack(down)}


def moves_towards_other_side(
    before: torch.Tensor, raised: torch.Tensor, lowered: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample, whether an edit towards the other side of one attribute moves (and flips) its logit.

    Args:
        before: [M] unedited logits of the attribute.
        raised: [M] logits after the edit that adds the attribute (+scale); only read where before <= 0.
        lowered: [M] logits after the edit that removes it (-scale); only read where before > 0.

    Returns:
        (moved, flipped), both [M] bool: samples without the attribute are edited up and those with it down;
        ``moved`` when the logit goes that way, ``flipped`` when it crosses 0. On a confident classifier the
        other edit (more of an attribute a sample already has) has no image-level meaning: its logit change is
        the classifier's noise, so it is not counted.
    """
    has_it = before > 0
    after = torch.where(has_it, lowered, raised)
    moved = torch.where(has_it, after < before, after > before)
    flipped = torch.where(has_it, after < 0, after > 0)
    return moved, flipped


def supervised_check(
    names: Sequence[str], directions: Directions, effects: dict[str, torch.Tensor], baseline_logits: torch.Tensor
) -> dict[str, dict[str, float]]:
    """Per supervised direction (named after its attribute), on the held-out samples:

    * ``moved``: the fraction whose target logit moves towards the other side when edited towards it
      (:func:`moves_towards_other_side`), ``flipped`` the fraction that reach it;
    * ``moved_up`` / ``moved_down``: the fractions of all samples whose target logit rises at +scale / falls at
      -scale (including samples already at that side, where the change is the classifier's noise);
    * ``target_effect``: the mean target logit change at +scale; ``effect/<other>`` the mean |change| of every
      other attribute at +scale and ``max_off_target`` the largest of them.

    ``effects`` is :func:`attribute_effects`' result, ``baseline_logits`` [M, A] the unedited logits.
    """
    report = {}
    for k, name in enumerate(directions.names):
        target = list(names).index(name)
        up, down = effects["up"][k], effects["down"][k]
        before = baseline_logits[:, target]
        moved, flipped = moves_towards_other_side(before, before + up[:, target], before + down[:, target])
        off_target = {other: up[:, a].abs().mean().item() for a, other in enumerate(names) if a != target}
        report[name] = {
            "moved": moved.float().mean().item(),
            "flipped": flipped.float().mean().item(),
            "moved_up": (up[:, target] > 0).float().mean().item(),
            "moved_down": (down[:, target] < 0).float().mean().item(),
            "target_effect": up[:, target].mean().item(),
            "max_off_target": max(off_target.values(), default=0.0),
            **{f"effect/{other}": value for other, value in off_target.items()},
        }
    return report


def conditional_check(
    supervised_report: dict[str, dict[str, float]],
    conditional_report: dict[str, dict[str, float]],
    conditions: dict[str, list[str]],
) -> dict[str, dict[str, float]]:
    """For each conditional target: its effect on the projected-out attributes against the plain direction's.

    ``partner_effect_*`` is the mean |logit change| of the removed attributes (averaged over them),
    ``target_kept`` the conditional target effect as a fraction of the plain one.
    """
    report = {}
    for target, removed in conditions.items():
        plain, conditional = supervised_report[target], conditional_report[target]
        partner_plain = sum(plain[f"effect/{name}"] for name in removed) / len(removed)
        partner_conditional = sum(conditional[f"effect/{name}"] for name in removed) / len(removed)
        report[target] = {
            "partner_effect_plain": partner_plain,
            "partner_effect_conditional": partner_conditional,
            "target_effect_plain": plain["target_effect"],
            "target_effect_conditional": conditional["target_effect"],
            "target_kept": conditional["target_effect"] / plain["target_effect"] if plain["target_effect"] else 0.0,
        }
    return report
