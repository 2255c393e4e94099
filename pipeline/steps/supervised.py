"""Step ``supervised``: directions of classifier-labelled samples in h (by the configured estimator) and x_T (mean
difference), and conditional ones (docs/methods.md, "Supervised directions")."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from pipeline.data.hstats import HStats, group_means
from pipeline.data.store import Store
from pipeline.directions import supervised
from pipeline.directions.format import Directions, Origin
from pipeline.io.errors import ConfigError
from pipeline.io.validation import require

PARAMS = ("directions.supervised", "hstats")
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
    estimator: str = "joint_regression"
    window: list[float] | None = field(default_factory=lambda: [0.5, 1.0])
    attribute_windows: dict[str, list[float] | None] = field(default_factory=dict)
    normalise_steps: bool = False
    shared_steps: bool = False
    samples_per_side: int | None = None
    significance: float | None = 3.0
    seed: int = 0
    probe_l2: float = 1.0e-3
    probe_iterations: int = 50

    def __post_init__(self) -> None:
        key = "directions.supervised"
        require(self.groups in GROUP_SIDES, f"{key}.groups", self.groups, "must be extremes or labels")
        require(
            self.estimator in supervised.ESTIMATORS, f"{key}.estimator", self.estimator,
            f"unknown; expected one of {', '.join(supervised.ESTIMATORS)}",
        )  # fmt: skip
        require(
            self.groups == "labels"
            or (self.estimator == "mean_difference" and self.samples_per_side is None and self.significance is None),
            f"{key}.groups", self.groups,
            "extremes serve the plain mean_difference estimator only (significance null); use labels",
        )  # fmt: skip
        require(
            self.window is None or (len(self.window) == 2 and 0 <= self.window[0] < self.window[1] <= 1),
            f"{key}.window", self.window, "must be null or [start, end) fractions of the steps, 0 <= start < end <= 1",
        )  # fmt: skip
        for name, window in self.attribute_windows.items():
            require(
                window is None or (len(window) == 2 and 0 <= window[0] < window[1] <= 1),
                f"{key}.attribute_windows.{name}", window,
                "must be null (every step) or [start, end) fractions of the steps, 0 <= start < end <= 1",
            )  # fmt: skip
        require(
            self.samples_per_side is None or self.samples_per_side >= 2, f"{key}.samples_per_side",
            self.samples_per_side, "must be null (every labelled sample) or >= 2",
        )  # fmt: skip
        require(
            self.significance is None
            or (self.significance > 0 and self.estimator in ("mean_difference", "joint_regression")),
            f"{key}.significance", self.significance,
            "must be null or a z > 0, with the mean_difference or joint_regression estimator",
        )  # fmt: skip
        require(self.probe_l2 > 0, f"{key}.probe_l2", self.probe_l2, "must be > 0")
        require(self.probe_iterations >= 1, f"{key}.probe_iterations", self.probe_iterations, "must be >= 1")


def run(
    store: Store,
    stats: HStats,
    names: Sequence[str],
    cfg: SupervisedConfig,
    scores: torch.Tensor | None = None,
    threshold: float = 0.5,
) -> dict[str, Directions]:
    """Supervised directions in h (``cfg.estimator`` on the ``cfg.groups`` sides, then ``cfg.window`` or the
    attribute's entry of ``cfg.attribute_windows``,
    ``cfg.shared_steps`` and ``cfg.normalise_steps``), the mean difference in x_T, and conditional ones in h.

    ``scores`` [N, A] (store order) and ``threshold`` give the 0/1 labels the estimators other than the plain
    mean difference need. Returns ``{"supervised": ..., "supervised_conditional": ..., "noise_supervised": ...}``;
    the conditional file holds one direction per target of ``cfg.conditional``.
    """
    for target, conditions in cfg.conditional.items():
        for name in (target, *conditions):
            if name not in names:
                raise ConfigError(f"directions.supervised.conditional: unknown attribute '{name}'")
    for name in cfg.attribute_windows:
        if name not in names:
            raise ConfigError(
                f"directions.supervised.attribute_windows: unknown attribute '{name}'; "
                f"expected one of {', '.join(names)}"
            )
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
    plain = supervised.supervised_directions(means("h", positive), means("h", negative), origin, space="h")
    if cfg.estimator == "mean_difference" and cfg.samples_per_side is None and cfg.significance is None:
        estimated = plain.directions
    else:
        if scores is None:
            raise ConfigError(f"directions.supervised.estimator '{cfg.estimator}': needs the label scores")
        labels = scores > threshold
        subsets = labelled_subsets(labels, cfg.samples_per_side, cfg.seed, names)
        estimated = estimate(store, labels, subsets, cfg, names)
        extra["samples_per_side"] = cfg.samples_per_side
        extra["significance"] = cfg.significance
    estimated = estimated.to(plain.directions.dtype)
    windows = [cfg.attribute_windows.get(name, cfg.window) for name in names]  # an entry of null: every step
    directions = torch.stack(
        [supervised.restrict_window(row[None], window)[0] for row, window in zip(estimated, windows, strict=True)]
    )
    if cfg.shared_steps:
        directions = supervised.share_over_steps(directions)
    if cfg.normalise_steps:
        directions = supervised.normalise_steps(directions)
    extra.update(
        estimator=cfg.estimator,
        window=cfg.window,
        attribute_windows=cfg.attribute_windows,
        shared_steps=cfg.shared_steps,
        normalise_steps=cfg.normalise_steps,
    )
    in_h = Directions(directions=directions, method="supervised", space="h", names=list(names), origin=origin,
                      extra=extra)  # fmt: skip
    noise_origin = Origin(model_id=origin.model_id, sampler_steps=origin.sampler_steps, eta=origin.eta)
    in_noise = supervised.supervised_directions(
        means("x_T", positive), means("x_T", negative), noise_origin, space="x_T",
        extra={"groups": cfg.groups, "group_sizes": sizes},
    )  # fmt: skip
    methods = {"supervised": in_h, "noise_supervised": in_noise}
    if cfg.conditional:
        methods["supervised_conditional"] = supervised.conditional_directions(in_h, cfg.conditional)
    return methods


def labelled_subsets(
    labels: torch.Tensor, per_side: int | None, seed: int, names: Sequence[str]
) -> list[torch.Tensor] | None:
    """For each attribute a, the store positions its direction is estimated from: ``per_side`` samples drawn
    (without replacement, generator ``seed`` + a) from those with y_a = 1 and as many from those with y_a = 0,
    in ascending order; None (every sample for every attribute) when ``per_side`` is None. ConfigError naming
    the attribute (``names``) when a side has fewer samples."""
    if per_side is None:
        return None
    subsets = []
    for attribute in range(labels.shape[1]):
        generator = torch.Generator().manual_seed(seed + attribute)
        chosen = []
        for side in (True, False):
            members = (labels[:, attribute] == side).nonzero().flatten()
            if len(members) < per_side:
                raise ConfigError(
                    f"params: directions.supervised.samples_per_side={per_side}: attribute '{names[attribute]}' "
                    f"has only {len(members)} samples with label {int(side)}"
                )
            chosen.append(members[torch.randperm(len(members), generator=generator)[:per_side]])
        subsets.append(torch.cat(chosen).sort().values)
    return subsets


def estimate(
    store: Store,
    labels: torch.Tensor,
    subsets: list[torch.Tensor] | None,
    cfg: SupervisedConfig,
    names: Sequence[str],
) -> torch.Tensor:
    """[A, K, *h_shape] float64 h directions of every attribute (``names``) by ``cfg.estimator`` from the 0/1
    ``labels`` [N, A], each attribute's from its own subset of store positions (all samples when ``subsets`` is
    None). ConfigError naming the attribute when a side is empty or its labels are collinear.

    One streaming pass collects the sums the regression needs (over each subset and over its members with
    each label); the logistic probe reads the store once more per step."""
    count = labels.shape[1]
    joint = cfg.estimator == "joint_regression"
    members = subsets if subsets is not None else [torch.arange(len(labels))] * count
    groups: dict[str, torch.Tensor] = {}
    for a, subset in enumerate(members):
        groups[f"{a}|not"] = subset[~labels[subset, a]]
        for b in range(count) if joint else [a]:
            groups[f"{a}|{b}"] = subset[labels[subset, b]]
        if joint or cfg.significance is not None:
            groups[f"{a}"] = subset
    for a, name in enumerate(names):
        for side in (f"{a}|{a}", f"{a}|not"):
            if len(groups[side]) == 0:
                raise ConfigError(f"directions.supervised: attribute '{name}' has no labelled sample on one side")
    unique, alias = _unique_groups(groups)
    unique_means = group_means(store, unique, fields=("h",))["h"] if unique else {}
    zero = torch.zeros(len(store.h_steps), *store.h_shape, dtype=torch.float64)
    sums = {
        name: unique_means[alias[name]] * len(positions) if len(positions) else zero
        for name, positions in groups.items()
    }
    squares = _sums_of_squares(store, members) if cfg.significance is not None else None
    directions = []
    for a, subset in enumerate(members):
        columns = list(range(count)) if joint else [a]
        positive_sums = torch.stack([sums[f"{a}|{b}"] for b in columns])
        try:
            if joint:
                direction = supervised.joint_regression(sums[f"{a}"], positive_sums, labels[subset])[a]
            else:
                direction = sums[f"{a}|{a}"] / len(groups[f"{a}|{a}"]) - sums[f"{a}|not"] / len(groups[f"{a}|not"])
            if squares is not None and cfg.significance is not None:
                t_values = supervised.coefficient_t_values(
                    sums[f"{a}"], positive_sums, squares[a], labels[subset][:, columns]
                )[columns.index(a)]
                direction = supervised.keep_significant(direction, t_values, cfg.significance)
        except ConfigError as error:
            raise ConfigError(f"directions.supervised: attribute '{names[a]}': {error}") from None
        directions.append(direction)
    stacked = torch.stack(directions)
    if cfg.estimator == "projection":
        return supervised.project_each_out(stacked)
    if cfg.estimator == "logistic":
        return _probe_directions(store, labels, members, stacked, cfg)
    return stacked


def _sums_of_squares(store: Store, members: list[torch.Tensor]) -> list[torch.Tensor]:
    """Per attribute, the sum of h^2 over its subset of store positions ([K, *h_shape] float64), in one pass
    (identical subsets are summed once)."""
    distinct: dict[tuple[int, ...], int] = {}
    for subset in members:
        distinct.setdefault(tuple(subset.tolist()), len(distinct))
    masks = torch.zeros(len(distinct), len(store), dtype=torch.bool)
    for key, index in distinct.items():
        masks[index, list(key)] = True
    totals = torch.zeros(len(distinct), len(store.h_steps), *store.h_shape, dtype=torch.float64)
    for batch in store.iter_batches(("h",), dtype=None):
        squared = batch["h"].to(torch.float64).square()
        for index in range(len(distinct)):
            chosen = masks[index, batch["index"]]
            if chosen.any():
                totals[index] += squared[chosen].sum(dim=0)
    return [totals[distinct[tuple(subset.tolist())]] for subset in members]


def _probe_directions(
    store: Store, labels: torch.Tensor, members: list[torch.Tensor], differences: torch.Tensor, cfg: SupervisedConfig
) -> torch.Tensor:
    """Per step and attribute, the mean difference's component along a logistic probe fitted on that step's h."""
    result = torch.zeros_like(differences)
    for position, step in enumerate(tqdm(store.h_steps.tolist(), desc="logistic probes", unit="step")):
        values = torch.cat([batch["h"][:, 0] for batch in store.iter_batches(("h",), h_steps=[step])])
        values = values.reshape(len(values), -1)
        for a, subset in enumerate(members):
            probe = supervised.logistic_probe(values[subset], labels[subset, a], cfg.probe_l2, cfg.probe_iterations)
            difference = differences[a, position].reshape(-1)
            result[a, position] = supervised.probe_direction(probe.to(difference.dtype), difference).reshape(
                differences.shape[2:]
            )
    return result


def _unique_groups(groups: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The distinct non-empty position sets of ``groups`` (named by the first group holding each), so each is
    summed once, and every non-empty group's name -> the name of its set."""
    unique: dict[str, torch.Tensor] = {}
    seen: dict[tuple[int, ...], str] = {}
    alias = {}
    for name, positions in groups.items():
        key = tuple(positions.tolist())
        if not key:
            continue
        if key not in seen:
            seen[key] = name
            unique[name] = positions
        alias[name] = seen[key]
    return unique, alias
