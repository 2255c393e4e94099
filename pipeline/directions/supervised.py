"""Supervised directions from labelled samples, and their conditional (disentangled) projections
(Haas et al. 2024; docs/methods.md, "Supervised directions").

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
