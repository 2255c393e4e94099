"""Supervised directions from labelled samples, and their conditional (disentangled) projections
(Haas et al. 2024; docs/methods.md, "Supervised directions").

Estimators (``ESTIMATORS``), all in the unit of the mean difference (h per unit of the label):

* ``mean_difference``: mean(positive) - mean(negative), every attribute on its own.
* ``joint_regression``: the coefficient of attribute a in one least-squares regression of h on every label at
  once, h ~ b_0 + sum_a y_a b_a (per coordinate), i.e. the change of h with a while the others are held fixed.
  Computed from the label Gram matrix and per-group sums, so it needs no pass over the samples beyond the
  group means (:func:`joint_regression`).
* ``projection``: each mean difference with the span of all the other attributes' mean differences projected
  out (:func:`project_out`).
* ``logistic``: per step, an L2-regularised logistic probe w_t of the label on h_t; the direction at step t is
  the mean difference's component along w_t, (w_t . d_t / |w_t|^2) w_t (:func:`probe_direction`).

* A supervised direction is the difference of group means, mean(positive) - mean(negative), unnormalised:
  its natural unit is the raw difference (``scales`` absent), so ``delta(k, alpha)`` is alpha times it.
  Positive means "more of the attribute". The group means come from a streaming pass elsewhere.
  In h-space ("supervised") a direction is [T, *h_shape]; in the initial-noise space ("noise_supervised",
  space "x_T") it is [*x_shape].
* A conditional direction removes from a target direction p its component in the span of condition
  directions N = [n_1; ...; n_m] (rows, each flattened over *all* steps together):
  p_perp = p - N^T (N N^T)^{-1} N p, one joint projection over the concatenation of the steps (not per
  step, and not one condition after the other, which differs when the conditions are not orthogonal).
  The part of p orthogonal to span(N) keeps its length (no renormalisation).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from pipeline.directions.format import Directions, Origin
from pipeline.io.errors import ConfigError

DEFAULT_DEPENDENCE_TOLERANCE = 1e-6

ESTIMATORS = ("mean_difference", "joint_regression", "projection", "logistic")
"""How a supervised direction is estimated from the labelled samples (module docstring)."""


def mean_difference(positive_mean: torch.Tensor, negative_mean: torch.Tensor) -> torch.Tensor:
    """positive_mean - negative_mean, both of the same shape ([T, *h_shape] or [*x_shape]); unnormalised."""
    if positive_mean.shape != negative_mean.shape:
        raise ConfigError(
            f"group means of shapes {tuple(positive_mean.shape)} and {tuple(negative_mean.shape)}: must match"
        )
    return positive_mean - negative_mean


def supervised_directions(
    positive_means: Mapping[str, torch.Tensor],
    negative_means: Mapping[str, torch.Tensor],
    origin: Origin,
    *,
    space: str = "h",
    extra: Mapping[str, object] | None = None,
) -> Directions:
    """Mean-difference directions of several attributes at once, in the order of ``positive_means``.

    Args:
        positive_means: attribute name -> mean over the samples that have the attribute, [T, *h_shape] for
            space "h" or [*x_shape] for space "x_T".
        negative_means: attribute name -> mean over the samples that lack it, same names and shapes.
        origin: provenance written into the result.
        space: "h" (method "supervised") or "x_T" (method "noise_supervised").
        extra: free-form JSON-serialisable metadata (for example group sizes and the classifier used).

    Returns:
        :class:`Directions` [K, ...] named by attribute, without scales (the unit is the raw difference).
    """
    if space not in ("h", "x_T"):
        raise ConfigError(f"space {space!r}: supervised directions live in 'h' or 'x_T'")
    if not positive_means:
        raise ConfigError("positive_means: empty; expected at least one attribute")
    if set(positive_means) != set(negative_means):
        missing = sorted(set(positive_means) ^ set(negative_means))
        raise ConfigError(f"attributes {missing}: must have both a positive and a negative mean")
    names = list(positive_means)
    differences = []
    for name in names:
        try:
            differences.append(mean_difference(positive_means[name], negative_means[name]))
        except ConfigError as error:
            raise ConfigError(f"attribute {name!r}: {error}") from None
    shapes = {tuple(difference.shape) for difference in differences}
    if len(shapes) != 1:
        raise ConfigError(f"attributes {names}: means of different shapes {sorted(shapes)}")
    return Directions(
        directions=torch.stack(differences),
        method="supervised" if space == "h" else "noise_supervised",
        space=space,
        names=names,
        origin=origin,
        extra=dict(extra or {}),
    )


def project_out(
    target: torch.Tensor,
    conditions: torch.Tensor,
    *,
    condition_names: Sequence[str] | None = None,
    tolerance: float = DEFAULT_DEPENDENCE_TOLERANCE,
) -> torch.Tensor:
    """The component of ``target`` orthogonal to the span of ``conditions``, jointly over all entries.

    Args:
        target: p, any shape (for h: [T, *h_shape], flattened over all steps together).
        conditions: N, [m, *target.shape], the directions to remove.
        condition_names: m names used in error messages (default "condition 0", ...).
        tolerance: a condition whose component outside the span of the earlier ones is shorter than
            ``tolerance`` times its norm counts as linearly dependent.

    Returns:
        p - N^T (N N^T)^{-1} N p in ``target``'s shape and dtype; the m x m system is solved in float64.
    """
    if tuple(conditions.shape[1:]) != tuple(target.shape) or conditions.dim() != target.dim() + 1:
        raise ConfigError(f"conditions shape {tuple(conditions.shape)}: expected [m, *{tuple(target.shape)}]")
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not 0 <= tolerance < 1:
        raise ConfigError(f"tolerance {tolerance!r}: must be a number in [0, 1)")
    if condition_names is None:
        names = [f"condition {index}" for index in range(len(conditions))]
    else:
        names = list(condition_names)
    if len(names) != len(conditions):
        raise ConfigError(f"condition_names {names}: expected {len(conditions)} names")
    if len(conditions) == 0:
        return target.clone()
    flat_target = target.reshape(-1).to(torch.float64)
    flat_conditions = conditions.reshape(len(conditions), -1).to(torch.float64)
    _check_independent(flat_conditions, names, tolerance)
    gram = flat_conditions @ flat_conditions.T
    coefficients = torch.linalg.solve(gram, flat_conditions @ flat_target)
    projected = flat_target - flat_conditions.T @ coefficients
    return projected.reshape(target.shape).to(target.dtype)


def conditional_directions(
    supervised: Directions,
    conditions: Mapping[str, Sequence[str]],
    *,
    tolerance: float = DEFAULT_DEPENDENCE_TOLERANCE,
) -> Directions:
    """Conditional directions: each target attribute with the listed attributes projected out jointly.

    Args:
        supervised: directions of method "supervised" or "noise_supervised" holding every named attribute.
        conditions: target name -> names of the attributes to remove from it (for example
            {"smile": ["gender"]}); the result has one direction per target, in this order.
        tolerance: see :func:`project_out`.

    Returns:
        :class:`Directions` of method "supervised_conditional" in the same space, named by target, with
        ``extra["projected_out"]`` = {target: [condition names]} and ``extra["source_method"]``.
    """
    if supervised.method not in ("supervised", "noise_supervised"):
        raise ConfigError(
            f"method {supervised.method!r}: conditional directions need supervised or noise_supervised ones"
        )
    if not conditions:
        raise ConfigError("conditions: empty; expected at least one target attribute")
    projected = []
    for target, removed in conditions.items():
        removed = list(removed)
        if target in removed:
            raise ConfigError(f"attribute {target!r}: cannot be projected out of itself")
        stacked = (
            torch.stack([supervised.direction(name) for name in removed]) if removed else supervised.directions[:0, ...]
        )
        projected.append(
            project_out(supervised.direction(target), stacked, condition_names=removed, tolerance=tolerance)
        )
    return Directions(
        directions=torch.stack(projected),
        method="supervised_conditional",
        space=supervised.space,
        names=list(conditions),
        origin=supervised.origin,
        extra={
            "projected_out": {target: list(removed) for target, removed in conditions.items()},
            "source_method": supervised.method,
        },
    )


def _check_independent(flat_conditions: torch.Tensor, names: list[str], tolerance: float) -> None:
    """ConfigError naming the first condition (in order) that is (nearly) in the span of the earlier ones."""
    basis: list[torch.Tensor] = []
    for index, vector in enumerate(flat_conditions):
        norm = vector.norm()
        if norm == 0:
            raise ConfigError(f"condition {names[index]!r}: is zero and cannot be projected out")
        residual = vector
        for _ in range(2):  # twice is enough for orthogonality to working precision (Kahan-Parlett)
            for unit in basis:
                residual = residual - (unit @ residual) * unit
        if residual.norm() <= tolerance * norm:
            raise ConfigError(
                f"condition {names[index]!r}: linearly dependent on {names[:index]} "
                f"(rank deficient conditions, relative residual {float(residual.norm() / norm):.1e})"
            )
        basis.append(residual / residual.norm())


def joint_regression(total_sum: torch.Tensor, positive_sums: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Coefficients of every label in one least-squares regression of h on all labels with an intercept.

    With X = [1, Y] ([N, 1 + A], Y the 0/1 labels) and H the samples ([N, D]), B = (X^T X)^{-1} X^T H. X^T H is
    made of sums alone: its first row is the sum of h over all samples, row 1 + a the sum over the samples with
    label a, so the group sums of one streaming pass suffice.

    Args:
        total_sum: sum of h over all N samples, [*shape].
        positive_sums: [A, *shape], row a the sum over the samples with y_a = 1.
        labels: [N, A] 0/1 labels in any numeric or bool dtype.

    Returns:
        [A, *shape] float64: b_a, the expected change of h when attribute a goes from 0 to 1 with the others
        fixed. ConfigError when the labels are collinear (an attribute constant or equal to a combination of
        others), in which case the coefficients are not identified.
    """
    labels = labels.to(torch.float64)
    if labels.dim() != 2 or positive_sums.shape[0] != labels.shape[1]:
        raise ConfigError(f"labels {tuple(labels.shape)}: expected [N, {positive_sums.shape[0]}]")
    design = torch.cat([torch.ones(len(labels), 1, dtype=torch.float64), labels], dim=1)
    gram = design.T @ design
    rank = int(torch.linalg.matrix_rank(gram))
    if rank < len(gram):
        raise ConfigError(
            f"joint_regression: the labels are collinear (rank {rank} of {len(gram)} with the intercept); "
            "an attribute is constant or a combination of others"
        )
    moments = torch.cat([total_sum.reshape(1, -1), positive_sums.reshape(len(positive_sums), -1)]).to(torch.float64)
    coefficients = torch.linalg.solve(gram, moments)
    return coefficients[1:].reshape(positive_sums.shape)


def coefficient_t_values(
    total_sum: torch.Tensor, positive_sums: torch.Tensor, sum_squares: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """t statistics of the coefficients of :func:`joint_regression`, per coordinate: b_a / se(b_a) with
    se(b_a)^2 = s^2 [(X^T X)^{-1}]_aa and s^2 = RSS / (N - 1 - A), RSS = sum h^2 - b^T X^T h (the residual sum
    of squares of each coordinate). With one label the coefficient is the mean difference and t its two-sample
    (pooled-variance) t statistic.

    Args:
        total_sum, positive_sums, labels: as for :func:`joint_regression`.
        sum_squares: sum of h^2 over all N samples, [*shape].

    Returns:
        [A, *shape] float64 t values (0 where a coordinate has no residual variance and no effect).
    """
    coefficients = joint_regression(total_sum, positive_sums, labels).reshape(len(positive_sums), -1)
    labels = labels.to(torch.float64)
    count, attributes = labels.shape
    if count <= attributes + 1:
        raise ConfigError(f"t values: {count} samples leave no residual degrees of freedom for {attributes} labels")
    design = torch.cat([torch.ones(count, 1, dtype=torch.float64), labels], dim=1)
    gram = design.T @ design
    moments = torch.cat([total_sum.reshape(1, -1), positive_sums.reshape(attributes, -1)]).to(torch.float64)
    intercept = torch.linalg.solve(gram, moments)[:1]
    fitted = torch.cat([intercept, coefficients])
    residual = (sum_squares.reshape(-1).to(torch.float64) - (fitted * moments).sum(dim=0)).clamp_min(0)
    variance = residual / (count - attributes - 1)
    scale = torch.diagonal(torch.linalg.inv(gram))[1:, None]
    errors = (variance[None] * scale).sqrt()
    safe = torch.where(errors > 0, errors, torch.ones_like(errors))
    t_values = torch.where(errors > 0, coefficients / safe, torch.zeros_like(coefficients))
    return t_values.reshape(positive_sums.shape)


def keep_significant(direction: torch.Tensor, t_values: torch.Tensor, z: float) -> torch.Tensor:
    """``direction`` with every coordinate whose |t| <= ``z`` set to zero: a denoised estimate that keeps the
    coordinates the labels move beyond their sampling noise (hard thresholding of the t map)."""
    return torch.where(t_values.abs() > z, direction, torch.zeros_like(direction))


def logistic_probe(features: torch.Tensor, labels: torch.Tensor, l2: float, iterations: int) -> torch.Tensor:
    """Weights w [D] of an L2-regularised logistic regression of ``labels`` on centred ``features``.

    Minimises mean_i log(1 + exp(-s_i (w . (x_i - mean x) + c))) + l2/2 |w|^2 with s_i = +-1, by L-BFGS on
    features scaled by their overall standard deviation (w is returned in the original units).

    Args:
        features: [N, D] samples.
        labels: [N] 0/1 (or bool) labels; both classes must occur.
        l2: the penalty's weight (> 0) in units of the scaled features.
        iterations: L-BFGS iterations.
    """
    labels = labels.to(torch.float64)
    if labels.min() == labels.max():
        raise ConfigError("logistic probe: the labels hold one class only")
    x = features.to(torch.float64)
    x = x - x.mean(dim=0)
    spread = x.std().clamp_min(torch.finfo(torch.float64).tiny)
    x = x / spread
    signs = 2 * labels - 1
    weights = torch.zeros(x.shape[1] + 1, dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([weights], max_iter=iterations, line_search_fn="strong_wolfe")

    def loss() -> torch.Tensor:
        optimiser.zero_grad()
        margins = signs * (x @ weights[:-1] + weights[-1])
        value = torch.nn.functional.softplus(-margins).mean() + 0.5 * l2 * weights[:-1].square().sum()
        value.backward()
        return value

    optimiser.step(loss)
    return (weights[:-1].detach() / spread).to(features.dtype)


def probe_direction(probe: torch.Tensor, difference: torch.Tensor) -> torch.Tensor:
    """The component of ``difference`` along ``probe`` (both [D]): (w . d / |w|^2) w, in d's unit."""
    norm_squared = probe.square().sum()
    if norm_squared == 0:
        return torch.zeros_like(difference)
    return (probe @ difference / norm_squared) * probe


def project_each_out(directions: torch.Tensor, tolerance: float = DEFAULT_DEPENDENCE_TOLERANCE) -> torch.Tensor:
    """[A, ...] directions, each with the span of all the others projected out jointly (:func:`project_out`)."""
    if len(directions) < 2:
        return directions.clone()
    rows = []
    for index in range(len(directions)):
        others = torch.cat([directions[:index], directions[index + 1 :]])
        rows.append(project_out(directions[index], others, tolerance=tolerance))
    return torch.stack(rows)


def window_steps(window: Sequence[float], steps: int) -> tuple[int, int]:
    """Grid step indices [first, stop) of a window given as fractions [start, end) of the sampler's steps
    (0 the noisiest step, 1 past the last): round(start * steps), round(end * steps). ConfigError unless
    0 <= start < end <= 1 and the window holds at least one step."""
    if len(window) != 2 or not 0 <= window[0] < window[1] <= 1:
        raise ConfigError(f"window {list(window)}: expected [start, end) fractions with 0 <= start < end <= 1")
    first, stop = round(window[0] * steps), round(window[1] * steps)
    if stop <= first:
        raise ConfigError(f"window {list(window)}: holds no step of a {steps}-step grid")
    return first, stop


def restrict_window(directions: torch.Tensor, window: Sequence[float] | None) -> torch.Tensor:
    """[A, T, ...] h directions with every step outside ``window`` (:func:`window_steps`, fractions of the T
    steps, 0 the noisiest) set to zero, so the edit leaves those steps alone; None keeps every step."""
    if window is None:
        return directions
    first, stop = window_steps(window, directions.shape[1])
    restricted = torch.zeros_like(directions)
    restricted[:, first:stop] = directions[:, first:stop]
    return restricted


def share_over_steps(directions: torch.Tensor) -> torch.Tensor:
    """[A, T, ...] h directions with every non-zero step replaced by the mean of the non-zero steps: one direction
    for all edited steps (an "all-step" direction) instead of one per step; zero steps stay zero."""
    flat = directions.reshape(*directions.shape[:2], -1)
    edited = flat.norm(dim=2, keepdim=True) > 0
    shared = flat.sum(dim=1, keepdim=True) / edited.sum(dim=1, keepdim=True).clamp_min(1)
    return torch.where(edited, shared, torch.zeros_like(flat)).reshape(directions.shape)


def normalise_steps(directions: torch.Tensor) -> torch.Tensor:
    """[A, T, ...] h directions rescaled per step so that every non-zero step has the same norm, the root mean
    square of the non-zero steps' norms (the total norm is kept): the edit pushes every edited step equally."""
    flat = directions.reshape(*directions.shape[:2], -1)
    norms = flat.norm(dim=2, keepdim=True)
    nonzero = norms > 0
    counts = nonzero.sum(dim=1, keepdim=True).clamp_min(1)
    target = (norms.square().sum(dim=1, keepdim=True) / counts).sqrt()
    factors = torch.where(nonzero, target / norms.clamp_min(torch.finfo(norms.dtype).tiny), torch.zeros_like(norms))
    return (flat * factors).reshape(directions.shape)
