"""Step ``supervised_study``: which supervised estimator, timestep window and injection make an edit change its
attribute and nothing else, and how many labelled samples a direction needs (docs/methods.md, "Supervised
study"; docs/results.md).

Every variant is a full setting of the supervised directions (estimator, window, step normalisation,
significance filter) and of the injection, applied to the same samples store and labels, and judged by the
evaluation protocol (:mod:`pipeline.evaluation.protocol`) on the study's own held-out seeds, disjoint from
``evaluate``'s, so that picking ``directions.supervised`` from this table does not flatter the figures the
``evaluate`` stage reports. The study does not read ``directions.supervised``: changing the default reruns only
the stages that use it. The few-samples curve estimates the ``few_samples_variant`` from ``samples_per_side``
random samples per side of each attribute and judges it the same way.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from pipeline.data.hstats import HStats
from pipeline.data.store import Store
from pipeline.diffusion.ddim import INJECTIONS
from pipeline.diffusion.models import DiffusionModel
from pipeline.diffusion.sampling import SamplerConfig
from pipeline.directions.format import Directions
from pipeline.directions.supervised import ESTIMATORS
from pipeline.editing.samples import held_out
from pipeline.evaluation.broken import BrokenConfig
from pipeline.evaluation.protocol import DirectionResult, ProtocolConfig, judge_files
from pipeline.evaluation.readout import calibrated_reader
from pipeline.evaluation.summary import method_summary
from pipeline.io.files import WorkCache
from pipeline.io.validation import require
from pipeline.steps import supervised

PARAMS = (
    "model", "sampler", "classifier", "toyfaces", "hstats", "evaluate.broken", "supervised_study",
)  # fmt: skip
"""The params this step reads (its stage's ``params`` in dvc.yaml)."""


@dataclass
class StudyVariant:
    """One arm of the study, in full: its name, the estimator, the edited window (null: every step), whether steps
    share one direction and are normalised, the significance filter (null: none) and the injection (null:
    ``sampler.injection``); the other fields of ``directions.supervised`` keep their defaults."""

    name: str = "mean_difference"
    estimator: str = "mean_difference"
    window: list[float] | None = None
    normalise_steps: bool = False
    shared_steps: bool = False
    significance: float | None = None
    injection: str | None = None

    def check(self, key: str) -> None:
        """ConfigError naming ``key`` for an unknown estimator or injection."""
        require(
            self.estimator in ESTIMATORS, f"{key}.estimator", self.estimator,
            f"unknown; expected one of {', '.join(ESTIMATORS)}",
        )  # fmt: skip
        require(
            self.injection is None or self.injection in INJECTIONS, f"{key}.injection", self.injection,
            f"unknown; expected one of {', '.join(INJECTIONS)}",
        )  # fmt: skip

    def apply(self, sampler: SamplerConfig) -> tuple[supervised.SupervisedConfig, SamplerConfig]:
        """(the supervised config, the sampler) of this arm."""
        arm_cfg = supervised.SupervisedConfig(
            estimator=self.estimator, window=self.window, normalise_steps=self.normalise_steps,
            shared_steps=self.shared_steps, significance=self.significance, conditional={},
        )  # fmt: skip
        arm_sampler = sampler if self.injection is None else dataclasses.replace(sampler, injection=self.injection)
        return arm_cfg, arm_sampler


@dataclass
class SupervisedStudyConfig:
    """The ``supervised_study`` params section: held-out seeds from ``seed_offset``, the first
    ``choose_samples`` choosing each side's operating scale and the next ``num_samples`` reporting it, each
    direction edited along a curve from ``scales`` (both signs, in the mean difference's unit); the ``variants``
    (name -> what it changes) besides the configured default; the few-samples curve at each of
    ``samples_per_side`` (each attribute's ``few_samples_variant`` direction from that many random samples per
    side, ``draws`` draws each)."""

    seed_offset: int = 96_000_000
    choose_samples: int = 32
    num_samples: int = 64
    scales: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0, 4.0])
    variants: list[StudyVariant] = field(
        default_factory=lambda: [
            StudyVariant("mean_difference", "mean_difference"),
            StudyVariant("projection", "projection"),
            StudyVariant("logistic", "logistic"),
            StudyVariant("joint_regression", "joint_regression"),
            StudyVariant("joint_significant", "joint_regression", significance=3.0),
            StudyVariant("joint_significant_late_half", "joint_regression", window=[0.5, 1.0], significance=3.0),
            StudyVariant("joint_late_half", "joint_regression", window=[0.5, 1.0]),
            StudyVariant("joint_symmetric", "joint_regression", injection="symmetric"),
        ]
    )
    few_samples_variant: str = "mean_difference"
    samples_per_side: list[int] = field(default_factory=lambda: [10])
    draws: int = 1
    max_broken: float = 0.05

    def shared(self) -> dict[str, Any]:
        """The settings every arm's judged results depend on (the seeds, scales and broken budget)."""
        return {
            "seed_offset": self.seed_offset, "choose_samples": self.choose_samples, "num_samples": self.num_samples,
            "scales": self.scales, "max_broken": self.max_broken,
        }  # fmt: skip

    def __post_init__(self) -> None:
        key = "supervised_study"
        require(self.seed_offset >= 0, f"{key}.seed_offset", self.seed_offset, "must be >= 0")
        require(self.choose_samples >= 2, f"{key}.choose_samples", self.choose_samples, "must be >= 2")
        require(self.num_samples >= 2, f"{key}.num_samples", self.num_samples, "must be >= 2")
        names = [variant.name for variant in self.variants]
        require(len(names) >= 1, f"{key}.variants", names, "must list at least one variant")
        require(len(set(names)) == len(names), f"{key}.variants", names, "has duplicate names")
        for index, variant in enumerate(self.variants):
            variant.check(f"{key}.variants[{index}]")
        require(
            self.few_samples_variant in names, f"{key}.few_samples_variant", self.few_samples_variant,
            f"must name one of the variants ({', '.join(names)})",
        )  # fmt: skip
        require(
            all(n >= 2 for n in self.samples_per_side), f"{key}.samples_per_side", self.samples_per_side,
            "must list sizes >= 2",
        )  # fmt: skip
        require(self.draws >= 1, f"{key}.draws", self.draws, "must be >= 1")
        ProtocolConfig(scales=self.scales, max_broken=self.max_broken)  # checks the scales and the budget


@dataclass
class StudyResult:
    """The study's tables (lists of rows, one dict per row) and the judge's entries of every arm."""

    variants: list[dict[str, Any]]
    samples: list[dict[str, Any]]
    details: dict[str, Any]


def run(
    model: DiffusionModel,
    classifier: nn.Module,
    store: Store,
    stats: HStats,
    names: Sequence[str],
    scores: torch.Tensor,
    threshold: float,
    sampler: SamplerConfig,
    cfg: SupervisedStudyConfig,
    broken: BrokenConfig,
    world: Any = None,
    work: Callable[[str, dict[str, Any]], WorkCache] | None = None,
    progress: bool = True,
) -> StudyResult:
    """Judge every variant of ``cfg.variants`` and the few-samples arms on ``cfg.num_samples`` held-out seeds.
    ``work(arm, spec)`` gives each arm's resumable cache, ``spec`` being everything the arm's results depend on
    besides the stage's shared inputs (:meth:`SupervisedStudyConfig.shared`): adding, removing or reordering
    arms keeps the other arms' finished decodes."""
    protocol = ProtocolConfig(scales=cfg.scales, max_broken=cfg.max_broken, broken=broken)
    reader = calibrated_reader(model, sampler, classifier, world, broken)
    samples = held_out(model, sampler, cfg.seed_offset, cfg.choose_samples + cfg.num_samples)

    def judged(arm: str, arm_cfg: supervised.SupervisedConfig, arm_sampler: SamplerConfig) -> dict[str, Any]:
        directions = supervised.run(store, stats, names, arm_cfg, scores, threshold)["supervised"]
        spec = {"directions": dataclasses.asdict(arm_cfg), "injection": arm_sampler.injection}
        cache = work(arm, spec) if work is not None else None
        results, _, _ = judge_files(
            model, reader, {"supervised": directions}, protocol, arm_sampler, samples, directions.num_directions,
            work=cache, progress=False, choose=cfg.choose_samples,
        )  # fmt: skip
        return {"directions": directions, "results": results["supervised"]}

    arms = {variant.name: variant.apply(sampler) for variant in cfg.variants}
    variant_rows, entries, directions_of = [], {}, {}
    for name, (arm_cfg, arm_sampler) in tqdm(arms.items(), desc="study variants", unit="variant", disable=not progress):
        outcome = judged(f"variant-{name}", arm_cfg, arm_sampler)
        directions_of[name] = outcome["directions"]
        settings = {
            "variant": name, "estimator": arm_cfg.estimator, "window": _window_label(arm_cfg.window),
            "shared_steps": arm_cfg.shared_steps, "normalise_steps": arm_cfg.normalise_steps,
            "significance": arm_cfg.significance,
            "injection": arm_sampler.injection,
        }  # fmt: skip
        variant_rows.append({**settings, **arm_summary(outcome["results"])})
        entries[name] = [result.entry() for result in outcome["results"].values()]

    sample_rows = []
    arms_by_size = [(size, draw) for size in cfg.samples_per_side for draw in range(cfg.draws)]
    base_cfg, base_sampler = arms[cfg.few_samples_variant]
    base_row = variant_rows[list(arms).index(cfg.few_samples_variant)]
    for size, draw in tqdm(arms_by_size, desc="few-samples curve", unit="arm", disable=not progress):
        arm_cfg = dataclasses.replace(base_cfg, samples_per_side=size, seed=base_cfg.seed + draw)
        outcome = judged(f"samples-{size}-{draw}", arm_cfg, base_sampler)
        cosines = _cosines(outcome["directions"], directions_of[cfg.few_samples_variant])
        sample_rows.append({
            "samples_per_side": size, "draw": draw, "mean_cosine_to_all": sum(cosines) / len(cosines),
            **arm_summary(outcome["results"]),
        })  # fmt: skip
    sample_rows.append({
        "samples_per_side": "all", "draw": 0, "mean_cosine_to_all": 1.0,
        **{key: base_row[key] for key in SUMMARY_KEYS},
    })  # fmt: skip
    details = {
        "choose_samples": cfg.choose_samples,
        "num_samples": cfg.num_samples,
        "seed_offset": cfg.seed_offset,
        "scales": cfg.scales,
        "few_samples_variant": cfg.few_samples_variant,
        "broken_check": reader.describe(),
        "variants": entries,
    }
    return StudyResult(variant_rows, sample_rows, details)


SUMMARY_KEYS = ("mean_clean_flip", "min_clean_flip", "worst_side", "mean_clean_flip_stop", "mean_broken", "infeasible")
"""The columns :func:`arm_summary` adds to each row of the study's tables."""


def arm_summary(results: dict[str, DirectionResult]) -> dict[str, Any]:
    """One arm's row: :func:`method_summary` over every (attribute, side) at its operating scale, and the
    side with the lowest clean-flip rate (``worst_side``, "<attribute> up|down")."""
    summary = method_summary(results)
    sides = [(result.sides[side], f"{name} {side}") for name, result in results.items() for side in result.sides]
    worst = min(sides, key=lambda pair: pair[0].reported.outcome.clean_flip_rate())[1]
    row = {**summary, "worst_side": worst}
    return {key: row[key] for key in SUMMARY_KEYS}


def _window_label(window: list[float] | None) -> str:
    """The window as "all" or "<start>-<end>" (fractions of the steps, 0 the noisiest)."""
    return "all" if window is None else f"{window[0]:g}-{window[1]:g}"


def _cosines(directions: Directions, reference: Directions) -> list[float]:
    """Per attribute, the cosine of ``directions`` with ``reference`` over all steps together."""
    return [
        float(torch.nn.functional.cosine_similarity(
            directions.direction(name).reshape(-1).double(), reference.direction(name).reshape(-1).double(), dim=0
        ))
        for name in directions.names
    ]  # fmt: skip
