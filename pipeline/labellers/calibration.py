"""Calibration of a labeller's scores on the samples' own score distribution (``classifier.calibration``).

A zero-shot score (CLIP's) has no trained decision point: its zero is where the positive and the negative
prompts are equally similar, which need not separate the samples of a model into the two groups that are there.
``mixture`` fits, per attribute, a two-component 1-d Gaussian mixture with a shared variance to the raw logits
of all samples (EM from Otsu's split), and replaces each logit by the mixture's posterior log-odds of the upper
component,

    logit' = a (x - t),   a = (mu1 - mu0) / sigma^2,   t = (mu0 + mu1) / 2 - log(pi1 / pi0) / a,

an increasing affine map: t is the Bayes decision point between the two modes, and sigmoid(logit') is the
posterior probability of the upper group, so ``hstats.threshold`` (0.5 by default) keeps its meaning. When one
Gaussian explains the scores better (lower BIC), the attribute is left as it is (shift 0, scale 1): no split is
forced on samples that show one group. docs/methods.md ("Labellers") has the details and the limitations.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from pipeline.io.errors import ConfigError

CALIBRATIONS = ("none", "mixture")

MAX_ITERATIONS = 500
"""EM iterations at most (each is O(N); convergence takes tens on separated modes)."""
TOLERANCE = 1e-10
"""EM stops when the mean log-likelihood improves by less than this."""
VARIANCE_FLOOR = 1e-6
"""Smallest shared variance, relative to the scores' variance (two point masses would make it zero)."""
TABLE_EPSILON = 5e-7
"""Half the last decimal of the label table: probabilities written as 0.000000 or 1.000000 are read as this
far from 0 or 1, so their log-odds stay finite (|logit| <= 14.5)."""


@dataclass(frozen=True)
class AttributeCalibration:
    """The calibration of one attribute: calibrated logit = ``scale`` * (raw logit - ``shift``).

    ``split``: whether the two-component mixture was chosen over one Gaussian (BIC); ``upper_weight``: the
    mixture weight of the upper (attribute present) component, the share of raw logits above 0 when not split.
    """

    split: bool
    shift: float
    scale: float
    upper_weight: float

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        """Calibrated logits of raw logits (any shape)."""
        return self.scale * (logits - self.shift)


def fit_calibration(logits: torch.Tensor) -> AttributeCalibration:
    """The ``mixture`` calibration of one attribute's raw logits [N] (see the module docstring).

    Equivariant: raw logits c * x + d (c > 0) give the same calibrated logits as x.
    """
    x = logits.double().flatten()
    identity = AttributeCalibration(False, 0.0, 1.0, (x > 0).double().mean().item() if len(x) else 0.0)
    if len(x) < 4 or not torch.isfinite(x).all():
        return identity
    mean, std = x.mean(), x.std(correction=0)
    if std <= 0:
        return identity
    z = (x - mean) / std
    low, high, weight, variance, log_likelihood = _fit_mixture(z)
    single = -0.5 * len(z) * (math.log(2 * math.pi) + 1.0)  # one Gaussian on standardised scores
    if -2 * log_likelihood + 4 * math.log(len(z)) >= -2 * single + 2 * math.log(len(z)):
        return identity
    slope = (high - low) / variance
    point = (low + high) / 2 - math.log(weight / (1 - weight)) / slope
    return AttributeCalibration(True, (mean + std * point).item(), (slope / std).item(), weight)


def _fit_mixture(z: torch.Tensor) -> tuple[float, float, float, float, float]:
    """EM for two Gaussians with a shared variance on standardised scores z [N] (float64), started from
    Otsu's split of the sorted scores. Returns the lower mean, the upper mean, the upper weight, the shared
    variance and the log-likelihood."""
    ordered = z.sort().values
    count = len(ordered)
    below = torch.arange(1, count, dtype=torch.float64)  # sizes of the lower group of each split
    sums = ordered.cumsum(0)[:-1]
    low_means = sums / below
    high_means = (ordered.sum() - sums) / (count - below)
    between = below * (count - below) * (low_means - high_means) ** 2
    split = int(between.argmax())
    low, high = low_means[split].item(), high_means[split].item()
    weight = (count - below[split].item()) / count
    groups = (ordered[: split + 1] - low).pow(2).sum() + (ordered[split + 1 :] - high).pow(2).sum()
    variance = max(groups.item() / count, VARIANCE_FLOOR)
    previous = -math.inf
    for _ in range(MAX_ITERATIONS):
        log_low = math.log(1 - weight) - (z - low) ** 2 / (2 * variance)
        log_high = math.log(weight) - (z - high) ** 2 / (2 * variance)
        total = torch.logaddexp(log_low, log_high)
        log_likelihood = (total.sum() - 0.5 * count * math.log(2 * math.pi * variance)).item()
        upper = (log_high - total).exp()
        lower = 1 - upper
        weight = min(max(upper.mean().item(), 1 / count), 1 - 1 / count)
        low = ((lower * z).sum() / lower.sum().clamp_min(1e-300)).item()
        high = ((upper * z).sum() / upper.sum().clamp_min(1e-300)).item()
        spread = (lower * (z - low) ** 2).sum() + (upper * (z - high) ** 2).sum()
        variance = max(spread.item() / count, VARIANCE_FLOOR)
        if log_likelihood - previous < TOLERANCE * count:
            break
        previous = log_likelihood
    if high < low:
        low, high, weight = high, low, 1 - weight
    return low, high, weight, variance, log_likelihood


def calibrate(probabilities: torch.Tensor, method: str) -> tuple[torch.Tensor, list[AttributeCalibration]]:
    """Calibrate a label table's probabilities [N, A] (in [0, 1]) with ``method`` (:data:`CALIBRATIONS`):
    each column's log-odds are the raw logits (clamped at :data:`TABLE_EPSILON`). Returns the calibrated
    probabilities [N, A] (float32) and one :class:`AttributeCalibration` per attribute ("none": the table as
    it is, with no calibrations)."""
    if method not in CALIBRATIONS:
        raise ConfigError(f"params: classifier.calibration={method!r}: expected one of {', '.join(CALIBRATIONS)}")
    if method == "none":
        return probabilities, []
    logits = torch.logit(probabilities.double().clamp(TABLE_EPSILON, 1 - TABLE_EPSILON))
    fits = [fit_calibration(column) for column in logits.T]
    calibrated = torch.stack([fit.apply(column) for fit, column in zip(fits, logits.T, strict=True)], dim=1)
    return torch.sigmoid(calibrated).float().reshape(probabilities.shape), fits


class CalibratedLabeller(nn.Module):
    """A labeller whose logits [N, A] go through the label table's calibration, logit' = scale_a (logit_a - shift_a)
    per attribute, so that whoever judges an edit decides where the label table does (logit' 0 is probability
    0.5, the default ``hstats.threshold``) rather than at the labeller's raw zero. ``features`` and the attribute
    names are the labeller's own."""

    def __init__(self, labeller: nn.Module, fits: Sequence[AttributeCalibration]):
        super().__init__()
        names = list(labeller.attribute_names)
        if len(fits) != len(names):
            raise ConfigError(f"calibration: {len(fits)} fits for the labeller's {len(names)} attributes")
        self.labeller = labeller
        self.attribute_names = tuple(names)
        self.num_features = labeller.num_features
        self.register_buffer("shift", torch.tensor([fit.shift for fit in fits], dtype=torch.float32))
        self.register_buffer("scale", torch.tensor([fit.scale for fit in fits], dtype=torch.float32))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The labeller's features [N, F] of images [N, 3, H, W] in [0, 1]."""
        return self.labeller.features(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Calibrated logits [N, A] of images [N, 3, H, W] in [0, 1]."""
        logits = self.labeller(images)
        return (logits - self.shift.to(logits.dtype)) * self.scale.to(logits.dtype)
