"""The Jacobian's masks (``directions.jacobian.mask``; docs/methods.md, "Jacobian directions"): the setting's
checks without a model (:func:`check_mask_setting`, :func:`check_mask_classifier`), each sample's mask tensor
from a ToyFaces region, a rectangle or an image file (:func:`sample_masks`), and the mask tensors' own checks."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from pipeline.io.errors import ConfigError
from pipeline.toyfaces.world import REGIONS, ToyFacesConfig

MASK_KEY = "directions.jacobian.mask"
MASK_CHOICES = f"{', '.join(REGIONS)}, a rectangle [top, left, bottom, right] or an image file"
"""What ``directions.jacobian.mask`` may be besides null, as error messages list it."""


def check_mask_setting(mask: Any) -> None:
    """Check ``directions.jacobian.mask`` without any model (milliseconds): null, a ToyFaces region of
    :data:`~pipeline.toyfaces.world.REGIONS`, a rectangle [top, left, bottom, right] of fractions with
    top < bottom and left < right, or an existing image file. A string that is neither a region nor a file is
    an unknown region, or a missing file when it looks like a path (a folder or a suffix); ConfigError names the
    key, the value and what is expected."""
    if mask is None or (isinstance(mask, str) and mask in REGIONS):
        return
    if isinstance(mask, str):
        if Path(mask).is_file():
            return
        if "/" in mask or Path(mask).suffix:
            raise ConfigError(f"{MASK_KEY} '{mask}': no such image file (expected one of {MASK_CHOICES})")
        raise ConfigError(f"{MASK_KEY} '{mask}': unknown region; expected one of {MASK_CHOICES}")
    box = list(mask) if isinstance(mask, Sequence) else None
    numbers = box is not None and all(isinstance(v, int | float) and not isinstance(v, bool) for v in box)
    if not numbers or len(box) != 4:
        raise ConfigError(f"{MASK_KEY} {mask!r}: expected null or one of {MASK_CHOICES}")
    top, left, bottom, right = (float(v) for v in box)
    if not (0.0 <= top < bottom <= 1.0 and 0.0 <= left < right <= 1.0):
        raise ConfigError(
            f"{MASK_KEY} {box}: a rectangle [top, left, bottom, right] needs fractions of the image in [0, 1] "
            "with top < bottom and left < right"
        )


def check_mask_classifier(mask: Any, classifier: str) -> None:
    """ConfigError when ``mask`` is a ToyFaces region but the classifier (``classifier.name``) cannot locate it:
    regions are found on each sample by the ToyFaces classifier."""
    if isinstance(mask, str) and mask in REGIONS and classifier != "toyfaces":
        raise ConfigError(
            f"{MASK_KEY} '{mask}': a ToyFaces region needs classifier.name 'toyfaces', not '{classifier}'; "
            "set the mask to a rectangle [top, left, bottom, right], an image file or null"
        )


def sample_masks(
    mask: Any,
    sample_shape: Sequence[int],
    images: torch.Tensor,
    classifier: nn.Module | None,
    world: ToyFacesConfig | None,
) -> tuple[list[torch.Tensor | None], list[torch.Tensor | None]]:
    """Per sample of ``images`` [N, 3, H', W'] (the decoded samples, in [0, 1]): the Jacobian mask [1, H, W] at
    the model's ``sample_shape`` [C, H, W] (None: whole image) and the "rest of the face" to compare against
    (ToyFaces regions: the face minus the mask; otherwise the complement; None without a mask)."""
    count, shape = len(images), tuple(sample_shape)
    if mask is None:
        return [None] * count, [None] * count
    if isinstance(mask, str) and mask in REGIONS:
        from pipeline.toyfaces.classifier import ToyFacesClassifier, locate_regions

        if not isinstance(classifier, ToyFacesClassifier) or world is None:
            raise ConfigError(f"directions.jacobian.mask '{mask}': ToyFaces regions need the toyfaces classifier")
        regions = {
            name: (F.interpolate(value, size=shape[1:], mode="area") > 0.5).float()  # to the model's resolution
            for name, value in locate_regions(classifier, images, world).items()
        }
        inside = [regions[mask][i] for i in range(count)]
        rest = [regions["face"][i] * (1 - regions[mask][i]) for i in range(count)]
        for region in inside:
            if not region.any():
                raise ConfigError(f"directions.jacobian.mask '{mask}': empty on a sample (region not found)")
        return inside, rest
    if isinstance(mask, str):
        inside_one = image_mask(mask, shape)
    elif isinstance(mask, Sequence):
        inside_one = rectangle_mask([float(v) for v in mask], shape)
    else:
        raise ConfigError(f"directions.jacobian.mask {mask!r}: expected null, a region, a rectangle or an image path")
    return [inside_one] * count, [1 - inside_one] * count


def check_mask(mask: torch.Tensor, sample_shape: tuple[int, int, int]) -> None:
    """Raise ConfigError unless ``mask`` is [1 or C, H, W] for samples [C, H, W] and not empty."""
    channels, height, width = sample_shape
    if mask.dim() != 3 or mask.shape[0] not in (1, channels) or tuple(mask.shape[1:]) != (height, width):
        raise ConfigError(f"mask shape {tuple(mask.shape)}: expected (1, {height}, {width}) or {sample_shape}")
    if not bool((mask != 0).any()):
        raise ConfigError("mask: empty (no pixel inside the region)")


def rectangle_mask(box: Sequence[float], sample_shape: tuple[int, int, int]) -> torch.Tensor:
    """A [1, H, W] mask of the box [top, left, bottom, right] given as fractions of the height and width."""
    if len(box) != 4 or not all(0.0 <= float(v) <= 1.0 for v in box) or box[0] >= box[2] or box[1] >= box[3]:
        raise ConfigError(f"mask rectangle {list(box)}: expected [top, left, bottom, right] fractions, top < bottom")
    _, height, width = sample_shape
    mask = torch.zeros(1, height, width)
    top, bottom = round(box[0] * height), round(box[2] * height)
    left, right = round(box[1] * width), round(box[3] * width)
    mask[:, top:bottom, left:right] = 1.0
    check_mask(mask, sample_shape)
    return mask


def image_mask(path: str | Path, sample_shape: tuple[int, int, int]) -> torch.Tensor:
    """A [1, H, W] mask from a greyscale image file (pixels > 50% grey are inside), resized to the samples."""
    if not Path(path).is_file():
        raise ConfigError(f"mask '{path}': no such file")
    _, height, width = sample_shape
    with Image.open(path) as picture:
        grey = picture.convert("L").resize((width, height), Image.Resampling.NEAREST)
    mask = torch.from_numpy((np.asarray(grey) > 127).astype(np.float32)).unsqueeze(0)
    check_mask(mask, sample_shape)
    return mask
