"""The judge of edits: what one edit did to each sample, read on every attribute at once.

An edit is one direction at one signed scale applied to M held-out samples. The classifier decides every
attribute of every image at its threshold (logit > 0) before and after the edit, and a realism check
(:mod:`pipeline.evaluation.broken`) flags images that the model could not have produced. Per sample:

* eligible: the target attribute starts on the near side (without it for an edit towards it, with it for an
  edit away from it); rates are over the eligible samples, because an edit towards a side the sample is
  already on has no observable outcome on a decided classifier;
* flip: the target decision crosses to the other side on an image that is not broken (a broken image's
  readings are not trusted, so it counts as a failure);
* clean flip: a flip where no other attribute's decision changed;
* off-target flip of attribute a: a's decision changed on an image that is not broken;
* broken: the realism check's verdict.

Each rate comes with its Wilson score interval (Wilson 1927), which keeps its coverage for small counts and
for rates near 0 or 1, where the normal approximation fails. +s and -s are separate edits with separate
outcomes: nothing here averages them, so damage an edit does alike in both directions is counted twice rather
than cancelled.

docs/methods.md ("Judging an edit") gives the definitions with their rationale.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from pipeline.io.errors import ConfigError

WILSON_Z = 1.959963984540054
"""The standard normal quantile of a two-sided 95% interval."""


def wilson_interval(successes: int, trials: int, z: float = WILSON_Z) -> tuple[float, float]:
    """The Wilson score interval (low, high) of a binomial rate; (0, 1) when there are no trials.

    Centre (k + z^2/2) / (n + z^2), half-width z sqrt(k (n - k) / n + z^2 / 4) / (n + z^2) for k successes
    in n trials (Wilson 1927, *Probable inference, the law of succession, and statistical inference*).
    """
    if trials < 0 or not 0 <= successes <= trials:
        raise ConfigError(f"wilson_interval: {successes} successes in {trials} trials")
    if trials == 0:
        return 0.0, 1.0
    n, k, z2 = float(trials), float(successes), z * z
    centre = (k + z2 / 2) / (n + z2)
    half = z * math.sqrt(k * (n - k) / n + z2 / 4) / (n + z2)
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class Rate:
    """``successes`` out of ``trials``, with its 95% Wilson interval."""

    successes: int
    trials: int

    @property
    def value(self) -> float | None:
        """The observed rate, or None without trials."""
        return self.successes / self.trials if self.trials else None

    def as_dict(self) -> dict[str, Any]:
        """{"rate", "low", "high", "n"} for JSON (rate None without trials)."""
        low, high = wilson_interval(self.successes, self.trials)
        return {"rate": self.value, "low": low, "high": high, "n": self.trials}

    @classmethod
    def of(cls, hits: torch.Tensor, among: torch.Tensor) -> Rate:
        """The rate of ``hits`` [M] bool among the samples where ``among`` [M] bool is true."""
        return cls(int((hits & among).sum()), int(among.sum()))


def decisions(logits: torch.Tensor) -> torch.Tensor:
    """The classifier's decision of every attribute, [M, A] bool, from logits [M, A] (threshold: logit 0)."""
    return logits > 0


@dataclass(frozen=True)
class EditOutcome:
    """Per-sample outcome of one edit (one direction, one signed scale) read against one target attribute.

    Attributes:
        before: [M, A] bool decisions of the unedited images.
        after: [M, A] bool decisions of the edited images.
        broken: [M] bool, edited images the realism check rejects.
        target: index of the target attribute in the A attributes.
        towards: True when the edit moves towards having the target ("up"), False away from it ("down").
    """

    before: torch.Tensor
    after: torch.Tensor
    broken: torch.Tensor
    target: int
    towards: bool

    def __post_init__(self) -> None:
        if self.before.shape != self.after.shape or self.before.dim() != 2:
            raise ConfigError(f"EditOutcome: decisions {tuple(self.before.shape)} and {tuple(self.after.shape)}")
        if self.broken.shape != self.before.shape[:1]:
            raise ConfigError(f"EditOutcome: broken {tuple(self.broken.shape)} for {len(self.before)} samples")
        if not 0 <= self.target < self.before.shape[1]:
            raise ConfigError(f"EditOutcome: target {self.target} outside {self.before.shape[1]} attributes")

    @property
    def eligible(self) -> torch.Tensor:
        """[M] bool: samples that start on the near side of the target."""
        return self.before[:, self.target] != self.towards

    @property
    def changed(self) -> torch.Tensor:
        """[M, A] bool: decisions that differ after the edit, on images that are not broken."""
        return (self.before != self.after) & ~self.broken[:, None]

    @property
    def flipped(self) -> torch.Tensor:
        """[M] bool: the target reaches the far side on an image that is not broken."""
        return (self.after[:, self.target] == self.towards) & ~self.broken

    @property
    def off_target(self) -> torch.Tensor:
        """[M, A-1] bool: changed decisions of the other attributes (target column removed)."""
        others = [a for a in range(self.before.shape[1]) if a != self.target]
        return self.changed[:, others]

    @property
    def clean(self) -> torch.Tensor:
        """[M] bool: flipped, and nothing else changed."""
        return self.flipped & ~self.off_target.any(dim=1)

    def rates(self, names: Sequence[str]) -> dict[str, Any]:
        """The rates over eligible samples: ``flip``, ``clean_flip``, ``broken`` and ``any_off_target`` as
        :meth:`Rate.as_dict` entries, ``off_target`` {attribute: rate entry} for every other attribute."""
        eligible, off_target = self.eligible, self.off_target
        others = [name for a, name in enumerate(names) if a != self.target]
        return {
            "flip": Rate.of(self.flipped, eligible).as_dict(),
            "clean_flip": Rate.of(self.clean, eligible).as_dict(),
            "broken": Rate.of(self.broken, eligible).as_dict(),
            "any_off_target": Rate.of(off_target.any(dim=1), eligible).as_dict(),
            "off_target": {name: Rate.of(off_target[:, i], eligible).as_dict() for i, name in enumerate(others)},
        }

    def headline(self) -> dict[str, float | None]:
        """``flip``, ``clean_flip`` and ``broken`` rates among eligible samples, without intervals (None without
        eligible samples)."""
        eligible = self.eligible
        return {
            "flip": Rate.of(self.flipped, eligible).value,
            "clean_flip": Rate.of(self.clean, eligible).value,
            "broken": Rate.of(self.broken, eligible).value,
        }

    def clean_flip_rate(self) -> float:
        """The clean-flip rate among eligible samples (0 without eligible samples)."""
        return Rate.of(self.clean, self.eligible).value or 0.0

    def broken_rate(self) -> float:
        """The broken rate among eligible samples (0 without eligible samples)."""
        return Rate.of(self.broken, self.eligible).value or 0.0


@dataclass(frozen=True)
class CurvePoint:
    """One scale of a direction's curve on one side: the scale (> 0, in the file's unit; the side gives the
    sign), the outcome, and ``change`` [M], each sample's image change 1 - SSIM against its unedited image
    (NaN where the sample was not decoded; every eligible sample is)."""

    scale: float
    outcome: EditOutcome
    change: torch.Tensor

    @property
    def distortion(self) -> float:
        """Mean image change 1 - SSIM over the eligible samples (NaN without eligible samples)."""
        eligible = self.outcome.eligible
        return float(self.change[eligible].double().mean()) if bool(eligible.any()) else math.nan


def operating_point(curve: Sequence[CurvePoint], max_broken: float) -> tuple[CurvePoint, bool]:
    """The operating scale of one direction and side: the point with the highest clean-flip rate among those
    whose broken rate is at most ``max_broken`` (ties: the smaller scale). Returns (point, feasible); when no
    point is within the broken budget, the point with the fewest broken images (then the smaller scale) and
    False."""
    if not curve:
        raise ConfigError("operating_point: empty curve")
    feasible = [p for p in curve if p.outcome.broken_rate() <= max_broken]
    if feasible:
        return max(feasible, key=lambda p: (p.outcome.clean_flip_rate(), -p.scale)), True
    return min(curve, key=lambda p: (p.outcome.broken_rate(), p.scale)), False


def stop_at_flip(curve: Sequence[CurvePoint]) -> EditOutcome:
    """Each sample's outcome at its own scale: the smallest scale of ``curve`` (one side, ascending) at which its
    target flips on an image that is not broken, or the largest scale when none does. This is an edit that
    watches the classifier and stops at the decision boundary (a per-sample scale, no longer one scale for
    all samples); its clean-flip rate says whether the off-target changes come from overshooting."""
    if not curve:
        raise ConfigError("stop_at_flip: empty curve")
    points = sorted(curve, key=lambda p: p.scale)
    first = points[0].outcome
    chosen = torch.full((len(first.before),), len(points) - 1, dtype=torch.int64)
    for index in reversed(range(len(points))):
        chosen[points[index].outcome.flipped] = index
    rows = torch.arange(len(chosen))
    after = torch.stack([p.outcome.after for p in points])[chosen, rows]
    broken = torch.stack([p.outcome.broken for p in points])[chosen, rows]
    return EditOutcome(first.before, after, broken, first.target, first.towards)


def best_curve(
    candidates: Sequence[Sequence[CurvePoint]], max_broken: float
) -> tuple[Sequence[CurvePoint], CurvePoint, bool]:
    """For a direction without a target (PCA, Jacobian, pullback): among ``candidates``, one curve per
    (attribute, side) read off the same edits, the one whose operating point is best: within the broken
    budget first, then the higher clean-flip rate, then the higher flip rate, then the earlier candidate.
    Returns (curve, operating point, feasible). The label is chosen on the samples it is then measured on, so
    its rate is the best of several and biased upwards; docs/methods.md says by how much to discount it."""
    if not candidates:
        raise ConfigError("best_curve: no candidate curve (too few samples on either side of every attribute)")
    scored = []
    for order, curve in enumerate(candidates):
        point, feasible = operating_point(curve, max_broken)
        flip = point.outcome.headline()["flip"] or 0.0
        scored.append(((feasible, point.outcome.clean_flip_rate(), flip, -order), curve, point, feasible))
    _, curve, point, feasible = max(scored, key=lambda entry: entry[0])
    return curve, point, feasible


def _mean_interval(values: torch.Tensor) -> dict[str, Any]:
    """{"mean", "low", "high", "n"} of ``values`` [n]: the mean with its normal 95% interval (mean -+ z s / sqrt n,
    s the sample standard deviation); mean None and (0, 0) bounds without values, the mean itself as both bounds
    for one value."""
    n = len(values)
    if n == 0:
        return {"mean": None, "low": 0.0, "high": 0.0, "n": 0}
    values = values.double()
    mean = float(values.mean())
    half = WILSON_Z * float(values.std(unbiased=True)) / math.sqrt(n) if n > 1 else 0.0
    return {"mean": mean, "low": mean - half, "high": mean + half, "n": n}


def attributes_changed(outcome: EditOutcome) -> dict[str, Any]:
    """MNAC, the mean number of attributes changed (Rodriguez et al., ICCV 2021, "Beyond trivial
    counterfactual explanations with diverse valuable explanations"; the measure of DiME and ACE): per eligible
    sample whose edited image is not broken, the number of *other* attributes (the target not counted) whose
    decision changed, averaged, with a normal 95% interval (:func:`_mean_interval`). Broken images are left out,
    since their readings are not trusted; their rate is reported beside it."""
    among = outcome.eligible & ~outcome.broken
    return _mean_interval(outcome.off_target[among].sum(dim=1).double())


def attribute_dependency(
    outcome: EditOutcome,
    before_logits: torch.Tensor,
    after_logits: torch.Tensor,
    spread: torch.Tensor,
    names: Sequence[str],
) -> dict[str, Any]:
    """Attribute dependency (Wu et al., CVPR 2021, "StyleSpace analysis"): how far an edit moves the logits
    of the attributes it does not target, in units of each logit's spread.

    With before/after logits [M, A] of the same samples and ``spread`` [A], each logit's standard deviation
    over unedited samples, and over the eligible samples whose edited image is not broken:
    ``mean`` = mean over samples and over the other attributes k of |c_k(after) - c_k(before)| / spread_k;
    ``max`` = the largest per-attribute mean, for attribute ``max_attribute``; ``target`` = the mean signed
    change of the target's logit towards the side edited, (c_t(after) - c_t(before)) / spread_t (+ for "up"),
    against which the others' are read. None without such samples.
    """
    among = outcome.eligible & ~outcome.broken
    if not bool(among.any()):
        return {"mean": None, "max": None, "max_attribute": None, "target": None}
    moved = (after_logits[among] - before_logits[among]).double() / spread.double().clamp(min=1e-12)
    others = [a for a in range(moved.shape[1]) if a != outcome.target]
    per_attribute = moved[:, others].abs().mean(dim=0)
    worst = int(per_attribute.argmax())
    sign = 1.0 if outcome.towards else -1.0
    return {
        "mean": float(per_attribute.mean()),
        "max": float(per_attribute[worst]),
        "max_attribute": names[others[worst]],
        "target": sign * float(moved[:, outcome.target].mean()),
    }
