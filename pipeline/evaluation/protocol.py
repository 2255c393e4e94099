"""The evaluation protocol: every direction of every file judged alike, per sample, per sign, on every attribute
(docs/methods.md, "Evaluation protocol"; the judge of one edit is :mod:`pipeline.evaluation.judge`).

For each direction k and each side (+ and -, never averaged), held-out samples are decoded at every scale of the
file's curve (magnitudes in the file's own unit, all of a side in one batched decode) and read by a
:class:`~pipeline.evaluation.readout.Reader` (attribute decisions, broken verdicts):

* **Targeted directions** (supervised files: named after their attribute) have sides "up" (+s, towards the
  attribute) and "down" (-s); only the samples eligible on a side are decoded for it (those that start without
  the attribute for "up", with it for "down"), plus the grid's samples.
* **Untargeted directions** (PCA, Jacobian, pullback) have sides "plus" and "minus"; every sample is decoded,
  and each side is labelled with the (attribute, towards) whose curve has the best operating point
  (:func:`~pipeline.evaluation.judge.best_curve`; candidates need ``min_eligible`` eligible samples).

A side's operating scale is the one with the highest clean-flip rate among those with at most ``max_broken``
of the eligible samples broken (:func:`~pipeline.evaluation.judge.operating_point`); its rates, with Wilson
intervals, are the side's result. The mean image change 1 - SSIM of the eligible samples is a secondary view.
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
from pipeline.evaluation.judge import CurvePoint, EditOutcome, best_curve, operating_point, stop_at_flip
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


@dataclass
class ProtocolConfig:
    """How each direction is judged (part of the ``evaluate`` params section; see the module docstring).

    ``scales`` are the curve's magnitudes (> 0, each edited with both signs) in each file's own unit (PCA:
    standard deviations; supervised: the mean difference; Jacobian: ``unit``; pullback: the guidance strength
    c); ``method_scales`` replaces them for the methods it names, whose units differ. ``max_broken`` is the
    largest broken rate an operating scale may have; ``min_eligible`` the fewest eligible samples a label of
    an untargeted direction needs; ``grid_samples`` how many samples the grids show.
    """

    scales: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])
    method_scales: dict[str, list[float]] = field(default_factory=lambda: {"pullback_global": [2.0, 4.0, 8.0]})
    max_broken: float = 0.05
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
        require(0.0 <= self.max_broken < 1.0, f"{key}.max_broken", self.max_broken, "must be in [0, 1)")
        require(self.min_eligible >= 1, f"{key}.min_eligible", self.min_eligible, "must be >= 1")
        require(self.grid_samples >= 1, f"{key}.grid_samples", self.grid_samples, "must be >= 1")

    def scales_for(self, method: str) -> list[float]:
        """The curve's magnitudes for ``method``, ascending."""
        return sorted(float(s) for s in self.method_scales.get(method, self.scales))


@dataclass
class SideEdits:
    """The edits of one side of a direction, read: ``scales`` [S] magnitudes, ``after`` [S, M, A] decisions
    (equal to the unedited ones for samples not decoded), ``broken`` [S, M], ``change`` [S, M] (1 - SSIM,
    NaN where not decoded), ``factor_change`` [S, M, F] (|change| of the continuous ToyFaces factors in world
    standard deviations, NaN where not decoded; None without them) and ``tiles`` [S, g, 3, H, W], the grid
    samples' edited images (empty when loaded from records)."""

    sign: float
    scales: list[float]
    after: torch.Tensor
    broken: torch.Tensor
    change: torch.Tensor
    factor_change: torch.Tensor | None
    tiles: torch.Tensor

    def curve(self, before: torch.Tensor, target: int, towards: bool) -> list[CurvePoint]:
        """The curve of these edits read against ``target`` and side ``towards``."""
        return [
            CurvePoint(scale, EditOutcome(before, self.after[i], self.broken[i], target, towards), self.change[i])
            for i, scale in enumerate(self.scales)
        ]


@dataclass
class SideResult:
    """One side of a direction judged: its edits, the curve against its target, the operating point; ``names``
    are the attributes, ``factor_names`` the continuous factors of ``edits.factor_change`` (if any)."""

    edits: SideEdits
    curve: list[CurvePoint]
    operating: CurvePoint
    feasible: bool
    names: list[str]
    factor_names: list[str] = field(default_factory=list)

    def entry(self) -> dict[str, Any]:
        """The JSON entry: target, towards, operating scale (signed), feasible, distortion, the judge's rates
        there (:meth:`EditOutcome.rates`), the curve (scale, flip, clean flip, broken, distortion) and, on
        ToyFaces, ``truth``: the mean |change| of each continuous factor over the eligible samples at the
        operating scale (world standard deviations) and ``truth_label``, the factor that moved most."""
        outcome, names = self.operating.outcome, self.names
        entry = {
            "target": names[outcome.target],
            "towards": "up" if outcome.towards else "down",
            "scale": self.edits.sign * self.operating.scale,
            "feasible": self.feasible,
            "distortion": _finite(self.operating.distortion),
            **outcome.rates(names),
            "curve": [_curve_values(point) for point in self.curve],
            "stop_at_flip": _stop_values(stop_at_flip(self.curve), names),
        }
        if self.edits.factor_change is not None and self.factor_names and bool(outcome.eligible.any()):
            index = self.edits.scales.index(self.operating.scale)
            changes = self.edits.factor_change[index][outcome.eligible].double().mean(dim=0)
            entry["truth"] = {name: float(value) for name, value in zip(self.factor_names, changes, strict=True)}
            entry["truth_label"] = self.factor_names[int(changes.argmax())]
        return entry

    def entry_target(self) -> str:
        """The side's target as "<attribute> up|down" ("up": towards having it)."""
        outcome = self.operating.outcome
        return f"{self.names[outcome.target]} {'up' if outcome.towards else 'down'}"

    def verdicts(self, scale_index: int, grid: int) -> list[str]:
        """The verdicts of the first ``grid`` samples at scale ``scale_index``, read against this side's target:
        "clean" (clean flip), "flip" (with an off-target change), "none" (no flip), "broken", or "" for a sample
        that was not eligible (already on the far side); :data:`pipeline.io.grids.FRAME_COLOURS` draws them."""
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

    def grid(self, baseline: Reading, grid: int) -> tuple[list[float], torch.Tensor, list[list[str]]]:
        """The grid rows of this direction: signed scales [C] (ascending, 0 = unedited), tiles [grid, C, 3, H, W]
        and verdicts [grid][C] (:meth:`SideResult.verdicts`; "" for the unedited column)."""
        columns: dict[float, tuple[torch.Tensor, list[str]]] = {0.0: (baseline.images[:grid], [""] * grid)}
        for result in self.sides.values():
            for i, scale in enumerate(result.edits.scales):
                columns[result.edits.sign * scale] = (result.edits.tiles[i], result.verdicts(i, grid))
        order = sorted(columns)
        tiles = torch.stack([columns[s][0] for s in order], dim=1)
        verdicts = [[columns[s][1][row] for s in order] for row in range(grid)]
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
    """Decode direction ``k`` at ``sign * scales`` for the samples where ``decode`` [M] bool is true (which must
    include the first ``grid``, the grid's samples) and read them against ``baseline``."""
    index = decode.nonzero().flatten()
    images = editor(k, [sign * s for s in scales], index)  # [S, m, 3, H, W]
    count = len(baseline.images)
    after = baseline.decisions.unsqueeze(0).repeat(len(scales), 1, 1)
    broken = torch.zeros(len(scales), count, dtype=torch.bool)
    change = torch.full((len(scales), count), math.nan)
    factor_change = None
    if baseline.factors is not None:
        factor_change = torch.full((len(scales), count, baseline.factors.shape[1]), math.nan)
    unedited = baseline.subset(index)
    for i, edited in enumerate(images):
        reading = reader(edited)
        after[i, index] = reading.decisions
        broken[i, index] = reading.broken
        change[i, index] = 1.0 - ssim_per_image(edited, unedited.images)
        moved = reader.factor_change(unedited, reading)
        if factor_change is not None and moved is not None:
            factor_change[i, index] = moved
    return SideEdits(sign, list(scales), after, broken, change, factor_change, images[:, :grid])


def judge_sides(
    edits: Mapping[str, SideEdits],
    before: torch.Tensor,
    target: int | None,
    cfg: ProtocolConfig,
    names: list[str],
    factor_names: list[str] | None = None,
) -> dict[str, SideResult]:
    """Judge the read edits of each side of one direction (side -> :class:`SideEdits`) against the unedited
    decisions ``before`` [M, A]: a targeted direction (``target`` its attribute's index) against its target, an
    untargeted one against its best label (see the module docstring)."""
    sides: dict[str, SideResult] = {}
    for side, side_edits in edits.items():
        towards = side_edits.sign > 0
        if target is not None:
            curve = side_edits.curve(before, target, towards)
            point, feasible = operating_point(curve, cfg.max_broken)
        else:
            candidates = [
                side_edits.curve(before, attribute, label_towards)
                for attribute in range(before.shape[1])
                for label_towards in (True, False)
                if int((before[:, attribute] != label_towards).sum()) >= cfg.min_eligible
            ]
            if not candidates:
                raise ConfigError(
                    f"evaluate.min_eligible={cfg.min_eligible}: no attribute has that many of the {len(before)} "
                    "samples on either side; lower it or raise evaluate.num_samples"
                )
            chosen, point, feasible = best_curve(candidates, cfg.max_broken)
            curve = list(chosen)
        sides[side] = SideResult(side_edits, curve, point, feasible, names, list(factor_names or []))
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
) -> DirectionResult:
    """Edit direction ``k`` (named ``name``) on both sides at ``scales`` and judge it (see the module
    docstring); ``target`` is the index of its attribute for a targeted direction, else None."""
    count = len(baseline.images)
    grid = min(cfg.grid_samples, count)
    shown = torch.arange(count) < grid
    before = baseline.decisions
    edits = {}
    for side, sign in (TARGETED_SIDES if target is not None else UNTARGETED_SIDES).items():
        everyone = torch.ones(count, dtype=torch.bool)
        decode = shown | (before[:, target] != (sign > 0)) if target is not None else everyone
        edits[side] = edit_side(editor, reader, baseline, k, sign, scales, decode, grid)
    sides = judge_sides(edits, before, target, cfg, reader.names, reader.factor_names)
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
    for name, result in results.items():
        scales, tiles, cells = result.grid(baseline, grid)
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
    untargeted_samples: int | None = None,
    work: WorkCache | None = None,
    progress: bool = True,
) -> tuple[dict[str, dict[str, DirectionResult]], dict[str, Reading], dict[str, float]]:
    """Judge the first ``max_directions`` directions of every file of ``files`` (targeted files whole) on the
    held-out ``samples`` (untargeted files on the first ``untargeted_samples`` of them, all when None).
    Returns (method -> direction name -> result, method -> its unedited reading, seconds per method). Every
    edit decode is a unit of ``work`` (a killed run resumes from those it did)."""
    work = work or WorkCache(None)
    plain: list[Reading] = []
    states: dict[tuple[int, int], torch.Tensor] = {}

    def states_of(chosen: HeldOut) -> Callable[[int], torch.Tensor]:
        def state_at(step: int) -> torch.Tensor:
            key = (step, len(chosen.seeds))
            if key not in states:
                states[key] = states_at(
                    model, chosen.x_T, chosen.noise, steps=sampler.steps, eta=sampler.eta, step_indices=[step]
                )[step]
            return states[key]

        return state_at

    counts = {method: _count(method, d, max_directions) for method, d in files.items()}
    bar = tqdm(total=sum(counts.values()), desc="judge", unit="direction", disable=not progress)
    results: dict[str, dict[str, DirectionResult]] = {}
    baselines: dict[str, Reading] = {}
    seconds: dict[str, float] = {}
    for method, directions in files.items():
        started = time.perf_counter()
        targeted = method in TARGETED_METHODS
        count = len(samples.seeds) if targeted or untargeted_samples is None else untargeted_samples
        chosen = subset(samples, torch.arange(min(count, len(samples.seeds))))
        decoder: Editor | GuidedEditor
        if directions.space == "x_t":
            decoder = GuidedEditor(model, directions, chosen, sampler, states_of(chosen), f"'{method}'")
            baselines[method] = reader(decoder.baseline)
        else:
            if not plain:
                plain.append(reader(decode_images(model, samples.x_T, samples.noise, sampler)))
            baselines[method] = plain[0].head(len(chosen.seeds))
            decoder = Editor(model, directions, chosen, sampler, baselines[method].images)
        editor = ResumableEditor(decoder, work, method)
        results[method] = {}
        for k in range(counts[method]):
            name = directions.names[k]
            target = reader.names.index(name) if targeted and name in reader.names else None
            results[method][name] = judge_direction(
                editor, reader, baselines[method], k, name, target, cfg.scales_for(method), cfg
            )
            bar.update()
        seconds[method] = time.perf_counter() - started
    bar.close()
    return results, baselines, seconds


def _count(method: str, directions: Directions, max_directions: int) -> int:
    if method in TARGETED_METHODS:
        return directions.num_directions
    return min(max_directions, directions.num_directions)


def file_entries(results: Mapping[str, Mapping[str, DirectionResult]]) -> dict[str, list[dict[str, Any]]]:
    """method -> its directions' :meth:`DirectionResult.entry` as a list in the file's order (JSON files are
    written with sorted keys, so the order lives in a list)."""
    return {method: [result.entry() for result in judged.values()] for method, judged in results.items()}
