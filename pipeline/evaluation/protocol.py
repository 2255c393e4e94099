"""The evaluation protocol: every direction of every file judged alike, per sample, per sign, on every attribute
(docs/methods.md, "Evaluation protocol"; the judge of one edit is :mod:`pipeline.evaluation.judge`).

For each direction k and each side (+ and -, never averaged), held-out samples are decoded at every scale of the
file's curve (magnitudes in the file's own unit, all of a side in one batched decode) and read by a
:class:`~pipeline.evaluation.readout.Reader` (attribute decisions and logits, broken verdicts). The held-out
samples come in two disjoint sets:

* the **choosing** samples (the first ``choose`` of them) are decoded at every scale of the curve; the curve is
  read on them, and they alone choose the side's operating scale (and, for an untargeted direction, its label);
* the **reported** samples (the rest) are decoded at the chosen scale only, and every reported rate is read on
  them. A scale or label chosen as the best of a curve is biased upwards on the samples it was chosen on (the
  winner's curse); on samples that took no part in the choice it is not. ``choose = 0`` chooses and reports on
  the same samples (the preview's frames, never a reported figure).

* **Targeted directions** (supervised files: named after their attribute) have sides "up" (+s, towards the
  attribute) and "down" (-s); only the samples eligible on a side are decoded for it (those that start without
  the attribute for "up", with it for "down"), plus the grid's samples.
* **Untargeted directions** (PCA, Jacobian, pullback) have sides "plus" and "minus"; every choosing sample is
  decoded, each side is labelled with the (attribute, towards) whose curve has the best operating point
  (:func:`~pipeline.evaluation.judge.best_curve`; candidates need ``min_eligible`` eligible samples), and the
  reported samples eligible for that label are decoded.

A side's operating scale is the one with the highest clean-flip rate among those with at most ``max_broken``
of the eligible samples broken (:func:`~pipeline.evaluation.judge.operating_point`). The curve does not stop at
the configured scales: while its operating point is its largest scale (or nothing flips and the largest scale is
within the broken budget) the curve gains the scale ``growth`` times larger, and while the operating point is
its smallest scale and either every scale breaks or the curve falls from there, the scale ``growth`` times
smaller, up to ``max_extensions`` added scales (:func:`curve_edges`). A side's ``status`` says how to read its
result: "inside" (the operating point lies inside its curve), "edge" (it is still at an end after every
extension), "no_flip" (no scale flips
``min_clean_flip`` of the eligible samples cleanly: no scale flips it) or "infeasible" (every scale breaks more
than the budget). Beside the rates with Wilson intervals, each side reports MNAC and the attribute dependency
(:func:`~pipeline.evaluation.judge.attributes_changed`, :func:`~pipeline.evaluation.judge.attribute_dependency`)
and the mean image change 1 - SSIM of the eligible samples (a secondary view).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from pipeline.diffusion.models import DiffusionModel
from pipeline.diffusion.sampling import SamplerConfig
from pipeline.directions.format import Directions
from pipeline.directions.methods import TARGETED_METHODS
from pipeline.directions.pullback import states_at
from pipeline.editing.samples import AnyEditor, Editor, GuidedEditor, HeldOut, ResumableEditor, decode_images, subset
from pipeline.evaluation.broken import BrokenConfig
from pipeline.evaluation.judge import (
    CurvePoint,
    EditOutcome,
    attribute_dependency,
    attributes_changed,
    best_curve,
    operating_point,
    stop_at_flip,
)
from pipeline.evaluation.measures import ssim_per_image
from pipeline.evaluation.readout import Reader, Reading
from pipeline.io.errors import ConfigError
from pipeline.io.files import WorkCache
from pipeline.io.grids import labelled_grid
from pipeline.io.validation import require

TARGETED_SIDES = {"up": 1.0, "down": -1.0}
"""Sides of a targeted direction and the sign of their scales: "up" adds the target attribute."""
UNTARGETED_SIDES = {"plus": 1.0, "minus": -1.0}
"""Sides of an untargeted direction and the sign of their scales."""
STATUSES = ("inside", "edge", "no_flip", "infeasible")
"""How a side's result reads (see the module docstring)."""


@dataclass
class ProtocolConfig:
    """How each direction is judged (part of the ``evaluate`` params section; see the module docstring).

    ``scales`` are the curve's first magnitudes (> 0, each edited with both signs) in each file's own unit (PCA:
    standard deviations; supervised: the mean difference; Jacobian: ``unit``; pullback: the guidance strength
    c); ``method_scales`` replaces them for the methods it names, whose units differ. ``growth`` (> 1) is the
    factor between a curve's end and the scale it is extended by, ``max_extensions`` the most scales added to
    one side's curve. ``max_broken`` is the largest broken rate an operating scale may have; ``min_clean_flip``
    the clean-flip rate below which no scale is said to flip a side; ``min_eligible`` the fewest eligible
    samples a label of an untargeted direction needs; ``grid_samples`` how many samples the grids show.
    """

    scales: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])
    method_scales: dict[str, list[float]] = field(default_factory=lambda: {"pullback_global": [2.0, 4.0, 8.0]})
    growth: float = 2.0
    max_extensions: int = 3
    max_broken: float = 0.05
    min_clean_flip: float = 0.1
    min_eligible: int = 8
    grid_samples: int = 2
    broken: BrokenConfig = field(default_factory=BrokenConfig)

    def __post_init__(self) -> None:
        key = "evaluate"
        lists = {"scales": self.scales, **{f"method_scales.{m}": s for m, s in self.method_scales.items()}}
        for name, scales in lists.items():
            require(len(scales) >= 1, f"{key}.{name}", scales, "must list at least one scale")
            require(
                all(math.isfinite(s) and s > 0 for s in scales), f"{key}.{name}", scales,
                "must be finite and > 0 (each scale is edited with both signs)",
            )  # fmt: skip
            require(len(set(scales)) == len(scales), f"{key}.{name}", scales, "has duplicates")
        require(math.isfinite(self.growth) and self.growth > 1, f"{key}.growth", self.growth, "must be > 1")
        require(self.max_extensions >= 0, f"{key}.max_extensions", self.max_extensions, "must be >= 0")
        require(0.0 <= self.max_broken < 1.0, f"{key}.max_broken", self.max_broken, "must be in [0, 1)")
        require(0.0 <= self.min_clean_flip <= 1.0, f"{key}.min_clean_flip", self.min_clean_flip, "must be in [0, 1]")
        require(self.min_eligible >= 1, f"{key}.min_eligible", self.min_eligible, "must be >= 1")
        require(self.grid_samples >= 1, f"{key}.grid_samples", self.grid_samples, "must be >= 1")

    def scales_for(self, method: str) -> list[float]:
        """The curve's first magnitudes for ``method``, ascending."""
        return sorted(float(s) for s in self.method_scales.get(method, self.scales))


@dataclass
class SideEdits:
    """The edits of one side of a direction, read, over the M held-out samples (choosing ones first): ``scales``
    [S] magnitudes (ascending), ``decoded`` [S, M] bool (which samples were decoded at which scale), ``after``
    [S, M, A] decisions (equal to the unedited ones where not decoded), ``logits`` [S, M, A] (NaN where not
    decoded), ``broken`` [S, M], ``change`` [S, M] (1 - SSIM, NaN where not decoded), ``factor_change`` [S, M, F]
    (|change| of the continuous ToyFaces factors in world standard deviations, NaN where not decoded; None
    without them) and ``tiles`` [S, g, 3, H, W], the grid samples' edited images (empty when loaded from
    records)."""

    sign: float
    scales: list[float]
    decoded: torch.Tensor
    after: torch.Tensor
    logits: torch.Tensor
    broken: torch.Tensor
    change: torch.Tensor
    factor_change: torch.Tensor | None
    tiles: torch.Tensor

    def outcome(self, index: int, rows: torch.Tensor, before: torch.Tensor, target: int, towards: bool) -> EditOutcome:
        """The outcome at scale ``index`` of the samples ``rows`` (1-d integer tensor) against ``target``."""
        return EditOutcome(before[rows], self.after[index, rows], self.broken[index, rows], target, towards)

    def curve(self, rows: torch.Tensor, before: torch.Tensor, target: int, towards: bool) -> list[CurvePoint]:
        """The curve of these edits on the samples ``rows``, read against ``target`` and side ``towards``."""
        return [
            CurvePoint(scale, self.outcome(i, rows, before, target, towards), self.change[i, rows])
            for i, scale in enumerate(self.scales)
        ]

    def merged(self, other: SideEdits) -> SideEdits:
        """These edits and ``other``'s (same side and samples) together: scales united (ascending), each sample
        at each scale taken from whichever decoded it (``other`` where both did); tiles of a scale from the
        edits that decoded the grid there."""
        scales = sorted(set(self.scales) | set(other.scales))
        parts = []
        for scale in scales:
            mine = self._at(scale)
            theirs = other._at(scale)
            if mine is None or theirs is None:
                parts.append(mine or theirs)
                continue
            use = theirs["decoded"]
            merged = {
                name: None if mine[name] is None else _where(use, theirs[name], mine[name])
                for name in ("decoded", "after", "logits", "broken", "change", "factor_change")
            }
            merged["decoded"] = mine["decoded"] | theirs["decoded"]
            tiles_from = theirs if theirs["tiles"].numel() else mine
            parts.append({**merged, "tiles": tiles_from["tiles"]})
        stacked = {name: torch.stack([part[name] for part in parts]) for name in parts[0] if parts[0][name] is not None}
        return SideEdits(
            self.sign, scales, stacked["decoded"], stacked["after"], stacked["logits"], stacked["broken"],
            stacked["change"], stacked.get("factor_change"), stacked["tiles"],
        )  # fmt: skip

    def _at(self, scale: float) -> dict[str, Any] | None:
        if scale not in self.scales:
            return None
        i = self.scales.index(scale)
        factor = None if self.factor_change is None else self.factor_change[i]
        return {
            "decoded": self.decoded[i], "after": self.after[i], "logits": self.logits[i], "broken": self.broken[i],
            "change": self.change[i], "factor_change": factor, "tiles": self.tiles[i],
        }  # fmt: skip


def _where(mask: torch.Tensor, chosen: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """``chosen`` where ``mask`` [M] is true, else ``other`` (tensors [M, ...])."""
    return torch.where(mask.reshape(-1, *([1] * (chosen.dim() - 1))), chosen, other)


@dataclass
class Unedited:
    """The unedited samples' readings that judging needs: decisions [M, A] bool, logits [M, A] (None when not
    read) and ``choose``, how many of the first samples choose (0: all samples choose and report)."""

    decisions: torch.Tensor
    logits: torch.Tensor | None
    choose: int

    def __post_init__(self) -> None:
        if not 0 <= self.choose < len(self.decisions) or (self.choose == 0 and len(self.decisions) == 0):
            raise ConfigError(f"choose {self.choose}: needs 0 <= choose < {len(self.decisions)} samples")

    @property
    def choosing(self) -> torch.Tensor:
        """Positions of the choosing samples."""
        return torch.arange(self.choose or len(self.decisions))

    @property
    def reported(self) -> torch.Tensor:
        """Positions of the reported samples."""
        return torch.arange(self.choose, len(self.decisions))

    @classmethod
    def of(cls, reading: Reading, choose: int) -> Unedited:
        """The unedited readings of ``reading``, the first ``choose`` samples choosing."""
        return cls(reading.decisions, reading.logits, choose)


@dataclass
class SideResult:
    """One side of a direction judged: its edits, the curve on the choosing samples against its target, the
    operating point chosen on it, the outcome at that scale on the reported samples (``reported``), the
    ``status`` (:data:`STATUSES`); ``names`` are the attributes, ``factor_names`` the continuous factors of
    ``edits.factor_change`` (if any)."""

    edits: SideEdits
    curve: list[CurvePoint]
    operating: CurvePoint
    feasible: bool
    status: str
    reported: CurvePoint
    unedited: Unedited
    names: list[str]
    factor_names: list[str] = field(default_factory=list)

    @property
    def scale_index(self) -> int:
        """The operating scale's position in ``edits.scales``."""
        return self.edits.scales.index(self.operating.scale)

    def entry(self) -> dict[str, Any]:
        """The JSON entry: target, towards, operating scale (signed), status, feasible, the judge's rates on the
        reported samples there (:meth:`EditOutcome.rates`), MNAC (``attributes_changed``), the attribute
        dependency, the distortion, ``chosen_on`` (the choosing samples eligible on this side), the curve on the
        choosing samples (scale, flip, clean flip, broken, distortion) with its per-sample-scale edit
        (``stop_at_flip``) and, on ToyFaces, ``truth``: the mean |change| of each continuous factor over the
        reported eligible samples (world standard deviations) and ``truth_label``, the factor that moved most."""
        outcome, names = self.reported.outcome, self.names
        entry = {
            "target": names[outcome.target],
            "towards": "up" if outcome.towards else "down",
            "scale": self.edits.sign * self.operating.scale,
            "status": self.status,
            "feasible": self.feasible,
            "distortion": _finite(self.reported.distortion),
            **outcome.rates(names),
            "attributes_changed": attributes_changed(outcome),
            "chosen_on": int(self.operating.outcome.eligible.sum()),
            "curve": [_curve_values(point) for point in self.curve],
            "stop_at_flip": _stop_values(stop_at_flip(self.curve), names),
        }
        rows = self.unedited.reported
        if self.unedited.logits is not None:
            spread = self.unedited.logits[rows].double().std(dim=0)
            after = self.edits.logits[self.scale_index, rows]
            entry["attribute_dependency"] = attribute_dependency(
                outcome, self.unedited.logits[rows], after, spread, names
            )
        if self.edits.factor_change is not None and self.factor_names and bool(outcome.eligible.any()):
            changes = self.edits.factor_change[self.scale_index, rows][outcome.eligible].double().mean(dim=0)
            entry["truth"] = {name: float(value) for name, value in zip(self.factor_names, changes, strict=True)}
            entry["truth_label"] = self.factor_names[int(changes.argmax())]
        return entry

    def entry_target(self) -> str:
        """The side's target as "<attribute> up|down" ("up": towards having it)."""
        outcome = self.operating.outcome
        return f"{self.names[outcome.target]} {'up' if outcome.towards else 'down'}"

    def verdicts(self, scale_index: int, grid: int) -> list[str]:
        """The verdicts of the first ``grid`` samples (choosing ones) at scale ``scale_index``, read against this
        side's target: "clean" (clean flip), "flip" (with an off-target change), "none" (no flip), "broken", or
        "" for a sample that was not eligible (already on the far side); :data:`pipeline.io.grids.FRAME_COLOURS`
        draws them."""
        outcome = self.curve[scale_index].outcome
        codes = []
        for i in range(grid):
            if not outcome.eligible[i]:
                codes.append("")
            elif outcome.broken[i]:
                codes.append("broken")
            elif outcome.clean[i]:
                codes.append("clean")
            else:
                codes.append("flip" if outcome.flipped[i] else "none")
        return codes


def _finite(value: float) -> float | None:
    """``value``, or None when it is not finite (JSON has no NaN)."""
    return value if math.isfinite(value) else None


STOP_RATES = ("flip", "clean_flip", "broken", "any_off_target")
"""The rates the per-sample-scale edit (:func:`stop_at_flip`) reports."""


def _stop_values(outcome: EditOutcome, names: list[str]) -> dict[str, Any]:
    """The per-sample-scale edit's :data:`STOP_RATES` with intervals."""
    rates = outcome.rates(names)
    return {key: rates[key] for key in STOP_RATES}


def _curve_values(point: CurvePoint) -> dict[str, Any]:
    return {"scale": point.scale, **point.outcome.headline(), "distortion": _finite(point.distortion)}


@dataclass
class DirectionResult:
    """A direction judged on both sides: ``target`` is its attribute (None for an untargeted direction)."""

    name: str
    target: str | None
    sides: dict[str, SideResult]

    def entry(self) -> dict[str, Any]:
        """The JSON entry: {"name", "target", "sides": {side: :meth:`SideResult.entry`}}."""
        sides = {side: result.entry() for side, result in self.sides.items()}
        return {"name": self.name, "target": self.target, "sides": sides}

    def signed_scales(self) -> set[float]:
        """Every signed scale edited on either side (0 excluded)."""
        return {result.edits.sign * scale for result in self.sides.values() for scale in result.edits.scales}

    def grid(
        self, baseline: Reading, grid: int, columns: Sequence[float] | None = None
    ) -> tuple[list[float], torch.Tensor, list[list[str]]]:
        """The grid rows of this direction: signed scales [C] (``columns``, default this direction's own, and 0 =
        unedited; ascending), tiles [grid, C, 3, H, W] and verdicts [grid][C] (:meth:`SideResult.verdicts`; ""
        for the unedited column). A column this direction was not edited at (another direction's curve went
        further) is a white tile without a verdict."""
        cells: dict[float, tuple[torch.Tensor, list[str]]] = {0.0: (baseline.images[:grid], [""] * grid)}
        for result in self.sides.values():
            for i, scale in enumerate(result.edits.scales):
                cells[result.edits.sign * scale] = (result.edits.tiles[i], result.verdicts(i, grid))
        order = sorted(set(cells) | set(columns or ()))
        blank = (torch.ones_like(baseline.images[:grid]), [""] * grid)
        tiles = torch.stack([cells.get(s, blank)[0] for s in order], dim=1)
        verdicts = [[cells.get(s, blank)[1][row] for s in order] for row in range(grid)]
        return order, tiles, verdicts


def edit_side(
    editor: AnyEditor,
    reader: Reader,
    baseline: Reading,
    k: int,
    sign: float,
    scales: Sequence[float],
    decode: torch.Tensor,
    grid: int,
) -> SideEdits:
    """Decode direction ``k`` at ``sign * scales`` for the samples where ``decode`` [M] bool is true and read them
    against ``baseline``; the tiles are the first ``grid`` samples' images (empty when ``grid`` is 0, and then
    the decoded samples need not include them)."""
    index = decode.nonzero().flatten()
    images = editor(k, [sign * s for s in scales], index)  # [S, m, 3, H, W]
    count, attributes = baseline.decisions.shape
    decoded = torch.zeros(len(scales), count, dtype=torch.bool)
    decoded[:, index] = True
    after = baseline.decisions.unsqueeze(0).repeat(len(scales), 1, 1)
    logits = torch.full((len(scales), count, attributes), math.nan)
    broken = torch.zeros(len(scales), count, dtype=torch.bool)
    change = torch.full((len(scales), count), math.nan)
    factor_change = None
    if baseline.factors is not None:
        factor_change = torch.full((len(scales), count, baseline.factors.shape[1]), math.nan)
    unedited = baseline.subset(index)
    for i, edited in enumerate(images):
        reading = reader(edited)
        after[i, index] = reading.decisions
        if reading.logits is not None:
            logits[i, index] = reading.logits
        broken[i, index] = reading.broken
        change[i, index] = 1.0 - ssim_per_image(edited, unedited.images)
        moved = reader.factor_change(unedited, reading)
        if factor_change is not None and moved is not None:
            factor_change[i, index] = moved
    tiles = images[:, :grid] if grid else images[:, :0]
    return SideEdits(sign, list(scales), decoded, after, logits, broken, change, factor_change, tiles)


@dataclass(frozen=True)
class _Choice:
    """What the choosing samples say about one side: the curve read against its (chosen) target, the operating
    point on it and whether it is within the broken budget."""

    curve: list[CurvePoint]
    point: CurvePoint
    feasible: bool


def _choose(edits: SideEdits, unedited: Unedited, target: int | None, cfg: ProtocolConfig) -> _Choice:
    """Read ``edits`` on the choosing samples: against ``target``, or for an untargeted direction (``target``
    None) against the (attribute, towards) whose curve has the best operating point."""
    towards = edits.sign > 0
    rows, before = unedited.choosing, unedited.decisions
    if target is not None:
        curve = edits.curve(rows, before, target, towards)
        point, feasible = operating_point(curve, cfg.max_broken)
        return _Choice(curve, point, feasible)
    candidates = [
        edits.curve(rows, before, attribute, label_towards)
        for attribute in range(before.shape[1])
        for label_towards in (True, False)
        if int((before[rows, attribute] != label_towards).sum()) >= cfg.min_eligible
    ]
    if not candidates:
        raise ConfigError(
            f"evaluate.min_eligible={cfg.min_eligible}: no attribute has that many of the {len(rows)} choosing "
            "samples on either side; lower it or raise the number of samples"
        )
    chosen, point, feasible = best_curve(candidates, cfg.max_broken)
    return _Choice(list(chosen), point, feasible)


def curve_edges(choice: _Choice, cfg: ProtocolConfig) -> float | None:
    """The scale a side's curve should gain next, or None when its operating point lies inside it: ``growth``
    times its largest scale when the operating point is the largest scale, or when no scale flips
    ``min_clean_flip`` of the eligible samples cleanly, the largest being within the broken budget (a larger
    one might); ``1 / growth`` times its smallest scale when the operating point is the smallest scale and
    either every scale breaks too often or it flips more cleanly than the next scale (the curve falls from its
    low end, so a smaller scale might overshoot less). A curve flat at its low end is not extended downwards:
    the operating point, the smallest of equals, already lies on the plateau, and towards scale 0 the only
    "flips" left are samples that sit on the classifier's boundary."""
    points = sorted(choice.curve, key=lambda point: point.scale)
    point, lowest, highest = choice.point, points[0], points[-1]
    rates = [p.outcome.clean_flip_rate() for p in points]
    nothing_flips = all(rate < cfg.min_clean_flip for rate in rates)
    if highest.outcome.broken_rate() <= cfg.max_broken and (point.scale == highest.scale or nothing_flips):
        return highest.scale * cfg.growth
    falling = len(points) > 1 and rates[0] > rates[1]
    if point.scale == lowest.scale and (not choice.feasible or falling):
        return lowest.scale / cfg.growth
    return None


def side_status(choice: _Choice, cfg: ProtocolConfig) -> str:
    """The :data:`STATUSES` entry of a side whose curve is final (see the module docstring)."""
    if not choice.feasible:
        return "infeasible"
    if choice.point.outcome.clean_flip_rate() < cfg.min_clean_flip:
        return "no_flip"
    return "edge" if curve_edges(choice, cfg) is not None else "inside"


def judge_sides(
    edits: Mapping[str, SideEdits],
    unedited: Unedited,
    target: int | None,
    cfg: ProtocolConfig,
    names: list[str],
    factor_names: list[str] | None = None,
) -> dict[str, SideResult]:
    """Judge the read edits of each side of one direction (side -> :class:`SideEdits`): choose each side's
    operating point (and, for an untargeted direction, ``target`` None, its label) on the choosing samples and
    read it on the reported ones, which must have been decoded at that scale (see the module docstring)."""
    sides: dict[str, SideResult] = {}
    for side, side_edits in edits.items():
        choice = _choose(side_edits, unedited, target, cfg)
        index = side_edits.scales.index(choice.point.scale)
        outcome = choice.point.outcome
        rows = unedited.reported
        reported = side_edits.outcome(index, rows, unedited.decisions, outcome.target, outcome.towards)
        missing = reported.eligible & ~side_edits.decoded[index, rows]
        if bool(missing.any()):
            raise ConfigError(
                f"{int(missing.sum())} reported samples were not decoded at the operating scale "
                f"{side_edits.sign * choice.point.scale:g} of side '{side}' (records of another configuration: "
                "rerun the evaluation)"
            )
        reported_point = CurvePoint(choice.point.scale, reported, side_edits.change[index, rows])
        status = side_status(choice, cfg)
        sides[side] = SideResult(
            side_edits, choice.curve, choice.point, choice.feasible, status, reported_point, unedited, names,
            list(factor_names or []),
        )  # fmt: skip
    return sides


def judge_direction(
    editor: AnyEditor,
    reader: Reader,
    baseline: Reading,
    k: int,
    name: str,
    target: int | None,
    scales: Sequence[float],
    cfg: ProtocolConfig,
    choose: int = 0,
) -> DirectionResult:
    """Edit direction ``k`` (named ``name``) on both sides and judge it (see the module docstring): the first
    ``choose`` samples of ``baseline`` decoded along the curve from ``scales`` (extended while its operating point
    is at an end), the others at the operating scale (``choose`` 0: every sample along the curve, choosing and
    reporting); ``target`` is the index of its attribute for a targeted direction, else None."""
    unedited = Unedited.of(baseline, choose)
    count = len(baseline.images)
    choosing = torch.zeros(count, dtype=torch.bool)
    choosing[unedited.choosing] = True
    grid = min(cfg.grid_samples, int(choosing.sum()))
    shown = torch.arange(count) < grid
    before = baseline.decisions
    edits = {}
    for side, sign in (TARGETED_SIDES if target is not None else UNTARGETED_SIDES).items():
        eligible = before[:, target] != (sign > 0) if target is not None else torch.ones(count, dtype=torch.bool)
        decode = shown | (choosing & eligible)
        side_edits = edit_side(editor, reader, baseline, k, sign, scales, decode, grid)
        for _ in range(cfg.max_extensions):
            extra = curve_edges(_choose(side_edits, unedited, target, cfg), cfg)
            if extra is None:
                break
            side_edits = side_edits.merged(edit_side(editor, reader, baseline, k, sign, [extra], decode, grid))
        if choose:
            choice = _choose(side_edits, unedited, target, cfg)
            outcome = choice.point.outcome
            report = ~choosing & (before[:, outcome.target] != outcome.towards)
            if bool(report.any()):
                at = edit_side(editor, reader, baseline, k, sign, [choice.point.scale], report, 0)
                side_edits = side_edits.merged(at)
        edits[side] = side_edits
    sides = judge_sides(edits, unedited, target, cfg, reader.names, reader.factor_names)
    return DirectionResult(name, None if target is None else reader.names[target], sides)


@dataclass
class MethodGrid:
    """A labelled grid [3, H, W] of one file's judged directions, its caption, and the labels drawn on it: one
    per row (direction · sample, top to bottom) and one per column (signed scale, left to right)."""

    picture: torch.Tensor
    caption: str
    rows: list[str]
    columns: list[str]


def method_grid(
    method: str, results: Mapping[str, DirectionResult], baseline: Reading, grid_samples: int
) -> MethodGrid:
    """The labelled grid of one file's judged directions: one row per (direction, sample) in the order of
    ``results`` (the file's order, as in every table), one column per signed scale (0: the unedited image),
    each edited cell framed by its verdict against its side's target."""
    grid = min(grid_samples, len(baseline.images))
    rows, labels, scales = [], [], None
    verdicts: list[list[str]] = []
    every_scale = sorted(set().union(*(result.signed_scales() for result in results.values())))
    for name, result in results.items():
        scales, tiles, cells = result.grid(baseline, grid, every_scale)
        rows.append(tiles)
        verdicts += cells
        labels += [f"{name} · sample {i + 1}" for i in range(grid)]
    assert scales is not None
    columns = [f"{s:+g}" if s else "0" for s in scales]
    title = f"{method}: columns = signed scale in the file's unit"
    picture = labelled_grid(torch.cat(rows), labels, columns, verdicts, title=title)
    targets = "; ".join(
        f"{name}: " + ", ".join(f"{side} {result.sides[side].entry_target()}" for side in result.sides)
        for name, result in results.items()
    )
    caption = (
        f"{method}: rows = direction · held-out sample (file order), columns = signed scale, 0 = unedited; "
        f"frames: the judge's verdict against each side's target ({targets})"
    )
    return MethodGrid(picture, caption, labels, columns)


def judge_files(
    model: DiffusionModel,
    reader: Reader,
    files: Mapping[str, Directions],
    cfg: ProtocolConfig,
    sampler: SamplerConfig,
    samples: HeldOut,
    max_directions: int,
    untargeted: tuple[int, int] | None = None,
    work: WorkCache | None = None,
    progress: bool = True,
    choose: int = 0,
    shard: tuple[int, int] | None = None,
) -> tuple[dict[str, dict[str, DirectionResult]], dict[str, Reading], dict[str, float]]:
    """Judge the first ``max_directions`` directions of every file of ``files`` (targeted files whole) on the
    held-out ``samples``, the first ``choose`` of which choose each side's operating point and the rest report
    it (``choose`` 0: all do both; see the module docstring). Untargeted files use the first ``untargeted``
    = (choosing, reported) samples of each set (all when None). Returns (method -> direction name -> result,
    method -> the unedited reading of its samples, seconds per method). Every edit decode is a unit of ``work``
    (a killed run resumes from those it did). With ``shard`` (index, count) only the directions k with
    k % count == index are judged: a shard job fills ``work`` with their decodes."""
    work = work or WorkCache(None)
    plain: list[Reading] = []
    states: dict[tuple[int, ...], torch.Tensor] = {}

    def states_of(chosen: HeldOut) -> Callable[[int], torch.Tensor]:
        def state_at(step: int) -> torch.Tensor:
            key = (step, *chosen.seeds)
            if key not in states:
                states[key] = states_at(
                    model, chosen.x_T, chosen.noise, steps=sampler.steps, eta=sampler.eta, step_indices=[step]
                )[step]
            return states[key]

        return state_at

    counts = {method: _count(method, d, max_directions) for method, d in files.items()}
    first, stride = shard or (0, 1)
    total = sum(len(range(first, count, stride)) for count in counts.values())
    bar = tqdm(total=total, desc="judge", unit="direction", disable=not progress)
    results: dict[str, dict[str, DirectionResult]] = {}
    baselines: dict[str, Reading] = {}
    seconds: dict[str, float] = {}
    for method, directions in files.items():
        started = time.perf_counter()
        targeted = method in TARGETED_METHODS
        rows, method_choose = judged_rows(len(samples.seeds), choose, None if targeted else untargeted)
        chosen = subset(samples, rows)
        decoder: Editor | GuidedEditor
        if directions.space == "x_t":
            decoder = GuidedEditor(model, directions, chosen, sampler, states_of(chosen), f"'{method}'")
            baselines[method] = reader(decoder.baseline)
        else:
            if not plain:
                plain.append(reader(decode_images(model, samples.x_T, samples.noise, sampler)))
            baselines[method] = plain[0].subset(rows)
            decoder = Editor(model, directions, chosen, sampler, baselines[method].images)
        editor = ResumableEditor(decoder, work, method)
        results[method] = {}
        for k in range(first, counts[method], stride):
            name = directions.names[k]
            target = reader.names.index(name) if targeted and name in reader.names else None
            results[method][name] = judge_direction(
                editor, reader, baselines[method], k, name, target, cfg.scales_for(method), cfg, method_choose
            )
            bar.update()
        seconds[method] = time.perf_counter() - started
    bar.close()
    return results, baselines, seconds


def judged_rows(count: int, choose: int, untargeted: tuple[int, int] | None) -> tuple[torch.Tensor, int]:
    """The positions among ``count`` samples (the first ``choose`` choosing) that a file is judged on, and how
    many of them choose: all, or the first ``untargeted`` = (choosing, reported) of each set."""
    if untargeted is None:
        return torch.arange(count), choose
    choosing, reported = untargeted
    if choose == 0:
        return torch.arange(min(reported, count)), 0
    first = torch.arange(min(choosing, choose))
    return torch.cat([first, choose + torch.arange(min(reported, count - choose))]), len(first)


def _count(method: str, directions: Directions, max_directions: int) -> int:
    if method in TARGETED_METHODS:
        return directions.num_directions
    return min(max_directions, directions.num_directions)


def file_entries(results: Mapping[str, Mapping[str, DirectionResult]]) -> dict[str, list[dict[str, Any]]]:
    """method -> its directions' :meth:`DirectionResult.entry` as a list in the file's order (JSON files are
    written with sorted keys, so the order lives in a list)."""
    return {method: [result.entry() for result in judged.values()] for method, judged in results.items()}
