"""Matched distortion: the edit scale at which a direction reaches a given image change, found by bracketing
and power-law bisection (docs/methods.md, "Evaluation protocol")."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass


@dataclass
class Bisection:
    """The result of :func:`bisect_scale`: the chosen scale and its value, whether the budget was out of
    reach up to ``max_scale`` (``capped``), and every point evaluated by the search (scale, value)."""

    scale: float
    value: float
    capped: bool
    probes: list[tuple[float, float]]


def bisect_scale(
    fn: Callable[[float], float],
    budget: float,
    *,
    max_scale: float,
    steps: int,
    tolerance: float,
    known: Mapping[float, float] | None = None,
) -> Bisection:
    """The scale s in [0, max_scale] where an increasing ``fn`` (fn(0) = 0) reaches ``budget``.

    ``known`` values (for example a grid already evaluated) bracket the budget first; then each of at most
    ``steps`` calls of ``fn`` probes ``max_scale`` (while nothing reaches the budget) or splits the bracket
    [largest scale below, smallest scale at or above the budget]: at the power law c s^p through its two
    ends (linear from 0), kept inside the middle 80% of the bracket, so a probe never does much worse than
    the midpoint and hits a power law's root at once. It stops once a value is within ``tolerance * budget``
    of the budget. Returns the evaluated scale > 0 closest to the budget (ties: the larger value, then the
    smaller scale), or the largest one when no evaluated value reaches it (``capped`` when that is
    ``max_scale``).
    """
    points = {0.0: 0.0}
    points.update({float(s): float(v) for s, v in (known or {}).items() if 0.0 <= s <= max_scale})
    probes: list[tuple[float, float]] = []

    def close(value: float) -> bool:
        return abs(value - budget) <= tolerance * budget

    for _ in range(steps):
        if any(close(value) for value in points.values()):
            break
        above = [s for s, value in points.items() if value >= budget]
        if above:
            high = min(above)
            low = max((s for s, value in points.items() if value < budget and s < high), default=0.0)
            probe = _split(low, points.get(low, 0.0), high, points[high], budget)
        elif max_scale not in points:
            probe = max_scale
        else:
            break
        value = float(fn(probe))
        points[probe] = value
        probes.append((probe, value))
    reached = [s for s, value in points.items() if value >= budget or close(value)]
    if reached:
        edited = [s for s in points if s > 0]
        scale = min(edited, key=lambda s: (abs(points[s] - budget), -points[s], s))
        return Bisection(scale, points[scale], False, probes)
    scale = max(points)
    return Bisection(scale, points[scale], scale == max_scale, probes)


def _split(low: float, low_value: float, high: float, high_value: float, budget: float) -> float:
    """Where the power law through (low, low_value) and (high, high_value) reaches ``budget`` (linear when
    low or low_value is 0), clamped to the middle 80% of [low, high]."""
    width = high - low
    if low > 0 and low_value > 0 and high_value > low_value:
        power = math.log(high_value / low_value) / math.log(high / low)
        guess = low * (budget / low_value) ** (1.0 / power)
    elif high_value > low_value:
        guess = low + width * (budget - low_value) / (high_value - low_value)
    else:
        guess = low + width / 2
    return min(max(guess, low + 0.1 * width), high - 0.1 * width)

