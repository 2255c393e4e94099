"""Step ``supervised``: mean-difference directions of classifier-labelled groups in h and x_T, and conditional
ones (docs/methods.md, "Supervised directions")."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from pipeline.data.hstats import HStats
from pipeline.data.store import Store
from pipeline.directions import supervised
from pipeline.directions.format import Directions, Origin
from pipeline.io.errors import ConfigError
from pipeline.io.validation import require

PARAMS = ("directions.supervised",)
"""The params this step reads (its stage's ``params`` in dvc.yaml)."""


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
        require(self.groups in GROUP_SIDES, "directions.supervised.groups", self.groups, "must be extremes or labels")


def run(
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
    origin = Origin.of_store(store)

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

