"""Checks of supervised directions, whose names are their target attributes: towards the other side of the
target per sample (``moved``, ``flipped``), the target and off-target logit effects, and conditional against
plain directions on the projected-out partners.

Two read-outs share these definitions: ``preview`` edits at one fixed scale +-s and reports effects at +s
(:func:`supervised_check`, :func:`conditional_check`); ``evaluate`` edits at each direction's matched
distortion and reports central-difference effects (:func:`matched_supervised_scores`,
:func:`matched_conditional`). docs/outputs.md says which file holds which.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from pipeline.classifiers import classify_logits
from pipeline.diffusion.models import DiffusionModel
from pipeline.diffusion.sampling import SamplerConfig
from pipeline.directions.format import Directions
from pipeline.editing import HeldOut, edit
from pipeline.evaluation.readout import Judge, Measurement, Reading

if TYPE_CHECKING:
    from pipeline.evaluation.protocol import DirectionResult

def moves_towards_other_side(
    before: torch.Tensor, raised: torch.Tensor, lowered: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample, whether an edit towards the other side of one attribute moves (and flips) its logit.

    Args:
        before: [M] unedited logits of the attribute.
        raised: [M] logits after the edit that adds the attribute (+scale); only read where before <= 0.
        lowered: [M] logits after the edit that removes it (-scale); only read where before > 0.

    Returns:
        (moved, flipped), both [M] bool: samples without the attribute are edited up and those with it down;
        ``moved`` when the logit goes that way, ``flipped`` when it crosses 0. On a confident classifier the
        other edit (more of an attribute a sample already has) has no image-level meaning: its logit change is
        the classifier's noise, so it is not counted.
    """
    has_it = before > 0
    after = torch.where(has_it, lowered, raised)
    moved = torch.where(has_it, after < before, after > before)
    flipped = torch.where(has_it, after < 0, after > 0)
    return moved, flipped


def attribute_effects(
    model: DiffusionModel,
    classifier: nn.Module,
    directions: Directions,
    scale: float,
    samples: HeldOut,
    sampler: SamplerConfig,
    baseline_logits: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """For every direction k: the change of every attribute's logit [M, A] when editing at +scale and -scale.

    Returns ``{"up": [K, M, A], "down": [K, M, A]}`` (edited minus unedited logits).
    """
    up, down = [], []
    for k in range(directions.num_directions):
        images = edit(model, directions, k, [scale, -scale], samples, sampler)
        changes = classify_logits(classifier, images.flatten(0, 1)).reshape(2, len(samples.seeds), -1) - baseline_logits
        up.append(changes[0])
        down.append(changes[1])
    return {"up": torch.stack(up), "down": torch.stack(down)}


def supervised_check(
    names: Sequence[str], directions: Directions, effects: dict[str, torch.Tensor], baseline_logits: torch.Tensor
) -> dict[str, dict[str, float]]:
    """Per supervised direction (named after its attribute), on the held-out samples:

    * ``moved``: the fraction whose target logit moves towards the other side when edited towards it
      (:func:`moves_towards_other_side`), ``flipped`` the fraction that reach it;
    * ``moved_up`` / ``moved_down``: the fractions of all samples whose target logit rises at +scale / falls at
      -scale (including samples already at that side, where the change is the classifier's noise);
    * ``target_effect``: the mean target logit change at +scale; ``effect/<other>`` the mean |change| of every
      other attribute at +scale and ``max_off_target`` the largest of them.

    ``effects`` is :func:`attribute_effects`' result, ``baseline_logits`` [M, A] the unedited logits.
    """
    report = {}
    for k, name in enumerate(directions.names):
        target = list(names).index(name)
        up, down = effects["up"][k], effects["down"][k]
        before = baseline_logits[:, target]
        moved, flipped = moves_towards_other_side(before, before + up[:, target], before + down[:, target])
        off_target = {other: up[:, a].abs().mean().item() for a, other in enumerate(names) if a != target}
        report[name] = {
            "moved": moved.float().mean().item(),
            "flipped": flipped.float().mean().item(),
            "moved_up": (up[:, target] > 0).float().mean().item(),
            "moved_down": (down[:, target] < 0).float().mean().item(),
            "target_effect": up[:, target].mean().item(),
            "max_off_target": max(off_target.values(), default=0.0),
            **{f"effect/{other}": value for other, value in off_target.items()},
        }
    return report


def conditional_check(
    supervised_report: dict[str, dict[str, float]],
    conditional_report: dict[str, dict[str, float]],
    conditions: dict[str, list[str]],
) -> dict[str, dict[str, float]]:
    """For each conditional target: its effect on the projected-out attributes against the plain direction's.

    ``partner_effect_*`` is the mean |logit change| of the removed attributes (averaged over them),
    ``target_kept`` the conditional target effect as a fraction of the plain one.
    """
    report = {}
    for target, removed in conditions.items():
        plain, conditional = supervised_report[target], conditional_report[target]
        partner_plain = sum(plain[f"effect/{name}"] for name in removed) / len(removed)
        partner_conditional = sum(conditional[f"effect/{name}"] for name in removed) / len(removed)
        report[target] = {
            "partner_effect_plain": partner_plain,
            "partner_effect_conditional": partner_conditional,
            "target_effect_plain": plain["target_effect"],
            "target_effect_conditional": conditional["target_effect"],
            "target_kept": conditional["target_effect"] / plain["target_effect"] if plain["target_effect"] else 0.0,
        }
    return report


def matched_supervised_scores(
    judge: Judge,
    baseline: Reading,
    effects: torch.Tensor,
    matched: Measurement,
    mirrored: Measurement,
    target: int,
) -> dict[str, Any]:
    """Target effect and worst off-target (of the effect vector ``effects`` [A]), and towards the other side
    (:func:`study.moves_towards_other_side`): ``moved`` (the target logit moves that way) and ``flipped`` (it
    gets there); samples without the attribute are read at +s (``matched``), those with it at -s (``mirrored``)."""
    others = [a for a in range(len(effects)) if a != target]
    worst = max(others, key=lambda a: abs(float(effects[a]))) if others else None
    moved, flipped = moves_towards_other_side(
        baseline.logits[:, target], matched.reading.logits[:, target], mirrored.reading.logits[:, target]
    )
    return {
        "target": judge.names[target],
        "target_effect": float(effects[target]),
        "max_off_target": abs(float(effects[worst])) if worst is not None else 0.0,
        "worst_off_target": judge.names[worst] if worst is not None else "",
        "moved": float(moved.float().mean()),
        "flipped": float(flipped.float().mean()),
        "label_correct": judge.names[int(effects.abs().argmax())] == judge.names[target],
    }


def matched_conditional(
    files: Mapping[str, Directions], results: Mapping[str, Mapping[str, DirectionResult]], judge: Judge
) -> dict[str, Any]:
    """Plain against conditional supervised directions, at matched distortion (central-difference effect
    vectors) and at scale 1 (when on the grid; change at +1): the effect on the projected-out partners (mean
    |effect|) and the target effect kept."""
    if "supervised" not in results or "supervised_conditional" not in results:
        return {}
    projected = files["supervised_conditional"].extra.get("projected_out", {})
    report = {}
    for target, conditional in results["supervised_conditional"].items():
        plain = results["supervised"].get(target)
        partners = [p for p in projected.get(target, []) if p in judge.names]
        if plain is None or not partners or target not in judge.names:
            continue
        entry = {"partners": partners}
        pairs = {"matched": (plain.effects, conditional.effects)}
        if 1.0 in plain.curve and 1.0 in conditional.curve:
            pairs["scale_1"] = (plain.curve[1.0].mean_effects, conditional.curve[1.0].mean_effects)
        for where, (a, b) in pairs.items():
            index = [judge.names.index(p) for p in partners]
            t = judge.names.index(target)
            plain_target, conditional_target = float(a[t]), float(b[t])
            entry[where] = {
                "partner_effect_plain": float(a[index].abs().mean()),
                "partner_effect_conditional": float(b[index].abs().mean()),
                "target_effect_plain": plain_target,
                "target_effect_conditional": conditional_target,
                "target_kept": conditional_target / plain_target if plain_target else 0.0,
            }
            entry[where]["partner_reduction"] = (
                1.0 - entry[where]["partner_effect_conditional"] / entry[where]["partner_effect_plain"]
                if entry[where]["partner_effect_plain"]
                else 0.0
            )
        report[target] = entry
    return report

