"""The evaluation protocol that scores every directions file alike (run by the ``evaluate`` step): effects,
preservation, realism, matched distortion and, on ToyFaces, the ground truth.

For each directions file (a method) and each of its directions (the first ``max_directions``; supervised
files are evaluated whole, one direction per attribute), on M held-out seeds that no stage fitted on:

1. **Edits.** The held-out samples are decoded unedited (the baseline) and edited at every scale of
   ``scales``, in the file's own unit, all scales of a direction in one batched decode. Spaces "h" and
   "x_T" edit through :func:`pipeline.editing.edit`; space "x_t" (pullback) by x-space guidance at the
   file's edit step (``origin.steps[0]``, settings from ``extra``), from each sample's own x_t, decoded
   with the file's quality boost. Its baseline is the same boosted decode of the unedited x_t.
   Directions are applied as they are stored: Jacobian directions of other samples and pullback
   directions (local or global) are not re-fitted to, or projected onto, the held-out samples' own local
   bases, which would cost one Krylov solve per sample, many times the whole evaluation.
2. **Measurements** of each edit against its baseline: the signed change of every attribute logit (raw
   classifier logits, :func:`pipeline.classifiers.classify_logits`), averaged over samples; preservation: SSIM and
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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from pipeline.editing import AnyEditor
from pipeline.evaluation.bisection import bisect_scale
from pipeline.evaluation.measures import auto_label, central_difference, fid, kid, selectivity
from pipeline.evaluation.readout import Judge, Measurement, Reading, measure
from pipeline.evaluation.supervised import matched_supervised_scores
from pipeline.io.validation import require

TOP = 5
"""``selective_top5``: how many of a method's first TOP directions have selectivity above 0.5."""


@dataclass
class ProtocolConfig:
    """How one direction is judged (part of the ``evaluate`` params section; see the module docstring).

    ``scales`` are in each file's own unit (PCA: standard deviations; supervised: the mean difference;
    Jacobian: ``unit``; pullback: the guidance strength c); ``max_scale`` bounds the matched-distortion
    search in the same units. ``kid_subset_size`` is capped by the number of samples; ``grid_samples`` is how
    many samples the grids show.
    """

    scales: list[float] = field(default_factory=lambda: [1.0])
    distortion_budget: float = 0.3
    max_scale: float = 8.0
    bisection_steps: int = 3
    tolerance: float = 0.2
    kid_subset_size: int = 4
    kid_subsets: int = 50
    kid_seed: int = 0
    grid_samples: int = 2

    def __post_init__(self) -> None:
        key = "evaluate"
        require(len(self.scales) >= 1, f"{key}.scales", self.scales, "must list at least one scale")
        require(all(math.isfinite(s) for s in self.scales), f"{key}.scales", self.scales, "must be finite")
        budget = self.distortion_budget
        require(0.0 < budget < 1.0, f"{key}.distortion_budget", budget, "must be in (0, 1) (mean 1 - SSIM)")
        require(self.max_scale > 0, f"{key}.max_scale", self.max_scale, "must be > 0")
        require(self.bisection_steps >= 0, f"{key}.bisection_steps", self.bisection_steps, "must be >= 0")
        require(0.0 <= self.tolerance < 1.0, f"{key}.tolerance", self.tolerance, "must be in [0, 1)")
        require(self.kid_subset_size >= 2, f"{key}.kid_subset_size", self.kid_subset_size, "must be >= 2")
        require(self.kid_subsets >= 1, f"{key}.kid_subsets", self.kid_subsets, "must be >= 1")
        require(self.grid_samples >= 1, f"{key}.grid_samples", self.grid_samples, "must be >= 1")


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
    cfg: ProtocolConfig,
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
        entry |= matched_supervised_scores(judge, baseline, effects, matched, mirrored, target)
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


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def method_metrics(
    results: Mapping[str, DirectionResult],
    judge: Judge,
    baseline: Reading,
    reference: torch.Tensor,
    cfg: ProtocolConfig,
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


def table_row(summary: Mapping[str, Any]) -> dict[str, Any]:
    return {column: summary.get(column) for column in TABLE_COLUMNS}


def caption(method: str, results: Mapping[str, DirectionResult], cfg: ProtocolConfig) -> str:
    shown = sorted({0.0, *(float(s) for s in cfg.scales)})
    labels = ", ".join(f"{name}: {result.entry['label']}" for name, result in results.items())
    return (
        f"{method}: one row per direction; for each of {cfg.grid_samples} samples, scales {shown} then the "
        f"matched edit (1 - SSIM = {cfg.distortion_budget}); auto-labels {labels}"
    )


def finite(value: Any) -> Any:
    """``value`` with non-finite floats replaced by None (JSON has no inf or NaN)."""
    if isinstance(value, Mapping):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value

