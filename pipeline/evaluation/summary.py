"""Summaries of judged directions (:mod:`pipeline.evaluation.protocol`) for the metrics file and the report:
per method, per supervised attribute, and conditional against plain directions, all at operating scales and read
on the reported samples (the operating points were chosen on others)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from pipeline.evaluation.judge import EditOutcome, Rate, attributes_changed, stop_at_flip
from pipeline.evaluation.protocol import DirectionResult, SideResult


def _sides(results: Mapping[str, DirectionResult]) -> list[SideResult]:
    return [side for result in results.values() for side in result.sides.values()]


def method_summary(results: Mapping[str, DirectionResult]) -> dict[str, Any]:
    """Over every (direction, side) of one method at its operating scale, on the reported samples:
    ``mean_clean_flip``, ``min_clean_flip``, ``mean_broken``, ``mean_attributes_changed`` (the mean of the sides'
    MNAC, :func:`pipeline.evaluation.judge.attributes_changed`; None when no side has a sample to count); the
    number of sides of each status (``infeasible``: no scale within the broken budget; ``no_flip``: no scale
    flips it; ``edge``: the operating point at an end of the extended curve); and ``mean_clean_flip_stop``, the
    mean clean flip on the choosing samples when each stops at its own smallest flipping scale
    (:func:`pipeline.evaluation.judge.stop_at_flip`)."""
    sides = _sides(results)
    clean = [side.reported.outcome.clean_flip_rate() for side in sides]
    broken = [side.reported.outcome.broken_rate() for side in sides]
    stopped = [stop_at_flip(side.curve).clean_flip_rate() for side in sides]
    changed = [attributes_changed(side.reported.outcome)["mean"] for side in sides]
    counted = [value for value in changed if value is not None]
    return {
        "mean_clean_flip": sum(clean) / len(clean),
        "min_clean_flip": min(clean),
        "mean_clean_flip_stop": sum(stopped) / len(stopped),
        "mean_broken": sum(broken) / len(broken),
        "mean_attributes_changed": sum(counted) / len(counted) if counted else None,
        "infeasible": sum(side.status == "infeasible" for side in sides),
        "no_flip": sum(side.status == "no_flip" for side in sides),
        "edge": sum(side.status == "edge" for side in sides),
    }


def targeted_summary(results: Mapping[str, DirectionResult]) -> dict[str, dict[str, float | None]]:
    """Per targeted direction: ``flip_up``, ``flip_down``, ``clean_flip_up``, ``clean_flip_down``,
    ``broken_up``, ``broken_down`` at each side's operating scale, on the reported samples."""
    summary = {}
    for name, result in results.items():
        summary[name] = {
            f"{rate}_{side}": value
            for side, side_result in result.sides.items()
            for rate, value in side_result.reported.outcome.headline().items()
        }
    return summary


def conditional_comparison(
    plain: DirectionResult, conditional: DirectionResult, partners: Sequence[str], names: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """Per side, a conditional direction against the plain one of the same target, on the same samples at each
    one's operating scale (reported samples): the target's flip rate (``flip_plain``, ``flip_conditional``), the
    rate at which any projected-out ``partners`` attribute flips too (``partner_flip_plain``,
    ``partner_flip_conditional``), and ``new_off_target``: the largest rise of another attribute's off-target
    rate (``new_off_target_attribute`` names it; 0 when none rises)."""
    partner_columns = [names.index(p) for p in partners]
    comparison = {}
    for side in plain.sides:
        before, after = plain.sides[side].reported.outcome, conditional.sides[side].reported.outcome
        rises = {
            name: (_changed(after, a) - _changed(before, a))
            for a, name in enumerate(names)
            if a != before.target and a not in partner_columns
        }
        worst = max(rises, key=lambda name: rises[name]) if rises else ""
        comparison[side] = {
            "flip_plain": Rate.of(before.flipped, before.eligible).value,
            "flip_conditional": Rate.of(after.flipped, after.eligible).value,
            "partner_flip_plain": _partner_rate(before, partner_columns),
            "partner_flip_conditional": _partner_rate(after, partner_columns),
            "new_off_target": max(0.0, rises[worst]) if worst else 0.0,
            "new_off_target_attribute": worst if worst and rises[worst] > 0 else "",
        }
    return comparison


def _changed(outcome: EditOutcome, attribute: int) -> float:
    return Rate.of(outcome.changed[:, attribute], outcome.eligible).value or 0.0


def _partner_rate(outcome: EditOutcome, columns: Sequence[int]) -> float | None:
    hits = outcome.changed[:, list(columns)].any(dim=1) if columns else torch.zeros_like(outcome.eligible)
    return Rate.of(hits, outcome.eligible).value
