"""One evaluation protocol for every directions file (the ``evaluate`` stage): effects, preservation, realism,
matched distortion and, on ToyFaces, the ground truth.

For each directions file (a method) and each of its directions (the first ``max_directions``; supervised
files are evaluated whole, one direction per attribute), on M held-out seeds that no stage fitted on:

1. **Edits.** The held-out samples are decoded unedited (the baseline) and edited at every scale of
   ``scales``, in the file's own unit, all scales of a direction in one batched decode. Spaces "h" and
   "x_T" edit through :func:`pipeline.study.edit`; space "x_t" (pullback) by x-space guidance at the
   file's edit step (``origin.steps[0]``, settings from ``extra``), from each sample's own x_t, decoded
   with the file's quality boost. Its baseline is the same boosted decode of the unedited x_t.
   Directions are applied as they are stored: Jacobian directions of other samples and pullback
   directions (local or global) are not re-fitted to, or projected onto, the held-out samples' own local
   bases, which would cost one Krylov solve per sample, many times the whole evaluation.
2. **Measurements** of each edit against its baseline: the signed change of every attribute logit (raw
   classifier logits, :func:`pipeline.study.classify_logits`), averaged over samples; preservation: SSIM and
   PSNR (torchmetrics; PSNR capped at :data:`PSNR_CAP` dB, the value of an unchanged image). At the matched
   scale s (below) the direction's attribute-effect vector is the central difference (change at +s minus
   change at -s) / 2: it counts every sample, also those already at one side of an attribute (whose edit
   towards that side has no image-level meaning on a confident classifier), and cancels what an edit does
   alike in both directions (artifacts of leaving the data manifold). Its auto-label is the attribute it
   moves most and its selectivity |largest| / sum |effects| (1: one attribute only; 1/A: all alike).
3. **Matched distortion.** Methods have different units, so each direction is also evaluated at the scale
   s in [0, ``max_scale``] where the mean image change 1 - SSIM reaches ``distortion_budget``: the grid
   scales bracket it, then at most ``bisection_steps`` bisection probes (one batched decode each) narrow
   it, stopping once within ``tolerance`` (relative). The matched edit is the decoded one closest to the
   budget, so every number reported there comes from the same images; ``capped`` marks directions that
   stay below the budget up to ``max_scale``.
4. **At the matched scale**: KID (and FID where both sets have more samples than features) of the edited
   images against ``reference_samples`` unedited decodes of further held-out seeds, on the classifier's
   penultimate features (torchmetrics ``feature=``, :class:`ClassifierFeatures`). Other seeds, because an
   edit compared with its own unedited image is a paired set, which the unbiased KID estimator scores far
   below 0 on a few samples; ``unedited_kid`` (the method's unedited samples against the same reference)
   is the floor to compare with. For supervised files also the target effect, the worst off-target
   effect, and, editing every sample towards the other side of its target attribute (samples without it
   at +s, samples with it at -s), the fraction whose target logit moves that way (``moved``) and the
   fraction that gets there (``flipped``).
5. **Ground truth (ToyFaces).** With the ToyFaces classifier, every edit is also read as a change of the
   world's 13 factors (7 binary attributes as probabilities, 6 continuous factors as the classifier's
   factor predictions), each divided by that factor's standard deviation in the ToyFaces world, so that
   the truth label (the factor moved most) and truth selectivity compare factors in common units. The
   hat's hue counts only as far as a hat is present before and after the edit (:data:`GATED_FACTORS`).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure
from tqdm.auto import tqdm

from pipeline import study
from pipeline.checkpoint import WorkCache
from pipeline.directions import Directions
from pipeline.directions.format import METHODS
from pipeline.directions.pullback import guidance_rows, states_at
from pipeline.errors import ConfigError
from pipeline.images import make_grid
from pipeline.models import DiffusionModel
from pipeline.sampling import ddim_grid, denoise_steps, initial_noise
from pipeline.study import HeldOut, SamplerConfig

DEFAULT_METHODS = (
    "pca_per_step",
    "pca_all_steps",
    "supervised",
    "supervised_conditional",
    "noise_supervised",
    "jacobian",
    "pullback_global",
)
SUPERVISED_METHODS = ("supervised", "supervised_conditional", "noise_supervised")
"""Files whose direction names are their target attributes."""
PSNR_CAP = 100.0
"""PSNR (dB) reported for an unchanged image (whose PSNR is infinite)."""
TOP = 5
"""``selective_top5``: how many of a method's first TOP directions have selectivity above 0.5."""
GATED_FACTORS = {"hat_hue": "hat"}
"""Ground truth: continuous factors that exist only with a binary attribute."""


@dataclass
class EvaluateConfig:
    """The ``evaluate`` params section (see the module docstring for the protocol).

    ``scales`` are in each file's own unit (PCA: standard deviations; supervised: the mean difference;
    Jacobian: ``unit``; pullback: the guidance strength c); ``max_scale`` bounds the matched-distortion
    search in the same units. Realism is measured against ``reference_samples`` unedited decodes of further
    held-out seeds (after the M edited ones); ``kid_subset_size`` is capped by ``num_samples``.
    """

    seed_offset: int = 95_000_000
    num_samples: int = 12
    methods: list[str] = field(default_factory=lambda: list(DEFAULT_METHODS))
    max_directions: int = 5
    scales: list[float] = field(default_factory=lambda: [1.0])
    distortion_budget: float = 0.3
    max_scale: float = 8.0
    bisection_steps: int = 3
    tolerance: float = 0.2
    reference_samples: int = 32
    kid_subset_size: int = 4
    kid_subsets: int = 50
    kid_seed: int = 0
    grid_samples: int = 2

    def __post_init__(self) -> None:
        key = "evaluate"
        _require(self.seed_offset >= 0, f"{key}.seed_offset", self.seed_offset, "must be >= 0")
        _require(self.num_samples >= 2, f"{key}.num_samples", self.num_samples, "must be >= 2")
        _require(len(self.methods) >= 1, f"{key}.methods", self.methods, "must list at least one method")
        for method in self.methods:
            _require(method in METHODS, f"{key}.methods", method, f"unknown; expected one of {', '.join(METHODS)}")
        _require(len(set(self.methods)) == len(self.methods), f"{key}.methods", self.methods, "has duplicates")
        _require(self.max_directions >= 1, f"{key}.max_directions", self.max_directions, "must be >= 1")
        _require(len(self.scales) >= 1, f"{key}.scales", self.scales, "must list at least one scale")
        _require(all(math.isfinite(s) for s in self.scales), f"{key}.scales", self.scales, "must be finite")
        budget = self.distortion_budget
        _require(0.0 < budget < 1.0, f"{key}.distortion_budget", budget, "must be in (0, 1) (mean 1 - SSIM)")
        _require(self.max_scale > 0, f"{key}.max_scale", self.max_scale, "must be > 0")
        _require(self.bisection_steps >= 0, f"{key}.bisection_steps", self.bisection_steps, "must be >= 0")
        _require(0.0 <= self.tolerance < 1.0, f"{key}.tolerance", self.tolerance, "must be in [0, 1)")
        _require(self.reference_samples >= 2, f"{key}.reference_samples", self.reference_samples, "must be >= 2")
        _require(self.kid_subset_size >= 2, f"{key}.kid_subset_size", self.kid_subset_size, "must be >= 2")
        _require(self.kid_subsets >= 1, f"{key}.kid_subsets", self.kid_subsets, "must be >= 1")
        _require(
            1 <= self.grid_samples <= self.num_samples, f"{key}.grid_samples", self.grid_samples,
            "must be in [1, num_samples]",
        )  # fmt: skip


def _require(condition: bool, key: str, value: object, rule: str) -> None:
    if not condition:
        raise ConfigError(f"params: {key}={value!r}: {rule}")


# --------------------------------------------------------------------------------------------------------
# Small measures


def selectivity(effects: torch.Tensor) -> float:
    """|largest| / sum |effects| of an effect vector [A]: in [1/A, 1] for a non-zero vector, 0 for zero."""
    magnitude = effects.abs().double()
    total = float(magnitude.sum())
    return float(magnitude.max()) / total if total > 0 else 0.0


def auto_label(effects: torch.Tensor, names: Sequence[str]) -> str:
    """The name of the entry of ``effects`` [A] with the largest magnitude."""
    return names[int(effects.abs().argmax())]


def ssim_per_image(edited: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """SSIM [N] of images [N, 3, H, W] in [0, 1] (Gaussian window 11, or the largest odd size that fits)."""
    kernel = min(11, min(original.shape[-2:]))
    kernel -= 1 - kernel % 2
    values = structural_similarity_index_measure(
        edited.float(), original.float(), data_range=1.0, reduction="none", kernel_size=kernel
    )
    return values.reshape(len(original))


def psnr_per_image(edited: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """PSNR [N] in dB of images in [0, 1], capped at :data:`PSNR_CAP` (an unchanged image)."""
    values = peak_signal_noise_ratio(edited.float(), original.float(), data_range=1.0, reduction="none", dim=(1, 2, 3))
    return values.nan_to_num(PSNR_CAP, posinf=PSNR_CAP).clamp(max=PSNR_CAP)


class ClassifierFeatures(nn.Module):
    """A torchmetrics ``feature=`` extractor: images uint8 in [0, 255] or float in [0, 1], [N, 3, H, W]
    -> the classifier's penultimate features [N, num_features] (float32, on the CPU), each scaled to norm
    sqrt(num_features): KID's kernel (x.y / d + 1)^3 then reads cosine similarities, so KID is bounded
    (|KID| <= 16) and does not depend on the arbitrary scale of a classifier's activations."""

    def __init__(self, classifier: nn.Module):
        super().__init__()
        self.classifier = classifier
        self.num_features = int(classifier.num_features)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        images = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        device = next(self.classifier.parameters()).device
        features = self.classifier.features(images.to(device)).float().cpu()
        return features / features.norm(dim=1, keepdim=True).clamp(min=1e-12) * math.sqrt(self.num_features)


def kid(
    features: nn.Module, real: torch.Tensor, fake: torch.Tensor, subset_size: int, subsets: int, seed: int = 0
) -> tuple[float, float]:
    """KID (mean, std over subsets) of ``fake`` against ``real`` images [N, 3, H, W] in [0, 1] with the
    extractor ``features``; subsets are drawn from ``seed`` (the global RNG is left untouched)."""
    from torchmetrics.image.kid import KernelInceptionDistance

    size = min(subset_size, len(real), len(fake))
    if size < 2:
        raise ConfigError(f"KID: needs at least 2 images per set, got {len(real)} and {len(fake)}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "will save all extracted features in buffer"
        metric = KernelInceptionDistance(feature=features, subset_size=size, subsets=subsets, normalize=True)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std)


def fid(features: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> float | None:
    """FID of ``fake`` against ``real`` with ``features``; None when either set has no more samples than
    features (the covariance would be singular)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    if min(len(real), len(fake)) <= int(features.num_features):
        return None
    metric = FrechetInceptionDistance(feature=features, normalize=True)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    return float(metric.compute())


# --------------------------------------------------------------------------------------------------------
# Matched distortion


@dataclass
class Bisection:
    """The result of :func:`bisect_scale`: the chosen scale and its value, whether the budget was out of
    reach up to ``max_scale`` (``capped``), and every point evaluated by the search (scale, value)."""

    scale: float
    value: float
    capped: bool
    probes: list[tuple[float, float]]


def bisect_scale(
    fn: Callable[[float], float],
    budget: float,
    *,
    max_scale: float,
    steps: int,
    tolerance: float,
    known: Mapping[float, float] | None = None,
) -> Bisection:
    """The scale s in [0, max_scale] where an increasing ``fn`` (fn(0) = 0) reaches ``budget``.

    ``known`` values (for example a grid already evaluated) bracket the budget first; then each of at most
    ``steps`` calls of ``fn`` probes ``max_scale`` (while nothing reaches the budget) or splits the bracket
    [largest scale below, smallest scale at or above the budget]: at the power law c s^p through its two
    ends (linear from 0), kept inside the middle 80% of the bracket, so a probe never does much worse than
    the midpoint and hits a power law's root at once. It stops once a value is within ``tolerance * budget``
    of the budget. Returns the evaluated scale > 0 closest to the budget (ties: the larger value, then the
    smaller scale), or the largest one when no evaluated value reaches it (``capped`` when that is
    ``max_scale``).
    """
    points = {0.0: 0.0}
    points.update({float(s): float(v) for s, v in (known or {}).items() if 0.0 <= s <= max_scale})
    probes: list[tuple[float, float]] = []

    def close(value: float) -> bool:
        return abs(value - budget) <= tolerance * budget

    for _ in range(steps):
        if any(close(value) for value in points.values()):
            break
        above = [s for s, value in points.items() if value >= budget]
        if above:
            high = min(above)
            low = max((s for s, value in points.items() if value < budget and s < high), default=0.0)
            probe = _split(low, points.get(low, 0.0), high, points[high], budget)
        elif max_scale not in points:
            probe = max_scale
        else:
            break
        value = float(fn(probe))
        points[probe] = value
        probes.append((probe, value))
    reached = [s for s, value in points.items() if value >= budget or close(value)]
    if reached:
        edited = [s for s in points if s > 0]
        scale = min(edited, key=lambda s: (abs(points[s] - budget), -points[s], s))
        return Bisection(scale, points[scale], False, probes)
    scale = max(points)
    return Bisection(scale, points[scale], scale == max_scale, probes)


def _split(low: float, low_value: float, high: float, high_value: float, budget: float) -> float:
    """Where the power law through (low, low_value) and (high, high_value) reaches ``budget`` (linear when
    low or low_value is 0), clamped to the middle 80% of [low, high]."""
    width = high - low
    if low > 0 and low_value > 0 and high_value > low_value:
        power = math.log(high_value / low_value) / math.log(high / low)
        guess = low * (budget / low_value) ** (1.0 / power)
    elif high_value > low_value:
        guess = low + width * (budget - low_value) / (high_value - low_value)
    else:
        guess = low + width / 2
    return min(max(guess, low + 0.1 * width), high - 0.1 * width)


# --------------------------------------------------------------------------------------------------------
# Reading images with the classifier


class Judge:
    """The classifier's read-out of images: attribute logits, the standardised ToyFaces factors (when the
    classifier predicts them and a world is given), and the feature extractor for KID/FID."""

    def __init__(self, classifier: nn.Module, factor_std: torch.Tensor | None = None):
        self.classifier = classifier
        self.names = list(classifier.attribute_names)
        self.features = ClassifierFeatures(classifier)
        self.factor_std = factor_std
        self.factor_names: list[str] = []
        self.gates: list[tuple[int, int]] = []
        if factor_std is not None:
            self.factor_names = [*classifier.attribute_names, *classifier.factor_names]
            if len(self.factor_names) != len(factor_std):
                raise ConfigError(f"factor_std: {len(factor_std)} values for {len(self.factor_names)} factors")
            # a factor that exists only with an attribute (the hat's hue): its change counts as much as the
            # attribute is present before and after the edit, so unobservable hues of hatless faces add nothing
            self.gates = [
                (self.factor_names.index(factor), self.factor_names.index(attribute))
                for factor, attribute in GATED_FACTORS.items()
                if factor in self.factor_names and attribute in self.factor_names
            ]

    @torch.no_grad()
    def read(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(attribute logits [N, A] (raw), factors [N, F] / std or None) of images in [0, 1]."""
        logits = study.classify_logits(self.classifier, images)
        probabilities = torch.sigmoid(logits)
        if self.factor_std is None:
            return logits, None
        device = next(self.classifier.parameters()).device
        continuous = torch.cat(
            [self.classifier.predict_factors(chunk.to(device)).float().cpu() for chunk in images.split(256)]
        )
        return logits, torch.cat([probabilities, continuous], dim=1) / self.factor_std


def toyfaces_factor_std(world: Any, count: int = 4096) -> torch.Tensor:
    """Standard deviation [13] of the ToyFaces factors (7 binary attributes, then 6 continuous factors)
    over ``count`` faces of the world ``world`` (a :class:`pipeline.toyfaces.ToyFacesConfig`)."""
    from pipeline.toyfaces import sample_factors

    factors = sample_factors(range(count), world)
    return torch.cat([factors.binary, factors.continuous], dim=1).float().std(dim=0).clamp(min=1e-6)


@dataclass
class Reading:
    """Images [M, 3, H, W] in [0, 1] with their logits [M, A] and standardised factors [M, F] (or None)."""

    images: torch.Tensor
    logits: torch.Tensor
    factors: torch.Tensor | None

    @classmethod
    def of(cls, judge: Judge, images: torch.Tensor) -> Reading:
        logits, factors = judge.read(images)
        return cls(images, logits, factors)


@dataclass
class Measurement:
    """One edit at ``scale`` measured against its baseline: per sample, the signed logit changes
    ``effects`` [M, A], the standardised factor changes ``truth`` [M, F] (or None), SSIM and PSNR [M]."""

    scale: float
    reading: Reading
    effects: torch.Tensor
    truth: torch.Tensor | None
    ssim: torch.Tensor
    psnr: torch.Tensor

    @property
    def distortion(self) -> float:
        """Mean 1 - SSIM over samples."""
        return float(1.0 - self.ssim.double().mean())

    @property
    def mean_effects(self) -> torch.Tensor:
        """The attribute-effect vector [A] (mean over samples)."""
        return self.effects.mean(dim=0)


def measure(judge: Judge, baseline: Reading, images: torch.Tensor, scale: float) -> Measurement:
    """Measure edited images [M, 3, H, W] (sample i edited from baseline sample i) against ``baseline``."""
    reading = Reading.of(judge, images)
    truth = None
    if reading.factors is not None and baseline.factors is not None:
        truth = reading.factors - baseline.factors
        for factor, attribute in judge.gates:
            present = torch.minimum(
                torch.sigmoid(reading.logits[:, attribute]), torch.sigmoid(baseline.logits[:, attribute])
            )
            truth[:, factor] = truth[:, factor] * present
    return Measurement(
        scale=float(scale),
        reading=reading,
        effects=reading.logits - baseline.logits,
        truth=truth,
        ssim=ssim_per_image(images, baseline.images),
        psnr=psnr_per_image(images, baseline.images),
    )


# --------------------------------------------------------------------------------------------------------
# Editors: decode held-out samples under scaled edits of one directions file


def subset(samples: HeldOut, index: torch.Tensor) -> HeldOut:
    """The held-out samples at positions ``index`` (1-d integer tensor)."""
    return HeldOut(
        [samples.seeds[i] for i in index.tolist()],
        samples.x_T[index],
        None if samples.noise is None else samples.noise[index],
    )


class Editor:
    """Decodes held-out samples with direction k of a file in space "h" or "x_T" (:func:`pipeline.study.edit`)."""

    def __init__(
        self,
        model: DiffusionModel,
        directions: Directions,
        samples: HeldOut,
        sampler: SamplerConfig,
        location: str,
        baseline: torch.Tensor,
    ):
        self.model, self.directions, self.samples, self.sampler, self.location = (
            model, directions, samples, sampler, location,
        )  # fmt: skip
        self.baseline = baseline

    def __call__(self, k: int, scales: Sequence[float], index: torch.Tensor | None = None) -> torch.Tensor:
        """Images [S, m, 3, H, W] of the samples at ``index`` (default: all) at every scale."""
        samples = self.samples if index is None else subset(self.samples, index)
        return study.edit(self.model, self.directions, k, scales, samples, self.sampler, self.location)


class GuidedEditor:
    """Decodes held-out samples with direction k of a file in space "x_t": x-space guidance at the file's edit
    step (``origin.steps[0]``) from each sample's own x_t, with ``extra`` step_size, iterations and
    boost_step; then DDIM to x_0 with eta = 1 from the boost step on, the noise being each sample's own
    variance noise (so edits and baseline of a sample share it). ``baseline`` is the unedited x_t decoded
    the same way."""

    def __init__(
        self,
        model: DiffusionModel,
        directions: Directions,
        samples: HeldOut,
        sampler: SamplerConfig,
        states: Callable[[int], torch.Tensor],
        source: str,
    ):
        if directions.origin.steps is None or len(directions.origin.steps) != 1:
            raise ConfigError(f"directions file {source}: space 'x_t' needs exactly one edit step (origin.steps)")
        missing = [key for key in ("step_size", "iterations", "boost_step") if key not in directions.extra]
        if missing:
            raise ConfigError(f"directions file {source}: extra lacks {missing} (x-space guidance settings)")
        self.model, self.directions, self.samples, self.sampler = model, directions, samples, sampler
        self.step = int(directions.origin.steps[0])
        grid = ddim_grid(model.scheduler, sampler.steps)
        if not 0 <= self.step < grid.num_steps:
            raise ConfigError(f"directions file {source}: edit step {self.step} outside the grid [0, {grid.num_steps})")
        self.timestep = int(grid.timesteps[self.step])
        self.step_size = float(directions.extra["step_size"])
        self.iterations = int(directions.extra["iterations"])
        boost = directions.extra["boost_step"]
        self.etas = [0.0] * grid.num_steps
        self.noise = None
        if boost is not None:
            first = max(int(boost), self.step)
            self.etas[first:] = [1.0] * (grid.num_steps - first)
            _, self.noise = initial_noise(model.sample_shape, samples.seeds, sampler.steps, 1.0)
        self.x_t = states(self.step)
        self.baseline = self._denoise(self.x_t, torch.arange(len(samples.seeds)))

    def __call__(self, k: int, scales: Sequence[float], index: torch.Tensor | None = None) -> torch.Tensor:
        """Images [S, m, 3, H, W] of the samples at ``index`` (default: all) at every guidance strength."""
        index = torch.arange(len(self.samples.seeds)) if index is None else index
        count = len(index)
        rows = index.repeat(len(scales))
        strengths = torch.as_tensor(list(scales), dtype=torch.float32).repeat_interleave(count)
        edited = guidance_rows(
            self.model, self.x_t[rows], self.directions.delta(k, 1.0), strengths, self.timestep,
            step_size=self.step_size, iterations=self.iterations, batch_size=self.sampler.batch_size,
        )  # fmt: skip
        return self._denoise(edited, rows).reshape(len(scales), count, *self.baseline.shape[1:])

    def _denoise(self, x_t: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        images = []
        size = self.sampler.batch_size
        for chunk, chunk_rows in zip(x_t.split(size), rows.split(size), strict=True):
            noise = None if self.noise is None else self.noise[chunk_rows]
            x_0, _ = denoise_steps(
                self.model, chunk, steps=self.sampler.steps, start_step=self.step, eta=self.etas, noise=noise
            )
            images.append(self.model.images(x_0))
        return torch.cat(images)


class ResumableEditor:
    """An editor whose decodes are units of a :class:`~pipeline.checkpoint.WorkCache`: a killed evaluation
    resumes without decoding again what it had decoded (the bisection asks for the same scales again,
    since every probe follows from the measurements before it)."""

    def __init__(self, editor: Editor | GuidedEditor, work: WorkCache, method: str):
        self.editor, self.work, self.method = editor, work, method
        self.baseline = editor.baseline

    def __call__(self, k: int, scales: Sequence[float], index: torch.Tensor | None = None) -> torch.Tensor:
        """What ``editor(k, scales, index)`` returns, loaded when an earlier run decoded it."""
        rows = None if index is None else index.tolist()
        key = f"{self.method}/{k}/{[float(scale) for scale in scales]!r}/{rows}"
        return self.work.fetch(key, lambda: {"images": self.editor(k, scales, index)})["images"]


AnyEditor = Editor | GuidedEditor | ResumableEditor


# --------------------------------------------------------------------------------------------------------
# The protocol


@dataclass
class DirectionResult:
    """Everything measured for one direction: the JSON entry, the effect-curve rows and grid columns."""

    entry: dict[str, Any]
    rows: list[dict[str, Any]]
    columns: torch.Tensor  # [grid_samples, columns, 3, H, W]
    matched_images: torch.Tensor  # [M, 3, H, W]
    matched: Measurement
    mirrored: Measurement  # the edit at -matched.scale
    curve: dict[float, Measurement]

    @property
    def effects(self) -> torch.Tensor:
        """The attribute-effect vector [A]: central difference of the mean logit changes at +-matched scale."""
        return central_difference(self.matched.effects, self.mirrored.effects)


def central_difference(plus: torch.Tensor, minus: torch.Tensor) -> torch.Tensor:
    """(plus - minus) / 2 averaged over samples: [M, X] changes at +s and -s -> [X]."""
    return ((plus - minus) / 2).mean(dim=0)


@dataclass
class EvaluationResult:
    """What the evaluate stage writes: metrics JSON, plot rows (effect curves, method table), grids; and
    ``timings`` (seconds per method and in all, decodes resumed), logged but kept out of the metrics."""

    metrics: dict[str, Any]
    curve_rows: list[dict[str, Any]]
    method_rows: list[dict[str, Any]]
    grids: dict[str, torch.Tensor]
    captions: dict[str, str]
    timings: dict[str, float] = field(default_factory=dict)


def evaluate_direction(
    editor: AnyEditor,
    judge: Judge,
    baseline: Reading,
    k: int,
    name: str,
    method: str,
    cfg: EvaluateConfig,
    reference: torch.Tensor,
    target: int | None = None,
) -> DirectionResult:
    """Curve, matched distortion and scores of direction ``k`` (see the module docstring); KID of the matched
    edits against ``reference`` images (unedited decodes of other seeds)."""
    scales = [float(s) for s in cfg.scales]
    points: dict[float, Measurement] = {0.0: measure(judge, baseline, baseline.images, 0.0)}
    curve_scales = [s for s in dict.fromkeys(scales) if s != 0.0]
    if curve_scales:
        for scale, images in zip(curve_scales, editor(k, curve_scales), strict=True):
            points[scale] = measure(judge, baseline, images, scale)

    def probe(scale: float) -> float:
        points[scale] = measure(judge, baseline, editor(k, [scale])[0], scale)
        return points[scale].distortion

    known = {s: m.distortion for s, m in points.items() if s >= 0}
    search = bisect_scale(
        probe, cfg.distortion_budget, max_scale=cfg.max_scale, steps=cfg.bisection_steps, tolerance=cfg.tolerance,
        known=known,
    )  # fmt: skip
    matched = points[search.scale]
    mirrored = measure(judge, baseline, editor(k, [-search.scale])[0], -search.scale) if search.scale else matched
    effects = central_difference(matched.effects, mirrored.effects)
    label = auto_label(effects, judge.names)
    kid_mean, kid_std = kid(
        judge.features, reference, matched.reading.images, cfg.kid_subset_size, cfg.kid_subsets, cfg.kid_seed
    )
    entry: dict[str, Any] = {
        "label": label,
        "selectivity": selectivity(effects),
        "effects": {attribute: float(value) for attribute, value in zip(judge.names, effects, strict=True)},
        "scale": search.scale,
        "capped": search.capped,
        "probes": len(search.probes),
        "distortion": matched.distortion,
        "ssim": float(matched.ssim.mean()),
        "psnr": float(matched.psnr.mean()),
        "kid": kid_mean,
        "kid_std": kid_std,
    }
    if target is not None:
        entry |= _supervised_scores(judge, baseline, effects, matched, mirrored, target)
    if matched.truth is not None and mirrored.truth is not None:
        truth = central_difference(matched.truth, mirrored.truth)
        entry["truth_label"] = auto_label(truth, judge.factor_names)
        entry["truth_selectivity"] = selectivity(truth)
        entry["truth_effects"] = {factor: float(v) for factor, v in zip(judge.factor_names, truth, strict=True)}
    label_index = judge.names.index(label)
    tracked = label_index if target is None else target
    rows = [
        {
            "method": method,
            "direction": name,
            "scale": scale,
            "label": label,
            "label_effect": float(point.mean_effects[label_index]),
            "target": judge.names[target] if target is not None else "",
            "target_effect": float(point.mean_effects[tracked]),
            "distortion": point.distortion,
            "ssim": float(point.ssim.mean()),
            "psnr": float(point.psnr.mean()),
            "matched": int(scale == search.scale),
        }
        for scale, point in sorted(points.items())
    ]
    shown = sorted({0.0, *curve_scales})
    columns = [points[s].reading.images[: cfg.grid_samples] for s in shown] + [
        matched.reading.images[: cfg.grid_samples]
    ]
    return DirectionResult(entry, rows, torch.stack(columns, dim=1), matched.reading.images, matched, mirrored, points)


def _supervised_scores(
    judge: Judge,
    baseline: Reading,
    effects: torch.Tensor,
    matched: Measurement,
    mirrored: Measurement,
    target: int,
) -> dict[str, Any]:
    """Target effect and worst off-target (of the effect vector ``effects`` [A]), and towards the other side
    (:func:`study.moves_towards_other_side`): ``moved`` (the target logit moves that way) and ``flipped`` (it
    gets there); samples without the attribute are read at +s (``matched``), those with it at -s (``mirrored``)."""
    others = [a for a in range(len(effects)) if a != target]
    worst = max(others, key=lambda a: abs(float(effects[a]))) if others else None
    moved, flipped = study.moves_towards_other_side(
        baseline.logits[:, target], matched.reading.logits[:, target], mirrored.reading.logits[:, target]
    )
    return {
        "target": judge.names[target],
        "target_effect": float(effects[target]),
        "max_off_target": abs(float(effects[worst])) if worst is not None else 0.0,
        "worst_off_target": judge.names[worst] if worst is not None else "",
        "moved": float(moved.float().mean()),
        "flipped": float(flipped.float().mean()),
        "label_correct": judge.names[int(effects.abs().argmax())] == judge.names[target],
    }


def evaluate(
    model: DiffusionModel,
    classifier: nn.Module,
    files: Mapping[str, Directions],
    cfg: EvaluateConfig,
    sampler: SamplerConfig,
    location: str,
    world: Any = None,
    progress: bool = True,
    work: WorkCache | None = None,
) -> EvaluationResult:
    """Evaluate every directions file of ``files`` (method -> Directions) by the protocol of the module
    docstring. ``world`` (a ToyFacesConfig) enables the ground truth when ``classifier`` predicts factors.
    Every edit decode is a unit of ``work`` (a killed run resumes from the decodes it finished)."""
    work = work or WorkCache(None)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    factor_std = toyfaces_factor_std(world) if world is not None and hasattr(classifier, "predict_factors") else None
    judge = Judge(classifier, factor_std)
    samples = study.held_out(model, sampler, cfg.seed_offset, cfg.num_samples)
    others = study.held_out(model, sampler, cfg.seed_offset + cfg.num_samples, cfg.reference_samples)
    reference = study.decode_images(model, others.x_T, others.noise, sampler, location)
    plain: dict[str, Reading] = {}
    states: dict[int, torch.Tensor] = {}

    def state_at(step: int) -> torch.Tensor:
        if step not in states:
            states[step] = states_at(
                model, samples.x_T, samples.noise, steps=sampler.steps, eta=sampler.eta, step_indices=[step]
            )[step]
        return states[step]

    methods: dict[str, Any] = {}
    curve_rows: list[dict[str, Any]] = []
    method_rows: list[dict[str, Any]] = []
    grids: dict[str, torch.Tensor] = {}
    captions: dict[str, str] = {}
    results: dict[str, dict[str, DirectionResult]] = {}
    jobs = [(method, k) for method, d in files.items() for k in range(_count(method, d, cfg))]
    bar = tqdm(total=len(jobs), desc="evaluate", unit="direction", disable=not progress)
    for method, directions in files.items():
        method_started = time.perf_counter()
        decoder: Editor | GuidedEditor
        if directions.space == "x_t":
            decoder = GuidedEditor(model, directions, samples, sampler, state_at, f"'{method}'")
            baseline = Reading.of(judge, decoder.baseline)
        else:
            if "decoded" not in plain:
                images = study.decode_images(model, samples.x_T, samples.noise, sampler, location)
                plain["decoded"] = Reading.of(judge, images)
            baseline = plain["decoded"]
            decoder = Editor(model, directions, samples, sampler, location, baseline.images)
        editor = ResumableEditor(decoder, work, method)
        results[method] = {}
        for k in range(_count(method, directions, cfg)):
            name = directions.names[k]
            target = judge.names.index(name) if method in SUPERVISED_METHODS and name in judge.names else None
            results[method][name] = evaluate_direction(editor, judge, baseline, k, name, method, cfg, reference, target)
            curve_rows += results[method][name].rows
            bar.update()
        methods[method] = _method_metrics(results[method], judge, baseline, reference, cfg)
        timings[f"seconds/{method}"] = time.perf_counter() - method_started
        method_rows.append({"method": method, **_table_row(methods[method]["summary"])})
        # one row per direction: for each shown sample, its grid scales then its matched edit
        rows = torch.stack([result.columns.flatten(0, 1) for result in results[method].values()])
        grids[method] = make_grid(rows.flatten(0, 1), columns=rows.shape[1])
        captions[method] = _caption(method, results[method], cfg)
    bar.close()
    metrics: dict[str, Any] = {
        "table": {row["method"]: {key: value for key, value in row.items() if key != "method"} for row in method_rows},
        "methods": methods,
        "settings": {
            "num_samples": cfg.num_samples,
            "distortion_budget": cfg.distortion_budget,
            "max_scale": cfg.max_scale,
            "ground_truth": factor_std is not None,
            "reference_samples": cfg.reference_samples,
            "fid_note": (
                f"FID needs more than {judge.features.num_features} samples per set (the feature size); "
                f"{cfg.reference_samples} reference samples give KID only"
                if cfg.reference_samples <= judge.features.num_features
                else ""
            ),
        },
    }
    conditional = _conditional(files, results, judge)
    if conditional:
        metrics["conditional"] = conditional
    timings |= {"seconds": time.perf_counter() - started, "resumed": work.resumed}
    return EvaluationResult(_finite(metrics), curve_rows, method_rows, grids, captions, timings)


def _count(method: str, directions: Directions, cfg: EvaluateConfig) -> int:
    if method in SUPERVISED_METHODS:
        return directions.num_directions
    return min(cfg.max_directions, directions.num_directions)


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _method_metrics(
    results: Mapping[str, DirectionResult],
    judge: Judge,
    baseline: Reading,
    reference: torch.Tensor,
    cfg: EvaluateConfig,
) -> dict[str, Any]:
    entries = {name: result.entry for name, result in results.items()}
    values = list(entries.values())
    pooled = torch.cat([result.matched_images for result in results.values()])
    pooled_kid, _ = kid(judge.features, reference, pooled, cfg.kid_subset_size, cfg.kid_subsets, cfg.kid_seed)
    unedited_kid, _ = kid(
        judge.features, reference, baseline.images, cfg.kid_subset_size, cfg.kid_subsets, cfg.kid_seed
    )
    summary: dict[str, Any] = {
        "directions": len(values),
        "mean_selectivity": _mean([e["selectivity"] for e in values]),
        "selective_top5": sum(e["selectivity"] > 0.5 for e in values[:TOP]),
        "mean_distortion": _mean([e["distortion"] for e in values]),
        "mean_ssim": _mean([e["ssim"] for e in values]),
        "mean_psnr": _mean([e["psnr"] for e in values]),
        "mean_kid": _mean([e["kid"] for e in values]),
        "pooled_kid": pooled_kid,
        "unedited_kid": unedited_kid,
        "fid": fid(judge.features, reference, pooled),
        "capped": sum(bool(e["capped"]) for e in values),
        "labels": sorted({e["label"] for e in values}),
    }
    if any("target" in e for e in values):
        supervised = [e for e in values if "target" in e]
        summary |= {
            "label_accuracy": _mean([float(e["label_correct"]) for e in supervised]),
            "mean_target_effect": _mean([e["target_effect"] for e in supervised]),
            "mean_max_off_target": _mean([e["max_off_target"] for e in supervised]),
            "min_moved": min(e["moved"] for e in supervised),
            "min_flipped": min(e["flipped"] for e in supervised),
            "mean_flipped": _mean([e["flipped"] for e in supervised]),
        }
    if all("truth_selectivity" in e for e in values):
        summary |= {
            "mean_truth_selectivity": _mean([e["truth_selectivity"] for e in values]),
            "truth_selective_top5": sum(e["truth_selectivity"] > 0.5 for e in values[:TOP]),
            "truth_labels": sorted({e["truth_label"] for e in values}),
        }
    return {"summary": summary, "directions": entries}


TABLE_COLUMNS = (
    "directions", "mean_selectivity", "selective_top5", "mean_ssim", "mean_psnr", "mean_kid", "unedited_kid", "fid",
    "capped", "label_accuracy", "min_moved", "min_flipped", "mean_truth_selectivity", "truth_selective_top5",
)  # fmt: skip
"""Columns of the method table (plots/evaluate_methods.csv), at matched distortion."""


def _table_row(summary: Mapping[str, Any]) -> dict[str, Any]:
    return {column: summary.get(column) for column in TABLE_COLUMNS}


def _caption(method: str, results: Mapping[str, DirectionResult], cfg: EvaluateConfig) -> str:
    shown = sorted({0.0, *(float(s) for s in cfg.scales)})
    labels = ", ".join(f"{name}: {result.entry['label']}" for name, result in results.items())
    return (
        f"{method}: one row per direction; for each of {cfg.grid_samples} samples, scales {shown} then the "
        f"matched edit (1 - SSIM = {cfg.distortion_budget}); auto-labels {labels}"
    )


def _conditional(
    files: Mapping[str, Directions], results: Mapping[str, Mapping[str, DirectionResult]], judge: Judge
) -> dict[str, Any]:
    """Plain against conditional supervised directions, at matched distortion (central-difference effect
    vectors) and at scale 1 (when on the grid; change at +1): the effect on the projected-out partners (mean
    |effect|) and the target effect kept."""
    if "supervised" not in results or "supervised_conditional" not in results:
        return {}
    projected = files["supervised_conditional"].extra.get("projected_out", {})
    report = {}
    for target, conditional in results["supervised_conditional"].items():
        plain = results["supervised"].get(target)
        partners = [p for p in projected.get(target, []) if p in judge.names]
        if plain is None or not partners or target not in judge.names:
            continue
        entry = {"partners": partners}
        pairs = {"matched": (plain.effects, conditional.effects)}
        if 1.0 in plain.curve and 1.0 in conditional.curve:
            pairs["scale_1"] = (plain.curve[1.0].mean_effects, conditional.curve[1.0].mean_effects)
        for where, (a, b) in pairs.items():
            index = [judge.names.index(p) for p in partners]
            t = judge.names.index(target)
            plain_target, conditional_target = float(a[t]), float(b[t])
            entry[where] = {
                "partner_effect_plain": float(a[index].abs().mean()),
                "partner_effect_conditional": float(b[index].abs().mean()),
                "target_effect_plain": plain_target,
                "target_effect_conditional": conditional_target,
                "target_kept": conditional_target / plain_target if plain_target else 0.0,
            }
            entry[where]["partner_reduction"] = (
                1.0 - entry[where]["partner_effect_conditional"] / entry[where]["partner_effect_plain"]
                if entry[where]["partner_effect_plain"]
                else 0.0
            )
        report[target] = entry
    return report


def _finite(value: Any) -> Any:
    """``value`` with non-finite floats replaced by None (JSON has no inf or NaN)."""
    if isinstance(value, Mapping):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
