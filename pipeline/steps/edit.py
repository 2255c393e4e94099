"""Step ``edit``: edit the user's own images with any directions file, judge every edit on every attribute, and
draw a labelled grid (:mod:`pipeline.editing.images`; docs/methods.md, "Editing your own images").

Each image is inverted (edit-friendly DDPM by default; DDIM as an option), edited with each chosen direction at
every scale, and read by the classifier and the broken check the ``evaluate`` stage uses (the same
``evaluate.broken`` calibration), against its unedited reconstruction: which attributes changed, whether the
target flipped, whether the image is broken. A file that cannot be read is skipped and recorded; the others are
edited.

An input whose reconstruction the broken check already rejects lies outside what the model draws: "broken"
cannot tell an edit's damage there, so its edits are judged on their attribute changes alone (``broken`` null).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.classifiers import classify_logits
from pipeline.diffusion.models import DiffusionModel
from pipeline.diffusion.sampling import SamplerConfig
from pipeline.directions.format import Directions
from pipeline.directions.masks import sample_masks
from pipeline.editing.images import (
    IMAGE_SPECIFIC,
    EditedRow,
    ImageSpecificSettings,
    Inverted,
    edit_images,
    inversion_settings,
    invert_images,
    select_directions,
)
from pipeline.editing.inversions import INVERSIONS
from pipeline.evaluation.broken import BrokenConfig
from pipeline.evaluation.judge import EditOutcome, decisions
from pipeline.evaluation.readout import calibrated_reader
from pipeline.io.artefacts import directions_path
from pipeline.io.errors import ConfigError
from pipeline.io.grids import labelled_grid
from pipeline.io.images import CROPS, list_images, read_images
from pipeline.io.validation import require
from pipeline.steps.jacobian import JacobianConfig
from pipeline.steps.pullback import PullbackConfig

PARAMS = ("model", "sampler", "classifier", "toyfaces", "evaluate.broken", "directions.jacobian",
          "directions.pullback", "edit")  # fmt: skip
"""The params this step reads (its stage's ``params`` in dvc.yaml)."""


@dataclass
class EditConfig:
    """The ``edit`` params section: which images, which directions file and directions, which scales, how to invert.

    ``inputs`` is an image file or a folder (its image files in name order; the command takes several);
    ``directions`` a directions file of
    any method; ``names`` the directions to apply (the file's names; "k0", "k1", ... for Jacobian files and "v0",
    ... for local pullback files, whose directions are recomputed on each image), empty for the first
    ``max_directions``; ``scales`` in the file's own unit (0 is always drawn: the reconstruction);
    ``inversion`` "edit_friendly" (exact) or "ddim"; ``inversion_seed`` seeds the edit-friendly noise; ``crop``
    "none" (refuse another aspect ratio) or "center"; ``upscale`` enlarges the grid's tiles.
    """

    inputs: str = "inputs/toyfaces"
    directions: str = directions_path("supervised")
    names: list[str] = field(default_factory=lambda: ["smiling"])
    max_directions: int = 4
    scales: list[float] = field(default_factory=lambda: [-4.0, -2.0, 2.0, 4.0])
    inversion: str = "edit_friendly"
    inversion_seed: int = 0
    crop: str = "none"
    upscale: int = 3

    def __post_init__(self) -> None:
        require(bool(self.inputs), "edit.inputs", self.inputs, "must name an image file or a folder")
        require(any(s != 0 for s in self.scales), "edit.scales", self.scales, "must list a non-zero scale")
        require(self.max_directions >= 1, "edit.max_directions", self.max_directions, "must be >= 1")
        require(self.inversion in INVERSIONS, "edit.inversion", self.inversion, f"must be one of {list(INVERSIONS)}")
        require(self.crop in CROPS, "edit.crop", self.crop, f"must be one of {list(CROPS)}")
        require(self.upscale >= 1, "edit.upscale", self.upscale, "must be >= 1")

    @property
    def columns(self) -> list[float]:
        """The scales drawn: 0 (the reconstruction) then the configured non-zero scales in their order."""
        return [0.0, *[float(s) for s in self.scales if s != 0]]


@dataclass
class EditResult:
    """What the edit step writes: the labelled ``grid`` [3, H, W] with its ``caption``, every edited image
    ({relative path: [3, H, W]}) and the JSON ``details`` (reconstruction errors, every edit's judgement, and
    ``skipped``, the files that could not be read, when there are any)."""

    grid: torch.Tensor
    caption: str
    images: dict[str, torch.Tensor]
    details: dict[str, Any]


def run(
    model: DiffusionModel,
    classifier: nn.Module,
    directions: Directions,
    cfg: EditConfig,
    sampler: SamplerConfig,
    broken: BrokenConfig,
    world: Any = None,
    jacobian: JacobianConfig | None = None,
    pullback: PullbackConfig | None = None,
    source: str = "",
    inputs: Sequence[str] | None = None,
) -> EditResult:
    """Invert ``inputs`` (image files or folders; default ``cfg.inputs``), edit them with ``directions`` (read from
    ``source``), judge and draw every edit.

    ``sampler`` gives the injection and batch size (the grid comes from the file's origin), ``broken`` the broken
    check's calibration, ``world`` the ToyFaces world (its exact broken check and regions), ``jacobian`` and
    ``pullback`` the masks and solvers for directions recomputed on each image. Files that cannot be read are
    skipped (``details["skipped"]``); when none can, the first one's error is raised."""
    paths, images, skipped = _read_each(list_images([cfg.inputs] if inputs is None else inputs), model.image_size,
                                        cfg.crop)  # fmt: skip
    names = select_directions(directions, cfg.names, cfg.max_directions)
    settings = inversion_settings(directions, sampler, cfg.inversion)
    inverted = invert_images(model, images, settings, cfg.inversion, cfg.inversion_seed)
    image_specific = _image_specific(directions, inverted, classifier, world, jacobian, pullback)
    scales = cfg.columns
    rows = edit_images(model, directions, inverted, names, scales, image_specific, progress=True)
    reader = calibrated_reader(model, sampler, classifier, world, broken)
    attributes = list(reader.names)
    input_decisions = decisions(classify_logits(classifier, inverted.images))
    entries = [_image_entry(path, inverted, i, input_decisions[i], attributes) for i, path in enumerate(paths)]
    verdicts, files = [], {}
    for row in rows:
        logits = classify_logits(classifier, row.images)  # once per row: the decisions and the logged logits
        flagged = reader.check(row.images)
        entry = entries[row.image]
        if "reconstruction" not in entry:  # the same reconstruction in every row of the image: judged once
            entry["reconstruction"] = _judge(row, 0, 0.0, logits, flagged, attributes)
            if entry["reconstruction"]["broken"]:
                entry["reconstruction"]["verdict"] = "outside"
                entry["input_outside_model"] = True
        outside = "input_outside_model" in entry
        edits = [
            _judge(row, position, scale, logits, flagged, attributes, outside)
            for position, scale in enumerate(scales) if position
        ]  # fmt: skip
        entry["edits"] += edits
        verdicts.append(["", "outside" if outside else ""] + [edit["verdict"] for edit in edits])
        stem = _file_name(paths[row.image].stem)
        files[f"{stem}/reconstruction.png"] = row.images[0]
        for scale, picture in zip(scales[1:], row.images[1:], strict=True):
            files[f"{stem}/{_file_name(row.direction)}_{scale:+g}.png"] = picture
    tiles = torch.stack([torch.cat([inverted.images[row.image : row.image + 1], row.images]) for row in rows])
    outside_images = {i for i, entry in enumerate(entries) if "input_outside_model" in entry}
    row_labels = [f"{paths[row.image].name} {row.direction}{' (outside)' if row.image in outside_images else ''}"
                  for row in rows]  # fmt: skip
    column_labels = ["input", "0 (inverted)", *[f"{scale:+g}" for scale in scales[1:]]]
    caption = (
        f"{directions.method} edits of {len(paths)} image(s), {cfg.inversion} inversion on {settings.steps} steps; "
        f"frames: the judge's verdict against the reconstruction"
        + ("; (outside): an input outside what the model draws, judged on attribute changes alone"
           if outside_images else "")
    )
    title = f"{directions.method}, {cfg.inversion} inversion, {settings.steps} steps"  # fits a one-image grid
    grid = labelled_grid(tiles, row_labels, column_labels, verdicts, upscale=cfg.upscale, title=title)
    mse = inverted.reconstruction_mse
    details = {
        "directions": {"file": source, "method": directions.method, "space": directions.space, "names": names},
        "inversion": {
            "method": cfg.inversion, "steps": settings.steps, "eta": settings.eta, "seed": cfg.inversion_seed,
            "injection": settings.injection,
        },
        "attributes": attributes,
        "broken_check": reader.describe(),
        "reconstruction_mse": {"mean": float(mse.mean()), "max": float(mse.max())},
        "summary": _summary(entries, names, scales[1:], attributes),
        "images": entries,
    }
    if skipped:
        details["skipped"] = skipped
    return EditResult(grid, caption, files, details)


def _read_each(paths: Sequence[Path], size: tuple[int, int], crop: str
               ) -> tuple[list[Path], torch.Tensor, list[dict[str, str]]]:  # fmt: skip
    """Read every file of ``paths`` on its own at ``size`` (``crop`` as :func:`~pipeline.io.images.read_images`
    takes it): the files read, their images [N, 3, H, W], and a {"file", "reason"} per file that could not be
    read (unreadable, or an aspect ratio ``crop`` refuses). Raises the first file's ConfigError when none can."""
    read, images, skipped, first_error = [], [], [], None
    for path in paths:
        try:
            images.append(read_images([path], size, crop))
        except ConfigError as error:
            first_error = first_error or error
            skipped.append({"file": str(path), "reason": str(error).removeprefix(f"image '{path}': ")})
        else:
            read.append(path)
    if first_error is not None and not read:
        raise first_error
    return read, torch.cat(images), skipped


def _image_specific(
    directions: Directions,
    inverted: Inverted,
    classifier: nn.Module,
    world: Any,
    jacobian: JacobianConfig | None,
    pullback: PullbackConfig | None,
) -> ImageSpecificSettings | None:
    """Masks and solvers for a Jacobian or local pullback file (None for the other methods)."""
    if directions.method not in IMAGE_SPECIFIC:
        return None
    jacobian = jacobian or JacobianConfig()
    masks = None
    if directions.method == "jacobian":
        sample_shape = tuple(inverted.x_T.shape[1:])
        masks, _ = sample_masks(jacobian.mask, sample_shape, inverted.reconstruction, classifier, world)
    return ImageSpecificSettings(masks, jacobian.solver, (pullback or PullbackConfig()).solver)


def _image_entry(path: Path, inverted: Inverted, i: int, input_decisions: torch.Tensor,
                 attributes: Sequence[str]) -> dict[str, Any]:  # fmt: skip
    """The JSON entry of input image ``i`` before its edits are added."""
    return {
        "file": str(path),
        "reconstruction_mse": float(inverted.reconstruction_mse[i]),
        "input_decisions": {name: bool(value) for name, value in zip(attributes, input_decisions, strict=True)},
        "edits": [],
    }


def _judge(row: EditedRow, position: int, scale: float, logits: torch.Tensor, broken: torch.Tensor,
           attributes: Sequence[str], outside: bool = False) -> dict[str, Any]:  # fmt: skip
    """One edit (``row``'s image ``position``, made at ``scale``; position 0 of ``logits`` [S, A] and ``broken``
    [S] is the reconstruction) judged against the reconstruction: attributes whose decision changed, the logit of
    every attribute and its change, the broken flag and, for a targeted direction, whether it flipped the target
    cleanly. ``verdict`` is the grid's frame: clean / flip / none (eligible, not flipped) / broken / changed (an
    untargeted edit that changed an attribute), "" for a targeted edit of an image already on the far side.

    ``outside``: the image's reconstruction already fails the broken check, so the check cannot tell what the
    edit damaged: ``broken`` is None, the check's own verdict is ``check_flagged``, and the attribute changes,
    flip and verdict are read as on an image that is not broken."""
    targeted = row.target is not None and row.target in attributes and scale != 0
    is_broken = bool(broken[position]) and not outside
    outcome = EditOutcome(  # one sample; an untargeted edit is read against attribute 0, its changes alike
        decisions(logits[0:1]), decisions(logits[position : position + 1]), torch.tensor([is_broken]),
        attributes.index(row.target) if targeted else 0, scale > 0,
    )  # fmt: skip
    changed = [name for a, name in enumerate(attributes) if bool(outcome.changed[0, a])]
    entry: dict[str, Any] = {
        "direction": row.direction,
        "scale": scale,
        "broken": None if outside else is_broken,
        "changed": changed,
        "logits": {name: float(logits[position, a]) for a, name in enumerate(attributes)},
        "logit_change": {name: float(logits[position, a] - logits[0, a]) for a, name in enumerate(attributes)},
    }
    if outside:
        entry["check_flagged"] = bool(broken[position])
    verdict = "broken" if is_broken else ("changed" if changed else "none")
    if targeted:
        eligible = bool(outcome.eligible[0])
        flipped = eligible and bool(outcome.flipped[0])  # counted among the eligible, as the protocol's rates are
        clean = eligible and bool(outcome.clean[0])
        entry.update({"target": row.target, "eligible": eligible, "flipped": flipped, "clean_flip": clean})
        if not is_broken:
            verdict = ("clean" if clean else "flip") if flipped else ("none" if eligible else "")
    entry["verdict"] = verdict
    return entry


def _file_name(text: str) -> str:
    """``text`` with every character other than letters, digits, ``-``, ``_`` and ``.`` replaced by ``_``."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)


def _summary(entries: Sequence[dict[str, Any]], names: Sequence[str], scales: Sequence[float],
             attributes: Sequence[str]) -> list[dict[str, Any]]:  # fmt: skip
    """Per direction and scale, over the images: how many edits, broken, changed any attribute, changed each
    attribute (those changed at least once, in ``attributes`` order), of inputs outside what the model draws (when
    any: their edits are not judged broken) and, for a targeted direction, were eligible, flipped and flipped
    cleanly."""
    rows = []
    for name in names:
        for scale in scales:
            edits = [e for entry in entries for e in entry["edits"] if e["direction"] == name and e["scale"] == scale]
            row: dict[str, Any] = {
                "direction": name,
                "scale": scale,
                "images": len(edits),
                "broken": sum(e["broken"] is True for e in edits),
                "changed_any": sum(bool(e["changed"]) for e in edits),
            }
            counts = {attribute: sum(attribute in e["changed"] for e in edits) for attribute in attributes}
            row["changed_by_attribute"] = {attribute: count for attribute, count in counts.items() if count}
            outside = sum(e["broken"] is None for e in edits)
            if outside:
                row["outside"] = outside
            if edits and "target" in edits[0]:
                row |= {key: sum(e[key] for e in edits) for key in ("eligible", "flipped", "clean_flip")}
            rows.append(row)
    return rows
